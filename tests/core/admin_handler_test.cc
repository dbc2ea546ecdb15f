#include "core/admin_handler.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/admin_api.h"
#include "core/api_key.h"
#include "core/console_assets.h"
#include "core/handler.h"
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

constexpr std::string_view kAdminKey = "admin-key-of-the-operator";
constexpr std::string_view kDataKey = "orders-only-data-key";
constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";

KeyRecord key_record(std::string id, std::vector<std::string> apis) {
  KeyRecord r;
  r.id = std::move(id);
  r.apis = std::move(apis);
  return r;
}

// An AdminBackend that only records what it was given; the test plays the executor thread.
class FakeBackend final : public AdminBackend {
 public:
  struct Submission {
    AdminRequest request;
    AdminResponse* out;
    ResumeTicket ticket;
  };
  void submit(const AdminRequest& request, AdminResponse* out,
              ResumeTicket ticket) noexcept override {
    submissions.push_back({request, out, ticket});
  }
  std::vector<Submission> submissions;
};

class AdminHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KeyRecord admin = key_record("kadmin000001", {"admin"});
    admin.user = "operator-with-a-long-name@example.org";  // past the string's inline storage
    directory_.add_key(kAdminKey, std::move(admin));
    directory_.add_key(kDataKey, key_record("kdata0000001", {"orders"}));
  }

  // One handle() or resume() call; the response (if any) is parsed into `*response`.
  Handler::Result call(bool resuming, TestRequest& request, Response* response) {
    std::string out;
    const HttpRequest& view = request.view();
    ResponseWriter writer(out, kDate, view.is_head(), true);
    const Handler::Result r =
        resuming ? handler_.resume(view, writer, ctx_) : handler_.handle(view, writer, ctx_);
    if (r == Handler::Result::kDone) {
      EXPECT_TRUE(writer.finished());
      *response = parse_response(out);
    } else {
      EXPECT_FALSE(writer.started());
    }
    return r;
  }
  Response answer(TestRequest& request) {
    Response response;
    EXPECT_EQ(call(false, request, &response), Handler::Result::kDone);
    return response;
  }
  // Runs `request` with a valid admin key up to the backend's submit(); returns the submission.
  FakeBackend::Submission submitted(TestRequest& request) {
    Response response;
    EXPECT_EQ(call(false, request, &response), Handler::Result::kPending);
    // Authenticated: deferred with a ticket the handler posted itself, nothing submitted yet.
    EXPECT_EQ(ctx_.sink.posts.size(), 1u);
    EXPECT_TRUE(backend_.submissions.empty());
    EXPECT_EQ(call(true, request, &response), Handler::Result::kPending);
    EXPECT_EQ(backend_.submissions.size(), 1u);
    return backend_.submissions.empty() ? FakeBackend::Submission{} : backend_.submissions.back();
  }

  FakeDirectory directory_;
  FakeBackend backend_;
  FakeContext ctx_;
  AdminHandler handler_{directory_, backend_, 4096};
};

TEST_F(AdminHandlerTest, HealthzNeedsNoKey) {
  TestRequest request("GET", "/healthz");
  const Response r = answer(request);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(directory_.find_key_calls, 0);
}

TEST_F(AdminHandlerTest, PathsThatAreNoAdminRouteAre404BeforeAnyKeyWork) {
  for (const char* path : {"/", "/orders/1", "/adminx", "/admin", "/admin/", "/admin/nothing",
                           "/admin/keys/k1/rotate/more"}) {
    TestRequest request("GET", path);
    request.api_key(kAdminKey);
    const Response r = answer(request);
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_EQ(r.error_code(), "not_found") << path;
    EXPECT_EQ(r.body, "{\"error\":\"not_found\",\"field\":null,\"message\":\"no such route\"}\n");
  }
  EXPECT_EQ(directory_.find_key_calls, 0);
  EXPECT_EQ(ctx_.defer_calls, 0);
}

// The literal values, not the constants, so a change to a header shows up here.
constexpr std::string_view kConsoleCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

