// LogRing: a bounded single-producer single-consumer byte ring of length-prefixed records, the
// per-worker buffer between a worker and the access-log writer thread.
//
// Threading: exactly one producer thread calls try_push(), reserve() and commit(), and one
// consumer at a time calls drain(), queued_bytes() and take_pending_drops() (consumers on
// several threads must serialize these calls, e.g. with a mutex); any thread may read the
// counters. The producer's calls are wait-free: no lock, no allocation, no syscall (a few
// atomics, and a memcpy in try_push). The producer and consumer indices live on separate cache
// lines, and each side caches the other's index, so in the steady state neither side touches
// the other's line on every record.
//
// Two ways in: try_push() copies a finished record; reserve() hands out contiguous space at
// the head for a record written in place, published by commit() (nothing is visible to the
// consumer before it, and a reservation that is never committed costs nothing).
//
// When full, try_push() drops the record and counts it: in dropped() and in a pending-drop
// count. The next record pushed carries that pending count in its header (so the consumer
// learns where in this worker's stream the drops happened); drops with no record after them
// yet are claimed by the consumer with take_pending_drops(), which takes only drops that come
// right after the last record drained. Every drop is reported exactly once, by one of the two,
// at its place in the stream (until kPendingCountMax drops pile up with neither a record nor a
// claim; those beyond are counted in dropped() only). A failed reserve() counts nothing (the
// caller falls back to try_push(), which counts).
//
// Layout: each record is an 8-byte header {uint32 length | kOneLine flag, uint32 drops_before}
// followed by the payload, padded to 8 bytes. A pushed payload may wrap around the end of the
// buffer (drain() hands it out in two parts); a header never does. A reserved record never
// wraps: when the space left before the end is too small, the header there says kSkip and the
// record starts at the beginning of the buffer. The buffer is backed by transparent huge
// pages where the kernel offers them (fewer TLB misses for both sides).
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string_view>

#include "core/assert.h"

namespace keygate::storage {

// A buffer of at least `bytes` for free(), aligned to `align` (a power of two); from 2 MiB on,
// 2 MiB aligned and backed by transparent huge pages where the kernel offers them (fewer TLB
// misses, cheaper pinning for O_DIRECT writes). Throws std::bad_alloc. The log's rings and the
// writer's buffer use it.
inline char* allocate_log_buffer(size_t bytes, size_t align) {
  constexpr size_t kHugePageBytes = 2 << 20;
  if (bytes >= kHugePageBytes) align = kHugePageBytes;
  const size_t rounded = (bytes + align - 1) & ~(align - 1);
  void* const p = std::aligned_alloc(align, rounded);
  if (p == nullptr) throw std::bad_alloc();
  if (align == kHugePageBytes) (void)::madvise(p, rounded, MADV_HUGEPAGE);  // a hint only
  return static_cast<char*>(p);
}

class LogRing {
 public:
  static constexpr size_t kHeaderBytes = 8;
  // drain() frees the space of what it drained at least this often.
  static constexpr size_t kReleaseBytes = 256 << 10;
  static constexpr size_t kCapacityBytesMin = 64;
  // The pending drops' position tag tells positions apart within this distance (see pending_).
  static constexpr size_t kCapacityBytesMax = size_t{1} << 30;
  // Longest payload a header can describe.
  static constexpr size_t kPayloadBytesMax = (size_t{1} << 31) - 8;

  // Capacity is `capacity_bytes` rounded down to a power of two; at least kCapacityBytesMin.
  // Allocates the buffer once.
  explicit LogRing(size_t capacity_bytes)
      : capacity_(std::bit_floor(capacity_bytes)), mask_(capacity_ - 1), data_(allocate(capacity_)) {
    KEYGATE_ASSERT(capacity_bytes >= kCapacityBytesMin);
    KEYGATE_ASSERT(capacity_ <= kCapacityBytesMax);
    producer_.data = data_;
    producer_.mask = mask_;
    producer_.capacity = capacity_;
  }
  ~LogRing() { std::free(data_); }
  LogRing(const LogRing&) = delete;
  LogRing& operator=(const LogRing&) = delete;

