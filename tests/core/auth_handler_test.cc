#include "core/auth_handler.h"

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "core/api_key.h"
#include "core/handler.h"
#include "core/http_request.h"
#include "core/key_directory.h"
#include "core/permissions.h"
#include "core/response_writer.h"
#include "tests/core/handler_test_support.h"

namespace keygate {
namespace {

using test::FakeContext;
using test::FakeDirectory;
using test::kDate;
using test::kNow;
using test::parse_response;
using test::Response;
using test::TestRequest;

constexpr size_t kBodyInspectBytesMax = 4096;
constexpr std::string_view kJson = "application/json";
constexpr std::string_view kForm = "application/x-www-form-urlencoded";
constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";

// Operator-set values (not of the generated shape) used as keys in most tests.
constexpr std::string_view kAdminLikeKey = "orders-key-without-user";
constexpr std::string_view kAliceKey = "orders-key-of-alice";
constexpr std::string_view kBillingKey = "billing-only-key";
constexpr std::string_view kShopKey = "shop-key-without-user";
constexpr std::string_view kBobKey = "shop-key-of-bob";
// Index of the "shop" API (the one with upstreams) in the registry.
constexpr uint32_t kShopIndex = 2;

std::string generated_value(uint8_t seed) {
  std::array<uint8_t, kGeneratedKeyRandomBytes> random{};
  for (size_t i = 0; i < random.size(); ++i) random[i] = static_cast<uint8_t>(seed + i * 7);
  return generate_key_value(random);
}

KeyRecord key_record(std::string id, std::vector<std::string> apis,
                     std::optional<std::string> user = std::nullopt) {
  KeyRecord r;
  r.id = std::move(id);
  r.apis = std::move(apis);
  r.user = std::move(user);
  r.created_at = kNow - 1000;
  r.updated_at = kNow - 1000;
  return r;
}

TestRequest get(std::string target) { return TestRequest("GET", std::move(target)); }

void expect_key_not_echoed(const Response& response, std::string_view key) {
  EXPECT_EQ(response.raw.find(key), std::string::npos)
      << "the response contains the key value " << key << ":\n"
      << response.raw;
}

std::string ok_body(std::string_view key_id, std::string_view api, std::string_view user_json) {
  return "{\"key_id\":\"" + std::string(key_id) + "\",\"api\":\"" + std::string(api) +
         "\",\"user\":" + std::string(user_json) + "}\n";
}

class AuthHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ApiConfig orders;
    orders.name = "orders";
    orders.routes = {"/orders"};
    ApiConfig billing;
    billing.name = "billing";
    // A route under another API's, with a character a client may also send percent-encoded.
    billing.routes = {"/billing", "/orders/refunds:void"};
    ApiConfig shop;  // forwarded: it has upstreams
    shop.name = "shop";
    shop.routes = {"/shop"};
    shop.upstreams = {"127.0.0.1:9"};
    ASSERT_TRUE(registry_.init({orders, billing, shop}, &error)) << error;
    ASSERT_EQ(registry_.apis()[kShopIndex].name, "shop");
    directory_.add_key(kAdminLikeKey, key_record("kadminlike01", {"orders"}));
    directory_.add_key(kAliceKey, key_record("kalice000001", {"orders"}, "alice"));
    directory_.add_key(kBillingKey, key_record("kbilling0001", {"billing"}));
    directory_.add_user({"alice", {{"orders", {"GET"}, "/orders/public"}}});
    directory_.add_key(kShopKey, key_record("kshop0000001", {"shop", "orders"}));
    directory_.add_key(kBobKey, key_record("kbob00000001", {"shop"}, "bob"));
    directory_.add_user({"bob", {{"shop", {"GET"}, "/shop/public"}}});
  }

  // A safety net for tests that stop early: a still-pending request is abandoned, as the
  // worker would on close, so a failed assertion does not turn into a leak report too.
  void TearDown() override {
    for (FakeContext* ctx : {&ctx_, &other_ctx_}) {
      if (ctx->state != nullptr) handler_.abandon(*ctx);
    }
  }

  // Handles the request and expects a complete response (no deferral).
  Response send(TestRequest& request) {
    const Handler::Result result = call(request, &AuthHandler::handle, ctx_);
    EXPECT_EQ(result, Handler::Result::kDone);
    return parse_response(out_);
  }

  // Handles the request and expects it to be deferred without any response bytes.
  void send_expecting_deferral(TestRequest& request, FakeContext& ctx) {
    const size_t fetches_before = directory_.fetches.size();
    EXPECT_EQ(call(request, &AuthHandler::handle, ctx), Handler::Result::kPending);
    EXPECT_TRUE(out_.empty()) << out_;
    EXPECT_NE(ctx.state, nullptr);
    EXPECT_EQ(directory_.fetches.size(), fetches_before + 1);
  }

  // Plays the worker after the ticket was posted: resumes and expects a complete response.
  Response resume(TestRequest& request, FakeContext& ctx) {
    EXPECT_EQ(call(request, &AuthHandler::resume, ctx), Handler::Result::kDone);
    EXPECT_EQ(ctx.state, nullptr);
    return parse_response(out_);
  }

  // The fetch the handler started last; fails the test when there is none.
  FakeDirectory::Fetch& last_fetch() {
    if (directory_.fetches.empty()) {
      ADD_FAILURE() << "no fetch was started";
      directory_.fetches.push_back({});
    }
    return directory_.fetches.back();
  }

  // Plays one whole deferral on ctx_: handles the request (expecting a deferral), answers the
  // fetch it started with `answer` as the fetching thread would, posts the ticket and resumes.
  Response fetch_and_resume(TestRequest& request, KeyDirectory::FetchResult answer) {
    send_expecting_deferral(request, ctx_);
    FakeDirectory::Fetch& fetch = last_fetch();
    if (fetch.out == nullptr) {
      ADD_FAILURE() << "the fetch has no result to fill";
      return {};
    }
    *fetch.out = std::move(answer);
    fetch.ticket.post();
    return resume(request, ctx_);
  }

  // Handles the request and expects it to be forwarded: kForward, no response bytes.
  ForwardTarget forward(TestRequest& request, FakeContext& ctx) {
    ctx.forward = ForwardTarget{};
    EXPECT_EQ(call(request, &AuthHandler::handle, ctx), Handler::Result::kForward);
    EXPECT_TRUE(out_.empty()) << out_;
    EXPECT_EQ(ctx.state, nullptr);
    return ctx.forward;
  }

  // resume() on ctx, whatever it returns.
  Handler::Result call_resume(TestRequest& request, FakeContext& ctx) {
    return call(request, &AuthHandler::resume, ctx);
  }
  // handle_head() / resume_head() on ctx_, whatever they return.
  Handler::Result call_head(TestRequest& request) {
    return call(request, &AuthHandler::handle_head, ctx_);
  }
  Handler::Result call_resume_head(TestRequest& request) {
    return call(request, &AuthHandler::resume_head, ctx_);
  }

