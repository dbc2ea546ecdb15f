// Worker: one thread, one io_uring, its own listening sockets and its own connections.
//
// Thread-per-core: a Worker is created and run on its own thread and shares nothing mutable with
// other workers; the only cross-thread calls are request_stop(), set_apis() (a reload) and the
// ResumeTicket posts of deferred requests (a mutex-guarded list and an eventfd, off the common
// request path). Each worker accepts on its own
// SO_REUSEPORT socket per listener (multishot accept), or on its own descriptor of a socket
// systemd passed, shared with the other workers (single-shot accepts, WorkerListener::inherited),
// reads with multishot receive into a
// provided buffer ring, parses with HttpParser, calls the listener's Handler, and writes the
// responses of each event-loop pass with one send per connection. Every buffer handed to the
// kernel stays owned by its operation until its completion is reaped.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/api_versions.h"
#include "core/handler.h"
#include "core/limits.h"
#include "core/permissions.h"

namespace keygate::net {

// Counts by reason code (short names: every code keygate writes is a literal of its own),
// without a lock or an allocation: a fixed table the worker fills as codes first appear. Written
// by one thread (the worker); read by any, each slot's name published before its count is read.
// Codes beyond the table's room or longer than kNameMax bytes are counted under "other".
class ReasonCounters {
 public:
  static constexpr size_t kSlots = 64;
  static constexpr size_t kNameMax = 47;

  // The worker thread only. An empty code counts nothing.
  void bump(std::string_view code) noexcept;
  // Calls f(name, count) for every code seen so far, "other" last when it counted any.
  // Any thread.
  template <typename F>
  void for_each(F&& f) const {
    const uint32_t used = used_.load(std::memory_order_acquire);
    for (uint32_t i = 0; i < used; ++i) {
      f(std::string_view(slots_[i].name, slots_[i].length),
        slots_[i].count.load(std::memory_order_relaxed));
    }
    if (const uint64_t other = other_.load(std::memory_order_relaxed); other != 0) {
      f(std::string_view("other"), other);
    }
  }

 private:
  struct Slot {
    char name[kNameMax];
    uint8_t length = 0;
    std::atomic<uint64_t> count{0};
  };
  std::array<Slot, kSlots> slots_{};
  std::atomic<uint32_t> used_{0};
  std::atomic<uint64_t> other_{0};
};

// Counters a worker keeps for itself (read by tests and, later, metrics). Written only by the
// worker thread; read after the worker stopped or as relaxed snapshots.
struct WorkerStats {
  std::atomic<uint64_t> connections_accepted{0};
  // Closed at accept: over their listener's cap (WorkerListener::connections_max or budget),
  // or draining.
  std::atomic<uint64_t> connections_refused{0};
  // Accepts that failed for want of a resource (EMFILE: RLIMIT_NOFILE reached, ENFILE, ENOMEM):
  // the connection waits in the listen backlog and accepting resumes on the next tick.
  std::atomic<uint64_t> accept_errors{0};
  // Of connections_refused: closed at accept because fewer than the reserve of descriptors was
  // left (the data port keeps kDescriptorReserve free, the admin port half of it).
  std::atomic<uint64_t> descriptor_reserve_refused{0};
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> parse_errors{0};
  std::atomic<uint64_t> timeouts{0};
  // Connections closed because their client took its response slower than
  // Limits::send_rate_min_bytes_per_s (Worker::Impl::on_send).
  std::atomic<uint64_t> send_too_slow{0};
  // Requests sent again on a new connection after a pooled one failed (retry_forward).
  std::atomic<uint64_t> upstream_retries{0};
  // Gauges of the input client connections hold because it cannot be parsed yet (a connection
  // at pipeline_depth_max, behind a deferred or forwarded request, or streaming a body the
  // upstream does not take yet): the heap bytes of the buffers holding it (their capacity,
  // kept by released slots too), and the most one connection has held at once since start.
  std::atomic<uint64_t> pending_input_bytes{0};
  std::atomic<uint64_t> pending_input_peak{0};
  // Bytes of request bodies the worker holds for the data port now (a gauge: bodies kept to
  // search them for a key, and their captures), bounded by Limits::body_memory_per_worker_max;
  // and the requests refused (503 body_memory_exhausted) because theirs would have passed it.
  std::atomic<uint64_t> body_bytes_held{0};
  std::atomic<uint64_t> body_memory_refused{0};
  // Answers by listener (0: data port, 1: admin port), one per access record (whether or not
  // the access log is on): by status (index = status, 100-599; any other status at 0) and by
  // the record's reason code (the error code of a refusal, "client_closed", ...).
  static constexpr size_t kListeners = 2;
  static constexpr size_t kStatusSlots = 600;
  std::array<std::array<std::atomic<uint64_t>, kStatusSlots>, kListeners> responses{};
  std::array<ReasonCounters, kListeners> reasons;
  // When the worker's event loop last passed (CLOCK_MONOTONIC_COARSE, ms): stored once per
  // pass, right after its wait, and at the end of init(). The main thread reads it to tell a
  // wedged worker (Worker::loop_pass_age_ms, core/worker_watch.h). An idle worker passes at
  // least once per timer tick (100 ms).
  std::atomic<int64_t> loop_pass_ms{0};
};

// A cap on one listener's open connections in all workers together (the admin port's
// [admin] connections_max): every worker accepts on its own SO_REUSEPORT socket and the kernel
// picks which, so a per-worker cap would depend on that choice. Thread-safe; used only when one
// of the listener's connections is accepted or released, never per request.
class ConnectionBudget {
 public:
  explicit ConnectionBudget(uint32_t max) : max_(max) {}
  ConnectionBudget(const ConnectionBudget&) = delete;
  ConnectionBudget& operator=(const ConnectionBudget&) = delete;

