// Integration tests of systemd socket activation (sd_listen_fds(3)): the test plays the
// service manager, creating the listening socket itself and starting the real keygate with it
// as descriptor 3 (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES). The socket is the test's and
// outlives each keygate, as systemd's does: a restart on it refuses no connection.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/send_queue.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

// A socket on 127.0.0.1:0 of `type`; `listen_too`: listening, with room for every connection
// a test makes while no keygate accepts. Closed on destruction.
class OwnSocket {
 public:
  explicit OwnSocket(int type = SOCK_STREAM, bool listen_too = true) {
    fd_ = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        (listen_too && ::listen(fd_, 512) != 0) ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~OwnSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  OwnSocket(const OwnSocket&) = delete;
  OwnSocket& operator=(const OwnSocket&) = delete;

  int fd() const { return fd_; }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

// keygate with `socket` passed (both its listeners configured with port 0: an unnamed socket
// serves the data port).
ServerOptions activated(const OwnSocket& socket, const std::string& data_dir = {}) {
  ServerOptions options;
  options.inherited_socket = socket.fd();
  options.data_dir = data_dir;
  options.capture_stderr = true;
  return options;
}

TEST(SocketActivation, ServesTheDataPortThroughTheInheritedSocket) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  TestServer server(activated(socket));
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  EXPECT_EQ(server.data_port(), socket.port()) << server.output();
  EXPECT_NE(server.output().find("data=127.0.0.1:" + std::to_string(socket.port()) +
                                 " (from systemd) admin=127.0.0.1:"),
            std::string::npos)
      << server.output();
  const auto health = round_trip(socket.port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200) << show(health);
  // The admin port, passed no socket, is bound by keygate as without socket activation.
  EXPECT_NE(server.admin_port(), 0);
  EXPECT_EQ(server.output().find("(from systemd) workers="), std::string::npos);
  const auto admin = round_trip(server.admin_port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(admin.has_value());
  EXPECT_EQ(admin->status, 200) << show(admin);
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

TEST(SocketActivation, ASocketNamedAdminServesTheAdminPort) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  ServerOptions options = activated(socket);
  options.inherited_socket_name = "admin";
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  EXPECT_EQ(server.admin_port(), socket.port()) << server.output();
  EXPECT_NE(server.data_port(), socket.port());
  EXPECT_NE(server.output().find("admin=127.0.0.1:" + std::to_string(socket.port()) +
                                 " (from systemd) workers="),
            std::string::npos)
      << server.output();
  const auto health = round_trip(socket.port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200) << show(health);
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

// A request sent on a fresh connection to the socket; the client is kept to read the answer.
RawClient send_request(uint16_t port, std::string* failure) {
  RawClient client;
  std::string error;
  if (!client.connect(port, &error)) {
    *failure += "connect: " + error + "; ";
  } else if (!client.send(http_request("GET", "/healthz"))) {
    *failure += "send failed; ";
  }
  return client;
}

// The restart the feature is for: connections made while keygate #1 drains and while no
// keygate runs at all wait in the socket's backlog and are all answered by keygate #2. With
// the listening socket shut down at the drain (as keygate does with its own sockets), the
// queued ones would be reset and the later ones refused.
TEST(SocketActivation, ARestartOnTheSameSocketRefusesNoConnection) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  TempDir data;
  ServerOptions options = activated(socket, data.path() + "/data");
  // Long enough for the connections below to come while #1 still drains (a request it holds
  // keeps the drain going until the deadline), short enough for a quick test.
  options.limits = {{"drain_timeout_ms", 1500}};
  std::vector<RawClient> clients;
  std::string failures;
  {
    TestServer first(options);
    std::string error;
    ASSERT_TRUE(first.start(&error)) << error;
    ASSERT_EQ(first.data_port(), socket.port());
    const auto before = round_trip(socket.port(), http_request("GET", "/healthz"));
    ASSERT_TRUE(before.has_value());
    EXPECT_EQ(before->status, 200);
    // Half a request: the drain waits for it (up to drain_timeout_ms).
    RawClient slow;
    ASSERT_TRUE(slow.connect(socket.port()));
    ASSERT_TRUE(slow.send("GET /healthz HTTP/1.1\r\nHost: it\r\n"));
    // Give #1 the connection before the stop, so it is in flight.
    std::this_thread::sleep_for(Millis(100));
    ASSERT_TRUE(first.send_signal(SIGTERM));
    // At once (these race the accept's cancellation: some may still be taken by #1)...
    for (int i = 0; i < 20; ++i) clients.push_back(send_request(socket.port(), &failures));
    ASSERT_TRUE(first.wait_for_output("draining", Millis(5000))) << first.output();
    // ...and while #1 drains, its accepts cancelled.
    for (int i = 0; i < 20; ++i) {
      clients.push_back(send_request(socket.port(), &failures));
      std::this_thread::sleep_for(Millis(10));
    }
    const ExitStatus status = first.wait_exit(Millis(10000));
    EXPECT_TRUE(status.clean()) << status.describe() << "\n" << first.error_output();
  }
  // No keygate at all: the kernel still completes the handshakes into the backlog.
  for (int i = 0; i < 20; ++i) clients.push_back(send_request(socket.port(), &failures));
  EXPECT_EQ(failures, "");

  TestServer second(options);
  std::string error;
  ASSERT_TRUE(second.start(&error)) << error;
  ASSERT_EQ(second.data_port(), socket.port());
  int answered = 0;
  std::string wrong;
  for (size_t i = 0; i < clients.size(); ++i) {
    if (!clients[i].connected()) continue;
    const auto response = clients[i].read_response(Millis(20000));
    if (response.has_value() && response->status == 200) {
      ++answered;
    } else {
      wrong += "client " + std::to_string(i) + ": " +
               std::string(to_string(clients[i].last_end())) + " " + show(response) + "; ";
    }
  }
  EXPECT_EQ(answered, 60) << wrong;
  EXPECT_TRUE(second.stop(SIGTERM).clean());
}

// keygate with `socket` passed as descriptor 3 (LISTEN_PID its own), `names` as
// LISTEN_FDNAMES (empty: unset) and `fds` as LISTEN_FDS, on the given addresses; run to its
// end (these fail at start-up).
ProcessResult run_activated(int socket, const std::string& listen, const std::string& names,
                            const TempDir& dir, const std::string& fds = "1",
                            const std::string& admin_listen = "127.0.0.1:0") {
  std::vector<std::string> env = child_environment({}, {"LISTEN_PID", "LISTEN_FDS",
                                                         "LISTEN_FDNAMES"});
  env.push_back("LISTEN_FDS=" + fds);
  if (!names.empty()) env.push_back("LISTEN_FDNAMES=" + names);
  PassedSockets sockets;
  sockets.fds = {socket};
  return run_process(keygate_binary(),
                     {"--listen", listen, "--admin-listen", admin_listen, "--workers", "1",
                      "--data-dir", dir.path() + "/data"},
                     &env, Millis(10000), &sockets);
}

void expect_usage_error(const ProcessResult& result, const std::string& message,
                        const TempDir& dir) {
  EXPECT_TRUE(result.status.exited && result.status.code == 2)
      << result.status.describe() << "\n" << result.err;
  EXPECT_NE(result.err.find(message), std::string::npos) << result.err;
  EXPECT_EQ(result.out, "");
  // Refused before anything was opened: no data directory made.
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/data"));
}

// [limits] send_buffer_bytes reaches the connections accepted on a socket systemd passed (each
// gets its own SO_SNDBUF: the kernel holds no more than twice it for a client that does not
// read its 4,000 pipelined answers), while the socket itself, systemd's, is left as it was.
// A connection on the inherited socket that never sends a byte: the drain waits for its request
// as on keygate's own sockets, and as briefly (1 s at most, kDrainFreshWaitMaxMs), not for its
// header timeout or the drain deadline (10 s defaults both).
TEST(SocketActivation, ASilentConnectionHoldsTheStopOneSecondAtMost) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  ServerOptions options = activated(socket);
  options.workers = 1;
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  RawClient silent;
  ASSERT_TRUE(silent.connect(socket.port()));
  // Answered on a later connection: the backlog is taken in order, so `silent` was accepted.
  const auto after = round_trip(socket.port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(after.has_value());
  ASSERT_EQ(after->status, 200);

  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_TRUE(server.send_signal(SIGTERM));
  ASSERT_TRUE(server.wait_for_output("draining", Millis(3000))) << server.output();
  silent.read_until_close(Millis(400));
  EXPECT_EQ(silent.last_end(), ReadEnd::kTimeout) << "closed at once, as an idle connection";
  const ExitStatus status = server.wait_exit(Millis(5000));
  EXPECT_LT(std::chrono::steady_clock::now() - signalled, Millis(2500))
      << "a silent connection held the drain";
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << server.error_output();
  silent.read_until_close(Millis(1000));
  EXPECT_NE(silent.last_end(), ReadEnd::kTimeout) << "the silent connection was left open";
}

TEST(SocketActivation, ConnectionsOnTheInheritedSocketGetTheSendBufferTheSocketIsLeftAlone) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  int before = 0;
  socklen_t len = sizeof(before);
  ASSERT_EQ(::getsockopt(socket.fd(), SOL_SOCKET, SO_SNDBUF, &before, &len), 0);
  constexpr uint64_t kSendBuffer = 16384;
  ServerOptions options = activated(socket);
  options.limits = {{"send_buffer_bytes", kSendBuffer}};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  std::string checks;
  for (int i = 0; i < 4000; ++i) checks += http_request("GET", "/healthz");
  const int fd = connect_with_receive_buffer(socket.port(), 4096, checks);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const std::optional<uint64_t> queued = settled_send_queue(socket.port(), fd);
  ::close(fd);
  ASSERT_TRUE(queued.has_value());
  EXPECT_GT(*queued, 0u);
  EXPECT_LE(*queued, 2 * kSendBuffer);
  int after = 0;
  len = sizeof(after);
  ASSERT_EQ(::getsockopt(socket.fd(), SOL_SOCKET, SO_SNDBUF, &after, &len), 0);
  EXPECT_EQ(after, before);
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

TEST(SocketActivation, ASocketOnAnotherAddressIsAStartUpErrorExit2) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  // Ports no socket is on (nothing binds them: keygate stops before).
  const int base = socket.port() > 60000 ? socket.port() - 3 : socket.port();
  const std::string listen = "127.0.0.1:" + std::to_string(base + 1);
  const std::string admin_listen = "127.0.0.1:" + std::to_string(base + 2);
  TempDir dir;
  const std::string at = "bound to 127.0.0.1:" + std::to_string(socket.port());
  expect_usage_error(run_activated(socket.fd(), listen, "", dir, "1", admin_listen),
                     "keygate: LISTEN_FDS socket 3 " + at + " is neither listen " + listen +
                         " nor admin_listen " + admin_listen,
                     dir);
  expect_usage_error(run_activated(socket.fd(), listen, "data", dir),
                     "keygate: LISTEN_FDS socket 3 ('data') " + at + " is not listen " + listen,
                     dir);
}

TEST(SocketActivation, AnUnknownNameIsAStartUpErrorExit2) {
  OwnSocket socket;
  TempDir dir;
  expect_usage_error(run_activated(socket.fd(), "127.0.0.1:0", "metrics", dir),
                     "('metrics') bound to 127.0.0.1:" + std::to_string(socket.port()) +
                         " has an unknown name (FileDescriptorName= is data or admin)",
                     dir);
}

TEST(SocketActivation, AUdpOrNonListeningSocketIsAStartUpErrorExit2) {
  OwnSocket udp(SOCK_DGRAM, false);
  OwnSocket idle(SOCK_STREAM, false);
  ASSERT_NE(udp.port(), 0);
  ASSERT_NE(idle.port(), 0);
  TempDir dir;
  expect_usage_error(run_activated(udp.fd(), "127.0.0.1:0", "", dir),
                     "keygate: LISTEN_FDS socket 3 is not a TCP socket", dir);
  expect_usage_error(run_activated(idle.fd(), "127.0.0.1:0", "", dir),
                     "keygate: LISTEN_FDS socket 3 is not listening", dir);
}

TEST(SocketActivation, UnreadableVariablesAreAStartUpErrorExit2) {
  OwnSocket socket;
  TempDir dir;
  expect_usage_error(run_activated(socket.fd(), "127.0.0.1:0", "data", dir, "2x"),
                     "keygate: LISTEN_FDS '2x' is not a number of descriptors", dir);
  expect_usage_error(run_activated(socket.fd(), "127.0.0.1:0", "data", dir, "2"),
                     "LISTEN_FDNAMES 'data' names 1 sockets, LISTEN_FDS passes 2", dir);
  expect_usage_error(run_activated(socket.fd(), "127.0.0.1:0", "", dir, "3"),
                     "LISTEN_FDS=3: keygate takes at most 2 sockets", dir);
}

TEST(SocketActivation, ListenPidOfAnotherProcessIsIgnored) {
  OwnSocket socket;
  ASSERT_NE(socket.port(), 0);
  ServerOptions options = activated(socket);
  options.listen_pid_other = true;
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // keygate bound a port of its own, as without socket activation.
  EXPECT_NE(server.data_port(), socket.port());
  EXPECT_EQ(server.output().find("(from systemd)"), std::string::npos) << server.output();
  EXPECT_TRUE(server.wait_for_error_output(
      "keygate: LISTEN_FDS ignored: LISTEN_PID " + std::to_string(::getpid()) +
          " is another process (keygate is " + std::to_string(server.pid()) + ")",
      Millis(2000)))
      << server.error_output();
  const auto health = round_trip(server.data_port(), http_request("GET", "/healthz"));
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200);
  EXPECT_TRUE(server.stop(SIGTERM).clean());
}

}  // namespace
}  // namespace keygate::integration
