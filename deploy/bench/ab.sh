#!/usr/bin/env bash
# Compares rshard binaries fairly on this machine: for each round and each binary, a fresh
# cluster (local-cluster.sh), then one bench run. Alternating cancels most of the drift
# between runs, which on a small VM is larger than many single changes.
#
#   deploy/bench/ab.sh CLIENTS DURATION BINARY...
#   deploy/bench/ab.sh 64 20s /tmp/rshard-before target/release/rshard
set -euo pipefail
CLIENTS=$1
DURATION=$2
shift 2
HERE=$(dirname "$0")
DIR=${DIR:-/tmp/rshard-bench}
HOSTS=127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003
for round in 1 2; do
  for binary in "$@"; do
    BIN=$binary DIR=$DIR "$HERE/local-cluster.sh" >/dev/null
    result=$("$binary" bench --host "$HOSTS" --certs-dir "$DIR/certs" \
      --clients "$CLIENTS" --duration "$DURATION" --warmup 3s 2>/dev/null | grep '^put:' || true)
    echo "$binary round $round: ${result:-no result}"
  done
done
pkill -9 -f "rshard.* serve" || true
