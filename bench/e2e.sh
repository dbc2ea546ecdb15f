#!/usr/bin/env bash
# e2e.sh: end-to-end load test of keygate against nginx over loopback: GET /healthz, or with
# --auth an API-key check against AUTH_KEYS keys.
#
# Starts keygate and nginx (1 worker each, pinned to SERVER_CPU), then drives each with wrk in
# two layouts: (a) wrk on CLIENT_CPU, a core of its own; (b) wrk on SERVER_CPU, sharing the
# server's core. Each layout runs ROUNDS rounds interleaved (keygate, nginx, keygate, ...) and
# reports medians of requests/s, p99 latency and server CPU time per request, with the ratio
# keygate/nginx (req/s: higher is better; p99 and CPU/request: lower is better).
#
# Without --auth a third server runs in the same rounds: keygate-bare-responder
# (bench/bare_responder.cc), io_uring with a fixed response and no parsing — the floor any
# io_uring server pays on this kernel. Its ratios show how much of the gap to nginx is
# io_uring's and how much is left to keygate's own code.
#
# --auth: keygate-seed creates AUTH_KEYS keys bk-00000000, bk-00000001, ... for API "bench"
# (routes ["/bench"], auth-check) in keygate's data dir before keygate starts; nginx gets a
# `map $http_x_apikey` of the same keys and answers /bench with 200 or 403. wrk
# (bench/e2e_auth.lua) sends a different key with every request, cycling through all of them.
# Before measuring, both servers must answer 200 for valid keys and 401/403 for a bogus one.
# The comparison with nginx sends the key in the X-ApiKey header; keygate alone then runs the
# same check with the key in the query (?key=), a form body, a JSON body {"API_Key":...}, a
# 4 KiB JSON body with API_Key last, and in the header with only 1,000 rotating keys, each
# reported as a ratio to its header case in the same layout.
#
# Server CPU time is utime+stime from /proc/<pid>/stat, summed over the server's process and its
# descendants (nginx master + workers), read right before and right after each wrk run, divided
# by the requests wrk completed. It includes connection setup and the server's idle threads.
#
# Usage (from the repo root): bench/e2e.sh [--auth] [--smoke]
#   --auth            the API-key benchmark described above instead of GET /healthz
#   --smoke           DURATION=1 ROUNDS=1, for checking that the script works
# Environment:
#   KEYGATE_BIN       default build/release/tools/keygate (relative to the repo root)
#   KEYGATE_SEED_BIN  default build/release/tools/keygate-seed (--auth only)
#   BARE_BIN          default build/release/bench/keygate-bare-responder (without --auth; needs
#                     -DKEYGATE_BUILD_BENCH=ON); BARE_BIN= (empty) leaves the floor out
#   AUTH_KEYS         keys seeded and rotated through with --auth (default 100000, min 1000)
#   DURATION          seconds per wrk run (default 10)
#   ROUNDS            rounds per layout (default 3)
#   SERVER_CPU        CPU the servers are pinned to (default 0)
#   CLIENT_CPU        CPU wrk is pinned to in layout (a) (default 1)
#   NGINX_PORT, KEYGATE_PORT, KEYGATE_ADMIN_PORT, BARE_PORT   default 18080, 18081, 18082, 18083
#   WRK_CONNECTIONS   default 50
#   KEEP_TMP=1        keep the temp dir (configs, server logs, raw wrk output)
# Any non-2xx response during a run is fatal: the figures would not measure what they claim.
# Every process the script starts is stopped on exit, including on failure and Ctrl-C.
set -Eeuo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
readonly script_dir repo_root
readonly command_line="$0${*:+ $*}"
readonly BENCH_NAME=e2e.sh
# shellcheck source=bench/lib.sh
source "${script_dir}/lib.sh"

smoke=0
auth=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --auth) auth=1 ;;
    -h | --help)
      print_help
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

