#include "storage/key_service.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/authenticator.h"
#include "core/permissions.h"
#include "tests/storage/temp_dir.h"

namespace keygate::storage {
namespace {

using Lookup = KeyDirectory::Lookup;
using FetchResult = KeyDirectory::FetchResult;
using testing::TempDir;
using namespace std::chrono_literals;

KeyRecord make_record(const std::string& id, const std::string& value) {
  KeyRecord record;
  record.id = id;
  record.digest = digest_key(value);
  record.hint = make_key_hint(value);
  record.description = "key " + id;
  record.apis = {"orders"};
  record.created_at = 1700000000;
  record.updated_at = 1700000000;
  return record;
}

std::string value_of(int i) { return "service-test-value-" + std::to_string(i); }
std::string id_of(int i) { return "k" + std::to_string(100000 + i); }

// A ResumeTicket sink that records posts. Optionally holds the posting thread on one slot
// until released, which keeps a fetch thread busy so the queue can be filled.
class RecordingSink : public ResumeTicket::Sink {
 public:
  void post(uint32_t slot, uint32_t gen) noexcept override {
    std::unique_lock lock(mutex_);
    posted_.push_back(slot);
    (void)gen;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !(hold_slot_ && *hold_slot_ == slot); });
  }
  void hold(uint32_t slot) {
    std::lock_guard lock(mutex_);
    hold_slot_ = slot;
  }
  void release() {
    std::lock_guard lock(mutex_);
    hold_slot_.reset();
    changed_.notify_all();
  }
  // Waits (up to 10 s) until `count` posts happened; returns the slots posted so far.
  std::vector<uint32_t> wait_for(size_t count) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, 10s, [&] { return posted_.size() >= count; });
    return posted_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<uint32_t> posted_;
  std::optional<uint32_t> hold_slot_;
};

class KeyServiceTest : public ::testing::Test {
 protected:
  void TearDown() override { service_.reset(); }

  void open(KeyService::Options options = {}) {
    service_.reset();
    service_ = std::make_unique<KeyService>();
    if (options.workers < 2) options.workers = 2;
    std::string error;
    ASSERT_TRUE(service_->open(dir_.path(), options, &error)) << error;
  }

  // One worker pass on reader 0 (the test thread): online, find, copy out, offline.
  Lookup lookup(const std::string& value, KeyRecord* copy = nullptr) {
    return lookup_digest(digest_key(value), copy);
  }
  Lookup lookup_digest(const KeyDigest& digest, KeyRecord* copy = nullptr) {
    LoopObserver* observer = service_->loop_observer(0);
    observer->after_wait();
    const KeyRecord* record = nullptr;
    const Lookup result = service_->find_key(digest, &record);
    if (result == Lookup::kFound && copy != nullptr) *copy = *record;
    observer->before_wait();
    return result;
  }

  void create_keys(int count) {
    for (int i = 0; i < count; ++i) {
      ASSERT_TRUE(service_->create_key(make_record(id_of(i), value_of(i))).is_ok());
    }
  }

  TempDir dir_;
  std::unique_ptr<KeyService> service_;
};

TEST_F(KeyServiceTest, ACreatedKeyIsFoundFromAnotherWorkerThread) {
  open();
  ASSERT_TRUE(service_->create_key(make_record("kone", "created-value-1")).is_ok());
  std::string found_id;
  Lookup result = Lookup::kNotCached;
  std::thread worker([&] {
    LoopObserver* observer = service_->loop_observer(1);
    observer->after_wait();
    const KeyRecord* record = nullptr;
    result = service_->find_key(digest_key("created-value-1"), &record);
    if (record != nullptr) found_id = record->id;
    observer->before_wait();
  });
  worker.join();
  EXPECT_EQ(result, Lookup::kFound);
  EXPECT_EQ(found_id, "kone");
}

TEST_F(KeyServiceTest, ACompleteCacheAnswersUnknownWithoutAFetch) {
  open();
  create_keys(3);
  EXPECT_TRUE(service_->stats().cache_complete);
  EXPECT_EQ(lookup("never-created"), Lookup::kUnknown);
  EXPECT_EQ(lookup(value_of(2)), Lookup::kFound);
}

TEST_F(KeyServiceTest, CreateRefusesADuplicateDigestOrIdAndAMissingUser) {
  open();
  ASSERT_TRUE(service_->create_key(make_record("kone", "created-value-1")).is_ok());
  EXPECT_TRUE(service_->create_key(make_record("ktwo", "created-value-1")).is_conflict());
  EXPECT_TRUE(service_->create_key(make_record("kone", "created-value-2")).is_conflict());
  KeyRecord with_user = make_record("kthree", "created-value-3");
  with_user.user = "nobody";
  EXPECT_TRUE(service_->create_key(with_user).is_not_found());
  EXPECT_EQ(lookup("created-value-3"), Lookup::kUnknown);
  ASSERT_TRUE(service_->put_user(User{"nobody", {}}).is_ok());
  EXPECT_TRUE(service_->create_key(with_user).is_ok());
}

