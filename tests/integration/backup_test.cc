// Integration tests of online backups (POST and GET /admin/backups, [backup] in the config):
// the real keygate binary on ephemeral loopback ports, its backups restored by starting another
// keygate on them (--data-dir) and checking which keys authenticate on its data port.
//
// Every server is stopped with SIGTERM and must exit 0, so a crash or a sanitizer report fails
// the test.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

namespace fs = std::filesystem;

::testing::AssertionResult status_is(const std::optional<Response>& r, int status) {
  if (r && r->status == status) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "want " << status << "; " << show(r);
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

class Backup : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& server : servers_) {
      if (!server->running()) continue;
      const ExitStatus status = server->stop(SIGTERM);
      EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server->error_output();
    }
  }

  // A keygate with the test's admin key; `backup` (TOML lines) goes into a [backup] table,
  // none when empty. `data_dir`: empty for a fresh one. `tweak`, when given, changes the
  // options last (an environment variable, a limit).
  TestServer* start(const std::string& backup, const std::string& data_dir = "",
                    const std::function<void(ServerOptions&)>& tweak = {}) {
    ServerOptions options = admin_server_options(admin_value_);
    if (!backup.empty()) options.extra_config += "\n[backup]\n" + backup;
    options.data_dir = data_dir;
    if (tweak) tweak(options);
    servers_.push_back(std::make_unique<TestServer>(options));
    std::string error;
    if (!servers_.back()->start(&error)) {
      ADD_FAILURE() << error << "\nstderr: " << servers_.back()->error_output();
      return nullptr;
    }
    return servers_.back().get();
  }

  std::string backup_config(uint32_t retention_count = 7) const {
    return "dir = \"" + backups_.path() + "/b\"\nretention_count = " +
           std::to_string(retention_count) + "\n";
  }
  std::string backup_dir() const { return backups_.path() + "/b"; }

  std::optional<Response> admin(TestServer* s, std::string_view method, std::string_view target,
                                std::string_view body = {}) {
    std::vector<std::string> headers = {"X-ApiKey: " + admin_value_};
    if (!body.empty()) headers.push_back("Content-Type: application/json");
    return round_trip(s->admin_port(), http_request(method, target, headers, body),
                      Millis(30000));
  }
  int data_status(TestServer* s, std::string_view key) {
    const std::optional<Response> r = round_trip(
        s->data_port(), http_request("GET", "/orders/1", {"X-ApiKey: " + std::string(key)}));
    return r ? r->status : 0;
  }
  // A new key for "orders": {id, value}.
  std::pair<std::string, std::string> create_key(TestServer* s) {
    const std::optional<Response> r = admin(s, "POST", "/admin/keys", R"({"apis":["orders"]})");
    EXPECT_TRUE(status_is(r, 201));
    if (!r) return {};
    return {string_member(r->body, "id"), string_member(r->body, "key")};
  }

  // Waits (up to 10 s) until a backup is being made: its temporary is in the backup directory.
  bool wait_for_backup_in_progress() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      for (const std::string& name : entries(backup_dir())) {
        if (name.starts_with(".tmp-keygate-")) return true;
      }
      std::this_thread::sleep_for(Millis(10));
    }
    return false;
  }
  // A POST /admin/backups sent on `client`, which is left waiting for the answer.
  ::testing::AssertionResult send_backup(TestServer* s, RawClient& client) {
    if (!client.connect(s->admin_port())) return ::testing::AssertionFailure() << "no connect";
    if (!client.send(http_request("POST", "/admin/backups", {"X-ApiKey: " + admin_value_}))) {
      return ::testing::AssertionFailure() << "send failed";
    }
    return ::testing::AssertionSuccess();
  }

  const std::string admin_value_ = "it-admin-" + random_hex(24);
  TempDir backups_;  // holds the backup directory, so restored servers can start on backups
  std::vector<std::unique_ptr<TestServer>> servers_;
};

