#include "storage/key_store.h"

#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <unordered_set>

namespace keygate::storage {
namespace {

constexpr char kKeyPrefix = 'k';
constexpr char kIdPrefix = 'i';
constexpr char kUserPrefix = 'u';
constexpr char kLastUsedPrefix = 'l';
constexpr std::string_view kSchemaKey = "mschema";
constexpr std::string_view kSchemaVersion = "1";

std::string digest_entry(const KeyDigest& digest) {
  std::string key;
  key.reserve(1 + digest.size());
  key.push_back(kKeyPrefix);
  key.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return key;
}

// The digests a record is filed under: its own and, during a rotation's grace, the previous.
bool files_under(const KeyRecord& record, const KeyDigest& digest) {
  return digests_equal(record.digest, digest) ||
         (record.previous_digest && digests_equal(*record.previous_digest, digest));
}

std::string prefixed(char prefix, std::string_view name) {
  std::string key;
  key.reserve(1 + name.size());
  key.push_back(prefix);
  key.append(name);
  return key;
}

rocksdb::Slice slice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

// An "l" value: Unix seconds, 8 bytes little-endian (a fixed width that needs no codec).
std::string encode_last_used(int64_t at) {
  std::string out(8, '\0');
  const auto u = static_cast<uint64_t>(at);
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((u >> (8 * i)) & 0xff);
  return out;
}

bool decode_last_used(std::string_view bytes, int64_t* at) {
  if (bytes.size() != 8) return false;
  uint64_t u = 0;
  for (size_t i = 0; i < 8; ++i) u |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
  *at = static_cast<int64_t>(u);
  return true;
}

// A "u" entry: the user it holds, which must be filed under its own name.
bool decode_user_entry(const rocksdb::Slice& key, const rocksdb::Slice& value, User* out) {
  return decode_user(value.ToStringView(), out) && out->name == key.ToStringView().substr(1);
}

bool digest_from(std::string_view bytes, KeyDigest* out) {
  if (bytes.size() != out->size()) return false;
  std::memcpy(out->data(), bytes.data(), out->size());
  return true;
}

// RocksDB messages are the only non-static text we pass on, and only from open(): keep them to
// one line so start-up errors stay one line.
int64_t monotonic_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec;
}

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

std::string describe_open_error(const std::string& path, const rocksdb::Status& s) {
  const std::string detail = one_line(s.ToString());
  if (s.IsCorruption()) return "key store at " + path + " is corrupted: " + detail;
  // RocksDB reports both as IO errors; its messages are the only way to tell them apart.
  if (detail.find("Permission denied") != std::string::npos) {
    return "key store at " + path + " is not accessible (permission denied): " + detail;
  }
  if (detail.find("While lock file") != std::string::npos ||
      detail.find("lock hold by current process") != std::string::npos) {
    return "key store at " + path + " is locked by another process: " + detail;
  }
  return "cannot open key store at " + path + ": " + detail;
}

// RocksDB's info log, <store>/LOG, written with one write(2) per line whose failure is ignored.
// RocksDB's own file logger asserts on its next line once a write of it has failed, and
// librocksdb as distributions build it keeps its assertions on: on a full disk (or past
// RLIMIT_FSIZE) the lines RocksDB logs about the failed store write it is handling aborted
// keygate, instead of that write failing with io_error. A lost line of a diagnostics log costs
// nothing. Bounded, as before: a line that would take the file past kInfoLogBytesMax first
// renames it to LOG.old.<Unix microseconds>, RocksDB's own name for an old info log, so that
// RocksDB keeps the newest keep_log_file_num of them, and starts a new LOG. Thread-safe:
// RocksDB logs from its background threads too.
class InfoLog final : public rocksdb::Logger {
 public:
  // `dir`: the store's directory, which must exist. A start begins a fresh LOG, keeping the
  // last one as an old log, as RocksDB's logger does.
  explicit InfoLog(const std::string& dir)
      : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL), path_(dir + "/LOG") {
    start_new_file();
  }
  ~InfoLog() override {
    if (fd_ >= 0) ::close(fd_);
  }
  InfoLog(const InfoLog&) = delete;
  InfoLog& operator=(const InfoLog&) = delete;

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    timeval now{};
    ::gettimeofday(&now, nullptr);
    tm local{};
    ::localtime_r(&now.tv_sec, &local);
    char head[64];
    const int head_bytes = std::snprintf(
        head, sizeof head, "%04d/%02d/%02d-%02d:%02d:%02d.%06ld %ld ", local.tm_year + 1900,
        local.tm_mon + 1, local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec,
        static_cast<long>(now.tv_usec), static_cast<long>(::gettid()));
    va_list measure;
    va_copy(measure, ap);
    const int body_bytes = std::vsnprintf(nullptr, 0, format, measure);
    va_end(measure);
    if (head_bytes < 0 || body_bytes < 0) return;
    // Off the request path (RocksDB's threads, admin calls): a line may allocate.
    std::string line(static_cast<size_t>(head_bytes), '\0');
    std::memcpy(line.data(), head, line.size());
    line.resize(line.size() + std::min<size_t>(static_cast<size_t>(body_bytes), kLineBytesMax) + 1);
    std::vsnprintf(line.data() + head_bytes, line.size() - static_cast<size_t>(head_bytes), format,
                   ap);
    // vsnprintf ended the text with a NUL: a newline there, unless the text has one already.
    line.pop_back();
    if (line.size() == static_cast<size_t>(head_bytes) || line.back() != '\n') line.push_back('\n');

