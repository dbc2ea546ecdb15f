// Durability of the admin API's writes, against the real binary.
//
// Crash: client threads create, update (PATCH, rotate) and delete keys through the admin API
// while the server is SIGKILLed at random moments and restarted on the same data directory.
// Every acknowledged write (a 2xx received) must survive every later kill with its
// acknowledged values, and every acknowledged delete must stay deleted. A write whose answer
// never came (the kill came first) may or may not be stored; after the restart it must be there
// either with its old values or with its new ones, nothing else. After every restart the test
// checks each key the model knows through GET /admin/keys/{id}, the full listing and the data
// port (auth-check mode), and that the store reopened at all.
//
//   short mode (ctest):   10 kill cycles, >= 300 acknowledged writes, well under 30 s;
//   long mode:            KEYGATE_CRASH_CYCLES=N and/or KEYGATE_CRASH_WRITES=M run at least
//                         N kill cycles and at least M acknowledged writes, e.g. (one line)
//       KEYGATE_CRASH_CYCLES=200 KEYGATE_CRASH_WRITES=10000
//       build/docs/tests/integration/integration_tests --gtest_filter='Crash*'
// The figures (cycles, acknowledged writes and deletes, in-flight outcomes, lost) go to stdout.
//
// DataDir: keys created (operator-chosen and generated values, imported ones), rotated and
// deleted, the server stopped with SIGTERM and restarted once (so the first part of the data
// is in SST files and the rest in the WAL): no file of the data directory contains the
// plaintext of any key, while the files do contain the key ids, so the scan reads real data.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/api_key.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using namespace std::string_literals;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kApisConfig =
    "[[apis]]\n"
    "name = \"alpha\"\n"
    "routes = [\"/alpha\"]\n"
    "\n"
    "[[apis]]\n"
    "name = \"beta\"\n"
    "routes = [\"/beta\"]\n";
constexpr std::array<std::string_view, 2> kApis = {"alpha", "beta"};
// A key's apis as the JSON array's inside: the order is kept by the server.
constexpr std::array<std::string_view, 3> kApiSets = {"\"alpha\"", "\"beta\"",
                                                      "\"alpha\",\"beta\""};

constexpr int kShortCycles = 10;
constexpr uint64_t kShortWrites = 300;
constexpr int kClients = 4;
// Keys each client keeps alive on average: creates and deletes are weighed towards it.
constexpr size_t kLivePerClient = 25;
constexpr Millis kRequestTimeout(5000);
constexpr Millis kStartTimeout(20000);
// How long the killer waits for a cycle's writes before it kills anyway.
constexpr Millis kCycleWritesTimeout(30000);
constexpr std::string_view kMissingKeyMessage = "no key with this id";

// --- HTTP ---------------------------------------------------------------------------------------

std::string request(std::string_view method, std::string_view target,
                    const std::vector<std::string>& headers, std::string_view body = {}) {
  std::string out = std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: it\r\n";
  for (const std::string& h : headers) out += h + "\r\n";
  if (!body.empty()) out += "Content-Type: application/json\r\n";
  if (!body.empty() || method == "POST" || method == "PATCH") {
    out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  out += "\r\n";
  out += body;
  return out;
}

// How a request ended: never sent (the connection was refused: the server is down, nothing can
// have happened), sent without an answer (anything may have happened), or answered.
struct Exchange {
  enum class End { kNotSent, kNoAnswer, kAnswered } end = End::kNotSent;
  Response response;
};

Exchange round_trip_once(uint16_t port, const std::string& bytes) {
  Exchange e;
  RawClient client;
  if (!client.connect(port, nullptr, kRequestTimeout)) return e;
  e.end = Exchange::End::kNoAnswer;
  if (!client.send(bytes)) return e;
  std::optional<Response> r = client.read_response(kRequestTimeout);
  if (!r) return e;
  e.end = Exchange::End::kAnswered;
  e.response = std::move(*r);
  return e;
}

std::string show(const Response& r) { return "response:\n" + r.raw; }

std::optional<bool> bool_member(std::string_view json, std::string_view name) {
  const std::string needle = "\"" + std::string(name) + "\":";
  const size_t at = json.find(needle);
  if (at == std::string_view::npos) return std::nullopt;
  const std::string_view rest = json.substr(at + needle.size());
  if (rest.starts_with("true")) return true;
  if (rest.starts_with("false")) return false;
  return std::nullopt;
}

// The inside of the `"apis":[...]` array.
std::string apis_member(std::string_view json) {
  constexpr std::string_view kNeedle = "\"apis\":[";
  const size_t at = json.find(kNeedle);
  if (at == std::string_view::npos) return "?";
  const size_t start = at + kNeedle.size();
  return std::string(json.substr(start, json.find(']', start) - start));
}

std::string random_hex(std::mt19937_64& rng, size_t chars) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < chars; ++i) out += kDigits[rng() % 16];
  return out;
}

