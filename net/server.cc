#include "net/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <thread>

#include "core/assert.h"
#include "net/worker.h"

namespace keygate::net {
namespace {

constexpr int kListenBacklog = 4096;

bool make_sockaddr(const ListenAddress& addr, uint16_t port, sockaddr_storage* out,
                   socklen_t* len, std::string* error) {
  std::memset(out, 0, sizeof(*out));
  if (addr.ipv6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(out);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    if (inet_pton(AF_INET6, addr.host.c_str(), &sin6->sin6_addr) != 1) {
      *error = "invalid IPv6 address '" + addr.host + "'";
      return false;
    }
    *len = sizeof(sockaddr_in6);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    if (inet_pton(AF_INET, addr.host.c_str(), &sin->sin_addr) != 1) {
      *error = "invalid IPv4 address '" + addr.host + "'";
      return false;
    }
    *len = sizeof(sockaddr_in);
  }
  return true;
}

// `send_buffer_bytes` (0: none) becomes the socket's SO_SNDBUF, which every connection it
// accepts inherits (Limits::send_buffer_bytes): set once here, not once per accept.
int bind_socket(const ListenAddress& addr, uint16_t port, bool reuseport,
                uint32_t send_buffer_bytes, std::string* error) {
  sockaddr_storage ss;
  socklen_t len;
  if (!make_sockaddr(addr, port, &ss, &len, error)) return -1;
  const int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  const int one = 1;
  (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    *error = std::string("SO_REUSEPORT: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (send_buffer_bytes != 0) {
    const int bytes = static_cast<int>(send_buffer_bytes);  // at most 2^30 (config)
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)) != 0) {
      *error = std::string("SO_SNDBUF: ") + std::strerror(errno);
      ::close(fd);
      return -1;
    }
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    *error = "cannot listen on " + ListenAddress{addr.host, port, addr.ipv6}.to_string() + ": " +
             std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

uint16_t bound_port(int fd) {
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// One listening socket per worker on the same address. SO_REUSEPORT would let a second keygate
// (or anything else of this user with SO_REUSEPORT) silently share a fixed port, so a fixed port
// is first probed with a plain bind.
bool bind_group(const ListenAddress& addr, unsigned count, uint32_t send_buffer_bytes,
                std::vector<int>* fds, uint16_t* port, std::string* error) {
  uint16_t p = addr.port;
  if (p != 0) {
    const int probe = bind_socket(addr, p, false, 0, error);
    if (probe < 0) return false;
    ::close(probe);
  }
  for (unsigned i = 0; i < count; ++i) {
    const int fd = bind_socket(addr, p, true, send_buffer_bytes, error);
    if (fd < 0) return false;
    fds->push_back(fd);
    if (::listen(fd, kListenBacklog) != 0) {
      *error = "listen on " + addr.to_string() + ": " + std::strerror(errno);
      return false;
    }
    if (p == 0) p = bound_port(fd);  // later sockets join the kernel-chosen port
  }
  *port = p;
  return true;
}

// The inherited socket `fd`, once per worker: each worker owns (and at its drain closes) a
// descriptor of its own, so one worker's close never pulls the number from under another's
// accept. All of them are the one socket, with one backlog the workers accept from in turn.
bool share_inherited(int fd, const ListenAddress& addr, unsigned count, std::vector<int>* fds,
                     uint16_t* port, std::string* error) {
  for (unsigned i = 0; i < count; ++i) {
    const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      *error = "cannot use the inherited socket for " + addr.to_string() + ": " +
               std::strerror(errno);
      return false;
    }
    fds->push_back(copy);
  }
  *port = bound_port(fd);
  return true;
}

}  // namespace

bool check_inherited_socket(int fd, ListenAddress* address, std::string* error) {
  const std::string what = "LISTEN_FDS socket " + std::to_string(fd);
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    *error = what + ": " + std::strerror(errno) + " (not an open socket)";
    return false;
  }
  sockaddr_storage ss{};
  len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    *error = what + ": getsockname: " + std::strerror(errno);
    return false;
  }
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) {
    *error = what + " is not an IPv4 or IPv6 socket (ListenStream= takes ADDR:PORT)";
    return false;
  }
  if (type != SOCK_STREAM) {
    *error = what + " is not a TCP socket (a ListenDatagram=?)";
    return false;
  }
  int listening = 0;
  len = sizeof(listening);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening == 0) {
    *error = what + " is not listening (Accept=no in the socket unit, and a ListenStream=)";
    return false;
  }
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    *address = ListenAddress{host, ntohs(sin6->sin6_port), true};
  } else {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    *address = ListenAddress{host, ntohs(sin->sin_port), false};
  }
  // systemd passes the descriptors without close-on-exec (they had to survive its exec of
  // keygate): nothing keygate might start (the huge-page re-execution is done by now) is to
  // hold the socket open behind keygate's back.
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0 || ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0) {
    *error = what + ": cannot set FD_CLOEXEC: " + std::strerror(errno);
    return false;
  }
  return true;
}