  // handle_head() on ctx_; kNeedBody and kForward must not have written anything.
  Handler::Result head(TestRequest& request) {
    ctx_.forward = ForwardTarget{};
    const Handler::Result result = call_head(request);
    EXPECT_NE(result, Handler::Result::kPending);
    if (result != Handler::Result::kDone) {
      EXPECT_TRUE(out_.empty()) << out_;
    }
    EXPECT_EQ(ctx_.defer_calls, 0);
    EXPECT_EQ(ctx_.state, nullptr);
    return result;
  }
  Response head_response() const { return parse_response(out_); }

  ApiRegistry registry_;
  FakeDirectory directory_;
  AuthHandler handler_{registry_, directory_, kBodyInspectBytesMax};
  FakeContext ctx_{7};
  FakeContext other_ctx_{8};
  std::string out_;

 private:
  using Method = Handler::Result (AuthHandler::*)(const HttpRequest&, ResponseWriter&,
                                                  RequestContext&) noexcept;
  Handler::Result call(TestRequest& request, Method method, FakeContext& ctx) {
    out_.clear();
    const HttpRequest& view = request.view();
    ResponseWriter writer(out_, kDate, view.is_head(), view.keep_alive);
    const Handler::Result result = (handler_.*method)(view, writer, ctx);
    if (result == Handler::Result::kDone) {
      EXPECT_TRUE(writer.finished()) << "kDone without a complete response";
    }
    return result;
  }
};

// --- Routes answered before any key check -------------------------------------------------

TEST_F(AuthHandlerTest, HealthzAnswersOkWithoutAKey) {
  TestRequest request = get("/healthz");
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(directory_.find_key_calls, 0);
}

