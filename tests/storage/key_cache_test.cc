#include "storage/key_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace keygate::storage {
namespace {

KeyRecord make_record(int i, const std::string& description = "") {
  KeyRecord record;
  record.id = "k" + std::to_string(i);
  record.digest = digest_key("cache-test-value-" + std::to_string(i));
  record.hint = "cache-...";
  record.description = description.empty() ? record.id : description;
  record.apis = {"orders"};
  return record;
}

// The test thread reads as reader 0: online around each lookup, offline before any write
// (a write waits for a grace period, and would wait for the test thread itself).
class KeyCacheTest : public ::testing::Test {
 protected:
  explicit KeyCacheTest(KeyCache::Options options = {}) : cache_(&qsbr_, options) {}

  // The id of the record found for `digest`, or "" on a miss.
  std::string lookup(const KeyDigest& digest) {
    qsbr_.online(0);
    const KeyRecord* record = cache_.find(digest);
    std::string id = record != nullptr ? record->id : "";
    qsbr_.offline(0);
    return id;
  }
  std::string lookup(int i) { return lookup(make_record(i).digest); }

  Qsbr qsbr_{2};
  KeyCache cache_;
};

TEST_F(KeyCacheTest, FindsWhatWasPutAndNothingElse) {
  cache_.put(make_record(1));
  cache_.put(make_record(2));
  EXPECT_EQ(lookup(1), "k1");
  EXPECT_EQ(lookup(2), "k2");
  EXPECT_EQ(lookup(3), "");
  EXPECT_EQ(cache_.size(), 2u);
}

TEST_F(KeyCacheTest, APutReplacesTheRecordWithTheSameDigest) {
  cache_.put(make_record(1, "before"));
  cache_.put(make_record(1, "after"));
  qsbr_.online(0);
  const KeyRecord* record = cache_.find(make_record(1).digest);
  ASSERT_NE(record, nullptr);
  EXPECT_EQ(record->description, "after");
  qsbr_.offline(0);
  EXPECT_EQ(cache_.size(), 1u);
}

TEST_F(KeyCacheTest, EachWriteBumpsTheGeneration) {
  const uint64_t start = cache_.generation();
  EXPECT_GE(start, 1u);
  cache_.put(make_record(1));
  EXPECT_EQ(cache_.generation(), start + 1);
  cache_.erase(make_record(1).digest);
  EXPECT_EQ(cache_.generation(), start + 2);
}

TEST_F(KeyCacheTest, ApplyErasesThenPutsAcrossShards) {
  std::vector<KeyRecord> puts;
  for (int i = 0; i < 1000; ++i) puts.push_back(make_record(i));
  cache_.apply({}, std::move(puts));
  EXPECT_EQ(cache_.size(), 1000u);
  std::vector<KeyDigest> erased;
  for (int i = 0; i < 1000; i += 2) erased.push_back(make_record(i).digest);
  cache_.apply(erased, {make_record(5000)});
  EXPECT_EQ(cache_.size(), 501u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(lookup(i), i % 2 ? "k" + std::to_string(i) : "");
  EXPECT_EQ(lookup(5000), "k5000");
}

TEST_F(KeyCacheTest, ARecordWithAPreviousDigestIsFoundByBoth) {
  KeyRecord record = make_record(1);
  record.previous_digest = make_record(2).digest;
  record.previous_valid_until = 1700000300;
  cache_.put(record);
  EXPECT_EQ(cache_.size(), 2u);
  EXPECT_EQ(lookup(1), "k1");
  EXPECT_EQ(lookup(2), "k1");
  // Each entry owns its copy: erasing one leaves the other intact.
  cache_.erase(make_record(2).digest);
  EXPECT_EQ(lookup(2), "");
  qsbr_.online(0);
  const KeyRecord* found = cache_.find(make_record(1).digest);
  ASSERT_NE(found, nullptr);
  ASSERT_TRUE(found->previous_digest.has_value());
  EXPECT_EQ(found->previous_valid_until, 1700000300);
  qsbr_.offline(0);
  EXPECT_EQ(cache_.size(), 1u);
}

TEST_F(KeyCacheTest, UsersArePublishedReplacedAndErased) {
  cache_.set_users({User{"carol", {}}, User{"alice", {}}, User{"bob", {}}});
  cache_.put_user(User{"alice", {Grant{"orders", {}, ""}}});
  cache_.put_user(User{"dave", {}});
  cache_.erase_user("bob");
  qsbr_.online(0);
  const User* alice = cache_.find_user("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->grants.size(), 1u);
  EXPECT_NE(cache_.find_user("carol"), nullptr);
  EXPECT_NE(cache_.find_user("dave"), nullptr);
  EXPECT_EQ(cache_.find_user("bob"), nullptr);
  EXPECT_EQ(cache_.find_user("Alice"), nullptr);
  qsbr_.offline(0);
}

TEST_F(KeyCacheTest, AFillIsRefusedWhenAKeyWasWrittenSinceTheStoreRead) {
  const uint64_t seen = cache_.generation();
  cache_.put(make_record(2));  // an authoritative write after the (pretend) store read
  EXPECT_FALSE(cache_.fill(make_record(1), seen));
  EXPECT_EQ(lookup(1), "");
  EXPECT_TRUE(cache_.fill(make_record(1), cache_.generation()));
  qsbr_.reclaim();
  EXPECT_EQ(lookup(1), "k1");
}

TEST_F(KeyCacheTest, AFillKeepsAnExistingEntryAndDoesNotBumpTheGeneration) {
  cache_.put(make_record(1, "authoritative"));
  const uint64_t generation = cache_.generation();
  EXPECT_TRUE(cache_.fill(make_record(1, "fetched"), generation));
  EXPECT_EQ(cache_.generation(), generation);
  qsbr_.online(0);
  EXPECT_EQ(cache_.find(make_record(1).digest)->description, "authoritative");
  qsbr_.offline(0);
}

TEST(KeyCache, OneShardSurvivesHeavyEraseAndReinsert) {
  // A single shard makes long probe runs, which exercises the backward-shift erase.
  Qsbr qsbr(1);
  KeyCache cache(&qsbr, KeyCache::Options{.shards = 1, .max_keys = 0});
  std::vector<KeyRecord> puts;
  for (int i = 0; i < 2000; ++i) puts.push_back(make_record(i));
  cache.apply({}, std::move(puts));
  std::mt19937 rng(7);
  std::vector<int> order(2000);
  for (int i = 0; i < 2000; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> present(2000, true);
  for (int round = 0; round < 4; ++round) {
    std::vector<KeyDigest> erased;
    for (int j = 0; j < 500; ++j) {
      const int i = order[(round * 500 + j) % 2000];
      erased.push_back(make_record(i).digest);
      present[i] = false;
    }
    cache.apply(erased, {});
    for (int i = 0; i < 2000; ++i) {
      ASSERT_EQ(cache.find(make_record(i).digest) != nullptr, present[i]) << "key " << i;
    }
  }
  EXPECT_EQ(cache.size(), 0u);
}

class BoundedKeyCacheTest : public KeyCacheTest {
 protected:
  BoundedKeyCacheTest() : KeyCacheTest(KeyCache::Options{.shards = 4, .max_keys = 10}) {}
};

TEST_F(BoundedKeyCacheTest, InsertsBeyondCapacityEvictAndMakeTheCachePartial) {
  std::vector<KeyRecord> first;
  for (int i = 0; i < 10; ++i) first.push_back(make_record(i));
  cache_.apply({}, std::move(first));
  cache_.set_complete(true);
  EXPECT_TRUE(cache_.complete());
  EXPECT_EQ(cache_.evictions_total(), 0u);

  for (int i = 10; i < 30; ++i) {
    cache_.put(make_record(i));
    EXPECT_EQ(lookup(i), "k" + std::to_string(i)) << "the key just put is never the victim";
  }
  EXPECT_EQ(cache_.size(), 10u);
  EXPECT_EQ(cache_.evictions_total(), 20u);
  EXPECT_FALSE(cache_.complete());
  int found = 0;
  for (int i = 0; i < 30; ++i) found += lookup(i).empty() ? 0 : 1;
  EXPECT_EQ(found, 10);
}

TEST_F(BoundedKeyCacheTest, ReplacingACachedKeyDoesNotEvict) {
  std::vector<KeyRecord> first;
  for (int i = 0; i < 10; ++i) first.push_back(make_record(i));
  cache_.apply({}, std::move(first));
  cache_.set_complete(true);
  cache_.put(make_record(3, "updated"));
  EXPECT_EQ(cache_.evictions_total(), 0u);
  EXPECT_TRUE(cache_.complete());
}

// Readers look keys up and read their records in full while a writer keeps replacing,
// erasing and re-adding them. Under ASan any use of a freed record or table is caught.
TEST(KeyCache, ReadersSeeWholeRecordsWhileAWriterReplacesThem) {
  constexpr int kKeys = 256;
  constexpr auto kRunFor = std::chrono::milliseconds(1500);
  Qsbr qsbr(2);
  KeyCache cache(&qsbr, KeyCache::Options{.shards = 8, .max_keys = 0});
  std::vector<KeyDigest> digests;
  std::vector<KeyRecord> puts;
  for (int i = 0; i < kKeys; ++i) {
    puts.push_back(make_record(i, "k" + std::to_string(i) + "/0"));
    digests.push_back(puts.back().digest);
  }
  cache.apply({}, std::move(puts));

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0};
  std::atomic<uint64_t> hits{0};
  std::vector<std::thread> readers;
  for (size_t r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      uint64_t local_hits = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        qsbr.online(r);
        for (int i = 0; i < kKeys; ++i) {
          const KeyRecord* record = cache.find(digests[i]);
          if (record == nullptr) continue;  // erased for the moment
          ++local_hits;
          // The description always starts with the id: a torn or freed record breaks that.
          const std::string prefix = record->id + "/";
          if (record->description.compare(0, prefix.size(), prefix) != 0 ||
              !digests_equal(record->digest, digests[i])) {
            ++bad;
          }
        }
        qsbr.offline(r);
      }
      hits += local_hits;
    });
  }

  uint64_t writes = 0;
  const auto deadline = std::chrono::steady_clock::now() + kRunFor;
  while (std::chrono::steady_clock::now() < deadline) {
    const int i = static_cast<int>(writes % kKeys);
    ++writes;
    if (writes % 5 == 0) {
      cache.erase(digests[i]);
    } else {
      cache.put(make_record(i, "k" + std::to_string(i) + "/" + std::to_string(writes)));
    }
  }
  stop = true;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0u);
  // Low bars on purpose: on a loaded machine a preempted online reader stretches every grace
  // period. The point is the absence of bad reads, not speed.
  EXPECT_GT(writes, 10u);
  EXPECT_GT(hits.load(), 1000u);
}

}  // namespace
}  // namespace keygate::storage
