#!/usr/bin/env bash
# allocs_per_request.sh: heap allocations per request in a running keygate, per kind of request.
#
# The hot path is meant to allocate nothing per request once its buffers are warm
# (docs/architecture.md). This checks it end to end: a uprobe on glibc's malloc (`perf probe -x
# LIBC malloc`, which needs root; operator new, strdup, ... all reach it) counts the calls made
# by the keygate process (all its threads: workers, log writer, fetch pool) while wrk sends one
# kind of request for DURATION seconds; the count divided by wrk's request total is the figure.
# Each kind is warmed up for a second first (connection buffers, pools and the log's rings
# grow to their working size then, which is not a per-request cost). keygate runs with one
# worker, the access log on, an auth-check API (/orders) and an API forwarded to
# keygate-upstream (/fixed), and two keys: one plain, one with log_request and log_response.
# Every kind's wrk run must give the status it is meant to (checked; a wrong status is fatal).
#
# Usage (from the repo root, as root): bench/allocs_per_request.sh [--smoke]
#   --smoke               DURATION=1, for checking that the script works
# Environment:
#   KEYGATE_BIN           default build/release/tools/keygate (relative to the repo root)
#   KEYGATE_UPSTREAM_BIN  default build/release/tools/keygate-upstream
#   DURATION              seconds per kind (default 3)
#   KEYGATE_PORT, KEYGATE_ADMIN_PORT   default 18195, 18196
#   LIBC                  default: the libc.so.6 keygate is linked with (ldd)
# Prints one line per kind: requests, mallocs, mallocs per request. The probe is removed at exit
# only if this script added it.
set -Eeuo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
readonly script_dir repo_root
readonly BENCH_NAME=allocs_per_request.sh
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
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

KEYGATE_BIN="${KEYGATE_BIN:-$repo_root/build/release/tools/keygate}"
KEYGATE_UPSTREAM_BIN="${KEYGATE_UPSTREAM_BIN:-$repo_root/build/release/tools/keygate-upstream}"
DURATION="${DURATION:-3}"
((smoke)) && DURATION=1
KEYGATE_PORT="${KEYGATE_PORT:-18195}"
KEYGATE_ADMIN_PORT="${KEYGATE_ADMIN_PORT:-18196}"
STOP_TIMEOUT_S=10
require_uints DURATION KEYGATE_PORT KEYGATE_ADMIN_PORT
((DURATION > 0)) || die "DURATION must be at least 1"
require_tools perf wrk curl ldd
[[ -x "$KEYGATE_BIN" ]] || die "no keygate at $KEYGATE_BIN (build it: make build)"
[[ -x "$KEYGATE_UPSTREAM_BIN" ]] || die "no keygate-upstream at $KEYGATE_UPSTREAM_BIN"
require_ports_free "KEYGATE_PORT/KEYGATE_ADMIN_PORT" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT"
LIBC="${LIBC:-$(ldd "$KEYGATE_BIN" | awk '$1 == "libc.so.6" { print $3 }')}"
[[ -f "$LIBC" ]] || die "cannot find keygate's libc.so.6 (set LIBC)"

readonly ADMIN_KEY=allocs-bench-admin-key-0123456789
readonly PLAIN_KEY=allocs-bench-plain-key-0123456789
readonly FULL_KEY=allocs-bench-full-key-0123456789

bench_make_tmp keygate-allocs "configs, server output and raw wrk and perf output" \
  keygate:keygate_pid upstream:upstream_pid

probe_added=0
# Keeps the exit status for bench_cleanup, which the trap runs next.
remove_probe() {
  local rc=$?
  if ((probe_added)); then perf probe -q -d probe_libc:malloc 2>/dev/null || true; fi
  return "$rc"
}
if ! perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc '; then
  perf probe -q -x "$LIBC" -a malloc >"$tmp/probe.out" 2>&1 ||
    die "cannot add a uprobe on malloc in $LIBC (root needed): $(tail -n1 "$tmp/probe.out")"
  probe_added=1
fi
trap 'remove_probe; bench_cleanup' EXIT

bench_start_upstream "$KEYGATE_UPSTREAM_BIN" 0 "$tmp/upstream.out" upstream_pid
# shellcheck disable=SC2154  # upstream_port is set by bench_start_upstream
cat >"$tmp/keygate.toml" <<EOF
[[apis]]
name = "orders"
routes = ["/orders"]

[[apis]]
name = "fixed"
routes = ["/fixed"]
upstreams = ["127.0.0.1:$upstream_port"]
EOF
: >"$tmp/keygate.out"  # before the readiness check greps it
KEYGATE_BOOTSTRAP_ADMIN_KEY="$ADMIN_KEY" "$KEYGATE_BIN" --config "$tmp/keygate.toml" \
  --listen "127.0.0.1:$KEYGATE_PORT" --admin-listen "127.0.0.1:$KEYGATE_ADMIN_PORT" \
  --workers 1 --data-dir "$tmp/data" --log-dir "$tmp/logs" >"$tmp/keygate.out" \
  2>"$tmp/keygate.err" &
keygate_pid=$!
bench_wait_healthz keygate "$keygate_pid" "$KEYGATE_PORT" "$tmp/keygate.out" '^keygate: listening '

