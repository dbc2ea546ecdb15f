#include "core/admin_api.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {
namespace {

constexpr int64_t kNow = 1700000000;  // 2023-11-14T22:13:20Z

// An in-memory AdminStore with the contract's uniqueness and user checks, plus switches to inject
// failures.
class FakeAdminStore : public AdminStore {
 public:
  std::map<std::string, KeyRecord> keys;  // by id, so listing is in id order
  std::map<std::string, User> users;
  bool io_error = false;
  int conflicts_to_inject = 0;  // create_key answers conflict this many times first
  int create_calls = 0;
  int import_calls = 0;
  std::vector<std::optional<PreviousDigest>> update_previous;    // one per update_key call
  std::vector<std::pair<std::string, size_t>> list_users_calls;  // after_name, limit
  std::map<std::string, int64_t> last_used;                       // by key id

  static AdminStoreResult ok() { return {}; }
  static AdminStoreResult code(AdminStoreCode c, size_t index = 0) {
    return {c, "fake store says no", index};
  }
  static AdminStoreResult io() { return {AdminStoreCode::kIoError, "disk on fire", 0}; }

  AdminStoreResult list_keys(std::string_view after_id, size_t limit,
                             std::vector<KeyRecord>* out) override {
    if (io_error) return io();
    out->clear();
    for (auto it = keys.upper_bound(std::string(after_id)); it != keys.end() && out->size() < limit;
         ++it) {
      out->push_back(it->second);
    }
    return ok();
  }
  std::optional<int64_t> get_last_used(std::string_view id) override {
    auto it = last_used.find(std::string(id));
    if (it == last_used.end()) return std::nullopt;
    return it->second;
  }
  AdminStoreResult get_key(std::string_view id, KeyRecord* out) override {
    if (io_error) return io();
    auto it = keys.find(std::string(id));
    if (it == keys.end()) return code(AdminStoreCode::kNotFound);
    *out = it->second;
    return ok();
  }
  AdminStoreResult create_key(const KeyRecord& record) override {
    ++create_calls;
    if (io_error) return io();
    if (conflicts_to_inject > 0) {
      --conflicts_to_inject;
      return code(AdminStoreCode::kConflict);
    }
    if (keys.count(record.id) != 0 || digest_taken(record.digest, "")) {
      return code(AdminStoreCode::kConflict);
    }
    if (record.user && users.count(*record.user) == 0) return code(AdminStoreCode::kNotFound);
    keys[record.id] = record;
    return ok();
  }
  AdminStoreResult update_key(const KeyRecord& record,
                              const std::optional<PreviousDigest>& previous) override {
    if (io_error) return io();
    if (keys.count(record.id) == 0) return code(AdminStoreCode::kNotFound);
    // Like KeyService: a record naming a missing user is refused with not_found too.
    if (record.user && users.count(*record.user) == 0) return code(AdminStoreCode::kNotFound);
    if (digest_taken(record.digest, record.id)) return code(AdminStoreCode::kConflict);
    keys[record.id] = record;
    update_previous.push_back(previous);
    return ok();
  }
  AdminStoreResult delete_key(std::string_view id) override {
    if (io_error) return io();
    return keys.erase(std::string(id)) == 1 ? ok() : code(AdminStoreCode::kNotFound);
  }
  AdminStoreResult import_keys(std::vector<KeyRecord> records) override {
    ++import_calls;
    if (io_error) return io();
    std::set<std::string> batch_ids;
    std::set<KeyDigest> batch_digests;
    for (size_t i = 0; i < records.size(); ++i) {
      const KeyRecord& r = records[i];
      if (keys.count(r.id) != 0 || digest_taken(r.digest, "") || !batch_ids.insert(r.id).second ||
          !batch_digests.insert(r.digest).second) {
        return code(AdminStoreCode::kConflict, i);
      }
      if (r.user && users.count(*r.user) == 0) return code(AdminStoreCode::kNotFound, i);
    }
    for (KeyRecord& r : records) keys[r.id] = std::move(r);
    return ok();
  }
  AdminStoreResult list_users(std::string_view after_name, size_t limit,
                              std::vector<User>* out) override {
    list_users_calls.emplace_back(after_name, limit);
    if (io_error) return io();
    out->clear();
    for (auto it = users.upper_bound(std::string(after_name));
         it != users.end() && out->size() < limit; ++it) {
      out->push_back(it->second);
    }
    return ok();
  }
  AdminStoreResult get_user(std::string_view name, User* out) override {
    if (io_error) return io();
    auto it = users.find(std::string(name));
    if (it == users.end()) return code(AdminStoreCode::kNotFound);
    *out = it->second;
    return ok();
  }
  AdminStoreResult put_user(const User& user) override {
    if (io_error) return io();
    users[user.name] = user;
    return ok();
  }
  AdminStoreResult delete_user(std::string_view name) override {
    if (io_error) return io();
    return users.erase(std::string(name)) == 1 ? ok() : code(AdminStoreCode::kNotFound);
  }
  // Without has_log, the interface's default (no access log); with it, every query is recorded
  // and answered with log_page.
  AdminStoreResult query_logs(const LogQuery& query, LogPage* out) override {
    if (!has_log) return AdminStore::query_logs(query, out);
    log_queries.push_back(query);
    if (io_error) return io();
    *out = log_page;
    return ok();
  }

  bool has_log = false;
  std::vector<LogQuery> log_queries;
  LogPage log_page;

  AdminStoreResult list_backups(BackupListing* out, std::string* error) override {
    if (!has_backups) return AdminStore::list_backups(out, error);
    *out = backup_listing;
    return ok();
  }

  bool has_backups = false;
  BackupListing backup_listing;

  const KeyRecord* find_by_digest(const KeyDigest& digest) const {
    for (const auto& [id, r] : keys) {
      if (r.digest == digest) return &r;
    }
    return nullptr;
  }

 private:
  bool digest_taken(const KeyDigest& digest, std::string_view except_id) const {
    for (const auto& [id, r] : keys) {
      if (r.digest == digest && id != except_id) return true;
    }
    return false;
  }
};

// splitmix64: deterministic bytes, different on every call.
class DeterministicRandom {
 public:
  bool fail = false;
  bool fill(std::span<uint8_t> out) {
    if (fail) return false;
    for (uint8_t& b : out) {
      state_ += 0x9e3779b97f4a7c15ULL;
      uint64_t z = state_;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      b = static_cast<uint8_t>(z ^ (z >> 31));
    }
    return true;
  }