TEST_F(KeyServiceTest, ADeletedKeyIsUnknownToEveryWorkerOnceDeleteReturns) {
  constexpr int kKeys = 200;
  open(KeyService::Options{.workers = 3});
  create_keys(kKeys);
  std::vector<KeyDigest> digests;
  for (int i = 0; i < kKeys; ++i) digests.push_back(digest_key(value_of(i)));

  // Keys [0, deleted) are deleted and their delete_key() has returned.
  std::atomic<int> deleted{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> stale_hits{0};
  std::atomic<uint64_t> passes{0};
  std::vector<std::thread> workers;
  for (size_t w = 1; w <= 2; ++w) {
    workers.emplace_back([&, w] {
      LoopObserver* observer = service_->loop_observer(w);
      while (!stop.load(std::memory_order_relaxed)) {
        observer->after_wait();
        const int gone = deleted.load(std::memory_order_acquire);
        for (int i = 0; i < kKeys; ++i) {
          const KeyRecord* record = nullptr;
          const Lookup result = service_->find_key(digests[i], &record);
          if (result == Lookup::kFound) {
            if (i < gone || record->id != id_of(i)) ++stale_hits;
          } else if (i >= gone && result != Lookup::kUnknown) {
            ++stale_hits;  // a complete cache never says kNotCached
          }
        }
        observer->before_wait();
        ++passes;
      }
    });
  }
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_TRUE(service_->delete_key(id_of(i)).is_ok());
    deleted.store(i + 1, std::memory_order_release);
  }
  stop = true;
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(stale_hits.load(), 0u);
  EXPECT_GT(passes.load(), 0u);
  EXPECT_TRUE(service_->delete_key(id_of(0)).is_not_found());
}

TEST_F(KeyServiceTest, RotationRevokesTheOldValueWhenUpdateReturns) {
  open();
  KeyRecord record = make_record("kone", "old-value-123");
  ASSERT_TRUE(service_->create_key(record).is_ok());
  record.digest = digest_key("new-value-456");
  record.hint = make_key_hint("new-value-456");
  ASSERT_TRUE(service_->update_key(record).is_ok());
  EXPECT_EQ(lookup("old-value-123"), Lookup::kUnknown);
  KeyRecord copy;
  ASSERT_EQ(lookup("new-value-456", &copy), Lookup::kFound);
  EXPECT_EQ(copy.id, "kone");
  EXPECT_TRUE(service_->update_key(make_record("kmissing", "whatever-1")).is_not_found());
}

TEST_F(KeyServiceTest, ARotationWithGraceKeepsTheOldValueFoundUntilTheKeyChanges) {
  open();
  KeyRecord record = make_record("kone", "old-value-123");
  ASSERT_TRUE(service_->create_key(record).is_ok());
  const KeyDigest old_digest = record.digest;
  record.digest = digest_key("new-value-456");
  ASSERT_TRUE(
      service_->update_key(record, KeyService::PreviousDigest{old_digest, 1700000300}).is_ok());
  KeyRecord copy;
  ASSERT_EQ(lookup("old-value-123", &copy), Lookup::kFound);
  EXPECT_EQ(copy.id, "kone");
  EXPECT_TRUE(digests_equal(copy.digest, record.digest));
  ASSERT_TRUE(copy.previous_digest.has_value());
  EXPECT_TRUE(digests_equal(*copy.previous_digest, old_digest));
  EXPECT_EQ(copy.previous_valid_until, 1700000300);
  ASSERT_EQ(lookup("new-value-456", &copy), Lookup::kFound);
  EXPECT_EQ(copy.previous_valid_until, 1700000300);

  // An update that does not rotate keeps the grace (the record's own fields are ignored).
  record.description = "patched";
  record.previous_digest.reset();
  ASSERT_TRUE(service_->update_key(record).is_ok());
  ASSERT_EQ(lookup("old-value-123", &copy), Lookup::kFound);
  EXPECT_EQ(copy.description, "patched");
  KeyRecord stored;
  ASSERT_TRUE(service_->store().get_key_by_id("kone", &stored).is_ok());
  EXPECT_TRUE(stored.previous_digest.has_value());

  // The grace survives a restart: both digests are cached again.
  open();
  EXPECT_EQ(lookup("old-value-123"), Lookup::kFound);
  EXPECT_EQ(lookup("new-value-456"), Lookup::kFound);

  // A rotation without grace revokes both earlier values at once.
  record.digest = digest_key("third-value-789");
  ASSERT_TRUE(service_->update_key(record).is_ok());
  EXPECT_EQ(lookup("old-value-123"), Lookup::kUnknown);
  EXPECT_EQ(lookup("new-value-456"), Lookup::kUnknown);
  EXPECT_EQ(lookup("third-value-789"), Lookup::kFound);
}

