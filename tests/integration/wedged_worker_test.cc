// Integration tests of keygate with a worker that stops serving: one wedged in a pass (the test
// hook GET /_keygate/test/wedge?ms=N holds its event loop), or one whose ring fails at run time
// (GET /_keygate/test/ring-fail). The stop is bounded and flushes what it can (SIGTERM), a
// reload does not wait for the wedged worker and names it (SIGHUP, POST /admin/reload), and a
// worker whose ring failed leaves its listeners to the others. Each test starts the real
// keygate (KEYGATE_TEST_HOOKS build, KEYGATE_TEST_WEDGE=1) on loopback.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kAdminKey = "wedged-test-admin-key-0123456789";
constexpr std::string_view kKey = "wedged-test-client-key-abcdefgh";

// Two workers, the test hooks on, stalls noticed after 250 ms (the least the config takes).
ServerOptions hook_options() {
  ServerOptions options = admin_server_options(std::string(kAdminKey));
  options.env.emplace_back("KEYGATE_TEST_WEDGE", "1");
  options.extra_config =
      "[server]\nworker_stall_timeout_ms = 250\n\n" + std::string(kOrdersAndBillingApis);
  return options;
}

// Every byte of the access-log segments in `dir`.
std::string log_bytes(const std::string& dir) {
  std::string out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    out += text.str();
  }
  return out;
}

// `n` new connections to `port` in turn, each a GET /healthz answered 200 within 2 s.
::testing::AssertionResult each_answered(uint16_t port, int n, std::string_view what) {
  for (int i = 0; i < n; ++i) {
    const std::optional<Response> r =
        round_trip(port, http_request("GET", "/healthz"), Millis(2000));
    if (!r.has_value()) {
      return ::testing::AssertionFailure() << what << " connection " << i << " not answered";
    }
    if (r->status != 200) {
      return ::testing::AssertionFailure() << what << " connection " << i << ": " << r->raw;
    }
  }
  return ::testing::AssertionSuccess();
}

// Wedges the worker that takes a fresh data connection for `ms` and returns its index once the
// stall is said (-1 if it is not within 3 s). `wedge` holds the connection.
int wedge_a_worker(TestServer& server, RawClient* wedge, unsigned ms) {
  if (!wedge->connect(server.data_port()) ||
      !wedge->send(http_request("GET", "/_keygate/test/wedge?ms=" + std::to_string(ms)))) {
    return -1;
  }
  constexpr std::string_view kStall = "stalled: its event loop has not passed for";
  if (!server.wait_for_error_output(kStall, Millis(3000))) return -1;
  return worker_in_line(server.error_output(), kStall);
}

