#include "tests/integration/test_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/api_key.h"

namespace keygate::integration {
namespace {

using Clock = std::chrono::steady_clock;

// Reads may block for at most this long in one recv(), whatever the caller's deadline; poll()
// does the real waiting, this only guards against a poll/recv disagreement.
constexpr Millis kSocketTimeoutSafetyNet(10000);
// How long a killed child may take to be reaped before we give up waiting (SIGKILL cannot be
// caught, so this only matters if the kernel is very slow).
constexpr Millis kReapAfterKill(5000);
// Response heads larger than this are treated as garbage rather than buffered forever.
constexpr size_t kResponseHeadMax = 1 << 20;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// One read from `fd` into `out`. Returns false at EOF or on error (the caller closes `fd`).
bool read_some(int fd, std::string* out) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n > 0) {
      out->append(buf, static_cast<size_t>(n));
      return true;
    }
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

}  // namespace

// The test's own environment with `set` added (replacing variables of the same name) and the
// variables named in `unset` removed, as "NAME=VALUE" strings.
std::vector<std::string> child_environment(
    const std::vector<std::pair<std::string, std::string>>& set,
    const std::vector<std::string>& unset) {
  auto replaced = [&](std::string_view entry) {
    const std::string_view name = entry.substr(0, entry.find('='));
    for (const auto& [n, v] : set) {
      if (n == name) return true;
    }
    for (const std::string& n : unset) {
      if (n == name) return true;
    }
    return false;
  };
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!replaced(*e)) out.emplace_back(*e);
  }
  for (const auto& [n, v] : set) out.push_back(n + "=" + v);
  return out;
}

bool spawn_child(const std::string& program, const std::vector<std::string>& args,
                 bool capture_stderr, SpawnedChild* child, std::string* error,
                 const std::vector<std::string>* env, const PassedSockets* sockets) {
  std::vector<std::string> argv_storage;
  argv_storage.push_back(program);
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  // Built before fork: the child may only make async-signal-safe calls.
  std::vector<std::string> env_storage;
  std::vector<char*> envp;
  char* listen_pid_digits = nullptr;  // where the child writes its pid
  if (sockets != nullptr && env == nullptr) {
    *error = "spawn_child: passed sockets need an environment";
    return false;
  }
  if (env != nullptr) {
    env_storage = *env;
    if (sockets != nullptr && sockets->listen_pid_of_child) {
      env_storage.push_back("LISTEN_PID=" + std::string(24, '\0'));
    }
    for (std::string& e : env_storage) envp.push_back(e.data());
    envp.push_back(nullptr);
    if (sockets != nullptr && sockets->listen_pid_of_child) {
      listen_pid_digits = env_storage.back().data() + std::strlen("LISTEN_PID=");
    }
  }

  int out_pipe[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || (capture_stderr && ::pipe2(err_pipe, O_CLOEXEC) != 0)) {
    *error = std::string("pipe2: ") + std::strerror(errno);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) {
      if (fd >= 0) ::close(fd);
    }
    return false;
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    *error = std::string("fork: ") + std::strerror(errno);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) {
      if (fd >= 0) ::close(fd);
    }
    return false;
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only until exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    ::dup2(out_pipe[1], STDOUT_FILENO);
    if (capture_stderr) ::dup2(err_pipe[1], STDERR_FILENO);
    if (sockets != nullptr) {
      // Out of the way first (a socket may already sit on 3 or 4), then onto 3, 4, ...; dup2
      // leaves the new descriptors without close-on-exec, as systemd passes them.
      constexpr size_t kMax = 8;
      int high[kMax];
      const size_t n = sockets->fds.size() < kMax ? sockets->fds.size() : kMax;
      for (size_t i = 0; i < n; ++i) high[i] = ::fcntl(sockets->fds[i], F_DUPFD_CLOEXEC, 100);
      for (size_t i = 0; i < n; ++i) {
        ::dup2(high[i], 3 + static_cast<int>(i));
        ::close(high[i]);
      }
      if (listen_pid_digits != nullptr) {
        char digits[24];
        int count = 0;
        for (pid_t v = ::getpid(); v > 0; v /= 10) {
          digits[count++] = static_cast<char>('0' + v % 10);
        }
        while (count > 0) *listen_pid_digits++ = digits[--count];
        *listen_pid_digits = '\0';
      }
    }
    if (env != nullptr) {
      ::execve(argv[0], argv.data(), envp.data());
    } else {
      ::execv(argv[0], argv.data());
    }
    const char msg[] = "test harness: exec failed: ";
    (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)!::write(STDERR_FILENO, argv[0], std::strlen(argv[0]));
    (void)!::write(STDERR_FILENO, "\n", 1);
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  if (capture_stderr) ::close(err_pipe[1]);
  child->pid = pid;
  child->out_fd = out_pipe[0];
  child->err_fd = capture_stderr ? err_pipe[0] : -1;
  return true;
}

