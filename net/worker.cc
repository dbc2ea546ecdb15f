#include "net/worker.h"

#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <span>
#include <utility>

#include "core/assert.h"
#include "core/response_writer.h"
#include "net/http_parser.h"
#include "net/worker_impl.h"

namespace keygate::net {

namespace {

// Said with an ENOMEM from the ring set-up. The kernel can charge a ring's memory (its 2048 SQEs
// and 16384 CQEs, and the buffer ring) to RLIMIT_MEMLOCK of a process without CAP_IPC_LOCK,
// which is how a service runs: Linux 6.18 does, about 400 KiB per worker (one worker fails
// under a 384 KiB limit and starts under 512 KiB). The usual default of 8 MiB (the kernel's,
// systemd's DefaultLimitMEMLOCK=) then holds about 20 workers, so a start with one worker per
// CPU fails on a larger machine, and the cause is rarely a lack of memory.
constexpr const char* kLockedMemoryHint =
    " (the locked-memory limit is likely too low: each worker's io_uring takes about 400 KiB "
    "of it without CAP_IPC_LOCK; raise RLIMIT_MEMLOCK: ulimit -l, systemd LimitMEMLOCK=, or "
    "lower [server] workers)";

}  // namespace

ResumeTicket ConnContext::defer() noexcept {
  KEYGATE_ASSERT(!conn_->awaiting);
  conn_->awaiting = true;
  ++conn_->ops;  // the slot stays ours until the ticket's post is reaped
  return ResumeTicket(sink_, conn_->slot, conn_->gen);
}

Worker::Impl::~Impl() {
  // The ring goes first: tearing it down cancels every operation, after which no buffer below
  // is owned by the kernel any more.
  if (ring_ready) io_uring_queue_exit(&ring);
  if (buf_ring != nullptr) munmap(buf_ring, kBufCount * sizeof(io_uring_buf));
  if (buf_base != nullptr) munmap(buf_base, static_cast<size_t>(kBufCount) * kBufSize);
  for (auto& c : conns) {
    if (c->fd >= 0) ::close(c->fd);
  }
  for (auto& up : upconns) {
    if (up->fd >= 0) ::close(up->fd);
  }
  for (WorkerListener& l : listeners) {
    if (l.fd >= 0) ::close(l.fd);
  }
  if (wake_fd >= 0) ::close(wake_fd);
}

bool Worker::Impl::init(std::string* error) {
  // Multishot receive (6.0) is the newest feature on the required path; refuse older kernels up
  // front instead of failing on the first connection.
  utsname u;
  int major = 0, minor = 0;
  if (uname(&u) == 0 && std::sscanf(u.release, "%d.%d", &major, &minor) == 2 && major < 6) {
    *error = std::string("keygate needs Linux 6.0+ (io_uring multishot receive); running ") +
             u.release;
    return false;
  }
  struct Attempt {
    unsigned flags;
    const char* name;
  };
  const Attempt attempts[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "single_issuer+defer_taskrun"},
      {IORING_SETUP_COOP_TASKRUN, "coop_taskrun"},
      {0, "plain"},
  };
  int ret = -EINVAL;
  for (const Attempt& a : attempts) {
    io_uring_params p{};
    p.flags = a.flags | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
    p.cq_entries = 16384;
    ret = io_uring_queue_init_params(2048, &ring, &p);
    if (ret == 0) {
      mode = a.name;
      break;
    }
  }
  if (ret != 0) {
    *error = std::string("io_uring set-up failed: ") + std::strerror(-ret) +
             (ret == -ENOMEM ? kLockedMemoryHint
                             : " (is io_uring disabled by sysctl kernel.io_uring_disabled or a "
                               "seccomp policy?)");
    return false;
  }
  ring_ready = true;
  // Saves a file-table lookup on every io_uring_enter; an optimisation only.
  (void)io_uring_register_ring_fd(&ring);
  // A registered file table for client connections, also an optimisation only: without it
  // (old kernel, low RLIMIT_NOFILE) they use their plain descriptors. The kernel refuses a
  // table larger than RLIMIT_NOFILE (or 2^20); it costs the kernel ~8 bytes per entry, so it
  // stops at kFixedFilesMax. Connections in slots beyond the table stay plain.
  // Before 6.13 the kernel frees what a table update releases only in order, after every
  // request that started earlier has ended; a keep-alive connection's multishot receive lasts
  // as long as the connection, so one long-lived client would pin every socket closed after it
  // (liburing issue #1192). Plain descriptors there.
  const bool table_frees_promptly = major > 6 || (major == 6 && minor >= 13);
  uint64_t conns_max = 0;  // this worker's connections at most, every listener at its cap
  for (const WorkerListener& l : listeners) conns_max += l.connections_max;
  uint32_t table = registered_files && table_frees_promptly
                       ? static_cast<uint32_t>(std::min<uint64_t>(conns_max, kFixedFilesMax))
                       : 0;
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < table) {
    table = static_cast<uint32_t>(nofile.rlim_cur);
  }
  // Descriptors kept free of clients: descriptors are numbered lowest free first, so an accepted
  // one numbered within `reserve` of RLIMIT_NOFILE means fewer than that are left. The data
  // port stops there; the admin port keeps half of it (operators can still get in), and the rest
  // is for what must not fail for want of one: access-log segments, the key store's files,
  // upstream sockets. An eighth of the limit where that is less (tiny limits in tests).
  if (nofile.rlim_cur != 0 && nofile.rlim_cur != RLIM_INFINITY) {
    const uint64_t reserve = std::min<uint64_t>(kDescriptorReserve, nofile.rlim_cur / 8);
    for (size_t li = 0; li < listeners.size(); ++li) {
      const uint64_t keep = listeners[li].budget != nullptr ? reserve / 2 : reserve;
      descriptor_ceiling[li] = nofile.rlim_cur - keep;
    }
    // Upstream sockets may take part of the data port's share of the reserve (a forwarded
    // request needs two descriptors, only its client's is checked at accept), never what the
    // admin port and the log keep.
    upstream_descriptor_ceiling = nofile.rlim_cur - reserve * 3 / 4;
  }
  if (table > 0 && io_uring_register_files_sparse(&ring, table) == 0) {
    fixed_files = table;
    mode += "+fixed_files";
  }

  const size_t ring_bytes = kBufCount * sizeof(io_uring_buf);
  void* ring_mem = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
                        -1, 0);
  void* bufs = mmap(nullptr, static_cast<size_t>(kBufCount) * kBufSize, PROT_READ | PROT_WRITE,
                    MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (ring_mem == MAP_FAILED || bufs == MAP_FAILED) {
    *error = "cannot allocate receive buffers";
    return false;
  }
  buf_ring = static_cast<io_uring_buf_ring*>(ring_mem);
  buf_base = static_cast<char*>(bufs);
  io_uring_buf_ring_init(buf_ring);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(ring_mem);
  reg.ring_entries = kBufCount;
  reg.bgid = kBufGroup;
  ret = io_uring_register_buf_ring(&ring, &reg, 0);
  if (ret != 0) {
    *error = ret == -ENOMEM
                 ? std::string("io_uring provided buffer ring: ") + std::strerror(-ret) +
                       kLockedMemoryHint
                 : std::string("io_uring provided buffer rings unavailable (needs Linux 5.19+): ") +
                       std::strerror(-ret);
    return false;
  }
  const int mask = io_uring_buf_ring_mask(kBufCount);
  for (unsigned i = 0; i < kBufCount; ++i) {
    io_uring_buf_ring_add(buf_ring, buf_base + static_cast<size_t>(i) * kBufSize, kBufSize,
                          static_cast<unsigned short>(i), mask, static_cast<int>(i));
  }
  io_uring_buf_ring_advance(buf_ring, static_cast<int>(kBufCount));

  wake_fd = eventfd(0, EFD_CLOEXEC);
  if (wake_fd < 0) {
    *error = std::string("eventfd: ") + std::strerror(errno);
    return false;
  }
  {
    std::unique_ptr<ApiVersion> first = make_apis(std::move(apis_initial), error);
    if (first == nullptr) return false;
    apis_now = first.get();
    apis_generation.store(apis_now->set->generation, std::memory_order_release);
    api_versions.push_back(std::move(first));
  }
  now_ms = monotonic_ms();
  stats.loop_pass_ms.store(now_ms, std::memory_order_relaxed);
  accept_retry.assign(listeners.size(), false);
  accept_rearm.assign(listeners.size(), false);
  backlog_seen.assign(listeners.size(), 0);
  open.assign(listeners.size(), 0);
  conns.reserve(1024);
  dirty.reserve(256);
  rearm.reserve(64);
  on_tick();  // formats the Date header
  arm_tick();
  arm_wake();
  for (uint32_t i = 0; i < listeners.size(); ++i) arm_accept(i);
  ret = io_uring_submit(&ring);
  if (ret < 0) {
    *error = std::string("io_uring submit failed: ") + std::strerror(-ret);
    return false;
  }
  ready.store(true, std::memory_order_release);
  return true;
}

