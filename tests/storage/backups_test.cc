#include "storage/backups.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "storage/data_dir.h"
#include "tests/storage/temp_dir.h"

namespace keygate::storage {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

KeyRecord make_record(const std::string& id) {
  KeyRecord record;
  record.id = id;
  record.digest = digest_key("kg_value_of_" + id + "_0123456789abcdef0123456789");
  record.hint = "kg_";
  record.apis = {"orders"};
  record.created_at = 1700000000;
  record.updated_at = 1700000000;
  return record;
}

// 2026-11-28T01:15:00Z
constexpr int64_t kNow = 1795828500;

class BackupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_dir_ = dir_.path() + "/data";
    backup_dir_ = dir_.path() + "/backups";
    ASSERT_TRUE(make_directories(data_dir_, &error_)) << error_;
    ASSERT_TRUE(store_.open(data_dir_ + "/db", &error_)) << error_;
  }

  bool open_backups(uint32_t retention_count = 7) {
    Backups::Options options;
    options.dir = backup_dir_;
    options.retention_count = retention_count;
    return backups_.open(options, data_dir_, &error_);
  }

  // The complete backups, asserting the listing worked and says no backup is in progress
  // (these tests make them one after the other).
  std::vector<BackupInfo> list_backups() {
    BackupListing listing;
    EXPECT_TRUE(backups_.list(&listing, &error_).is_ok()) << error_;
    EXPECT_FALSE(listing.in_progress_started.has_value());
    return listing.backups;
  }

  std::vector<std::string> entries(const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  TempDir dir_;
  std::string data_dir_;
  std::string backup_dir_;
  std::string error_;
  KeyStore store_;
  Backups backups_;
};

TEST(BackupNames, RoundTripTimeAndSeqAndRejectOtherNames) {
  const std::string name = Backups::make_name(kNow, 42);
  EXPECT_EQ(name, "keygate-20261128T011500Z-000042");
  int64_t created = 0;
  uint64_t seq = 0;
  ASSERT_TRUE(Backups::parse_name(name, &created, &seq));
  EXPECT_EQ(created, kNow);
  EXPECT_EQ(seq, 42u);
  ASSERT_TRUE(Backups::parse_name("keygate-20261128T011500Z-1234567", &created, &seq));
  EXPECT_EQ(seq, 1234567u);
  for (const char* other : {".tmp-keygate-20261128T011500Z-000042", "LOCK", "keygate-",
                            "keygate-20261128T011500Z-", "keygate-20261128X011500Z-000001",
                            "keygate-20261128T011500Z-00a001", "mine"}) {
    EXPECT_FALSE(Backups::parse_name(other, &created, &seq)) << other;
  }
}

TEST_F(BackupsTest, BackupIsADataDirWithTheStoreAsItWasAndNoLock) {
  ASSERT_TRUE(store_.put_key(make_record("k1")).is_ok());
  ASSERT_TRUE(store_.put_key(make_record("k2")).is_ok());
  User user;
  user.name = "alice";
  ASSERT_TRUE(store_.put_user(user).is_ok());
  ASSERT_TRUE(open_backups()) << error_;

  BackupInfo info;
  ASSERT_TRUE(backups_.create(store_, kNow, &info, &error_).is_ok()) << error_;
  EXPECT_EQ(info.name, "keygate-20261128T011500Z-000001");
  EXPECT_EQ(info.path, backup_dir_ + "/" + info.name);
  EXPECT_EQ(info.created, kNow);
  EXPECT_EQ(info.seq, 1u);
  EXPECT_EQ(info.keys.value_or(0), 2u);
  EXPECT_EQ(info.users.value_or(0), 1u);
  EXPECT_GT(info.bytes, 0u);
  // Written after the backup: not in it.
  ASSERT_TRUE(store_.put_key(make_record("k3")).is_ok());

  EXPECT_FALSE(fs::exists(info.path + "/LOCK"));
  EXPECT_FALSE(fs::exists(info.path + "/db/LOCK"));
  EXPECT_EQ(entries(backup_dir_), (std::vector<std::string>{"LOCK", info.name}));
  // keygate's own start-up path on it: lock the data dir, open <dir>/db.
  DataDir restored_dir;
  ASSERT_TRUE(restored_dir.open(info.path, &error_)) << error_;
  KeyStore restored;
  ASSERT_TRUE(restored.open(info.path + "/db", &error_)) << error_;
  KeyRecord got;
  EXPECT_TRUE(restored.get_key_by_id("k1", &got).is_ok());
  EXPECT_TRUE(restored.get_key_by_id("k2", &got).is_ok());
  EXPECT_TRUE(restored.get_key_by_id("k3", &got).is_not_found());
  User got_user;
  EXPECT_TRUE(restored.get_user("alice", &got_user).is_ok());

  const std::vector<BackupInfo> listed = list_backups();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].name, info.name);
  EXPECT_EQ(listed[0].created, kNow);
}