ExitStatus decode_wait_status(int st) {
  ExitStatus s;
  if (WIFEXITED(st)) {
    s.exited = true;
    s.code = WEXITSTATUS(st);
  } else if (WIFSIGNALED(st)) {
    s.signal = WTERMSIG(st);
  }
  return s;
}

ExitStatus reap_child(pid_t pid, Clock::time_point deadline) {
  int st = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return decode_wait_status(st);
    if (r < 0 && errno != EINTR) return ExitStatus{};  // not our child any more: nothing to do
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(Millis(5));
  }
  ::kill(pid, SIGKILL);
  const auto hard_deadline = Clock::now() + kReapAfterKill;
  while (::waitpid(pid, &st, WNOHANG) == 0 && Clock::now() < hard_deadline) {
    std::this_thread::sleep_for(Millis(5));
  }
  ExitStatus s;
  s.timed_out = true;
  s.signal = SIGKILL;
  return s;
}

const char* keygate_binary() {
  // KEYGATE_TEST_BINARY runs the tests against another build (a fail-before check of a fix).
  const char* other = std::getenv("KEYGATE_TEST_BINARY");
  return other != nullptr && other[0] != '\0' ? other : KEYGATE_BINARY;
}

const char* unsanitized_keygate_binary() {
#ifdef KEYGATE_UNSANITIZED_BINARY
  const char* other = std::getenv("KEYGATE_TEST_BINARY");
  return other != nullptr && other[0] != '\0' ? other : KEYGATE_UNSANITIZED_BINARY;
#else
  return keygate_binary();
#endif
}

// ---------------------------------------------------------------------------------------------
// TempDir

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/keygate-it-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "test harness: mkdtemp(%s): %s\n", tmpl.c_str(), std::strerror(errno));
    std::abort();
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write_file(std::string_view name, std::string_view contents) const {
  const std::string full = path_ + "/" + std::string(name);
  std::ofstream f(full, std::ios::binary | std::ios::trunc);
  f.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  return full;
}

// ---------------------------------------------------------------------------------------------
// Processes

std::string ExitStatus::describe() const {
  if (timed_out) return "still running at the deadline (killed)";
  if (exited) return "exited with code " + std::to_string(code);
  if (signal != 0) return "killed by signal " + std::to_string(signal);
  return "unknown exit status";
}

ProcessResult run_keygate(const std::vector<std::string>& args, Millis timeout) {
  return run_process(keygate_binary(), args, nullptr, timeout);
}