 private:
  uint64_t state_ = 42;
};

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

size_t count_of(std::string_view haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string_view::npos;
       at = haystack.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

// The first string member `name` in `json` (the responses under test are compact).
std::string string_member(std::string_view json, std::string_view name) {
  const std::string needle = "\"" + std::string(name) + "\":\"";
  size_t pos = json.find(needle);
  if (pos == std::string_view::npos) return "";
  pos += needle.size();
  return std::string(json.substr(pos, json.find('"', pos) - pos));
}

// Every "id" in a list response, in order.
std::vector<std::string> ids_in(std::string_view json) {
  std::vector<std::string> ids;
  const std::string_view needle = "\"id\":\"";
  for (size_t pos = json.find(needle); pos != std::string_view::npos;
       pos = json.find(needle, pos)) {
    pos += needle.size();
    ids.emplace_back(json.substr(pos, json.find('"', pos) - pos));
  }
  return ids;
}

// Every user "name" in a list response, in order, with the JSON escapes \" and \\ undone.
std::vector<std::string> names_in(std::string_view json) {
  std::vector<std::string> names;
  const std::string_view needle = "{\"name\":\"";
  for (size_t pos = json.find(needle); pos != std::string_view::npos;
       pos = json.find(needle, pos)) {
    std::string name;
    for (pos += needle.size(); pos < json.size() && json[pos] != '"'; ++pos) {
      if (json[pos] == '\\') ++pos;
      name += json[pos];
    }
    names.push_back(std::move(name));
  }
  return names;
}

// The "ids" of an import answer, in order.
std::vector<std::string> imported_ids(std::string_view json) {
  std::vector<std::string> ids;
  const size_t open = json.find("\"ids\":[");
  if (open == std::string_view::npos) return ids;
  std::string_view rest = json.substr(open + 7);
  while (rest.size() > 2 && rest.front() == '"') {
    const size_t close = rest.find('"', 1);
    ids.emplace_back(rest.substr(1, close - 1));
    rest.remove_prefix(close + 2);  // the closing quote and ',' or ']'
  }
  return ids;
}

std::optional<std::string> next_cursor(std::string_view json) {
  if (contains(json, "\"next_cursor\":null")) return std::nullopt;
  return string_member(json, "next_cursor");
}

// An RFC 3339 time as the access log's microseconds.
int64_t parsed_us(std::string_view text) {
  int64_t t = -1;
  EXPECT_TRUE(parse_rfc3339(text, &t)) << text;
  return t * 1'000'000;
}

void expect_error(const AdminResponse& r, int status, std::string_view code,
                  std::optional<std::string_view> field) {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_TRUE(contains(r.body, "{\"error\":\"" + std::string(code) + "\",")) << r.body;
  if (field) {
    EXPECT_TRUE(contains(r.body, "\"field\":\"" + std::string(*field) + "\",")) << r.body;
  } else {
    EXPECT_TRUE(contains(r.body, "\"field\":null,")) << r.body;
  }
  EXPECT_TRUE(contains(r.body, "\"message\":\"")) << r.body;
}

// A query a listing refuses: 400 `code`, naming `field` (nullopt: the error names none).
struct BadQuery {
  std::string query;
  std::string_view code;
  std::optional<std::string_view> field;
};

// What GET /admin/keys and GET /admin/users refuse alike.
const std::vector<BadQuery>& bad_paging_queries() {
  static const std::vector<BadQuery> kCases = {
      {"limit=0", "invalid_value", "limit"},
      {"limit=1001", "invalid_value", "limit"},
      {"limit=abc", "invalid_value", "limit"},
      {"limit=-1", "invalid_value", "limit"},
      {"limit=", "invalid_value", "limit"},
      {"limit=10000000000000000000000", "invalid_value", "limit"},
      {"limit=1&limit=2", "invalid_value", "limit"},
      {"cursor=abc", "invalid_value", "cursor"},
      {"cursor=zz&limit=1", "invalid_value", "cursor"},
      {"cursor=%zz", "invalid_value", std::nullopt},
      {"sort=id", "unknown_field", "sort"},
  };
  return kCases;
}

class AdminTest : public ::testing::Test {
 protected:
  AdminTest() {
    std::string error;
    EXPECT_TRUE(
        apis_.init({{"orders", {"/orders"}}, {"billing", {"/billing", "/invoices"}}}, &error))
        << error;
    ctx_.apis = &apis_;
    ctx_.now = kNow;
    ctx_.random = [this](std::span<uint8_t> out) { return random_.fill(out); };
    ctx_.small_body_bytes_max = 4096;
    ctx_.import_keys_max = 10;
  }

  // Runs a request. Every response except a successful create or rotate must not contain any
  // plaintext seen so far.
  AdminResponse call(std::string_view method, std::string_view path, std::string_view body = {},
                     std::string_view query = {}) {
    body_ = std::string(body);
    AdminRequest request;
    request.method = method;
    request.path = path;
    request.query = query;
    request.body = body_;
    AdminResponse response = execute_admin(request, store_, ctx_);
    const bool shows_key = response.status == 201 && method == "POST" &&
                           (path == "/admin/keys" || path.ends_with("/rotate"));
    if (!shows_key) {
      for (const std::string& plaintext : plaintexts_) {
        EXPECT_FALSE(contains(response.body, plaintext))
            << method << " " << path << " leaked a key: " << response.body;
      }
    }
    return response;
  }

  // Creates a key and remembers its plaintext; returns the 201 body.
  std::string create_key(std::string_view body) {
    const AdminResponse r = call("POST", "/admin/keys", body);
    EXPECT_EQ(r.status, 201) << r.body;
    const std::string plaintext = string_member(r.body, "key");
    EXPECT_FALSE(plaintext.empty()) << r.body;
    if (!plaintext.empty()) plaintexts_.push_back(plaintext);
    return r.body;
  }

  // Seeds the store directly with ids k000000000000, k000000000001, ...
  void seed_keys(int count, const std::function<void(int, KeyRecord*)>& shape) {
    for (int i = 0; i < count; ++i) {
      KeyRecord r;
      char id[16];
      std::snprintf(id, sizeof(id), "k%012d", i);
      r.id = id;
      const std::string plaintext = "seeded-key-value-" + std::to_string(i);
      r.digest = digest_key(plaintext);
      r.hint = make_key_hint(plaintext);
      r.apis = {"orders"};
      shape(i, &r);
      store_.keys[r.id] = r;
    }
  }

  void add_user(const std::string& name) { store_.users[name] = User{name, {}}; }

  // GET `path` with each query is refused as the case says.
  void expect_refused(std::string_view path, const std::vector<BadQuery>& cases) {
    for (const BadQuery& c : cases) {
      SCOPED_TRACE(c.query);
      expect_error(call("GET", path, "", c.query), 400, c.code, c.field);
    }
  }

  ApiRegistry apis_;
  FakeAdminStore store_;
  DeterministicRandom random_;
  AdminContext ctx_;
  std::string body_;
  std::vector<std::string> plaintexts_;
};

using AdminRouting = AdminTest;
using AdminKeys = AdminTest;
using AdminKeyList = AdminTest;
using AdminRotate = AdminTest;
using AdminImport = AdminTest;
using AdminUsers = AdminTest;
using AdminUserList = AdminTest;
using AdminApis = AdminTest;
using AdminStoreErrors = AdminTest;
using AdminLogs = AdminTest;
using AdminStats = AdminTest;
using AdminBackups = AdminTest;

// ---------------------------------------------------------------------------------------------
// Routing

// The admin executor runs backups and their listings on lanes of their own: a listing is every
// method of the route but the one that makes a backup.
TEST(AdminRouteShape, ABackupListingIsTheBackupsRouteWithAnyMethodButPost) {
  EXPECT_TRUE(is_backup_route("/admin/backups"));
  EXPECT_TRUE(is_backup_listing("GET", "/admin/backups"));
  EXPECT_TRUE(is_backup_listing("DELETE", "/admin/backups"));  // a 405, made by no backup
  EXPECT_FALSE(is_backup_listing("POST", "/admin/backups"));
  for (std::string_view path :
       {"/admin/backups/", "/admin/backups/x", "/admin/logs", "/admin/keys"}) {
    EXPECT_FALSE(is_backup_listing("GET", path)) << path;
  }
}

TEST(AdminRouteShape, IsAdminRouteKnowsEveryRouteAndNothingElse) {
  for (std::string_view path :
       {"/admin/keys", "/admin/keys/import", "/admin/keys/k000000000000", "/admin/keys/x/rotate",
        "/admin/users", "/admin/users/kharnagy%40domain.corp", "/admin/apis", "/admin/logs",
        "/admin/stats", "/admin/metrics", "/admin/reload"}) {
    EXPECT_TRUE(is_admin_route(path)) << path;
  }
  for (std::string_view path :
       {"", "/", "/admin", "/admin/", "/admin/keys/", "/admin/keys//rotate", "/admin/keys/a/b",
        "/admin/keys/a/rotate/", "/admin/users/a/b", "/admin/apis/x", "/admin/nope", "/adminx/keys",
        "/orders", "/admin/Keys", "/admin//keys", "/admin/logs/", "/admin/logs/x",
        "/admin/stats/", "/admin/stats/x", "/admin/metrics/", "/admin/metrics/x",
        "/admin/reload/", "/admin/reload/x"}) {
    EXPECT_FALSE(is_admin_route(path)) << path;
  }
}

TEST_F(AdminRouting, UnknownAdminPathIsNotFound) {
  for (std::string_view path : {"/admin", "/admin/", "/admin/keys/", "/admin/nope",
                                "/admin/users/a/b", "/admin/keys/k000000000000/rotate/"}) {
    expect_error(call("GET", path), 404, "not_found", std::nullopt);
  }
}

TEST_F(AdminRouting, WrongMethodIsMethodNotAllowedWithAllow) {
  struct Case {
    std::string_view method;
    std::string_view path;
    std::string_view allow;
  };
  for (const Case& c :
       {Case{"PUT", "/admin/keys", "GET, POST"}, Case{"DELETE", "/admin/keys", "GET, POST"},
        Case{"GET", "/admin/keys/import", "POST"},
        Case{"POST", "/admin/keys/k000000000000", "GET, PATCH, DELETE"},
        Case{"PUT", "/admin/keys/k000000000000", "GET, PATCH, DELETE"},
        Case{"GET", "/admin/keys/k000000000000/rotate", "POST"},
        Case{"PATCH", "/admin/users", "GET, POST"},
        Case{"POST", "/admin/users/alice", "GET, PATCH, DELETE"},
        Case{"POST", "/admin/apis", "GET"}, Case{"get", "/admin/apis", "GET"},
        Case{"HEAD", "/admin/apis", "GET"}, Case{"POST", "/admin/logs", "GET"},
        Case{"DELETE", "/admin/logs", "GET"}, Case{"POST", "/admin/stats", "GET"}}) {
    const AdminResponse r = call(c.method, c.path);
    expect_error(r, 405, "method_not_allowed", std::nullopt);
    EXPECT_EQ(r.allow, c.allow) << c.method << " " << c.path;
  }
}

TEST_F(AdminRouting, ErrorBodyHasExactlyErrorFieldAndMessage) {
  const AdminResponse r = call("GET", "/admin/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":"not_found","field":null,"message":"no such admin route"})");
  EXPECT_TRUE(r.allow.empty());
}

TEST_F(AdminRouting, OversizedBodyIsRejectedOnSmallRoutes) {
  const std::string big(ctx_.small_body_bytes_max + 1, ' ');
  expect_error(call("POST", "/admin/keys", big), 413, "body_too_large", std::nullopt);
  expect_error(call("PATCH", "/admin/users/alice", big), 413, "body_too_large", std::nullopt);
  expect_error(call("POST", "/admin/keys/k000000000000/rotate", big), 413, "body_too_large",
               std::nullopt);
  expect_error(call("GET", "/admin/apis", big), 413, "body_too_large", std::nullopt);
}

TEST_F(AdminRouting, BodiesOnGetAndDeleteAreIgnored) {
  EXPECT_EQ(call("GET", "/admin/apis", "not json").status, 200);
  add_user("alice");
  EXPECT_EQ(call("DELETE", "/admin/users/alice", "{garbage").status, 204);
}

// ---------------------------------------------------------------------------------------------
// Create

TEST_F(AdminKeys, CreateGeneratesAValueAndStoresOnlyItsDigest) {
  const std::string body = create_key(R"({"apis":["orders"],"description":"ci runner"})");
  const std::string plaintext = string_member(body, "key");
  EXPECT_TRUE(has_generated_shape(plaintext)) << plaintext;
  EXPECT_TRUE(generated_checksum_ok(plaintext));
  ASSERT_EQ(store_.keys.size(), 1u);
  const KeyRecord& r = store_.keys.begin()->second;
  EXPECT_EQ(r.digest, digest_key(plaintext));
  EXPECT_EQ(r.hint, make_key_hint(plaintext));
  EXPECT_EQ(r.description, "ci runner");
  EXPECT_EQ(r.apis, std::vector<std::string>{"orders"});
  EXPECT_TRUE(r.enabled);
  EXPECT_FALSE(r.log_request);
  EXPECT_FALSE(r.log_response);
  EXPECT_FALSE(r.user);
  EXPECT_FALSE(r.expires_at);
  EXPECT_EQ(r.created_at, kNow);
  EXPECT_EQ(r.updated_at, kNow);
  EXPECT_EQ(body, R"({"id":")" + r.id + R"(","hint":")" + r.hint +
                      R"(","description":"ci runner","apis":["orders"],"user":null,)"
                      R"("log_request":false,"log_response":false,"enabled":true,)"
                      R"("created_at":"2023-11-14T22:13:20Z","updated_at":"2023-11-14T22:13:20Z",)"
                      R"("expires_at":null,"last_used_at":null,"key":")" +
                      plaintext + R"("})");
  EXPECT_FALSE(contains(body, "digest"));
}

TEST_F(AdminKeys, CreateAcceptsEveryMember) {
  add_user("kharnagy@domain.corp");
  const std::string body = create_key(
      R"({"apis":["billing","admin"],"description":"a \"quoted\"\n\u0001 one","key":"Operator-Chosen-Value-1",)"
      R"("user":"kharnagy@domain.corp","log_request":true,"log_response":true,"enabled":false,)"
      R"("expires_at":"2030-01-02T03:04:05+01:00"})");
  EXPECT_EQ(string_member(body, "key"), "Operator-Chosen-Value-1");
  const KeyRecord* r = store_.find_by_digest(digest_key("Operator-Chosen-Value-1"));
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->apis, (std::vector<std::string>{"billing", "admin"}));
  EXPECT_EQ(r->description, "a \"quoted\"\n\x01 one");
  EXPECT_EQ(r->user, "kharnagy@domain.corp");
  EXPECT_TRUE(r->log_request);
  EXPECT_TRUE(r->log_response);
  EXPECT_FALSE(r->enabled);
  int64_t expires = 0;
  ASSERT_TRUE(parse_rfc3339("2030-01-02T02:04:05Z", &expires));
  EXPECT_EQ(r->expires_at, expires);
  EXPECT_TRUE(contains(body, R"("description":"a \"quoted\"\u000a\u0001 one")")) << body;
  EXPECT_TRUE(contains(body, R"("expires_at":"2030-01-02T02:04:05Z")")) << body;
  EXPECT_TRUE(contains(body, R"("user":"kharnagy@domain.corp")")) << body;
}

TEST_F(AdminKeys, CreateParsesInPlaceWhenPaddingIsReadable) {
  std::string buffer = R"({"apis":["orders"]})";
  const size_t body_bytes = buffer.size();
  buffer.append(64, 'x');
  AdminRequest request;
  request.method = "POST";
  request.path = "/admin/keys";
  request.body = std::string_view(buffer.data(), body_bytes);
  request.body_readable_padding = 64;
  const AdminResponse r = execute_admin(request, store_, ctx_);
  EXPECT_EQ(r.status, 201) << r.body;
}

TEST_F(AdminKeys, OperatorValueThatExistsIsConflict) {
  create_key(R"({"apis":["orders"],"key":"Operator-Chosen-Value-1"})");
  const AdminResponse r =
      call("POST", "/admin/keys", R"({"apis":["billing"],"key":"Operator-Chosen-Value-1"})");
  expect_error(r, 409, "conflict", "key");
  EXPECT_EQ(store_.create_calls, 2);  // no retry: the value itself collided
  EXPECT_EQ(store_.keys.size(), 1u);
}

TEST_F(AdminKeys, GeneratedKeyRetriesAnIdCollisionThenGivesUp) {
  store_.conflicts_to_inject = 3;
  create_key(R"({"apis":["orders"]})");
  EXPECT_EQ(store_.create_calls, 4);

  store_.create_calls = 0;
  store_.conflicts_to_inject = 100;
  expect_error(call("POST", "/admin/keys", R"({"apis":["orders"]})"), 409, "conflict",
               std::nullopt);
  EXPECT_EQ(store_.create_calls, 4);
}

TEST_F(AdminKeys, OperatorValueIsValidated) {
  std::array<uint8_t, kGeneratedKeyRandomBytes> bytes{};
  std::string bad_checksum = generate_key_value(bytes);
  bad_checksum.back() = bad_checksum.back() == '0' ? '1' : '0';
  ASSERT_TRUE(has_generated_shape(bad_checksum));
  for (std::string_view value :
       {std::string_view(""), std::string_view("has space"), std::string_view(bad_checksum)}) {
    const std::string body = R"({"apis":["orders"],"key":")" + std::string(value) + "\"}";
    expect_error(call("POST", "/admin/keys", body), 400, "invalid_value", "key");
  }
  const std::string long_value(kKeyValueBytesMax + 1, 'a');
  expect_error(call("POST", "/admin/keys", R"({"apis":["orders"],"key":")" + long_value + "\"}"),
               400, "invalid_value", "key");
  expect_error(call("POST", "/admin/keys", R"({"apis":["orders"],"key":7})"), 400, "invalid_type",
               "key");
  EXPECT_TRUE(store_.keys.empty());
}