// A listing does not open each backup's store (slow): it reads what the backup recorded when
// it was made. A backup that does not say (one made before keygate recorded it, a damaged
// record) is listed all the same, its counts unknown.
TEST_F(BackupsTest, AListingHasTheKeysAndUsersRecordedInEachBackupOrNoneWhenItDoesNotSay) {
  ASSERT_TRUE(store_.put_key(make_record("k1")).is_ok());
  ASSERT_TRUE(store_.put_key(make_record("k2")).is_ok());
  User user;
  user.name = "alice";
  ASSERT_TRUE(store_.put_user(user).is_ok());
  ASSERT_TRUE(open_backups(0)) << error_;
  BackupInfo made;
  ASSERT_TRUE(backups_.create(store_, kNow, &made, &error_).is_ok()) << error_;
  std::vector<BackupInfo> listed = list_backups();
  ASSERT_EQ(listed.size(), 1u);
  ASSERT_TRUE(listed[0].keys.has_value());
  ASSERT_TRUE(listed[0].users.has_value());
  EXPECT_EQ(*listed[0].keys, 2u);
  EXPECT_EQ(*listed[0].users, 1u);
  EXPECT_EQ(listed[0].bytes, made.bytes);  // the record is part of the backup in both

  const std::string record = made.path + "/backup.json";
  for (const char* damaged : {"", "{\"keys\":2}\n", "{\"keys\":2,\"users\":1}",
                              "{\"keys\":-2,\"users\":1}\n", "{\"keys\":2,\"users\":1}\nmore"}) {
    std::ofstream(record, std::ios::trunc) << damaged;
    listed = list_backups();
    ASSERT_EQ(listed.size(), 1u) << damaged;
    EXPECT_FALSE(listed[0].keys.has_value()) << damaged;
    EXPECT_FALSE(listed[0].users.has_value()) << damaged;
  }
  ASSERT_TRUE(fs::remove(record));
  listed = list_backups();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_FALSE(listed[0].keys.has_value());
  EXPECT_EQ(listed[0].name, made.name);
}

// A listing beside a backup in progress neither waits for it nor shows its temporary; it says
// a backup is in progress and since when. Once the backup returned, the listing has it and
// says none is in progress.
TEST_F(BackupsTest, AListingBesideABackupInProgressSaysSoWithoutWaitingForIt) {
  Backups::Options options;
  options.dir = backup_dir_;
  options.delay_ms = 1500;  // held after the checkpoint, as a copy to another disk would be
  ASSERT_TRUE(backups_.open(options, data_dir_, &error_)) << error_;
  BackupInfo made;
  Status made_status = Status::io_error("not run");
  std::string create_error;
  std::thread backup([&] { made_status = backups_.create(store_, kNow, &made, &create_error); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool temporary = false;
  while (!temporary && std::chrono::steady_clock::now() < deadline) {
    for (const std::string& name : entries(backup_dir_)) temporary |= name.starts_with(".tmp-");
    if (!temporary) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Checked with EXPECT until the backup's thread is joined (an ASSERT would leave it running).
  EXPECT_TRUE(temporary);
  const auto before = std::chrono::steady_clock::now();
  BackupListing during;
  std::string list_error;
  EXPECT_TRUE(backups_.list(&during, &list_error).is_ok()) << list_error;
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::milliseconds(500));
  EXPECT_TRUE(during.backups.empty());
  EXPECT_EQ(during.in_progress_started.value_or(0), kNow);
  backup.join();
  ASSERT_TRUE(made_status.is_ok()) << create_error;
  const std::vector<BackupInfo> after = list_backups();
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].name, made.name);
}

