// Integration tests of GET /admin/logs and `keygatectl logs`.
//
// Two parts:
//   - AdminLogsStore: the admin API over the production KeyServiceAdminStore and a real
//     AccessLog in a temp directory, no server: records appended by a "worker" are queried
//     through execute_admin() (flush before query, verbatim records, filters, cursors, follow).
//   - AdminLogsServer: the real keygate binary (auth-check mode, kOrdersAndBillingApis) and the
//     real keygatectl. Data-port requests made with a key created through POST /admin/keys
//     must show up in GET /admin/logs and in `keygatectl logs`. One worker: records are
//     numbered as the log writer drains the workers' buffers, so only within one worker is
//     sequence order the order of the requests.
//
// Every server is stopped with SIGTERM and must exit 0; every keygatectl started in the
// background is interrupted (SIGINT) and reaped, or killed at a deadline.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/admin_api.h"
#include "core/permissions.h"
#include "storage/access_log.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"
#include "storage/key_service_admin_store.h"
#include "tests/integration/process_helper.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using Clock = std::chrono::steady_clock;

// --- Reading pages ---------------------------------------------------------------------------

// The end of the JSON value at text[pos] (compact JSON as keygate writes it).
size_t value_end(std::string_view text, size_t pos) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = pos; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
        if (depth == 0) return i + 1;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return i;
      if (--depth == 0) return i + 1;
    } else if (c == ',' && depth == 0) {
      return i;
    }
  }
  return text.size();
}

// The records of a GET /admin/logs body, each its JSON text; empty when it is not a page.
std::vector<std::string> records_of(std::string_view body) {
  std::vector<std::string> out;
  constexpr std::string_view kStart = "{\"records\":[";
  if (!body.starts_with(kStart)) return out;
  size_t pos = kStart.size();
  while (pos < body.size() && body[pos] == '{') {
    const size_t end = value_end(body, pos);
    out.emplace_back(body.substr(pos, end - pos));
    pos = end;
    if (pos < body.size() && body[pos] == ',') ++pos;
  }
  return out;
}

// The page's next_cursor; nullopt when null (or absent).
std::optional<std::string> next_cursor_of(std::string_view body) {
  if (body.find("\"next_cursor\":null") != std::string_view::npos) return std::nullopt;
  const std::string cursor = string_member(body, "next_cursor");
  if (cursor.empty()) return std::nullopt;
  return cursor;
}

std::vector<int64_t> seqs_of(const std::vector<std::string>& records) {
  std::vector<int64_t> out;
  for (const std::string& r : records) out.push_back(number_member(r, "seq"));
  return out;
}

