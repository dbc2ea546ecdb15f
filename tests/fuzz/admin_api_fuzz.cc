// libFuzzer target for keygate::execute_admin (core/admin_api.h): whatever an admin client sends
// (or an operator's import file holds), the gateway answers and stays sound.
//
// Input format: requests of four NUL-separated sections each, run in order (at most
// kRequestsMax) on one in-memory store, so a request can build on an earlier one (create a user,
// then a key naming it):
//   <method> \0 <path> \0 <query> \0 <body> \0 <method> \0 ...
// Missing sections are empty. The store starts with one user ("alice") and one key
// (kSeedKeyId, apis ["orders"], user alice); the configured APIs are "orders" and "billing".
// GET /admin/logs answers with a page that mixes good records and a damaged line.
//
// Checked, for every response:
//   - the status is one the API documents (never 500: the random source never fails here);
//   - 204 has an empty body; 405 says what is allowed;
//   - every other body (but the metrics text) is one valid JSON object (simdjson's DOM parser,
//     which also validates UTF-8), and an error's body is {"error":code,"field":name|null,
//     "message":text} with the same code as AdminResponse::error_code;
// and after every request, of the store: each key and user it holds survives the storage
// encoding (encode_key_record/encode_user assert on out-of-bounds records, which would take the
// gateway down) and decodes to the same record, and holds only what the API promises to let in
// (ids of the generated shape, non-empty distinct configured apis, valid user names, grants
// with configured APIs, uppercase method tokens and valid path prefixes).
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/admin_api.h"
#include "core/api_key.h"
#include "core/json_text.h"
#include "core/permissions.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using keygate::AdminContext;
using keygate::AdminRequest;
using keygate::AdminResponse;
using keygate::AdminStore;
using keygate::AdminStoreCode;
using keygate::AdminStoreResult;
using keygate::ApiRegistry;
using keygate::KeyDigest;
using keygate::KeyRecord;
using keygate::LogPage;
using keygate::LogQuery;
using keygate::User;

constexpr size_t kRequestsMax = 8;
constexpr std::string_view kSeedKeyId = "kAAAAAAAAAAAA";

// The contract's checks of a store (uniqueness, users of keys exist), in memory; every record
// goes through the storage encoding as the real store's would.
class MemoryStore final : public AdminStore {
 public:
  std::map<std::string, KeyRecord, std::less<>> keys;
  std::map<std::string, User, std::less<>> users;

  static AdminStoreResult ok() { return {}; }
  static AdminStoreResult no(AdminStoreCode code, size_t index = 0) {
    return {code, "memory store says no", index};
  }