    std::lock_guard lock(mutex_);
    if (bytes_ > 0 && bytes_ + line.size() > kInfoLogBytesMax) {
      ::close(fd_);
      start_new_file();
    }
    if (fd_ < 0) return;
    // Ignored on purpose (see the class comment); a short write leaves a torn line, no more.
    const ssize_t written = ::write(fd_, line.data(), line.size());
    if (written > 0) bytes_ += static_cast<uint64_t>(written);
  }

 private:
  static constexpr uint64_t kInfoLogBytesMax = 4 << 20;
  static constexpr size_t kLineBytesMax = 64 << 10;  // longer lines are cut (stats dumps fit)

  // Keeps the current LOG as an old log and opens a new, empty LOG (-1 when it cannot:
  // nothing is logged then, which is all a log that cannot be written can give).
  void start_new_file() {
    timeval now{};
    ::gettimeofday(&now, nullptr);
    const std::string old_path =
        path_ + ".old." + std::to_string(int64_t{now.tv_sec} * 1000000 + now.tv_usec);
    ::rename(path_.c_str(), old_path.c_str());  // ENOENT on a new store: nothing to keep
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    bytes_ = 0;
  }

  const std::string path_;
  std::mutex mutex_;
  int fd_ = -1;         // mutex_
  uint64_t bytes_ = 0;  // mutex_; written to fd_
};

// An iterator over one key prefix ("k", "i", "u"), optionally at a snapshot. Not movable: the
// iterator keeps a pointer to the upper bound it owns.
class PrefixScan {
 public:
  PrefixScan(rocksdb::DB* db, char prefix, const rocksdb::Snapshot* snapshot = nullptr)
      : prefix_(prefix), upper_(1, static_cast<char>(prefix + 1)), bound_(upper_) {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot;
    ro.iterate_upper_bound = &bound_;
    it_.reset(db->NewIterator(ro));
  }
  PrefixScan(const PrefixScan&) = delete;
  PrefixScan& operator=(const PrefixScan&) = delete;

  void seek_to_first() { it_->Seek(rocksdb::Slice(&prefix_, 1)); }
  rocksdb::Iterator* operator->() { return it_.get(); }

 private:
  char prefix_;
  std::string upper_;
  rocksdb::Slice bound_;
  std::unique_ptr<rocksdb::Iterator> it_;  // last: destroyed before the bound it points to
};

}  // namespace

struct KeyStore::Impl {
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::WriteOptions synced;
  // Writers read-check-write (id index, conflicts); serializing them keeps that atomic.
  std::mutex write_mutex;
  static constexpr int64_t kFailureReportSeconds = 60;
  bool writes_failing = false;      // write_mutex
  int64_t last_failure_report = 0;  // write_mutex; monotonic seconds

  Impl() { synced.sync = true; }

  // Reads `key` into `*value`: ok, not_found or io_error.
  Status get(std::string_view key, std::string* value,
             const rocksdb::Snapshot* snapshot = nullptr) const {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot;
    const rocksdb::Status s = db->Get(ro, slice(key), value);
    if (s.ok()) return Status::ok();
    if (s.IsNotFound()) return Status::not_found("no such entry");
    return Status::io_error("key store read failed");
  }