// The "path" of each complete line of `keygatectl logs` output (one record per line).
std::vector<std::string> paths_of_lines(const std::string& out) {
  std::vector<std::string> paths;
  for (size_t at = 0; at < out.size();) {
    const size_t end = out.find('\n', at);
    if (end == std::string::npos) break;
    paths.push_back(string_member(out.substr(at, end - at), "path"));
    at = end + 1;
  }
  return paths;
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// --- AdminLogsStore: execute_admin over KeyServiceAdminStore and a real AccessLog ------------

class AdminLogsStore : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ApiConfig orders;
    orders.name = "orders";
    orders.routes = {"/orders"};
    ASSERT_TRUE(apis_.init({orders}, &error)) << error;
    ctx_.apis = &apis_;
    ctx_.now = 1764158400;
    ctx_.random = [](std::span<uint8_t> out) {
      std::fill(out.begin(), out.end(), uint8_t{7});
      return true;
    };
    const std::string data = dir_.path() + "/data";
    ASSERT_TRUE(data_dir_.open(data, &error)) << error;
    keys_ = std::make_unique<storage::KeyService>();
    ASSERT_TRUE(keys_->open(data, storage::KeyService::Options{}, &error)) << error;
    store_ = std::make_unique<storage::KeyServiceAdminStore>(*keys_);
  }

  void TearDown() override {
    store_.reset();
    log_.reset();
    keys_.reset();  // before data_dir_ goes: the store closes while the directory is locked
  }

  void open_log() {
    storage::AccessLogOptions options;
    options.dir = dir_.path() + "/logs";
    std::string error;
    log_ = storage::AccessLog::open(options, 1, &error);
    ASSERT_NE(log_, nullptr) << error;
    store_->set_access_log(log_.get());
  }

  // Appends a record as worker 0 would, at `second` (Unix seconds) + `micros`.
  void append(std::string_view key_id, int status, int64_t second, int64_t micros = 0) {
    const std::string record = "{\"time_us\":" + std::to_string(second * 1'000'000 + micros) +
                               ",\"listener\":\"data\",\"key_id\":\"" + std::string(key_id) +
                               "\",\"method\":\"GET\",\"path\":\"/orders/\\u00e9\",\"status\":" +
                               std::to_string(status) + "}";
    ASSERT_TRUE(log_->append(0, record));
  }

  AdminResponse get(std::string_view query) {
    AdminRequest request;
    request.method = "GET";
    request.path = "/admin/logs";
    request.query = query;
    return execute_admin(request, *store_, ctx_);
  }

  // Every record of the newest-first listing for `filters`, paging with `limit`.
  std::vector<std::string> all_pages(const std::string& filters, int limit, int* pages) {
    std::vector<std::string> all;
    std::optional<std::string> cursor;
    *pages = 0;
    while (*pages < 100) {
      std::string query = "limit=" + std::to_string(limit) + filters;
      if (cursor) query += "&cursor=" + *cursor;
      const AdminResponse r = get(query);
      EXPECT_EQ(r.status, 200) << r.body;
      ++*pages;
      for (std::string& record : records_of(r.body)) all.push_back(std::move(record));
      cursor = next_cursor_of(r.body);
      if (!cursor) break;
    }
    return all;
  }

  static constexpr std::string_view kKeyA = "kAAAAAAAAAAAA";
  static constexpr std::string_view kKeyB = "kBBBBBBBBBBBB";

  TempDir dir_;
  ApiRegistry apis_;
  AdminContext ctx_;
  storage::DataDir data_dir_;
  std::unique_ptr<storage::KeyService> keys_;
  std::unique_ptr<storage::AccessLog> log_;
  std::unique_ptr<storage::KeyServiceAdminStore> store_;
};

TEST_F(AdminLogsStore, WithoutAnAccessLogTheRouteIsLogsUnavailable) {
  const AdminResponse r = get("");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body,
            R"({"error":"logs_unavailable","field":null,"message":"no access log is configured"})");
}

TEST_F(AdminLogsStore, SeesRecordsAppendedJustBeforeNewestFirstAndVerbatim) {
  ASSERT_NO_FATAL_FAILURE(open_log());
  // The writer must not get to these on its own before the query's flush.
  log_->set_writer_delay_for_testing(std::chrono::milliseconds(200));
  for (int i = 0; i < 5; ++i) ASSERT_NO_FATAL_FAILURE(append(kKeyA, 200, 1764158400 + i));
  const AdminResponse r = get("");
  ASSERT_EQ(r.status, 200) << r.body;
  const std::vector<std::string> records = records_of(r.body);
  ASSERT_EQ(records.size(), 5u) << r.body;
  EXPECT_EQ(seqs_of(records), (std::vector<int64_t>{5, 4, 3, 2, 1}));
  // As written: the writer's seq first, then the producer's members untouched.
  EXPECT_EQ(records[0],
            "{\"seq\":5,\"time_us\":1764158404000000,\"listener\":\"data\",\"key_id\":"
            "\"kAAAAAAAAAAAA\",\"method\":\"GET\",\"path\":\"/orders/\\u00e9\",\"status\":200}");
  EXPECT_FALSE(next_cursor_of(r.body).has_value()) << r.body;
  EXPECT_TRUE(r.body.ends_with(",\"next_cursor\":null}")) << r.body;
}

