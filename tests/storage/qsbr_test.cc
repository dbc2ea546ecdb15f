#include "storage/qsbr.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <thread>
#include <vector>

namespace keygate::storage {
namespace {

using namespace std::chrono_literals;

// Long enough that a synchronize() that should block would have returned by then if it did
// not block; short enough to keep the suite quick.
constexpr auto kBlockedFor = 100ms;

TEST(Qsbr, SynchronizeReturnsAtOnceWhenEveryReaderIsOffline) {
  Qsbr qsbr(4);
  qsbr.synchronize();
  qsbr.online(1);
  qsbr.offline(1);
  qsbr.synchronize();
}

TEST(Qsbr, SynchronizeWaitsForAnOnlineReaderUntilItPassesAQuiescentPoint) {
  Qsbr qsbr(2);
  qsbr.online(0);
  auto done = std::async(std::launch::async, [&] { qsbr.synchronize(); });
  EXPECT_EQ(done.wait_for(kBlockedFor), std::future_status::timeout);
  qsbr.online(0);  // a quiescent point while staying online
  EXPECT_EQ(done.wait_for(10s), std::future_status::ready);
  qsbr.offline(0);
}

TEST(Qsbr, SynchronizeWaitsForAnOnlineReaderUntilItGoesOffline) {
  Qsbr qsbr(2);
  qsbr.online(1);
  auto done = std::async(std::launch::async, [&] { qsbr.synchronize(); });
  EXPECT_EQ(done.wait_for(kBlockedFor), std::future_status::timeout);
  qsbr.offline(1);
  EXPECT_EQ(done.wait_for(10s), std::future_status::ready);
}

TEST(Qsbr, TheLoopObserverIsOfflineDuringTheWaitAndOnlineAfterIt) {
  Qsbr qsbr(1);
  LoopObserver* observer = qsbr.observer(0);
  observer->after_wait();
  auto done = std::async(std::launch::async, [&] { qsbr.synchronize(); });
  EXPECT_EQ(done.wait_for(kBlockedFor), std::future_status::timeout);
  observer->before_wait();
  EXPECT_EQ(done.wait_for(10s), std::future_status::ready);
}

TEST(Qsbr, RetiredObjectsAreFreedOnlyAfterAGracePeriod) {
  Qsbr qsbr(1);
  std::atomic<bool> freed{false};
  qsbr.online(0);
  qsbr.retire([&] { freed = true; });
  auto done = std::async(std::launch::async, [&] { qsbr.reclaim(); });
  EXPECT_EQ(done.wait_for(kBlockedFor), std::future_status::timeout);
  EXPECT_FALSE(freed.load());
  qsbr.offline(0);
  EXPECT_EQ(done.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(freed.load());
}

TEST(Qsbr, RetiredObjectsLeftAtDestructionAreFreed) {
  bool freed = false;
  {
    Qsbr qsbr(1);
    qsbr.retire([&] { freed = true; });
  }
  EXPECT_TRUE(freed);
}

// Readers dereference a published object in a loop while a writer replaces and frees it. Any
// use after free is caught by ASan; without ASan the poisoned fields catch most of them.
TEST(Qsbr, ReadersNeverSeeAFreedObjectWhileAWriterReplacesItContinuously) {
  constexpr uint64_t kAlive = 0xA11CEA11CEA11CEULL;
  struct Object {
    uint64_t magic;
    uint64_t value = 0;
    uint64_t check = 0;  // ~value
  };
  constexpr size_t kReaders = 3;
  constexpr auto kRunFor = 1500ms;
  Qsbr qsbr(kReaders);
  std::atomic<Object*> published{new Object{kAlive, 0, ~0ULL}};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0};
  std::atomic<uint64_t> reads{0};

  std::vector<std::thread> readers;
  for (size_t r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      uint64_t local_reads = 0;
      for (uint64_t pass = 0; !stop.load(std::memory_order_relaxed); ++pass) {
        qsbr.online(r);
        // Reader 0 mostly stays online and only passes quiescent points; the others go
        // offline every pass, like a worker that waits for I/O.
        for (int i = 0; i < 64; ++i) {
          const Object* object = published.load(std::memory_order_acquire);
          if (object->magic != kAlive || object->check != ~object->value) ++bad;
          ++local_reads;
        }
        if (r != 0 || pass % 16 == 0) qsbr.offline(r);
        if (pass % 8 == 0) std::this_thread::yield();
      }
      qsbr.offline(r);
      reads += local_reads;
    });
  }

  uint64_t replaced = 0;
  const auto deadline = std::chrono::steady_clock::now() + kRunFor;
  while (std::chrono::steady_clock::now() < deadline) {
    ++replaced;
    Object* old =
        published.exchange(new Object{kAlive, replaced, ~replaced}, std::memory_order_acq_rel);
    if (replaced % 2 == 0) {
      qsbr.synchronize();
      old->magic = 0;  // poison, so a reader that still had it would notice
      delete old;
    } else {
      qsbr.retire([old] {
        old->magic = 0;
        delete old;
      });
      qsbr.reclaim();
    }
  }
  stop = true;
  for (std::thread& t : readers) t.join();
  delete published.load();

  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(replaced, 10u);  // low on purpose: a loaded machine stretches grace periods
  EXPECT_GT(reads.load(), 10000u);
}

}  // namespace
}  // namespace keygate::storage