  Status get_digest(const KeyDigest& digest, KeyRecord* out,
                    const rocksdb::Snapshot* snapshot = nullptr) const {
    std::string value;
    const Status s = get(digest_entry(digest), &value, snapshot);
    if (s.is_not_found()) return Status::not_found("no key with this digest");
    if (!s.is_ok()) return s;
    KeyRecord record;
    if (!decode_key_record(value, &record) || !files_under(record, digest)) {
      return Status::io_error("corrupted key record in the store");
    }
    *out = std::move(record);
    return Status::ok();
  }

  // The digest the id index holds for `id`.
  Status get_index(std::string_view id, KeyDigest* digest,
                   const rocksdb::Snapshot* snapshot = nullptr) const {
    std::string value;
    const Status s = get(prefixed(kIdPrefix, id), &value, snapshot);
    if (s.is_not_found()) return Status::not_found("no key with this id");
    if (!s.is_ok()) return s;
    if (!digest_from(value, digest)) return Status::io_error("corrupted id index entry");
    return Status::ok();
  }

  Status write(rocksdb::WriteBatch* batch, const rocksdb::WriteOptions& options) {
    const rocksdb::Status s = db->Write(options, batch);
    note_write(s);
    return s.ok() ? Status::ok() : Status::io_error("key store write failed");
  }
  Status write(rocksdb::WriteBatch* batch) { return write(batch, synced); }

  // Says in the journal that the store refuses writes, and when it takes them again: the admin
  // caller only sees 503 store_unavailable, and RocksDB's own account is in its LOG. At most one
  // failure line a minute (last-used batches retry every flush interval). Called by every
  // writer, all of which hold write_mutex (the store's writers are serialized).
  void note_write(const rocksdb::Status& s) {
    if (s.ok()) {
      if (writes_failing) {
        writes_failing = false;
        std::fprintf(stderr, "keygate: key store: writes succeed again\n");
      }
      return;
    }
    const int64_t now = monotonic_seconds();
    if (writes_failing && now - last_failure_report < kFailureReportSeconds) return;
    writes_failing = true;
    last_failure_report = now;
    // RocksDB stops taking writes after a failed one. A full disk is a hard error it retries
    // by itself every 5 s once the filesystem has its write buffer (64 MiB) free; any other I/O
    // error (EIO, the file size limit) lasts until the store is opened again.
    std::fprintf(stderr,
                 "keygate: key store: a write failed (%s); changes are refused with 503 "
                 "store_unavailable until it recovers, which RocksDB does by itself once the "
                 "disk has 64 MiB free (a full disk) or at the next start (other errors)\n",
                 one_line(s.ToString()).c_str());
  }

  // Stages the "k" entries of `record`: its digest and, during a rotation's grace, its
  // previous digest, both holding the same encoded record.
  static void stage_record(rocksdb::WriteBatch* batch, const KeyRecord& record) {
    const std::string encoded = encode_key_record(record);
    batch->Put(digest_entry(record.digest), encoded);
    if (record.previous_digest) batch->Put(digest_entry(*record.previous_digest), encoded);
  }
};

KeyStore::KeyStore() : impl_(std::make_unique<Impl>()) {}

KeyStore::~KeyStore() {
  if (impl_->db) {
    // Close() waits for background flushes/compactions; its status only matters to callers
    // that could act on it, and a destructor cannot.
    impl_->db->Close().PermitUncheckedError();
  }
}

