#include "storage/key_service.h"

#include <pthread.h>
#include <string.h>  // explicit_bzero

#include <array>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <set>
#include <thread>

#include "core/assert.h"

namespace keygate::storage {
namespace {

constexpr std::string_view kBootstrapDescription = "bootstrap admin key";
// The pool frees what its cache fills replaced when its queue runs empty, and at least this
// often under a steady stream of fetches (each reclaim waits for a grace period).
constexpr uint32_t kFillsPerReclaimMax = 64;

}  // namespace

// Digests the store recently said it does not have. A direct-mapped table of full digests,
// each stamped with the cache generation it was looked up at; an entry is valid only while
// the generation is unchanged, so any key write (creation in particular) invalidates all
// entries at once and a new key is never hidden. Readers are lock-free (a seqlock per entry;
// a torn read counts as a miss); writers (fetch threads) are serialized by a mutex.
class KeyService::NegativeCache {
 public:
  explicit NegativeCache(size_t entries)
      : mask_(entries == 0 ? 0 : std::bit_ceil(entries) - 1),
        entries_(entries == 0 ? nullptr : new Entry[mask_ + 1]) {}

  // True when `digest` was found unknown at `generation`. Worker threads; wait-free.
  bool contains(const KeyDigest& digest, uint64_t generation) const noexcept {
    if (!entries_) return false;
    const Entry& e = entries_[index(digest)];
    // Seqlock read side without fences: the data loads are acquire, so the re-check of seq
    // cannot move above them, and seeing any word of a newer write (a release store) makes
    // that write's odd seq visible to the re-check.
    const uint32_t before = e.seq.load(std::memory_order_acquire);
    if (before & 1) return false;
    const uint64_t stamped = e.generation.load(std::memory_order_acquire);
    KeyDigest seen;
    for (size_t w = 0; w < 4; ++w) {
      const uint64_t word = e.words[w].load(std::memory_order_acquire);
      std::memcpy(seen.data() + 8 * w, &word, 8);
    }
    if (e.seq.load(std::memory_order_relaxed) != before) return false;
    return stamped == generation && digests_equal(seen, digest);
  }

  // Remembers `digest` as unknown at `generation`, replacing whatever shared its slot.
  void insert(const KeyDigest& digest, uint64_t generation) noexcept {
    if (!entries_) return;
    std::lock_guard lock(writer_mutex_);
    Entry& e = entries_[index(digest)];
    // Seqlock write side: odd seq, data (release stores, so none can be seen without the odd
    // seq before it), even seq.
    const uint32_t seq = e.seq.load(std::memory_order_relaxed);
    e.seq.store(seq + 1, std::memory_order_relaxed);
    e.generation.store(generation, std::memory_order_release);
    for (size_t w = 0; w < 4; ++w) {
      uint64_t word;
      std::memcpy(&word, digest.data() + 8 * w, 8);
      e.words[w].store(word, std::memory_order_release);
    }
    e.seq.store(seq + 2, std::memory_order_release);
  }

 private:
  struct alignas(64) Entry {
    std::atomic<uint32_t> seq{0};
    std::atomic<uint64_t> generation{0};  // 0: empty (generations start at 1)
    std::atomic<uint64_t> words[4] = {};
  };

  size_t index(const KeyDigest& digest) const noexcept {
    // A SHA-256 digest is already uniform; no need to hash it again.
    uint64_t bits;
    std::memcpy(&bits, digest.data() + 8, sizeof(bits));
    return static_cast<size_t>(bits) & mask_;
  }

  const size_t mask_;
  std::unique_ptr<Entry[]> entries_;
  std::mutex writer_mutex_;
};

struct KeyService::FetchPool {
  struct Job {
    KeyDigest digest{};
    FetchResult* out = nullptr;
    ResumeTicket ticket;
  };

  explicit FetchPool(size_t queue_max) : ring(queue_max) {}

