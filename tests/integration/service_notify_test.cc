// Integration tests of keygate's readiness protocol with a service manager (sd_notify(3), as
// systemd's Type=notify speaks it): the test plays the service manager, binding the AF_UNIX
// datagram socket that NOTIFY_SOCKET names (a path in a temp dir, or an abstract @name), starts
// the real keygate with it and reads what arrives at start-up, on reloads and at the drain, and
// the watchdog's WATCHDOG=1 (WATCHDOG_USEC) while the workers turn and while one is wedged.
// Also ServiceNotifier (tools/service_notifier.h) on its own, for what a child process would
// see: NOTIFY_SOCKET taken out of the environment.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tests/integration/test_server.h"
#include "tools/service_notifier.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kAdminKey = "notify-test-admin-key-0123456789";

// The service manager's end: an AF_UNIX datagram socket bound to a path or an abstract name,
// closed (and its path removed) on destruction.
class NotifyReceiver {
 public:
  // Binds `name`: a path, or "@name" for the abstract name (no terminating NUL, as sd_notify
  // addresses it). False with the reason when it cannot.
  bool bind(const std::string& name, std::string* error) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
      *error = std::string("socket: ") + std::strerror(errno);
      return false;
    }
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (name.size() >= sizeof(address.sun_path)) {
      *error = "name too long: " + name;
      return false;
    }
    std::memcpy(address.sun_path, name.data(), name.size());
    socklen_t bytes = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    if (name.front() == '@') {
      address.sun_path[0] = '\0';
    } else {
      bytes += 1;
      path_ = name;
    }
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&address), bytes) != 0) {
      *error = "bind " + name + ": " + std::strerror(errno);
      return false;
    }
    return true;
  }
  ~NotifyReceiver() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  // The next datagram, or nullopt when none comes within `timeout`.
  std::optional<std::string> receive(Millis timeout = Millis(10000)) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
    char buf[8192];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  int fd_ = -1;
  std::string path_;
};

// The value of assignment `name` in a notification ("NAME=value" lines), nullopt when absent.
std::optional<std::string> field(std::string_view message, std::string_view name) {
  while (!message.empty()) {
    const size_t end = message.find('\n');
    const std::string_view line = message.substr(0, end);
    if (line.size() > name.size() && line.starts_with(name) && line[name.size()] == '=') {
      return std::string(line.substr(name.size() + 1));
    }
    if (end == std::string_view::npos) break;
    message.remove_prefix(end + 1);
  }
  return std::nullopt;
}

uint64_t monotonic_usec() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000u + static_cast<uint64_t>(now.tv_nsec) / 1000u;
}

ServerOptions notify_options(const std::string& notify_socket) {
  ServerOptions options = admin_server_options(std::string(kAdminKey));
  options.env.emplace_back("NOTIFY_SOCKET", notify_socket);
  return options;
}

// Expects READY=1 with MAINPID = the server's pid and a STATUS naming the data port it bound,
// so sent once keygate listens (the port is ephemeral: known only after the bind).
void expect_ready(NotifyReceiver& receiver, const TestServer& server) {
  const std::optional<std::string> ready = receiver.receive();
  ASSERT_TRUE(ready.has_value()) << "no notification after the ready line";
  EXPECT_EQ(field(*ready, "READY"), "1") << *ready;
  EXPECT_EQ(field(*ready, "MAINPID"), std::to_string(server.pid())) << *ready;
  const std::optional<std::string> status = field(*ready, "STATUS");
  ASSERT_TRUE(status.has_value()) << *ready;
  EXPECT_NE(status->find("data=127.0.0.1:" + std::to_string(server.data_port())),
            std::string::npos)
      << *ready;
}

// After a reload was asked for at `asked_usec` (CLOCK_MONOTONIC): RELOADING=1 with a
// MONOTONIC_USEC taken after the ask, then READY=1 with a STATUS containing `status_part`.
void expect_reload(NotifyReceiver& receiver, uint64_t asked_usec, std::string_view status_part) {
  const std::optional<std::string> reloading = receiver.receive();
  ASSERT_TRUE(reloading.has_value()) << "no RELOADING=1";
  EXPECT_EQ(field(*reloading, "RELOADING"), "1") << *reloading;
  const std::optional<std::string> usec = field(*reloading, "MONOTONIC_USEC");
  ASSERT_TRUE(usec.has_value()) << *reloading;
  const uint64_t began = std::strtoull(usec->c_str(), nullptr, 10);
  EXPECT_GE(began, asked_usec) << *reloading;
  EXPECT_LE(began, monotonic_usec()) << *reloading;
  const std::optional<std::string> done = receiver.receive();
  ASSERT_TRUE(done.has_value()) << "no READY=1 after RELOADING=1";
  EXPECT_EQ(field(*done, "READY"), "1") << *done;
  EXPECT_EQ(field(*done, "MAINPID"), std::nullopt) << *done;
  EXPECT_NE(field(*done, "STATUS").value_or("").find(status_part), std::string::npos) << *done;
}