TEST_F(Backup, ARestoredBackupHoldsTheKeysAsTheyWereWhenItWasMade) {
  TestServer* live = start(backup_config());
  ASSERT_NE(live, nullptr);
  const auto first = create_key(live);
  const auto deleted_later = create_key(live);
  ASSERT_TRUE(status_is(admin(live, "POST", "/admin/users", R"({"name":"alice"})"), 201));

  const std::optional<Response> made = admin(live, "POST", "/admin/backups");
  ASSERT_TRUE(status_is(made, 201));
  const std::string name = string_member(made->body, "name");
  EXPECT_TRUE(name.starts_with("keygate-")) << made->body;
  EXPECT_EQ(string_member(made->body, "path"), backup_dir() + "/" + name) << made->body;
  EXPECT_EQ(number_member(made->body, "seq"), 1) << made->body;
  EXPECT_EQ(number_member(made->body, "keys"), 3) << made->body;  // the admin key and two
  EXPECT_EQ(number_member(made->body, "users"), 1) << made->body;
  EXPECT_GT(number_member(made->body, "bytes"), 0) << made->body;
  EXPECT_FALSE(string_member(made->body, "created_at").empty()) << made->body;

  // After the backup: a new key, and one deleted.
  const auto created_later = create_key(live);
  ASSERT_TRUE(status_is(admin(live, "DELETE", "/admin/keys/" + deleted_later.first), 204));
  EXPECT_EQ(data_status(live, created_later.second), 200);
  EXPECT_EQ(data_status(live, deleted_later.second), 401);

  const std::optional<Response> listed = admin(live, "GET", "/admin/backups");
  ASSERT_TRUE(status_is(listed, 200));
  EXPECT_TRUE(listed->body.starts_with("{\"backups\":[{\"name\":\"" + name + "\"")) << listed->body;
  EXPECT_EQ(count_of(listed->body, "\"name\":"), 1u) << listed->body;
  EXPECT_EQ(number_member(listed->body, "bytes"), number_member(made->body, "bytes"));
  // Logged as every admin request is.
  const std::optional<Response> logged = admin(live, "GET", "/admin/logs?status=201");
  ASSERT_TRUE(status_is(logged, 200));
  EXPECT_NE(logged->body.find("\"path\":\"/admin/backups\""), std::string::npos) << logged->body;
  const std::optional<Response> stats = admin(live, "GET", "/admin/stats");
  ASSERT_TRUE(status_is(stats, 200));
  EXPECT_EQ(stats_counter(stats->body, "backups", "created_total"), 1) << stats->body;
  EXPECT_EQ(stats_counter(stats->body, "backups", "failed_total"), 0) << stats->body;
  ASSERT_EQ(live->stop(SIGTERM).code, 0);

  // A keygate on the backup as it is: the store as it was when the backup was made.
  TestServer* restored = start("", backup_dir() + "/" + name);
  ASSERT_NE(restored, nullptr);
  EXPECT_EQ(data_status(restored, first.second), 200);
  EXPECT_EQ(data_status(restored, deleted_later.second), 200);
  EXPECT_EQ(data_status(restored, created_later.second), 401);
  EXPECT_TRUE(status_is(admin(restored, "GET", "/admin/users/alice"), 200));
  // The restored keygate did not see a store without an admin key: it made none.
  EXPECT_EQ(restored->error_output().find("created admin key"), std::string::npos)
      << restored->error_output();
}

TEST_F(Backup, RetentionKeepsTheNewestBackups) {
  TestServer* live = start(backup_config(2));
  ASSERT_NE(live, nullptr);
  std::vector<std::string> names;
  for (int i = 0; i < 3; ++i) {
    const std::optional<Response> made = admin(live, "POST", "/admin/backups");
    ASSERT_TRUE(status_is(made, 201));
    names.push_back(string_member(made->body, "name"));
  }
  const std::optional<Response> listed = admin(live, "GET", "/admin/backups");
  ASSERT_TRUE(status_is(listed, 200));
  EXPECT_EQ(count_of(listed->body, "\"name\":"), 2u) << listed->body;
  const size_t newest = listed->body.find(names[2]);
  const size_t middle = listed->body.find(names[1]);
  EXPECT_NE(newest, std::string::npos) << listed->body;
  EXPECT_NE(middle, std::string::npos) << listed->body;
  EXPECT_LT(newest, middle) << "newest first: " << listed->body;
  EXPECT_EQ(listed->body.find(names[0]), std::string::npos) << listed->body;
  EXPECT_EQ(entries(backup_dir()), (std::vector<std::string>{"LOCK", names[1], names[2]}));
  const std::optional<Response> stats = admin(live, "GET", "/admin/stats");
  ASSERT_TRUE(status_is(stats, 200));
  EXPECT_EQ(stats_counter(stats->body, "backups", "pruned_total"), 1) << stats->body;
}