  std::mutex mutex;
  std::condition_variable wake;
  std::vector<Job> ring;  // preallocated: queueing never allocates
  size_t head = 0;
  size_t queued = 0;
  bool stopping = false;
  std::vector<std::thread> threads;
};

KeyService::KeyService() = default;

KeyService::~KeyService() { stop_fetches(); }

void KeyService::stop_fetches() {
  // The workers have stopped (the contract), but a worker whose loop exited right after
  // after_wait() is still marked online, and the pool's last reclaim would wait for it forever.
  if (qsbr_) {
    for (size_t i = 0; i < qsbr_->readers(); ++i) qsbr_->offline(i);
  }
  if (pool_) {
    {
      std::lock_guard lock(pool_->mutex);
      pool_->stopping = true;
    }
    pool_->wake.notify_all();
    for (std::thread& t : pool_->threads) t.join();
    pool_->threads.clear();
  }
}

bool KeyService::open(const std::string& data_dir, const Options& options, std::string* error) {
  KEYGATE_ASSERT(!cache_ && options.fetch_threads >= 1 && options.fetch_queue_max >= 1);
  const std::string path = data_dir + "/db";
  if (!store_.open(path, error)) return false;

  qsbr_ = std::make_unique<Qsbr>(options.workers);
  cache_ = std::make_unique<KeyCache>(
      qsbr_.get(), KeyCache::Options{.shards = options.cache_shards, .max_keys = options.max_keys});
  negative_ = std::make_unique<NegativeCache>(options.negative_cache_entries);

  std::vector<KeyRecord> records;
  // Cache entries, not records: a key in a rotation's grace period takes two.
  size_t entries = 0;
  bool all_loaded = true;
  Status s = store_.for_each_key([&](KeyRecord& record) {
    const size_t needed = record.previous_digest ? 2 : 1;
    if (options.max_keys == 0 || entries + needed <= options.max_keys) {
      entries += needed;
      records.push_back(std::move(record));
    } else {
      all_loaded = false;
    }
    return true;
  });
  if (!s.is_ok()) {
    *error = "cannot load keys from " + path + ": " + s.message();
    return false;
  }
  cache_->apply({}, std::move(records));
  cache_->set_complete(all_loaded);

  std::vector<User> users;
  s = store_.for_each_user([&](User& user) {
    users.push_back(std::move(user));
    return true;
  });
  if (!s.is_ok()) {
    *error = "cannot load users from " + path + ": " + s.message();
    return false;
  }
  cache_->set_users(std::move(users));

  fetch_delay_ms_ = options.fetch_delay_ms;
  pool_ = std::make_unique<FetchPool>(options.fetch_queue_max);
  for (size_t i = 0; i < options.fetch_threads; ++i) {
    pool_->threads.emplace_back([this] {
      pthread_setname_np(pthread_self(), "kg-fetch");
      run_fetcher();
    });
  }
  return true;
}

LoopObserver* KeyService::loop_observer(size_t worker_index) noexcept {
  return qsbr_->observer(worker_index);
}

KeyDirectory::Lookup KeyService::find_key(const KeyDigest& digest,
                                          const KeyRecord** record) noexcept {
  if (const KeyRecord* found = cache_->find(digest)) {
    *record = found;
    return Lookup::kFound;
  }
  // Both checks come after the probe: an eviction clears complete() before it unpublishes.
  if (cache_->complete()) return Lookup::kUnknown;
  if (negative_->contains(digest, cache_->generation())) return Lookup::kUnknown;
  return Lookup::kNotCached;
}

const User* KeyService::find_user(std::string_view name) noexcept {
  return cache_->find_user(name);
}

uint64_t KeyService::key_generation() noexcept { return cache_->generation(); }

void KeyService::fetch(const KeyDigest& digest, FetchResult* out, ResumeTicket ticket) noexcept {
  bool queued = false;
  if (pool_) {
    // Held only for a few stores by workers and pool threads, never across I/O.
    std::lock_guard lock(pool_->mutex);
    if (!pool_->stopping && pool_->queued < pool_->ring.size()) {
      FetchPool::Job& job = pool_->ring[(pool_->head + pool_->queued) % pool_->ring.size()];
      job.digest = digest;
      job.out = out;
      job.ticket = ticket;
      ++pool_->queued;
      queued = true;
    }
  }
  if (queued) {
    pool_->wake.notify_one();
    return;
  }
  // Full (or closing): answer now. The handler turns `failed` into a 503, not a 401.
  fetch_rejected_total_.fetch_add(1, std::memory_order_relaxed);
  *out = FetchResult();
  out->failed = true;
  ticket.post();
}

void KeyService::run_fetcher() {
  uint32_t unreclaimed_fills = 0;
  for (;;) {
    FetchPool::Job job;
    bool drained = false;
    bool stopping = false;
    {
      std::unique_lock lock(pool_->mutex);
      pool_->wake.wait(lock, [&] { return pool_->queued > 0 || pool_->stopping; });
      if (pool_->queued == 0) return;  // stopping, and every queued fetch was answered
      job = pool_->ring[pool_->head];
      pool_->head = (pool_->head + 1) % pool_->ring.size();
      --pool_->queued;
      drained = pool_->queued == 0;
      stopping = pool_->stopping;
    }

    FetchResult& out = *job.out;
    out = FetchResult();
    if (stopping) {
      // The workers have stopped: the request is cut off and only waits for its ticket to be
      // logged, so the store is not read for it (a long queue on a slow disk would hold exit).
      fetch_rejected_total_.fetch_add(1, std::memory_order_relaxed);
      out.failed = true;
      job.ticket.post();
      continue;
    }
    if (fetch_delay_ms_ != 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(fetch_delay_ms_));
    }
    // Read before the store: a key write after this point changes it, which voids the positive
    // fill and the negative entry made from what the store says below, and tells the worker at
    // resume that the copy in `out` may be stale (a revocation that returned meanwhile must
    // win). The record's user is not copied: the worker takes it from the cache, which holds
    // every user and is current when the request resumes.
    const uint64_t generation = cache_->generation();
    out.generation = generation;
    KeyRecord record;
    const Status s = store_.get_key_by_digest(job.digest, &record);
    if (s.is_ok()) {
      out.found = true;
      out.record = record;
      if (cache_->fill(std::move(record), generation)) ++unreclaimed_fills;
    } else if (s.is_not_found()) {
      negative_->insert(job.digest, generation);
    } else {
      out.failed = true;
    }
    fetches_total_.fetch_add(1, std::memory_order_relaxed);
    job.ticket.post();

    if (unreclaimed_fills > 0 && (drained || unreclaimed_fills >= kFillsPerReclaimMax)) {
      qsbr_->reclaim();
      unreclaimed_fills = 0;
    }
  }
}