// Replaces keygate's config file atomically with `text`, as an operator should.
void replace_config(const TestServer& server, const std::string& text) {
  const std::string path = server.dir().path() + "/keygate.toml";
  const std::string written = server.dir().write_file("keygate.toml.new", text);
  ASSERT_EQ(std::rename(written.c_str(), path.c_str()), 0);
}

TEST(ServiceNotify, ASocketPathGetsReadyReloadingAndStopping) {
  TempDir socket_dir;
  const std::string path = socket_dir.path() + "/notify";
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(path, &error)) << error;
  TestServer server(notify_options(path));
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  expect_ready(receiver, server);
  EXPECT_EQ(receiver.receive(Millis(200)), std::nullopt) << "more than READY=1 at start-up";

  // A reload that applies (the file as it is: generation 2) ...
  uint64_t asked = monotonic_usec();
  ASSERT_TRUE(server.send_signal(SIGHUP));
  expect_reload(receiver, asked, "(generation 2)");
  ASSERT_TRUE(server.wait_for_error_output("(generation 2)", Millis(10000)))
      << server.error_output();

  // ... and one that is refused end with READY=1 alike: keygate serves either way.
  replace_config(server, "[[apis]]\nname = 1\n");
  asked = monotonic_usec();
  ASSERT_TRUE(server.send_signal(SIGHUP));
  expect_reload(receiver, asked, "reload refused");
  ASSERT_TRUE(server.wait_for_error_output("reload refused", Millis(10000)))
      << server.error_output();
  // One API is "1 API", as on stderr.
  replace_config(server, with_harness_admin_hosts("[[apis]]\nname = \"orders\"\n"
                                                  "routes = [\"/orders\"]\n"));
  asked = monotonic_usec();
  ASSERT_TRUE(server.send_signal(SIGHUP));
  expect_reload(receiver, asked, "; 1 API (generation 3)");

  ASSERT_TRUE(server.send_signal(SIGTERM));
  const std::optional<std::string> stopping = receiver.receive();
  ASSERT_TRUE(stopping.has_value()) << "no STOPPING=1";
  EXPECT_EQ(field(*stopping, "STOPPING"), "1") << *stopping;
  EXPECT_NE(field(*stopping, "STATUS").value_or("").find("draining"), std::string::npos)
      << *stopping;
  const ExitStatus status = server.wait_exit(Millis(10000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  EXPECT_EQ(receiver.receive(Millis(200)), std::nullopt) << "a notification after STOPPING=1";
  EXPECT_EQ(server.error_output().find("NOTIFY_SOCKET"), std::string::npos)
      << server.error_output();
}

// A whole file (a /proc one: its size says 0, so read to the end); empty if it cannot be read.
std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// keygate re-executes itself once through /proc/self/exe for huge pages (tools/keygate_main.cc),
// which leaves the kernel's name of the process (comm) as "exe". Operators find keygate by
// that name: `pgrep keygate`, `pkill -HUP keygate`, `ps -C keygate`, `top`, a core file's %e and
// `coredumpctl list keygate` (the core dump the watchdog's SIGABRT leaves, docs/operations.md).
TEST(ServiceIdentity, KeygateIsNamedAfterItsBinaryAfterItsHugePageReexecution) {
  ServerOptions options;
  options.env_unset = {"KEYGATE_MALLOC_HUGEPAGES", "GLIBC_TUNABLES"};  // the re-execution runs
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  std::string binary = keygate_binary();
  binary = binary.substr(binary.rfind('/') + 1).substr(0, 15);  // comm holds 15 bytes
  const std::string proc = "/proc/" + std::to_string(server.pid());
  std::string comm = read_text_file(proc + "/comm");
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  EXPECT_EQ(comm, binary);
  // It did re-execute (the test checks the name after that, not a start without it).
  EXPECT_NE(read_text_file(proc + "/environ").find("glibc.malloc.hugetlb=1"), std::string::npos);
}

// An abstract name (sd_notify's "@"): addressed by exactly its bytes. A reload asked for on
// the admin API (POST /admin/reload) is notified like a SIGHUP.
TEST(ServiceNotify, AnAbstractNameGetsReadyAndAnAdminReloadAndStopping) {
  const std::string name = "@keygate-notify-test-" + random_hex(16);
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(name, &error)) << error;
  TestServer server(notify_options(name));
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  expect_ready(receiver, server);

  const uint64_t asked = monotonic_usec();
  const std::optional<Response> reload = round_trip(
      server.admin_port(),
      http_request("POST", "/admin/reload", {"X-ApiKey: " + std::string(kAdminKey)}),
      Millis(10000));
  ASSERT_TRUE(reload.has_value());
  EXPECT_EQ(reload->status, 200) << show(reload);
  expect_reload(receiver, asked, "(generation 2)");

  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  const std::optional<std::string> stopping = receiver.receive();
  ASSERT_TRUE(stopping.has_value()) << "no STOPPING=1";
  EXPECT_EQ(field(*stopping, "STOPPING"), "1") << *stopping;
}