TEST_F(AdminKeys, CreateRejectsBadBodies) {
  struct Case {
    std::string_view body;
    std::string_view code;
    std::optional<std::string_view> field;
  };
  const std::string long_description(1025, 'd');
  const std::string too_long = R"({"apis":["orders"],"description":")" + long_description + "\"}";
  for (const Case& c : {
           Case{"", "invalid_json", std::nullopt},
           Case{"{", "invalid_json", std::nullopt},
           Case{"{\"apis\":[\"orders\"]} x", "invalid_json", std::nullopt},
           Case{"[1]", "invalid_json", std::nullopt},
           Case{"\"str\"", "invalid_json", std::nullopt},
           Case{"{\"apis\":[\"orders\"],\"description\":\"\xff\"}", "invalid_json", std::nullopt},
           Case{R"({"apis":["orders"],"apis":["billing"]})", "invalid_json", "apis"},
           Case{"{}", "missing_field", "apis"},
           Case{R"({"description":"x"})", "missing_field", "apis"},
           Case{R"({"apis":"orders"})", "invalid_type", "apis"},
           Case{R"({"apis":[7]})", "invalid_type", "apis"},
           Case{R"({"apis":[]})", "invalid_value", "apis"},
           Case{R"({"apis":["orders","orders"]})", "invalid_value", "apis"},
           Case{R"({"apis":["orders","shipping"]})", "unknown_api", "apis"},
           Case{R"({"apis":["Orders"]})", "unknown_api", "apis"},
           Case{R"({"apis":["orders"],"colour":"red"})", "unknown_field", "colour"},
           Case{R"({"apis":["orders"],"description":7})", "invalid_type", "description"},
           Case{too_long, "invalid_value", "description"},
           Case{R"({"apis":["orders"],"enabled":"yes"})", "invalid_type", "enabled"},
           Case{R"({"apis":["orders"],"log_request":1})", "invalid_type", "log_request"},
           Case{R"({"apis":["orders"],"log_response":null})", "invalid_type", "log_response"},
           Case{R"({"apis":["orders"],"user":7})", "invalid_type", "user"},
           Case{R"({"apis":["orders"],"user":""})", "invalid_value", "user"},
           Case{R"({"apis":["orders"],"user":"a\u0007b"})", "invalid_value", "user"},
           Case{R"({"apis":["orders"],"expires_at":1700000000})", "invalid_type", "expires_at"},
           Case{R"({"apis":["orders"],"expires_at":"2026-02-30T00:00:00Z"})", "invalid_value",
                "expires_at"},
           Case{R"({"apis":["orders"],"user":"nobody"})", "unknown_user", "user"},
           Case{R"({"apis":["orders"],"expires_at":"2020-01-01T00:00:00Z"})", "invalid_value",
                "expires_at"},
           Case{R"({"apis":["orders"],"expires_at":"2023-11-14T22:13:20Z"})",
                "invalid_value", "expires_at"},
       }) {
    SCOPED_TRACE(c.body);
    expect_error(call("POST", "/admin/keys", c.body), 400, c.code, c.field);
  }
  EXPECT_TRUE(store_.keys.empty());
}

TEST_F(AdminKeys, NullUserAndExpiryMeanNone) {
  create_key(R"({"apis":["orders"],"user":null,"expires_at":null})");
  ASSERT_EQ(store_.keys.size(), 1u);
  EXPECT_FALSE(store_.keys.begin()->second.user);
  EXPECT_FALSE(store_.keys.begin()->second.expires_at);
}

TEST_F(AdminKeys, RandomSourceFailureIsAnInternalError) {
  random_.fail = true;
  expect_error(call("POST", "/admin/keys", R"({"apis":["orders"]})"), 500, "internal_error",
               std::nullopt);
  EXPECT_TRUE(store_.keys.empty());
}

// ---------------------------------------------------------------------------------------------
// Get, patch, delete

TEST_F(AdminKeys, GetShowsTheRecordWithoutThePlaintext) {
  const std::string created = create_key(R"({"apis":["orders"],"description":"d"})");
  const std::string id = string_member(created, "id");
  const AdminResponse r = call("GET", "/admin/keys/" + id);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(string_member(r.body, "id"), id);
  EXPECT_FALSE(contains(r.body, "\"key\""));
  // The same record as on creation, minus the key.
  EXPECT_EQ(created.substr(0, created.find(",\"key\":")) + "}", r.body);
}

TEST_F(AdminKeys, RecordsShowWhenTheKeyWasLastUsedAndRotationKeepsIt) {
  const std::string used = string_member(create_key(R"({"apis":["orders"]})"), "id");
  const std::string unused = string_member(create_key(R"({"apis":["orders"]})"), "id");
  store_.last_used[used] = kNow + 60;  // 2023-11-14T22:14:20Z
  AdminResponse r = call("GET", "/admin/keys/" + used);
  EXPECT_TRUE(contains(r.body, R"("expires_at":null,"last_used_at":"2023-11-14T22:14:20Z"})"))
      << r.body;
  r = call("GET", "/admin/keys/" + unused);
  EXPECT_TRUE(contains(r.body, R"("last_used_at":null})")) << r.body;
  r = call("GET", "/admin/keys");
  EXPECT_EQ(count_of(r.body, R"("last_used_at":"2023-11-14T22:14:20Z")"), 1u) << r.body;
  EXPECT_EQ(count_of(r.body, R"("last_used_at":null)"), 1u) << r.body;
  r = call("PATCH", "/admin/keys/" + used, R"({"description":"x"})");
  EXPECT_TRUE(contains(r.body, R"("last_used_at":"2023-11-14T22:14:20Z")")) << r.body;
  r = call("POST", "/admin/keys/" + used + "/rotate");
  EXPECT_EQ(r.status, 201);
  EXPECT_TRUE(contains(r.body, R"("last_used_at":"2023-11-14T22:14:20Z")")) << r.body;
}

TEST_F(AdminKeys, UnusedSinceListsKeysNeverUsedOrLastUsedBeforeIt) {
  const std::string old_use = string_member(create_key(R"({"apis":["orders"]})"), "id");
  const std::string recent = string_member(create_key(R"({"apis":["orders"]})"), "id");
  const std::string never = string_member(create_key(R"({"apis":["billing"]})"), "id");
  store_.last_used[old_use] = kNow - 3600;
  store_.last_used[recent] = kNow;
  // kNow - 60 is 2023-11-14T22:12:20Z.
  AdminResponse r = call("GET", "/admin/keys", {}, "unused_since=2023-11-14T22:12:20Z");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(contains(r.body, old_use)) << r.body;
  EXPECT_TRUE(contains(r.body, never)) << r.body;
  EXPECT_FALSE(contains(r.body, recent)) << r.body;
  // Exactly at the last use: used since then.
  r = call("GET", "/admin/keys", {}, "unused_since=2023-11-14T22:13:20Z");
  EXPECT_FALSE(contains(r.body, recent)) << r.body;
  // With the other filters.
  r = call("GET", "/admin/keys", {}, "api=orders&unused_since=2023-11-14T22:12:20Z");
  EXPECT_TRUE(contains(r.body, old_use)) << r.body;
  EXPECT_FALSE(contains(r.body, never)) << r.body;
  expect_error(call("GET", "/admin/keys", {}, "unused_since=last-week"), 400, "invalid_value",
               "unused_since");
  expect_error(call("GET", "/admin/keys", {},
                    "unused_since=2023-11-14T22:12:20Z&unused_since=2023-11-14T22:12:20Z"),
               400, "invalid_value", "unused_since");
  // Users have no such filter.
  expect_error(call("GET", "/admin/users", {}, "unused_since=2023-11-14T22:12:20Z"), 400,
               "unknown_field", "unused_since");
}

TEST_F(AdminKeys, GetUnknownOrMalformedIdIsNotFound) {
  expect_error(call("GET", "/admin/keys/k000000000000"), 404, "not_found", std::nullopt);
  expect_error(call("GET", "/admin/keys/not-an-id"), 404, "not_found", std::nullopt);
  expect_error(call("GET", "/admin/keys/k00000000000%30"), 404, "not_found", std::nullopt);
}

TEST_F(AdminKeys, PatchChangesOnlyTheGivenMembers) {
  add_user("alice");
  const std::string id = string_member(
      create_key(
          R"({"apis":["orders"],"description":"old","user":"alice","expires_at":"2030-01-01T00:00:00Z"})"),
      "id");
  const KeyDigest digest = store_.keys[id].digest;
  ctx_.now = kNow + 60;
  const AdminResponse r = call(
      "PATCH", "/admin/keys/" + id,
      R"({"description":"new","apis":["billing"],"user":null,"log_request":true,"enabled":false,"expires_at":null})");
  ASSERT_EQ(r.status, 200) << r.body;
  const KeyRecord& k = store_.keys[id];
  EXPECT_EQ(k.description, "new");
  EXPECT_EQ(k.apis, std::vector<std::string>{"billing"});
  EXPECT_FALSE(k.user);
  EXPECT_TRUE(k.log_request);
  EXPECT_FALSE(k.log_response);
  EXPECT_FALSE(k.enabled);
  EXPECT_FALSE(k.expires_at);
  EXPECT_EQ(k.created_at, kNow);
  EXPECT_EQ(k.updated_at, kNow + 60);
  EXPECT_EQ(k.digest, digest);
  ASSERT_EQ(store_.update_previous.size(), 1u);
  EXPECT_FALSE(store_.update_previous[0]);
  EXPECT_TRUE(contains(r.body, R"("updated_at":"2023-11-14T22:14:20Z")")) << r.body;
  EXPECT_TRUE(contains(r.body, R"("description":"new")")) << r.body;

  ASSERT_EQ(call("PATCH", "/admin/keys/" + id, R"({"user":"alice"})").status, 200);
  EXPECT_EQ(store_.keys[id].user, "alice");
  EXPECT_EQ(store_.keys[id].description, "new");
}

TEST_F(AdminKeys, PatchRejectsTheKeyMemberUnknownMembersAndEmptyBodies) {
  const std::string id = string_member(create_key(R"({"apis":["orders"]})"), "id");
  expect_error(call("PATCH", "/admin/keys/" + id, R"({"key":"Another-Value-123"})"), 400,
               "unknown_field", "key");
  expect_error(call("PATCH", "/admin/keys/" + id, R"({"digest":"x"})"), 400, "unknown_field",
               "digest");
  expect_error(call("PATCH", "/admin/keys/" + id, "{}"), 400, "missing_field", std::nullopt);
  expect_error(call("PATCH", "/admin/keys/" + id, ""), 400, "invalid_json", std::nullopt);
  expect_error(call("PATCH", "/admin/keys/" + id, R"({"apis":[]})"), 400, "invalid_value", "apis");
  expect_error(call("PATCH", "/admin/keys/" + id, R"({"user":"ghost"})"), 400, "unknown_user",
               "user");
  EXPECT_TRUE(store_.update_previous.empty());
}

TEST_F(AdminKeys, AKeyWhoseUserWasDeletedChangesOnlyByClearingOrReplacingTheUser) {
  add_user("alice");
  add_user("bob");
  const std::string id = string_member(create_key(R"({"apis":["orders"],"user":"alice"})"), "id");
  store_.users.erase("alice");
  expect_error(call("PATCH", "/admin/keys/" + id, R"({"description":"x"})"), 400, "unknown_user",
               "user");
  expect_error(call("POST", "/admin/keys/" + id + "/rotate"), 400, "unknown_user", "user");
  EXPECT_EQ(call("PATCH", "/admin/keys/" + id, R"({"user":"bob"})").status, 200);
  EXPECT_EQ(call("PATCH", "/admin/keys/" + id, R"({"user":null})").status, 200);
  EXPECT_FALSE(store_.keys[id].user);
}

TEST_F(AdminKeys, PatchMissingKeyIsNotFound) {
  expect_error(call("PATCH", "/admin/keys/k000000000000", R"({"enabled":false})"), 404, "not_found",
               std::nullopt);
}