ProcessResult run_process(const std::string& program, const std::vector<std::string>& args,
                          const std::vector<std::string>* env, Millis timeout,
                          const PassedSockets* sockets) {
  ProcessResult result;
  SpawnedChild child;
  std::string error;
  if (!spawn_child(program, args, true, &child, &error, env, sockets)) {
    result.err = "test harness: " + error;
    return result;
  }
  const auto deadline = Clock::now() + timeout;
  int out_fd = child.out_fd;
  int err_fd = child.err_fd;
  while ((out_fd >= 0 || err_fd >= 0) && Clock::now() < deadline) {
    pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};  // poll ignores fd -1
    const int n = ::poll(fds, 2, remaining_ms(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (fds[0].revents != 0 && !read_some(out_fd, &result.out)) {
      ::close(out_fd);
      out_fd = -1;
    }
    if (fds[1].revents != 0 && !read_some(err_fd, &result.err)) {
      ::close(err_fd);
      err_fd = -1;
    }
  }
  if (out_fd >= 0) ::close(out_fd);
  if (err_fd >= 0) ::close(err_fd);
  result.status = reap_child(child.pid, deadline);
  return result;
}

std::string with_harness_admin_hosts(std::string config) {
  const std::string hosts = "hosts = [\"a\", \"b\", \"it\", \"t\", \"x\"]\n";
  if (const size_t table = config.find("[admin]\n"); table != std::string::npos) {
    // A table that lists hosts itself (examples/keygate.toml) keeps its own.
    const size_t next = config.find("\n[", table + 8);
    const size_t own = config.find("\nhosts", table + 7);
    if (own == std::string::npos || own > next) config.insert(table + 8, hosts);
  } else {
    config += "\n[admin]\n" + hosts;
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// TestServer

TestServer::TestServer(ServerOptions options) : options_(std::move(options)) {
  data_dir_ = options_.data_dir.empty() ? dir_.path() + "/data" : options_.data_dir;
  log_dir_ = options_.log_dir.empty() ? dir_.path() + "/logs" : options_.log_dir;
  if (!options_.log_dir_flag) log_dir_ = data_dir_ + "/logs";
}

TestServer::~TestServer() {
  if (pid_ > 0) kill_and_reap();
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
  if (stderr_fd_ >= 0) ::close(stderr_fd_);
}

void TestServer::kill_and_reap() {
  ::kill(pid_, SIGKILL);
  (void)reap_child(pid_, Clock::now() + kReapAfterKill);
  pid_ = -1;
}

bool TestServer::start(std::string* error, Millis timeout) {
  std::string config = "# written by the keygate integration-test harness\n[limits]\n";
  for (const auto& [key, value] : options_.limits) {
    config += key + " = " + std::to_string(value) + "\n";
  }
  const std::string extra = options_.admin_hosts_as_written
                                ? options_.extra_config
                                : with_harness_admin_hosts(options_.extra_config);
  if (!extra.empty()) config += "\n" + extra + "\n";
  const std::string config_path = options_.config_path.empty()
                                      ? dir_.write_file("keygate.toml", config)
                                      : options_.config_path;
  std::vector<std::string> args = {
      "--config",       config_path,   "--listen",  "127.0.0.1:0",
      "--admin-listen", "127.0.0.1:" + std::to_string(options_.admin_port),
      "--workers",      std::to_string(options_.workers),
      "--data-dir",     data_dir_,
  };
  if (!options_.config_flag) args.erase(args.begin(), args.begin() + 2);
  if (options_.log_dir_flag) {
    args.push_back("--log-dir");
    args.push_back(log_dir_);
  }
  std::vector<std::string> env;
  const bool passing = options_.inherited_socket >= 0;
  const bool own_env = !options_.env.empty() || !options_.env_unset.empty() || passing;
  if (own_env) env = child_environment(options_.env, options_.env_unset);
  PassedSockets sockets;
  if (passing) {
    sockets.fds = {options_.inherited_socket};
    sockets.listen_pid_of_child = !options_.listen_pid_other;
    // Whatever the test process itself inherited is not keygate's.
    std::erase_if(env, [](const std::string& e) { return e.starts_with("LISTEN_"); });
    env.push_back("LISTEN_FDS=1");
    if (!options_.inherited_socket_name.empty()) {
      env.push_back("LISTEN_FDNAMES=" + options_.inherited_socket_name);
    }
    if (options_.listen_pid_other) env.push_back("LISTEN_PID=" + std::to_string(::getpid()));
  }
  const std::string binary = options_.binary.empty() ? keygate_binary() : options_.binary;
  std::string program = binary;
  std::vector<std::string> program_args = args;
  if (!options_.wrapper.empty()) {
    program = options_.wrapper.front();
    program_args.assign(options_.wrapper.begin() + 1, options_.wrapper.end());
    program_args.push_back(binary);
    program_args.insert(program_args.end(), args.begin(), args.end());
  }
  SpawnedChild child;
  if (!spawn_child(program, program_args, options_.capture_stderr, &child, error,
                   own_env ? &env : nullptr, passing ? &sockets : nullptr)) {
    return false;
  }
  pid_ = child.pid;
  stdout_fd_ = child.out_fd;
  stderr_fd_ = child.err_fd;

  const auto deadline = Clock::now() + timeout;
  while (stdout_.find('\n') == std::string::npos && stdout_fd_ >= 0 && Clock::now() < deadline) {
    read_stdout_until(deadline);
  }
  const size_t eol = stdout_.find('\n');
  if (eol == std::string::npos) {
    const ExitStatus status = wait_exit(Millis(0));
    *error = "keygate did not print its ready line (" + status.describe() + "); stdout: '" +
             stdout_ + "'";
    return false;
  }
  const std::string_view line = std::string_view(stdout_).substr(0, eol);
  auto port_after = [&](std::string_view key, uint16_t* port) {
    const size_t at = line.find(key);
    if (at == std::string_view::npos) return false;
    const size_t colon = line.find(':', at + key.size());
    if (colon == std::string_view::npos) return false;
    const char* begin = line.data() + colon + 1;
    const auto [end, ec] = std::from_chars(begin, line.data() + line.size(), *port);
    return ec == std::errc() && end != begin && *port != 0;
  };
  if (line.rfind("keygate: listening ", 0) != 0 || !port_after(" data=", &data_port_) ||
      !port_after(" admin=", &admin_port_)) {
    *error = "unexpected ready line: '" + std::string(line) + "'";
    kill_and_reap();
    return false;
  }
  return true;
}

bool TestServer::read_stdout_until(Clock::time_point deadline) {
  if (stdout_fd_ < 0) return false;
  read_outputs_until(deadline);
  return stdout_fd_ >= 0;
}

void TestServer::read_outputs_until(Clock::time_point deadline) {
  if (stdout_fd_ < 0 && stderr_fd_ < 0) return;
  pollfd fds[2] = {{stdout_fd_, POLLIN, 0}, {stderr_fd_, POLLIN, 0}};  // poll ignores fd -1
  const int n = ::poll(fds, 2, remaining_ms(deadline));
  if (n <= 0) return;  // timeout (or EINTR): still open
  if (fds[0].revents != 0 && !read_some(stdout_fd_, &stdout_)) {
    ::close(stdout_fd_);
    stdout_fd_ = -1;
  }
  if (fds[1].revents != 0 && !read_some(stderr_fd_, &stderr_)) {
    ::close(stderr_fd_);
    stderr_fd_ = -1;
  }
}

bool TestServer::wait_for_error_output(std::string_view needle, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while (stderr_.find(needle) == std::string::npos) {
    if (stderr_fd_ < 0 || Clock::now() >= deadline) return false;
    read_outputs_until(deadline);
  }
  return true;
}

bool TestServer::wait_for_output(std::string_view needle, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while (stdout_.find(needle) == std::string::npos) {
    if (stdout_fd_ < 0 || Clock::now() >= deadline) return false;
    read_stdout_until(deadline);
  }
  return true;
}

bool TestServer::send_signal(int sig) { return pid_ > 0 && ::kill(pid_, sig) == 0; }

ExitStatus TestServer::wait_exit(Millis timeout) {
  if (pid_ <= 0) return ExitStatus{};
  const auto deadline = Clock::now() + timeout;
  // stdout closes when the process exits; reading it also keeps the pipe from filling up.
  while (stdout_fd_ >= 0 && Clock::now() < deadline) read_stdout_until(deadline);
  const ExitStatus status = reap_child(pid_, deadline);
  pid_ = -1;
  // Whatever was still in the pipe (the last lines) once the process is gone.
  const auto drain_deadline = Clock::now() + Millis(200);
  while ((stdout_fd_ >= 0 || stderr_fd_ >= 0) && Clock::now() < drain_deadline) {
    read_outputs_until(drain_deadline);
  }
  return status;
}

ExitStatus TestServer::stop(int sig, Millis timeout) {
  if (!send_signal(sig)) return ExitStatus{};
  return wait_exit(timeout);
}

// ---------------------------------------------------------------------------------------------
// Responses

std::optional<std::string> Response::header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (equals_ignore_case(n, name)) return v;
  }
  return std::nullopt;
}

bool Response::connection_close() const {
  const std::optional<std::string> v = header("Connection");
  return v && equals_ignore_case(*v, "close");
}

bool Response::json_error_body() const {
  const std::optional<std::string> type = header("Content-Type");
  const size_t last = body.find_last_not_of('\n');
  return type && type->rfind("application/json", 0) == 0 && body.rfind("{\"error\":\"", 0) == 0 &&
         body.find("\",\"message\":\"") != std::string::npos && last != std::string::npos &&
         body[last] == '}';
}

std::string_view to_string(ReadEnd end) {
  switch (end) {
    case ReadEnd::kOk: return "ok";
    case ReadEnd::kEof: return "eof";
    case ReadEnd::kReset: return "reset";
    case ReadEnd::kTimeout: return "timeout";
    case ReadEnd::kError: return "error";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// RawClient

RawClient::~RawClient() { close(); }

RawClient::RawClient(RawClient&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      buffer_(std::move(other.buffer_)),
      last_end_(other.last_end_) {}

RawClient& RawClient::operator=(RawClient&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    buffer_ = std::move(other.buffer_);
    last_end_ = other.last_end_;
  }
  return *this;
}

void RawClient::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  buffer_.clear();
}

bool RawClient::connect(uint16_t port, std::string* error, Millis timeout) {
  close();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    if (error != nullptr) *error = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // SO_SNDTIMEO also bounds connect(); SO_RCVTIMEO guards recv() behind poll().
  auto set_timeout = [fd](int opt, Millis t) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    (void)::setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv));
  };
  set_timeout(SO_SNDTIMEO, timeout);
  set_timeout(SO_RCVTIMEO, kSocketTimeoutSafetyNet);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    if (error != nullptr) *error = std::string("connect: ") + std::strerror(errno);
    ::close(fd);
    return false;
  }
  set_timeout(SO_SNDTIMEO, kSocketTimeoutSafetyNet);
  fd_ = fd;
  last_end_ = ReadEnd::kOk;
  return true;
}

