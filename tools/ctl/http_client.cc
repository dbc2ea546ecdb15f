#include "tools/ctl/http_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

namespace keygate::ctl {

namespace {

constexpr std::string_view kScheme = "http://";
// Chunk-size lines and trailer lines are short; a longer one is garbage, not a slow response.
constexpr size_t kLineBytesMax = 8 * 1024;
// Hex digits of a chunk size: 15 keep the value below 2^60, far above body_bytes_max.
constexpr size_t kChunkSizeDigitsMax = 15;
// Interim (1xx) responses skipped before the final one; a server sending more is broken.
constexpr int kInterimResponsesMax = 8;

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c; }

bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool parse_decimal(std::string_view s, size_t digits_max, uint64_t* out) {
  if (s.empty() || s.size() > digits_max) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

std::string errno_text(int err) { return std::strerror(err); }

// An owned socket, closed on every path out.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Waits for `events` on `fd` for up to `timeout_ms`. 1: ready, 0: timed out, -1: poll failed.
int wait_for(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int n = ::poll(&p, 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -1 : (n == 0 ? 0 : 1);
  }
}

int64_t monotonic_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

// The end of one exchange, ClientLimits::exchange_timeout_ms after its start: every wait is cut
// to what is left of it, so a server that sends a byte now and then cannot hold the exchange
// open, however short each wait.
class Deadline {
 public:
  explicit Deadline(int timeout_ms)
      : timeout_ms_(timeout_ms), end_ms_(monotonic_ms() + timeout_ms) {}

  // `wait_ms`, or what is left before the deadline when that is less (0 once it has passed).
  int clamp(int wait_ms) const {
    const int64_t left = end_ms_ - monotonic_ms();
    return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(wait_ms, left));
  }
  bool passed() const { return monotonic_ms() >= end_ms_; }
  // The reason given when a wait ended at the deadline.
  std::string reason() const {
    return "no complete response within " + std::to_string(timeout_ms_ / 1000) + " s";
  }

 private:
  int timeout_ms_;
  int64_t end_ms_;
};

// Incremental reads from a non-blocking socket into one buffer that the parser consumes from.
class Reader {
 public:
  Reader(int fd, const ClientLimits& limits, const Deadline& deadline)
      : fd_(fd), limits_(limits), deadline_(deadline) {}

  // Appends at least one more byte. False on EOF (eof() then true), timeout or error, with a
  // reason in `*error` unless it was a clean EOF.
  bool fill(std::string* error) {
    char chunk[16 * 1024];
    for (;;) {
      const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *error = "receiving the response: " + errno_text(errno);
        return false;
      }
      const int ready = wait_for(fd_, POLLIN, deadline_.clamp(limits_.io_timeout_ms));
      if (ready == 0) {
        *error = deadline_.passed() ? deadline_.reason()
                                    : "timed out after " +
                                          std::to_string(limits_.io_timeout_ms / 1000) +
                                          " s waiting for the response";
        return false;
      }
      if (ready < 0) {
        *error = "waiting for the response: " + errno_text(errno);
        return false;
      }
    }
  }

  // Makes sure `n` unconsumed bytes are buffered.
  bool need(size_t n, std::string* error) {
    while (available() < n) {
      if (!fill(error)) {
        if (eof_) *error = "the server closed the connection in the middle of the response";
        return false;
      }
    }
    return true;
  }

  // The next CRLF-terminated line (without the CRLF), consumed. Lines over `bytes_max` fail.
  bool line(size_t bytes_max, std::string_view what, std::string* out, std::string* error) {
    for (;;) {
      const size_t end = buffer_.find("\r\n", pos_);
      if (end != std::string::npos) {
        if (end - pos_ > bytes_max) break;
        out->assign(buffer_, pos_, end - pos_);
        pos_ = end + 2;
        return true;
      }
      if (available() > bytes_max) break;
      if (!fill(error)) {
        if (eof_) *error = "the server closed the connection in the middle of the response";
        return false;
      }
    }
    *error = "malformed response: " + std::string(what) + " too long";
    return false;
  }