// --- The model ----------------------------------------------------------------------------------

// What the store holds for one key, as far as the admin API shows and the data port proves.
struct Fields {
  std::string description;
  std::string apis;  // one of kApiSets
  bool enabled = true;
  bool log_request = false;
  // The plaintext; nullopt when no answer told it (a create or rotation whose answer was lost).
  std::optional<std::string> value;

  // The fields the admin API shows (the value is checked through the hint and the data port).
  bool same_record(const Fields& o) const {
    return description == o.description && apis == o.apis && enabled == o.enabled &&
           log_request == o.log_request;
  }
  std::string describe() const {
    return "{description=" + description + " apis=[" + apis +
           "] enabled=" + (enabled ? "true" : "false") +
           " log_request=" + (log_request ? "true" : "false") + "}";
  }
};

// A record as the listing shows it.
struct Listed {
  Fields fields;  // value unset
  std::string hint;
};

bool parse_record(std::string_view json, std::string* id, Listed* out) {
  *id = string_member(json, "id");
  out->fields.description = string_member(json, "description");
  out->fields.apis = apis_member(json);
  out->hint = string_member(json, "hint");
  const std::optional<bool> enabled = bool_member(json, "enabled");
  const std::optional<bool> log_request = bool_member(json, "log_request");
  if (id->empty() || !enabled || !log_request) return false;
  out->fields.enabled = *enabled;
  out->fields.log_request = *log_request;
  return true;
}

enum class Pending : uint8_t { kNone, kPatch, kRotate, kDelete };

struct TrackedKey {
  std::string id;
  Fields acked;
  Pending pending = Pending::kNone;
  Fields pending_fields;  // kPatch: the fields had the patch been applied
};

struct DeletedKey {
  std::string id;
  std::optional<std::string> value;
  bool checked_directly = false;  // GET 404 and the value refused, once after a restart
};

struct PendingCreate {
  Fields fields;  // description is unique: it finds the record if it was stored
};

struct Figures {
  uint64_t creates = 0;
  uint64_t updates = 0;  // PATCH and rotate
  uint64_t deletes = 0;
  uint64_t unanswered = 0;
  uint64_t unanswered_applied = 0;
  uint64_t unanswered_not_applied = 0;
  uint64_t unanswered_undetermined = 0;  // a rotation of a key whose value was already unknown
  uint64_t lost = 0;                     // acknowledged writes missing or changed after a restart
  uint64_t key_checks = 0;  // a key's record (GET) and data-port answers checked after a restart
  uint64_t writes() const { return creates + updates + deletes; }
};

// One client thread's keys: no other thread touches them, so each key sees one operation at a
// time, and at most one operation per client is unanswered when the kill comes.
struct ClientModel {
  int index = 0;
  std::mt19937_64 rng;
  uint64_t seq = 0;
  std::vector<TrackedKey> keys;
  std::vector<DeletedKey> deleted;
  std::optional<PendingCreate> pending_create;
  Figures figures;
};

// --- One client's writes ------------------------------------------------------------------------

class Client {
 public:
  Client(ClientModel& model, uint16_t admin_port, std::string admin_key,
         std::atomic<uint64_t>& acked_writes, const std::atomic<bool>& stop)
      : m_(model),
        port_(admin_port),
        auth_("X-ApiKey: " + std::move(admin_key)),
        acked_writes_(acked_writes),
        stop_(stop) {}

  // Writes until the server stops answering (or `stop`).
  void run() {
    while (!stop_.load(std::memory_order_relaxed)) {
      if (!one_write()) return;
    }
  }

 private:
  std::string next_description() {
    return "c" + std::to_string(m_.index) + "-" + std::to_string(++m_.seq);
  }

  Fields random_fields() {
    Fields f;
    f.description = next_description();
    f.apis = std::string(kApiSets[m_.rng() % kApiSets.size()]);
    f.enabled = m_.rng() % 5 != 0;
    f.log_request = m_.rng() % 2 == 0;
    return f;
  }

  static std::string body_of(const Fields& f) {
    return "{\"description\":\"" + f.description + "\",\"apis\":[" + f.apis +
           "],\"enabled\":" + (f.enabled ? "true" : "false") +
           ",\"log_request\":" + (f.log_request ? "true" : "false");
  }

  // False when this client is done for the cycle (no answer, or a wrong one).
  bool answered(const Exchange& e, int want_status) {
    if (e.end != Exchange::End::kAnswered) return false;
    if (e.response.status != want_status) {
      ADD_FAILURE() << "client " << m_.index << ": want " << want_status << "; "
                    << show(e.response);
      return false;
    }
    return true;
  }

  void acked() { acked_writes_.fetch_add(1, std::memory_order_relaxed); }

