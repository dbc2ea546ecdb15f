// keygate-upstream: a small, fast HTTP/1.1 origin server for tests and benchmarks.
//
//   keygate-upstream --listen 127.0.0.1:PORT [--threads N]
//
// Prints exactly one line, "listening on 127.0.0.1:NNNN", once every thread listens (PORT 0
// picks an ephemeral port), and exits 0 on SIGTERM/SIGINT. Each thread owns one epoll, one
// SO_REUSEPORT listening socket and its connections; nothing is shared between threads but the
// connection counter. Requests are parsed with llhttp (strict mode), keep-alive and pipelining
// work, request bodies are stream-hashed (SHA-256) and never stored, and every response body is
// produced as the socket drains, so memory per connection stays bounded whatever the sizes.
//
// Paths (anything else gets the default JSON description of the request):
//   default          200 {"method","target","headers":[[n,v],..],"body_bytes","body_sha256",
//                    "connection","request","listen"} (connection: per-process id of this TCP
//                    connection, request: 1-based number of the request on it, listen: the
//                    address of the ready line, telling several upstreams apart)
//   /bytes/N         N bytes, byte i = 'a' + i % 26, Content-Length (?chunked=1: 16 KiB chunks)
//   /fixed/N         the same from a prebuilt buffer, written at once (benchmarks: /fixed/1024)
//   /echo            200 chunked, the request body echoed as it arrives
//   /status/NNN      that status (200..599), small body; none for 204, 304 and HEAD
//                    (204/304 ?length=N: with "Content-Length: N" all the same, which RFC 9110
//                    8.6 allows a 304 (the GET's length) and forbids a 204; &stray=1: and N
//                    pattern bytes after the response, as a broken server sends)
//   /delay/MS        the default JSON after MS milliseconds (a timer; the thread keeps serving)
//   /close, /reset   read the request, close without a response (/reset: RST via SO_LINGER 0)
//   /close-reused[/...]   on a connection's first request the default JSON; on any later one,
//                    close without a response (a server closing an idle keep-alive
//                    connection just as a request arrives on it)
//   /malformed/cl-te, /malformed/bad-chunk, /malformed/garbage   broken responses, then close
//   /malformed/gzip-chunked   "Transfer-Encoding: gzip, chunked" on a body that is only
//                    chunked (a coding keygate does not implement), then close
//   /malformed/chunked-twice   "Transfer-Encoding: chunked, chunked" on a body chunked once
//                    (chunked may be applied only once), then close
//   /headers-then-close   Content-Length: 100, 10 body bytes, close
// ?early-hints=1 on any path: a "103 Early Hints" (Link: </s.css>; rel=preload) first.
// HEAD gets the headers GET would get. A request that does not parse gets 400 and a close.
#include <arpa/inet.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Bounds (TigerBeetle style: every buffer has one).
constexpr size_t kReadBytes = 64 * 1024;              // one recv()
constexpr size_t kParseSliceBytes = 64 * 1024;        // input handed to llhttp at a time
constexpr size_t kInputBytesMax = 256 * 1024;         // unparsed input kept before reads stop
constexpr size_t kOutputHighWaterBytes = 256 * 1024;  // pending output before parsing stops
constexpr size_t kHeaderBytesMax = 256 * 1024;        // per request: method, target, headers
constexpr size_t kChunkBytes = 16 * 1024;             // /bytes?chunked=1 chunk size
constexpr size_t kFixedBytesMax = 4 * 1024 * 1024;    // /fixed/N from the prebuilt buffer
constexpr int kEventsMax = 256;
constexpr unsigned kThreadsMax = 64;
constexpr uint64_t kDelayMsMax = 600'000;

std::atomic<uint64_t> g_connections{0};
std::string g_listen;  // "ip:port", set before the threads start, read-only after

// The body pattern, long enough that any window of up to kFixedBytesMax bytes starting at any
// phase (0..25) is a plain slice of it.
const std::string& pattern() {
  static const std::string p = [] {
    std::string s(kFixedBytesMax + 26, '\0');
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('a' + i % 26);
    return s;
  }();
  return p;
}

