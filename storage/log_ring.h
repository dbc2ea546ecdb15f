// LogRing: a bounded single-producer single-consumer byte ring of length-prefixed records, the
// per-worker buffer between a worker and the access-log writer thread.
//
// Threading: exactly one producer thread calls try_push() and exactly one consumer thread
// calls drain() and take_pending_drops(); any thread may read the counters. try_push() is
// wait-free: no lock, no allocation, no syscall (a few atomics and a memcpy). The producer and
// consumer indices live on separate cache lines, and each side caches the other's index, so
// in the steady state neither side touches the other's line on every record.
//
// When full, try_push() drops the record and counts it: in dropped() and in a pending-drop
// count. The next record pushed carries that pending count in its header (so the consumer
// learns where in this worker's stream the drops happened); drops with no record after them
// yet are claimed by the consumer with take_pending_drops(). Every drop is reported exactly
// once, by one of the two.
//
// Layout: each record is an 8-byte header {uint32 length, uint32 drops_before} followed by
// the payload, padded to 8 bytes. A payload may wrap around the end of the buffer (drain()
// hands it out in two parts); a header never does.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>

#include "core/assert.h"

namespace keygate::storage {

class LogRing {
 public:
  static constexpr size_t kHeaderBytes = 8;
  static constexpr size_t kCapacityBytesMin = 64;

  // Capacity is `capacity_bytes` rounded down to a power of two; at least kCapacityBytesMin.
  // Allocates the buffer once.
  explicit LogRing(size_t capacity_bytes)
      : capacity_(std::bit_floor(capacity_bytes)),
        mask_(capacity_ - 1),
        data_(new char[capacity_]) {
    KEYGATE_ASSERT(capacity_bytes >= kCapacityBytesMin);
    producer_.data = data_.get();
    producer_.mask = mask_;
    producer_.capacity = capacity_;
  }
  LogRing(const LogRing&) = delete;
  LogRing& operator=(const LogRing&) = delete;

  size_t capacity() const noexcept { return capacity_; }

  // Bytes a record of `payload_bytes` occupies in the ring.
  static constexpr uint64_t footprint(size_t payload_bytes) noexcept {
    return kHeaderBytes + ((static_cast<uint64_t>(payload_bytes) + 7) & ~uint64_t{7});
  }

  // Producer only. Copies `record` in, or drops it (false) when the free space is too small;
  // a record whose footprint exceeds capacity() is always dropped. Wait-free.
  bool try_push(std::string_view record) noexcept {
    const uint64_t need = footprint(record.size());
    const uint64_t head = producer_.head.load(std::memory_order_relaxed);
    if (need > producer_.capacity || record.size() > std::numeric_limits<uint32_t>::max() ||
        !has_room(head, need)) {
      pending_drops_.fetch_add(1, std::memory_order_relaxed);
      producer_.dropped.store(producer_.dropped.load(std::memory_order_relaxed) + 1,
                              std::memory_order_relaxed);
      return false;
    }
    uint64_t drops = 0;
    // A plain load first: the read-modify-write (and the cache line the consumer may have
    // touched) is paid only after drops. The exchange is ordered before the head store below,
    // so a consumer that sees this record can no longer claim these drops.
    if (pending_drops_.load(std::memory_order_relaxed) != 0) {
      drops = pending_drops_.exchange(0, std::memory_order_acq_rel);
      constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max();
      if (drops > kMax) {
        pending_drops_.fetch_add(drops - kMax, std::memory_order_relaxed);
        drops = kMax;
      }
    }
    char* const data = producer_.data;
    const uint64_t at = head & producer_.mask;
    const uint32_t header[2] = {static_cast<uint32_t>(record.size()), static_cast<uint32_t>(drops)};
    std::memcpy(data + at, header, kHeaderBytes);
    const uint64_t payload_at = (at + kHeaderBytes) & producer_.mask;
    const size_t first = std::min<size_t>(record.size(), producer_.capacity - payload_at);
    std::memcpy(data + payload_at, record.data(), first);
    if (first < record.size()) std::memcpy(data, record.data() + first, record.size() - first);
    producer_.pushed.store(producer_.pushed.load(std::memory_order_relaxed) + 1,
                           std::memory_order_relaxed);
    producer_.head.store(head + need, std::memory_order_release);
    return true;
  }

  // Consumer only. Hands every record pushed before the call to
  // `on_record(std::string_view part1, std::string_view part2, uint32_t drops_before)` in
  // order (the payload is part1 + part2; part2 is empty unless it wraps), then frees their
  // space. The views are valid only during the callback. Returns the number of records.
  template <typename F>
  uint64_t drain(F&& on_record) {
    const uint64_t head = producer_.head.load(std::memory_order_acquire);
    uint64_t tail = tail_.load(std::memory_order_relaxed);
    uint64_t records = 0;
    while (tail != head) {
      const uint64_t at = tail & mask_;
      uint32_t header[2];
      std::memcpy(header, data_.get() + at, kHeaderBytes);
      const size_t length = header[0];
      KEYGATE_ASSERT(footprint(length) <= head - tail);
      const uint64_t payload_at = (at + kHeaderBytes) & mask_;
      const size_t first = std::min<size_t>(length, capacity_ - payload_at);
      on_record(std::string_view(data_.get() + payload_at, first),
                std::string_view(data_.get(), length - first), header[1]);
      tail += footprint(length);
      ++records;
    }
    tail_.store(tail, std::memory_order_release);
    return records;
  }

  // Consumer only. Drops not yet carried by a pushed record; they are reported by the caller
  // from now on. Call after drain() so they are placed after the records drained.
  uint64_t take_pending_drops() noexcept {
    if (pending_drops_.load(std::memory_order_relaxed) == 0) return 0;
    return pending_drops_.exchange(0, std::memory_order_acq_rel);
  }

  // Any thread. Records accepted / refused by try_push() so far.
  uint64_t pushed() const noexcept { return producer_.pushed.load(std::memory_order_relaxed); }
  uint64_t dropped() const noexcept { return producer_.dropped.load(std::memory_order_relaxed); }

 private:
  bool has_room(uint64_t head, uint64_t need) noexcept {
    if (head + need - producer_.cached_tail <= producer_.capacity) return true;
    producer_.cached_tail = tail_.load(std::memory_order_acquire);
    return head + need - producer_.cached_tail <= producer_.capacity;
  }

  // The consumer's copies of the constants (the producer has its own, on its line).
  const size_t capacity_;
  const uint64_t mask_;
  const std::unique_ptr<char[]> data_;

  // The producer's line: its index, counters and cache of the tail, and its copy of the
  // constants. The consumer reads `head` once per drain; stats readers read the counters.
  struct alignas(64) Producer {
    std::atomic<uint64_t> head{0};
    std::atomic<uint64_t> pushed{0};
    std::atomic<uint64_t> dropped{0};
    uint64_t cached_tail = 0;
    char* data = nullptr;
    uint64_t mask = 0;
    uint64_t capacity = 0;
  };
  Producer producer_;
  // Written by the producer on drops and by the consumer once per drain that finds drops.
  alignas(64) std::atomic<uint64_t> pending_drops_{0};
  // The consumer's line.
  alignas(64) std::atomic<uint64_t> tail_{0};
};

}  // namespace keygate::storage