  bool one_write() {
    const size_t live = m_.keys.size();
    const unsigned create_weight = live < kLivePerClient ? 35 : 10;
    const unsigned delete_weight = live > kLivePerClient ? 35 : 15;
    const unsigned patch_weight = 35;
    const unsigned rotate_weight = 15;
    unsigned pick = static_cast<unsigned>(
        m_.rng() % (create_weight + delete_weight + patch_weight + rotate_weight));
    if (live == 0 || pick < create_weight) return create();
    pick -= create_weight;
    const size_t k = m_.rng() % live;
    if (pick < delete_weight) return remove(k);
    pick -= delete_weight;
    if (pick < patch_weight || !m_.keys[k].acked.enabled) return patch(k);
    return rotate(k);
  }

  bool create() {
    Fields f = random_fields();
    std::string body = body_of(f);
    if (m_.rng() % 2 == 0) {
      f.value = "crash-" + std::to_string(m_.index) + "-" + std::to_string(m_.seq) + "-" +
                random_hex(m_.rng, 24);
      body += ",\"key\":\"" + *f.value + "\"";
    }
    body += "}";
    const Exchange e = round_trip_once(port_, request("POST", "/admin/keys", {auth_}, body));
    if (e.end == Exchange::End::kNotSent) return false;
    if (e.end == Exchange::End::kNoAnswer) {
      ++m_.figures.unanswered;
      m_.pending_create = PendingCreate{f};
      return false;
    }
    if (!answered(e, 201)) return false;
    const std::string id = string_member(e.response.body, "id");
    const std::string value = string_member(e.response.body, "key");
    if (id.empty() || value.empty() || (f.value && value != *f.value)) {
      ADD_FAILURE() << "create: " << show(e.response);
      return false;
    }
    f.value = value;
    m_.keys.push_back(TrackedKey{id, f, Pending::kNone, {}});
    ++m_.figures.creates;
    acked();
    return true;
  }

  bool patch(size_t k) {
    TrackedKey& key = m_.keys[k];
    Fields f = random_fields();
    f.value = key.acked.value;
    const Exchange e = round_trip_once(
        port_, request("PATCH", "/admin/keys/" + key.id, {auth_}, body_of(f) + "}"));
    if (e.end == Exchange::End::kNotSent) return false;
    if (e.end == Exchange::End::kNoAnswer) {
      ++m_.figures.unanswered;
      key.pending = Pending::kPatch;
      key.pending_fields = f;
      return false;
    }
    if (!answered(e, 200)) return false;
    Listed shown;
    std::string id;
    if (!parse_record(e.response.body, &id, &shown) || id != key.id ||
        !shown.fields.same_record(f)) {
      ADD_FAILURE() << "patch answered other values than sent: " << show(e.response);
      return false;
    }
    key.acked = f;
    ++m_.figures.updates;
    acked();
    return true;
  }

  bool rotate(size_t k) {
    TrackedKey& key = m_.keys[k];
    const Exchange e =
        round_trip_once(port_, request("POST", "/admin/keys/" + key.id + "/rotate", {auth_}));
    if (e.end == Exchange::End::kNotSent) return false;
    if (e.end == Exchange::End::kNoAnswer) {
      ++m_.figures.unanswered;
      key.pending = Pending::kRotate;
      return false;
    }
    if (!answered(e, 201)) return false;
    const std::string value = string_member(e.response.body, "key");
    if (value.empty() || string_member(e.response.body, "id") != key.id) {
      ADD_FAILURE() << "rotate: " << show(e.response);
      return false;
    }
    key.acked.value = value;
    ++m_.figures.updates;
    acked();
    return true;
  }

  bool remove(size_t k) {
    TrackedKey& key = m_.keys[k];
    const Exchange e = round_trip_once(port_, request("DELETE", "/admin/keys/" + key.id, {auth_}));
    if (e.end == Exchange::End::kNotSent) return false;
    if (e.end == Exchange::End::kNoAnswer) {
      ++m_.figures.unanswered;
      key.pending = Pending::kDelete;
      return false;
    }
    if (!answered(e, 204)) return false;
    m_.deleted.push_back(DeletedKey{key.id, key.acked.value, false});
    m_.keys.erase(m_.keys.begin() + static_cast<std::ptrdiff_t>(k));
    ++m_.figures.deletes;
    acked();
    return true;
  }

  ClientModel& m_;
  uint16_t port_;
  std::string auth_;
  std::atomic<uint64_t>& acked_writes_;
  const std::atomic<bool>& stop_;
};

// --- Checking a restarted server against the models --------------------------------------------

class Checker {
 public:
  Checker(const TestServer& server, std::string admin_key)
      : server_(server), auth_("X-ApiKey: " + std::move(admin_key)) {}

