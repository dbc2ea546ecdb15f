#include "storage/qsbr.h"

#include <chrono>
#include <thread>

#include "core/assert.h"

// Memory ordering, in one place.
//
// A writer unpublishes an object (a release store of a new pointer, before synchronize()), then
// synchronize() bumps the global epoch and reads every reader's state. A reader publishes its
// state (online(): the epoch it saw), then reads protected pointers. That is the store-then-load
// pattern on both sides (Dekker), which acquire/release alone does not order: both the reader's
// state store and the writer's pointer store could sit in store buffers while each side loads
// the other's old value, and the writer would free what the reader is about to use. A seq_cst
// fence on each side, between its store and its load, forbids that: of the two fences one comes
// first in the single total order, and the side whose fence comes second sees the other's store.
// So either the writer sees the reader online (and waits for it), or the reader loads the new
// pointer (and never sees the old one).
//
// The reader's epoch value matters when the writer sees it online: an epoch >= the writer's
// target means the reader loaded the bumped epoch (acquire, from the writer's seq_cst
// fetch_add, which comes after the pointer store), so it sees the new pointer too. An older
// epoch means it may hold the old pointer: the writer waits for its next quiescent point.
//
// Going offline or passing a quiescent point is a release store after the reader's last use of
// protected pointers; the writer's acquire load of that state makes those uses happen-before
// whatever the writer does next (freeing).
//
// ThreadSanitizer does not model fences (GCC warns -Wtsan and TSan ignores them), so in the
// TSan build (KEYGATE_TSAN) each fence is a seq_cst read-modify-write of one shared word
// instead: all RMWs of a word are totally ordered and each reads the one before, so the same
// argument holds (the side whose RMW comes second sees the other's store), and TSan sees it as
// the synchronisation it is. Only that build pays for the shared cache line.

namespace keygate::storage {

namespace {

#if defined(__SANITIZE_THREAD__)
std::atomic<uint64_t> tsan_fence_word{0};
#endif

// The seq_cst fence of both sides (see top of file).
inline void full_fence() noexcept {
#if defined(__SANITIZE_THREAD__)
  tsan_fence_word.fetch_add(1, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace

Qsbr::Qsbr(size_t readers) : reader_count_(readers), states_(new ReaderState[readers]) {
  observers_.reserve(readers);
  for (size_t i = 0; i < readers; ++i) observers_.push_back(std::make_unique<Observer>(this, i));
}

Qsbr::~Qsbr() {
  // No reader can be online by now (the owner stopped the workers), so no grace period is due.
  for (std::function<void()>& deleter : retired_) deleter();
}

void Qsbr::online(size_t reader) noexcept {
  KEYGATE_ASSERT(reader < reader_count_);
  const uint64_t epoch = epoch_.load(std::memory_order_acquire);
  states_[reader].epoch.store(epoch, std::memory_order_release);
  // Orders the state store before every later load of a protected pointer (see top of file).
  full_fence();
}

void Qsbr::offline(size_t reader) noexcept {
  KEYGATE_ASSERT(reader < reader_count_);
  states_[reader].epoch.store(kOffline, std::memory_order_release);
}

LoopObserver* Qsbr::observer(size_t reader) noexcept {
  KEYGATE_ASSERT(reader < reader_count_);
  return observers_[reader].get();
}

void Qsbr::synchronize() noexcept {
  const uint64_t target = epoch_.fetch_add(1, std::memory_order_seq_cst) + 1;
  // Orders the caller's earlier pointer stores before the state loads below (see top of file).
  full_fence();
  for (size_t i = 0; i < reader_count_; ++i) {
    // Bounded by the reader's progress only: a busy worker passes a quiescent point every loop
    // pass, and its loop ticks at least every 100 ms. Yield first (grace periods are usually
    // short), then sleep in growing steps so a long wait costs no CPU.
    uint32_t spins = 0;
    auto sleep = std::chrono::microseconds(20);
    for (;;) {
      const uint64_t seen = states_[i].epoch.load(std::memory_order_acquire);
      if (seen == kOffline || seen >= target) break;
      if (spins < 64) {
        ++spins;
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(sleep);
        if (sleep < std::chrono::milliseconds(1)) sleep *= 2;
      }
    }
  }
}

void Qsbr::retire(std::function<void()> deleter) {
  std::lock_guard lock(retired_mutex_);
  retired_.push_back(std::move(deleter));
}

void Qsbr::reclaim() {
  std::vector<std::function<void()>> due;
  {
    std::lock_guard lock(retired_mutex_);
    due.swap(retired_);
  }
  // Wait even when nothing is due: another thread's reclaim may have taken this caller's
  // garbage, and the caller still relies on a full grace period when this returns.
  synchronize();
  for (std::function<void()>& deleter : due) deleter();
}

}  // namespace keygate::storage
