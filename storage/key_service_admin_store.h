// KeyServiceAdminStore: the AdminStore the admin API runs on in production, over KeyService
// (keys and users) and, when one is set, the AccessLog (GET /admin/logs).
//
// Thread-safe as KeyService and AccessLog are; every call blocks (store reads, synced writes
// followed by a cache grace period, log flushes and segment reads), so it runs on the admin
// executor thread, never on a worker. When a mutation returns, every worker sees its effect
// (KeyService's contract). set_access_log() is start-up wiring: call it before the store is
// shared with the executor.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string_view>
#include <vector>

#include "core/admin_api.h"
#include "storage/access_log.h"
#include "storage/backups.h"
#include "storage/key_service.h"
#include "storage/key_store.h"

namespace keygate::storage {

// The admin API's view of a storage outcome: ok, not_found and conflict map to themselves;
// io_error, unavailable and invalid_argument (a record storage cannot accept, which the admin
// API's validation should have caught) to kIoError, which the admin API answers with 503.
// The message is the status's static text.
AdminStoreResult to_admin_result(Status status) noexcept;

class KeyServiceAdminStore final : public AdminStore {
 public:
  // `keys` must be open and outlive this object.
  explicit KeyServiceAdminStore(KeyService& keys) : keys_(keys) {}

  AdminStoreResult list_keys(std::string_view after_id, size_t limit,
                             std::vector<KeyRecord>* out) override;
  AdminStoreResult get_key(std::string_view id, KeyRecord* out) override;
  AdminStoreResult create_key(const KeyRecord& record) override;
  AdminStoreResult update_key(const KeyRecord& record,
                              const std::optional<PreviousDigest>& previous) override;
  AdminStoreResult delete_key(std::string_view id) override;
  AdminStoreResult import_keys(std::vector<KeyRecord> records) override;
  // From the store's last-used space (KeyStore::get_last_used); nullopt when it has none or
  // it cannot be read.
  std::optional<int64_t> get_last_used(std::string_view id) override;
  AdminStoreResult list_users(std::string_view after_name, size_t limit,
                              std::vector<User>* out) override;
  AdminStoreResult get_user(std::string_view name, User* out) override;
  AdminStoreResult put_user(const User& user) override;
  AdminStoreResult delete_user(std::string_view name) override;

  // The access log query_logs() reads; nullptr (the default): none, and query_logs() answers
  // kNotConfigured. `log` must outlive this object. Not synchronized: set it before any call.
  void set_access_log(AccessLog* log) noexcept { log_ = log; }
  // Flushes the log (so a query sees what was appended just before it), then queries it.
  // kIoError when the log directory cannot be listed; a failed flush does not fail the query,
  // and neither does one that takes longer than kQueryFlushWait (a write stalled on the disk):
  // the query then reads what the segments hold.
  AdminStoreResult query_logs(const LogQuery& query, LogPage* out) override;
  static constexpr std::chrono::milliseconds kQueryFlushWait{1000};

  // The backups create_backup() and list_backups() use; nullptr (the default): none, and both
  // answer kNotConfigured. `backups` must be open and outlive this object. Not synchronized:
  // set it before any call.
  void set_backups(Backups* backups) noexcept { backups_ = backups; }
  // A backup of the key service's store (see Backups::create); kIoError with `*error`.
  AdminStoreResult create_backup(int64_t now, BackupInfo* out, std::string* error) override;
  AdminStoreResult list_backups(BackupListing* out, std::string* error) override;

 private:
  KeyService& keys_;
  AccessLog* log_ = nullptr;
  Backups* backups_ = nullptr;
};

}  // namespace keygate::storage