  // Resolves every unanswered write, then checks every key and every delete. Failures are
  // reported (and counted as lost in `figures` of the model they belong to).
  void check(std::vector<ClientModel>& models) {
    std::map<std::string, Listed> listed;
    if (!list_all(&listed)) return;
    std::set<std::string> claimed;
    for (ClientModel& m : models) {
      resolve_create(m, listed);
      for (TrackedKey& key : m.keys) resolve(m, key, listed);
      std::erase_if(m.keys, [&](const TrackedKey& key) {
        if (key.pending != Pending::kDelete) return false;
        m.deleted.push_back(DeletedKey{key.id, key.acked.value, false});
        return true;
      });
    }
    for (ClientModel& m : models) {
      for (const TrackedKey& key : m.keys) {
        claimed.insert(key.id);
        check_key(m, key, listed);
      }
      for (DeletedKey& d : m.deleted) check_deleted(m, d, listed);
    }
    for (const auto& [id, record] : listed) {
      if (claimed.count(id) != 0) continue;
      const bool bootstrap =
          record.fields.apis == "\"admin\"" && record.fields.description == "bootstrap admin key";
      EXPECT_TRUE(bootstrap) << "a key no client made: " << id << " " << record.fields.describe();
    }
  }

 private:
  bool lost(ClientModel& m, const std::string& what) {
    ++m.figures.lost;
    ADD_FAILURE() << "client " << m.index << ": " << what;
    return false;
  }

  bool list_all(std::map<std::string, Listed>* out) {
    std::string cursor;
    for (int page = 0; page < 1000; ++page) {
      const Exchange e = round_trip_once(
          server_.admin_port(),
          request("GET", "/admin/keys?limit=1000" + (cursor.empty() ? "" : "&cursor=" + cursor),
                  {auth_}));
      if (e.end != Exchange::End::kAnswered || e.response.status != 200) {
        ADD_FAILURE() << "listing failed: "
                      << (e.end == Exchange::End::kAnswered ? show(e.response) : "no answer"s);
        return false;
      }
      const std::string& body = e.response.body;
      constexpr std::string_view kRecordStart = "{\"id\":\"";
      for (size_t at = body.find(kRecordStart); at != std::string::npos;) {
        const size_t next = body.find(kRecordStart, at + 1);
        std::string id;
        Listed record;
        if (!parse_record(std::string_view(body).substr(at, next - at), &id, &record)) {
          ADD_FAILURE() << "unreadable record in " << body;
          return false;
        }
        out->emplace(id, record);
        at = next;
      }
      cursor = string_member(body, "next_cursor");
      if (cursor.empty()) return true;
    }
    ADD_FAILURE() << "listing does not end";
    return false;
  }

  // An unanswered create: stored (found by its unique description; then it is tracked from now
  // on) or not (then its operator-chosen value must not work either).
  void resolve_create(ClientModel& m, const std::map<std::string, Listed>& listed) {
    if (!m.pending_create) return;
    const Fields f = m.pending_create->fields;
    m.pending_create.reset();
    for (const auto& [id, record] : listed) {
      if (record.fields.description != f.description) continue;
      if (!record.fields.same_record(f)) {
        lost(m, "unanswered create stored other values: " + record.fields.describe() +
                    " instead of " + f.describe());
        return;
      }
      ++m.figures.unanswered_applied;
      m.keys.push_back(TrackedKey{id, f, Pending::kNone, {}});
      return;
    }
    ++m.figures.unanswered_not_applied;
    if (f.value) {
      for (std::string_view api : kApis) {
        const int status = data_status(api, *f.value, nullptr);
        EXPECT_EQ(status, 401) << "the value of a create that is not listed works on " << api;
      }
    }
  }

  // An unanswered patch, rotation or delete: the old state or the new one.
  void resolve(ClientModel& m, TrackedKey& key, const std::map<std::string, Listed>& listed) {
    if (key.pending == Pending::kNone) return;
    const Pending pending = key.pending;
    key.pending = Pending::kNone;
    const auto it = listed.find(key.id);
    if (pending == Pending::kDelete) {
      if (it == listed.end()) {
        ++m.figures.unanswered_applied;
        key.pending = Pending::kDelete;  // moved to the deleted keys by the caller
      } else {
        ++m.figures.unanswered_not_applied;  // still there: check_key() checks its values
      }
      return;
    }
    if (it == listed.end()) {
      lost(m, "key " + key.id + " vanished after an unanswered update");
      return;
    }
    if (pending == Pending::kPatch) {
      if (it->second.fields.same_record(key.pending_fields)) {
        ++m.figures.unanswered_applied;
        key.acked = key.pending_fields;
      } else {
        ++m.figures.unanswered_not_applied;  // check_key() requires the old values
      }
      return;
    }
    // A rotation: the old value works (the key is enabled: only enabled keys are rotated) or it
    // is refused and the new one is unknown.
    if (!key.acked.value) {
      ++m.figures.unanswered_undetermined;  // the value stays unknown either way
      return;
    }
    std::string body;
    const std::string_view api =
        key.acked.apis.find("alpha") != std::string::npos ? "alpha" : "beta";
    const int status = data_status(api, *key.acked.value, &body);
    if (status == 200 && string_member(body, "key_id") == key.id) {
      ++m.figures.unanswered_not_applied;
    } else if (status == 401) {
      ++m.figures.unanswered_applied;
      key.acked.value.reset();
    } else {
      lost(m, "after an unanswered rotation the old value of " + key.id + " answers " +
                  std::to_string(status) + " " + body);
    }
  }

