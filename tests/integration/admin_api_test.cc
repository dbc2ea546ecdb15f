// Integration tests of the admin API: the real keygate binary on ephemeral loopback ports,
// started on an empty data directory with a bootstrap admin key (KEYGATE_BOOTSTRAP_ADMIN_KEY),
// driven over real HTTP on its admin port, with the effect of every change checked on its data
// port (auth-check mode, two data APIs).
//
// Every server runs two workers, and checks that must hold "on every worker" use several fresh
// connections (SO_REUSEPORT spreads them over both workers' sockets). Every server is stopped
// with SIGTERM at the end and must exit 0 after "keygate: stopped", so a crash or a sanitizer
// report fails the test.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tests/integration/running_server.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";
// Fresh connections a check makes when it must hold on both workers: the chance that all of
// them land on the same one of two workers is 2^-7.
constexpr int kConnectionsPerCheck = 8;

// An admin error: this status, JSON {"error":code,"field":...,"message":...}; a 401 also carries
// the ApiKey challenge, a 405 an Allow header.
::testing::AssertionResult admin_error(const std::optional<Response>& r, int status,
                                       std::string_view code) {
  if (!r || r->status != status) {
    return ::testing::AssertionFailure() << "want " << status << " " << code << "; " << show(r);
  }
  const std::optional<std::string> type = r->header("Content-Type");
  if (!type || type->rfind("application/json", 0) != 0 ||
      r->body.rfind("{\"error\":\"" + std::string(code) + "\",\"field\":", 0) != 0 ||
      r->body.find(",\"message\":\"") == std::string::npos) {
    return ::testing::AssertionFailure()
           << "want an admin error body with " << code << "; " << show(r);
  }
  if (status == 401 && r->header("WWW-Authenticate") != std::string(kChallenge)) {
    return ::testing::AssertionFailure() << "want the ApiKey challenge; " << show(r);
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult status_is(const std::optional<Response>& r, int status) {
  if (r && r->status == status) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "want " << status << "; " << show(r);
}

struct CreatedKey {
  std::string id;
  std::string value;
};

class AdminApi : public RunningServer {
 protected:
  ServerOptions server_options() override {
    return admin_server_options(admin_value_);
  }

  // One admin request with the bootstrap admin key in X-ApiKey; a body goes as JSON.
  std::optional<Response> admin(std::string_view method, std::string_view target,
                                std::string_view body = {}) {
    std::vector<std::string> headers = {"X-ApiKey: " + admin_value_};
    if (!body.empty()) headers.push_back("Content-Type: application/json");
    return round_trip(server_->admin_port(), http_request(method, target, headers, body));
  }
  std::optional<Response> admin_raw(const std::string& bytes) {
    return round_trip(server_->admin_port(), bytes);
  }
  // One data-port GET with `key` in X-ApiKey, on a fresh connection.
  std::optional<Response> data(std::string_view target, std::string_view key,
                               std::string_view method = "GET") {
    return round_trip(server_->data_port(),
                      http_request(method, target, {"X-ApiKey: " + std::string(key)}));
  }
  // The same data-port request on kConnectionsPerCheck fresh connections: all must answer
  // `status`.
  ::testing::AssertionResult data_everywhere(std::string_view target, std::string_view key,
                                             int status) {
    for (int i = 0; i < kConnectionsPerCheck; ++i) {
      const std::optional<Response> r = data(target, key);
      if (!r || r->status != status) {
        return ::testing::AssertionFailure()
               << "connection " << i << ": want " << status << "; " << show(r);
      }
    }
    return ::testing::AssertionSuccess();
  }

  // POST /admin/keys with `body`; the new key's id and plaintext value.
  CreatedKey create_key(std::string_view body) {
    const std::optional<Response> r = admin("POST", "/admin/keys", body);
    EXPECT_TRUE(status_is(r, 201));
    if (!r) return {};
    CreatedKey k{string_member(r->body, "id"), string_member(r->body, "key")};
    EXPECT_FALSE(k.id.empty()) << r->body;
    EXPECT_FALSE(k.value.empty()) << r->body;
    return k;
  }

  // StatsCountAnswersByPortStatusAndReason, with the access log on or off.
  void expect_answers_counted();

  const std::string admin_value_ = "it-admin-" + random_hex(24);
};

// --- Authentication of the admin port ---------------------------------------------------------

TEST_F(AdminApi, AdminPortAnswersHealthzWithoutAKeyAnd404OutsideTheAdminRoutes) {
  std::optional<Response> r = round_trip(server_->admin_port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(r->body, "ok");
  // Unknown paths are 404 before any key work: with no key, and with a valid one.
  for (const char* path : {"/", "/orders/1", "/admin", "/admin/nothing", "/admin/keys/a/b/c"}) {
    EXPECT_TRUE(
        admin_error(round_trip(server_->admin_port(), http_request("GET", path)), 404, "not_found"))
        << path;
    EXPECT_TRUE(admin_error(admin("GET", path), 404, "not_found")) << path;
  }
}

// A page the operator's browser opens can point a name of its own at 127.0.0.1 (DNS rebinding)
// and call the admin port as its origin: such requests carry that name as their Host, and are
// refused before any key work or console file. IP literals, localhost and the names in [admin]
// hosts (the harness lists "it", "a", ...) are served; /healthz answers whatever the Host.
TEST_F(AdminApi, AHostThatIsNoAddressOrListedNameIs421BeforeAnyKeyWork) {
  const std::string port = std::to_string(server_->admin_port());
  const auto with_host = [&](std::string_view target, const std::string& host) {
    return admin_raw("GET " + std::string(target) + " HTTP/1.1\r\nHost: " + host +
                     "\r\nX-ApiKey: " + admin_value_ + "\r\n\r\n");
  };
  for (const std::string& host : std::vector<std::string>{
           "evil.example", "evil.example:" + port, "localhost.evil.example", "127.0.0.1.nip.io"}) {
    for (const char* target : {"/admin/stats", "/console", "/admin/keys?key=x"}) {
      const std::optional<Response> r = with_host(target, host);
      EXPECT_TRUE(admin_error(r, 421, "host_not_allowed")) << host << " " << target;
      if (r) {
        EXPECT_EQ(r->header("X-Content-Type-Options"), "nosniff") << r->raw;
      }
    }
    EXPECT_TRUE(status_is(with_host("/healthz", host), 200)) << host;
    // The data port has no such rule: it serves any host.
    EXPECT_TRUE(status_is(round_trip(server_->data_port(), "GET /healthz HTTP/1.1\r\nHost: " +
                                                               host + "\r\n\r\n"),
                          200))
        << host;
  }
  for (const std::string& host :
       std::vector<std::string>{"127.0.0.1:" + port, "[::1]:" + port, "localhost:" + port,
                                "LOCALHOST", "it", "it:" + port}) {
    EXPECT_TRUE(status_is(with_host("/admin/stats", host), 200)) << host;
  }
}

TEST_F(AdminApi, NoKeyOrAWrongKeyIs401) {
  EXPECT_TRUE(admin_error(admin_raw(http_request("GET", "/admin/apis")), 401, "missing_api_key"));
  EXPECT_TRUE(admin_error(admin_raw(http_request("GET", "/admin/apis", {"X-ApiKey: it-not-a-key"})),
                          401, "invalid_api_key"));
  EXPECT_TRUE(admin_error(
      admin_raw(http_request("GET", "/admin/apis",
                             {"X-ApiKey: " + admin_value_, "X-ApiKey: it-another-value"})),
      401, "ambiguous_api_key"));
}

TEST_F(AdminApi, ADataOnlyKeyIs403AndCannotChangeAnything) {
  const CreatedKey data_key = create_key(R"({"apis":["orders","billing"]})");
  const std::string with_data_key = "X-ApiKey: " + data_key.value;
  EXPECT_TRUE(admin_error(admin_raw(http_request("GET", "/admin/keys", {with_data_key})), 403,
                          "api_not_permitted"));
  EXPECT_TRUE(
      admin_error(admin_raw(http_request("DELETE", "/admin/keys/" + data_key.id, {with_data_key})),
                  403, "api_not_permitted"));
  // Still there, still working on the data port.
  EXPECT_TRUE(status_is(admin("GET", "/admin/keys/" + data_key.id), 200));
  EXPECT_TRUE(status_is(data("/orders/1", data_key.value), 200));
}

TEST_F(AdminApi, TheAdminKeyWorksInEachOfTheFourWays) {
  const std::vector<std::string> requests = {
      http_request("GET", "/admin/apis", {"X-ApiKey: " + admin_value_}),
      http_request("GET", "/admin/apis?key=" + admin_value_),
      http_request("GET", "/admin/apis", {"Content-Type: application/x-www-form-urlencoded"},
                   "key=" + admin_value_),
      http_request("GET", "/admin/apis", {"Content-Type: application/json"},
                   "{\"API_Key\":\"" + admin_value_ + "\"}"),
  };
  for (const std::string& bytes : requests) {
    const std::optional<Response> r = admin_raw(bytes);
    ASSERT_TRUE(status_is(r, 200)) << bytes;
    EXPECT_EQ(r->header("Content-Type"), "application/json");
    EXPECT_NE(r->body.find("\"name\":\"orders\""), std::string::npos) << r->body;
    EXPECT_EQ(r->body.find(admin_value_), std::string::npos) << r->body;
  }
}

// Routes that read a query or a JSON body of their own skip the carrier (`key`, root `API_Key`)
// instead of refusing it as an unknown field: the four ways work on every route.
TEST_F(AdminApi, RoutesWithAQueryOrABodyAcceptTheAdminKeyInThem) {
  std::optional<Response> r =
      admin_raw(http_request("GET", "/admin/keys?limit=1&key=" + admin_value_));
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(count_of(r->body, "\"id\":"), 1u) << r->body;
  r = admin_raw(http_request("GET", "/admin/logs?k%65y=" + admin_value_ + "&limit=1"));
  EXPECT_TRUE(status_is(r, 200));
  r = admin_raw(http_request("POST", "/admin/users", {"Content-Type: application/json"},
                             "{\"API_Key\":\"" + admin_value_ + "\",\"name\":\"in-body\"}"));
  EXPECT_TRUE(status_is(r, 201));
  r = admin_raw(http_request("POST", "/admin/keys", {"Content-Type: application/json"},
                             "{\"apis\":[\"orders\"],\"API\\u005fKey\":\"" + admin_value_ + "\"}"));
  ASSERT_TRUE(status_is(r, 201));
  const std::string created = string_member(r->body, "key");
  ASSERT_FALSE(created.empty()) << r->body;
  EXPECT_NE(created, admin_value_);
  EXPECT_TRUE(status_is(data("/orders/1", created), 200));
  EXPECT_TRUE(status_is(admin("GET", "/admin/users/in-body"), 200));
  // Other unknown names are still refused, and a nested API_Key is no carrier.
  EXPECT_TRUE(admin_error(
      admin_raw(http_request("GET", "/admin/keys?keys=1", {"X-ApiKey: " + admin_value_})), 400,
      "unknown_field"));
  EXPECT_TRUE(admin_error(admin("POST", "/admin/users",
                                R"({"name":"nested","grants":[{"api":"orders","API_Key":"x"}]})"),
                          400, "unknown_field"));
}

// A body is read only for a key that may call the admin API: a refused key (or none, beyond
// what the key extractor searches) is answered at the head, the 64 MiB body never read (and
// never "100 Continue"d), the connection closed.
TEST_F(AdminApi, BodiesAreNotReadForAClientTheAdminApiRefuses) {
  const std::string big_head =
      "POST /admin/keys/import HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 67108864\r\nExpect: 100-continue\r\n";
  for (const std::string& extra : {std::string("X-ApiKey: never-issued-admin-key\r\n"),
                                   std::string("X-ApiKey: ") + "\r\n", std::string()}) {
    RawClient client;
    ASSERT_TRUE(client.connect(server_->admin_port()));
    ASSERT_TRUE(client.send(big_head + extra + "\r\n"));
    const std::optional<Response> r = client.read_response();
    ASSERT_TRUE(r.has_value()) << extra;
    if (extra.size() > 12) {
      EXPECT_TRUE(admin_error(r, 401, "invalid_api_key"));
    } else {
      // No key in the head (an empty one is none): only the body could carry it, and this one
      // is larger than the extractor searches (1 MiB by default). The HTTP layer's 413.
      EXPECT_EQ(r->status, 413) << extra;
      EXPECT_NE(r->body.find("\"body_too_large\""), std::string::npos) << r->body;
    }
    EXPECT_EQ(r->header("Connection"), "close");
    client.read_until_close();
    EXPECT_EQ(client.last_end(), ReadEnd::kEof) << extra;
  }
  // A chunked body without a key in the head is cut at the extractor's limit too.
  RawClient chunked;
  ASSERT_TRUE(chunked.connect(server_->admin_port()));
  ASSERT_TRUE(chunked.send(
      "POST /admin/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\n"));
  const std::string chunk = "100000\r\n" + std::string(0x100000, ' ') + "\r\n";
  chunked.send(chunk);
  chunked.send(chunk);
  const std::optional<Response> r = chunked.read_response();
  EXPECT_TRUE(r && r->status == 413) << show(r);
  // An admitted key still posts bodies (the header key, and the key in the JSON body).
  EXPECT_TRUE(status_is(admin("POST", "/admin/users", R"({"name":"after-the-head"})"), 201));
}

// Answers with a plaintext key (create, rotate), records and log lines are never cached.
TEST_F(AdminApi, AdminAnswersAreNotCacheable) {
  std::optional<Response> r = admin("POST", "/admin/keys", R"({"apis":["orders"]})");
  ASSERT_TRUE(status_is(r, 201));
  EXPECT_EQ(r->header("Cache-Control"), "no-store");
  const std::string id = string_member(r->body, "id");
  r = admin("POST", "/admin/keys/" + id + "/rotate");
  ASSERT_TRUE(status_is(r, 201));
  EXPECT_EQ(r->header("Cache-Control"), "no-store");
  r = admin("GET", "/admin/keys");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(r->header("Cache-Control"), "no-store");
}

TEST_F(AdminApi, ABootstrapKeyMadeFromTheEnvironmentIsListedWithoutItsValue) {
  EXPECT_NE(server_->error_output().find("from KEYGATE_BOOTSTRAP_ADMIN_KEY"), std::string::npos)
      << server_->error_output();
  const std::optional<Response> r = admin("GET", "/admin/keys");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(count_of(r->body, "\"id\":"), 1u) << r->body;
  EXPECT_NE(r->body.find("\"apis\":[\"admin\"]"), std::string::npos) << r->body;
  EXPECT_EQ(r->body.find(admin_value_), std::string::npos) << r->body;
  // An admin key is not a data key.
  EXPECT_TRUE(status_is(data("/orders/1", admin_value_), 403));
}

// An operator who took "admin" from the only admin key (or deleted, disabled or expired it)
// can no longer administer the instance; the next start creates an admin key again, as on the
// first start.
TEST(AdminLockout, ARestartCreatesAnAdminKeyWhenNoneIsUsable) {
  TempDir dir;
  ServerOptions options = admin_server_options("lockout-first-" + random_hex(16));
  const std::string first_value = options.env.back().second;
  options.data_dir = dir.path() + "/data";
  auto first = std::make_unique<TestServer>(options);
  std::string error;
  ASSERT_TRUE(first->start(&error)) << error;
  const auto as = [&](const TestServer& s, const std::string& value, std::string_view method,
                      std::string_view target, std::string_view body = {}) {
    std::vector<std::string> headers = {"X-ApiKey: " + value};
    if (!body.empty()) headers.push_back("Content-Type: application/json");
    return round_trip(s.admin_port(), http_request(method, target, headers, body));
  };
  std::optional<Response> r = as(*first, first_value, "GET", "/admin/keys");
  ASSERT_TRUE(status_is(r, 200));
  const std::string id = string_member(r->body, "id");
  ASSERT_TRUE(status_is(as(*first, first_value, "PATCH", "/admin/keys/" + id,
                           R"({"apis":["orders"]})"),
                        200));
  ASSERT_TRUE(status_is(as(*first, first_value, "GET", "/admin/keys"), 403));
  ASSERT_TRUE(first->stop(SIGTERM).clean());
  first.reset();

  // KEYGATE_BOOTSTRAP_ADMIN_KEY still set (to the stripped key's value, as a quickstart's
  // environment would be): the recovery generates a new value and prints it once.
  ServerOptions again = options;
  TestServer second(again);
  ASSERT_TRUE(second.start(&error)) << error;
  ASSERT_TRUE(second.wait_for_error_output("keygate: admin key: ", Millis(5000)))
      << second.error_output();
  EXPECT_NE(second.error_output().find("no usable admin key"), std::string::npos)
      << second.error_output();
  const std::string printed = "keygate: admin key: ";
  const size_t at = second.error_output().find(printed) + printed.size();
  const std::string second_value =
      second.error_output().substr(at, second.error_output().find('\n', at) - at);
  EXPECT_EQ(second_value.rfind("kg_", 0), 0u) << second_value;
  r = as(second, second_value, "GET", "/admin/keys");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(count_of(r->body, "\"id\":"), 2u) << r->body;
  // The stripped key stays what the operator made it.
  EXPECT_TRUE(status_is(as(second, first_value, "GET", "/admin/keys"), 403));
  ASSERT_TRUE(second.stop(SIGTERM).clean());
}

// --- Every route --------------------------------------------------------------------------------

TEST_F(AdminApi, KeyRoutesCreateListGetPatchRotateDelete) {
  const CreatedKey k = create_key(R"({"apis":["orders"],"description":"first"})");
  EXPECT_TRUE(status_is(data("/orders/1", k.value), 200));

  std::optional<Response> r = admin("GET", "/admin/keys");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_NE(r->body.find("\"id\":\"" + k.id + "\""), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("\"next_cursor\":null"), std::string::npos) << r->body;
  EXPECT_EQ(r->body.find(k.value), std::string::npos) << "a listing shows a plaintext";
  r = admin("GET", "/admin/keys?limit=1");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(count_of(r->body, "\"id\":"), 1u) << r->body;
  const std::string cursor = string_member(r->body, "next_cursor");
  ASSERT_FALSE(cursor.empty()) << r->body;
  r = admin("GET", "/admin/keys?limit=1&cursor=" + cursor);
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(count_of(r->body, "\"id\":"), 1u) << r->body;
  r = admin("GET", "/admin/keys?api=orders");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(count_of(r->body, "\"id\":"), 1u) << r->body;

  r = admin("GET", "/admin/keys/" + k.id);
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(string_member(r->body, "description"), "first");
  EXPECT_EQ(r->body.find("\"key\":"), std::string::npos) << r->body;

  r = admin("PATCH", "/admin/keys/" + k.id, R"({"description":"second","apis":["billing"]})");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(string_member(r->body, "description"), "second");
  EXPECT_TRUE(status_is(data("/orders/1", k.value), 403));
  EXPECT_TRUE(status_is(data("/billing/1", k.value), 200));

  r = admin("POST", "/admin/keys/" + k.id + "/rotate");
  ASSERT_TRUE(status_is(r, 201));
  EXPECT_EQ(string_member(r->body, "id"), k.id);
  const std::string rotated = string_member(r->body, "key");
  ASSERT_FALSE(rotated.empty());
  EXPECT_TRUE(status_is(data("/billing/1", rotated), 200));

  r = admin("DELETE", "/admin/keys/" + k.id);
  ASSERT_TRUE(status_is(r, 204));
  EXPECT_EQ(r->body, "");
  EXPECT_FALSE(r->header("Content-Length").has_value());
  EXPECT_TRUE(admin_error(admin("GET", "/admin/keys/" + k.id), 404, "not_found"));
  EXPECT_TRUE(admin_error(admin("DELETE", "/admin/keys/" + k.id), 404, "not_found"));
}

TEST_F(AdminApi, UserRoutesCreateListGetPatchDelete) {
  std::optional<Response> r =
      admin("POST", "/admin/users",
            R"({"name":"kharnagy@domain.corp","grants":[{"api":"orders","methods":["GET"]}]})");
  ASSERT_TRUE(status_is(r, 201));
  EXPECT_EQ(string_member(r->body, "name"), "kharnagy@domain.corp");
  r = admin("GET", "/admin/users");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_NE(r->body.find("\"name\":\"kharnagy@domain.corp\""), std::string::npos) << r->body;
  r = admin("GET", "/admin/users/kharnagy%40domain.corp");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_NE(r->body.find("\"methods\":[\"GET\"]"), std::string::npos) << r->body;
  r = admin("PATCH", "/admin/users/kharnagy%40domain.corp",
            R"({"grants":[{"api":"billing","path_prefix":"/billing/reports"}]})");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_NE(r->body.find("\"path_prefix\":\"/billing/reports\""), std::string::npos) << r->body;
  EXPECT_TRUE(status_is(admin("DELETE", "/admin/users/kharnagy%40domain.corp"), 204));
  EXPECT_TRUE(admin_error(admin("GET", "/admin/users/kharnagy%40domain.corp"), 404, "not_found"));
  EXPECT_TRUE(
      admin_error(admin("DELETE", "/admin/users/kharnagy%40domain.corp"), 404, "not_found"));
}

TEST_F(AdminApi, ApisListsTheConfiguredApis) {
  const std::optional<Response> r = admin("GET", "/admin/apis");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(r->body, R"({"apis":[{"name":"orders","routes":["/orders"]},)"
                     R"({"name":"billing","routes":["/billing"]}]})");
}

TEST_F(AdminApi, StatsCountTheRequestsOfBothPortsAndTheAccessLog) {
  const std::optional<Response> before = admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(before, 200));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(status_is(data("/orders/1", "no-such-key"), 401));
  const std::optional<Response> after = admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(after, 200));
  const std::string& a = after->body;
  EXPECT_GE(stats_counter(a, "workers", "workers"), 1) << a;
  // The three data requests and the first stats request, at least (other tests' traffic
  // cannot reach this server).
  EXPECT_GE(stats_counter(a, "workers", "requests") -
                stats_counter(before->body, "workers", "requests"),
            4)
      << before->body << "\n" << a;
  EXPECT_GE(stats_counter(a, "workers", "connections_accepted"), 5) << a;
  EXPECT_GE(stats_counter(a, "keys", "cached_keys"), 1) << a;  // the bootstrap admin key
  // Every request so far has its access record (the second stats request's own comes later).
  EXPECT_GE(stats_counter(a, "access_log", "enqueued") -
                stats_counter(before->body, "access_log", "enqueued"),
            4)
      << a;
  EXPECT_EQ(stats_counter(a, "access_log", "dropped"), 0) << a;
  EXPECT_EQ(stats_counter(a, "access_log", "enqueued"),
            stats_counter(a, "access_log", "written") + stats_counter(a, "access_log", "queued"))
      << a;
  EXPECT_GE(stats_counter(a, "admin", "executed_total"), 1) << a;
  ASSERT_TRUE(status_is(admin("GET", "/admin/stats/x"), 404));
}

// A request with a body is judged at its head and then read: one request, counted once.
TEST_F(AdminApi, ARequestWithABodyIsCountedOnce) {
  const std::optional<Response> before = admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(before, 200));
  ASSERT_TRUE(status_is(admin("POST", "/admin/users", R"({"name":"counted-once"})"), 201));
  const std::optional<Response> after = admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(after, 200));
  // The POST and the second stats request (only this test talks to this server).
  EXPECT_EQ(stats_counter(after->body, "workers", "requests") -
                stats_counter(before->body, "workers", "requests"),
            2)
      << before->body << "\n" << after->body;
}