TEST_F(Backup, WithoutABackupDirBothRoutesSayHowToEnableThem) {
  TestServer* live = start("");
  ASSERT_NE(live, nullptr);
  for (const char* method : {"POST", "GET"}) {
    const std::optional<Response> r = admin(live, method, "/admin/backups");
    ASSERT_TRUE(status_is(r, 409)) << method;
    EXPECT_TRUE(r->body.starts_with("{\"error\":\"backups_disabled\"")) << r->body;
    EXPECT_NE(r->body.find("[backup] dir"), std::string::npos) << r->body;
  }
  const std::optional<Response> stats = admin(live, "GET", "/admin/stats");
  ASSERT_TRUE(status_is(stats, 200));
  EXPECT_NE(stats->body.find("\"backups\":null"), std::string::npos) << stats->body;
  EXPECT_TRUE(status_is(admin(live, "DELETE", "/admin/backups"), 405));
}

TEST_F(Backup, ABackupDirThatCannotBeWrittenFailsCleanlyAndKeygateServesOn) {
  TestServer* live = start(backup_config());
  ASSERT_NE(live, nullptr);
  const auto key = create_key(live);
  // The directory turns into a file under keygate (a mount gone, a mistake): ENOTDIR at every
  // step, which permissions cannot hide from root.
  const std::string moved = backups_.path() + "/moved";
  ASSERT_EQ(std::rename(backup_dir().c_str(), moved.c_str()), 0);
  std::ofstream(backup_dir()) << "not a directory";

  const std::optional<Response> failed = admin(live, "POST", "/admin/backups");
  ASSERT_TRUE(status_is(failed, 500));
  EXPECT_TRUE(failed->body.starts_with("{\"error\":\"backup_failed\"")) << failed->body;
  EXPECT_NE(failed->body.find("Not a directory"), std::string::npos) << failed->body;
  EXPECT_EQ(entries(moved), std::vector<std::string>{"LOCK"});
  EXPECT_TRUE(status_is(admin(live, "GET", "/admin/backups"), 500));
  // Serving as before, and the admin API works.
  EXPECT_EQ(data_status(live, key.second), 200);
  EXPECT_TRUE(status_is(admin(live, "GET", "/admin/keys"), 200));
  const std::optional<Response> stats = admin(live, "GET", "/admin/stats");
  ASSERT_TRUE(status_is(stats, 200));
  EXPECT_EQ(stats_counter(stats->body, "backups", "failed_total"), 1) << stats->body;

  // The directory back: the next backup works, no restart needed.
  ASSERT_EQ(std::remove(backup_dir().c_str()), 0);
  ASSERT_EQ(std::rename(moved.c_str(), backup_dir().c_str()), 0);
  EXPECT_TRUE(status_is(admin(live, "POST", "/admin/backups"), 201));
}

TEST_F(Backup, ABackupHoldsEveryKeyWhoseCreationReturnedBeforeTheBackupWasAskedFor) {
  TestServer* live = start(backup_config(0));
  ASSERT_NE(live, nullptr);
  std::mutex mutex;
  std::vector<std::string> values;  // created and returned, in order
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop.load()) {
      const auto key = create_key(live);
      if (key.second.empty()) return;
      std::lock_guard lock(mutex);
      values.push_back(key.second);
    }
  });
  std::string name;
  size_t returned_before = 0;
  for (int round = 0; round < 3; ++round) {
    std::this_thread::sleep_for(Millis(100));
    {
      std::lock_guard lock(mutex);
      returned_before = values.size();
    }
    const std::optional<Response> made = admin(live, "POST", "/admin/backups");
    ASSERT_TRUE(status_is(made, 201));
    EXPECT_GE(number_member(made->body, "keys"), static_cast<int64_t>(returned_before + 1))
        << made->body;
    name = string_member(made->body, "name");
  }
  stop.store(true);
  writer.join();
  std::vector<std::string> snapshot;
  {
    std::lock_guard lock(mutex);
    snapshot = values;
  }
  ASSERT_GT(returned_before, 0u);
  ASSERT_EQ(live->stop(SIGTERM).code, 0);

  TestServer* restored = start("", backup_dir() + "/" + name);
  ASSERT_NE(restored, nullptr);
  for (size_t i = 0; i < returned_before; ++i) {
    EXPECT_EQ(data_status(restored, snapshot[i]), 200) << "key " << i;
  }
}