// A socket that is gone (the service manager restarted, a stale variable): keygate starts,
// reloads and stops as usual, and says so once on stderr, not once per notification.
TEST(ServiceNotify, ASocketThatDoesNotExistIsSaidOnceAndKeygateRunsOn) {
  TempDir socket_dir;
  TestServer server(notify_options(socket_dir.path() + "/no-such-socket"));
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  const std::optional<Response> health = round_trip(server.data_port(),
                                                    http_request("GET", "/healthz"));
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200);
  ASSERT_TRUE(server.send_signal(SIGHUP));
  ASSERT_TRUE(server.wait_for_error_output("(generation 2)", Millis(10000)))
      << server.error_output();
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  EXPECT_EQ(count_of(server.error_output(), "NOTIFY_SOCKET"), 1u) << server.error_output();
  EXPECT_NE(server.error_output().find("keygate: cannot notify NOTIFY_SOCKET " +
                                       socket_dir.path() + "/no-such-socket: "),
            std::string::npos)
      << server.error_output();
}

// A service manager that never reads its socket: once the socket's queue is full (10
// datagrams by default, net.unix.max_dgram_qlen) a send fails instead of waiting, so reloads
// and the drain go on as usual.
TEST(ServiceNotify, AFullSocketQueueNeverHoldsKeygateUp) {
  TempDir socket_dir;
  const std::string path = socket_dir.path() + "/notify";
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(path, &error)) << error;
  TestServer server(notify_options(path));
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  const pid_t pid = server.pid();
  constexpr uint64_t kReloads = 12;  // 1 + 2 x 12 datagrams, more than the queue holds
  for (uint64_t generation = 2; generation < 2 + kReloads; ++generation) {
    ASSERT_TRUE(server.send_signal(SIGHUP));
    const std::string line = "(generation " + std::to_string(generation) + ")";
    ASSERT_TRUE(server.wait_for_error_output(line, Millis(10000))) << server.error_output();
  }
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  EXPECT_EQ(count_of(server.error_output(), "NOTIFY_SOCKET"), 1u) << server.error_output();
  // What the queue took is what keygate sent first: READY=1 at start-up.
  const std::optional<std::string> first = receiver.receive(Millis(1000));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(field(*first, "READY"), "1") << *first;
  EXPECT_EQ(field(*first, "MAINPID"), std::to_string(pid)) << *first;
}

// A value that names no socket (a relative path) is said once, on one line whatever bytes it
// holds; keygate starts.
TEST(ServiceNotify, AValueThatIsNoSocketAddressIsSaidOnceAndKeygateStarts) {
  TestServer server(notify_options("run/notify\nkeygate: forged line"));
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_EQ(count_of(server.error_output(), "NOTIFY_SOCKET"), 1u) << server.error_output();
  EXPECT_NE(server.error_output().find(
                "keygate: NOTIFY_SOCKET run/notify\\x0akeygate: forged line: neither an "
                "absolute path nor an abstract @name"),
            std::string::npos)
      << server.error_output();
}

// ---------------------------------------------------------------------------------------------
// The watchdog (WATCHDOG_USEC: systemd's WatchdogSec=) and stalled workers

using Clock = std::chrono::steady_clock;

