// keygate-admin-bench: load driver for bench/admin_bench.sh — latency of admin writes over
// keep-alive connections, and a paced background writer of admin mutations.
//
// Modes (the admin key comes from the environment variable KEYGATE_ADMIN_KEY, never argv):
//   creates  --count N --clients C: N `POST /admin/keys` (server-generated values) split over C
//            connections, each sending its next request as soon as the previous answer is in
//            (closed loop). A warm-up of --warmup creates on one connection comes first and is
//            not counted. Reports creates/s over the measured phase and the latency
//            distribution (send of the request to the last byte of the answer).
//   writer   --rate R --duration-s S: one connection; first creates --pool keys of its own
//            (untimed), prints "ADMIN_BENCH_READY", then runs operations on an absolute
//            schedule of R per second for S seconds, cycling create (a new key), PATCH (the
//            description of a live key, round robin) and DELETE (the oldest live key), so the
//            pool stays at its size. The schedule is absolute: a late operation is sent at
//            once, and ones that fell behind go back to back until it is caught up, so the
//            average rate holds; operations more than 1 ms late are counted. At the end it deletes its remaining keys
//            (untimed), so the store is as it found it.
// Every request must get the expected status (201, 200, 204); anything else, or a broken
// connection, stops the driver with exit status 1 and one line on stderr. The result is one line
// on stdout: "ADMIN_BENCH key=value ...", latencies in microseconds.
//
// Single process; creates runs C threads, each owning its connection and its samples. Plain
// blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO (--timeout-ms), so no wait is unbounded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

constexpr size_t kHeadBytesMax = 64 * 1024;
constexpr size_t kBodyBytesMax = 16 * 1024 * 1024;
constexpr size_t kCountMax = 10'000'000;
constexpr unsigned kClientsMax = 256;
constexpr size_t kPoolMax = 100'000;
constexpr double kRateMax = 100'000;
constexpr double kDurationMax = 24 * 3600;
constexpr const char* kAdminKeyEnv = "KEYGATE_ADMIN_KEY";

struct Options {
  std::string mode;
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string api = "bench";
  std::string admin_key;
  size_t count = 2000;
  unsigned clients = 1;
  size_t warmup = 20;
  double rate_per_s = 50;
  double duration_s = 10;
  size_t pool = 32;
  int timeout_ms = 10000;
};

int usage(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "keygate-admin-bench: %s\n", why);
  std::fprintf(stderr,
               "Usage: KEYGATE_ADMIN_KEY=... keygate-admin-bench creates|writer --port PORT\n"
               "         [--host 127.0.0.1] [--api bench] [--timeout-ms 10000]\n"
               "  creates: [--count 2000] [--clients 1] [--warmup 20]\n"
               "  writer:  [--rate 50] [--duration-s 10] [--pool 32]\n"
               "See the comment at the top of tools/keygate_admin_bench.cc.\n");
  return kExitUsage;
}

bool parse_number(const std::string& text, double min, double max, double* out) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || end == text.c_str() || *end != '\0' || !(v >= min && v <= max)) return false;
  *out = v;
  return true;
}

bool parse_options(int argc, char** argv, Options* o, std::string* error) {
  if (argc < 2) {
    *error = "missing mode";
    return false;
  }
  o->mode = argv[1];
  if (o->mode != "creates" && o->mode != "writer") {
    *error = "unknown mode (creates or writer)";
    return false;
  }
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      *error = "missing value for " + flag;
      return false;
    }
    const std::string value = argv[i + 1];
    double v = 0;
    bool ok = true;
    if (flag == "--host") {
      o->host = value;
    } else if (flag == "--api") {
      o->api = value;
    } else if (flag == "--port") {
      ok = parse_number(value, 1, 65535, &v);
      o->port = static_cast<uint16_t>(v);
    } else if (flag == "--count") {
      ok = parse_number(value, 1, kCountMax, &v);
      o->count = static_cast<size_t>(v);
    } else if (flag == "--clients") {
      ok = parse_number(value, 1, kClientsMax, &v);
      o->clients = static_cast<unsigned>(v);
    } else if (flag == "--warmup") {
      ok = parse_number(value, 0, kCountMax, &v);
      o->warmup = static_cast<size_t>(v);
    } else if (flag == "--rate") {
      ok = parse_number(value, 0.001, kRateMax, &v);
      o->rate_per_s = v;
    } else if (flag == "--duration-s") {
      ok = parse_number(value, 0.001, kDurationMax, &v);
      o->duration_s = v;
    } else if (flag == "--pool") {
      ok = parse_number(value, 1, kPoolMax, &v);
      o->pool = static_cast<size_t>(v);
    } else if (flag == "--timeout-ms") {
      ok = parse_number(value, 1, 3'600'000, &v);
      o->timeout_ms = static_cast<int>(v);
    } else {
      *error = "unknown flag " + flag;
      return false;
    }
    if (!ok) {
      *error = "bad value for " + flag;
      return false;
    }
  }
  if (o->port == 0) {
    *error = "--port is required";
    return false;
  }
  const char* key = std::getenv(kAdminKeyEnv);
  if (key == nullptr || *key == '\0') {
    *error = std::string("set the admin key in ") + kAdminKeyEnv;
    return false;
  }
  o->admin_key = key;
  return true;
}