TEST_F(AuthHandlerTest, NonNormalizedPathIsRejectedBeforeRoutingEvenWithAValidKey) {
  // "/orders/../admin" starts with the "/orders" route: only the path check stops it.
  TestRequest request = get("/orders/../admin");
  request.api_key(kAdminLikeKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_path");
  EXPECT_EQ(directory_.find_key_calls, 0);
  expect_key_not_echoed(r, kAdminLikeKey);
}

TEST_F(AuthHandlerTest, PathThatRoutesToAnotherApiOncePercentDecodedIsRejected) {
  // "/orders/refunds%3Avoid" matches "/orders" as sent, and billing's "/orders/refunds:void"
  // once decoded, as Go's net/http or Spring route it: an orders key must not reach it.
  for (const char* path : {"/orders/refunds%3Avoid", "/orders/refunds%3avoid/7",
                           "/orders/refunds%3Avoid;x"}) {
    TestRequest request = get(path);
    request.api_key(kAdminLikeKey);
    const Response r = send(request);
    EXPECT_EQ(r.status, 400) << path;
    EXPECT_EQ(r.error_code(), "invalid_path") << path;
  }
  // Escapes that route alike either way, and the raw spelling, are routed as before.
  for (const auto& [path, key, status] :
       {std::tuple("/orders/refunds%20x", kAdminLikeKey, 200),
        std::tuple("/orders/refunds:voids", kAdminLikeKey, 200),
        std::tuple("/orders/refunds:void", kBillingKey, 200),
        std::tuple("/orders/refunds:void", kAdminLikeKey, 403)}) {
    TestRequest request = get(path);
    request.api_key(key);
    EXPECT_EQ(send(request).status, status) << path;
  }
}

TEST_F(AuthHandlerTest, PathNoApiServesIsNotFoundEvenWithAValidKey) {
  TestRequest request = get("/inventory/1");
  request.api_key(kAdminLikeKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "no_route");
  EXPECT_EQ(directory_.find_key_calls, 0);
  expect_key_not_echoed(r, kAdminLikeKey);
}

// --- Key extraction failures --------------------------------------------------------------

TEST_F(AuthHandlerTest, MissingKeyIsUnauthorizedWithAnApiKeyChallenge) {
  TestRequest request = get("/orders/1");
  const Response r = send(request);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "missing_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  EXPECT_EQ(directory_.find_key_calls, 0);
}

TEST_F(AuthHandlerTest, HeaderAndQueryKeysThatDifferAreAmbiguous) {
  TestRequest request = get("/orders/1?key=" + std::string(kBillingKey));
  request.api_key(kAdminLikeKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "ambiguous_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  EXPECT_EQ(directory_.find_key_calls, 0);
  expect_key_not_echoed(r, kAdminLikeKey);
  expect_key_not_echoed(r, kBillingKey);
}

TEST_F(AuthHandlerTest, JsonBodyThatDoesNotParseIsABadRequestWithoutChallenge) {
  TestRequest request("POST", "/orders");
  request.body(kJson, "{\"API_Key\":\"" + std::string(kAdminLikeKey) + "\",");
  const Response r = send(request);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_body");
  EXPECT_FALSE(r.has_header("WWW-Authenticate"));
  EXPECT_EQ(directory_.find_key_calls, 0);
  expect_key_not_echoed(r, kAdminLikeKey);
}

TEST_F(AuthHandlerTest, FormBodyOverTheInspectLimitIsTooLarge) {
  TestRequest request("POST", "/orders");
  request.body(kForm, "key=" + std::string(kAdminLikeKey) +
                          "&pad=" + std::string(kBodyInspectBytesMax, 'x'));
  const Response r = send(request);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.error_code(), "body_too_large");
  EXPECT_EQ(directory_.find_key_calls, 0);
  expect_key_not_echoed(r, kAdminLikeKey);
}

// --- Key resolution -----------------------------------------------------------------------

TEST_F(AuthHandlerTest, UnknownKeyIsUnauthorizedInvalidApiKey) {
  constexpr std::string_view kUnknown = "no-such-key-value";
  TestRequest request = get("/orders/1");
  request.api_key(kUnknown);
  const Response r = send(request);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  EXPECT_EQ(directory_.find_key_calls, 1);
  expect_key_not_echoed(r, kUnknown);
}

TEST_F(AuthHandlerTest, GeneratedShapeWithWrongChecksumIsRejectedWithoutALookup) {
  std::string mistyped = generated_value(3);
  mistyped.back() = mistyped.back() == 'A' ? 'B' : 'A';
  ASSERT_TRUE(has_generated_shape(mistyped));
  ASSERT_FALSE(generated_checksum_ok(mistyped));
  // Even a directory that knows the value must not be asked: the checksum alone decides.
  directory_.add_key(mistyped, key_record("kmistyped001", {"orders"}));
  TestRequest request = get("/orders/1");
  request.api_key(mistyped);
  const Response r = send(request);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  EXPECT_EQ(directory_.find_key_calls, 0);
  expect_key_not_echoed(r, mistyped);
}

TEST_F(AuthHandlerTest, ValidGeneratedKeyWithoutUserIsAllowed) {
  const std::string value = generated_value(5);
  ASSERT_TRUE(generated_checksum_ok(value));
  directory_.add_key(value, key_record("kgenerated01", {"orders"}));
  TestRequest request = get("/orders/7");
  request.api_key(value);
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_EQ(r.body, ok_body("kgenerated01", "orders", "null"));
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kgenerated01");
  EXPECT_EQ(r.header("X-Keygate-Api"), "orders");
  EXPECT_FALSE(r.has_header("X-Keygate-User"));
  EXPECT_EQ(directory_.find_key_calls, 1);
  expect_key_not_echoed(r, value);
}

TEST_F(AuthHandlerTest, KeyWithUserWhoseGrantMatchesIsAllowedAndNamesTheUser) {
  TestRequest request = get("/orders/public/3");
  request.api_key(kAliceKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, ok_body("kalice000001", "orders", "\"alice\""));
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kalice000001");
  EXPECT_EQ(r.header("X-Keygate-Api"), "orders");
  EXPECT_EQ(r.header("X-Keygate-User"), "alice");
}

TEST_F(AuthHandlerTest, UserGrantForAnotherMethodIsForbidden) {
  TestRequest request("POST", "/orders/public/3");
  request.api_key(kAliceKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  EXPECT_FALSE(r.has_header("X-Keygate-Key-Id"));
  expect_key_not_echoed(r, kAliceKey);
}

TEST_F(AuthHandlerTest, MethodOverrideHeaderTheUserMayNotUseIsForbidden) {
  // alice may GET /orders/public; an upstream honouring the override would see a DELETE.
  TestRequest request = get("/orders/public/3");
  request.api_key(kAliceKey).header("X-HTTP-Method-Override", "DELETE");
  const Response r = send(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  expect_key_not_echoed(r, kAliceKey);

  TestRequest same = get("/orders/public/3");
  same.api_key(kAliceKey).header("X-HTTP-Method-Override", "get");
  EXPECT_EQ(send(same).status, 200);
}

TEST_F(AuthHandlerTest, UserGrantForAnotherPathIsForbidden) {
  TestRequest request = get("/orders/private/3");
  request.api_key(kAliceKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  expect_key_not_echoed(r, kAliceKey);
}

TEST_F(AuthHandlerTest, KeyWhoseUserWasDeletedIsForbidden) {
  constexpr std::string_view kOrphanKey = "key-of-deleted-user";
  directory_.add_key(kOrphanKey, key_record("korphan00001", {"orders"}, "bob"));
  TestRequest request = get("/orders/public/3");
  request.api_key(kOrphanKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  expect_key_not_echoed(r, kOrphanKey);
}

TEST_F(AuthHandlerTest, KeyWhoseApisLackTheRoutesApiIsForbidden) {
  TestRequest request = get("/orders/1");
  request.api_key(kBillingKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "api_not_permitted");
  EXPECT_FALSE(r.has_header("WWW-Authenticate"));
  expect_key_not_echoed(r, kBillingKey);
}

TEST_F(AuthHandlerTest, DisabledKeyIsUnauthorizedInvalidApiKey) {
  constexpr std::string_view kDisabledKey = "disabled-orders-key";
  KeyRecord record = key_record("kdisabled001", {"orders"});
  record.enabled = false;
  directory_.add_key(kDisabledKey, record);
  TestRequest request = get("/orders/1");
  request.api_key(kDisabledKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  expect_key_not_echoed(r, kDisabledKey);
}

TEST_F(AuthHandlerTest, KeyExpiresAtItsExpiryTimeByTheContextsClock) {
  constexpr std::string_view kExpiringKey = "expiring-orders-key";
  KeyRecord record = key_record("kexpiring001", {"orders"});
  record.expires_at = kNow + 100;
  directory_.add_key(kExpiringKey, record);
  TestRequest request = get("/orders/1");
  request.api_key(kExpiringKey);

  ctx_.now = kNow + 99;
  EXPECT_EQ(send(request).status, 200);

  ctx_.now = kNow + 100;
  const Response r = send(request);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  expect_key_not_echoed(r, kExpiringKey);
}

// --- Key sources and HEAD -----------------------------------------------------------------

TEST_F(AuthHandlerTest, KeyInQueryIsAccepted) {
  TestRequest request = get("/orders/1?x=1&key=" + std::string(kAdminLikeKey));
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kadminlike01");
}

TEST_F(AuthHandlerTest, KeyInFormBodyIsAccepted) {
  TestRequest request("POST", "/orders");
  request.body(kForm, "item=7&key=" + std::string(kAdminLikeKey));
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kadminlike01");
}

TEST_F(AuthHandlerTest, KeyInJsonBodyIsAccepted) {
  TestRequest request("POST", "/orders");
  request.body(kJson, "{\"item\":7,\"API_Key\":\"" + std::string(kAdminLikeKey) + "\"}");
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kadminlike01");
}

TEST_F(AuthHandlerTest, HeadRequestGetsHeadersAndContentLengthButNoBody) {
  TestRequest request("HEAD", "/orders/1");
  request.api_key(kAdminLikeKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "");
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kadminlike01");
  EXPECT_EQ(r.header("Content-Length"),
            std::to_string(ok_body("kadminlike01", "orders", "null").size()));
}

// --- Header safety ------------------------------------------------------------------------

// A user name that cannot be a header value as written (from a store older than the
// printable-ASCII and no-surrounding-space rules) can neither be sent as X-Keygate-User nor be left out (the upstream would take the
// key for a user-less, administrator key): the request is refused, nothing injected.
TEST_F(AuthHandlerTest, UserNameThatCannotBeAHeaderValueIsRefusedNotOmitted) {
  // " " would arrive as no X-Keygate-User at all, "alice " as alice (receivers strip spaces).
  const std::string names[] = {"eve\r\nX-Injected: 1", "j\xc3\xbc" "rgen", " ", "alice "};
  for (const std::string& name : names) {
    const std::string key = "key-of-" + std::to_string(name.size());
    directory_.add_key(key, key_record("keve0000000" + std::to_string(name.size() % 10),
                                       {"orders"}, name));
    directory_.add_user({name, {{"orders", {}, ""}}});
    TestRequest request = get("/orders/1");
    request.api_key(key);
    const Response r = send(request);
    EXPECT_EQ(r.status, 403) << name;
    EXPECT_NE(r.body.find("user_not_permitted"), std::string::npos) << r.body;
    EXPECT_FALSE(r.has_header("X-Keygate-User"));
    EXPECT_FALSE(r.has_header("X-Injected"));
    EXPECT_EQ(r.raw.find("\r\nX-Injected"), std::string::npos);
  }
}

// --- Partial cache: deferral and resume ---------------------------------------------------

TEST_F(AuthHandlerTest, KeyNotCachedIsFetchedAndTheResumedRequestIsAllowed) {
  directory_.not_cached = true;
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  send_expecting_deferral(request, ctx_);
  EXPECT_EQ(ctx_.defer_calls, 1);
  FakeDirectory::Fetch& fetch = last_fetch();
  EXPECT_EQ(fetch.digest, digest_key(kAdminLikeKey));
  ASSERT_NE(fetch.out, nullptr);
  ASSERT_TRUE(fetch.ticket.valid());

  fetch.out->found = true;
  fetch.out->record = key_record("kfetched0001", {"orders"});
  fetch.ticket.post();
  ASSERT_EQ(ctx_.sink.posts.size(), 1u);
  EXPECT_EQ(ctx_.sink.posts[0].first, 7u);

  const Response r = resume(request, ctx_);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, ok_body("kfetched0001", "orders", "null"));
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kfetched0001");
  EXPECT_EQ(r.header("X-Keygate-Api"), "orders");
  EXPECT_FALSE(r.has_header("X-Keygate-User"));
}

TEST_F(AuthHandlerTest, FetchedKeyWithUserIsCheckedAgainstTheUsersGrants) {
  directory_.not_cached = true;
  directory_.add_user({"carol", {{"orders", {"GET"}, "/orders/public"}}});
  KeyDirectory::FetchResult carols_key;
  carols_key.found = true;
  carols_key.record = key_record("kfetched0002", {"orders"}, "carol");

  TestRequest allowed = get("/orders/public/1");
  allowed.api_key(kAliceKey);
  const Response ok = fetch_and_resume(allowed, carols_key);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.header("X-Keygate-User"), "carol");
  EXPECT_EQ(ok.body, ok_body("kfetched0002", "orders", "\"carol\""));

  TestRequest denied = get("/orders/private/1");
  denied.api_key(kAliceKey);
  const Response r = fetch_and_resume(denied, carols_key);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  expect_key_not_echoed(r, kAliceKey);
}

TEST_F(AuthHandlerTest, FetchedKeyWhoseUserIsGoneIsForbidden) {
  directory_.not_cached = true;
  KeyDirectory::FetchResult orphan;
  orphan.found = true;
  orphan.record = key_record("kfetched0003", {"orders"}, "carol");  // no user carol
  TestRequest request = get("/orders/public/1");
  request.api_key(kAliceKey);
  const Response r = fetch_and_resume(request, orphan);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  expect_key_not_echoed(r, kAliceKey);
}

TEST_F(AuthHandlerTest, FetchedKeyIsCheckedForExpiryAtResumeTime) {
  directory_.not_cached = true;
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  send_expecting_deferral(request, ctx_);
  KeyDirectory::FetchResult* out = last_fetch().out;
  ASSERT_NE(out, nullptr);
  out->found = true;
  out->record = key_record("kfetched0004", {"orders"});
  out->record.expires_at = kNow + 10;
  last_fetch().ticket.post();
  ctx_.now = kNow + 10;  // the fetch took long enough for the key to expire
  const Response r = resume(request, ctx_);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  expect_key_not_echoed(r, kAdminLikeKey);
}

TEST_F(AuthHandlerTest, KeyTheStoreDoesNotKnowIsUnauthorizedAfterResume) {
  directory_.not_cached = true;
  KeyDirectory::FetchResult unknown;
  unknown.found = false;
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  const Response r = fetch_and_resume(request, unknown);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  expect_key_not_echoed(r, kAdminLikeKey);
}

TEST_F(AuthHandlerTest, StoreFailureDuringFetchIsServiceUnavailable) {
  directory_.not_cached = true;
  KeyDirectory::FetchResult store_failed;
  store_failed.failed = true;
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  const Response r = fetch_and_resume(request, store_failed);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.error_code(), "store_unavailable");
  expect_key_not_echoed(r, kAdminLikeKey);
}

// --- A key change while the fetch is out -----------------------------------------------------
// The fetching thread copied the record and posted; then a change completed (its call returned,
// the directory's generation moved on) before the worker resumed. The copy must not decide.

TEST_F(AuthHandlerTest, AKeyDeletedWhileItWasFetchedIsFetchedAgainAndRefused) {
  directory_.not_cached = true;
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  send_expecting_deferral(request, ctx_);
  *last_fetch().out = directory_.answer(digest_key(kAdminLikeKey));
  ASSERT_TRUE(last_fetch().out->found);
  last_fetch().ticket.post();
  directory_.remove_key(digest_key(kAdminLikeKey));
  ++directory_.generation;

  // The cache does not hold the digest: resume() reads the store again, deferring once more.
  EXPECT_EQ(call_resume(request, ctx_), Handler::Result::kPending);
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_NE(ctx_.state, nullptr);
  ASSERT_EQ(directory_.fetches.size(), 2u);
  EXPECT_EQ(last_fetch().digest, digest_key(kAdminLikeKey));
  EXPECT_EQ(ctx_.defer_calls, 2);
  *last_fetch().out = directory_.answer(digest_key(kAdminLikeKey));
  last_fetch().ticket.post();
  const Response r = resume(request, ctx_);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
}

TEST_F(AuthHandlerTest, AKeyDisabledWhileItWasFetchedIsDecidedByTheCache) {
  directory_.not_cached = true;
  TestRequest request = get("/shop/1");
  request.api_key(kShopKey);
  send_expecting_deferral(request, ctx_);
  *last_fetch().out = directory_.answer(digest_key(kShopKey));
  last_fetch().ticket.post();
  KeyRecord disabled = key_record("kshop0000001", {"shop", "orders"});
  disabled.enabled = false;
  directory_.add_key(kShopKey, disabled);
  ++directory_.generation;
  directory_.not_cached = false;  // the change put the record in the cache
  const Response r = resume(request, ctx_);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(directory_.fetches.size(), 1u);
}

TEST_F(AuthHandlerTest, AFetchVoidedByAnotherKeysChangeIsForwardedFromTheCache) {
  directory_.not_cached = true;
  TestRequest request = get("/shop/public/1");
  request.api_key(kBobKey);
  send_expecting_deferral(request, ctx_);
  *last_fetch().out = directory_.answer(digest_key(kBobKey));
  last_fetch().ticket.post();
  ++directory_.generation;
  directory_.not_cached = false;
  ctx_.forward = ForwardTarget{};
  EXPECT_EQ(call_resume(request, ctx_), Handler::Result::kForward);
  EXPECT_EQ(ctx_.state, nullptr);
  EXPECT_EQ(ctx_.forward.key_id, "kbob00000001");
  EXPECT_EQ(ctx_.forward.user, "bob");
}

TEST_F(AuthHandlerTest, AFetchedKeyIsCheckedAgainstItsUserAsItIsAtResume) {
  directory_.not_cached = true;
  TestRequest request = get("/orders/public/1");
  request.api_key(kAliceKey);
  send_expecting_deferral(request, ctx_);
  *last_fetch().out = directory_.answer(digest_key(kAliceKey));
  last_fetch().ticket.post();
  // Users' changes leave the key generation alone; the user is looked up at resume anyway.
  directory_.remove_user("alice");
  Response r = resume(request, ctx_);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");

  directory_.add_user({"alice", {{"billing", {}, ""}}});  // the orders grant is gone
  send_expecting_deferral(request, ctx_);
  *last_fetch().out = directory_.answer(digest_key(kAliceKey));
  last_fetch().ticket.post();
  r = resume(request, ctx_);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
}

TEST_F(AuthHandlerTest, ARequestWhoseFetchesKeepGettingVoidedGets503AfterTheLast) {
  directory_.not_cached = true;
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  send_expecting_deferral(request, ctx_);
  for (int fetch = 1; fetch <= Authenticator::kFetchesMax; ++fetch) {
    ASSERT_EQ(directory_.fetches.size(), static_cast<size_t>(fetch));
    *last_fetch().out = directory_.answer(digest_key(kAdminLikeKey));
    last_fetch().ticket.post();
    ++directory_.generation;  // some key changed while this fetch was out
    if (fetch < Authenticator::kFetchesMax) {
      ASSERT_EQ(call_resume(request, ctx_), Handler::Result::kPending) << fetch;
    }
  }
  const Response r = resume(request, ctx_);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.error_code(), "store_unavailable");
  EXPECT_EQ(directory_.fetches.size(), static_cast<size_t>(Authenticator::kFetchesMax));

  // The state went back to the pool with its count cleared: the next request may fetch again.
  directory_.generation = 0;
  TestRequest next = get("/orders/2");
  next.api_key(kAdminLikeKey);
  send_expecting_deferral(next, ctx_);
  *last_fetch().out = directory_.answer(digest_key(kAdminLikeKey));
  last_fetch().ticket.post();
  EXPECT_EQ(resume(next, ctx_).status, 200);
}

TEST_F(AuthHandlerTest, AbandonedDeferralFreesItsStateAndTheNextDeferralWorks) {
  directory_.not_cached = true;
  TestRequest first = get("/orders/1");
  first.api_key(kAdminLikeKey);
  send_expecting_deferral(first, ctx_);
  ASSERT_NE(last_fetch().out, nullptr);
  // The fetch completes, but the connection closed meanwhile: the worker abandons.
  last_fetch().out->found = true;
  last_fetch().out->record = key_record("kabandoned01", {"orders"});
  last_fetch().ticket.post();
  handler_.abandon(ctx_);
  EXPECT_EQ(ctx_.state, nullptr);

  TestRequest second = get("/orders/2");
  second.api_key(kBillingKey);
  send_expecting_deferral(second, ctx_);
  KeyDirectory::FetchResult* out = last_fetch().out;
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(last_fetch().digest, digest_key(kBillingKey));
  // Nothing of the abandoned request's answer may leak into the next one.
  EXPECT_FALSE(out->found);
  EXPECT_FALSE(out->failed);
  EXPECT_TRUE(out->record.id.empty());
  out->found = true;
  out->record = key_record("kfetched0005", {"orders"});
  last_fetch().ticket.post();
  const Response r = resume(second, ctx_);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kfetched0005");
}

TEST_F(AuthHandlerTest, AbandonWithoutPendingStateDoesNothing) {
  handler_.abandon(ctx_);
  EXPECT_EQ(ctx_.state, nullptr);
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey);
  EXPECT_EQ(send(request).status, 200);
}

TEST_F(AuthHandlerTest, ConcurrentDeferralsKeepTheirOwnFetchResults) {
  directory_.not_cached = true;
  TestRequest on_first = get("/orders/1");
  on_first.api_key(kAdminLikeKey);
  TestRequest on_second = get("/billing/1");
  on_second.api_key(kBillingKey);
  send_expecting_deferral(on_first, ctx_);
  FakeDirectory::Fetch first = last_fetch();
  send_expecting_deferral(on_second, other_ctx_);
  FakeDirectory::Fetch second = last_fetch();
  ASSERT_NE(first.out, nullptr);
  ASSERT_NE(second.out, nullptr);
  EXPECT_NE(first.out, second.out);
  EXPECT_NE(ctx_.state, other_ctx_.state);

  first.out->found = true;
  first.out->record = key_record("kfirst000001", {"orders"});
  second.out->found = true;
  second.out->record = key_record("ksecond00001", {"billing"});
  second.ticket.post();
  first.ticket.post();
  ASSERT_EQ(other_ctx_.sink.posts.size(), 1u);
  EXPECT_EQ(other_ctx_.sink.posts[0].first, 8u);

  const Response second_response = resume(on_second, other_ctx_);
  EXPECT_EQ(second_response.status, 200);
  EXPECT_EQ(second_response.body, ok_body("ksecond00001", "billing", "null"));
  const Response first_response = resume(on_first, ctx_);
  EXPECT_EQ(first_response.status, 200);
  EXPECT_EQ(first_response.body, ok_body("kfirst000001", "orders", "null"));
}

// --- The auth endpoint (/_keygate/auth) ---------------------------------------------------

TestRequest nginx_auth(std::string uri, std::string method) {
  TestRequest r = get("/_keygate/auth");
  r.header("X-Original-URI", std::move(uri));
  r.header("X-Original-Method", std::move(method));
  return r;
}

TEST_F(AuthHandlerTest, AuthEndpointExtAuthzFormDescribesThePathAfterThePrefix) {
  TestRequest request = get("/_keygate/auth/orders/7?x=1");
  request.api_key(kAdminLikeKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, ok_body("kadminlike01", "orders", "null"));
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kadminlike01");
  EXPECT_EQ(r.header("X-Keygate-Api"), "orders");
  expect_key_not_echoed(r, kAdminLikeKey);
}

TEST_F(AuthHandlerTest, AuthEndpointExtAuthzFormTakesTheKeyFromItsQueryAndBody) {
  TestRequest query = get("/_keygate/auth/orders/7?x=1&key=" + std::string(kAdminLikeKey));
  EXPECT_EQ(send(query).header("X-Keygate-Key-Id"), "kadminlike01");

  TestRequest json("POST", "/_keygate/auth/orders");
  json.body(kJson, "{\"API_Key\":\"" + std::string(kAdminLikeKey) + "\"}");
  EXPECT_EQ(send(json).header("X-Keygate-Key-Id"), "kadminlike01");

  TestRequest form("POST", "/_keygate/auth/orders");
  form.body(kForm, "key=" + std::string(kAdminLikeKey));
  EXPECT_EQ(send(form).header("X-Keygate-Key-Id"), "kadminlike01");
}

TEST_F(AuthHandlerTest, AuthEndpointExtAuthzFormChecksGrantsWithItsOwnMethod) {
  TestRequest allowed = get("/_keygate/auth/orders/public/3");
  allowed.api_key(kAliceKey);
  const Response ok = send(allowed);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.header("X-Keygate-User"), "alice");

  TestRequest denied("POST", "/_keygate/auth/orders/public/3");
  denied.api_key(kAliceKey);
  const Response r = send(denied);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
}

