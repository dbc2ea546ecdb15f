#include "storage/admin_executor.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/admin_api.h"
#include "core/handler.h"
#include "core/permissions.h"

namespace keygate::storage {
namespace {

using namespace std::chrono_literals;

constexpr int64_t kNow = 1700000000;  // 2023-11-14T22:13:20Z

// An AdminStore that answers list_keys, query_logs and the backups with nothing, or holds them
// until released (which keeps the executor thread running one busy so its queue can be filled),
// and remembers created keys.
class FakeStore final : public AdminStore {
 public:
  // The calls that can be held, each independently of the other.
  enum Gate : size_t { kList, kLogs, kBackups, kBackupList, kGates };

  AdminStoreResult list_keys(std::string_view, size_t, std::vector<KeyRecord>*) override {
    pass(kList);
    return {};
  }
  AdminStoreResult get_key(std::string_view, KeyRecord*) override {
    return {AdminStoreCode::kNotFound, "no key"};
  }
  AdminStoreResult create_key(const KeyRecord& record) override {
    std::lock_guard lock(mutex_);
    created_.push_back(record);
    return {};
  }
  AdminStoreResult update_key(const KeyRecord&, const std::optional<PreviousDigest>&) override {
    return {AdminStoreCode::kNotFound, "no key"};
  }
  AdminStoreResult delete_key(std::string_view) override {
    return {AdminStoreCode::kNotFound, "no key"};
  }
  AdminStoreResult import_keys(std::vector<KeyRecord>) override { return {}; }
  AdminStoreResult list_users(std::string_view, size_t, std::vector<User>*) override {
    return {};
  }
  AdminStoreResult get_user(std::string_view, User*) override {
    return {AdminStoreCode::kNotFound, "no user"};
  }
  AdminStoreResult put_user(const User&) override { return {}; }
  AdminStoreResult delete_user(std::string_view) override {
    return {AdminStoreCode::kNotFound, "no user"};
  }
  AdminStoreResult query_logs(const LogQuery&, LogPage*) override {
    pass(kLogs);
    return {};
  }
  AdminStoreResult create_backup(int64_t now, BackupInfo* out, std::string*) override {
    pass(kBackups);
    out->name = "keygate-backup";
    out->created = now;
    return {};
  }
  AdminStoreResult list_backups(BackupListing*, std::string*) override {
    pass(kBackupList);
    return {};
  }

  void hold(Gate gate = kList) {
    std::lock_guard lock(mutex_);
    gates_[gate].holding = true;
  }
  void release(Gate gate = kList) {
    std::lock_guard lock(mutex_);
    gates_[gate].holding = false;
    changed_.notify_all();
  }
  // Waits (up to 10 s) until the gate's call was entered `n` times.
  bool wait_for_calls(int n, Gate gate = kList) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 10s, [&] { return gates_[gate].calls >= n; });
  }
  // The thread the last call of the gate ran on.
  std::thread::id thread_of(Gate gate = kList) {
    std::lock_guard lock(mutex_);
    return gates_[gate].thread;
  }
  std::vector<KeyRecord> created() {
    std::lock_guard lock(mutex_);
    return created_;
  }

 private:
  struct GateState {
    bool holding = false;
    int calls = 0;
    std::thread::id thread;
  };
  // A held call: counted, then waits until its gate is released.
  void pass(Gate gate) {
    std::unique_lock lock(mutex_);
    GateState& state = gates_[gate];
    state.thread = std::this_thread::get_id();
    ++state.calls;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !state.holding; });
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::array<GateState, kGates> gates_;
  std::vector<KeyRecord> created_;
};

// Records which slots were posted, from any thread.
class RecordingSink final : public ResumeTicket::Sink {
 public:
  void post(uint32_t slot, uint32_t) noexcept override {
    std::lock_guard lock(mutex_);
    posted_.push_back(slot);
    changed_.notify_all();
  }
  // Waits (up to 10 s) until `n` posts happened; returns the slots posted so far.
  std::vector<uint32_t> wait_for(size_t n) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, 10s, [&] { return posted_.size() >= n; });
    return posted_;
  }
  std::vector<uint32_t> posted() {
    std::lock_guard lock(mutex_);
    return posted_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<uint32_t> posted_;
};