// Receives every datagram on its own thread with the time it arrived, so the test can look at
// the rhythm of WATCHDOG=1 while it does other things.
class NotifyLog {
 public:
  explicit NotifyLog(NotifyReceiver& receiver)
      : thread_([this, &receiver] {
          while (!stop_.load()) {
            std::optional<std::string> message = receiver.receive(Millis(20));
            if (!message) continue;
            std::lock_guard lock(mu_);
            messages_.emplace_back(Clock::now(), std::move(*message));
          }
        }) {}
  ~NotifyLog() {
    stop_.store(true);
    thread_.join();
  }
  // The arrival times of the messages that are exactly `text`.
  std::vector<Clock::time_point> times_of(std::string_view text) {
    std::lock_guard lock(mu_);
    std::vector<Clock::time_point> out;
    for (const auto& [at, message] : messages_) {
      if (message == text) out.push_back(at);
    }
    return out;
  }
  // Every message but the ones that are exactly `text`.
  std::vector<std::string> others_than(std::string_view text) {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& entry : messages_) {
      if (entry.second != text) out.push_back(entry.second);
    }
    return out;
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<Clock::time_point, std::string>> messages_;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: starts once the rest is built
};

size_t count_between(const std::vector<Clock::time_point>& times, Clock::time_point from,
                     Clock::time_point to) {
  size_t n = 0;
  for (const Clock::time_point t : times) n += t >= from && t < to ? 1 : 0;
  return n;
}

// The longest time between two of `times` (sorted), or from `from` to the first.
Millis longest_gap(const std::vector<Clock::time_point>& times, Clock::time_point from,
                   Clock::time_point to) {
  Millis longest{0};
  Clock::time_point previous = from;
  for (const Clock::time_point t : times) {
    if (t < from || t >= to) continue;
    longest = std::max(longest, std::chrono::duration_cast<Millis>(t - previous));
    previous = t;
  }
  return std::max(longest, std::chrono::duration_cast<Millis>(to - previous));
}

ServerOptions watchdog_options(const std::string& notify_socket, uint32_t stall_timeout_ms) {
  ServerOptions options = notify_options(notify_socket);
  options.extra_config = "[server]\nworker_stall_timeout_ms = " +
                         std::to_string(stall_timeout_ms) + "\n\n" + options.extra_config;
  return options;
}