// The growth of stats counter group/name between two GET /admin/stats bodies (a counter not
// yet in a group counts as 0: the answer groups list only what was counted).
int64_t stats_growth(std::string_view before, std::string_view after, std::string_view group,
                     std::string_view name) {
  return std::max<int64_t>(stats_counter(after, group, name), 0) -
         std::max<int64_t>(stats_counter(before, group, name), 0);
}

// Answers are counted by port, status and reason code — one count per access record, so the
// same whether or not the access log is on. A request the client abandons mid-body counts as
// 499 client_closed.
void AdminApi::expect_answers_counted() {
  AdminApi& t = *this;
  const std::optional<Response> before = t.admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(before, 200));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(status_is(t.data("/orders/1", "no-such-key"), 401));
  ASSERT_TRUE(status_is(round_trip(server_->data_port(), http_request("GET", "/orders/1", {})), 401));
  ASSERT_TRUE(status_is(t.data("/nowhere", "no-such-key"), 404));
  ASSERT_TRUE(status_is(t.admin("GET", "/admin/keys/no-such-id"), 404));
  {
    std::string request = http_request("POST", "/orders/mid-body", {"X-ApiKey: x"},
                                       std::string(1000, 'b'));
    request.resize(request.size() - 900);
    RawClient c;
    ASSERT_TRUE(c.connect(server_->data_port()));
    ASSERT_TRUE(c.send(request));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    c.close();
  }
  // The abandoned request is counted when its worker sees the connection end.
  std::optional<Response> after;
  for (int attempt = 0; attempt < 60; ++attempt) {
    after = t.admin("GET", "/admin/stats");
    ASSERT_TRUE(status_is(after, 200));
    if (stats_growth(before->body, after->body, "data_reasons", "client_closed") >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string& b = before->body;
  const std::string& a = after->body;
  EXPECT_EQ(stats_growth(b, a, "data_responses", "401"), 4) << b << "\n" << a;
  EXPECT_EQ(stats_growth(b, a, "data_responses", "404"), 1) << a;
  EXPECT_EQ(stats_growth(b, a, "data_responses", "499"), 1) << a;
  EXPECT_EQ(stats_growth(b, a, "data_responses", "200"), 0) << a;
  EXPECT_EQ(stats_growth(b, a, "data_reasons", "invalid_api_key"), 3) << a;
  EXPECT_EQ(stats_growth(b, a, "data_reasons", "missing_api_key"), 1) << a;
  EXPECT_EQ(stats_growth(b, a, "data_reasons", "no_route"), 1) << a;
  EXPECT_EQ(stats_growth(b, a, "data_reasons", "client_closed"), 1) << a;
  // The admin port's own: the 404 and at least the first stats request (200, no reason).
  EXPECT_EQ(stats_growth(b, a, "admin_responses", "404"), 1) << a;
  EXPECT_GE(stats_growth(b, a, "admin_responses", "200"), 1) << a;
  EXPECT_EQ(stats_growth(b, a, "admin_reasons", "not_found"), 1) << a;
  EXPECT_EQ(stats_counter(a, "admin_reasons", "invalid_api_key"), -1) << a;
}

TEST_F(AdminApi, StatsCountAnswersByPortStatusAndReason) {
  expect_answers_counted();
}

class AdminApiLogOff : public AdminApi {
 protected:
  ServerOptions server_options() override {
    ServerOptions options = admin_server_options(admin_value_);
    options.extra_config += "\n[log]\nenabled = false\n";
    return options;
  }
};

TEST_F(AdminApiLogOff, StatsCountAnswersByPortStatusAndReasonWithTheAccessLogOff) {
  const std::optional<Response> stats = admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(stats, 200));
  ASSERT_NE(stats->body.find("\"access_log\":null"), std::string::npos) << stats->body;
  expect_answers_counted();
}

