// keygate: the server binary. Thin wiring: flags and config (core), data directory (storage),
// listeners and workers (net). See --help.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <cstdlib>
#include <ctime>

#include "core/admin_handler.h"
#include "core/api_key.h"
#include "core/api_versions.h"
#include "core/auth_handler.h"
#include "core/config.h"
#include "core/json_text.h"
#include "core/permissions.h"
#include "core/worker_watch.h"
#include "net/server.h"
#include "storage/access_log.h"
#include "storage/last_used_writer.h"
#include "storage/admin_executor.h"
#include "storage/backups.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"
#include "storage/key_service_admin_store.h"
#include "tools/inherited_sockets.h"
#include "tools/read_fd.h"
#include "tools/service_notifier.h"

namespace {

// The workers' view of the access log (net/ knows only core's AccessSink).
class AccessLogSink final : public keygate::AccessSink {
 public:
  explicit AccessLogSink(keygate::storage::AccessLog& log) : log_(log) {}
  // Records from core's AccessRecordWriter are one line each, so the log writer need not
  // look for raw newlines in them.
  bool append(unsigned worker, std::string_view record) noexcept override {
    return log_.append(worker, record, /*one_line=*/true);
  }
  char* reserve(unsigned worker, size_t max_bytes) noexcept override {
    return log_.reserve(worker, max_bytes);
  }
  void commit(unsigned worker, size_t bytes) noexcept override {
    log_.commit(worker, bytes, /*one_line=*/true);
  }
  size_t record_bytes_max() const noexcept override { return log_.record_bytes_max(); }

 private:
  keygate::storage::AccessLog& log_;
};

constexpr int kExitStartupFailure = 1;
constexpr int kExitUsage = 2;
// A stop that gave up on workers still running past drain_timeout_ms + kStuckWorkerGraceMs
// (wedged): the process exits without them (see the end of main).
constexpr int kExitWorkersStuck = 3;
// Every worker's event loop exited outside a stop (their rings failed): nothing serves.
constexpr int kExitNoWorkerLeft = 4;

// One stderr line about why keygate stops. The message may quote the command line or a path
// (argv, --data-dir), which can hold any bytes: a line break or terminal control in it would
// split, or hide part of, the one line a supervisor's log shows.
void print_failure(const std::string& message) {
  std::fprintf(stderr, "keygate: %s\n", keygate::one_line(message).c_str());
}

int usage_error(const std::string& message) {
  print_failure(message);
  return kExitUsage;
}

// The whole config file, or false with the reason. Only a regular file or a pipe (`--config
// <(generate)`; through symlinks) is read: a directory opens fine as an ifstream and reads as
// empty, which is a valid, empty config. A read error is an error, never a shorter text; a file
// above kConfigBytesMax is refused (a config is a few KiB: this is a mistake, e.g. a log file
// named by accident).
constexpr size_t kConfigBytesMax = 16u << 20;

bool read_file(const std::string& path, std::string* out, std::string* error) {
  const auto fail = [&](const std::string& why) {
    *error = "cannot read config file " + path + ": " + why;
    return false;
  };
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return fail(std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return fail(std::strerror(EISDIR));
  if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) return fail("not a regular file or a pipe");
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(std::strerror(errno));
  int err = 0;
  const bool ok = keygate::tools::read_fd(fd, kConfigBytesMax, out, &err);
  close(fd);
  if (!ok) return fail(std::strerror(err));
  if (out->size() > kConfigBytesMax) {
    return fail("larger than " + std::to_string(kConfigBytesMax >> 20) + " MiB");
  }
  return true;
}

// Transparent huge pages for the heap (glibc >= 2.35: glibc.malloc.hugetlb=1). Key records are
// read on every request and scattered over the heap; in a VM each TLB miss is a two-level page
// walk, and huge pages measured 15% less CPU per request with 100,000 keys (docs/benchmarks.md).
// glibc reads tunables only at start-up, so keygate re-executes itself once with the tunable
// set (same PID). KEYGATE_MALLOC_HUGEPAGES=0 opts out.
void reexec_with_huge_pages(char** argv) {
  const char* opt = std::getenv("KEYGATE_MALLOC_HUGEPAGES");
  if (opt != nullptr && std::string_view(opt) == "0") return;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const std::string current = tunables != nullptr ? tunables : "";
  if (current.find("glibc.malloc.hugetlb") != std::string::npos) return;
  const std::string updated =
      current.empty() ? "glibc.malloc.hugetlb=1" : current + ":glibc.malloc.hugetlb=1";
  if (setenv("GLIBC_TUNABLES", updated.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  // Still here: exec failed (e.g. no /proc). Run without huge pages rather than not at all.
  if (tunables != nullptr) {
    setenv("GLIBC_TUNABLES", tunables, 1);
  } else {
    unsetenv("GLIBC_TUNABLES");
  }
}

// The re-execution above goes through /proc/self/exe, so the kernel names the process (its
// comm, 15 bytes) "exe": `pgrep keygate`, `pkill -HUP keygate`, `ps -C keygate`, top, a core
// file's %e and `coredumpctl list keygate` (the watchdog's SIGABRT leaves a core) would not find
// it. Names it after its binary again, as an exec of the binary's own path does; before any
// thread starts, so the threads that do not name themselves take it too. A binary that is
// itself called "exe" keeps the name; a path that cannot be read leaves it.
void name_process_after_binary() {
  char comm[16] = {};
  if (prctl(PR_GET_NAME, comm) != 0 || std::string_view(comm) != "exe") return;
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path));
  if (n <= 0 || static_cast<size_t>(n) >= sizeof(path)) return;
  std::string_view binary(path, static_cast<size_t>(n));
  constexpr std::string_view kDeleted = " (deleted)";  // replaced since: an upgrade's install
  if (binary.ends_with(kDeleted)) binary.remove_suffix(kDeleted.size());
  binary.remove_prefix(binary.rfind('/') + 1);
  const std::string name(binary.substr(0, sizeof(comm) - 1));
  if (!name.empty()) prctl(PR_SET_NAME, name.c_str());
}

// workers = 0: one per CPU this process may run on (its affinity mask, as set by taskset,
// cpusets or a container's CPU list), not one per CPU of the machine.
unsigned usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
    return static_cast<unsigned>(CPU_COUNT(&set));
  }
  const long online = sysconf(_SC_NPROCESSORS_ONLN);  // a mask beyond CPU_SETSIZE CPUs
  return online > 0 ? static_cast<unsigned>(online) : 1;
}

// "1 API", "2 APIs": the count and the noun, singular or plural.
std::string count_of(uint64_t n, const char* singular, const char* plural) {
  return std::to_string(n) + " " + (n == 1 ? singular : plural);
}

