#!/usr/bin/env bash
# e2e.sh: end-to-end load test of keygate against nginx, both serving GET /healthz over loopback.
#
# Starts keygate and nginx (1 worker each, pinned to SERVER_CPU), then drives each with wrk in
# two layouts: (a) wrk on CLIENT_CPU, a core of its own; (b) wrk on SERVER_CPU, sharing the
# server's core. Each layout runs ROUNDS rounds interleaved (keygate, nginx, keygate, ...) and
# reports medians of requests/s, p99 latency and server CPU time per request, with the ratio
# keygate/nginx (req/s: higher is better; p99 and CPU/request: lower is better).
#
# Server CPU time is utime+stime from /proc/<pid>/stat, summed over the server's process and its
# descendants (nginx master + workers), read right before and right after each wrk run, divided
# by the requests wrk completed. It includes connection setup and the server's idle threads.
#
# Usage (from the repo root): bench/e2e.sh [--smoke]
#   --smoke           DURATION=1 ROUNDS=1, for checking that the script works
# Environment:
#   KEYGATE_BIN       default build/release/tools/keygate (relative to the repo root)
#   DURATION          seconds per wrk run (default 10)
#   ROUNDS            rounds per layout (default 3)
#   SERVER_CPU        CPU the servers are pinned to (default 0)
#   CLIENT_CPU        CPU wrk is pinned to in layout (a) (default 1)
#   NGINX_PORT, KEYGATE_PORT, KEYGATE_ADMIN_PORT   default 18080, 18081, 18082
#   WRK_CONNECTIONS   default 50
#   KEEP_TMP=1        keep the temp dir (configs, server logs, raw wrk output)
# Every process the script starts is stopped on exit, including on failure and Ctrl-C.
set -Eeuo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
readonly script_dir repo_root
readonly command_line="$0${*:+ $*}"

smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h | --help)
      sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "e2e.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
if ((smoke)); then
  DURATION=1
  ROUNDS=1
fi

readonly KEYGATE_BIN="${KEYGATE_BIN:-${repo_root}/build/release/tools/keygate}"
readonly DURATION="${DURATION:-10}"
readonly ROUNDS="${ROUNDS:-3}"
readonly SERVER_CPU="${SERVER_CPU:-0}"
readonly CLIENT_CPU="${CLIENT_CPU:-1}"
readonly NGINX_PORT="${NGINX_PORT:-18080}"
readonly KEYGATE_PORT="${KEYGATE_PORT:-18081}"
readonly KEYGATE_ADMIN_PORT="${KEYGATE_ADMIN_PORT:-18082}"
readonly WRK_CONNECTIONS="${WRK_CONNECTIONS:-50}"
readonly WORKERS=1
readonly STARTUP_TIMEOUT_S=10
readonly STOP_TIMEOUT_S=15  # above keygate's default drain_timeout_ms

die() {
  echo "e2e.sh: $*" >&2
  exit 1
}
log() { echo "e2e.sh: $*" >&2; }

# --- preconditions ------------------------------------------------------------------------------

for v in DURATION ROUNDS SERVER_CPU CLIENT_CPU NGINX_PORT KEYGATE_PORT \
  KEYGATE_ADMIN_PORT WRK_CONNECTIONS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((DURATION > 0 && ROUNDS > 0)) || die "DURATION and ROUNDS must be positive"

command -v wrk >/dev/null || die "wrk not found: install the Debian package wrk"
NGINX_BIN="$(command -v nginx || true)"
[[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
[[ -n "$NGINX_BIN" ]] || die "nginx not found: install the Debian package nginx-light"
readonly NGINX_BIN
for tool in taskset getconf ss pgrep awk sort; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x "$KEYGATE_BIN" ]] ||
  die "keygate binary not found at $KEYGATE_BIN (set KEYGATE_BIN, or build it:" \
    "cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release &&" \
    "cmake --build build/release --target keygate)"

allowed_cpus="$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)"
cpu_allowed() { taskset -c "$1" true 2>/dev/null; }
cpu_allowed "$SERVER_CPU" ||
  die "SERVER_CPU=$SERVER_CPU is not usable here (allowed: $allowed_cpus)"
layouts=(a b)
if ! cpu_allowed "$CLIENT_CPU" || ((CLIENT_CPU == SERVER_CPU)); then
  log "CLIENT_CPU=$CLIENT_CPU is not a separate usable CPU (allowed: $allowed_cpus):" \
    "skipping layout (a)"
  layouts=(b)
fi

for port in "$NGINX_PORT" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT"; do
  if [[ -n "$(ss -Htln "sport = :$port")" ]]; then
    die "port $port is already in use (set NGINX_PORT / KEYGATE_PORT / KEYGATE_ADMIN_PORT)"
  fi
done

CLK_TCK="$(getconf CLK_TCK)"
readonly CLK_TCK
load_at_start="$(cut -d' ' -f1-3 /proc/loadavg)"
readonly load_at_start

# --- cleanup ------------------------------------------------------------------------------------

