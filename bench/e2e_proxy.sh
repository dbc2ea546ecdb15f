#!/usr/bin/env bash
# e2e_proxy.sh: end-to-end load test of keygate as a forwarding gateway against nginx
# proxy_pass, both checking an API key among AUTH_KEYS keys and fetching a RESPONSE_BYTES body
# from the same keygate-upstream process, over loopback.
#
# One keygate-upstream (1 thread), keygate (1 worker) and nginx (1 worker) are pinned to
# SERVER_CPU; wrk runs on CLIENT_CPU. Each round runs keygate and nginx once (the order
# alternates between rounds) and the report gives every round, its keygate/nginx ratios and
# the median of those ratios for requests/s, p99 latency and the proxy's own CPU per request
# (req/s: higher is better; p99 and CPU: lower is better).
#
# keygate: keygate-seed creates AUTH_KEYS keys bk-00000000, bk-00000001, ... for API "bench"
# before keygate starts; keygate.toml has one API with routes ["/fixed"] and
# upstreams ["127.0.0.1:<upstream port>"] (proxy mode). nginx: `map $http_x_apikey $kg_key_id` of
# the same keys (as in `e2e.sh --auth`; the value is a key id), `location /fixed` answers 403
# for an unknown key and otherwise does `proxy_pass http://upstream` with `upstream { server
# 127.0.0.1:<port>; keepalive 64; }`, `proxy_http_version 1.1`, `proxy_set_header Connection
# ""`; like keygate it removes X-ApiKey from the forwarded request and sets X-Keygate-Key-Id,
# X-Keygate-Api, X-Forwarded-For and X-Forwarded-Proto. Both send
# GET /fixed/RESPONSE_BYTES to the upstream, which answers RESPONSE_BYTES bytes from a
# prebuilt buffer. wrk (bench/e2e_auth.lua, header carrier) sends a different key with every
# request, cycling through all of them. Before measuring, both must answer 200 with exactly
# RESPONSE_BYTES body bytes for valid keys and 401/403 for a bogus one.
#
# Access logs: off on both sides by default (nginx `access_log off`, keygate `[log]
# enabled = false`). With PROXY_ACCESS_LOG=1 both write one: keygate its default access log
# (a record per request, no body capture), nginx `access_log ... combined buffer=64k`.
#
# Proxy CPU time is utime+stime from /proc/<pid>/stat of the proxy's processes (keygate; nginx
# master + workers), read right before and right after each wrk run, divided by the requests
# wrk completed. The upstream's CPU is not in it; it is reported separately (same process for
# both proxies, so it should be about equal).
#
# Usage (from the repo root): bench/e2e_proxy.sh [--smoke]
#   --smoke           DURATION=1 ROUNDS=1 AUTH_KEYS=1000, for checking that the script works
# Environment:
#   KEYGATE_BIN           default build/release/tools/keygate (relative to the repo root)
#   KEYGATE_SEED_BIN      default build/release/tools/keygate-seed
#   KEYGATE_UPSTREAM_BIN  default build/release/tools/keygate-upstream
#   AUTH_KEYS         keys seeded and rotated through (default 100000, 1..100000000)
#   RESPONSE_BYTES    upstream response body size (default 1024)
#   PROXY_ACCESS_LOG  0 (default): no access log on either proxy; 1: both write one
#   DURATION          seconds per wrk run (default 10)
#   ROUNDS            rounds (default 5)
#   SERVER_CPU        CPU of the upstream and both proxies (default 0)
#   CLIENT_CPU        CPU of wrk (default 1; must differ from SERVER_CPU)
#   NGINX_PORT, KEYGATE_PORT, KEYGATE_ADMIN_PORT   default 18090, 18091, 18092
#   WRK_CONNECTIONS   default 50
#   KEEP_TMP=1        keep the temp dir (configs, server logs, raw wrk output)
# Any non-2xx response during a run is fatal: the figures would not measure what they claim.
# Every process the script starts is stopped on exit, including on failure and Ctrl-C.
set -Eeuo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
readonly script_dir repo_root
readonly command_line="$0${*:+ $*}"
readonly BENCH_NAME=e2e_proxy.sh
# shellcheck source=bench/lib.sh
source "${script_dir}/lib.sh"

smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h | --help)
      print_help
      exit 0
      ;;
    *)
      echo "e2e_proxy.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
if ((smoke)); then
  DURATION=1
  ROUNDS=1
  AUTH_KEYS=1000
fi