// WATCHDOG_USEC=200000 (WatchdogSec=200ms): WATCHDOG=1, and nothing else, every 100 ms from
// READY=1 on, and still while keygate drains.
TEST(Watchdog, WatchdogUsecGetsWatchdogEveryHalfOfItWhileTheWorkersTurn) {
  TempDir socket_dir;
  const std::string path = socket_dir.path() + "/notify";
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(path, &error)) << error;
  ServerOptions options = watchdog_options(path, 500);
  options.env.emplace_back("WATCHDOG_USEC", "200000");
  TestServer server(options);
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  expect_ready(receiver, server);
  NotifyLog log(receiver);
  const Clock::time_point from = Clock::now();
  std::this_thread::sleep_for(Millis(1500));
  const Clock::time_point to = Clock::now();
  const std::vector<Clock::time_point> pings = log.times_of("WATCHDOG=1");
  const size_t n = count_between(pings, from, to);
  // The main thread may be late (a loaded test host), never early.
  EXPECT_GE(n, 9u) << "about 15 expected";
  EXPECT_LE(n, 17u) << "about 15 expected";
  EXPECT_LT(longest_gap(pings, from, to), Millis(300)) << "about 100 ms expected";
  EXPECT_TRUE(log.others_than("WATCHDOG=1").empty());
  ASSERT_TRUE(server.send_signal(SIGTERM));
  const ExitStatus status = server.wait_exit(Millis(10000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  EXPECT_EQ(server.error_output().find("stalled"), std::string::npos) << server.error_output();
  EXPECT_EQ(server.error_output().find("WATCHDOG"), std::string::npos) << server.error_output();
}

// No WATCHDOG_USEC (no WatchdogSec=), or one meant for another process (WATCHDOG_PID), or one
// that is no number: nothing but READY=1 (the last said once on stderr).
TEST(Watchdog, WithoutAWatchdogForThisProcessNoWatchdogIsSent) {
  const std::vector<std::vector<std::pair<std::string, std::string>>> cases = {
      {},
      {{"WATCHDOG_USEC", "200000"}, {"WATCHDOG_PID", "1"}},
      {{"WATCHDOG_USEC", "200ms"}},
  };
  for (const auto& env : cases) {
    TempDir socket_dir;
    const std::string path = socket_dir.path() + "/notify";
    NotifyReceiver receiver;
    std::string error;
    ASSERT_TRUE(receiver.bind(path, &error)) << error;
    ServerOptions options = watchdog_options(path, 500);
    for (const auto& variable : env) options.env.push_back(variable);
    TestServer server(options);
    ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
    expect_ready(receiver, server);
    EXPECT_EQ(receiver.receive(Millis(700)), std::nullopt) << env.size();
    const ExitStatus status = server.stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe();
    const size_t said = count_of(server.error_output(), "WATCHDOG_USEC is not a positive number");
    EXPECT_EQ(said, env.size() == 1 ? 1u : 0u) << server.error_output();
  }
}

// GET /admin/stats answered by a worker that is not wedged: asked on each of `clients` in turn
// (each at most once: one held by the wedged worker answers only after the wedge) until one
// answers within a short time.
std::optional<Response> stats_from_a_live_worker(std::vector<RawClient>& clients) {
  for (RawClient& client : clients) {
    if (!client.send(http_request("GET", "/admin/stats",
                                  {"X-ApiKey: " + std::string(kAdminKey)}))) {
      continue;
    }
    std::optional<Response> r = client.read_response(Millis(150));
    if (r && r->status == 200) return r;
  }
  return std::nullopt;
}

// One worker wedged (the test hook holds its event loop for 3 s) among two: past
// worker_stall_timeout_ms it is said stalled on stderr, counted in /admin/stats (which the
// other worker still answers) and /admin/metrics, and no WATCHDOG=1 goes while it is: systemd
// would kill keygate. Once it turns again that is said, and WATCHDOG=1 resumes.
TEST(Watchdog, AWedgedWorkerStopsTheWatchdogAndIsSaidAndCountedUntilItTurnsAgain) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TempDir socket_dir;
  const std::string path = socket_dir.path() + "/notify";
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(path, &error)) << error;
  ServerOptions options = watchdog_options(path, 500);
  options.env.emplace_back("WATCHDOG_USEC", "200000");
  options.env.emplace_back("KEYGATE_TEST_WEDGE", "1");
  TestServer server(options);
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  expect_ready(receiver, server);
  NotifyLog log(receiver);
  std::vector<RawClient> admin = answered_connections(server.admin_port(), 16);
  ASSERT_GE(admin.size(), 8u);
  std::this_thread::sleep_for(Millis(300));

  RawClient wedge;
  ASSERT_TRUE(wedge.connect(server.data_port(), &error)) << error;
  const Clock::time_point wedged_at = Clock::now();
  ASSERT_TRUE(wedge.send(http_request("GET", "/_keygate/test/wedge?ms=3000")));
  ASSERT_TRUE(server.wait_for_error_output("stalled: its event loop has not passed for",
                                           Millis(2000)))
      << server.error_output();
  const Clock::time_point stall_seen = Clock::now();
  const int worker = worker_in_line(server.error_output(), "stalled: its event loop");
  ASSERT_TRUE(worker == 0 || worker == 1) << server.error_output();
  EXPECT_NE(server.error_output().find("(server.worker_stall_timeout_ms 500); watchdog "
                                       "notifications stop until it passes again"),
            std::string::npos)
      << server.error_output();

  const std::optional<Response> during = stats_from_a_live_worker(admin);
  ASSERT_TRUE(during.has_value()) << "no worker answered /admin/stats";
  EXPECT_EQ(stats_counter(during->body, "workers", "stalled"), 1) << during->body;
  EXPECT_EQ(stats_counter(during->body, "workers", "stalls_total"), 1) << during->body;
  EXPECT_GT(stats_counter(during->body, "worker_loops", std::to_string(worker)), 500)
      << during->body;
  EXPECT_LT(stats_counter(during->body, "worker_loops", std::to_string(1 - worker)), 500)
      << during->body;

  ASSERT_TRUE(server.wait_for_error_output(
      "keygate: worker " + std::to_string(worker) +
          " no longer stalled: its event loop passes again (stalled ",
      Millis(5000)))
      << server.error_output();
  const Clock::time_point resume_seen = Clock::now();
  const std::optional<Response> wedged = wedge.read_response(Millis(3000));
  ASSERT_TRUE(wedged.has_value());
  EXPECT_EQ(wedged->status, 200);
  std::this_thread::sleep_for(Millis(500));
  const std::vector<Clock::time_point> pings = log.times_of("WATCHDOG=1");
  // Before the wedge: every 100 ms. From the stall line on: none until the worker turns again
  // (100 ms of grace at the start for the receiving thread, which may record one sent before
  // the line late; the first one after may overtake the test's read of the line that ends it).
  EXPECT_GE(count_between(pings, wedged_at - Millis(300), wedged_at), 2u);
  EXPECT_EQ(count_between(pings, stall_seen + Millis(100), resume_seen - Millis(200)), 0u);
  EXPECT_GE(longest_gap(pings, wedged_at, resume_seen), Millis(1500));
  EXPECT_GE(count_between(pings, resume_seen, resume_seen + Millis(500)), 3u);

  const std::optional<Response> after = round_trip(
      server.admin_port(),
      http_request("GET", "/admin/metrics", {"X-ApiKey: " + std::string(kAdminKey)}));
  ASSERT_TRUE(after.has_value());
  EXPECT_NE(after->body.find("\nkeygate_workers_stalled 0\n"), std::string::npos) << after->body;
  EXPECT_NE(after->body.find("\nkeygate_workers_stalls_total 1\n"), std::string::npos)
      << after->body;
  EXPECT_NE(after->body.find("# TYPE keygate_worker_loop_pass_age_ms gauge\n"),
            std::string::npos)
      << after->body;
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  // One line when the stall began, one when it ended.
  EXPECT_EQ(count_of(server.error_output(), "keygate: worker "), 2u) << server.error_output();
}