io_uring_sqe* Worker::Impl::get_sqe() {
  // The ring failed (stop_serving): what is prepared now is never submitted, and the ring may
  // be unmapped already. A scratch entry lets the close paths run as they do on a live ring.
  if (ring_failed) [[unlikely]] {
    scratch_sqe = io_uring_sqe{};
    return &scratch_sqe;
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  while (sqe == nullptr) {
    // Submission queue full: hand what we have to the kernel and take a fresh slot. A fatal
    // error (the ring is broken: the loop's next enter fails the same way and stops serving)
    // must not make this spin: the scratch entry then, as after stop_serving.
    const int ret = io_uring_submit(&ring);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      ring_failed = true;
      ring_submit_error = -ret;  // the loop stops serving after this pass (run)
      return get_sqe();
    }
    sqe = io_uring_get_sqe(&ring);
  }
  return sqe;
}

void Worker::Impl::arm_accept(uint32_t li) {
  io_uring_sqe* sqe = get_sqe();
  if (listeners[li].inherited) {
    // One connection per accept, re-armed on its completion. The workers share this socket,
    // and a multishot accept stays first in its wait queue for good: the kernel would wake
    // that one worker for every connection, and it would take the whole backlog each time
    // (measured: one of two workers got all of them). Re-armed, a worker queues behind the
    // others and takes at most one connection per loop pass, so a busy worker leaves the next
    // to an idle one.
    io_uring_prep_accept(sqe, listeners[li].fd, nullptr, nullptr, SOCK_CLOEXEC);
  } else {
    io_uring_prep_multishot_accept(sqe, listeners[li].fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
  io_uring_sqe_set_data64(sqe, make_user_data(kOpAccept, li, 0));
  accept_armed[li] = true;
}

// Points an operation on a client connection at its registered file when it has one.
static void use_conn_file(io_uring_sqe* sqe, const Connection* c) {
  if (c->fixed) {
    sqe->fd = static_cast<int>(c->slot);
    sqe->flags |= IOSQE_FIXED_FILE;
  }
}

// A multishot receive, the common case; a connection that holds input it cannot parse yet
// reads with single-shot receives up to kPendingInputMax held, and arms nothing beyond it
// (drain_pending() arms once the input is through).
void Worker::Impl::arm_recv(Connection* c) {
  io_uring_sqe* sqe;
  if (c->pending.empty()) {
    sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, c->fd, nullptr, 0, 0);
    c->recv_multishot = true;
  } else {
    if (c->pending.size() >= kPendingInputMax) return;
    const size_t room = std::min<size_t>(kPendingInputMax - c->pending.size(), kBufSize);
    sqe = get_sqe();
    io_uring_prep_recv(sqe, c->fd, nullptr, static_cast<unsigned>(room), 0);
    c->recv_multishot = false;
  }
  use_conn_file(sqe, c);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = kBufGroup;
  io_uring_sqe_set_data64(sqe, make_user_data(kOpRecv, c->slot, c->gen));
  c->recv_armed = true;
  c->recv_cancel_sent = false;
  ++c->ops;
}

void Worker::Impl::arm_tick() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_timeout(sqe, &tick_ts, 0, 0);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpTick, 0, 0));
}

void Worker::Impl::arm_wake() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, wake_fd, &wake_value, sizeof(wake_value), 0);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpWake, 0, 0));
}

void Worker::Impl::run() {
  int ring_error = 0;  // errno of a failed io_uring_enter, which ends the loop
  for (;;) {
    for (auto [c, gen] : dirty) {
      if (c->gen == gen) flush(c);
    }
    dirty.clear();
    if (draining && (drained() || now_ms >= drain_deadline_ms)) break;
    if (observer != nullptr) observer->before_wait();
    int ret;
    if (last_batch > 1) {
      // Busy: ask the kernel to wake us only once several completions are ready (or after
      // kBatchWaitNs), so one wake-up serves several requests. Idle or lightly loaded workers
      // (one completion per pass) wait for one as usual, so this adds no latency there.
      __kernel_timespec ts{0, kBatchWaitNs};
      const unsigned want = last_batch / 2 < 16 ? last_batch / 2 : 16;
      io_uring_cqe* unused = nullptr;
      ret = io_uring_submit_and_wait_timeout(&ring, &unused, want, &ts, nullptr);
    } else {
      ret = io_uring_submit_and_wait(&ring, 1);
    }
    if (observer != nullptr) observer->after_wait();
    if (ring_fail_for_testing.load(std::memory_order_relaxed)) [[unlikely]] {
      ret = -EBADFD;
    }
    if (ring_submit_error != 0) [[unlikely]] ret = -ring_submit_error;  // get_sqe saw it fail
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
      ring_error = -ret;
      break;
    }
    now_ms = monotonic_ms();
    // The one store per pass that tells the main thread this loop turns (core/worker_watch.h).
    stats.loop_pass_ms.store(now_ms, std::memory_order_relaxed);
    // A reload posted while this worker waited (or was held up) is taken before anything of
    // this pass is parsed: its limits, not only its APIs (pin_apis), apply to every request
    // whose bytes come in from now on. One load per pass.
    take_posted_apis();
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
      handle_cqe(cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring, seen);
    last_batch = seen;
    if (buf_adv != 0) {
      io_uring_buf_ring_advance(buf_ring, static_cast<int>(buf_adv));
      buf_adv = 0;
    }
    for (auto [c, gen] : rearm) {
      if (c->gen == gen && !c->closed && !c->recv_armed) arm_recv(c);
    }
    rearm.clear();
    for (auto [up, gen] : uprearm) {
      if (up->gen == gen && !up->recv_armed &&
          ((up->state == UpConn::State::kBusy && !up->recv_paused) ||
           up->state == UpConn::State::kIdle)) {
        arm_up_recv(up);
      }
    }
    uprearm.clear();
    // Only after a reload, until the old version's last requests are done.
    if (api_versions.size() > 1) reap_apis();
  }
  if (ring_error != 0 && !draining) {
    stop_serving(std::strerror(ring_error));
  } else {
    // Past the drain deadline: whatever is left is cut off.
    for (auto& c : conns) {
      if (c->fd >= 0 && !c->closed) {
        c->cut_reason = "shutdown";
        close_conn(c.get());
      }
    }
  }
  // This worker holds no shared references any more: grace periods must not wait for it.
  if (observer != nullptr) observer->before_wait();
  exited.store(true, std::memory_order_release);
}

