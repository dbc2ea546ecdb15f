// Integration tests of the live reload of the APIs and the live settings (SIGHUP): the real
// keygate in front of keygate-upstream on loopback, its config file rewritten and the signal
// sent, then the answers on the data and admin ports (and the access log's files) checked. A
// reload is done once keygate says so on stderr ("keygate: reloaded ...": every worker routes
// new requests with the new APIs and limits by then).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/process_helper.h"
#include "tests/integration/send_queue.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kAdminKey = "reload-test-admin-key-0123456789";
constexpr std::string_view kKey = "reload-test-client-key-abcdefgh";
constexpr std::string_view kNewKey = "reload-test-later-key-abcdefghij";

// TCP connections to 127.0.0.1:`port` in the ESTABLISHED state, seen from the connecting side
// (/proc/net/tcp: remote address and port in hex, state 01): keygate's upstream connections
// to a keygate-upstream, idle ones in its pools included.
int established_to(const std::string& address) {
  const uint16_t port = static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
  char remote[16];
  std::snprintf(remote, sizeof(remote), "0100007F:%04X", port);
  std::ifstream tcp("/proc/net/tcp");
  int n = 0;
  for (std::string line; std::getline(tcp, line);) {
    std::istringstream fields(line);
    std::string slot, local, rem, state;
    if ((fields >> slot >> local >> rem >> state) && rem == remote && state == "01") ++n;
  }
  return n;
}

// Polls established_to(address) until it is `want` (up to 3 s); the last count.
int wait_established(const std::string& address, int want) {
  int n = established_to(address);
  for (int i = 0; i < 300 && n != want; ++i) {
    std::this_thread::sleep_for(Millis(10));
    n = established_to(address);
  }
  return n;
}

// An API as config text; `upstream` empty: auth-check.
std::string api(std::string_view name, std::string_view route, std::string_view upstream = {}) {
  std::string text = "[[apis]]\nname = \"" + std::string(name) + "\"\nroutes = [\"" +
                     std::string(route) + "\"]\n";
  if (!upstream.empty()) text += "upstreams = [\"" + std::string(upstream) + "\"]\n";
  return text + "\n";
}

class ReloadTest : public ::testing::Test {
 protected:
  // Two keygate-upstream servers (A and B), then keygate with `apis` (config text; "@A@" and
  // "@B@" stand for their addresses) and kKey for `key_apis`.
  void start(const std::string& apis, const std::vector<std::string>& key_apis = {"orders"},
             unsigned workers = 2) {
    for (auto* up : {&upstream_a_, &upstream_b_}) {
      std::string line, error;
      up->process = start_process_with_ready_line(KEYGATE_UPSTREAM_BINARY,
                                                  {"--listen", "127.0.0.1:0"}, "listening on ",
                                                  &line, &error);
      ASSERT_NE(up->process, nullptr) << error;
      up->address = line.substr(std::string_view("listening on ").size());
    }
    ServerOptions options = admin_server_options(std::string(kAdminKey));
    options.workers = workers;
    options.extra_config = fill(apis);
    server_ = std::make_unique<TestServer>(options);
    std::string error;
    ASSERT_TRUE(server_->start(&error)) << error;
    ASSERT_EQ(create_key(kKey, key_apis), 201);
  }

  std::string fill(std::string text) const {
    for (const auto& [mark, address] :
         {std::pair<std::string, std::string>{"@A@", upstream_a_.address},
          std::pair<std::string, std::string>{"@B@", upstream_b_.address}}) {
      for (size_t at; (at = text.find(mark)) != std::string::npos;) text.replace(at, 3, address);
    }
    return text;
  }

  // Rewrites the config file as the harness wrote it (no [limits] values), with `body` after
  // the [limits] table instead of the APIs it started with. Atomically (a new file renamed over
  // the old), as operators should: a reload never reads it half written.
  std::string rewrite(const std::string& body) {
    return replace_config("# written by the keygate integration-test harness\n[limits]\n\n" +
                          fill(body) + "\n");
  }
  std::string replace_config(const std::string& text) {
    const std::string path = server_->dir().path() + "/keygate.toml";
    const std::string written =
        server_->dir().write_file("keygate.toml.new", with_harness_admin_hosts(text));
    EXPECT_EQ(std::rename(written.c_str(), path.c_str()), 0);
    return path;
  }

  // SIGHUP, then waits for the line that reports generation `generation` applied.
  ::testing::AssertionResult reload(uint64_t generation) {
    if (!server_->send_signal(SIGHUP)) return ::testing::AssertionFailure() << "not running";
    const std::string line = "(generation " + std::to_string(generation) + ")";
    if (!server_->wait_for_error_output(line, Millis(10000))) {
      return ::testing::AssertionFailure() << "no '" << line << "'; stderr:\n"
                                           << server_->error_output();
    }
    return ::testing::AssertionSuccess();
  }

  // POST /admin/keys with value `key` for `apis`: the status.
  // `log_request`: its requests are captured in the access log.
  int create_key(std::string_view key, const std::vector<std::string>& apis,
                 bool log_request = false) {
    std::string list;
    for (const std::string& a : apis) list += (list.empty() ? "\"" : ",\"") + a + "\"";
    const std::string body = "{\"key\":\"" + std::string(key) + "\",\"apis\":[" + list + "]" +
                             (log_request ? ",\"log_request\":true}" : "}");
    const auto r = round_trip(server_->admin_port(),
                              http_request("POST", "/admin/keys",
                                           {"X-ApiKey: " + std::string(kAdminKey),
                                            "Content-Type: application/json"},
                                           body));
    return r.has_value() ? r->status : 0;
  }

