#!/usr/bin/env bash
# admin_bench.sh: cost of the admin API over loopback — create-key latency, bulk import time and
# memory per cached key, and what a steady stream of admin writes does to the data plane.
#
# keygate runs with one worker pinned to SERVER_CPU, on temp data dirs (ext4 or whatever TMPDIR
# is on: every admin write is a synced RocksDB write, so the file system matters).
#
# 1. Create latency: keygate on an empty data dir, admin key from KEYGATE_BOOTSTRAP_ADMIN_KEY,
#    config `[[apis]] name = "bench" routes = ["/bench"]`. keygate-admin-bench
#    (tools/keygate_admin_bench.cc, pinned to CLIENT_CPU) sends CREATES `POST /admin/keys`
#    ({"apis":["bench"],...}, server-generated values) back to back over one keep-alive
#    connection, then CREATES spread over CLIENTS concurrent connections; ROUNDS rounds
#    alternating the two, each after 20 uncounted warm-up creates. Latency is send of the
#    request to the last byte of the 201: synced write + cache publish + grace period + HTTP.
# 2. Import and memory: a fresh keygate (empty data dir, bootstrap admin key) gets one
#    `POST /admin/keys/import` of IMPORT_KEYS keys imp-00000000.. (API bench) sent by curl from a
#    file (it must fit [admin] body_bytes_max, default 64 MiB; at most 100,000 keys per
#    import). Reported: curl's time_total; VmRSS of keygate (/proc/PID/status) at 0 keys, after
#    the import, and after a restart on the same data dir (every key loaded into the cache at
#    start), each SETTLE_S after the event; VmHWM; AnonHugePages (smaps_rollup); bytes per key =
#    RSS delta / IMPORT_KEYS. Run twice: with keygate's default heap huge pages
#    (glibc.malloc.hugetlb=1 by re-exec) and with KEYGATE_MALLOC_HUGEPAGES=0.
# 3. Data plane under admin writes: keygate-seed makes DATA_KEYS keys bk-00000000.. (API bench)
#    and one admin key before keygate starts; wrk (CLIENT_CPU) runs
#    `wrk -t1 -cWRK_CONNECTIONS -dDURATION --latency -s e2e_auth.lua URL/bench -- header
#    DATA_KEYS bk-` with e2e.sh's done-hook for exact p99. Run A: nothing else. Run B: the same
#    while keygate-admin-bench writer (WRITER_CPU) does WRITES_PER_S admin writes per second
#    (create / PATCH / DELETE of its own 32 keys, in turn) from before wrk starts until after
#    it ends. A,B interleaved ROUNDS times after a 1 s warm-up; medians and ratio B/A. Server
#    CPU per request is keygate's utime+stime over the wrk run / requests (includes the admin
#    executor and RocksDB threads in B).
#
# Usage (from the repo root): bench/admin_bench.sh [--smoke]
#   --smoke   CREATES=100 IMPORT_KEYS=2000 DATA_KEYS=1000 DURATION=2 ROUNDS=1 SETTLE_S=1
# Environment:
#   KEYGATE_BIN, KEYGATE_SEED_BIN, ADMIN_BENCH_BIN   default build/release/tools/{keygate,
#                     keygate-seed,keygate-admin-bench}
#   CREATES (2000), CLIENTS (4), IMPORT_KEYS (100000), DATA_KEYS (100000, min 1000),
#   DURATION (10 s per wrk run), ROUNDS (3), WRITES_PER_S (50), SETTLE_S (2),
#   SERVER_CPU (0), CLIENT_CPU (1), WRITER_CPU (default CLIENT_CPU),
#   KEYGATE_PORT (18181), KEYGATE_ADMIN_PORT (18182), WRK_CONNECTIONS (50)
#   KEEP_TMP=1        keep the temp dir (configs, server logs, raw outputs)
# Build: cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DKEYGATE_BUILD_TESTS=OFF &&
#        cmake --build build/release -j2 --target keygate keygate-seed keygate-admin-bench
# Any unexpected status (admin or data plane) is fatal. Every process the script starts is
# stopped on exit, including on failure and Ctrl-C.
set -Eeuo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
readonly script_dir repo_root
readonly command_line="$0${*:+ $*}"
readonly started_s="$SECONDS"
readonly BENCH_NAME=admin_bench.sh
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
      echo "admin_bench.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