void Worker::Impl::handle_cqe(io_uring_cqe* cqe) {
  const uint64_t ud = io_uring_cqe_get_data64(cqe);
  const Op op = op_of(ud);
  switch (op) {
    case kOpAccept:
      on_accept(slot_of(ud), cqe);
      return;
    case kOpTick:
      on_tick();
      if (!(draining && drained())) arm_tick();
      return;
    case kOpWake:
      on_wake();
      return;
    case kOpAcceptCancel:
      // Nothing was cancelled (the accept had completed): no -ECANCELED comes to re-arm on.
      if (cqe->res != 0) accept_rearm[slot_of(ud)] = false;
      return;
    case kOpUpConnect:
    case kOpUpConnectTimeout:
    case kOpUpSend:
    case kOpUpRecv:
    case kOpUpCancel: {
      UpConn* up = upconns[slot_of(ud)].get();
      KEYGATE_ASSERT(up->gen == gen_of(ud));
      if (op == kOpUpConnect) on_up_connect(up, cqe->res);
      else if (op == kOpUpSend) on_up_send(up, cqe->res);
      else if (op == kOpUpRecv) on_up_recv(up, cqe);
      else up_op_done(up);
      return;
    }
    default:
      break;
  }
  Connection* c = conns[slot_of(ud)].get();
  KEYGATE_ASSERT(c->gen == gen_of(ud));
  switch (op) {
    case kOpRecv:
      on_recv(c, cqe);
      return;
    case kOpSend:
      on_send(c, cqe->res);
      return;
    case kOpCancel:
      op_done(c);
      return;
    default:
      KEYGATE_ASSERT(false);
  }
}

void Worker::Impl::on_accept(uint32_t li, io_uring_cqe* cqe) {
  const bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
  if (!more) accept_armed[li] = false;
  const int res = cqe->res;
  if (res >= 0) {
    // An inherited listener's connection that comes in the drain was taken off the shared
    // backlog before the accept's cancellation took effect: closing it would refuse a client
    // the next keygate would have served. It gets its requests answered (with
    // "Connection: close", as every response in the drain) like one accepted just before.
    const bool refused_by_drain = draining && !listeners[li].inherited;
    if (static_cast<uint64_t>(res) >= descriptor_ceiling[li]) {
      ::close(res);
      bump(stats.connections_refused);
      bump(stats.descriptor_reserve_refused);
    } else if (refused_by_drain || !admit(li)) {
      ::close(res);
      bump(stats.connections_refused);
    } else {
      const int one = 1;
      (void)setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      if (listeners[li].send_buffer_bytes != 0) {
        // Best effort, as TCP_NODELAY: a connection with the kernel's own buffer still works.
        const int bytes = static_cast<int>(listeners[li].send_buffer_bytes);
        (void)setsockopt(res, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
      }
      uint32_t slot;
      if (!free_slots.empty()) {
        slot = free_slots.back();
        free_slots.pop_back();
      } else {
        slot = static_cast<uint32_t>(conns.size());
        conns.push_back(std::make_unique<Connection>(limits, slot, this, &date_sec));
      }
      Connection* c = conns[slot].get();
      c->fd = res;
      c->fixed = slot < fixed_files && io_uring_register_files_update(&ring, slot, &res, 1) == 1;
      c->listener = li;
      c->fresh = true;  // until its first byte: see Connection::fresh
      c->parser.reset(listeners[li].body_bytes_max);
      c->parser.set_head_pause(listeners[li].decides_at_head);
      c->closed = false;
      c->cut_reason = nullptr;
      // A full credit: the client may fall idle_timeout_ms of waiting behind the minimum rate,
      // the stall the write timeout allows too (core/send_rate.h).
      c->send_rate.start(limits.send_rate_min_bytes_per_s, limits.idle_timeout_ms);
      ++live;
      bump(stats.connections_accepted);
      arm_recv(c);
      // The first request must start within the header timeout, like every later one.
      timer_set(c, kHeader);
    }
  } else if (res == -ECANCELED && accept_rearm[li]) {
    // Cancelled by check_shared_backlog: armed again, behind every other waiter.
    accept_rearm[li] = false;
    if (!draining) arm_accept(li);
    return;
  } else if (res != -ECANCELED) {
    // EMFILE/ENFILE/ENOMEM: retry on the next tick rather than spin on the error.
    bump(stats.accept_errors);
    if (!more) accept_retry[li] = true;
    return;
  }
  if (!more && !draining && res != -ECANCELED) arm_accept(li);
}

// Counts a new connection of listener `li` against its cap (release() gives it back); false at
// the cap, and the connection is to be closed: the same answer at every listener's cap.
bool Worker::Impl::admit(uint32_t li) {
  const WorkerListener& l = listeners[li];
  if (l.budget != nullptr ? !l.budget->take() : open[li] >= l.connections_max) return false;
  ++open[li];
  return true;
}

bool ConnectionBudget::take() noexcept {
  uint32_t n = open_.load(std::memory_order_relaxed);
  do {
    if (n >= max_) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
  } while (!open_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  return true;
}

void ConnectionBudget::give_back() noexcept {
  const uint32_t before = open_.fetch_sub(1, std::memory_order_relaxed);
  KEYGATE_ASSERT(before > 0);
}

void Worker::Impl::on_recv(Connection* c, io_uring_cqe* cqe) {
  const bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
  const int res = cqe->res;
  if (!more) c->recv_armed = false;
  if ((cqe->flags & IORING_CQE_F_BUFFER) != 0) {
    const auto bid = static_cast<unsigned short>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    char* buf = buf_base + static_cast<size_t>(bid) * kBufSize;
    if (res > 0 && !c->closed) {
      on_data(c, std::span<char>(buf, static_cast<size_t>(res)), kBufSize - static_cast<size_t>(res));
    }
    // The buffer returns to the kernel only now that nothing refers to it.
    io_uring_buf_ring_add(buf_ring, buf, kBufSize, bid, io_uring_buf_ring_mask(kBufCount),
                          static_cast<int>(buf_adv));
    ++buf_adv;
  }
  if (!c->closed) {
    if (res == 0) {
      on_peer_eof(c);
    } else if (res < 0 && res != -ECANCELED && res != -ENOBUFS) {
      close_conn(c);
    } else if (!more) {
      // The receive ended: a single-shot one, a multishot one cancelled when the connection
      // began to hold input (whose completion may come after drain_pending() emptied
      // `pending`: it arms nothing while this receive is armed), or any of them finding every
      // receive buffer in use for a moment (ENOBUFS; they are back at the end of this pass).
      // Read on: arm_recv() picks a multishot receive, a single-shot one within
      // kPendingInputMax while input is held, or none at that bound (drain_pending() arms).
      rearm.emplace_back(c, c->gen);
    }
  }
  if (!more) op_done(c);
}

void Worker::Impl::on_data(Connection* c, std::span<char> data, size_t readable_after) {
  c->fresh = false;
  if (c->lingering || c->close_after_send) return;  // answered for the last time: discard
  if (!c->pending.empty() || c->awaiting || (c->proxying && !c->streaming)) {
    hold_input(c, data);
    return;
  }
  process(c, data, readable_after);
}

// Keeps received bytes that cannot be parsed yet in `pending`. The first of them stops the
// multishot receive at once (see kPendingInputMax); arm_recv() takes over when it has ended.
void Worker::Impl::hold_input(Connection* c, std::span<const char> data) {
  // Nothing left after a request that deferred, forwarded or reached the cap (the usual case):
  // the multishot receive stays.
  if (data.empty()) return;
  c->pending.append(data.data(), data.size());
  account_input(c);
  if (c->recv_armed && c->recv_multishot && !c->recv_cancel_sent) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, make_user_data(kOpRecv, c->slot, c->gen), 0);
    io_uring_sqe_set_data64(sqe, make_user_data(kOpCancel, c->slot, c->gen));
    ++c->ops;
    c->recv_cancel_sent = true;
  }
}

