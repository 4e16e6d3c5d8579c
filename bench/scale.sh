#!/usr/bin/env bash
# Scale benchmark for remap's metadata: how long remapd takes to open a pool
# with N mapped chunks (default 16 million), and what the in-memory chunk map
# costs per mapped chunk, for scattered (random-write) and contiguous
# (sequential-write) layouts. Prints a table; appends it to bench/SCALE.md.
#
#   bench/scale.sh [CHUNKS]        (needs sqlite3, curl; builds release remapd)
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNKS=${1:-16777216}
CHUNK_SIZE=4096                      # small chunks keep the sparse pool file small
POOL_BYTES=$(( (CHUNKS + 65536) * CHUNK_SIZE ))
REMAPD=${REMAPD:-.build/release/remapd}
[ -x "$REMAPD" ] || swift build -c release >/dev/null
command -v sqlite3 >/dev/null || { echo "needs sqlite3 (apt-get install sqlite3)"; exit 1; }

work=$(mktemp -d /var/tmp/remap-scale.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

took=
start() {  # start remapd on $1, wait until it answers; sets $took (seconds)
  local t0=$(date +%s.%N)
  "$REMAPD" --state-dir "$1" --default-pool-size 64M >"$1.log" 2>&1 &
  pid=$!
  until curl -sf --unix-socket "$1/api.sock" http://x/v1/health >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$1.log"; exit 1; }
    sleep 0.05
  done
  took=$(echo "$(date +%s.%N) - $t0" | bc)
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

run_layout() {  # $1 = scattered | contiguous
  local dir=$work/$1
  mkdir -p "$dir/pools"
  start "$dir"
  local api=(curl -sf --unix-socket "$dir/api.sock" -H 'Content-Type: application/json')
  "${api[@]}" -d "{\"name\":\"big\",\"chunkSizeBytes\":$CHUNK_SIZE,\"suppliers\":[{\"kind\":\"file\",\"path\":\"$dir/pools/big.img\",\"sizeBytes\":$POOL_BYTES,\"preallocate\":false}]}" http://x/v1/pools >/dev/null
  "${api[@]}" -d "{\"name\":\"vol\",\"pool\":\"big\",\"sizeBytes\":$(( CHUNKS * CHUNK_SIZE ))}" http://x/v1/volumes >/dev/null
  local empty_rss; empty_rss=$(rss_kib)
  stop
  local key; key=$(sqlite3 "$dir/metadata.db" "SELECT key FROM volumes WHERE name='vol'")
  # Scattered: virtual chunks in a pseudo-random order (a multiplicative
  # permutation), physical chunks in allocation order: what random writes make.
  local virtual="value"
  [ "$1" = scattered ] && virtual="(value * 2654435761) % $CHUNKS"
  sqlite3 "$dir/metadata.db" >/dev/null <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
DELETE FROM dirty_chunks;
INSERT INTO mappings(volume, virtual_chunk, physical_chunk)
  SELECT $key, $virtual, value FROM generate_series(0, $CHUNKS - 1);
COMMIT;
SQL
  start "$dir"
  local seconds=$took
  local rss; rss=$(rss_kib)
  local allocated; allocated=$(curl -sf --unix-socket "$dir/api.sock" http://x/v1/pools/big | sed 's/.*"allocatedBytes":\([0-9]*\).*/\1/')
  stop
  [ "$allocated" = $(( CHUNKS * CHUNK_SIZE )) ] || { echo "allocatedBytes $allocated, expected $(( CHUNKS * CHUNK_SIZE ))"; exit 1; }
  printf '| %-10s | %10d | %8.2f s | %8.1f MiB | %6.2f |\n' "$1" "$CHUNKS" "$seconds" \
    "$(echo "($rss - $empty_rss) / 1024" | bc -l)" "$(echo "($rss - $empty_rss) * 1024 / $CHUNKS" | bc -l)"
  rm -rf "$dir"
}

{
  echo
  echo "## $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD), $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p')"
  echo
  echo "| layout     |     chunks |  open time | map memory |  B/chunk |"
  echo "|------------|-----------:|-----------:|-----------:|---------:|"
  run_layout scattered
  run_layout contiguous
} | tee -a bench/SCALE.md