// A backup can take minutes (a copy of the whole store to another filesystem). It runs on a
// lane of the admin executor of its own, so a key revocation sent meanwhile (an operator during
// an incident) returns at once and takes effect on the data port at once; the backup still
// completes. KEYGATE_TEST_BACKUP_DELAY_MS holds the backup for 3 s after its checkpoint.
TEST_F(Backup, AKeyRevocationDoesNotWaitForABackupInProgress) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer* live = start(backup_config(), "", [](ServerOptions& o) {
    o.env.emplace_back("KEYGATE_TEST_BACKUP_DELAY_MS", "3000");
  });
  ASSERT_NE(live, nullptr);
  const auto leaked = create_key(live);
  const auto disabled = create_key(live);
  ASSERT_EQ(data_status(live, leaked.second), 200);

  RawClient backup;
  ASSERT_TRUE(send_backup(live, backup));
  ASSERT_TRUE(wait_for_backup_in_progress());
  const auto before = std::chrono::steady_clock::now();
  EXPECT_TRUE(status_is(admin(live, "DELETE", "/admin/keys/" + leaked.first), 204));
  EXPECT_TRUE(status_is(admin(live, "PATCH", "/admin/keys/" + disabled.first,
                              R"({"enabled":false})"),
                        200));
  const auto took = std::chrono::steady_clock::now() - before;
  EXPECT_LT(took, Millis(1000)) << "the revocations waited for the backup: "
                                << std::chrono::duration_cast<Millis>(took).count() << " ms";
  EXPECT_EQ(data_status(live, leaked.second), 401);
  EXPECT_EQ(data_status(live, disabled.second), 401);
  // A log query does not wait for it either (a lane of its own as well).
  EXPECT_TRUE(status_is(admin(live, "GET", "/admin/logs?limit=1"), 200));
  EXPECT_LT(std::chrono::steady_clock::now() - before, Millis(1500));

  // The backup was still in progress all along, and completes.
  EXPECT_FALSE(backup.readable(Millis(0))) << backup.buffered();
  const std::optional<Response> made = backup.read_response(Millis(30000));
  ASSERT_TRUE(status_is(made, 201));
  const std::optional<Response> listed = admin(live, "GET", "/admin/backups");
  ASSERT_TRUE(status_is(listed, 200));
  EXPECT_EQ(count_of(listed->body, "\"name\":"), 1u) << listed->body;
}

