#!/usr/bin/env bash
# The training recipe's ablation on the Alzheimer sample: one `medembed run` per variant (pair
# sources, mined negatives, learning rate, epochs, step budget, batch size, length), each scored
# with `medembed eval --job` on the sample's dev set (held-out articles' titles as queries, judged
# by citation and MeSH relations; samples/alzheimer/dev), in hybrid (the default) and dense mode.
# Prints one JSON line per variant: nDCG@10 and MRR@10 on the dev set, and the job's own
# query-style self-evaluation from metrics.json (val and test, base -> fine-tuned: the headline
# figure with each title's own article judged, and the figure on relations alone), the mining
# and training seconds. The first line, "base", scores BM25 and the base model in the same run.
#
#   tests/benches/ablation.sh                  # every variant
#   tests/benches/ablation.sh default no-mine  # some of them
#   PARALLEL=4 tests/benches/ablation.sh       # four variants at a time (a GPU machine)
#
# Variants are `name ENV=VALUE ...` lines below, over the defaults (configs/default.toml): the
# whole epoch, as users' jobs train. `quickstart*` variants add the sample's own settings
# (samples/alzheimer/sample.toml: the quick start's step budget on CPU). `free*` variants run on a
# copy of the sample stripped of MeSH, keywords, reference lists and comment links (query-style
# pairs only), scored with the same dev set (its judgements come from the original records).
#
# DEV names another dev set (default samples/alzheimer/dev).
#
# Needs python3 and: BIN, a release `medembed` (default: the cache's target dir), BASE_MODEL, the
# base model folder (default .deps/all-MiniLM-L6-v2, from deploy/dev/deps). A device is chosen as
# the jobs choose it (train.device / index.device "auto": CUDA when present). On 2 CPU cores a
# whole-epoch variant takes well over an hour; on one H200 about a minute.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE_DIR="${MEDEMBED_CACHE_DIR:-$HOME/.cache/medembed}"
TARGET="${CARGO_TARGET_DIR:-$CACHE_DIR/target-rustc-$(rustc -V 2>/dev/null | awk '{print $2}')}"
BIN="${BIN:-$TARGET/release/medembed}"
BASE_MODEL="${BASE_MODEL:-.deps/all-MiniLM-L6-v2}"
PARALLEL="${PARALLEL:-1}"
SAMPLE=samples/alzheimer
DEV="${DEV:-$SAMPLE/dev}"
WORK="${WORK:-$TARGET/ablation}"
log() { echo "ablation: $*" >&2; }
[ -x "$BIN" ] || { log "no $BIN: cargo build --release --bin medembed (or set BIN)"; exit 1; }
[ -f "$BASE_MODEL/config.json" ] || { log "no base model at $BASE_MODEL (deploy/dev/deps, or set BASE_MODEL)"; exit 1; }

