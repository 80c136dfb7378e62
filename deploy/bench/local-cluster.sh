#!/usr/bin/env bash
# Starts a fresh 3-node cluster on 127.0.0.1 for benchmarks and waits until both shards
# have their three voters (a figure taken before that measures fewer replicas).
#
#   BIN=target/release/rshard DIR=/tmp/rshard-bench deploy/bench/local-cluster.sh
#
# Nodes listen on 127.0.0.1:27001-27003 (HTTP status on 27011-27013); data and logs go to
# $DIR/n1..n3 (wiped first), certificates to $DIR/certs. Any rshard serve still running
# from an earlier run is killed first. Stop the cluster with: pkill -f 'rshard.* serve'
set -euo pipefail
BIN=${BIN:-target/release/rshard}
DIR=${DIR:-/tmp/rshard-bench}
CERTS=$DIR/certs
pkill -9 -f "rshard.* serve" || true
while pgrep -f "rshard.* serve" >/dev/null; do sleep 0.1; done
rm -rf "$DIR"/n1 "$DIR"/n2 "$DIR"/n3
mkdir -p "$DIR"
if [ ! -f "$CERTS/ca.crt" ]; then
  "$BIN" cert create-ca --certs-dir "$CERTS" >/dev/null
  "$BIN" cert create-node 127.0.0.1 --certs-dir "$CERTS" >/dev/null
  "$BIN" cert create-client root --certs-dir "$CERTS" >/dev/null
fi
export RSHARD_LOG=${RSHARD_LOG:-info,fjall=warn,lsm_tree=warn}
start() { # index, extra flags...
  local n=$1; shift
  "$BIN" serve --data-dir "$DIR/n$n" --listen "127.0.0.1:2700$n" \
    --http-listen "127.0.0.1:2701$n" --certs-dir "$CERTS" "$@" \
    >"$DIR/n$n.out" 2>"$DIR/n$n.log" &
}
start 1
sleep 1
start 2 --join 127.0.0.1:27001
start 3 --join 127.0.0.1:27001
for _ in $(seq 1 120); do
  voters=$("$BIN" node ls --host 127.0.0.1:27001 --certs-dir "$CERTS" 2>/dev/null |
    grep -cE '1,2,3 *$' || true)
  if [ "$voters" = 2 ]; then
    "$BIN" node ls --host 127.0.0.1:27001 --certs-dir "$CERTS"
    exit 0
  fi
  sleep 0.5
done
echo "the cluster did not reach three voters per shard; see $DIR/n*.log" >&2
exit 1