struct Response {
  int status = 0;
  std::string body;
};

bool iequals_prefix(std::string_view line, std::string_view name) {
  if (line.size() < name.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char a = static_cast<char>(std::tolower(static_cast<unsigned char>(line[i])));
    if (a != name[i]) return false;
  }
  return true;
}

// One keep-alive HTTP/1.1 connection; requests are sent one at a time (no pipelining).
class Connection {
 public:
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    if (fd_ >= 0) close(fd_);
  }

  bool open(const Options& o, std::string* error) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(o.port);
    if (inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1) {
      *error = "--host must be a numeric IPv4 address";
      return false;
    }
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return fail("socket", error);
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    timeval tv{};
    tv.tv_sec = o.timeout_ms / 1000;
    tv.tv_usec = (o.timeout_ms % 1000) * 1000;
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return fail("connect", error);
    }
    return true;
  }

  // Sends `request` whole and reads one response framed by Content-Length (or 204, no body).
  bool exchange(std::string_view request, Response* out, std::string* error) {
    size_t sent = 0;
    while (sent < request.size()) {
      const ssize_t n = send(fd_, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fail("send", error);
      sent += static_cast<size_t>(n);
    }
    size_t head_end = std::string::npos;
    while ((head_end = in_.find("\r\n\r\n")) == std::string::npos) {
      if (in_.size() > kHeadBytesMax) {
        *error = "response head too large";
        return false;
      }
      if (!receive_more(error)) return false;
    }
    const std::string_view head(in_.data(), head_end);
    if (head.size() < 12 || head.substr(0, 7) != "HTTP/1.") {
      *error = "malformed status line";
      return false;
    }
    out->status = std::atoi(std::string(head.substr(9, 3)).c_str());
    size_t body_bytes = 0;
    bool has_length = false;
    size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos && pos < head.size()) {
      const size_t start = pos + 2;
      size_t next = head.find("\r\n", start);
      const std::string_view line =
          head.substr(start, next == std::string_view::npos ? std::string_view::npos : next - start);
      if (iequals_prefix(line, "content-length:")) {
        body_bytes = std::strtoull(std::string(line.substr(15)).c_str(), nullptr, 10);
        has_length = true;
      } else if (iequals_prefix(line, "connection:") &&
                 line.find("close") != std::string_view::npos) {
        *error = "the server closes the connection: keep-alive expected";
        return false;
      }
      pos = next;
    }
    if (!has_length && out->status != 204) {
      *error = "response without Content-Length";
      return false;
    }
    if (body_bytes > kBodyBytesMax) {
      *error = "response body too large";
      return false;
    }
    const size_t total = head_end + 4 + body_bytes;
    while (in_.size() < total) {
      if (!receive_more(error)) return false;
    }
    out->body.assign(in_, head_end + 4, body_bytes);
    in_.erase(0, total);
    return true;
  }

 private:
  bool receive_more(std::string* error) {
    char buf[16384];
    for (;;) {
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) {
        *error = "the server closed the connection";
        return false;
      }
      if (n < 0) return fail("recv", error);
      in_.append(buf, static_cast<size_t>(n));
      return true;
    }
  }

  static bool fail(const char* what, std::string* error) {
    *error = std::string(what) + ": " + std::strerror(errno);
    return false;
  }

  int fd_ = -1;
  std::string in_;
};

