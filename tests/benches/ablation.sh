#!/usr/bin/env bash
# The training recipe's ablation on the Alzheimer sample: one `medembed run` per variant (pair
# sources, mined negatives, learning rate, step budget, batch size, length), each scored with
# `medembed eval --job` on the sample's dev set (held-out articles' titles as queries, judged by
# citation and MeSH relations; samples/alzheimer/dev), in hybrid (the default) and dense mode.
# Prints one JSON line per variant: nDCG@10 and MRR@10 on the dev set, and the job's own
# query-style self-evaluation (val and test, base -> fine-tuned, from metrics.json), the mining
# and training seconds. The first line, "base", scores the base model in the same run.
#
#   tests/benches/ablation.sh                  # every variant (about 4 minutes each, 2 cores)
#   tests/benches/ablation.sh default no-mine  # some of them
#
# Needs: a release build (cargo build --release --bin medembed), the offline model
# (deploy/dev/deps). Variants are `name ENV=VALUE ...` lines below, over the sample's settings
# (samples/alzheimer/sample.toml) unless they override them.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE_DIR="${MEDEMBED_CACHE_DIR:-$HOME/.cache/medembed}"
TARGET="${CARGO_TARGET_DIR:-$CACHE_DIR/target-rustc-$(rustc -V | awk '{print $2}')}"
BIN="$TARGET/${PROFILE:-release}/medembed"
SAMPLE=samples/alzheimer
WORK="${WORK:-$TARGET/ablation}"
log() { echo "ablation: $*" >&2; }
[ -x "$BIN" ] || { log "no $BIN: cargo build --release --bin medembed"; exit 1; }

variants() {
  cat <<'EOF'
default
no-mine MEDEMBED__TRAIN__MINED_NEGATIVES=0
mine-3 MEDEMBED__TRAIN__MINED_NEGATIVES=3
title-only MEDEMBED__PAIRS__SOURCES=title
relations-only MEDEMBED__PAIRS__SOURCES=citation,mesh,keyword
title+citation MEDEMBED__PAIRS__SOURCES=title,citation
title+mesh MEDEMBED__PAIRS__SOURCES=title,mesh,keyword
near-misses MEDEMBED__PAIRS__HARD_NEGATIVES=true
lr-2e-5 MEDEMBED__TRAIN__LEARNING_RATE=2e-5
lr-5e-5 MEDEMBED__TRAIN__LEARNING_RATE=5e-5
steps-48 MEDEMBED__TRAIN__MAX_STEPS=48
batch-64-cached MEDEMBED__TRAIN__BATCH_SIZE=64 MEDEMBED__TRAIN__LOSS=cached_mnrl MEDEMBED__TRAIN__MINI_BATCH_SIZE=32
len-128 MEDEMBED__TRAIN__MAX_SEQ_LENGTH=128
EOF
}

mkdir -p "$WORK"
# The base model under a path of its own, removed after each job's training, so that `eval
# --job` scores the job alone; the base model is scored once, in the "base" line.
base="$WORK/base-model"
rm -rf "$base"

# The base model's row, from an eval of the base folder.
score() { # folder-or-job-args... -> the eval JSON
  "$BIN" --config "$SAMPLE/sample.toml" eval --beir "$SAMPLE/dev" --json "$@"
}
pick() { # eval JSON on stdin, mode, model -> nDCG@10 MRR@10
  python3 -c '
import json, sys
r = json.load(sys.stdin)
mode, model = sys.argv[1], sys.argv[2]
for x in r["results"]:
    if x["mode"] == mode and (x.get("model") or "-") == model:
        print(json.dumps({"ndcg_at_10": round(x["ndcg_at_10"], 4), "mrr_at_10": round(x["mrr_at_10"], 4)}))
' "$@"
}

wanted=("$@")
if [ ${#wanted[@]} -eq 0 ] || printf '%s\n' "${wanted[@]}" | grep -qx base; then
  log "base: BM25 and the base model on the dev set"
  base_json="$(score --model .deps/all-MiniLM-L6-v2)"
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
row = {"name": "ablation/base", "dev_queries": r["queries"]}
for x in r["results"]:
    key = x["mode"] + ("" if x["mode"] == "lexical" else "_base")
    row[key + "_ndcg_at_10"] = round(x["ndcg_at_10"], 4)
print(json.dumps(row))
' "$base_json"
fi

variants | while read -r name envs; do
  if [ ${#wanted[@]} -gt 0 ] && ! printf '%s\n' "${wanted[@]}" | grep -qx "$name"; then
    continue
  fi
  data="$WORK/$name"
  rm -rf "$data" "$base"
  cp -r "$(readlink -f .deps/all-MiniLM-L6-v2)" "$base"
  log "$name: medembed run ${envs:-(sample settings)}"
  started=$SECONDS
  # shellcheck disable=SC2086
  env $envs "$BIN" --config "$SAMPLE/sample.toml" run --source "files:$SAMPLE/corpus" \
    --base-model "$base" --data "$data" >"$data.summary" 2>"$data.log" \
    || { log "$name: run failed (see $data.log)"; tail -5 "$data.log" >&2; continue; }
  job_seconds=$((SECONDS - started))
  rm -rf "$base"
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
for split in ("val", "test"):
    b, t = m["baseline"][split], m["fine_tuned"][split]
    row["self_" + split + "_hybrid"] = [round(b["ndcg_at_10"], 4), round(t["ndcg_at_10"], 4)]
    row["self_" + split + "_dense"] = [round(b["dense_ndcg_at_10"], 4), round(t["dense_ndcg_at_10"], 4)]
row["train_examples"] = m["data"]["train_examples"]
row["steps"] = m["optimizer_steps"]
row["best_step"] = m["best_step"]
row["mined_negatives"] = m["mining"]["negatives"]
row["mining_s"] = round(m["mining"]["seconds"], 1)
row["train_s"] = round(m["train_seconds"], 1)
row["job_s"] = seconds
print(json.dumps(row), flush=True)
' "$name" "$eval_json" "$metrics" "$job_seconds"
done
