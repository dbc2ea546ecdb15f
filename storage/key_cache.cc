#include "storage/key_cache.h"

#include <sys/mman.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "core/assert.h"

namespace keygate::storage {
namespace {

constexpr size_t kHugePageBytes = 2 << 20;

uint64_t hash_digest(const KeyDigest& digest) noexcept {
  return XXH3_64bits(digest.data(), digest.size());
}

// Room for `count` entries at a load factor of at most 1/2, so probes stay short and every
// table has empty slots (which is what ends a probe).
size_t capacity_for(size_t count) { return std::bit_ceil(std::max<size_t>(8, 2 * count)); }

uint64_t next_random(uint64_t* state) noexcept {
  // xorshift64*: eviction choices only need to be spread out, not unpredictable.
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1DULL;
}

}  // namespace

struct KeyCache::Table {
  struct Slot {
    KeyDigest digest;
    const KeyRecord* record;  // nullptr: empty
  };

  explicit Table(size_t capacity) : mask(capacity - 1), slots(allocate_slots(capacity)) {}

  // The shard's own bits of the hash are spent on choosing the shard; the probe start uses the
  // bits above them.
  size_t home(uint64_t hash, unsigned shard_bits) const noexcept {
    return static_cast<size_t>(hash >> shard_bits) & mask;
  }

  // Index of the slot holding `digest`, or of the empty slot where the probe ended.
  size_t probe(const KeyDigest& digest, uint64_t hash, unsigned shard_bits) const noexcept {
    size_t i = home(hash, shard_bits);
    // Bounded by the capacity; the load factor keeps empty slots, so it ends much earlier.
    for (size_t n = 0; n <= mask; ++n) {
      const Slot& slot = slots[i];
      if (slot.record == nullptr || digests_equal(slot.digest, digest)) return i;
      i = (i + 1) & mask;
    }
    KEYGATE_ASSERT(false && "key cache table without an empty slot");
    return 0;
  }

  void insert_at(size_t i, const KeyDigest& digest, const KeyRecord* record) noexcept {
    KEYGATE_ASSERT(slots[i].record == nullptr && 2 * (count + 1) <= mask + 1);
    slots[i].digest = digest;
    slots[i].record = record;
    ++count;
  }

  // Empties slot `i` and shifts later members of its probe run back, so lookups never need
  // tombstones. Returns the removed record.
  const KeyRecord* erase_at(size_t i, unsigned shard_bits) noexcept {
    const KeyRecord* removed = slots[i].record;
    slots[i].record = nullptr;
    --count;
    size_t hole = i;
    size_t j = (i + 1) & mask;
    for (size_t n = 0; n < mask && slots[j].record != nullptr; ++n) {
      const size_t want = home(hash_digest(slots[j].digest), shard_bits);
      // The entry at j may move into the hole only if the hole lies on its probe path, i.e.
      // cyclically within [want, j).
      const bool on_path = hole <= j ? (want <= hole || want > j) : (want <= hole && want > j);
      if (on_path) {
        slots[hole] = slots[j];
        slots[j].record = nullptr;
        hole = j;
      }
      j = (j + 1) & mask;
    }
    return removed;
  }

  // A copy with room for `extra` more entries (rehashed, so it may also shrink).
  std::unique_ptr<Table> copy(size_t extra, unsigned shard_bits) const {
    auto table = std::make_unique<Table>(capacity_for(count + extra));
    for (size_t i = 0; i <= mask; ++i) {
      if (slots[i].record == nullptr) continue;
      const uint64_t hash = hash_digest(slots[i].digest);
      table->insert_at(table->probe(slots[i].digest, hash, shard_bits), slots[i].digest,
                       slots[i].record);
    }
    return table;
  }

  struct FreeSlots {
    void operator()(Slot* slots) const noexcept { std::free(slots); }
  };