// A line of the Prometheus text format as keygate writes it: "# TYPE keygate_x counter|gauge",
// or "keygate_x 12" / "keygate_x{a="v",b="w"} 12" (label values without '"', '\\', LF).
bool is_exposition_line(std::string_view line) {
  const auto name_end = [](std::string_view s) {
    return s.find_first_not_of("abcdefghijklmnopqrstuvwxyz_");
  };
  if (line.starts_with("# TYPE ")) {
    line.remove_prefix(7);
    if (!line.starts_with("keygate_")) return false;
    const size_t end = name_end(line);
    if (end == std::string_view::npos) return false;
    const std::string_view type = line.substr(end);
    return type == " counter" || type == " gauge";
  }
  if (!line.starts_with("keygate_")) return false;
  size_t at = name_end(line);
  if (at == std::string_view::npos) return false;
  if (line[at] == '{') {
    do {
      ++at;
      const size_t eq = line.find_first_not_of("abcdefghijklmnopqrstuvwxyz", at);
      if (eq == at || eq == std::string_view::npos || line.substr(eq, 2) != "=\"") return false;
      const size_t close = line.find('"', eq + 2);
      if (close == std::string_view::npos) return false;
      if (line.substr(eq + 2, close - eq - 2).find_first_of("\\\n") != std::string_view::npos) {
        return false;
      }
      at = close + 1;
    } while (at < line.size() && line[at] == ',');
    if (at >= line.size() || line[at] != '}') return false;
    ++at;
  }
  const std::string_view value = line.substr(at);
  return value.size() >= 2 && value[0] == ' ' &&
         value.find_first_not_of("0123456789", 1) == std::string_view::npos;
}