  void check_key(ClientModel& m, const TrackedKey& key,
                 const std::map<std::string, Listed>& listed) {
    const auto it = listed.find(key.id);
    if (it == listed.end()) {
      lost(m, "acknowledged key " + key.id + " is not listed");
      return;
    }
    if (!it->second.fields.same_record(key.acked)) {
      lost(m, "key " + key.id + " is listed as " + it->second.fields.describe() +
                  ", acknowledged " + key.acked.describe());
      return;
    }
    const Exchange e =
        round_trip_once(server_.admin_port(), request("GET", "/admin/keys/" + key.id, {auth_}));
    std::string id;
    Listed record;
    if (e.end != Exchange::End::kAnswered || e.response.status != 200 ||
        !parse_record(e.response.body, &id, &record) || id != key.id ||
        !record.fields.same_record(key.acked)) {
      lost(m, "GET /admin/keys/" + key.id + " does not show the acknowledged " +
                  key.acked.describe() + ": " +
                  (e.end == Exchange::End::kAnswered ? show(e.response) : "no answer"s));
      return;
    }
    ++m.figures.key_checks;
    if (!key.acked.value) return;
    if (record.hint != make_key_hint(*key.acked.value)) {
      lost(m, "key " + key.id + " has hint " + record.hint + ", its acknowledged value " +
                  make_key_hint(*key.acked.value));
      return;
    }
    for (std::string_view api : kApis) {
      const bool permitted = key.acked.apis.find(api) != std::string::npos;
      const int want = !key.acked.enabled ? 401 : permitted ? 200 : 403;
      std::string body;
      const int status = data_status(api, *key.acked.value, &body);
      if (status != want || (want == 200 && string_member(body, "key_id") != key.id)) {
        lost(m, "key " + key.id + " " + key.acked.describe() + " on /" + std::string(api) +
                    ": want " + std::to_string(want) + ", got " + std::to_string(status) + " " +
                    body);
        return;
      }
    }
  }

  void check_deleted(ClientModel& m, DeletedKey& d, const std::map<std::string, Listed>& listed) {
    if (listed.count(d.id) != 0) {
      lost(m, "deleted key " + d.id + " is listed again");
      return;
    }
    if (d.checked_directly) return;
    d.checked_directly = true;
    const Exchange e =
        round_trip_once(server_.admin_port(), request("GET", "/admin/keys/" + d.id, {auth_}));
    if (e.end != Exchange::End::kAnswered || e.response.status != 404 ||
        string_member(e.response.body, "message") != kMissingKeyMessage) {
      lost(m, "deleted key " + d.id + ": " +
                  (e.end == Exchange::End::kAnswered ? show(e.response) : "no answer"s));
      return;
    }
    if (!d.value) return;
    for (std::string_view api : kApis) {
      const int status = data_status(api, *d.value, nullptr);
      if (status != 401) {
        lost(m, "the value of deleted key " + d.id + " answers " + std::to_string(status));
        return;
      }
    }
  }

  // The data port's status for GET /<api>/x with `value`; 0 without an answer.
  int data_status(std::string_view api, std::string_view value, std::string* body) {
    const Exchange e = round_trip_once(
        server_.data_port(),
        request("GET", "/" + std::string(api) + "/x", {"X-ApiKey: " + std::string(value)}));
    if (e.end != Exchange::End::kAnswered) return 0;
    if (body != nullptr) *body = e.response.body;
    return e.response.status;
  }

  const TestServer& server_;
  std::string auth_;
};

uint64_t env_count(const char* name, uint64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (*end != '\0' || v == 0) {
    ADD_FAILURE() << name << " must be a positive integer, not '" << text << "'";
    return fallback;
  }
  return v;
}