  std::optional<Response> get(std::string_view target, std::string_view key = kKey,
                              Millis timeout = Millis(3000)) {
    return round_trip(server_->data_port(),
                      http_request("GET", target, {"X-ApiKey: " + std::string(key)}), timeout);
  }

  // POST `target` with a text body of `body_bytes` bytes ("x" each), on a new connection.
  std::optional<Response> post(std::string_view target, std::string_view body,
                               std::string_view key = kKey) {
    return round_trip(server_->data_port(), post_request(target, body, key));
  }
  static std::string post_request(std::string_view target, std::string_view body,
                                  std::string_view key = kKey) {
    return http_request("POST", target,
                        {"X-ApiKey: " + std::string(key), "Content-Type: text/plain"}, body);
  }

  // The access log's segment files now, and every byte in them.
  std::vector<std::string> segments() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(server_->log_dir(), ec)) {
      const std::string name = e.path().filename().string();
      if (name.starts_with("access-") && name.ends_with(".jsonl")) out.push_back(e.path());
    }
    return out;
  }
  std::string log_text() const {
    std::string text;
    for (const std::string& path : segments()) {
      std::ifstream in(path, std::ios::binary);
      text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    return text;
  }
  // Polls log_text() until it holds `what` (up to 5 s).
  bool log_holds(std::string_view what) const {
    for (int i = 0; i < 500; ++i) {
      if (log_text().find(what) != std::string::npos) return true;
      std::this_thread::sleep_for(Millis(10));
    }
    return false;
  }

  int64_t stat(std::string_view name) {
    const auto r = round_trip(server_->admin_port(),
                              http_request("GET", "/admin/stats",
                                           {"X-ApiKey: " + std::string(kAdminKey)}));
    if (!r.has_value() || r->status != 200) return -2;
    return stats_counter(r->body, "config", name);
  }

  struct Upstream {
    std::unique_ptr<ChildProcess> process;
    std::string address;
  };
  Upstream upstream_a_;
  Upstream upstream_b_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(ReloadTest, ANewApiBecomesReachableProxiedAndAuthCheckAndTakesNewKeys) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@")));
  EXPECT_EQ(get("/billing/1")->status, 404);
  // The admin API validates against the running APIs: no key for an API keygate lacks.
  EXPECT_EQ(create_key(kNewKey, {"billing", "checks"}), 400);

  rewrite(api("orders", "/orders", "@A@") + api("billing", "/billing", "@A@") +
          api("checks", "/checks"));
  ASSERT_TRUE(reload(2));
  EXPECT_NE(server_->error_output().find("keygate: reloaded " + server_->dir().path() +
                                         "/keygate.toml: 3 APIs (generation 2)"),
            std::string::npos)
      << server_->error_output();

  ASSERT_EQ(create_key(kNewKey, {"billing", "checks"}), 201);
  // Proxied to the upstream...
  auto r = get("/billing/7", kNewKey);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_NE(r->body.find("\"target\":\"/billing/7\""), std::string::npos) << r->body;
  EXPECT_EQ(r->header("X-Keygate-Api").value_or(""), "");  // identity goes upstream, not back
  // ...and answered by keygate (auth-check).
  r = get("/checks/x", kNewKey);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_EQ(r->header("X-Keygate-Api").value_or(""), "checks");
  // The key made before may not call the new APIs (its apis name only orders), and orders works.
  EXPECT_EQ(get("/billing/7")->status, 403);
  EXPECT_EQ(get("/orders/1")->status, 200);
  EXPECT_EQ(stat("generation"), 2);
  EXPECT_EQ(stat("reloads_total"), 1);
  EXPECT_EQ(stat("reloads_refused_total"), 0);
  const auto metrics = round_trip(server_->admin_port(),
                                  http_request("GET", "/admin/metrics",
                                               {"X-ApiKey: " + std::string(kAdminKey)}));
  ASSERT_TRUE(metrics.has_value());
  EXPECT_NE(metrics->body.find("# TYPE keygate_config_generation gauge\n"
                               "keygate_config_generation 2\n"),
            std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("\nkeygate_config_reloads_total 1\n"), std::string::npos);
  EXPECT_NE(metrics->body.find("\nkeygate_config_reloads_refused_total 0\n"), std::string::npos);
}

// POST /admin/reload: the same reload, asked for on the admin port, answered with its outcome.
TEST_F(ReloadTest, PostAdminReloadReloadsAndAnswersWithTheOutcome) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@")));
  const auto post_reload = [&] {
    return round_trip(server_->admin_port(),
                      http_request("POST", "/admin/reload",
                                   {"X-ApiKey: " + std::string(kAdminKey)}),
                      Millis(15000));
  };
  replace_config("[limits]\nidle_timeout_ms = 1234\n\n" +
                 fill(api("orders", "/orders", "@A@") + api("checks", "/checks")));
  auto r = post_reload();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_EQ(r->body,
            R"({"generation":2,"apis":2,"restart_settings":[],"workers_pending":[],)"
            R"("applied_settings":["limits.idle_timeout_ms"]})");
  // Answered once the new APIs serve.
  ASSERT_EQ(create_key(kNewKey, {"checks"}), 201);
  EXPECT_EQ(get("/checks", kNewKey)->status, 200);
  EXPECT_TRUE(server_->wait_for_error_output("(generation 2)", Millis(5000)));

  const std::string path = rewrite(api("orders", "/orders", "@A@") + "[[apis]]\nname = 1\n");
  r = post_reload();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 400) << r->raw;
  EXPECT_EQ(string_member(r->body, "error"), "reload_refused") << r->body;
  EXPECT_NE(r->body.find(path + ":"), std::string::npos) << r->body;
  EXPECT_EQ(get("/checks", kNewKey)->status, 200);  // nothing changed
  EXPECT_EQ(stat("generation"), 2);
  EXPECT_EQ(stat("reloads_refused_total"), 1);
  // A key without admin may not.
  r = round_trip(server_->admin_port(),
                 http_request("POST", "/admin/reload", {"X-ApiKey: " + std::string(kKey)}));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 403) << r->raw;
}