TEST_F(AdminKeys, DeleteRemovesOnceThenNotFound) {
  const std::string id = string_member(create_key(R"({"apis":["orders"]})"), "id");
  const AdminResponse r = call("DELETE", "/admin/keys/" + id);
  EXPECT_EQ(r.status, 204);
  EXPECT_TRUE(r.body.empty());
  EXPECT_TRUE(store_.keys.empty());
  expect_error(call("DELETE", "/admin/keys/" + id), 404, "not_found", std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Rotate

TEST_F(AdminRotate, RotateWithGraceKeepsTheOldDigestUntilItEnds) {
  const std::string created = create_key(R"({"apis":["orders"],"key":"Operator-Chosen-Value-1"})");
  const std::string id = string_member(created, "id");
  const KeyDigest old_digest = store_.keys[id].digest;
  ctx_.now = kNow + 100;
  const AdminResponse r =
      call("POST", "/admin/keys/" + id + "/rotate", R"({"grace_seconds":3600})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string plaintext = string_member(r.body, "key");
  plaintexts_.push_back(plaintext);
  EXPECT_TRUE(has_generated_shape(plaintext));
  EXPECT_EQ(string_member(r.body, "id"), id);
  const KeyRecord& k = store_.keys[id];
  EXPECT_EQ(k.digest, digest_key(plaintext));
  EXPECT_EQ(k.hint, make_key_hint(plaintext));
  EXPECT_EQ(k.updated_at, kNow + 100);
  EXPECT_EQ(k.created_at, kNow);
  ASSERT_EQ(store_.update_previous.size(), 1u);
  ASSERT_TRUE(store_.update_previous[0]);
  EXPECT_EQ(store_.update_previous[0]->digest, old_digest);
  EXPECT_EQ(store_.update_previous[0]->valid_until, kNow + 100 + 3600);
  EXPECT_EQ(k.previous_digest, old_digest);
  EXPECT_EQ(k.previous_valid_until, kNow + 100 + 3600);
  EXPECT_EQ(call("GET", "/admin/keys/" + id).status, 200);
}

TEST_F(AdminRotate, RotateWithoutBodyOrZeroGraceRetiresTheOldValueAtOnce) {
  const std::string id = string_member(create_key(R"({"apis":["orders"]})"), "id");
  for (std::string_view body : {"", R"({"grace_seconds":0})", "{}"}) {
    const AdminResponse r = call("POST", "/admin/keys/" + id + "/rotate", body);
    ASSERT_EQ(r.status, 201) << r.body;
    plaintexts_.push_back(string_member(r.body, "key"));
  }
  ASSERT_EQ(store_.update_previous.size(), 3u);
  for (const auto& previous : store_.update_previous) EXPECT_FALSE(previous);
  EXPECT_FALSE(store_.keys[id].previous_digest);
  // Every rotation produced a different value.
  std::set<std::string> distinct(plaintexts_.begin(), plaintexts_.end());
  EXPECT_EQ(distinct.size(), 4u);
}

TEST_F(AdminRotate, RotateRejectsBadGraceAndUnknownKeys) {
  const std::string id = string_member(create_key(R"({"apis":["orders"]})"), "id");
  const std::string path = "/admin/keys/" + id + "/rotate";
  expect_error(call("POST", path, R"({"grace_seconds":-1})"), 400, "invalid_value",
               "grace_seconds");
  expect_error(call("POST", path, R"({"grace_seconds":2592001})"), 400, "invalid_value",
               "grace_seconds");
  expect_error(call("POST", path, R"({"grace_seconds":18446744073709551615})"), 400,
               "invalid_value", "grace_seconds");
  expect_error(call("POST", path, R"({"grace_seconds":1.5})"), 400, "invalid_type",
               "grace_seconds");
  expect_error(call("POST", path, R"({"grace_seconds":"60"})"), 400, "invalid_type",
               "grace_seconds");
  expect_error(call("POST", path, R"({"key":"Another-Value-123"})"), 400, "unknown_field", "key");
  expect_error(call("POST", path, "[]"), 400, "invalid_json", std::nullopt);
  EXPECT_TRUE(store_.update_previous.empty());
  EXPECT_EQ(call("POST", path, R"({"grace_seconds":2592000})").status, 201);
  expect_error(call("POST", "/admin/keys/k000000000000/rotate"), 404, "not_found", std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// List

TEST_F(AdminKeyList, PagesInIdOrderAndEndsWithANullCursor) {
  seed_keys(5, [](int, KeyRecord*) {});
  AdminResponse r = call("GET", "/admin/keys", "", "limit=2");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(ids_in(r.body), (std::vector<std::string>{"k000000000000", "k000000000001"}));
  EXPECT_EQ(next_cursor(r.body), "k000000000001");
  r = call("GET", "/admin/keys", "", "limit=2&cursor=k000000000001");
  EXPECT_EQ(ids_in(r.body), (std::vector<std::string>{"k000000000002", "k000000000003"}));
  EXPECT_EQ(next_cursor(r.body), "k000000000003");
  r = call("GET", "/admin/keys", "", "cursor=k000000000003&limit=2");
  EXPECT_EQ(ids_in(r.body), std::vector<std::string>{"k000000000004"});
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
  EXPECT_FALSE(contains(r.body, "digest"));
  EXPECT_FALSE(contains(r.body, "\"key\""));

  // A page that ends exactly at the last record already says so.
  r = call("GET", "/admin/keys", "", "limit=5");
  EXPECT_EQ(ids_in(r.body).size(), 5u);
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
}

TEST_F(AdminKeyList, DefaultsToOneHundredAndAnEmptyStoreListsNothing) {
  AdminResponse r = call("GET", "/admin/keys");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"keys":[],"next_cursor":null})");
  seed_keys(150, [](int, KeyRecord*) {});
  r = call("GET", "/admin/keys");
  EXPECT_EQ(ids_in(r.body).size(), 100u);
  EXPECT_EQ(next_cursor(r.body), "k000000000099");
}

TEST_F(AdminKeyList, FiltersApplyAcrossPages) {
  add_user("kharnagy@domain.corp");
  seed_keys(40, [](int i, KeyRecord* r) {
    if (i % 3 == 0) r->apis = {"orders", "billing"};
    if (i % 4 == 0) r->user = "kharnagy@domain.corp";
  });
  std::vector<std::string> expected;
  for (const auto& [id, r] : store_.keys) {
    if (r.has_api("billing") && r.user == "kharnagy@domain.corp") expected.push_back(id);
  }
  ASSERT_EQ(expected.size(), 4u);  // 0, 12, 24, 36

  std::vector<std::string> seen;
  std::optional<std::string> cursor = "";
  for (int page = 0; page < 20 && cursor; ++page) {
    const std::string query = "api=billing&user=kharnagy%40domain.corp&limit=1" +
                              (cursor->empty() ? "" : "&cursor=" + *cursor);
    const AdminResponse r = call("GET", "/admin/keys", "", query);
    ASSERT_EQ(r.status, 200) << r.body;
    const std::vector<std::string> ids = ids_in(r.body);
    EXPECT_LE(ids.size(), 1u);
    seen.insert(seen.end(), ids.begin(), ids.end());
    cursor = next_cursor(r.body);
  }
  EXPECT_FALSE(cursor);
  EXPECT_EQ(seen, expected);
}

TEST_F(AdminKeyList, ARareFilterReturnsShortPagesWithACursorWithinTheScanBudget) {
  seed_keys(30, [](int i, KeyRecord* r) {
    if (i == 29) r->apis = {"billing"};
  });
  // limit=1 examines at most 10 records per request.
  AdminResponse r = call("GET", "/admin/keys", "", "api=billing&limit=1");
  EXPECT_EQ(r.body, R"({"keys":[],"next_cursor":"k000000000009"})");
  r = call("GET", "/admin/keys", "", "api=billing&limit=1&cursor=k000000000009");
  EXPECT_EQ(r.body, R"({"keys":[],"next_cursor":"k000000000019"})");
  r = call("GET", "/admin/keys", "", "api=billing&limit=1&cursor=k000000000019");
  EXPECT_EQ(ids_in(r.body), std::vector<std::string>{"k000000000029"});
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
}

TEST_F(AdminKeyList, RejectsBadQueryParameters) {
  expect_refused("/admin/keys", bad_paging_queries());
  expect_refused("/admin/keys", {{"cursor=k00000000000!", "invalid_value", "cursor"},
                                 {"api=", "invalid_value", "api"},
                                 {"user=", "invalid_value", "user"},
                                 {"user=%zz", "invalid_value", std::nullopt},
                                 {"api=a&api=b", "invalid_value", "api"}});
  EXPECT_EQ(call("GET", "/admin/keys", "", "limit=1000").status, 200);
  EXPECT_EQ(call("GET", "/admin/keys", "", "cursor=&limit=1").status, 200);
}

// Only the listings read a query; every other route refuses a parameter (but the admin key's
// `key`) as they refuse one they do not know, and does nothing. It was ignored: a DELETE with
// ?dry_run=1 deleted, a POST /admin/keys?user=bob made a key without a user.
TEST_F(AdminTest, RoutesThatReadNoQueryRefuseAParameterAndDoNothing) {
  seed_keys(1, [](int, KeyRecord*) {});
  add_user("bob");
  const std::string id = "k000000000000";
  struct Case {
    std::string_view method;
    std::string path;
    std::string_view body;
  };
  const std::vector<Case> cases = {
      {"POST", "/admin/keys", R"({"apis":["orders"]})"},
      {"GET", "/admin/keys/" + id, ""},
      {"PATCH", "/admin/keys/" + id, R"({"enabled":false})"},
      {"DELETE", "/admin/keys/" + id, ""},
      {"POST", "/admin/keys/" + id + "/rotate", ""},
      {"POST", "/admin/keys/import", R"({"keys":[]})"},
      {"POST", "/admin/users", R"({"name":"carol"})"},
      {"GET", "/admin/users/bob", ""},
      {"PATCH", "/admin/users/bob", R"({"grants":[]})"},
      {"DELETE", "/admin/users/bob", ""},
      {"GET", "/admin/apis", ""},
      {"GET", "/admin/stats", ""},
      {"GET", "/admin/metrics", ""},
      {"POST", "/admin/reload", ""},
      {"GET", "/admin/backups", ""},
      {"POST", "/admin/backups", ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.method) + " " + c.path);
    expect_error(call(c.method, c.path, c.body, "dry_run=1"), 400, "unknown_field", "dry_run");
    expect_error(call(c.method, c.path, c.body, "key=x&user=bob"), 400, "unknown_field", "user");
  }
  ASSERT_EQ(store_.keys.size(), 1u);
  EXPECT_TRUE(store_.keys.begin()->second.enabled);
  EXPECT_EQ(store_.users.size(), 1u);
  // The admin key's own parameter is no route's: still taken everywhere.
  EXPECT_EQ(call("GET", "/admin/keys/" + id, "", "key=x").status, 200);
  EXPECT_EQ(call("GET", "/admin/apis", "", "key=x").status, 200);
}

// A limit is read by core/decimal.h's parse_decimal, as on GET /admin/logs: leading zeros are
// the value's ("limit=01000" is 1000). The listings' own digit loop refused more than 4 digits,
// so "limit=01000" was 400 there and 200 on /admin/logs, and "limit=0001" 200 on both.
TEST_F(AdminTest, AListingLimitWithLeadingZerosIsItsValueAsOnTheLog) {
  store_.has_log = true;
  for (const std::string_view path : {"/admin/keys", "/admin/users", "/admin/logs"}) {
    for (const std::string_view query : {"limit=01000", "limit=00000000000000000007"}) {
      EXPECT_EQ(call("GET", path, "", query).status, 200) << path << "?" << query;
    }
    expect_error(call("GET", path, "", "limit=01001"), 400, "invalid_value", "limit");
    expect_error(call("GET", path, "", "limit=000000000000000000001"), 400, "invalid_value",
                 "limit");  // 21 digits: parse_decimal's bound
  }
}

// Found with tests/fuzz/admin_api_fuzz.cc: an unknown query parameter is named in the error's
// "field", percent-decoded, so its name can be any bytes; the answer stayed invalid JSON (a raw
// 0xFF) until the JSON writer replaced bytes that are not UTF-8.
TEST_F(AdminTest, UnknownQueryParameterThatIsNotUtf8StillGetsAJsonError) {
  for (const std::string_view path : {"/admin/keys", "/admin/users", "/admin/logs"}) {
    const AdminResponse r = call("GET", path, "", "%FF%C0=1");
    expect_error(r, 400, "unknown_field", "\\ufffd\\ufffd");
    simdjson::dom::parser parser;
    EXPECT_EQ(parser.parse(r.body).error(), simdjson::SUCCESS) << path << ": " << r.body;
  }
}

TEST_F(AdminKeyList, NeverShowsThePlaintextOfCreatedKeys) {
  for (int i = 0; i < 3; ++i) create_key(R"({"apis":["orders"]})");
  const AdminResponse r = call("GET", "/admin/keys");
  EXPECT_EQ(ids_in(r.body).size(), 3u);
  EXPECT_FALSE(contains(r.body, "\"key\""));
}

// ---------------------------------------------------------------------------------------------
// Import

std::string import_body(const std::vector<std::string>& records) {
  std::string out = "{\"keys\":[";
  for (size_t i = 0; i < records.size(); ++i) {
    if (i > 0) out += ',';
    out += records[i];
  }
  return out + "]}";
}

std::string import_record(int i, std::string_view extra = "") {
  return R"({"key":"imported-value-)" + std::to_string(i) + R"(","apis":["orders"])" +
         std::string(extra) + "}";
}

TEST_F(AdminImport, ImportsEveryRecordAndReturnsTheirIds) {
  add_user("alice");
  for (int i = 0; i < 3; ++i) plaintexts_.push_back("imported-value-" + std::to_string(i));
  const AdminResponse r =
      call("POST", "/admin/keys/import",
           import_body(
               {import_record(0),
                import_record(1, R"(,"description":"legacy","user":"alice","enabled":false)"),
                import_record(2, R"(,"log_request":true,"expires_at":"2031-01-01T00:00:00Z")")}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(contains(r.body, "{\"imported\":3,\"ids\":[")) << r.body;
  const std::vector<std::string> ids = imported_ids(r.body);
  ASSERT_EQ(ids.size(), 3u);
  ASSERT_EQ(store_.keys.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const KeyRecord& k = store_.keys.at(ids[static_cast<size_t>(i)]);
    EXPECT_EQ(k.digest, digest_key("imported-value-" + std::to_string(i)));
    EXPECT_EQ(k.hint, make_key_hint("imported-value-" + std::to_string(i)));
    EXPECT_EQ(k.created_at, kNow);
  }
  EXPECT_EQ(store_.keys.at(ids[1]).user, "alice");
  EXPECT_EQ(store_.keys.at(ids[1]).description, "legacy");
  EXPECT_FALSE(store_.keys.at(ids[1]).enabled);
  EXPECT_TRUE(store_.keys.at(ids[2]).log_request);
  EXPECT_TRUE(store_.keys.at(ids[2]).expires_at);
}

TEST_F(AdminImport, ABadThirdRecordStoresNothing) {
  const AdminResponse r =
      call("POST", "/admin/keys/import",
           import_body({import_record(0), import_record(1),
                        R"({"key":"imported-value-2","apis":["nope"]})", import_record(3)}));
  expect_error(r, 400, "unknown_api", "keys[2].apis");
  EXPECT_TRUE(store_.keys.empty());
  EXPECT_EQ(store_.import_calls, 0);
}

TEST_F(AdminImport, ValidationErrorsNameTheRecordAndMember) {
  struct Case {
    std::string body;
    int status;
    std::string_view code;
    std::optional<std::string_view> field;
  };
  const std::vector<Case> cases = {
      {"[]", 400, "invalid_json", std::nullopt},
      {"{}", 400, "missing_field", "keys"},
      {R"({"keys":{}})", 400, "invalid_type", "keys"},
      {R"({"keys":[],"extra":1})", 400, "unknown_field", "extra"},
      {import_body({import_record(0), "7"}), 400, "invalid_type", "keys[1]"},
      {import_body({R"({"apis":["orders"]})"}), 400, "missing_field", "keys[0].key"},
      {import_body({R"({"key":"imported-value-0"})"}), 400, "missing_field", "keys[0].apis"},
      {import_body({import_record(0), R"({"key":"bad value","apis":["orders"]})"}), 400,
       "invalid_value", "keys[1].key"},
      {import_body({import_record(0, R"(,"id":"k000000000000")")}), 400, "unknown_field",
       "keys[0].id"},
      {import_body({import_record(0, R"(,"enabled":"no")")}), 400, "invalid_type",
       "keys[0].enabled"},
      {import_body({import_record(0), import_record(1), import_record(0)}), 409, "conflict",
       "keys[2].key"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    expect_error(call("POST", "/admin/keys/import", c.body), c.status, c.code, c.field);
  }
  EXPECT_TRUE(store_.keys.empty());
  EXPECT_EQ(store_.import_calls, 0);
}

TEST_F(AdminImport, MoreThanTheMaximumIsTooLarge) {
  std::vector<std::string> records;
  for (int i = 0; i <= static_cast<int>(ctx_.import_keys_max); ++i)
    records.push_back(import_record(i));
  expect_error(call("POST", "/admin/keys/import", import_body(records)), 413, "body_too_large",
               "keys");
  EXPECT_TRUE(store_.keys.empty());
  records.pop_back();
  EXPECT_EQ(call("POST", "/admin/keys/import", import_body(records)).status, 200);
  EXPECT_EQ(store_.keys.size(), ctx_.import_keys_max);
}

TEST_F(AdminImport, ImportIsNotBoundByTheSmallBodyLimit) {
  const std::string description(1000, 'd');
  std::vector<std::string> records;
  for (int i = 0; i < 8; ++i) {
    records.push_back(import_record(i, R"(,"description":")" + description + "\""));
  }
  const std::string body = import_body(records);
  ASSERT_GT(body.size(), ctx_.small_body_bytes_max);
  EXPECT_EQ(call("POST", "/admin/keys/import", body).status, 200);
}

TEST_F(AdminImport, StoreConflictAndUnknownUserNameTheFailingRecord) {
  create_key(R"({"apis":["orders"],"key":"imported-value-1"})");
  expect_error(
      call("POST", "/admin/keys/import", import_body({import_record(0), import_record(1)})), 409,
      "conflict", "keys[1].key");
  EXPECT_EQ(store_.keys.size(), 1u);
  expect_error(call("POST", "/admin/keys/import",
                    import_body({import_record(5), import_record(6, R"(,"user":"ghost")")})),
               400, "unknown_user", "keys[1].user");
  EXPECT_EQ(store_.keys.size(), 1u);
}

TEST_F(AdminImport, AnEmptyImportImportsNothing) {
  const AdminResponse r = call("POST", "/admin/keys/import", R"({"keys":[]})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"imported":0,"ids":[]})");
}

// ---------------------------------------------------------------------------------------------
// Users

TEST_F(AdminUsers, CreateGetListPatchDelete) {
  AdminResponse r = call(
      "POST", "/admin/users",
      R"({"name":"kharnagy@domain.corp","grants":[{"api":"orders","methods":["GET","POST"],"path_prefix":"/orders/eu"},{"api":"billing"}]})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string expected =
      R"({"name":"kharnagy@domain.corp","grants":[{"api":"orders","methods":["GET","POST"],"path_prefix":"/orders/eu"},)"
      R"({"api":"billing","methods":[],"path_prefix":""}]})";
  EXPECT_EQ(r.body, expected);
  ASSERT_EQ(store_.users.count("kharnagy@domain.corp"), 1u);
  EXPECT_EQ(store_.users["kharnagy@domain.corp"].grants.size(), 2u);

  r = call("GET", "/admin/users/kharnagy%40domain.corp");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, expected);
  EXPECT_EQ(call("GET", "/admin/users/kharnagy@domain.corp").body, expected);
  expect_error(call("GET", "/admin/users/KHARNAGY%40domain.corp"), 404, "not_found", std::nullopt);

  r = call("GET", "/admin/users");
  EXPECT_EQ(r.body, "{\"users\":[" + expected + "],\"next_cursor\":null}");

  r = call("PATCH", "/admin/users/kharnagy%40domain.corp",
           R"({"grants":[{"api":"billing","methods":["DELETE"]}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(
      r.body,
      R"({"name":"kharnagy@domain.corp","grants":[{"api":"billing","methods":["DELETE"],"path_prefix":""}]})");
  EXPECT_EQ(store_.users["kharnagy@domain.corp"].grants.size(), 1u);

  EXPECT_EQ(call("DELETE", "/admin/users/kharnagy%40domain.corp").status, 204);
  EXPECT_TRUE(store_.users.empty());
  expect_error(call("DELETE", "/admin/users/kharnagy%40domain.corp"), 404, "not_found",
               std::nullopt);
  expect_error(call("PATCH", "/admin/users/kharnagy%40domain.corp", R"({"grants":[]})"), 404,
               "not_found", std::nullopt);
}

TEST_F(AdminUsers, CreatingAnExistingUserIsConflict) {
  add_user("alice");
  store_.users["alice"].grants.push_back(Grant{"orders", {}, ""});
  expect_error(call("POST", "/admin/users", R"({"name":"alice","grants":[]})"), 409, "conflict",
               "name");
  EXPECT_EQ(store_.users["alice"].grants.size(), 1u);
}

TEST_F(AdminUsers, GrantsDefaultToNone) {
  EXPECT_EQ(call("POST", "/admin/users", R"({"name":"bob"})").body,
            R"({"name":"bob","grants":[]})");
}

TEST_F(AdminUsers, RejectsBadUsersAndGrants) {
  struct Case {
    std::string body;
    std::string_view code;
    std::optional<std::string_view> field;
  };
  const std::string long_name(257, 'n');
  const std::vector<Case> cases = {
      {R"({"grants":[]})", "missing_field", "name"},
      {R"({"name":7})", "invalid_type", "name"},
      {R"({"name":""})", "invalid_value", "name"},
      {R"({"name":"a\nb"})", "invalid_value", "name"},
      {R"({"name":"a\u007fb"})", "invalid_value", "name"},
      // Sent on as X-Keygate-User: printable ASCII only.
      {R"({"name":"j\u00fcrgen"})", "invalid_value", "name"},
      {R"({"name":")" + long_name + "\"}", "invalid_value", "name"},
      // X-Keygate-User must arrive as written: receivers strip surrounding spaces (" " would
      // be no user at all, "alice " would be alice), and "."/".." cannot be named in a path.
      {R"({"name":" "})", "invalid_value", "name"},
      {R"({"name":"alice "})", "invalid_value", "name"},
      {R"({"name":" alice"})", "invalid_value", "name"},
      {R"({"name":"."})", "invalid_value", "name"},
      {R"({"name":".."})", "invalid_value", "name"},
      {R"({"name":"u","role":"x"})", "unknown_field", "role"},
      {R"({"name":"u","grants":{}})", "invalid_type", "grants"},
      {R"({"name":"u","grants":[1]})", "invalid_type", "grants[0]"},
      {R"({"name":"u","grants":[{}]})", "missing_field", "grants[0].api"},
      {R"({"name":"u","grants":[{"api":"orders"},{"api":"admin"}]})", "invalid_value",
       "grants[1].api"},
      {R"({"name":"u","grants":[{"api":"shipping"}]})", "unknown_api", "grants[0].api"},
      {R"({"name":"u","grants":[{"api":7}]})", "invalid_type", "grants[0].api"},
      {R"({"name":"u","grants":[{"api":"orders","methods":"GET"}]})", "invalid_type",
       "grants[0].methods"},
      {R"({"name":"u","grants":[{"api":"orders","methods":["get"]}]})", "invalid_value",
       "grants[0].methods"},
      {R"({"name":"u","grants":[{"api":"orders","methods":[""]}]})", "invalid_value",
       "grants[0].methods"},
      {R"({"name":"u","grants":[{"api":"orders","methods":["GET","GET"]}]})", "invalid_value",
       "grants[0].methods"},
      {R"({"name":"u","grants":[{"api":"orders","methods":["G T"]}]})", "invalid_value",
       "grants[0].methods"},
      {R"({"name":"u","grants":[{"api":"orders","path_prefix":"orders"}]})", "invalid_value",
       "grants[0].path_prefix"},
      {R"({"name":"u","grants":[{"api":"orders","path_prefix":"/orders/../admin"}]})",
       "invalid_value", "grants[0].path_prefix"},
      {R"({"name":"u","grants":[{"api":"orders","path_prefix":"/orders;v=1"}]})",
       "invalid_value", "grants[0].path_prefix"},
      {R"({"name":"u","grants":[{"api":"orders","path_prefix":"/orders?id=7"}]})",
       "invalid_value", "grants[0].path_prefix"},
      // Never in a request path (the data port's parser refuses them): such a grant would
      // never match. Percent-encoded ("/orders/caf%C3%A9") it is accepted.
      {"{\"name\":\"u\",\"grants\":[{\"api\":\"orders\",\"path_prefix\":\"/orders/caf\xc3\xa9\"}]}",
       "invalid_value", "grants[0].path_prefix"},
      {R"({"name":"u","grants":[{"api":"orders","path_prefix":"/orders/a b"}]})",
       "invalid_value", "grants[0].path_prefix"},
      {R"({"name":"u","grants":[{"api":"orders","path_prefix":7}]})", "invalid_type",
       "grants[0].path_prefix"},
      {R"({"name":"u","grants":[{"api":"orders","verbs":[]}]})", "unknown_field",
       "grants[0].verbs"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    expect_error(call("POST", "/admin/users", c.body), 400, c.code, c.field);
  }
  EXPECT_TRUE(store_.users.empty());
  EXPECT_EQ(
      call("POST", "/admin/users",
           R"({"name":"u","grants":[{"api":"orders","methods":["M-SEARCH"],"path_prefix":"/"}]})")
          .status,
      201);
  EXPECT_EQ(call("POST", "/admin/users", R"({"name":"Ada Lovelace"})").status, 201);
  EXPECT_EQ(call("POST", "/admin/users", R"({"name":"..."})").status, 201);
}

// A user from a store older than the space and dot rules stays reachable, so it can be fixed
// or removed (its keys fail closed meanwhile).
TEST_F(AdminUsers, AUserNamedUnderOlderRulesCanStillBeReadChangedAndDeleted) {
  add_user("alice ");
  add_user("..");
  EXPECT_EQ(call("GET", "/admin/users/alice%20").status, 200);
  EXPECT_EQ(call("GET", "/admin/keys", "", "user=alice%20").status, 200);
  EXPECT_EQ(call("PATCH", "/admin/users/alice%20", R"({"grants":[]})").status, 200);
  EXPECT_EQ(call("DELETE", "/admin/users/alice%20").status, 204);
  EXPECT_EQ(call("DELETE", "/admin/users/%2E%2E").status, 204);
  EXPECT_TRUE(store_.users.empty());
  // Creating one under the old rules is refused.
  expect_error(call("POST", "/admin/users", R"({"name":"alice "})"), 400, "invalid_value", "name");
}

TEST_F(AdminUsers, PatchReplacesOnlyGrants) {
  add_user("alice");
  expect_error(call("PATCH", "/admin/users/alice", "{}"), 400, "missing_field", "grants");
  expect_error(call("PATCH", "/admin/users/alice", R"({"name":"bob","grants":[]})"), 400,
               "unknown_field", "name");
  expect_error(call("PATCH", "/admin/users/alice", R"({"grants":[{"api":"admin"}]})"), 400,
               "invalid_value", "grants[0].api");
}

TEST_F(AdminUsers, MalformedNamesInThePathAreRejected) {
  expect_error(call("GET", "/admin/users/a%zz"), 400, "invalid_value", "name");
  expect_error(call("GET", "/admin/users/a%4"), 400, "invalid_value", "name");
  expect_error(call("DELETE", "/admin/users/a%0Ab"), 400, "invalid_value", "name");
  // A '+' in a path is a plus, not a space.
  add_user("a+b");
  EXPECT_EQ(call("GET", "/admin/users/a+b").status, 200);
  add_user("a/b");
  EXPECT_EQ(call("GET", "/admin/users/a%2Fb").status, 200);
}

// ---------------------------------------------------------------------------------------------
// User list

TEST_F(AdminUserList, PagesInNameOrderFromTheCursorAndEndsWithANullCursor) {
  for (const char* name : {"erin", "bob", "dave", "alice", "carol"}) add_user(name);
  AdminResponse r = call("GET", "/admin/users", "", "limit=2");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(names_in(r.body), (std::vector<std::string>{"alice", "bob"}));
  const std::optional<std::string> first = next_cursor(r.body);
  ASSERT_TRUE(first);
  r = call("GET", "/admin/users", "", "limit=2&cursor=" + *first);
  EXPECT_EQ(names_in(r.body), (std::vector<std::string>{"carol", "dave"}));
  const std::optional<std::string> second = next_cursor(r.body);
  ASSERT_TRUE(second);
  r = call("GET", "/admin/users", "", "cursor=" + *second + "&limit=2");
  EXPECT_EQ(names_in(r.body), std::vector<std::string>{"erin"});
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
  EXPECT_TRUE(r.body.ends_with("],\"next_cursor\":null}")) << r.body;
  // The store is read from the cursor on, one user more than the page: never all of it.
  EXPECT_EQ(store_.list_users_calls,
            (std::vector<std::pair<std::string, size_t>>{{"", 3}, {"bob", 3}, {"dave", 3}}));

  // A page that ends exactly at the last user already says so.
  r = call("GET", "/admin/users", "", "limit=5");
  EXPECT_EQ(names_in(r.body).size(), 5u);
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
  // An empty cursor starts at the first user.
  r = call("GET", "/admin/users", "", "cursor=&limit=1");
  EXPECT_EQ(names_in(r.body), std::vector<std::string>{"alice"});
}

TEST_F(AdminUserList, DefaultsToOneHundredAndTakesAtMostOneThousand) {
  AdminResponse r = call("GET", "/admin/users");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"users":[],"next_cursor":null})");
  for (int i = 0; i < 1001; ++i) {
    char name[16];
    std::snprintf(name, sizeof(name), "user-%04d", i);
    add_user(name);
  }
  r = call("GET", "/admin/users");
  ASSERT_EQ(r.status, 200);
  const std::vector<std::string> names = names_in(r.body);
  ASSERT_EQ(names.size(), 100u);
  EXPECT_EQ(names.back(), "user-0099");
  EXPECT_TRUE(next_cursor(r.body));
  r = call("GET", "/admin/users", "", "limit=1000");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(names_in(r.body).size(), 1000u);
  r = call("GET", "/admin/users", "", "limit=1000&cursor=" + next_cursor(r.body).value_or(""));
  EXPECT_EQ(names_in(r.body), std::vector<std::string>{"user-1000"});
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
  expect_error(call("GET", "/admin/users", "", "limit=1001"), 400, "invalid_value", "limit");
}

TEST_F(AdminUserList, APageOfLargeUsersEndsEarlyWithACursor) {
  // 8 users of ~1 MiB each (1000 grants with 1 KiB path prefixes): a page of all 8 would be
  // ~8 MiB; it ends after the user that passes the 4 MiB budget, and the cursor continues.
  for (int u = 0; u < 8; ++u) {
    User user{"big-" + std::to_string(u), {}};
    for (int g = 0; g < 1000; ++g) {
      user.grants.push_back({"orders", {"GET"}, "/orders/" + std::string(1024, static_cast<char>('a' + u))});
    }
    store_.users[user.name] = user;
  }
  std::vector<std::string> all;
  std::string cursor;
  int pages = 0;
  for (;;) {
    const AdminResponse r = call("GET", "/admin/users", "", "limit=8&cursor=" + cursor);
    ASSERT_EQ(r.status, 200);
    ++pages;
    EXPECT_LT(r.body.size(), (4u << 20) + (2u << 20)) << "one user past the budget at most";
    const std::vector<std::string> names = names_in(r.body);
    ASSERT_FALSE(names.empty());
    all.insert(all.end(), names.begin(), names.end());
    const std::optional<std::string> next = next_cursor(r.body);
    if (!next) break;
    cursor = *next;
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(all.size(), 8u);
  EXPECT_EQ(all.front(), "big-0");
  EXPECT_EQ(all.back(), "big-7");
  EXPECT_GE(pages, 2);
}

TEST_F(AdminUserList, RejectsBadQueryParametersAsTheKeyListingDoes) {
  add_user("alice");
  expect_refused("/admin/users", bad_paging_queries());
  expect_refused("/admin/users",
                 {// Not what this API hands out: odd length, a name or a key id as is, too long.
                  {"cursor=616", "invalid_value", "cursor"},
                  {"cursor=alice", "invalid_value", "cursor"},
                  {"cursor=k000000000000", "invalid_value", "cursor"},
                  {"cursor=" + std::string(2 * 257, '6'), "invalid_value", "cursor"},
                  {"cursor=61&cursor=62", "invalid_value", "cursor"},
                  // The key listing's filters mean nothing here.
                  {"api=orders", "unknown_field", "api"},
                  {"user=alice", "unknown_field", "user"}});
  EXPECT_TRUE(store_.list_users_calls.empty());
  // The admin key in the query is not a parameter of the route.
  EXPECT_EQ(call("GET", "/admin/users", "", "key=whatever&limit=1000").status, 200);
  EXPECT_EQ(call("GET", "/admin/users", "", "cursor=" + std::string(2 * 256, '7')).status, 200);
}

// Percent-encodes every byte: what a client that encodes its query values sends at most.
std::string encode_every_byte(std::string_view text) {
  std::string out;
  for (char c : text) {
    char hex[4];
    std::snprintf(hex, sizeof(hex), "%%%02X", static_cast<unsigned char>(c));
    out += hex;
  }
  return out;
}

TEST_F(AdminUserList, AnyNameRoundTripsThroughTheCursorWhetherOrNotTheClientEncodesIt) {
  const std::vector<std::string> names = {
      "a b", "a+b", "a%2B", "a%", "a&b=c", "a/b", "a?b#c", "a\"b", "a\\b", "a;b,", "%zz", "+",
      "~!@", "50%", "alice", "a b ", "kharnagy@domain.corp",
      // Stored under older rules or from outside the API: non-ASCII bytes, trailing space.
      "j\xc3\xbcrgen", "zed "};
  for (const std::string& name : names) add_user(name);
  std::vector<std::string> expected;
  for (const auto& [name, user] : store_.users) expected.push_back(name);
  ASSERT_EQ(expected.size(), names.size());

  for (const bool encode : {false, true}) {
    SCOPED_TRACE(encode ? "percent-encoded cursors" : "cursors as given");
    store_.list_users_calls.clear();
    std::vector<std::string> seen;
    std::optional<std::string> cursor = "";
    for (size_t page = 0; page <= names.size() && cursor; ++page) {
      const std::string query = "limit=1&cursor=" + (encode ? encode_every_byte(*cursor) : *cursor);
      const AdminResponse r = call("GET", "/admin/users", "", query);
      ASSERT_EQ(r.status, 200) << r.body;
      const std::vector<std::string> page_names = names_in(r.body);
      ASSERT_EQ(page_names.size(), 1u) << r.body;
      seen.push_back(page_names[0]);
      cursor = next_cursor(r.body);
      if (!cursor) break;
      // Opaque, and safe in a URL as it is: RFC 3986 unreserved characters only.
      EXPECT_EQ(cursor->find_first_not_of(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"),
                std::string::npos)
          << *cursor;
    }
    EXPECT_FALSE(cursor);
    EXPECT_EQ(seen, expected);
    // Each page started right after the previous page's name, byte for byte.
    ASSERT_EQ(store_.list_users_calls.size(), expected.size());
    for (size_t i = 1; i < expected.size(); ++i) {
      EXPECT_EQ(store_.list_users_calls[i].first, expected[i - 1]);
    }
  }
}

TEST_F(AdminUserList, UsersCreatedOrDeletedBetweenPagesDoNotBreakThePaging) {
  for (const char* name : {"u1", "u2", "u3", "u4", "u5", "u6"}) add_user(name);
  AdminResponse r = call("GET", "/admin/users", "", "limit=2");
  EXPECT_EQ(names_in(r.body), (std::vector<std::string>{"u1", "u2"}));
  std::optional<std::string> cursor = next_cursor(r.body);
  ASSERT_TRUE(cursor);

  // The cursor's own user and one not yet listed go; one before the cursor and one after it
  // come.
  ASSERT_EQ(call("DELETE", "/admin/users/u2").status, 204);
  ASSERT_EQ(call("DELETE", "/admin/users/u4").status, 204);
  ASSERT_EQ(call("POST", "/admin/users", R"({"name":"u0"})").status, 201);
  ASSERT_EQ(call("POST", "/admin/users", R"({"name":"u5a"})").status, 201);

  r = call("GET", "/admin/users", "", "limit=2&cursor=" + *cursor);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(names_in(r.body), (std::vector<std::string>{"u3", "u5"}));
  cursor = next_cursor(r.body);
  ASSERT_TRUE(cursor);
  // The next page's first user goes too.
  ASSERT_EQ(call("DELETE", "/admin/users/u5a").status, 204);
  r = call("GET", "/admin/users", "", "limit=2&cursor=" + *cursor);
  EXPECT_EQ(names_in(r.body), std::vector<std::string>{"u6"});
  EXPECT_EQ(next_cursor(r.body), std::nullopt);
}

TEST_F(AdminApis, ListsTheConfiguredApis) {
  const AdminResponse r = call("GET", "/admin/apis");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"apis":[{"name":"orders","routes":["/orders"]},)"
                    R"({"name":"billing","routes":["/billing","/invoices"]}]})");
}

// ---------------------------------------------------------------------------------------------
// Access log

TEST_F(AdminLogs, WithoutAnAccessLogTheRouteIsLogsUnavailable) {
  const AdminResponse r = call("GET", "/admin/logs");
  EXPECT_EQ(r.body,
            R"({"error":"logs_unavailable","field":null,"message":"no access log is configured"})");
  EXPECT_EQ(r.status, 503);
}

// A listing renders each backup with its keys and users (null when the backup does not say)
// and the backup in progress, or null.
TEST_F(AdminBackups, AListingShowsEachBackupsCountsOrNullAndTheBackupInProgress) {
  store_.has_backups = true;
  BackupInfo counted;
  counted.name = "keygate-20261128T011500Z-000002";
  counted.path = "/b/keygate-20261128T011500Z-000002";
  counted.created = 1795828500;
  counted.seq = 2;
  counted.bytes = 4096;
  counted.keys = 3;
  counted.users = 1;
  BackupInfo older = counted;
  older.name = "keygate-20261128T011400Z-000001";
  older.path = "/b/keygate-20261128T011400Z-000001";
  older.created = 1795828440;
  older.seq = 1;
  older.keys.reset();
  older.users.reset();
  store_.backup_listing.backups = {counted, older};
  AdminResponse r = call("GET", "/admin/backups");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body,
            R"({"backups":[{"name":"keygate-20261128T011500Z-000002",)"
            R"("path":"/b/keygate-20261128T011500Z-000002","created_at":"2026-11-28T01:15:00Z",)"
            R"("seq":2,"bytes":4096,"keys":3,"users":1},)"
            R"({"name":"keygate-20261128T011400Z-000001",)"
            R"("path":"/b/keygate-20261128T011400Z-000001","created_at":"2026-11-28T01:14:00Z",)"
            R"("seq":1,"bytes":4096,"keys":null,"users":null}],"in_progress":null})");

  store_.backup_listing.backups.clear();
  store_.backup_listing.in_progress_started = 1795828560;
  r = call("GET", "/admin/backups");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"backups":[],"in_progress":{"started_at":"2026-11-28T01:16:00Z"}})");
}