readonly auth
readonly KEYGATE_BIN="${KEYGATE_BIN:-${repo_root}/build/release/tools/keygate}"
readonly KEYGATE_SEED_BIN="${KEYGATE_SEED_BIN:-${repo_root}/build/release/tools/keygate-seed}"
BARE_BIN="${BARE_BIN-${repo_root}/build/release/bench/keygate-bare-responder}"
((auth)) && BARE_BIN=""  # the floor answers without checking anything: no auth counterpart
readonly BARE_BIN
readonly AUTH_KEYS="${AUTH_KEYS:-100000}"
readonly AUTH_KEYS_FEW=1000     # the "1,000 rotating keys" case
readonly AUTH_KEY_PREFIX=bk-    # key i is bk-<i, 8 digits>, as keygate-seed makes it
readonly AUTH_API=bench
readonly AUTH_PATH=/bench
readonly AUTH_LUA="${script_dir}/e2e_auth.lua"
readonly DURATION="${DURATION:-10}"
readonly ROUNDS="${ROUNDS:-3}"
readonly SERVER_CPU="${SERVER_CPU:-0}"
readonly CLIENT_CPU="${CLIENT_CPU:-1}"
readonly NGINX_PORT="${NGINX_PORT:-18080}"
readonly KEYGATE_PORT="${KEYGATE_PORT:-18081}"
readonly KEYGATE_ADMIN_PORT="${KEYGATE_ADMIN_PORT:-18082}"
readonly BARE_PORT="${BARE_PORT:-18083}"
readonly WRK_CONNECTIONS="${WRK_CONNECTIONS:-50}"
readonly WORKERS=1
readonly STARTUP_TIMEOUT_S=10
readonly STOP_TIMEOUT_S=15  # above keygate's default drain_timeout_ms
readonly HTTP_READ_TIMEOUT_S=2

# --- preconditions ------------------------------------------------------------------------------

require_uints DURATION ROUNDS SERVER_CPU CLIENT_CPU NGINX_PORT KEYGATE_PORT \
  KEYGATE_ADMIN_PORT BARE_PORT WRK_CONNECTIONS AUTH_KEYS
((DURATION > 0 && ROUNDS > 0)) || die "DURATION and ROUNDS must be positive"
# Keys have 8 digits, so that every request of a case has the same length.
((AUTH_KEYS >= AUTH_KEYS_FEW && AUTH_KEYS <= 100000000)) ||
  die "AUTH_KEYS must be in $AUTH_KEYS_FEW..100000000, got $AUTH_KEYS"

command -v wrk >/dev/null || die "wrk not found: install the Debian package wrk"
NGINX_BIN="$(command -v nginx || true)"
[[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
[[ -n "$NGINX_BIN" ]] || die "nginx not found: install the Debian package nginx-light"
readonly NGINX_BIN
require_tools taskset getconf ss pgrep awk sort
[[ -x "$KEYGATE_BIN" ]] ||
  die "keygate binary not found at $KEYGATE_BIN (set KEYGATE_BIN, or build it:" \
    "cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release &&" \
    "cmake --build build/release --target keygate)"
if [[ -n "$BARE_BIN" && ! -x "$BARE_BIN" ]]; then
  die "keygate-bare-responder not found at $BARE_BIN (set BARE_BIN, build it with" \
    "cmake -S . -B build/release -DKEYGATE_BUILD_BENCH=ON &&" \
    "cmake --build build/release --target keygate-bare-responder, or set BARE_BIN= to skip it)"
fi
if ((auth)); then
  [[ -x "$KEYGATE_SEED_BIN" ]] ||
    die "keygate-seed not found at $KEYGATE_SEED_BIN (set KEYGATE_SEED_BIN, or build it:" \
      "cmake --build build/release --target keygate-seed)"
  [[ -r "$AUTH_LUA" ]] || die "wrk script $AUTH_LUA not found"
fi

record_host
cpu_allowed "$SERVER_CPU" ||
  die "SERVER_CPU=$SERVER_CPU is not usable here (allowed: $allowed_cpus)"
layouts=(a b)
if ! cpu_allowed "$CLIENT_CPU" || ((CLIENT_CPU == SERVER_CPU)); then
  log "CLIENT_CPU=$CLIENT_CPU is not a separate usable CPU (allowed: $allowed_cpus):" \
    "skipping layout (a)"
  layouts=(b)
fi

require_ports_free "NGINX_PORT / KEYGATE_PORT / KEYGATE_ADMIN_PORT / BARE_PORT" \
  "$NGINX_PORT" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT" "$BARE_PORT"

# --- cleanup ------------------------------------------------------------------------------------

# nginx's master stops its workers on SIGTERM before it exits.
bench_make_tmp keygate-e2e "logs and raw wrk output" keygate:keygate_pid nginx:nginx_pid \
  bare:bare_pid

# --- helpers ------------------------------------------------------------------------------------

# Writes one request to AUTH_PATH carrying key as carrier says (header, query, form, json).
auth_request() {  # carrier key
  local carrier="$1" key="$2" type body
  case "$carrier" in
    header)
      printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ApiKey: %s\r\nConnection: close\r\n\r\n' \
        "$AUTH_PATH" "$key"
      return
      ;;
    query)
      printf 'GET %s?key=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' \
        "$AUTH_PATH" "$key"
      return
      ;;
    form) type=application/x-www-form-urlencoded body="key=$key" ;;
    json) type=application/json body="{\"API_Key\":\"$key\"}" ;;
    *) die "auth_request: unknown carrier $carrier" ;;
  esac
  printf 'POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n' \
    "$AUTH_PATH" "$type" "${#body}"
  printf 'Connection: close\r\n\r\n%s' "$body"
}