TEST_F(AuthHandlerTest, AuthEndpointNginxFormUsesOriginalUriAndMethod) {
  TestRequest allowed = nginx_auth("/orders/public/3?x=1", "GET");
  allowed.api_key(kAliceKey);
  const Response ok = send(allowed);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, ok_body("kalice000001", "orders", "\"alice\""));
  EXPECT_EQ(ok.header("X-Keygate-User"), "alice");

  // The auth request is a GET; the described request a POST, which alice may not make.
  TestRequest denied = nginx_auth("/orders/public/3", "POST");
  denied.api_key(kAliceKey);
  const Response r = send(denied);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
  expect_key_not_echoed(r, kAliceKey);
}

TEST_F(AuthHandlerTest, UrlOverrideHeaderIsForbiddenEvenForAKeyWithoutUser) {
  TestRequest request = get("/orders/1");
  request.api_key(kAdminLikeKey).header("X-Original-URL", "/billing/1");
  const Response r = send(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "url_override_not_permitted");
  EXPECT_FALSE(r.has_header("X-Keygate-Key-Id"));
  expect_key_not_echoed(r, kAdminLikeKey);

  // The auth endpoint describes a request its proxy forwards with the same headers.
  TestRequest described = nginx_auth("/orders/1", "GET");
  described.api_key(kAdminLikeKey).header("X-Rewrite-URL", "/billing/1");
  EXPECT_EQ(send(described).error_code(), "url_override_not_permitted");
}