  AdminStoreResult list_keys(std::string_view after_id, size_t limit,
                             std::vector<KeyRecord>* out) override {
    out->clear();
    for (auto it = keys.upper_bound(after_id); it != keys.end() && out->size() < limit; ++it) {
      out->push_back(it->second);
    }
    return ok();
  }
  AdminStoreResult get_key(std::string_view id, KeyRecord* out) override {
    const auto it = keys.find(id);
    if (it == keys.end()) return no(AdminStoreCode::kNotFound);
    *out = it->second;
    return ok();
  }
  AdminStoreResult create_key(const KeyRecord& record) override {
    if (keys.count(record.id) != 0 || digest_taken(record.digest, "")) {
      return no(AdminStoreCode::kConflict);
    }
    if (record.user && users.count(*record.user) == 0) return no(AdminStoreCode::kNotFound);
    keys[record.id] = stored(record);
    return ok();
  }
  AdminStoreResult update_key(const KeyRecord& record,
                              const std::optional<PreviousDigest>&) override {
    if (keys.count(record.id) == 0) return no(AdminStoreCode::kNotFound);
    if (record.user && users.count(*record.user) == 0) return no(AdminStoreCode::kNotFound);
    if (digest_taken(record.digest, record.id)) return no(AdminStoreCode::kConflict);
    keys[record.id] = stored(record);
    return ok();
  }
  AdminStoreResult delete_key(std::string_view id) override {
    const auto it = keys.find(id);
    if (it == keys.end()) return no(AdminStoreCode::kNotFound);
    keys.erase(it);
    return ok();
  }
  AdminStoreResult import_keys(std::vector<KeyRecord> records) override {
    std::set<std::string> ids;
    std::set<KeyDigest> digests;
    for (size_t i = 0; i < records.size(); ++i) {
      const KeyRecord& r = records[i];
      if (keys.count(r.id) != 0 || digest_taken(r.digest, "") || !ids.insert(r.id).second ||
          !digests.insert(r.digest).second) {
        return no(AdminStoreCode::kConflict, i);
      }
      if (r.user && users.count(*r.user) == 0) return no(AdminStoreCode::kNotFound, i);
    }
    for (const KeyRecord& r : records) keys[r.id] = stored(r);
    return ok();
  }
  AdminStoreResult list_users(std::string_view after_name, size_t limit,
                              std::vector<User>* out) override {
    out->clear();
    for (auto it = users.upper_bound(after_name); it != users.end() && out->size() < limit; ++it) {
      out->push_back(it->second);
    }
    return ok();
  }
  AdminStoreResult get_user(std::string_view name, User* out) override {
    const auto it = users.find(name);
    if (it == users.end()) return no(AdminStoreCode::kNotFound);
    *out = it->second;
    return ok();
  }
  AdminStoreResult put_user(const User& user) override {
    users[user.name] = stored(user);
    return ok();
  }
  AdminStoreResult delete_user(std::string_view name) override {
    const auto it = users.find(name);
    if (it == users.end()) return no(AdminStoreCode::kNotFound);
    users.erase(it);
    return ok();
  }
  AdminStoreResult query_logs(const LogQuery& query, LogPage* out) override {
    FUZZ_CHECK(query.limit >= 1 && query.limit <= 1000);
    FUZZ_CHECK(query.status == 0 || (query.status >= 100 && query.status <= 599));
    FUZZ_CHECK(query.since_us >= 0 && query.until_us >= 0);
    FUZZ_CHECK(query.since_us == 0 || query.until_us == 0 || query.since_us < query.until_us);
    out->records = {R"({"seq":"3","status":200,"path":"/orders"})", "{\"seq\":\"2\",\"torn",
                    R"({"seq":"1","note":"caf\u00e9 \ud83d\ude00"})"};
    out->next_cursor = query.after_seq != 0 ? query.after_seq + 3 : 0;
    out->missing_from = query.after_seq != 0 ? query.after_seq + 1 : 0;
    out->missing_to = out->missing_from;
    return ok();
  }

 private:
  bool digest_taken(const KeyDigest& digest, std::string_view except_id) const {
    for (const auto& [id, r] : keys) {
      if (r.digest == digest && id != except_id) return true;
    }
    return false;
  }
  // What a real store keeps: the record after its encoding round trip.
  static KeyRecord stored(const KeyRecord& record) {
    KeyRecord back;
    FUZZ_CHECK(keygate::decode_key_record(keygate::encode_key_record(record), &back));
    FUZZ_CHECK(back.id == record.id && back.apis == record.apis && back.user == record.user &&
               back.description == record.description && back.expires_at == record.expires_at);
    return back;
  }
  static User stored(const User& user) {
    User back;
    FUZZ_CHECK(keygate::decode_user(keygate::encode_user(user), &back));
    FUZZ_CHECK(back.name == user.name && back.grants.size() == user.grants.size());
    return back;
  }
};

const ApiRegistry& registry() {
  static const ApiRegistry* apis = [] {
    auto* r = new ApiRegistry;
    std::string error;
    std::vector<keygate::ApiConfig> list;
    list.emplace_back("orders", std::vector<std::string>{"/orders"});
    list.emplace_back("billing", std::vector<std::string>{"/billing/", "/invoices"});
    FUZZ_CHECK(r->init(std::move(list), &error));
    return r;
  }();
  return *apis;
}

bool is_key_id(std::string_view id) {
  if (id.size() != 13 || id[0] != 'k') return false;
  for (char c : id.substr(1)) {
    const bool base62 = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    if (!base62) return false;
  }
  return true;
}