TEST_F(ReloadTest, ARemovedApiIsNoRouteAndKeysNamingItKeepTheirOtherApis) {
  ASSERT_NO_FATAL_FAILURE(
      start(api("orders", "/orders", "@A@") + api("billing", "/billing", "@A@"),
            {"orders", "billing"}));
  ASSERT_EQ(get("/billing/1")->status, 200);
  rewrite(api("orders", "/orders", "@A@"));
  ASSERT_TRUE(reload(2));
  auto r = get("/billing/1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 404) << r->raw;
  EXPECT_NE(r->body.find("no_route"), std::string::npos) << r->body;
  EXPECT_EQ(get("/orders/1")->status, 200);
  EXPECT_EQ(create_key(kNewKey, {"billing"}), 400);
}

TEST_F(ReloadTest, AChangedUpstreamAddressTakesEffectOnEveryWorker) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@"), {"orders"}, 2));
  // A keep-alive client whose upstream connection is pooled: the next request after the
  // reload must not reuse it.
  RawClient kept;
  ASSERT_TRUE(kept.connect(server_->data_port()));
  const std::string request = http_request("GET", "/orders/1", {"X-ApiKey: " + std::string(kKey)});
  ASSERT_TRUE(kept.send(request));
  auto r = kept.read_response();
  ASSERT_TRUE(r.has_value());
  EXPECT_NE(r->body.find("\"listen\":\"" + upstream_a_.address + "\""), std::string::npos)
      << r->body;
  ASSERT_EQ(wait_established(upstream_a_.address, 1), 1);  // pooled

  rewrite(api("orders", "/orders", "@B@"));
  ASSERT_TRUE(reload(2));
  // The old version's pool is closed with the reload (it carried no request).
  EXPECT_EQ(wait_established(upstream_a_.address, 0), 0);
  ASSERT_TRUE(kept.send(request));
  r = kept.read_response();
  ASSERT_TRUE(r.has_value());
  EXPECT_NE(r->body.find("\"listen\":\"" + upstream_b_.address + "\""), std::string::npos)
      << r->body;
  // New connections land on either worker: every one goes to B.
  for (int i = 0; i < 8; ++i) {
    r = get("/orders/2");
    ASSERT_TRUE(r.has_value());
    EXPECT_NE(r->body.find("\"listen\":\"" + upstream_b_.address + "\""), std::string::npos)
        << r->body;
  }
}

// keygate-upstream numbers its TCP connections ("connection" in its JSON): the same number
// is the same pooled upstream connection, reused.
int64_t connection_of(const std::optional<Response>& r) {
  return r.has_value() ? number_member(r->body, "connection") : -1;
}

// A reload keeps the pool of every server an API of the same name still lists: a reload that
// only touches another API (or this one's routes) does not make it reconnect. Once renewed
// for every API: each reload closed every idle upstream connection.
TEST_F(ReloadTest, AReloadKeepsTheUpstreamConnectionsOfServersItKeeps) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@") + api("billing", "/billing", "@B@"),
                                {"orders", "billing"}, 1));  // one worker: one pool per server
  auto r = get("/billing/1");
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->status, 200) << r->raw;
  const int64_t billing_conn = connection_of(r);
  ASSERT_GT(billing_conn, 0) << r->body;
  const int64_t orders_conn = connection_of(get("/orders/1"));
  ASSERT_GT(orders_conn, 0);
  ASSERT_EQ(connection_of(get("/billing/2")), billing_conn);  // pooled (and no reload yet)
  ASSERT_EQ(wait_established(upstream_b_.address, 1), 1);

  // Only orders changes (its route), not its server; billing not at all.
  rewrite(api("orders", "/shop", "@A@") + api("billing", "/billing", "@B@"));
  ASSERT_TRUE(reload(2));
  r = get("/billing/3");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_EQ(connection_of(r), billing_conn) << r->body;
  EXPECT_EQ(number_member(r->body, "request"), 3) << r->body;
  EXPECT_EQ(connection_of(get("/shop/1")), orders_conn);
  EXPECT_EQ(established_to(upstream_b_.address), 1);

  // billing moves to A: its pool to B is closed with the reload, and it connects anew (its own
  // pool: orders' connection to A is not billing's).
  rewrite(api("orders", "/shop", "@A@") + api("billing", "/billing", "@A@"));
  ASSERT_TRUE(reload(3));
  EXPECT_EQ(wait_established(upstream_b_.address, 0), 0);
  r = get("/billing/4");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_NE(r->body.find("\"listen\":\"" + upstream_a_.address + "\""), std::string::npos)
      << r->body;
  EXPECT_NE(connection_of(r), orders_conn) << r->body;
  EXPECT_NE(connection_of(r), billing_conn) << r->body;
  EXPECT_EQ(number_member(r->body, "request"), 1) << r->body;
  EXPECT_EQ(connection_of(get("/shop/2")), orders_conn);
}