TEST_F(AuthHandlerTest, AuthEndpointNginxFormTakesTheKeyFromTheOriginalUrisQuery) {
  TestRequest request = nginx_auth("/orders/1?a=b&key=" + std::string(kAdminLikeKey), "GET");
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("X-Keygate-Key-Id"), "kadminlike01");
  expect_key_not_echoed(r, kAdminLikeKey);

  // The auth request's own query is not the described one.
  TestRequest own_query("GET", "/_keygate/auth?key=" + std::string(kAdminLikeKey));
  own_query.header("X-Original-URI", "/orders/1").header("X-Original-Method", "GET");
  const Response missing = send(own_query);
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(missing.error_code(), "missing_api_key");
}

TEST_F(AuthHandlerTest, AuthEndpointNginxFormNeedsBothHeadersOnce) {
  std::vector<TestRequest> bad;
  bad.push_back(get("/_keygate/auth"));
  bad.back().header("X-Original-URI", "/orders/1");
  bad.push_back(get("/_keygate/auth"));
  bad.back().header("X-Original-Method", "GET");
  bad.push_back(nginx_auth("/orders/1", "GET"));
  bad.back().header("X-Original-URI", "/billing/1");         // repeated: which one is the proxy's?
  bad.push_back(nginx_auth("/orders/1", "GE T"));            // not a method token
  bad.push_back(nginx_auth("http://host/orders/1", "GET"));  // not origin-form
  bad.push_back(TestRequest("GET", "/_keygate/auth/orders/1"));  // both forms at once
  bad.back().header("X-Original-URI", "/orders/1").header("X-Original-Method", "GET");
  bad.push_back(get("/_keygate/auth"));  // neither form
  for (TestRequest& request : bad) {
    request.api_key(kAdminLikeKey);
    const Response r = send(request);
    EXPECT_EQ(r.status, 400) << r.raw;
    EXPECT_EQ(r.error_code(), "invalid_auth_request");
    EXPECT_FALSE(r.has_header("X-Keygate-Key-Id"));
    expect_key_not_echoed(r, kAdminLikeKey);
  }
  EXPECT_EQ(directory_.find_key_calls, 0);
}

