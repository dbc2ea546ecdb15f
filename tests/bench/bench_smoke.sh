#!/usr/bin/env bash
# bench_smoke: each end-to-end bench script (bench/*.sh) runs in --smoke mode against this
# build's binaries, exits 0, and leaves no process behind (the scripts promise to stop every
# process they start). No figure is checked: speed is measured by the scripts, not here.
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

work="$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench-smoke.XXXXXX")"
trap 'pkill -KILL -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
# Every temp dir (and so every server's command line) lives under $work.
export TMPDIR="$work"
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

passed=0
failed=0
run() {  # name, then the command
  local name="$1"
  shift
  local started=$SECONDS
  local status=0
  (cd "$repo_root" && timeout 600 "$@") >"$work/$name.log" 2>&1 || status=$?
  if ((status != 0)); then
    echo "FAIL $name: exit $status; the end of its output:"
    tail -n 30 "$work/$name.log" | sed 's/^/    /'
    failed=$((failed + 1))
    return
  fi
  # The script's servers ran from its temp dir under $work: none may be left.
  local left
  left="$(pgrep -af "$work" | grep -v -e bench_smoke -e pgrep || true)"
  if [[ -n "$left" ]]; then
    echo "FAIL $name left processes behind:"
    echo "$left" | sed 's/^/    /'
    pkill -KILL -f "$work" 2>/dev/null
    failed=$((failed + 1))
    return
  fi
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