expect_status() {  # server status-regex what carrier key
  local server="$1" want="$2" what="$3" status
  status="$(http_status "${port_of[$server]}" auth_request "$4" "$5")"
  [[ "$status" =~ ^HTTP/1\.[01]\ ($want)(\ |$) ]] ||
    die "$server answered $what with '${status:-no response}', expected $want"
}

auth_key() { printf '%s%08d' "$AUTH_KEY_PREFIX" "$1"; }  # index

# wrk reports through lib.sh's hook: exact totals and the latency percentile in microseconds.
write_report_lua "$tmp/report.lua"

# --- servers ------------------------------------------------------------------------------------

mkdir -p "$tmp/data" "$tmp/logs" "$tmp/nginx"
# No access log on either side: nginx has `access_log off`, keygate `[log] enabled = false`
# (its default is on; each record costs ~0.6-1 us of its CPU per request, see
# bench/e2e_proxy.sh PROXY_ACCESS_LOG=1, which nginx would not be paying here).
printf '[log]\nenabled = false\n' >"$tmp/keygate.toml"
keygate_config=(--config "$tmp/keygate.toml")
nginx_auth_http=""
nginx_auth_server=""
if ((auth)); then
  log "seeding $AUTH_KEYS keys for API $AUTH_API into $tmp/data"
  seed_cmd=("$KEYGATE_SEED_BIN" --data-dir "$tmp/data" --count "$AUTH_KEYS" --api "$AUTH_API"
    --prefix "$AUTH_KEY_PREFIX")
  "${seed_cmd[@]}" >"$tmp/seed.out" 2>&1 || die "keygate-seed failed; see $tmp/seed.out"
  cat >>"$tmp/keygate.toml" <<EOF
[[apis]]
name = "$AUTH_API"
routes = ["$AUTH_PATH"]
mode = "auth-check"
EOF
  awk -v n="$AUTH_KEYS" -v p="$AUTH_KEY_PREFIX" \
    'BEGIN { for (i = 0; i < n; ++i) printf "\"%s%08d\" 1;\n", p, i }' >"$tmp/nginx/keys.map"
  # Large enough for AUTH_KEYS keys (nginx builds this hash for 100,000 keys in well under a
  # second). With the defaults (max_size 2048) nginx only warns "could not build optimal
  # map_hash" and falls back to huge buckets, which would handicap it: checked after start-up.
  nginx_auth_http="
  map_hash_bucket_size 128;
  map_hash_max_size $((AUTH_KEYS * 2));
  map \$http_x_apikey \$kg_ok {
    default 0;
    include $tmp/nginx/keys.map;
  }"
  nginx_auth_server="
    location $AUTH_PATH {
      default_type application/json;
      if (\$kg_ok = 0) {
        return 403;
      }
      return 200 '{\"ok\":true}';
    }"
fi
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
  scgi_temp_path $tmp/nginx/scgi;$nginx_auth_http
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /healthz {
      return 200 "ok";
    }$nginx_auth_server
  }
}
EOF

keygate_cmd=("$KEYGATE_BIN" "${keygate_config[@]}" --listen "127.0.0.1:$KEYGATE_PORT"
  --admin-listen "127.0.0.1:$KEYGATE_ADMIN_PORT" --workers "$WORKERS"
  --data-dir "$tmp/data" --log-dir "$tmp/logs")
bench_start_keygate_and_nginx

declare -A port_of=([keygate]="$KEYGATE_PORT" [nginx]="$NGINX_PORT" [bare]="$BARE_PORT")
declare -A pid_of=([keygate]="$keygate_pid" [nginx]="$nginx_pid")
if [[ -n "$BARE_BIN" ]]; then
  bare_cmd=("$BARE_BIN" "$BARE_PORT")
  taskset -c "$SERVER_CPU" "${bare_cmd[@]}" >"$tmp/bare.out" 2>"$tmp/bare.err" &
  bare_pid=$!
  bench_wait_healthz bare "$bare_pid" "$BARE_PORT" "$tmp/bare.out" '^bare: listening '
  pid_of[bare]="$bare_pid"
  log "keygate-bare-responder pid $bare_pid on CPU $SERVER_CPU"