tmp="$(mktemp -d "${TMPDIR:-/tmp}/keygate-e2e.XXXXXX")"
keygate_pid=""
nginx_pid=""
succeeded=0

stop_process() {  # name pid: SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL; reaps it
  local name="$1" pid="$2" i
  kill -0 "$pid" 2>/dev/null || {
    wait "$pid" 2>/dev/null || true
    return 0
  }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT_S * 10; ++i)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_S}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM ERR
  [[ -n "$keygate_pid" ]] && stop_process keygate "$keygate_pid"
  # nginx's master stops its workers on SIGTERM before it exits.
  [[ -n "$nginx_pid" ]] && stop_process nginx "$nginx_pid"
  if ((succeeded)) && [[ "${KEEP_TMP:-0}" != 1 ]]; then
    rm -rf "$tmp"
  else
    log "logs and raw wrk output kept in $tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ------------------------------------------------------------------------------------

# Status line of GET /healthz on 127.0.0.1:port, or nothing if the connection fails.
healthz_status() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    IFS= read -r -t 2 line <&3 || exit 1
    printf '%s\n' "${line%$'\r'}"
  ) 2>/dev/null || true
}

wait_until_ready() {  # name pid port [stdout-file ready-regex]
  local name="$1" pid="$2" port="$3" out="${4:-}" ready="${5:-}" i status
  for ((i = 0; i < STARTUP_TIMEOUT_S * 20; ++i)); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up; see $tmp/$name.*"
    if [[ -z "$out" ]] || grep -Eq "$ready" "$out"; then
      status="$(healthz_status "$port")"
      if [[ "$status" =~ ^HTTP/1\.[01]\ 200 ]]; then return 0; fi
      [[ -n "$status" ]] && die "$name answered GET /healthz with '$status', expected 200"
    fi
    sleep 0.05
  done
  die "$name not ready on port $port after ${STARTUP_TIMEOUT_S}s; see $tmp/$name.*"
}

