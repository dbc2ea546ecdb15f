#include "storage/key_service_admin_store.h"

#include <string>
#include <utility>

namespace keygate::storage {

AdminStoreResult to_admin_result(Status status) noexcept {
  AdminStoreResult r;
  r.message = status.message();
  switch (status.code()) {
    case Status::Code::kOk:
      r.code = AdminStoreCode::kOk;
      break;
    case Status::Code::kNotFound:
      r.code = AdminStoreCode::kNotFound;
      break;
    case Status::Code::kConflict:
      r.code = AdminStoreCode::kConflict;
      break;
    case Status::Code::kInvalidArgument:
    case Status::Code::kIoError:
    case Status::Code::kUnavailable:
      r.code = AdminStoreCode::kIoError;
      break;
  }
  return r;
}

AdminStoreResult KeyServiceAdminStore::list_keys(std::string_view after_id, size_t limit,
                                                 std::vector<KeyRecord>* out) {
  return to_admin_result(keys_.store().list_keys(after_id, limit, out));
}

AdminStoreResult KeyServiceAdminStore::get_key(std::string_view id, KeyRecord* out) {
  return to_admin_result(keys_.store().get_key_by_id(id, out));
}

std::optional<int64_t> KeyServiceAdminStore::get_last_used(std::string_view id) {
  int64_t at = 0;
  if (!keys_.store().get_last_used(id, &at).is_ok()) return std::nullopt;
  return at;
}

AdminStoreResult KeyServiceAdminStore::create_key(const KeyRecord& record) {
  return to_admin_result(keys_.create_key(record));
}

AdminStoreResult KeyServiceAdminStore::update_key(const KeyRecord& record,
                                                  const std::optional<PreviousDigest>& previous) {
  std::optional<KeyService::PreviousDigest> grace;
  if (previous) grace = KeyService::PreviousDigest{previous->digest, previous->valid_until};
  return to_admin_result(keys_.update_key(record, grace));
}

AdminStoreResult KeyServiceAdminStore::delete_key(std::string_view id) {
  return to_admin_result(keys_.delete_key(id));
}

AdminStoreResult KeyServiceAdminStore::import_keys(std::vector<KeyRecord> records) {
  size_t failed_index = 0;
  AdminStoreResult r = to_admin_result(keys_.import_keys(std::move(records), &failed_index));
  if (!r.ok()) r.failed_index = failed_index;
  return r;
}

AdminStoreResult KeyServiceAdminStore::list_users(std::string_view after_name, size_t limit,
                                                  std::vector<User>* out) {
  return to_admin_result(keys_.store().list_users(after_name, limit, out));
}

AdminStoreResult KeyServiceAdminStore::get_user(std::string_view name, User* out) {
  return to_admin_result(keys_.store().get_user(name, out));
}

AdminStoreResult KeyServiceAdminStore::put_user(const User& user) {
  return to_admin_result(keys_.put_user(user));
}

AdminStoreResult KeyServiceAdminStore::delete_user(std::string_view name) {
  return to_admin_result(keys_.delete_user(name));
}

AdminStoreResult KeyServiceAdminStore::query_logs(const LogQuery& query, LogPage* out) {
  if (log_ == nullptr) {
    return {AdminStoreCode::kNotConfigured, "no access log is configured", 0};
  }
  // A failed flush (the writer cannot write: disk full) still leaves the segments readable, and
  // that is when an operator most needs them; the unwritten records stay queued and show up in
  // a later query once writing works again (AccessLogStats::write_errors counts the failures).
  // Nor does the query wait long for a writer stalled on the disk: it reads what is there.
  static_cast<void>(log_->flush(kQueryFlushWait));
  AccessLog::Query q;
  q.key_id = query.key_id;
  q.status = query.status;
  q.since_us = query.since_us;
  q.until_us = query.until_us;
  q.limit = query.limit;
  q.before_seq = query.before_seq;
  q.after_seq = query.after_seq;
  q.scan_bytes_max = query.scan_bytes_max;
  AccessLog::QueryResult result;
  std::string error;
  // The error text names a file and errno; the admin API's messages are static, so it stays
  // here.
  if (!log_->query(q, &result, &error)) {
    return {AdminStoreCode::kIoError, "the access log cannot be read", 0};
  }
  out->records = std::move(result.records);
  out->next_cursor = result.next_cursor;
  out->missing_from = result.missing_from;
  out->missing_to = result.missing_to;
  return {};
}

AdminStoreResult KeyServiceAdminStore::create_backup(int64_t now, BackupInfo* out,
                                                     std::string* error) {
  if (backups_ == nullptr) return AdminStore::create_backup(now, out, error);
  return to_admin_result(backups_->create(keys_.store(), now, out, error));
}

AdminStoreResult KeyServiceAdminStore::list_backups(BackupListing* out, std::string* error) {
  if (backups_ == nullptr) return AdminStore::list_backups(out, error);
  return to_admin_result(backups_->list(out, error));
}

}  // namespace keygate::storage
