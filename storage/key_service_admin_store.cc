#include "storage/key_service_admin_store.h"

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

AdminStoreResult KeyServiceAdminStore::list_users(std::vector<User>* out) {
  return to_admin_result(keys_.store().for_each_user([&](User& user) {
    out->push_back(std::move(user));
    return true;
  }));
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

}  // namespace keygate::storage