bool RawClient::send(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool RawClient::send_bytewise(std::string_view bytes) {
  for (char c : bytes) {
    if (!send(std::string_view(&c, 1))) return false;
  }
  return true;
}

void RawClient::shutdown_write() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void RawClient::reset() {
  if (fd_ >= 0) {
    const linger abort_on_close{1, 0};
    (void)::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  }
  close();
}

ReadEnd RawClient::fill(Clock::time_point deadline) {
  if (fd_ < 0) return ReadEnd::kError;
  pollfd p{fd_, POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, remaining_ms(deadline));
  } while (n < 0 && errno == EINTR);
  if (n == 0) return ReadEnd::kTimeout;
  if (n < 0) return ReadEnd::kError;
  char buf[16384];
  ssize_t got;
  do {
    got = ::recv(fd_, buf, sizeof(buf), 0);
  } while (got < 0 && errno == EINTR);
  if (got > 0) {
    buffer_.append(buf, static_cast<size_t>(got));
    return ReadEnd::kOk;
  }
  if (got == 0) return ReadEnd::kEof;
  if (errno == ECONNRESET) return ReadEnd::kReset;
  if (errno == EAGAIN || errno == EWOULDBLOCK) return ReadEnd::kTimeout;
  return ReadEnd::kError;
}

