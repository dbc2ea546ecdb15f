# shellcheck shell=bash
# lib.sh: helpers shared by bench/e2e.sh and bench/admin_bench.sh; sourced, not run.
#
# Before sourcing, the script sets BENCH_NAME (the prefix of its messages). Before
# bench_make_tmp it sets STOP_TIMEOUT_S; http_status reads HTTP_READ_TIMEOUT_S (default 2).

[[ -n "${BENCH_NAME:-}" ]] || {
  echo "bench/lib.sh: set BENCH_NAME before sourcing" >&2
  exit 1
}

die() {
  echo "$BENCH_NAME: $*" >&2
  exit 1
}
log() { echo "$BENCH_NAME: $*" >&2; }

# The comment block at the top of the script (from line 2 to `set -`), without the "# ".
print_help() { sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# --- preconditions ------------------------------------------------------------------------------

require_uints() {  # VAR...: each must hold a non-negative integer
  local v
  for v in "$@"; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
  done
}

require_tools() {  # tool...
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool not found"
  done
}

# Sets allowed_cpus (for messages), CLK_TCK and load_at_start; after require_tools.
# shellcheck disable=SC2034  # allowed_cpus and load_at_start are for the sourcing script
record_host() {
  allowed_cpus="$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)"
  CLK_TCK="$(getconf CLK_TCK)"
  load_at_start="$(cut -d' ' -f1-3 /proc/loadavg)"
  readonly allowed_cpus CLK_TCK load_at_start
}

cpu_allowed() { taskset -c "$1" true 2>/dev/null; }

require_ports_free() {  # hint port...: dies naming hint (the variables to set) if one is taken
  local hint="$1" port
  shift
  for port in "$@"; do
    if [[ -n "$(ss -Htln "sport = :$port")" ]]; then
      die "port $port is already in use (set $hint)"
    fi
  done
}

# --- processes, temp dir and cleanup -----------------------------------------------------------

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

bench_tmp_kept=""    # what the temp dir holds, for the message when it is kept
bench_processes=()   # "name pid-variable", stopped in this order on exit
succeeded=0          # the script sets 1 at its very end: only then is the temp dir removed

# Creates the temp dir in $tmp and installs the EXIT/INT/TERM/ERR traps: on exit, every process
# whose pid variable is non-empty is stopped, in the given order, and the temp dir is removed
# unless the script failed or KEEP_TMP=1. The pid variables start empty.
bench_make_tmp() {  # dir-prefix what-it-keeps name:pid-variable...
  local entry
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  bench_tmp_kept="$2"
  shift 2
  for entry in "$@"; do
    bench_processes+=("${entry%%:*} ${entry#*:}")
    printf -v "${entry#*:}" '%s' ""
  done
  trap bench_cleanup EXIT
  trap 'log "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  local rc=$? entry name var
  trap - EXIT INT TERM ERR
  for entry in "${bench_processes[@]}"; do
    name="${entry%% *}" var="${entry#* }"
    [[ -n "${!var}" ]] && stop_process "$name" "${!var}"
  done
  if ((succeeded)) && [[ "${KEEP_TMP:-0}" != 1 ]]; then
    rm -rf "$tmp"
  else
    log "$bench_tmp_kept kept in $tmp"
  fi
  exit "$rc"
}

# --- measuring ----------------------------------------------------------------------------------

# Status line of the response to the request that "command args..." writes to stdout, sent to
# 127.0.0.1:port; nothing if the connection fails. The request should say "Connection: close".
http_status() {  # port command [args...]
  local port="$1"
  shift
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    "$@" >&3
    IFS= read -r -t "${HTTP_READ_TIMEOUT_S:-2}" line <&3 || exit 1
    printf '%s\n' "${line%$'\r'}"
  ) 2>/dev/null || true
}

# utime+stime in clock ticks of the process (all its threads); fails if it is gone.
cpu_ticks() {  # pid
  local stat
  stat="$(cat "/proc/$1/stat")" || return 1
  stat="${stat##*) }"  # fields after "comm", which may contain spaces
  # shellcheck disable=SC2086
  set -- $stat
  # Now $1 is field 3 (state), so utime (14) and stime (15) are $12 and $13.
  echo $((${12} + ${13}))
}