// A request in flight across a reload that keeps its server finishes on the old version, and
// its upstream connection then joins the new version's pool instead of being closed.
TEST_F(ReloadTest, AConnectionBusyAcrossAReloadThatKeepsItsServerIsPooledAfterwards) {
  ASSERT_NO_FATAL_FAILURE(
      start(api("orders", "/orders", "@B@") + api("slow", "/delay", "@A@"), {"orders", "slow"}, 1));
  RawClient slow;
  ASSERT_TRUE(slow.connect(server_->data_port()));
  ASSERT_TRUE(slow.send(http_request("GET", "/delay/1000", {"X-ApiKey: " + std::string(kKey)})));
  ASSERT_EQ(wait_established(upstream_a_.address, 1), 1);  // forwarded, waiting for A
  rewrite(api("orders", "/shop", "@B@") + api("slow", "/delay", "@A@"));
  ASSERT_TRUE(reload(2));
  const auto first = slow.read_response(Millis(5000));
  ASSERT_TRUE(first.has_value()) << to_string(slow.last_end());
  EXPECT_EQ(first->status, 200) << first->raw;
  const int64_t conn = connection_of(first);
  ASSERT_GT(conn, 0) << first->body;
  const auto next = get("/delay/1");
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->status, 200) << next->raw;
  EXPECT_EQ(connection_of(next), conn) << next->body;
  EXPECT_EQ(established_to(upstream_a_.address), 1);
}

// A server skipped after a failed connect stays skipped across a reload that keeps it (no
// new connect to it until upstream_fail_timeout_ms has passed); a reload that changes its
// API's connect_timeout_ms forgets the skip, which a connect under the old timeout earned.
TEST_F(ReloadTest, AServerSkippedBeforeAReloadThatKeepsItIsStillSkippedAfterIt) {
  std::vector<RawClient> fillers;
  const auto [lfd, port] = blackhole_listener(&fillers);
  ASSERT_GE(lfd, 0);
  const auto pair = [port = port](int connect_timeout_ms) {
    return "[[apis]]\nname = \"pair\"\nroutes = [\"/pair\"]\nupstreams = [\"127.0.0.1:" +
           std::to_string(port) + "\", \"@A@\"]\nconnect_timeout_ms = " +
           std::to_string(connect_timeout_ms) + "\n\n";
  };
  // The black hole first: a new version's round robin starts there.
  ASSERT_NO_FATAL_FAILURE(start(pair(300) + api("orders", "/orders", "@B@"), {"orders", "pair"},
                                1));  // one worker: the skip is per worker
  const auto timed_get = [&](const std::string& target, Millis* took) {
    const auto started = std::chrono::steady_clock::now();
    auto r = get(target);
    *took = std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - started);
    return r;
  };
  Millis took{};
  auto r = timed_get("/pair/1", &took);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  ASSERT_GE(took, Millis(250)) << "the first request did not wait for the black hole";

  rewrite(pair(300) + api("orders", "/shop", "@B@"));
  ASSERT_TRUE(reload(2));
  r = timed_get("/pair/2", &took);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_LT(took, Millis(250)) << "the black hole was tried again after the reload";

  rewrite(pair(400) + api("orders", "/shop", "@B@"));
  ASSERT_TRUE(reload(3));
  r = timed_get("/pair/3", &took);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_GE(took, Millis(350)) << "a changed connect_timeout_ms kept the skip";
  ::close(lfd);
}