Status KeyService::check_user_exists(const std::optional<std::string>& user) const {
  if (!user) return Status::ok();
  User ignored;
  const Status s = store_.get_user(*user, &ignored);
  if (s.is_not_found()) return Status::not_found("the key's user does not exist");
  return s;
}

Status KeyService::create_key(const KeyRecord& record) {
  std::lock_guard lock(mutation_mutex_);
  Status s = check_user_exists(record.user);
  if (!s.is_ok()) return s;
  s = store_.put_key(record, KeyStore::PutMode::kCreate);
  if (!s.is_ok()) return s;
  cache_->put(record);
  return Status::ok();
}

Status KeyService::update_key(const KeyRecord& record,
                              const std::optional<PreviousDigest>& previous) {
  std::lock_guard lock(mutation_mutex_);
  KeyRecord old;
  Status s = store_.get_key_by_id(record.id, &old);
  if (!s.is_ok()) return s;
  s = check_user_exists(record.user);
  if (!s.is_ok()) return s;
  KeyRecord updated = record;
  if (previous) {
    updated.previous_digest = previous->digest;
    updated.previous_valid_until = previous->valid_until;
  } else if (digests_equal(old.digest, record.digest)) {
    // Not a rotation: a grace period in progress goes on.
    updated.previous_digest = old.previous_digest;
    updated.previous_valid_until = old.previous_valid_until;
  } else {
    updated.previous_digest.reset();
    updated.previous_valid_until = 0;
  }
  s = store_.put_key(updated, KeyStore::PutMode::kUpdate);
  if (!s.is_ok()) return s;
  // Cache entries the key no longer has go in the same publish as the new ones.
  std::vector<KeyDigest> erased;
  auto kept = [&](const KeyDigest& d) {
    return digests_equal(d, updated.digest) ||
           (updated.previous_digest && digests_equal(d, *updated.previous_digest));
  };
  if (!kept(old.digest)) erased.push_back(old.digest);
  if (old.previous_digest && !kept(*old.previous_digest)) erased.push_back(*old.previous_digest);
  std::vector<KeyRecord> puts;
  puts.push_back(std::move(updated));
  cache_->apply(erased, std::move(puts));
  return Status::ok();
}

