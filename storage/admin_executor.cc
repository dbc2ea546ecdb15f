#include "storage/admin_executor.h"

#include <pthread.h>

#include <chrono>
#include <utility>

#include "core/assert.h"
#include "storage/system_random.h"

namespace keygate::storage {
namespace {

constexpr std::string_view kQueueFullBody =
    "{\"error\":\"store_unavailable\",\"field\":null,"
    "\"message\":\"the admin API is busy, try again\"}\n";

int64_t system_clock_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

AdminExecutor::AdminExecutor(AdminStore& store, const ApiRegistry& apis, Options options)
    : store_(store),
      clock_(options.clock ? std::move(options.clock)
                           : std::function<int64_t()>(system_clock_seconds)),
      ring_(options.queue_max) {
  KEYGATE_ASSERT(options.queue_max >= 1);
  context_.apis = &apis;
  context_.random = options.random ? std::move(options.random)
                                   : std::function<bool(std::span<uint8_t>)>(system_random);
  context_.small_body_bytes_max = options.small_body_bytes_max;
  context_.import_keys_max = options.import_keys_max;
  context_.stats = [this, outer = std::move(options.stats)](std::vector<StatsGroup>* groups) {
    if (outer) outer(groups);
    const Stats s = stats();
    groups->push_back({"admin", true,
                       {{"executed_total", s.executed_total}, {"rejected_total", s.rejected_total}}});
  };
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "kg-admin");
    run();
  });
}

AdminExecutor::~AdminExecutor() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void AdminExecutor::submit(const AdminRequest& request, AdminResponse* out,
                           ResumeTicket ticket) noexcept {
  bool queued = false;
  {
    std::lock_guard lock(mutex_);
    if (!stopping_ && queued_ < ring_.size()) {
      Job& job = ring_[(head_ + queued_) % ring_.size()];
      job.request = request;
      job.out = out;
      job.ticket = ticket;
      ++queued_;
      queued = true;
    }
  }
  if (queued) {
    wake_.notify_one();
    return;
  }
  rejected_total_.fetch_add(1, std::memory_order_relaxed);
  out->status = 503;
  out->allow = {};
  out->challenge = false;
  // The caller's pooled response keeps its capacity, so this rarely allocates.
  out->body.assign(kQueueFullBody);
  ticket.post();
}

void AdminExecutor::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return queued_ > 0 || stopping_; });
      if (stopping_) return;  // queued jobs are dropped: their workers are gone (see header)
      job = ring_[head_];
      ring_[head_] = Job{};
      head_ = (head_ + 1) % ring_.size();
      --queued_;
    }
    context_.now = clock_();
    *job.out = execute_admin(job.request, store_, context_);
    executed_total_.fetch_add(1, std::memory_order_relaxed);
    // Posting under the mutex orders it against the destructor: once stopping_ is set, nothing
    // is posted any more. (A request still running after the workers exited outlived the
    // drain deadline; see the header.)
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    job.ticket.post();
  }
}

AdminExecutor::Stats AdminExecutor::stats() const noexcept {
  Stats s;
  s.executed_total = executed_total_.load(std::memory_order_relaxed);
  s.rejected_total = rejected_total_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keygate::storage