bool KeyStore::open(const std::string& path, std::string* error) {
  if (impl_->db) {
    *error = "key store is already open";
    return false;
  }
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  // The info log lives in the store's directory, which InfoLog needs before RocksDB would
  // create it. A mkdir that fails is reported by DB::Open, which fails the same way (InfoLog
  // then logs nothing). RocksDB deletes the old logs beyond keep_log_file_num.
  static_cast<void>(::mkdir(path.c_str(), 0755));
  options.info_log = std::make_shared<InfoLog>(path);
  options.keep_log_file_num = 3;
  rocksdb::DB* db = nullptr;
  const rocksdb::Status s = rocksdb::DB::Open(options, path, &db);
  if (!s.ok()) {
    *error = describe_open_error(path, s);
    return false;
  }
  impl_->db.reset(db);

  std::string version;
  const Status vs = impl_->get(kSchemaKey, &version);
  if (vs.is_not_found()) {
    rocksdb::WriteBatch batch;
    batch.Put(slice(kSchemaKey), slice(kSchemaVersion));
    if (!impl_->write(&batch).is_ok()) {
      *error = "cannot write the schema version of key store at " + path;
      impl_->db.reset();
      return false;
    }
  } else if (!vs.is_ok()) {
    *error = "cannot read the schema version of key store at " + path;
    impl_->db.reset();
    return false;
  } else if (version != kSchemaVersion) {
    const bool printable =
        version.size() <= 16 &&
        std::all_of(version.begin(), version.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
    *error = "key store at " + path + " has schema version " +
             (printable ? version : std::string("(unreadable)")) + ", this keygate reads " +
             std::string(kSchemaVersion);
    impl_->db.reset();
    return false;
  }
  return true;
}

bool KeyStore::is_open() const noexcept { return impl_->db != nullptr; }

Status KeyStore::put_key(const KeyRecord& record, PutMode mode) {
  if (!impl_->db) return Status::unavailable("key store is not open");
  if (record.id.empty()) return Status::invalid_argument("key id is empty");
  std::lock_guard lock(impl_->write_mutex);

  KeyDigest old_digest{};
  const Status index = impl_->get_index(record.id, &old_digest);
  if (!index.is_ok() && !index.is_not_found()) return index;
  const bool exists = index.is_ok();
  if (mode == PutMode::kCreate && exists) return Status::conflict("key id already exists");
  if (mode == PutMode::kUpdate && !exists) return Status::not_found("no key with this id");

  // The entries the key has now: its digest and, in a grace period, its previous digest. A
  // record that no longer decodes only tells its digest (the index has it); its previous entry,
  // if any, then stays behind, failing scans of the keys until delete_key_by_id removes it
  // (KeyService never gets here with such a key: update_key reads the old record first).
  std::vector<KeyDigest> old_digests;
  if (exists) {
    old_digests.push_back(old_digest);
    KeyRecord old;
    if (impl_->get_digest(old_digest, &old).is_ok() && old.previous_digest) {
      old_digests.push_back(*old.previous_digest);
    }
  }
  auto owned = [&](const KeyDigest& d) {
    for (const KeyDigest& o : old_digests) {
      if (digests_equal(o, d)) return true;
    }
    return false;
  };
  std::vector<KeyDigest> new_digests{record.digest};
  if (record.previous_digest) new_digests.push_back(*record.previous_digest);
  for (const KeyDigest& d : new_digests) {
    if (owned(d)) continue;
    KeyRecord holder;
    const Status s = impl_->get_digest(d, &holder);
    if (s.is_ok()) return Status::conflict("key digest already in use");
    // A corrupt record under the new digest would be overwritten by a different key's record:
    // refuse instead, the operator must delete it first.
    if (!s.is_not_found()) return s;
  }

  rocksdb::WriteBatch batch;
  Impl::stage_record(&batch, record);
  batch.Put(
      prefixed(kIdPrefix, record.id),
      rocksdb::Slice(reinterpret_cast<const char*>(record.digest.data()), record.digest.size()));
  // A new key starts never used, whatever an older keygate (which does not know "l" entries)
  // may have left under its id. An update keeps the entry: rotation keeps the id, and its uses.
  if (!exists) batch.Delete(prefixed(kLastUsedPrefix, record.id));
  // Entries the record no longer has (rotation; a dropped previous digest) go in the same
  // batch, so an old value is revoked atomically with the switch.
  for (const KeyDigest& d : old_digests) {
    const bool kept = std::any_of(new_digests.begin(), new_digests.end(),
                                  [&](const KeyDigest& n) { return digests_equal(n, d); });
    if (!kept) batch.Delete(digest_entry(d));
  }
  return impl_->write(&batch);
}

Status KeyStore::put_keys_batch(std::span<const KeyRecord> records, size_t* conflict_index) {
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::lock_guard lock(impl_->write_mutex);

  std::unordered_set<std::string> digests;
  std::unordered_set<std::string_view> ids;
  digests.reserve(records.size());
  ids.reserve(records.size());
  rocksdb::WriteBatch batch;
  for (size_t i = 0; i < records.size(); ++i) {
    const KeyRecord& record = records[i];
    auto fail = [&](Status s) {
      if (conflict_index != nullptr) *conflict_index = i;
      return s;
    };
    if (record.id.empty()) return fail(Status::invalid_argument("key id is empty"));
    if (!ids.insert(record.id).second) return fail(Status::conflict("key id repeats in batch"));
    std::string ignored;
    Status s = impl_->get(prefixed(kIdPrefix, record.id), &ignored);
    if (s.is_ok()) return fail(Status::conflict("key id already exists"));
    if (!s.is_not_found()) return fail(s);
    for (int which = 0; which < 2; ++which) {
      if (which == 1 && !record.previous_digest) break;
      std::string digest_key_bytes =
          digest_entry(which == 0 ? record.digest : *record.previous_digest);
      if (!digests.insert(digest_key_bytes).second) {
        return fail(Status::conflict("key digest repeats in batch"));
      }
      s = impl_->get(digest_key_bytes, &ignored);
      if (s.is_ok()) return fail(Status::conflict("key digest already in use"));
      if (!s.is_not_found()) return fail(s);
    }

    Impl::stage_record(&batch, record);
    batch.Put(
        prefixed(kIdPrefix, record.id),
        rocksdb::Slice(reinterpret_cast<const char*>(record.digest.data()), record.digest.size()));
    batch.Delete(prefixed(kLastUsedPrefix, record.id));  // as in put_key: new keys start unused
  }
  if (records.empty()) return Status::ok();
  return impl_->write(&batch);
}

Status KeyStore::delete_key_by_id(std::string_view id, KeyRecord* deleted) {
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::lock_guard lock(impl_->write_mutex);

  KeyDigest digest{};
  const Status index = impl_->get_index(id, &digest);
  if (!index.is_ok()) return index;
  KeyRecord record;
  const Status s = impl_->get_digest(digest, &record);
  rocksdb::WriteBatch batch;
  if (!s.is_ok()) {
    // Deleting is how an operator gets rid of a record that no longer decodes: go ahead, and
    // report what is known for sure.
    record = KeyRecord();
    record.id = std::string(id);
    record.digest = digest;
    // In a rotation's grace the record is filed under its previous digest too, with the same
    // bytes (stage_record), and that digest is inside the bytes that do not decode: find the
    // other entry by its bytes. Left behind, it would fail every later scan of the keys
    // (for_each_key: the next start). A full scan, but only on this rare path.
    const std::string entry = digest_entry(digest);
    std::string value;
    if (impl_->get(entry, &value).is_ok()) {
      PrefixScan it(impl_->db.get(), kKeyPrefix);
      for (it.seek_to_first(); it->Valid(); it->Next()) {
        if (it->value().ToStringView() == value && it->key().ToStringView() != entry) {
          batch.Delete(it->key());
        }
      }
      if (!it->status().ok()) return Status::io_error("key store scan failed");
    }
  }

  batch.Delete(digest_entry(digest));
  if (record.previous_digest) batch.Delete(digest_entry(*record.previous_digest));
  batch.Delete(prefixed(kIdPrefix, id));
  batch.Delete(prefixed(kLastUsedPrefix, id));
  const Status w = impl_->write(&batch);
  if (w.is_ok() && deleted != nullptr) *deleted = std::move(record);
  return w;
}

Status KeyStore::get_key_by_digest(const KeyDigest& digest, KeyRecord* out) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  return impl_->get_digest(digest, out);
}

