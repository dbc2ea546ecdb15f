// Qsbr: quiescent-state-based reclamation for structures that workers read without locks.
//
// Threading: a fixed set of readers (one per worker), each used by exactly one thread at a
// time. Reader calls are wait-free (a load, a store and at most one fence). A reader is
// *online* while it may hold pointers into protected structures and *offline* otherwise; each
// online() also marks a quiescent point (every pointer read before it is dropped). Writers
// (any thread that is not an online reader) unpublish an object, then synchronize() or
// retire() it; synchronize() blocks until every reader is offline or has passed a quiescent
// point since the call began. Workers pass one every event-loop pass (their LoopObserver goes
// offline before the blocking wait and online after it), so a grace period lasts at most one
// loop pass of the slowest busy worker.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "core/handler.h"

namespace keygate::storage {

class Qsbr {
 public:
  // `readers` readers, all starting offline.
  explicit Qsbr(size_t readers);
  // Runs every still-retired deleter. No reader may be online any more.
  ~Qsbr();
  Qsbr(const Qsbr&) = delete;
  Qsbr& operator=(const Qsbr&) = delete;

  size_t readers() const noexcept { return reader_count_; }

  // Reader `reader` (< readers()) comes online, or passes a quiescent point when already
  // online. Call only from the thread that currently owns that reader. Wait-free.
  void online(size_t reader) noexcept;
  // Reader `reader` goes offline: it holds no pointer into protected structures until its next
  // online(). Wait-free.
  void offline(size_t reader) noexcept;

  // before_wait() -> offline(reader), after_wait() -> online(reader). Lives as long as this.
  LoopObserver* observer(size_t reader) noexcept;

  // Waits until every reader is offline or has passed a quiescent point after this call began:
  // then nothing unpublished before the call is still referenced. Blocks (yields, then sleeps
  // in short steps) for as long as a reader stays online without a quiescent point. Must not be
  // called by an online reader (it would wait for itself). Thread-safe; does not allocate.
  void synchronize() noexcept;

  // Queues `deleter` to run after a grace period that starts now: call it once the object it
  // frees is unpublished. Thread-safe; allocates.
  void retire(std::function<void()> deleter);
  // Waits for a grace period (always, even with nothing retired), then runs every deleter
  // retired before this call. So on return, whatever the caller unpublished earlier is
  // unreachable, whichever thread's reclaim frees it. Blocks like synchronize(). Thread-safe.
  void reclaim();

 private:
  static constexpr uint64_t kOffline = 0;

  struct alignas(64) ReaderState {
    std::atomic<uint64_t> epoch{kOffline};
  };
  class Observer final : public LoopObserver {
   public:
    Observer(Qsbr* qsbr, size_t reader) : qsbr_(qsbr), reader_(reader) {}
    void before_wait() noexcept override { qsbr_->offline(reader_); }
    void after_wait() noexcept override { qsbr_->online(reader_); }

   private:
    Qsbr* qsbr_;
    size_t reader_;
  };

  const size_t reader_count_;
  alignas(64) std::atomic<uint64_t> epoch_{1};
  std::unique_ptr<ReaderState[]> states_;
  std::vector<std::unique_ptr<Observer>> observers_;

  std::mutex retired_mutex_;
  std::vector<std::function<void()>> retired_;
};

}  // namespace keygate::storage