if ((smoke)); then
  CREATES=100
  IMPORT_KEYS=2000
  DATA_KEYS=1000
  DURATION=2
  ROUNDS=1
  SETTLE_S=1
fi

readonly KEYGATE_BIN="${KEYGATE_BIN:-${repo_root}/build/release/tools/keygate}"
readonly KEYGATE_SEED_BIN="${KEYGATE_SEED_BIN:-${repo_root}/build/release/tools/keygate-seed}"
readonly ADMIN_BENCH_BIN="${ADMIN_BENCH_BIN:-${repo_root}/build/release/tools/keygate-admin-bench}"
readonly CREATES="${CREATES:-2000}"
readonly CLIENTS="${CLIENTS:-4}"
readonly IMPORT_KEYS="${IMPORT_KEYS:-100000}"
readonly DATA_KEYS="${DATA_KEYS:-100000}"
readonly DURATION="${DURATION:-10}"
readonly ROUNDS="${ROUNDS:-3}"
readonly WRITES_PER_S="${WRITES_PER_S:-50}"
readonly SETTLE_S="${SETTLE_S:-2}"
readonly SERVER_CPU="${SERVER_CPU:-0}"
readonly CLIENT_CPU="${CLIENT_CPU:-1}"
readonly WRITER_CPU="${WRITER_CPU:-$CLIENT_CPU}"
readonly KEYGATE_PORT="${KEYGATE_PORT:-18181}"
readonly KEYGATE_ADMIN_PORT="${KEYGATE_ADMIN_PORT:-18182}"
readonly WRK_CONNECTIONS="${WRK_CONNECTIONS:-50}"
readonly API=bench
readonly API_PATH=/bench
readonly DATA_PREFIX=bk-      # keygate-seed values: bk-<i, 8 digits>
readonly IMPORT_PREFIX=imp-   # imported values: imp-<i, 8 digits>
readonly ADMIN_KEY_BOOTSTRAP=adm-bench-bootstrap-0001
readonly ADMIN_PREFIX=adm-bench-  # part 3: keygate-seed --count 1 makes adm-bench-00000000
readonly ADMIN_KEY_SEEDED="${ADMIN_PREFIX}00000000"
readonly WARMUP_CREATES=20
readonly WRITER_POOL=32
readonly IMPORT_KEYS_MAX=100000          # AdminExecutor::Options::import_keys_max
readonly ADMIN_BODY_BYTES_MAX=$((64 << 20))  # [admin] body_bytes_max default
readonly AUTH_LUA="${script_dir}/e2e_auth.lua"
readonly STARTUP_TIMEOUT_S=60  # a restart loads every key into the cache
readonly STOP_TIMEOUT_S=15     # above keygate's default drain_timeout_ms
readonly HTTP_READ_TIMEOUT_S=5

# --- preconditions ------------------------------------------------------------------------------

require_uints CREATES CLIENTS IMPORT_KEYS DATA_KEYS DURATION ROUNDS WRITES_PER_S SETTLE_S SERVER_CPU \
  CLIENT_CPU WRITER_CPU KEYGATE_PORT KEYGATE_ADMIN_PORT WRK_CONNECTIONS
((CREATES > 0 && CLIENTS > 0 && DURATION > 0 && ROUNDS > 0 && WRITES_PER_S > 0)) ||
  die "CREATES, CLIENTS, DURATION, ROUNDS and WRITES_PER_S must be positive"
((IMPORT_KEYS >= 1 && IMPORT_KEYS <= IMPORT_KEYS_MAX)) ||
  die "IMPORT_KEYS must be in 1..$IMPORT_KEYS_MAX (keygate's limit per import)"
((DATA_KEYS >= 1000 && DATA_KEYS <= 100000000)) ||
  die "DATA_KEYS must be in 1000..100000000, got $DATA_KEYS"

