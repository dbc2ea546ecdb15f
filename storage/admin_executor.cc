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
constexpr std::string_view kStoppedBody =
    "{\"error\":\"store_unavailable\",\"field\":null,"
    "\"message\":\"keygate is shutting down\"}\n";

// A request the executor will not run: 503 store_unavailable, filled in before its post.
void refuse(AdminResponse* out, std::string_view body) noexcept {
  out->status = 503;
  out->error_code = "store_unavailable";
  out->allow = {};
  out->challenge = false;
  // The caller's pooled response keeps its capacity, so this rarely allocates.
  out->body.assign(body);
}

int64_t system_clock_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

AdminExecutor::AdminExecutor(AdminStore& store, const ApiVersions& apis, Options options)
    : store_(store),
      apis_(apis),
      clock_(options.clock ? std::move(options.clock)
                           : std::function<int64_t()>(system_clock_seconds)) {
  KEYGATE_ASSERT(options.queue_max >= 1);
  KEYGATE_ASSERT(options.log_queue_max >= 1);
  KEYGATE_ASSERT(options.backup_queue_max >= 1);
  KEYGATE_ASSERT(options.backup_list_queue_max >= 1);
  AdminContext& context = main_.context;
  context.random = options.random ? std::move(options.random)
                                  : std::function<bool(std::span<uint8_t>)>(system_random);
  context.small_body_bytes_max = options.small_body_bytes_max;
  context.import_keys_max = options.import_keys_max;
  context.reload = std::move(options.reload);
  context.stats = [this, outer = std::move(options.stats)](std::vector<StatsGroup>* groups) {
    if (outer) outer(groups);
    const Stats s = stats();
    StatsGroup& admin = groups->emplace_back();
    admin.name = "admin";
    admin.values = {{"executed_total", s.executed_total}, {"rejected_total", s.rejected_total}};
  };
  // The other lanes run only their own routes (the log query, the backups), which read no body
  // beyond the small limit and none of the rest (execute_admin wants a random source all the
  // same; it is thread-safe: getrandom, or the caller's).
  for (Lane* lane : {&logs_, &backups_, &backup_lists_}) {
    lane->context.random = context.random;
    lane->context.small_body_bytes_max = options.small_body_bytes_max;
  }
  start(main_, options.queue_max, "kg-admin");
  start(logs_, options.log_queue_max, "kg-admin-logs");
  start(backups_, options.backup_queue_max, "kg-admin-backup");
  start(backup_lists_, options.backup_list_queue_max, "kg-admin-bklist");
}

void AdminExecutor::start(Lane& lane, size_t queue_max, const char* thread_name) {
  lane.ring.resize(queue_max);
  lane.thread = std::thread([this, &lane, thread_name] {
    pthread_setname_np(pthread_self(), thread_name);
    run(lane);
  });
}

AdminExecutor::~AdminExecutor() { stop(); }

void AdminExecutor::stop() noexcept {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  for (Lane* lane : lanes()) lane->wake.notify_all();
  for (Lane* lane : lanes()) {
    if (lane->thread.joinable()) lane->thread.join();
  }
}

void AdminExecutor::submit(const AdminRequest& request, AdminResponse* out,
                           ResumeTicket ticket) noexcept {
  Lane& lane = is_log_route(request.path)                        ? logs_
               : is_backup_listing(request.method, request.path) ? backup_lists_
               : is_backup_route(request.path)                   ? backups_
                                                                 : main_;
  bool queued = false;
  {
    std::lock_guard lock(mutex_);
    if (!stopping_ && lane.queued < lane.ring.size()) {
      Job& job = lane.ring[(lane.head + lane.queued) % lane.ring.size()];
      job.request = request;
      job.out = out;
      job.ticket = ticket;
      ++lane.queued;
      queued = true;
    }
  }
  if (queued) {
    lane.wake.notify_one();
    return;
  }
  rejected_total_.fetch_add(1, std::memory_order_relaxed);
  refuse(out, kQueueFullBody);
  ticket.post();
}

void AdminExecutor::run(Lane& lane) {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      lane.wake.wait(lock, [&] { return lane.queued > 0 || stopping_; });
      if (stopping_) {
        // Not run: answered 503 and posted, so that their workers log them (see header).
        for (; lane.queued > 0; --lane.queued) {
          Job& queued = lane.ring[lane.head];
          refuse(queued.out, kStoppedBody);
          queued.ticket.post();
          rejected_total_.fetch_add(1, std::memory_order_relaxed);
          queued = Job{};
          lane.head = (lane.head + 1) % lane.ring.size();
        }
        return;
      }
      job = lane.ring[lane.head];
      lane.ring[lane.head] = Job{};
      lane.head = (lane.head + 1) % lane.ring.size();
      --lane.queued;
    }
    lane.context.now = clock_();
    // The APIs as they are now (a reload may have replaced them since the last request), kept
    // alive until the request is done.
    const std::shared_ptr<const ApiSet> apis = apis_.current();
    KEYGATE_ASSERT(apis != nullptr);
    lane.context.apis = &apis->registry;
    *job.out = execute_admin(job.request, store_, lane.context);
    lane.context.apis = nullptr;
    executed_total_.fetch_add(1, std::memory_order_relaxed);
    // Posted also once stopping: a request that outlived the drain deadline is logged by its
    // worker after the workers exited (Server::settle_deferred; see the header).
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