// Brings the input gauges of the stats up to date with c's buffers.
void Worker::Impl::account_input(Connection* c) {
  static const size_t kInline = std::string().capacity();  // no heap bytes up to this
  const auto heap = [](const std::string& s) { return s.capacity() > kInline ? s.capacity() : 0; };
  const size_t now = heap(c->pending) + heap(c->resume_buf);
  if (now != c->input_heap) {
    stats.pending_input_bytes.store(
        stats.pending_input_bytes.load(std::memory_order_relaxed) + now - c->input_heap,
        std::memory_order_relaxed);
    c->input_heap = now;
  }
  if (c->pending.size() > stats.pending_input_peak.load(std::memory_order_relaxed)) {
    stats.pending_input_peak.store(c->pending.size(), std::memory_order_relaxed);
  }
}

void Worker::Impl::process(Connection* c, std::span<char> data, size_t readable_after) {
  KEYGATE_ASSERT(!c->in_process);
  c->in_process = true;
  process_input(c, data, readable_after);
  c->in_process = false;
}

void Worker::Impl::process_input(Connection* c, std::span<char> data, size_t readable_after) {
  for (;;) {
    if (c->close_after_send || c->closed) return;
    if (c->streaming) {
      stream_request_body(c, &data);
      if (c->streaming) {
        // Backpressure: the upstream has enough queued; the rest waits (and the receive
        // slows down to kPendingInputMax held).
        if (!data.empty()) hold_input(c, data);
        return;
      }
      continue;
    }
    if (c->awaiting || c->proxying ||
        c->responses_fill + c->responses_send >= limits.pipeline_depth_max) {
      hold_input(c, data);
      return;
    }
    // A request's record starts when keygate reads its first byte (the loop's cached clock).
    if (!c->parser.request_in_progress()) c->rlog.head_ms = now_ms;
    const HttpParser::Result r = c->parser.parse(data, readable_after);
    data = data.subspan(r.consumed);
    switch (r.status) {
      case HttpParser::Status::kNeedMore:
        update_timer(c);
        return;
      case HttpParser::Status::kExpectContinue:
        send_continue(c);
        update_timer(c);
        continue;
      case HttpParser::Status::kError: {
        bump(stats.parse_errors);
        const ParseError& e = c->parser.error();
        write_error(c, e.status, e.code, e.message);
        return;
      }
      case HttpParser::Status::kRequest:
        // A request whose body was read after its head (kNeedBody) was counted there, and
        // took its version of the APIs there: it keeps it.
        if (!c->head_counted) {
          bump(stats.requests);
          pin_apis(c);
        }
        c->head_counted = false;
        dispatch(c, false);
        continue;
      case HttpParser::Status::kHeaders:
        bump(stats.requests);
        pin_apis(c);
        head_ready(c, false);
        continue;
      case HttpParser::Status::kBodyEnd:
        KEYGATE_ASSERT(false);  // only while streaming, handled above
        return;
    }
  }
}

void Worker::Impl::dispatch(Connection* c, bool resuming) {
  const HttpRequest& request = c->parser.request();
  ResponseWriter writer(fill_buf(c), date, request.is_head(),
                        request.keep_alive && !draining && !c->close_after_send);
  if (request.version_minor == 0) writer.http10_client();
  Handler& handler = *listeners[c->listener].handler;
  log_begin(c, &request);
  const size_t response_at = fill_buf(c).size();
  c->ctx.access = AccessNote{};
  const Handler::Result result = resuming ? handler.resume(request, writer, c->ctx)
                                          : handler.handle(request, writer, c->ctx);
  log_note(c, request);
  if (result == Handler::Result::kForward) {
    KEYGATE_ASSERT(!c->awaiting && !writer.started());
    uncharge_body(c);  // the body is copied to the upstream connection's buffer
    start_forward(c, false);
    return;
  }
  if (result == Handler::Result::kPending) {
    KEYGATE_ASSERT(c->awaiting && !writer.started());
    // The receive buffer the views point into goes back to the kernel at the end of this pass.
    c->parser.stabilize();
    timer_clear(c);
    return;
  }
  KEYGATE_ASSERT(!c->awaiting && writer.finished());
  uncharge_body(c);
  log_end(c, writer.status(), writer.error_code(),
          std::string_view(fill_buf(c)).substr(response_at));
  ++c->responses_fill;
  if (!writer.keep_alive()) c->close_after_send = true;
  // The next request gets a fresh header deadline.
  timer_clear(c);
  mark_dirty(c);
}

bool Worker::Impl::charge_body(Connection* c, uint64_t keep_bytes) {
  if (!listeners[c->listener].body_budget) return true;
  // The most this request's body can occupy: what is kept of it, within its length and limit.
  uint64_t charge = std::min(keep_bytes, listeners[c->listener].body_bytes_max);
  if (!c->parser.streamed_chunked()) charge = std::min(charge, c->parser.content_length());
  if (charge == 0) return true;
  if (charge > limits.body_memory_per_worker_max - std::min(limits.body_memory_per_worker_max,
                                                            held_body_bytes)) {
    bump(stats.body_memory_refused);
    write_error(c, 503, "body_memory_exhausted",
                "the server holds too many request bodies; retry later");
    return false;
  }
  held_body_bytes += charge;
  c->body_charge = charge;
  stats.body_bytes_held.store(held_body_bytes, std::memory_order_relaxed);
  return true;
}

void Worker::Impl::uncharge_body(Connection* c) {
  if (c->body_charge == 0) return;
  KEYGATE_ASSERT(held_body_bytes >= c->body_charge);
  held_body_bytes -= c->body_charge;
  c->body_charge = 0;
  stats.body_bytes_held.store(held_body_bytes, std::memory_order_relaxed);
}

void Worker::Impl::write_error(Connection* c, int status, std::string_view code,
                               std::string_view message) {
  uncharge_body(c);
  const size_t response_at = fill_buf(c).size();
  // A HEAD rejected after its head (413 on Content-Length, 408 mid-body) gets no body either.
  ResponseWriter writer(fill_buf(c), date, c->parser.head_of_head_request(), false);
  writer.error(status, code, message);
  // Rejected once its head was parsed (an error in the head's fields, 413, a body that timed
  // out): its method and target; before that there are none to show.
  HttpRequest head;
  const bool parsed = c->parser.head_parsed(&head.method, &head.target);
  const bool begun = c->rlog.open;  // a handler saw the request and noted its key
  log_begin(c, parsed ? &head : nullptr);
  if (parsed && !begun) log_note_head_key(c, head);
  log_end(c, status, code, std::string_view(fill_buf(c)).substr(response_at));
  ++c->responses_fill;
  c->close_after_send = true;
  c->pending.clear();
  timer_clear(c);
  mark_dirty(c);
}