fi

if ((auth)); then
  if grep -q 'could not build' "$tmp/nginx/error.log" "$tmp/nginx.err"; then
    die "nginx built a degraded map hash; see $tmp/nginx/error.log"
  fi
  for server in keygate nginx; do
    expect_status "$server" 200 "a valid key in X-ApiKey" header "$(auth_key 0)"
    expect_status "$server" 200 "a valid key in X-ApiKey" header "$(auth_key $((AUTH_KEYS - 1)))"
    expect_status "$server" '401|403' "a bogus key in X-ApiKey" header "${AUTH_KEY_PREFIX}bogus"
  done
  for carrier in query form json; do
    expect_status keygate 200 "a valid key ($carrier)" "$carrier" "$(auth_key $((AUTH_KEYS / 2)))"
    expect_status keygate '401|403' "a bogus key ($carrier)" "$carrier" "${AUTH_KEY_PREFIX}bogus"
  done
  log "both servers answer 200 for valid keys and 401/403 for a bogus one"
fi

# --- runs ---------------------------------------------------------------------------------------

# A case is what wrk sends: GET /healthz, or with --auth a request to AUTH_PATH generated by
# bench/e2e_auth.lua from its arguments "carrier key-count" (see that file).
declare -A case_args case_title
if ((auth)); then
  compared_case=header  # the case run against both servers
  plan=(keygate:header nginx:header keygate:query keygate:form keygate:json keygate:json4k
    keygate:header-1k)
  keygate_only_cases=(query form json json4k header-1k)
  case_args=([header]="header $AUTH_KEYS" [query]="query $AUTH_KEYS" [form]="form $AUTH_KEYS"
    [json]="json $AUTH_KEYS" [json4k]="json4k $AUTH_KEYS" [header-1k]="header $AUTH_KEYS_FEW")
  case_title=([header]="X-ApiKey header, $AUTH_KEYS keys"
    [query]="query ?key=, $AUTH_KEYS keys"
    [form]="POST form body key=..., $AUTH_KEYS keys"
    [json]="POST JSON body {\"API_Key\":...}, $AUTH_KEYS keys"
    [json4k]="POST 4 KiB JSON body, API_Key last, $AUTH_KEYS keys"
    [header-1k]="X-ApiKey header, $AUTH_KEYS_FEW keys")
  # wrk takes one script: the report hook, then the request generator.
  cat "$tmp/report.lua" "$AUTH_LUA" >"$tmp/auth.lua"
else
  compared_case=healthz
  plan=(keygate:healthz nginx:healthz)
  [[ -n "$BARE_BIN" ]] && plan+=(bare:healthz)
  keygate_only_cases=()
fi
declare -A client_cpu_of=([a]="$CLIENT_CPU" [b]="$SERVER_CPU")
declare -A rps p99 cpu  # "<layout> <server> <case>" -> space-separated values, one per round
runs_table=""

# Prints "requests/s p99_us cpu_us_per_request socket_errors"; raw output goes to $tmp.
run_wrk() {  # server case client_cpu duration_s label
  local server="$1" case="$2" client_cpu="$3" duration="$4" label="$5"
  local url="http://127.0.0.1:${port_of[$server]}" script="$tmp/report.lua" script_args=()
  local out="$tmp/wrk-$label.txt"
  local before after result requests duration_us p99_us errors non2xx
  if [[ "$case" == healthz ]]; then
    url+=/healthz
  else
    url+="$AUTH_PATH"
    script="$tmp/auth.lua"
    read -ra script_args <<<"-- ${case_args[$case]} $AUTH_KEY_PREFIX"
  fi
  before="$(cpu_ticks_tree "${pid_of[$server]}")"
  taskset -c "$client_cpu" wrk -t1 -c"$WRK_CONNECTIONS" -d"${duration}s" --latency \
    -s "$script" "$url" "${script_args[@]}" >"$out" 2>&1 ||
    die "wrk failed against $server ($case): see $out"
  after="$(cpu_ticks_tree "${pid_of[$server]}")"
  kill -0 "${pid_of[$server]}" 2>/dev/null || die "$server died during the run; see $tmp/$server.*"
  result="$(grep '^E2E_RESULT ' "$out")" || die "no result line in $out"
  # The values of "E2E_RESULT requests=N duration_us=N p99_us=N errors=N non2xx=N", in order.
  read -r requests duration_us p99_us errors non2xx < <(
    awk '{ for (i = 2; i <= NF; ++i) { sub(/^[a-z0-9_]+=/, "", $i); printf "%s ", $i }
           print "" }' \
      <<<"$result")
  ((requests > 0)) || die "wrk completed no requests against $server ($case): see $out"
  ((non2xx == 0)) ||
    die "$server answered $non2xx of $requests requests ($case, run $label) with 4xx/5xx: see $out"
  if ((errors > 0)); then
    log "warning: $server run $label ($case) had $errors socket errors"
  fi
  wrk_figures "$requests" "$duration_us" "$p99_us" "$((after - before))" "$errors"
}

