#!/usr/bin/env bash
# ab_proxy.sh: A/B of two keygate setups forwarding GET /fixed/RESPONSE_BYTES (default 4096, the
# size keygate typically sends) with a key, as bench/ab_keygate.sh does for /healthz: to tell
# whether a change, or a [limits] setting, costs anything on a proxied request. One
# keygate-upstream and both keygates (one worker each) are pinned to SERVER_CPU (default 0),
# started side by side on loopback ports; wrk -t1 -c50 on CLIENT_CPU (default 1) drives them in
# alternating pairs (A,B then B,A ...). Prints per pair the keygate CPU µs/request
# (utime+stime of its process over the run / requests) and requests/s, then the medians.
#
# Usage: [A_LIMITS=...] [B_LIMITS=...] [CLOSE=1] bench/ab_proxy.sh BIN_A BIN_B [PAIRS (6)] [SECONDS (5)]
# A_LIMITS / B_LIMITS: lines for that keygate's [limits] table (e.g. B_LIMITS='send_buffer_bytes
# = 65536'; BIN_A = BIN_B then measures the setting itself). CLOSE=1 sends "Connection: close"
# (a connection per request: accept and set-up costs). UPSTREAM: the keygate-upstream binary
# (default: the one beside BIN_B). Access logs off. Every process it starts is stopped on exit.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
readonly A=$1 B=$2 PAIRS=${3:-6} SECONDS_PER_RUN=${4:-5}
readonly SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1} CLOSE=${CLOSE:-0}
readonly RESPONSE_BYTES=${RESPONSE_BYTES:-4096}
readonly UPSTREAM=${UPSTREAM:-$(dirname "$B")/keygate-upstream}
readonly A_LIMITS=${A_LIMITS:-} B_LIMITS=${B_LIMITS:-}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

readonly ADMIN_KEY=ab-keygate-admin-key-0000 DEMO_KEY=ab-keygate-demo-key-0123456789
readonly UPSTREAM_PORT=18190
taskset -c "$SERVER_CPU" "$UPSTREAM" --listen "127.0.0.1:$UPSTREAM_PORT" >"$tmp/upstream.out" 2>&1 &
pids+=($!)
start() {  # binary port dir limits
  mkdir -p "$3"
  printf '[limits]\n%s\n\n[log]\nenabled = false\n\n[[apis]]\nname = "demo"\nroutes = ["/fixed"]\nupstreams = ["127.0.0.1:%s"]\n' \
    "$4" "$UPSTREAM_PORT" >"$3/keygate.toml"
  KEYGATE_BOOTSTRAP_ADMIN_KEY=$ADMIN_KEY taskset -c "$SERVER_CPU" "$1" \
    --config "$3/keygate.toml" \
    --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$(($2 + 1))" --data-dir "$3/data" \
    --workers 1 >"$3/out" 2>&1 &
  pids+=($!)
}
start "$A" 18200 "$tmp/a" "$A_LIMITS"
start "$B" 18210 "$tmp/b" "$B_LIMITS"
readonly pid_a=${pids[1]} pid_b=${pids[2]}
for port in 18200 18210; do
  for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
  done
done

path=/fixed/$RESPONSE_BYTES
wrk_args=(-H "X-ApiKey: $DEMO_KEY")
[ "$CLOSE" = 1 ] && wrk_args+=(-H "Connection: close")
for port in 18201 18211; do
  curl -fsS -o /dev/null -X POST -H "X-ApiKey: $ADMIN_KEY" -H 'Content-Type: application/json' \
    --data "{\"key\":\"$DEMO_KEY\",\"apis\":[\"demo\"]}" "http://127.0.0.1:$port/admin/keys"
  got=$(curl -fsS -H "X-ApiKey: $DEMO_KEY" "http://127.0.0.1:$((port - 1))$path" | wc -c)
  if [ "$got" != "$RESPONSE_BYTES" ]; then
    echo "ab_proxy.sh: port $((port - 1)) answered $got body bytes, not $RESPONSE_BYTES" >&2
    exit 1
  fi
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
readonly hz=$(getconf CLK_TCK)
run() {  # pid port -> "cpu_us_per_request requests_per_s"
  local t0 t1 out
  t0=$(ticks "$1")
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" "${wrk_args[@]}" \
    "http://127.0.0.1:$2$path")
  t1=$(ticks "$1")
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "ab_proxy.sh: non-2xx answers on port $2:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v t0="$t0" -v t1="$t1" -v hz="$hz" '
    /requests in/ {n = $1} /Requests\/sec/ {r = $2}
    END {printf "%.3f %.0f\n", (t1 - t0) / hz / n * 1e6, r}' <<<"$out"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$tmp/results"
for i in $(seq "$PAIRS"); do
  if ((i % 2)); then ra=$(run "$pid_a" 18200); rb=$(run "$pid_b" 18210)
  else rb=$(run "$pid_b" 18210); ra=$(run "$pid_a" 18200); fi
  echo "pair $i: A $ra  B $rb" | tee -a "$tmp/results"
done
awk '{ca[NR] = $4; ra[NR] = $5; cb[NR] = $7; rb[NR] = $8}
  function median(v, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) {t = v[i]; v[i] = v[j]; v[j] = t}
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  END {printf "medians: A %.3f µs/request %.0f req/s, B %.3f µs/request %.0f req/s, B/A CPU %.3f\n",
    median(ca, NR), median(ra, NR), median(cb, NR), median(rb, NR), median(cb, NR) / median(ca, NR)}' \
  "$tmp/results"
