// Key use reporting: how a worker tells the rest of keygate "key K was used at T" (a key's
// last_used_at) without a lock, an allocation or a shared store per request.
//
// Three parts, all pure logic:
//   KeyUse          one report: the key id (inline, fixed size) and the Unix second of the use;
//   KeyUseQueue     a bounded single-producer/single-consumer ring of reports: the producer is
//                   one worker thread, the consumer the thread that writes last-used times
//                   (storage's LastUsedWriter). Full: the report is dropped and counted;
//   KeyUseReporter  worker-local: a direct-mapped table (key id -> the second this worker last
//                   reported it), so a key used N times a second costs one report per
//                   kKeyUseGranularitySeconds per worker, and the sink it reports to.
// A dropped report is not remembered in the table, so the key's next request reports again:
// a full queue delays a last_used_at, it does not lose it while the key keeps being used. Two
// ids that share a table slot evict each other: more reports, never a missed one.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace keygate {

// The longest key id reported (ids keygate makes are 13 bytes: make_key_id). A longer id (only
// possible in a store written by other means; the admin API cannot show such a key) is not
// reported.
constexpr size_t kKeyUseIdBytesMax = 23;
// A worker reports a key at most once per this many seconds: last_used_at may lag the real
// last use by up to this plus the writer's flush interval ([keys] last_used_flush_interval_ms).
constexpr int64_t kKeyUseGranularitySeconds = 60;

struct KeyUse {
  int64_t at = 0;  // Unix seconds
  uint8_t id_bytes = 0;
  char id[kKeyUseIdBytesMax] = {};
  std::string_view key_id() const noexcept { return {id, id_bytes}; }
};
static_assert(sizeof(KeyUse) == 32, "two reports per cache line");

// Bounded SPSC ring. push() only on the producer thread, pop() only on the consumer thread;
// both wait-free, neither allocates. Capacity is rounded up to a power of two.
class KeyUseQueue {
 public:
  explicit KeyUseQueue(size_t capacity);
  KeyUseQueue(const KeyUseQueue&) = delete;
  KeyUseQueue& operator=(const KeyUseQueue&) = delete;

  // Producer: false when the ring is full (the report is dropped and counted in dropped()).
  bool push(const KeyUse& use) noexcept;
  // Consumer: false when the ring is empty.
  bool pop(KeyUse* out) noexcept;
  // Reports dropped because the ring was full (any thread; relaxed).
  uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }
  size_t capacity() const noexcept { return mask_ + 1; }

 private:
  size_t mask_;
  std::unique_ptr<KeyUse[]> slots_;
  // Producer and consumer each write their own index, on separate cache lines, so a push does
  // not contend with the consumer's pops.
  alignas(64) std::atomic<uint64_t> head_{0};  // next to pop (consumer)
  alignas(64) std::atomic<uint64_t> tail_{0};  // next to push (producer)
  std::atomic<uint64_t> dropped_{0};           // producer-written
};

// Where a worker's reports go (storage's LastUsedWriter: one KeyUseQueue per worker). report()
// runs on worker `worker` only, must not block or allocate; false: dropped (and counted).
class KeyUseSink {
 public:
  virtual ~KeyUseSink() = default;
  virtual bool report(unsigned worker, const KeyUse& use) noexcept = 0;
};

// Worker-local: one per handler (the data port's and the admin port's of each worker). Not
// thread-safe; never blocks or allocates after construction.
class KeyUseReporter {
 public:
  // `sink` may be null (no tracking: note() does nothing). `slots` is rounded up to a power of
  // two; each takes 32 bytes.
  KeyUseReporter(KeyUseSink* sink, unsigned worker, size_t slots);

  // Key `key_id` was used at `now` (Unix seconds). Reports it unless this reporter reported
  // the same id less than kKeyUseGranularitySeconds ago (or later than `now`: a clock step
  // back reports again at once). Returns whether it reported (tests).
  bool note(std::string_view key_id, int64_t now) noexcept;

 private:
  struct Slot {
    int64_t reported_at = 0;
    uint8_t id_bytes = 0;  // 0: empty
    char id[kKeyUseIdBytesMax] = {};
  };
  static_assert(sizeof(Slot) == 32);

  KeyUseSink* sink_;
  unsigned worker_;
  size_t mask_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace keygate
