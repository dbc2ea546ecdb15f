// Integration tests of /_keygate/auth, the endpoint other proxies ask (nginx auth_request,
// Envoy ext_authz): the real keygate binary on loopback, keys and a user written beforehand
// through KeyService, both ways of describing a request, and the data plane's answers.
#include <gtest/gtest.h>
#include <signal.h>

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/api_key.h"
#include "core/permissions.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"
#include "tests/integration/orders_billing_keys.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";

class AuthEndpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    OrdersBillingKeys keys;
    ASSERT_NO_FATAL_FAILURE(seed_orders_billing_keys(dir_.path() + "/data", "it-auth-", &keys));
    orders_key_ = keys.orders;
    billing_key_ = keys.billing;
    alice_key_ = keys.alice;
    ServerOptions options;
    options.data_dir = dir_.path() + "/data";
    options.extra_config = std::string(kOrdersAndBillingApis);
    options.capture_stderr = true;
    server_ = std::make_unique<TestServer>(std::move(options));
    std::string error;
    ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
  }

  void TearDown() override {
    if (server_ == nullptr || !server_->running()) return;
    const ExitStatus status = server_->stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server_->error_output();
  }

  std::optional<Response> ask(std::string_view method, std::string_view target,
                              const std::vector<std::string>& headers, std::string_view body = {}) {
    return round_trip(server_->data_port(), http_request(method, target, headers, body));
  }

  // An nginx-form auth request: GET /_keygate/auth describing `method` `uri`.
  std::optional<Response> ask_nginx(std::string_view method, std::string_view uri,
                                    std::vector<std::string> headers = {}) {
    headers.push_back("X-Original-URI: " + std::string(uri));
    headers.push_back("X-Original-Method: " + std::string(method));
    return ask("GET", "/_keygate/auth", headers);
  }

  ::testing::AssertionResult allowed(const std::optional<Response>& r, std::string_view key_id,
                                     std::string_view api,
                                     std::optional<std::string_view> user = std::nullopt) {
    if (!r || r->status != 200) return ::testing::AssertionFailure() << "want 200; " << show(r);
    if (r->header("X-Keygate-Key-Id") != std::string(key_id) ||
        r->header("X-Keygate-Api") != std::string(api) ||
        r->header("X-Keygate-User") != (user ? std::optional<std::string>(*user) : std::nullopt)) {
      return ::testing::AssertionFailure() << "wrong identity headers; " << show(r);
    }
    if (string_member(r->body, "key_id") != key_id || string_member(r->body, "api") != api) {
      return ::testing::AssertionFailure() << "wrong body; " << show(r);
    }
    return no_secret(r);
  }

  ::testing::AssertionResult rejected(const std::optional<Response>& r, int status,
                                      std::string_view code) {
    if (!r || r->status != status || string_member(r->body, "error") != code) {
      return ::testing::AssertionFailure() << "want " << status << " " << code << "; " << show(r);
    }
    if ((status == 401) != (r->header("WWW-Authenticate") == std::string(kChallenge))) {
      return ::testing::AssertionFailure() << "challenge on 401 only; " << show(r);
    }
    if (r->header("X-Keygate-Key-Id")) {
      return ::testing::AssertionFailure() << "a rejection names a key; " << show(r);
    }
    return no_secret(r);
  }

  ::testing::AssertionResult no_secret(const std::optional<Response>& r) {
    for (const std::string* k : {&orders_key_, &billing_key_, &alice_key_}) {
      if (r->raw.find(*k) != std::string::npos) {
        return ::testing::AssertionFailure() << "the response carries a key; " << show(r);
      }
    }
    return ::testing::AssertionSuccess();
  }

  TempDir dir_;
  std::unique_ptr<TestServer> server_;
  std::string orders_key_;
  std::string billing_key_;
  std::string alice_key_;
};

