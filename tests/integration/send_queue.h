// Helpers for slow-reader tests ([limits] send_buffer_bytes, send_rate_min_bytes_per_s): a
// client socket whose receive window stays small, and what keygate's side of its connection
// holds unsent, as /proc/net/tcp says. Header-only; Linux, IPv4 loopback.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

namespace keygate::integration {

// A client socket with a receive buffer of `rcvbuf` bytes (set before connect, so the window it
// offers stays that small) that has sent `request` to 127.0.0.1:`port`; -1 (errno set) on
// failure. The caller closes it; its reads should not block (MSG_DONTWAIT): slow-reader tests
// pace them.
inline int connect_with_receive_buffer(uint16_t port, int rcvbuf, std::string_view request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(request.size())) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

// The tx_queue (bytes written and not yet acknowledged) of the connection from local port
// `server_port` to remote port `client_port` in /proc/net/tcp; nullopt when there is none.
inline std::optional<uint64_t> send_queue(uint16_t server_port, uint16_t client_port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // the column names
  char local[8];
  char remote[8];
  std::snprintf(local, sizeof(local), ":%04X", server_port);
  std::snprintf(remote, sizeof(remote), ":%04X", client_port);
  while (std::getline(in, line)) {
    // "  sl  local_address rem_address   st tx_queue:rx_queue ..."
    std::istringstream fields(line);
    std::string sl, local_address, rem_address, st, queues;
    fields >> sl >> local_address >> rem_address >> st >> queues;
    if (local_address.ends_with(local) && rem_address.ends_with(remote)) {
      uint64_t tx = 0;
      const std::string_view hex = std::string_view(queues).substr(0, queues.find(':'));
      std::from_chars(hex.data(), hex.data() + hex.size(), tx, 16);
      return tx;
    }
  }
  return std::nullopt;
}

// The server's send queue on the connection of client socket `client_fd` to `server_port`,
// once it has stopped changing (a client that does not read: the server's send buffer filled
// up), looked at every 200 ms for at most 5 s; nullopt when /proc/net/tcp has no such
// connection.
inline std::optional<uint64_t> settled_send_queue(uint16_t server_port, int client_fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(client_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return std::nullopt;
  }
  const uint16_t client_port = ntohs(addr.sin_port);
  std::optional<uint64_t> queued;
  std::optional<uint64_t> before;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    before = queued;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    queued = send_queue(server_port, client_port);
  } while ((!queued || queued != before) && std::chrono::steady_clock::now() < deadline);
  return queued;
}

}  // namespace keygate::integration