std::unique_ptr<TestServer> start_server(const std::string& data_dir, const std::string& admin_key,
                                         int cycle) {
  ServerOptions options;
  options.workers = 2;
  options.data_dir = data_dir;
  options.extra_config = std::string(kApisConfig);
  options.env = {{"KEYGATE_BOOTSTRAP_ADMIN_KEY", admin_key}};
  options.capture_stderr = true;
  auto server = std::make_unique<TestServer>(std::move(options));
  std::string error;
  EXPECT_TRUE(server->start(&error, kStartTimeout))
      << "cycle " << cycle << ": the store did not reopen: " << error
      << "\nstderr: " << server->error_output();
  if (!server->running()) return nullptr;
  return server;
}

TEST(Crash, AcknowledgedWritesSurviveSigkillAtRandomMoments) {
  const uint64_t cycles_min = env_count("KEYGATE_CRASH_CYCLES", kShortCycles);
  const uint64_t writes_min = env_count("KEYGATE_CRASH_WRITES", kShortWrites);
  TempDir dir;
  const std::string data_dir = dir.path() + "/data";
  std::mt19937_64 rng(std::random_device{}());
  const std::string admin_key = "crash-admin-" + random_hex(rng, 32);
  std::vector<ClientModel> models(kClients);
  for (int i = 0; i < kClients; ++i) {
    models[i].index = i;
    models[i].rng.seed(rng());
  }
  std::atomic<uint64_t> acked_writes{0};
  const auto started = Clock::now();
  uint64_t cycle = 0;
  for (; cycle < cycles_min || acked_writes.load() < writes_min; ++cycle) {
    std::unique_ptr<TestServer> server = start_server(data_dir, admin_key, static_cast<int>(cycle));
    ASSERT_NE(server, nullptr);
    Checker(*server, admin_key).check(models);
    if (::testing::Test::HasFailure()) break;

    // This cycle's writes: about the remaining writes over the remaining cycles, at random.
    const uint64_t done = acked_writes.load();
    const uint64_t remaining_writes = writes_min > done ? writes_min - done : 0;
    const uint64_t remaining_cycles = cycles_min > cycle ? cycles_min - cycle : 1;
    const uint64_t mean = std::max<uint64_t>(remaining_writes / remaining_cycles, 2);
    const uint64_t target = done + 1 + rng() % (2 * mean);

    std::atomic<bool> stop{false};
    std::atomic<int> running{kClients};
    std::vector<std::thread> threads;
    for (ClientModel& m : models) {
      threads.emplace_back([&, port = server->admin_port()] {
        Client(m, port, admin_key, acked_writes, stop).run();
        running.fetch_sub(1);
      });
    }
    const auto deadline = Clock::now() + kCycleWritesTimeout;
    while (acked_writes.load() < target && running.load() > 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    // Land the kill anywhere in the requests then in flight.
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    EXPECT_TRUE(server->send_signal(SIGKILL));
    const ExitStatus status = server->wait_exit(Millis(10000));
    EXPECT_EQ(status.signal, SIGKILL)
        << status.describe() << "\nstderr: " << server->error_output();
    stop.store(true);
    for (std::thread& t : threads) t.join();
    if (::testing::Test::HasFailure()) break;
  }

  // A last restart, checked like the others, and a clean stop.
  std::unique_ptr<TestServer> server = start_server(data_dir, admin_key, static_cast<int>(cycle));
  ASSERT_NE(server, nullptr);
  Checker(*server, admin_key).check(models);
  const ExitStatus status = server->stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server->error_output();

  Figures total;
  size_t live = 0;
  for (const ClientModel& m : models) {
    total.creates += m.figures.creates;
    total.updates += m.figures.updates;
    total.deletes += m.figures.deletes;
    total.unanswered += m.figures.unanswered;
    total.unanswered_applied += m.figures.unanswered_applied;
    total.unanswered_not_applied += m.figures.unanswered_not_applied;
    total.unanswered_undetermined += m.figures.unanswered_undetermined;
    total.lost += m.figures.lost;
    total.key_checks += m.figures.key_checks;
    live += m.keys.size();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::printf("crash test: %" PRIu64 " SIGKILL cycles, %" PRIu64 " acknowledged writes (%" PRIu64
              " creates, %" PRIu64 " updates, %" PRIu64 " deletes), %" PRIu64
              " acknowledged deletes, "
              "%" PRIu64 " unanswered writes (%" PRIu64 " applied, %" PRIu64
              " not applied, %" PRIu64 " undetermined), %zu keys live, %" PRIu64
              " key checks after restarts, lost = %" PRIu64 ", %.1f s\n",
              cycle, total.writes(), total.creates, total.updates, total.deletes, total.deletes,
              total.unanswered, total.unanswered_applied, total.unanswered_not_applied,
              total.unanswered_undetermined, live, total.key_checks, total.lost, seconds);
  std::fflush(stdout);
  EXPECT_EQ(total.lost, 0u);
  EXPECT_GE(cycle, cycles_min);
  EXPECT_GE(total.writes(), writes_min);
}

// --- No plaintext on disk -----------------------------------------------------------------------

struct MadeKey {
  std::string id;
  std::string value;
};

class DataDirScan {
 public:
  explicit DataDirScan(std::string admin_key) : auth_("X-ApiKey: " + std::move(admin_key)) {}

  // POST /admin/keys; records the key's plaintext and id.
  void create(const TestServer& server, std::string_view body) {
    const Exchange e =
        round_trip_once(server.admin_port(), request("POST", "/admin/keys", {auth_}, body));
    ASSERT_EQ(e.end, Exchange::End::kAnswered);
    ASSERT_EQ(e.response.status, 201) << show(e.response);
    MadeKey k{string_member(e.response.body, "id"), string_member(e.response.body, "key")};
    ASSERT_FALSE(k.id.empty());
    ASSERT_FALSE(k.value.empty());
    plaintexts_.push_back(k.value);
    made_.push_back(k);
  }

  void rotate(const TestServer& server, const std::string& id, std::string_view body) {
    const Exchange e = round_trip_once(
        server.admin_port(), request("POST", "/admin/keys/" + id + "/rotate", {auth_}, body));
    ASSERT_EQ(e.end, Exchange::End::kAnswered);
    ASSERT_EQ(e.response.status, 201) << show(e.response);
    const std::string value = string_member(e.response.body, "key");
    ASSERT_FALSE(value.empty());
    plaintexts_.push_back(value);
  }

  void import(const TestServer& server, const std::vector<std::string>& values) {
    std::string body = "{\"keys\":[";
    for (size_t i = 0; i < values.size(); ++i) {
      if (i > 0) body += ",";
      body += "{\"key\":\"" + values[i] + "\",\"apis\":[\"alpha\"]}";
    }
    body += "]}";
    const Exchange e =
        round_trip_once(server.admin_port(), request("POST", "/admin/keys/import", {auth_}, body));
    ASSERT_EQ(e.end, Exchange::End::kAnswered);
    ASSERT_EQ(e.response.status, 200) << show(e.response);
    std::string_view ids = e.response.body;
    for (const std::string& v : values) {
      const size_t at = ids.find("\"k");
      ASSERT_NE(at, std::string_view::npos) << e.response.body;
      made_.push_back(MadeKey{std::string(ids.substr(at + 1, 13)), v});
      plaintexts_.push_back(v);
      ids = ids.substr(at + 15);
    }
  }

  void remove(const TestServer& server, const std::string& id) {
    const Exchange e =
        round_trip_once(server.admin_port(), request("DELETE", "/admin/keys/" + id, {auth_}));
    ASSERT_EQ(e.end, Exchange::End::kAnswered);
    ASSERT_EQ(e.response.status, 204) << show(e.response);
    deleted_.insert(id);
  }

  void patch(const TestServer& server, const std::string& id) {
    const Exchange e = round_trip_once(
        server.admin_port(),
        request("PATCH", "/admin/keys/" + id, {auth_}, R"({"description":"patched"})"));
    ASSERT_EQ(e.end, Exchange::End::kAnswered);
    ASSERT_EQ(e.response.status, 200) << show(e.response);
  }

  std::vector<std::string> plaintexts_;
  std::vector<MadeKey> made_;
  std::set<std::string> deleted_;

 private:
  std::string auth_;
};

// One round of changes: operator-chosen, generated and imported keys; rotations with and without
// a grace period; a patch; deletes.
void make_changes(const TestServer& server, DataDirScan& scan, std::mt19937_64& rng,
                  const std::string& tag) {
  const size_t first = scan.made_.size();
  for (int i = 0; i < 6; ++i) {
    scan.create(server, R"({"apis":["alpha"],"key":"dd-)" + tag + "-op-" + std::to_string(i) + "-" +
                            random_hex(rng, 32) + R"("})");
    scan.create(server, R"({"apis":["alpha","beta"],"description":"generated"})");
  }
  scan.import(server, {"dd-" + tag + "-import-0-" + random_hex(rng, 32),
                       "dd-" + tag + "-import-1-" + random_hex(rng, 32)});
  const std::vector<MadeKey> made(scan.made_.begin() + static_cast<std::ptrdiff_t>(first),
                                  scan.made_.end());
  scan.rotate(server, made[0].id, R"({"grace_seconds":3600})");
  scan.rotate(server, made[0].id, "");  // a second rotation ends the first's grace at once
  scan.rotate(server, made[1].id, R"({"grace_seconds":3600})");
  scan.rotate(server, made[2].id, "");
  scan.rotate(server, made[12].id, R"({"grace_seconds":60})");
  scan.patch(server, made[3].id);
  scan.remove(server, made[4].id);
  scan.remove(server, made[5].id);
  scan.remove(server, made[13].id);
}