Status KeyService::delete_key(std::string_view id, KeyRecord* deleted) {
  std::lock_guard lock(mutation_mutex_);
  KeyRecord record;
  const Status s = store_.delete_key_by_id(id, &record);
  if (!s.is_ok()) return s;
  std::vector<KeyDigest> erased{record.digest};
  if (record.previous_digest) erased.push_back(*record.previous_digest);
  cache_->apply(erased, {});
  if (deleted != nullptr) *deleted = std::move(record);
  return Status::ok();
}

Status KeyService::put_user(const User& user) {
  std::lock_guard lock(mutation_mutex_);
  const Status s = store_.put_user(user);
  if (!s.is_ok()) return s;
  cache_->put_user(user);
  return Status::ok();
}

Status KeyService::delete_user(std::string_view name) {
  std::lock_guard lock(mutation_mutex_);
  const Status s = store_.delete_user(name);
  if (!s.is_ok()) return s;
  cache_->erase_user(name);
  return Status::ok();
}

Status KeyService::import_keys(std::vector<KeyRecord> records, size_t* failed_index) {
  std::lock_guard lock(mutation_mutex_);
  std::set<std::string_view> known_users;
  for (size_t i = 0; i < records.size(); ++i) {
    const std::optional<std::string>& user = records[i].user;
    if (!user || known_users.count(*user) != 0) continue;
    const Status s = check_user_exists(user);
    if (!s.is_ok()) {
      if (failed_index != nullptr) *failed_index = i;
      return s;
    }
    known_users.insert(*user);
  }
  const Status s = store_.put_keys_batch(records, failed_index);
  if (!s.is_ok()) return s;
  cache_->apply({}, std::move(records));
  return Status::ok();
}

Status KeyService::ensure_admin_key(std::string_view value, const RandomSource& random, int64_t now,
                                    AdminBootstrap* out) {
  const RandomSource& fill_random = random ? random : RandomSource(system_random);
  std::lock_guard lock(mutation_mutex_);
  *out = AdminBootstrap();
  bool any = false;
  bool usable_admin = false;
  Status s = store_.for_each_key([&](KeyRecord& record) {
    any = true;
    usable_admin = record.usable_at(now) && record.has_api(kAdminApi);
    return !usable_admin;  // stop at the first usable admin key
  });
  if (!s.is_ok()) return s;
  if (usable_admin) return Status::ok();
  // A recovery (the store has keys, none a usable admin key) always generates the value: the
  // operator's value is for the first start only — it may be one they since deleted or rotated
  // away after a leak, or one still in the store disabled or expired.
  if (any) value = {};

  std::string generated;
  if (value.empty()) {
    std::array<uint8_t, kGeneratedKeyRandomBytes> bytes;
    if (!fill_random(bytes)) return Status::io_error("no random bytes for the bootstrap key");
    generated = generate_key_value(bytes);
    explicit_bzero(bytes.data(), bytes.size());
    value = generated;
  } else if (!validate_key_value(value, nullptr)) {
    return Status::invalid_argument("the bootstrap admin key value is not a valid key value");
  }
  std::array<uint8_t, kKeyIdRandomBytes> id_bytes;
  if (!fill_random(id_bytes)) return Status::io_error("no random bytes for the bootstrap key id");

  KeyRecord record;
  record.id = make_key_id(id_bytes);
  record.digest = digest_key(value);
  record.hint = make_key_hint(value);
  record.description = std::string(kBootstrapDescription);
  record.apis = {std::string(kAdminApi)};
  record.created_at = now;
  record.updated_at = now;
  s = store_.put_key(record, KeyStore::PutMode::kCreate);
  if (!s.is_ok()) return s;
  cache_->put(record);
  out->created = true;
  out->recovered = any;
  out->id = record.id;
  out->generated_value = std::move(generated);
  return Status::ok();
}

KeyService::Stats KeyService::stats() const noexcept {
  Stats stats;
  if (cache_) {
    stats.cached_keys = cache_->size();
    stats.cache_complete = cache_->complete();
    stats.evictions_total = cache_->evictions_total();
  }
  stats.fetches_total = fetches_total_.load(std::memory_order_relaxed);
  stats.fetch_rejected_total = fetch_rejected_total_.load(std::memory_order_relaxed);
  return stats;
}

}  // namespace keygate::storage