// Restores (or removes) an environment variable when it goes out of scope.
class EnvironmentVariable {
 public:
  EnvironmentVariable(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~EnvironmentVariable() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// NOTIFY_SOCKET leaves the environment once read, so a process keygate starts cannot notify
// in keygate's name; the notifier still sends to it.
TEST(ServiceNotifier, TakesNotifySocketOutOfTheEnvironmentAndStillSendsThere) {
  TempDir socket_dir;
  const std::string path = socket_dir.path() + "/notify";
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(path, &error)) << error;
  EnvironmentVariable variable("NOTIFY_SOCKET", path);
  keygate::tools::ServiceNotifier notifier = keygate::tools::ServiceNotifier::from_environment();
  EXPECT_EQ(std::getenv("NOTIFY_SOCKET"), nullptr);
  ASSERT_TRUE(notifier.enabled());
  notifier.ready("up");
  const std::optional<std::string> ready = receiver.receive();
  ASSERT_TRUE(ready.has_value());
  EXPECT_EQ(*ready, "READY=1\nMAINPID=" + std::to_string(::getpid()) + "\nSTATUS=up");
}

// WATCHDOG_USEC and WATCHDOG_PID leave the environment once read too (a child must not take
// keygate's watchdog for its own); the notifier keeps what they said.
TEST(ServiceNotifier, TakesTheWatchdogVariablesOutOfTheEnvironmentAndSendsWatchdog) {
  TempDir socket_dir;
  const std::string path = socket_dir.path() + "/notify";
  NotifyReceiver receiver;
  std::string error;
  ASSERT_TRUE(receiver.bind(path, &error)) << error;
  EnvironmentVariable socket("NOTIFY_SOCKET", path);
  EnvironmentVariable usec("WATCHDOG_USEC", "30000000");
  EnvironmentVariable pid("WATCHDOG_PID", std::to_string(::getpid()));
  keygate::tools::ServiceNotifier notifier = keygate::tools::ServiceNotifier::from_environment();
  EXPECT_EQ(std::getenv("WATCHDOG_USEC"), nullptr);
  EXPECT_EQ(std::getenv("WATCHDOG_PID"), nullptr);
  EXPECT_EQ(notifier.watchdog_usec(), 30000000u);
  notifier.watchdog();
  EXPECT_EQ(receiver.receive(), "WATCHDOG=1");
}

TEST(ServiceNotifier, WithoutNotifySocketSendsNothing) {
  ::unsetenv("NOTIFY_SOCKET");
  keygate::tools::ServiceNotifier notifier = keygate::tools::ServiceNotifier::from_environment();
  EXPECT_FALSE(notifier.enabled());
  notifier.ready("up");  // nothing to send to: no error, no stderr line
  notifier.stopping("down");
}

}  // namespace
}  // namespace keygate::integration