variants() {
  cat <<'EOF'
default
no-mine MEDEMBED__TRAIN__MINED_NEGATIVES=0
title-no-mine MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0
title-no-mine-seed-7 MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__SEED=7
title-no-mine-seed-13 MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__SEED=13
no-mine-seed-7 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__SEED=7
no-mine-seed-13 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__SEED=13
title+citation-no-mine MEDEMBED__PAIRS__SOURCES=title,citation MEDEMBED__TRAIN__MINED_NEGATIVES=0
title-no-mine-lr-5e-5 MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__LEARNING_RATE=5e-5
title-no-mine-lr-1e-5 MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__LEARNING_RATE=1e-5
title-no-mine-batch-64-cached MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__BATCH_SIZE=64 MEDEMBED__TRAIN__LOSS=cached_mnrl MEDEMBED__TRAIN__MINI_BATCH_SIZE=32
title-no-mine-epochs-2 MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__EPOCHS=2
free-no-mine-seed-7 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__SEED=7
quickstart-title-no-mine-48 MEDEMBED__PAIRS__SOURCES=title MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__MAX_STEPS=48
title-only MEDEMBED__PAIRS__SOURCES=title
relations-only MEDEMBED__PAIRS__SOURCES=citation,mesh,keyword
free
free-no-mine MEDEMBED__TRAIN__MINED_NEGATIVES=0
lr-5e-5 MEDEMBED__TRAIN__LEARNING_RATE=5e-5
lr-1e-4 MEDEMBED__TRAIN__LEARNING_RATE=1e-4
quickstart
quickstart-no-mine MEDEMBED__TRAIN__MINED_NEGATIVES=0
quickstart-no-mine-32 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__MAX_STEPS=32
quickstart-no-mine-lr-2e-5 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__LEARNING_RATE=2e-5
quickstart-no-mine-32-lr-2e-5 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__MAX_STEPS=32 MEDEMBED__TRAIN__LEARNING_RATE=2e-5
quickstart-no-mine-48-lr-2e-5 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__MAX_STEPS=48 MEDEMBED__TRAIN__LEARNING_RATE=2e-5
quickstart-no-mine-32-seed-7 MEDEMBED__TRAIN__MINED_NEGATIVES=0 MEDEMBED__TRAIN__MAX_STEPS=32 MEDEMBED__TRAIN__SEED=7
epochs-3 MEDEMBED__TRAIN__EPOCHS=3
batch-128-cached MEDEMBED__TRAIN__BATCH_SIZE=128 MEDEMBED__TRAIN__LOSS=cached_mnrl MEDEMBED__TRAIN__MINI_BATCH_SIZE=32
lr-1e-5 MEDEMBED__TRAIN__LEARNING_RATE=1e-5
title+citation MEDEMBED__PAIRS__SOURCES=title,citation
title+mesh MEDEMBED__PAIRS__SOURCES=title,mesh,keyword
mine-3 MEDEMBED__TRAIN__MINED_NEGATIVES=3
symmetric MEDEMBED__TRAIN__SYMMETRIC=true
epochs-3-eval-50 MEDEMBED__TRAIN__EPOCHS=3 MEDEMBED__TRAIN__EVAL_EVERY_STEPS=50
len-128 MEDEMBED__TRAIN__MAX_SEQ_LENGTH=128
seed-7 MEDEMBED__TRAIN__SEED=7
no-guard MEDEMBED__TRAIN__MINE_MAX_RELATIVE_SCORE=1.0
near-misses MEDEMBED__PAIRS__HARD_NEGATIVES=true
batch-64-cached MEDEMBED__TRAIN__BATCH_SIZE=64 MEDEMBED__TRAIN__LOSS=cached_mnrl MEDEMBED__TRAIN__MINI_BATCH_SIZE=32
quickstart-len128-48 MEDEMBED__TRAIN__MAX_SEQ_LENGTH=128 MEDEMBED__TRAIN__MAX_STEPS=48
quickstart-len128-48-no-mine MEDEMBED__TRAIN__MAX_SEQ_LENGTH=128 MEDEMBED__TRAIN__MAX_STEPS=48 MEDEMBED__TRAIN__MINED_NEGATIVES=0
EOF
}

mkdir -p "$WORK"

score() { # eval args... -> the eval JSON
  "$BIN" eval --beir "$DEV" --json "$@"
}

# The MeSH- and reference-free copy of the sample, made once.
free_corpus() {
  local out="$WORK/free-corpus"
  if [ ! -f "$out/.complete" ]; then
    rm -rf "$out" && mkdir -p "$out"
    python3 - "$SAMPLE/corpus" "$out" <<'PY'
import glob, gzip, os, re, sys
src, out = sys.argv[1], sys.argv[2]
tags = ["MeshHeadingList", "KeywordList", "ReferenceList", "CommentsCorrectionsList"]
for f in sorted(glob.glob(os.path.join(src, "*.xml.gz"))):
    xml = gzip.open(f).read().decode("utf-8")
    for t in tags:
        xml = re.sub(r"<%s\b.*?</%s>" % (t, t), "", xml, flags=re.S)
    assert "<DescriptorName" not in xml and "<Reference>" not in xml, f
    with gzip.open(os.path.join(out, os.path.basename(f)), "wb") as g:
        g.write(xml.encode("utf-8"))
PY
    touch "$out/.complete"
  fi
  echo "$out"
}