  size_t available() const { return buffer_.size() - pos_; }
  std::string_view peek(size_t n) const { return std::string_view(buffer_).substr(pos_, n); }
  void consume(size_t n) {
    pos_ += n;
    // Keep the buffer from growing with the whole response: drop what was consumed once it
    // dominates.
    if (pos_ > 64 * 1024 && pos_ * 2 > buffer_.size()) {
      buffer_.erase(0, pos_);
      pos_ = 0;
    }
  }
  bool eof() const { return eof_; }

 private:
  int fd_;
  const ClientLimits& limits_;
  const Deadline& deadline_;
  std::string buffer_;
  size_t pos_ = 0;
  bool eof_ = false;
};

bool resolve(const Endpoint& endpoint, sockaddr_storage* addr, socklen_t* len) {
  std::memset(addr, 0, sizeof(*addr));
  const std::string host = endpoint.host == "localhost" ? "127.0.0.1" : endpoint.host;
  auto* v4 = reinterpret_cast<sockaddr_in*>(addr);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(endpoint.port);
    *len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(addr);
  if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(endpoint.port);
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

bool connect_to(const Endpoint& endpoint, const ClientLimits& limits, const Deadline& deadline,
                int* fd_out,
                std::string* error) {
  sockaddr_storage addr;
  socklen_t len = 0;
  if (!resolve(endpoint, &addr, &len)) {
    *error = "not a numeric address";
    return false;
  }
  const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = "socket: " + errno_text(errno);
    return false;
  }
  *fd_out = fd;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0) return true;
  if (errno != EINPROGRESS && errno != EINTR) {
    *error = errno_text(errno);
    return false;
  }
  const int ready = wait_for(fd, POLLOUT, deadline.clamp(limits.connect_timeout_ms));
  if (ready == 0) {
    *error = deadline.passed() ? deadline.reason()
                               : "timed out after " +
                                     std::to_string(limits.connect_timeout_ms / 1000) +
                                     " s connecting";
    return false;
  }
  int so_error = 0;
  socklen_t so_len = sizeof(so_error);
  if (ready < 0 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &so_len) != 0) {
    *error = errno_text(errno);
    return false;
  }
  if (so_error != 0) {
    *error = errno_text(so_error);
    return false;
  }
  const int one = 1;
  // Ignoring the result is fine: Nagle only costs latency on the request's second write.
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return true;
}

bool send_all(int fd, std::string_view bytes, const ClientLimits& limits, const Deadline& deadline,
              std::string* error) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const int ready = wait_for(fd, POLLOUT, deadline.clamp(limits.io_timeout_ms));
      if (ready == 0) {
        *error = deadline.passed() ? deadline.reason()
                                   : "timed out after " +
                                         std::to_string(limits.io_timeout_ms / 1000) +
                                         " s sending the request";
        return false;
      }
      if (ready > 0) continue;
    }
    *error = "sending the request: " + errno_text(errno);
    return false;
  }
  return true;
}

// Status line and header fields, up to and including the empty line.
bool read_head(Reader& reader, const ClientLimits& limits, HttpResponse* out, std::string* error) {
  std::string line;
  if (!reader.line(limits.head_bytes_max, "status line", &line, error)) {
    if (reader.eof() && reader.available() == 0) {
      *error = "the server closed the connection without a response";
    }
    return false;
  }
  // "HTTP/1.x SSS reason"
  const std::string_view status_line = line;
  uint64_t status = 0;
  if (status_line.size() < 12 || !status_line.starts_with("HTTP/1.") || status_line[8] != ' ' ||
      !parse_decimal(status_line.substr(9, 3), 3, &status) ||
      (status_line.size() > 12 && status_line[12] != ' ') || status < 100) {
    *error = "malformed response: not an HTTP/1.x status line (is this an HTTP server?)";
    return false;
  }
  out->status = static_cast<int>(status);
  out->reason = status_line.size() > 13 ? std::string(status_line.substr(13)) : std::string();
  out->headers.clear();
  size_t head_bytes = line.size();
  for (;;) {
    if (!reader.line(limits.head_bytes_max, "header section", &line, error)) return false;
    head_bytes += line.size() + 2;
    if (head_bytes > limits.head_bytes_max) {
      *error = "malformed response: header section too long";
      return false;
    }
    if (line.empty()) return true;
    const size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0 || line[0] == ' ' || line[0] == '\t') {
      *error = "malformed response: bad header line";
      return false;
    }
    const std::string_view view = line;
    out->headers.push_back(
        {std::string(view.substr(0, colon)), std::string(trim(view.substr(colon + 1)))});
  }
}