// GET /admin/metrics as a Prometheus scraper would fetch it: the key in the query (its
// scrape_config `params`), a text body in the exposition format, the answers counted so far.
TEST_F(AdminApi, MetricsServeTheCountersInPrometheusTextFormat) {
  ASSERT_TRUE(status_is(data("/orders/1", "no-such-key"), 401));
  ASSERT_TRUE(status_is(data("/nowhere", "no-such-key"), 404));
  const std::optional<Response> r = round_trip(
      server_->admin_port(), http_request("GET", "/admin/metrics?key=" + admin_value_, {}));
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(r->header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  size_t lines = 0;
  std::istringstream body(r->body);
  for (std::string line; std::getline(body, line); ++lines) {
    EXPECT_TRUE(is_exposition_line(line)) << line;
  }
  EXPECT_GT(lines, 20u) << r->body;
  EXPECT_NE(r->body.find("\nkeygate_responses_total{port=\"data\",status=\"401\"} 1\n"),
            std::string::npos)
      << r->body;
  EXPECT_NE(r->body.find("\nkeygate_reasons_total{port=\"data\",reason=\"no_route\"} 1\n"),
            std::string::npos)
      << r->body;
  EXPECT_NE(r->body.find("\nkeygate_workers_requests_total "), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("\n# TYPE keygate_keys_cached_keys gauge\n"), std::string::npos)
      << r->body;
  EXPECT_EQ(count_of(r->body, "# TYPE keygate_responses_total "), 1u) << r->body;
  // The key is required, as on every admin route.
  ASSERT_TRUE(admin_error(
      round_trip(server_->admin_port(), http_request("GET", "/admin/metrics", {})), 401,
      "missing_api_key"));
}

// A head that arrives in two pieces and declares a body far over the limit: 413, answered
// before any room is made for the body (keygate reserved the declared length first and died:
// ASan allocation-size-too-big, bad_alloc without it), on both ports, without a key.
TEST_F(AdminApi, AHugeDeclaredBodyAfterASplitHeadIs413NotACrash) {
  for (const uint16_t port : {server_->admin_port(), server_->data_port()}) {
    RawClient c;
    ASSERT_TRUE(c.connect(port));
    ASSERT_TRUE(c.send("POST /admin/keys HTTP/1.1\r\nHost: it\r\n"));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ASSERT_TRUE(c.send("Content-Type: application/json\r\n"
                       "Content-Length: 1000000000000000\r\n\r\n"));
    const std::optional<Response> r = c.read_response();
    ASSERT_TRUE(status_is(r, 413)) << "port " << port;
  }
  ASSERT_TRUE(status_is(admin("GET", "/admin/stats"), 200));
}

// --- Every error code ---------------------------------------------------------------------------

TEST_F(AdminApi, BadBodiesGetEach400Code) {
  struct Case {
    std::string_view body;
    std::string_view code;
  };
  const Case cases[] = {
      {R"({"apis":["orders"])", "invalid_json"},
      {R"([1,2])", "invalid_json"},
      {R"({"apis":["orders"],"colour":"blue"})", "unknown_field"},
      {R"({"apis":"orders"})", "invalid_type"},
      {R"({"apis":[]})", "invalid_value"},
      {R"({"description":"no apis"})", "missing_field"},
      {R"({"apis":["shipping"]})", "unknown_api"},
      {R"({"apis":["orders"],"user":"ghost"})", "unknown_user"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(admin_error(admin("POST", "/admin/keys", c.body), 400, c.code)) << c.body;
  }
  const std::optional<Response> r = admin("POST", "/admin/keys", R"({"apis":"orders"})");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("\"field\":\"apis\""), std::string::npos) << r->body;
  // Nothing was created.
  const std::optional<Response> list = admin("GET", "/admin/keys");
  ASSERT_TRUE(status_is(list, 200));
  EXPECT_EQ(count_of(list->body, "\"id\":"), 1u) << list->body;
}

TEST_F(AdminApi, UnknownIdsAndUsersAre404) {
  EXPECT_TRUE(admin_error(admin("GET", "/admin/keys/kAAAAAAAAAAAA"), 404, "not_found"));
  EXPECT_TRUE(admin_error(admin("PATCH", "/admin/keys/kAAAAAAAAAAAA", R"({"enabled":false})"), 404,
                          "not_found"));
  EXPECT_TRUE(admin_error(admin("POST", "/admin/keys/kAAAAAAAAAAAA/rotate"), 404, "not_found"));
  EXPECT_TRUE(admin_error(admin("GET", "/admin/users/nobody"), 404, "not_found"));
  EXPECT_TRUE(
      admin_error(admin("PATCH", "/admin/users/nobody", R"({"grants":[]})"), 404, "not_found"));
}

TEST_F(AdminApi, AWrongMethodIs405WithAllow) {
  std::optional<Response> r = admin("PUT", "/admin/keys", "{}");
  ASSERT_TRUE(admin_error(r, 405, "method_not_allowed"));
  EXPECT_EQ(r->header("Allow"), "GET, POST");
  r = admin("GET", "/admin/keys/import");
  ASSERT_TRUE(admin_error(r, 405, "method_not_allowed"));
  EXPECT_EQ(r->header("Allow"), "POST");
  r = admin("POST", "/admin/users/alice", "{}");
  ASSERT_TRUE(admin_error(r, 405, "method_not_allowed"));
  EXPECT_EQ(r->header("Allow"), "GET, PATCH, DELETE");
}

TEST_F(AdminApi, ARepeatedValueOrUserNameIs409) {
  const std::string value = "it-operator-" + random_hex(16);
  const std::string body = R"({"apis":["orders"],"key":")" + value + "\"}";
  const CreatedKey first = create_key(body);
  EXPECT_EQ(first.value, value);
  const std::optional<Response> r = admin("POST", "/admin/keys", body);
  ASSERT_TRUE(admin_error(r, 409, "conflict"));
  EXPECT_EQ(r->body.find(value), std::string::npos) << "a rejection echoes the key value";
  ASSERT_TRUE(status_is(admin("POST", "/admin/users", R"({"name":"alice"})"), 201));
  EXPECT_TRUE(admin_error(admin("POST", "/admin/users", R"({"name":"alice"})"), 409, "conflict"));
}