// SIGTERM with a worker wedged for far longer than drain_timeout_ms: keygate no longer waits
// for it past drain_timeout_ms + 1 s of grace. It names the worker on stderr and exits 3, with
// the access records of every request answered before the signal in the log files (the log
// writer, set to wake only every 10 s, has not written them by itself) and the key's last use
// in the store (written only at a stop: its interval is an hour), which a restart on the same
// data directory opens (recovering from RocksDB's write-ahead log, as the store was not closed).
TEST(WedgedWorker, ASigtermExitsAfterTheDrainTimeoutWithoutItAndWithTheRecordsFlushed) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TempDir keep;
  const std::string data_dir = keep.path() + "/data";
  const std::string log_dir = keep.path() + "/logs";
  ServerOptions options = hook_options();
  options.data_dir = data_dir;
  options.log_dir = log_dir;
  options.limits = {{"drain_timeout_ms", 500}};
  options.extra_config =
      "[server]\nworker_stall_timeout_ms = 250\n\n[keys]\nlast_used_flush_interval_ms = "
      "3600000\n\n[log]\nflush_interval_ms = 10000\n\n" +
      std::string(kOrdersAndBillingApis);
  std::string key_id;
  {
    TestServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const std::optional<Response> created = round_trip(
        server.admin_port(),
        http_request("POST", "/admin/keys",
                     {"X-ApiKey: " + std::string(kAdminKey), "Content-Type: application/json"},
                     "{\"key\":\"" + std::string(kKey) + "\",\"apis\":[\"orders\"]}"));
    ASSERT_TRUE(created.has_value());
    ASSERT_EQ(created->status, 201) << created->raw;
    key_id = string_member(created->body, "id");
    ASSERT_FALSE(key_id.empty()) << created->body;
    // Fresh connections: both workers answer some of them.
    constexpr int kRequests = 24;
    for (int i = 0; i < kRequests; ++i) {
      const std::optional<Response> r = round_trip(
          server.data_port(), http_request("GET", "/orders/before-" + std::to_string(i),
                                           {"X-ApiKey: " + std::string(kKey)}));
      ASSERT_TRUE(r.has_value()) << i;
      ASSERT_EQ(r->status, 200) << r->raw;
    }
    RawClient wedge;
    const int worker = wedge_a_worker(server, &wedge, 30000);
    ASSERT_TRUE(worker == 0 || worker == 1) << server.error_output();

    const Clock::time_point signalled = Clock::now();
    const ExitStatus status = server.stop(SIGTERM, Millis(8000));
    const auto took = std::chrono::duration_cast<Millis>(Clock::now() - signalled);
    EXPECT_FALSE(status.timed_out) << server.error_output();
    EXPECT_TRUE(status.exited && status.code == 3) << status.describe() << "\n"
                                                   << server.error_output();
    // drain_timeout_ms 500 + 1000 ms of grace, and some room for a slow host.
    EXPECT_GE(took, Millis(1400));
    EXPECT_LT(took, Millis(4000));
    const std::string line = "keygate: worker " + std::to_string(worker) +
                             " (its loop has not passed for ";
    EXPECT_NE(server.error_output().find(line), std::string::npos) << server.error_output();
    EXPECT_NE(server.error_output().find(" did not stop within limits.drain_timeout_ms 500 + "
                                         "1000 ms: exiting without it ("),
              std::string::npos)
        << server.error_output();
    EXPECT_EQ(count_of(server.error_output(), "did not stop within"), 1u);
    EXPECT_EQ(server.output().find("keygate: stopped"), std::string::npos) << server.output();

    const std::string log = log_bytes(log_dir);
    for (int i = 0; i < kRequests; ++i) {
      EXPECT_NE(log.find("\"/orders/before-" + std::to_string(i) + "\""), std::string::npos)
          << "no record of request " << i << " in\n"
          << log;
    }
  }
  // The same data directory: the store opens, and the key's last use was written.
  ServerOptions again = admin_server_options(std::string(kAdminKey));
  again.data_dir = data_dir;
  again.log_dir = log_dir;
  TestServer restarted(again);
  std::string error;
  ASSERT_TRUE(restarted.start(&error)) << error;
  const std::optional<Response> key = round_trip(
      restarted.admin_port(),
      http_request("GET", "/admin/keys/" + key_id, {"X-ApiKey: " + std::string(kAdminKey)}));
  ASSERT_TRUE(key.has_value());
  ASSERT_EQ(key->status, 200) << key->raw;
  EXPECT_EQ(key->body.find("\"last_used_at\":null"), std::string::npos) << key->body;
  EXPECT_NE(key->body.find("\"last_used_at\":"), std::string::npos) << key->body;
  EXPECT_TRUE(restarted.stop(SIGTERM).clean()) << restarted.error_output();
}