TEST_F(AdminLogsStore, FiltersByKeyStatusAndTime) {
  ASSERT_NO_FATAL_FAILURE(open_log());
  const int64_t t0 = 1764158400;  // 2025-11-26T12:00:00Z
  ASSERT_NO_FATAL_FAILURE(append(kKeyA, 200, t0));
  ASSERT_NO_FATAL_FAILURE(append(kKeyB, 403, t0 + 60));
  ASSERT_NO_FATAL_FAILURE(append(kKeyA, 403, t0 + 120, 999'999));
  ASSERT_NO_FATAL_FAILURE(append(kKeyA, 200, t0 + 180));

  AdminResponse r = get("key_id=kAAAAAAAAAAAA");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{4, 3, 1})) << r.body;
  r = get("status=403");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{3, 2})) << r.body;
  r = get("key_id=kAAAAAAAAAAAA&status=403");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{3})) << r.body;
  // since is inclusive, until exclusive, both to the second.
  r = get("since=2025-11-26T12:01:00Z&until=2025-11-26T12:03:00Z");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{3, 2})) << r.body;
  r = get("since=2025-11-26T12:03:00Z");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{4})) << r.body;
  r = get("key_id=kCCCCCCCCCCCC");
  EXPECT_EQ(r.body, R"({"records":[],"next_cursor":null})");
}

TEST_F(AdminLogsStore, CursorsPageThroughEveryRecordOnce) {
  ASSERT_NO_FATAL_FAILURE(open_log());
  for (int i = 0; i < 7; ++i) {
    ASSERT_NO_FATAL_FAILURE(append(i % 2 == 0 ? kKeyA : kKeyB, 200, 1764158400 + i));
  }
  int pages = 0;
  std::vector<std::string> all = all_pages("", 3, &pages);
  EXPECT_EQ(seqs_of(all), (std::vector<int64_t>{7, 6, 5, 4, 3, 2, 1}));
  EXPECT_GE(pages, 3);
  all = all_pages("&key_id=kAAAAAAAAAAAA", 2, &pages);
  EXPECT_EQ(seqs_of(all), (std::vector<int64_t>{7, 5, 3, 1}));

  const AdminResponse first = get("limit=3");
  EXPECT_EQ(next_cursor_of(first.body), std::optional<std::string>("5")) << first.body;
}

TEST_F(AdminLogsStore, FollowReturnsNewerRecordsOldestFirstAndTheNextAfter) {
  ASSERT_NO_FATAL_FAILURE(open_log());
  for (int i = 0; i < 3; ++i) ASSERT_NO_FATAL_FAILURE(append(kKeyA, 200, 1764158400 + i));
  AdminResponse r = get("after=1");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{2, 3})) << r.body;
  EXPECT_EQ(next_cursor_of(r.body), std::optional<std::string>("3")) << r.body;
  r = get("after=3");
  EXPECT_EQ(r.body, R"({"records":[],"next_cursor":"3"})");

  ASSERT_NO_FATAL_FAILURE(append(kKeyB, 500, 1764158500));
  ASSERT_NO_FATAL_FAILURE(append(kKeyA, 200, 1764158501));
  r = get("after=3&key_id=kAAAAAAAAAAAA");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{5})) << r.body;
  EXPECT_EQ(next_cursor_of(r.body), std::optional<std::string>("5")) << r.body;
  r = get("after=3&limit=1");
  EXPECT_EQ(seqs_of(records_of(r.body)), (std::vector<int64_t>{4})) << r.body;
  EXPECT_EQ(next_cursor_of(r.body), std::optional<std::string>("4")) << r.body;
}

// --- AdminLogsServer: the real server and keygatectl (need the access log wired in) ----------

// keygatectl's environment: ours, with KEYGATE_ADMIN_KEY set to `admin_key`.
std::vector<std::string> ctl_environment(const std::string& admin_key) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!std::string_view(*e).starts_with("KEYGATE_ADMIN_KEY=")) env.emplace_back(*e);
  }
  env.push_back("KEYGATE_ADMIN_KEY=" + admin_key);
  return env;
}

