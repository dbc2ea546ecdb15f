// Integration tests of keys' last_used_at: the real keygate on loopback, keys used on its data
// and admin ports, last_used_at read back from the admin API — after a flush interval made
// short ([keys] last_used_flush_interval_ms), and across an orderly restart.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/running_server.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kShortFlush = "\n[keys]\nlast_used_flush_interval_ms = 200\n";

::testing::AssertionResult status_is(const std::optional<Response>& r, int status) {
  if (r && r->status == status) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "want " << status << "; " << show(r);
}

// "2026-11-28T00:15:39Z" as Unix seconds; nullopt for anything else.
std::optional<int64_t> parse_utc(std::string_view text) {
  if (text.size() != 20 || text[4] != '-' || text[7] != '-' || text[10] != 'T' ||
      text[13] != ':' || text[16] != ':' || text[19] != 'Z') {
    return std::nullopt;
  }
  auto num = [&](size_t at, size_t n) {
    int v = 0;
    for (size_t i = at; i < at + n; ++i) v = v * 10 + (text[i] - '0');
    return v;
  };
  std::tm tm{};
  tm.tm_year = num(0, 4) - 1900;
  tm.tm_mon = num(5, 2) - 1;
  tm.tm_mday = num(8, 2);
  tm.tm_hour = num(11, 2);
  tm.tm_min = num(14, 2);
  tm.tm_sec = num(17, 2);
  return static_cast<int64_t>(timegm(&tm));
}

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

// A use is dated by the worker's clock, which it reads once per loop pass or tick (no clock
// read per request: RequestContext::now_unix), so it may be a tick behind this process's
// clock: a second's slack below the request's start.
constexpr int64_t kWorkerClockSlack = 1;

struct Key {
  std::string id;
  std::string value;
};

class LastUsed : public RunningServer {
 protected:
  ServerOptions server_options() override {
    ServerOptions options = admin_server_options(admin_value_);
    options.extra_config += kShortFlush;
    return options;
  }