void Worker::Impl::send_continue(Connection* c) {
  fill_buf(c).append("HTTP/1.1 100 Continue\r\n\r\n");
  mark_dirty(c);
}

// The client's address, looked up once per connection (X-Forwarded-For, the access log):
// multishot accept cannot hand it out per connection.
void Worker::Impl::learn_peer(Connection* c) {
  if (c->peer_ip[0] != '\0') return;
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(c->fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    if (ss.ss_family == AF_INET6) {
      const auto* sa = reinterpret_cast<const sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &sa->sin6_addr, c->peer_ip, sizeof(c->peer_ip));
      c->peer_port = ntohs(sa->sin6_port);
    } else {
      const auto* sa = reinterpret_cast<const sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &sa->sin_addr, c->peer_ip, sizeof(c->peer_ip));
      c->peer_port = ntohs(sa->sin_port);
    }
  }
  if (c->peer_ip[0] == '\0') std::strcpy(c->peer_ip, "unknown");
}

// An empty input buffer past kInputKeepCapacity gives its memory back.
static void trim_input(std::string& b) {
  if (b.empty() && b.capacity() > kInputKeepCapacity) b.shrink_to_fit();
}

void Worker::Impl::drain_pending(Connection* c) {
  // Called from inside process() (a forward that failed at once answered its request): the
  // rest of the received input is still in that loop, not in `pending`, so neither the FIN nor
  // the receive can be settled here. The loop goes on, and its caller settles them after it.
  if (c->in_process) return;
  if (c->closed || c->awaiting || (c->proxying && !c->streaming)) return;
  if (!c->pending.empty()) {
    std::swap(c->pending, c->resume_buf);
    process(c, std::span<char>(c->resume_buf.data(), c->resume_buf.size()), 0);
    c->resume_buf.clear();
    trim_input(c->resume_buf);
    trim_input(c->pending);
    account_input(c);
  }
  if (c->closed || !c->pending.empty()) return;
  if (c->peer_eof) {
    on_peer_eof(c);  // what was received before the FIN is through: settle the end now
  } else if (!c->recv_armed && !c->close_after_send) {
    arm_recv(c);
  }
}

void Worker::Impl::flush(Connection* c) {
  if (c->closed || c->send_in_flight) return;
  if (c->out[c->fill].empty()) {
    // The last response is out, unless a request is still with an upstream or a deferred
    // handler (a client that half-closed behind it): its answer comes, and then the linger.
    if (c->close_after_send && !c->lingering && !c->proxying && !c->awaiting) start_linger(c);
    return;
  }
  c->fill ^= 1;
  ++c->flushes;
  KEYGATE_ASSERT(c->out[c->fill].empty());
  c->responses_send = c->responses_fill;
  c->responses_fill = 0;
  c->send_off = 0;
  submit_send(c);
  update_timer(c);
}

void Worker::Impl::submit_send(Connection* c) {
  const std::string& buf = c->out[c->fill ^ 1];
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_send(sqe, c->fd, buf.data() + c->send_off, buf.size() - c->send_off,
                     MSG_NOSIGNAL);
  use_conn_file(sqe, c);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpSend, c->slot, c->gen));
  c->send_started_ms = now_ms;
  c->send_in_flight = true;
  ++c->ops;
}

void Worker::Impl::on_send(Connection* c, int res) {
  c->send_in_flight = false;
  op_done(c);
  if (c->closed) return;
  if (res < 0) {
    close_conn(c);
    return;
  }
  // The wait is the loop's cached clock now less when the send was submitted (no clock read): a
  // send the socket buffer had room for completes at once, so about 0 ms; only a full buffer,
  // a client behind, makes it wait. A few integer operations, no division, no system call.
  if (!c->send_rate.keeps_up(limits.send_rate_min_bytes_per_s, limits.idle_timeout_ms,
                             static_cast<uint64_t>(now_ms - c->send_started_ms),
                             static_cast<uint64_t>(res))) {
    bump(stats.send_too_slow);
    cut_unread(c, "send_too_slow");
    return;
  }
  std::string& buf = c->out[c->fill ^ 1];
  c->send_off += static_cast<size_t>(res);
  if (c->send_off < buf.size()) {
    submit_send(c);  // partial send: the rest, from where the kernel stopped
    if (c->timer == kWrite || c->timer == kIdle) timer_set(c, kWrite);  // progress resets it
    return;
  }
  buf.clear();
  if (buf.capacity() > kOutputKeepCapacity) buf.shrink_to_fit();
  c->responses_send = 0;
  client_output_drained(c);
  drain_pending(c);
  flush(c);
  if (!c->closed && !c->send_in_flight) update_timer(c);
}

void Worker::Impl::start_linger(Connection* c) {
  // Half-close and keep reading (and discarding) for a moment: closing with unread input would
  // make the kernel send a reset that can destroy the response before the client reads it.
  c->lingering = true;
  c->until_close_open = false;  // every byte of the response was sent: a FIN ends it
  c->pending.clear();
  ::shutdown(c->fd, SHUT_WR);
  // Nothing can be left unread after the client's FIN.
  if (limits.linger_timeout_ms == 0 || c->peer_eof) {
    close_conn(c);
    return;
  }
  timer_set(c, kLinger);
  if (!c->recv_armed) arm_recv(c);
}

void Worker::Impl::on_peer_eof(Connection* c) {
  c->peer_eof = true;
  // Bytes received before the FIN but not parsed yet (waiting behind a deferred or forwarded
  // request, at the pipeline cap, or for the upstream to take a streamed body) are requests
  // still owed an answer: drain_pending() comes back here once they are through.
  if (!c->lingering && !c->close_after_send && !c->pending.empty()) return;
  if (c->lingering || (c->parser.request_in_progress() && !c->close_after_send)) {
    close_conn(c);  // linger done, or the client gave up mid-request
    return;
  }
  if (!idle(c)) {
    c->close_after_send = true;  // half-closed client: still owed its responses
    return;
  }
  close_conn(c);
}

void Worker::Impl::close_conn(Connection* c) {
  if (c->closed) return;
  c->closed = true;
  detach_client(c);
  // A deferred request is logged when its ticket comes back (on_posted): its handler may still
  // be doing what it was asked, and the record must say whether it did.
  if (!c->awaiting) log_abandoned(c, 499);
  timer_clear(c);
  if (c->until_close_open) {
    // A body whose end the client learns from the close is cut short (the upstream failed, a
    // timeout, shutdown): a FIN would look like its end.
    c->until_close_open = false;
    reset_socket(c);
  }
  if (c->ops == 0) {
    release(c);
  } else {
    // Wakes the outstanding receive (EOF) and send (EPIPE); the slot is released when their
    // completions have been reaped, so no buffer is freed while the kernel may still use it.
    ::shutdown(c->fd, SHUT_RDWR);
  }
}

void Worker::Impl::op_done(Connection* c) {
  KEYGATE_ASSERT(c->ops > 0);
  --c->ops;
  if (c->closed && c->ops == 0) release(c);
}

