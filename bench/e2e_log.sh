#!/usr/bin/env bash
# e2e_log.sh: end-to-end cost of keygate's access log with full request and response capture,
# for BODY_BYTES request bodies and BODY_BYTES response bodies forwarded through keygate.
#
# wrk (bench/e2e_body.lua) sends POST /fixed/BODY_BYTES with a BODY_BYTES body and one API key
# in X-ApiKey; keygate forwards it to keygate-upstream, which reads (and hashes) the body and
# answers BODY_BYTES bytes. keygate-upstream (1 thread) and keygate (1 worker, plus its log
# writer thread) run on SERVER_CPU, wrk on CLIENT_CPU. Three variants, interleaved in every
# round (the order rotates from round to round):
#   plain     the access log on (the default), a key with log_request/log_response false: one
#             metadata record per request ("logging off" for the key)
#   full      the same keygate, a key with log_request = true and log_response = true: the
#             record also holds the request (head and body) and the response (head and body)
#   disabled  a second keygate with [log] enabled = false, a key without flags: no log at all
# The target compares full with plain: throughput loss at most 5% (req/s ratio >= 0.95) and
# p99 increase at most 10% (ratio <= 1.10). Ratios to disabled are reported too.
#
# Keys are created through the admin API (POST /admin/keys with the bootstrap admin key
# KEYGATE_BOOTSTRAP_ADMIN_KEY). Before measuring, every variant must answer 200 with
# BODY_BYTES body bytes, a bogus key 401, and the full key's body must appear in the log.
#
# Per run: log bytes written = growth of `du -sb` of the log directory from right before wrk
# starts to one flush interval after it ends (keygate's retention is set high enough never to
# delete during a run; between runs the script removes all but the newest segment, so the disk
# holds at most about one run's worth), divided by wrk's duration; records dropped = the sum of
# "count" over the {"type":"dropped"} marker lines that appeared in the run. keygate's CPU per
# request (utime+stime of all its threads, from /proc/<pid>/stat) is reported too.
#
# Usage (from the repo root): bench/e2e_log.sh [--smoke]
#   --smoke           DURATION=1 ROUNDS=1, for checking that the script works
# Environment:
#   KEYGATE_BIN           default build/release/tools/keygate (relative to the repo root)
#   KEYGATE_UPSTREAM_BIN  default build/release/tools/keygate-upstream
#   BODY_BYTES        request and response body size (default 4096)
#   DURATION          seconds per wrk run (default 10)
#   ROUNDS            rounds (default 5)
#   SERVER_CPU        CPU of keygate and the upstream (default 0)
#   CLIENT_CPU        CPU of wrk (default 1; must differ from SERVER_CPU)
#   KEYGATE_PORT, KEYGATE_ADMIN_PORT                default 18095, 18096 (log on)
#   KEYGATE_NOLOG_PORT, KEYGATE_NOLOG_ADMIN_PORT    default 18097, 18098 (log disabled)
#   WRK_CONNECTIONS   default 50
#   KEEP_TMP=1        keep the temp dir (configs, server output, raw wrk output, last segment)
# Any non-2xx response during a run is fatal. Every process the script starts is stopped on
# exit, including on failure and Ctrl-C.
set -Eeuo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
readonly script_dir repo_root
readonly command_line="$0${*:+ $*}"
readonly BENCH_NAME=e2e_log.sh
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
      echo "e2e_log.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
if ((smoke)); then
  DURATION=1
  ROUNDS=1
fi