TEST_F(AuthEndpoint, NginxFormAllowsAKeyFromTheHeaderOrTheOriginalUrisQuery) {
  EXPECT_TRUE(allowed(ask_nginx("GET", "/orders/7?x=1", {"X-ApiKey: " + orders_key_}),
                      "korders00001", "orders"));
  EXPECT_TRUE(
      allowed(ask_nginx("DELETE", "/orders/7?x=1&key=" + orders_key_), "korders00001", "orders"));
  // Proxies send HEAD subrequests for HEAD requests: the headers are what matters.
  const std::optional<Response> head = round_trip(
      server_->data_port(),
      http_request(
          "HEAD", "/_keygate/auth",
          {"X-Original-URI: /orders/1", "X-Original-Method: HEAD", "X-ApiKey: " + orders_key_}),
      Millis(3000));
  ASSERT_TRUE(head) << show(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->header("X-Keygate-Key-Id"), "korders00001");
}

TEST_F(AuthEndpoint, NginxFormChecksTheOriginalMethodAndPathAgainstUserGrants) {
  EXPECT_TRUE(allowed(ask_nginx("GET", "/orders/public/3", {"X-ApiKey: " + alice_key_}),
                      "kalice000001", "orders", "alice"));
  // The auth request itself is a GET; the grant is checked against X-Original-Method.
  EXPECT_TRUE(rejected(ask_nginx("POST", "/orders/public/3", {"X-ApiKey: " + alice_key_}), 403,
                       "user_not_permitted"));
  EXPECT_TRUE(rejected(ask_nginx("GET", "/orders/private/3", {"X-ApiKey: " + alice_key_}), 403,
                       "user_not_permitted"));
}

TEST_F(AuthEndpoint, NginxFormGivesTheDataPlanesRejections) {
  EXPECT_TRUE(rejected(ask_nginx("GET", "/orders/1"), 401, "missing_api_key"));
  EXPECT_TRUE(rejected(ask_nginx("GET", "/orders/1", {"X-ApiKey: it-no-such-key"}), 401,
                       "invalid_api_key"));
  EXPECT_TRUE(rejected(ask_nginx("GET", "/orders/1", {"X-ApiKey: " + billing_key_}), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(
      rejected(ask_nginx("GET", "/inventory/1", {"X-ApiKey: " + orders_key_}), 404, "no_route"));
  EXPECT_TRUE(rejected(ask_nginx("GET", "/orders/../admin", {"X-ApiKey: " + orders_key_}), 400,
                       "invalid_path"));
  EXPECT_TRUE(
      rejected(ask_nginx("GET", "/orders/1?key=" + billing_key_, {"X-ApiKey: " + orders_key_}), 401,
               "ambiguous_api_key"));
}

TEST_F(AuthEndpoint, NginxFormNeedsBothHeaders) {
  EXPECT_TRUE(rejected(
      ask("GET", "/_keygate/auth", {"X-Original-URI: /orders/1", "X-ApiKey: " + orders_key_}), 400,
      "invalid_auth_request"));
  EXPECT_TRUE(
      rejected(ask("GET", "/_keygate/auth", {"X-Original-Method: GET", "X-ApiKey: " + orders_key_}),
               400, "invalid_auth_request"));
  EXPECT_TRUE(rejected(ask("GET", "/_keygate/auth", {"X-ApiKey: " + orders_key_}), 400,
                       "invalid_auth_request"));
}

TEST_F(AuthEndpoint, ExtAuthzFormDescribesThePathAfterThePrefix) {
  EXPECT_TRUE(allowed(ask("GET", "/_keygate/auth/orders/7?x=1", {"X-ApiKey: " + orders_key_}),
                      "korders00001", "orders"));
  EXPECT_TRUE(allowed(ask("GET", "/_keygate/auth/orders/7?key=" + orders_key_, {}), "korders00001",
                      "orders"));
  // A JSON body of the auth request counts as for the data plane.
  EXPECT_TRUE(allowed(ask("POST", "/_keygate/auth/orders", {"Content-Type: application/json"},
                          "{\"API_Key\":\"" + orders_key_ + "\"}"),
                      "korders00001", "orders"));
  // The auth request's own method is the described one.
  EXPECT_TRUE(rejected(ask("POST", "/_keygate/auth/orders/public/1", {"X-ApiKey: " + alice_key_}),
                       403, "user_not_permitted"));
  EXPECT_TRUE(allowed(ask("GET", "/_keygate/auth/orders/public/1", {"X-ApiKey: " + alice_key_}),
                      "kalice000001", "orders", "alice"));
  EXPECT_TRUE(rejected(ask("GET", "/_keygate/auth/billing/1", {}), 401, "missing_api_key"));
  EXPECT_TRUE(rejected(ask("GET", "/_keygate/auth/billing/1", {"X-ApiKey: " + orders_key_}), 403,
                       "api_not_permitted"));
  EXPECT_TRUE(rejected(ask("GET", "/_keygate/auth/nowhere", {"X-ApiKey: " + orders_key_}), 404,
                       "no_route"));
  EXPECT_TRUE(rejected(ask("GET", "/_keygate/auth/orders/%2e%2e/x", {"X-ApiKey: " + orders_key_}),
                       400, "invalid_path"));
}

TEST_F(AuthEndpoint, AnswersOnOneKeptAliveConnection) {
  RawClient client;
  std::string error;
  ASSERT_TRUE(client.connect(server_->data_port(), &error)) << error;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client.send(http_request("GET", "/_keygate/auth",
                                         {"X-Original-URI: /orders/" + std::to_string(i),
                                          "X-Original-Method: GET", "X-ApiKey: " + orders_key_})));
    const std::optional<Response> r = client.read_response();
    ASSERT_TRUE(allowed(r, "korders00001", "orders"));
    EXPECT_FALSE(r->connection_close());
  }
}