TEST_F(KeyServiceTest, DeletingAKeyInItsGraceRevokesBothValues) {
  open();
  KeyRecord record = make_record("kone", "old-value-123");
  ASSERT_TRUE(service_->create_key(record).is_ok());
  const KeyDigest old_digest = record.digest;
  record.digest = digest_key("new-value-456");
  ASSERT_TRUE(
      service_->update_key(record, KeyService::PreviousDigest{old_digest, 1700000300}).is_ok());
  ASSERT_TRUE(service_->delete_key("kone").is_ok());
  EXPECT_EQ(lookup("old-value-123"), Lookup::kUnknown);
  EXPECT_EQ(lookup("new-value-456"), Lookup::kUnknown);
  EXPECT_EQ(service_->stats().cached_keys, 0u);
}

TEST_F(KeyServiceTest, AnUpdateIsVisibleWhenItReturns) {
  open();
  KeyRecord record = make_record("kone", "some-value-1");
  ASSERT_TRUE(service_->create_key(record).is_ok());
  record.enabled = false;
  ASSERT_TRUE(service_->update_key(record).is_ok());
  KeyRecord copy;
  ASSERT_EQ(lookup("some-value-1", &copy), Lookup::kFound);
  EXPECT_FALSE(copy.enabled);
}

TEST_F(KeyServiceTest, UsersReachWorkersAndDeletingOneHidesIt) {
  open();
  ASSERT_TRUE(service_->put_user(User{"alice", {Grant{"orders", {"GET"}, "/"}}}).is_ok());
  LoopObserver* observer = service_->loop_observer(0);
  observer->after_wait();
  const User* alice = service_->find_user("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->grants.size(), 1u);
  observer->before_wait();
  ASSERT_TRUE(service_->delete_user("alice").is_ok());
  observer->after_wait();
  EXPECT_EQ(service_->find_user("alice"), nullptr);
  observer->before_wait();
  EXPECT_TRUE(service_->delete_user("alice").is_not_found());
}

TEST_F(KeyServiceTest, KeysAndUsersAreLoadedAgainOnReopen) {
  open();
  ASSERT_TRUE(service_->put_user(User{"alice", {}}).is_ok());
  create_keys(5);
  open();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(lookup(value_of(i)), Lookup::kFound);
  EXPECT_TRUE(service_->stats().cache_complete);
  service_->loop_observer(0)->after_wait();
  EXPECT_NE(service_->find_user("alice"), nullptr);
  service_->loop_observer(0)->before_wait();
}

TEST_F(KeyServiceTest, ImportCreatesEveryKeyOrNone) {
  open();
  ASSERT_TRUE(service_->create_key(make_record("kexisting", "existing-value")).is_ok());
  std::vector<KeyRecord> conflicting = {make_record("kimport1", "import-value-1"),
                                        make_record("kimport2", "existing-value")};
  size_t failed = 99;
  EXPECT_TRUE(service_->import_keys(conflicting, &failed).is_conflict());
  EXPECT_EQ(failed, 1u);
  EXPECT_EQ(lookup("import-value-1"), Lookup::kUnknown);

  std::vector<KeyRecord> repeating = {make_record("kimport1", "import-value-1"),
                                      make_record("kimport3", "import-value-1")};
  EXPECT_TRUE(service_->import_keys(repeating, &failed).is_conflict());
  EXPECT_EQ(lookup("import-value-1"), Lookup::kUnknown);

  KeyRecord orphan = make_record("kimport4", "import-value-4");
  orphan.user = "ghost";
  EXPECT_TRUE(service_->import_keys({make_record("kimport1", "import-value-1"), orphan}, &failed)
                  .is_not_found());
  EXPECT_EQ(failed, 1u);

  std::vector<KeyRecord> good;
  for (int i = 10; i < 60; ++i) good.push_back(make_record(id_of(i), value_of(i)));
  ASSERT_TRUE(service_->import_keys(good).is_ok());
  for (int i = 10; i < 60; ++i) EXPECT_EQ(lookup(value_of(i)), Lookup::kFound);
}

// A store with 10 keys, reopened with room for 2 in the cache.
class PartialKeyServiceTest : public KeyServiceTest {
 protected:
  void SetUp() override {
    open();
    ASSERT_TRUE(service_->put_user(User{"alice", {Grant{"orders", {}, ""}}}).is_ok());
    for (int i = 0; i < 10; ++i) {
      KeyRecord record = make_record(id_of(i), value_of(i));
      record.user = "alice";
      ASSERT_TRUE(service_->create_key(record).is_ok());
    }
  }

  void open_partial(size_t negative_entries = 65536) {
    open(KeyService::Options{.max_keys = 2, .negative_cache_entries = negative_entries});
  }

  // Runs one fetch to completion and returns its result.
  FetchResult fetch(const KeyDigest& digest, uint32_t slot = 1) {
    FetchResult result;
    service_->fetch(digest, &result, ResumeTicket(&sink_, slot, 0));
    ++posts_;
    EXPECT_GE(sink_.wait_for(posts_).size(), posts_);
    return result;
  }

  RecordingSink sink_;
  size_t posts_ = 0;
};

TEST_F(PartialKeyServiceTest, AFetchByThePreviousDigestFindsTheRotatedKey) {
  open(KeyService::Options{.max_keys = 1, .negative_cache_entries = 64});
  KeyRecord record = make_record("krotated", "rotated-old-value");
  ASSERT_TRUE(service_->create_key(record).is_ok());
  record.digest = digest_key("rotated-new-value");
  ASSERT_TRUE(service_
                  ->update_key(record, KeyService::PreviousDigest{digest_key("rotated-old-value"),
                                                                  1700000300})
                  .is_ok());
  // One entry fits (of the eleven keys' twelve): at least one digest is not cached, and a
  // fetch by either finds the record.
  int fetched = 0;
  for (const char* value : {"rotated-old-value", "rotated-new-value"}) {
    KeyRecord copy;
    const Lookup l = lookup(value, &copy);
    ASSERT_NE(l, Lookup::kUnknown) << value;
    if (l == Lookup::kFound) {
      EXPECT_EQ(copy.id, "krotated");
      continue;
    }
    const FetchResult result = fetch(digest_key(value));
    ++fetched;
    EXPECT_TRUE(result.found) << value;
    EXPECT_EQ(result.record.id, "krotated");
    EXPECT_TRUE(digests_equal(result.record.digest, digest_key("rotated-new-value")));
  }
  EXPECT_GE(fetched, 1);
}

TEST_F(PartialKeyServiceTest, MissesInAPartialCacheAreNotCachedUntilFetched) {
  open_partial();
  EXPECT_FALSE(service_->stats().cache_complete);
  EXPECT_EQ(service_->stats().cached_keys, 2u);
  int found = 0;
  int not_cached = 0;
  int missing = -1;
  for (int i = 0; i < 10; ++i) {
    const Lookup result = lookup(value_of(i));
    if (result == Lookup::kFound) ++found;
    if (result == Lookup::kNotCached) {
      ++not_cached;
      missing = i;
    }
  }
  EXPECT_EQ(found, 2);
  EXPECT_EQ(not_cached, 8);
  ASSERT_GE(missing, 0);

  const FetchResult result = fetch(digest_key(value_of(missing)));
  EXPECT_TRUE(result.found);
  EXPECT_FALSE(result.failed);
  EXPECT_EQ(result.record.id, id_of(missing));
  EXPECT_EQ(result.record.user, std::optional<std::string>("alice"));
  // The fetch filled the cache (evicting another key to stay within 2).
  EXPECT_EQ(lookup(value_of(missing)), Lookup::kFound);
  EXPECT_EQ(service_->stats().cached_keys, 2u);
}

TEST_F(PartialKeyServiceTest, AnUnknownDigestIsRememberedUntilAKeyIsCreated) {
  open_partial();
  EXPECT_EQ(lookup("unknown-value-a"), Lookup::kNotCached);
  const FetchResult a = fetch(digest_key("unknown-value-a"));
  EXPECT_FALSE(a.found);
  EXPECT_FALSE(a.failed);
  EXPECT_EQ(lookup("unknown-value-a"), Lookup::kUnknown);
  EXPECT_EQ(fetch(digest_key("unknown-value-b")).found, false);
  EXPECT_EQ(lookup("unknown-value-b"), Lookup::kUnknown);

  // Creating "a" must make it findable, and voids every negative entry at once.
  ASSERT_TRUE(service_->create_key(make_record("knew", "unknown-value-a")).is_ok());
  EXPECT_EQ(lookup("unknown-value-a"), Lookup::kFound);
  EXPECT_EQ(lookup("unknown-value-b"), Lookup::kNotCached);
}

TEST_F(PartialKeyServiceTest, TheNegativeCacheHoldsAtMostItsSize) {
  open_partial(4);
  constexpr int kDigests = 64;
  for (int i = 0; i < kDigests; ++i) {
    EXPECT_FALSE(fetch(digest_key("unknown-" + std::to_string(i))).found);
  }
  int remembered = 0;
  for (int i = 0; i < kDigests; ++i) {
    const Lookup result = lookup("unknown-" + std::to_string(i));
    EXPECT_NE(result, Lookup::kFound);
    if (result == Lookup::kUnknown) ++remembered;
  }
  EXPECT_GE(remembered, 1);
  EXPECT_LE(remembered, 4);
}

TEST_F(PartialKeyServiceTest, AFullFetchQueuePostsFailedAtOnce) {
  open(KeyService::Options{.max_keys = 2, .fetch_threads = 1, .fetch_queue_max = 2});
  // Slot 1's post blocks the only fetch thread, so slots 2 and 3 stay queued.
  sink_.hold(1);
  FetchResult results[5];
  service_->fetch(digest_key(value_of(0)), &results[1], ResumeTicket(&sink_, 1, 0));
  ASSERT_EQ(sink_.wait_for(1).front(), 1u);
  service_->fetch(digest_key(value_of(1)), &results[2], ResumeTicket(&sink_, 2, 0));
  service_->fetch(digest_key(value_of(2)), &results[3], ResumeTicket(&sink_, 3, 0));
  service_->fetch(digest_key(value_of(3)), &results[4], ResumeTicket(&sink_, 4, 0));
  // Slot 4 found the queue full: posted at once, on this thread, as failed.
  std::vector<uint32_t> posted = sink_.wait_for(2);
  ASSERT_EQ(posted.size(), 2u);
  EXPECT_EQ(posted[1], 4u);
  EXPECT_TRUE(results[4].failed);
  EXPECT_EQ(service_->stats().fetch_rejected_total, 1u);

  sink_.release();
  posted = sink_.wait_for(4);
  ASSERT_EQ(posted.size(), 4u);
  for (int slot = 1; slot <= 3; ++slot) {
    EXPECT_FALSE(results[slot].failed) << slot;
    EXPECT_TRUE(results[slot].found) << slot;
  }
}

TEST_F(PartialKeyServiceTest, FetchesStillQueuedAtShutdownArePosted) {
  open(KeyService::Options{.max_keys = 2, .fetch_threads = 1, .fetch_queue_max = 8});
  sink_.hold(1);
  FetchResult results[4];
  for (uint32_t slot = 1; slot <= 3; ++slot) {
    service_->fetch(digest_key(value_of(static_cast<int>(slot))), &results[slot],
                    ResumeTicket(&sink_, slot, 0));
  }
  sink_.wait_for(1);
  std::thread closer([&] { service_.reset(); });
  sink_.release();
  closer.join();
  EXPECT_EQ(sink_.wait_for(3).size(), 3u);
}

// stop_fetches() (main, once the workers stopped): the fetch being read finishes, the queued ones
// are answered `failed` without reading the store (nobody waits for them, and a long queue on a
// slow disk would hold exit), and fetches after it fail at once.
TEST_F(PartialKeyServiceTest, StopFetchesAnswersTheQueuedOnesUnreadAndLaterOnesAtOnce) {
  open(KeyService::Options{.max_keys = 2, .fetch_threads = 1, .fetch_queue_max = 1024});
  sink_.hold(1);  // slot 1's post blocks the only fetch thread: the others stay queued
  std::vector<FetchResult> results(1024);
  service_->fetch(digest_key(value_of(1)), &results[1], ResumeTicket(&sink_, 1, 0));
  ASSERT_EQ(sink_.wait_for(1).size(), 1u);
  service_->fetch(digest_key(value_of(2)), &results[2], ResumeTicket(&sink_, 2, 0));
  std::thread stopper([&] { service_->stop_fetches(); });
  // Queued until the pool is stopping, which the first fetch refused at once shows.
  uint32_t slot = 3;
  while (service_->stats().fetch_rejected_total == 0 && slot < results.size()) {
    service_->fetch(digest_key(value_of(static_cast<int>(slot % 3))), &results[slot],
                    ResumeTicket(&sink_, slot, 0));
    ++slot;
    if (service_->stats().fetch_rejected_total == 0) std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(service_->stats().fetch_rejected_total, 1u);
  const uint32_t refused = slot - 1;
  EXPECT_TRUE(results[refused].failed);
  sink_.release();
  stopper.join();
  EXPECT_EQ(sink_.wait_for(refused).size(), refused);
  EXPECT_TRUE(results[1].found);
  for (uint32_t i = 2; i < refused; ++i) EXPECT_TRUE(results[i].failed) << i;
  EXPECT_EQ(service_->stats().fetches_total, 1u);
  FetchResult late;
  service_->fetch(digest_key(value_of(1)), &late, ResumeTicket(&sink_, 1023, 0));
  EXPECT_TRUE(late.failed);
}

// A request whose key the cache does not hold, played on the real service: the test thread is
// worker 0 (reader 0) and resumes with the Authenticator the handlers use. The fetch thread has
// read the record and posted; a change then completes before the worker resumes. Whatever the
// change, the resume must decide as the changed state says (the change's call has returned).
class ChangeDuringFetchTest : public PartialKeyServiceTest {
 protected:
  static constexpr int64_t kNow = 1700000100;

  // The worker's side of the request: tickets go to the fixture's sink, which records the post
  // and resumes nothing by itself.
  class TicketContext final : public RequestContext {
   public:
    explicit TicketContext(ResumeTicket::Sink* sink) : sink_(sink) {}
    ResumeTicket defer() noexcept override { return ResumeTicket(sink_, 9, 0); }
    int64_t now_unix() const noexcept override { return kNow; }

   private:
    ResumeTicket::Sink* sink_;
  };

  void SetUp() override {
    PartialKeyServiceTest::SetUp();
    open_partial();
    authenticator_ = std::make_unique<Authenticator>(*service_, 0);
  }
  void TearDown() override {
    authenticator_.reset();
    PartialKeyServiceTest::TearDown();
  }

  // A key of the store (bound to user alice) that the cache does not hold.
  int uncached_key() {
    for (int i = 0; i < 10; ++i) {
      if (lookup(value_of(i)) == Lookup::kNotCached) return i;
    }
    ADD_FAILURE() << "every key is cached";
    return 0;
  }

  // Starts the request's fetch (as a handler does) and waits until the fetch thread posted.
  void fetch_and_wait(const KeyDigest& digest) {
    authenticator_->fetch(digest, &lookup_, ctx_);
    ++posts_;
    ASSERT_GE(sink_.wait_for(posts_).size(), posts_);
  }

  // Resumes as the handlers do (fetching again when told to), then authorizes GET /orders/1:
  // the answer's code, "allowed", or the rejection's code.
  std::string resume() {
    LoopObserver* observer = service_->loop_observer(0);
    for (;;) {
      observer->after_wait();
      const Authenticator::Result r = authenticator_->finish_fetch(lookup_, kNow);
      if (r.outcome == Authenticator::Outcome::kFetch) {
        authenticator_->fetch(lookup_.digest, &lookup_, ctx_);
        observer->before_wait();
        ++posts_;
        if (sink_.wait_for(posts_).size() < posts_) return "the fetch was never posted";
        ++refetches_;
        continue;
      }
      std::string answer;
      if (r.outcome == Authenticator::Outcome::kRejected) {
        answer = std::string(r.rejection.code);
      } else {
        switch (authorize(*r.key, r.user, orders_, "GET", "/orders/1", kNow)) {
          case Decision::kAllowed:
            answer = "allowed";
            break;
          case Decision::kInvalidKey:
            answer = "invalid_api_key";
            break;
          case Decision::kApiNotPermitted:
            answer = "api_not_permitted";
            break;
          case Decision::kUserNotPermitted:
            answer = "user_not_permitted";
            break;
          case Decision::kUrlOverride:  // authorize_request() only
            answer = "url_override_not_permitted";
            break;
        }
      }
      observer->before_wait();
      return answer;
    }
  }

  ApiConfig orders_{"orders", {"/orders"}};
  TicketContext ctx_{&sink_};
  std::unique_ptr<Authenticator> authenticator_;
  Authenticator::PendingLookup lookup_;
  int refetches_ = 0;
};

TEST_F(ChangeDuringFetchTest, WithNoChangeTheFetchedRecordDecides) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  EXPECT_EQ(resume(), "allowed");
  EXPECT_EQ(refetches_, 0);
}

TEST_F(ChangeDuringFetchTest, AKeyDeletedBeforeTheResumeIsRefused) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  ASSERT_TRUE(lookup_.fetch.found);
  ASSERT_TRUE(service_->delete_key(id_of(i)).is_ok());
  EXPECT_EQ(resume(), "invalid_api_key");
}