// Listings beside backups whose retention prunes the one before: every listing works (a
// backup pruned while it is read is left out, not an error) and shows complete backups only.
// A guard of the race, not proof of its absence: each round gives it another chance.
TEST_F(BackupsTest, ListingsBesidePruningNeverFailNorShowATemporary) {
  ASSERT_TRUE(store_.put_key(make_record("k1")).is_ok());
  ASSERT_TRUE(open_backups(1)) << error_;
  std::atomic<bool> done{false};
  std::string create_error;
  std::thread maker([&] {
    for (int i = 0; i < 12; ++i) {
      BackupInfo info;
      if (!backups_.create(store_, kNow + i, &info, &create_error).is_ok()) break;
    }
    done.store(true);
  });
  size_t listings = 0;
  while (!done.load()) {
    BackupListing listing;
    std::string error;
    const bool listed = backups_.list(&listing, &error).is_ok();
    EXPECT_TRUE(listed) << error;  // not ASSERT: the maker thread must be joined first
    if (!listed) break;
    ++listings;
    // The new one beside the one it is about to prune, at most.
    EXPECT_LE(listing.backups.size(), 2u);
    for (const BackupInfo& b : listing.backups) {
      EXPECT_TRUE(b.name.starts_with("keygate-")) << b.name;
      EXPECT_TRUE(b.keys.has_value()) << b.name;  // never one whose record is not there yet
    }
  }
  maker.join();
  EXPECT_TRUE(create_error.empty()) << create_error;
  EXPECT_GT(listings, 0u);
  EXPECT_EQ(list_backups().size(), 1u);
}

TEST_F(BackupsTest, LeftoverTemporaryIsNotListedAndIsCleanedByTheNextBackup) {
  ASSERT_TRUE(open_backups()) << error_;
  // What a crash mid-backup leaves: a temporary with a partial checkpoint.
  const std::string stale = backup_dir_ + "/.tmp-keygate-20261128T011400Z-000007";
  ASSERT_TRUE(make_directories(stale + "/db", &error_)) << error_;
  std::ofstream(stale + "/db/000009.sst") << "partial";

  const std::vector<BackupInfo> listed = list_backups();
  EXPECT_TRUE(listed.empty());

  BackupInfo info;
  ASSERT_TRUE(backups_.create(store_, kNow, &info, &error_).is_ok()) << error_;
  EXPECT_FALSE(fs::exists(stale));
  // Its seq does not count: it never was a backup.
  EXPECT_EQ(info.seq, 1u);
  EXPECT_EQ(entries(backup_dir_), (std::vector<std::string>{"LOCK", info.name}));
}

TEST_F(BackupsTest, OpenCleansLeftoverTemporariesAndLeavesOtherFilesAlone) {
  ASSERT_TRUE(make_directories(backup_dir_ + "/.tmp-keygate-20261128T011400Z-000007/db",
                               &error_));
  ASSERT_TRUE(make_directories(backup_dir_ + "/operator-notes", &error_));
  std::ofstream(backup_dir_ + "/keygate-20261128T011400Z-000003") << "a file, not a backup";
  ASSERT_TRUE(open_backups()) << error_;
  EXPECT_EQ(entries(backup_dir_),
            (std::vector<std::string>{"LOCK", "keygate-20261128T011400Z-000003",
                                      "operator-notes"}));
  const std::vector<BackupInfo> listed = list_backups();
  EXPECT_TRUE(listed.empty());
}

TEST_F(BackupsTest, RetentionKeepsTheNewestAndSeqOrdersThemEvenWhenTheClockStepsBack) {
  ASSERT_TRUE(open_backups(2)) << error_;
  std::vector<std::string> names;
  // The third backup's clock is an hour behind the first's: seq still makes it the newest.
  for (const int64_t now : {kNow, kNow + 60, kNow - 3600}) {
    BackupInfo info;
    ASSERT_TRUE(backups_.create(store_, now, &info, &error_).is_ok()) << error_;
    names.push_back(info.name);
  }
  const std::vector<BackupInfo> listed = list_backups();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].name, names[2]);
  EXPECT_EQ(listed[0].seq, 3u);
  EXPECT_EQ(listed[1].name, names[1]);
  EXPECT_FALSE(fs::exists(backup_dir_ + "/" + names[0]));
  EXPECT_EQ(backups_.stats().created_total, 3u);
  EXPECT_EQ(backups_.stats().pruned_total, 1u);
  // Nothing but LOCK and the two kept (no temporary from the pruning).
  EXPECT_EQ(entries(backup_dir_).size(), 3u);
}

TEST_F(BackupsTest, RetentionZeroKeepsEveryBackup) {
  ASSERT_TRUE(open_backups(0)) << error_;
  for (int i = 0; i < 3; ++i) {
    BackupInfo info;
    ASSERT_TRUE(backups_.create(store_, kNow, &info, &error_).is_ok()) << error_;
  }
  const std::vector<BackupInfo> listed = list_backups();
  EXPECT_EQ(listed.size(), 3u);
}

