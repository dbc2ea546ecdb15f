// KeyStore: API keys and users persisted in RocksDB, plus the Status every storage call returns.
//
// Thread-safe. Reads may run concurrently on any thread; writes are serialized by an internal
// mutex (they read-check-write the id index) and are synced to disk before they return. Every
// call blocks on the filesystem: never call it on a worker's event loop (workers read keys
// through KeyCache; KeyService runs store reads on its fetch threads).
//
// On-disk layout (schema 1; part of the file format, change it only with a version bump):
//   "k" + 32-byte digest  -> encode_key_record(record)   the key by its SHA-256 digest; a key in
//                                                        a rotation's grace period is also
//                                                        filed under its previous_digest
//   "i" + id              -> 32-byte digest              the id index (ids sort = list order)
//   "u" + name            -> encode_user(user)
//   "l" + id              -> 8 bytes, little-endian   the key's last use (Unix seconds): its own
//                                                        space, written unsynced in batches, so
//                                                        it never rewrites (or races) the record;
//                                                        an older keygate ignores it
//   "m" + "schema"        -> "1"
// The key plaintext is never written: records carry the digest and a short hint only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/api_key.h"
#include "core/permissions.h"

namespace keygate::storage {

// The outcome of a storage call: a code and a static message (never allocates). Ignoring one
// is explicit and searchable: `status.ignore()`.
class [[nodiscard]] Status {
 public:
  enum class Code : uint8_t {
    kOk,
    kNotFound,         // no such key / user (the message says which)
    kConflict,         // the digest or id is already taken
    kInvalidArgument,  // the caller passed something the call cannot accept
    kIoError,          // the disk failed or returned bytes that do not decode
    kUnavailable,      // the store is not open
  };

  constexpr Status() = default;
  static constexpr Status ok() { return Status(); }
  static constexpr Status not_found(const char* message) { return {Code::kNotFound, message}; }
  static constexpr Status conflict(const char* message) { return {Code::kConflict, message}; }
  static constexpr Status invalid_argument(const char* message) {
    return {Code::kInvalidArgument, message};
  }
  static constexpr Status io_error(const char* message) { return {Code::kIoError, message}; }
  static constexpr Status unavailable(const char* message) { return {Code::kUnavailable, message}; }

  bool is_ok() const noexcept { return code_ == Code::kOk; }
  bool is_not_found() const noexcept { return code_ == Code::kNotFound; }
  bool is_conflict() const noexcept { return code_ == Code::kConflict; }
  bool is_io_error() const noexcept { return code_ == Code::kIoError; }
  Code code() const noexcept { return code_; }
  // A static, human-readable string ("" when ok).
  const char* message() const noexcept { return message_; }
  void ignore() const noexcept {}

 private:
  constexpr Status(Code code, const char* message) : code_(code), message_(message) {}

  Code code_ = Code::kOk;
  const char* message_ = "";
};

class KeyStore {
 public:
  // How put_key treats an existing record with the same id.
  enum class PutMode : uint8_t {
    kCreate,  // conflict if the id or the digest exists
    kUpdate,  // not_found if the id does not exist
    kUpsert,  // either
  };

  KeyStore();
  ~KeyStore();  // closes the database (blocks until background work stops)
  KeyStore(const KeyStore&) = delete;
  KeyStore& operator=(const KeyStore&) = delete;

  // Opens (creating if missing) the database in directory `path`, whose parent must exist.
  // Fails with one line in `error`, naming the cause when it is known: corrupted files, locked
  // by another process, permission denied, unsupported schema version. Blocks; start-up only.
  bool open(const std::string& path, std::string* error);
  bool is_open() const noexcept;

  // Writes `record` (new or updated), filed under its digest and, when set, its
  // previous_digest, and its id index, in one synced batch. Entries of digests the stored key
  // had but `record` lacks (the old digest after a rotation without grace, a previous digest a
  // later update drops) are removed in the same batch. Nothing here ends a grace period by
  // time: an expired previous digest stays filed (and refused by the Authenticator) until the
  // key's next rotation or deletion. Conflict when the digest or previous
  // digest belongs to a different id, or per `mode`; io_error when the write fails. Blocks.
  Status put_key(const KeyRecord& record, PutMode mode = PutMode::kUpsert);
  // Creates every record in one synced batch: all or nothing. Conflict when any digest or id
  // exists or repeats within `records`; then `*conflict_index` (when not null) is the index of
  // the first offending record and nothing is written. Blocks.
  Status put_keys_batch(std::span<const KeyRecord> records, size_t* conflict_index = nullptr);
  // Removes the key with `id`, its previous-digest entry, its index entry and its last use in
  // one synced batch; not_found when there is none. On success `*deleted` (when not null) holds the
  // removed record, or only its id and digest when the record did not decode (deleting is how
  // such a record is got rid of: its previous-digest entry, which holds the same bytes, is
  // found by a scan of the keys and removed too). Blocks.
  Status delete_key_by_id(std::string_view id, KeyRecord* deleted = nullptr);