void Worker::Impl::release(Connection* c) {
  if (c->fixed) {
    // The table holds its own reference to the socket: drop it, or close() would not close.
    int none = -1;
    (void)io_uring_register_files_update(&ring, c->slot, &none, 1);
    c->fixed = false;
  }
  ::close(c->fd);
  c->fd = -1;
  ++c->gen;
  for (std::string& b : c->out) {
    b.clear();
    if (b.capacity() > kSlotOutputKeepCapacity) std::string().swap(b);
  }
  // Also a capture the parser appended to after the record was written.
  c->rlog.release_large(kSlotRecordKeepCapacity);
  c->pending.clear();
  c->resume_buf.clear();
  trim_input(c->pending);
  trim_input(c->resume_buf);
  account_input(c);
  c->fill = 0;
  c->send_off = 0;
  c->responses_fill = c->responses_send = 0;
  c->send_in_flight = c->recv_armed = c->recv_cancel_sent = false;
  c->awaiting = c->head_deferred = c->head_counted = false;
  c->ctx.state = nullptr;
  uncharge_body(c);
  c->parser.trim();  // a slot kept for reuse does not keep a large request's buffer
  c->close_after_send = c->lingering = c->peer_eof = false;
  c->proxying = c->streaming = c->until_close_open = false;
  c->up = nullptr;
  drop_apis(c->apis);
  c->apis = nullptr;
  c->ctx.apis = nullptr;
  c->peer_ip[0] = '\0';
  c->peer_port = 0;
  // Every request that began was logged: by its response, or by close_conn()/on_posted().
  KEYGATE_ASSERT(!c->rlog.open);
  --live;
  --open[c->listener];
  if (listeners[c->listener].budget != nullptr) listeners[c->listener].budget->give_back();
  free_slots.push_back(c->slot);
}

void Worker::Impl::timer_set(Connection* c, TimerKind kind) {
  timer_clear(c);
  uint32_t ms = 0;
  switch (kind) {
    case kHeader: ms = limits.header_timeout_ms; break;
    case kBody: ms = limits.body_timeout_ms; break;
    case kIdle: ms = limits.idle_timeout_ms; break;
    case kWrite: ms = limits.idle_timeout_ms; break;
    case kLinger: ms = limits.linger_timeout_ms; break;
    default: KEYGATE_ASSERT(false);
  }
  c->timer = kind;
  c->deadline_ms = now_ms + ms;
  timers[kind].push_back(c);
}

void Worker::Impl::timer_clear(Connection* c) {
  if (c->timer == kNoTimer) return;
  timers[c->timer].remove(c);
  c->timer = kNoTimer;
}

void Worker::Impl::update_timer(Connection* c) {
  // A deferred request is bounded by whoever holds its ticket, not by a client timeout.
  if (c->closed || c->lingering || c->awaiting) return;
  if (c->proxying && !c->streaming) {
    // A forwarded request (its body in): while keygate waits for the upstream, the upstream's
    // deadlines bound it; while its response is being written, the write timeout does. The
    // upstream's response timeout does not run while a client too slow to read keeps the
    // upstream paused, so without this a client that stops reading would hold both
    // connections for ever.
    // (A body timer left from streaming the request body is cleared too: the body is in.)
    if (c->send_in_flight) {
      if (c->timer != kWrite) timer_set(c, kWrite);
    } else {
      timer_clear(c);
    }
    return;
  }
  TimerKind want;
  if (c->close_after_send) {
    // The last response is queued (possibly a rejection of a half-read request, which the
    // parser still counts as in progress): only the write can time out now.
    if (!c->send_in_flight) return;  // about to linger
    want = kWrite;
  } else if (c->parser.request_in_progress()) {
    want = c->parser.headers_complete() ? kBody : kHeader;
  } else if (c->send_in_flight) {
    want = kWrite;
  } else {
    want = kIdle;
    if (draining && idle(c) && !c->fresh) {
      close_conn(c);
      return;
    }
  }
  if (c->timer != want) timer_set(c, want);
}

void Worker::Impl::expire(Connection* c) {
  bump(stats.timeouts);
  const TimerKind kind = c->timer;
  timer_clear(c);
  if (kind == kBody && c->up != nullptr) {
    // The body stopped short while it streamed to the upstream: the exchange cannot finish,
    // so the upstream connection goes too. Blame where the bytes stopped: received bytes
    // waiting for the upstream to take them mean the upstream is the slow side. If the
    // upstream's response has begun (it answered early), the client is closed mid-response.
    const bool upstream_slow = !c->pending.empty() || c->up->fill.size() >= kProxyBufferMax;
    if (upstream_slow) {
      fail_forward(c->up, 504, "upstream_timeout",
                   "the upstream server did not take the request body in time");
    } else {
      fail_forward(c->up, 408, "request_timeout", "request not received in time");
    }
    return;  // the answer's send arms the write timer, should the client not read it either
  }
  if ((kind == kHeader || kind == kBody) && c->parser.request_in_progress() &&
      !c->close_after_send) {
    write_error(c, 408, "request_timeout", "request not received in time");
    // If the client does not read the 408 either, the write timeout ends it.
    timer_set(c, kWrite);
    return;
  }
  if (kind == kWrite) {
    cut_unread(c, "write_timeout");
    return;
  }
  close_conn(c);
}

void Worker::Impl::cut_unread(Connection* c, const char* reason) {
  c->cut_reason = reason;
  // A reset rather than a FIN: the kernel drops what the client has not taken at once. With a
  // FIN it would hold those bytes (up to the socket's send buffer) on an orphaned socket in
  // FIN_WAIT1, probing the client's zero window for minutes (tcp_orphan_retries), to deliver
  // a response that is cut anyway.
  if (!c->closed) reset_socket(c);
  close_conn(c);
}

void Worker::Impl::reset_socket(Connection* c) {
  // connect(2) to AF_UNSPEC dissolves the connection at once with a reset (unsent output is
  // dropped) and wakes the receive and send in flight, as close_conn's shutdown does. Should it
  // fail, a linger of 0 still turns the final close into a reset.
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  if (::connect(c->fd, &unspec, sizeof(unspec)) != 0) {
    const linger reset{1, 0};
    (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }
}

void Worker::Impl::on_tick() {
  timespec wall;
  clock_gettime(CLOCK_REALTIME_COARSE, &wall);
  if (wall.tv_sec != date_sec) {
    date_sec = wall.tv_sec;
    date = format_http_date(wall.tv_sec, date_buf);
  }
  now_ms = monotonic_ms();
  for (TimerList& list : timers) {
    while (list.head != nullptr && list.head->deadline_ms <= now_ms) expire(list.head);
  }
  check_upstream_timers();
  if (draining && fresh_wait_end_ms != 0 && now_ms >= fresh_wait_end_ms) {
    // The wait for first bytes is over: a connection that still sent nothing is not about to
    // (Connection::fresh), and it must not keep the drain going to its deadline.
    fresh_wait_end_ms = 0;
    for (auto& c : conns) {
      if (c->fd >= 0 && !c->closed && c->fresh) close_conn(c.get());
    }
  }
  for (uint32_t li = 0; li < listeners.size(); ++li) {
    if (accept_retry[li] && !accept_armed[li] && !draining) {
      accept_retry[li] = false;
      arm_accept(li);
    }
    check_shared_backlog(li);
  }
}

// A socket the service manager passed is shared by every worker, each with one single-shot
// accept waiting on it, and the kernel wakes one waiter per new connection. Should that
// wake-up go to an accept that never runs (one of a worker whose ring failed, torn down later
// than the connection came; seen under load in RingFailure tests), the connection stays in the
// backlog with the other workers' accepts still waiting, until the next connection's wake-up
// takes it, and so on, one connection behind for good. So at each tick a worker whose accept
// on a shared socket has waited while the socket had a connection ready at two ticks in a row
// cancels it and arms it again: the new accept takes a waiting connection at once. One poll()
// per shared socket per tick (100 ms), none for keygate's own sockets.
void Worker::Impl::check_shared_backlog(uint32_t li) {
  if (!listeners[li].inherited || !accept_armed[li] || accept_rearm[li] || draining ||
      listeners[li].fd < 0) {
    backlog_seen[li] = 0;
    return;
  }
  pollfd waiting{listeners[li].fd, POLLIN, 0};
  if (::poll(&waiting, 1, 0) != 1 || (waiting.revents & POLLIN) == 0) {
    backlog_seen[li] = 0;
    return;
  }
  if (++backlog_seen[li] < 2) return;  // a connection that came since the last tick
  backlog_seen[li] = 0;
  accept_rearm[li] = true;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_cancel64(sqe, make_user_data(kOpAccept, li, 0), 0);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpAcceptCancel, li, 0));
}

