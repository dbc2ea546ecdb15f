#include "core/key_use.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace keygate {
namespace {

// A sink over one queue, recording what it was handed.
class QueueSink final : public KeyUseSink {
 public:
  explicit QueueSink(size_t capacity) : queue(capacity) {}
  bool report(unsigned worker, const KeyUse& use) noexcept override {
    last_worker = worker;
    return queue.push(use);
  }
  std::vector<std::pair<std::string, int64_t>> drain() {
    std::vector<std::pair<std::string, int64_t>> out;
    KeyUse use;
    while (queue.pop(&use)) out.emplace_back(std::string(use.key_id()), use.at);
    return out;
  }
  KeyUseQueue queue;
  unsigned last_worker = 99;
};

TEST(KeyUseReporter, ReportsAKeyAtMostOncePerGranularity) {
  QueueSink sink(64);
  KeyUseReporter reporter(&sink, 3, 16);
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000));
  EXPECT_EQ(sink.last_worker, 3u);
  for (int64_t t = 1000; t < 1000 + kKeyUseGranularitySeconds; ++t) {
    EXPECT_FALSE(reporter.note("kAAAAAAAAAAAA", t)) << t;
  }
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000 + kKeyUseGranularitySeconds));
  const auto got = sink.drain();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], (std::pair<std::string, int64_t>{"kAAAAAAAAAAAA", 1000}));
  EXPECT_EQ(got[1].second, 1000 + kKeyUseGranularitySeconds);
}

TEST(KeyUseReporter, DifferentKeysAreReportedIndependently) {
  QueueSink sink(64);
  KeyUseReporter reporter(&sink, 0, 64);
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000));
  EXPECT_TRUE(reporter.note("kBBBBBBBBBBBB", 1000));
  EXPECT_FALSE(reporter.note("kAAAAAAAAAAAA", 1001));
  EXPECT_FALSE(reporter.note("kBBBBBBBBBBBB", 1001));
  EXPECT_EQ(sink.drain().size(), 2u);
}

TEST(KeyUseReporter, CollidingKeysCostExtraReportsButNeverMissOne) {
  QueueSink sink(1024);
  KeyUseReporter reporter(&sink, 0, 1);  // one slot: every pair of ids collides
  for (int64_t t = 1000; t < 1010; ++t) {
    EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", t));
    EXPECT_TRUE(reporter.note("kBBBBBBBBBBBB", t));
  }
  const auto got = sink.drain();
  ASSERT_EQ(got.size(), 20u);
  EXPECT_EQ(got[18], (std::pair<std::string, int64_t>{"kAAAAAAAAAAAA", 1009}));
  EXPECT_EQ(got[19], (std::pair<std::string, int64_t>{"kBBBBBBBBBBBB", 1009}));
}

TEST(KeyUseReporter, AKeyWhoseIdIsAPrefixOfAnotherIsNotTakenForIt) {
  QueueSink sink(64);
  KeyUseReporter reporter(&sink, 0, 1);
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000));
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAA", 1000));
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000));
}

TEST(KeyUseReporter, AFullQueueDropsCountsAndTheNextUseReportsAgain) {
  QueueSink sink(2);
  KeyUseReporter reporter(&sink, 0, 16);
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000));
  EXPECT_TRUE(reporter.note("kBBBBBBBBBBBB", 1000));
  EXPECT_FALSE(reporter.note("kCCCCCCCCCCCC", 1000));  // full
  EXPECT_EQ(sink.queue.dropped(), 1u);
  EXPECT_FALSE(reporter.note("kCCCCCCCCCCCC", 1001));  // still full
  EXPECT_EQ(sink.queue.dropped(), 2u);
  sink.drain();
  // Not remembered as reported: the next use goes through, within the same granularity.
  EXPECT_TRUE(reporter.note("kCCCCCCCCCCCC", 1002));
  const auto got = sink.drain();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], (std::pair<std::string, int64_t>{"kCCCCCCCCCCCC", 1002}));
}

TEST(KeyUseReporter, AClockStepBackReportsAtOnce) {
  QueueSink sink(64);
  KeyUseReporter reporter(&sink, 0, 16);
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 1000));
  EXPECT_TRUE(reporter.note("kAAAAAAAAAAAA", 900));
}

TEST(KeyUseReporter, IdsTooLongOrEmptyAndANullSinkReportNothing) {
  QueueSink sink(64);
  KeyUseReporter reporter(&sink, 0, 16);
  EXPECT_FALSE(reporter.note("", 1000));
  EXPECT_FALSE(reporter.note(std::string(kKeyUseIdBytesMax + 1, 'k'), 1000));
  EXPECT_TRUE(reporter.note(std::string(kKeyUseIdBytesMax, 'k'), 1000));
  KeyUseReporter off(nullptr, 0, 16);
  EXPECT_FALSE(off.note("kAAAAAAAAAAAA", 1000));
}

TEST(KeyUseQueue, CapacityIsAPowerOfTwoAndOrderIsKept) {
  KeyUseQueue q(5);
  EXPECT_EQ(q.capacity(), 8u);
  KeyUse use;
  for (int i = 0; i < 8; ++i) {
    use.at = i;
    EXPECT_TRUE(q.push(use));
  }
  EXPECT_FALSE(q.push(use));
  EXPECT_EQ(q.dropped(), 1u);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(q.pop(&use));
    EXPECT_EQ(use.at, i);
  }
  EXPECT_FALSE(q.pop(&use));
}

TEST(KeyUseQueue, OneProducerOneConsumerLoseNothingUnlessCounted) {
  KeyUseQueue q(64);
  constexpr int64_t kPushes = 200000;
  std::atomic<bool> done{false};
  int64_t popped = 0;
  int64_t last = -1;
  bool ordered = true;
  std::thread consumer([&] {
    KeyUse use;
    for (;;) {
      const bool finished = done.load(std::memory_order_acquire);
      while (q.pop(&use)) {
        ordered = ordered && use.at > last;
        last = use.at;
        ++popped;
      }
      if (finished) break;
    }
  });
  KeyUse use;
  for (int64_t i = 0; i < kPushes; ++i) {
    use.at = i;
    q.push(use);
  }
  done.store(true, std::memory_order_release);
  consumer.join();
  EXPECT_TRUE(ordered);
  EXPECT_EQ(popped + static_cast<int64_t>(q.dropped()), kPushes);
}

}  // namespace
}  // namespace keygate
