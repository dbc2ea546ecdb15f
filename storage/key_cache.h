// KeyCache: the in-memory key and user tables that workers read without locks.
//
// Threading: find()/find_user()/complete()/generation() run on worker threads that are online
// readers of the cache's Qsbr; they take no lock, never block and never allocate. Writers (any
// other thread) are serialized by a mutex readers never touch: each write copies the shards it
// changes, publishes the copies with a release store and retires the old tables and records to
// the Qsbr. Authoritative writes (put, erase, apply, the user calls) then wait for a grace
// period before returning, so when they return no reader can still see the old state.
//
// Layout: S shards (a power of two), shard = XXH3_64bits(digest) & (S-1). Each shard is an
// immutable open-addressing table (linear probing, load <= 1/2) of digest -> const KeyRecord*,
// compared with digests_equal (constant time). A record in a rotation's grace period
// (previous_digest set) has a second entry under its previous digest, holding its own copy of
// the record; size() and max_keys count entries. Users: one immutable sorted array of const
// User*, replaced whole on each change (users are few).
//
// Capacity: with max_keys > 0 the cache holds at most max_keys entries. Inserting a new digest
// when full evicts one entry first: random replacement, from the inserted digest's shard (a
// uniformly random slot, then the next occupied one), or from the next non-empty shard when
// that one is empty. An eviction makes the cache partial for good (complete() == false).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "core/api_key.h"
#include "core/permissions.h"
#include "storage/qsbr.h"

namespace keygate::storage {

class KeyCache {
 public:
  struct Options {
    size_t shards = 64;   // a power of two, 1..65536
    size_t max_keys = 0;  // 0 = unlimited
  };

  // `qsbr` protects the tables; it must outlive the cache.
  KeyCache(Qsbr* qsbr, Options options);
  // Frees every table and record. No reader may be online any more.
  ~KeyCache();
  KeyCache(const KeyCache&) = delete;
  KeyCache& operator=(const KeyCache&) = delete;

  // --- Readers (online Qsbr reader). The pointers stay valid until the reader's next
  // quiescent point (Qsbr::online/offline, i.e. the worker's next before_wait()).

  // The record filed under `digest` (its digest or previous_digest), or nullptr. Wait-free, no
  // allocation.
  const KeyRecord* find(const KeyDigest& digest) const noexcept;
  // The user called `name`, or nullptr. No allocation.
  const User* find_user(std::string_view name) const noexcept;
  // True while the cache holds every key of the store, so that a miss means "no such key".
  // Load it after a find() that missed (a find() that sees an eviction also sees this false).
  bool complete() const noexcept { return complete_.load(std::memory_order_acquire); }
  // Bumped by every authoritative key write (put, erase, apply), never by fill(). A reader
  // that saw generation g before reading the store knows no key changed meanwhile while the
  // generation is still g: fill() and negative caching rely on it. Starts at 1.
  uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }

  // --- Writers (any thread that is not an online reader). All allocate; all but fill() block
  // for a grace period (Qsbr::reclaim) after publishing.

  // Inserts or replaces the entries of `record.digest` (and of record.previous_digest, when
  // set) with the record.
  void put(KeyRecord record);
  // Removes the entry of `digest`, if cached (a record's other entry stays).
  void erase(const KeyDigest& digest);
  // Removes `erased`, then inserts or replaces `puts`, copying each touched shard once and
  // waiting for one grace period: for start-up fill, bulk import and rotation (erase the old
  // digest, put the new record).
  void apply(std::span<const KeyDigest> erased, std::vector<KeyRecord> puts);
  // Inserts a record read from the store on a cache miss, under each digest it answers to,
  // unless an authoritative write came in since the reader saw `seen_generation` (the record
  // may be stale then): then returns false and inserts nothing. Existing entries are kept (a
  // record whose digests are all cached already changes nothing). Does not wait: its garbage is freed by the
  // next reclaim (any authoritative write, or Qsbr::reclaim()).
  bool fill(KeyRecord record, uint64_t seen_generation);

  // Inserts or replaces the user with `user.name`.
  void put_user(User user);
  // Removes the user called `name`, if present.
  void erase_user(std::string_view name);
  // Replaces every user (start-up fill).
  void set_users(std::vector<User> users);

  // Declares whether the cache now holds every key of the store. The owner sets it after the
  // start-up fill; an eviction clears it. Does not block.
  void set_complete(bool complete) noexcept;

  // Records cached, and records evicted so far. Any thread.
  size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }
  uint64_t evictions_total() const noexcept {
    return evictions_total_.load(std::memory_order_relaxed);
  }

 private:
  struct Table;
  struct UserMap;
  struct Batch;

  void apply_locked(Batch* batch, std::span<const KeyDigest> erased, std::vector<KeyRecord>* puts);
  void evict_one_locked(Batch* batch, size_t shard);
  void publish_locked(Batch* batch);
  void replace_users_locked(std::unique_ptr<UserMap> users, std::vector<const User*> garbage);

  Qsbr* const qsbr_;
  const Options options_;
  const unsigned shard_bits_;
  std::unique_ptr<std::atomic<const Table*>[]> shards_;
  std::atomic<const UserMap*> users_;
  std::atomic<bool> complete_{false};
  std::atomic<uint64_t> generation_{1};
  std::atomic<size_t> size_{0};
  std::atomic<uint64_t> evictions_total_{0};

  std::mutex writer_mutex_;
  uint64_t random_state_;  // eviction choices; writer_mutex_
};

}  // namespace keygate::storage