TEST_F(AdminHandlerTest, TheConsoleIsServedWithoutAKeyUnderItsSecurityHeaders) {
  ASSERT_FALSE(console_assets().empty());
  for (const ConsoleAsset& asset : console_assets()) {
    for (const char* method : {"GET", "HEAD"}) {
      SCOPED_TRACE(std::string(method) + " " + std::string(asset.path));
      TestRequest request(method, std::string(asset.path));
      const Response r = answer(request);
      EXPECT_EQ(r.status, 200);
      EXPECT_EQ(r.header("Content-Type"), asset.content_type);
      EXPECT_EQ(r.header("Content-Length"), std::to_string(asset.body.size()));
      EXPECT_EQ(r.body, std::string_view(method) == "HEAD" ? "" : asset.body);
      EXPECT_EQ(r.header("Content-Security-Policy"), kConsoleCsp);
      EXPECT_EQ(r.header("X-Content-Type-Options"), "nosniff");
      EXPECT_EQ(r.header("Referrer-Policy"), "no-referrer");
      EXPECT_EQ(r.header("Cache-Control"), "no-store");
      EXPECT_FALSE(r.has_header("WWW-Authenticate"));
    }
  }
  // With a key too (a browser sends none, but it changes nothing).
  TestRequest with_key("GET", "/console?x=1");
  with_key.api_key("never-issued-key");
  EXPECT_EQ(answer(with_key).status, 200);
  EXPECT_EQ(directory_.find_key_calls, 0);
  EXPECT_EQ(ctx_.defer_calls, 0);
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerTest, OtherMethodsOnTheConsoleAre405AndUnknownFilesThere404) {
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) {
    TestRequest request(method, "/console/app.js");
    const Response r = answer(request);
    EXPECT_EQ(r.status, 405) << method;
    EXPECT_EQ(r.header("Allow"), "GET, HEAD") << method;
    EXPECT_EQ(r.header("Cache-Control"), "no-store") << method;
    EXPECT_EQ(
        r.body,
        "{\"error\":\"method_not_allowed\",\"field\":null,\"message\":\"use GET or HEAD\"}\n");
  }
  for (const char* path : {"/console/", "/console/nope", "/console/app.js/x", "/console//app.js",
                           "/console/index.html"}) {
    TestRequest request("GET", path);
    const Response r = answer(request);
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_EQ(r.body, "{\"error\":\"not_found\",\"field\":null,\"message\":\"no such route\"}\n")
        << path;
    EXPECT_FALSE(r.has_header("Content-Security-Policy")) << path;
  }
  EXPECT_EQ(directory_.find_key_calls, 0);
}

TEST_F(AdminHandlerTest, NoKeyOrAnUnknownKeyIs401WithAChallenge) {
  TestRequest none("GET", "/admin/keys");
  Response r = answer(none);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "missing_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  EXPECT_NE(r.body.find("\"field\":null"), std::string::npos);

  TestRequest unknown("GET", "/admin/keys");
  unknown.api_key("never-issued-key");
  r = answer(unknown);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  EXPECT_EQ(r.header("Cache-Control"), "no-store");
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerTest, AKeyWithoutAdminIs403) {
  TestRequest request("GET", "/admin/keys");
  request.api_key(kDataKey);
  const Response r = answer(request);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.error_code(), "api_not_permitted");
  EXPECT_FALSE(r.has_header("WWW-Authenticate"));
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerTest, ADisabledOrExpiredAdminKeyIs401) {
  KeyRecord disabled = key_record("kdisabled001", {"admin"});
  disabled.enabled = false;
  directory_.add_key("disabled-admin-key", disabled);
  KeyRecord expired = key_record("kexpired0001", {"admin"});
  expired.expires_at = kNow;
  directory_.add_key("expired-admin-key", expired);
  for (const char* value : {"disabled-admin-key", "expired-admin-key"}) {
    TestRequest request("GET", "/admin/keys");
    request.api_key(value);
    const Response r = answer(request);
    EXPECT_EQ(r.status, 401) << value;
    EXPECT_EQ(r.error_code(), "invalid_api_key");
    EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);
  }
}

TEST_F(AdminHandlerTest, TheKeyMayComeInAnyOfTheFourWays) {
  std::vector<TestRequest> requests;
  requests.emplace_back("GET", "/admin/apis");
  requests.back().api_key(kAdminKey);
  requests.emplace_back("GET", "/admin/apis?key=" + std::string(kAdminKey));
  requests.emplace_back("GET", "/admin/apis");
  requests.back().body("application/x-www-form-urlencoded", "key=" + std::string(kAdminKey));
  requests.emplace_back("GET", "/admin/apis");
  requests.back().body("application/json", "{\"API_Key\":\"" + std::string(kAdminKey) + "\"}");
  for (TestRequest& request : requests) {
    ctx_.sink.posts.clear();
    backend_.submissions.clear();
    const FakeBackend::Submission s = submitted(request);
    EXPECT_EQ(s.request.path, "/admin/apis");
    handler_.abandon(ctx_);
  }
}