// A reload while one of two workers is wedged: SIGHUP and POST /admin/reload both return at
// once (the stalled worker is not waited for) and name it; the other worker routes with the
// new APIs at once, and the wedged one from its first pass after the wedge, including the
// requests that reached it while it was wedged.
TEST(WedgedWorker, AReloadDoesNotWaitForAStalledWorkerNamesItAndItTakesTheApisAfterwards) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer server(hook_options());
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  std::vector<RawClient> data = answered_connections(server.data_port(), 16);
  ASSERT_GE(data.size(), 12u);
  std::vector<RawClient> admin = answered_connections(server.admin_port(), 16);
  ASSERT_GE(admin.size(), 12u);
  // Before the reload there is no route for /fresh.
  const std::optional<Response> before = round_trip(server.data_port(),
                                                    http_request("GET", "/fresh/1"));
  ASSERT_TRUE(before.has_value());
  ASSERT_EQ(before->status, 404) << before->raw;

  RawClient wedge;
  const int worker = wedge_a_worker(server, &wedge, 6000);
  ASSERT_TRUE(worker == 0 || worker == 1) << server.error_output();
  const Clock::time_point wedged_at = Clock::now();

  const std::string path = server.dir().path() + "/keygate.toml";
  const auto write_config = [&](std::string_view apis, std::string_view limits = {}) {
    const std::string written = server.dir().write_file(
        "keygate.toml.new",
        with_harness_admin_hosts("[server]\nworker_stall_timeout_ms = 250\n\n[limits]\n" +
                                 std::string(limits) + "\n" + std::string(apis)));
    ASSERT_EQ(std::rename(written.c_str(), path.c_str()), 0);
  };
  write_config(std::string(kOrdersAndBillingApis) +
               "\n[[apis]]\nname = \"fresh\"\nroutes = [\"/fresh\"]\n");
  Clock::time_point asked = Clock::now();
  ASSERT_TRUE(server.send_signal(SIGHUP));
  ASSERT_TRUE(server.wait_for_error_output("(generation 2)", Millis(3000)))
      << server.error_output();
  EXPECT_LT(Clock::now() - asked, Millis(800)) << server.error_output();
  EXPECT_NE(server.error_output().find(": 3 APIs (generation 2); worker " +
                                       std::to_string(worker) +
                                       " has not taken it yet (its event loop is held up: "
                                       "each takes it at its next loop pass)\n"),
            std::string::npos)
      << server.error_output();

  // POST /admin/reload on an admin connection the other worker holds (one the wedged worker
  // holds does not answer /healthz now).
  RawClient* live = nullptr;
  for (RawClient& client : admin) {
    if (!client.send(http_request("GET", "/healthz"))) continue;
    const std::optional<Response> r = client.read_response(Millis(150));
    if (r && r->status == 200) {
      live = &client;
      break;
    }
  }
  ASSERT_NE(live, nullptr) << "no admin connection held by the worker that is not wedged";
  // Its limits too: at most 2 header fields from now on.
  write_config(std::string(kOrdersAndBillingApis) +
                   "\n[[apis]]\nname = \"fresh\"\nroutes = [\"/fresh\", \"/fresher\"]\n",
               "header_count_max = 2\n");
  asked = Clock::now();
  ASSERT_TRUE(live->send(
      http_request("POST", "/admin/reload", {"X-ApiKey: " + std::string(kAdminKey)})));
  const std::optional<Response> reloaded = live->read_response(Millis(5000));
  ASSERT_TRUE(reloaded.has_value());
  EXPECT_LT(Clock::now() - asked, Millis(800));
  EXPECT_EQ(reloaded->status, 200) << reloaded->raw;
  EXPECT_EQ(reloaded->body,
            R"({"generation":3,"apis":3,"restart_settings":[],"workers_pending":[)" +
                std::to_string(worker) + R"(],"applied_settings":["limits.header_count_max"]})");
  // The wedge (6 s) began at least the stall timeout (250 ms) before wedged_at.
  ASSERT_LT(Clock::now() - wedged_at, Millis(4500)) << "the wedge may end before the requests";

  // Sent while the worker is still wedged, after both reloads: every connection is answered
  // with the third generation's routes and limits, the wedged worker's once the wedge is over
  // (it takes the reload before it parses what came in meanwhile): the first request on each
  // is routed (401, no key: not 404, no route), the second, with 4 header fields, is 431.
  const Clock::time_point sent = Clock::now();
  for (RawClient& client : data) {
    ASSERT_TRUE(client.send(http_request("GET", "/fresher/1") +
                            http_request("GET", "/fresher/2", {"X-A: 1", "X-B: 1", "X-C: 1"})));
  }
  size_t late = 0;
  for (RawClient& client : data) {
    const std::optional<Response> r = client.read_response(Millis(10000));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 401) << r->raw;
    const std::optional<Response> over = client.read_response(Millis(3000));
    ASSERT_TRUE(over.has_value());
    EXPECT_EQ(over->status, 431) << over->raw;
    if (Clock::now() - sent > Millis(500)) ++late;
  }
  EXPECT_GE(late, 1u) << "no connection was held by the wedged worker";
  const std::optional<Response> wedged = wedge.read_response(Millis(3000));
  ASSERT_TRUE(wedged.has_value());
  EXPECT_EQ(wedged->status, 200);
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
}

