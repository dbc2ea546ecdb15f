// LastUsedWriter: collects the workers' key-use reports and writes each key's last use to the
// store, in batches, off the workers.
//
// Owns one KeyUseQueue (core/key_use.h) per worker and one thread. report() is the workers'
// side: worker i pushes into queue i only (wait-free, no allocation, no syscall; a full queue
// drops the report and counts it). The thread drains every queue every kDrainIntervalMs into a
// map of the latest time per key id (so a queue holds the reports of 100 ms, not of a whole
// flush interval: 4,096 distinct keys per 100 ms per worker before one is dropped), and every
// flush_interval_ms hands that map to the write function (KeyStore::put_last_used: unsynced
// batches that skip deleted keys). The map holds one entry per key used in the interval: at
// most the store's keys. Workers never wake it: no syscall on the request path.
//
// Threading: report() on worker threads (each with its own index); flush(), stats() and stop()
// from any thread (a flush runs one at a time). Shutdown: stop() after the workers stopped
// (their threads joined), so the last reports are written: an orderly stop loses none. A crash
// loses the reports of at most the last flush interval (and what an unsynced write had not
// got to the disk if the OS goes down too).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/key_use.h"
#include "storage/key_store.h"

namespace keygate::storage {

class LastUsedWriter final : public KeyUseSink {
 public:
  // Writes a batch; `*written` = entries written. KeyStore::put_last_used in production.
  using WriteFn = std::function<Status(std::span<const KeyStore::LastUsed>, size_t* written)>;

  struct Options {
    size_t workers = 1;
    size_t queue_capacity = 4096;       // reports per worker between two drains; full: dropped
    uint32_t flush_interval_ms = 30000;  // [keys] last_used_flush_interval_ms
  };

  // Entries per write call: the store holds its writers' mutex for one call (two point reads
  // per entry), so an admin change waits for at most this many, not for every key used in
  // the interval.
  static constexpr size_t kWriteBatchMax = 1024;
  // How often the thread empties the queues (at most flush_interval_ms): what a queue must
  // hold is the reports of this long.
  static constexpr uint32_t kDrainIntervalMs = 100;

  struct Stats {
    uint64_t reports_total = 0;    // reports taken from the queues
    uint64_t reports_dropped = 0;  // reports a full queue dropped (the key's next use retries)
    uint64_t writes_total = 0;     // last-used entries written to the store
    uint64_t write_errors = 0;     // write calls the store failed (their reports are lost)
  };

  // Starts the thread. Allocates the queues (workers × queue_capacity × 32 bytes).
  LastUsedWriter(const Options& options, WriteFn write);
  // stop().
  ~LastUsedWriter() override;
  LastUsedWriter(const LastUsedWriter&) = delete;
  LastUsedWriter& operator=(const LastUsedWriter&) = delete;

  // KeyUseSink: worker `worker` only (< options.workers). Never blocks, never allocates.
  bool report(unsigned worker, const KeyUse& use) noexcept override;

  // Drains every queue and writes everything not yet written, now. Blocks for the write.
  // Tests, and stop().
  void flush();
  // Stops the thread, then flushes once more. Idempotent. Call after the workers stopped.
  void stop();

  // A reload's [keys] last_used_flush_interval_ms: the next write is due at most this long
  // after the last one (the thread wakes to drain every kDrainIntervalMs anyway, so it is seen
  // within that). Any thread.
  void set_flush_interval_ms(uint32_t flush_interval_ms) noexcept;

  Stats stats() const noexcept;

 private:
  void run();
  // Moves every queued report into pending_ (the latest time per key). One at a time.
  void drain();
  // Writes pending_ (and empties it). One at a time.
  void write_pending();

  std::vector<std::unique_ptr<KeyUseQueue>> queues_;
  WriteFn write_;
  // Read by the thread at each pass; a reload stores it (set_flush_interval_ms).
  std::atomic<uint32_t> flush_interval_ms_;
  std::mutex drain_mutex_;  // guards pending_ and the queues' consumer side (one consumer)
  std::unordered_map<std::string, int64_t> pending_;  // key id -> latest use not yet written
  std::mutex write_mutex_;  // one write at a time (the thread's, a test's, stop()'s)
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;  // under wake_mutex_
  std::atomic<uint64_t> reports_total_{0};
  std::atomic<uint64_t> writes_total_{0};
  std::atomic<uint64_t> write_errors_{0};
  std::thread thread_;  // last: started once everything it uses exists
};

}  // namespace keygate::storage