# utime+stime in clock ticks of pid and all its descendants (those gone by now are left out).
cpu_ticks_tree() {  # pid
  local pids=("$1") i=0 total=0 child pid ticks
  while ((i < ${#pids[@]})); do
    for child in $(pgrep -P "${pids[i]}" || true); do pids+=("$child"); done
    ((++i))
  done
  for pid in "${pids[@]}"; do
    ticks="$(cpu_ticks "$pid" 2>/dev/null)" || continue
    total=$((total + ticks))
  done
  echo "$total"
}

# wrk reports through this hook: exact totals and the p99 latency in microseconds, on one line
# "E2E_RESULT requests=N duration_us=N p99_us=N errors=N non2xx=N".
write_report_lua() {  # file
  cat >"$1" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("E2E_RESULT requests=%d duration_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
}

# "requests/s p99_us cpu_us_per_request socket_errors" of one wrk run.
wrk_figures() {  # requests duration_us p99_us cpu_ticks errors
  awk -v n="$1" -v us="$2" -v p99="$3" -v ticks="$4" -v hz="$CLK_TCK" -v e="$5" \
    'BEGIN { printf "%.0f %d %.2f %d\n", n / (us / 1e6), p99, ticks * 1e6 / hz / n, e }'
}

# --- report -------------------------------------------------------------------------------------

median() {  # "v1 v2 ..."
  tr -s ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 }
         END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# --- shared by bench/e2e_proxy.sh and bench/e2e_log.sh ------------------------------------------

# Starts `keygate-upstream --listen 127.0.0.1:0` with `--threads 1`, pinned to cpu, output in
# out-file, and waits for its "listening on 127.0.0.1:PORT" line. Sets the variable named
# pid-var to its pid (as soon as it starts, so the exit trap stops it even if this fails) and
# upstream_port to the port. Call it directly, not in $(...): the process must be our child.
# shellcheck disable=SC2034  # upstream_port is for the sourcing script
bench_start_upstream() {  # binary cpu out-file pid-var
  local bin="$1" cpu="$2" out="$3" i line
  taskset -c "$cpu" "$bin" --listen 127.0.0.1:0 --threads 1 >"$out" 2>"$out.err" &
  printf -v "$4" '%s' "$!"
  upstream_port=""
  for ((i = 0; i < ${STARTUP_TIMEOUT_S:-10} * 20; ++i)); do
    kill -0 "${!4}" 2>/dev/null || die "keygate-upstream exited during start-up; see $out.err"
    line="$(head -n1 "$out" 2>/dev/null || true)"
    if [[ "$line" =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]]; then
      upstream_port="${BASH_REMATCH[1]}"
      return 0
    fi
    sleep 0.05
  done
  die "keygate-upstream printed no 'listening on' line in ${STARTUP_TIMEOUT_S:-10}s; see $out"
}

# Waits until GET /healthz on 127.0.0.1:port answers 200 (and, when given, out-file has a line
# matching ready-regex); dies if pid exits first or after STARTUP_TIMEOUT_S.
bench_wait_healthz() {  # name pid port [out-file ready-regex]
  local name="$1" pid="$2" port="$3" out="${4:-}" ready="${5:-}" i status
  for ((i = 0; i < ${STARTUP_TIMEOUT_S:-10} * 20; ++i)); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up; see $tmp/$name.*"
    if [[ -z "$out" ]] || grep -Eq "$ready" "$out"; then
      status="$(http_status "$port" printf \
        'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')"
      [[ "$status" =~ ^HTTP/1\.[01]\ 200 ]] && return 0
      [[ -n "$status" ]] && die "$name answered GET /healthz with '$status', expected 200"
    fi
    sleep 0.05
  done
  die "$name not ready on port $port after ${STARTUP_TIMEOUT_S:-10}s; see $tmp/$name.*"
}

# Starts "${keygate_cmd[@]}" and nginx (NGINX_BIN with $tmp/nginx/nginx.conf; the command it
# runs is left in nginx_cmd for the report), both on SERVER_CPU, waits until both answer
# GET /healthz, and sets keygate_pid and nginx_pid (which the cleanup trap stops). taskset execs
# the server, so each pid is the server's own; its children inherit the pinning.
bench_start_keygate_and_nginx() {
  # -e: nginx opens its compiled-in error log before reading the config unless told otherwise.
  nginx_cmd=("$NGINX_BIN" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf")
  taskset -c "$SERVER_CPU" "${keygate_cmd[@]}" >"$tmp/keygate.out" 2>"$tmp/keygate.err" &
  keygate_pid=$!
  taskset -c "$SERVER_CPU" "${nginx_cmd[@]}" >"$tmp/nginx.out" 2>"$tmp/nginx.err" &
  nginx_pid=$!
  bench_wait_healthz keygate "$keygate_pid" "$KEYGATE_PORT" "$tmp/keygate.out" \
    '^keygate: listening '
  bench_wait_healthz nginx "$nginx_pid" "$NGINX_PORT"
  log "keygate pid $keygate_pid, nginx pid $nginx_pid, both on CPU $SERVER_CPU"
}

# "requests duration_us p99_us errors non2xx" from the E2E_RESULT line (write_report_lua's hook)
# of a wrk output file; fails when there is none.
bench_wrk_result() {  # wrk-output-file
  local line
  line="$(grep '^E2E_RESULT ' "$1")" || return 1
  awk '{ for (i = 2; i <= NF; ++i) { sub(/^[a-z0-9_]+=/, "", $i); printf "%s ", $i }
         print "" }' <<<"$line"
}

# Median of the per-round ratios a_i / b_i of two equally long lists "v1 v2 ...".
median_ratio() {  # "a1 a2 ..." "b1 b2 ..."
  local -a a b
  local i ratios=""
  read -ra a <<<"$1"
  read -ra b <<<"$2"
  ((${#a[@]} == ${#b[@]})) || die "median_ratio: lists of different lengths"
  for ((i = 0; i < ${#a[@]}; ++i)); do ratios+="$(ratio "${a[i]}" "${b[i]}") "; done
  median "$ratios" | awk '{ printf "%.2f", $1 }'
}

# "met" or "NOT met": does value satisfy "le limit" / "ge limit"?
meets() {  # value le|ge limit
  awk -v v="$1" -v op="$2" -v lim="$3" \
    'BEGIN { ok = op == "le" ? v <= lim : v >= lim; print (v != "n/a" && ok) ? "met" : "NOT met" }'
}