wanted=("$@")
want() { [ ${#wanted[@]} -eq 0 ] || printf '%s\n' "${wanted[@]}" | grep -qx "$1"; }

if want base; then
  log "base: BM25 and the base model on the dev set"
  base_json="$(score --model "$BASE_MODEL")"
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
row = {"name": "ablation/base", "dev_queries": r["queries"]}
for x in r["results"]:
    key = x["mode"] + ("" if x["mode"] == "lexical" else "_base")
    row[key + "_ndcg_at_10"] = round(x["ndcg_at_10"], 4)
    row[key + "_mrr_at_10"] = round(x["mrr_at_10"], 4)
print(json.dumps(row), flush=True)
' "$base_json"
fi

one() { # name envs... : runs and scores one variant, prints its JSON line
  local name=$1; shift
  local data="$WORK/$name" base="$WORK/$name.base-model" source="files:$SAMPLE/corpus"
  local config=()
  case "$name" in
    quickstart*) config=(--config "$SAMPLE/sample.toml") ;;
    free*) source="files:$(free_corpus)" ;;
  esac
  rm -rf "$data" "$base"
  # The base model under a path of its own, removed after training, so that `eval --job`
  # scores the job alone (the base model is scored once, in the "base" line).
  cp -rL "$BASE_MODEL" "$base"
  log "$name: medembed run $*"
  local started=$SECONDS
  if ! env "$@" "$BIN" "${config[@]}" run --source "$source" --base-model "$base" \
    --data "$data" >"$data.summary" 2>"$data.log"; then
    log "$name: run failed (see $data.log)"
    tail -5 "$data.log" >&2
    return
  fi
  local job_seconds=$((SECONDS - started))
  rm -rf "$base"
  local eval_json metrics
  eval_json="$(score --job --data "$data" 2>>"$data.log")"
  metrics="$(find "$data" -path '*/model/metrics.json' | head -1)"
  python3 -c '
import json, sys
name, eval_json, metrics_path, seconds = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
m = json.load(open(metrics_path))
row = {"name": "ablation/" + name}
for x in eval_json["results"]:
    if x.get("model") == "job":
        row[x["mode"] + "_ndcg_at_10"] = round(x["ndcg_at_10"], 4)
        row[x["mode"] + "_mrr_at_10"] = round(x["mrr_at_10"], 4)
if "not_trained" in m:
    row["not_trained"] = m["not_trained"]
else:
    for split in ("val", "test"):
        b, t = m["baseline"][split], m["fine_tuned"][split]
        for key, field in (("hybrid", "ndcg_at_10"), ("dense", "dense_ndcg_at_10"),
                           ("related_hybrid", "related_ndcg_at_10"),
                           ("related_dense", "related_dense_ndcg_at_10")):
            row["self_%s_%s" % (split, key)] = [round(b.get(field, 0), 4), round(t.get(field, 0), 4)]
        row["self_%s_related_queries" % split] = t.get("related_queries", 0)
    row["train_examples"] = m["data"]["train_examples"]
    row["steps"] = m["optimizer_steps"]
    row["best_step"] = m["best_step"]
    row["published"] = "base" if m["best_step"] == 0 else "fine-tuned"
    row["mined_negatives"] = m["mining"]["negatives"]
    row["mining_s"] = round(m["mining"]["seconds"], 1)
    row["train_s"] = round(m["train_seconds"], 1)
row["job_s"] = seconds
print(json.dumps(row), flush=True)
' "$name" "$eval_json" "$metrics" "$job_seconds"
}

running=0
while read -r name envs; do
  want "$name" || continue
  # shellcheck disable=SC2086
  one "$name" $envs &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done < <(variants)
wait