  std::optional<Response> admin(std::string_view method, std::string_view target,
                                std::string_view body = {}) {
    std::vector<std::string> headers = {"X-ApiKey: " + admin_value_};
    if (!body.empty()) headers.push_back("Content-Type: application/json");
    return round_trip(server_->admin_port(), http_request(method, target, headers, body));
  }
  int data_status(std::string_view target, std::string_view key) {
    const std::optional<Response> r = round_trip(
        server_->data_port(), http_request("GET", target, {"X-ApiKey: " + std::string(key)}));
    return r ? r->status : 0;
  }
  Key create_key(std::string_view body) {
    const std::optional<Response> r = admin("POST", "/admin/keys", body);
    EXPECT_TRUE(status_is(r, 201));
    if (!r) return {};
    // A new key has never been used.
    EXPECT_NE(r->body.find("\"last_used_at\":null"), std::string::npos) << r->body;
    return {string_member(r->body, "id"), string_member(r->body, "key")};
  }
  // The key's record as GET /admin/keys/{id} answers it ("" when that fails).
  std::string record(const std::string& id) {
    const std::optional<Response> r = admin("GET", "/admin/keys/" + id);
    EXPECT_TRUE(status_is(r, 200));
    return r ? r->body : "";
  }
  // The key's last_used_at: nullopt while null (or absent: then the test fails elsewhere).
  std::optional<int64_t> last_used(const std::string& id) {
    const std::string body = record(id);
    if (body.find("\"last_used_at\":null") != std::string::npos) return std::nullopt;
    return parse_utc(string_member(body, "last_used_at"));
  }
  // Polls until the key's last_used_at is set, for up to 10 s (flushes come every 200 ms).
  std::optional<int64_t> await_last_used(const std::string& id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      if (std::optional<int64_t> at = last_used(id)) return at;
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  std::string admin_key_id() {
    const std::optional<Response> r = admin("GET", "/admin/keys?api=admin");
    EXPECT_TRUE(status_is(r, 200));
    return r ? string_member(r->body, "id") : "";
  }

  const std::string admin_value_ = "it-admin-" + random_hex(24);
};

TEST_F(LastUsed, AFreshKeyIsNeverUsedAndAnAllowedRequestSetsItWithinTheRequestsTime) {
  const Key used = create_key(R"({"apis":["orders"]})");
  const Key unused = create_key(R"({"apis":["orders"]})");
  EXPECT_NE(record(used.id).find("\"last_used_at\":null"), std::string::npos);

  const int64_t before = now_seconds();
  ASSERT_EQ(data_status("/orders/1", used.value), 200);
  const int64_t after = now_seconds();

  const std::optional<int64_t> at = await_last_used(used.id);
  ASSERT_TRUE(at.has_value()) << record(used.id);
  EXPECT_GE(*at, before - kWorkerClockSlack);
  EXPECT_LE(*at, after);
  // Written in the same pass as the used key's report: an unused key stays null.
  EXPECT_EQ(last_used(unused.id), std::nullopt) << record(unused.id);

  // The listing shows the same.
  const std::optional<Response> list = admin("GET", "/admin/keys");
  ASSERT_TRUE(status_is(list, 200));
  EXPECT_EQ(count_of(list->body, "\"last_used_at\":null"), 1u) << list->body;  // `unused` only

  const std::optional<Response> stats = admin("GET", "/admin/stats");
  ASSERT_TRUE(status_is(stats, 200));
  EXPECT_GE(stats_counter(stats->body, "last_used", "writes_total"), 1) << stats->body;
  EXPECT_EQ(stats_counter(stats->body, "last_used", "reports_dropped"), 0) << stats->body;
}

TEST_F(LastUsed, RejectedRequestsTouchNothingButA403ForAValidKeyIsAUse) {
  const Key disabled = create_key(R"({"apis":["orders"],"enabled":false})");
  const Key forbidden = create_key(R"({"apis":["billing"]})");
  const Key witness = create_key(R"({"apis":["orders"]})");
  EXPECT_EQ(data_status("/orders/1", disabled.value), 401);
  EXPECT_EQ(data_status("/orders/1", "not-a-key-" + random_hex(16)), 401);
  EXPECT_EQ(data_status("/orders/1", forbidden.value), 403);  // valid key, wrong API
  // The witness's use, reported after the others, is written in their pass or a later one.
  EXPECT_EQ(data_status("/orders/1", witness.value), 200);
  ASSERT_TRUE(await_last_used(witness.id).has_value());
  EXPECT_TRUE(last_used(forbidden.id).has_value()) << record(forbidden.id);
  EXPECT_EQ(last_used(disabled.id), std::nullopt) << record(disabled.id);
}

TEST_F(LastUsed, AnAdminKeyIsUsedByItsAdminRequests) {
  const int64_t before = now_seconds();
  const std::string admin_id = admin_key_id();  // the admin key's first use
  ASSERT_FALSE(admin_id.empty());
  const std::optional<std::int64_t> at = await_last_used(admin_id);
  ASSERT_TRUE(at.has_value()) << record(admin_id);
  EXPECT_GE(*at, before - kWorkerClockSlack);
  EXPECT_LE(*at, now_seconds());
}

TEST_F(LastUsed, RotationKeepsTheLastUse) {
  const Key key = create_key(R"({"apis":["orders"]})");
  ASSERT_EQ(data_status("/orders/1", key.value), 200);
  const std::optional<int64_t> at = await_last_used(key.id);
  ASSERT_TRUE(at.has_value());
  const std::optional<Response> rotated = admin("POST", "/admin/keys/" + key.id + "/rotate");
  ASSERT_TRUE(status_is(rotated, 201));
  EXPECT_EQ(parse_utc(string_member(rotated->body, "last_used_at")), at) << rotated->body;
  EXPECT_EQ(last_used(key.id), at);
}

TEST_F(LastUsed, UnusedSinceListsTheKeysNotUsedSinceThen) {
  const Key used = create_key(R"({"apis":["orders"]})");
  const Key unused = create_key(R"({"apis":["orders"]})");
  ASSERT_EQ(data_status("/orders/1", used.value), 200);
  ASSERT_TRUE(await_last_used(used.id).has_value());

  const std::string since = "1970-01-01T00:00:00Z";
  std::optional<Response> r = admin("GET", "/admin/keys?api=orders&unused_since=" + since);
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_NE(r->body.find(unused.id), std::string::npos) << r->body;  // never used: listed
  EXPECT_EQ(r->body.find(used.id), std::string::npos) << r->body;

  // Far in the future: every key was last used before it.
  r = admin("GET", "/admin/keys?api=orders&unused_since=2999-01-01T00:00:00Z");
  ASSERT_TRUE(status_is(r, 200));
  EXPECT_NE(r->body.find(unused.id), std::string::npos) << r->body;
  EXPECT_NE(r->body.find(used.id), std::string::npos) << r->body;

  r = admin("GET", "/admin/keys?unused_since=yesterday");
  ASSERT_TRUE(status_is(r, 400));
  EXPECT_NE(r->body.find("\"field\":\"unused_since\""), std::string::npos) << r->body;
}

// The last use of a key survives an orderly restart even when the stop comes long before the
// next flush: the drain writes what is pending.
class LastUsedRestart : public LastUsed {
 protected:
  ServerOptions server_options() override {
    ServerOptions options = LastUsed::server_options();
    options.extra_config = admin_server_options(admin_value_).extra_config +
                           "\n[keys]\nlast_used_flush_interval_ms = 3600000\n";
    options.data_dir = dirs_.path() + "/data";
    return options;
  }
  TempDir dirs_;
};

TEST_F(LastUsedRestart, ALastUseSurvivesAnOrderlyRestart) {
  const Key key = create_key(R"({"apis":["orders"]})");
  const int64_t before = now_seconds();
  ASSERT_EQ(data_status("/orders/1", key.value), 200);
  const int64_t after = now_seconds();
  EXPECT_EQ(last_used(key.id), std::nullopt);  // an hour until the next flush

  ASSERT_TRUE(server_->stop(SIGTERM).clean()) << server_->error_output();
  server_ = std::make_unique<TestServer>(server_options());
  std::string error;
  ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
  const std::optional<int64_t> at = last_used(key.id);
  ASSERT_TRUE(at.has_value()) << record(key.id);
  EXPECT_GE(*at, before - kWorkerClockSlack);
  EXPECT_LE(*at, after);
}

}  // namespace
}  // namespace keygate::integration
