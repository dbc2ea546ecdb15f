// AdminExecutor: runs admin requests (execute_admin, core/admin_api.h) on threads of its own,
// so neither JSON work on large bodies nor the blocking, synced store calls run on a worker.
//
// Thread-safe: submit() is called by every worker's AdminHandler. Four lanes, each a thread
// taking requests in arrival order from a bounded queue (a preallocated ring: queueing never
// allocates) and running them one at a time:
//   - the main lane: every route but the access log's and the backups', so admin mutations
//     are serialized;
//   - the log lane: GET /admin/logs (is_log_route()), which only reads log files. A query can
//     take long (up to its scan budget of disk reads, a flush waiting on a stalled disk): on
//     its own thread it never delays a key revocation queued behind it. Its key is checked
//     again when it runs, like every request's, so it never runs after a revocation of that
//     key returned.
//   - the backup lane: POST /admin/backups (is_backup_route() but not is_backup_listing()). A
//     backup to another filesystem copies the whole store and syncs it: minutes for a large
//     one. On the main lane the key revocation an operator sends during an incident would wait
//     behind it; on the log lane so would the log query that shows what a leaked key did. Its
//     own thread costs nothing while idle. A backup needs no serialization with the changes:
//     the store's checkpoint is consistent as of its start (every change that returned before
//     the request is in it; one made meanwhile may be or not), and Backups::create runs one at
//     a time. Its key is checked again when it runs, like every request's.
//   - the backup-listing lane: GET /admin/backups (is_backup_listing()), a read of the backup
//     directory, which says whether a backup is in progress. On the backup lane it would wait
//     minutes behind the backup it is asked about (and the lane's small queue would fill with
//     listings: 503); on the log lane behind a long log scan; on the main lane a slow backup
//     disk would delay revocations; on a worker it would stall the event loop. It never waits
//     for a backup (Backups::list takes no lock a backup holds across I/O).
//
// When a lane's queue is full, submit() answers 503 store_unavailable and posts at once
// (counted in rejected_total). Shutdown: stop() (or the destructor) after the server's workers
// have exited (Server::stop), then Server::settle_deferred(), then destroy the server: the
// tickets' sinks (the workers' memory) must outlive the executor. In a normal drain no request
// is left: workers wait for their deferred requests before they exit. A request still with the
// executor at the drain deadline (drain_timeout_ms: a long import, a store call that blocks)
// was cut off from its client; stop() lets the one in progress on each lane finish (so exit
// waits for it: a backup too, since RocksDB's checkpoint cannot be interrupted and a backup
// asked for just before a stop, an upgrade's, is wanted; a supervisor that kills keygate first
// leaves only its temporary, removed at the next start) and answers the ones still queued 503 store_unavailable without running them.
// Every one of them is posted all the same, and settle_deferred() has its worker write its
// access record (reason "shutdown", the status of what the executor did), so no change the
// executor made goes unlogged.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "core/admin_api.h"
#include "core/admin_handler.h"
#include "core/api_versions.h"
#include "core/handler.h"
#include "core/permissions.h"

namespace keygate::storage {

class AdminExecutor final : public AdminBackend {
 public:
  struct Options {
    size_t queue_max = 256;                   // requests waiting to run on the main lane; >= 1
    size_t log_queue_max = 16;                // log queries waiting to run; >= 1
    // Backups waiting to run; >= 1. Small: each backup waits for the one before it, and a
    // client that queues more than a few is better told at once (503) than made to wait
    // minutes.
    size_t backup_queue_max = 4;
    // Backup listings waiting to run; >= 1. A listing is one directory read: like log queries,
    // a few clients polling at once fit.
    size_t backup_list_queue_max = 16;
    size_t small_body_bytes_max = 64 * 1024;  // AdminContext: every route but import
    size_t import_keys_max = 100000;          // AdminContext: records per import
    // Unix seconds for AdminContext::now, read once per request; empty = the system clock.
    // Every lane's thread calls it: it must be thread-safe, as must `random`.
    std::function<int64_t()> clock;
    // AdminContext::random; empty = system_random (getrandom).
    std::function<bool(std::span<uint8_t>)> random;
    // The groups of GET /admin/stats (AdminContext::stats), run on the main lane's thread;
    // the executor adds its own group, "admin", after them.
    std::function<void(std::vector<StatsGroup>*)> stats;
    // POST /admin/reload (AdminContext::reload), run on the main lane's thread, which it
    // blocks until the reload has run; empty: the route answers 503.
    std::function<ReloadOutcome()> reload;
  };

  struct Stats {
    uint64_t executed_total = 0;  // requests run by the executor's threads
    uint64_t rejected_total = 0;  // requests answered 503 at once: queue full or shutting down
  };

  // `store` and `apis` must outlive the executor; `store` is called from every lane's thread
  // (the log lane: get_key() and query_logs() only; the backup lane: get_key() and
  // create_backup() only; the backup-listing lane: get_key() and list_backups() only, which
  // must not wait for a create_backup() in progress). Each request is validated against the
  // version of the APIs current when it starts to run (apis.current(), held until it is done):
  // after a reload, a key naming an API the reload added is accepted, one naming an API it
  // removed is refused. Starts the executor's threads.
  AdminExecutor(AdminStore& store, const ApiVersions& apis, Options options);
  // stop(), if it was not called.
  ~AdminExecutor() override;
  // Stops the threads after the requests in progress; the queued ones are answered 503 (see
  // the header comment). Every request is posted. Idempotent; not from a lane's thread.
  void stop() noexcept;
  AdminExecutor(const AdminExecutor&) = delete;
  AdminExecutor& operator=(const AdminExecutor&) = delete;

  // Worker thread, non-blocking (a short critical section, no allocation): queues the request,
  // or fills a 503 and posts at once when the queue is full.
  void submit(const AdminRequest& request, AdminResponse* out,
              ResumeTicket ticket) noexcept override;

  Stats stats() const noexcept;

 private:
  struct Job {
    AdminRequest request;
    AdminResponse* out = nullptr;
    ResumeTicket ticket;
  };
  // One thread and its queue.
  struct Lane {
    AdminContext context;         // now is set per request, on the lane's thread only
    std::condition_variable wake;
    std::vector<Job> ring;  // mutex_
    size_t head = 0;        // mutex_
    size_t queued = 0;      // mutex_
    std::thread thread;
  };

  void run(Lane& lane);
  // Sizes `lane`'s queue and starts its thread, named `thread_name` (at most 15 characters).
  void start(Lane& lane, size_t queue_max, const char* thread_name);
  // Every lane, for what is done to each alike (wake, join).
  std::array<Lane*, 4> lanes() { return {&main_, &logs_, &backups_, &backup_lists_}; }

  AdminStore& store_;
  const ApiVersions& apis_;
  std::function<int64_t()> clock_;  // called on every lane's thread

  std::mutex mutex_;  // guards every lane's queue and stopping_
  bool stopping_ = false;  // mutex_
  std::atomic<uint64_t> executed_total_{0};
  std::atomic<uint64_t> rejected_total_{0};
  Lane main_;  // last: their threads start when everything they use exists
  Lane logs_;
  Lane backups_;
  Lane backup_lists_;
};

}  // namespace keygate::storage