create_key() {  # json-body
  local status
  status="$(curl -sS -o "$tmp/create.json" -w '%{http_code}' --max-time 10 -X POST \
    -H "X-ApiKey: $ADMIN_KEY" -H 'Content-Type: application/json' --data "$1" \
    "http://127.0.0.1:$KEYGATE_ADMIN_PORT/admin/keys" 2>&1 || true)"
  [[ "$status" == 201 ]] || die "POST /admin/keys answered '$status': $(head -c 300 "$tmp/create.json")"
}
create_key "{\"key\":\"$PLAIN_KEY\",\"apis\":[\"orders\",\"fixed\"]}"
create_key "{\"key\":\"$FULL_KEY\",\"apis\":[\"orders\",\"fixed\"],\"log_request\":true,\"log_response\":true}"

# One wrk script for every kind, configured through the environment: KG_METHOD, KG_KEY (sent
# in X-ApiKey), KG_CT and KG_BODY. Reports "ALLOCS_WRK requests=N status=S non_expected=N":
# the status of the first response and how many responses had another one.
cat >"$tmp/kind.lua" <<'EOF'
local key, body = os.getenv("KG_KEY") or "", os.getenv("KG_BODY") or ""
threads = {}  -- first and other are globals: done() reads them with thread:get
function setup(thread) table.insert(threads, thread) end
function init(args)
  wrk.method = os.getenv("KG_METHOD") or "GET"
  if key ~= "" then wrk.headers["X-ApiKey"] = key end
  if body ~= "" then
    wrk.body = body
    wrk.headers["Content-Type"] = os.getenv("KG_CT") or "application/octet-stream"
  end
  first, other = 0, 0
end
function response(status, headers, body)
  if first == 0 then first = status elseif status ~= first then other = other + 1 end
end
function done(summary, latency, requests)
  local t = threads[1]
  io.write(string.format("ALLOCS_WRK requests=%d status=%d non_expected=%d\n",
    summary.requests, t:get("first"), t:get("other")))
end
EOF

printf '%-24s %10s %10s %12s\n' kind requests mallocs per_request
measure() {  # kind expected-status path [VAR=value...]
  local kind="$1" expected="$2" path="$3" line requests status other mallocs
  shift 3
  env "$@" wrk -t1 -c20 -d1s -s "$tmp/kind.lua" "http://127.0.0.1:$KEYGATE_PORT$path" \
    >"$tmp/warm.$kind" 2>&1 || die "$kind: warm-up wrk failed; see $tmp/warm.$kind"
  perf stat -x, -e probe_libc:malloc -p "$keygate_pid" -o "$tmp/perf.$kind" \
    -- sleep "$((DURATION + 1))" &
  local perf_pid=$!
  sleep 0.3
  env "$@" wrk -t1 -c20 -d"${DURATION}s" -s "$tmp/kind.lua" \
    "http://127.0.0.1:$KEYGATE_PORT$path" >"$tmp/wrk.$kind" 2>&1 || die "$kind: wrk failed"
  wait "$perf_pid" || die "$kind: perf stat failed; see $tmp/perf.$kind"
  line="$(grep '^ALLOCS_WRK ' "$tmp/wrk.$kind")" || die "$kind: no result from wrk"
  read -r requests status other < <(sed 's/[a-z_]*=//g; s/^ALLOCS_WRK //' <<<"$line")
  [[ "$status" == "$expected" && "$other" == 0 ]] ||
    die "$kind: status $status ($other others), expected $expected for all"
  mallocs="$(awk -F, '/probe_libc:malloc/ { print $1 }' "$tmp/perf.$kind")"
  [[ "$mallocs" =~ ^[0-9]+$ ]] || die "$kind: no malloc count in $tmp/perf.$kind"
  awk -v k="$kind" -v r="$requests" -v m="$mallocs" \
    'BEGIN { printf "%-24s %10d %10d %12.4f\n", k, r, m, m / r }'
}

body4k="$(head -c 4096 /dev/zero | tr '\0' a)"
measure healthz 200 /healthz
measure auth_header_200 200 /orders/1 KG_KEY="$PLAIN_KEY"
measure auth_query_200 200 "/orders/1?key=$PLAIN_KEY"
measure auth_json_body_200 200 /orders/1 KG_METHOD=POST KG_CT=application/json \
  KG_BODY="{\"API_Key\":\"$PLAIN_KEY\",\"x\":1}"
measure auth_form_body_200 200 /orders/1 KG_METHOD=POST \
  KG_CT=application/x-www-form-urlencoded KG_BODY="a=1&key=$PLAIN_KEY"
measure auth_unknown_key_401 401 /orders/1 KG_KEY=not-a-key-of-this-store
measure auth_missing_key_401 401 /orders/1
measure no_route_404 404 /nowhere KG_KEY="$PLAIN_KEY"
measure auth_full_capture_200 200 /orders/1 KG_KEY="$FULL_KEY"
measure proxy_get_200 200 /fixed/64 KG_KEY="$PLAIN_KEY"
measure proxy_post_4k_200 200 /fixed/4096 KG_KEY="$PLAIN_KEY" KG_METHOD=POST KG_BODY="$body4k"
measure proxy_post_4k_full_200 200 /fixed/4096 KG_KEY="$FULL_KEY" KG_METHOD=POST \
  KG_BODY="$body4k"
succeeded=1
