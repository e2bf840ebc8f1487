#!/usr/bin/env bash
# Fuzzes medembed-api from its own OpenAPI description with schemathesis (PyPI), once with a
# `read` key and once with a `submit` key, and prints one JSON line per key with the counts:
# operations, test cases, server errors (5xx) and responses that break the description.
#
#   tests/benches/schemathesis.sh            # after `cargo build --workspace --bins`
#
# What it serves: a real finished job over the sample corpus (`medembed run`, two training
# steps), through the api on a free port with two keys, the local store of that run and the dev
# RabbitMQ (`deploy/dev/services up`) to queue submitted jobs on, under a queue prefix of its
# own that nothing consumes. Quotas are raised so that the fuzzer reaches the handlers; the
# 429s it would otherwise meet are documented too.
# Needs: the dev services, the offline test model (deploy/dev/deps), python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE_DIR="${MEDEMBED_CACHE_DIR:-$HOME/.cache/medembed}"
TARGET="${CARGO_TARGET_DIR:-$CACHE_DIR/target-rustc-$(rustc -V | awk '{print $2}')}"
BIN="$TARGET/${PROFILE:-debug}"
VENV="$CACHE_DIR/schemathesis-venv"
EXAMPLES="${EXAMPLES:-40}"
# Reports (schemathesis' NDJSON and text output per key) are kept here.
REPORTS="${REPORTS:-$TARGET/schemathesis}"
log() { echo "schemathesis: $*" >&2; }

if [ ! -x "$VENV/bin/schemathesis" ]; then
  log "installing schemathesis into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q schemathesis==4.32.5
fi
for b in medembed medembed-api; do
  [ -x "$BIN/$b" ] || { log "no $BIN/$b: run cargo build --workspace --bins"; exit 1; }
done

work="$(mktemp -d)"
mkdir -p "$REPORTS"
api_pid=""
cleanup() { [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# A finished job over the sample corpus.
cat > "$work/run.toml" <<EOF
[train]
base_model = "$PWD/.deps/all-MiniLM-L6-v2"
device = "cpu"
max_steps = 2
max_seq_length = 64
EOF
log "a job over samples/corpus (medembed run)"
"$BIN/medembed" run --config "$work/run.toml" --data "$work/data" --source "files:$PWD/samples/corpus" \
  --query "sample corpus" >"$work/run.log" 2>&1 || { tail -20 "$work/run.log"; exit 1; }

# Each call makes a new key: take the key and its entry from one call.
make_key() { "$BIN/medembed-api" key --name "$1" --role "$2"; }
out=$(make_key fuzz-read read); read_key=$(sed -n 's/^key: *//p' <<<"$out"); read_entry=$(sed -n 's/^entry: *//p' <<<"$out")
out=$(make_key fuzz-submit submit); submit_key=$(sed -n 's/^key: *//p' <<<"$out"); submit_entry=$(sed -n 's/^entry: *//p' <<<"$out")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MEDEMBED__STORE__BACKEND=local MEDEMBED__STORE__LOCAL_ROOT="$work/data" \
MEDEMBED__QUEUE__BACKEND=amqp MEDEMBED__QUEUE__PREFIX="t-fuzz-$$" \
MEDEMBED__SERVER__LISTEN_ADDR="127.0.0.1:$metrics_port" \
MEDEMBED__API__KEYS="$read_entry,$submit_entry" \
MEDEMBED__API__MAX_ACTIVE_JOBS=1000000 MEDEMBED__API__MAX_ACTIVE_JOBS_PER_KEY=1000000 \
MEDEMBED__API__REQUESTS_PER_MINUTE=1000000 MEDEMBED__API__REQUEST_BURST=100000 \
  "$BIN/medembed-api" --listen "127.0.0.1:$port" >"$work/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

for role in read submit; do
  key_var="${role}_key"
  log "fuzzing with the $role key ($EXAMPLES examples per operation)"
  set +e
  "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/api/openapi.json" \
    -H "Authorization: Bearer ${!key_var}" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    -n "$EXAMPLES" --seed 42 --phases examples,coverage,fuzzing \
    --report ndjson --report-ndjson-path "$REPORTS/$role.ndjson" --no-color >"$REPORTS/$role.txt" 2>&1
  rc=$?
  set -e
  tail -25 "$REPORTS/$role.txt" >&2
  python3 - "$REPORTS/$role.ndjson" "$role" "$rc" <<'PY'
import json, sys
path, role, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
cases = 0; server_errors = 0; schema_failures = 0; operations = set(); failed_checks = {}
for line in open(path):
    event = json.loads(line)
    recorder = event.get("ScenarioFinished", {}).get("recorder")
    if not recorder:
        continue
    operations.add(recorder.get("label"))
    cases += len(recorder.get("cases", {}))
    for interaction in recorder.get("interactions", {}).values():
        if (interaction.get("response") or {}).get("status_code", 0) >= 500:
            server_errors += 1
    for checks in recorder.get("checks", {}).values():
        for check in checks:
            if check.get("status", "").lower() == "failure":
                failed_checks[check["name"]] = failed_checks.get(check["name"], 0) + 1
                if check["name"] != "not_a_server_error":
                    schema_failures += 1
print(json.dumps({"name": "schemathesis_api", "key_role": role, "operations": len(operations),
                  "test_cases": cases, "server_errors": server_errors,
                  "schema_violations": schema_failures, "failed_checks": failed_checks,
                  "exit_code": rc}))
PY
done