std::optional<Response> RawClient::read_response(Millis timeout, bool head) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const size_t head_end = buffer_.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      Response r;
      std::string_view text = std::string_view(buffer_).substr(0, head_end + 2);
      size_t eol = text.find("\r\n");
      const std::string_view status_line = text.substr(0, eol);
      text.remove_prefix(eol + 2);
      // "HTTP/1.x NNN Reason"
      if (status_line.size() < 12 || status_line.rfind("HTTP/1.", 0) != 0 ||
          status_line[8] != ' ') {
        last_end_ = ReadEnd::kError;
        return std::nullopt;
      }
      const auto [end, ec] =
          std::from_chars(status_line.data() + 9, status_line.data() + 12, r.status);
      if (ec != std::errc() || end != status_line.data() + 12) {
        last_end_ = ReadEnd::kError;
        return std::nullopt;
      }
      r.reason = std::string(trim(status_line.substr(12)));
      while (!text.empty()) {
        eol = text.find("\r\n");
        const std::string_view line = text.substr(0, eol);
        text.remove_prefix(eol + 2);
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
          last_end_ = ReadEnd::kError;
          return std::nullopt;
        }
        r.headers.emplace_back(std::string(line.substr(0, colon)),
                               std::string(trim(line.substr(colon + 1))));
      }
      const size_t body_start = head_end + 4;
      std::optional<size_t> length;
      if (head || r.status < 200 || r.status == 204 || r.status == 304) {
        length = 0;
      } else if (const std::optional<std::string> cl = r.header("Content-Length")) {
        size_t n = 0;
        const auto [e, c] = std::from_chars(cl->data(), cl->data() + cl->size(), n);
        if (c != std::errc() || e != cl->data() + cl->size()) {
          last_end_ = ReadEnd::kError;
          return std::nullopt;
        }
        length = n;
      }
      if (length && buffer_.size() - body_start >= *length) {
        r.body = buffer_.substr(body_start, *length);
        r.raw = buffer_.substr(0, body_start + *length);
        buffer_.erase(0, body_start + *length);
        last_end_ = ReadEnd::kOk;
        return r;
      }
      if (!length) {
        // No framing: the body runs to the end of the connection.
        const ReadEnd end_of_read = fill(deadline);
        if (end_of_read == ReadEnd::kEof) {
          r.body = buffer_.substr(body_start);
          r.raw = std::move(buffer_);
          buffer_.clear();
          last_end_ = ReadEnd::kOk;
          return r;
        }
        if (end_of_read != ReadEnd::kOk) {
          last_end_ = end_of_read;
          return std::nullopt;
        }
        continue;
      }
    } else if (buffer_.size() > kResponseHeadMax) {
      last_end_ = ReadEnd::kError;
      return std::nullopt;
    }
    const ReadEnd end = fill(deadline);
    if (end != ReadEnd::kOk) {
      last_end_ = end;
      return std::nullopt;
    }
  }
}