// Refusals of /_keygate/auth keep the connection too: nginx (keepalive in its upstream block)
// and Envoy reuse it for the next auth request. docs/proxies.md says so.
TEST_F(AuthEndpoint, RejectionsKeepTheConnectionAlive) {
  RawClient client;
  std::string error;
  ASSERT_TRUE(client.connect(server_->data_port(), &error)) << error;
  const auto nginx = [](std::string_view uri, std::vector<std::string> headers) {
    headers.push_back("X-Original-URI: " + std::string(uri));
    headers.push_back("X-Original-Method: GET");
    return http_request("GET", "/_keygate/auth", headers);
  };
  struct Step {
    std::string request;
    int status;
    std::string_view code;
  };
  const std::vector<Step> steps = {
      {nginx("/orders/1", {}), 401, "missing_api_key"},
      {nginx("/orders/1", {"X-ApiKey: it-no-such-key"}), 401, "invalid_api_key"},
      {http_request("GET", "/_keygate/auth/orders/1", {}), 401, "missing_api_key"},
      {nginx("/billing/1", {"X-ApiKey: " + orders_key_}), 403, "api_not_permitted"},
      {nginx("/inventory/1", {"X-ApiKey: " + orders_key_}), 404, "no_route"},
      {nginx("/orders/../admin", {"X-ApiKey: " + orders_key_}), 400, "invalid_path"},
      {http_request("GET", "/_keygate/auth", {"X-Original-URI: /orders/1"}), 400,
       "invalid_auth_request"},
  };
  for (const Step& step : steps) {
    SCOPED_TRACE(step.request);
    ASSERT_TRUE(client.send(step.request));
    const std::optional<Response> r = client.read_response();
    ASSERT_TRUE(rejected(r, step.status, step.code)) << to_string(client.last_end());
    EXPECT_FALSE(r->connection_close()) << r->raw;
  }
  ASSERT_TRUE(client.send(nginx("/orders/1", {"X-ApiKey: " + orders_key_})));
  EXPECT_TRUE(allowed(client.read_response(), "korders00001", "orders"));
}

}  // namespace
}  // namespace keygate::integration