readonly KEYGATE_BIN="${KEYGATE_BIN:-${repo_root}/build/release/tools/keygate}"
readonly KEYGATE_SEED_BIN="${KEYGATE_SEED_BIN:-${repo_root}/build/release/tools/keygate-seed}"
readonly KEYGATE_UPSTREAM_BIN="${KEYGATE_UPSTREAM_BIN:-${repo_root}/build/release/tools/keygate-upstream}"
readonly AUTH_KEYS="${AUTH_KEYS:-100000}"
readonly AUTH_KEY_PREFIX=bk-  # key i is bk-<i, 8 digits>, as keygate-seed makes it
readonly AUTH_API=bench
readonly ROUTE=/fixed
readonly RESPONSE_BYTES="${RESPONSE_BYTES:-1024}"
readonly PROXY_ACCESS_LOG="${PROXY_ACCESS_LOG:-0}"
readonly AUTH_LUA="${script_dir}/e2e_auth.lua"
readonly DURATION="${DURATION:-10}"
readonly ROUNDS="${ROUNDS:-5}"
readonly SERVER_CPU="${SERVER_CPU:-0}"
readonly CLIENT_CPU="${CLIENT_CPU:-1}"
readonly NGINX_PORT="${NGINX_PORT:-18090}"
readonly KEYGATE_PORT="${KEYGATE_PORT:-18091}"
readonly KEYGATE_ADMIN_PORT="${KEYGATE_ADMIN_PORT:-18092}"
readonly WRK_CONNECTIONS="${WRK_CONNECTIONS:-50}"
readonly WORKERS=1
readonly UPSTREAM_KEEPALIVE=64  # nginx's idle upstream connections; keygate's default is 64 too
readonly STARTUP_TIMEOUT_S=10
readonly STOP_TIMEOUT_S=15  # above keygate's default drain_timeout_ms
readonly HTTP_READ_TIMEOUT_S=2
# Targets from the issue, as keygate/nginx ratios.
readonly TARGET_CPU_RATIO_MAX=0.6
readonly TARGET_RPS_RATIO_MIN=1.3
readonly TARGET_P99_RATIO_MAX=1.0

# --- preconditions ------------------------------------------------------------------------------

require_uints DURATION ROUNDS SERVER_CPU CLIENT_CPU NGINX_PORT KEYGATE_PORT \
  KEYGATE_ADMIN_PORT WRK_CONNECTIONS AUTH_KEYS RESPONSE_BYTES PROXY_ACCESS_LOG
((DURATION > 0 && ROUNDS > 0)) || die "DURATION and ROUNDS must be positive"
((AUTH_KEYS >= 1 && AUTH_KEYS <= 100000000)) ||
  die "AUTH_KEYS must be in 1..100000000, got $AUTH_KEYS"
((RESPONSE_BYTES >= 1 && RESPONSE_BYTES <= 4194304)) ||
  die "RESPONSE_BYTES must be in 1..4194304 (keygate-upstream's prebuilt buffer)"
((PROXY_ACCESS_LOG <= 1)) || die "PROXY_ACCESS_LOG must be 0 or 1"