std::vector<Response> RawClient::read_responses(size_t n, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  std::vector<Response> out;
  while (out.size() < n) {
    std::optional<Response> r = read_response(Millis(remaining_ms(deadline)), /*head=*/false);
    if (!r) break;
    out.push_back(std::move(*r));
  }
  return out;
}

std::string RawClient::read_until_close(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  ReadEnd end;
  do {
    end = fill(deadline);
  } while (end == ReadEnd::kOk);
  last_end_ = end;
  std::string out = std::move(buffer_);
  buffer_.clear();
  return out;
}

bool RawClient::readable(Millis timeout) {
  if (!buffer_.empty()) return true;
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) > 0;
}

std::optional<Response> round_trip(uint16_t port, std::string_view request, Millis timeout) {
  RawClient client;
  if (!client.connect(port) || !client.send(request)) return std::nullopt;
  return client.read_response(timeout, request.rfind("HEAD ", 0) == 0);
}

std::string http_request(std::string_view method, std::string_view target,
                         const std::vector<std::string>& headers, std::string_view body) {
  // An IP literal: the admin port refuses a name it was not told ([admin] hosts) with 421.
  std::string out =
      std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const std::string& h : headers) out += h + "\r\n";
  if (!body.empty() || method == "POST" || method == "PATCH" || method == "PUT") {
    out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  out += "\r\n";
  out += body;
  return out;
}

