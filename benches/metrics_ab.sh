#!/usr/bin/env bash
# A/B of two fulcrum binaries under the same load: CPU time of the proxy
# process per proxied request (perf stat task-clock) and requests/s (wrk).
# Used to compare a build with request metrics against one with the four
# metric updates in proxy::handle/proxy removed by hand:
#
#   benches/metrics_ab.sh /path/to/fulcrum-with /path/to/fulcrum-without
#
# Needs wrk and perf. Loopback only; each run is 8 s.
set -euo pipefail
A=$1 B=$2 ROUNDS=${ROUNDS:-3}
DIR=$(mktemp -d)
"$A" demo --port 19080 > "$DIR/backend.out" 2>/dev/null &
BK=$!
trap 'kill $BK 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "backend at" "$DIR/backend.out" && break; sleep 0.1; done
BACK=$(grep -m1 "backend at" "$DIR/backend.out" | awk '{print $3}')
cat > "$DIR/ab.toml" <<T
[admin]
listen = "127.0.0.1:19101"
[global]
worker_threads = 1
shutdown_timeout = "1s"
[[listener]]
name = "web"
listen = "127.0.0.1:19100"
[[route]]
upstream = "u"
[upstream.u]
servers = [{ address = "$BACK" }]
T
for round in $(seq "$ROUNDS"); do
  for bin in "$A" "$B"; do
    "$bin" run --config "$DIR/ab.toml" --log-level warn 2>/dev/null &
    P=$!
    until curl -sf http://127.0.0.1:19101/ready >/dev/null; do sleep 0.05; done
    wrk -t1 -c8 -d2s http://127.0.0.1:19100/ > /dev/null   # warm-up
    perf stat -x, -e task-clock -p $P -o "$DIR/perf.txt" &
    PS=$!
    OUT=$(wrk -t1 -c8 -d8s http://127.0.0.1:19100/)
    kill -INT $PS; wait $PS 2>/dev/null || true
    REQ=$(echo "$OUT" | awk '/requests in/ {print $1}')
    RPS=$(echo "$OUT" | awk '/Requests\/sec/ {print $2}')
    CLK=$(awk -F, '/task-clock/ {print $1}' "$DIR/perf.txt")
    printf '%s round=%s requests=%s rps=%s cpu_us_per_request=%.2f\n' \
      "$bin" "$round" "$REQ" "$RPS" "$(echo "$CLK * 1000 / $REQ" | bc -l)"
    kill -TERM $P; wait $P 2>/dev/null || true
  done
done