class AdminLogsServer : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options = admin_server_options(admin_value_);
    options.workers = 1;
    server_ = std::make_unique<TestServer>(options);
    std::string error;
    ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
    const std::optional<Response> r =
        admin("POST", "/admin/keys", R"({"apis":["orders"],"description":"logs test"})");
    ASSERT_TRUE(r && r->status == 201) << show(r);
    key_id_ = string_member(r->body, "id");
    key_value_ = string_member(r->body, "key");
    ASSERT_FALSE(key_id_.empty()) << r->body;
    ASSERT_FALSE(key_value_.empty()) << r->body;
  }

  void TearDown() override {
    if (!server_ || !server_->running()) return;
    const ExitStatus status = server_->stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server_->error_output();
  }

  std::optional<Response> admin(std::string_view method, std::string_view target,
                                std::string_view body = {}) {
    std::vector<std::string> headers = {"X-ApiKey: " + admin_value_};
    if (!body.empty()) headers.push_back("Content-Type: application/json");
    return round_trip(server_->admin_port(), http_request(method, target, headers, body));
  }

  // A data-port GET with the test key, expecting `status`.
  void data(std::string_view target, int status) {
    const std::optional<Response> r =
        round_trip(server_->data_port(), http_request("GET", target, {"X-ApiKey: " + key_value_}));
    ASSERT_TRUE(r && r->status == status) << show(r);
  }

  // GET /admin/logs?`query` until its page holds at least `count` records (a worker may append
  // its record just after the response left), at most 3 s. The last page's body.
  std::string logs_until(const std::string& query, size_t count) {
    const auto deadline = Clock::now() + Millis(3000);
    std::string body;
    while (true) {
      const std::optional<Response> r = admin("GET", "/admin/logs?" + query);
      EXPECT_TRUE(r && r->status == 200) << show(r);
      if (!r || r->status != 200) return "";
      body = r->body;
      if (records_of(body).size() >= count || Clock::now() >= deadline) return body;
      std::this_thread::sleep_for(Millis(50));
    }
  }

  // Starts `keygatectl --url <admin port> logs ARGS --follow` and waits for its first line.
  void start_follow(ChildProcess* follow, std::vector<std::string> args) {
    const std::vector<std::string> env = ctl_environment(admin_value_);
    args.insert(args.begin(),
                {"--url", "http://127.0.0.1:" + std::to_string(server_->admin_port()), "logs"});
    args.push_back("--follow");
    std::string error;
    ASSERT_TRUE(follow->spawn(KEYGATECTL_BINARY, args, &error, &env)) << error;
    ASSERT_TRUE(follow->wait_for_lines(1, Millis(5000)))
        << follow->output() << follow->error_output();
  }

  const std::string admin_value_ = "admin-logs-test-admin-key-" + random_hex(16);
  std::unique_ptr<TestServer> server_;
  std::string key_id_;
  std::string key_value_;
};

TEST_F(AdminLogsServer, DataPortRequestsShowUpNewestFirstWithKeyStatusPathAndMethod) {
  ASSERT_NO_FATAL_FAILURE(data("/orders/1", 200));
  ASSERT_NO_FATAL_FAILURE(data("/billing/2", 403));
  ASSERT_NO_FATAL_FAILURE(data("/orders/3", 200));
  const std::string body = logs_until("key_id=" + key_id_, 3);
  const std::vector<std::string> records = records_of(body);
  ASSERT_EQ(records.size(), 3u) << body;
  const std::vector<int64_t> seqs = seqs_of(records);
  EXPECT_TRUE(std::is_sorted(seqs.rbegin(), seqs.rend())) << body;
  EXPECT_EQ(string_member(records[0], "path"), "/orders/3") << records[0];
  EXPECT_EQ(number_member(records[1], "status"), 403) << records[1];
  EXPECT_EQ(string_member(records[2], "path"), "/orders/1") << records[2];
  for (const std::string& record : records) {
    EXPECT_EQ(string_member(record, "key_id"), key_id_) << record;
    EXPECT_EQ(string_member(record, "method"), "GET") << record;
    EXPECT_EQ(string_member(record, "listener"), "data") << record;
    EXPECT_FALSE(contains(record, key_value_)) << "a key value in the log: " << record;
  }
  // The whole log (admin requests too) holds no key value either.
  const std::string everything = logs_until("limit=1000", 1);
  EXPECT_FALSE(contains(everything, key_value_));
  EXPECT_FALSE(contains(everything, admin_value_));
}