std::string show(const std::optional<Response>& r) {
  return r ? "response:\n" + r->raw : std::string("no response");
}

std::vector<RawClient> answered_connections(uint16_t port, size_t n) {
  std::vector<RawClient> clients;
  for (size_t i = 0; i < n; ++i) {
    RawClient client;
    if (!client.connect(port) || !client.send(http_request("GET", "/healthz"))) continue;
    const std::optional<Response> health = client.read_response();
    if (health && health->status == 200) clients.push_back(std::move(client));
  }
  return clients;
}

int worker_in_line(const std::string& output, std::string_view needle) {
  const size_t at = output.find(needle);
  if (at == std::string::npos) return -1;
  const size_t line = output.rfind('\n', at);
  const size_t start = line == std::string::npos ? 0 : line + 1;
  constexpr std::string_view kPrefix = "keygate: worker ";
  if (output.compare(start, kPrefix.size(), kPrefix) != 0) return -1;
  return std::atoi(output.c_str() + start + kPrefix.size());
}

// ---------------------------------------------------------------------------------------------
// Test data

ServerOptions admin_server_options(const std::string& admin_key) {
  ServerOptions options;
  options.workers = 2;
  options.extra_config = std::string(kOrdersAndBillingApis);
  options.env = {{"KEYGATE_BOOTSTRAP_ADMIN_KEY", admin_key}};
  options.capture_stderr = true;
  return options;
}

int64_t stats_counter(std::string_view body, std::string_view group, std::string_view name) {
  const std::string open = "\"" + std::string(group) + "\":{";
  const size_t at = body.find(open);
  if (at == std::string_view::npos) return -1;
  const size_t from = at + open.size();
  const std::string_view members = body.substr(from, body.find('}', from) - from);
  const size_t n = members.find("\"" + std::string(name) + "\":");
  if (n == std::string_view::npos) return -1;
  return std::stoll(std::string(members.substr(n + name.size() + 3)));
}

int64_t number_member(std::string_view json, std::string_view name) {
  const std::string needle = "\"" + std::string(name) + "\":";
  const size_t at = json.find(needle);
  if (at == std::string_view::npos) return -1;
  int64_t v = -1;
  std::from_chars(json.data() + at + needle.size(), json.data() + json.size(), v);
  return v;
}

std::string byte_pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

std::string hex_sha256(std::string_view data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : digest_key(data)) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

std::optional<std::string> dechunk(std::string_view in) {
  std::string out;
  for (;;) {
    const size_t eol = in.find("\r\n");
    if (eol == std::string_view::npos) return std::nullopt;
    size_t n = 0;
    auto [p, ec] = std::from_chars(in.data(), in.data() + eol, n, 16);
    if (ec != std::errc() || p != in.data() + eol) return std::nullopt;
    in.remove_prefix(eol + 2);
    if (n == 0) return in == "\r\n" ? std::optional<std::string>(out) : std::nullopt;
    if (in.size() < n + 2 || in.substr(n, 2) != "\r\n") return std::nullopt;
    out.append(in.substr(0, n));
    in.remove_prefix(n + 2);
  }
}

std::string random_hex(size_t chars) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < chars; ++i) out += kDigits[rng() % 16];
  return out;
}

std::string string_member(std::string_view json, std::string_view name) {
  const std::string needle = "\"" + std::string(name) + "\":\"";
  const size_t at = json.find(needle);
  if (at == std::string_view::npos) return "";
  const size_t start = at + needle.size();
  return std::string(json.substr(start, json.find('"', start) - start));
}

size_t count_of(std::string_view haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string_view::npos;
       at = haystack.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

std::pair<int, uint16_t> blackhole_listener(std::vector<RawClient>* fillers) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) return {-1, 0};
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(lfd, 0) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    ::close(lfd);
    return {-1, 0};
  }
  const uint16_t port = ntohs(sa.sin_port);
  fillers->resize(3);
  for (RawClient& f : *fillers) (void)f.connect(port, nullptr, Millis(300));
  return {lfd, port};
}

}  // namespace keygate::integration