TEST_F(AdminApi, ABodyOverTheSmallRouteLimitIs413) {
  // The key is in the header, so the body is not searched for one: the admin API's own limit
  // (64 KiB on every route but import) answers.
  const std::string body =
      R"({"apis":["orders"],"description":")" + std::string(70 * 1024, 'd') + "\"}";
  EXPECT_TRUE(admin_error(admin("POST", "/admin/keys", body), 413, "body_too_large"));
}

// Every write route reads a JSON body: one sent as another media type (a form, text/plain,
// `curl -d` without -H) is 415 unsupported_media_type and changes nothing. JSON with parameters
// or in another case is JSON; no Content-Type is taken as JSON; an empty body (rotate's is
// optional) has nothing to refuse.
TEST_F(AdminApi, AWriteWithANonJsonBodyIs415AndChangesNothing) {
  const CreatedKey k = create_key(R"({"apis":["orders"]})");
  ASSERT_TRUE(status_is(admin("POST", "/admin/users", R"({"name":"alice"})"), 201));
  const std::string imported = "it-import-" + random_hex(16);
  struct Write {
    std::string method;
    std::string target;
    std::string body;
  };
  const Write writes[] = {
      {"POST", "/admin/keys", R"({"apis":["orders"],"description":"not-json-typed"})"},
      {"PATCH", "/admin/keys/" + k.id, R"({"description":"not-json-typed"})"},
      {"POST", "/admin/keys/" + k.id + "/rotate", R"({"grace_seconds":0})"},
      {"POST", "/admin/keys/import", R"({"keys":[{"key":")" + imported + R"(","apis":["orders"]}]})"},
      {"POST", "/admin/users", R"({"name":"not-json-typed"})"},
      {"PATCH", "/admin/users/alice", R"({"grants":[{"api":"billing"}]})"},
  };
  const char* refused_types[] = {"text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/jsonx",
                                 "text/json", "application/json-patch+json"};
  for (const Write& w : writes) {
    for (const char* type : refused_types) {
      EXPECT_TRUE(admin_error(
          admin_raw(http_request(w.method, w.target,
                                 {"X-ApiKey: " + admin_value_, "Content-Type: " + std::string(type)},
                                 w.body)),
          415, "unsupported_media_type"))
          << w.method << " " << w.target << " as " << type;
    }
  }
  // Nothing changed: one key besides the admin key, its value unrotated, no new user, alice's
  // grants as they were, nothing imported.
  std::optional<Response> list = admin("GET", "/admin/keys");
  ASSERT_TRUE(status_is(list, 200));
  EXPECT_EQ(count_of(list->body, "\"id\":"), 2u) << list->body;
  EXPECT_EQ(list->body.find("not-json-typed"), std::string::npos) << list->body;
  EXPECT_TRUE(status_is(data("/orders/1", k.value), 200));
  EXPECT_TRUE(status_is(data("/orders/1", imported), 401));
  EXPECT_TRUE(admin_error(admin("GET", "/admin/users/not-json-typed"), 404, "not_found"));
  const std::optional<Response> alice = admin("GET", "/admin/users/alice");
  ASSERT_TRUE(status_is(alice, 200));
  EXPECT_EQ(alice->body.find("billing"), std::string::npos) << alice->body;

  // JSON however it is spelled, or no Content-Type at all, is served.
  auto typed = [&](std::string_view method, const std::string& target,
                   std::optional<std::string> type, std::string_view body) {
    std::vector<std::string> headers = {"X-ApiKey: " + admin_value_};
    if (type) headers.push_back("Content-Type: " + *type);
    return admin_raw(http_request(method, target, headers, body));
  };
  EXPECT_TRUE(status_is(typed("POST", "/admin/users", "application/json; charset=utf-8",
                              R"({"name":"with-charset"})"),
                        201));
  EXPECT_TRUE(status_is(typed("PATCH", "/admin/keys/" + k.id, "Application/JSON ; charset=UTF-8",
                              R"({"description":"any-case"})"),
                        200));
  EXPECT_TRUE(status_is(typed("POST", "/admin/users", std::nullopt, R"({"name":"untyped"})"), 201));
  // An empty body with whatever type: nothing to mistake.
  EXPECT_TRUE(status_is(typed("POST", "/admin/keys/" + k.id + "/rotate", "text/plain", ""), 201));
}