TEST_F(AdminHandlerTest, TheBackendGetsTheResumedRequestsViewsAndItsAnswerIsWritten) {
  TestRequest request("POST", "/admin/keys?ignored=1");
  request.api_key(kAdminKey).body("application/json", "{\"apis\":[\"orders\"]}");
  const FakeBackend::Submission s = submitted(request);
  const HttpRequest& view = request.view();
  EXPECT_EQ(s.request.method, "POST");
  EXPECT_EQ(s.request.path, "/admin/keys");
  EXPECT_EQ(s.request.query, "ignored=1");
  EXPECT_EQ(s.request.body.data(), view.body.data());
  EXPECT_EQ(s.request.body, "{\"apis\":[\"orders\"]}");
  // The key the request was authenticated with, for the backend's check when it runs.
  EXPECT_EQ(s.request.key_id, "kadmin000001");
  EXPECT_TRUE(digests_equal(s.request.key_digest, digest_key(kAdminKey)));
  ASSERT_NE(s.out, nullptr);

  // The executor thread's part.
  s.out->status = 201;
  s.out->body = "{\"id\":\"knew\"}";
  s.ticket.post();
  Response r;
  ASSERT_EQ(call(true, request, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_EQ(r.header("Content-Length"), "13");
  EXPECT_EQ(r.body, "{\"id\":\"knew\"}");
  EXPECT_FALSE(r.has_header("Allow"));
  EXPECT_EQ(ctx_.state, nullptr);
  EXPECT_EQ(ctx_.defer_calls, 2);
}

TEST_F(AdminHandlerTest, A405CarriesAllowAndA204HasNoBody) {
  TestRequest not_allowed("PUT", "/admin/keys");
  not_allowed.api_key(kAdminKey);
  FakeBackend::Submission s = submitted(not_allowed);
  s.out->status = 405;
  s.out->allow = "GET, POST";
  s.out->body = "{\"error\":\"method_not_allowed\"}";
  Response r;
  ASSERT_EQ(call(true, not_allowed, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("Allow"), "GET, POST");
  EXPECT_EQ(r.header("Cache-Control"), "no-store");
  EXPECT_FALSE(r.has_header("WWW-Authenticate"));

  // The backend's own 401 (the key was revoked while the request waited) carries the challenge.
  ctx_.sink.posts.clear();
  backend_.submissions.clear();
  TestRequest revoked("GET", "/admin/keys");
  revoked.api_key(kAdminKey);
  s = submitted(revoked);
  s.out->status = 401;
  s.out->challenge = true;
  s.out->body = "{\"error\":\"invalid_api_key\"}";
  ASSERT_EQ(call(true, revoked, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.header("WWW-Authenticate"), kChallenge);

  // The pooled state that carried that challenge answers the next request without it (a backend
  // that leaves `challenge` alone, as the executor's queue-full answer does).
  ctx_.sink.posts.clear();
  backend_.submissions.clear();
  TestRequest busy("GET", "/admin/keys");
  busy.api_key(kAdminKey);
  s = submitted(busy);
  EXPECT_FALSE(s.out->challenge);
  s.out->status = 503;
  s.out->body = "{\"error\":\"store_unavailable\"}";
  ASSERT_EQ(call(true, busy, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 503);
  EXPECT_FALSE(r.has_header("WWW-Authenticate"));

  ctx_.sink.posts.clear();
  backend_.submissions.clear();
  TestRequest deletion("DELETE", "/admin/keys/kdata0000001");
  deletion.api_key(kAdminKey);
  s = submitted(deletion);
  s.out->status = 204;
  ASSERT_EQ(call(true, deletion, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 204);
  EXPECT_FALSE(r.has_header("Content-Type"));
  EXPECT_FALSE(r.has_header("Content-Length"));
  EXPECT_EQ(r.body, "");
}

// --- Requests with a body are judged at their head ---------------------------------------------

class AdminHandlerHead : public AdminHandlerTest {
 protected:
  // One handle_head() or resume_head() call; a written response is parsed into `*response`.
  Handler::Result head(bool resuming, TestRequest& request, Response* response) {
    std::string out;
    const HttpRequest& view = request.view();
    ResponseWriter writer(out, kDate, view.is_head(), true);
    ctx_.body_bytes_max = 0;  // as the worker does
    const Handler::Result r = resuming ? handler_.resume_head(view, writer, ctx_)
                                       : handler_.handle_head(view, writer, ctx_);
    if (r == Handler::Result::kDone) {
      EXPECT_TRUE(writer.finished());
      *response = parse_response(out);
    } else {
      EXPECT_FALSE(writer.started());
    }
    return r;
  }
};

TEST_F(AdminHandlerHead, ARefusedKeyIsAnsweredBeforeTheBodyIsRead) {
  struct Case {
    std::string_view key;
    int status;
    const char* code;
  };
  for (const Case& c : {Case{"never-issued-key", 401, "invalid_api_key"},
                        Case{kDataKey, 403, "api_not_permitted"}}) {
    TestRequest request("POST", "/admin/keys/import");
    request.api_key(c.key);
    Response r;
    ASSERT_EQ(head(false, request, &r), Handler::Result::kDone) << c.key;
    EXPECT_EQ(r.status, c.status) << c.key;
    EXPECT_EQ(r.error_code(), c.code) << c.key;
    EXPECT_EQ(r.has_header("WWW-Authenticate"), c.status == 401) << c.key;
  }
  TestRequest elsewhere("POST", "/not-admin");
  Response r;
  ASSERT_EQ(head(false, elsewhere, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerHead, AnAdmittedKeyReadsTheBodyUnderTheListenersLimit) {
  TestRequest request("POST", "/admin/keys/import");
  request.api_key(kAdminKey);
  Response r;
  EXPECT_EQ(head(false, request, &r), Handler::Result::kNeedBody);
  EXPECT_EQ(ctx_.body_bytes_max, 0u);
  // Nothing noted yet: handle() does, with the body (a note now would capture it without).
  EXPECT_TRUE(ctx_.access.key_id.empty());
  EXPECT_FALSE(ctx_.access.log_request);
  EXPECT_EQ(ctx_.state, nullptr);
}

// /healthz needs no body: it is answered at the head, so no client can make the port read one.
TEST_F(AdminHandlerHead, HealthzIsAnsweredAtTheHead) {
  TestRequest post("POST", "/healthz");
  Response r;
  ASSERT_EQ(head(false, post, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 405);
  TestRequest get("GET", "/healthz");
  ASSERT_EQ(head(false, get, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(directory_.find_key_calls, 0);
}

// Like /healthz: a request with a body to the console is answered at its head, body unread.
TEST_F(AdminHandlerHead, TheConsoleIsAnsweredAtTheHead) {
  TestRequest post("POST", "/console");
  post.body("application/json", "{}");
  Response r;
  ASSERT_EQ(head(false, post, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 405);
  TestRequest get("GET", "/console/app.css");
  ASSERT_EQ(head(false, get, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(directory_.find_key_calls, 0);
}

// body_inspect_bytes_max = 0: a body can never carry the key, so one without a key in the head
// is refused at once (the extractor's 413), not read under the listener's limit.
TEST_F(AdminHandlerHead, NoBodyInspectionRefusesAKeylessBodyAtTheHead) {
  AdminHandler no_inspection(directory_, backend_, 0);
  TestRequest request("POST", "/admin/keys");
  request.header("Content-Type", "application/json");
  std::string out;
  const HttpRequest& view = request.view();
  ResponseWriter writer(out, kDate, false, true);
  ctx_.body_bytes_max = 0;
  ASSERT_EQ(no_inspection.handle_head(view, writer, ctx_), Handler::Result::kDone);
  const Response r = parse_response(out);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.error_code(), "body_too_large");
}

TEST_F(AdminHandlerHead, WithoutAKeyInTheHeadOnlyWhatTheExtractorSearchesIsRead) {
  TestRequest request("POST", "/admin/keys");
  request.header("Content-Type", "application/json");
  Response r;
  EXPECT_EQ(head(false, request, &r), Handler::Result::kNeedBody);
  EXPECT_EQ(ctx_.body_bytes_max, 4096u);  // the handler's body_inspect_bytes_max
}

TEST_F(AdminHandlerHead, AKeyTheCacheDoesNotHoldIsFetchedBeforeTheBody) {
  directory_.not_cached = true;
  for (std::string_view key : {kDataKey, kAdminKey}) {
    directory_.fetches.clear();
    TestRequest request("POST", "/admin/users");
    request.api_key(key);
    Response r;
    ASSERT_EQ(head(false, request, &r), Handler::Result::kPending) << key;
    ASSERT_EQ(directory_.fetches.size(), 1u);
    *directory_.fetches[0].out = directory_.answer(directory_.fetches[0].digest);
    directory_.fetches[0].ticket.post();
    const Handler::Result result = head(true, request, &r);
    EXPECT_EQ(ctx_.state, nullptr) << key;
    if (key == kDataKey) {
      ASSERT_EQ(result, Handler::Result::kDone);
      EXPECT_EQ(r.status, 403);
      EXPECT_EQ(ctx_.access.key_id, "kdata0000001");
    } else {
      EXPECT_EQ(result, Handler::Result::kNeedBody);
      EXPECT_TRUE(ctx_.access.key_id.empty());
    }
  }
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerTest, AKeyTheCacheDoesNotHoldIsFetchedFirst) {
  directory_.not_cached = true;
  TestRequest request("GET", "/admin/keys");
  request.api_key(kAdminKey);
  Response r;
  ASSERT_EQ(call(false, request, &r), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 1u);
  EXPECT_TRUE(ctx_.sink.posts.empty());
  *directory_.fetches[0].out = directory_.answer(directory_.fetches[0].digest);
  directory_.fetches[0].ticket.post();

  // Resumed with the fetched key: authorized, then deferred once more for stable views.
  ASSERT_EQ(call(true, request, &r), Handler::Result::kPending);
  EXPECT_EQ(ctx_.sink.posts.size(), 2u);
  EXPECT_TRUE(backend_.submissions.empty());
  ASSERT_EQ(call(true, request, &r), Handler::Result::kPending);
  ASSERT_EQ(backend_.submissions.size(), 1u);
  backend_.submissions[0].out->status = 200;
  backend_.submissions[0].out->body = "{}";
  ASSERT_EQ(call(true, request, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 200);
  // The access record names the fetched key and its user, although the fetched record was
  // let go before the request ran (the views once pointed into it).
  EXPECT_EQ(ctx_.access.key_id, "kadmin000001");
  EXPECT_EQ(ctx_.access.user, "operator-with-a-long-name@example.org");
}

TEST_F(AdminHandlerTest, AFetchedDataKeyIs403AndAFailedFetch503) {
  directory_.not_cached = true;
  TestRequest data("GET", "/admin/keys");
  data.api_key(kDataKey);
  Response r;
  ASSERT_EQ(call(false, data, &r), Handler::Result::kPending);
  *directory_.fetches[0].out = directory_.answer(directory_.fetches[0].digest);
  ASSERT_EQ(call(true, data, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(ctx_.state, nullptr);

  directory_.fetches.clear();
  TestRequest admin("GET", "/admin/keys");
  admin.api_key(kAdminKey);
  ASSERT_EQ(call(false, admin, &r), Handler::Result::kPending);
  directory_.fetches[0].out->failed = true;
  ASSERT_EQ(call(true, admin, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.error_code(), "store_unavailable");
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerTest, AnAdminKeyDeletedWhileItWasFetchedIsFetchedAgainAndRefused) {
  directory_.not_cached = true;
  TestRequest request("GET", "/admin/keys");
  request.api_key(kAdminKey);
  Response r;
  ASSERT_EQ(call(false, request, &r), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 1u);
  *directory_.fetches[0].out = directory_.answer(digest_key(kAdminKey));
  directory_.fetches[0].ticket.post();
  // The delete returned before the worker resumed: the fetched copy must not admit.
  directory_.remove_key(digest_key(kAdminKey));
  ++directory_.generation;
  ASSERT_EQ(call(true, request, &r), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 2u);
  EXPECT_TRUE(backend_.submissions.empty());
  *directory_.fetches[1].out = directory_.answer(digest_key(kAdminKey));
  directory_.fetches[1].ticket.post();
  ASSERT_EQ(call(true, request, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
  EXPECT_EQ(ctx_.state, nullptr);
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerHead, AnAdminKeyDisabledWhileItWasFetchedAtTheHeadIsRefused) {
  directory_.not_cached = true;
  TestRequest request("POST", "/admin/users");
  request.api_key(kAdminKey);
  Response r;
  ASSERT_EQ(head(false, request, &r), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 1u);
  *directory_.fetches[0].out = directory_.answer(digest_key(kAdminKey));
  directory_.fetches[0].ticket.post();
  KeyRecord disabled = key_record("kadmin000001", {"admin"});
  disabled.enabled = false;
  directory_.add_key(kAdminKey, disabled);
  ++directory_.generation;
  // Not cached either: fetched again, and the store's answer now is the disabled key.
  ASSERT_EQ(head(true, request, &r), Handler::Result::kPending);
  ASSERT_EQ(directory_.fetches.size(), 2u);
  *directory_.fetches[1].out = directory_.answer(digest_key(kAdminKey));
  directory_.fetches[1].ticket.post();
  ASSERT_EQ(head(true, request, &r), Handler::Result::kDone);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(ctx_.state, nullptr);
  EXPECT_TRUE(backend_.submissions.empty());
}

TEST_F(AdminHandlerTest, AnOldAdminValueAfterItsGraceIs401) {
  KeyRecord rotated = key_record("krotated0001", {"admin"});
  rotated.digest = digest_key("new-admin-value");
  rotated.previous_digest = digest_key("old-admin-value");
  rotated.previous_valid_until = kNow + 10;
  directory_.file_under(rotated.digest, rotated);
  directory_.file_under(*rotated.previous_digest, rotated);

  TestRequest during("GET", "/admin/apis");
  during.api_key("old-admin-value");
  submitted(during);
  handler_.abandon(ctx_);

  ctx_.now = kNow + 10;
  TestRequest after("GET", "/admin/apis");
  after.api_key("old-admin-value");
  const Response r = answer(after);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.error_code(), "invalid_api_key");
}

TEST_F(AdminHandlerTest, AbandonInEveryPhaseFreesTheState) {
  // Pending on the self-posted ticket.
  TestRequest first("GET", "/admin/apis");
  first.api_key(kAdminKey);
  Response r;
  ASSERT_EQ(call(false, first, &r), Handler::Result::kPending);
  ASSERT_NE(ctx_.state, nullptr);
  EXPECT_EQ(handler_.abandon(ctx_), 0) << "not executed: nothing happened";
  EXPECT_EQ(ctx_.state, nullptr);

  // Pending in the backend (which posted: the worker abandons only after the post). The
  // backend ran it: abandon() reports its status, which the access log records.
  ctx_.sink.posts.clear();
  TestRequest second("GET", "/admin/apis");
  second.api_key(kAdminKey);
  const FakeBackend::Submission s = submitted(second);
  s.out->status = 201;
  s.ticket.post();
  EXPECT_EQ(handler_.abandon(ctx_), 201);
  EXPECT_EQ(ctx_.state, nullptr);

  // Pending on a fetch.
  directory_.not_cached = true;
  TestRequest third("GET", "/admin/apis");
  third.api_key(kAdminKey);
  ASSERT_EQ(call(false, third, &r), Handler::Result::kPending);
  EXPECT_EQ(handler_.abandon(ctx_), 0);
  EXPECT_EQ(ctx_.state, nullptr);
  // The pooled state serves the next request (ASan would report a leak or a double free).
  directory_.not_cached = false;
  ctx_.sink.posts.clear();
  backend_.submissions.clear();
  TestRequest fourth("GET", "/admin/apis");
  fourth.api_key(kAdminKey);
  submitted(fourth);
  handler_.abandon(ctx_);
}

// The Host a request to the admin port may give: none, an IP literal, localhost, or a name the
// operator listed; any other is a page that reached the port under a name of its own (DNS
// rebinding) or a misdirected request.
TEST(AdminHostAllowed, IpLiteralsLocalhostAndListedNamesOnly) {
  const std::vector<std::string> names = {"kg-admin.internal"};
  for (std::string_view host :
       {"", "127.0.0.1", "127.0.0.1:8081", "10.1.2.3:80", "[::1]", "[::1]:8081", "localhost",
        "localhost:8081", "LocalHost", "localhost.", "localhost.:8081", "kg-admin.internal",
        "KG-Admin.Internal:8081", "kg-admin.internal."}) {
    EXPECT_TRUE(admin_host_allowed(host, names)) << host;
  }
  for (std::string_view host :
       {"evil.example", "evil.example:8081", "localhost.evil.example", "127.0.0.1.evil.example",
        "admin.internal", "kg-admin.internal.evil", "x", ":8081", "."}) {
    EXPECT_FALSE(admin_host_allowed(host, names)) << host;
  }
  EXPECT_FALSE(admin_host_allowed("kg-admin.internal", {}));
}

}  // namespace
}  // namespace keygate
