// KeyService: the KeyDirectory workers use (KeyCache in front of KeyStore), and the one place
// keys and users are changed.
//
// Owns the store, the cache, the cache's Qsbr, a bounded negative cache and a small fetch pool.
// Threading: find_key()/find_user()/fetch() run on worker threads (worker i must be reader i:
// wire loop_observer(i) into worker i's loop), never block and never take a lock a writer
// holds. The mutations and ensure_admin_key() are thread-safe, serialized among themselves,
// and block (synced store write, then a cache grace period): call them off the workers. When
// one returns, every worker sees its effect; in particular, after delete_key() returns no
// worker can find the key any more.
//
// Shutdown: stop the workers (join their threads) before destroying the service. A mutation
// made after a worker's loop exited waits for that worker forever unless its observer went
// offline: call loop_observer(i)->before_wait() once more when worker i's loop ends.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/api_key.h"
#include "core/handler.h"
#include "core/key_directory.h"
#include "core/permissions.h"
#include "storage/key_cache.h"
#include "storage/key_store.h"
#include "storage/qsbr.h"
#include "storage/system_random.h"

namespace keygate::storage {

class KeyService final : public KeyDirectory {
 public:
  struct Options {
    size_t workers = 1;                     // readers of the cache: one per worker thread
    size_t max_keys = 0;                    // cache entries (a key in a rotation's grace
                                            // period takes two); 0 = all keys
    size_t negative_cache_entries = 65536;  // unknown digests remembered (partial cache only),
                                            // rounded up to a power of two; 0 = none
    size_t fetch_threads = 1;               // store reads on a partial-cache miss
    size_t fetch_queue_max = 1024;          // pending fetches; beyond it fetch() fails at once
    size_t cache_shards = 64;               // a power of two
    // Test hook (KEYGATE_TEST_FETCH_DELAY_MS, honoured by test builds only): every fetch waits
    // this long before it reads the store, so tests can hold a request in a fetch for sure.
    uint32_t fetch_delay_ms = 0;
  };

  struct Stats {
    size_t cached_keys = 0;
    bool cache_complete = false;
    uint64_t evictions_total = 0;
    uint64_t fetches_total = 0;         // fetches answered by the pool
    uint64_t fetch_rejected_total = 0;  // fetches failed at once: queue full or closing
  };

  // What ensure_admin_key() did.
  struct AdminBootstrap {
    bool created = false;         // false: a usable admin key exists, nothing was written
    bool recovered = false;       // created in a store that had keys, none a usable admin key
    std::string id;               // the new key's id
    std::string generated_value;  // the generated plaintext (empty if the caller gave one):
                                  // show it once, it is stored nowhere
  };
  // Fills the span with random bytes; false when it cannot.
  using RandomSource = std::function<bool(std::span<uint8_t>)>;

  KeyService();
  // Marks every reader offline (the workers must have stopped), stops the pool (stop_fetches())
  // and closes the store.
  ~KeyService() override;
  KeyService(const KeyService&) = delete;
  KeyService& operator=(const KeyService&) = delete;

  // Opens the store in <data_dir>/db (data_dir must exist and be locked by the caller, see
  // DataDir), loads up to max_keys keys and every user into the cache and starts the fetch
  // pool. Fails with one line in `error`. Blocks for the whole load; start-up only. Nothing
  // else may be called before it succeeds.
  bool open(const std::string& data_dir, const Options& options, std::string* error);

  // The hooks worker `worker_index` (< options.workers) must call around its blocking wait.
  LoopObserver* loop_observer(size_t worker_index) noexcept;

  // KeyDirectory (worker threads). find_key: kFound from the cache; kUnknown when the cache is
  // complete or remembers the digest as unknown; kNotCached otherwise. find_user: from the
  // cache, which holds every user. key_generation: the cache's generation (bumped by every key
  // mutation before its grace period). fetch: queued for the pool, or posted at once with
  // out->failed when the queue is full; the pool reads the key record only.
  Lookup find_key(const KeyDigest& digest, const KeyRecord** record) noexcept override;
  const User* find_user(std::string_view name) noexcept override;
  uint64_t key_generation() noexcept override;
  void fetch(const KeyDigest& digest, FetchResult* out, ResumeTicket ticket) noexcept override;