std::string_view reason(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 413:
      return "Content Too Large";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (b < 0x20 || b >= 0x7f) {
      // Bytes above 0x7e are escaped one by one, so the output is ASCII JSON whatever arrived.
      out += "\\u00";
      out += kHex[b >> 4];
      out += kHex[b & 15];
    } else {
      out += c;
    }
  }
  out += '"';
}

void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  (void)ec;
  out.append(buf, end);
}

void append_hex(std::string& out, uint64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, 16);
  (void)ec;
  out.append(buf, end);
}

bool parse_uint(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

// The value of `name=N` in the query, when it is there and a number.
bool query_uint(std::string_view query, std::string_view name, uint64_t* out) {
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    if (pair.size() > name.size() && pair.starts_with(name) && pair[name.size()] == '=') {
      return parse_uint(pair.substr(name.size() + 1), out);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

bool query_has(std::string_view query, std::string_view param) {
  while (!query.empty()) {
    const size_t amp = query.find('&');
    if (query.substr(0, amp) == param) return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

// What the connection does once the current request's response has been queued.
enum class After : uint8_t {
  kContinue,  // parse the next request
  kClose,     // close once the output is flushed
  kReset,     // RST (SO_LINGER 0) once the output is flushed
};

// A response body produced as the socket drains.
enum class Stream : uint8_t { kNone, kPattern, kEcho };

struct Conn {
  int fd = -1;
  uint64_t id = 0;
  uint64_t requests = 0;  // requests started on this connection
  llhttp_t parser;

  std::string in;  // received, not yet parsed
  size_t in_off = 0;
  std::string out;  // to send
  size_t out_off = 0;
  uint32_t events = 0;  // current epoll interest

  // The request being parsed (or answered).
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  bool in_value = false;
  size_t header_bytes = 0;
  uint64_t body_bytes = 0;
  EVP_MD_CTX* sha = nullptr;
  bool sha_started = false;
  bool head = false;
  bool keep_alive = true;
  bool echo = false;  // the body is echoed (chunked) as it arrives

  // Response in progress.
  Stream stream = Stream::kNone;
  bool stream_chunked = false;
  uint64_t stream_total = 0;
  uint64_t stream_sent = 0;
  bool delayed = false;  // waiting for a /delay timer
  bool blocked = false;  // no further parsing until the response is complete
  After after = After::kContinue;
  bool eof = false;   // the client half-closed: finish what was received, then close
  bool dead = false;  // closed: the owner frees it after the current event

  ~Conn() {
    if (sha != nullptr) EVP_MD_CTX_free(sha);
  }
  size_t pending_out() const { return out.size() - out_off; }
};

struct Timer {
  Clock::time_point at;
  int fd;
  uint64_t conn_id;
  bool operator>(const Timer& o) const { return at > o.at; }
};

class Loop {
 public:
  Loop(int listen_fd, int stop_fd) : listen_fd_(listen_fd), stop_fd_(stop_fd) {
    llhttp_settings_init(&settings_);
    settings_.on_message_begin = &Loop::on_message_begin;
    settings_.on_url = &Loop::on_url;
    settings_.on_header_field = &Loop::on_header_field;
    settings_.on_header_value = &Loop::on_header_value;
    settings_.on_headers_complete = &Loop::on_headers_complete;
    settings_.on_body = &Loop::on_body;
    settings_.on_message_complete = &Loop::on_message_complete;
  }

  void run() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) die("epoll_create1");
    add(listen_fd_, EPOLLIN);
    add(stop_fd_, EPOLLIN);
    epoll_event events[kEventsMax];
    while (!stopping_) {
      const int n = ::epoll_wait(epfd_, events, kEventsMax, timeout_ms());
      if (n < 0 && errno != EINTR) die("epoll_wait");
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == stop_fd_) {
          stopping_ = true;
        } else if (fd == listen_fd_) {
          accept_all();
        } else {
          auto it = conns_.find(fd);
          if (it == conns_.end()) continue;
          Conn& c = *it->second;
          if ((events[i].events & (EPOLLERR | EPOLLHUP)) != 0 &&
              (events[i].events & EPOLLIN) == 0) {
            close_conn(c, false);
          } else {
            if ((events[i].events & EPOLLOUT) != 0) on_writable(c);
            if (!c.dead && (events[i].events & EPOLLIN) != 0) on_readable(c);
          }
          if (c.dead) conns_.erase(fd);
        }
      }
      fire_timers();
    }
    for (auto& [fd, c] : conns_) ::close(fd);
    conns_.clear();
    ::close(epfd_);
  }

 private:
  [[noreturn]] static void die(const char* what) {
    std::fprintf(stderr, "keygate-upstream: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
  }

  void add(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl add");
  }

  // Interest follows state: read while input may be parsed or buffered, write while output
  // is pending.
  void update_interest(Conn& c) {
    if (c.dead) return;
    uint32_t want = 0;
    const bool input_full = c.in.size() - c.in_off >= kInputBytesMax;
    if (!input_full && !c.eof && c.after == After::kContinue) want |= EPOLLIN;
    if (c.pending_out() > 0 || c.stream == Stream::kPattern) want |= EPOLLOUT;
    if (want == c.events) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.fd = c.fd;
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
    c.events = want;
  }

  void accept_all() {
    for (;;) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or a transient error: the next event retries
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      c->id = g_connections.fetch_add(1, std::memory_order_relaxed) + 1;
      llhttp_init(&c->parser, HTTP_REQUEST, &settings_);
      c->parser.data = c.get();
      c->events = EPOLLIN;
      add(fd, EPOLLIN);
      conns_[fd] = std::move(c);
    }
  }

  void close_conn(Conn& c, bool reset) {
    if (c.dead) return;
    if (reset) {
      linger l{1, 0};
      ::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    c.dead = true;
  }

  void on_readable(Conn& c) {
    const size_t old = c.in.size();
    c.in.resize(old + kReadBytes);
    const ssize_t n = ::recv(c.fd, c.in.data() + old, kReadBytes, 0);
    if (n <= 0) {
      c.in.resize(old);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      if (n < 0) {
        close_conn(c, false);
        return;
      }
      // A client that half-closed still gets the responses to what it sent.
      c.eof = true;
      progress(c);
      return;
    }
    c.in.resize(old + static_cast<size_t>(n));
    progress(c);
  }

  void on_writable(Conn& c) {
    fill_stream(c);
    flush(c);
    if (!c.dead) progress(c);
  }

  // Parses what may be parsed, sends what can be sent, and settles the epoll interest.
  void progress(Conn& c) {
    const auto may_parse = [&c] {
      return c.after == After::kContinue && !c.blocked && c.in_off < c.in.size() &&
             c.pending_out() < kOutputHighWaterBytes;
    };
    do {
      while (!c.dead && may_parse()) {
        parse_some(c);
        fill_stream(c);
      }
      if (c.dead) return;
      if (c.in_off == c.in.size()) {
        c.in.clear();
        c.in_off = 0;
      } else if (c.in_off > c.in.size() / 2) {
        c.in.erase(0, c.in_off);
        c.in_off = 0;
      }
      flush(c);
      if (c.dead) return;
      // The flush may have sent everything (the peer caught up since the last EAGAIN) with
      // input still unparsed: parse on. Nothing else would — no EPOLLOUT without output, no
      // EPOLLIN with the input full — and the connection would hang until the peer gave up
      // (keygate's response timeout cut an /echo that way under load).
    } while (may_parse());
    const bool idle = c.pending_out() == 0 && c.stream == Stream::kNone && !c.delayed;
    if (idle && (c.after != After::kContinue || (c.eof && c.in_off == c.in.size()))) {
      close_conn(c, c.after == After::kReset);
      return;
    }
    update_interest(c);
  }

  void parse_some(Conn& c) {
    const size_t len = std::min(c.in.size() - c.in_off, kParseSliceBytes);
    const char* data = c.in.data() + c.in_off;
    const llhttp_errno_t err = llhttp_execute(&c.parser, data, len);
    if (err == HPE_OK) {
      c.in_off += len;
      return;
    }
    if (err == HPE_PAUSED) {
      // on_message_complete paused after a whole request: the rest stays for later.
      c.in_off += static_cast<size_t>(llhttp_get_error_pos(&c.parser) - data);
      llhttp_resume(&c.parser);
      return;
    }
    // A malformed request, an upgrade or a user error (oversized headers): answer 400 if no
    // response has started for it, then close.
    c.in_off = c.in.size();
    if (c.stream == Stream::kNone && !c.echo && !c.delayed) {
      c.out +=
          "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
          "Connection: close\r\n\r\nbad request\n";
      c.after = After::kClose;
    } else {
      c.after = After::kClose;
      c.stream = Stream::kNone;
      c.delayed = false;
    }
  }

  void flush(Conn& c) {
    while (c.pending_out() > 0) {
      const ssize_t n =
          ::send(c.fd, c.out.data() + c.out_off, c.pending_out(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        close_conn(c, false);
        return;
      }
      c.out_off += static_cast<size_t>(n);
      fill_stream(c);
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    } else if (c.out_off > kOutputHighWaterBytes) {
      c.out.erase(0, c.out_off);
      c.out_off = 0;
    }
  }

  // Tops up the output with pattern bytes up to the high-water mark.
  void fill_stream(Conn& c) {
    if (c.stream != Stream::kPattern) return;
    const std::string& p = pattern();
    while (c.pending_out() < kOutputHighWaterBytes && c.stream_sent < c.stream_total) {
      const uint64_t left = c.stream_total - c.stream_sent;
      const size_t phase = static_cast<size_t>(c.stream_sent % 26);
      size_t n = static_cast<size_t>(std::min<uint64_t>(left, kChunkBytes));
      if (c.stream_chunked) {
        append_hex(c.out, n);
        c.out += "\r\n";
      }
      c.out.append(p, phase, n);
      if (c.stream_chunked) c.out += "\r\n";
      c.stream_sent += n;
    }
    if (c.stream_sent == c.stream_total) {
      if (c.stream_chunked) c.out += "0\r\n\r\n";
      c.stream = Stream::kNone;
      finish_response(c);
    }
  }

  // The current response is completely queued: parsing may go on (or the connection ends).
  void finish_response(Conn& c) {
    c.blocked = false;
    if (!c.keep_alive && c.after == After::kContinue) c.after = After::kClose;
  }

  // --- llhttp callbacks ---------------------------------------------------------------------

  static Conn& conn(llhttp_t* p) { return *static_cast<Conn*>(p->data); }

  static int on_message_begin(llhttp_t* p) {
    Conn& c = conn(p);
    ++c.requests;
    c.method.clear();
    c.target.clear();
    c.headers.clear();
    c.in_value = false;
    c.header_bytes = 0;
    c.body_bytes = 0;
    c.sha_started = false;
    c.echo = false;
    return 0;
  }

  static int on_url(llhttp_t* p, const char* at, size_t len) {
    Conn& c = conn(p);
    c.header_bytes += len;
    if (c.header_bytes > kHeaderBytesMax) return -1;
    c.target.append(at, len);
    return 0;
  }

  static int on_header_field(llhttp_t* p, const char* at, size_t len) {
    Conn& c = conn(p);
    c.header_bytes += len;
    if (c.header_bytes > kHeaderBytesMax) return -1;
    if (c.in_value || c.headers.empty()) {
      c.headers.emplace_back();
      c.in_value = false;
    }
    c.headers.back().first.append(at, len);
    return 0;
  }

  static int on_header_value(llhttp_t* p, const char* at, size_t len) {
    Conn& c = conn(p);
    c.header_bytes += len;
    if (c.header_bytes > kHeaderBytesMax) return -1;
    c.in_value = true;
    if (c.headers.empty()) c.headers.emplace_back();
    c.headers.back().second.append(at, len);
    return 0;
  }

  static int on_headers_complete(llhttp_t* p) {
    Conn& c = conn(p);
    Loop& self = *current_;
    c.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
    c.head = c.method == "HEAD";
    c.keep_alive = llhttp_should_keep_alive(p) != 0;
    for (const auto& [name, value] : c.headers) {
      if (name.size() == 6 && strncasecmp(name.c_str(), "expect", 6) == 0 &&
          strcasecmp(value.c_str(), "100-continue") == 0) {
        c.out += "HTTP/1.1 100 Continue\r\n\r\n";
      }
    }
    if (self.path_of(c) == "/echo") {
      c.echo = true;
      self.start_headers(c, 200, "application/octet-stream");
      c.out += "Transfer-Encoding: chunked\r\n";
      self.end_headers(c);
    }
    return 0;
  }

  static int on_body(llhttp_t* p, const char* at, size_t len) {
    Conn& c = conn(p);
    c.body_bytes += len;
    if (c.echo) {
      if (!c.head) {
        append_hex(c.out, len);
        c.out += "\r\n";
        c.out.append(at, len);
        c.out += "\r\n";
      }
      return 0;
    }
    if (!c.sha_started) {
      if (c.sha == nullptr) c.sha = EVP_MD_CTX_new();
      EVP_DigestInit_ex(c.sha, EVP_sha256(), nullptr);
      c.sha_started = true;
    }
    EVP_DigestUpdate(c.sha, at, len);
    return 0;
  }

  static int on_message_complete(llhttp_t* p) {
    Conn& c = conn(p);
    current_->respond(c);
    return HPE_PAUSED;
  }

  // --- Responses ----------------------------------------------------------------------------

  static std::string_view path_of(const Conn& c) {
    const std::string_view t = c.target;
    return t.substr(0, t.find('?'));
  }
  static std::string_view query_of(const Conn& c) {
    const std::string_view t = c.target;
    const size_t q = t.find('?');
    return q == std::string_view::npos ? std::string_view() : t.substr(q + 1);
  }

  void start_headers(Conn& c, int status, std::string_view content_type) {
    c.out += "HTTP/1.1 ";
    append_uint(c.out, static_cast<uint64_t>(status));
    c.out += ' ';
    c.out += reason(status);
    c.out += "\r\n";
    if (!content_type.empty()) {
      c.out += "Content-Type: ";
      c.out += content_type;
      c.out += "\r\n";
    }
  }
  void end_headers(Conn& c) {
    if (!c.keep_alive) c.out += "Connection: close\r\n";
    c.out += "\r\n";
  }
  void content_length(Conn& c, uint64_t n) {
    c.out += "Content-Length: ";
    append_uint(c.out, n);
    c.out += "\r\n";
  }

  // A complete response with a body from memory (HEAD: the headers only).
  void simple(Conn& c, int status, std::string_view content_type, std::string_view body) {
    start_headers(c, status, content_type);
    content_length(c, body.size());
    end_headers(c);
    if (!c.head) c.out += body;
    finish_response(c);
  }

  void describe(Conn& c) {
    body_.clear();
    body_ += "{\"method\":";
    append_json_string(body_, c.method);
    body_ += ",\"target\":";
    append_json_string(body_, c.target);
    body_ += ",\"headers\":[";
    for (size_t i = 0; i < c.headers.size(); ++i) {
      if (i > 0) body_ += ',';
      body_ += '[';
      append_json_string(body_, c.headers[i].first);
      body_ += ',';
      append_json_string(body_, c.headers[i].second);
      body_ += ']';
    }
    body_ += "],\"body_bytes\":";
    append_uint(body_, c.body_bytes);
    body_ += ",\"body_sha256\":\"";
    if (c.sha_started) {
      unsigned char digest[EVP_MAX_MD_SIZE];
      unsigned int digest_len = 0;
      EVP_DigestFinal_ex(c.sha, digest, &digest_len);
      static constexpr char kHex[] = "0123456789abcdef";
      for (unsigned int i = 0; i < digest_len; ++i) {
        body_ += kHex[digest[i] >> 4];
        body_ += kHex[digest[i] & 15];
      }
    } else {
      body_ += "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";  // SHA-256("")
    }
    body_ += "\",\"connection\":";
    append_uint(body_, c.id);
    body_ += ",\"request\":";
    append_uint(body_, c.requests);
    body_ += ",\"listen\":";
    append_json_string(body_, g_listen);
    body_ += "}\n";
    simple(c, 200, "application/json", body_);
  }

  // Called when a whole request has been parsed (parsing pauses right after).
  void respond(Conn& c) {
    const std::string_view path = path_of(c);
    uint64_t n = 0;
    if (query_has(query_of(c), "early-hints=1")) {
      c.out += "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
    }
    if (c.echo) {
      if (!c.head) c.out += "0\r\n\r\n";
      c.echo = false;
      finish_response(c);
    } else if (path.starts_with("/bytes/") && parse_uint(path.substr(7), &n)) {
      start_pattern(c, n, query_has(query_of(c), "chunked=1"));
    } else if (path.starts_with("/fixed/") && parse_uint(path.substr(7), &n)) {
      if (n > kFixedBytesMax) {
        start_pattern(c, n, false);
      } else {
        simple(c, 200, "application/octet-stream", std::string_view(pattern()).substr(0, n));
      }
    } else if (path.starts_with("/status/") && parse_uint(path.substr(8), &n)) {
      status(c, n);
    } else if (path.starts_with("/delay/") && parse_uint(path.substr(7), &n) && n <= kDelayMsMax) {
      c.delayed = true;
      c.blocked = true;
      timers_.push({Clock::now() + std::chrono::milliseconds(n), c.fd, c.id});
    } else if (path == "/close") {
      c.after = After::kClose;
    } else if (path == "/close-reused" || path.starts_with("/close-reused/")) {
      if (c.requests > 1) {
        c.after = After::kClose;
      } else {
        describe(c);
      }
    } else if (path == "/reset") {
      c.after = After::kReset;
    } else if (path == "/malformed/cl-te") {
      c.out +=
          "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
          "5\r\nhello\r\n0\r\n\r\n";
      c.after = After::kClose;
    } else if (path == "/malformed/bad-chunk") {
      c.out += "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
      c.after = After::kClose;
    } else if (path == "/malformed/gzip-chunked") {
      c.out += "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
      c.after = After::kClose;
    } else if (path == "/malformed/chunked-twice") {
      c.out +=
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
      c.after = After::kClose;
    } else if (path == "/malformed/garbage") {
      c.out += "NOT HTTP\r\n\r\n";
      c.after = After::kClose;
    } else if (path == "/headers-then-close") {
      c.out += "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n";
      c.out.append(pattern(), 0, 10);
      c.after = After::kClose;
    } else {
      describe(c);
    }
  }

  void start_pattern(Conn& c, uint64_t n, bool chunked) {
    start_headers(c, 200, "application/octet-stream");
    if (chunked) {
      c.out += "Transfer-Encoding: chunked\r\n";
    } else {
      content_length(c, n);
    }
    end_headers(c);
    if (c.head) {
      finish_response(c);
      return;
    }
    c.stream = Stream::kPattern;
    c.stream_chunked = chunked;
    c.stream_total = n;
    c.stream_sent = 0;
    c.blocked = true;
    fill_stream(c);
  }

  void status(Conn& c, uint64_t code) {
    if (code < 200 || code > 599) {
      simple(c, 400, "text/plain", "status must be 200..599\n");
      return;
    }
    const int s = static_cast<int>(code);
    if (s == 204 || s == 304) {
      start_headers(c, s, "");
      if (s == 304) c.out += "ETag: \"x\"\r\n";
      uint64_t length = 0;
      const bool has_length = query_uint(query_of(c), "length", &length) && length <= kChunkBytes;
      if (has_length) content_length(c, length);
      end_headers(c);
      if (has_length && query_has(query_of(c), "stray=1")) c.out.append(pattern(), 0, length);
      finish_response(c);
      return;
    }
    body_.clear();
    body_ += "{\"status\":";
    append_uint(body_, code);
    body_ += "}\n";
    simple(c, s, "application/json", body_);
  }

  int timeout_ms() const {
    if (timers_.empty()) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(timers_.top().at - Clock::now());
    return static_cast<int>(std::max<int64_t>(0, left.count()));
  }

  void fire_timers() {
    const auto now = Clock::now();
    while (!timers_.empty() && timers_.top().at <= now) {
      const Timer t = timers_.top();
      timers_.pop();
      auto it = conns_.find(t.fd);
      if (it == conns_.end() || it->second->id != t.conn_id) continue;  // closed meanwhile
      Conn& c = *it->second;
      c.delayed = false;
      describe(c);
      progress(c);
      if (c.dead) conns_.erase(it);
    }
  }

 public:
  // The loop whose callbacks run on this thread (llhttp callbacks are plain functions).
  static thread_local Loop* current_;

 private:
  int listen_fd_;
  int stop_fd_;
  int epfd_ = -1;
  bool stopping_ = false;
  llhttp_settings_t settings_;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  std::string body_;  // response body scratch
};

thread_local Loop* Loop::current_ = nullptr;

int make_listener(const sockaddr_in& addr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 4096) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

[[noreturn]] void usage(const char* error) {
  if (error != nullptr) std::fprintf(stderr, "keygate-upstream: %s\n", error);
  std::fprintf(stderr, "usage: keygate-upstream --listen 127.0.0.1:PORT [--threads N]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen;
  uint64_t threads = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") usage(nullptr);
    if (i + 1 >= argc) usage("missing value");
    if (arg == "--listen") {
      listen = argv[++i];
    } else if (arg == "--threads") {
      if (!parse_uint(argv[++i], &threads) || threads == 0 || threads > kThreadsMax) {
        usage("--threads must be 1..64");
      }
    } else {
      usage("unknown flag");
    }
  }
  const size_t colon = listen.rfind(':');
  uint64_t port = 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (colon == std::string::npos ||
      !parse_uint(std::string_view(listen).substr(colon + 1), &port) || port > 65535 ||
      ::inet_pton(AF_INET, listen.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    usage("--listen must be IPv4:PORT");
  }
  addr.sin_port = htons(static_cast<uint16_t>(port));

  // Only the main thread takes the stop signals (sigwait); threads inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  std::vector<int> listeners;
  for (uint64_t t = 0; t < threads; ++t) {
    const int fd = make_listener(addr);
    if (fd < 0) {
      std::fprintf(stderr, "keygate-upstream: cannot listen on %s: %s\n", listen.c_str(),
                   std::strerror(errno));
      return 1;
    }
    if (t == 0) {
      // Port 0: the other threads join the port the first listener got.
      socklen_t len = sizeof(addr);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    }
    listeners.push_back(fd);
  }
  char ip[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof(ip));
  g_listen = std::string(ip) + ":" + std::to_string(ntohs(addr.sin_port));
  std::vector<int> stop_fds;
  std::vector<std::thread> workers;
  for (int listen_fd : listeners) {
    const int stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd < 0) {
      std::fprintf(stderr, "keygate-upstream: eventfd: %s\n", std::strerror(errno));
      return 1;
    }
    stop_fds.push_back(stop_fd);
    workers.emplace_back([listen_fd, stop_fd] {
      Loop loop(listen_fd, stop_fd);
      Loop::current_ = &loop;
      loop.run();
    });
  }
  std::printf("listening on %s\n", g_listen.c_str());
  std::fflush(stdout);

  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
  }
  for (int fd : stop_fds) {
    const uint64_t one = 1;
    (void)!::write(fd, &one, sizeof(one));
  }
  for (std::thread& w : workers) w.join();
  for (int fd : listeners) ::close(fd);
  for (int fd : stop_fds) ::close(fd);
  return 0;
}
