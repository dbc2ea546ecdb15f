// Backups: online, consistent backups of the key store into a directory of their own.
//
// Thread-safe: create() runs one at a time (an internal mutex; the admin executor's backup lane
// already runs them one at a time), list() and stats() may run beside it and never wait for it
// (the executor runs listings on a lane of their own, so a listing answers while a backup of
// minutes runs), and so may every change to the store (create() needs no serialization with
// them: the checkpoint is consistent as of its start). Every call but stats() blocks on the
// filesystem: run them on the admin executor, never on a worker.
//
// Layout of the backup directory (`[backup] dir`, docs/configuration.md):
//   LOCK                                  flock'ed by the keygate using the directory, so two
//                                         instances never clean or prune each other's backups
//   keygate-20261128T011500Z-000042/      a complete backup: a data directory keygate starts
//     db/                                 on as it is (--data-dir), holding a RocksDB
//                                         checkpoint of <data_dir>/db (no LOCK: a start makes
//                                         its own; the access log is not part of it)
//     backup.json                         {"keys":N,"users":N}: what the checked checkpoint
//                                         holds, so a listing need not open it (keygate does
//                                         not read it on start)
//   .tmp-keygate-...                      a backup being made, or a pruned one being removed;
//                                         never listed, removed at start and before each backup
// A backup is built under its temporary name, checked (opened read-only, keys and users
// counted and recorded in backup.json), synced file by file, renamed into place and the rename
// synced: a crash or a full
// disk at any point leaves a temporary (cleaned later), never something named like a complete
// backup. The name starts with the creation time (UTC) and ends with a sequence number one
// above the highest in the directory, so names sort in the order the backups were made (seq
// decides when the clock stepped back).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/admin_api.h"
#include "storage/key_store.h"

namespace keygate::storage {

class Backups {
 public:
  struct Options {
    std::string dir;                // created if missing; must be outside the data dir
    uint32_t retention_count = 7;  // complete backups kept after each new one; 0 = all
    // Test hook (KEYGATE_TEST_BACKUP_DELAY_MS, honoured by test builds only): create() waits
    // this long after the checkpoint, as if copying it to another filesystem took that long,
    // so tests can hold a backup in progress for sure.
    uint32_t delay_ms = 0;
  };
  struct Stats {
    uint64_t created_total = 0;        // backups made
    uint64_t failed_total = 0;         // create() calls that made none
    uint64_t pruned_total = 0;         // backups deleted by the retention
    uint64_t prune_failed_total = 0;   // backups the retention could not delete (kept, listed)
  };

  Backups() = default;
  ~Backups();  // releases the directory's lock
  Backups(const Backups&) = delete;
  Backups& operator=(const Backups&) = delete;

  // Creates options.dir (and parents) if needed, checks that keygate can create directories in
  // it and that it neither is nor holds `data_dir`, nor lies inside it (a backup lost with the
  // data dir protects nothing; a data dir inside would be pruned), takes its lock and removes
  // stale temporaries. Fails with one line in `error`. Blocks; start-up only.
  bool open(const Options& options, const std::string& data_dir, std::string* error);

  // Makes a backup of `store` named after `now` (Unix seconds), then deletes the oldest
  // complete backups beyond retention_count (a failed deletion is counted, not an error: the
  // new backup exists). io_error with one line in `error` (the step and the system's reason)
  // when no backup was made; nothing named like a backup is then left behind. Blocks for the
  // checkpoint (a flush, links or copies), the fsyncs and the pruning.
  Status create(const KeyStore& store, int64_t now, BackupInfo* out, std::string* error);

  // The complete backups, highest seq (newest) first, with name, path, created, seq, bytes and
  // (from backup.json, when it says) keys and users; and when the create() in progress as the
  // listing began was started, if one was. Never waits for a create(), and never fails for one
  // beside it: a temporary is never listed, and a backup pruned while it is read is left out.
  // (A listing that says no backup is in progress therefore holds every backup a create()
  // finished before it began.) io_error with one line in `error` when the directory cannot be
  // read. Blocks on the filesystem.
  Status list(BackupListing* out, std::string* error) const;

  Stats stats() const noexcept;
  const std::string& dir() const noexcept { return options_.dir; }
  // A reload's [backup] retention_count: the pruning after the next backup keeps this many
  // (nothing is pruned now). Any thread.
  void set_retention_count(uint32_t retention_count) noexcept {
    retention_count_.store(retention_count, std::memory_order_relaxed);
  }

  // Parses a complete backup's name ("keygate-YYYYMMDDTHHMMSSZ-SEQ"); false for anything else
  // (temporaries, LOCK, an operator's own files), which list() and pruning leave alone.
  static bool parse_name(std::string_view name, int64_t* created, uint64_t* seq);
  // The name of backup `seq` made at `created` (Unix seconds).
  static std::string make_name(int64_t created, uint64_t seq);

 private:
  // Removes every temporary in the directory. Returns false (with `error`) when one stays.
  bool remove_temporaries(std::string* error) const;
  // The complete backups, newest first (list() without the backup in progress).
  Status list_complete(std::vector<BackupInfo>* out, std::string* error) const;
  void prune(std::vector<BackupInfo> complete);

  Options options_;
  // options_.retention_count at open(), then what a reload set (set_retention_count): the one
  // prune() goes by.
  std::atomic<uint32_t> retention_count_{0};
  int lock_fd_ = -1;
  std::mutex create_mutex_;  // one create() at a time
  // When the create() in progress was started (its `now`), nullopt between creates. Its own
  // mutex, never held across I/O: list() must not wait for create_mutex_.
  mutable std::mutex progress_mutex_;
  std::optional<int64_t> in_progress_started_;  // progress_mutex_
  std::atomic<uint64_t> created_total_{0};
  std::atomic<uint64_t> failed_total_{0};
  std::atomic<uint64_t> pruned_total_{0};
  std::atomic<uint64_t> prune_failed_total_{0};
};

}  // namespace keygate::storage