  size_t capacity() const noexcept { return capacity_; }

  // Bytes a record of `payload_bytes` occupies in the ring.
  static constexpr uint64_t footprint(size_t payload_bytes) noexcept {
    return kHeaderBytes + ((static_cast<uint64_t>(payload_bytes) + 7) & ~uint64_t{7});
  }

  // Producer only. Copies `record` in, or drops it (false) when the free space is too small;
  // a record whose footprint exceeds capacity() is always dropped. `one_line`: the producer
  // vouches that the payload holds no newline byte (handed to the consumer). Wait-free.
  bool try_push(std::string_view record, bool one_line = false) noexcept {
    const uint64_t need = footprint(record.size());
    const uint64_t head = producer_.head.load(std::memory_order_relaxed);
    if (need > producer_.capacity || record.size() > kPayloadBytesMax || !has_room(head, need)) {
      count_drop();
      return false;
    }
    char* const data = producer_.data;
    const uint64_t at = head & producer_.mask;
    const uint64_t payload_at = (at + kHeaderBytes) & producer_.mask;
    const size_t first = std::min<size_t>(record.size(), producer_.capacity - payload_at);
    std::memcpy(data + payload_at, record.data(), first);
    if (first < record.size()) std::memcpy(data, record.data() + first, record.size() - first);
    publish(head, at, record.size(), one_line, need);
    return true;
  }

  // Producer only. Contiguous space for a record of up to `max_bytes` at the head, or null
  // when the ring lacks it now (counts nothing). Write the record there, then commit() it
  // before any other producer call, or abandon it (no commit(); any call may follow, and a
  // commit() needs a reserve() of its own). Wait-free.
  char* reserve(size_t max_bytes) noexcept {
    if (max_bytes > kPayloadBytesMax) return nullptr;
    const uint64_t head = producer_.head.load(std::memory_order_relaxed);
    const uint64_t at = head & producer_.mask;
    const uint64_t need = footprint(max_bytes);
    // Headers are 8-byte aligned and the capacity is a power of two >= 64, so a skip header
    // always fits in what is left before the end.
    const uint64_t skip = at + need <= producer_.capacity ? 0 : producer_.capacity - at;
    if (skip + need > producer_.capacity || !has_room(head, skip + need)) return nullptr;
    producer_.reserved_skip = skip;
    return producer_.data + ((at + skip + kHeaderBytes) & producer_.mask);
  }

  // Producer only. Publishes the record reserve() made room for, its first `bytes` bytes
  // (at most the reserved max_bytes). Wait-free.
  void commit(size_t bytes, bool one_line) noexcept {
    uint64_t head = producer_.head.load(std::memory_order_relaxed);
    if (producer_.reserved_skip > 0) {
      const uint32_t skip_header[2] = {kSkip, 0};
      std::memcpy(producer_.data + (head & producer_.mask), skip_header, kHeaderBytes);
      head += producer_.reserved_skip;
      producer_.reserved_skip = 0;
    }
    const uint64_t at = head & producer_.mask;
    publish(head, at, bytes, one_line, footprint(bytes));
  }