TEST_F(AdminLogsServer, FiltersByKeyIdAndStatus) {
  ASSERT_NO_FATAL_FAILURE(data("/orders/1", 200));
  ASSERT_NO_FATAL_FAILURE(data("/billing/1", 403));
  // Without a key: a 401 record with no key_id.
  const std::optional<Response> anonymous =
      round_trip(server_->data_port(), http_request("GET", "/orders/9"));
  ASSERT_TRUE(anonymous && anonymous->status == 401) << show(anonymous);

  std::string body = logs_until("key_id=" + key_id_ + "&status=403", 1);
  std::vector<std::string> records = records_of(body);
  ASSERT_EQ(records.size(), 1u) << body;
  EXPECT_EQ(string_member(records[0], "path"), "/billing/1");

  body = logs_until("status=401", 1);
  records = records_of(body);
  ASSERT_GE(records.size(), 1u) << body;
  for (const std::string& record : records) EXPECT_EQ(number_member(record, "status"), 401) << record;
  EXPECT_TRUE(contains(records[0], "\"key_id\":null")) << records[0];
  EXPECT_EQ(string_member(records[0], "path"), "/orders/9") << records[0];

  const std::optional<Response> bad = admin("GET", "/admin/logs?status=42");
  ASSERT_TRUE(bad && bad->status == 400) << show(bad);
  EXPECT_EQ(string_member(bad->body, "field"), "status") << bad->body;
}

TEST_F(AdminLogsServer, CursorsPageThroughTheKeysRecordsAndFollowSeesNewOnes) {
  for (int i = 0; i < 5; ++i) ASSERT_NO_FATAL_FAILURE(data("/orders/" + std::to_string(i), 200));
  ASSERT_EQ(records_of(logs_until("key_id=" + key_id_, 5)).size(), 5u);
  std::vector<std::string> paths;
  std::optional<std::string> cursor;
  for (int page = 0; page < 10; ++page) {
    std::string query = "limit=2&key_id=" + key_id_;
    if (cursor) query += "&cursor=" + *cursor;
    const std::optional<Response> r = admin("GET", "/admin/logs?" + query);
    ASSERT_TRUE(r && r->status == 200) << show(r);
    for (const std::string& record : records_of(r->body)) {
      paths.push_back(string_member(record, "path"));
    }
    cursor = next_cursor_of(r->body);
    if (!cursor) break;
  }
  EXPECT_EQ(paths, (std::vector<std::string>{"/orders/4", "/orders/3", "/orders/2", "/orders/1",
                                             "/orders/0"}));

  // Follow from the newest record: only what comes after, oldest first.
  const std::string newest = logs_until("limit=1", 1);
  const int64_t after = number_member(records_of(newest).at(0), "seq");
  ASSERT_GT(after, 0) << newest;
  ASSERT_NO_FATAL_FAILURE(data("/orders/new1", 200));
  ASSERT_NO_FATAL_FAILURE(data("/orders/new2", 200));
  const std::string body =
      logs_until("after=" + std::to_string(after) + "&key_id=" + key_id_, 2);
  const std::vector<std::string> records = records_of(body);
  ASSERT_EQ(records.size(), 2u) << body;
  EXPECT_EQ(string_member(records[0], "path"), "/orders/new1");
  EXPECT_EQ(string_member(records[1], "path"), "/orders/new2");
  EXPECT_TRUE(next_cursor_of(body).has_value()) << body;
}