TEST_F(AuthHandlerTest, AuthEndpointGivesTheDataPlanesRejections) {
  TestRequest missing = nginx_auth("/orders/1", "GET");
  Response r = send(missing);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "missing_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);

  TestRequest unknown = get("/_keygate/auth/orders/1");
  unknown.api_key("no-such-key");
  r = send(unknown);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);

  TestRequest other_api = nginx_auth("/orders/1", "GET");
  other_api.api_key(kBillingKey);
  r = send(other_api);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "api_not_permitted");
  EXPECT_FALSE(r.has_header("WWW-Authenticate"));

  TestRequest no_route = nginx_auth("/inventory/1", "GET");
  no_route.api_key(kAdminLikeKey);
  r = send(no_route);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "no_route");

  TestRequest not_normal = nginx_auth("/orders/../billing", "GET");
  not_normal.api_key(kAdminLikeKey);
  r = send(not_normal);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_path");

  // A header value may hold what a request target may not (nginx passes a client's raw UTF-8 on
  // in $request_uri): refused as the data port's parser refuses it, not routed apart from its
  // encoded form "/orders/caf%C3%A9", which an upstream reads as the same path.
  for (std::string uri : {"/orders/caf\xc3\xa9", "/orders/a b"}) {
    TestRequest raw = nginx_auth(uri, "GET");
    raw.api_key(kAdminLikeKey);
    r = send(raw);
    EXPECT_EQ(r.status, 400) << uri;
    EXPECT_EQ(r.error_code(), "invalid_path") << uri;
  }

  // /healthz is keygate's own route, not one an API serves.
  TestRequest healthz = get("/_keygate/auth/healthz");
  r = send(healthz);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "no_route");
}

TEST_F(AuthHandlerTest, AuthEndpointAnswersForApisWithUpstreamsInsteadOfForwarding) {
  TestRequest request = nginx_auth("/shop/1", "GET");
  request.api_key(kShopKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, ok_body("kshop0000001", "shop", "null"));
  EXPECT_EQ(r.header("X-Keygate-Api"), "shop");
}

TEST_F(AuthHandlerTest, AuthEndpointResumesAFetchWithTheDescribedRequest) {
  directory_.not_cached = true;
  KeyDirectory::FetchResult alices;
  alices.found = true;
  alices.record = key_record("kfetchedali1", {"orders"}, "alice");

  TestRequest allowed = nginx_auth("/orders/public/1", "GET");
  allowed.api_key(kAliceKey);
  const Response ok = fetch_and_resume(allowed, alices);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.header("X-Keygate-Key-Id"), "kfetchedali1");

  TestRequest denied = nginx_auth("/orders/public/1", "DELETE");
  denied.api_key(kAliceKey);
  const Response r = fetch_and_resume(denied, alices);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");
}

