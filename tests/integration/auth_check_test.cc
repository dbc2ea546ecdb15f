// Integration tests of the data port in auth-check mode: the real keygate binary on ephemeral
// loopback ports, keys and users written beforehand into its data directory through
// KeyService, requests over real HTTP.
//
// Each test prepares its store with the server stopped (KeyService holds the data directory's
// lock), then starts keygate on it. Every server is stopped with SIGTERM at the end and must
// exit 0 after "keygate: stopped", so a crash or a sanitizer report fails the test. Every
// response a test checks is also searched for the plaintext of every key the test used: no
// response, least of all a rejection, may echo a key.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/api_key.h"
#include "core/permissions.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using namespace std::string_literals;
using namespace std::string_view_literals;
using storage::KeyService;

// Two data APIs; "/api" belongs to orders so that "/api/../admin" would route if it were not
// rejected as non-normalized first.
constexpr std::string_view kApisConfig =
    "[[apis]]\n"
    "name = \"orders\"\n"
    "routes = [\"/orders\", \"/api\"]\n"
    "\n"
    "[[apis]]\n"
    "name = \"billing\"\n"
    "routes = [\"/billing\"]\n";

constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";

std::string hex_random(size_t bytes) {
  std::vector<uint8_t> random(bytes);
  if (!storage::system_random(random)) std::abort();
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : random) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

std::string generated_value() {
  std::vector<uint8_t> random(kGeneratedKeyRandomBytes);
  if (!storage::system_random(random)) std::abort();
  return generate_key_value(random);
}

int64_t now_unix() { return static_cast<int64_t>(std::time(nullptr)); }

// A record for `value` with a fresh random id; the caller adjusts the rest.
KeyRecord make_key(std::string_view value, std::vector<std::string> apis,
                   std::optional<std::string> user = std::nullopt) {
  std::vector<uint8_t> random(kKeyIdRandomBytes);
  if (!storage::system_random(random)) std::abort();
  KeyRecord record;
  record.id = make_key_id(random);
  record.digest = digest_key(value);
  record.hint = make_key_hint(value);
  record.description = "integration test key";
  record.apis = std::move(apis);
  record.user = std::move(user);
  record.created_at = now_unix();
  record.updated_at = record.created_at;
  return record;
}

std::string get_with_key(std::string_view target, std::string_view key) {
  return http_request("GET", target, {"X-ApiKey: " + std::string(key)});
}

// Percent-encodes everything but unreserved characters (for a query or form value).
std::string percent_encode(std::string_view value) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : value) {
    const auto b = static_cast<unsigned char>(c);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kDigits[b >> 4];
      out += kDigits[b & 15];
    }
  }
  return out;
}

