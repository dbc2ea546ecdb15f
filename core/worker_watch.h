// WorkerWatch: the main thread's judgement of whether every worker's event loop still turns,
// and of when to tell the service manager's watchdog that keygate is alive (WATCHDOG=1).
//
// Pure logic, main thread only (not thread-safe): the caller reads how long ago each worker's
// loop last passed (Server::loops) and its own monotonic clock, calls poll(), and acts on what
// comes back (a stderr line per transition, the WATCHDOG=1 datagram). No clock, no I/O here.
//
// A worker is stalled when its loop has not passed for longer than stall_timeout_ms. An idle
// worker passes at least every 100 ms (its timer tick), so a stall means a pass that does not
// end: an endless loop, a lock that never returns, a blocking call on the event loop. Its
// connections get no answer meanwhile, and the service manager is told nothing (no WATCHDOG=1)
// until every worker passes again: under systemd with WatchdogSec= a wedged keygate is killed
// and, with Restart=on-failure, restarted.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace keygate {

// worker_stall_timeout_ms: its default and the range the config accepts ([server]).
inline constexpr uint32_t kWorkerStallTimeoutMsDefault = 5000;
// Below this the timeout would come close to the 100 ms an idle worker may sleep in a pass.
inline constexpr uint32_t kWorkerStallTimeoutMsMin = 250;
inline constexpr uint32_t kWorkerStallTimeoutMsMax = 600000;

// One worker as the main thread sees it at a poll.
struct WorkerLoop {
  uint64_t pass_age_ms = 0;  // since its event loop last passed
  bool exited = false;       // its loop returned: a finished drain, or a failed ring
};

class WorkerWatch {
 public:
  struct Options {
    uint32_t stall_timeout_ms = kWorkerStallTimeoutMsDefault;
    // How often to send WATCHDOG=1 while no worker is stalled: half of WATCHDOG_USEC, as
    // sd_watchdog_enabled(3) advises. 0: there is no watchdog to tell.
    uint64_t watchdog_interval_ms = 0;
  };

  // A worker whose stall began or ended at this poll.
  struct Transition {
    unsigned worker = 0;
    bool stalled = false;  // true: it stalled now; false: its stall ended now
    bool exited = false;   // its loop has returned (ended: at a drain; began: outside one)
    // Began: how long its loop has not passed. Ended: about how long it did not pass (from
    // its last pass before the stall to its first after it; at a drain, until it exited).
    uint64_t ms = 0;
  };

  WorkerWatch(unsigned workers, Options options);

  // Looks at every worker (`loops`, index = worker; as many as the constructor was given) at
  // `now_ms` (the caller's monotonic clock) and appends to `transitions` the stalls that began
  // or ended since the last poll. `draining`: a worker whose loop exited is done, not stalled
  // (outside a drain an exited worker serves nothing: it stalls like a wedged one). Returns
  // whether to send WATCHDOG=1 now: the watchdog is on, no worker is stalled, and the last one
  // went at least watchdog_interval_ms ago (or none went yet). Does not allocate beyond
  // `transitions`' growth.
  bool poll(int64_t now_ms, std::span<const WorkerLoop> loops, bool draining,
            std::vector<Transition>* transitions);

  // When poll() is due next (the caller's clock): often enough to notice a stall within about
  // a quarter of stall_timeout_ms (at most 1 s) after it passes the timeout, and at the next
  // WATCHDOG=1. Before the first poll: at once.
  int64_t next_poll_ms() const { return next_poll_ms_; }

  // Workers stalled now, and stalls begun since start (as of the last poll).
  unsigned stalled() const { return stalled_count_; }
  uint64_t stalls_total() const { return stalls_total_; }
  bool stalled(unsigned worker) const { return workers_[worker].stalled; }

  // A reload's [server] worker_stall_timeout_ms: the next poll judges every worker by it (a
  // stall whose age is now within it ends there), and the poll after it comes at the new
  // interval.
  void set_stall_timeout_ms(uint32_t stall_timeout_ms);

  // The interval between two polls with no WATCHDOG=1 due: stall_timeout_ms / 4, 10 ms to 1 s.
  static uint32_t check_interval_ms(uint32_t stall_timeout_ms);

 private:
  struct State {
    bool stalled = false;
    int64_t last_pass_ms = 0;  // stalled: when its loop last passed before the stall
  };

  Options options_;
  uint32_t check_interval_ms_;
  std::vector<State> workers_;
  unsigned stalled_count_ = 0;
  uint64_t stalls_total_ = 0;
  bool pinged_ = false;
  int64_t last_ping_ms_ = 0;
  int64_t next_poll_ms_ = INT64_MIN;
};

}  // namespace keygate