TEST_F(AuthHandlerTest, PathThatOnlyStartsLikeTheAuthEndpointIsRoutedNormally) {
  TestRequest request = get("/_keygate/authx/orders/1");
  request.api_key(kAdminLikeKey);
  const Response r = send(request);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "no_route");
}

// --- Forwarding (APIs with upstreams) -------------------------------------------------------

TEST_F(AuthHandlerTest, AllowedRequestForAnApiWithUpstreamsIsForwarded) {
  TestRequest request("POST", "/shop/cart");
  request.body(kJson, "{\"API_Key\":\"" + std::string(kShopKey) + "\",\"item\":3}");
  const ForwardTarget f = forward(request, ctx_);
  EXPECT_EQ(f.api_index, kShopIndex);
  EXPECT_EQ(f.key_id, "kshop0000001");
  EXPECT_EQ(f.api, "shop");
  EXPECT_EQ(f.user, "");
}

TEST_F(AuthHandlerTest, ForwardedRequestNamesTheKeysUser) {
  TestRequest request = get("/shop/public/7");
  request.api_key(kBobKey);
  const ForwardTarget f = forward(request, ctx_);
  EXPECT_EQ(f.api_index, kShopIndex);
  EXPECT_EQ(f.key_id, "kbob00000001");
  EXPECT_EQ(f.user, "bob");
}

TEST_F(AuthHandlerTest, RejectedRequestForAnApiWithUpstreamsIsAnsweredNotForwarded) {
  TestRequest denied = get("/shop/private/7");
  denied.api_key(kBobKey);
  Response r = send(denied);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "user_not_permitted");

  TestRequest missing = get("/shop/1");
  r = send(missing);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);

  TestRequest other = get("/shop/1");
  other.api_key(kBillingKey);
  r = send(other);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "api_not_permitted");
}

TEST_F(AuthHandlerTest, ResumedFetchForAnApiWithUpstreamsIsForwardedAndItsViewsOutliveResume) {
  directory_.not_cached = true;
  TestRequest request = get("/shop/public/1");
  request.api_key(kBobKey);
  send_expecting_deferral(request, ctx_);
  KeyDirectory::FetchResult* out = last_fetch().out;
  ASSERT_NE(out, nullptr);
  out->found = true;
  out->record = key_record("kfetchedbob1", {"shop"}, "bob");
  last_fetch().ticket.post();
  ctx_.forward = ForwardTarget{};
  EXPECT_EQ(call_resume(request, ctx_), Handler::Result::kForward);
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_EQ(ctx_.state, nullptr);
  // Read after resume() returned, as the worker does.
  EXPECT_EQ(ctx_.forward.api_index, kShopIndex);
  EXPECT_EQ(ctx_.forward.key_id, "kfetchedbob1");
  EXPECT_EQ(ctx_.forward.api, "shop");
  EXPECT_EQ(ctx_.forward.user, "bob");
}

// --- handle_head: deciding before the body is read ------------------------------------------

TEST_F(AuthHandlerTest, HeadDecisionForwardsAHeaderOrQueryKeyTheCacheResolves) {
  TestRequest header_key = get("/shop/public/1");
  header_key.api_key(kBobKey);
  EXPECT_EQ(head(header_key), Handler::Result::kForward);
  EXPECT_EQ(ctx_.forward.api_index, kShopIndex);
  EXPECT_EQ(ctx_.forward.key_id, "kbob00000001");
  EXPECT_EQ(ctx_.forward.api, "shop");
  EXPECT_EQ(ctx_.forward.user, "bob");

  TestRequest query_key = get("/shop/1?key=" + std::string(kShopKey));
  EXPECT_EQ(head(query_key), Handler::Result::kForward);
  EXPECT_EQ(ctx_.forward.key_id, "kshop0000001");
  EXPECT_EQ(ctx_.forward.user, "");

  // A header key decides even when the body is JSON: the body is never searched then.
  TestRequest json_body("POST", "/shop/cart");
  json_body.api_key(kShopKey).header("Content-Type", "application/json; charset=utf-8");
  EXPECT_EQ(head(json_body), Handler::Result::kForward);
  EXPECT_EQ(ctx_.forward.key_id, "kshop0000001");
}

TEST_F(AuthHandlerTest, HeadDecisionRejectsWhatTheHeadersAlreadyDecide) {
  struct Case {
    TestRequest request;
    int status;
    std::string_view code;
  };
  std::vector<Case> cases;
  cases.push_back({get("/shop/1"), 401, "missing_api_key"});
  cases.push_back({TestRequest("POST", "/shop/1"), 401, "missing_api_key"});
  cases.back().request.header("Content-Type", "text/plain");  // not a key carrier
  cases.push_back({get("/shop/1"), 401, "invalid_api_key"});
  cases.back().request.api_key("no-such-key");
  cases.push_back({get("/shop/1?key=" + std::string(kShopKey)), 401, "ambiguous_api_key"});
  cases.back().request.api_key(kBobKey);
  cases.push_back({get("/shop/1"), 403, "api_not_permitted"});
  cases.back().request.api_key(kBillingKey);
  cases.push_back({get("/shop/private/1"), 403, "user_not_permitted"});
  cases.back().request.api_key(kBobKey);
  cases.push_back({get("/nowhere"), 404, "no_route"});
  cases.push_back({get("/shop/../orders"), 400, "invalid_path"});
  for (Case& c : cases) {
    EXPECT_EQ(head(c.request), Handler::Result::kDone);
    const Response r = head_response();
    EXPECT_EQ(r.status, c.status) << r.raw;
    EXPECT_EQ(r.error_code(), c.code);
    EXPECT_EQ(r.has_header("WWW-Authenticate"), c.status == 401);
  }
}

TEST_F(AuthHandlerTest, HeadDecisionNeedsTheBodyWhenOnlyItCanCarryTheKey) {
  TestRequest json("POST", "/shop/cart");
  json.header("Content-Type", std::string(kJson));
  EXPECT_EQ(head(json), Handler::Result::kNeedBody);
  TestRequest form("POST", "/shop/cart");
  form.header("Content-Type", std::string(kForm));
  EXPECT_EQ(head(form), Handler::Result::kNeedBody);
  EXPECT_EQ(directory_.find_key_calls, 0);
}