void Worker::Impl::begin_drain() {
  if (draining) return;
  draining = true;
  drain_deadline_ms = now_ms + limits.drain_timeout_ms;
  fresh_wait_end_ms = now_ms + kDrainFreshWaitMaxMs;
  for (uint32_t li = 0; li < listeners.size(); ++li) {
    if (accept_armed[li]) {
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel64(sqe, make_user_data(kOpAccept, li, 0), 0);
      io_uring_sqe_set_data64(sqe, make_user_data(kOpAcceptCancel, li, 0));
    }
    // Stop listening now, so new clients are refused at once instead of completing handshakes
    // into a backlog nobody accepts from until the drain ends. The pending accept keeps its own
    // reference to the socket until its cancellation completes. Not an inherited socket: it
    // is shared with the other workers and the service manager, and shutdown() on a listening
    // socket resets every connection in its backlog and stops it listening for all of them;
    // its backlog is the next keygate's to serve. Closing this worker's descriptor drops only
    // this worker's reference.
    if (!listeners[li].inherited) ::shutdown(listeners[li].fd, SHUT_RDWR);
    ::close(listeners[li].fd);
    listeners[li].fd = -1;
  }
  // Idle keep-alive connections close now; fresh ones (no byte yet) are waited for a moment.
  for (auto& c : conns) {
    if (c->fd >= 0 && !c->closed && idle(c.get()) && !c->fresh) close_conn(c.get());
  }
}

void Worker::Impl::stop_serving(const char* why) {
  ring_failed = true;  // nothing more goes to the ring (get_sqe)
  // The listeners first: every moment one stays open, the kernel hashes new connections to a
  // backlog nobody will accept from. An own SO_REUSEPORT socket is shut down, as at a drain:
  // the ring's pending multishot accept holds a reference to it, so a close alone would leave
  // it listening in the group until the ring is torn down below; the shutdown unhashes it now
  // and resets the connections in its backlog (nobody could serve them). An inherited socket
  // is shared with the other workers: only this worker's descriptor goes.
  for (WorkerListener& l : listeners) {
    if (l.fd < 0) continue;
    if (!l.inherited) ::shutdown(l.fd, SHUT_RDWR);
    ::close(l.fd);
    l.fd = -1;
  }
  size_t cut = 0;
  for (auto& c : conns) {
    if (c->fd >= 0 && !c->closed) {
      // Not "shutdown": nobody asked this worker to stop, and an operator reading the log
      // should see that its requests were lost to a failure.
      c->cut_reason = "worker_failed";
      close_conn(c.get());
      ++cut;
    }
  }
  // After the connections (release() still updates the ring's file table): tearing the ring
  // down cancels every operation, the accept pending on an inherited socket among them, which
  // would otherwise take one more connection off the shared backlog into a ring nobody reaps.
  // The buffers stay mapped until the worker is destroyed (~Impl), after the cancellations.
  if (ring_ready) {
    io_uring_queue_exit(&ring);
    ring_ready = false;
  }
  // With the ring gone, the completions that would release the connections cut above (and
  // the upstream ones) never come: their descriptors are closed here, and each client
  // connection's place in a shared budget (the admin port's) given back, or they would stay
  // taken for the rest of the run while the other workers serve on.
  for (auto& c : conns) {
    if (c->fd < 0) continue;
    ::close(c->fd);
    c->fd = -1;
    c->fixed = false;
    if (listeners[c->listener].budget != nullptr) listeners[c->listener].budget->give_back();
  }
  for (auto& up : upconns) {
    if (up->fd < 0) continue;
    ::close(up->fd);
    up->fd = -1;
  }
  bool own_backlog = false;  // an own SO_REUSEPORT socket, whose backlog the shutdown reset
  for (const WorkerListener& l : listeners) own_backlog = own_backlog || !l.inherited;
  std::fprintf(stderr,
               "keygate: worker %u: io_uring_enter failed: %s; the worker stops serving: its "
               "listening sockets are closed (new connections go to the other workers%s) and "
               "its %zu open connections are cut\n",
               index, why, own_backlog ? "; those waiting in its own backlog are reset" : "",
               cut);
}

void Worker::Impl::post(uint32_t slot, uint32_t gen) noexcept {
  // The eventfd write stays under the lock: once a post is visible, the worker may drain it,
  // finish and stop; the lock keeps that from overtaking this write.
  std::lock_guard<std::mutex> lock(posted_mu);
  const bool first = posted.empty();
  posted.emplace_back(slot, gen);
  // One wake-up serves every post until the worker swaps the list (on_wake re-arms its read
  // before it takes the lock), so later posts skip the syscall.
  if (!first) return;
  const uint64_t one = 1;
  const ssize_t n = ::write(wake_fd, &one, sizeof(one));
  KEYGATE_ASSERT(n == sizeof(one));
}

void Worker::Impl::on_wake() {
  arm_wake();
  // A reload posted with the stop is taken first: the drain then runs to the new
  // drain_timeout_ms, the one the main thread bounds its wait by.
  take_posted_apis();
  if (stop_requested.load(std::memory_order_acquire)) begin_drain();
  // The loop checks the deadline before its next wait, so what is left is cut off (reason
  // "shutdown", as at the drain deadline) within this pass.
  if (stop_now_requested.load(std::memory_order_acquire) && drain_deadline_ms > now_ms) {
    drain_deadline_ms = now_ms;
  }
  {
    std::lock_guard<std::mutex> lock(posted_mu);
    posted_local.swap(posted);
  }
  for (auto [slot, gen] : posted_local) on_posted(slot, gen);
  posted_local.clear();
}

void Worker::Impl::take_posted_apis() {
  // Set under the lock before the post's eventfd write: a post this misses wakes on_wake again.
  if (!apis_pending.load(std::memory_order_acquire)) return;
  std::shared_ptr<const ApiSet> apis_next;
  {
    std::lock_guard<std::mutex> lock(posted_mu);
    apis_next.swap(apis_posted);
    apis_pending.store(false, std::memory_order_relaxed);
  }
  if (apis_next != nullptr) {
    // Before the switch, which tells the main thread the reload is taken.
    if (apis_next->settings) adopt_settings(*apis_next->settings);
    switch_apis(std::move(apis_next));
  }
}

