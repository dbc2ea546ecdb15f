// AdminExecutor: runs admin requests (execute_admin, core/admin_api.h) on a thread of its own,
// so neither JSON work on large bodies nor the blocking, synced store calls run on a worker.
//
// Thread-safe: submit() is called by every worker's AdminHandler; one executor thread takes
// requests in arrival order from a bounded queue (a preallocated ring: queueing never
// allocates) and runs them one at a time, which also serializes admin mutations.
//
// When the queue is full, submit() answers 503 store_unavailable and posts at once (counted in
// rejected_total). Shutdown: destroy the executor after the server has stopped (its workers,
// the tickets' sinks, are gone then). The request in progress finishes; neither it nor the
// requests still queued are posted. In a normal drain there are none: workers wait for their
// deferred requests before they exit. Only a request that outlives the drain deadline
// (drain_timeout_ms, while a store call blocks) can still be running when the workers are
// destroyed; its answer would then be written to freed memory. The engine has no way yet to
// keep a worker's sink alive for such a request (KeyService's fetch pool shares the limit).
#pragma once

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
#include "core/handler.h"
#include "core/permissions.h"

namespace keygate::storage {

class AdminExecutor final : public AdminBackend {
 public:
  struct Options {
    size_t queue_max = 256;                   // requests waiting to run; >= 1
    size_t small_body_bytes_max = 64 * 1024;  // AdminContext: every route but import
    size_t import_keys_max = 100000;          // AdminContext: records per import
    // Unix seconds for AdminContext::now, read once per request; empty = the system clock.
    std::function<int64_t()> clock;
    // AdminContext::random; empty = system_random (getrandom).
    std::function<bool(std::span<uint8_t>)> random;
    // The groups of GET /admin/stats (AdminContext::stats), run on the executor thread; the
    // executor adds its own group, "admin", after them.
    std::function<void(std::vector<StatsGroup>*)> stats;
  };

  struct Stats {
    uint64_t executed_total = 0;  // requests run by the executor thread
    uint64_t rejected_total = 0;  // requests answered 503 at once: queue full or shutting down
  };

  // `store` and `apis` must outlive the executor. Starts the executor thread.
  AdminExecutor(AdminStore& store, const ApiRegistry& apis, Options options);
  // Stops the thread after the request in progress (see the header comment).
  ~AdminExecutor() override;
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

  void run();

  AdminStore& store_;
  AdminContext context_;  // now is set per request, on the executor thread only
  std::function<int64_t()> clock_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Job> ring_;  // mutex_
  size_t head_ = 0;        // mutex_
  size_t queued_ = 0;      // mutex_
  bool stopping_ = false;  // mutex_
  std::atomic<uint64_t> executed_total_{0};
  std::atomic<uint64_t> rejected_total_{0};
  std::thread thread_;  // last: started when everything it uses exists
};

}  // namespace keygate::storage