bool read_chunked(Reader& reader, const ClientLimits& limits, std::string* body,
                  std::string* error) {
  std::string line;
  for (;;) {
    if (!reader.line(kLineBytesMax, "chunk size line", &line, error)) return false;
    std::string_view size_text = line;
    size_text = trim(size_text.substr(0, size_text.find(';')));
    if (size_text.empty() || size_text.size() > kChunkSizeDigitsMax) {
      *error = "malformed response: bad chunk size";
      return false;
    }
    uint64_t size = 0;
    for (char c : size_text) {
      int digit = -1;
      if (c >= '0' && c <= '9') digit = c - '0';
      if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
      if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
      if (digit < 0) {
        *error = "malformed response: bad chunk size";
        return false;
      }
      size = size * 16 + static_cast<uint64_t>(digit);
    }
    if (size == 0) break;
    if (size > limits.body_bytes_max - body->size()) {
      *error = "response body too large";
      return false;
    }
    const auto n = static_cast<size_t>(size);
    if (!reader.need(n + 2, error)) return false;
    body->append(reader.peek(n));
    if (reader.peek(n + 2).substr(n) != "\r\n") {
      *error = "malformed response: chunk not followed by CRLF";
      return false;
    }
    reader.consume(n + 2);
  }
  // Trailer fields (ignored) up to the empty line; bounded like the head.
  size_t trailer_bytes = 0;
  for (;;) {
    if (!reader.line(kLineBytesMax, "trailer", &line, error)) return false;
    if (line.empty()) return true;
    trailer_bytes += line.size() + 2;
    if (trailer_bytes > limits.head_bytes_max) {
      *error = "malformed response: trailer section too long";
      return false;
    }
  }
}

bool read_body(Reader& reader, std::string_view method, const ClientLimits& limits,
               HttpResponse* out, std::string* error) {
  out->body.clear();
  if (method == "HEAD" || out->status == 204 || out->status == 304) return true;
  std::optional<uint64_t> content_length;
  bool chunked = false;
  for (const HttpHeader& h : out->headers) {
    if (equals_ignore_case(h.name, "Transfer-Encoding")) {
      // Only the last coding frames the message; keygate sends nothing but "chunked".
      std::string_view codings = h.value;
      const size_t comma = codings.rfind(',');
      if (comma != std::string_view::npos) codings = codings.substr(comma + 1);
      if (!equals_ignore_case(trim(codings), "chunked")) {
        *error = "malformed response: unsupported transfer coding";
        return false;
      }
      chunked = true;
    } else if (equals_ignore_case(h.name, "Content-Length")) {
      uint64_t n = 0;
      if (!parse_decimal(h.value, 19, &n) || (content_length && *content_length != n)) {
        *error = "malformed response: bad Content-Length";
        return false;
      }
      content_length = n;
    }
  }
  if (chunked) return read_chunked(reader, limits, &out->body, error);
  if (content_length) {
    if (*content_length > limits.body_bytes_max) {
      *error = "response body too large";
      return false;
    }
    const auto n = static_cast<size_t>(*content_length);
    if (!reader.need(n, error)) return false;
    out->body.assign(reader.peek(n));
    reader.consume(n);
    return true;
  }
  // No framing: the body runs until the server closes.
  for (;;) {
    out->body.append(reader.peek(reader.available()));
    reader.consume(reader.available());
    if (out->body.size() > limits.body_bytes_max) {
      *error = "response body too large";
      return false;
    }
    if (!reader.fill(error)) return reader.eof();
  }
}

}  // namespace

