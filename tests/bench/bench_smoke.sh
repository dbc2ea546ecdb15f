#!/usr/bin/env bash
# bench_smoke: each end-to-end bench script (bench/*.sh) runs in --smoke mode against this
# build's binaries, exits 0, and leaves no process behind (the scripts promise to stop every
# process they start, on failure too). No figure is checked: speed is measured by the scripts,
# not here.
#
# Ports: the scripts' fixed defaults (18080...) would clash with a second build running this at
# the same time (or anything else on them). Each run gets ports of its own instead: picked at
# random below the kernel's ephemeral range (so no port-0 socket of a test running alongside can
# take one), each checked free with ss first. Between the check and the bind another process can
# still take one: a run that fails saying a port is in use is run again on fresh ports, up to
# kAttemptsMax times; any other failure fails at once.
#
# Usage: bench_smoke.sh REPO_ROOT TOOLS_DIR [BARE_BIN]   (ctest passes them; BARE_BIN is
# bench/keygate-bare-responder when the benchmarks are built, else empty and e2e.sh leaves the
# floor out; exit 77 = skipped when wrk or nginx is missing, which `make test` installs)
set -uo pipefail

repo_root="$1"
tools_dir="$2"
bare_bin="${3:-}"
command -v wrk >/dev/null || { echo "bench_smoke: wrk not installed, skipped"; exit 77; }
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] ||
  { echo "bench_smoke: nginx not installed, skipped"; exit 77; }
command -v ss >/dev/null || { echo "bench_smoke: ss (iproute2) not installed"; exit 1; }

readonly kAttemptsMax=3
# Every port variable any bench script reads; each run gets all of them, all different.
readonly kPortVars=(NGINX_PORT KEYGATE_PORT KEYGATE_ADMIN_PORT BARE_PORT KEYGATE_NOLOG_PORT
  KEYGATE_NOLOG_ADMIN_PORT)

work="$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench-smoke.XXXXXX")"
script_pid=""  # the `timeout` running the current script, while it runs
# On any exit (ctest's timeout sends SIGTERM first): the running script gets SIGTERM through
# timeout, which hands it on, so that its own trap stops its servers; whatever is left after
# that (each server's command line names a temp dir under $work) is killed.
cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$script_pid" ]] && kill -0 "$script_pid" 2>/dev/null; then
    kill -TERM "$script_pid" 2>/dev/null
    local i
    for ((i = 0; i < 200; ++i)); do  # 20 s: the scripts wait up to 15 s for a server to stop
      kill -0 "$script_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  pkill -KILL -f "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Every temp dir (and so every server's command line) lives under $work.
export KEYGATE_BIN="$tools_dir/keygate" KEYGATE_SEED_BIN="$tools_dir/keygate-seed"
export KEYGATE_UPSTREAM_BIN="$tools_dir/keygate-upstream"
export ADMIN_BENCH_BIN="$tools_dir/keygate-admin-bench"
# The bare responder takes no files: it runs from a copy under $work, so that the leftover check
# below (every server's command line names $work) covers it and no other run's.
if [[ -n "$bare_bin" ]]; then
  cp "$bare_bin" "$work/keygate-bare-responder"
  bare_bin="$work/keygate-bare-responder"
fi
export BARE_BIN="$bare_bin"

read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range || ephemeral_low=32768
readonly port_low=10000 port_high=$((ephemeral_low - 1))
((port_high - port_low > 1000)) || { echo "bench_smoke: ephemeral range starts too low"; exit 1; }

# Exports every variable of kPortVars set to a port nothing uses now (no socket of any state
# on it, so a bind without SO_REUSEADDR works too), all different.
pick_ports() {
  local var port taken=" "
  for var in "${kPortVars[@]}"; do
    while :; do
      port=$((port_low + (RANDOM * 32768 + RANDOM) % (port_high - port_low + 1)))
      [[ "$taken" == *" $port "* ]] && continue
      [[ -z "$(ss -Htan "sport = :$port")" ]] && break
    done
    taken+="$port "
    export "$var=$port"
  done
}

# Processes left by a script: every server it started ran from its temp dir under $work (or,
# the bare responder, from its copy there). The runs take turns, so all of them are its own.
leftovers() {
  pgrep -af "$work" | grep -v -e bench_smoke -e pgrep || true
}

passed=0
failed=0
run() {  # name, then the command
  local name="$1"
  shift
  local started=$SECONDS attempt status dir log left
  for ((attempt = 1; ; ++attempt)); do
    dir="$work/$name.$attempt"
    log="$dir.log"
    mkdir "$dir"
    pick_ports
    status=0
    # In the background, so that a signal to this script is handled at once (cleanup above).
    (cd "$repo_root" && TMPDIR="$dir" exec timeout 600 "$@") >"$log" 2>&1 &
    script_pid=$!
    wait "$script_pid" || status=$?
    script_pid=""
    # Failed or not, the script must have stopped every process it started.
    left="$(leftovers)"
    if [[ -n "$left" ]]; then
      echo "FAIL $name (exit $status) left processes behind:"
      echo "$left" | sed 's/^/    /'
      pkill -KILL -f "$work" 2>/dev/null
      failed=$((failed + 1))
      return
    fi
    ((status == 0)) && break
    # A port taken between pick_ports and the bind: the script says so ("port N is already in
    # use"), or the server it started does, in the server's log kept in the temp dir.
    if ((attempt < kAttemptsMax)) && grep -rqsE "port [0-9]+ is already in use|Address already in use" "$log" "$dir"; then
      echo "     $name: a port was taken meanwhile (attempt $attempt), again on other ports"
      continue
    fi
    echo "FAIL $name: exit $status (attempt $attempt); the end of its output:"
    tail -n 30 "$log" | sed 's/^/    /'
    failed=$((failed + 1))
    return
  done
  echo "ok   $name ($((SECONDS - started)) s)"
  passed=$((passed + 1))
}

run e2e_healthz bench/e2e.sh --smoke
AUTH_KEYS=1000 run e2e_auth bench/e2e.sh --auth --smoke
run e2e_proxy bench/e2e_proxy.sh --smoke
run e2e_log bench/e2e_log.sh --smoke
run admin_bench bench/admin_bench.sh --smoke
# It needs perf (Debian: linux-perf, not a test dependency) and root for its malloc uprobe.
if command -v perf >/dev/null && ((EUID == 0)); then
  run allocs_per_request bench/allocs_per_request.sh --smoke
else
  echo "skip allocs_per_request (needs perf and root)"
fi

echo "$passed passed, $failed failed"
((failed == 0))