std::string make_request(const Options& o, std::string_view method, std::string_view target,
                         std::string_view body) {
  std::string r;
  r.reserve(256 + body.size());
  r.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: ");
  r.append(o.host).append(":").append(std::to_string(o.port)).append("\r\n");
  r.append("X-ApiKey: ").append(o.admin_key).append("\r\n");
  if (method != "DELETE") {
    r.append("Content-Type: application/json\r\nContent-Length: ");
    r.append(std::to_string(body.size())).append("\r\n");
  }
  r.append("\r\n").append(body);
  return r;
}

// The "id" of a key record in an admin response (ids are [A-Za-z0-9]).
std::string record_id(const std::string& body) {
  constexpr std::string_view kMember = "\"id\":\"";
  const size_t at = body.find(kMember);
  if (at == std::string::npos) return {};
  const size_t start = at + kMember.size();
  const size_t end = body.find('"', start);
  if (end == std::string::npos) return {};
  return body.substr(start, end - start);
}

// One request with its expected status; on success *latency_us is set (send to last byte).
bool call(Connection& c, const std::string& request, int want_status, Response* out,
          int64_t* latency_us, std::string* error) {
  const auto t0 = Clock::now();
  if (!c.exchange(request, out, error)) return false;
  const auto t1 = Clock::now();
  if (latency_us != nullptr) {
    *latency_us = std::chrono::duration_cast<std::chrono::microseconds>(t1 - t0).count();
  }
  if (out->status != want_status) {
    *error = "expected status " + std::to_string(want_status) + ", got " +
             std::to_string(out->status) + ": " + out->body.substr(0, 200);
    return false;
  }
  return true;
}

struct Summary {
  int64_t p50_us = 0;
  int64_t p99_us = 0;
  int64_t max_us = 0;
};

// Nearest-rank percentiles; sorts `v`.
Summary summarize(std::vector<int64_t>& v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto rank = [&](double q) {
    size_t r = static_cast<size_t>(q * static_cast<double>(v.size()) + 0.999999);
    r = std::clamp<size_t>(r, 1, v.size());
    return v[r - 1];
  };
  s.p50_us = rank(0.50);
  s.p99_us = rank(0.99);
  s.max_us = v.back();
  return s;
}

std::string create_body(const Options& o, std::string_view description) {
  return "{\"apis\":[\"" + o.api + "\"],\"description\":\"" + std::string(description) + "\"}";
}

int run_creates(const Options& o) {
  std::string error;
  const std::string request = make_request(o, "POST", "/admin/keys", create_body(o, "admin-bench"));
  {
    Connection warm;
    if (!warm.open(o, &error)) {
      std::fprintf(stderr, "keygate-admin-bench: %s\n", error.c_str());
      return kExitFailure;
    }
    Response r;
    for (size_t i = 0; i < o.warmup; ++i) {
      if (!call(warm, request, 201, &r, nullptr, &error)) {
        std::fprintf(stderr, "keygate-admin-bench: warm-up: %s\n", error.c_str());
        return kExitFailure;
      }
    }
  }

  struct Client {
    Connection connection;
    size_t count = 0;
    std::vector<int64_t> latencies_us;
    std::string error;
  };
  std::vector<Client> clients(o.clients);
  for (unsigned i = 0; i < o.clients; ++i) {
    Client& c = clients[i];
    c.count = o.count / o.clients + (i < o.count % o.clients ? 1 : 0);
    c.latencies_us.reserve(c.count);
    if (!c.connection.open(o, &error)) {
      std::fprintf(stderr, "keygate-admin-bench: %s\n", error.c_str());
      return kExitFailure;
    }
  }
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  threads.reserve(o.clients);
  for (Client& c : clients) {
    threads.emplace_back([&c, &go, &request] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      Response r;
      for (size_t i = 0; i < c.count; ++i) {
        int64_t us = 0;
        if (!call(c.connection, request, 201, &r, &us, &c.error)) return;
        c.latencies_us.push_back(us);
      }
    });
  }
  const auto start = Clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  const auto elapsed_us =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();

  std::vector<int64_t> all;
  all.reserve(o.count);
  for (const Client& c : clients) {
    if (!c.error.empty()) {
      std::fprintf(stderr, "keygate-admin-bench: %s\n", c.error.c_str());
      return kExitFailure;
    }
    all.insert(all.end(), c.latencies_us.begin(), c.latencies_us.end());
  }
  const Summary s = summarize(all);
  std::printf("ADMIN_BENCH mode=creates clients=%u requests=%zu elapsed_us=%" PRId64
              " per_s=%.1f p50_us=%" PRId64 " p99_us=%" PRId64 " max_us=%" PRId64 "\n",
              o.clients, all.size(), static_cast<int64_t>(elapsed_us),
              static_cast<double>(all.size()) * 1e6 / static_cast<double>(elapsed_us), s.p50_us,
              s.p99_us, s.max_us);
  return kExitOk;
}