TEST_F(ChangeDuringFetchTest, AKeyDisabledBeforeTheResumeIsRefused) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  KeyRecord disabled = lookup_.fetch.record;
  disabled.enabled = false;
  ASSERT_TRUE(service_->update_key(disabled).is_ok());
  EXPECT_EQ(resume(), "invalid_api_key");
}

TEST_F(ChangeDuringFetchTest, TheOldValueOfAKeyRotatedWithoutGraceBeforeTheResumeIsRefused) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  KeyRecord rotated = lookup_.fetch.record;
  rotated.digest = digest_key("rotated-during-the-fetch");
  ASSERT_TRUE(service_->update_key(rotated).is_ok());
  EXPECT_EQ(resume(), "invalid_api_key");
}

TEST_F(ChangeDuringFetchTest, AKeyWhoseUserIsDeletedBeforeTheResumeIsForbidden) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  ASSERT_EQ(lookup_.fetch.record.user, std::optional<std::string>("alice"));
  ASSERT_TRUE(service_->delete_user("alice").is_ok());
  EXPECT_EQ(resume(), "user_not_permitted");
}

TEST_F(ChangeDuringFetchTest, AGrantRemovedBeforeTheResumeNoLongerAllows) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  ASSERT_TRUE(service_->put_user(User{"alice", {Grant{"billing", {}, ""}}}).is_ok());
  EXPECT_EQ(resume(), "user_not_permitted");
}

