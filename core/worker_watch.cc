#include "core/worker_watch.h"

#include <algorithm>

#include "core/assert.h"

namespace keygate {

WorkerWatch::WorkerWatch(unsigned workers, Options options)
    : options_(options),
      check_interval_ms_(check_interval_ms(options.stall_timeout_ms)),
      workers_(workers) {}

void WorkerWatch::set_stall_timeout_ms(uint32_t stall_timeout_ms) {
  options_.stall_timeout_ms = stall_timeout_ms;
  check_interval_ms_ = check_interval_ms(stall_timeout_ms);
}

uint32_t WorkerWatch::check_interval_ms(uint32_t stall_timeout_ms) {
  // A quarter of the timeout: a stall is said at most a quarter late. Never more than 1 s
  // apart (a long timeout still ends its stall's line soon after the worker passes again),
  // never less than 10 ms (the main thread should not spin on a tiny timeout).
  return std::clamp<uint32_t>(stall_timeout_ms / 4, 10, 1000);
}

bool WorkerWatch::poll(int64_t now_ms, std::span<const WorkerLoop> loops, bool draining,
                       std::vector<Transition>* transitions) {
  KEYGATE_ASSERT(loops.size() == workers_.size());
  for (unsigned i = 0; i < workers_.size(); ++i) {
    const WorkerLoop& loop = loops[i];
    State& state = workers_[i];
    const int64_t last_pass_ms = now_ms - static_cast<int64_t>(loop.pass_age_ms);
    // At a drain a worker whose loop returned has done its work; outside one it serves nothing
    // and its age grows like a wedged worker's.
    const bool done = draining && loop.exited;
    const bool late = !done && loop.pass_age_ms > options_.stall_timeout_ms;
    if (!state.stalled && late) {
      state.stalled = true;
      state.last_pass_ms = last_pass_ms;
      ++stalled_count_;
      ++stalls_total_;
      transitions->push_back({i, true, loop.exited, loop.pass_age_ms});
    } else if (state.stalled && !late) {
      state.stalled = false;
      --stalled_count_;
      const int64_t until_ms = done ? now_ms : last_pass_ms;
      const int64_t stalled_ms = std::max<int64_t>(until_ms - state.last_pass_ms, 0);
      transitions->push_back({i, false, loop.exited, static_cast<uint64_t>(stalled_ms)});
    }
  }
  next_poll_ms_ = now_ms + check_interval_ms_;
  const uint64_t interval_ms = options_.watchdog_interval_ms;
  // While a worker is stalled nothing is sent, however long: the service manager is to see
  // keygate as dead. Polls go on at the check interval to notice the end of the stall, and the
  // first poll without a stall sends at once (its interval has passed by then).
  if (interval_ms == 0 || stalled_count_ > 0) return false;
  const bool due = !pinged_ || now_ms - last_ping_ms_ >= static_cast<int64_t>(interval_ms);
  if (due) {
    pinged_ = true;
    last_ping_ms_ = now_ms;
  }
  next_poll_ms_ = std::min(next_poll_ms_, last_ping_ms_ + static_cast<int64_t>(interval_ms));
  return due;
}

}  // namespace keygate