int run_writer(const Options& o) {
  std::string error;
  Connection c;
  if (!c.open(o, &error)) {
    std::fprintf(stderr, "keygate-admin-bench: %s\n", error.c_str());
    return kExitFailure;
  }
  const std::string create = make_request(o, "POST", "/admin/keys", create_body(o, "admin-bench"));
  std::deque<std::string> live;  // ids, oldest first
  Response r;
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "keygate-admin-bench: writer %s: %s\n", what, error.c_str());
    return kExitFailure;
  };
  for (size_t i = 0; i < o.pool; ++i) {
    if (!call(c, create, 201, &r, nullptr, &error)) return fail("pool");
    live.push_back(record_id(r.body));
  }
  std::printf("ADMIN_BENCH_READY\n");
  std::fflush(stdout);

  const auto period = std::chrono::duration<double>(1.0 / o.rate_per_s);
  const size_t ops_total = static_cast<size_t>(o.rate_per_s * o.duration_s);
  std::vector<int64_t> all, by_op[3];
  all.reserve(ops_total);
  int64_t late_max_us = 0;
  size_t late_ops = 0;
  size_t patch_next = 0;
  const auto start = Clock::now();
  for (size_t i = 0; i < ops_total; ++i) {
    const auto due = start + std::chrono::duration_cast<Clock::duration>(period * static_cast<double>(i));
    const auto now = Clock::now();
    if (now < due) {
      std::this_thread::sleep_until(due);
    } else {
      const int64_t late_us =
          std::chrono::duration_cast<std::chrono::microseconds>(now - due).count();
      if (late_us > 1000) ++late_ops;
      late_max_us = std::max(late_max_us, late_us);
    }
    int64_t us = 0;
    const size_t op = i % 3;
    if (op == 0) {
      if (!call(c, create, 201, &r, &us, &error)) return fail("create");
      live.push_back(record_id(r.body));
    } else if (op == 1) {
      const std::string& id = live[patch_next++ % live.size()];
      const std::string body = "{\"description\":\"admin-bench patch " + std::to_string(i) + "\"}";
      if (!call(c, make_request(o, "PATCH", "/admin/keys/" + id, body), 200, &r, &us, &error)) {
        return fail("patch");
      }
    } else {
      if (!call(c, make_request(o, "DELETE", "/admin/keys/" + live.front(), ""), 204, &r, &us,
                &error)) {
        return fail("delete");
      }
      live.pop_front();
    }
    all.push_back(us);
    by_op[op].push_back(us);
  }
  const auto elapsed_us =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  while (!live.empty()) {
    if (!call(c, make_request(o, "DELETE", "/admin/keys/" + live.front(), ""), 204, &r, nullptr,
              &error)) {
      return fail("cleanup");
    }
    live.pop_front();
  }
  const Summary s = summarize(all);
  const Summary sc = summarize(by_op[0]);
  const Summary sp = summarize(by_op[1]);
  const Summary sd = summarize(by_op[2]);
  std::printf("ADMIN_BENCH mode=writer ops=%zu creates=%zu patches=%zu deletes=%zu elapsed_us=%" PRId64
              " per_s=%.1f p50_us=%" PRId64 " p99_us=%" PRId64 " max_us=%" PRId64
              " create_p50_us=%" PRId64 " patch_p50_us=%" PRId64 " delete_p50_us=%" PRId64
              " late_ops=%zu late_max_us=%" PRId64 "\n",
              all.size(), by_op[0].size(), by_op[1].size(), by_op[2].size(),
              static_cast<int64_t>(elapsed_us),
              static_cast<double>(all.size()) * 1e6 / static_cast<double>(elapsed_us), s.p50_us,
              s.p99_us, s.max_us, sc.p50_us, sp.p50_us, sd.p50_us, late_ops, late_max_us);
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string error;
  if (argc >= 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
    usage(nullptr);
    return kExitOk;
  }
  if (!parse_options(argc, argv, &o, &error)) return usage(error.c_str());
  return o.mode == "creates" ? run_creates(o) : run_writer(o);
}