bool is_wal(const std::filesystem::path& p) {
  const std::string name = p.filename().string();
  return name.size() > 4 && name.ends_with(".log") &&
         std::all_of(name.begin(), name.end() - 4, [](char c) { return c >= '0' && c <= '9'; });
}

TEST(DataDir, HoldsNoKeyPlaintextAfterCreatesRotationsImportsAndDeletes) {
  TempDir dir;
  const std::string data_dir = dir.path() + "/data";
  std::mt19937_64 rng(std::random_device{}());
  const std::string admin_key = "dd-admin-" + random_hex(rng, 32);
  DataDirScan scan(admin_key);
  scan.plaintexts_.push_back(admin_key);

  // Round one goes to the WAL; the restart replays it into an SST file. Round two stays in the
  // WAL (a SIGTERM does not flush).
  size_t first_round_end = 0;
  for (const std::string tag : {"one", "two"}) {
    std::unique_ptr<TestServer> server = start_server(data_dir, admin_key, 0);
    ASSERT_NE(server, nullptr);
    make_changes(*server, scan, rng, tag);
    if (::testing::Test::HasFatalFailure()) return;
    const ExitStatus status = server->stop(SIGTERM);
    ASSERT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server->error_output();
    if (first_round_end == 0) first_round_end = scan.made_.size();
  }

  struct File {
    std::filesystem::path path;
    std::string bytes;
  };
  std::vector<File> files;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data_dir)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    files.push_back(File{entry.path(), ss.str()});
  }
  const auto count = [&](auto&& pred) { return std::count_if(files.begin(), files.end(), pred); };
  EXPECT_GE(count([](const File& f) { return f.path.extension() == ".sst"; }), 1);
  EXPECT_GE(count([](const File& f) { return is_wal(f.path); }), 1);
  EXPECT_GE(
      count([](const File& f) { return f.path.filename().string().starts_with("MANIFEST-"); }), 1);
  EXPECT_GE(count([](const File& f) { return f.path.filename().string().starts_with("OPTIONS-"); }),
            1);

  // SST blocks are Snappy-compressed and store each key after the prefix it shares with the key
  // before it, so a string written once may reach the file in pieces, cut where the compressor
  // found an earlier copy of a few of its bytes. Checks therefore look at windows of a string:
  // no 12-character window of a plaintext past its first 6 characters (what a hint shows) is in
  // any file, and some 6-character window of an id is. Random windows of that size cannot turn
  // up by chance in a few dozen kilobytes.
  constexpr size_t kSecretWindow = 12;
  constexpr size_t kIdWindow = 6;
  size_t bytes_scanned = 0;
  for (const File& f : files) {
    bytes_scanned += f.bytes.size();
    for (const std::string& p : scan.plaintexts_) {
      ASSERT_GE(p.size(), 6 + kSecretWindow);
      EXPECT_EQ(f.bytes.find(p), std::string::npos) << f.path << " holds the plaintext " << p;
      for (size_t at = 6; at + kSecretWindow <= p.size(); ++at) {
        const std::string_view window = std::string_view(p).substr(at, kSecretWindow);
        EXPECT_EQ(f.bytes.find(window), std::string::npos)
            << f.path << " holds " << window << " of the plaintext " << p;
      }
    }
  }

  // The scan reads real records: every live id is in an SST file (round one) or in the WAL
  // (round two, uncompressed: the whole id). Deleted ids of round one may be gone altogether
  // (a delete that meets its put in the memtable leaves nothing).
  const auto holds_id = [](const File& f, std::string_view id) {
    for (size_t at = 1; at + kIdWindow <= id.size(); ++at) {
      if (f.bytes.find(id.substr(at, kIdWindow)) != std::string::npos) return true;
    }
    return false;
  };
  size_t ids_found = 0;
  for (size_t i = 0; i < scan.made_.size(); ++i) {
    const std::string& id = scan.made_[i].id;
    if (scan.deleted_.count(id) != 0) continue;
    const bool found = i < first_round_end
                           ? std::any_of(files.begin(), files.end(),
                                         [&](const File& f) {
                                           return f.path.extension() == ".sst" && holds_id(f, id);
                                         })
                           : std::any_of(files.begin(), files.end(), [&](const File& f) {
                               return is_wal(f.path) && f.bytes.find(id) != std::string::npos;
                             });
    EXPECT_TRUE(found) << (i < first_round_end ? "round one's id " : "round two's id ") << id
                       << " is not in " << (i < first_round_end ? "an SST file" : "the WAL");
    ids_found += found ? 1 : 0;
  }
  std::printf("data dir scan: %zu files, %zu bytes, %zu plaintexts absent, %zu live ids found\n",
              files.size(), bytes_scanned, scan.plaintexts_.size(), ids_found);
  std::fflush(stdout);
}

}  // namespace
}  // namespace keygate::integration