// `value` as a JSON string literal (printable ASCII only, so only '"' and '\\' need escapes).
std::string json_string(std::string_view value) {
  std::string out = "\"";
  for (const char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// A value of the same generated shape with one base62 digit changed at `at` (>= 3).
std::string flip(std::string value, size_t at) {
  value[at] = value[at] == 'a' ? 'b' : 'a';
  return value;
}

class AuthCheck : public ::testing::Test {
 protected:
  void TearDown() override {
    for (std::unique_ptr<TestServer>& server : servers_) {
      if (server->running()) stop_cleanly(*server);
    }
  }

  std::string data_dir() const { return dir_.path() + "/data"; }

  // Opens the data directory with a KeyService, runs `fill`, then closes the service and
  // releases the directory's lock, so a server can start on it.
  void prepare_store(const std::function<void(KeyService&)>& fill) {
    storage::DataDir dir;
    std::string error;
    ASSERT_TRUE(dir.open(data_dir(), &error)) << error;
    auto keys = std::make_unique<KeyService>();
    ASSERT_TRUE(keys->open(data_dir(), KeyService::Options{}, &error)) << error;
    fill(*keys);
    keys.reset();  // before `dir` goes: the store closes while the directory is still locked
  }

  // A key value used by this test: every response is searched for it.
  std::string secret(std::string_view label) {
    secrets_.push_back("it-" + std::string(label) + "-" + hex_random(12));
    return secrets_.back();
  }
  std::string generated_secret() {
    secrets_.push_back(generated_value());
    return secrets_.back();
  }
  void remember_secret(std::string value) { secrets_.push_back(std::move(value)); }

  static void create(KeyService& keys, const KeyRecord& record) {
    const storage::Status s = keys.create_key(record);
    ASSERT_TRUE(s.is_ok()) << s.message();
  }

  // Starts keygate on data_dir() with the two APIs plus `extra_config`; nullptr on failure.
  TestServer* start(ServerOptions options = {}) {
    options.data_dir = data_dir();
    options.extra_config = std::string(kApisConfig) + "\n" + options.extra_config;
    servers_.push_back(std::make_unique<TestServer>(std::move(options)));
    std::string error;
    if (!servers_.back()->start(&error)) {
      ADD_FAILURE() << "keygate did not start: " << error
                    << "\nstderr: " << servers_.back()->error_output();
      return nullptr;
    }
    return servers_.back().get();
  }

  void stop_cleanly(TestServer& server) {
    const ExitStatus status = server.stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe() << "\nstdout: " << server.output()
                                << "\nstderr: " << server.error_output();
    EXPECT_NE(server.output().find("keygate: stopped"), std::string::npos) << server.output();
  }

  ::testing::AssertionResult no_secret_in(const Response& r) const {
    for (const std::string& s : secrets_) {
      if (r.raw.find(s) != std::string::npos) {
        return ::testing::AssertionFailure() << "the response carries the key '" << s << "':\n"
                                             << r.raw;
      }
    }
    return ::testing::AssertionSuccess();
  }

  // 200 with {"key_id","api","user"} and the X-Keygate-* headers of this key, API and user.
  ::testing::AssertionResult allowed(const std::optional<Response>& r, std::string_view key_id,
                                     std::string_view api,
                                     std::optional<std::string_view> user = std::nullopt) const {
    if (!r || r->status != 200) return ::testing::AssertionFailure() << "want 200; " << show(r);
    const std::string body =
        "{\"key_id\":\"" + std::string(key_id) + "\",\"api\":\"" + std::string(api) +
        "\",\"user\":" + (user ? "\"" + std::string(*user) + "\"" : "null"s) + "}";
    if (r->body != body && r->body != body + "\n") {
      return ::testing::AssertionFailure() << "want body " << body << "; " << show(r);
    }
    const std::optional<std::string> type = r->header("Content-Type");
    if (!type || type->rfind("application/json", 0) != 0) {
      return ::testing::AssertionFailure() << "want a JSON content type; " << show(r);
    }
    if (r->header("X-Keygate-Key-Id") != std::string(key_id) ||
        r->header("X-Keygate-Api") != std::string(api)) {
      return ::testing::AssertionFailure() << "want X-Keygate-Key-Id " << key_id
                                           << " and X-Keygate-Api " << api << "; " << show(r);
    }
    const std::optional<std::string> user_header = r->header("X-Keygate-User");
    if (user ? user_header != std::string(*user) : user_header.has_value()) {
      return ::testing::AssertionFailure()
             << "want X-Keygate-User " << (user ? *user : "absent"sv) << "; " << show(r);
    }
    return no_secret_in(*r);
  }

  // An error JSON response with this status and code; a 401 also carries the ApiKey challenge.
  ::testing::AssertionResult rejected(const std::optional<Response>& r, int status,
                                      std::string_view code) const {
    if (!r || r->status != status) {
      return ::testing::AssertionFailure() << "want " << status << " " << code << "; " << show(r);
    }
    if (!r->json_error_body() ||
        r->body.rfind("{\"error\":\"" + std::string(code) + "\"", 0) != 0) {
      return ::testing::AssertionFailure() << "want error code " << code << "; " << show(r);
    }
    if (status == 401 && r->header("WWW-Authenticate") != std::string(kChallenge)) {
      return ::testing::AssertionFailure()
             << "want WWW-Authenticate: " << kChallenge << "; " << show(r);
    }
    if (r->header("X-Keygate-Key-Id") || r->header("X-Keygate-Api") ||
        r->header("X-Keygate-User")) {
      return ::testing::AssertionFailure() << "a rejection names a key; " << show(r);
    }
    return no_secret_in(*r);
  }

  // Sends each request in order on one keep-alive connection and checks its response with
  // `check(i, response)`; stops at the first failure.
  ::testing::AssertionResult on_one_connection(
      uint16_t port, size_t count, const std::function<std::string(size_t)>& make_request,
      const std::function<::testing::AssertionResult(size_t, const std::optional<Response>&)>&
          check) const {
    RawClient client;
    std::string error;
    if (!client.connect(port, &error)) return ::testing::AssertionFailure() << error;
    for (size_t i = 0; i < count; ++i) {
      if (!client.send(make_request(i))) {
        return ::testing::AssertionFailure() << "request " << i << ": send failed";
      }
      const std::optional<Response> r = client.read_response();
      if (::testing::AssertionResult ok = check(i, r); !ok) {
        return ::testing::AssertionFailure()
               << "request " << i << " (" << to_string(client.last_end()) << "): " << ok.message();
      }
      if (r->connection_close()) {
        return ::testing::AssertionFailure() << "request " << i << ": connection closed";
      }
    }
    return ::testing::AssertionSuccess();
  }

  TempDir dir_;
  std::vector<std::string> secrets_;
  std::vector<std::unique_ptr<TestServer>> servers_;
};

TEST_F(AuthCheck, AKeyIsAcceptedFromEachOfTheFourSources) {
  const std::string plain = secret("four-sources");
  // Characters that need percent-encoding in a query or form and escaping in JSON.
  const std::string special = secret("sp+&=%;\"\\/?#x");
  const KeyRecord plain_key = make_key(plain, {"orders"});
  const KeyRecord special_key = make_key(special, {"orders"});
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    create(keys, plain_key);
    create(keys, special_key);
  }));
  TestServer* server = start();
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();

  for (const KeyRecord* key : {&plain_key, &special_key}) {
    const std::string& value = key == &plain_key ? plain : special;
    SCOPED_TRACE("key " + key->id);
    EXPECT_TRUE(allowed(round_trip(port, get_with_key("/orders/7", value)), key->id, "orders"))
        << "X-ApiKey header";
    EXPECT_TRUE(allowed(
        round_trip(port, http_request("GET", "/orders/7?page=2&key=" + percent_encode(value))),
        key->id, "orders"))
        << "key query parameter";
    EXPECT_TRUE(allowed(
        round_trip(port,
                   http_request("POST", "/orders",
                                {"Content-Type: application/x-www-form-urlencoded; charset=UTF-8"},
                                "item=3&key=" + percent_encode(value) + "&qty=1")),
        key->id, "orders"))
        << "key form field";
    EXPECT_TRUE(allowed(
        round_trip(port, http_request("POST", "/orders/new", {"Content-Type: application/json"},
                                      R"({"item":{"API_Key":"nested"},"API_Key":)" +
                                          json_string(value) + "}")),
        key->id, "orders"))
        << "API_Key JSON member";
    // The second route of the API answers for the same API.
    EXPECT_TRUE(allowed(round_trip(port, get_with_key("/api/v1", value)), key->id, "orders"));
  }
}