std::string Endpoint::authority() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool parse_url(std::string_view url, Endpoint* out, std::string* error) {
  constexpr std::string_view kExpected =
      "expected http://HOST:PORT with a numeric IP address or localhost as HOST";
  if (url.size() < kScheme.size() || !equals_ignore_case(url.substr(0, kScheme.size()), kScheme)) {
    *error = url.find("://") != std::string_view::npos
                 ? "only http:// URLs are supported (the admin listener speaks plain HTTP)"
                 : std::string(kExpected);
    return false;
  }
  std::string_view rest = url.substr(kScheme.size());
  if (rest.ends_with('/')) rest.remove_suffix(1);
  if (rest.find_first_of("/?#@") != std::string_view::npos) {
    *error = "the URL may not have a path, query, fragment or user info; " + std::string(kExpected);
    return false;
  }
  std::string_view host;
  std::string_view port_text;
  bool has_port = false;
  if (rest.starts_with('[')) {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      *error = kExpected;
      return false;
    }
    host = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') {
        *error = kExpected;
        return false;
      }
      port_text = rest.substr(1);
      has_port = true;
    }
  } else {
    const size_t colon = rest.find(':');
    host = rest.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = rest.substr(colon + 1);
      has_port = true;
    }
  }
  Endpoint e;
  e.host = std::string(host);
  if (!equals_ignore_case(host, "localhost")) {
    sockaddr_storage addr;
    socklen_t len = 0;
    e.port = 1;
    if (host.empty() || !resolve(e, &addr, &len)) {
      *error = "the host must be a numeric IP address or localhost (no DNS lookups)";
      return false;
    }
  } else {
    e.host = "localhost";
  }
  e.port = 80;
  if (has_port) {
    uint64_t port = 0;
    if (!parse_decimal(port_text, 5, &port) || port == 0 || port > 65535) {
      *error = "the port must be a number from 1 to 65535";
      return false;
    }
    e.port = static_cast<uint16_t>(port);
  }
  *out = std::move(e);
  return true;
}

const std::string* HttpResponse::header(std::string_view name) const {
  for (const HttpHeader& h : headers) {
    if (equals_ignore_case(h.name, name)) return &h.value;
  }
  return nullptr;
}

bool http_exchange(const Endpoint& endpoint, const HttpRequest& request, const ClientLimits& limits,
                   HttpResponse* out, std::string* error) {
  const Deadline deadline(limits.exchange_timeout_ms);
  int fd = -1;
  const bool connected = connect_to(endpoint, limits, deadline, &fd, error);
  const Socket socket(fd);
  if (!connected) {
    *error = "cannot connect to " + endpoint.authority() + ": " + *error;
    return false;
  }

  std::string head;
  head.reserve(256 + request.target.size());
  head.append(request.method).append(" ").append(request.target).append(" HTTP/1.1\r\n");
  head.append("Host: ").append(endpoint.authority()).append("\r\n");
  for (const HttpHeader& h : request.headers) {
    head.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  if (request.json_body) {
    head.append("Content-Type: application/json\r\nContent-Length: ")
        .append(std::to_string(request.body.size()))
        .append("\r\n");
  }
  head.append("Connection: close\r\n\r\n");
  // Small requests go out in one write; a large body (import) follows the head separately
  // rather than being copied.
  bool sent = false;
  if (request.body.size() <= 64 * 1024) {
    head.append(request.body);
    sent = send_all(socket.fd(), head, limits, deadline, error);
  } else {
    sent = send_all(socket.fd(), head, limits, deadline, error) &&
           send_all(socket.fd(), request.body, limits, deadline, error);
  }
  // A server may answer early and close (413 for a body over its limit): its response, if one
  // arrived, says more than the failed send does.
  // Only what is already there counts: after a send timeout, waiting again would double it.
  const std::string send_error = sent ? std::string() : *error;
  if (!sent && wait_for(socket.fd(), POLLIN, 0) <= 0) return false;

  Reader reader(socket.fd(), limits, deadline);
  for (int interim = 0;; ++interim) {
    if (!read_head(reader, limits, out, error)) {
      if (!sent) *error = send_error;
      return false;
    }
    if (out->status >= 200) break;
    if (interim == kInterimResponsesMax) {
      *error = "malformed response: too many interim responses";
      return false;
    }
  }
  return read_body(reader, request.method, limits, out, error);
}

}  // namespace keygate::ctl