// Every client connection is a descriptor (a proxied one two: the check below counts one), on
// top of RocksDB's files, the log's and the listeners, and the idle upstream connections each
// worker may keep (upstream_idle_connections_max per upstream server). Says on stderr when the
// soft RLIMIT_NOFILE is short of the configured connections (the data port's and the pooled
// upstream ones of `apis` in every worker, and the admin port's): accepts beyond it fail with
// EMFILE, the connections wait in the listen backlog, counted as workers.accept_errors in
// /admin/stats. At start, and after each valid reload with its APIs and limits (their upstream
// servers and upstream_idle_connections_max change the estimate; connections_per_worker_max
// and admin.connections_max are the ones keygate started with, as a reload keeps them).
void check_descriptor_limit(unsigned workers, const keygate::Config& config,
                            const std::vector<keygate::ApiConfig>& apis) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  uint64_t upstream_servers = 0;  // per worker: the same address in two APIs is two pools
  for (const keygate::ApiConfig& api : apis) upstream_servers += api.upstreams.size();
  const uint64_t per_worker = config.limits.connections_per_worker_max +
                              upstream_servers * config.limits.upstream_idle_connections_max;
  constexpr uint64_t kSpareDescriptors = 256;  // store, log files, listeners, rings, eventfds
  const uint64_t wanted =
      uint64_t{workers} * per_worker + config.admin_connections_max + kSpareDescriptors;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < wanted) {
    std::fprintf(stderr,
                 "keygate: warning: the descriptor limit (RLIMIT_NOFILE %llu) is below the %llu "
                 "that %s x (connections_per_worker_max %llu + %s x "
                 "upstream_idle_connections_max %llu) + admin.connections_max %llu need; raise "
                 "it (ulimit -n, systemd LimitNOFILE=) or lower [limits] "
                 "connections_per_worker_max\n",
                 static_cast<unsigned long long>(limit.rlim_cur),
                 static_cast<unsigned long long>(wanted),
                 count_of(workers, "worker", "workers").c_str(),
                 static_cast<unsigned long long>(config.limits.connections_per_worker_max),
                 count_of(upstream_servers, "upstream server", "upstream servers").c_str(),
                 static_cast<unsigned long long>(config.limits.upstream_idle_connections_max),
                 static_cast<unsigned long long>(config.admin_connections_max));
  }
}

// Debian's soft limit is 1024 while connections_per_worker_max defaults to 10,000: the soft
// limit is raised to the hard one, and a limit still short of the configured connections is
// said once on stderr (check_descriptor_limit).
void raise_descriptor_limit(unsigned workers, const keygate::Config& config) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &raised);  // left as it is when refused: checked as it is
  }
  check_descriptor_limit(workers, config, config.apis);
}

// Each worker's io_uring locks about 400 KiB of memory that the kernel may charge to
// RLIMIT_MEMLOCK (without CAP_IPC_LOCK: net/worker.cc says so when a ring set-up fails with
// ENOMEM). The soft limit is raised to the hard one, as for descriptors: a shell's `ulimit -l`
// soft value should not be what stops keygate on a machine with many CPUs.
void raise_locked_memory_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  limit.rlim_cur = limit.rlim_max;
  (void)setrlimit(RLIMIT_MEMLOCK, &limit);  // unchanged on failure: the ring set-up then says
}

// The reloads of the config file (SIGHUP), for GET /admin/stats. Written by the main thread,
// read by the admin executor's.
struct ReloadStats {
  std::atomic<uint64_t> generation{1};  // of the APIs serving now: 1 at start, +1 per reload
  std::atomic<uint64_t> applied{0};
  std::atomic<uint64_t> refused{0};
};

// What the main thread needs to apply a reload.
struct Reloader {
  const keygate::CommandLine& cli;
  // The config keygate runs with: its apis and its live settings (keygate::apply_live_settings)
  // follow every reload; its restart-only settings stay those it started with.
  keygate::Config& running;
  keygate::net::Server& server;
  keygate::ApiVersions& apis;
  ReloadStats& stats;
  unsigned workers;  // for the descriptor estimate of the new APIs
  // The other holders of live settings (null: not running, e.g. the access log is off).
  keygate::storage::AccessLog* access_log;
  keygate::storage::LastUsedWriter& last_used;
  keygate::storage::Backups* backups;
  // Which workers are stalled (as of its last poll): a reload does not wait for them.
  keygate::WorkerWatch& watch;
  // How long a reload waits for a worker that is not stalled to take the new APIs. A worker
  // whose loop turns takes them within one pass (the eventfd wakes it; well under a
  // millisecond), so one that has not within 1 s is stuck in a pass, whether or not the
  // watch has judged it stalled yet (worker_stall_timeout_ms is 5 s by default); waiting
  // longer would hold this thread, which watches the workers and takes the signals, and
  // POST /admin/reload, which waits 10 s at most for the outcome.
  static constexpr uint32_t kWorkerWaitMs = 1000;

  // Counted before it is said, as a reload is: a client that saw the line finds the stats
  // up to date.
  keygate::ReloadOutcome refuse(const std::string& why) {
    stats.refused.fetch_add(1, std::memory_order_relaxed);
    std::fprintf(stderr, "keygate: reload refused: %s\n", why.c_str());
    keygate::ReloadOutcome outcome;
    outcome.error = why;
    outcome.generation = stats.generation.load(std::memory_order_relaxed);
    outcome.apis = running.apis.size();
    return outcome;
  }

