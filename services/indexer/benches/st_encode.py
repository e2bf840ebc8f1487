"""sentence-transformers' side of the indexer benchmark (benches/embed_speed.rs runs it).

Encodes the texts in TEXTS_JSON with SentenceTransformer(MODEL_DIR).encode at its defaults
(batch_size 32, fp32 on CPU), max_seq_length MAX_LEN, after a warm-up on the first 32 texts, and
prints one JSON object: texts/s and the embeddings (to compare with medembed's).

Usage: python st_encode.py MODEL_DIR TEXTS_JSON MAX_LEN
Not needed at run time; only to compare against (sentence-transformers in a venv outside the
project).
"""

import json
import sys
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def peak_rss_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (the Rust benchmark).
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def main():
    model_dir, texts_path, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = json.load(open(texts_path))
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = max_len
    model.encode(texts[:32])
    start = time.perf_counter()
    vectors = model.encode(texts)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "name": f"sentence-transformers {sentence_transformers.__version__}",
        "torch": torch.__version__,
        "texts_per_s": len(texts) / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "embeddings": vectors.tolist(),
    }))


if __name__ == "__main__":
    main()