TEST_F(AdminLogsServer, KeygatectlLogsPrintsTheKeysRecordsOnePerLine) {
  ASSERT_NO_FATAL_FAILURE(data("/orders/1", 200));
  ASSERT_NO_FATAL_FAILURE(data("/billing/1", 403));
  ASSERT_EQ(records_of(logs_until("key_id=" + key_id_, 2)).size(), 2u);
  const std::string url = "http://127.0.0.1:" + std::to_string(server_->admin_port());
  const std::vector<std::string> env = ctl_environment(admin_value_);
  ProcessResult run =
      run_process(KEYGATECTL_BINARY, {"--url", url, "logs", "--key", key_id_}, &env);
  ASSERT_TRUE(run.status.clean()) << run.status.describe() << "\n" << run.err;
  ASSERT_EQ(count_of(run.out, "\n"), 2u) << run.out;
  const std::string first = run.out.substr(0, run.out.find('\n'));
  EXPECT_TRUE(first.starts_with("{\"seq\":")) << first;
  EXPECT_TRUE(first.ends_with("}")) << first;
  EXPECT_EQ(string_member(first, "path"), "/billing/1") << "newest first: " << run.out;
  EXPECT_EQ(string_member(first, "key_id"), key_id_);

  run = run_process(KEYGATECTL_BINARY,
                    {"--url", url, "logs", "--key", key_id_, "--status", "200"}, &env);
  ASSERT_TRUE(run.status.clean()) << run.status.describe() << "\n" << run.err;
  ASSERT_EQ(count_of(run.out, "\n"), 1u) << run.out;
  EXPECT_EQ(string_member(run.out, "path"), "/orders/1");

  run = run_process(KEYGATECTL_BINARY, {"--url", url, "logs", "--key", key_id_, "--limit", "1"},
                    &env);
  ASSERT_TRUE(run.status.clean()) << run.status.describe() << "\n" << run.err;
  EXPECT_EQ(count_of(run.out, "\n"), 1u) << run.out;
  EXPECT_TRUE(contains(run.err, "--cursor")) << run.err;
}

TEST_F(AdminLogsServer, KeygatectlLogsFollowStreamsNewRecordsUntilInterrupted) {
  ASSERT_NO_FATAL_FAILURE(data("/orders/old", 200));
  ASSERT_EQ(records_of(logs_until("key_id=" + key_id_, 1)).size(), 1u);
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow, {"--key", key_id_}));
  ASSERT_NO_FATAL_FAILURE(data("/orders/new1", 200));
  ASSERT_NO_FATAL_FAILURE(data("/orders/new2", 200));
  EXPECT_TRUE(follow.wait_for_lines(3, Millis(5000))) << follow.output() << follow.error_output();
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  // The backlog first, then the new records oldest first, each once.
  const std::string& out = follow.output();
  const std::vector<std::string> paths = paths_of_lines(out);
  EXPECT_EQ(paths, (std::vector<std::string>{"/orders/old", "/orders/new1", "/orders/new2"}))
      << out;
}

TEST_F(AdminLogsServer, KeygatectlLogsFollowLeavesOutLogQueriesItsOwnPollingIncluded) {
  ASSERT_NO_FATAL_FAILURE(data("/orders/before", 200));
  ASSERT_EQ(records_of(logs_until("key_id=" + key_id_, 1)).size(), 1u);  // itself a log query
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow, {}));
  // Several polls (every 0.5 s) happen meanwhile, each logged.
  std::this_thread::sleep_for(Millis(1500));
  ASSERT_NO_FATAL_FAILURE(data("/orders/after", 200));
  ASSERT_NO_FATAL_FAILURE(data("/orders/last", 200));
  bool seen_last = false;
  for (int i = 0; i < 50 && !seen_last; ++i) {
    follow.drain_output(Millis(100));  // reads whatever came meanwhile
    seen_last = contains(follow.output(), "\"/orders/last\"");
  }
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  ASSERT_TRUE(seen_last) << follow.output();
  const std::string& out = follow.output();
  const std::vector<std::string> paths = paths_of_lines(out);
  for (const std::string& path : paths) {
    EXPECT_FALSE(path.starts_with("/admin/logs")) << out;
  }
  // Everything else is shown: the data requests (and any other admin request).
  ASSERT_GE(paths.size(), 3u) << out;
  EXPECT_EQ(paths[paths.size() - 3], "/orders/before");
  EXPECT_EQ(paths[paths.size() - 2], "/orders/after");
  EXPECT_EQ(paths.back(), "/orders/last");
}