  // Mutations: synced store write, cache publish, grace period. Each blocks; none throws.
  //
  // Creates a key. conflict: the digest or id exists; not_found: record.user names no user.
  Status create_key(const KeyRecord& record);
  // A digest that keeps working after a rotation, until valid_until (Unix seconds, exclusive).
  struct PreviousDigest {
    KeyDigest digest{};
    int64_t valid_until = 0;
  };
  // Replaces the key with record.id (record.previous_digest/previous_valid_until are ignored).
  // With `previous` (a rotation with a grace period), the key is also found by
  // previous->digest, and authentication accepts that value until previous->valid_until.
  // Without it, a new digest (rotation) revokes the old one, and any earlier previous digest,
  // at once; an unchanged digest keeps the previous digest (even past its
  // deadline, when authentication already refuses it). not_found: no such id, or
  // record.user names no user; conflict: the new or previous digest is another key's.
  Status update_key(const KeyRecord& record,
                    const std::optional<PreviousDigest>& previous = std::nullopt);
  // Deletes the key with `id` (not_found when none), under its digest and its previous digest;
  // `*deleted` gets the removed record.
  Status delete_key(std::string_view id, KeyRecord* deleted = nullptr);
  // Creates or replaces a user.
  Status put_user(const User& user);
  // Deletes a user (not_found when none). Its keys stay but are denied (user_not_permitted).
  Status delete_user(std::string_view name);
  // Creates every record or none (records validated by the caller). conflict: a digest or id
  // exists or repeats within `records`; not_found: a record's user does not exist. On failure
  // `*failed_index` (when not null) is the first offending record.
  Status import_keys(std::vector<KeyRecord> records, size_t* failed_index = nullptr);

  // Bootstrap: when the store holds no usable admin key — no key at all (first start), or
  // none that is enabled, unexpired at `now` and has "admin" (every one deleted, disabled,
  // expired or stripped of admin: the instance could not be administered any more) — creates
  // an "admin" key (apis = {"admin"}). On first start its value is `value`, or, when `value` is
  // empty, a generated one returned in out->generated_value; a recovery always generates one
  // (`value` may be a value since deleted or rotated away). Does nothing while a usable admin
  // key exists. An empty `random` means system_random. invalid_argument: `value` is not a valid
  // key value; io_error: `random` failed or the store did.
  Status ensure_admin_key(std::string_view value, const RandomSource& random, int64_t now,
                          AdminBootstrap* out);

  // Stops the fetch pool: the fetch being read finishes, the queued ones are answered
  // `failed` without reading the store, each ticket is posted, and fetch() fails at once from
  // then on. Blocks until the pool's threads have exited. Call once the workers have stopped
  // (their threads joined), before their deferred requests are settled (Server::
  // settle_deferred), so that a request cut at the drain deadline while its key was being
  // fetched is logged and its state freed. Idempotent; the destructor calls it.
  void stop_fetches();

  // Records keys' last uses (LastUsedWriter's batches): KeyStore::put_last_used, unsynced, a
  // key deleted meanwhile skipped. Not a mutation of any key (no cache publish, no grace
  // period): workers never read last uses. Thread-safe; blocks.
  Status record_last_used(std::span<const KeyStore::LastUsed> entries, size_t* written) {
    return store_.put_last_used(entries, written);
  }

  // Read access for the admin API (the store's reads are thread-safe and block).
  const KeyStore& store() const noexcept { return store_; }
  Stats stats() const noexcept;

 private:
  class NegativeCache;
  struct FetchPool;

  Status check_user_exists(const std::optional<std::string>& user) const;
  void run_fetcher();

  KeyStore store_;
  std::unique_ptr<Qsbr> qsbr_;
  std::unique_ptr<KeyCache> cache_;
  std::unique_ptr<NegativeCache> negative_;
  std::unique_ptr<FetchPool> pool_;
  uint32_t fetch_delay_ms_ = 0;
  std::mutex mutation_mutex_;  // serializes mutations (their checks, writes and publishes)
  std::atomic<uint64_t> fetches_total_{0};
  std::atomic<uint64_t> fetch_rejected_total_{0};
};

}  // namespace keygate::storage