require_tools wrk curl taskset getconf ss awk sort
for bin in KEYGATE_BIN KEYGATE_SEED_BIN ADMIN_BENCH_BIN; do
  [[ -x "${!bin}" ]] || die "${!bin} not found (set $bin, or build: cmake --build build/release" \
    "--target keygate keygate-seed keygate-admin-bench)"
done
[[ -r "$AUTH_LUA" ]] || die "wrk script $AUTH_LUA not found"

record_host
for v in SERVER_CPU CLIENT_CPU WRITER_CPU; do
  cpu_allowed "${!v}" || die "$v=${!v} is not a usable CPU (allowed: $allowed_cpus)"
done
((CLIENT_CPU != SERVER_CPU)) || die "CLIENT_CPU must differ from SERVER_CPU"

require_ports_free "KEYGATE_PORT / KEYGATE_ADMIN_PORT" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT"

date_at_start="$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
readonly date_at_start

# --- cleanup ------------------------------------------------------------------------------------

bench_make_tmp keygate-admin-bench "logs and raw outputs" writer:writer_pid keygate:keygate_pid

# --- helpers ------------------------------------------------------------------------------------

get_request() {  # path [api-key]
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n' "$1"
  [[ -n "${2:-}" ]] && printf 'X-ApiKey: %s\r\n' "$2"
  printf 'Connection: close\r\n\r\n'
}

expect_status() {  # port path key status-regex what
  local status
  status="$(http_status "$1" get_request "$2" "$3")"
  [[ "$status" =~ ^HTTP/1\.[01]\ ($4)(\ |$) ]] ||
    die "keygate answered $5 with '${status:-no response}', expected $4"
}

# Starts keygate pinned to SERVER_CPU, its environment changed by env(1) arguments
# (options such as "-u VAR" first, then "VAR=value"), and waits until it answers GET /healthz; sets keygate_pid and
# keygate_cmd.
start_keygate() {  # label data-dir [env-argument...]
  local label="$1" data_dir="$2" i status
  shift 2
  mkdir -p "$data_dir" "$tmp/logs-$label"
  keygate_cmd=("$KEYGATE_BIN" --config "$tmp/keygate.toml" --listen "127.0.0.1:$KEYGATE_PORT"
    --admin-listen "127.0.0.1:$KEYGATE_ADMIN_PORT" --workers 1 --data-dir "$data_dir"
    --log-dir "$tmp/logs-$label")
  # taskset execs keygate, so $! is keygate itself (its huge-page re-exec keeps the PID).
  env "$@" taskset -c "$SERVER_CPU" "${keygate_cmd[@]}" >"$tmp/keygate-$label.out" \
    2>"$tmp/keygate-$label.err" &
  keygate_pid=$!
  for ((i = 0; i < STARTUP_TIMEOUT_S * 20; ++i)); do
    kill -0 "$keygate_pid" 2>/dev/null ||
      die "keygate ($label) exited during start-up; see $tmp/keygate-$label.*"
    if grep -q '^keygate: listening ' "$tmp/keygate-$label.out"; then
      status="$(http_status "$KEYGATE_PORT" get_request /healthz)"
      [[ "$status" =~ ^HTTP/1\.[01]\ 200 ]] && return 0
    fi
    sleep 0.05
  done
  die "keygate ($label) not ready after ${STARTUP_TIMEOUT_S}s; see $tmp/keygate-$label.*"
}

stop_keygate() {
  stop_process keygate "$keygate_pid"
  keygate_pid=""
}

status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }  # pid field
anon_huge_kib() { awk '$1 == "AnonHugePages:" { print $2 }' "/proc/$1/smaps_rollup"; }  # pid

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
per_key() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }'; }

# "key=value ..." of a result line -> the value of key.
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

# wrk reports through lib.sh's hook (as in e2e.sh): exact totals and p99 in microseconds.
write_report_lua "$tmp/report.lua"
cat "$tmp/report.lua" "$AUTH_LUA" >"$tmp/auth.lua"

cat >"$tmp/keygate.toml" <<EOF
[[apis]]
name = "$API"
routes = ["$API_PATH"]
mode = "auth-check"
EOF

# --- 1. create latency --------------------------------------------------------------------------

