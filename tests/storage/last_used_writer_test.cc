#include "storage/last_used_writer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace keygate::storage {
namespace {

KeyUse use_of(const std::string& id, int64_t at) {
  KeyUse u;
  u.at = at;
  u.id_bytes = static_cast<uint8_t>(id.size());
  id.copy(u.id, id.size());
  return u;
}

// What the writer wrote, as a map id -> time, with the batches counted.
struct Recorder {
  std::mutex mu;
  std::map<std::string, int64_t> stored;
  size_t batches = 0;
  size_t last_batch_entries = 0;
  LastUsedWriter::WriteFn fn() {
    return [this](std::span<const KeyStore::LastUsed> entries, size_t* written) {
      std::lock_guard lock(mu);
      ++batches;
      last_batch_entries = entries.size();
      for (const auto& e : entries) stored[e.id] = e.at;
      *written = entries.size();
      return Status::ok();
    };
  }
};

LastUsedWriter::Options options(size_t workers, size_t capacity, uint32_t flush_ms) {
  LastUsedWriter::Options o;
  o.workers = workers;
  o.queue_capacity = capacity;
  o.flush_interval_ms = flush_ms;
  return o;
}

TEST(LastUsedWriter, AFlushWritesTheLatestTimePerKeyInOneBatch) {
  Recorder rec;
  LastUsedWriter writer(options(2, 16, 600000), rec.fn());
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 100)));
  EXPECT_TRUE(writer.report(1, use_of("kAAAAAAAAAAAA", 160)));
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 130)));
  EXPECT_TRUE(writer.report(1, use_of("kBBBBBBBBBBBB", 120)));
  writer.flush();
  EXPECT_EQ(rec.batches, 1u);
  EXPECT_EQ(rec.last_batch_entries, 2u);
  EXPECT_EQ(rec.stored["kAAAAAAAAAAAA"], 160);
  EXPECT_EQ(rec.stored["kBBBBBBBBBBBB"], 120);
  const LastUsedWriter::Stats s = writer.stats();
  EXPECT_EQ(s.reports_total, 4u);
  EXPECT_EQ(s.writes_total, 2u);
  EXPECT_EQ(s.reports_dropped, 0u);
  writer.flush();  // nothing new: no batch
  EXPECT_EQ(rec.batches, 1u);
}

TEST(LastUsedWriter, ManyKeysAreWrittenInBoundedBatches) {
  Recorder rec;
  const size_t keys = LastUsedWriter::kWriteBatchMax + 5;
  LastUsedWriter writer(options(1, 2 * keys, 600000), rec.fn());
  for (size_t i = 0; i < keys; ++i) {
    char id[14];
    std::snprintf(id, sizeof id, "k%012zu", i);
    ASSERT_TRUE(writer.report(0, use_of(id, 5)));
  }
  writer.flush();
  EXPECT_EQ(rec.batches, 2u);
  EXPECT_EQ(rec.stored.size(), keys);
  EXPECT_EQ(writer.stats().writes_total, keys);
}

TEST(LastUsedWriter, AFullQueueDropsAndCounts) {
  Recorder rec;
  LastUsedWriter writer(options(1, 2, 600000), rec.fn());
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 1)));
  EXPECT_TRUE(writer.report(0, use_of("kBBBBBBBBBBBB", 1)));
  EXPECT_FALSE(writer.report(0, use_of("kCCCCCCCCCCCC", 1)));
  EXPECT_EQ(writer.stats().reports_dropped, 1u);
  writer.flush();
  EXPECT_EQ(rec.stored.count("kCCCCCCCCCCCC"), 0u);
  EXPECT_TRUE(writer.report(0, use_of("kCCCCCCCCCCCC", 2)));
}

// The queues are emptied far more often than the store is written: a queue must hold ~100 ms
// of reports, not a whole flush interval's. Here 60 distinct keys come in 6 bursts of 10, 300 ms
// apart, into a queue of 16 with a 10-minute flush interval: none is dropped, and the flush
// writes them all.
TEST(LastUsedWriter, QueuesAreDrainedBetweenFlushesSoManyKeysFitASmallQueue) {
  Recorder rec;
  LastUsedWriter writer(options(1, 16, 600000), rec.fn());
  int n = 0;
  for (int burst = 0; burst < 6; ++burst) {
    for (int i = 0; i < 10; ++i, ++n) {
      char id[16];
      std::snprintf(id, sizeof id, "k%012d", n);
      EXPECT_TRUE(writer.report(0, use_of(id, 100 + n))) << id;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  EXPECT_EQ(writer.stats().reports_dropped, 0u);
  EXPECT_EQ(rec.batches, 0u);  // nothing written before the flush interval
  writer.flush();
  EXPECT_EQ(rec.stored.size(), 60u);
  EXPECT_EQ(writer.stats().writes_total, 60u);
}

TEST(LastUsedWriter, TheThreadWritesEveryFlushInterval) {
  Recorder rec;
  LastUsedWriter writer(options(1, 16, 20), rec.fn());
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 7)));
  for (int i = 0; i < 500; ++i) {
    {
      std::lock_guard lock(rec.mu);
      if (rec.stored.count("kAAAAAAAAAAAA") == 1) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::lock_guard lock(rec.mu);
  EXPECT_EQ(rec.stored["kAAAAAAAAAAAA"], 7);
}

// A reload's last_used_flush_interval_ms: a writer started with an hour writes within the new
// interval once it is set, not an hour later.
TEST(LastUsedWriter, AFlushIntervalSetLaterTakesEffectAtTheNextPass) {
  Recorder rec;
  LastUsedWriter writer(options(1, 16, 3600000), rec.fn());
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 7)));
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  {
    std::lock_guard lock(rec.mu);
    EXPECT_EQ(rec.stored.count("kAAAAAAAAAAAA"), 0u);  // drained, not yet written
  }
  writer.set_flush_interval_ms(20);
  for (int i = 0; i < 300; ++i) {
    {
      std::lock_guard lock(rec.mu);
      if (rec.stored.count("kAAAAAAAAAAAA") == 1) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::lock_guard lock(rec.mu);
  EXPECT_EQ(rec.stored["kAAAAAAAAAAAA"], 7);
}

TEST(LastUsedWriter, StopWritesWhatIsLeftSoAnOrderlyStopLosesNothing) {
  Recorder rec;
  LastUsedWriter writer(options(1, 16, 600000), rec.fn());
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 9)));
  writer.stop();
  EXPECT_EQ(rec.stored["kAAAAAAAAAAAA"], 9);
  writer.stop();  // idempotent
  EXPECT_EQ(rec.batches, 1u);
}

TEST(LastUsedWriter, AFailedWriteIsCounted) {
  LastUsedWriter writer(options(1, 16, 600000),
                        [](std::span<const KeyStore::LastUsed>, size_t*) {
                          return Status::io_error("disk gone");
                        });
  EXPECT_TRUE(writer.report(0, use_of("kAAAAAAAAAAAA", 9)));
  writer.flush();
  EXPECT_EQ(writer.stats().write_errors, 1u);
  EXPECT_EQ(writer.stats().writes_total, 0u);
}

}  // namespace
}  // namespace keygate::storage