// Listing the backups is a directory read: on a lane of its own it answers at once while a
// backup of minutes runs (never 503 either: the backup lane's queue of 4 would fill with a
// console's listings), and says a backup is in progress and since when. Once the backup
// returned, it is listed with its keys and users, and none is in progress.
// KEYGATE_TEST_BACKUP_DELAY_MS holds the backup for 3 s after its checkpoint.
TEST_F(Backup, AListingAnswersAtOnceDuringABackupAndSaysOneIsInProgress) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer* live = start(backup_config(), "", [](ServerOptions& o) {
    o.env.emplace_back("KEYGATE_TEST_BACKUP_DELAY_MS", "3000");
  });
  ASSERT_NE(live, nullptr);
  RawClient backup;
  ASSERT_TRUE(send_backup(live, backup));
  ASSERT_TRUE(wait_for_backup_in_progress());

  const auto before = std::chrono::steady_clock::now();
  // Six at once, as a few consoles polling might send them.
  std::vector<RawClient> listings(6);
  for (RawClient& c : listings) {
    ASSERT_TRUE(c.connect(live->admin_port()));
    ASSERT_TRUE(c.send(http_request("GET", "/admin/backups", {"X-ApiKey: " + admin_value_})));
  }
  std::string started_at;
  for (RawClient& c : listings) {
    const std::optional<Response> listed = c.read_response(Millis(10000));
    ASSERT_TRUE(status_is(listed, 200));
    EXPECT_TRUE(listed->body.starts_with("{\"backups\":[],\"in_progress\":{\"started_at\":\""))
        << listed->body;
    started_at = string_member(listed->body, "started_at");
  }
  const auto took = std::chrono::steady_clock::now() - before;
  EXPECT_LT(took, Millis(1000)) << "the listings waited for the backup: "
                                << std::chrono::duration_cast<Millis>(took).count() << " ms";

  // The backup was still in progress all along, and completes.
  EXPECT_FALSE(backup.readable(Millis(0))) << backup.buffered();
  const std::optional<Response> made = backup.read_response(Millis(30000));
  ASSERT_TRUE(status_is(made, 201));
  EXPECT_EQ(string_member(made->body, "created_at"), started_at) << made->body;
  const std::optional<Response> listed = admin(live, "GET", "/admin/backups");
  ASSERT_TRUE(status_is(listed, 200));
  EXPECT_TRUE(listed->body.starts_with("{\"backups\":[{\"name\":\"" +
                                       string_member(made->body, "name") + "\""))
      << listed->body;
  EXPECT_EQ(count_of(listed->body, "\"name\":"), 1u) << listed->body;
  EXPECT_EQ(number_member(listed->body, "keys"), 1) << listed->body;  // the admin key
  EXPECT_EQ(number_member(listed->body, "users"), 0) << listed->body;
  EXPECT_TRUE(listed->body.ends_with("],\"in_progress\":null}")) << listed->body;
}

// At exit (SIGTERM, drain_timeout_ms = 100) a backup in progress is finished (exit waits for
// it: a complete backup, no temporary left), and one queued behind it is not run. keygate exits
// 0 with nothing leaked (the sanitizer build exits non-zero on a leak).
TEST_F(Backup, AtExitTheBackupInProgressFinishesAndAQueuedOneIsNotRun) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  TestServer* live = start(backup_config(0), "", [](ServerOptions& o) {
    o.env.emplace_back("KEYGATE_TEST_BACKUP_DELAY_MS", "1500");
    o.limits = {{"drain_timeout_ms", 100}};
  });
  ASSERT_NE(live, nullptr);
  RawClient first;
  ASSERT_TRUE(send_backup(live, first));
  ASSERT_TRUE(wait_for_backup_in_progress());
  RawClient second;
  ASSERT_TRUE(send_backup(live, second));
  std::this_thread::sleep_for(Millis(100));  // queued behind the first
  const ExitStatus status = live->stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << live->error_output();
  const std::vector<std::string> left = entries(backup_dir());
  ASSERT_EQ(left.size(), 2u) << "want LOCK and one backup";
  EXPECT_EQ(left[0], "LOCK");
  EXPECT_TRUE(left[1].starts_with("keygate-")) << left[1];
}

TEST_F(Backup, StartRefusesABadBackupSettingWithOneLine) {
  TempDir dir;
  const std::string data = dir.path() + "/data";
  struct Case {
    std::string backup;
    int code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"retention_count = 10001\n", 2, "backup.retention_count: must be between 0 and 10000"},
      {"dir = \"\"\n", 2, "backup.dir must not be empty"},
      {"size = 3\n", 2, "size"},
      {"dir = \"" + data + "/backups\"\n", 1, "must be outside the data directory"},
  };
  for (const Case& c : cases) {
    const std::string config = dir.write_file("k.toml", "[backup]\n" + c.backup);
    const ProcessResult r = run_keygate({"--config", config, "--data-dir", data, "--listen",
                                         "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"});
    EXPECT_TRUE(r.status.exited && r.status.code == c.code) << c.backup << r.status.describe();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.backup << r.err;
    // One line for the setting (a start-up warning about the environment may precede it).
    EXPECT_EQ(count_of(r.err, "\n") - count_of(r.err, "keygate: warning:"), 1u) << r.err;
  }
}

}  // namespace
}  // namespace keygate::integration