# Warm-up, not counted; it also runs every case once, so a broken request fails here.
for entry in "${plan[@]}"; do
  run_wrk "${entry%%:*}" "${entry#*:}" "${client_cpu_of[${layouts[0]}]}" 1 \
    "warmup-${entry%%:*}-${entry#*:}" >/dev/null
done

for layout in "${layouts[@]}"; do
  for ((round = 1; round <= ROUNDS; ++round)); do
    for entry in "${plan[@]}"; do
      server="${entry%%:*}"
      case="${entry#*:}"
      log "layout ($layout) round $round/$ROUNDS: $server $case"
      # An assignment, so that a failing run_wrk stops the script (set -e).
      result="$(run_wrk "$server" "$case" "${client_cpu_of[$layout]}" "$DURATION" \
        "$layout-$round-$server-$case")"
      read -r r p c e <<<"$result"
      rps["$layout $server $case"]+="$r "
      p99["$layout $server $case"]+="$p "
      cpu["$layout $server $case"]+="$c "
      runs_table+="| ($layout) | $round | $server | $case | $r | $p | $c | $e |"$'\n'
    done
  done
done

# --- report -------------------------------------------------------------------------------------

# Median over the rounds of metric (rps, p99 or cpu) for "<layout> <server> <case>".
med() {  # metric key
  local -n values="$1"
  median "${values[$2]}"
}

# "met" or "NOT met": is a / b on the right side of limit ("le" or "ge")?
target() {  # a b le|ge limit
  awk -v a="$1" -v b="$2" -v op="$3" -v lim="$4" \
    'BEGIN { r = b == 0 ? 0 : a / b; ok = op == "le" ? r <= lim : r >= lim
             print (b != 0 && ok) ? "met" : "NOT met" }'
}

if ((auth)); then
  echo "# keygate vs nginx, API-key check with $AUTH_KEYS keys, over loopback"
else
  echo "# keygate vs nginx, GET /healthz over loopback"
fi
echo
echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
auth_env=""
((auth)) && auth_env="AUTH_KEYS=$AUTH_KEYS "
bare_env=""
[[ -n "$BARE_BIN" ]] && bare_env="BARE_BIN=$BARE_BIN "
echo "- command: \`DURATION=$DURATION ROUNDS=$ROUNDS ${auth_env}KEYGATE_BIN=$KEYGATE_BIN" \
  "$bare_env$command_line\`"
echo "- keygate: \`taskset -c $SERVER_CPU ${keygate_cmd[*]}\`, keygate.toml has" \
  "\`[log] enabled = false\` (no access log, as nginx)"
nginx_version="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
echo "- nginx: \`taskset -c $SERVER_CPU ${nginx_cmd[*]}\` ($nginx_version)," \
  "worker_processes $WORKERS, access_log off, keepalive_requests 1000000"
if ((auth)); then
  echo "- keys: \`${seed_cmd[*]}\` before keygate starts; keygate.toml has one" \
    "\`[[apis]] name = \"$AUTH_API\" routes = [\"$AUTH_PATH\"] mode = \"auth-check\"\`;" \
    "nginx: \`map \$http_x_apikey \$kg_ok\` of the same $AUTH_KEYS keys (default 0)," \
    "\`location $AUTH_PATH { if (\$kg_ok = 0) { return 403; } return 200 '{\"ok\":true}'; }\`"
  echo "- requests: bench/e2e_auth.lua, a different key with every request, stepping through" \
    "all keys of the case in a scattered order; keygate answers 200 with a JSON body naming" \
    "the key, nginx a fixed 200 body. Verified before measuring: 200 for valid keys, 401/403" \
    "for a bogus one; every run had 0 non-2xx responses"