log "part 1: create latency ($CREATES creates, 1 and $CLIENTS clients, $ROUNDS rounds)"
start_keygate creates "$tmp/data-creates" KEYGATE_BOOTSTRAP_ADMIN_KEY="$ADMIN_KEY_BOOTSTRAP"
expect_status "$KEYGATE_ADMIN_PORT" "/admin/keys?limit=1" "$ADMIN_KEY_BOOTSTRAP" 200 \
  "GET /admin/keys with the bootstrap admin key"
creates_keygate_cmd="KEYGATE_BOOTSTRAP_ADMIN_KEY=$ADMIN_KEY_BOOTSTRAP taskset -c $SERVER_CPU ${keygate_cmd[*]}"
creates_table=""
declare -A c_rate c_p50 c_p99 c_max
client_counts=(1)
((CLIENTS != 1)) && client_counts+=("$CLIENTS")
for ((round = 1; round <= ROUNDS; ++round)); do
  for clients in "${client_counts[@]}"; do
    out="$tmp/creates-$round-$clients.txt"
    creates_cmd=(taskset -c "$CLIENT_CPU" "$ADMIN_BENCH_BIN" creates --port "$KEYGATE_ADMIN_PORT"
      --count "$CREATES" --clients "$clients" --warmup "$WARMUP_CREATES" --api "$API")
    KEYGATE_ADMIN_KEY="$ADMIN_KEY_BOOTSTRAP" "${creates_cmd[@]}" >"$out" 2>&1 ||
      die "keygate-admin-bench creates failed: see $out"
    result="$(grep '^ADMIN_BENCH ' "$out")" || die "no result line in $out"
    r="$(field "$result" per_s)" p50="$(field "$result" p50_us)"
    p99="$(field "$result" p99_us)" max="$(field "$result" max_us)"
    c_rate[$clients]+="$r " c_p50[$clients]+="$p50 " c_p99[$clients]+="$p99 "
    c_max[$clients]+="$max "
    creates_table+="| $clients | $round | $CREATES | $r | $p50 | $p99 | $max |"$'\n'
    log "  round $round, $clients client(s): $r creates/s, p50 $p50 µs, p99 $p99 µs, max $max µs"
  done
done
stop_keygate

# --- 2. import and memory -----------------------------------------------------------------------

log "part 2: import of $IMPORT_KEYS keys, memory per key"
awk -v n="$IMPORT_KEYS" -v p="$IMPORT_PREFIX" -v api="$API" 'BEGIN {
  printf "{\"keys\":["
  for (i = 0; i < n; ++i) printf "%s{\"key\":\"%s%08d\",\"apis\":[\"%s\"]}", (i ? "," : ""), p, i, api
  printf "]}"
}' >"$tmp/import.json"
import_bytes="$(stat -c %s "$tmp/import.json")"
((import_bytes <= ADMIN_BODY_BYTES_MAX)) ||
  die "import body is $import_bytes bytes, above [admin] body_bytes_max ($ADMIN_BODY_BYTES_MAX)"

declare -A m  # "<setting> <metric>" -> value
import_cmd=(taskset -c "$CLIENT_CPU" curl -sS --max-time 600 -o "$tmp/import-response.json"
  -w '%{http_code} %{time_total}\n' -H "X-ApiKey: $ADMIN_KEY_BOOTSTRAP"
  -H 'Content-Type: application/json' -H 'Expect:' --data-binary "@$tmp/import.json"
  "http://127.0.0.1:$KEYGATE_ADMIN_PORT/admin/keys/import")
