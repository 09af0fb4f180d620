#!/usr/bin/env bash
# Loopback upload throughput, side by side in one run (this machine is shared and noisy:
# compare the ratios, not the absolute numbers).
#
#   floor : `openssl dgst -sha256` of the file (every byte must be hashed once per side;
#           Debian's sha256sum lacks SHA-NI and is ~4x slower, so it is not the floor)
#   curl  : one `curl --http2 -T` PUT of the whole file to the server's single-request
#           endpoint (one stream, the naive peer)
#   uplink: `uplink send --wait`, enqueue to completed, for 1 and 4 TCP connections
#
# Usage: bench/upload.sh [SIZE_MIB]   (default 2048)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}
cargo build --release --workspace --bins -q
bin=target/release
work=$(mktemp -d /tmp/uplink-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/token"
file="$work/capture.bin"
head -c "$((size_mib * 1048576))" /dev/urandom > "$file"
bytes=$(stat -c %s "$file")

"$bin/uplink-server" --listen 127.0.0.1:0 --data-dir "$work/server" --token-file "$work/token" \
  > "$work/server.out" 2> "$work/server.log" & pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*addr=\([^ ]*\).*/\1/p' "$work/server.out")
ca=$(sed -n 's/.*ca=\([^ ]*\).*/\1/p' "$work/server.out")

now() { date +%s.%N; }
mbps() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }

sync; cat "$file" > /dev/null  # same page-cache state for everyone
t0=$(now); openssl dgst -sha256 "$file" > /dev/null; t1=$(now)
floor_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

curl_s=$(curl -sS --http2 --cacert "$ca" -H "Authorization: Bearer $(cat "$work/token")" \
  -T "$file" "https://$addr/v1/objects/curl.bin" -o /dev/null -w '%{time_total}')

run_uplink() {  # $1 = connections
  local sock="$work/d$1.sock"
  "$bin/uplinkd" --endpoint "https://$addr" --token-file "$work/token" --ca-file "$ca" \
    --state-dir "$work/state$1" --socket "$sock" --connections "$1" > "$work/d$1.out" 2> "$work/d$1.log" &
  local pid=$!
  for _ in $(seq 100); do grep -q ready "$work/d$1.out" 2>/dev/null && break; sleep 0.1; done
  "$bin/uplink" --socket "$sock" send "$file" --target "u$1.bin" --wait --json | tail -n 1 > "$work/u$1.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["state"]=="completed", j; print(j["total_seconds"])' "$work/u$1.json"
}
u1_s=$(run_uplink 1)
u4_s=$(run_uplink 4)

printf '%-34s %8s %10s %14s\n' "what ($size_mib MiB, loopback)" "seconds" "MB/s" "vs floor"
row() { printf '%-34s %8.2f %10s %13.2fx\n' "$1" "$2" "$(mbps "$2")" "$(awk -v f="$floor_s" -v s="$2" 'BEGIN { print f / s }')"; }
row "openssl dgst -sha256 (floor)" "$floor_s"
row "curl --http2 -T (1 stream)" "$curl_s"
row "uplink send, 12 streams / 1 conn" "$u1_s"
row "uplink send, 12 streams / 4 conns" "$u4_s"
awk -v c="$curl_s" -v u="$u4_s" 'BEGIN { printf "uplink (4 conns) vs curl: %.2fx faster\n", c / u }'