TEST_F(AdminLogsServer, KeygatectlLogsFollowOnAnIdleServerPollsTwiceASecond) {
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow, {}));  // the key's creation, then idle
  std::this_thread::sleep_for(Millis(2000));
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  // Each poll is logged: its own records count the polls. One every 0.5 s for 2 s, give or
  // take one at either end.
  size_t polls = 0;
  for (const std::string& record : records_of(logs_until("limit=1000", 1))) {
    if (contains(string_member(record, "path"), "after=")) ++polls;
  }
  EXPECT_LE(polls, 6u) << "an idle follow polled without pausing";
  EXPECT_GE(polls, 2u);
}

TEST_F(AdminLogsServer, KeygatectlLogsFollowLimitCountsOnlyTheRecordsItShows) {
  for (const char* path : {"/orders/1", "/orders/2", "/orders/3"}) {
    ASSERT_NO_FATAL_FAILURE(data(path, 200));
  }
  ASSERT_EQ(records_of(logs_until("key_id=" + key_id_, 3)).size(), 3u);
  // Two more log queries, the newest records before the follow starts.
  const std::string url = "http://127.0.0.1:" + std::to_string(server_->admin_port());
  const std::vector<std::string> env = ctl_environment(admin_value_);
  for (int i = 0; i < 2; ++i) {
    const ProcessResult run = run_process(KEYGATECTL_BINARY, {"--url", url, "logs"}, &env);
    ASSERT_TRUE(run.status.clean()) << run.status.describe() << "\n" << run.err;
  }
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow, {"--limit", "2"}));
  EXPECT_TRUE(follow.wait_for_lines(2, Millis(5000))) << follow.output() << follow.error_output();
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  // The two newest records that are not log queries, oldest first.
  const std::vector<std::string> paths = paths_of_lines(follow.output());
  ASSERT_GE(paths.size(), 2u) << follow.output();
  EXPECT_EQ(paths[0], "/orders/2") << follow.output();
  EXPECT_EQ(paths[1], "/orders/3") << follow.output();
}

// The backlog is fetched in whole pages however few records are missing: with the newest 300
// records all log queries (another follow polling for a while), `--limit 1` once asked for
// limit=1 pages, one request per query record, before showing anything.
TEST_F(AdminLogsServer, KeygatectlLogsFollowBacklogSkipsLogQueriesInWholePages) {
  ASSERT_NO_FATAL_FAILURE(data("/orders/under-the-queries", 200));
  for (int i = 0; i < 300; ++i) {
    const std::optional<Response> r = admin("GET", "/admin/logs?limit=1");
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(r->status, 200) << r->raw;
  }
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow, {"--limit", "1"}));
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  const std::vector<std::string> paths = paths_of_lines(follow.output());
  ASSERT_FALSE(paths.empty()) << follow.output();
  EXPECT_EQ(paths[0], "/orders/under-the-queries") << follow.output();
  size_t backlog_pages = 0;
  for (const std::string& record : records_of(logs_until("limit=1000", 1))) {
    if (contains(string_member(record, "path"), "cursor=")) ++backlog_pages;
  }
  EXPECT_LE(backlog_pages, 3u) << "the backlog was fetched a record or two per request";
}

}  // namespace
}  // namespace keygate::integration