TEST_F(ChangeDuringFetchTest, AnotherKeysChangeCostsALookupButTheKeyStillWorks) {
  const int i = uncached_key();
  fetch_and_wait(digest_key(value_of(i)));
  ASSERT_TRUE(service_->create_key(make_record("kother", "created-during-the-fetch")).is_ok());
  EXPECT_EQ(resume(), "allowed");
  EXPECT_LE(refetches_, 1);
}

TEST_F(KeyServiceTest, BootstrapGeneratesOneAdminKeyOnlyOnAnEmptyStore) {
  open();
  KeyService::AdminBootstrap first;
  ASSERT_TRUE(service_->ensure_admin_key("", system_random, 1700000000, &first).is_ok());
  ASSERT_TRUE(first.created);
  EXPECT_FALSE(first.recovered);  // an empty store: a first start, not a recovery
  EXPECT_TRUE(generated_checksum_ok(first.generated_value)) << first.generated_value;
  KeyRecord copy;
  ASSERT_EQ(lookup(first.generated_value, &copy), Lookup::kFound);
  EXPECT_EQ(copy.id, first.id);
  EXPECT_EQ(copy.apis, std::vector<std::string>{"admin"});
  EXPECT_EQ(copy.created_at, 1700000000);

  KeyService::AdminBootstrap second;
  ASSERT_TRUE(service_->ensure_admin_key("", system_random, 1700000001, &second).is_ok());
  EXPECT_FALSE(second.created);
  EXPECT_TRUE(second.generated_value.empty());
  open();
  ASSERT_TRUE(service_->ensure_admin_key("", system_random, 1700000002, &second).is_ok());
  EXPECT_FALSE(second.created);
  size_t keys = 0;
  ASSERT_TRUE(service_->store().for_each_key([&](KeyRecord&) { return ++keys, true; }).is_ok());
  EXPECT_EQ(keys, 1u);
}