// --- Effects on the data port -------------------------------------------------------------------

TEST_F(AdminApi, DisablingOrDeletingAKeyRevokesItOnEveryWorkerWhenTheCallReturns) {
  const CreatedKey k = create_key(R"({"apis":["orders"]})");
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 200));
  ASSERT_TRUE(status_is(admin("PATCH", "/admin/keys/" + k.id, R"({"enabled":false})"), 200));
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 401));
  ASSERT_TRUE(status_is(admin("PATCH", "/admin/keys/" + k.id, R"({"enabled":true})"), 200));
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 200));
  ASSERT_TRUE(status_is(admin("DELETE", "/admin/keys/" + k.id), 204));
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 401));
}

TEST_F(AdminApi, ExpiryInThePastRevokesAtOnce) {
  const CreatedKey k = create_key(R"({"apis":["orders"]})");
  ASSERT_TRUE(status_is(
      admin("PATCH", "/admin/keys/" + k.id, R"({"expires_at":"2020-01-01T00:00:00Z"})"), 200));
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 401));
}

TEST_F(AdminApi, RotationWithoutGraceRevokesTheOldValueAtOnce) {
  const CreatedKey k = create_key(R"({"apis":["orders"]})");
  const std::optional<Response> r = admin("POST", "/admin/keys/" + k.id + "/rotate");
  ASSERT_TRUE(status_is(r, 201));
  const std::string new_value = string_member(r->body, "key");
  ASSERT_FALSE(new_value.empty());
  EXPECT_NE(new_value, k.value);
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 401));
  EXPECT_TRUE(data_everywhere("/orders/1", new_value, 200));
  const std::optional<Response> zero =
      admin("POST", "/admin/keys/" + k.id + "/rotate", R"({"grace_seconds":0})");
  ASSERT_TRUE(status_is(zero, 201));
  EXPECT_TRUE(data_everywhere("/orders/1", new_value, 401));
  EXPECT_TRUE(data_everywhere("/orders/1", string_member(zero->body, "key"), 200));
}

TEST_F(AdminApi, RotationWithGraceKeepsTheOldValueUntilTheGraceEnds) {
  const CreatedKey k = create_key(R"({"apis":["orders"]})");
  const std::optional<Response> r =
      admin("POST", "/admin/keys/" + k.id + "/rotate", R"({"grace_seconds":2})");
  const auto rotated_at = Clock::now();
  ASSERT_TRUE(status_is(r, 201));
  const std::string new_value = string_member(r->body, "key");
  ASSERT_FALSE(new_value.empty());
  // The grace ends 2 s after the rotation's whole second, so at least 1 s from now.
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 200));
  EXPECT_TRUE(data_everywhere("/orders/1", new_value, 200));
  // A change that is no rotation keeps the grace going.
  ASSERT_TRUE(status_is(admin("PATCH", "/admin/keys/" + k.id, R"({"description":"x"})"), 200));
  if (Clock::now() - rotated_at < std::chrono::milliseconds(900)) {
    EXPECT_TRUE(status_is(data("/orders/1", k.value), 200));
  }

  std::this_thread::sleep_until(rotated_at + std::chrono::milliseconds(3200));
  EXPECT_TRUE(data_everywhere("/orders/1", k.value, 401));
  EXPECT_TRUE(data_everywhere("/orders/1", new_value, 200));
}

TEST_F(AdminApi, AThousandImportedKeysWorkAtOnce) {
  constexpr int kKeys = 1000;
  const std::string prefix = "it-import-" + random_hex(12) + "-";
  std::string body = R"({"keys":[)";
  for (int i = 0; i < kKeys; ++i) {
    if (i > 0) body += ',';
    body += R"({"key":")" + prefix + std::to_string(i) + R"(","apis":["orders"])";
    if (i % 2 == 1) body += R"(,"description":"odd")";
    body += '}';
  }
  body += "]}";
  const std::optional<Response> r = admin("POST", "/admin/keys/import", body);
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(r->body.rfind("{\"imported\":1000,\"ids\":[", 0), 0u) << r->body.substr(0, 80);
  EXPECT_EQ(count_of(r->body, "\"k"), static_cast<size_t>(kKeys));
  for (int i : {0, 1, 499, 998, 999}) {
    EXPECT_TRUE(status_is(data("/orders/" + std::to_string(i), prefix + std::to_string(i)), 200))
        << i;
  }
  const std::optional<Response> page = admin("GET", "/admin/keys?limit=1000");
  ASSERT_TRUE(status_is(page, 200));
  EXPECT_EQ(count_of(page->body, "\"id\":"), 1000u);
  EXPECT_EQ(string_member(page->body, "next_cursor").size(), 13u);  // the bootstrap key is left
  // All or nothing: an import repeating one of these values stores none of its keys.
  const std::string again = R"({"keys":[{"key":")" + prefix + R"(new","apis":["orders"]},)" +
                            R"({"key":")" + prefix + R"(7","apis":["orders"]}]})";
  const std::optional<Response> conflict = admin("POST", "/admin/keys/import", again);
  ASSERT_TRUE(admin_error(conflict, 409, "conflict"));
  EXPECT_NE(conflict->body.find("\"field\":\"keys[1].key\""), std::string::npos) << conflict->body;
  EXPECT_TRUE(status_is(data("/orders/1", prefix + "new"), 401));
}