TEST_F(AuthCheck, GeneratedKeysWorkAndOneChangedCharacterMakesThemInvalid) {
  const std::string value = generated_secret();
  ASSERT_TRUE(has_generated_shape(value) && generated_checksum_ok(value)) << value;
  const KeyRecord key = make_key(value, {"billing"});
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) { create(keys, key); }));
  TestServer* server = start();
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();

  EXPECT_TRUE(
      allowed(round_trip(port, get_with_key("/billing/invoices", value)), key.id, "billing"));
  EXPECT_TRUE(
      allowed(round_trip(port, http_request("GET", "/billing?key=" + value)), key.id, "billing"));
  // A typo in the random part, in the checksum, and in the first digit after the prefix.
  for (const size_t at : {size_t{3}, size_t{20}, kGeneratedKeyChars - 1}) {
    const std::string typo = flip(value, at);
    remember_secret(typo);
    ASSERT_TRUE(has_generated_shape(typo));
    EXPECT_TRUE(
        rejected(round_trip(port, get_with_key("/billing/invoices", typo)), 401, "invalid_api_key"))
        << "changed at " << at;
    EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/billing?key=" + typo)), 401,
                         "invalid_api_key"))
        << "changed at " << at;
  }
}

TEST_F(AuthCheck, RequestsWithoutAUsableKeyGetTheDocumentedRejection) {
  const std::string orders_value = secret("orders");
  const std::string billing_value = secret("billing");
  const std::string disabled_value = secret("disabled");
  const std::string expired_value = secret("expired");
  const std::string unknown_value = secret("unknown");
  const KeyRecord orders = make_key(orders_value, {"orders"});
  const KeyRecord billing = make_key(billing_value, {"billing"});
  KeyRecord disabled = make_key(disabled_value, {"orders"});
  disabled.enabled = false;
  KeyRecord expired = make_key(expired_value, {"orders"});
  expired.expires_at = now_unix() - 60;
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    for (const KeyRecord& r : {orders, billing, disabled, expired}) create(keys, r);
  }));
  TestServer* server = start();
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();

  EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/orders/1")), 401, "missing_api_key"));
  EXPECT_TRUE(
      rejected(round_trip(port, http_request("GET", "/orders/1?key=")), 401, "missing_api_key"));
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/orders/1", unknown_value)), 401, "invalid_api_key"));
  EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/orders/1?key=" + unknown_value)), 401,
                       "invalid_api_key"));
  EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/orders/1?key=" + billing_value,
                                                     {"X-ApiKey: " + orders_value})),
                       401, "ambiguous_api_key"))
      << "header and query disagree";
  EXPECT_TRUE(
      rejected(round_trip(port, http_request("POST", "/orders", {"Content-Type: application/json"},
                                             R"({"API_Key":")" + orders_value + R"(",)")),
               400, "invalid_body"));
  EXPECT_TRUE(
      rejected(round_trip(port, http_request("POST", "/orders", {"Content-Type: application/json"},
                                             "[\"" + orders_value + "\"]")),
               400, "invalid_body"))
      << "a JSON body whose root is not an object";
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/inventory/1", orders_value)), 404, "no_route"));
  EXPECT_TRUE(rejected(round_trip(port, get_with_key("/ordersX", orders_value)), 404, "no_route"))
      << "routes match whole segments";
  EXPECT_TRUE(rejected(round_trip(port, get_with_key("/billing/1", orders_value)), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(rejected(round_trip(port, get_with_key("/orders/1", billing_value)), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/orders/1", disabled_value)), 401, "invalid_api_key"))
      << "disabled key";
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/orders/1", expired_value)), 401, "invalid_api_key"))
      << "expired key";

  const std::optional<Response> health = round_trip(port, http_request("GET", "/healthz"));
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200) << health->raw;
  EXPECT_TRUE(no_secret_in(*health));

  // Not normalized: rejected before routing, whatever key comes along.
  for (const char* path : {"/api/../admin", "/orders/../billing/1", "/orders/./1", "/orders//1",
                           "/orders/%2e%2e/billing"}) {
    EXPECT_TRUE(rejected(round_trip(port, get_with_key(path, orders_value)), 400, "invalid_path"))
        << path;
  }
  // The documented order: path form, then route, then the key, then whether it is usable,
  // then its apis.
  EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/api/../admin")), 400, "invalid_path"))
      << "no key, not normalized";
  EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/inventory/1")), 404, "no_route"))
      << "no key, no route";
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/inventory/1", unknown_value)), 404, "no_route"))
      << "unknown key, no route";
  EXPECT_TRUE(rejected(round_trip(port, get_with_key("/billing/1", disabled_value)), 401,
                       "invalid_api_key"))
      << "a disabled key for another API is invalid before it is not permitted";
  EXPECT_TRUE(allowed(round_trip(port, http_request("GET", "/orders/1?key=" + orders_value,
                                                    {"X-ApiKey: " + orders_value})),
                      orders.id, "orders"))
      << "the same key in header and query is not ambiguous";
  // The key still works afterwards: nothing above poisoned a cache.
  EXPECT_TRUE(
      allowed(round_trip(port, get_with_key("/orders/1", orders_value)), orders.id, "orders"));
}

// A refusal about the key or the route is an answer like any other: the connection stays open
// for the next request (only the HTTP layer's refusals close it, see http_engine_test). Proxies
// keep their connections to keygate for these, and a client that retries with a key need not
// reconnect.
TEST_F(AuthCheck, KeyAndRouteRejectionsKeepTheConnectionAlive) {
  const std::string orders_value = secret("orders");
  const std::string billing_value = secret("billing");
  const std::string unknown_value = secret("unknown");
  const KeyRecord orders = make_key(orders_value, {"orders"});
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    create(keys, orders);
    create(keys, make_key(billing_value, {"billing"}));
  }));
  ServerOptions options;
  options.extra_config = "[keys]\nbody_inspect_bytes_max = 16\n";
  TestServer* server = start(options);
  ASSERT_NE(server, nullptr);

  struct Step {
    std::string request;
    int status;
    std::string_view code;
  };
  const std::vector<Step> steps = {
      {http_request("GET", "/orders/1"), 401, "missing_api_key"},
      {get_with_key("/orders/1", unknown_value), 401, "invalid_api_key"},
      {http_request("GET", "/orders/1?key=" + billing_value, {"X-ApiKey: " + orders_value}), 401,
       "ambiguous_api_key"},
      {get_with_key("/billing/1", orders_value), 403, "api_not_permitted"},
      {get_with_key("/inventory/1", orders_value), 404, "no_route"},
      {get_with_key("/orders/../billing/1", orders_value), 400, "invalid_path"},
      {http_request("POST", "/orders", {"Content-Type: application/json"}, "{\"API_Key\":"), 400,
       "invalid_body"},
      {http_request("POST", "/orders", {"Content-Type: application/json"},
                    "{\"note\":\"longer than sixteen bytes\"}"),
       413, "body_too_large"},
      {get_with_key("/orders/1", orders_value), 200, ""},
  };
  EXPECT_TRUE(on_one_connection(
      server->data_port(), steps.size(), [&](size_t i) { return steps[i].request; },
      [&](size_t i, const std::optional<Response>& r) {
        return steps[i].status == 200 ? allowed(r, orders.id, "orders")
                                      : rejected(r, steps[i].status, steps[i].code);
      }));
}