bool counting_random(std::span<uint8_t> out) {
  static std::atomic<uint8_t> next{1};
  for (uint8_t& b : out) b = next.fetch_add(1);
  return true;
}

class AdminExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    auto set = std::make_shared<ApiSet>();
    ASSERT_TRUE(set->registry.init({ApiConfig{"orders", {"/orders"}}}, &error)) << error;
    apis_.publish(std::move(set));
  }

  AdminExecutor::Options options(size_t queue_max = 256) {
    AdminExecutor::Options o;
    o.queue_max = queue_max;
    o.clock = [] { return kNow; };
    o.random = counting_random;
    return o;
  }

  static AdminRequest request(std::string_view method, std::string_view path,
                              std::string_view body = {}) {
    AdminRequest r;
    r.method = method;
    r.path = path;
    r.body = body;
    return r;
  }

  ApiVersions apis_;
  FakeStore store_;
  RecordingSink sink_;
};

TEST_F(AdminExecutorTest, RunsARequestOnItsOwnThreadAndPostsWhenTheAnswerIsFilledIn) {
  AdminExecutor executor(store_, apis_, options());
  AdminResponse out;
  executor.submit(request("GET", "/admin/keys"), &out, ResumeTicket(&sink_, 1, 0));
  ASSERT_EQ(sink_.wait_for(1).size(), 1u);
  EXPECT_EQ(out.status, 200);
  EXPECT_EQ(out.body, "{\"keys\":[],\"next_cursor\":null}");
  EXPECT_NE(store_.thread_of(), std::this_thread::get_id());
  EXPECT_EQ(executor.stats().executed_total, 1u);
}

TEST_F(AdminExecutorTest, TheContextCarriesTheClockTheRandomSourceAndTheApis) {
  AdminExecutor executor(store_, apis_, options());
  AdminResponse out;
  constexpr std::string_view kBody = R"({"apis":["orders"],"description":"made by a test"})";
  executor.submit(request("POST", "/admin/keys", kBody), &out, ResumeTicket(&sink_, 1, 0));
  ASSERT_EQ(sink_.wait_for(1).size(), 1u);
  EXPECT_EQ(out.status, 201) << out.body;
  EXPECT_NE(out.body.find("\"created_at\":\"2023-11-14T22:13:20Z\""), std::string::npos)
      << out.body;
  EXPECT_NE(out.body.find("\"key\":\"kg_"), std::string::npos) << out.body;
  const std::vector<KeyRecord> created = store_.created();
  ASSERT_EQ(created.size(), 1u);
  EXPECT_EQ(created[0].created_at, kNow);
  EXPECT_EQ(created[0].apis, std::vector<std::string>{"orders"});
}

TEST_F(AdminExecutorTest, EachRequestIsValidatedAgainstTheApisCurrentWhenItRuns) {
  AdminExecutor executor(store_, apis_, options());
  constexpr std::string_view kBody = R"({"apis":["billing"]})";
  AdminResponse before;
  executor.submit(request("POST", "/admin/keys", kBody), &before, ResumeTicket(&sink_, 1, 0));
  ASSERT_EQ(sink_.wait_for(1).size(), 1u);
  EXPECT_EQ(before.status, 400) << before.body;
  EXPECT_NE(before.body.find("unknown_api"), std::string::npos) << before.body;
  // A reload publishes the next version: billing added, orders removed.
  auto next = std::make_shared<ApiSet>();
  std::string error;
  ASSERT_TRUE(next->registry.init({ApiConfig{"billing", {"/billing"}}}, &error)) << error;
  next->generation = 2;
  apis_.publish(std::move(next));
  AdminResponse after;
  executor.submit(request("POST", "/admin/keys", kBody), &after, ResumeTicket(&sink_, 2, 0));
  AdminResponse removed;
  executor.submit(request("POST", "/admin/keys", R"({"apis":["orders"]})"), &removed,
                  ResumeTicket(&sink_, 3, 0));
  ASSERT_EQ(sink_.wait_for(3).size(), 3u);
  EXPECT_EQ(after.status, 201) << after.body;
  EXPECT_EQ(removed.status, 400) << removed.body;
}