  // Zeroed slots (all empty). Big tables get 2 MiB-aligned memory marked for transparent huge
  // pages: lookups land on random slots, and with 4 KiB pages nearly every one of them also
  // misses the TLB (a page walk costs more than the cache miss, worse under virtualization).
  static Slot* allocate_slots(size_t capacity) {
    static_assert(std::is_trivially_copyable_v<Slot>);
    const size_t bytes = capacity * sizeof(Slot);
    void* memory = nullptr;
    if (bytes >= kHugePageBytes / 2) {
      const size_t rounded = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
      memory = std::aligned_alloc(kHugePageBytes, rounded);
      // Advice only: without THP the table still works on small pages.
      if (memory != nullptr) ::madvise(memory, rounded, MADV_HUGEPAGE);
    } else {
      memory = std::malloc(bytes);
    }
    KEYGATE_ASSERT(memory != nullptr);
    std::memset(memory, 0, bytes);
    return static_cast<Slot*>(memory);
  }

  size_t mask;
  size_t count = 0;
  std::unique_ptr<Slot[], FreeSlots> slots;
};

struct KeyCache::UserMap {
  std::vector<const User*> sorted;  // by name

  std::vector<const User*>::const_iterator lower_bound(std::string_view name) const noexcept {
    return std::lower_bound(sorted.begin(), sorted.end(), name,
                            [](const User* u, std::string_view n) { return u->name < n; });
  }
};

// One write in progress: the working copies of the shards it touches (each copied once) and
// what it unpublishes.
struct KeyCache::Batch {
  std::vector<std::unique_ptr<Table>> work;  // per shard; null = untouched
  std::vector<size_t> extra;                 // inserts the batch may make, per shard
  std::vector<const KeyRecord*> garbage;     // records replaced, erased or evicted
};

KeyCache::KeyCache(Qsbr* qsbr, Options options)
    : qsbr_(qsbr),
      options_(options),
      shard_bits_(static_cast<unsigned>(std::countr_zero(options.shards))),
      shards_(new std::atomic<const Table*>[options.shards]),
      users_(new UserMap()),
      random_state_(0x9E3779B97F4A7C15ULL ^ reinterpret_cast<uintptr_t>(this)) {
  KEYGATE_ASSERT(std::has_single_bit(options.shards) && options.shards <= 65536);
  for (size_t i = 0; i < options.shards; ++i) {
    shards_[i].store(new Table(capacity_for(0)), std::memory_order_relaxed);
  }
}

KeyCache::~KeyCache() {
  for (size_t i = 0; i < options_.shards; ++i) {
    const Table* table = shards_[i].load(std::memory_order_relaxed);
    for (size_t s = 0; s <= table->mask; ++s) delete table->slots[s].record;
    delete table;
  }
  const UserMap* users = users_.load(std::memory_order_relaxed);
  for (const User* user : users->sorted) delete user;
  delete users;
}

const KeyRecord* KeyCache::find(const KeyDigest& digest) const noexcept {
  const uint64_t hash = hash_digest(digest);
  // Acquire pairs with the release in publish_locked(): the table and the records it points
  // to are fully built before the pointer is seen.
  const Table* table = shards_[hash & (options_.shards - 1)].load(std::memory_order_acquire);
  return table->slots[table->probe(digest, hash, shard_bits_)].record;
}

const User* KeyCache::find_user(std::string_view name) const noexcept {
  const UserMap* users = users_.load(std::memory_order_acquire);
  auto it = users->lower_bound(name);
  return it != users->sorted.end() && (*it)->name == name ? *it : nullptr;
}

void KeyCache::put(KeyRecord record) {
  std::vector<KeyRecord> puts;
  puts.push_back(std::move(record));
  apply({}, std::move(puts));
}

void KeyCache::erase(const KeyDigest& digest) { apply(std::span(&digest, 1), {}); }

void KeyCache::apply(std::span<const KeyDigest> erased, std::vector<KeyRecord> puts) {
  {
    std::lock_guard lock(writer_mutex_);
    // Bumped before publishing, under the writer mutex that fill() checks it under: a fill
    // that read the store before this write cannot insert after it.
    generation_.fetch_add(1, std::memory_order_acq_rel);
    Batch batch;
    apply_locked(&batch, erased, &puts);
    publish_locked(&batch);
  }
  qsbr_->reclaim();
}

bool KeyCache::fill(KeyRecord record, uint64_t seen_generation) {
  std::lock_guard lock(writer_mutex_);
  if (generation_.load(std::memory_order_relaxed) != seen_generation) return false;
  std::vector<KeyRecord> puts;
  puts.push_back(std::move(record));
  // Nothing to do only when every digest the record answers to is cached: during a rotation
  // grace the previous digest's entry may have been evicted while the current one stayed.
  const KeyRecord& r = puts[0];
  if (find(r.digest) != nullptr && (!r.previous_digest || find(*r.previous_digest) != nullptr)) {
    return true;
  }
  Batch batch;
  apply_locked(&batch, {}, &puts);
  publish_locked(&batch);
  return true;
}

void KeyCache::apply_locked(Batch* batch, std::span<const KeyDigest> erased,
                            std::vector<KeyRecord>* puts) {
  const size_t shard_mask = options_.shards - 1;
  batch->work.resize(options_.shards);
  batch->extra.assign(options_.shards, 0);
  for (const KeyRecord& record : *puts) {
    ++batch->extra[hash_digest(record.digest) & shard_mask];
    if (record.previous_digest) ++batch->extra[hash_digest(*record.previous_digest) & shard_mask];
  }
  auto working = [&](size_t shard) -> Table& {
    if (!batch->work[shard]) {
      batch->work[shard] =
          shards_[shard].load(std::memory_order_relaxed)->copy(batch->extra[shard], shard_bits_);
    }
    return *batch->work[shard];
  };

  for (const KeyDigest& digest : erased) {
    const uint64_t hash = hash_digest(digest);
    const size_t shard = hash & shard_mask;
    if (!batch->work[shard]) {
      // Not cached (common in a partial cache): no need to copy the shard.
      const Table* current = shards_[shard].load(std::memory_order_relaxed);
      if (current->slots[current->probe(digest, hash, shard_bits_)].record == nullptr) continue;
    }
    Table& table = working(shard);
    const size_t i = table.probe(digest, hash, shard_bits_);
    if (table.slots[i].record == nullptr) continue;
    batch->garbage.push_back(table.erase_at(i, shard_bits_));
    size_.fetch_sub(1, std::memory_order_relaxed);
  }
  auto put_entry = [&](const KeyDigest& digest, KeyRecord record) {
    const uint64_t hash = hash_digest(digest);
    const size_t shard = hash & shard_mask;
    Table& table = working(shard);
    size_t i = table.probe(digest, hash, shard_bits_);
    if (table.slots[i].record != nullptr) {
      batch->garbage.push_back(table.slots[i].record);
      table.slots[i].record = new KeyRecord(std::move(record));
      return;
    }
    if (options_.max_keys != 0 && size_.load(std::memory_order_relaxed) >= options_.max_keys) {
      evict_one_locked(batch, shard);
      i = table.probe(digest, hash, shard_bits_);  // the eviction may have shifted slots
    }
    table.insert_at(i, digest, new KeyRecord(std::move(record)));
    size_.fetch_add(1, std::memory_order_relaxed);
  };
  for (KeyRecord& record : *puts) {
    // Each entry owns its copy, so erasing, replacing or evicting one never frees what the
    // other still points to.
    if (record.previous_digest) put_entry(*record.previous_digest, record);
    const KeyDigest digest = record.digest;
    put_entry(digest, std::move(record));
  }
}

void KeyCache::evict_one_locked(Batch* batch, size_t shard) {
  for (size_t k = 0; k < options_.shards; ++k) {
    const size_t s = (shard + k) & (options_.shards - 1);
    const Table* current =
        batch->work[s] ? batch->work[s].get() : shards_[s].load(std::memory_order_relaxed);
    if (current->count == 0) continue;
    if (!batch->work[s]) {
      batch->work[s] = current->copy(batch->extra[s], shard_bits_);
    }
    Table& table = *batch->work[s];
    size_t i = static_cast<size_t>(next_random(&random_state_)) & table.mask;
    while (table.slots[i].record == nullptr) i = (i + 1) & table.mask;  // count > 0: ends
    // Partial from now on: store before the table without the victim is published (release),
    // so a reader that misses the victim also sees complete() == false.
    complete_.store(false, std::memory_order_release);
    batch->garbage.push_back(table.erase_at(i, shard_bits_));
    size_.fetch_sub(1, std::memory_order_relaxed);
    evictions_total_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
}

void KeyCache::publish_locked(Batch* batch) {
  std::vector<const Table*> old_tables;
  for (size_t s = 0; s < batch->work.size(); ++s) {
    if (!batch->work[s]) continue;
    old_tables.push_back(shards_[s].load(std::memory_order_relaxed));
    shards_[s].store(batch->work[s].release(), std::memory_order_release);
  }
  if (old_tables.empty() && batch->garbage.empty()) return;
  qsbr_->retire([tables = std::move(old_tables), records = std::move(batch->garbage)] {
    for (const Table* table : tables) delete table;
    for (const KeyRecord* record : records) delete record;
  });
}

void KeyCache::put_user(User user) {
  {
    std::lock_guard lock(writer_mutex_);
    auto users = std::make_unique<UserMap>(*users_.load(std::memory_order_relaxed));
    auto it = users->lower_bound(user.name);
    const size_t at = static_cast<size_t>(it - users->sorted.cbegin());
    std::vector<const User*> garbage;
    const User* added = new User(std::move(user));
    if (at < users->sorted.size() && users->sorted[at]->name == added->name) {
      garbage.push_back(users->sorted[at]);
      users->sorted[at] = added;
    } else {
      users->sorted.insert(users->sorted.begin() + static_cast<ptrdiff_t>(at), added);
    }
    replace_users_locked(std::move(users), std::move(garbage));
  }
  qsbr_->reclaim();
}

void KeyCache::erase_user(std::string_view name) {
  {
    std::lock_guard lock(writer_mutex_);
    const UserMap* current = users_.load(std::memory_order_relaxed);
    auto it = current->lower_bound(name);
    if (it == current->sorted.end() || (*it)->name != name) return;
    const size_t at = static_cast<size_t>(it - current->sorted.cbegin());
    auto users = std::make_unique<UserMap>(*current);
    std::vector<const User*> garbage{users->sorted[at]};
    users->sorted.erase(users->sorted.begin() + static_cast<ptrdiff_t>(at));
    replace_users_locked(std::move(users), std::move(garbage));
  }
  qsbr_->reclaim();
}

void KeyCache::set_users(std::vector<User> users) {
  {
    std::lock_guard lock(writer_mutex_);
    std::stable_sort(users.begin(), users.end(),
                     [](const User& a, const User& b) { return a.name < b.name; });
    auto map = std::make_unique<UserMap>();
    map->sorted.reserve(users.size());
    for (User& user : users) {
      // One entry per name keeps lookups exact: the first of duplicates wins.
      if (!map->sorted.empty() && map->sorted.back()->name == user.name) continue;
      map->sorted.push_back(new User(std::move(user)));
    }
    const UserMap* current = users_.load(std::memory_order_relaxed);
    std::vector<const User*> garbage(current->sorted.begin(), current->sorted.end());
    replace_users_locked(std::move(map), std::move(garbage));
  }
  qsbr_->reclaim();
}

void KeyCache::replace_users_locked(std::unique_ptr<UserMap> users,
                                    std::vector<const User*> garbage) {
  const UserMap* old = users_.load(std::memory_order_relaxed);
  users_.store(users.release(), std::memory_order_release);
  qsbr_->retire([old, garbage = std::move(garbage)] {
    delete old;
    for (const User* user : garbage) delete user;
  });
}

void KeyCache::set_complete(bool complete) noexcept {
  complete_.store(complete, std::memory_order_release);
}

}  // namespace keygate::storage