  // Consumer only. Hands every record published before the call to
  // `on_record(std::string_view part1, std::string_view part2, uint32_t drops_before,
  // bool one_line)` in order (the payload is part1 + part2; part2 is empty unless it wraps),
  // freeing their space as it goes: every kReleaseBytes drained, and at the end. (A drain of a
  // full ring by a consumer that the scheduler keeps waiting would otherwise hold all of it
  // until the last record.) The views are valid only during the callback. Returns the number
  // of records.
  template <typename F>
  uint64_t drain(F&& on_record) {
    const uint64_t head = producer_.head.load(std::memory_order_acquire);
    uint64_t tail = tail_.load(std::memory_order_relaxed);
    uint64_t released = tail;
    uint64_t records = 0;
    while (tail != head) {
      if (tail - released >= kReleaseBytes) {
        tail_.store(tail, std::memory_order_release);
        released = tail;
      }
      const uint64_t at = tail & mask_;
      uint32_t header[2];
      std::memcpy(header, data_ + at, kHeaderBytes);
      if (header[0] == kSkip) {
        tail += capacity_ - at;
        continue;
      }
      const size_t length = header[0] & ~kOneLine;
      KEYGATE_ASSERT(footprint(length) <= head - tail);
      const uint64_t payload_at = (at + kHeaderBytes) & mask_;
      const size_t first = std::min<size_t>(length, capacity_ - payload_at);
      on_record(std::string_view(data_ + payload_at, first),
                std::string_view(data_, length - first), header[1], (header[0] & kOneLine) != 0);
      tail += footprint(length);
      ++records;
    }
    tail_.store(tail, std::memory_order_release);
    return records;
  }

  // Consumer only. Bytes of the buffer holding records not yet drained (headers and padding
  // included): how full the producer finds it, as of now.
  size_t queued_bytes() const noexcept {
    return static_cast<size_t>(producer_.head.load(std::memory_order_acquire) -
                               tail_.load(std::memory_order_relaxed));
  }

  // Consumer only. Drops not yet carried by a pushed record that come right after the last
  // record drained; they are reported by the caller from now on, after the records drained.
  // Call after drain(). Drops after a record published since (the producer goes on during and
  // after a drain) are left: that record is not drained yet, and they belong after it (they are
  // claimed after the next drain, or carried by the next record). Taking every pending drop,
  // as this once did, put such drops before records that came before them.
  uint64_t take_pending_drops() noexcept {
    const uint64_t drained_to = pending_tag(tail_.load(std::memory_order_relaxed));
    uint64_t word = pending_.load(std::memory_order_acquire);
    // One compare-and-swap checks the place and takes the count together: the producer may
    // publish a record and start a new batch of drops (a new tag) between two loads.
    while (pending_count(word) != 0 && (word & kPendingTagMask) == drained_to) {
      if (pending_.compare_exchange_weak(word, word & kPendingTagMask,
                                         std::memory_order_acq_rel, std::memory_order_acquire)) {
        return pending_count(word);
      }
    }
    return 0;
  }

  // Any thread. Records accepted / refused by try_push() and commit() so far.
  uint64_t pushed() const noexcept { return producer_.pushed.load(std::memory_order_relaxed); }
  uint64_t dropped() const noexcept { return producer_.dropped.load(std::memory_order_relaxed); }

 private:
  static constexpr uint32_t kOneLine = 0x80000000u;
  static constexpr uint32_t kSkip = 0xffffffffu;  // the rest of the buffer is unused

  static char* allocate(size_t bytes) {
    return allocate_log_buffer(bytes, alignof(std::max_align_t));
  }

  // pending_'s layout: the count of the drops above kPendingTagBits, their position below.
  static constexpr unsigned kPendingTagBits = 28;
  static constexpr uint64_t kPendingTagMask = (uint64_t{1} << kPendingTagBits) - 1;
  static constexpr uint64_t kPendingOne = uint64_t{1} << kPendingTagBits;
  // ~6.9e10: at a million drops a second, 19 hours with neither a record pushed nor a claim.
  static constexpr uint64_t kPendingCountMax = ~uint64_t{0} >> kPendingTagBits;
  // A head position (a multiple of 8) as pending_'s tag: head / 8 modulo 2^28, so positions
  // less than 2 GiB apart differ. The pending drops are at most kCapacityBytesMax after the
  // consumer's tail (the producer's head never is further), so equal tags mean equal positions.
  static constexpr uint64_t pending_tag(uint64_t head) noexcept {
    return (head >> 3) & kPendingTagMask;
  }
  static constexpr uint64_t pending_count(uint64_t word) noexcept {
    return word >> kPendingTagBits;
  }