TEST_F(AdminLogs, WithoutParametersAsksForTheNewestHundredWithinTheScanBudget) {
  store_.has_log = true;
  EXPECT_EQ(call("GET", "/admin/logs").status, 200);
  ASSERT_EQ(store_.log_queries.size(), 1u);
  const LogQuery& q = store_.log_queries[0];
  EXPECT_EQ(q.key_id, "");
  EXPECT_EQ(q.status, 0);
  EXPECT_EQ(q.since_us, 0);
  EXPECT_EQ(q.until_us, 0);
  EXPECT_EQ(q.limit, 100u);
  EXPECT_EQ(q.before_seq, 0u);
  EXPECT_EQ(q.after_seq, 0u);
  // Bounded well below the log's own default, so one request's reads and response stay small.
  EXPECT_GT(q.scan_bytes_max, 0u);
  EXPECT_LE(q.scan_bytes_max, uint64_t{64} << 20);
}

TEST_F(AdminLogs, ParsesEveryParameterIntoTheQuery) {
  store_.has_log = true;
  ASSERT_EQ(call("GET", "/admin/logs", {},
                 "key_id=k7Qd2XcLm0aZb&status=404&since=2026-11-26T12:00:00Z"
                 "&until=2026-11-26T13:00:00.999Z&limit=1000&cursor=77")
                .status,
            200);
  // Percent-encoded like any query value; '+' must be sent as %2B ('+' is a space).
  ASSERT_EQ(
      call("GET", "/admin/logs", {},
           "status=4%304&since=2026-11-26T13:00:00%2B01:00&limit=1&after=18446744073709551615&")
          .status,
      200);
  ASSERT_EQ(call("GET", "/admin/logs", {}, "cursor=").status, 200);
  ASSERT_EQ(store_.log_queries.size(), 3u);
  const LogQuery& a = store_.log_queries[0];
  EXPECT_EQ(a.key_id, "k7Qd2XcLm0aZb");
  EXPECT_EQ(a.status, 404);
  EXPECT_EQ(a.since_us, parsed_us("2026-11-26T12:00:00Z"));
  EXPECT_EQ(a.until_us, parsed_us("2026-11-26T13:00:00Z")) << "fractions of a second are dropped";
  EXPECT_EQ(a.limit, 1000u);
  EXPECT_EQ(a.before_seq, 77u);
  EXPECT_EQ(a.after_seq, 0u);
  const LogQuery& b = store_.log_queries[1];
  EXPECT_EQ(b.status, 404);
  EXPECT_EQ(b.since_us, parsed_us("2026-11-26T12:00:00Z"));
  EXPECT_EQ(b.until_us, 0);
  EXPECT_EQ(b.limit, 1u);
  EXPECT_EQ(b.after_seq, UINT64_MAX);
  EXPECT_EQ(store_.log_queries[2].before_seq, 0u) << "an empty cursor starts at the newest";
}