for setting in on off; do
  # env(1) arguments: "on" must not inherit an opt-out from the caller's environment.
  hp_env=(-u KEYGATE_MALLOC_HUGEPAGES)
  [[ "$setting" == off ]] && hp_env=(KEYGATE_MALLOC_HUGEPAGES=0)
  data="$tmp/data-import-$setting"
  start_keygate "import-$setting" "$data" "${hp_env[@]}" \
    KEYGATE_BOOTSTRAP_ADMIN_KEY="$ADMIN_KEY_BOOTSTRAP"
  tunables="$(tr '\0' '\n' <"/proc/$keygate_pid/environ" | awk -F= '$1 == "GLIBC_TUNABLES" {
    sub(/^GLIBC_TUNABLES=/, ""); print }')"
  m["$setting tunables"]="${tunables:-(none)}"
  sleep "$SETTLE_S"
  m["$setting rss0"]="$(status_kib "$keygate_pid" VmRSS)"
  m["$setting huge0"]="$(anon_huge_kib "$keygate_pid")"
  read -r code seconds < <("${import_cmd[@]}") || die "curl failed during the import"
  [[ "$code" == 200 ]] ||
    die "import answered $code: $(head -c 300 "$tmp/import-response.json")"
  grep -q "^{\"imported\":$IMPORT_KEYS," "$tmp/import-response.json" ||
    die "import response does not say $IMPORT_KEYS keys: $(head -c 300 "$tmp/import-response.json")"
  m["$setting raw_seconds"]="$seconds"
  m["$setting seconds"]="$(awk -v s="$seconds" 'BEGIN { printf "%.3f", s }')"
  expect_status "$KEYGATE_PORT" "$API_PATH" "${IMPORT_PREFIX}00000000" 200 "the first imported key"
  expect_status "$KEYGATE_PORT" "$API_PATH" "$(printf '%s%08d' "$IMPORT_PREFIX" $((IMPORT_KEYS - 1)))" \
    200 "the last imported key"
  expect_status "$KEYGATE_PORT" "$API_PATH" "${IMPORT_PREFIX}bogus" '401|403' "a bogus key"
  sleep "$SETTLE_S"
  m["$setting rss1"]="$(status_kib "$keygate_pid" VmRSS)"
  m["$setting hwm1"]="$(status_kib "$keygate_pid" VmHWM)"
  m["$setting huge1"]="$(anon_huge_kib "$keygate_pid")"
  log "  huge pages $setting: import ${seconds}s, RSS ${m["$setting rss0"]} -> ${m["$setting rss1"]} KiB"
  stop_keygate
  restart_start_s="$(date +%s.%N)"
  start_keygate "restart-$setting" "$data" "${hp_env[@]}"
  m["$setting restart_s"]="$(awk -v a="$restart_start_s" -v b="$(date +%s.%N)" \
    'BEGIN { printf "%.2f", b - a }')"
  expect_status "$KEYGATE_PORT" "$API_PATH" "${IMPORT_PREFIX}00000000" 200 \
    "the first imported key after the restart"
  sleep "$SETTLE_S"
  m["$setting rss2"]="$(status_kib "$keygate_pid" VmRSS)"
  m["$setting huge2"]="$(anon_huge_kib "$keygate_pid")"
  stop_keygate
done

# --- 3. data plane with and without admin writes ------------------------------------------------

log "part 3: data plane, $DATA_KEYS keys, A (no admin writes) vs B ($WRITES_PER_S admin writes/s)"
data="$tmp/data-plane"
mkdir -p "$data"
seed_cmd=("$KEYGATE_SEED_BIN" --data-dir "$data" --count "$DATA_KEYS" --api "$API"
  --prefix "$DATA_PREFIX")
"${seed_cmd[@]}" >"$tmp/seed.out" 2>&1 || die "keygate-seed failed; see $tmp/seed.out"
seed_admin_cmd=("$KEYGATE_SEED_BIN" --data-dir "$data" --count 1 --api admin
  --prefix "$ADMIN_PREFIX")
"${seed_admin_cmd[@]}" >>"$tmp/seed.out" 2>&1 || die "keygate-seed (admin) failed; see $tmp/seed.out"
start_keygate plane "$data"
plane_keygate_cmd="taskset -c $SERVER_CPU ${keygate_cmd[*]}"
expect_status "$KEYGATE_PORT" "$API_PATH" "${DATA_PREFIX}00000000" 200 "the first seeded key"
expect_status "$KEYGATE_PORT" "$API_PATH" "$(printf '%s%08d' "$DATA_PREFIX" $((DATA_KEYS - 1)))" \
  200 "the last seeded key"
expect_status "$KEYGATE_ADMIN_PORT" "/admin/keys?limit=1" "$ADMIN_KEY_SEEDED" 200 \
  "GET /admin/keys with the seeded admin key"