  // Point reads: ok and `*out` set, not_found, or io_error (including a value that does not
  // decode). By digest, a key in a rotation's grace is also found by its previous digest
  // (whether the grace is over is for the caller to judge). Block.
  Status get_key_by_digest(const KeyDigest& digest, KeyRecord* out) const;
  Status get_key_by_id(std::string_view id, KeyRecord* out) const;
  // `*out` = whether any key exists. Blocks.
  Status has_keys(bool* out) const;

  // Calls `fn` once for every key, in order of its digest (not the previous one), over one
  // consistent snapshot; `fn` returns false to stop early. io_error (and the scan stops) on a
  // record that does not decode. Blocks for the whole scan.
  Status for_each_key(const std::function<bool(KeyRecord&)>& fn) const;
  // Appends to `*out` up to `limit` keys in id order, starting after `after_id` ("" = from the
  // first), read from one snapshot. Blocks.
  Status list_keys(std::string_view after_id, size_t limit, std::vector<KeyRecord>* out) const;

  // One key's last use, as LastUsedWriter batches them.
  struct LastUsed {
    std::string id;
    int64_t at = 0;  // Unix seconds
  };
  // Records last uses in one unsynced batch: the WAL write reaches the OS (a crash of keygate
  // keeps it) but is not fsynced (a power loss or OS crash may lose it, until the next synced
  // write of any key), which keeps these frequent writes off the disk's sync path. Under the writers' mutex, an entry is written only while its key exists
  // (so a use reported just before a DELETE never brings the entry back), and only when later
  // than the stored one (several workers, a clock step back). `*written` (when not null) is the
  // number of entries written. io_error when a read or the write fails. Blocks.
  Status put_last_used(std::span<const LastUsed> entries, size_t* written = nullptr);
  // The last use recorded for key `id`: ok and `*at` set, or not_found (never used since
  // last-used times were recorded, or no such key), or io_error. Blocks.
  Status get_last_used(std::string_view id, int64_t* at) const;

  // Writes (creates or replaces) a user, synced. Blocks.
  Status put_user(const User& user);
  // Removes a user, synced; not_found when there is none. Keys naming the user are left as
  // they are (authorization then denies them). Blocks.
  Status delete_user(std::string_view name);
  Status get_user(std::string_view name, User* out) const;
  // Calls `fn` for every user in name order (snapshot); false from `fn` stops. Blocks.
  Status for_each_user(const std::function<bool(User&)>& fn) const;
  // Appends to `*out` up to `limit` users in name order (bytewise), starting after
  // `after_name` ("" = from the first; it need not name a stored user), read from one snapshot.
  // The scan seeks to its start: a page costs its own users, not the ones before it. io_error
  // on a user that does not decode. Blocks.
  Status list_users(std::string_view after_name, size_t limit, std::vector<User>* out) const;

  // Flushes the memtable into SST files. Blocks. For tests and backups; writes are already
  // durable through the synced WAL.
  Status flush();

  // Writes a consistent copy of the store into directory `dir`, which must not exist (its
  // parent must): RocksDB's Checkpoint, taken after a flush, so every write that returned
  // before the call is in it. SST files are hard-linked when `dir` is on the same filesystem
  // as the store and copied otherwise (RocksDB decides); the WAL and manifest are copied. The
  // copy holds no LOCK file. io_error with one line in `error` (RocksDB's reason: "No space
  // left on device", "Permission denied", ...); the caller removes what a failure left in
  // `dir`. Blocks for the flush and the copies; concurrent writes go on meanwhile.
  Status checkpoint(const std::string& dir, std::string* error) const;

  // What inspect() found in a store.
  struct Contents {
    uint64_t keys = 0;   // id index entries: one per key
    uint64_t users = 0;
  };
  // Opens the store in `path` read-only (it must not be open elsewhere for writing), checks its
  // schema version and counts its keys and users. For backups: proof that a checkpoint opens
  // as keygate would open it. False with one line in `error`. Blocks for the whole scan.
  static bool inspect(const std::string& path, Contents* out, std::string* error);

  // Writes raw bytes under a raw key, bypassing every check. Tests only: it lets them plant a
  // value that does not decode, as a disk fault would.
  Status write_raw_for_testing(std::string_view key, std::string_view value);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keygate::storage
