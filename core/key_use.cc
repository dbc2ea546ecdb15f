#include "core/key_use.h"

#include <bit>
#include <cstring>

namespace keygate {
namespace {

size_t round_up_pow2(size_t n) { return std::bit_ceil(n < 1 ? size_t{1} : n); }

// FNV-1a: ids are short (13 bytes) and their characters random, so a simple hash spreads them
// over the table as well as a strong one would, at a few cycles.
uint64_t hash_id(std::string_view id) noexcept {
  uint64_t h = 14695981039346656037ull;
  for (char c : id) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

KeyUseQueue::KeyUseQueue(size_t capacity)
    : mask_(round_up_pow2(capacity) - 1), slots_(new KeyUse[mask_ + 1]) {}

bool KeyUseQueue::push(const KeyUse& use) noexcept {
  const uint64_t tail = tail_.load(std::memory_order_relaxed);
  if (tail - head_.load(std::memory_order_acquire) > mask_) {
    // Only this thread writes dropped_: a plain read-modify-write of its own counter, no
    // atomic RMW instruction.
    dropped_.store(dropped_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return false;
  }
  slots_[tail & mask_] = use;
  tail_.store(tail + 1, std::memory_order_release);
  return true;
}

bool KeyUseQueue::pop(KeyUse* out) noexcept {
  const uint64_t head = head_.load(std::memory_order_relaxed);
  if (head == tail_.load(std::memory_order_acquire)) return false;
  *out = slots_[head & mask_];
  head_.store(head + 1, std::memory_order_release);
  return true;
}

KeyUseReporter::KeyUseReporter(KeyUseSink* sink, unsigned worker, size_t slots)
    : sink_(sink), worker_(worker), mask_(round_up_pow2(slots) - 1), slots_(new Slot[mask_ + 1]) {}

bool KeyUseReporter::note(std::string_view key_id, int64_t now) noexcept {
  if (sink_ == nullptr || key_id.empty() || key_id.size() > kKeyUseIdBytesMax) return false;
  Slot& slot = slots_[hash_id(key_id) & mask_];
  const bool same = slot.id_bytes == key_id.size() &&
                    std::memcmp(slot.id, key_id.data(), key_id.size()) == 0;
  // `now < reported_at`: the wall clock stepped back; report at once rather than stay silent
  // until it catches up.
  if (same && now >= slot.reported_at && now - slot.reported_at < kKeyUseGranularitySeconds) {
    return false;
  }
  KeyUse use;
  use.at = now;
  use.id_bytes = static_cast<uint8_t>(key_id.size());
  std::memcpy(use.id, key_id.data(), key_id.size());
  // Remember only a report that got through: after a drop the key's next request tries again.
  if (!sink_->report(worker_, use)) return false;
  slot.reported_at = now;
  slot.id_bytes = use.id_bytes;
  std::memcpy(slot.id, key_id.data(), key_id.size());
  return true;
}

}  // namespace keygate