wrk_cmd_for() {  # duration_s
  wrk_cmd=(taskset -c "$CLIENT_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"${1}s" --latency
    -s "$tmp/auth.lua" "http://127.0.0.1:$KEYGATE_PORT$API_PATH" -- header "$DATA_KEYS"
    "$DATA_PREFIX")
}
writer_cmd=(taskset -c "$WRITER_CPU" "$ADMIN_BENCH_BIN" writer --port "$KEYGATE_ADMIN_PORT"
  --rate "$WRITES_PER_S" --duration-s $((DURATION + 1)) --pool "$WRITER_POOL" --api "$API")

# Prints "requests/s p99_us cpu_us_per_request socket_errors".
run_wrk() {  # duration_s label
  local out="$tmp/wrk-$2.txt" before after result requests duration_us p99_us errors non2xx
  wrk_cmd_for "$1"
  before="$(cpu_ticks "$keygate_pid")"
  "${wrk_cmd[@]}" >"$out" 2>&1 || die "wrk failed: see $out"
  after="$(cpu_ticks "$keygate_pid")"
  kill -0 "$keygate_pid" 2>/dev/null || die "keygate died during the run; see $tmp/keygate-plane.*"
  result="$(grep '^E2E_RESULT ' "$out")" || die "no result line in $out"
  requests="$(field "$result" requests)" duration_us="$(field "$result" duration_us)"
  p99_us="$(field "$result" p99_us)" errors="$(field "$result" errors)"
  non2xx="$(field "$result" non2xx)"
  ((requests > 0)) || die "wrk completed no requests: see $out"
  ((non2xx == 0)) || die "keygate answered $non2xx of $requests requests with 4xx/5xx: see $out"
  ((errors == 0)) || log "warning: run $2 had $errors socket errors"
  wrk_figures "$requests" "$duration_us" "$p99_us" "$((after - before))" "$errors"
}

run_wrk 1 warmup >/dev/null
declare -A p_rps p_p99 p_cpu
plane_table=""
for ((round = 1; round <= ROUNDS; ++round)); do
  for run in A B; do
    writer_cells="| – | – | – | – |"
    if [[ "$run" == B ]]; then
      writer_out="$tmp/writer-$round.txt"
      : >"$writer_out"  # exists before the background job opens it
      KEYGATE_ADMIN_KEY="$ADMIN_KEY_SEEDED" "${writer_cmd[@]}" >"$writer_out" 2>&1 &
      writer_pid=$!
      for ((i = 0; i < 200; ++i)); do
        grep -q '^ADMIN_BENCH_READY' "$writer_out" && break
        kill -0 "$writer_pid" 2>/dev/null || die "the admin writer failed: see $writer_out"
        sleep 0.05
      done
      grep -q '^ADMIN_BENCH_READY' "$writer_out" || die "the admin writer is not ready: $writer_out"
    fi
    log "round $round/$ROUNDS: run $run"
    result="$(run_wrk "$DURATION" "$round-$run")"
    if [[ "$run" == B ]]; then
      wait "$writer_pid" || die "the admin writer failed: see $writer_out"
      writer_pid=""
      w="$(grep '^ADMIN_BENCH ' "$writer_out")" || die "no result line in $writer_out"
      writer_cells="| $(field "$w" per_s) | $(field "$w" p50_us) | $(field "$w" p99_us) |"
      writer_cells+=" $(field "$w" late_ops) |"
    fi
    read -r r p c e <<<"$result"
    p_rps[$run]+="$r " p_p99[$run]+="$p " p_cpu[$run]+="$c "
    plane_table+="| $round | $run | $r | $p | $c | $e $writer_cells"$'\n'
  done
done
stop_keygate

# --- report -------------------------------------------------------------------------------------

git_state="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$repo_root" status --porcelain --untracked-files=no 2>/dev/null |
  awk '{ print $2 }' | paste -sd' ')"
[[ -n "$dirty" ]] && git_state+=" with uncommitted changes to: $dirty"