  // SIGHUP: reads the config file again and checks it exactly as at start (the command-line
  // flags still win over it). Invalid: refused, nothing changes. Valid: its [[apis]] replace
  // the running ones on every worker, and so do the settings that can change in a running
  // process (keygate::reload_changes: limits, timeouts, the log's retention, ...), each where
  // it is used: the workers take them with the APIs at a loop pass, the log writer, the
  // last-used writer, the backups and the worker watch their own. Any other setting that
  // differs is named as taking effect at the next start, and the rest is applied all the same
  // (an operator who fixed a route and also touched the worker count should not have to
  // choose; refusing would keep the wrong route until a restart). Returns once every worker
  // serves new requests with the new APIs and settings, but for the stalled ones and those
  // that did not take them within kWorkerWaitMs, which the line and the outcome name (each
  // takes them at its next loop pass).
  keygate::ReloadOutcome reload() {
    if (!cli.config_path) {
      return refuse("keygate was started without --config: there is no file to read again");
    }
    const std::string& path = *cli.config_path;
    // A pipe (`--config <(generate)`) was read to its end at start: read again it is empty,
    // which would be a valid config without any API.
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode)) {
      return refuse(path + " is a pipe, which cannot be read again: restart keygate to apply "
                    "a new configuration");
    }
    std::string text;
    std::string error;
    keygate::Config fresh;
    if (!read_file(path, &text, &error) || !keygate::parse_config(text, path, &fresh, &error) ||
        !keygate::apply_overrides(cli, &fresh, &error) ||
        !keygate::validate_config(fresh, &error) ||
        !keygate::check_upstreams_are_not(running.listen, fresh.apis, &error)) {
      // Parse errors name the file and line already; a cross-field rule names the file here.
      return refuse(error.starts_with(path) ? error : path + ": " + error);
    }
    // The running config with the reload's live settings: what keygate serves with from now.
    keygate::Config next = running;
    keygate::apply_live_settings(fresh, &next);
    auto set = std::make_shared<keygate::ApiSet>();
    set->generation = stats.generation.load(std::memory_order_relaxed) + 1;
    set->settings = keygate::WorkerSettings{next.limits, next.admin_body_bytes_max,
                                            next.log_capture_bytes_max};
    std::vector<unsigned> stalled;
    for (unsigned i = 0; i < workers; ++i) {
      if (watch.stalled(i)) stalled.push_back(i);
    }
    std::vector<unsigned> late;
    if (!set->registry.init(fresh.apis, &error) ||
        !server.set_apis(set, stalled, kWorkerWaitMs, &late, &error)) {
      return refuse(path + ": apis: " + error);  // validate_config checked both: not expected
    }
    // After every worker: the admin API accepts keys for an added API (and refuses a removed
    // one) once requests to it are routed everywhere.
    apis.publish(set);
    // The settings the workers do not hold. Each is handed over without waiting: the log
    // writer takes its own at its next pass (woken now), the others are read where used.
    if (access_log != nullptr) {
      access_log->set_live_options(next.log_segment_bytes_max, next.log_retention_bytes,
                                   next.log_flush_interval_ms);
    }
    last_used.set_flush_interval_ms(next.last_used_flush_interval_ms);
    if (backups != nullptr) backups->set_retention_count(next.backup_retention_count);
    watch.set_stall_timeout_ms(next.worker_stall_timeout_ms);
    keygate::ReloadOutcome outcome;
    outcome.applied = true;
    outcome.generation = set->generation;
    outcome.apis = set->registry.apis().size();
    keygate::ReloadChanges changes = keygate::reload_changes(running, fresh);
    outcome.restart_settings = std::move(changes.restart);
    outcome.applied_settings = std::move(changes.live);
    outcome.workers_pending = late;
    for (const std::string& key : outcome.restart_settings) {
      std::fprintf(stderr, "keygate: reload: %s changed: takes effect at restart\n",
                   key.c_str());
    }
    next.apis = std::move(fresh.apis);
    running = std::move(next);
    stats.generation.store(set->generation, std::memory_order_relaxed);
    stats.applied.fetch_add(1, std::memory_order_relaxed);
    std::string applied;
    for (const std::string& key : outcome.applied_settings) {
      applied += (applied.empty() ? "; applied: " : ", ") + key;
    }
    // The workers that had not taken it, on the same line: a request sent after it is routed
    // with the new APIs by every other worker.
    std::string pending;
    if (!late.empty()) {
      pending = late.size() == 1 ? "; worker " : "; workers ";
      for (size_t i = 0; i < late.size(); ++i) {
        pending += (i == 0 ? "" : i + 1 == late.size() ? " and " : ", ") +
                   std::to_string(late[i]);
      }
      pending += late.size() == 1 ? " has" : " have";
      pending +=
          " not taken it yet (its event loop is held up: each takes it at its next loop pass)";
    }
    std::fprintf(stderr, "keygate: reloaded %s: %s (generation %llu)%s%s\n", path.c_str(),
                 count_of(outcome.apis, "API", "APIs").c_str(),
                 static_cast<unsigned long long>(set->generation), applied.c_str(),
                 pending.c_str());
    // After the line: the warning is about the APIs and limits now serving.
    check_descriptor_limit(workers, running, running.apis);
    return outcome;
  }
};

// POST /admin/reload hands its reload to the main thread, where reloads run one at a time
// (SIGHUP's too), and waits for it: ask() (the admin executor's thread) sends the main thread
// a SIGHUP and waits, at most kReloadWaitMax, for the outcome of a reload that began after
// the ask (so it read the file as it was then). Thread-safe.
class ReloadRequests {
 public:
  static constexpr std::chrono::seconds kReloadWaitMax{10};

  explicit ReloadRequests(pthread_t main_thread) : main_(main_thread) {}

  keygate::ReloadOutcome ask() {
    std::unique_lock lock(mu_);
    if (closed_) return unavailable("keygate is draining: nothing to reload");
    const uint64_t ticket = ++asked_;
    pthread_kill(main_, SIGHUP);  // main takes it with sigwait like any SIGHUP
    if (!done_cv_.wait_for(lock, kReloadWaitMax, [&] { return done_ >= ticket || closed_; })) {
      return unavailable("the reload did not run within 10 s");
    }
    if (done_ < ticket) return unavailable("keygate is draining: nothing to reload");
    return last_;
  }
  // Main thread, before a reload: the asks it answers (every one made before it reads the file).
  uint64_t begin() {
    std::lock_guard lock(mu_);
    return asked_;
  }
  void finish(uint64_t answered, keygate::ReloadOutcome outcome) {
    {
      std::lock_guard lock(mu_);
      if (answered <= done_) return;
      done_ = answered;
      last_ = std::move(outcome);
    }
    done_cv_.notify_all();
  }
  // Draining: no more reloads; asks waiting now or later are answered unavailable.
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    done_cv_.notify_all();
  }

 private:
  static keygate::ReloadOutcome unavailable(const char* why) {
    keygate::ReloadOutcome outcome;
    outcome.unavailable = true;
    outcome.error = why;
    return outcome;
  }

  const pthread_t main_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  uint64_t asked_ = 0;  // mu_
  uint64_t done_ = 0;   // mu_: asks answered
  keygate::ReloadOutcome last_;  // mu_
  bool closed_ = false;  // mu_
};

// The main thread's WorkerWatch, for GET /admin/stats. Written by the main thread at each poll,
// read by the admin executor's.
struct StallStats {
  std::atomic<uint64_t> stalled{0};
  std::atomic<uint64_t> stalls_total{0};
};

// CLOCK_MONOTONIC in milliseconds: the main thread's clock for WorkerWatch.
int64_t steady_ms() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1'000'000;
}

#ifdef KEYGATE_TEST_HOOKS
// Test builds only (CMake KEYGATE_TEST_HOOKS), with KEYGATE_TEST_WEDGE=1: a GET of
// kWedgePath?ms=N on the data port makes the worker that takes it sleep N ms (at most 60000)
// on its event loop before it answers 200, so tests can wedge one worker for sure (the
// watchdog's tests). A GET of kRingFailPath answers 200 and makes that worker's ring fail at
// its next loop pass, as if io_uring_enter had returned a fatal error
// (net::Server::fail_ring_for_testing). Every other request goes to the real handler.
class WedgeHandler final : public keygate::Handler {
 public:
  static constexpr std::string_view kWedgePath = "/_keygate/test/wedge";
  static constexpr std::string_view kRingFailPath = "/_keygate/test/ring-fail";

  WedgeHandler(std::unique_ptr<keygate::Handler> inner, unsigned worker,
               std::optional<keygate::net::Server>& server)
      : inner_(std::move(inner)), worker_(worker), server_(server) {}

  Result handle(const keygate::HttpRequest& request, keygate::ResponseWriter& response,
                keygate::RequestContext& ctx) noexcept override {
    const std::string_view target = request.target;
    if (request.method == "GET" && target == kRingFailPath) {
      // Emplaced before any worker starts, so set by the time a request comes.
      server_->fail_ring_for_testing(worker_);
      response.start(200);
      response.finish("text/plain", "ring failing\n");
      return Result::kDone;
    }
    if (request.method != "GET" || !target.starts_with(kWedgePath) ||
        (target.size() > kWedgePath.size() && target[kWedgePath.size()] != '?')) {
      return inner_->handle(request, response, ctx);
    }
    const size_t at = target.find("ms=");
    const unsigned long ms =
        at == std::string_view::npos ? 0 : std::strtoul(target.data() + at + 3, nullptr, 10);
    const unsigned long capped = ms < 60000 ? ms : 60000;
    const timespec nap{static_cast<time_t>(capped / 1000),
                       static_cast<long>(capped % 1000) * 1000 * 1000};
    // Blocks the event loop on purpose: what the watchdog is there to notice.
    while (nanosleep(&nap, nullptr) != 0 && errno == EINTR) {
    }
    response.start(200);
    response.finish("text/plain", "wedged\n");
    return Result::kDone;
  }
  Result resume(const keygate::HttpRequest& request, keygate::ResponseWriter& response,
                keygate::RequestContext& ctx) noexcept override {
    return inner_->resume(request, response, ctx);
  }
  Result handle_head(const keygate::HttpRequest& request, keygate::ResponseWriter& response,
                     keygate::RequestContext& ctx) noexcept override {
    return inner_->handle_head(request, response, ctx);
  }
  Result resume_head(const keygate::HttpRequest& request, keygate::ResponseWriter& response,
                     keygate::RequestContext& ctx) noexcept override {
    return inner_->resume_head(request, response, ctx);
  }
  int abandon(keygate::RequestContext& ctx) noexcept override { return inner_->abandon(ctx); }

