// keygate-bare-responder: the floor under bench/e2e.sh's GET /healthz comparison.
//
// A single-threaded io_uring server that does the least any io_uring HTTP/1.1 server on this
// kernel must do per request, and nothing else: the same ring set-up as a keygate worker
// (SINGLE_ISSUER + DEFER_TASKRUN, falling back to COOP_TASKRUN), multishot accept, multishot
// receive into a provided buffer ring, one send per received batch carrying one fixed response
// (the same bytes keygate sends for /healthz) per request found. It parses nothing: a request
// is counted at each blank line ("\r\n\r\n", tracked across receives), so it only serves
// bodiless requests such as wrk's GETs. No timers, no limits beyond the connection table, no
// access log. What keygate costs above this server is what its parsing, routing, timers and
// bookkeeping cost; what nginx costs above it is what epoll and its own code cost.
//
// Not part of the product: built with the benchmarks, started by bench/e2e.sh. Usage:
//   keygate-bare-responder PORT     (listens on 127.0.0.1:PORT; SIGINT/SIGTERM stop it)
// It prints "bare: listening 127.0.0.1:PORT ring=..." once ready.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\n"
    "Server: keygate\r\n"
    "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 2\r\n"
    "\r\n"
    "ok";
constexpr unsigned kRingEntries = 1024;
constexpr unsigned kBuffers = 1024;          // provided receive buffers (a power of two)
constexpr unsigned kBufferBytes = 4096;
constexpr unsigned kMaxConnections = 4096;   // fds beyond this are closed at once
constexpr unsigned kMaxBatch = 64;           // responses per send; more wait for the next
constexpr int kBufferGroup = 0;

enum class Op : uint64_t { kAccept = 1, kRecv = 2, kSend = 3 };

uint64_t tag(Op op, int fd) { return (static_cast<uint64_t>(op) << 32) | static_cast<uint32_t>(fd); }
Op tag_op(uint64_t data) { return static_cast<Op>(data >> 32); }
int tag_fd(uint64_t data) { return static_cast<int>(data & 0xffffffffu); }

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Connection {
  bool open = false;
  bool closing = false;     // shut down; closed once no operation holds the descriptor
  bool receiving = false;   // a multishot receive is armed
  unsigned matched = 0;     // bytes of "\r\n\r\n" matched at the end of the last receive
  unsigned owed = 0;        // responses found but not yet sent
  unsigned in_flight = 0;   // responses in the send under way (one send at a time)
};

class Responder {
 public:
  explicit Responder(int listen_fd) : listen_fd_(listen_fd), conns_(kMaxConnections) {
    batch_.reserve(kResponse.size() * kMaxBatch);
    for (unsigned i = 0; i < kMaxBatch; ++i) batch_.append(kResponse.data(), kResponse.size());
  }

  bool init() {
    io_uring_params params{};
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                   IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
    params.cq_entries = kRingEntries * 4;
    ring_mode_ = "single_issuer+defer_taskrun";
    if (io_uring_queue_init_params(kRingEntries, &ring_, &params) < 0) {
      params = io_uring_params{};
      params.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
      params.cq_entries = kRingEntries * 4;
      ring_mode_ = "coop_taskrun";
      if (int rc = io_uring_queue_init_params(kRingEntries, &ring_, &params); rc < 0) {
        std::fprintf(stderr, "bare: io_uring_queue_init: %s\n", std::strerror(-rc));
        return false;
      }
    }
    const size_t ring_bytes = kBuffers * sizeof(io_uring_buf);
    void* mem = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
                     -1, 0);
    if (mem == MAP_FAILED) {
      std::perror("bare: mmap");
      return false;
    }
    buf_ring_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(buf_ring_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(buf_ring_);
    reg.ring_entries = kBuffers;
    reg.bgid = kBufferGroup;
    if (int rc = io_uring_register_buf_ring(&ring_, &reg, 0); rc < 0) {
      std::fprintf(stderr, "bare: io_uring_register_buf_ring: %s\n", std::strerror(-rc));
      return false;
    }
    buffers_.resize(size_t{kBuffers} * kBufferBytes);
    for (unsigned i = 0; i < kBuffers; ++i) return_buffer(i, static_cast<int>(i));
    io_uring_buf_ring_advance(buf_ring_, static_cast<int>(kBuffers));
    arm_accept();
    return true;
  }

  const char* ring_mode() const { return ring_mode_; }