Status KeyStore::get_key_by_id(std::string_view id, KeyRecord* out) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  const rocksdb::Snapshot* snapshot = impl_->db->GetSnapshot();
  KeyDigest digest{};
  Status s = impl_->get_index(id, &digest, snapshot);
  if (s.is_ok()) {
    s = impl_->get_digest(digest, out, snapshot);
    if (s.is_not_found()) s = Status::io_error("id index points to a missing key record");
  }
  impl_->db->ReleaseSnapshot(snapshot);
  return s;
}

Status KeyStore::has_keys(bool* out) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  PrefixScan it(impl_->db.get(), kKeyPrefix);
  it.seek_to_first();
  const bool any = it->Valid();
  if (!it->status().ok()) return Status::io_error("key store scan failed");
  *out = any;
  return Status::ok();
}

Status KeyStore::for_each_key(const std::function<bool(KeyRecord&)>& fn) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  PrefixScan it(impl_->db.get(), kKeyPrefix);
  for (it.seek_to_first(); it->Valid(); it->Next()) {
    KeyDigest digest{};
    KeyRecord record;
    const rocksdb::Slice key = it->key();
    if (!digest_from(std::string_view(key.data() + 1, key.size() - 1), &digest) ||
        !decode_key_record(it->value().ToStringView(), &record) || !files_under(record, digest)) {
      return Status::io_error("corrupted key record in the store");
    }
    // A record in a rotation's grace is filed twice; visit it once, under its own digest.
    if (!digests_equal(record.digest, digest)) continue;
    if (!fn(record)) return Status::ok();
  }
  if (!it->status().ok()) return Status::io_error("key store scan failed");
  return Status::ok();
}