struct Server::Running {
  explicit Running(uint32_t admin_connections_max) : admin_budget(admin_connections_max) {}

  ConnectionBudget admin_budget;  // before the workers, which use it until they are destroyed
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
};

Server::Server(ServerOptions options) : options_(std::move(options)) {}

Server::Stats Server::stats() const {
  Stats s;
  const Running* running = started_.load(std::memory_order_acquire);
  if (running == nullptr) return s;
  for (const auto& worker : running->workers) {
    const WorkerStats& w = worker->stats();
    ++s.workers;
    s.connections_accepted += w.connections_accepted.load(std::memory_order_relaxed);
    s.connections_refused += w.connections_refused.load(std::memory_order_relaxed);
    s.accept_errors += w.accept_errors.load(std::memory_order_relaxed);
    s.descriptor_reserve_refused += w.descriptor_reserve_refused.load(std::memory_order_relaxed);
    s.requests += w.requests.load(std::memory_order_relaxed);
    s.parse_errors += w.parse_errors.load(std::memory_order_relaxed);
    s.timeouts += w.timeouts.load(std::memory_order_relaxed);
    s.send_too_slow += w.send_too_slow.load(std::memory_order_relaxed);
    s.upstream_retries += w.upstream_retries.load(std::memory_order_relaxed);
    s.pending_input_bytes += w.pending_input_bytes.load(std::memory_order_relaxed);
    s.pending_input_peak =
        std::max(s.pending_input_peak, w.pending_input_peak.load(std::memory_order_relaxed));
    s.body_bytes_held += w.body_bytes_held.load(std::memory_order_relaxed);
    s.body_memory_refused += w.body_memory_refused.load(std::memory_order_relaxed);
    for (size_t l = 0; l < WorkerStats::kListeners; ++l) {
      for (size_t i = 0; i < WorkerStats::kStatusSlots; ++i) {
        s.responses[l][i] += w.responses[l][i].load(std::memory_order_relaxed);
      }
      w.reasons[l].for_each([&](std::string_view code, uint64_t count) {
        const auto at = s.reasons[l].find(code);
        if (at != s.reasons[l].end()) {
          at->second += count;
        } else {
          s.reasons[l].emplace(code, count);
        }
      });
    }
  }
  s.admin_connections_refused = running->admin_budget.refused();
  return s;
}

void Server::loops(std::vector<WorkerLoop>* out) const {
  out->clear();
  const Running* running = started_.load(std::memory_order_acquire);
  if (running == nullptr) return;
  for (const auto& worker : running->workers) {
    out->push_back(WorkerLoop{worker->loop_pass_age_ms(), worker->exited()});
  }
}

Server::~Server() {
  stop();
  running_.reset();
}

