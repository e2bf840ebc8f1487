#!/usr/bin/env bash
# Entrypoint of Dockerfile.test-garage: a single-node Garage with one bucket and one key, both
# from the environment (GARAGE_KEY_ID, GARAGE_KEY_SECRET, GARAGE_BUCKET, GARAGE_REGION).
set -euo pipefail
: "${GARAGE_KEY_ID:?set GARAGE_KEY_ID}" "${GARAGE_KEY_SECRET:?set GARAGE_KEY_SECRET}"
bucket="${GARAGE_BUCKET:-medembed}"
dir=/var/lib/garage
conf="$dir/garage.toml"
rm -f "$dir/ready"
mkdir -p "$dir/meta" "$dir/data"
cat > "$conf" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "${GARAGE_REGION:-garage}"
api_bind_addr = "0.0.0.0:3900"
root_domain = ".s3.garage.localhost"
CONF
garage() { /usr/local/bin/garage -c "$conf" "$@"; }

garage server &
server=$!
trap 'kill -TERM "$server"; wait "$server"' TERM INT
for _ in $(seq 150); do garage status >/dev/null 2>&1 && break; sleep 0.2; done
node="$(garage node id -q | cut -d@ -f1)"
garage layout assign -z dc1 -c 10G "$node" >/dev/null
garage layout apply --version 1 >/dev/null
garage key import --yes "$GARAGE_KEY_ID" "$GARAGE_KEY_SECRET" -n medembed >/dev/null
garage bucket create "$bucket" >/dev/null
garage bucket allow --read --write --owner "$bucket" --key "$GARAGE_KEY_ID" >/dev/null
touch "$dir/ready"
echo "test-garage: ready: bucket $bucket, key $GARAGE_KEY_ID" >&2
wait "$server"
