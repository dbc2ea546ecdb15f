#!/usr/bin/env bash
# ab_keygate.sh: A/B of two keygate binaries (or of two settings of one) on GET /healthz, to
# tell whether a change costs anything on the request path. Both run pinned to SERVER_CPU
# (default 0), started side by side on loopback ports; wrk -t1 -c50 on CLIENT_CPU (default 1)
# drives them in alternating pairs (A,B then B,A ...). Prints per pair the server CPU
# µs/request (utime+stime of the process over the run / requests) and requests/s, then the
# medians. Any non-2xx answer is fatal (the figures would not measure what they claim).
#
# Usage: [knobs] bench/ab_keygate.sh BIN_A BIN_B [PAIRS (6)] [SECONDS (5)]
# Knobs (environment):
#   AUTH=1      an auth-check request instead: GET /demo/items/42?x=1 with a key in X-ApiKey (the
#               key created through the admin API first)
#   PROXY=1     a proxied request instead: GET /fixed/RESPONSE_BYTES (default 4096, the size
#               keygate typically sends) with a key, forwarded to one keygate-upstream (UPSTREAM,
#               default the one beside BIN_B) on SERVER_CPU too; access logs off
#   A_LIMITS, B_LIMITS  lines for that side's [limits] table (e.g. B_LIMITS='send_buffer_bytes
#               = 65536'; BIN_A = BIN_B then measures the setting itself)
#   WORKERS=N   workers each (default 1)
#   CLOSE=1     "Connection: close": every request a new connection (accept and set-up costs)
#   B_SOCKACT=1 B under systemd-socket-activate (its data socket passed as LISTEN_FDS, fdname
#               "data": the shared socket with single-shot accepts); with BIN_A = BIN_B this
#               measures socket activation itself
# Every process it starts is stopped on exit; its temp dir is removed.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
readonly A=$1 B=$2 PAIRS=${3:-6} SECONDS_PER_RUN=${4:-5}
readonly SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1}
readonly AUTH=${AUTH:-0} PROXY=${PROXY:-0} WORKERS=${WORKERS:-1} CLOSE=${CLOSE:-0}
readonly B_SOCKACT=${B_SOCKACT:-0} A_LIMITS=${A_LIMITS:-} B_LIMITS=${B_LIMITS:-}
readonly RESPONSE_BYTES=${RESPONSE_BYTES:-4096}
readonly UPSTREAM=${UPSTREAM:-$(dirname "$B")/keygate-upstream}
if [ "$AUTH" = 1 ] && [ "$PROXY" = 1 ]; then
  echo "ab_keygate.sh: AUTH=1 and PROXY=1 are two different requests: choose one" >&2
  exit 2
fi
if [ "$B_SOCKACT" = 1 ] && ! command -v systemd-socket-activate >/dev/null; then
  echo "ab_keygate.sh: B_SOCKACT=1 needs systemd-socket-activate (package systemd)" >&2
  exit 2
fi
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
apis='[[apis]]\nname = "demo"\nroutes = ["/demo"]\n'
if [ "$PROXY" = 1 ]; then
  taskset -c "$SERVER_CPU" "$UPSTREAM" --listen "127.0.0.1:$UPSTREAM_PORT" \
    >"$tmp/upstream.out" 2>&1 &
  pids+=($!)
  apis='[log]\nenabled = false\n\n[[apis]]\nname = "demo"\nroutes = ["/fixed"]\n'
  apis+="upstreams = [\"127.0.0.1:$UPSTREAM_PORT\"]\n"
fi
start() {  # binary port dir limits [sockact]
  mkdir -p "$3"
  printf "[limits]\n%s\n\n$apis" "$4" >"$3/keygate.toml"
  local activate=()
  # systemd-socket-activate binds the data port, then execs keygate as the same process (the
  # pid measured): LISTEN_PID is then keygate's own.
  [ "${5:-0}" = 1 ] && activate=(systemd-socket-activate -l "127.0.0.1:$2" --fdname=data)
  KEYGATE_BOOTSTRAP_ADMIN_KEY=$ADMIN_KEY taskset -c "$SERVER_CPU" "${activate[@]}" "$1" \
    --config "$3/keygate.toml" \
    --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$(($2 + 1))" --data-dir "$3/data" \
    --workers "$WORKERS" >"$3/out" 2>&1 &
  pids+=($!)
  echo $! >"$3/pid"
}
start "$A" 18200 "$tmp/a" "$A_LIMITS"
start "$B" 18210 "$tmp/b" "$B_LIMITS" "$B_SOCKACT"
pid_a=$(cat "$tmp/a/pid")
pid_b=$(cat "$tmp/b/pid")
readonly pid_a pid_b
for port in 18200 18210; do
  for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
  done
done
if [ "$B_SOCKACT" = 1 ] && ! grep -q '(from systemd)' "$tmp/b/out"; then
  echo "ab_keygate.sh: B did not take the socket from systemd-socket-activate:" >&2
  cat "$tmp/b/out" >&2
  exit 1
fi

path=/healthz
wrk_args=()
[ "$CLOSE" = 1 ] && wrk_args+=(-H "Connection: close")
if [ "$AUTH" = 1 ] || [ "$PROXY" = 1 ]; then
  path="/demo/items/42?x=1"
  [ "$PROXY" = 1 ] && path=/fixed/$RESPONSE_BYTES
  wrk_args+=(-H "X-ApiKey: $DEMO_KEY")
  for port in 18201 18211; do
    curl -fsS -o /dev/null -X POST -H "X-ApiKey: $ADMIN_KEY" -H 'Content-Type: application/json' \
      --data "{\"key\":\"$DEMO_KEY\",\"apis\":[\"demo\"]}" "http://127.0.0.1:$port/admin/keys"
    got=$(curl -fsS -H "X-ApiKey: $DEMO_KEY" "http://127.0.0.1:$((port - 1))$path" | wc -c)
    if [ "$PROXY" = 1 ] && [ "$got" != "$RESPONSE_BYTES" ]; then
      echo "ab_keygate.sh: port $((port - 1)) answered $got body bytes, not $RESPONSE_BYTES" >&2
      exit 1
    fi
  done
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
readonly hz=$(getconf CLK_TCK)
run() {  # pid port -> "cpu_us_per_request requests_per_s"
  local t0 t1 out
  t0=$(ticks "$1")
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" "${wrk_args[@]}" \
    "http://127.0.0.1:$2$path")
  t1=$(ticks "$1")
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "ab_keygate.sh: non-2xx answers on port $2:" >&2
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