TEST_F(AdminLogs, RecordsAreEmbeddedVerbatimAndTheCursorIsADecimalString) {
  store_.has_log = true;
  const std::string newer =
      R"({"seq":9,"time_us":1764158400000000,"key_id":"k7Qd2XcLm0aZb","method":"GET",)"
      R"("path":"/orders?a=%C3%A9","status":200,"reason":null, "note":"\u00e9 \"q\""})";
  const std::string older =
      R"({"seq":7,"type":"dropped","worker":1,"count":1,"dropped_from_seq":6,"dropped_to_seq":6})";
  store_.log_page.records = {newer, older};
  store_.log_page.next_cursor = 7;
  AdminResponse r = call("GET", "/admin/logs", {}, "limit=2");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"records\":[" + newer + "," + older + "],\"next_cursor\":\"7\"}");

  // The last page: the scan reached the oldest record.
  store_.log_page.next_cursor = 0;
  r = call("GET", "/admin/logs", {}, "cursor=7");
  EXPECT_EQ(r.body, "{\"records\":[" + newer + "," + older + "],\"next_cursor\":null}");

  store_.log_page = {};
  r = call("GET", "/admin/logs");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"records":[],"next_cursor":null})");
}

TEST_F(AdminLogs, FollowPassesAfterThroughAndReturnsTheNextAfter) {
  store_.has_log = true;
  store_.log_page.records = {R"({"seq":13,"status":200})", R"({"seq":14,"status":200})"};
  store_.log_page.next_cursor = 15;  // a later non-matching line was examined too
  const AdminResponse r = call("GET", "/admin/logs", {}, "after=12&status=200");
  EXPECT_EQ(r.body, R"({"records":[{"seq":13,"status":200},{"seq":14,"status":200}],)"
                    R"("next_cursor":"15"})");
  ASSERT_EQ(store_.log_queries.size(), 1u);
  EXPECT_EQ(store_.log_queries[0].after_seq, 12u);
  EXPECT_EQ(store_.log_queries[0].before_seq, 0u);
}