TEST_F(AdminApi, AUserBoundKeyIsLimitedByItsUsersGrants) {
  ASSERT_TRUE(status_is(admin("POST", "/admin/users",
                              R"({"name":"alice","grants":[{"api":"orders","methods":["GET"],)"
                              R"("path_prefix":"/orders/public"}]})"),
                        201));
  const CreatedKey k = create_key(R"({"apis":["orders","billing"],"user":"alice"})");
  std::optional<Response> r = data("/orders/public/7", k.value);
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_EQ(r->header("X-Keygate-User"), "alice");
  EXPECT_EQ(r->header("X-Keygate-Key-Id"), k.id);
  EXPECT_TRUE(status_is(data("/orders/private/7", k.value), 403));
  EXPECT_TRUE(status_is(data("/orders/public/7", k.value, "POST"), 403));
  EXPECT_TRUE(status_is(data("/billing/1", k.value), 403));

  // New grants apply on every worker as soon as the PATCH returns.
  ASSERT_TRUE(
      status_is(admin("PATCH", "/admin/users/alice", R"({"grants":[{"api":"billing"}]})"), 200));
  EXPECT_TRUE(data_everywhere("/orders/public/7", k.value, 403));
  EXPECT_TRUE(data_everywhere("/billing/1", k.value, 200));
  // A deleted user's keys are denied.
  ASSERT_TRUE(status_is(admin("DELETE", "/admin/users/alice"), 204));
  r = data("/billing/1", k.value);
  ASSERT_TRUE(status_is(r, 403));
  EXPECT_EQ(string_member(r->body, "error"), "user_not_permitted");
  EXPECT_TRUE(data_everywhere("/billing/1", k.value, 403));
}

TEST_F(AdminApi, AClientThatLeavesMidRequestDoesNotStopTheChange) {
  std::string body = R"({"keys":[)";
  for (int i = 0; i < 200; ++i) {
    if (i > 0) body += ',';
    body += R"({"key":"it-leaver-)" + std::to_string(i) + R"(","apis":["orders"]})";
  }
  body += "]}";
  {
    RawClient c;
    ASSERT_TRUE(c.connect(server_->admin_port()));
    ASSERT_TRUE(c.send(http_request("POST", "/admin/keys/import",
                                    {"X-ApiKey: " + admin_value_, "Content-Type: application/json"},
                                    body)));
  }  // closed before the answer: the worker abandons the request once the executor posts
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  std::optional<Response> r;
  while (Clock::now() < deadline) {
    r = data("/orders/1", "it-leaver-199");
    if (r && r->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(status_is(r, 200));
  EXPECT_TRUE(status_is(admin("GET", "/admin/apis"), 200));
}

// Two client threads hammer the data port with one key over keep-alive connections (four
// each, spread over both workers) while the test deletes the key. Every request sent after the
// DELETE's response arrived must be refused; requests in flight before may go either way.
TEST_F(AdminApi, UnderLoadEveryRequestSentAfterTheDeleteReturnsIsRefused) {
  constexpr int kThreads = 2;
  constexpr int kConnectionsPerThread = 4;
  const CreatedKey k = create_key(R"({"apis":["orders"]})");
  const std::string get = http_request("GET", "/orders/load", {"X-ApiKey: " + k.value});

  struct Sample {
    Clock::time_point sent;
    int status;
  };
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::vector<Sample>> samples(kThreads);
  std::vector<std::thread> threads;
  const uint16_t port = server_->data_port();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<RawClient> clients(kConnectionsPerThread);
      for (size_t n = 0; !stop.load(std::memory_order_relaxed); ++n) {
        RawClient& c = clients[n % clients.size()];
        if (!c.connected() && !c.connect(port)) {
          ++failures;
          continue;
        }
        const Clock::time_point sent = Clock::now();
        if (!c.send(get)) {
          c.close();
          ++failures;
          continue;
        }
        const std::optional<Response> r = c.read_response(std::chrono::milliseconds(3000));
        if (!r) {
          c.close();
          ++failures;
          continue;
        }
        samples[t].push_back({sent, r->status});
        if (r->connection_close()) c.close();
      }
    });
  }

  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::optional<Response> deleted = admin("DELETE", "/admin/keys/" + k.id);
  const Clock::time_point delete_returned = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(status_is(deleted, 204));

  size_t before = 0;
  size_t after = 0;
  size_t late_successes = 0;
  for (const std::vector<Sample>& list : samples) {
    for (const Sample& s : list) {
      if (s.sent > delete_returned) {
        ++after;
        if (s.status != 401) ++late_successes;
      } else {
        ++before;
        EXPECT_TRUE(s.status == 200 || s.status == 401) << s.status;
      }
    }
    EXPECT_FALSE(list.empty());
  }
  EXPECT_EQ(late_successes, 0u) << "of " << after << " requests sent after the DELETE returned";
  EXPECT_GT(before, 20u);
  EXPECT_GT(after, 20u);
  EXPECT_EQ(failures.load(), 0);
}

// --- The descriptor limit ----------------------------------------------------------------------

uint64_t soft_nofile_of(pid_t pid) {
  std::ifstream limits("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::strlen("Max open files")));
    uint64_t soft = 0;
    fields >> soft;
    return soft;
  }
  return 0;
}