bool Server::start(std::string* error) {
  std::vector<int> data_fds;
  std::vector<int> admin_fds;
  auto close_all = [&] {
    for (int fd : data_fds) ::close(fd);
    for (int fd : admin_fds) ::close(fd);
  };
  const unsigned n = options_.workers;
  const auto take = [&](const ListenAddress& addr, int& inherited, std::vector<int>* fds,
                        uint16_t* port) {
    if (inherited < 0) {
      return bind_group(addr, n, options_.limits.send_buffer_bytes, fds, port, error);
    }
    const bool ok = share_inherited(inherited, addr, n, fds, port, error);
    // The workers hold it now (or keygate stops): the service manager keeps its own.
    ::close(inherited);
    inherited = -1;
    return ok;
  };
  int data_fd = options_.data_inherited_fd;
  int admin_fd = options_.admin_inherited_fd;
  const bool bound = take(options_.data_listen, data_fd, &data_fds, &data_port_) &&
                     take(options_.admin_listen, admin_fd, &admin_fds, &admin_port_);
  if (admin_fd >= 0) ::close(admin_fd);  // not taken: the data listener failed
  if (!bound) {
    close_all();
    return false;
  }

  auto running = std::make_unique<Running>(options_.admin_connections_max);
  for (unsigned i = 0; i < n; ++i) {
    std::vector<WorkerListener> listeners;
    // The data port decides at every head with a body (forward, refuse, or how much of the
    // body to keep: AuthHandler::handle_head), and what it keeps counts against the worker's
    // body memory.
    listeners.push_back(WorkerListener{data_fds[i], options_.data_handlers->make(i),
                                       options_.limits.body_bytes_max, true, "data",
                                       options_.limits.connections_per_worker_max, nullptr,
                                       true, data_inherited()});
    listeners.push_back(WorkerListener{admin_fds[i], options_.admin_handlers->make(i),
                                       options_.admin_body_bytes_max, true, "admin",
                                       options_.admin_connections_max, &running->admin_budget,
                                       false, admin_inherited(), true});
    if (data_inherited()) listeners[0].send_buffer_bytes = options_.limits.send_buffer_bytes;
    if (admin_inherited()) listeners[1].send_buffer_bytes = options_.limits.send_buffer_bytes;
    data_fds[i] = admin_fds[i] = -1;  // the worker owns them now
    LoopObserver* observer = i < options_.loop_observers.size() ? options_.loop_observers[i] : nullptr;
    running->workers.push_back(
        std::make_unique<Worker>(i, options_.limits, std::move(listeners), observer,
                                 options_.apis));
    running->workers.back()->set_access_log(options_.access_sink, options_.capture_bytes_max);
    running->workers.back()->set_registered_files(options_.registered_files);
  }

  // Each ring must be created on its worker's thread (SINGLE_ISSUER), so init happens there and
  // reports back before the thread enters its loop.
  std::vector<std::promise<std::string>> ready(n);
  for (unsigned i = 0; i < n; ++i) {
    Worker* w = running->workers[i].get();
    std::promise<std::string>* p = &ready[i];
    running->threads.emplace_back([w, p, i] {
      // Named so top/perf tell the threads apart ("kg-worker-3").
      char name[16];
      std::snprintf(name, sizeof(name), "kg-worker-%u", i);
      pthread_setname_np(pthread_self(), name);
      std::string why;
      const bool ok = w->init(&why);
      p->set_value(ok ? std::string() : (why.empty() ? "worker init failed" : why));
      if (ok) w->run();
    });
  }
  std::string first_error;
  for (unsigned i = 0; i < n; ++i) {
    std::string why = ready[i].get_future().get();
    if (!why.empty() && first_error.empty()) first_error = why;
  }
  running_ = std::move(running);
  if (!first_error.empty()) {
    *error = first_error;
    stop();
    running_.reset();
    return false;
  }
  ring_mode_ = running_->workers[0]->ring_mode();
  started_.store(running_.get(), std::memory_order_release);
  return true;
}

bool Server::set_apis(std::shared_ptr<const ApiSet> apis, std::span<const unsigned> stalled,
                      uint32_t wait_ms_max, std::vector<unsigned>* late, std::string* error) {
  KEYGATE_ASSERT(apis != nullptr && running_ != nullptr);
  late->clear();
  if (!Worker::check_upstreams(apis->registry.apis(), error)) return false;
  const uint64_t generation = apis->generation;
  for (auto& w : running_->workers) w->set_apis(apis);
  // Each worker takes it at its next loop pass (the eventfd wakes it at once); a worker that
  // has exited (its ring failed) serves nothing and is not waited for. Nor is a stalled one,
  // nor one past the bound: the main thread waiting here watches the workers and takes the
  // signals, and would be as stuck as the worker.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms_max);
  for (unsigned i = 0; i < running_->workers.size(); ++i) {
    const Worker& w = *running_->workers[i];
    const bool skip = std::find(stalled.begin(), stalled.end(), i) != stalled.end();
    while (!skip && w.apis_generation() < generation && !w.exited() &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (w.apis_generation() < generation && !w.exited()) late->push_back(i);
  }
  return true;
}

void Server::fail_ring_for_testing(unsigned worker) {
  // From a worker's thread (the test hook's handler), which may run before start() returned.
  const Running* running = started_.load(std::memory_order_acquire);
  if (running == nullptr || worker >= running->workers.size()) return;
  running->workers[worker]->fail_ring_for_testing();
}

void Server::request_stop() {
  if (!running_) return;
  for (auto& w : running_->workers) w->request_stop();
}

void Server::stop_now() {
  if (!running_) return;
  for (auto& w : running_->workers) w->request_stop_now();
}

bool Server::stopped() const {
  const Running* running = started_.load(std::memory_order_acquire);
  if (running == nullptr) return true;
  for (const auto& w : running->workers) {
    if (!w->exited()) return false;
  }
  return true;
}

void Server::stop() {
  if (!running_) return;
  request_stop();
  for (std::thread& t : running_->threads) {
    if (t.joinable()) t.join();
  }
}

void Server::settle_deferred() {
  if (!running_) return;
  stop();
  for (auto& w : running_->workers) w->settle_deferred();
}

}  // namespace keygate::net