TEST_F(AuthCheck, AUserBoundKeyIsAllowedOnlyWhatItsUsersGrantsAllow) {
  const std::string user_value = secret("alice");
  const std::string admin_value = secret("unbound");
  const std::string alice = "alice@corp.example";
  const KeyRecord alice_key = make_key(user_value, {"orders", "billing"}, alice);
  const KeyRecord unbound = make_key(admin_value, {"orders"});
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    User user;
    user.name = alice;
    user.grants = {Grant{"orders", {"GET", "HEAD"}, "/orders/reports"}, Grant{"billing", {}, ""}};
    ASSERT_TRUE(keys.put_user(user).is_ok());
    create(keys, alice_key);
    create(keys, unbound);
  }));
  TestServer* server = start();
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();

  EXPECT_TRUE(allowed(round_trip(port, get_with_key("/orders/reports/2024", user_value)),
                      alice_key.id, "orders", alice));
  EXPECT_TRUE(allowed(round_trip(port, get_with_key("/orders/reports", user_value)), alice_key.id,
                      "orders", alice));
  EXPECT_TRUE(
      allowed(round_trip(port, http_request("DELETE", "/billing/9", {"X-ApiKey: " + user_value})),
              alice_key.id, "billing", alice))
      << "a grant without methods or prefix allows the whole API";
  EXPECT_TRUE(rejected(
      round_trip(port, http_request("POST", "/orders/reports", {"X-ApiKey: " + user_value})), 403,
      "user_not_permitted"))
      << "method not granted";
  EXPECT_TRUE(rejected(
      round_trip(port, http_request("DELETE", "/orders/reports/1", {"X-ApiKey: " + user_value})),
      403, "user_not_permitted"))
      << "method not granted, path inside the grant";
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/orders/1", user_value)), 403, "user_not_permitted"))
      << "path outside the grant's prefix";
  EXPECT_TRUE(rejected(round_trip(port, get_with_key("/orders/reportsX", user_value)), 403,
                       "user_not_permitted"))
      << "grant prefixes match whole segments";
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/api/x", user_value)), 403, "user_not_permitted"))
      << "another route of the API, outside the grant";
  // A key without a user is unrestricted within its apis.
  EXPECT_TRUE(
      allowed(round_trip(port, http_request("POST", "/orders/1", {"X-ApiKey: " + admin_value})),
              unbound.id, "orders"));
}

