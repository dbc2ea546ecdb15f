#include "tests/integration/process_helper.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

namespace keygate::integration {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

}  // namespace

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    (void)reap_child(pid_, Clock::now());
  }
  if (out_fd_ >= 0) ::close(out_fd_);
  if (err_fd_ >= 0) ::close(err_fd_);
}

bool ChildProcess::spawn(const std::string& program, const std::vector<std::string>& args,
                         std::string* error, const std::vector<std::string>* env) {
  SpawnedChild child;
  if (!spawn_child(program, args, /*capture_stderr=*/true, &child, error, env)) return false;
  pid_ = child.pid;
  out_fd_ = child.out_fd;
  err_fd_ = child.err_fd;
  return true;
}

void ChildProcess::read_until(Clock::time_point deadline) {
  if (out_fd_ < 0 && err_fd_ < 0) {
    std::this_thread::sleep_for(Millis(std::min(remaining_ms(deadline), 5)));
    return;
  }
  pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};  // poll ignores fd -1
  if (::poll(fds, 2, remaining_ms(deadline)) <= 0) return;
  int* fd_of[2] = {&out_fd_, &err_fd_};
  std::string* sink_of[2] = {&stdout_, &stderr_};
  for (int i = 0; i < 2; ++i) {
    if (fds[i].revents == 0) continue;
    char buf[4096];
    const ssize_t n = ::read(*fd_of[i], buf, sizeof(buf));
    if (n > 0) {
      sink_of[i]->append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      ::close(*fd_of[i]);
      *fd_of[i] = -1;
    }
  }
}

bool ChildProcess::wait_for_line(std::string_view prefix, Millis timeout, std::string* line) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    size_t start = 0;
    for (size_t eol; (eol = stdout_.find('\n', start)) != std::string::npos; start = eol + 1) {
      const std::string_view l = std::string_view(stdout_).substr(start, eol - start);
      if (l.starts_with(prefix)) {
        *line = std::string(l);
        return true;
      }
    }
    if (out_fd_ < 0 || Clock::now() >= deadline) return false;
    read_until(deadline);
  }
}

bool ChildProcess::wait_for_lines(size_t lines, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  const auto complete = [&] {
    return static_cast<size_t>(std::count(stdout_.begin(), stdout_.end(), '\n')) >= lines;
  };
  while (!complete() && out_fd_ >= 0 && Clock::now() < deadline) read_until(deadline);
  return complete();
}

void ChildProcess::drain_output(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while ((out_fd_ >= 0 || err_fd_ >= 0) && Clock::now() < deadline) read_until(deadline);
}

ExitStatus ChildProcess::stop(int sig, Millis timeout) {
  if (pid_ <= 0) return ExitStatus{};
  ::kill(pid_, sig);
  const auto deadline = Clock::now() + timeout;
  // Output pipes close when the process exits; reading them keeps it from blocking on a write.
  while ((out_fd_ >= 0 || err_fd_ >= 0) && Clock::now() < deadline) read_until(deadline);
  const ExitStatus status = reap_child(pid_, deadline);
  pid_ = -1;
  return status;
}

bool ChildProcess::exited(ExitStatus* status) {
  if (pid_ <= 0) return true;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
  *status = decode_wait_status(st);
  pid_ = -1;
  return true;
}

std::unique_ptr<ChildProcess> start_process_with_ready_line(const std::string& program,
                                                            const std::vector<std::string>& args,
                                                            std::string_view prefix,
                                                            std::string* line, std::string* error,
                                                            Millis timeout) {
  auto child = std::make_unique<ChildProcess>();
  if (!child->spawn(program, args, error)) return nullptr;
  if (child->wait_for_line(prefix, timeout, line)) return child;
  ExitStatus status;
  const std::string how = child->exited(&status) ? status.describe() : "still running";
  *error = program + " printed no line starting with '" + std::string(prefix) + "' (" + how +
           "); stdout: '" + child->output() + "'; stderr: '" + child->error_output() + "'";
  return nullptr;
}

uint16_t probe_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

bool wait_for_port(uint16_t port, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    RawClient client;
    if (client.connect(port, nullptr, Millis(200))) return true;
    std::this_thread::sleep_for(Millis(20));
  }
  return false;
}

}  // namespace keygate::integration