command -v wrk >/dev/null || die "wrk not found: install the Debian package wrk"
NGINX_BIN="$(command -v nginx || true)"
[[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
[[ -n "$NGINX_BIN" ]] || die "nginx not found: install the Debian package nginx-light"
readonly NGINX_BIN
require_tools taskset getconf ss pgrep awk sort curl
for bin in "$KEYGATE_BIN" "$KEYGATE_SEED_BIN" "$KEYGATE_UPSTREAM_BIN"; do
  [[ -x "$bin" ]] ||
    die "$bin not found (set KEYGATE_BIN / KEYGATE_SEED_BIN / KEYGATE_UPSTREAM_BIN, or build:" \
      "cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release &&" \
      "cmake --build build/release -j2 --target keygate keygate-seed keygate-upstream)"
done
[[ -r "$AUTH_LUA" ]] || die "wrk script $AUTH_LUA not found"

record_host
cpu_allowed "$SERVER_CPU" || die "SERVER_CPU=$SERVER_CPU is not usable here (allowed: $allowed_cpus)"
if ! cpu_allowed "$CLIENT_CPU" || ((CLIENT_CPU == SERVER_CPU)); then
  die "CLIENT_CPU=$CLIENT_CPU must be a usable CPU other than SERVER_CPU (allowed: $allowed_cpus)"
fi
require_ports_free "NGINX_PORT / KEYGATE_PORT / KEYGATE_ADMIN_PORT" \
  "$NGINX_PORT" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT"

# --- cleanup ------------------------------------------------------------------------------------

# Proxies first, so that they do not see their upstream vanish under load.
bench_make_tmp keygate-e2e-proxy "configs, logs and raw wrk output" \
  keygate:keygate_pid nginx:nginx_pid upstream:upstream_pid

# --- servers ------------------------------------------------------------------------------------

auth_key() { printf '%s%08d' "$AUTH_KEY_PREFIX" "$1"; }  # index

write_report_lua "$tmp/report.lua"
cat "$tmp/report.lua" "$AUTH_LUA" >"$tmp/proxy.lua"  # wrk takes one script
mkdir -p "$tmp/data" "$tmp/logs" "$tmp/nginx"

bench_start_upstream "$KEYGATE_UPSTREAM_BIN" "$SERVER_CPU" "$tmp/upstream.out" upstream_pid
# shellcheck disable=SC2154  # upstream_pid is set by bench_start_upstream
log "keygate-upstream pid $upstream_pid on 127.0.0.1:$upstream_port, CPU $SERVER_CPU"

log "seeding $AUTH_KEYS keys for API $AUTH_API into $tmp/data"
seed_cmd=("$KEYGATE_SEED_BIN" --data-dir "$tmp/data" --count "$AUTH_KEYS" --api "$AUTH_API"
  --prefix "$AUTH_KEY_PREFIX")
"${seed_cmd[@]}" >"$tmp/seed.out" 2>&1 || die "keygate-seed failed; see $tmp/seed.out"

if ((PROXY_ACCESS_LOG)); then
  keygate_log_toml=""  # the default: enabled
  nginx_access_log="access_log $tmp/nginx/access.log combined buffer=64k flush=1s;"
else
  keygate_log_toml=$'[log]\nenabled = false\n'
  nginx_access_log="access_log off;"
fi
cat >"$tmp/keygate.toml" <<EOF
${keygate_log_toml}
[[apis]]
name = "$AUTH_API"
routes = ["$ROUTE"]
upstreams = ["127.0.0.1:$upstream_port"]
EOF

# The map's value stands in for keygate's key id (13 characters, like keygate's), so that nginx
# forwards the same identity headers keygate adds.
awk -v n="$AUTH_KEYS" -v p="$AUTH_KEY_PREFIX" \
  'BEGIN { for (i = 0; i < n; ++i) printf "\"%s%08d\" k%012d;\n", p, i, i }' >"$tmp/nginx/keys.map"
# The map hash is sized for AUTH_KEYS (see e2e.sh); a degraded hash is checked after start-up.
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $WORKERS;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events {
  worker_connections 4096;
}
http {
  $nginx_access_log
  keepalive_requests 1000000;
  default_type text/plain;
  client_body_temp_path $tmp/nginx/client_body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  map_hash_bucket_size 128;
  map_hash_max_size $((AUTH_KEYS * 2));
  map \$http_x_apikey \$kg_key_id {
    default "";
    include $tmp/nginx/keys.map;
  }
  upstream upstream {
    server 127.0.0.1:$upstream_port;
    keepalive $UPSTREAM_KEEPALIVE;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /healthz {
      return 200 "ok";
    }
    location $ROUTE {
      if (\$kg_key_id = "") {
        return 403;
      }
      proxy_pass http://upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-ApiKey "";
      proxy_set_header X-Keygate-Key-Id \$kg_key_id;
      proxy_set_header X-Keygate-Api $AUTH_API;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF

keygate_cmd=("$KEYGATE_BIN" --config "$tmp/keygate.toml" --listen "127.0.0.1:$KEYGATE_PORT"
  --admin-listen "127.0.0.1:$KEYGATE_ADMIN_PORT" --workers "$WORKERS"
  --data-dir "$tmp/data" --log-dir "$tmp/logs")
bench_start_keygate_and_nginx
if grep -q 'could not build' "$tmp/nginx/error.log" "$tmp/nginx.err"; then
  die "nginx built a degraded map hash; see $tmp/nginx/error.log"
fi

declare -A port_of=([keygate]="$KEYGATE_PORT" [nginx]="$NGINX_PORT")
declare -A pid_of=([keygate]="$keygate_pid" [nginx]="$nginx_pid")
readonly path="$ROUTE/$RESPONSE_BYTES"

# "status body-bytes" of GET path with the key in X-ApiKey.
fetch() {  # server key
  curl -sS -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 \
    -H "X-ApiKey: $2" "http://127.0.0.1:${port_of[$1]}$path" 2>/dev/null || echo "000 0"
}

for server in keygate nginx; do
  for i in 0 $((AUTH_KEYS - 1)); do
    got="$(fetch "$server" "$(auth_key "$i")")"
    [[ "$got" == "200 $RESPONSE_BYTES" ]] ||
      die "$server answered GET $path with key $(auth_key "$i") with '$got'," \
        "expected '200 $RESPONSE_BYTES' (status, body bytes)"
  done
  got="$(fetch "$server" "${AUTH_KEY_PREFIX}bogus")"
  [[ "$got" =~ ^(401|403)\  ]] ||
    die "$server answered a bogus key with '$got', expected 401 or 403"
done
log "both proxies answer 200 with $RESPONSE_BYTES bytes for valid keys, 401/403 for a bogus one"

# --- runs ---------------------------------------------------------------------------------------

# Prints "requests/s p99_us proxy_cpu_us_per_request upstream_cpu_us_per_request socket_errors";
# raw output goes to $tmp.
run_wrk() {  # server duration_s label
  local server="$1" duration="$2" label="$3" out="$tmp/wrk-$3.txt"
  local before after up_before up_after requests duration_us p99_us errors non2xx
  before="$(cpu_ticks_tree "${pid_of[$server]}")"
  up_before="$(cpu_ticks "$upstream_pid")"
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"${duration}s" --latency \
    -s "$tmp/proxy.lua" "http://127.0.0.1:${port_of[$server]}$path" \
    -- header "$AUTH_KEYS" "$AUTH_KEY_PREFIX" >"$out" 2>&1 ||
    die "wrk failed against $server: see $out"
  after="$(cpu_ticks_tree "${pid_of[$server]}")"
  up_after="$(cpu_ticks "$upstream_pid")"
  kill -0 "${pid_of[$server]}" 2>/dev/null || die "$server died during the run; see $tmp/$server.*"
  kill -0 "$upstream_pid" 2>/dev/null || die "keygate-upstream died during the run"
  read -r requests duration_us p99_us errors non2xx < <(bench_wrk_result "$out" || true)
  [[ -n "${requests:-}" ]] || die "no result line in $out"
  ((requests > 0)) || die "wrk completed no requests against $server: see $out"
  ((non2xx == 0)) ||
    die "$server answered $non2xx of $requests requests (run $label) with 4xx/5xx: see $out"
  ((errors == 0)) || log "warning: $server run $label had $errors socket errors"
  awk -v n="$requests" -v us="$duration_us" -v p99="$p99_us" -v t="$((after - before))" \
    -v u="$((up_after - up_before))" -v hz="$CLK_TCK" -v e="$errors" \
    'BEGIN { printf "%.0f %d %.2f %.2f %d\n", n / (us / 1e6), p99, t * 1e6 / hz / n,
             u * 1e6 / hz / n, e }'
}

# Warm-up, not counted: fills both proxies' upstream keep-alive pools and caches.
for server in keygate nginx; do run_wrk "$server" 1 "warmup-$server" >/dev/null; done

declare -A rps p99 cpu ucpu  # server -> space-separated values, one per round
runs_table=""
for ((round = 1; round <= ROUNDS; ++round)); do
  order=(keygate nginx)
  ((round % 2 == 0)) && order=(nginx keygate)  # cancels a drift in the machine's load
  declare -A this=()
  for server in "${order[@]}"; do
    log "round $round/$ROUNDS: $server"
    # An assignment, so that a failing run_wrk stops the script (set -e).
    result="$(run_wrk "$server" "$DURATION" "$round-$server")"
    read -r r p c u e <<<"$result"
    rps[$server]+="$r " p99[$server]+="$p " cpu[$server]+="$c " ucpu[$server]+="$u "
    this[$server]="$r $p $c $u $e"
  done
  for server in keygate nginx; do
    read -r r p c u e <<<"${this[$server]}"
    runs_table+="| $round | $server | $r | $p | $c | $u | $e |"$'\n'
  done
  read -r kr kp kc _ <<<"${this[keygate]}"
  read -r nr np nc _ <<<"${this[nginx]}"
  runs_table+="| $round | **keygate/nginx** | **$(ratio "$kr" "$nr")** | **$(ratio "$kp" "$np")** |"
  runs_table+=" **$(ratio "$kc" "$nc")** | | |"$'\n'
done

# --- report -------------------------------------------------------------------------------------

rps_ratio="$(median_ratio "${rps[keygate]}" "${rps[nginx]}")"
p99_ratio="$(median_ratio "${p99[keygate]}" "${p99[nginx]}")"
cpu_ratio="$(median_ratio "${cpu[keygate]}" "${cpu[nginx]}")"

echo "# keygate vs nginx as an API-key checking proxy, $AUTH_KEYS keys, $RESPONSE_BYTES-byte responses"
echo
echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
echo "- command: \`DURATION=$DURATION ROUNDS=$ROUNDS AUTH_KEYS=$AUTH_KEYS" \
  "RESPONSE_BYTES=$RESPONSE_BYTES PROXY_ACCESS_LOG=$PROXY_ACCESS_LOG" \
  "KEYGATE_BIN=$KEYGATE_BIN $command_line\`"
echo "- upstream: \`taskset -c $SERVER_CPU $KEYGATE_UPSTREAM_BIN --listen 127.0.0.1:0" \
  "--threads 1\` (port $upstream_port), GET $path answers $RESPONSE_BYTES bytes"
echo "- keygate: \`taskset -c $SERVER_CPU ${keygate_cmd[*]}\`; keygate.toml:" \
  "\`[[apis]] name = \"$AUTH_API\" routes = [\"$ROUTE\"] upstreams = [\"127.0.0.1:$upstream_port\"]\`" \
  "$( ((PROXY_ACCESS_LOG)) && echo "(access log on)" || echo "and \`[log] enabled = false\`")"
nginx_version="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
echo "- nginx: \`taskset -c $SERVER_CPU ${nginx_cmd[*]}\` ($nginx_version), worker_processes" \
  "$WORKERS, \`$nginx_access_log\`, \`map \$http_x_apikey \$kg_key_id\` of the same keys" \
  "(value: a 13-character id), \`location $ROUTE { if (\$kg_key_id = \"\") { return 403; }" \
  "proxy_pass http://upstream; }\` with" \
  "\`upstream { server 127.0.0.1:$upstream_port; keepalive $UPSTREAM_KEEPALIVE; }\`," \
  "\`proxy_http_version 1.1; proxy_set_header Connection \"\";\`, X-ApiKey removed," \
  "X-Keygate-Key-Id, X-Keygate-Api, X-Forwarded-For and X-Forwarded-Proto set (as keygate does)"
echo "- keys: \`${seed_cmd[*]}\` before keygate starts"
wrk_version="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')"
echo "- wrk: \`taskset -c $CLIENT_CPU wrk -t1 -c$WRK_CONNECTIONS -d${DURATION}s --latency" \
  "-s e2e_auth.lua URL -- header $AUTH_KEYS $AUTH_KEY_PREFIX\` ($wrk_version): a different key" \
  "with every request; $ROUNDS rounds, order alternating, after a 1 s warm-up of each; every" \
  "run had 0 non-2xx responses"
echo "- host: $(uname -sr), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
  "$(nproc) CPUs usable, CLK_TCK $CLK_TCK"
echo "- load average (1/5/15 min) at start: $load_at_start," \
  "at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on these CPUs skews every figure)"
echo "- ratio = keygate / nginx: above 1 is better for req/s, below 1 is better for p99 and CPU"
echo
echo "## Medians of $ROUNDS rounds"
echo
echo "| metric | keygate | nginx | keygate/nginx (median of per-round ratios) | target |"
echo "|---|---:|---:|---:|---|"
echo "| requests/s | $(median "${rps[keygate]}") | $(median "${rps[nginx]}") | $rps_ratio |" \
  "≥ $TARGET_RPS_RATIO_MIN: $(meets "$rps_ratio" ge "$TARGET_RPS_RATIO_MIN") |"
echo "| p99 latency (µs) | $(median "${p99[keygate]}") | $(median "${p99[nginx]}") | $p99_ratio |" \
  "≤ $TARGET_P99_RATIO_MAX: $(meets "$p99_ratio" le "$TARGET_P99_RATIO_MAX") |"
echo "| proxy CPU (µs/request) | $(median "${cpu[keygate]}") | $(median "${cpu[nginx]}") |" \
  "$cpu_ratio | ≤ $TARGET_CPU_RATIO_MAX: $(meets "$cpu_ratio" le "$TARGET_CPU_RATIO_MAX") |"
echo "| upstream CPU (µs/request) | $(median "${ucpu[keygate]}") | $(median "${ucpu[nginx]}") |" \
  "$(median_ratio "${ucpu[keygate]}" "${ucpu[nginx]}") | (same process; not the proxy's) |"
echo
echo "## All runs"
echo
echo "| round | proxy | requests/s | p99 (µs) | proxy CPU (µs/request) | upstream CPU (µs/request) | socket errors |"
echo "|---:|---|---:|---:|---:|---:|---:|"
printf '%s' "$runs_table"

succeeded=1