// A reload's [backup] retention_count: the pruning after the next backup goes by it; the
// reload itself deletes nothing.
TEST_F(BackupsTest, ARetentionCountSetLaterAppliesAtTheNextPruning) {
  ASSERT_TRUE(open_backups(0)) << error_;
  for (int i = 0; i < 3; ++i) {
    BackupInfo info;
    ASSERT_TRUE(backups_.create(store_, kNow + i, &info, &error_).is_ok()) << error_;
  }
  backups_.set_retention_count(2);
  EXPECT_EQ(list_backups().size(), 3u);
  BackupInfo newest;
  ASSERT_TRUE(backups_.create(store_, kNow + 10, &newest, &error_).is_ok()) << error_;
  const std::vector<BackupInfo> listed = list_backups();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].name, newest.name);
  EXPECT_EQ(backups_.stats().pruned_total, 2u);
}

TEST_F(BackupsTest, DirectoryInsideOrHoldingTheDataDirIsRefused) {
  Backups::Options options;
  for (const std::string& dir : {data_dir_, data_dir_ + "/backups", data_dir_ + "/./a/b/",
                                  data_dir_ + "/db/../x", dir_.path(), dir_.path() + "/data/.."}) {
    Backups backups;
    options.dir = dir;
    EXPECT_FALSE(backups.open(options, data_dir_, &error_)) << dir;
    EXPECT_NE(error_.find("must be outside the data directory"), std::string::npos) << error_;
  }
  // Refused before anything was created.
  EXPECT_EQ(entries(data_dir_), std::vector<std::string>{"db"});
  // Beside the data dir, not yet existing, through a relative part: fine.
  Backups beside;
  options.dir = data_dir_ + "/../new/backups";
  EXPECT_TRUE(beside.open(options, data_dir_, &error_)) << error_;
}

TEST_F(BackupsTest, SecondInstanceOnTheSameDirectoryIsRefused) {
  ASSERT_TRUE(open_backups()) << error_;
  Backups other;
  Backups::Options options;
  options.dir = backup_dir_;
  EXPECT_FALSE(other.open(options, data_dir_, &error_));
  EXPECT_NE(error_.find("in use by another keygate process"), std::string::npos) << error_;
}

TEST_F(BackupsTest, FailedBackupLeavesNothingBehindAndIsCounted) {
  ASSERT_TRUE(open_backups()) << error_;
  // The directory is replaced by a file after start (a mount gone, an operator's mistake):
  // every step fails with ENOTDIR, also as root.
  ASSERT_EQ(::rename(backup_dir_.c_str(), (backup_dir_ + ".moved").c_str()), 0);
  std::ofstream(backup_dir_) << "not a directory";
  BackupInfo info;
  const Status s = backups_.create(store_, kNow, &info, &error_);
  EXPECT_TRUE(s.is_io_error());
  EXPECT_NE(error_.find("Not a directory"), std::string::npos) << error_;
  EXPECT_EQ(entries(backup_dir_ + ".moved"), std::vector<std::string>{"LOCK"});
  EXPECT_EQ(backups_.stats().failed_total, 1u);
  EXPECT_EQ(backups_.stats().created_total, 0u);
}

TEST_F(BackupsTest, ACheckpointThatFailsLeavesNoTemporaryBehind) {
  ASSERT_TRUE(open_backups()) << error_;
  // Fails after the temporary was made: a store that is not open cannot be checkpointed.
  KeyStore closed;
  BackupInfo info;
  EXPECT_TRUE(backups_.create(closed, kNow, &info, &error_).is_io_error());
  EXPECT_NE(error_.find("checkpoint into"), std::string::npos) << error_;
  EXPECT_EQ(entries(backup_dir_), std::vector<std::string>{"LOCK"});
  EXPECT_EQ(backups_.stats().failed_total, 1u);
}

TEST_F(BackupsTest, BackupHoldsEveryWriteThatReturnedBeforeItBeganUnderConcurrentWrites) {
  ASSERT_TRUE(open_backups(0)) << error_;
  std::atomic<uint64_t> written{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (uint64_t i = 0; !stop.load(); ++i) {
      if (!store_.put_key(make_record("w" + std::to_string(i))).is_ok()) break;
      written.store(i + 1);
    }
  });
  for (int round = 0; round < 10; ++round) {
    const uint64_t before = written.load();
    BackupInfo info;
    ASSERT_TRUE(backups_.create(store_, kNow, &info, &error_).is_ok()) << error_;
    ASSERT_TRUE(info.keys.has_value());
    EXPECT_GE(*info.keys, before) << "round " << round;
    // Every key the writer had finished is there by id, not only counted.
    KeyStore restored;
    ASSERT_TRUE(restored.open(info.path + "/db", &error_)) << error_;
    for (uint64_t i = 0; i < before; ++i) {
      KeyRecord got;
      ASSERT_TRUE(restored.get_key_by_id("w" + std::to_string(i), &got).is_ok())
          << "round " << round << " key w" << i;
    }
  }
  stop.store(true);
  writer.join();
}

}  // namespace
}  // namespace keygate::storage