TEST_F(AuthCheck, AKeyWhoseUserWasDeletedIsDenied) {
  const std::string value = secret("orphan");
  const KeyRecord key = make_key(value, {"orders"}, "bob");
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    User bob;
    bob.name = "bob";
    bob.grants = {Grant{"orders", {}, ""}};
    ASSERT_TRUE(keys.put_user(bob).is_ok());
    create(keys, key);
    ASSERT_TRUE(keys.delete_user("bob").is_ok());
  }));
  TestServer* server = start();
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();
  for (const char* method : {"GET", "POST"}) {
    EXPECT_TRUE(
        rejected(round_trip(port, http_request(method, "/orders/1", {"X-ApiKey: " + value})), 403,
                 "user_not_permitted"))
        << method;
  }
}

TEST_F(AuthCheck, EveryKeySurvivesARestart) {
  constexpr size_t kKeys = 1000;
  std::vector<std::string> values;
  std::vector<KeyRecord> records;
  for (size_t i = 0; i < kKeys; ++i) {
    // Every third key is generated, the others operator-set.
    values.push_back(i % 3 == 0 ? generated_secret() : secret("restart-" + std::to_string(i)));
    records.push_back(make_key(values.back(), {i % 2 == 0 ? "orders" : "billing"}));
  }
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    size_t failed = 0;
    const storage::Status s = keys.import_keys(records, &failed);
    ASSERT_TRUE(s.is_ok()) << s.message() << " at record " << failed;
  }));
  auto key_request = [&](size_t i) {
    return i % 2 == 0 ? get_with_key("/orders/" + std::to_string(i), values[i])
                      : http_request("GET", "/billing/" + std::to_string(i) + "?key=" + values[i]);
  };
  auto key_allowed = [&](size_t i, const std::optional<Response>& r) {
    return allowed(r, records[i].id, i % 2 == 0 ? "orders" : "billing");
  };

  TestServer* first = start();
  ASSERT_NE(first, nullptr);
  for (size_t i = 0; i < kKeys; i += 97) {
    EXPECT_TRUE(key_allowed(i, round_trip(first->data_port(), key_request(i)))) << "key " << i;
  }
  EXPECT_TRUE(on_one_connection(first->data_port(), kKeys, key_request, key_allowed));
  stop_cleanly(*first);

  TestServer* second = start();
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(on_one_connection(second->data_port(), kKeys, key_request, key_allowed));
}

