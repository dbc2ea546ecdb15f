// Admin API: what every /admin route does, as pure logic over an AdminStore.
//
// No I/O and no threads here: execute_admin() parses and validates the request's JSON body
// (simdjson, error codes), calls the store, and renders the JSON response. The admin handler
// (admin_handler.h) authenticates on the worker and hands the request to an executor thread
// (storage/admin_executor.h), which calls execute_admin() there, so neither JSON work on large
// bodies nor the blocking, synced store calls ever run on a worker's event loop.
//
// Routes (all JSON; records never contain the plaintext or the digest; times are RFC 3339 UTC;
// a record's last_used_at is AdminStore::get_last_used's, null when never used):
//   POST   /admin/keys                 201 record + "key" (plaintext, shown this once)
//   GET    /admin/keys                 200 {"keys":[record...],"next_cursor":str|null}
//                                       ?limit=1..1000 (default 100) &cursor= &api= &user=
//                                       &unused_since= (RFC 3339: keys never used or last used
//                                       before it) (filtered pages may be short, even empty:
//                                       page on until next_cursor is null)
//   GET    /admin/keys/{id}            200 record
//   PATCH  /admin/keys/{id}            200 record
//   DELETE /admin/keys/{id}            204
//   POST   /admin/keys/{id}/rotate     201 record + "key"; body optional {"grace_seconds":N}
//   POST   /admin/keys/import          200 {"imported":N,"ids":[...]} (all or nothing)
//   POST   /admin/users                201 user
//   GET    /admin/users                200 {"users":[user...],"next_cursor":str|null}
//                                       ?limit=1..1000 (default 100) &cursor= (users in name
//                                       order; the cursor is opaque and URL-safe)
//   GET    /admin/users/{name}         200 user        ({name} percent-decoded)
//   PATCH  /admin/users/{name}         200 user
//   DELETE /admin/users/{name}         204
//   GET    /admin/apis                 200 {"apis":[{"name","routes"}...]}
//   GET    /admin/logs                 200 {"records":[record...],"next_cursor":str|null}
//                                       ?key_id= &status=100..599 &since= &until= (RFC 3339)
//                                       &limit=1..1000 (default 100) and either &cursor= (newest
//                                       first; page on while next_cursor is not null) or
//                                       &after=SEQ (follow: seq > SEQ, oldest first; next_cursor
//                                       is never null, pass it as the next after; a follow page
//                                       that starts after a gap has "missing":{"from":str,
//                                       "to":str}: seqs no longer in the log). Each record
//                                       is the access-log line's JSON object as stored.
//   POST   /admin/backups              201 {"name","path","created_at","seq","bytes","keys",
//                                       "users"}: a backup of the key store (body ignored)
//   GET    /admin/backups              200 {"backups":[{"name","path","created_at","seq",
//                                       "bytes","keys","users"}...],"in_progress":null|
//                                       {"started_at"}} newest first (keys and users null for
//                                       a backup that does not say); in_progress: the backup
//                                       being made when the listing began
//   GET    /admin/stats                200 {group:{name:number...}|null...}: the instance's
//                                       counters (AdminContext::stats), e.g. "workers",
//                                       "keys", "access_log" (null when not enabled)
// Errors: {"error":code,"field":name|null,"message":text} with 400 (invalid_json,
// unknown_field, invalid_type, invalid_value, missing_field, unknown_api, unknown_user),
// 404 not_found, 405 method_not_allowed (+ Allow), 409 conflict, 413 body_too_large,
// 415 unsupported_media_type (a POST/PATCH body with a Content-Type other than
// application/json; parameters such as charset allowed; no Content-Type is taken as JSON),
// 503 store_unavailable, 503 logs_unavailable (no access log configured, or it cannot be
// read), 409 backups_disabled (no [backup] dir), 500 backup_failed (the message says why:
// "No space left on device", ...); 500 internal_error only when ctx.random fails.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/api_key.h"
#include "core/permissions.h"