// Requests that reached a wedged worker before a reload made meanwhile are parsed, once the
// wedge is over, with the reload's limits: the worker takes the reload at the top of its
// first pass, before the completions that carry those requests (which the kernel queued ahead
// of the reload's wake-up), not only when a request starts.
TEST(WedgedWorker, RequestsThatReachedAWedgedWorkerBeforeAReloadAreParsedWithItsLimits) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer server(hook_options());
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  std::vector<RawClient> data = answered_connections(server.data_port(), 16);
  ASSERT_GE(data.size(), 12u);
  RawClient wedge;
  const int worker = wedge_a_worker(server, &wedge, 6000);
  ASSERT_TRUE(worker == 0 || worker == 1) << server.error_output();

  // Four header fields: within the limits now, over the reload's header_count_max = 2. The
  // other worker answers its connections at once (200); the wedged worker's wait.
  const std::string request = http_request("GET", "/healthz", {"X-A: 1", "X-B: 1", "X-C: 1"});
  const Clock::time_point sent = Clock::now();
  for (RawClient& client : data) ASSERT_TRUE(client.send(request));
  std::vector<RawClient*> waiting;
  for (RawClient& client : data) {
    const std::optional<Response> r = client.read_response(Millis(150));
    if (!r.has_value()) {
      waiting.push_back(&client);
      continue;
    }
    EXPECT_EQ(r->status, 200) << r->raw;
  }
  const std::string written = server.dir().write_file(
      "keygate.toml.new",
      with_harness_admin_hosts("[server]\nworker_stall_timeout_ms = 250\n\n[limits]\n"
                               "header_count_max = 2\n\n" + std::string(kOrdersAndBillingApis)));
  const std::string path = server.dir().path() + "/keygate.toml";
  ASSERT_EQ(std::rename(written.c_str(), path.c_str()), 0);
  ASSERT_TRUE(server.send_signal(SIGHUP));
  ASSERT_TRUE(server.wait_for_error_output("(generation 2)", Millis(3000)))
      << server.error_output();
  ASSERT_LT(Clock::now() - sent, Millis(4500)) << "the wedge may have ended before the reload";

  // The wedged worker's, once the wedge is over: parsed after it took the reload.
  size_t late = 0;
  for (RawClient* client : waiting) {
    const std::optional<Response> r = client->read_response(Millis(10000));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 431) << r->raw;
    ++late;
  }
  EXPECT_GE(late, 1u) << "no connection was held by the wedged worker";
  const std::optional<Response> wedged = wedge.read_response(Millis(5000));
  ASSERT_TRUE(wedged.has_value());
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
}

// A worker wedged too shortly for the watch to call it stalled yet (worker_stall_timeout_ms
// 5 s): the reload waits for it 1 s, no longer, and names it.
TEST(WedgedWorker, AReloadWaitsAtMostOneSecondForAWorkerThatIsNotStalledYet) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  ServerOptions options = hook_options();
  options.extra_config = std::string(kOrdersAndBillingApis);  // the default stall timeout
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  RawClient wedge;
  ASSERT_TRUE(wedge.connect(server.data_port(), &error)) << error;
  ASSERT_TRUE(wedge.send(http_request("GET", "/_keygate/test/wedge?ms=4000")));
  std::this_thread::sleep_for(Millis(300));  // the worker has taken it and sleeps
  const Clock::time_point asked = Clock::now();
  ASSERT_TRUE(server.send_signal(SIGHUP));
  ASSERT_TRUE(server.wait_for_error_output("(generation 2)", Millis(3000)))
      << server.error_output();
  const auto took = Clock::now() - asked;
  EXPECT_GE(took, Millis(900)) << server.error_output();
  EXPECT_LT(took, Millis(2000)) << server.error_output();
  EXPECT_NE(server.error_output().find(" has not taken it yet (its event loop is held up: each "
                                       "takes it at its next loop pass)\n"),
            std::string::npos)
      << server.error_output();
  EXPECT_EQ(server.error_output().find("stalled: its event loop"), std::string::npos)
      << server.error_output();
  const std::optional<Response> wedged = wedge.read_response(Millis(5000));
  ASSERT_TRUE(wedged.has_value());
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
}

// A worker whose ring fails at run time (the test hook) closes its listeners: every new
// connection, data and admin port, is served by the other worker, and the failure is said.
TEST(RingFailure, AWorkerWhoseRingFailsClosesItsListenersAndTheOthersServeEveryConnection) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer server(hook_options());
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  (void)round_trip(server.data_port(), http_request("GET", "/_keygate/test/ring-fail"));
  constexpr std::string_view kFailed = ": io_uring_enter failed: ";
  ASSERT_TRUE(server.wait_for_error_output("open connections are cut\n", Millis(3000)))
      << server.error_output();
  const int worker = worker_in_line(server.error_output(), kFailed);
  ASSERT_TRUE(worker == 0 || worker == 1) << server.error_output();
  EXPECT_NE(server.error_output().find("; the worker stops serving: its listening sockets are "
                                       "closed (new connections go to the other workers;"),
            std::string::npos)
      << server.error_output();
  EXPECT_TRUE(each_answered(server.data_port(), 200, "data"));
  EXPECT_TRUE(each_answered(server.admin_port(), 50, "admin"));
  // It stays a stalled worker for the watchdog; keygate stops as usual.
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
}