TEST_F(AdminLogs, AFollowPageAfterAGapNamesTheMissingSeqs) {
  store_.has_log = true;
  store_.log_page.records = {R"({"seq":90,"status":200})"};
  store_.log_page.next_cursor = 90;
  store_.log_page.missing_from = 13;
  store_.log_page.missing_to = 89;
  const AdminResponse r = call("GET", "/admin/logs", {}, "after=12");
  EXPECT_EQ(r.body, R"({"records":[{"seq":90,"status":200}],"next_cursor":"90",)"
                    R"("missing":{"from":"13","to":"89"}})");
}

TEST_F(AdminLogs, ALineThatIsNotAJsonObjectIsLeftOut) {
  store_.has_log = true;
  store_.log_page.records = {R"({"seq":3})", R"({"seq":2,"path":"/x)", "[1]", R"({"seq":1})"};
  store_.log_page.next_cursor = 0;
  EXPECT_EQ(call("GET", "/admin/logs").body,
            R"({"records":[{"seq":3},{"seq":1}],"next_cursor":null})");
}

TEST_F(AdminLogs, RejectsBadParametersBeforeAskingTheStore) {
  store_.has_log = true;
  struct Case {
    std::string_view query;
    std::string_view code;
    std::optional<std::string_view> field;
  };
  for (const Case& c : {
           Case{"status=99", "invalid_value", "status"},
           Case{"status=600", "invalid_value", "status"},
           Case{"status=2xx", "invalid_value", "status"},
           Case{"status=", "invalid_value", "status"},
           Case{"status=-200", "invalid_value", "status"},
           Case{"limit=0", "invalid_value", "limit"},
           Case{"limit=1001", "invalid_value", "limit"},
           Case{"limit=ten", "invalid_value", "limit"},
           Case{"since=yesterday", "invalid_value", "since"},
           Case{"since=1764158400", "invalid_value", "since"},
           Case{"since=2026-13-01T00:00:00Z", "invalid_value", "since"},
           Case{"since=2026-11-26T13:00:00+01:00", "invalid_value", "since"},
           Case{"since=1969-12-31T23:59:59Z", "invalid_value", "since"},
           Case{"until=1970-01-01T00:00:00Z", "invalid_value", "until"},
           Case{"until=", "invalid_value", "until"},
           Case{"since=2026-11-26T12:00:00Z&until=2026-11-26T12:00:00Z", "invalid_value", "until"},
           Case{"cursor=0", "invalid_value", "cursor"},
           Case{"cursor=k7Qd2XcLm0aZb", "invalid_value", "cursor"},
           Case{"cursor=18446744073709551616", "invalid_value", "cursor"},
           Case{"cursor=123456789012345678901", "invalid_value", "cursor"},
           Case{"after=0", "invalid_value", "after"},
           Case{"after=", "invalid_value", "after"},
           Case{"after=-1", "invalid_value", "after"},
           Case{"cursor=9&after=3", "invalid_value", "after"},
           Case{"key_id=", "invalid_value", "key_id"},
           Case{"key_id=alice", "invalid_value", "key_id"},
           Case{"status=200&status=200", "invalid_value", "status"},
           Case{"limit=1&limit=2", "invalid_value", "limit"},
           Case{"api=orders", "unknown_field", "api"},
           Case{"seq=1", "unknown_field", "seq"},
           Case{"key_id=%zz", "invalid_value", std::nullopt},
       }) {
    SCOPED_TRACE(c.query);
    expect_error(call("GET", "/admin/logs", {}, c.query), 400, c.code, c.field);
  }
  EXPECT_TRUE(store_.log_queries.empty());
}

TEST_F(AdminLogs, AnUnreadableLogIsLogsUnavailableWithTheStoresMessage) {
  store_.has_log = true;
  store_.io_error = true;
  const AdminResponse r = call("GET", "/admin/logs");
  expect_error(r, 503, "logs_unavailable", std::nullopt);
  EXPECT_TRUE(contains(r.body, "disk on fire")) << r.body;
}

// ---------------------------------------------------------------------------------------------
// Store failures

TEST_F(AdminStoreErrors, EveryStoreCallingRouteAnswersServiceUnavailable) {
  const std::string id = string_member(create_key(R"({"apis":["orders"]})"), "id");
  add_user("alice");
  store_.io_error = true;
  struct Case {
    std::string_view method;
    std::string path;
    std::string body;
  };
  const std::vector<Case> cases = {
      {"POST", "/admin/keys", R"({"apis":["orders"]})"},
      {"GET", "/admin/keys", ""},
      {"GET", "/admin/keys/" + id, ""},
      {"PATCH", "/admin/keys/" + id, R"({"enabled":false})"},
      {"DELETE", "/admin/keys/" + id, ""},
      {"POST", "/admin/keys/" + id + "/rotate", ""},
      {"POST", "/admin/keys/import", import_body({import_record(0)})},
      {"POST", "/admin/users", R"({"name":"bob"})"},
      {"GET", "/admin/users", ""},
      {"GET", "/admin/users/alice", ""},
      {"PATCH", "/admin/users/alice", R"({"grants":[]})"},
      {"DELETE", "/admin/users/alice", ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.method) + " " + c.path);
    const AdminResponse r = call(c.method, c.path, c.body);
    expect_error(r, 503, "store_unavailable", std::nullopt);
    EXPECT_TRUE(contains(r.body, "disk on fire")) << r.body;
  }
  // Validation still comes first.
  expect_error(call("POST", "/admin/keys", "{}"), 400, "missing_field", "apis");
}

// ---------------------------------------------------------------------------------------------
// RFC 3339

int64_t parsed(std::string_view text) {
  int64_t t = -1;
  EXPECT_TRUE(parse_rfc3339(text, &t)) << text;
  return t;
}