  // Takes a place for a new connection; false (counted in refused()) when all `max` are taken.
  bool take() noexcept;
  // Gives back the place of a connection taken with take().
  void give_back() noexcept;
  // Connections refused so far. Any thread.
  uint64_t refused() const noexcept { return refused_.load(std::memory_order_relaxed); }

 private:
  const uint32_t max_;
  std::atomic<uint32_t> open_{0};
  std::atomic<uint64_t> refused_{0};
};

struct WorkerListener {
  int fd = -1;                        // listening socket; the worker closes it
  std::unique_ptr<Handler> handler;   // this worker's handler for the listener
  uint64_t body_bytes_max = 0;        // request body limit on this listener (413 above)
  // Handler::handle_head is called for requests with a body (see handler.h): the data port when
  // an API forwards, the admin port (a key is checked before a large body is read).
  bool decides_at_head = false;
  // The access log's "listener" value: "data" or "admin".
  std::string_view name = "data";
  // Connections of this listener one worker keeps open; beyond it new ones are closed at accept
  // (the data port: connections_per_worker_max). Counted per listener: the connections of one
  // never take the places of another's. The sum over the listeners sizes the registered file
  // table.
  uint32_t connections_max = 0;
  // When set, the listener's connections take their places in this budget, shared with the
  // other workers, instead (the admin port; connections_max is then the budget's max, which one
  // worker cannot pass either). Must outlive the worker.
  ConnectionBudget* budget = nullptr;
  // The bodies this listener's requests keep in memory (a handler's kNeedBody) count against
  // the worker's Limits::body_memory_per_worker_max (the data port).
  bool body_budget = false;
  // The socket is one a service manager passed (systemd socket activation): every worker
  // accepts on its own descriptor of it, and it outlives keygate. The drain then only stops
  // accepting and closes this worker's descriptor, never shutdown()s the socket (that would
  // reset the connections waiting in its backlog, which the next keygate is to serve), and a
  // connection the kernel hands over while the accept is being cancelled is served, not closed.
  bool inherited = false;
  // The admin port: a reload sets body_bytes_max from WorkerSettings::admin_body_bytes_max
  // (the other listeners' from its limits.body_bytes_max).
  bool admin = false;
  // SO_SNDBUF to set on each accepted connection (0: none). Only for an inherited socket:
  // keygate's own listening sockets carry Limits::send_buffer_bytes themselves, and the kernel
  // copies it to every connection they accept (no system call per accept); a socket the
  // service manager passed is its own, not keygate's to change.
  uint32_t send_buffer_bytes = 0;
};

class Worker {
 public:
  // `observer` (may be null) is called around every blocking wait; it must outlive the worker.
  // `apis` is the first version of the APIs: the routes the handlers go by
  // (RequestContext::apis) and the upstreams forwarded requests go to.
  Worker(unsigned index, const Limits& limits, std::vector<WorkerListener> listeners,
         LoopObserver* observer, std::shared_ptr<const ApiSet> apis);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Sets up the ring, the buffer ring and the first operations. Must run on the thread that
  // will call run() (the ring is created SINGLE_ISSUER). On failure returns false with one line
  // in `error` naming the missing kernel feature.
  bool init(std::string* error);