echo "# keygate admin API: create latency, import, memory per key, data plane under admin writes"
echo
echo "- date: $date_at_start (UTC); total time $((SECONDS - started_s)) s"
echo "- command: \`CREATES=$CREATES CLIENTS=$CLIENTS IMPORT_KEYS=$IMPORT_KEYS DATA_KEYS=$DATA_KEYS" \
  "DURATION=$DURATION ROUNDS=$ROUNDS WRITES_PER_S=$WRITES_PER_S $command_line\`"
echo "- source: $git_state; binaries $KEYGATE_BIN (built $(date -u -r "$KEYGATE_BIN" '+%Y-%m-%dT%H:%M:%SZ'))"
echo "- host: $(uname -sr), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
  "$(nproc) CPUs usable; temp dirs on $(df -PT "$tmp" | awk 'NR == 2 { print $2 " (" $1 ")" }');" \
  "THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo n/a)"
echo "- load average (1/5/15 min) at start: $load_at_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)" \
  "(other work on these CPUs skews every figure)"
echo "- keygate: 1 worker, pinned to CPU $SERVER_CPU (its admin executor and RocksDB threads too)"

echo
echo "## 1. Admin create-key latency"
echo
echo "- keygate: \`$creates_keygate_cmd\` (empty data dir; keygate.toml: \`[[apis]] name = \"$API\"" \
  "routes = [\"$API_PATH\"] mode = \"auth-check\"\`; heap huge pages: default)"
echo "- driver: \`KEYGATE_ADMIN_KEY=... taskset -c $CLIENT_CPU $ADMIN_BENCH_BIN creates --port" \
  "$KEYGATE_ADMIN_PORT --count $CREATES --clients C --warmup $WARMUP_CREATES --api $API\`," \
  "body \`{\"apis\":[\"$API\"],\"description\":\"admin-bench\"}\`, each connection keep-alive and" \
  "closed-loop; latency = request sent to last byte of the 201; rounds alternate C=1 and" \
  "C=$CLIENTS on the same keygate (the store grows by $((2 * (CREATES + WARMUP_CREATES))) keys a round)"
echo
echo "| clients | creates/s | p50 (µs) | p99 (µs) | max (µs) |"
echo "|---:|---:|---:|---:|---:|"
for clients in "${client_counts[@]}"; do
  echo "| $clients | $(median "${c_rate[$clients]}") | $(median "${c_p50[$clients]}") |" \
    "$(median "${c_p99[$clients]}") | $(median "${c_max[$clients]}") |"
done
echo
echo "Medians of $ROUNDS rounds of $CREATES creates each. All rounds:"
echo
echo "| clients | round | creates | creates/s | p50 (µs) | p99 (µs) | max (µs) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
printf '%s' "$creates_table"

echo
echo "## 2. Import of $IMPORT_KEYS keys and memory per cached key"
echo
echo "- keygate: as in 1, fresh empty data dir, with and without \`KEYGATE_MALLOC_HUGEPAGES=0\`"
echo "- import: body $import_bytes bytes (\`{\"keys\":[{\"key\":\"${IMPORT_PREFIX}00000000\",\"apis\":[\"$API\"]},...]}\`)," \
  "\`taskset -c $CLIENT_CPU curl -sS -H 'X-ApiKey: ...' -H 'Content-Type: application/json' -H 'Expect:'" \
  "--data-binary @import.json http://127.0.0.1:$KEYGATE_ADMIN_PORT/admin/keys/import\`; time = curl's" \
  "time_total (upload, parse, validation, one synced RocksDB batch, cache publish, response)"
echo "- RSS = VmRSS of keygate, read ${SETTLE_S} s after start / after the import's response /" \
  "after the restart; bytes/key = RSS delta / $IMPORT_KEYS; the delta also holds what the import" \
  "left behind (RocksDB memtable, freed heap glibc keeps); the restart figure is the steady state" \
  "(RocksDB replays its WAL into the memtable there too)"
echo
echo "| metric | heap huge pages on (default) | off (KEYGATE_MALLOC_HUGEPAGES=0) |"
echo "|---|---:|---:|"
echo "| GLIBC_TUNABLES of the running keygate | ${m["on tunables"]} | ${m["off tunables"]} |"
echo "| import time, end to end (s) | ${m["on seconds"]} | ${m["off seconds"]} |"
echo "| import rate (keys/s) | $(awk -v n="$IMPORT_KEYS" -v s="${m["on raw_seconds"]}" 'BEGIN { printf "%.0f", n / s }') |" \
  "$(awk -v n="$IMPORT_KEYS" -v s="${m["off raw_seconds"]}" 'BEGIN { printf "%.0f", n / s }') |"