readonly KEYGATE_BIN="${KEYGATE_BIN:-${repo_root}/build/release/tools/keygate}"
readonly KEYGATE_UPSTREAM_BIN="${KEYGATE_UPSTREAM_BIN:-${repo_root}/build/release/tools/keygate-upstream}"
readonly BODY_BYTES="${BODY_BYTES:-4096}"
readonly DURATION="${DURATION:-10}"
readonly ROUNDS="${ROUNDS:-5}"
readonly SERVER_CPU="${SERVER_CPU:-0}"
readonly CLIENT_CPU="${CLIENT_CPU:-1}"
readonly KEYGATE_PORT="${KEYGATE_PORT:-18095}"
readonly KEYGATE_ADMIN_PORT="${KEYGATE_ADMIN_PORT:-18096}"
readonly KEYGATE_NOLOG_PORT="${KEYGATE_NOLOG_PORT:-18097}"
readonly KEYGATE_NOLOG_ADMIN_PORT="${KEYGATE_NOLOG_ADMIN_PORT:-18098}"
readonly WRK_CONNECTIONS="${WRK_CONNECTIONS:-50}"
readonly BODY_LUA="${script_dir}/e2e_body.lua"
readonly WORKERS=1
readonly API=bench
readonly ROUTE=/fixed
readonly ADMIN_KEY=bench-admin-key-e2e-log
readonly PLAIN_KEY=lb-plain-00000001
readonly FULL_KEY=lb-full-000000001
readonly BODY_MARK="quick brown fox"  # text of e2e_body.lua's body, to find it in the log
readonly FLUSH_INTERVAL_MS="${FLUSH_INTERVAL_MS:-10}"  # keygate's default, written explicitly
readonly RING_BYTES="${RING_BYTES:-4194304}"          # [log] ring_bytes_per_worker (default)
readonly CAPTURE_BYTES_MAX=65536      # keygate's default: BODY_BYTES must fit to be captured
readonly RETENTION_BYTES=1099511627776  # 1 TiB: keygate deletes nothing during a run
readonly STARTUP_TIMEOUT_S=10
readonly STOP_TIMEOUT_S=15  # above keygate's default drain_timeout_ms
readonly HTTP_READ_TIMEOUT_S=2
readonly TARGET_RPS_RATIO_MIN=0.95  # full / plain: throughput loss at most 5%
readonly TARGET_P99_RATIO_MAX=1.10  # full / plain: p99 increase at most 10%

# --- preconditions ------------------------------------------------------------------------------

require_uints BODY_BYTES DURATION ROUNDS SERVER_CPU CLIENT_CPU KEYGATE_PORT KEYGATE_ADMIN_PORT \
  KEYGATE_NOLOG_PORT KEYGATE_NOLOG_ADMIN_PORT WRK_CONNECTIONS
((DURATION > 0 && ROUNDS > 0)) || die "DURATION and ROUNDS must be positive"
((BODY_BYTES >= 1 && BODY_BYTES <= CAPTURE_BYTES_MAX)) ||
  die "BODY_BYTES must be in 1..$CAPTURE_BYTES_MAX (captured whole), got $BODY_BYTES"

command -v wrk >/dev/null || die "wrk not found: install the Debian package wrk"
require_tools taskset getconf ss pgrep awk sort curl du
for bin in "$KEYGATE_BIN" "$KEYGATE_UPSTREAM_BIN"; do
  [[ -x "$bin" ]] ||
    die "$bin not found (set KEYGATE_BIN / KEYGATE_UPSTREAM_BIN, or build:" \
      "cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release &&" \
      "cmake --build build/release -j2 --target keygate keygate-upstream)"
done
[[ -r "$BODY_LUA" ]] || die "wrk script $BODY_LUA not found"

record_host
cpu_allowed "$SERVER_CPU" || die "SERVER_CPU=$SERVER_CPU is not usable here (allowed: $allowed_cpus)"
if ! cpu_allowed "$CLIENT_CPU" || ((CLIENT_CPU == SERVER_CPU)); then
  die "CLIENT_CPU=$CLIENT_CPU must be a usable CPU other than SERVER_CPU (allowed: $allowed_cpus)"
fi
require_ports_free "KEYGATE_PORT / KEYGATE_ADMIN_PORT / KEYGATE_NOLOG_PORT / KEYGATE_NOLOG_ADMIN_PORT" \
  "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT" "$KEYGATE_NOLOG_PORT" "$KEYGATE_NOLOG_ADMIN_PORT"