  void count_drop() noexcept {
    // Only the producer makes the count non-zero (the consumer and publish() only zero it), so
    // a zero count stays zero until the store. A claim between the load and the add leaves the
    // tag, which is still the head's: no record was published meanwhile.
    const uint64_t word = pending_.load(std::memory_order_relaxed);
    if (pending_count(word) == 0) {
      pending_.store(kPendingOne | pending_tag(producer_.head.load(std::memory_order_relaxed)),
                     std::memory_order_release);
    } else if (pending_count(word) < kPendingCountMax) {
      pending_.fetch_add(kPendingOne, std::memory_order_release);
    }
    producer_.dropped.store(producer_.dropped.load(std::memory_order_relaxed) + 1,
                            std::memory_order_relaxed);
  }

  // Writes the header of the payload already at `at` + kHeaderBytes and makes it visible.
  void publish(uint64_t head, uint64_t at, size_t length, bool one_line, uint64_t need) noexcept {
    uint64_t drops = 0;
    // A plain load first: the read-modify-write (and the cache line the consumer may have
    // touched) is paid only after drops. The exchange is ordered before the head store below,
    // so a consumer that sees this record can no longer claim these drops.
    if (pending_count(pending_.load(std::memory_order_relaxed)) != 0) {
      drops = pending_count(pending_.exchange(0, std::memory_order_acq_rel));
      constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max();
      if (drops > kMax) {
        // The header holds no more: the rest are reported after this record (the count stays
        // exact). The count is zero now, so nothing else writes the word.
        pending_.store(((drops - kMax) << kPendingTagBits) | pending_tag(head + need),
                       std::memory_order_relaxed);
        drops = kMax;
      }
    }
    const uint32_t header[2] = {static_cast<uint32_t>(length) | (one_line ? kOneLine : 0u),
                                static_cast<uint32_t>(drops)};
    std::memcpy(producer_.data + at, header, kHeaderBytes);
    producer_.pushed.store(producer_.pushed.load(std::memory_order_relaxed) + 1,
                           std::memory_order_relaxed);
    producer_.head.store(head + need, std::memory_order_release);
  }

  bool has_room(uint64_t head, uint64_t need) noexcept {
    if (head + need - producer_.cached_tail <= producer_.capacity) return true;
    producer_.cached_tail = tail_.load(std::memory_order_acquire);
    return head + need - producer_.cached_tail <= producer_.capacity;
  }

  // The consumer's copies of the constants (the producer has its own, on its line).
  const size_t capacity_;
  const uint64_t mask_;
  char* const data_;

  // The producer's line: its index, counters and cache of the tail, its copy of the
  // constants, and the pending reservation. The consumer reads `head` once per drain; stats
  // readers read the counters.
  struct alignas(64) Producer {
    std::atomic<uint64_t> head{0};
    std::atomic<uint64_t> pushed{0};
    std::atomic<uint64_t> dropped{0};
    uint64_t cached_tail = 0;
    char* data = nullptr;
    uint64_t mask = 0;
    uint64_t capacity = 0;
    uint64_t reserved_skip = 0;  // bytes the pending reservation skips at the end
  };
  Producer producer_;
  // The drops not yet carried by a record nor claimed, and where they are. They all sit at one
  // place in the stream: after every record published before them and before any published
  // after (each publish() takes the whole count), so one position describes them, the
  // producer's head when the first of them was counted. Count and position share one word
  // (see kPendingTagBits), so that the consumer claims them only if that is where its last
  // drain ended, with one compare-and-swap. Written by the producer on drops and by the consumer
  // once per drain that finds drops it may take.
  alignas(64) std::atomic<uint64_t> pending_{0};
  // The consumer's line.
  alignas(64) std::atomic<uint64_t> tail_{0};
};

}  // namespace keygate::storage