// The descriptor estimate counts the upstream servers' pools: a reload that adds servers is
// checked against RLIMIT_NOFILE as the start was, with the same warning, and only when short.
TEST(ReloadDescriptorLimit, AReloadThatAddsUpstreamServersBeyondTheLimitIsWarnedAbout) {
  ServerOptions options = admin_server_options(std::string(kAdminKey));
  options.workers = 1;
  const std::string limits =
      "[limits]\nconnections_per_worker_max = 1000\nupstream_idle_connections_max = 1000\n\n";
  options.limits = {{"connections_per_worker_max", 1000},
                    {"upstream_idle_connections_max", 1000}};
  // Never contacted: no request goes to them.
  const auto apis = [](int servers) {
    std::string list;
    for (int i = 0; i < servers; ++i) {
      list += (i == 0 ? "\"127.0.0.1:" : ", \"127.0.0.1:") + std::to_string(9 + i) + "\"";
    }
    return "[[apis]]\nname = \"pair\"\nroutes = [\"/pair\"]\nupstreams = [" + list + "]\n";
  };
  options.extra_config = apis(1);
  options.wrapper = {"/usr/bin/prlimit", "--nofile=4096:4096", "--"};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // 1 x (1000 + 1 x 1000) + 64 + 256 spare = 2320: fits.
  EXPECT_EQ(server.error_output().find("warning"), std::string::npos) << server.error_output();

  const auto reload_with = [&](int servers, uint64_t generation) {
    const std::string path = server.dir().path() + "/keygate.toml";
    const std::string written =
        server.dir().write_file("keygate.toml.new", limits + apis(servers));
    EXPECT_EQ(std::rename(written.c_str(), path.c_str()), 0);
    EXPECT_TRUE(server.send_signal(SIGHUP));
    EXPECT_TRUE(server.wait_for_error_output("(generation " + std::to_string(generation) + ")",
                                             Millis(10000)))
        << server.error_output();
  };
  // 1 x (1000 + 4 x 1000) + 64 + 256 = 5320 > 4096.
  reload_with(4, 2);
  const std::string warning =
      "keygate: warning: the descriptor limit (RLIMIT_NOFILE 4096) is below the 5320 that 1 "
      "worker x (connections_per_worker_max 1000 + 4 upstream servers x "
      "upstream_idle_connections_max 1000) + admin.connections_max 64 need";
  EXPECT_TRUE(server.wait_for_error_output(warning, Millis(2000))) << server.error_output();
  EXPECT_NE(server.error_output().find(": 1 API (generation 2)"), std::string::npos)
      << server.error_output();
  // Back to one server: it fits again, nothing more is said.
  reload_with(1, 3);
  std::this_thread::sleep_for(Millis(200));
  EXPECT_EQ(count_of(server.error_output(), "keygate: warning: the descriptor limit"), 1u)
      << server.error_output();
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

TEST_F(ReloadTest, AnInvalidFileIsRefusedWithItsLineAndTheOldApisKeepServing) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@")));
  const std::string path =
      rewrite(api("orders", "/orders", "@A@") + "[[apis]]\nname = \"billing\"\nroutes = [\n");
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->wait_for_error_output("keygate: reload refused: " + path + ":",
                                             Millis(10000)))
      << server_->error_output();
  // A file that parses but breaks a rule (the same route in two APIs) is refused too.
  rewrite(api("orders", "/orders", "@A@") + api("billing", "/orders", "@A@"));
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->wait_for_error_output(
      "\"/orders\" is already used by api \"orders\"", Millis(10000)))
      << server_->error_output();
  EXPECT_EQ(stat("reloads_refused_total"), 2) << server_->error_output();
  EXPECT_EQ(count_of(server_->error_output(), "keygate: reload refused: " + path), 2u)
      << server_->error_output();
  EXPECT_EQ(stat("generation"), 1);
  EXPECT_EQ(stat("reloads_total"), 0);
  EXPECT_EQ(get("/orders/1")->status, 200);
  EXPECT_EQ(server_->error_output().find("keygate: reloaded"), std::string::npos);
}

TEST_F(ReloadTest, RestartOnlySettingsThatChangedAreNamedAndNotAppliedTheRestApplies) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@"), {"orders"}, 1));
  replace_config("[limits]\nidle_timeout_ms = 1234\nconnections_per_worker_max = 1\n\n"
                 "[log]\ncapture_bytes_max = 100\nring_bytes_per_worker = 131072\n\n" +
                 fill(api("orders", "/orders", "@A@") + api("checks", "/checks")));
  ASSERT_TRUE(reload(2));
  const std::string& err = server_->error_output();
  EXPECT_NE(err.find("keygate: reload: limits.connections_per_worker_max changed: takes effect "
                     "at restart"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("keygate: reload: log.ring_bytes_per_worker changed: takes effect at "
                     "restart"),
            std::string::npos)
      << err;
  // The command-line flags still win: --listen, --workers, --data-dir are not changes; the
  // live ones are applied, said on the reload line.
  EXPECT_EQ(count_of(err, "changed: takes effect at restart"), 2u) << err;
  EXPECT_NE(err.find(": 2 APIs (generation 2); applied: limits.idle_timeout_ms, "
                     "log.capture_bytes_max\n"),
            std::string::npos)
      << err;
  ASSERT_EQ(create_key(kNewKey, {"checks"}), 201);
  EXPECT_EQ(get("/checks", kNewKey)->status, 200);
  // connections_per_worker_max = 1 is not applied: the one worker still takes a second
  // connection while the first stays open.
  RawClient first;
  RawClient second;
  ASSERT_TRUE(first.connect(server_->data_port()));
  ASSERT_TRUE(second.connect(server_->data_port()));
  const std::string request = http_request("GET", "/checks", {"X-ApiKey: " + std::string(kNewKey)});
  for (RawClient* c : {&first, &second}) {
    ASSERT_TRUE(c->send(request));
    const auto r = c->read_response();
    ASSERT_TRUE(r.has_value()) << to_string(c->last_end());
    EXPECT_EQ(r->status, 200) << r->raw;
  }
}

// [limits] body_bytes_max lowered by a reload: a body allowed before gets 413, on a new
// connection and on one kept open across the reload; raised again: allowed again.
TEST_F(ReloadTest, ABodyLimitChangedByAReloadAppliesToTheNextRequests) {
  ASSERT_NO_FATAL_FAILURE(start(api("checks", "/checks"), {"checks"}));
  const std::string body(2000, 'x');
  RawClient kept;
  ASSERT_TRUE(kept.connect(server_->data_port()));
  ASSERT_TRUE(kept.send(post_request("/checks", body)));
  auto r = kept.read_response();
  ASSERT_TRUE(r.has_value()) << to_string(kept.last_end());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_EQ(post("/checks", body)->status, 200);

  rewrite("body_bytes_max = 1000\n\n" + api("checks", "/checks"));
  ASSERT_TRUE(reload(2));
  EXPECT_NE(server_->error_output().find("(generation 2); applied: limits.body_bytes_max\n"),
            std::string::npos)
      << server_->error_output();
  r = post("/checks", body);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 413) << r->raw;
  EXPECT_EQ(string_member(r->body, "error"), "body_too_large") << r->body;
  ASSERT_TRUE(kept.send(post_request("/checks", body)));
  r = kept.read_response();
  ASSERT_TRUE(r.has_value()) << to_string(kept.last_end());
  EXPECT_EQ(r->status, 413) << r->raw;
  EXPECT_EQ(post("/checks", std::string(900, 'x'))->status, 200);

  rewrite("body_bytes_max = 4000\n\n" + api("checks", "/checks"));
  ASSERT_TRUE(reload(3));
  EXPECT_EQ(post("/checks", std::string(3000, 'x'))->status, 200);
  EXPECT_EQ(post("/checks", std::string(5000, 'x'))->status, 413);
}