Status KeyStore::list_keys(std::string_view after_id, size_t limit,
                           std::vector<KeyRecord>* out) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  // One snapshot for the index scan and the record reads, so they agree.
  const rocksdb::Snapshot* snapshot = impl_->db->GetSnapshot();
  Status result = Status::ok();
  {
    PrefixScan it(impl_->db.get(), kIdPrefix, snapshot);
    const std::string start = prefixed(kIdPrefix, after_id);
    size_t listed = 0;
    for (it->Seek(start); it->Valid() && listed < limit; it->Next()) {
      if (!after_id.empty() && it->key().ToStringView() == start) continue;
      KeyDigest digest{};
      if (!digest_from(it->value().ToStringView(), &digest)) {
        result = Status::io_error("corrupted id index entry");
        break;
      }
      KeyRecord record;
      result = impl_->get_digest(digest, &record, snapshot);
      if (result.is_not_found()) {
        result = Status::io_error("id index points to a missing key record");
      }
      if (!result.is_ok()) break;
      out->push_back(std::move(record));
      ++listed;
    }
    if (result.is_ok() && !it->status().ok()) result = Status::io_error("key store scan failed");
  }
  impl_->db->ReleaseSnapshot(snapshot);
  return result;
}

Status KeyStore::put_last_used(std::span<const LastUsed> entries, size_t* written) {
  if (written != nullptr) *written = 0;
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::lock_guard lock(impl_->write_mutex);
  rocksdb::WriteBatch batch;
  size_t staged = 0;
  for (const LastUsed& e : entries) {
    std::string ignored;
    Status s = impl_->get(prefixed(kIdPrefix, e.id), &ignored);
    if (s.is_not_found()) continue;  // deleted since the use: its entry must stay gone
    if (!s.is_ok()) return s;
    const std::string entry = prefixed(kLastUsedPrefix, e.id);
    std::string stored;
    s = impl_->get(entry, &stored);
    int64_t stored_at = 0;
    if (s.is_ok() && decode_last_used(stored, &stored_at) && stored_at >= e.at) continue;
    if (!s.is_ok() && !s.is_not_found()) return s;
    batch.Put(entry, encode_last_used(e.at));
    ++staged;
  }
  if (staged == 0) return Status::ok();
  // Unsynced on purpose: see the header. The writers' mutex still orders it with deletes.
  const Status w = impl_->write(&batch, rocksdb::WriteOptions());
  if (!w.is_ok()) return w;
  if (written != nullptr) *written = staged;
  return Status::ok();
}

Status KeyStore::get_last_used(std::string_view id, int64_t* at) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::string value;
  const Status s = impl_->get(prefixed(kLastUsedPrefix, id), &value);
  if (s.is_not_found()) return Status::not_found("no last use recorded");
  if (!s.is_ok()) return s;
  if (!decode_last_used(value, at)) return Status::io_error("corrupted last-used entry");
  return Status::ok();
}

Status KeyStore::put_user(const User& user) {
  if (!impl_->db) return Status::unavailable("key store is not open");
  if (user.name.empty()) return Status::invalid_argument("user name is empty");
  std::lock_guard lock(impl_->write_mutex);
  rocksdb::WriteBatch batch;
  batch.Put(prefixed(kUserPrefix, user.name), encode_user(user));
  return impl_->write(&batch);
}

Status KeyStore::delete_user(std::string_view name) {
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::lock_guard lock(impl_->write_mutex);
  std::string value;
  const Status s = impl_->get(prefixed(kUserPrefix, name), &value);
  if (s.is_not_found()) return Status::not_found("no such user");
  if (!s.is_ok()) return s;
  rocksdb::WriteBatch batch;
  batch.Delete(prefixed(kUserPrefix, name));
  return impl_->write(&batch);
}

