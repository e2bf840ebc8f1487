"""sentence-transformers' side of the trainer benchmark (benches/train_speed.rs runs it).

Trains the model folder MODEL_DIR with MultipleNegativesRankingLoss the way
SentenceTransformerTrainer does per step (tokenize each column with model.tokenize, padded to the
batch's longest, cut at max_seq_length; forward; loss; backward; AdamW), on the pairs in
PAIRS_JSON, and encodes TEXTS_JSON with model.encode. Prints one JSON object.

Usage: python st_reference.py MODEL_DIR PAIRS_JSON TEXTS_JSON BATCH MAX_LEN WARMUP_STEPS STEPS [DEVICE]
DEVICE is cpu (default) or cuda (then bf16 autocast, as medembed computes on CUDA).
Not needed at run time; only to compare against (install sentence-transformers in a venv outside
the project).
"""

import json
import sys
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer, losses


def peak_rss_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (the Rust benchmark).
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def main():
    model_dir, pairs_path, texts_path = sys.argv[1:4]
    batch, max_len, warmup, steps = (int(a) for a in sys.argv[4:8])
    device = sys.argv[8] if len(sys.argv) > 8 else "cpu"
    cuda = device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(42)
    pairs = json.load(open(pairs_path))
    texts = json.load(open(texts_path))
    model = SentenceTransformer(model_dir, device=device)
    model.max_seq_length = max_len
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    model.train()

    def step(i):
        chunk = pairs[i * batch:(i + 1) * batch]
        features = [
            model.tokenize([p[0] for p in chunk]),
            model.tokenize([p[1] for p in chunk]),
        ]
        features = [{k: (v.to(device) if hasattr(v, "to") else v) for k, v in f.items()} for f in features]
        with autocast():
            loss = loss_fn(features, labels=None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return len(chunk)

    for i in range(warmup):
        step(i)
    sync()
    start = time.perf_counter()
    done = sum(step(warmup + i) for i in range(steps))
    sync()
    train_s = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0

    model.eval()
    with autocast():
        model.encode(texts[:32], batch_size=32)
        sync()
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        sync()
    encode_s = time.perf_counter() - start
    print(json.dumps({
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_pairs_per_s": done / train_s,
        "encode_texts_per_s": len(texts) / encode_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_allocated_mib": peak_gpu,
    }))


if __name__ == "__main__":
    main()