// Shortened timeouts: a keep-alive connection idle since before the reload is closed within
// the new idle_timeout_ms (not the old 60 s), and a new connection that sends nothing within
// the new header_timeout_ms (not the old 10 s).
TEST_F(ReloadTest, ShorterTimeoutsFromAReloadCloseConnectionsAfterTheNewTime) {
  ASSERT_NO_FATAL_FAILURE(start(api("checks", "/checks"), {"checks"}));
  RawClient idle;
  ASSERT_TRUE(idle.connect(server_->data_port()));
  ASSERT_TRUE(idle.send(http_request("GET", "/checks", {"X-ApiKey: " + std::string(kKey)})));
  const auto r = idle.read_response();
  ASSERT_TRUE(r.has_value()) << to_string(idle.last_end());
  ASSERT_EQ(r->status, 200) << r->raw;

  rewrite("idle_timeout_ms = 300\nheader_timeout_ms = 300\n\n" + api("checks", "/checks"));
  ASSERT_TRUE(reload(2));
  const auto reloaded = std::chrono::steady_clock::now();
  idle.read_until_close(Millis(5000));
  EXPECT_EQ(idle.last_end(), ReadEnd::kEof) << to_string(idle.last_end());
  EXPECT_LT(std::chrono::steady_clock::now() - reloaded, Millis(3000));

  RawClient silent;
  ASSERT_TRUE(silent.connect(server_->data_port()));
  const auto connected = std::chrono::steady_clock::now();
  silent.read_until_close(Millis(5000));
  EXPECT_EQ(silent.last_end(), ReadEnd::kEof) << to_string(silent.last_end());
  const auto took = std::chrono::steady_clock::now() - connected;
  EXPECT_GE(took, Millis(250));
  EXPECT_LT(took, Millis(3000));
}

// [log] capture_bytes_max changed by a reload: a captured body is cut at the new cap.
// Lower upstream_idle_connections_max / upstream_idle_timeout_ms from a reload apply to the
// connections already pooled, not only to those pooled after it: beyond the new cap they close
// with the reload, and the others by the new timeout (the default 30 s would keep them here).
TEST_F(ReloadTest, LowerUpstreamIdleLimitsFromAReloadApplyToTheConnectionsAlreadyPooled) {
  const std::string billing = api("billing", "/billing", "@B@");
  ASSERT_NO_FATAL_FAILURE(start(billing, {"billing"}, 1));  // one worker: one pool
  auto r = get("/billing/1");
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->status, 200) << r->raw;
  ASSERT_EQ(wait_established(upstream_b_.address, 1), 1);  // pooled

  rewrite("upstream_idle_connections_max = 0\n\n" + billing);
  ASSERT_TRUE(reload(2));
  EXPECT_EQ(wait_established(upstream_b_.address, 0), 0) << "the pool kept its connection";

  rewrite(billing);  // the defaults again: pooled for 30 s
  ASSERT_TRUE(reload(3));
  r = get("/billing/2");
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->status, 200) << r->raw;
  ASSERT_EQ(wait_established(upstream_b_.address, 1), 1);
  rewrite("upstream_idle_timeout_ms = 300\n\n" + billing);
  ASSERT_TRUE(reload(4));
  EXPECT_EQ(wait_established(upstream_b_.address, 0), 0)
      << "the pooled connection outlived the new idle timeout";
  // Pooling goes on under the new limits.
  r = get("/billing/3");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->raw;
}