// A store whose admin keys were all deleted, disabled, expired or stripped of "admin" could not
// be administered any more: the next start creates an admin key as on first start. A usable
// admin key, even among others that are not, stops it.
TEST_F(KeyServiceTest, BootstrapRecoversAStoreWithNoUsableAdminKey) {
  open();
  constexpr int64_t kNow = 1700000000;
  KeyRecord data_key = make_record("kdata", "recovery-data-key");
  ASSERT_TRUE(service_->create_key(data_key).is_ok());
  KeyRecord disabled = make_record("kdisabled", "recovery-disabled-admin");
  disabled.apis = {"admin"};
  disabled.enabled = false;
  ASSERT_TRUE(service_->create_key(disabled).is_ok());
  KeyRecord expired = make_record("kexpired", "recovery-expired-admin");
  expired.apis = {"admin", "orders"};
  expired.expires_at = kNow;  // expired from expires_at on
  ASSERT_TRUE(service_->create_key(expired).is_ok());

  // A recovery generates the value: the operator's (here the disabled admin key's own value,
  // as when KEYGATE_BOOTSTRAP_ADMIN_KEY stays set) is for the first start only.
  KeyService::AdminBootstrap out;
  ASSERT_TRUE(
      service_->ensure_admin_key("recovery-disabled-admin", system_random, kNow, &out).is_ok());
  EXPECT_TRUE(out.created);
  EXPECT_TRUE(out.recovered);
  EXPECT_TRUE(generated_checksum_ok(out.generated_value)) << out.generated_value;
  KeyRecord created;
  ASSERT_EQ(lookup(out.generated_value, &created), Lookup::kFound);
  EXPECT_EQ(created.id, out.id);
  EXPECT_EQ(created.apis, std::vector<std::string>{"admin"});
  KeyRecord still_disabled;
  ASSERT_EQ(lookup("recovery-disabled-admin", &still_disabled), Lookup::kFound);
  EXPECT_FALSE(still_disabled.enabled);

  // Now one usable admin key exists: nothing more, also after a restart.
  open();
  KeyService::AdminBootstrap again;
  ASSERT_TRUE(service_->ensure_admin_key("", system_random, kNow + 1, &again).is_ok());
  EXPECT_FALSE(again.created);
  // An unexpired admin key that is not the first in the store's order also counts.
  ASSERT_TRUE(service_->delete_key(created.id).is_ok());
  KeyRecord later = make_record("klater", "recovery-later-admin");
  later.apis = {"orders", "admin"};
  later.expires_at = kNow + 3600;
  ASSERT_TRUE(service_->create_key(later).is_ok());
  ASSERT_TRUE(service_->ensure_admin_key("", system_random, kNow + 1, &again).is_ok());
  EXPECT_FALSE(again.created);
  // Once it expires, the next start recovers again.
  ASSERT_TRUE(service_->ensure_admin_key("", system_random, kNow + 3600, &again).is_ok());
  EXPECT_TRUE(again.created);
  EXPECT_TRUE(again.recovered);
  EXPECT_TRUE(generated_checksum_ok(again.generated_value));
}