TEST(Rfc3339, FormatsKnownInstants) {
  EXPECT_EQ(format_rfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(format_rfc3339(kNow), "2023-11-14T22:13:20Z");
  EXPECT_EQ(format_rfc3339(951782400), "2000-02-29T00:00:00Z");
  EXPECT_EQ(format_rfc3339(-1), "1969-12-31T23:59:59Z");
  EXPECT_EQ(format_rfc3339(253402300799), "9999-12-31T23:59:59Z");
}

TEST(Rfc3339, ParsesKnownInstantsOffsetsAndFractions) {
  EXPECT_EQ(parsed("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(parsed("2023-11-14T22:13:20Z"), kNow);
  EXPECT_EQ(parsed("2023-11-14T22:13:20.999Z"), kNow);
  EXPECT_EQ(parsed("2023-11-14T22:13:20.123456789Z"), kNow);
  EXPECT_EQ(parsed("2023-11-15T00:13:20+02:00"), kNow);
  EXPECT_EQ(parsed("2023-11-14T17:43:20-04:30"), kNow);
  EXPECT_EQ(parsed("2023-11-14T22:13:20+00:00"), kNow);
  EXPECT_EQ(parsed("2024-02-29T00:00:00Z"), 1709164800);
  EXPECT_EQ(parsed("2000-02-29T00:00:00Z"), 951782400);
  EXPECT_EQ(parsed("1969-12-31T23:59:59Z"), -1);
  EXPECT_EQ(parsed("0000-01-01T00:00:00Z"), -62167219200);
  // At the edges an offset that stays inside the range is fine.
  EXPECT_EQ(parsed("9999-12-31T23:59:59+01:00"), 253402300799 - 3600);
  EXPECT_EQ(parsed("0000-01-01T01:00:00+01:00"), -62167219200);
}

TEST(Rfc3339, RoundTripsThroughFormat) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> dist(-62167219200, 253402300799);
  for (int i = 0; i < 20000; ++i) {
    const int64_t t = dist(rng);
    EXPECT_EQ(parsed(format_rfc3339(t)), t) << format_rfc3339(t);
  }
}

TEST(Rfc3339, RejectsMalformedOrImpossibleTimes) {
  for (std::string_view text : {
           "",
           "2026-02-30T00:00:00Z",
           "2023-02-29T00:00:00Z",
           "1900-02-29T00:00:00Z",
           "2026-04-31T00:00:00Z",
           "2026-13-01T00:00:00Z",
           "2026-00-01T00:00:00Z",
           "2026-01-00T00:00:00Z",
           "2026-01-01T25:00:00Z",
           "2026-01-01T24:00:00Z",
           "2026-01-01T00:60:00Z",
           "2026-01-01T00:00:60Z",
           "2026-01-01T00:00:00",
           "2026-01-01T00:00:00z",
           "2026-01-01t00:00:00Z",
           "2026-01-01 00:00:00Z",
           "2026-01-01T00:00:00.Z",
           "2026-01-01T00:00:00.1234567890Z",
           "2026-01-01T00:00:00ZZ",
           // Offsets that carry the instant outside years 0000-9999 (not writable back).
           "9999-12-31T23:59:59-23:59",
           "9999-12-31T23:00:00-01:00",
           "0000-01-01T00:00:00+01:00",
           "2026-01-01T00:00:00+0100",
           "2026-01-01T00:00:00+01",
           "2026-01-01T00:00:00+24:00",
           "2026-01-01T00:00:00+01:60",
           "2026-01-01T00:00:00+01:00 ",
           " 2026-01-01T00:00:00Z",
           "26-01-01T00:00:00Z",
           "2026-1-01T00:00:00Z",
           "+2026-01-01T00:00:00Z",
           "2026-01-01T0:00:00Z",
           "2026-01-01T00:00:0aZ",
           "2026-01-01",
       }) {
    int64_t t = 12345;
    EXPECT_FALSE(parse_rfc3339(text, &t)) << text;
    EXPECT_EQ(t, 12345) << text;
  }
}

}  // namespace
// ---------------------------------------------------------------------------------------------
// Stats

StatsGroup stats_group(std::string name, bool present,
                       std::vector<std::pair<std::string, uint64_t>> values) {
  StatsGroup group;
  group.name = std::move(name);
  group.present = present;
  group.values = std::move(values);
  return group;
}

TEST_F(AdminStats, RendersTheGroupsInOrderAndAnAbsentOneAsNull) {
  int calls = 0;
  ctx_.stats = [&](std::vector<StatsGroup>* groups) {
    ++calls;
    groups->push_back(stats_group("workers", true, {{"requests", 12}, {"timeouts", 0}}));
    groups->push_back(stats_group("access_log", false, {}));
    groups->push_back(stats_group("big", true, {{"max", UINT64_MAX}}));
  };
  const AdminResponse r = call("GET", "/admin/stats");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body,
            R"({"workers":{"requests":12,"timeouts":0},"access_log":null,)"
            R"("big":{"max":18446744073709551615}})");
  EXPECT_EQ(calls, 1);  // read once per request
}

// POST /admin/reload: what the reload did, from AdminContext::reload (keygate's main thread).
TEST_F(AdminStats, ReloadAnswersWhatTheReloadDid) {
  int calls = 0;
  ReloadOutcome outcome;
  outcome.applied = true;
  outcome.generation = 3;
  outcome.apis = 2;
  outcome.restart_settings = {"cache.max_keys"};
  outcome.applied_settings = {"limits.idle_timeout_ms", "log.retention_bytes"};
  ctx_.reload = [&] {
    ++calls;
    return outcome;
  };
  AdminResponse r = call("POST", "/admin/reload");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body,
            R"({"generation":3,"apis":2,"restart_settings":["cache.max_keys"],)"
            R"("workers_pending":[],)"
            R"("applied_settings":["limits.idle_timeout_ms","log.retention_bytes"]})");
  EXPECT_EQ(calls, 1);
  // Applied while workers 1 and 3 were stalled: named.
  outcome.workers_pending = {1, 3};
  r = call("POST", "/admin/reload");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body,
            R"({"generation":3,"apis":2,"restart_settings":["cache.max_keys"],)"
            R"("workers_pending":[1,3],)"
            R"("applied_settings":["limits.idle_timeout_ms","log.retention_bytes"]})");
  outcome = ReloadOutcome{};
  outcome.error = "k.toml:3:9: expected value";
  r = call("POST", "/admin/reload");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body,
            R"({"error":"reload_refused","field":null,"message":"k.toml:3:9: expected value"})");
  outcome.unavailable = true;
  EXPECT_EQ(call("POST", "/admin/reload").status, 503);
  EXPECT_EQ(call("GET", "/admin/reload").status, 405);
  EXPECT_EQ(calls, 4);
  ctx_.reload = nullptr;
  r = call("POST", "/admin/reload");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.error_code, "reload_unavailable");
}

TEST_F(AdminStats, WithoutAProviderTheObjectIsEmpty) {
  const AdminResponse r = call("GET", "/admin/stats");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{}");
}

// GET /admin/metrics: the same groups in the Prometheus text format (0.0.4).
TEST_F(AdminStats, MetricsRenderCountersGaugesAndLabelledSeriesInPrometheusTextFormat) {
  int calls = 0;
  ctx_.stats = [&](std::vector<StatsGroup>* groups) {
    ++calls;
    StatsGroup workers = stats_group("workers", true, {{"workers", 2}, {"requests", 12}});
    workers.gauges = {"workers"};
    groups->push_back(std::move(workers));
    for (const char* port : {"data", "admin"}) {
      StatsGroup by_status = stats_group(std::string(port) + "_responses", true,
                                         {{"200", 7}, {"401", 3}});
      by_status.metric = "responses_total";
      by_status.labels = std::string("port=\"") + port + "\"";
      by_status.label = "status";
      groups->push_back(std::move(by_status));
      StatsGroup by_reason =
          stats_group(std::string(port) + "_reasons", true, {{"odd\"co\\de\n", 1}});
      by_reason.metric = "reasons_total";
      by_reason.labels = std::string("port=\"") + port + "\"";
      by_reason.label = "reason";
      groups->push_back(std::move(by_reason));
    }
    groups->push_back(stats_group("access_log", false, {{"written", 5}}));  // absent: left out
    groups->push_back(stats_group("keys", true, {{"evictions_total", 4}, {"odd-name.x", 1}}));
    groups->push_back(stats_group("empty", true, {}));
  };
  const AdminResponse r = call("GET", "/admin/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.body,
            "# TYPE keygate_workers_workers gauge\n"
            "keygate_workers_workers 2\n"
            "# TYPE keygate_workers_requests_total counter\n"
            "keygate_workers_requests_total 12\n"
            "# TYPE keygate_keys_evictions_total counter\n"
            "keygate_keys_evictions_total 4\n"
            "# TYPE keygate_keys_odd_name_x_total counter\n"
            "keygate_keys_odd_name_x_total 1\n"
            "# TYPE keygate_responses_total counter\n"
            "keygate_responses_total{port=\"data\",status=\"200\"} 7\n"
            "keygate_responses_total{port=\"data\",status=\"401\"} 3\n"
            "keygate_responses_total{port=\"admin\",status=\"200\"} 7\n"
            "keygate_responses_total{port=\"admin\",status=\"401\"} 3\n"
            "# TYPE keygate_reasons_total counter\n"
            "keygate_reasons_total{port=\"data\",reason=\"odd\\\"co\\\\de\\n\"} 1\n"
            "keygate_reasons_total{port=\"admin\",reason=\"odd\\\"co\\\\de\\n\"} 1\n");
  EXPECT_EQ(calls, 1);
  const AdminResponse post = call("POST", "/admin/metrics");
  expect_error(post, 405, "method_not_allowed", std::nullopt);
  EXPECT_EQ(post.allow, "GET");
  EXPECT_TRUE(post.content_type.empty());  // errors stay JSON
}

// A labelled metric whose series move both ways (each worker's loop-pass age) is a gauge.
TEST_F(AdminStats, MetricsRenderALabelledGaugeAsAGauge) {
  ctx_.stats = [&](std::vector<StatsGroup>* groups) {
    StatsGroup ages = stats_group("worker_loops", true, {{"0", 12}, {"1", 8034}});
    ages.metric = "worker_loop_pass_age_ms";
    ages.label = "worker";
    ages.metric_gauge = true;
    groups->push_back(std::move(ages));
  };
  EXPECT_EQ(call("GET", "/admin/metrics").body,
            "# TYPE keygate_worker_loop_pass_age_ms gauge\n"
            "keygate_worker_loop_pass_age_ms{worker=\"0\"} 12\n"
            "keygate_worker_loop_pass_age_ms{worker=\"1\"} 8034\n");
  EXPECT_EQ(call("GET", "/admin/stats").body, R"({"worker_loops":{"0":12,"1":8034}})");
}

TEST_F(AdminStats, MetricsWithoutAProviderAreEmpty) {
  const AdminResponse r = call("GET", "/admin/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "");
}

// --- The authenticating key, checked again when the request runs -------------------------------

// The worker checked the key when the request arrived; changes run one at a time, and one queued
// ahead of this request may have revoked it. The request must get what it would get now.
class AdminRecheck : public AdminTest {
 protected:
  static constexpr std::string_view kValue = "recheck-admin-key-value";
  static constexpr std::string_view kId = "k0000000000aa";

  AdminRecheck() {
    KeyRecord r;
    r.id = kId;
    r.digest = digest_key(kValue);
    r.hint = make_key_hint(kValue);
    r.apis = {"admin"};
    store_.keys[r.id] = r;
  }

  KeyRecord& key() { return store_.keys.at(std::string(kId)); }

  // GET /admin/apis (reads nothing from the store) as the key presenting `value`.
  AdminResponse as_key(std::string_view value, std::string_view method = "GET",
                       std::string_view path = "/admin/apis") {
    AdminRequest request;
    request.method = method;
    request.path = path;
    request.key_id = kId;
    request.key_digest = digest_key(value);
    return execute_admin(request, store_, ctx_);
  }
};

TEST_F(AdminRecheck, AKeyThatStillAdmitsRunsTheRequest) {
  EXPECT_EQ(as_key(kValue).status, 200);
}

TEST_F(AdminRecheck, ADeletedKeyIs401WithTheChallenge) {
  store_.keys.erase(std::string(kId));
  const AdminResponse r = as_key(kValue, "POST", "/admin/users");
  expect_error(r, 401, "invalid_api_key", std::nullopt);
  EXPECT_TRUE(r.challenge);
  EXPECT_EQ(store_.users.size(), 0u);
}

TEST_F(AdminRecheck, ADisabledOrExpiredKeyIs401) {
  key().enabled = false;
  expect_error(as_key(kValue), 401, "invalid_api_key", std::nullopt);
  key().enabled = true;
  key().expires_at = kNow;
  expect_error(as_key(kValue), 401, "invalid_api_key", std::nullopt);
}

TEST_F(AdminRecheck, AKeyThatLostAdminIs403) {
  key().apis = {"orders"};
  const AdminResponse r = as_key(kValue);
  expect_error(r, 403, "api_not_permitted", std::nullopt);
  EXPECT_FALSE(r.challenge);
}

TEST_F(AdminRecheck, ARotatedValueWorksOnlyDuringItsGrace) {
  key().previous_digest = key().digest;
  key().digest = digest_key("the-new-value-after-rotation");
  key().previous_valid_until = kNow + 1;
  EXPECT_EQ(as_key(kValue).status, 200);
  EXPECT_EQ(as_key("the-new-value-after-rotation").status, 200);
  key().previous_valid_until = kNow;
  expect_error(as_key(kValue), 401, "invalid_api_key", std::nullopt);
  key().previous_digest.reset();
  expect_error(as_key(kValue), 401, "invalid_api_key", std::nullopt);
  EXPECT_EQ(as_key("the-new-value-after-rotation").status, 200);
}

TEST_F(AdminRecheck, AStoreThatCannotAnswerIs503) {
  store_.io_error = true;
  expect_error(as_key(kValue), 503, "store_unavailable", std::nullopt);
}

}  // namespace keygate