# utime+stime in clock ticks of pid and all its descendants.
cpu_ticks() {
  local pids=("$1") i=0 total=0 stat child pid
  while ((i < ${#pids[@]})); do
    for child in $(pgrep -P "${pids[i]}" || true); do pids+=("$child"); done
    ((++i))
  done
  for pid in "${pids[@]}"; do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    stat="${stat##*) }"  # fields after "comm", which may contain spaces
    # shellcheck disable=SC2086
    set -- $stat
    # Now $1 is field 3 (state), so utime (14) and stime (15) are $12 and $13.
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

median() {  # "v1 v2 ..."
  tr -s ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 }
         END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# wrk reports through this hook: exact totals and the latency percentile in microseconds.
cat >"$tmp/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("E2E_RESULT requests=%d duration_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# --- servers ------------------------------------------------------------------------------------

mkdir -p "$tmp/data" "$tmp/logs" "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $WORKERS;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events {
  worker_connections 1024;
}
http {
  access_log off;
  keepalive_requests 1000000;
  default_type text/plain;
  client_body_temp_path $tmp/nginx/client_body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /healthz {
      return 200 "ok";
    }
  }
}
EOF

keygate_cmd=("$KEYGATE_BIN" --listen "127.0.0.1:$KEYGATE_PORT"
  --admin-listen "127.0.0.1:$KEYGATE_ADMIN_PORT" --workers "$WORKERS"
  --data-dir "$tmp/data" --log-dir "$tmp/logs")
# -e: nginx opens its compiled-in error log before reading the config unless told otherwise.
nginx_cmd=("$NGINX_BIN" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf")

# taskset execs the server, so $! is the server itself; its children inherit the pinning.
taskset -c "$SERVER_CPU" "${keygate_cmd[@]}" >"$tmp/keygate.out" 2>"$tmp/keygate.err" &
keygate_pid=$!
taskset -c "$SERVER_CPU" "${nginx_cmd[@]}" >"$tmp/nginx.out" 2>"$tmp/nginx.err" &
nginx_pid=$!
wait_until_ready keygate "$keygate_pid" "$KEYGATE_PORT" "$tmp/keygate.out" '^keygate: listening '
wait_until_ready nginx "$nginx_pid" "$NGINX_PORT"
log "keygate pid $keygate_pid, nginx pid $nginx_pid, both on CPU $SERVER_CPU"

# --- runs ---------------------------------------------------------------------------------------

declare -A port_of=([keygate]="$KEYGATE_PORT" [nginx]="$NGINX_PORT")
declare -A pid_of=([keygate]="$keygate_pid" [nginx]="$nginx_pid")
declare -A client_cpu_of=([a]="$CLIENT_CPU" [b]="$SERVER_CPU")
declare -A rps p99 cpu  # "<layout> <server>" -> space-separated values, one per round
runs_table=""

# Prints "requests/s p99_us cpu_us_per_request"; raw output goes to $tmp.
run_wrk() {  # server client_cpu duration_s label
  local server="$1" client_cpu="$2" duration="$3" label="$4"
  local url="http://127.0.0.1:${port_of[$server]}/healthz" out="$tmp/wrk-$label.txt"
  local before after result requests duration_us p99_us errors non2xx
  before="$(cpu_ticks "${pid_of[$server]}")"
  taskset -c "$client_cpu" wrk -t1 -c"$WRK_CONNECTIONS" -d"${duration}s" --latency \
    -s "$tmp/report.lua" "$url" >"$out" 2>&1 || die "wrk failed against $server: see $out"
  after="$(cpu_ticks "${pid_of[$server]}")"
  kill -0 "${pid_of[$server]}" 2>/dev/null || die "$server died during the run; see $tmp/$server.*"
  result="$(grep '^E2E_RESULT ' "$out")" || die "no result line in $out"
  # The values of "E2E_RESULT requests=N duration_us=N p99_us=N errors=N non2xx=N", in order.
  read -r requests duration_us p99_us errors non2xx < <(
    awk '{ for (i = 2; i <= NF; ++i) { sub(/^[a-z0-9_]+=/, "", $i); printf "%s ", $i }
           print "" }' \
      <<<"$result")
  ((requests > 0)) || die "wrk completed no requests against $server: see $out"
  if ((errors > 0 || non2xx > 0)); then
    log "warning: $server run $label had $errors socket errors and $non2xx non-2xx responses"
  fi
  awk -v n="$requests" -v us="$duration_us" -v p99="$p99_us" -v ticks="$((after - before))" \
    -v hz="$CLK_TCK" -v e="$errors" -v s="$non2xx" \
    'BEGIN { printf "%.0f %d %.2f %d\n", n / (us / 1e6), p99, ticks * 1e6 / hz / n, e + s }'
}

for server in keygate nginx; do  # warm-up, not counted
  run_wrk "$server" "${client_cpu_of[${layouts[0]}]}" 1 "warmup-$server" >/dev/null
done

for layout in "${layouts[@]}"; do
  for ((round = 1; round <= ROUNDS; ++round)); do
    for server in keygate nginx; do
      log "layout ($layout) round $round/$ROUNDS: $server"
      # An assignment, so that a failing run_wrk stops the script (set -e).
      result="$(run_wrk "$server" "${client_cpu_of[$layout]}" "$DURATION" \
        "$layout-$round-$server")"
      read -r r p c e <<<"$result"
      rps["$layout $server"]+="$r "
      p99["$layout $server"]+="$p "
      cpu["$layout $server"]+="$c "
      runs_table+="| ($layout) | $round | $server | $r | $p | $c | $e |"$'\n'
    done
  done
done

# --- report -------------------------------------------------------------------------------------

echo "# keygate vs nginx, GET /healthz over loopback"
echo
echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
echo "- command: \`DURATION=$DURATION ROUNDS=$ROUNDS KEYGATE_BIN=$KEYGATE_BIN $command_line\`"
echo "- keygate: \`taskset -c $SERVER_CPU ${keygate_cmd[*]}\`"
nginx_version="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
echo "- nginx: \`taskset -c $SERVER_CPU ${nginx_cmd[*]}\` ($nginx_version)," \
  "worker_processes $WORKERS, access_log off, keepalive_requests 1000000"
wrk_version="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')"
echo "- wrk: \`taskset -c CPU wrk -t1 -c$WRK_CONNECTIONS -d${DURATION}s --latency URL\`" \
  "($wrk_version), ROUNDS=$ROUNDS per layout, servers interleaved, after a 1 s warm-up each"
echo "- host: $(uname -sr), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
  "$(nproc) CPUs usable, CLK_TCK $CLK_TCK"
echo "- load average (1/5/15 min) at start: $load_at_start," \
  "at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on these CPUs skews every figure)"
echo "- ratio = keygate / nginx: above 1 is better for req/s, below 1 is better for p99 and CPU"

for layout in "${layouts[@]}"; do
  echo
  if [[ "$layout" == a ]]; then
    echo "## Layout (a): servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU (medians of $ROUNDS)"
  else
    echo "## Layout (b): servers and wrk all on CPU $SERVER_CPU (medians of $ROUNDS)"
  fi
  echo
  echo "| metric | keygate | nginx | keygate/nginx |"
  echo "|---|---:|---:|---:|"
  for metric in "requests/s" "p99 latency (µs)" "server CPU (µs/request)"; do
    case "$metric" in
      requests/s) k="${rps["$layout keygate"]}" n="${rps["$layout nginx"]}" ;;
      p99*) k="${p99["$layout keygate"]}" n="${p99["$layout nginx"]}" ;;
      *) k="${cpu["$layout keygate"]}" n="${cpu["$layout nginx"]}" ;;
    esac
    k="$(median "$k")"
    n="$(median "$n")"
    echo "| $metric | $k | $n | $(ratio "$k" "$n") |"
  done
done

echo
echo "## All runs"
echo
echo "| layout | round | server | requests/s | p99 (µs) | CPU (µs/request) | errors + non-2xx |"
echo "|---|---:|---|---:|---:|---:|---:|"
printf '%s' "$runs_table"

succeeded=1