  int run() {
    while (g_stop == 0) {
      __kernel_timespec timeout{0, 200'000'000};  // to notice a signal
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &timeout, nullptr);
      if (rc < 0 && rc != -ETIME && rc != -EINTR) {
        std::fprintf(stderr, "bare: io_uring_submit_and_wait: %s\n", std::strerror(-rc));
        return 1;
      }
      unsigned head = 0;
      unsigned seen = 0;
      returned_ = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        handle(*cqe);
      }
      io_uring_buf_ring_advance(buf_ring_, returned_);
      io_uring_cq_advance(&ring_, seen);
      if (accept_wanted_ && seen == 0) {  // a quiet wait since the accept failed
        accept_wanted_ = false;
        arm_accept();
      }
    }
    for (unsigned fd = 0; fd < kMaxConnections; ++fd) {
      if (conns_[fd].open) close(static_cast<int>(fd));
    }
    io_uring_queue_exit(&ring_);
    return 0;
  }

 private:
  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;  // never null after a submit: the SQ was just emptied
  }

  void return_buffer(unsigned id, int offset) {
    io_uring_buf_ring_add(buf_ring_, &buffers_[size_t{id} * kBufferBytes], kBufferBytes,
                          static_cast<unsigned short>(id), io_uring_buf_ring_mask(kBuffers),
                          offset);
  }

  void arm_accept() {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, listen_fd_, nullptr, nullptr, 0);
    io_uring_sqe_set_data64(sqe, tag(Op::kAccept, listen_fd_));
  }

  void arm_recv(int fd) {
    conns_[static_cast<unsigned>(fd)].receiving = true;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kBufferGroup;
    io_uring_sqe_set_data64(sqe, tag(Op::kRecv, fd));
  }

  void send_owed(int fd) {
    Connection& c = conns_[static_cast<unsigned>(fd)];
    if (c.closing || c.in_flight != 0 || c.owed == 0) return;
    c.in_flight = c.owed < kMaxBatch ? c.owed : kMaxBatch;
    c.owed -= c.in_flight;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_send(sqe, fd, batch_.data(), kResponse.size() * c.in_flight, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(Op::kSend, fd));
  }

  // Shuts the connection down; its descriptor is closed only once no operation can still post a
  // completion for it, so that a new connection given the same number never receives one.
  void drop(int fd) {
    Connection& c = conns_[static_cast<unsigned>(fd)];
    if (!c.closing) {
      c.closing = true;
      shutdown(fd, SHUT_RDWR);  // ends the multishot receive
    }
    if (!c.receiving && c.in_flight == 0) {
      c = Connection{};
      close(fd);
      if (accept_wanted_) {  // a descriptor is free again
        accept_wanted_ = false;
        arm_accept();
      }
    }
  }

  void handle(const io_uring_cqe& cqe) {
    const int fd = tag_fd(cqe.user_data);
    switch (tag_op(cqe.user_data)) {
      case Op::kAccept:
        if (cqe.res >= 0) {
          if (static_cast<unsigned>(cqe.res) >= kMaxConnections) {
            close(cqe.res);
          } else {
            const int one = 1;
            (void)setsockopt(cqe.res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            conns_[static_cast<unsigned>(cqe.res)] = Connection{.open = true};
            arm_recv(cqe.res);
          }
        }
        // Ended: at once, or after the next wake-up (at most the wait's timeout) when it ended
        // for want of descriptors or memory, rather than spin on the error.
        if ((cqe.flags & IORING_CQE_F_MORE) == 0 && g_stop == 0) {
          if (cqe.res < 0 && cqe.res != -ECANCELED) {
            accept_wanted_ = true;
          } else {
            arm_accept();
          }
        }
        return;
      case Op::kRecv: {
        Connection& c = conns_[static_cast<unsigned>(fd)];
        if (cqe.flags & IORING_CQE_F_BUFFER) {
          const unsigned id = cqe.flags >> IORING_CQE_BUFFER_SHIFT;
          if (cqe.res > 0 && !c.closing) {
            count_requests(c, &buffers_[size_t{id} * kBufferBytes],
                           static_cast<unsigned>(cqe.res));
          }
          return_buffer(id, static_cast<int>(returned_++));
        }
        if ((cqe.flags & IORING_CQE_F_MORE) == 0) c.receiving = false;
        if (c.closing || (cqe.res <= 0 && cqe.res != -ENOBUFS)) {
          drop(fd);
          return;
        }
        if (!c.receiving) arm_recv(fd);  // ended by ENOBUFS, or the kernel ended it
        send_owed(fd);
        return;
      }
      case Op::kSend: {
        Connection& c = conns_[static_cast<unsigned>(fd)];
        const size_t want = kResponse.size() * c.in_flight;
        c.in_flight = 0;
        // A short send means a full socket buffer, which wrk's one-at-a-time GETs never cause.
        if (c.closing || cqe.res < 0 || static_cast<size_t>(cqe.res) != want) {
          drop(fd);
          return;
        }
        send_owed(fd);
        return;
      }
    }
  }

  static void count_requests(Connection& c, const char* data, unsigned len) {
    static constexpr char kEnd[] = "\r\n\r\n";
    for (unsigned i = 0; i < len; ++i) {
      if (data[i] == kEnd[c.matched]) {
        if (++c.matched == 4) {
          ++c.owed;
          c.matched = 0;
        }
      } else {
        c.matched = data[i] == '\r' ? 1 : 0;
      }
    }
  }

  int listen_fd_;
  io_uring ring_{};
  const char* ring_mode_ = "";
  io_uring_buf_ring* buf_ring_ = nullptr;
  std::vector<char> buffers_;
  std::vector<Connection> conns_;
  std::string batch_;
  unsigned returned_ = 0;
  bool accept_wanted_ = false;  // the multishot accept failed; armed again after a quiet wait
};

}  // namespace

int main(int argc, char** argv) {
  char* end = nullptr;
  const long port = argc == 2 ? std::strtol(argv[1], &end, 10) : -1;
  if (argc != 2 || *end != '\0' || port <= 0 || port > 65535) {
    std::fprintf(stderr, "usage: keygate-bare-responder PORT\n");
    return 2;
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGPIPE, SIG_IGN);
  rlimit files{};  // as keygate: the soft descriptor limit up to the hard one
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &files);
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0 ||
      listen(fd, 1024) < 0) {
    std::fprintf(stderr, "bare: cannot listen on 127.0.0.1:%ld: %s\n", port, std::strerror(errno));
    return 1;
  }
  Responder responder(fd);
  if (!responder.init()) return 1;
  std::printf("bare: listening 127.0.0.1:%ld ring=%s\n", port, responder.ring_mode());
  std::fflush(stdout);
  return responder.run();
}