Status KeyStore::get_user(std::string_view name, User* out) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::string value;
  const Status s = impl_->get(prefixed(kUserPrefix, name), &value);
  if (s.is_not_found()) return Status::not_found("no such user");
  if (!s.is_ok()) return s;
  User user;
  if (!decode_user(value, &user) || user.name != name) {
    return Status::io_error("corrupted user record in the store");
  }
  *out = std::move(user);
  return Status::ok();
}

Status KeyStore::for_each_user(const std::function<bool(User&)>& fn) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  PrefixScan it(impl_->db.get(), kUserPrefix);
  for (it.seek_to_first(); it->Valid(); it->Next()) {
    User user;
    if (!decode_user_entry(it->key(), it->value(), &user)) {
      return Status::io_error("corrupted user record in the store");
    }
    if (!fn(user)) return Status::ok();
  }
  if (!it->status().ok()) return Status::io_error("key store scan failed");
  return Status::ok();
}

Status KeyStore::list_users(std::string_view after_name, size_t limit,
                            std::vector<User>* out) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  // An iterator reads from an implicit snapshot taken when it is created.
  PrefixScan it(impl_->db.get(), kUserPrefix);
  // after_name + '\0' is the name right after after_name in byte order: the seek lands on the
  // first user after it, whether or not after_name itself is stored.
  std::string start = prefixed(kUserPrefix, after_name);
  if (!after_name.empty()) start.push_back('\0');
  size_t listed = 0;
  for (it->Seek(start); it->Valid() && listed < limit; it->Next()) {
    User user;
    if (!decode_user_entry(it->key(), it->value(), &user)) {
      return Status::io_error("corrupted user record in the store");
    }
    out->push_back(std::move(user));
    ++listed;
  }
  if (!it->status().ok()) return Status::io_error("key store scan failed");
  return Status::ok();
}

Status KeyStore::flush() {
  if (!impl_->db) return Status::unavailable("key store is not open");
  const rocksdb::Status s = impl_->db->Flush(rocksdb::FlushOptions());
  return s.ok() ? Status::ok() : Status::io_error("key store flush failed");
}

Status KeyStore::checkpoint(const std::string& dir, std::string* error) const {
  if (!impl_->db) return Status::unavailable("key store is not open");
  rocksdb::Checkpoint* raw = nullptr;
  rocksdb::Status s = rocksdb::Checkpoint::Create(impl_->db.get(), &raw);
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  // log_size_for_flush 0: always flush first, so every write that returned before this call is
  // in the copy's SST files rather than only in a WAL the copy has to replay.
  if (s.ok()) s = checkpoint->CreateCheckpoint(dir, 0);
  if (!s.ok()) {
    *error = one_line(s.ToString());
    return Status::io_error("key store checkpoint failed");
  }
  return Status::ok();
}

bool KeyStore::inspect(const std::string& path, Contents* out, std::string* error) {
  rocksdb::Options options;
  options.paranoid_checks = true;
  rocksdb::DB* raw = nullptr;
  const rocksdb::Status s = rocksdb::DB::OpenForReadOnly(options, path, &raw);
  if (!s.ok()) {
    *error = describe_open_error(path, s);
    return false;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string version;
  const rocksdb::Status vs = db->Get(rocksdb::ReadOptions(), slice(kSchemaKey), &version);
  if (!vs.ok() || version != kSchemaVersion) {
    *error = "key store at " + path + " has no schema version " + std::string(kSchemaVersion);
    return false;
  }
  Contents contents;
  for (const char prefix : {kIdPrefix, kUserPrefix}) {
    PrefixScan it(db.get(), prefix);
    uint64_t n = 0;
    for (it.seek_to_first(); it->Valid(); it->Next()) ++n;
    if (!it->status().ok()) {
      *error = "cannot read key store at " + path + ": " + one_line(it->status().ToString());
      return false;
    }
    (prefix == kIdPrefix ? contents.keys : contents.users) = n;
  }
  db->Close().PermitUncheckedError();  // read-only: nothing to lose
  *out = contents;
  return true;
}

Status KeyStore::write_raw_for_testing(std::string_view key, std::string_view value) {
  if (!impl_->db) return Status::unavailable("key store is not open");
  std::lock_guard lock(impl_->write_mutex);
  rocksdb::WriteBatch batch;
  batch.Put(slice(key), slice(value));
  return impl_->write(&batch);
}

}  // namespace keygate::storage