namespace keygate {

// The outcome of a store call, as the admin API needs it (storage maps its own Status here).
// kNotConfigured: the store has no such facility (query_logs without an access log).
enum class AdminStoreCode : uint8_t { kOk, kNotFound, kConflict, kIoError, kNotConfigured };
struct AdminStoreResult {
  AdminStoreCode code = AdminStoreCode::kOk;
  const char* message = "";  // static text
  size_t failed_index = 0;   // import: the first offending record
  bool ok() const noexcept { return code == AdminStoreCode::kOk; }
};

// A query of the access log: storage::AccessLog::Query, which core cannot include, field for
// field. A record matches when every filter that is set matches.
struct LogQuery {
  std::string key_id;    // "" = any; else the record's "key_id" must be this string
  int status = 0;        // 0 = any; else the record's "status" must equal it
  int64_t since_us = 0;  // 0 = unbounded; else "time_us" >= since_us
  int64_t until_us = 0;  // 0 = unbounded; else "time_us" < until_us
  uint32_t limit = 100;  // records returned at most
  // Newest-first mode (after_seq == 0): only seq < before_seq (0 = from the newest).
  uint64_t before_seq = 0;
  // Follow mode (after_seq > 0): only seq > after_seq, oldest first. before_seq is ignored.
  uint64_t after_seq = 0;
  // Bytes of log lines examined at most; the scan stops there and returns a cursor to resume.
  uint64_t scan_bytes_max = 256ull << 20;
};

// One page of access-log records: storage::AccessLog::QueryResult, field for field.
struct LogPage {
  std::vector<std::string> records;  // one JSON object text per record, in scan order
  // Newest-first: the before_seq to continue with; 0 when the scan reached the oldest record.
  // Follow: the after_seq to poll with next (never 0).
  uint64_t next_cursor = 0;
  // Follow: seqs missing_from..missing_to came after the query's after_seq, before this page,
  // and are no longer in the log (0 = no gap).
  uint64_t missing_from = 0;
  uint64_t missing_to = 0;
};

// One complete backup of the key store (POST and GET /admin/backups): a directory
// <backup dir>/<name> that keygate can start on (--data-dir) as it is.
struct BackupInfo {
  std::string name;     // "keygate-20261128T011500Z-000042": time of creation (UTC), then seq
  std::string path;     // <backup dir>/<name>, as the configured backup dir spells it
  int64_t created = 0;  // Unix seconds, from the name
  uint64_t seq = 0;     // from the name: backups are made (and listed) in seq order
  uint64_t bytes = 0;   // the sizes of its files, summed (hard-linked files counted in full)
  // Counted in the finished backup (opened read-only) when it was made, and recorded in it; a
  // listing reads that record. nullopt: the backup does not say (made by a keygate that did
  // not record them, or its record is unreadable). Always set by a create.
  std::optional<uint64_t> keys;
  std::optional<uint64_t> users;
};

// GET /admin/backups: the complete backups and whether one is being made.
struct BackupListing {
  std::vector<BackupInfo> backups;  // newest (highest seq) first
  // When the backup being made as the listing began was started (Unix seconds); nullopt when
  // none was. A listing that says none includes every backup completed before it began.
  std::optional<int64_t> in_progress_started;
};

// What execute_admin() needs from storage. Implemented by storage (over KeyService) and by test
// doubles. Calls block; they run on the admin executor thread. Every mutation is synced and
// visible to every worker before it returns.
class AdminStore {
 public:
  virtual ~AdminStore() = default;
  // Keys in id order after `after_id` (exclusive), at most `limit`.
  virtual AdminStoreResult list_keys(std::string_view after_id, size_t limit,
                                     std::vector<KeyRecord>* out) = 0;
  virtual AdminStoreResult get_key(std::string_view id, KeyRecord* out) = 0;
  // conflict: digest or id taken; not_found: record.user names no user.
  virtual AdminStoreResult create_key(const KeyRecord& record) = 0;
  // Replaces the record with the same id (not_found when none). When `previous` is set, the
  // record's digest changed (rotation) and the old digest keeps working until
  // previous->valid_until (Unix seconds); otherwise an old digest stops working at once.
  struct PreviousDigest {
    KeyDigest digest{};
    int64_t valid_until = 0;
  };
  virtual AdminStoreResult update_key(const KeyRecord& record,
                                      const std::optional<PreviousDigest>& previous) = 0;
  virtual AdminStoreResult delete_key(std::string_view id) = 0;
  virtual AdminStoreResult import_keys(std::vector<KeyRecord> records) = 0;
  // When key `id` was last used (Unix seconds; see storage/last_used_writer.h for how late it
  // may be), or nullopt: never used since uses were recorded, or unknown. A last use that
  // cannot be read is nullopt too: it never fails a key's answer. This default: never used.
  virtual std::optional<int64_t> get_last_used(std::string_view /*id*/) { return std::nullopt; }
  // Users in name order (bytewise) after `after_name` (exclusive; "" = from the first; it need
  // not name a stored user), at most `limit`.
  virtual AdminStoreResult list_users(std::string_view after_name, size_t limit,
                                      std::vector<User>* out) = 0;
  virtual AdminStoreResult get_user(std::string_view name, User* out) = 0;
  virtual AdminStoreResult put_user(const User& user) = 0;
  virtual AdminStoreResult delete_user(std::string_view name) = 0;
  // The access-log records matching `query`, including every record appended before the call.
  // kIoError when the log cannot be read. This default is the store without an access log:
  // kNotConfigured (the admin API answers 503 logs_unavailable).
  virtual AdminStoreResult query_logs(const LogQuery& /*query*/, LogPage* /*out*/) {
    return {AdminStoreCode::kNotConfigured, "no access log is configured", 0};
  }
  // Makes a backup of the key store (named after `now`, Unix seconds), with every change
  // that returned before the call; then deletes the oldest backups beyond the retention.
  // kIoError with one line in `*error` when it failed (nothing that looks like a backup is
  // left behind). The admin executor calls this and list_backups() on a thread of their own
  // (is_backup_route), beside the other calls: they must be safe to run alongside them. This
  // default is the store without backups: kNotConfigured (409 backups_disabled).
  virtual AdminStoreResult create_backup(int64_t /*now*/, BackupInfo* /*out*/,
                                         std::string* /*error*/) {
    return {AdminStoreCode::kNotConfigured, "backups are disabled", 0};
  }
  // The complete backups, newest (highest seq) first, and the backup in progress if any. Must
  // not wait for a create_backup() in progress: the executor runs it on a lane of its own
  // (is_backup_listing), so that it answers while a backup runs. kIoError with `*error` when
  // the backup directory cannot be read; kNotConfigured as create_backup.
  virtual AdminStoreResult list_backups(BackupListing* /*out*/, std::string* /*error*/) {
    return {AdminStoreCode::kNotConfigured, "backups are disabled", 0};
  }
};

// One group of GET /admin/stats: counters (only grow) and gauges (move both ways), read when
// the request is served. `present` false renders the group as null (a facility turned off).
struct StatsGroup {
  std::string name;
  bool present = true;
  std::vector<std::pair<std::string, uint64_t>> values;  // in this order
  // How GET /admin/metrics (Prometheus text format) shows the group. Empty `metric`: each value
  // is a metric of its own, keygate_<group>_<value> (counters with a "_total" suffix). Else
  // every value is one series of the counter `metric`, labelled `labels` (e.g. port="data")
  // and its name as the label `label` (e.g. status="200"); groups may share a metric.
  std::string metric;
  std::string labels;
  std::string label;
  // Values (by name) that are gauges, moving both ways; the others are counters.
  std::vector<std::string> gauges;
  // With `metric`: its series are gauges (e.g. one per worker), not counters. Groups sharing a
  // metric must agree.
  bool metric_gauge = false;
};

struct AdminRequest {
  std::string_view method;
  std::string_view path;   // starts with /admin
  std::string_view query;  // without '?'
  std::string_view body;
  size_t body_readable_padding = 0;  // see HttpRequest
  // The key the worker authenticated the request with: its id and the presented value's digest.
  // execute_admin checks it again against the store first, because changes run one at a time
  // and one queued ahead of this request (delete, disable, rotate without grace, apis without
  // admin) may have revoked it after the worker's check: such a request gets the 401/403 it
  // would get if it arrived now. An empty id skips the check (tests of the routes themselves).
  std::string_view key_id;
  KeyDigest key_digest{};
  // The request's Content-Type header value (the first one); empty when it has none.
  std::string_view content_type;
};

struct AdminResponse {
  int status = 200;
  std::string body;          // JSON (empty for 204)
  std::string_view allow;    // for 405: the Allow header value
  bool challenge = false;    // a 401 for the key: add WWW-Authenticate
  // An error answer's code (static text, as in the body): the access record's reason.
  std::string_view error_code;
  // The body's media type (static text); empty: application/json.
  std::string_view content_type;
};

// What a reload of the config file did (POST /admin/reload, as SIGHUP: docs/configuration.md,
// "Reload").
struct ReloadOutcome {
  bool applied = false;
  uint64_t generation = 0;  // of the APIs serving after it (the running one when refused)
  size_t apis = 0;          // APIs in that generation
  // Settings outside [[apis]] the file changes, which take effect at restart only.
  std::vector<std::string> restart_settings;
  // Applied: the workers (by index) that had not taken the new APIs when the reload returned,
  // stalled or too slow to wait for (net::Server::set_apis); each takes them at its next loop
  // pass. Every other worker routes the requests sent after the answer with them.
  std::vector<unsigned> workers_pending;
  // Settings outside [[apis]] the file changes that the reload applied (serving now).
  std::vector<std::string> applied_settings;
  std::string error;  // refused: why, one line ("<file>:<line>:<col>: <what>", ...)
  // Refused because keygate could not reload now (draining, or the reload did not run in
  // time): 503 rather than 400.
  bool unavailable = false;
};

struct AdminContext {
  const ApiRegistry* apis = nullptr;
  int64_t now = 0;  // Unix seconds
  // Random bytes for generated key values and ids (getrandom in production).
  std::function<bool(std::span<uint8_t>)> random;
  size_t small_body_bytes_max = 64 * 1024;  // every route but import
  size_t import_keys_max = 100000;
  // Fills GET /admin/stats (called on the executor thread; it must only read counters); empty:
  // the route answers {}.
  std::function<void(std::vector<StatsGroup>*)> stats;
  // POST /admin/reload: reloads the config file as SIGHUP does and says what it did. Blocks
  // until the reload has run (on keygate's main thread). Empty: the route answers 503.
  std::function<ReloadOutcome()> reload;
};

// Runs one admin request. Never throws (allocation failure aside); any input gets a response.
AdminResponse execute_admin(const AdminRequest& request, AdminStore& store,
                            const AdminContext& ctx);

// True when `path` names an admin route (with any method): used to answer 404 for
// unknown paths before authentication work is queued. Does not allocate.
bool is_admin_route(std::string_view path) noexcept;
// True when `path` is the access-log route (GET /admin/logs, with any method): a request that
// only reads log files and changes nothing, which may run beside the store's changes (the
// admin executor gives it a thread of its own). Does not allocate.
bool is_log_route(std::string_view path) noexcept;
// True when `path` is the backups route (POST and GET /admin/backups, with any method): a
// backup can take minutes (a copy of the whole store to another filesystem, its fsyncs), so
// the admin executor gives backups a thread of their own, where no key revocation waits for
// one (and their listing another: is_backup_listing). A backup may run beside the store's
// changes (a RocksDB checkpoint is consistent on its own). Does not allocate.
bool is_backup_route(std::string_view path) noexcept;
// True when `method` `path` is on the backups route but makes no backup (GET, or a method the
// route refuses): a listing, a directory read that must not wait behind a backup in progress,
// so the admin executor gives it a lane of its own. Does not allocate.
bool is_backup_listing(std::string_view method, std::string_view path) noexcept;

// Formats Unix seconds as RFC 3339 UTC ("2026-11-26T10:00:00Z"); parses the same (also with
// fractional seconds and numeric offsets). Parse returns false on malformed input.
std::string format_rfc3339(int64_t unix_seconds);
bool parse_rfc3339(std::string_view text, int64_t* unix_seconds) noexcept;

}  // namespace keygate
