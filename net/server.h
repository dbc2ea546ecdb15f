// Server: binds the listeners, starts one Worker thread per core, and stops them gracefully.
//
// Owned by the main thread. start() returns only when every worker has set up its ring (or one
// failed), so start-up errors surface as one clear message before anything is served.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/handler.h"
#include "core/worker_watch.h"
#include "net/worker.h"

namespace keygate::net {

class Worker;

struct ServerOptions {
  ListenAddress data_listen;
  ListenAddress admin_listen;
  unsigned workers = 1;  // resolved count, >= 1
  Limits limits;
  uint64_t admin_body_bytes_max = 64 * 1024 * 1024;  // the admin port's body limit (imports)
  // The admin port's open connections, all workers together (limits.connections_per_worker_max
  // counts the data port's only); beyond it new ones are closed at accept.
  uint32_t admin_connections_max = 64;
  HandlerFactory* data_handlers = nullptr;   // one handler per worker for the data port
  HandlerFactory* admin_handlers = nullptr;  // one handler per worker for the admin port
  // Empty, or one per worker (index = worker index); each must outlive the server.
  std::vector<LoopObserver*> loop_observers;
  // The first version of the configured APIs: the routes the handlers go by and where
  // forwarded requests go. Server::set_apis replaces it.
  std::shared_ptr<const ApiSet> apis;
  // Where every request's access record goes (null: no access log), and the cap on each
  // captured body (keys with log_request / log_response). Must outlive the server.
  AccessSink* access_sink = nullptr;
  size_t capture_bytes_max = 64 * 1024;
  // Client connections in each worker ring's registered file table (false: plain descriptors).
  bool registered_files = true;
  // A listening socket the service manager passed (socket activation; checked with
  // check_inherited_socket), or -1: keygate binds the listener itself. The Server owns it
  // from start() on: every worker accepts on a descriptor of its own of this one socket
  // (no SO_REUSEPORT siblings), and the socket outlives keygate in the service manager.
  int data_inherited_fd = -1;
  int admin_inherited_fd = -1;
};

// Checks that `fd` is a listening TCP socket (SOCK_STREAM, SO_ACCEPTCONN, IPv4 or IPv6) and
// reads the address it is bound to into `address`; sets FD_CLOEXEC on it, so no process keygate
// might start inherits it. False with one line in `error` (naming the descriptor) otherwise: a
// closed descriptor, no socket, a UDP or a Unix socket, a socket that does not listen.
bool check_inherited_socket(int fd, ListenAddress* address, std::string* error);

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();

  // Binds both listeners (SO_REUSEPORT, one socket per worker), or takes the inherited socket
  // of a listener that has one, and starts the workers. Fails with one line in `error`
  // (address in use, permission, kernel feature missing).
  bool start(std::string* error);

  // Bound ports (useful with port 0).
  uint16_t data_port() const { return data_port_; }
  uint16_t admin_port() const { return admin_port_; }
  // Whether the listener serves an inherited socket (ServerOptions::*_inherited_fd).
  bool data_inherited() const { return options_.data_inherited_fd >= 0; }
  bool admin_inherited() const { return options_.admin_inherited_fd >= 0; }
  const std::string& ring_mode() const { return ring_mode_; }

  // A reload of the APIs: every worker serves the requests that start from now on with `apis`
  // (requests in progress finish with the version they started with; see Worker::set_apis).
  // Returns once every running worker has taken it, so a request sent after it returns is
  // routed with `apis` whichever worker takes it — except by the workers it returns in
  // `late`: those in `stalled` (the main thread's WorkerWatch says their loop does not pass)
  // are not waited for at all, and those that have not taken it within `wait_ms_max` are not
  // waited for any longer. A worker in `late` takes it at its next loop pass, before any
  // request that pass starts (Worker::set_apis). A worker whose loop has exited serves nothing
  // and is neither waited for nor named. False, nothing changed, with one line in `error` when
  // an upstream address cannot be used (Worker::check_upstreams). Main thread, after start()
  // succeeded and before stop(); blocks for at most `wait_ms_max`.
  bool set_apis(std::shared_ptr<const ApiSet> apis, std::span<const unsigned> stalled,
                uint32_t wait_ms_max, std::vector<unsigned>* late, std::string* error);

  // Tests: worker `worker`'s ring fails at its next loop pass (Worker::fail_ring_for_testing).
  // Any thread; nothing before start() succeeded.
  void fail_ring_for_testing(unsigned worker);

  // Asks every worker to drain without waiting (see stop()). Idempotent.
  void request_stop();

  // Asks every worker to drain and waits until their threads have exited. Idempotent. The
  // workers' memory stays until the Server is destroyed, so threads that still hold a
  // ResumeTicket (key fetches, admin jobs) may post safely until they are stopped: destroy
  // those before the Server.
  void stop();
  // Cuts the drain short: every worker cuts what is still in flight now (as at the drain
  // deadline: access-log reason "shutdown") and exits. Without a drain begun, begins one that
  // ends at once. stop() still has to be called to join the threads.
  void stop_now();
  // Whether every worker's thread has left its loop (then stop() returns without waiting for
  // a drain). True before start() and after a failed one. Any thread.
  bool stopped() const;
  // After stop() and after every thread that holds a ResumeTicket has posted it (stop the
  // AdminExecutor first): writes the access records of the deferred requests the drain
  // deadline cut off, now that their tickets are back (Worker::settle_deferred). Idempotent.
  void settle_deferred();

  // Each worker's event loop now (index = worker): how long ago it last passed, and whether it
  // has exited; for the main thread's WorkerWatch and the stats. Replaces `out`'s contents;
  // empty before start(). Any thread; allocates only when `out` has too little room.
  void loops(std::vector<WorkerLoop>* out) const;

  // The workers' counters (WorkerStats), summed; zeros before start(). Any thread.
  struct Stats {
    unsigned workers = 0;
    uint64_t connections_accepted = 0;
    uint64_t connections_refused = 0;  // both ports
    uint64_t admin_connections_refused = 0;  // of which the admin port's, at its cap
    uint64_t accept_errors = 0;
    uint64_t descriptor_reserve_refused = 0;  // of connections_refused
    uint64_t requests = 0;
    uint64_t parse_errors = 0;
    uint64_t timeouts = 0;
    uint64_t send_too_slow = 0;  // connections closed below send_rate_min_bytes_per_s
    uint64_t upstream_retries = 0;
    uint64_t pending_input_bytes = 0;  // summed (see WorkerStats)
    uint64_t pending_input_peak = 0;   // the largest of the workers'
    uint64_t body_bytes_held = 0;      // all workers (WorkerStats::body_bytes_held)
    uint64_t body_memory_refused = 0;
    // Answers by listener (0: data port, 1: admin port), summed over the workers (see
    // WorkerStats): by status (index = status; 0 = outside 100-599), and by reason code.
    std::array<std::array<uint64_t, WorkerStats::kStatusSlots>, WorkerStats::kListeners>
        responses{};
    std::array<std::map<std::string, uint64_t, std::less<>>, WorkerStats::kListeners> reasons;
  };
  Stats stats() const;

 private:
  ServerOptions options_;
  uint16_t data_port_ = 0;
  uint16_t admin_port_ = 0;
  std::string ring_mode_;
  struct Running;
  std::unique_ptr<Running> running_;
  // running_ for stats(), published once start() succeeded (requests, and so stats() calls,
  // can come in while start() still waits for other workers).
  std::atomic<const Running*> started_{nullptr};
};

}  // namespace keygate::net