TEST_F(AdminExecutorTest, RequestsRunOneAtATimeInArrivalOrder) {
  AdminExecutor executor(store_, apis_, options());
  store_.hold();
  std::vector<AdminResponse> out(5);
  executor.submit(request("GET", "/admin/keys"), &out[0], ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1));
  for (uint32_t i = 1; i < 5; ++i) {
    executor.submit(request("GET", "/admin/apis"), &out[i], ResumeTicket(&sink_, i, 0));
  }
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(sink_.posted().empty());  // all wait behind the held request
  store_.release();
  EXPECT_EQ(sink_.wait_for(5), (std::vector<uint32_t>{0, 1, 2, 3, 4}));
  for (const AdminResponse& r : out) EXPECT_EQ(r.status, 200);
}

TEST_F(AdminExecutorTest, AFullQueueAnswers503AtOnce) {
  AdminExecutor executor(store_, apis_, options(/*queue_max=*/2));
  store_.hold();
  std::vector<AdminResponse> out(4);
  executor.submit(request("GET", "/admin/keys"), &out[0], ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1));  // running, so no longer queued
  executor.submit(request("GET", "/admin/apis"), &out[1], ResumeTicket(&sink_, 1, 0));
  executor.submit(request("GET", "/admin/apis"), &out[2], ResumeTicket(&sink_, 2, 0));
  executor.submit(request("GET", "/admin/apis"), &out[3], ResumeTicket(&sink_, 3, 0));
  // The third queued request found the queue full: answered before submit() returned.
  EXPECT_EQ(sink_.posted(), std::vector<uint32_t>{3});
  EXPECT_EQ(out[3].status, 503);
  EXPECT_TRUE(out[3].allow.empty());
  EXPECT_EQ(out[3].body.rfind("{\"error\":\"store_unavailable\",\"field\":null,", 0), 0u)
      << out[3].body;
  EXPECT_EQ(executor.stats().rejected_total, 1u);
  store_.release();
  EXPECT_EQ(sink_.wait_for(4), (std::vector<uint32_t>{3, 0, 1, 2}));
  EXPECT_EQ(out[0].status, 200);
  EXPECT_EQ(out[1].status, 200);
  EXPECT_EQ(out[2].status, 200);
  EXPECT_EQ(executor.stats().executed_total, 3u);
}

// A log query can take long (a scan of the segments, a flush waiting on a stalled disk). It
// runs on a thread of its own, so the changes queued behind it (a key revocation above all)
// do not wait for it.
TEST_F(AdminExecutorTest, ALogQueryRunsOnItsOwnThreadSoChangesQueuedBehindItGoOn) {
  AdminExecutor executor(store_, apis_, options());
  store_.hold(FakeStore::kLogs);
  AdminResponse log_out;
  AdminResponse create_out;
  executor.submit(request("GET", "/admin/logs"), &log_out, ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1, FakeStore::kLogs));
  executor.submit(request("POST", "/admin/keys", R"({"apis":["orders"]})"), &create_out,
                  ResumeTicket(&sink_, 1, 0));
  EXPECT_EQ(sink_.wait_for(1), std::vector<uint32_t>{1});  // while the query is still held
  EXPECT_EQ(create_out.status, 201) << create_out.body;
  store_.release(FakeStore::kLogs);
  EXPECT_EQ(sink_.wait_for(2), (std::vector<uint32_t>{1, 0}));
  EXPECT_EQ(log_out.status, 200) << log_out.body;
  EXPECT_EQ(executor.stats().executed_total, 2u);
}