TEST_F(AuthCheck, WithAPartialCacheEveryStoredKeyIsStillServed) {
  constexpr size_t kKeys = 200;
  constexpr size_t kUnknown = 50;
  constexpr int kRounds = 3;
  std::vector<std::string> values;
  std::vector<KeyRecord> records;
  for (size_t i = 0; i < kKeys; ++i) {
    values.push_back(i % 2 == 0 ? generated_secret() : secret("partial-" + std::to_string(i)));
    records.push_back(make_key(values.back(), {"orders"}));
  }
  std::vector<std::string> unknown;
  for (size_t i = 0; i < kUnknown; ++i) {
    unknown.push_back(i % 2 == 0 ? generated_secret() : secret("absent-" + std::to_string(i)));
  }
  ASSERT_NO_FATAL_FAILURE(prepare_store([&](KeyService& keys) {
    const storage::Status s = keys.import_keys(records);
    ASSERT_TRUE(s.is_ok()) << s.message();
  }));
  ServerOptions options;
  options.extra_config = "[cache]\nmax_keys = 10\n";
  TestServer* server = start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();

  // Known and unknown keys interleaved, each request on the same keep-alive connection.
  const size_t per_round = kKeys + kUnknown;
  auto is_known = [&](size_t i) { return i % 5 != 4; };  // 4 known, then 1 unknown
  auto known_index = [&](size_t i) { return (i - i / 5) % kKeys; };
  auto unknown_index = [&](size_t i) { return (i / 5) % kUnknown; };
  auto make = [&](size_t i) {
    return get_with_key("/orders/" + std::to_string(i),
                        is_known(i) ? values[known_index(i)] : unknown[unknown_index(i)]);
  };
  auto check = [&](size_t i, const std::optional<Response>& r) {
    return is_known(i) ? allowed(r, records[known_index(i)].id, "orders")
                       : rejected(r, 401, "invalid_api_key");
  };
  for (int round = 0; round < kRounds; ++round) {
    ASSERT_TRUE(on_one_connection(port, per_round, make, check)) << "round " << round;
  }

  // The same mix pipelined: deferred (fetched) and immediate answers come back in order.
  RawClient client;
  ASSERT_TRUE(client.connect(port));
  constexpr size_t kBatch = 25;
  for (size_t start_at = 0; start_at < per_round; start_at += kBatch) {
    std::string batch;
    for (size_t i = start_at; i < start_at + kBatch; ++i) batch += make(i);
    ASSERT_TRUE(client.send(batch));
    const std::vector<Response> responses = client.read_responses(kBatch);
    ASSERT_EQ(responses.size(), kBatch)
        << "batch at " << start_at << " (" << to_string(client.last_end()) << ")";
    for (size_t i = 0; i < kBatch; ++i) {
      ASSERT_TRUE(check(start_at + i, responses[i])) << "pipelined request " << start_at + i;
    }
  }
}