void Worker::Impl::adopt_settings(const WorkerSettings& settings) {
  const Limits old = limits;
  limits = settings.limits;
  // It sized the registered file table (init) and the listener's connections_max: kept.
  limits.connections_per_worker_max = old.connections_per_worker_max;
  capture_bytes_max = static_cast<size_t>(settings.capture_bytes_max);
  for (WorkerListener& l : listeners) {
    l.body_bytes_max = l.admin ? settings.admin_body_bytes_max : limits.body_bytes_max;
  }
  // A request whose head has begun keeps the body cap it began with (a body may already be
  // partly in against it); the next request on each connection gets the new one. The head
  // caps apply to every check from now on, so each slot's header room follows them now.
  for (const std::unique_ptr<Connection>& c : conns) {
    if (c != nullptr) c->parser.adopt_limits(listeners[c->listener].body_bytes_max);
  }
  // A connection's send-rate credit is counted in bytes at its minimum: a new minimum keeps
  // the waiting time it stood for (one accepted with no minimum gets the full slack, as a
  // new one does), rather than the bytes, which at another rate are another time.
  if (limits.send_rate_min_bytes_per_s != old.send_rate_min_bytes_per_s) {
    for (const std::unique_ptr<Connection>& c : conns) {
      if (c != nullptr) {
        c->send_rate.rebase(old.send_rate_min_bytes_per_s, limits.send_rate_min_bytes_per_s,
                            limits.idle_timeout_ms);
      }
    }
  }
  // A timer armed before keeps its deadline, cut to the new duration from now when that is
  // shorter (an operator shortening idle_timeout_ms wants the idle connections gone by then).
  // Every deadline of a list moves the same monotonic way, and later arms come after them:
  // each list stays sorted, as expiry assumes (TimerList).
  const auto cut = [&](TimerKind kind, uint32_t was, uint32_t now_is) {
    if (now_is >= was) return;
    const int64_t latest = now_ms + now_is;
    for (Connection* c = timers[kind].head; c != nullptr; c = c->tnext) {
      c->deadline_ms = std::min(c->deadline_ms, latest);
    }
  };
  cut(kHeader, old.header_timeout_ms, limits.header_timeout_ms);
  cut(kBody, old.body_timeout_ms, limits.body_timeout_ms);
  cut(kIdle, old.idle_timeout_ms, limits.idle_timeout_ms);
  cut(kWrite, old.idle_timeout_ms, limits.idle_timeout_ms);
  cut(kLinger, old.linger_timeout_ms, limits.linger_timeout_ms);
  // A drain already begun keeps its deadline (begin_drain set it).
}

void Worker::Impl::on_posted(uint32_t slot, uint32_t gen) {
  Connection* c = conns[slot].get();
  // The pending request holds an op on its slot, so the slot cannot have been reused.
  KEYGATE_ASSERT(c->gen == gen && c->awaiting);
  c->awaiting = false;
  if (c->closed) {
    log_cut_off(c);
  } else {
    if (c->head_deferred) {
      c->head_deferred = false;
      head_ready(c, true);
    } else {
      dispatch(c, true);
    }
    drain_pending(c);
    update_timer(c);
  }
  op_done(c);
}

// A deferred request whose connection closed before its ticket came back: the handler says
// what it did anyway (Handler::abandon: an admin change it made keeps its status), else 499.
void Worker::Impl::log_cut_off(Connection* c) {
  const int done = listeners[c->listener].handler->abandon(c->ctx);
  log_abandoned(c, done != 0 ? done : 499);
}

// After run() returned: the deferred requests the drain deadline cut off (closed with their
// ticket out, so not logged then) whose tickets have come back since. The executor posts the
// job it was running when the workers exited once it is done (AdminExecutor::stop), so the
// change it made is logged with its real status and reason "shutdown", as on_posted() would
// have. The slot is not released: the ring is no longer ours (~Impl closes the descriptor).
void Worker::Impl::settle_deferred() {
  {
    std::lock_guard<std::mutex> lock(posted_mu);
    posted_local.swap(posted);
  }
  for (auto [slot, gen] : posted_local) {
    Connection* c = conns[slot].get();
    KEYGATE_ASSERT(c->gen == gen && c->awaiting && c->closed);
    c->awaiting = false;
    log_cut_off(c);
    --c->ops;
  }
  posted_local.clear();
}

Worker::Worker(unsigned index, const Limits& limits, std::vector<WorkerListener> listeners,
               LoopObserver* observer, std::shared_ptr<const ApiSet> apis)
    : impl_(std::make_unique<Impl>(index, limits, std::move(listeners), observer,
                                   std::move(apis))) {}
Worker::~Worker() = default;

bool Worker::init(std::string* error) { return impl_->init(error); }
void Worker::set_registered_files(bool on) { impl_->registered_files = on; }
void Worker::run() { impl_->run(); }

void Worker::request_stop() {
  if (!impl_->ready.load(std::memory_order_acquire)) return;  // never started: nothing to stop
  if (impl_->stop_requested.exchange(true, std::memory_order_acq_rel)) return;
  const uint64_t one = 1;
  // eventfd writes of 8 bytes do not fail short; a failure means the fd is gone (a bug).
  const ssize_t n = ::write(impl_->wake_fd, &one, sizeof(one));
  KEYGATE_ASSERT(n == sizeof(one));
}

void Worker::request_stop_now() {
  if (!impl_->ready.load(std::memory_order_acquire)) return;
  // Both flags before the wake-up: on_wake() begins the drain (if request_stop() has not) and
  // then moves its deadline to now.
  impl_->stop_now_requested.store(true, std::memory_order_release);
  impl_->stop_requested.store(true, std::memory_order_release);
  const uint64_t one = 1;
  const ssize_t n = ::write(impl_->wake_fd, &one, sizeof(one));
  KEYGATE_ASSERT(n == sizeof(one));
}

void Worker::settle_deferred() { impl_->settle_deferred(); }

void Worker::set_apis(std::shared_ptr<const ApiSet> apis) {
  KEYGATE_ASSERT(apis != nullptr);
  std::lock_guard<std::mutex> lock(impl_->posted_mu);
  impl_->apis_posted = std::move(apis);
  impl_->apis_pending.store(true, std::memory_order_release);
  // Under the lock, as post(): the worker cannot stop and close the eventfd in between. Not
  // skipped when tickets are posted too: a reload is rare, one more wake-up costs nothing.
  const uint64_t one = 1;
  const ssize_t n = ::write(impl_->wake_fd, &one, sizeof(one));
  KEYGATE_ASSERT(n == sizeof(one));
}

uint64_t Worker::apis_generation() const {
  return impl_->apis_generation.load(std::memory_order_acquire);
}

void Worker::fail_ring_for_testing() {
  impl_->ring_fail_for_testing.store(true, std::memory_order_relaxed);
  // Wakes it, so the failure comes at once rather than at its next tick. The descriptor stays
  // open until the worker is destroyed, so the write cannot hit another file.
  const uint64_t one = 1;
  (void)::write(impl_->wake_fd, &one, sizeof(one));
}

bool Worker::exited() const { return impl_->exited.load(std::memory_order_acquire); }

uint64_t Worker::loop_pass_age_ms() const {
  const int64_t age = monotonic_ms() - impl_->stats.loop_pass_ms.load(std::memory_order_relaxed);
  return age > 0 ? static_cast<uint64_t>(age) : 0;  // stored on another CPU a moment ago
}

void Worker::set_access_log(AccessSink* sink, size_t capture_bytes_max) {
  impl_->access_sink = sink;
  impl_->capture_bytes_max = capture_bytes_max;
}

const std::string& Worker::ring_mode() const { return impl_->mode; }
const WorkerStats& Worker::stats() const { return impl_->stats; }

}  // namespace keygate::net