// Debian's soft limit (1024) is far below connections_per_worker_max: keygate raises its soft
// limit to the hard one, and says so on stderr when even that is short.
TEST(DescriptorLimit, TheSoftLimitIsRaisedToTheHardOne) {
  ServerOptions options = admin_server_options("it-descriptor-admin-key");
  options.workers = 1;
  options.limits = {{"connections_per_worker_max", 1000}};
  options.wrapper = {"/usr/bin/prlimit", "--nofile=200:4096", "--"};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  EXPECT_EQ(soft_nofile_of(server.pid()), 4096u);
  EXPECT_EQ(server.error_output().find("warning"), std::string::npos) << server.error_output();
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

TEST(DescriptorLimit, AShortLimitIsWarnedAbout) {
  ServerOptions options = admin_server_options("it-descriptor-admin-key");
  options.workers = 1;
  options.wrapper = {"/usr/bin/prlimit", "--nofile=300:300", "--"};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  EXPECT_TRUE(server.wait_for_error_output(
      "keygate: warning: the descriptor limit (RLIMIT_NOFILE 300) is below the 10320 that 1 "
      "worker x (connections_per_worker_max 10000 + 0 upstream servers x "
      "upstream_idle_connections_max 64) + admin.connections_max 64 need",
      Millis(2000)))
      << server.error_output();
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

// Idle pooled upstream connections are descriptors too: up to upstream_idle_connections_max per
// upstream server in every worker. The estimate left them out, so a limit that covered the
// client connections but not the pools drew no warning.
TEST(DescriptorLimit, IdleUpstreamConnectionsCountInTheEstimate) {
  ServerOptions options = admin_server_options("it-descriptor-admin-key");
  options.workers = 1;
  options.limits = {{"connections_per_worker_max", 1000},
                    {"upstream_idle_connections_max", 2000}};
  options.extra_config =
      "[[apis]]\nname = \"pair\"\nroutes = [\"/pair\"]\n"
      "upstreams = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\n";
  options.wrapper = {"/usr/bin/prlimit", "--nofile=200:4096", "--"};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // 1 x (1000 + 2 x 2000) + 64 + 256 spare = 5320 > 4096.
  EXPECT_TRUE(server.wait_for_error_output(
      "keygate: warning: the descriptor limit (RLIMIT_NOFILE 4096) is below the 5320 that 1 "
      "worker x (connections_per_worker_max 1000 + 2 upstream servers x "
      "upstream_idle_connections_max 2000) + admin.connections_max 64 need",
      Millis(2000)))
      << server.error_output();
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

// Against an unsanitized keygate only (KEYGATE_DESCRIPTOR_TESTS, test_server.h).
#ifdef KEYGATE_DESCRIPTOR_TESTS
std::optional<Response> stats_with(const TestServer& server, const std::string& admin_key) {
  return round_trip(server.admin_port(),
                    http_request("GET", "/admin/stats", {"X-ApiKey: " + admin_key}));
}

TEST(DescriptorLimit, FailedAcceptsAreCountedAndServingResumes) {
  const std::string key = "it-descriptor-admin-key";
  ServerOptions options = admin_server_options(key);
  options.workers = 1;
  options.wrapper = {"/usr/bin/prlimit", "--nofile=96:96", "--"};
  options.binary = unsanitized_keygate_binary();
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // More connections than descriptors: some accepts fail (EMFILE) and wait in the backlog.
  std::vector<RawClient> clients(120);
  for (RawClient& c : clients) ASSERT_TRUE(c.connect(server.data_port()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  clients.clear();
  // Once descriptors are free again the server serves, and the failures were counted.
  std::optional<Response> r;
  for (int i = 0; i < 50 && !(r = stats_with(server, key)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(status_is(r, 200));
  // Most are closed at once for the descriptors held in reserve; any that found none (the
  // reserve in use) wait in the backlog, counted as failed accepts.
  EXPECT_GT(stats_counter(r->body, "workers", "descriptor_reserve_refused") +
                stats_counter(r->body, "workers", "accept_errors"),
            0)
      << r->body;
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

// Clients that take every descriptor they can get cannot take the reserve: the admin port still
// answers, and the access log still starts new segments (it dropped records and said "cannot
// create ...: Too many open files" when clients had taken them all).
TEST(DescriptorLimit, ClientsLeaveTheReserveForTheAdminPortAndTheAccessLog) {
  const std::string key = "it-descriptor-admin-key";
  ServerOptions options = admin_server_options(key);
  options.workers = 1;
  options.wrapper = {"/usr/bin/prlimit", "--nofile=128:128", "--"};
  options.binary = unsanitized_keygate_binary();
  options.extra_config += "\n[log]\nsegment_bytes_max = 65536\n";
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  RawClient keep;
  ASSERT_TRUE(keep.connect(server.data_port()));
  std::vector<RawClient> hogs(200);
  for (RawClient& c : hogs) ASSERT_TRUE(c.connect(server.data_port()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  std::optional<Response> during = stats_with(server, key);
  ASSERT_TRUE(status_is(during, 200)) << "the admin port is locked out";
  EXPECT_GT(stats_counter(during->body, "workers", "descriptor_reserve_refused"), 0)
      << during->body;
  // ~1 MB of records (a 400-byte path each): some fifteen 64 KiB segments, all started while
  // the clients hold every descriptor outside the reserve.
  const std::string request =
      http_request("GET", "/orders/" + std::string(400, 'x'), {"X-ApiKey: no-such-key"});
  for (int i = 0; i < 1500; ++i) {
    ASSERT_TRUE(keep.send(request));
    const std::optional<Response> r = keep.read_response();
    ASSERT_TRUE(status_is(r, 401)) << i;
  }
  hogs.clear();
  std::optional<Response> after;
  for (int i = 0; i < 50; ++i) {
    after = stats_with(server, key);
    if (after && after->status == 200 &&
        stats_counter(after->body, "access_log", "written") ==
            stats_counter(after->body, "access_log", "enqueued")) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(status_is(after, 200));
  const std::string& a = after->body;
  EXPECT_GE(stats_counter(a, "access_log", "written"), 1500) << a;
  EXPECT_EQ(stats_counter(a, "access_log", "dropped"), 0) << a;
  EXPECT_EQ(stats_counter(a, "access_log", "write_errors"), 0) << a;
  EXPECT_GE(stats_counter(a, "access_log", "segments_finished"), 10) << a;
  EXPECT_TRUE(server.stop(SIGTERM).clean());
  EXPECT_EQ(server.error_output().find("cannot create"), std::string::npos)
      << server.error_output();
}
#endif

// --- The locked-memory limit -------------------------------------------------------------------

// Max locked memory (soft, bytes) of process `pid`, from /proc/<pid>/limits; 0 if unreadable.
uint64_t soft_memlock_of(pid_t pid) {
  std::ifstream limits("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(limits, line)) {
    if (line.rfind("Max locked memory", 0) != 0) continue;
    std::istringstream fields(line.substr(std::strlen("Max locked memory")));
    uint64_t soft = 0;
    fields >> soft;
    return soft;
  }
  return 0;
}

// keygate as a service runs it: without CAP_IPC_LOCK (the tests run as root, which has it, and
// then the kernel charges nothing to RLIMIT_MEMLOCK), under the memlock limit `limit`
// ("SOFT:HARD" bytes, prlimit's syntax).
std::vector<std::string> without_ipc_lock(const std::string& limit) {
  return {"/usr/bin/setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
          "/usr/bin/prlimit", "--memlock=" + limit, "--"};
}

bool have_setpriv_and_prlimit() {
  return ::access("/usr/bin/setpriv", X_OK) == 0 && ::access("/usr/bin/prlimit", X_OK) == 0;
}

// Each worker's io_uring can take about 400 KiB of locked memory: a soft limit below the hard
// one (a shell's `ulimit -l`) is raised, as for descriptors, so two workers start under a 64 KiB
// soft limit. The hard limit stays this process's own (raising it needs CAP_SYS_RESOURCE).
TEST(LockedMemoryLimit, TheSoftLimitIsRaisedToTheHardOne) {
  if (!have_setpriv_and_prlimit()) GTEST_SKIP() << "needs /usr/bin/setpriv and /usr/bin/prlimit";
  rlimit own{};
  ASSERT_EQ(::getrlimit(RLIMIT_MEMLOCK, &own), 0);
  if (own.rlim_max != RLIM_INFINITY && own.rlim_max < (4u << 20)) {
    GTEST_SKIP() << "the hard RLIMIT_MEMLOCK here (" << own.rlim_max << ") is below 4 MiB";
  }
  const uint64_t hard = own.rlim_max == RLIM_INFINITY ? uint64_t{64} << 20 : own.rlim_max;
  ServerOptions options = admin_server_options("it-memlock-admin-key");
  options.workers = 2;
  options.wrapper = without_ipc_lock("65536:" + std::to_string(hard));
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();
  EXPECT_EQ(soft_memlock_of(server.pid()), hard);
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

// A limit too low for the rings (where the kernel charges them to it: Linux 6.18 does) stops
// keygate with a line that names the limit, not just "Cannot allocate memory".
TEST(LockedMemoryLimit, AShortLimitIsNamedWhenTheRingsDoNotFit) {
  if (!have_setpriv_and_prlimit()) GTEST_SKIP() << "needs /usr/bin/setpriv and /usr/bin/prlimit";
  TempDir dir;
  std::vector<std::string> args = without_ipc_lock("65536:65536");
  const std::string program = args.front();
  args.erase(args.begin());
  for (const std::string& arg :
       {std::string(keygate_binary()), std::string("--listen"), std::string("127.0.0.1:0"),
        std::string("--admin-listen"), std::string("127.0.0.1:0"), std::string("--workers"),
        std::string("1"), std::string("--data-dir"), dir.path() + "/data"}) {
    args.push_back(arg);
  }
  // Run to its end: a kernel that charges nothing to the limit starts keygate, which then runs
  // until the timeout kills it.
  const ProcessResult p = run_process(program, args, nullptr, Millis(5000));
  if (p.status.timed_out) {
    GTEST_SKIP() << "this kernel does not charge io_uring rings to RLIMIT_MEMLOCK";
  }
  EXPECT_TRUE(p.status.exited && p.status.code == 1) << p.status.describe() << "\n" << p.err;
  EXPECT_NE(p.err.find("keygate: io_uring set-up failed: Cannot allocate memory (the "
                       "locked-memory limit is likely too low: each worker's io_uring takes "
                       "about 400 KiB of it without CAP_IPC_LOCK; raise RLIMIT_MEMLOCK: ulimit "
                       "-l, systemd LimitMEMLOCK=, or lower [server] workers)"),
            std::string::npos)
      << p.err;
}

}  // namespace
}  // namespace keygate::integration