// A minimum send rate a reload sets (or raises) gives the connections already open the same
// slack as new ones: idle_timeout_ms of waiting behind the new minimum. A client on a
// keep-alive connection from before the reload that pauses 1 s (of the 3 s slack) while a
// large response waits, then reads at full speed, gets the whole response. (A connection
// accepted with no minimum holds no credit at all: judged by its first wait alone, it would be
// cut as send_too_slow.)
TEST_F(ReloadTest, AMinimumSendRateSetByAReloadGivesOpenConnectionsTheirSlack) {
  const std::string limits = "send_buffer_bytes = 16384\nidle_timeout_ms = 3000\n";
  const std::string bulk = api("bulk", "/bytes", "@A@");
  ASSERT_NO_FATAL_FAILURE(
      start(limits + "send_rate_min_bytes_per_s = 0\n\n" + bulk, {"bulk"}, 1));
  const std::string key_header = "X-ApiKey: " + std::string(kKey);
  // Reads one response with a Content-Length body from `fd`: its body size, or -1.
  std::string pending;
  const auto read_response = [&](int fd) -> int64_t {
    std::vector<char> buf(65536);
    size_t head_end;
    while ((head_end = pending.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n <= 0) return -1;
      pending.append(buf.data(), static_cast<size_t>(n));
    }
    const size_t at = pending.find("Content-Length: ");
    if (at == std::string::npos || at > head_end) return -1;
    const size_t length = std::strtoull(pending.c_str() + at + 16, nullptr, 10);
    const size_t total = head_end + 4 + length;
    while (pending.size() < total) {
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n <= 0) return -1;
      pending.append(buf.data(), static_cast<size_t>(n));
    }
    pending.erase(0, total);
    return static_cast<int64_t>(length);
  };
  const int fd = connect_with_receive_buffer(server_->data_port(), 4096,
                                             http_request("GET", "/bytes/100", {key_header}));
  ASSERT_GE(fd, 0) << std::strerror(errno);
  timeval timeout{10, 0};
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)), 0);
  ASSERT_EQ(read_response(fd), 100);

  rewrite(limits + "send_rate_min_bytes_per_s = 131072\n\n" + bulk);
  ASSERT_TRUE(reload(2));
  constexpr int64_t kBytes = 1 << 20;
  const std::string request = http_request("GET", "/bytes/" + std::to_string(kBytes), {key_header});
  ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::this_thread::sleep_for(Millis(1000));  // a pause well within the 3 s slack
  EXPECT_EQ(read_response(fd), kBytes) << "cut: " << std::strerror(errno) << "\n"
                                       << server_->error_output();
  ::close(fd);
  EXPECT_EQ(stats_counter(round_trip(server_->admin_port(),
                                     http_request("GET", "/admin/stats",
                                                  {"X-ApiKey: " + std::string(kAdminKey)}))
                              ->body,
                          "workers", "send_too_slow"),
            0);
}

TEST_F(ReloadTest, ACaptureCapChangedByAReloadCutsCapturedBodiesAtTheNewCap) {
  ASSERT_NO_FATAL_FAILURE(start(api("checks", "/checks"), {"checks"}));
  ASSERT_EQ(create_key(kNewKey, {"checks"}, true), 201);
  const std::string before = "before" + std::string(494, 'b');
  EXPECT_EQ(post("/checks", before, kNewKey)->status, 200);
  // Captured whole (the default cap is 64 KiB).
  EXPECT_TRUE(log_holds("\"" + before + "\"")) << log_text();

  replace_config("[log]\ncapture_bytes_max = 100\n\n" + fill(api("checks", "/checks")));
  ASSERT_TRUE(reload(2));
  const std::string after = "after" + std::string(495, 'a');
  EXPECT_EQ(post("/checks", after, kNewKey)->status, 200);
  EXPECT_TRUE(log_holds("\"" + after.substr(0, 100) + "\"")) << log_text();
  EXPECT_EQ(log_text().find(after.substr(0, 101)), std::string::npos);
}

// [log] retention_bytes lowered by a reload: the oldest segments beyond it are deleted at once,
// not at the next rotation.
TEST_F(ReloadTest, ALowerLogRetentionFromAReloadDeletesTheOldestSegments) {
  const std::string small_segments = "[log]\nsegment_bytes_max = 65536\n\n";
  ASSERT_NO_FATAL_FAILURE(start(small_segments + api("checks", "/checks"), {"checks"}));
  ASSERT_EQ(create_key(kNewKey, {"checks"}, true), 201);
  // About 30 KB per record (its captured body): two a segment.
  const std::string body(30000, 'r');
  for (int i = 0; i < 12; ++i) ASSERT_EQ(post("/checks", body, kNewKey)->status, 200);
  size_t before = 0;
  for (int i = 0; i < 500 && (before = segments().size()) < 5; ++i) {
    std::this_thread::sleep_for(Millis(10));
  }
  ASSERT_GE(before, 5u);

  replace_config("[log]\nsegment_bytes_max = 65536\nretention_bytes = 65536\n\n" +
                 fill(api("checks", "/checks")));
  ASSERT_TRUE(reload(2));
  size_t after = segments().size();
  for (int i = 0; i < 300 && after > 2; ++i) {
    std::this_thread::sleep_for(Millis(10));
    after = segments().size();
  }
  EXPECT_LE(after, 2u) << "segments before the reload: " << before;
  EXPECT_GE(after, 1u);
}

// A value the config refuses (as at start) refuses the whole reload: the limits keygate had
// stay, the body limit among them.
TEST_F(ReloadTest, AnInvalidValueRefusesTheReloadAndTheOldLimitsStay) {
  ASSERT_NO_FATAL_FAILURE(start(api("checks", "/checks"), {"checks"}));
  const std::string body(2000, 'x');
  const std::string path =
      rewrite("body_bytes_max = 1000\nheader_count_max = 0\n\n" + api("checks", "/checks"));
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->wait_for_error_output("keygate: reload refused: " + path, Millis(10000)))
      << server_->error_output();
  EXPECT_NE(server_->error_output().find("header_count_max"), std::string::npos)
      << server_->error_output();
  EXPECT_EQ(stat("generation"), 1);
  EXPECT_EQ(post("/checks", body)->status, 200);
}