// What handle() answers itself is decided there, but handle_head() says how much of the body
// to keep: none when the answer cannot depend on it, body_inspect_bytes_max when it is the key
// carrier. The capture flag asks for the access log's share when the key may want captures.
TEST_F(AuthHandlerTest, HeadDecisionKeepsOnlyTheBodyTheAnswerNeeds) {
  struct Case {
    TestRequest request;
    uint64_t keep;
  };
  std::vector<Case> cases;
  cases.push_back({TestRequest("POST", "/healthz"), 0});
  cases.back().request.header("Content-Type", std::string(kJson));
  cases.push_back({TestRequest("POST", "/orders/1"), 0});  // a header key: body not searched
  cases.back().request.api_key(kAdminLikeKey).header("Content-Type", std::string(kJson));
  cases.push_back({TestRequest("POST", "/orders/1"), 0});  // no carrier: 401 in handle()
  cases.back().request.header("Content-Type", "text/plain");
  cases.push_back({TestRequest("POST", "/orders/1"), kBodyInspectBytesMax});
  cases.back().request.header("Content-Type", std::string(kJson));
  cases.push_back({TestRequest("POST", "/orders/1"), kBodyInspectBytesMax});
  cases.back().request.header("Content-Type", std::string(kForm));
  cases.push_back({TestRequest("POST", "/_keygate/auth/orders/1"), 0});
  cases.back().request.api_key(kAdminLikeKey).header("Content-Type", std::string(kForm));
  cases.push_back({TestRequest("POST", "/_keygate/auth/orders/1"), kBodyInspectBytesMax});
  cases.back().request.header("Content-Type", std::string(kForm));
  cases.push_back({TestRequest("POST", "/_keygate/auth/nowhere"), 0});  // 404 in handle()
  cases.back().request.header("Content-Type", std::string(kForm));
  // A forwarded API whose key only the body can carry: kept up to the inspection bound too.
  cases.push_back({TestRequest("POST", "/shop/cart"), kBodyInspectBytesMax});
  cases.back().request.header("Content-Type", std::string(kJson));
  for (size_t i = 0; i < cases.size(); ++i) {
    ctx_.body_keep_bytes = RequestContext::kKeepWholeBody;
    ctx_.body_keep_capture = false;
    EXPECT_EQ(head(cases[i].request), Handler::Result::kNeedBody) << i;
    EXPECT_EQ(ctx_.body_keep_bytes, cases[i].keep) << i;
    EXPECT_FALSE(ctx_.body_keep_capture) << i;  // no key here asks for captures
  }
  // A key that asks for its requests to be captured keeps the access log's share.
  KeyRecord capturing = key_record("kcapture0001", {"orders"});
  capturing.log_request = true;
  directory_.add_key("capturing-key", capturing);
  TestRequest captured("POST", "/orders/1");
  captured.api_key("capturing-key").header("Content-Type", "text/plain");
  ctx_.body_keep_capture = false;
  EXPECT_EQ(head(captured), Handler::Result::kNeedBody);
  EXPECT_EQ(ctx_.body_keep_bytes, 0u);
  EXPECT_TRUE(ctx_.body_keep_capture);
}

TEST_F(AuthHandlerTest, HeadDecisionOnACacheMissFetchesAndResumeHeadForwardsOrRejects) {
  directory_.not_cached = true;
  // Allowed once fetched: resume_head() forwards (the body then streams).
  TestRequest request = get("/shop/public/1");
  request.api_key(kBobKey);
  EXPECT_EQ(call_head(request), Handler::Result::kPending);
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_NE(ctx_.state, nullptr);
  ASSERT_EQ(directory_.fetches.size(), 1u);
  EXPECT_EQ(last_fetch().digest, digest_key(kBobKey));
  KeyDirectory::FetchResult* out = last_fetch().out;
  ASSERT_NE(out, nullptr);
  out->found = true;
  out->record = key_record("kfetchedbob2", {"shop"}, "bob");
  last_fetch().ticket.post();
  ctx_.forward = ForwardTarget{};
  EXPECT_EQ(call_resume_head(request), Handler::Result::kForward);
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_EQ(ctx_.state, nullptr);
  EXPECT_EQ(ctx_.forward.key_id, "kfetchedbob2");
  EXPECT_EQ(ctx_.forward.user, "bob");
  // Not in the store either: resume_head() answers 401 (the worker closes, body unread).
  TestRequest unknown = get("/shop/public/2");
  unknown.api_key("no-such-key-anywhere");
  EXPECT_EQ(call_head(unknown), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 2u);
  last_fetch().ticket.post();  // found stays false
  EXPECT_EQ(call_resume_head(unknown), Handler::Result::kDone);
  EXPECT_EQ(ctx_.state, nullptr);
  const Response r = parse_response(out_);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  // The user's grants still apply: a fetched key whose user may not POST is 403.
  TestRequest post = TestRequest("POST", "/shop/public/3");
  post.api_key(kBobKey);
  EXPECT_EQ(call_head(post), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 3u);
  out = last_fetch().out;
  ASSERT_NE(out, nullptr);
  out->found = true;
  out->record = key_record("kfetchedbob3", {"shop"}, "bob");
  last_fetch().ticket.post();
  EXPECT_EQ(call_resume_head(post), Handler::Result::kDone);
  EXPECT_EQ(parse_response(out_).status, 403);
}

TEST_F(AuthHandlerTest, HeadDecisionFetchesAgainWhenTheKeyWasDeletedWhileItWasFetched) {
  directory_.not_cached = true;
  TestRequest request = get("/shop/public/1");
  request.api_key(kBobKey);
  EXPECT_EQ(call_head(request), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 1u);
  *last_fetch().out = directory_.answer(digest_key(kBobKey));
  last_fetch().ticket.post();
  directory_.remove_key(digest_key(kBobKey));
  ++directory_.generation;
  EXPECT_EQ(call_resume_head(request), Handler::Result::kPending);
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_NE(ctx_.state, nullptr);
  ASSERT_EQ(directory_.fetches.size(), 2u);
  *last_fetch().out = directory_.answer(digest_key(kBobKey));
  last_fetch().ticket.post();
  EXPECT_EQ(call_resume_head(request), Handler::Result::kDone);
  EXPECT_EQ(ctx_.state, nullptr);
  const Response r = parse_response(out_);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
}

TEST_F(AuthHandlerTest, HeadDecisionLeavesAuthCheckApisHealthzAndTheAuthEndpointToHandle) {
  TestRequest auth_check = get("/orders/1");
  auth_check.api_key(kAdminLikeKey);
  EXPECT_EQ(head(auth_check), Handler::Result::kNeedBody);
  TestRequest healthz = get("/healthz");
  EXPECT_EQ(head(healthz), Handler::Result::kNeedBody);
  TestRequest ext_authz = get("/_keygate/auth/shop/1");
  ext_authz.api_key(kShopKey);
  EXPECT_EQ(head(ext_authz), Handler::Result::kNeedBody);
  TestRequest nginx = nginx_auth("/shop/1", "GET");
  EXPECT_EQ(head(nginx), Handler::Result::kNeedBody);
  // The key is looked at (a header or query key means the body is not needed, and the key
  // says whether the access log captures it), but handle() decides: nothing is written.
  EXPECT_EQ(ctx_.body_keep_bytes, 0u);
}

}  // namespace
}  // namespace keygate