TEST_F(AuthCheck, TheBootstrapAdminKeyFromTheEnvironmentExistsButGrantsNoDataApi) {
  const std::string admin_value = secret("bootstrap-admin");
  const std::string unknown_value = secret("not-the-admin");
  ServerOptions options;
  options.env = {{"KEYGATE_BOOTSTRAP_ADMIN_KEY", admin_value}};
  options.capture_stderr = true;
  TestServer* server = start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->data_port();

  // 403, not 401: the key exists, it just names no data API ("admin" is not a wildcard).
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/orders/1", admin_value)), 403, "api_not_permitted"));
  EXPECT_TRUE(rejected(round_trip(port, http_request("GET", "/billing?key=" + admin_value)), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(
      rejected(round_trip(port, get_with_key("/orders/1", unknown_value)), 401, "invalid_api_key"));
  EXPECT_TRUE(server->wait_for_error_output("from KEYGATE_BOOTSTRAP_ADMIN_KEY", Millis(3000)))
      << server->error_output();
  stop_cleanly(*server);
  EXPECT_EQ(server->error_output().find(admin_value), std::string::npos)
      << "the operator's admin key is echoed on stderr:\n"
      << server->error_output();

  // The store has a key now: another bootstrap value is ignored, the first key stays.
  const std::string second_value = secret("second-bootstrap");
  options.env = {{"KEYGATE_BOOTSTRAP_ADMIN_KEY", second_value}};
  TestServer* again = start(options);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(rejected(round_trip(again->data_port(), get_with_key("/orders/1", admin_value)), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(rejected(round_trip(again->data_port(), get_with_key("/orders/1", second_value)), 401,
                       "invalid_api_key"));
  stop_cleanly(*again);
  EXPECT_EQ(again->error_output().find("admin key"), std::string::npos) << again->error_output();
}

TEST_F(AuthCheck, WithoutTheEnvironmentAGeneratedAdminKeyIsPrintedOnceAndAccepted) {
  ServerOptions options;
  options.env_unset = {"KEYGATE_BOOTSTRAP_ADMIN_KEY"};
  options.capture_stderr = true;
  TestServer* first = start(options);
  ASSERT_NE(first, nullptr);
  constexpr std::string_view kLabel = "admin key: ";
  ASSERT_TRUE(first->wait_for_error_output("admin key: kg_", Millis(3000)))
      << first->error_output();
  const std::string& err = first->error_output();
  const size_t at = err.find(kLabel) + kLabel.size();
  const std::string admin_value = err.substr(at, kGeneratedKeyChars);
  remember_secret(admin_value);
  ASSERT_TRUE(generated_checksum_ok(admin_value)) << err;
  EXPECT_TRUE(err.size() == at + kGeneratedKeyChars || err[at + kGeneratedKeyChars] == '\n') << err;

  EXPECT_TRUE(rejected(round_trip(first->data_port(), get_with_key("/orders/1", admin_value)), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(
      rejected(round_trip(first->data_port(), get_with_key("/orders/1", flip(admin_value, 10))),
               401, "invalid_api_key"));
  stop_cleanly(*first);
  EXPECT_EQ(first->error_output().find(kLabel), first->error_output().rfind(kLabel))
      << "printed more than once:\n"
      << first->error_output();

  TestServer* second = start(options);
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(rejected(round_trip(second->data_port(), get_with_key("/orders/1", admin_value)), 403,
                       "api_not_permitted"))
      << "the admin key survives a restart";
  stop_cleanly(*second);
  EXPECT_EQ(second->error_output().find("admin key"), std::string::npos)
      << "a second start printed a key again:\n"
      << second->error_output();
}

// A start that fails after creating the generated admin key (here: its admin port is taken)
// shows no key and takes it out again, so the next start makes and shows one: an operator who
// missed a line printed just before the failure is not locked out.
TEST_F(AuthCheck, AStartThatFailsShowsNoAdminKeyAndTheNextStartShowsOne) {
  const int taken = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(taken, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(taken, 1), 0);
  ASSERT_EQ(getsockname(taken, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  ServerOptions options;
  options.env_unset = {"KEYGATE_BOOTSTRAP_ADMIN_KEY"};
  options.capture_stderr = true;
  options.data_dir = data_dir();
  options.extra_config = std::string(kApisConfig);
  options.admin_port = ntohs(addr.sin_port);
  TestServer failing(options);
  std::string error;
  EXPECT_FALSE(failing.start(&error, Millis(5000)));
  close(taken);
  EXPECT_NE(failing.error_output().find("cannot listen"), std::string::npos)
      << failing.error_output();
  EXPECT_EQ(failing.error_output().find("admin key"), std::string::npos)
      << "a failed start showed an admin key:\n"
      << failing.error_output();

  options.admin_port = 0;
  options.data_dir.clear();  // start() below sets it to the same directory again
  options.extra_config.clear();
  TestServer* next = start(options);
  ASSERT_NE(next, nullptr);
  constexpr std::string_view kLabel = "admin key: ";
  ASSERT_TRUE(next->wait_for_error_output("admin key: kg_", Millis(3000)))
      << next->error_output();
  const std::string& err = next->error_output();
  const std::string admin_value = err.substr(err.find(kLabel) + kLabel.size(), kGeneratedKeyChars);
  remember_secret(admin_value);
  EXPECT_TRUE(rejected(round_trip(next->data_port(), get_with_key("/orders/1", admin_value)), 403,
                       "api_not_permitted"))
      << "the key shown is an admin key";
  stop_cleanly(*next);
}

}  // namespace
}  // namespace keygate::integration