echo "| RSS at 0 keys (MiB) | $(mib "${m["on rss0"]}") | $(mib "${m["off rss0"]}") |"
echo "| RSS after the import (MiB) | $(mib "${m["on rss1"]}") | $(mib "${m["off rss1"]}") |"
echo "| peak RSS, VmHWM, after the import (MiB) | $(mib "${m["on hwm1"]}") | $(mib "${m["off hwm1"]}") |"
echo "| **bytes per key, after import − at 0** | **$(per_key "${m["on rss0"]}" "${m["on rss1"]}" "$IMPORT_KEYS")** |" \
  "**$(per_key "${m["off rss0"]}" "${m["off rss1"]}" "$IMPORT_KEYS")** |"
echo "| restart to ready with $IMPORT_KEYS keys (s) | ${m["on restart_s"]} | ${m["off restart_s"]} |"
echo "| RSS after the restart (MiB) | $(mib "${m["on rss2"]}") | $(mib "${m["off rss2"]}") |"
echo "| bytes per key, after restart − at 0 | $(per_key "${m["on rss0"]}" "${m["on rss2"]}" "$IMPORT_KEYS") |" \
  "$(per_key "${m["off rss0"]}" "${m["off rss2"]}" "$IMPORT_KEYS") |"
echo "| AnonHugePages at 0 / after import / after restart (MiB) |" \
  "$(mib "${m["on huge0"]}") / $(mib "${m["on huge1"]}") / $(mib "${m["on huge2"]}") |" \
  "$(mib "${m["off huge0"]}") / $(mib "${m["off huge1"]}") / $(mib "${m["off huge2"]}") |"

echo
echo "## 3. Data plane with and without $WRITES_PER_S admin writes/s"
echo
echo "- keys: \`${seed_cmd[*]}\`, then \`${seed_admin_cmd[*]}\` (the admin key), before keygate starts"
echo "- keygate: \`$plane_keygate_cmd\` (heap huge pages: default)"
wrk_cmd_for "$DURATION"
echo "- data plane: \`${wrk_cmd[*]}\` (e2e.sh's done-hook prepended to bench/e2e_auth.lua), after a" \
  "1 s warm-up; every run had 0 non-2xx"
echo "- B's admin writer: \`KEYGATE_ADMIN_KEY=... ${writer_cmd[*]}\` — on CPU $WRITER_CPU with wrk;" \
  "creates $WRITER_POOL keys, signals ready, then wrk starts; create / PATCH description /" \
  "DELETE oldest in turn on an absolute schedule for $((DURATION + 1)) s; then deletes its keys"
echo "- CPU/request = keygate's utime+stime over the wrk run / requests (in B including the admin" \
  "executor's and RocksDB's work)"
echo
echo "| metric | A: no admin writes | B: $WRITES_PER_S admin writes/s | B/A |"
echo "|---|---:|---:|---:|"
for metric in rps p99 cpu; do
  case "$metric" in
    rps) name="requests/s"; a="$(median "${p_rps[A]}")"; b="$(median "${p_rps[B]}")" ;;
    p99) name="p99 latency (µs)"; a="$(median "${p_p99[A]}")"; b="$(median "${p_p99[B]}")" ;;
    cpu) name="keygate CPU (µs/request)"; a="$(median "${p_cpu[A]}")"; b="$(median "${p_cpu[B]}")" ;;
  esac
  echo "| $name | $a | $b | $(ratio "$b" "$a") |"
done
echo
echo "Medians of $ROUNDS rounds, A and B interleaved. All runs (writer columns: its achieved" \
  "ops/s, p50/p99 of its admin requests in µs, and ops sent more than 1 ms late):"
echo
echo "| round | run | requests/s | p99 (µs) | CPU (µs/request) | socket errors | writer ops/s | writer p50 (µs) | writer p99 (µs) | late ops |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s' "$plane_table"

succeeded=1