  // Runs the event loop until a requested stop has drained (or the drain timeout passed), or
  // until the ring fails (io_uring_enter returns an error it cannot retry). Then, outside a
  // drain, the worker stops serving for good: it closes its listening sockets (an own
  // SO_REUSEPORT socket is shut down, which resets the connections in its backlog; of an
  // inherited one only its own descriptor is closed) so new connections go to the other
  // workers, cuts its open connections (access-log reason "worker_failed") and tears its ring
  // down; one line on stderr says so.
  void run();

  // Thread-safe, async-signal-unsafe: asks the worker to stop accepting, finish in-flight
  // requests (bounded by limits.drain_timeout_ms) and return from run().
  void request_stop();
  // Thread-safe: cuts a drain short (or stops without one): the drain deadline becomes now, so
  // run() cuts what is still in flight (access-log reason "shutdown") and returns within one
  // loop pass. Deferred requests are settled as at the deadline (settle_deferred()).
  void request_stop_now();
  // After run() has returned (its thread joined): writes the access records of the deferred
  // requests cut at the drain deadline whose tickets were posted since (an admin job the
  // executor finished after the workers exited). From the thread that joined the worker's.
  void settle_deferred();

  // Thread-safe, non-blocking (a short lock and an eventfd write): the worker serves requests
  // that start after its next loop pass with `apis` (a reload), and adopts its settings (when
  // set) at that pass, before apis_generation() says it took it (Impl::adopt_settings says
  // what they change for connections and requests in progress). Requests already started finish
  // with the version they started with. Upstream servers the new version keeps (the same
  // address in an API of the same name) keep their idle connections and skip state, and the
  // old version's busy connections to them join the new pools after their response; the
  // connections to the others are closed when idle (now, for those in the pool). Several posts
  // before the worker looks: the last one wins. apis_generation() tells when it took it.
  void set_apis(std::shared_ptr<const ApiSet> apis);
  // The generation (ApiSet::generation) of the version new requests get now. Any thread.
  uint64_t apis_generation() const;
  // run() has returned (stopped, or its ring failed). Any thread.
  bool exited() const;
  // Tests (the KEYGATE_TEST_HOOKS build's GET /_keygate/test/ring-fail): the worker's next
  // loop pass fails as if io_uring_enter had returned a fatal error (EBADFD), and it stops
  // serving as on a real ring failure (see run()). Any thread, after init() succeeded.
  void fail_ring_for_testing();
  // Milliseconds since the worker's event loop last passed (WorkerStats::loop_pass_ms), read
  // now. Any thread, after init() succeeded.
  uint64_t loop_pass_age_ms() const;
  // Whether every upstream address of `apis` can be used (what make_apis() would refuse):
  // false with one line in `error`. Any thread.
  static bool check_upstreams(const std::vector<ApiConfig>& apis, std::string* error);

  // Access records of every request go to `sink` (may be null: none), with captures of at most
  // `capture_bytes_max` bytes per body. Call before init(); the sink must outlive the worker.
  void set_access_log(AccessSink* sink, size_t capture_bytes_max);

  // false: client connections use plain descriptors only, no registered file table
  // (troubleshooting, and tests of that path). Call before init().
  void set_registered_files(bool on);

  // Which ring set-up the kernel accepted, e.g. "single_issuer+defer_taskrun+fixed_files".
  const std::string& ring_mode() const;
  const WorkerStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keygate::net