fi
wrk_version="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')"
echo "- wrk: \`taskset -c CPU wrk -t1 -c$WRK_CONNECTIONS -d${DURATION}s --latency URL\`" \
  "($wrk_version), ROUNDS=$ROUNDS per layout, runs interleaved, after a 1 s warm-up of each"
echo "- host: $(uname -sr), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
  "$(nproc) CPUs usable, CLK_TCK $CLK_TCK"
echo "- load average (1/5/15 min) at start: $load_at_start," \
  "at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on these CPUs skews every figure)"
echo "- ratio = keygate / nginx: above 1 is better for req/s, below 1 is better for p99 and CPU"
if [[ -n "$BARE_BIN" ]]; then
  echo "- bare io_uring: \`taskset -c $SERVER_CPU ${bare_cmd[*]}\` (bench/bare_responder.cc: same" \
    "ring set-up as a keygate worker, multishot accept and receive, one fixed response per" \
    "blank line, no parsing): the floor under any io_uring server here"
fi

for layout in "${layouts[@]}"; do
  echo
  if [[ "$layout" == a ]]; then
    where="servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
  else
    where="servers and wrk all on CPU $SERVER_CPU"
  fi
  echo "## Layout ($layout): $where (medians of $ROUNDS)"
  echo
  ((auth)) && echo "Key in the X-ApiKey header, $AUTH_KEYS keys." && echo
  if [[ -n "$BARE_BIN" ]]; then
    echo "| metric | keygate | nginx | bare io_uring | keygate/nginx | bare/nginx | keygate/bare |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
  else
    echo "| metric | keygate | nginx | keygate/nginx |"
    echo "|---|---:|---:|---:|"
  fi
  for metric in rps p99 cpu; do
    k="$(med "$metric" "$layout keygate $compared_case")"
    n="$(med "$metric" "$layout nginx $compared_case")"
    case "$metric" in
      rps) name="requests/s" ;;
      p99) name="p99 latency (µs)" ;;
      cpu) name="server CPU (µs/request)" ;;
    esac
    if [[ -n "$BARE_BIN" ]]; then
      f="$(med "$metric" "$layout bare $compared_case")"
      echo "| $name | $k | $n | $f | $(ratio "$k" "$n") | $(ratio "$f" "$n") | $(ratio "$k" "$f") |"
    else
      echo "| $name | $k | $n | $(ratio "$k" "$n") |"
    fi
  done

  # The issues' targets: #2 (healthz) CPU ≤ 0.8 and (b) req/s ≥ 1.15; #3 (auth) 0.85 and 1.1.
  cpu_limit=0.85 rps_limit=1.1
  ((auth)) || cpu_limit=0.8 rps_limit=1.15
  k_cpu="$(med cpu "$layout keygate $compared_case")"
  n_cpu="$(med cpu "$layout nginx $compared_case")"
  echo
  echo "- target keygate CPU/request ≤ $cpu_limit × nginx: $(ratio "$k_cpu" "$n_cpu")," \
    "$(target "$k_cpu" "$n_cpu" le "$cpu_limit")"
  if [[ "$layout" == b ]]; then
    k_rps="$(med rps "$layout keygate $compared_case")"
    n_rps="$(med rps "$layout nginx $compared_case")"
    echo "- target keygate req/s ≥ $rps_limit × nginx: $(ratio "$k_rps" "$n_rps")," \
      "$(target "$k_rps" "$n_rps" ge "$rps_limit")"
  fi
  ((auth)) || continue

  echo
  echo "### keygate alone, layout ($layout): other key carriers and fewer keys (medians of $ROUNDS)"
  echo
  echo "Ratios are to keygate's X-ApiKey header case with $AUTH_KEYS keys in the same layout."
  echo
  echo "| case | requests/s | ratio | p99 (µs) | ratio | CPU (µs/request) | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for case in header "${keygate_only_cases[@]}"; do
    row="| ${case_title[$case]}"
    for metric in rps p99 cpu; do
      v="$(med "$metric" "$layout keygate $case")"
      row+=" | $v | $(ratio "$v" "$(med "$metric" "$layout keygate header")")"
    done
    echo "$row |"
  done
done

echo
echo "## All runs"
echo
echo "| layout | round | server | case | requests/s | p99 (µs) | CPU (µs/request) | socket errors |"
echo "|---|---:|---|---|---:|---:|---:|---:|"
printf '%s' "$runs_table"

succeeded=1