 private:
  std::unique_ptr<keygate::Handler> inner_;
  unsigned worker_;
  std::optional<keygate::net::Server>& server_;
};

class WedgeHandlerFactory final : public keygate::HandlerFactory {
 public:
  WedgeHandlerFactory(keygate::HandlerFactory& inner, std::optional<keygate::net::Server>& server)
      : inner_(inner), server_(server) {}
  std::unique_ptr<keygate::Handler> make(unsigned worker_index) override {
    return std::make_unique<WedgeHandler>(inner_.make(worker_index), worker_index, server_);
  }

 private:
  keygate::HandlerFactory& inner_;
  std::optional<keygate::net::Server>& server_;
};
#endif

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return "a signal";
  }
}

// The stop signals keygate takes with sigwait (main), blocked as early as the process allows:
// from the executable's .preinit_array, which the dynamic loader runs before any constructor
// (the sanitizers' set-up runs before it), rather than from main, which runs after every
// library's and keygate's own static initialisers. Until they are blocked, a SIGTERM has its
// default action: exit 143, nothing closed. A raw system call: nothing here may depend on
// initialised state; not instrumented, as sanitizer checks could run before their set-up.
__attribute__((no_sanitize("address", "undefined"))) void block_stop_signals_at_load(
    int, char**, char**) {
  unsigned long mask = 0;  // the kernel's sigset_t: one bit per signal, bit (sig - 1)
  for (const int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2}) mask |= 1ul << (sig - 1);
  (void)syscall(SYS_rt_sigprocmask, SIG_BLOCK, &mask, nullptr, sizeof(mask));
}
[[gnu::used, gnu::section(".preinit_array")]] void (*const kBlockStopSignalsAtLoad)(
    int, char**, char**) = &block_stop_signals_at_load;

}  // namespace