TEST_F(ReloadTest, ARequestInFlightAcrossTheReloadFinishesOnTheOldVersion) {
  ASSERT_NO_FATAL_FAILURE(
      start(api("orders", "/orders", "@A@") + api("slow", "/delay", "@A@"), {"orders", "slow"}, 1));
  RawClient slow;
  ASSERT_TRUE(slow.connect(server_->data_port()));
  ASSERT_TRUE(slow.send(http_request("GET", "/delay/1500", {"X-ApiKey: " + std::string(kKey)})));
  // Forwarded (keygate's connection to A is up) and waiting for the upstream.
  ASSERT_EQ(wait_established(upstream_a_.address, 1), 1);
  // The API it goes to is removed, and its route with it.
  rewrite(api("orders", "/orders", "@B@"));
  ASSERT_TRUE(reload(2));
  EXPECT_EQ(get("/delay/1")->status, 404);
  const auto r = slow.read_response(Millis(5000));
  ASSERT_TRUE(r.has_value()) << to_string(slow.last_end());
  EXPECT_EQ(r->status, 200) << r->raw;
  EXPECT_NE(r->body.find("\"listen\":\"" + upstream_a_.address + "\""), std::string::npos)
      << r->body;
  // Its upstream connection, of the old version, is closed after the response, not pooled.
  EXPECT_EQ(wait_established(upstream_a_.address, 0), 0);
  // The connection stays usable, and its next request goes by the new APIs.
  ASSERT_TRUE(slow.send(http_request("GET", "/delay/1", {"X-ApiKey: " + std::string(kKey)})));
  const auto next = slow.read_response();
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->status, 404) << next->raw;
}

TEST_F(ReloadTest, SighupsDuringAReloadAreNotLostTheLastFileWins) {
  ASSERT_NO_FATAL_FAILURE(start(api("orders", "/orders", "@A@")));
  rewrite(api("orders", "/orders", "@A@") + api("v2", "/v2"));
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  rewrite(api("orders", "/orders", "@A@") + api("v3", "/v3"));
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  // One reload or more (SIGHUPs that arrive during one are one more); the last one read the
  // last file (the first may have too). v2 may serve for a moment, never last.
  ASSERT_TRUE(server_->wait_for_error_output("(generation 2)", Millis(10000)));
  int status = 0;
  for (int i = 0; i < 500 && (status = create_key(kNewKey, {"v3"})) != 201; ++i) {
    std::this_thread::sleep_for(Millis(10));
  }
  ASSERT_EQ(status, 201) << server_->error_output();
  EXPECT_EQ(get("/v3", kNewKey)->status, 200);
  EXPECT_EQ(get("/v2", kNewKey)->status, 404);
}

TEST_F(ReloadTest, WithoutAConfigFileASighupIsRefusedWithALine) {
  ServerOptions options = admin_server_options(std::string(kAdminKey));
  options.config_flag = false;
  server_ = std::make_unique<TestServer>(options);
  std::string error;
  ASSERT_TRUE(server_->start(&error)) << error;
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->wait_for_error_output(
      "keygate: reload refused: keygate was started without --config", Millis(10000)))
      << server_->error_output();
  EXPECT_EQ(stat("reloads_refused_total"), 1);
  const auto r = round_trip(server_->data_port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
}

TEST_F(ReloadTest, AConfigReadFromAPipeIsNotReadAgain) {
  // A pipe read to its end at start would read as an empty, valid config: every API gone.
  TempDir fifo_dir;
  const std::string fifo = fifo_dir.path() + "/config";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::thread writer([&] {
    std::ofstream out(fifo);  // blocks until keygate opens it
    out << "[[apis]]\nname = \"checks\"\nroutes = [\"/checks\"]\n";
  });
  ServerOptions options = admin_server_options(std::string(kAdminKey));
  options.config_path = fifo;
  server_ = std::make_unique<TestServer>(options);
  std::string error;
  const bool started = server_->start(&error);
  writer.join();
  ASSERT_TRUE(started) << error;
  ASSERT_EQ(create_key(kKey, {"checks"}), 201);
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->wait_for_error_output(
      "keygate: reload refused: " + fifo + " is a pipe, which cannot be read again",
      Millis(10000)))
      << server_->error_output();
  EXPECT_EQ(get("/checks")->status, 200);
}

TEST_F(ReloadTest, ASighupWhileDrainingIsIgnoredWithALine) {
  ASSERT_NO_FATAL_FAILURE(start(api("slow", "/delay", "@A@"), {"slow"}, 1));
  RawClient slow;
  ASSERT_TRUE(slow.connect(server_->data_port()));
  ASSERT_TRUE(slow.send(http_request("GET", "/delay/1500", {"X-ApiKey: " + std::string(kKey)})));
  ASSERT_EQ(wait_established(upstream_a_.address, 1), 1);  // forwarded: the drain waits for it
  ASSERT_TRUE(server_->send_signal(SIGTERM));
  ASSERT_TRUE(server_->wait_for_output("draining", Millis(5000)));
  rewrite(api("slow", "/delay", "@A@") + api("checks", "/checks"));
  ASSERT_TRUE(server_->send_signal(SIGHUP));
  ASSERT_TRUE(server_->wait_for_error_output(
      "keygate: SIGHUP ignored: keygate is draining, nothing to reload", Millis(5000)))
      << server_->error_output();
  // The request in flight still completes, and keygate then stops cleanly.
  const auto r = slow.read_response(Millis(5000));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  const ExitStatus status = server_->wait_exit(Millis(10000));
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_EQ(server_->error_output().find("keygate: reloaded"), std::string::npos);
}

}  // namespace
}  // namespace keygate::integration