TEST_F(KeyServiceTest, BootstrapUsesTheOperatorsValueWhenGiven) {
  open();
  KeyService::AdminBootstrap bad;
  EXPECT_EQ(service_->ensure_admin_key("has space", nullptr, 0, &bad).code(),
            Status::Code::kInvalidArgument);
  EXPECT_FALSE(bad.created);
  KeyService::AdminBootstrap out;
  ASSERT_TRUE(service_->ensure_admin_key("operator-chosen-admin-key", nullptr, 5, &out).is_ok());
  EXPECT_TRUE(out.created);
  EXPECT_TRUE(out.generated_value.empty());
  EXPECT_EQ(lookup("operator-chosen-admin-key"), Lookup::kFound);
}

TEST_F(KeyServiceTest, BootstrapFailsCleanlyWithoutRandomness) {
  open();
  KeyService::AdminBootstrap out;
  const auto no_random = [](std::span<uint8_t>) { return false; };
  EXPECT_TRUE(service_->ensure_admin_key("", no_random, 0, &out).is_io_error());
  EXPECT_FALSE(out.created);
  bool any = true;
  ASSERT_TRUE(service_->store().has_keys(&any).is_ok());
  EXPECT_FALSE(any);
}

TEST_F(KeyServiceTest, NoFileOfTheStoreContainsAKeyPlaintext) {
  open();
  std::vector<std::string> plaintexts;
  for (int i = 0; i < 20; ++i) {
    plaintexts.push_back("plaintext-that-must-never-hit-disk-" + std::to_string(i));
    ASSERT_TRUE(service_->create_key(make_record(id_of(i), plaintexts.back())).is_ok());
  }
  std::vector<KeyRecord> imported;
  for (int i = 20; i < 40; ++i) {
    plaintexts.push_back("plaintext-that-must-never-hit-disk-" + std::to_string(i));
    imported.push_back(make_record(id_of(i), plaintexts.back()));
  }
  ASSERT_TRUE(service_->import_keys(imported).is_ok());
  service_.reset();

  auto scan = [&](const char* when) {
    bool saw_an_id = false;
    for (const std::string& file : testing::list_files(dir_.path())) {
      const std::string content = testing::read_file(file);
      for (const std::string& plaintext : plaintexts) {
        EXPECT_EQ(content.find(plaintext), std::string::npos)
            << when << ": " << file << " contains " << plaintext;
      }
      if (content.find(id_of(7)) != std::string::npos) saw_an_id = true;
    }
    return saw_an_id;
  };
  // The write-ahead log holds the records: the scan does read real data.
  EXPECT_TRUE(scan("after close"));
  {
    KeyStore store;
    std::string error;
    ASSERT_TRUE(store.open(dir_.path() + "/db", &error)) << error;
    ASSERT_TRUE(store.flush().is_ok());
  }
  bool has_sst = false;
  for (const std::string& file : testing::list_files(dir_.path())) {
    if (file.ends_with(".sst")) has_sst = true;
  }
  EXPECT_TRUE(has_sst);
  scan("after flush to SST files");
}

}  // namespace
}  // namespace keygate::storage