int main(int argc, char** argv) {
  // Signals are taken synchronously by this thread; every thread started below inherits the
  // mask, so a SIGTERM can never interrupt a worker mid-request. Blocked first (already at load:
  // block_stop_signals_at_load; again here for the set sigwait takes), before anything is
  // parsed or opened: a SIGTERM that comes while keygate is starting (a supervisor stopping
  // it at once, a script's trap) stays pending and is taken once keygate is up, which then
  // stops as usual (exit 0, "keygate: stopped") instead of dying of it (exit 143, the store
  // and the log not closed). The mask and the pending signal survive the re-exec below.
  // SIGHUP reloads the config: the APIs and the settings that can change live (Reloader). SIGUSR1 and SIGUSR2 are taken too and only said on
  // stderr: their default action would end keygate at once, without a drain and with the
  // access log's last records lost.
  // SIGPIPE is ignored outright (sends use MSG_NOSIGNAL, but belt and braces). So is SIGXFSZ:
  // a file reaching the file size limit (RLIMIT_FSIZE, `ulimit -f`) would otherwise kill
  // keygate, data plane and all; ignored, the write fails with EFBIG instead (the access log
  // then rotates, RocksDB reports an error).
  sigset_t signals;
  sigemptyset(&signals);
  for (const int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGXFSZ, SIG_IGN);
  reexec_with_huge_pages(argv);
  name_process_after_binary();
  // After the re-execution, which passes NOTIFY_SOCKET on; before any thread starts.
  keygate::tools::ServiceNotifier notifier = keygate::tools::ServiceNotifier::from_environment();
  // Likewise LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES (socket activation): read and removed now,
  // checked once the config says which addresses the listeners are on.
  const keygate::tools::InheritedSockets inherited_sockets =
      keygate::tools::InheritedSockets::from_environment();
  keygate::CommandLine cli;
  std::string error;
  if (!keygate::parse_command_line(argc, argv, &cli, &error)) return usage_error(error);
  if (cli.help) {
    std::fputs(keygate::usage_text().data(), stdout);
    return 0;
  }

  keygate::Config config;
  if (cli.config_path) {
    std::string text;
    if (!read_file(*cli.config_path, &text, &error) ||
        !keygate::parse_config(text, *cli.config_path, &config, &error)) {
      return usage_error(error);
    }
  }
  if (!keygate::apply_overrides(cli, &config, &error) ||
      !keygate::validate_config(config, &error)) {
    return usage_error(error);
  }
  // Checked before anything is opened, with the reason (never the value): it is the operator's
  // input like a flag. Used only on first start (an empty store), but wrong in any case.
  const char* bootstrap_value = std::getenv("KEYGATE_BOOTSTRAP_ADMIN_KEY");
  if (bootstrap_value != nullptr && *bootstrap_value != '\0') {
    std::string_view why;
    if (!keygate::validate_key_value(bootstrap_value, &why)) {
      return usage_error("KEYGATE_BOOTSTRAP_ADMIN_KEY " + std::string(why));
    }
  }
  // Before anything is opened too: a socket unit that does not match the config is the
  // operator's input like a flag, and the next start would fail the same way (exit 2).
  keygate::ListenerSockets inherited;
  if (!inherited_sockets.assign(config, &inherited, &error)) return usage_error(error);

  keygate::storage::DataDir data_dir;
  if (!data_dir.open(config.data_dir, &error) ||
      (config.log_enabled &&
       !keygate::storage::make_directories(keygate::log_directory(config), &error))) {
    print_failure(error);
    return kExitStartupFailure;
  }

  unsigned workers = config.workers;
  if (workers == 0) workers = usable_cpus();
  raise_descriptor_limit(workers, config);
  raise_locked_memory_limit();

  // The first version of the APIs; a reload (SIGHUP) publishes the next one. Kept for the
  // whole run: the data handlers' fallback registry (they go by RequestContext::apis).
  auto initial_apis = std::make_shared<keygate::ApiSet>();
  if (!initial_apis->registry.init(config.apis, &error)) return usage_error("apis: " + error);
  keygate::ApiVersions api_versions(initial_apis);
  ReloadStats reload_stats;
  StallStats stall_stats;
  ReloadRequests reload_requests(pthread_self());

  // Declared before everything that can post to its workers (the KeyService's fetch pool, the
  // admin executor), so it is destroyed after them: a late post still finds its worker.
  std::optional<keygate::net::Server> server;
  keygate::storage::KeyService keys;
  keygate::storage::KeyService::Options key_options;
  key_options.workers = workers;
  key_options.max_keys = static_cast<size_t>(config.cache_max_keys);
  key_options.negative_cache_entries = config.cache_negative_entries;
#ifdef KEYGATE_TEST_HOOKS
  // Test builds only (CMake KEYGATE_TEST_HOOKS, on with the tests): every partial-cache fetch
  // waits this many milliseconds first, so tests can catch a request in a fetch for sure.
  if (const char* delay = std::getenv("KEYGATE_TEST_FETCH_DELAY_MS")) {
    const unsigned long ms = std::strtoul(delay, nullptr, 10);
    key_options.fetch_delay_ms = static_cast<uint32_t>(ms < 60000 ? ms : 60000);
  }
#endif
  if (!keys.open(config.data_dir, key_options, &error)) {
    print_failure(error);
    return kExitStartupFailure;
  }
  // First start on an empty store: an admin key from KEYGATE_BOOTSTRAP_ADMIN_KEY, or a
  // generated one printed once (it is stored nowhere in plaintext). A store left with no usable
  // admin key (all deleted, disabled, expired or stripped of admin) gets a generated one:
  // restarting is how an operator locked out of the admin API gets back in.
  keygate::storage::KeyService::AdminBootstrap bootstrap;
  const auto status = keys.ensure_admin_key(bootstrap_value != nullptr ? bootstrap_value : "", {},
                                            static_cast<int64_t>(std::time(nullptr)), &bootstrap);
  if (!status.is_ok()) {
    std::fprintf(stderr, "keygate: cannot create the bootstrap admin key: %s\n",
                 status.message());
    return kExitStartupFailure;
  }
  // Said only once keygate is up. A start that fails after this point takes the key back out,
  // so the next start makes (and shows) one again: a generated value printed by a start that
  // then failed would be easy to miss, and the next start would see a usable admin key and show
  // nothing — the operator locked out.
  const auto startup_failed = [&]() {
    if (bootstrap.created && !keys.delete_key(bootstrap.id).is_ok()) {
      std::fprintf(stderr,
                   "keygate: could not remove the admin key %s created by this failed start\n",
                   bootstrap.id.c_str());
    }
    return kExitStartupFailure;
  };

  // The access log: workers append to their own buffers, its thread writes the files. Declared
  // after the server, so it is destroyed (drained, flushed) once no worker appends any more.
  std::unique_ptr<keygate::storage::AccessLog> access_log;
  std::optional<AccessLogSink> access_sink;
  if (config.log_enabled) {
    keygate::storage::AccessLogOptions log_options;
    log_options.dir = keygate::log_directory(config);
    log_options.ring_bytes_per_worker = static_cast<size_t>(config.log_ring_bytes_per_worker);
    log_options.segment_bytes_max = config.log_segment_bytes_max;
    log_options.retention_bytes = config.log_retention_bytes;
    log_options.flush_interval_ms = config.log_flush_interval_ms;
    log_options.direct_io = config.log_direct_io;
    log_options.backlog_bytes_max = static_cast<size_t>(config.log_backlog_bytes_max);
    try {
      access_log = keygate::storage::AccessLog::open(log_options, workers, &error);
    } catch (const std::bad_alloc&) {
      // Start-up only: the rings (workers × ring_bytes_per_worker) did not fit in memory.
      error = "access log: cannot allocate " + std::to_string(workers) + " buffers of " +
              std::to_string(log_options.ring_bytes_per_worker) +
              " bytes (log.ring_bytes_per_worker)";
    }
    if (access_log == nullptr) {
      print_failure(error);  // open()'s errors say "access log:"
      return startup_failed();
    }
    // A crash mid-write leaves a torn last line, which open() cut off: said once, as it is the
    // end of a record that was lost.
    if (const uint64_t torn = access_log->stats().torn_bytes_cut; torn > 0) {
      std::fprintf(stderr,
                   "keygate: access log: cut %llu bytes of a torn last line off the newest segment "
                   "in %s (keygate stopped while writing it)\n",
                   static_cast<unsigned long long>(torn), log_options.dir.c_str());
    }
    access_sink.emplace(*access_log);
  }

  // Keys' last uses: the workers' handlers report into its per-worker queues, its thread writes
  // them to the store. Declared after the KeyService it writes to and after the server, so it
  // is destroyed before the one and after the other's workers (no worker reports any more);
  // stopped (its last reports written) once the workers are.
  keygate::storage::LastUsedWriter::Options last_used_options;
  last_used_options.workers = workers;
  last_used_options.flush_interval_ms = config.last_used_flush_interval_ms;
  keygate::storage::LastUsedWriter last_used(
      last_used_options,
      [&keys](std::span<const keygate::storage::KeyStore::LastUsed> entries, size_t* written) {
        return keys.record_last_used(entries, written);
      });

  // Backups of the key store (POST /admin/backups), when [backup] dir is set. Opened after the
  // store, so a start that fails on the backup directory says so after any store error.
  std::unique_ptr<keygate::storage::Backups> backups;
  if (!config.backup_dir.empty()) {
    backups = std::make_unique<keygate::storage::Backups>();
    keygate::storage::Backups::Options backup_options;
    backup_options.dir = config.backup_dir;
    backup_options.retention_count = config.backup_retention_count;
#ifdef KEYGATE_TEST_HOOKS
    // Test builds only (CMake KEYGATE_TEST_HOOKS): every backup waits this many milliseconds
    // after its checkpoint, so tests can hold one in progress for sure.
    if (const char* delay = std::getenv("KEYGATE_TEST_BACKUP_DELAY_MS")) {
      const unsigned long ms = std::strtoul(delay, nullptr, 10);
      backup_options.delay_ms = static_cast<uint32_t>(ms < 60000 ? ms : 60000);
    }
#endif
    if (!backups->open(backup_options, config.data_dir, &error)) {
      print_failure(error);
      return startup_failed();
    }
  }

  // Destroyed before the KeyService they write to, after the server stopped (no worker still
  // submits a job).
  keygate::storage::KeyServiceAdminStore admin_store(keys);
  admin_store.set_access_log(access_log.get());
  admin_store.set_backups(backups.get());
  // GET /admin/stats: the workers' counters, the key cache's and the access log's.
  keygate::storage::AdminExecutor::Options executor_options;
  executor_options.stats = [&server, &keys, &reload_stats, &stall_stats, &last_used,
                            log = access_log.get(),
                            backup = backups.get()](std::vector<keygate::StatsGroup>* groups) {
    const keygate::net::Server::Stats w =
        server.has_value() ? server->stats() : keygate::net::Server::Stats{};
    keygate::StatsGroup& worker_group = groups->emplace_back();
    worker_group.name = "workers";
    worker_group.values = {{"workers", w.workers},
                           {"connections_accepted", w.connections_accepted},
                           {"connections_refused", w.connections_refused},
                           {"admin_connections_refused", w.admin_connections_refused},
                           {"accept_errors", w.accept_errors},
                           {"descriptor_reserve_refused", w.descriptor_reserve_refused},
                           {"requests", w.requests},
                           {"parse_errors", w.parse_errors},
                           {"timeouts", w.timeouts},
                           {"send_too_slow", w.send_too_slow},
                           {"upstream_retries", w.upstream_retries},
                           {"pending_input_bytes", w.pending_input_bytes},
                           {"pending_input_peak", w.pending_input_peak},
                           {"body_bytes_held", w.body_bytes_held},
                           {"body_memory_refused", w.body_memory_refused},
                           {"stalled", stall_stats.stalled.load(std::memory_order_relaxed)},
                           {"stalls_total",
                            stall_stats.stalls_total.load(std::memory_order_relaxed)}};
    worker_group.gauges = {"workers", "pending_input_bytes", "pending_input_peak",
                           "body_bytes_held", "stalled"};
    // worker_loops: each worker's milliseconds since its event loop last passed, read now (an
    // idle worker passes every 100 ms; a stalled one's grows past worker_stall_timeout_ms).
    std::vector<keygate::WorkerLoop> loops;
    if (server.has_value()) server->loops(&loops);
    keygate::StatsGroup& loop_ages = groups->emplace_back();
    loop_ages.name = "worker_loops";
    loop_ages.metric = "worker_loop_pass_age_ms";
    loop_ages.label = "worker";
    loop_ages.metric_gauge = true;
    for (size_t i = 0; i < loops.size(); ++i) {
      loop_ages.values.emplace_back(std::to_string(i), loops[i].pass_age_ms);
    }
    // data_responses / admin_responses: answers by status ("other": outside 100-599);
    // data_reasons / admin_reasons: by reason code. Only what was counted at least once.
    constexpr std::string_view kPorts[] = {"data", "admin"};
    for (size_t l = 0; l < std::size(kPorts); ++l) {
      const std::string port_label = "port=\"" + std::string(kPorts[l]) + "\"";
      keygate::StatsGroup& by_status = groups->emplace_back();
      by_status.name = std::string(kPorts[l]) + "_responses";
      by_status.metric = "responses_total";
      by_status.labels = port_label;
      by_status.label = "status";
      for (size_t i = 1; i < w.responses[l].size(); ++i) {
        if (w.responses[l][i] == 0) continue;
        by_status.values.emplace_back(std::to_string(i), w.responses[l][i]);
      }
      if (w.responses[l][0] != 0) by_status.values.emplace_back("other", w.responses[l][0]);
      keygate::StatsGroup& by_reason = groups->emplace_back();
      by_reason.name = std::string(kPorts[l]) + "_reasons";
      by_reason.metric = "reasons_total";
      by_reason.labels = port_label;
      by_reason.label = "reason";
      for (const auto& [code, count] : w.reasons[l]) by_reason.values.emplace_back(code, count);
    }
    const keygate::storage::KeyService::Stats k = keys.stats();
    keygate::StatsGroup& key_cache = groups->emplace_back();
    key_cache.name = "keys";
    key_cache.values = {{"cached_keys", k.cached_keys},
                        {"cache_complete", k.cache_complete ? 1u : 0u},
                        {"evictions_total", k.evictions_total},
                        {"fetches_total", k.fetches_total},
                        {"fetch_rejected_total", k.fetch_rejected_total}};
    key_cache.gauges = {"cached_keys", "cache_complete"};
    const keygate::storage::LastUsedWriter::Stats u = last_used.stats();
    keygate::StatsGroup& uses = groups->emplace_back();
    uses.name = "last_used";
    uses.values = {{"reports_total", u.reports_total},
                   {"reports_dropped", u.reports_dropped},
                   {"writes_total", u.writes_total},
                   {"write_errors", u.write_errors}};
    keygate::StatsGroup access;
    access.name = "access_log";
    access.present = log != nullptr;
    access.gauges = {"queued", "next_seq", "backlog_records", "backlog_bytes_peak"};
    if (log != nullptr) {
      const keygate::storage::AccessLogStats a = log->stats();
      access.values = {{"enqueued", a.enqueued},
                       {"written", a.written},
                       {"dropped", a.dropped},
                       {"queued", a.queued},
                       {"markers_written", a.markers_written},
                       {"write_errors", a.write_errors},
                       {"next_seq", a.next_seq},
                       {"torn_bytes_cut", a.torn_bytes_cut},
                       {"query_segments_skipped", a.query_segments_skipped},
                       {"segments_finished", a.segments_finished},
                       {"segments_synced", a.segments_synced},
                       {"sync_queue_full", a.sync_queue_full},
                       {"direct_bytes", a.direct_bytes},
                       {"backlog_records", a.backlog_records},
                       {"backlog_bytes_peak", a.backlog_bytes_peak}};
    }
    groups->push_back(std::move(access));
    keygate::StatsGroup backup_group;
    backup_group.name = "backups";
    backup_group.present = backup != nullptr;
    if (backup != nullptr) {
      const keygate::storage::Backups::Stats b = backup->stats();
      backup_group.values = {{"created_total", b.created_total},
                             {"failed_total", b.failed_total},
                             {"pruned_total", b.pruned_total},
                             {"prune_failed_total", b.prune_failed_total}};
    }
    groups->push_back(std::move(backup_group));
    keygate::StatsGroup& reloads = groups->emplace_back();
    reloads.name = "config";
    reloads.values = {{"generation", reload_stats.generation.load(std::memory_order_relaxed)},
                      {"reloads_total", reload_stats.applied.load(std::memory_order_relaxed)},
                      {"reloads_refused_total",
                       reload_stats.refused.load(std::memory_order_relaxed)}};
    reloads.gauges = {"generation"};
  };
  executor_options.reload = [&reload_requests] { return reload_requests.ask(); };
  keygate::storage::AdminExecutor admin_executor(admin_store, api_versions,
                                                 std::move(executor_options));
  const auto body_inspect_bytes_max = static_cast<size_t>(config.body_inspect_bytes_max);
  keygate::AuthHandlerFactory data_handlers(initial_apis->registry, keys, body_inspect_bytes_max,
                                            &last_used);
  keygate::AdminHandlerFactory admin_handlers(keys, admin_executor, body_inspect_bytes_max,
                                              &last_used, config.admin_hosts);
#ifdef KEYGATE_TEST_HOOKS
  std::optional<WedgeHandlerFactory> wedge_handlers;
  if (const char* wedge = std::getenv("KEYGATE_TEST_WEDGE");
      wedge != nullptr && std::string_view(wedge) == "1") {
    wedge_handlers.emplace(data_handlers, server);
  }
#endif
  keygate::net::ServerOptions options;
  options.data_listen = config.listen;
  options.admin_listen = config.admin_listen;
  options.data_inherited_fd = inherited.data_fd;
  options.admin_inherited_fd = inherited.admin_fd;
  options.workers = workers;
  options.limits = config.limits;
  options.admin_body_bytes_max = config.admin_body_bytes_max;
  options.admin_connections_max = config.admin_connections_max;
  options.data_handlers = &data_handlers;
#ifdef KEYGATE_TEST_HOOKS
  if (wedge_handlers) options.data_handlers = &*wedge_handlers;
#endif
  options.admin_handlers = &admin_handlers;
  options.apis = initial_apis;
  if (access_sink) options.access_sink = &*access_sink;
  options.capture_bytes_max = static_cast<size_t>(config.log_capture_bytes_max);
  const char* registered_files = std::getenv("KEYGATE_REGISTERED_FILES");
  if (registered_files != nullptr && std::string_view(registered_files) == "0") {
    options.registered_files = false;
  }
  for (unsigned i = 0; i < workers; ++i) options.loop_observers.push_back(keys.loop_observer(i));
  server.emplace(options);
  if (!server->start(&error)) {
    print_failure(error);
    server.reset();  // no worker left to serve the key being removed
    return startup_failed();
  }
  if (bootstrap.recovered) {
    std::fprintf(stderr,
                 "keygate: the store had no usable admin key (every one deleted, disabled, "
                 "expired or without admin): created one with a generated value%s\n",
                 bootstrap_value != nullptr && *bootstrap_value != '\0'
                     ? " (KEYGATE_BOOTSTRAP_ADMIN_KEY is for the first start only)"
                     : "");
  }
  if (bootstrap.created) {
    if (bootstrap.generated_value.empty()) {
      std::fprintf(stderr, "keygate: created admin key %s from KEYGATE_BOOTSTRAP_ADMIN_KEY\n",
                   bootstrap.id.c_str());
    } else {
      std::fprintf(stderr,
                   "keygate: created admin key %s; its value is shown only this once:\n"
                   "keygate: admin key: %s\n",
                   bootstrap.id.c_str(), bootstrap.generated_value.c_str());
    }
  }
  keygate::ListenAddress data = config.listen;
  keygate::ListenAddress admin = config.admin_listen;
  data.port = server->data_port();
  admin.port = server->admin_port();
  // A socket the service manager passed says so: it is not bound (nor closed) by keygate, and
  // an operator wondering why a restart refused nothing, or why a changed `listen` did not
  // take, sees where it came from.
  constexpr std::string_view kFromSystemd = " (from systemd)";
  const std::string listening =
      "listening data=" + data.to_string() +
      std::string(server->data_inherited() ? kFromSystemd : "") + " admin=" +
      admin.to_string() + std::string(server->admin_inherited() ? kFromSystemd : "") +
      " workers=" + std::to_string(workers) + " ring=" + server->ring_mode();
  std::printf("keygate: %s\n", listening.c_str());
  std::fflush(stdout);
  // After the line: a supervisor told "ready" finds it printed, and both ports accept.
  notifier.ready(listening);

  // The workers' loops, watched from here between signals (core/worker_watch.h): a stall is
  // said on stderr when it begins and when it ends, and counted for /admin/stats; under a
  // systemd watchdog (WatchdogSec=: WATCHDOG_USEC) WATCHDOG=1 goes every half of its timeout
  // while no worker is stalled, so a wedged keygate is killed and restarted. systemd arms its
  // watchdog at READY=1 (loading the keys before it is bounded by TimeoutStartSec= instead), so
  // the first one goes now. Also during the drain, while it progresses: systemd no longer
  // enforces the watchdog once the unit is stopping, but nothing is lost by telling it.
  keygate::WorkerWatch::Options watch_options;
  watch_options.stall_timeout_ms = config.worker_stall_timeout_ms;
  watch_options.watchdog_interval_ms =
      notifier.watchdog_usec() == 0 ? 0 : std::max<uint64_t>(notifier.watchdog_usec() / 2000, 1);
  keygate::WorkerWatch watch(workers, watch_options);
  std::vector<keygate::WorkerLoop> loops;
  std::vector<keygate::WorkerWatch::Transition> transitions;
  // Polls the workers if a poll is due; returns how long until the next one is.
  const auto watch_workers = [&](bool draining) -> int64_t {
    int64_t now = steady_ms();
    if (now < watch.next_poll_ms()) return watch.next_poll_ms() - now;
    server->loops(&loops);
    now = steady_ms();
    transitions.clear();
    const bool ping = watch.poll(now, loops, draining, &transitions);
    // Counted before it is said: a client that saw the line finds the stats up to date.
    stall_stats.stalled.store(watch.stalled(), std::memory_order_relaxed);
    stall_stats.stalls_total.store(watch.stalls_total(), std::memory_order_relaxed);
    for (const keygate::WorkerWatch::Transition& t : transitions) {
      const auto ms = static_cast<unsigned long long>(t.ms);
      if (t.stalled && t.exited) {
        std::fprintf(stderr,
                     "keygate: worker %u stalled: its event loop exited %llu ms ago and serves "
                     "nothing%s\n",
                     t.worker, ms,
                     notifier.watchdog_usec() != 0 ? " (watchdog notifications stop)" : "");
      } else if (t.stalled) {
        std::fprintf(stderr,
                     "keygate: worker %u stalled: its event loop has not passed for %llu ms "
                     "(server.worker_stall_timeout_ms %u)%s\n",
                     t.worker, ms, config.worker_stall_timeout_ms,
                     notifier.watchdog_usec() != 0 ? "; watchdog notifications stop until it "
                                                     "passes again"
                                                   : "");
      } else if (t.exited) {
        std::fprintf(stderr, "keygate: worker %u no longer stalled: it exited (stalled %llu ms)\n",
                     t.worker, ms);
      } else {
        std::fprintf(stderr,
                     "keygate: worker %u no longer stalled: its event loop passes again "
                     "(stalled %llu ms)\n",
                     t.worker, ms);
      }
    }
    if (ping) notifier.watchdog();
    return std::max<int64_t>(watch.next_poll_ms() - now, 0);
  };

  // Signals are taken one at a time: a SIGHUP during a reload waits for it and then reloads
  // again (several of them then are one: the kernel keeps one pending SIGHUP), and a SIGTERM
  // during a reload drains once the reload is done. Between them the thread wakes to watch the
  // workers (sigtimedwait's timeout: the next poll).
  Reloader reloader{cli,     config,           *server,   api_versions,  reload_stats,
                    workers, access_log.get(), last_used, backups.get(), watch};
  int sig = 0;
  bool no_worker_left = false;
  for (;;) {
    const int64_t wait_ms = watch_workers(false);
    // Every worker's loop has exited (their rings failed: each said why): nothing accepts or
    // answers any more, so keygate stops, with a status that tells a supervisor it failed
    // (systemd's Restart=on-failure starts it again), rather than sit there with listeners
    // closed. One dead worker among others is not this: they serve on, and its stall is said.
    if (server->stopped()) {
      no_worker_left = true;
      break;
    }
    const timespec wait{static_cast<time_t>(wait_ms / 1000),
                        static_cast<long>(wait_ms % 1000) * 1000 * 1000};
    sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig < 0) continue;  // EAGAIN: time to watch the workers; EINTR
    if (sig == SIGTERM || sig == SIGINT) break;
    if (sig == SIGHUP) {
      // RELOADING=1 before the file is read and READY=1 once the outcome is known, applied or
      // refused: with systemd's Type=notify-reload, `systemctl reload` returns at the READY=1.
      notifier.reloading(cli.config_path ? "reloading " + *cli.config_path : "reloading");
      const uint64_t asks = reload_requests.begin();
      keygate::ReloadOutcome outcome = reloader.reload();
      notifier.reloaded(outcome.applied
                            ? listening + "; " + count_of(outcome.apis, "API", "APIs") +
                                  " (generation " + std::to_string(outcome.generation) + ")"
                            : "reload refused, serving generation " +
                                  std::to_string(outcome.generation) + ": " + outcome.error);
      reload_requests.finish(asks, std::move(outcome));
      continue;
    }
    std::fprintf(stderr,
                 "keygate: %s ignored (SIGHUP reloads the config; SIGTERM or SIGINT stop "
                 "keygate)\n",
                 signal_name(sig));
  }
  reload_requests.close();
  if (no_worker_left) {
    std::fprintf(stderr,
                 "keygate: every worker's event loop has exited (their rings failed): nothing "
                 "serves any more; stopping (exit %d)\n",
                 kExitNoWorkerLeft);
    notifier.stopping("every worker's event loop has exited: stopping");
  } else {
    std::printf("keygate: %s received, draining (up to %u ms)\n", signal_name(sig),
                config.limits.drain_timeout_ms);
    std::fflush(stdout);
    notifier.stopping(std::string(signal_name(sig)) + " received, draining (up to " +
                      std::to_string(config.limits.drain_timeout_ms) + " ms)");
  }
  server->request_stop();
  // Signals are still taken while the workers drain, so that each is answered. A second
  // SIGTERM/SIGINT stops now: an operator's second Ctrl-C, or a supervisor that escalates. The
  // workers cut what is in flight (logged, reason "shutdown") and everything below still runs:
  // the access log's records are flushed, the store is closed. A SIGHUP is refused: a reload
  // now would have nothing left to serve. Polled every kStopPollMs: sigtimedwait() is this
  // thread's only wait (workers cannot signal it), and 20 ms is nothing next to a drain.
  constexpr int64_t kStopPollMs = 20;
  // The whole wait for the workers is bounded: a worker wedged in a pass (an endless loop, a
  // blocking call) never reaches its drain deadline, and waiting for it would hold the stop
  // until the supervisor's SIGKILL (nothing flushed). kStuckWorkerGraceMs past the deadline:
  // a worker that turns notices its deadline within a pass (an idle one within its 100 ms
  // tick) and then cuts what is left, writing those records; 1 s is that with room for a host
  // short of CPU. A second SIGTERM moves the deadline to now, so this bound with it.
  constexpr int64_t kStuckWorkerGraceMs = 1000;
  int64_t give_up_ms =
      steady_ms() + int64_t{config.limits.drain_timeout_ms} + kStuckWorkerGraceMs;
  bool cut_short = false;
  bool workers_stuck = false;
  while (!server->stopped()) {
    const int64_t left_ms = give_up_ms - steady_ms();
    if (left_ms <= 0) {
      workers_stuck = true;
      break;
    }
    const int64_t wait_ms = std::min({watch_workers(true), kStopPollMs, left_ms});
    const timespec poll{0, static_cast<long>(wait_ms) * 1000 * 1000};
    const int got = sigtimedwait(&signals, nullptr, &poll);
    if (got < 0) continue;  // EAGAIN: the poll interval passed; EINTR
    if (got == SIGHUP) {
      std::fprintf(stderr, "keygate: SIGHUP ignored: keygate is draining, nothing to reload\n");
    } else if (got != SIGTERM && got != SIGINT) {
      std::fprintf(stderr, "keygate: %s ignored: keygate is already draining\n",
                   signal_name(got));
    } else if (!cut_short) {
      cut_short = true;
      std::printf("keygate: second %s received, stopping now (in-flight requests are cut off)\n",
                  signal_name(got));
      std::fflush(stdout);
      server->stop_now();
      give_up_ms = std::min(give_up_ms, steady_ms() + kStuckWorkerGraceMs);
    }
  }
  if (workers_stuck) {
    // Some worker threads still run (wedged). They own pointers into nearly everything below
    // and may resume at any moment: joining them would wait for good, and destroying what
    // they use (the server, the key cache, the store, the access log's rings) under them
    // would be a use after free. So nothing is destroyed or closed: only what is safe with
    // them alive is done, and the process ends with _exit (no destructors, no atexit).
    // - The access log: flush() is made for concurrent producers (each worker's ring is a
    //   single-producer single-consumer buffer the writer thread drains); every record the
    //   workers finished, the exited workers' cut-off ones included, is written to its segment.
    //   Bounded, as everything here: a disk that stalls does not hold the exit.
    // - The keys' last uses: LastUsedWriter::flush() drains the workers' queues the same way
    //   and writes to the store (unsynced RocksDB writes, as every flush of it).
    // - The store is not closed: a worker may be reading it (a key fetch) or the admin
    //   executor writing it. RocksDB recovers from its write-ahead log at the next start, as
    //   after a crash: every acknowledged change is in it (docs/operations.md, SIGKILL).
    // - Not waited for: an admin job still running (cut off like at SIGKILL; a backup leaves
    //   its temporary, removed at the next start), and the records of the deferred requests
    //   the drain deadline cut off (written only when their tickets come back).
    std::vector<keygate::WorkerLoop> now_loops;
    server->loops(&now_loops);
    std::string stuck;
    unsigned stuck_count = 0;
    for (size_t i = 0; i < now_loops.size(); ++i) {
      if (now_loops[i].exited) continue;
      stuck += (stuck.empty() ? "" : ", ") + std::to_string(i) + " (its loop has not passed for " +
               std::to_string(now_loops[i].pass_age_ms) + " ms)";
      ++stuck_count;
    }
    std::fprintf(stderr,
                 "keygate: %s %s did not stop within limits.drain_timeout_ms %u + %lld ms: "
                 "exiting without %s (flushing the access log and the keys' last uses; the "
                 "store is not closed and recovers from its write-ahead log at the next start; "
                 "exit %d)\n",
                 stuck_count == 1 ? "worker" : "workers", stuck.c_str(),
                 config.limits.drain_timeout_ms, static_cast<long long>(kStuckWorkerGraceMs),
                 stuck_count == 1 ? "it" : "them", kExitWorkersStuck);
    std::fflush(stderr);
    constexpr std::chrono::milliseconds kStuckFlushMax{2000};
    if (access_log != nullptr && !access_log->flush(kStuckFlushMax)) {
      std::fprintf(stderr, "keygate: access log: not every record could be written in %lld ms\n",
                   static_cast<long long>(kStuckFlushMax.count()));
    }
    // The last uses' write takes the writer's lock and RocksDB's: a last-used writer stuck in
    // a write (a stalled disk) would hold this exit as long. The same bound, on a thread of its
    // own that _exit leaves behind should it still be waiting.
    auto last_used_flushed = std::make_shared<std::promise<void>>();
    std::future<void> last_used_done = last_used_flushed->get_future();
    std::thread([&last_used, last_used_flushed] {
      last_used.flush();
      last_used_flushed->set_value();
    }).detach();
    if (last_used_done.wait_for(kStuckFlushMax) != std::future_status::ready) {
      std::fprintf(stderr, "keygate: keys' last uses: not written in %lld ms\n",
                   static_cast<long long>(kStuckFlushMax.count()));
    }
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(kExitWorkersStuck);
  }
  server->stop();
  // An admin job still running at the drain deadline finishes (exit waits for it; the jobs
  // queued behind it are answered 503 unrun) and is posted; the workers, stopped, then write
  // the records of the requests cut off with their tickets out, so every change is logged.
  admin_executor.stop();
  // Likewise a data request cut off while its key was being fetched from the store (partial
  // cache): the fetch finishes (the queued ones are answered unread) and its ticket is posted,
  // so the worker logs the request (499, reason "shutdown") and frees what its handler held.
  keys.stop_fetches();
  server->settle_deferred();
  // No worker reports any more: the uses since the last write go to the store now, so a
  // restart shows them.
  last_used.stop();
  std::printf("keygate: stopped\n");
  std::fflush(stdout);
  if (no_worker_left) return kExitNoWorkerLeft;
  // 0 after a drain cut short too, as nginx's fast shutdown and Envoy's SIGTERM exit 0: the stop
  // was asked for and was orderly (every record written, the store closed), and a non-zero
  // status tells supervisors the service failed (systemd marks the unit failed and, with
  // Restart=on-failure, restarts what the operator is stopping).
  return 0;
}