TEST_F(AdminExecutorTest, AFullLogQueueAnswers503AtOnceAndTheOtherRoutesGoOn) {
  AdminExecutor::Options o = options();
  o.log_queue_max = 1;
  AdminExecutor executor(store_, apis_, std::move(o));
  store_.hold(FakeStore::kLogs);
  std::vector<AdminResponse> out(4);
  executor.submit(request("GET", "/admin/logs"), &out[0], ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1, FakeStore::kLogs));  // running, so no longer queued
  executor.submit(request("GET", "/admin/logs"), &out[1], ResumeTicket(&sink_, 1, 0));
  executor.submit(request("GET", "/admin/logs"), &out[2], ResumeTicket(&sink_, 2, 0));
  EXPECT_EQ(sink_.posted(), std::vector<uint32_t>{2});
  EXPECT_EQ(out[2].status, 503);
  executor.submit(request("GET", "/admin/apis"), &out[3], ResumeTicket(&sink_, 3, 0));
  EXPECT_EQ(sink_.wait_for(2), (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(out[3].status, 200);
  store_.release(FakeStore::kLogs);
  EXPECT_EQ(sink_.wait_for(4), (std::vector<uint32_t>{2, 3, 0, 1}));
  EXPECT_EQ(executor.stats().rejected_total, 1u);
}

// A backup can take minutes (a copy of the store to another filesystem, its fsyncs). It runs
// on a thread of its own, so neither a key change (a revocation above all) nor a log query
// queued behind it waits for it.
TEST_F(AdminExecutorTest, ABackupRunsOnItsOwnThreadSoChangesAndLogQueriesGoOn) {
  AdminExecutor executor(store_, apis_, options());
  store_.hold(FakeStore::kBackups);
  AdminResponse backup_out;
  AdminResponse create_out;
  AdminResponse log_out;
  executor.submit(request("POST", "/admin/backups"), &backup_out, ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1, FakeStore::kBackups));
  executor.submit(request("POST", "/admin/keys", R"({"apis":["orders"]})"), &create_out,
                  ResumeTicket(&sink_, 1, 0));
  EXPECT_EQ(sink_.wait_for(1), std::vector<uint32_t>{1});  // while the backup is still held
  EXPECT_EQ(create_out.status, 201) << create_out.body;
  executor.submit(request("GET", "/admin/logs"), &log_out, ResumeTicket(&sink_, 2, 0));
  EXPECT_EQ(sink_.wait_for(2), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(log_out.status, 200) << log_out.body;
  EXPECT_NE(store_.thread_of(FakeStore::kBackups), store_.thread_of(FakeStore::kLogs));
  store_.release(FakeStore::kBackups);
  EXPECT_EQ(sink_.wait_for(3), (std::vector<uint32_t>{1, 2, 0}));
  EXPECT_EQ(backup_out.status, 201) << backup_out.body;
  EXPECT_EQ(executor.stats().executed_total, 3u);
}

// Beyond backup_queue_max backups waiting, 503 at once while the other routes go on.
TEST_F(AdminExecutorTest, AFullBackupQueueAnswers503AtOnceAndTheOtherRoutesGoOn) {
  AdminExecutor::Options o = options();
  o.backup_queue_max = 1;
  AdminExecutor executor(store_, apis_, std::move(o));
  store_.hold(FakeStore::kBackups);
  std::vector<AdminResponse> out(4);
  executor.submit(request("POST", "/admin/backups"), &out[0], ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1, FakeStore::kBackups));  // running, so no longer queued
  executor.submit(request("POST", "/admin/backups"), &out[1], ResumeTicket(&sink_, 1, 0));
  executor.submit(request("POST", "/admin/backups"), &out[2], ResumeTicket(&sink_, 2, 0));
  EXPECT_EQ(sink_.posted(), std::vector<uint32_t>{2});
  EXPECT_EQ(out[2].status, 503);
  EXPECT_EQ(out[2].body.rfind("{\"error\":\"store_unavailable\",\"field\":null,", 0), 0u)
      << out[2].body;
  executor.submit(request("GET", "/admin/apis"), &out[3], ResumeTicket(&sink_, 3, 0));
  EXPECT_EQ(sink_.wait_for(2), (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(out[3].status, 200);
  store_.release(FakeStore::kBackups);
  EXPECT_EQ(sink_.wait_for(4), (std::vector<uint32_t>{2, 3, 0, 1}));
  EXPECT_EQ(out[0].status, 201) << out[0].body;
  EXPECT_EQ(out[1].status, 201) << out[1].body;
  EXPECT_EQ(executor.stats().rejected_total, 1u);
}

// A listing of the backups is a directory read: it runs on a lane of its own, so it answers
// while a backup (minutes) is in progress and while backups wait behind it, and listings never
// fill the backups' small queue. (A method the route refuses is answered there too: no backup.)
TEST_F(AdminExecutorTest, ABackupListingRunsOnItsOwnThreadSoItNeverWaitsForABackup) {
  AdminExecutor::Options o = options();
  o.backup_queue_max = 1;
  AdminExecutor executor(store_, apis_, std::move(o));
  store_.hold(FakeStore::kBackups);
  std::vector<AdminResponse> out(5);
  executor.submit(request("POST", "/admin/backups"), &out[0], ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1, FakeStore::kBackups));
  executor.submit(request("POST", "/admin/backups"), &out[1], ResumeTicket(&sink_, 1, 0));
  // The backup lane is busy and its queue full; listings go on all the same.
  executor.submit(request("GET", "/admin/backups"), &out[2], ResumeTicket(&sink_, 2, 0));
  executor.submit(request("GET", "/admin/backups"), &out[3], ResumeTicket(&sink_, 3, 0));
  executor.submit(request("DELETE", "/admin/backups"), &out[4], ResumeTicket(&sink_, 4, 0));
  EXPECT_EQ(sink_.wait_for(3), (std::vector<uint32_t>{2, 3, 4}));
  EXPECT_EQ(out[2].status, 200) << out[2].body;
  EXPECT_EQ(out[3].status, 200) << out[3].body;
  EXPECT_EQ(out[4].status, 405) << out[4].body;
  EXPECT_NE(store_.thread_of(FakeStore::kBackupList), store_.thread_of(FakeStore::kBackups));
  store_.release(FakeStore::kBackups);
  EXPECT_EQ(sink_.wait_for(5), (std::vector<uint32_t>{2, 3, 4, 0, 1}));
  EXPECT_EQ(executor.stats().rejected_total, 0u);
}

TEST_F(AdminExecutorTest, AFullBackupListingQueueAnswers503AtOnceAndBackupsGoOn) {
  AdminExecutor::Options o = options();
  o.backup_list_queue_max = 1;
  AdminExecutor executor(store_, apis_, std::move(o));
  store_.hold(FakeStore::kBackupList);
  std::vector<AdminResponse> out(4);
  executor.submit(request("GET", "/admin/backups"), &out[0], ResumeTicket(&sink_, 0, 0));
  ASSERT_TRUE(store_.wait_for_calls(1, FakeStore::kBackupList));  // running: not queued
  executor.submit(request("GET", "/admin/backups"), &out[1], ResumeTicket(&sink_, 1, 0));
  executor.submit(request("GET", "/admin/backups"), &out[2], ResumeTicket(&sink_, 2, 0));
  EXPECT_EQ(sink_.posted(), std::vector<uint32_t>{2});
  EXPECT_EQ(out[2].status, 503);
  executor.submit(request("POST", "/admin/backups"), &out[3], ResumeTicket(&sink_, 3, 0));
  EXPECT_EQ(sink_.wait_for(2), (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(out[3].status, 201) << out[3].body;
  store_.release(FakeStore::kBackupList);
  EXPECT_EQ(sink_.wait_for(4), (std::vector<uint32_t>{2, 3, 0, 1}));
  EXPECT_EQ(executor.stats().rejected_total, 1u);
}

}  // namespace
}  // namespace keygate::storage