# --- cleanup ------------------------------------------------------------------------------------

bench_make_tmp keygate-e2e-log "configs, server output and raw wrk output" \
  keygate:keygate_pid keygate-nolog:nolog_pid upstream:upstream_pid

# --- servers ------------------------------------------------------------------------------------

write_report_lua "$tmp/report.lua"
cat "$tmp/report.lua" "$BODY_LUA" >"$tmp/body.lua"  # wrk takes one script
mkdir -p "$tmp/data" "$tmp/logs" "$tmp/data-nolog" "$tmp/logs-nolog"

bench_start_upstream "$KEYGATE_UPSTREAM_BIN" "$SERVER_CPU" "$tmp/upstream.out" upstream_pid
# shellcheck disable=SC2154  # upstream_pid is set by bench_start_upstream
log "keygate-upstream pid $upstream_pid on 127.0.0.1:$upstream_port, CPU $SERVER_CPU"

api_toml="[[apis]]
name = \"$API\"
routes = [\"$ROUTE\"]
upstreams = [\"127.0.0.1:$upstream_port\"]"
cat >"$tmp/keygate.toml" <<EOF
[log]
enabled = true
capture_bytes_max = $CAPTURE_BYTES_MAX
flush_interval_ms = $FLUSH_INTERVAL_MS
ring_bytes_per_worker = $RING_BYTES
retention_bytes = $RETENTION_BYTES

$api_toml
EOF
cat >"$tmp/keygate-nolog.toml" <<EOF
[log]
enabled = false

$api_toml
EOF

keygate_cmd=("$KEYGATE_BIN" --config "$tmp/keygate.toml" --listen "127.0.0.1:$KEYGATE_PORT"
  --admin-listen "127.0.0.1:$KEYGATE_ADMIN_PORT" --workers "$WORKERS"
  --data-dir "$tmp/data" --log-dir "$tmp/logs")
nolog_cmd=("$KEYGATE_BIN" --config "$tmp/keygate-nolog.toml"
  --listen "127.0.0.1:$KEYGATE_NOLOG_PORT" --admin-listen "127.0.0.1:$KEYGATE_NOLOG_ADMIN_PORT"
  --workers "$WORKERS" --data-dir "$tmp/data-nolog" --log-dir "$tmp/logs-nolog")

# taskset execs keygate, so $! is keygate itself.
KEYGATE_BOOTSTRAP_ADMIN_KEY="$ADMIN_KEY" taskset -c "$SERVER_CPU" "${keygate_cmd[@]}" \
  >"$tmp/keygate.out" 2>"$tmp/keygate.err" &
keygate_pid=$!
KEYGATE_BOOTSTRAP_ADMIN_KEY="$ADMIN_KEY" taskset -c "$SERVER_CPU" "${nolog_cmd[@]}" \
  >"$tmp/keygate-nolog.out" 2>"$tmp/keygate-nolog.err" &
nolog_pid=$!
bench_wait_healthz keygate "$keygate_pid" "$KEYGATE_PORT" "$tmp/keygate.out" '^keygate: listening '
bench_wait_healthz keygate-nolog "$nolog_pid" "$KEYGATE_NOLOG_PORT" "$tmp/keygate-nolog.out" \
  '^keygate: listening '
log "keygate pid $keygate_pid (log on), keygate pid $nolog_pid (log disabled), CPU $SERVER_CPU"

create_key() {  # admin-port json-body
  local status
  status="$(curl -sS -o "$tmp/create.json" -w '%{http_code}' --max-time 10 -X POST \
    -H "X-ApiKey: $ADMIN_KEY" -H 'Content-Type: application/json' --data "$2" \
    "http://127.0.0.1:$1/admin/keys" 2>&1 || true)"
  [[ "$status" =~ ^2[0-9][0-9]$ ]] ||
    die "POST /admin/keys on port $1 answered '$status': $(head -c 300 "$tmp/create.json" 2>/dev/null)"
}
create_key "$KEYGATE_ADMIN_PORT" "{\"key\":\"$PLAIN_KEY\",\"apis\":[\"$API\"]}"
create_key "$KEYGATE_ADMIN_PORT" \
  "{\"key\":\"$FULL_KEY\",\"apis\":[\"$API\"],\"log_request\":true,\"log_response\":true}"
create_key "$KEYGATE_NOLOG_ADMIN_PORT" "{\"key\":\"$PLAIN_KEY\",\"apis\":[\"$API\"]}"

readonly variants=(plain full disabled)
declare -A port_of=([plain]="$KEYGATE_PORT" [full]="$KEYGATE_PORT" [disabled]="$KEYGATE_NOLOG_PORT")
declare -A pid_of=([plain]="$keygate_pid" [full]="$keygate_pid" [disabled]="$nolog_pid")
declare -A key_of=([plain]="$PLAIN_KEY" [full]="$FULL_KEY" [disabled]="$PLAIN_KEY")
declare -A logs_of=([plain]="$tmp/logs" [full]="$tmp/logs" [disabled]="$tmp/logs-nolog")
readonly path="$ROUTE/$BODY_BYTES"

# The same body e2e_body.lua sends.
awk -v n="$BODY_BYTES" 'BEGIN { line = "The quick brown fox jumps over the lazy dog 0123456789.\n"
  while (length(s) < n) s = s line; printf "%s", substr(s, 1, n) }' >"$tmp/body.bin"
(($(stat -c %s "$tmp/body.bin") == BODY_BYTES)) || die "could not build the request body"

# "status body-bytes" of the POST with the key in X-ApiKey.
post() {  # port key
  curl -sS -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 -X POST \
    -H "X-ApiKey: $2" -H 'Content-Type: application/octet-stream' --data-binary "@$tmp/body.bin" \
    "http://127.0.0.1:$1$path" 2>/dev/null || echo "000 0"
}

for variant in "${variants[@]}"; do
  got="$(post "${port_of[$variant]}" "${key_of[$variant]}")"
  [[ "$got" == "200 $BODY_BYTES" ]] ||
    die "$variant: POST $path answered '$got', expected '200 $BODY_BYTES' (status, body bytes)"
  got="$(post "${port_of[$variant]}" lb-bogus-key)"
  [[ "$got" =~ ^401\  ]] || die "$variant: a bogus key got '$got', expected 401"
done
sleep 0.5  # several flush intervals
grep -qF "$BODY_MARK" "$tmp"/logs/*.jsonl ||
  die "the full key's request body is not in $tmp/logs: capture is not working"
log "every variant answers 200 with $BODY_BYTES bytes, a bogus key 401; the full key is captured"

# --- runs ---------------------------------------------------------------------------------------

log_bytes() { du -sb "$1" | awk '{ print $1 }'; }  # dir

# Sum of "count" over the dropped-marker lines in dir's segments.
dropped_sum() {  # dir
  local files
  mapfile -t files < <(compgen -G "$1/*.jsonl" || true)
  if ((${#files[@]} == 0)); then
    echo 0
    return
  fi
  { grep -hE '^\{"seq":[0-9]+,"type":"dropped"' "${files[@]}" || true; } |
    { grep -oE '"count":[0-9]+' || true; } | awk -F: '{ s += $2 } END { print s + 0 }'
}

# Removes every segment but the newest (the one keygate writes to), so the disk does not fill
# over many runs. Between runs only: keygate is idle then, and its retention never reaches them.
trim_segments() {  # dir
  local files
  mapfile -t files < <(compgen -G "$1/access-*.jsonl" | sort || true)
  ((${#files[@]} > 1)) || return 0
  rm -f "${files[@]:0:${#files[@]}-1}"
}

# Prints "requests/s p99_us keygate_cpu_us_per_request log_MB_per_s log_bytes_per_request
# dropped socket_errors"; raw output goes to $tmp.
run_wrk() {  # variant duration_s label
  local variant="$1" duration="$2" label="$3" out="$tmp/wrk-$3.txt" dir="${logs_of[$1]}"
  local before after bytes_before bytes_after drops_before drops_after
  local requests duration_us p99_us errors non2xx
  trim_segments "$dir"
  drops_before="$(dropped_sum "$dir")"
  bytes_before="$(log_bytes "$dir")"
  before="$(cpu_ticks "${pid_of[$variant]}")"
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"${duration}s" --latency \
    -s "$tmp/body.lua" "http://127.0.0.1:${port_of[$variant]}$path" \
    -- "${key_of[$variant]}" "$BODY_BYTES" >"$out" 2>&1 ||
    die "wrk failed ($variant): see $out"
  after="$(cpu_ticks "${pid_of[$variant]}")"
  sleep "$(awk -v ms="$FLUSH_INTERVAL_MS" 'BEGIN { printf "%.3f", 5 * ms / 1000 }')"
  bytes_after="$(log_bytes "$dir")"
  drops_after="$(dropped_sum "$dir")"
  kill -0 "${pid_of[$variant]}" 2>/dev/null || die "keygate ($variant) died during the run"
  kill -0 "$upstream_pid" 2>/dev/null || die "keygate-upstream died during the run"
  read -r requests duration_us p99_us errors non2xx < <(bench_wrk_result "$out" || true)
  [[ -n "${requests:-}" ]] || die "no result line in $out"
  ((requests > 0)) || die "wrk completed no requests ($variant): see $out"
  ((non2xx == 0)) ||
    die "$variant: $non2xx of $requests requests (run $label) got 4xx/5xx: see $out"
  ((errors == 0)) || log "warning: $variant run $label had $errors socket errors"
  awk -v n="$requests" -v us="$duration_us" -v p99="$p99_us" -v t="$((after - before))" \
    -v hz="$CLK_TCK" -v b="$((bytes_after - bytes_before))" -v d="$((drops_after - drops_before))" \
    -v e="$errors" \
    'BEGIN { printf "%.0f %d %.2f %.1f %.0f %d %d\n", n / (us / 1e6), p99, t * 1e6 / hz / n,
             b / (us / 1e6) / 1e6, b / n, d, e }'
}

for variant in "${variants[@]}"; do run_wrk "$variant" 1 "warmup-$variant" >/dev/null; done

declare -A rps p99 cpu mbps bpr drops  # variant -> space-separated values, one per round
runs_table=""
for ((round = 1; round <= ROUNDS; ++round)); do
  order=()
  for ((i = 0; i < ${#variants[@]}; ++i)); do
    order+=("${variants[(round - 1 + i) % ${#variants[@]}]}")
  done
  for variant in "${order[@]}"; do
    log "round $round/$ROUNDS: $variant"
    result="$(run_wrk "$variant" "$DURATION" "$round-$variant")"
    read -r r p c m b d e <<<"$result"
    rps[$variant]+="$r " p99[$variant]+="$p " cpu[$variant]+="$c "
    mbps[$variant]+="$m " bpr[$variant]+="$b " drops[$variant]+="$d "
    runs_table+="| $round | $variant | $r | $p | $c | $m | $b | $d | $e |"$'\n'
  done
done

# --- report -------------------------------------------------------------------------------------

sum() { tr -s ' ' '\n' <<<"$1" | awk '{ s += $1 } END { print s + 0 }'; }

rps_ratio="$(median_ratio "${rps[full]}" "${rps[plain]}")"
p99_ratio="$(median_ratio "${p99[full]}" "${p99[plain]}")"

echo "# keygate access log: full request+response capture vs metadata only vs disabled," \
  "$BODY_BYTES-byte bodies both ways"
echo
echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
echo "- command: \`DURATION=$DURATION ROUNDS=$ROUNDS BODY_BYTES=$BODY_BYTES" \
  "KEYGATE_BIN=$KEYGATE_BIN $command_line\`"
echo "- upstream: \`taskset -c $SERVER_CPU $KEYGATE_UPSTREAM_BIN --listen 127.0.0.1:0" \
  "--threads 1\`; POST $path reads and hashes the body, answers $BODY_BYTES bytes"
echo "- keygate (plain, full): \`taskset -c $SERVER_CPU ${keygate_cmd[*]}\` with" \
  "\`[log] enabled = true, capture_bytes_max = $CAPTURE_BYTES_MAX, flush_interval_ms =" \
  "$FLUSH_INTERVAL_MS, retention_bytes = $RETENTION_BYTES\` and" \
  "\`[[apis]] name = \"$API\" routes = [\"$ROUTE\"] upstreams = [\"127.0.0.1:$upstream_port\"]\`;" \
  "keys created with POST /admin/keys: plain \`{\"key\":\"$PLAIN_KEY\",\"apis\":[\"$API\"]}\`," \
  "full the same plus \`\"log_request\":true,\"log_response\":true\`"
echo "- keygate (disabled): \`taskset -c $SERVER_CPU ${nolog_cmd[*]}\` with \`[log] enabled = false\`," \
  "same API, the plain key"
wrk_version="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')"
echo "- wrk: \`taskset -c $CLIENT_CPU wrk -t1 -c$WRK_CONNECTIONS -d${DURATION}s --latency" \
  "-s e2e_body.lua URL -- KEY $BODY_BYTES\` ($wrk_version); $ROUNDS rounds, order rotating," \
  "after a 1 s warm-up of each; every run had 0 non-2xx responses"
echo "- log MB/s: growth of \`du -sb\` of the log directory over the run (until" \
  "$((5 * FLUSH_INTERVAL_MS)) ms after wrk ends) / wrk's duration, 1 MB = 10^6 bytes;" \
  "dropped: sum of \"count\" of the \`\"type\":\"dropped\"\` marker lines written in the run"
echo "- host: $(uname -sr), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
  "$(nproc) CPUs usable, CLK_TCK $CLK_TCK; log directory on" \
  "$(df --output=source,fstype "$tmp" | awk 'NR == 2 { print $1 " (" $2 ")" }')"
echo "- load average (1/5/15 min) at start: $load_at_start," \
  "at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on these CPUs skews every figure)"
echo
echo "## Medians of $ROUNDS rounds"
echo
echo "| variant | requests/s | p99 (µs) | keygate CPU (µs/request) | log MB/s | log bytes/request | records dropped (sum) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for variant in "${variants[@]}"; do
  echo "| $variant | $(median "${rps[$variant]}") | $(median "${p99[$variant]}") |" \
    "$(median "${cpu[$variant]}") | $(median "${mbps[$variant]}") |" \
    "$(median "${bpr[$variant]}") | $(sum "${drops[$variant]}") |"
done
echo
echo "Medians of per-round ratios:"
echo
echo "| ratio | requests/s | p99 | keygate CPU/request |"
echo "|---|---:|---:|---:|"
for pair in full:plain full:disabled plain:disabled; do
  num="${pair%%:*}" den="${pair#*:}"
  echo "| $num / $den | $(median_ratio "${rps[$num]}" "${rps[$den]}") |" \
    "$(median_ratio "${p99[$num]}" "${p99[$den]}") |" \
    "$(median_ratio "${cpu[$num]}" "${cpu[$den]}") |"
done
echo
echo "- target full/plain requests/s ≥ $TARGET_RPS_RATIO_MIN (loss ≤ 5%): $rps_ratio," \
  "$(meets "$rps_ratio" ge "$TARGET_RPS_RATIO_MIN")"
echo "- target full/plain p99 ≤ $TARGET_P99_RATIO_MAX (increase ≤ 10%): $p99_ratio," \
  "$(meets "$p99_ratio" le "$TARGET_P99_RATIO_MAX")"
echo "- records dropped with full capture: $(sum "${drops[full]}") (expected 0)"
echo
echo "## All runs"
echo
echo "| round | variant | requests/s | p99 (µs) | keygate CPU (µs/request) | log MB/s | log bytes/request | dropped | socket errors |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s' "$runs_table"

succeeded=1