bool valid_method(std::string_view m) {
  if (m.empty() || m.size() > 64) return false;
  for (char c : m) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

void check_store(const MemoryStore& store) {
  const ApiRegistry& apis = registry();
  for (const auto& [id, r] : store.keys) {
    FUZZ_CHECK(id == r.id);
    FUZZ_CHECK(is_key_id(id));
    FUZZ_CHECK(!r.apis.empty());
    for (size_t i = 0; i < r.apis.size(); ++i) {
      FUZZ_CHECK(r.apis[i] == keygate::kAdminApi || apis.find(r.apis[i]) != nullptr);
      for (size_t j = 0; j < i; ++j) FUZZ_CHECK(r.apis[i] != r.apis[j]);
    }
    FUZZ_CHECK(r.description.size() <= 1024);
    if (r.user) FUZZ_CHECK(keygate::header_value_round_trips(*r.user));
  }
  for (const auto& [name, user] : store.users) {
    FUZZ_CHECK(name == user.name);
    FUZZ_CHECK(keygate::header_value_round_trips(name) && name.size() <= 256);
    for (const keygate::Grant& g : user.grants) {
      FUZZ_CHECK(apis.find(g.api) != nullptr);
      for (const std::string& m : g.methods) FUZZ_CHECK(valid_method(m));
      FUZZ_CHECK(g.path_prefix.empty() || keygate::prefix_is_valid(g.path_prefix));
    }
  }
}

void check_response(const AdminRequest& request, const AdminResponse& response) {
  static const std::set<int> kStatuses = {200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 503};
  FUZZ_CHECK(kStatuses.count(response.status) == 1);
  if (response.status == 204) {
    FUZZ_CHECK(response.body.empty());
    return;
  }
  if (response.status == 405) FUZZ_CHECK(!response.allow.empty());
  if (!response.content_type.empty()) {
    FUZZ_CHECK(request.path == "/admin/metrics");
    return;
  }
  simdjson::dom::parser parser;
  simdjson::dom::object object;
  FUZZ_CHECK(parser.parse(response.body).get_object().get(object) == simdjson::SUCCESS);
  if (response.status < 400) return;
  std::string_view code;
  FUZZ_CHECK(object["error"].get_string().get(code) == simdjson::SUCCESS);
  FUZZ_CHECK(code == response.error_code);
  simdjson::dom::element field;
  FUZZ_CHECK(object["field"].get(field) == simdjson::SUCCESS);
  FUZZ_CHECK(field.is_null() || field.is_string());
  std::string_view message;
  FUZZ_CHECK(object["message"].get_string().get(message) == simdjson::SUCCESS);
  FUZZ_CHECK(object.size() == 3);
}

std::vector<std::string_view> split_sections(std::string_view input) {
  std::vector<std::string_view> sections;
  while (true) {
    const size_t nul = input.find('\0');
    sections.push_back(input.substr(0, nul));
    if (nul == std::string_view::npos) break;
    input.remove_prefix(nul + 1);
  }
  return sections;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string_view> sections = split_sections(input);

  MemoryStore store;
  User alice;
  alice.name = "alice";
  alice.grants.push_back({"orders", {"GET"}, "/orders/7"});
  store.users["alice"] = alice;
  KeyRecord seed;
  seed.id = std::string(kSeedKeyId);
  seed.digest = keygate::digest_key("seed-key-value");
  seed.hint = keygate::make_key_hint("seed-key-value");
  seed.apis = {"orders"};
  seed.user = "alice";
  seed.created_at = seed.updated_at = 1700000000;
  store.keys[seed.id] = seed;

  uint64_t counter = 0;
  AdminContext ctx;
  ctx.apis = &registry();
  ctx.now = 1700000000;
  // Distinct bytes on every call (a counter through splitmix64), so generated ids never repeat.
  ctx.random = [&counter](std::span<uint8_t> out) {
    for (uint8_t& b : out) {
      uint64_t z = (counter += 0x9e3779b97f4a7c15ULL);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      b = static_cast<uint8_t>(z ^ (z >> 31));
    }
    return true;
  };
  ctx.small_body_bytes_max = 4096;
  ctx.import_keys_max = 64;

  for (size_t r = 0; r < kRequestsMax && 4 * r < sections.size(); ++r) {
    const auto section = [&](size_t i) {
      return 4 * r + i < sections.size() ? sections[4 * r + i] : std::string_view();
    };
    AdminRequest request;
    request.method = section(0);
    request.path = section(1);
    request.query = section(2);
    request.body = section(3);
    const AdminResponse response = keygate::execute_admin(request, store, ctx);
    check_response(request, response);
    check_store(store);
  }
  return 0;
}