// The same with a socket passed by a service manager (socket activation), which every worker
// shares: the failed worker gives up its descriptor and cancels the accept it had pending on
// it, which would otherwise take one connection off the shared backlog and leave it unserved.
TEST(RingFailure, WithAnInheritedSocketNoConnectionIsLeftInTheFailedWorkersAccept) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 512), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ServerOptions options = hook_options();
  options.inherited_socket = fd;
  TestServer server(options);
  std::string error;
  const bool started = server.start(&error);
  ::close(fd);  // keygate has its own (the harness passed it as descriptor 3)
  ASSERT_TRUE(started) << error;
  ASSERT_EQ(server.data_port(), ntohs(addr.sin_port));
  (void)round_trip(server.data_port(), http_request("GET", "/_keygate/test/ring-fail"));
  ASSERT_TRUE(server.wait_for_error_output("open connections are cut\n", Millis(3000)))
      << server.error_output();
  EXPECT_TRUE(each_answered(server.data_port(), 100, "data"));
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
}

// The sockets of the connections a failed worker cut are closed, not only shut down: its ring
// is gone, so the completions that would have released them never come, and their descriptors
// (and the admin port's shared budget places) would stay taken for the rest of the run.
TEST(RingFailure, TheConnectionsAFailedWorkerCutAreClosedNotLeftOpen) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer server(hook_options());
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // keygate's sockets (listeners, nothing else yet).
  const auto sockets = [&] {
    size_t n = 0;
    std::error_code ec;
    const std::string dir = "/proc/" + std::to_string(server.pid()) + "/fd";
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      std::error_code link_ec;
      const std::string target = std::filesystem::read_symlink(e.path(), link_ec).string();
      if (!link_ec && target.starts_with("socket:")) ++n;
    }
    return n;
  };
  const size_t before = sockets();
  ASSERT_GT(before, 0u);
  {
    // Held open when the ring fails: the failed worker cuts it (it is on that worker).
    RawClient failing;
    ASSERT_TRUE(failing.connect(server.data_port()));
    ASSERT_TRUE(failing.send(http_request("GET", "/_keygate/test/ring-fail")));
    const std::optional<Response> answer = failing.read_response();
    ASSERT_TRUE(answer.has_value());
    ASSERT_TRUE(server.wait_for_error_output("open connections are cut\n", Millis(3000)))
        << server.error_output();
    (void)failing.read_until_close(Millis(2000));
  }
  // The failed worker's two listening sockets are gone, and so is the connection it cut.
  const auto deadline = Clock::now() + Millis(3000);
  size_t after = sockets();
  while (after != before - 2 && Clock::now() < deadline) {
    std::this_thread::sleep_for(Millis(20));
    after = sockets();
  }
  EXPECT_EQ(after, before - 2) << server.error_output();
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
}

// With its only worker's ring failed nothing serves: keygate stops by itself, says why and
// exits 4 (a failure, for a supervisor to restart it), instead of sitting there.
TEST(RingFailure, WhenEveryWorkersRingHasFailedKeygateExitsFour) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TempDir keep;
  ServerOptions options = hook_options();
  options.workers = 1;
  options.log_dir = keep.path() + "/logs";
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // A request in progress when the ring fails (its body half sent): cut, and its record says
  // why — the worker failed, not a shutdown anyone asked for.
  RawClient pending;
  ASSERT_TRUE(pending.connect(server.data_port()));
  ASSERT_TRUE(pending.send("POST /healthz?cut=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n"
                           "Content-Type: text/plain\r\n\r\nhalf"));
  ASSERT_TRUE(round_trip(server.data_port(), http_request("GET", "/healthz")).has_value());
  (void)round_trip(server.data_port(), http_request("GET", "/_keygate/test/ring-fail"));
  const ExitStatus status = server.wait_exit(Millis(5000));
  EXPECT_FALSE(status.timed_out) << server.error_output();
  EXPECT_TRUE(status.exited && status.code == 4) << status.describe() << "\n"
                                                 << server.error_output();
  EXPECT_NE(server.error_output().find("keygate: worker 0: io_uring_enter failed: "),
            std::string::npos)
      << server.error_output();
  EXPECT_NE(server.error_output().find("keygate: every worker's event loop has exited (their "
                                       "rings failed): nothing serves any more; stopping "
                                       "(exit 4)\n"),
            std::string::npos)
      << server.error_output();
  const std::string log = log_bytes(options.log_dir);
  const size_t record = log.find("\"path\":\"/healthz?cut=1\"");
  ASSERT_NE(record, std::string::npos) << log;
  const size_t end = log.find('\n', record);
  const size_t begin = log.rfind('\n', record);
  const std::string line =
      log.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin + 1));
  EXPECT_NE(line.find("\"reason\":\"worker_failed\""), std::string::npos) << line;
}

}  // namespace
}  // namespace keygate::integration
