// libFuzzer target for keygate::net::HttpParser.
//
// Each input is parsed under two sets of limits (the defaults, and small ones so every limit is
// reachable by short inputs) and in several split patterns: all at once, one byte per call, two
// pieces, pseudo-random slices with empty calls mixed in and receive-buffer slack, and the same
// slices with every request deferred (stabilize(), then the receive buffer is dropped). Every
// slice lives in its own heap buffer that is scribbled over and freed once the parser has moved
// on, so a view or offset into an old receive buffer shows up under ASan or as a mismatch, and
// every byte of body_readable_padding is read. Checked:
//   - per call: consumed <= input; kNeedMore consumes everything; the parser makes progress;
//     it is never called again after kError;
//   - per request: the properties the parser promises (one Host in 1.1, no CONNECT or Upgrade,
//     no CL+TE, values trimmed and free of control characters, limits respected, ...);
//   - per error: a 4xx/505 status, a code, and a JSON-safe message;
//   - across split patterns: the same requests and the same verdict (how TCP cuts the bytes must
//     not change what the server sees; only which of two reasons refuses an input that is both
//     oversized and malformed may differ);
//   - reset() always returns the parser to a usable state.
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/http_request.h"
#include "core/limits.h"
#include "net/http_parser.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using keygate::equals_ignore_case;
using keygate::HttpHeader;
using keygate::HttpRequest;
using keygate::Limits;
using keygate::net::HttpParser;
using Status = HttpParser::Status;

const Limits& default_limits() {
  static const Limits limits;
  return limits;
}

const Limits& small_limits() {
  static const Limits limits = [] {
    Limits l;
    l.request_line_bytes_max = 64;
    l.header_bytes_max = 256;
    l.header_count_max = 8;
    l.body_bytes_max = 64;
    return l;
  }();
  return limits;
}

bool has_ctl(std::string_view v) {
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) return true;
  }
  return false;
}

bool parse_decimal(std::string_view v, uint64_t* out) {
  if (v.empty()) return false;
  while (v.size() > 1 && v.front() == '0') v.remove_prefix(1);
  if (v.size() > 19) return false;
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = n;
  return true;
}

// Checks what the parser promises about every request it hands out, and returns a canonical
// serialization for cross-pattern comparison.
std::string check_and_serialize(const HttpRequest& r, const Limits& limits) {
  FUZZ_CHECK(!r.method.empty());
  FUZZ_CHECK(!r.target.empty());
  FUZZ_CHECK(r.version_minor == 0 || r.version_minor == 1);
  FUZZ_CHECK(!equals_ignore_case(r.method, "CONNECT"));
  FUZZ_CHECK(r.target.size() <= limits.request_line_bytes_max);
  const size_t q = r.target.find('?');
  FUZZ_CHECK(r.path == r.target.substr(0, q));
  FUZZ_CHECK(q == std::string_view::npos ? r.query.empty() : r.query == r.target.substr(q + 1));
  FUZZ_CHECK(r.headers.size() <= limits.header_count_max);
  FUZZ_CHECK(r.body.size() <= limits.body_bytes_max);

  int hosts = 0;
  int content_lengths = 0;
  bool transfer_encoding = false;
  uint64_t content_length = 0;
  for (const HttpHeader& h : r.headers) {
    FUZZ_CHECK(!h.name.empty());
    FUZZ_CHECK(h.name.find(':') == std::string_view::npos);
    FUZZ_CHECK(!has_ctl(h.name));
    FUZZ_CHECK(!has_ctl(h.value));
    if (!h.value.empty()) {
      FUZZ_CHECK(h.value.front() != ' ' && h.value.front() != '\t');
      FUZZ_CHECK(h.value.back() != ' ' && h.value.back() != '\t');
    }
    FUZZ_CHECK(!equals_ignore_case(h.name, "upgrade"));
    if (equals_ignore_case(h.name, "host")) ++hosts;
    if (equals_ignore_case(h.name, "transfer-encoding")) transfer_encoding = true;
    if (equals_ignore_case(h.name, "content-length")) {
      ++content_lengths;
      FUZZ_CHECK(parse_decimal(h.value, &content_length));
    }
  }
  if (r.version_minor == 1) FUZZ_CHECK(hosts == 1);
  FUZZ_CHECK(hosts <= 1);
  FUZZ_CHECK(content_lengths <= 1);
  FUZZ_CHECK(!(transfer_encoding && content_lengths > 0));
  if (transfer_encoding) FUZZ_CHECK(r.version_minor == 1);
  if (content_lengths == 1) FUZZ_CHECK(r.body.size() == content_length);
  if (content_lengths == 0 && !transfer_encoding) FUZZ_CHECK(r.body.empty());

  std::string s;
  s.append(r.method).push_back('\0');
  s.append(r.target).push_back('\0');
  s.push_back(static_cast<char>('0' + r.version_minor));
  s.push_back(r.keep_alive ? 'k' : 'c');
  for (const HttpHeader& h : r.headers) {
    s.append(h.name).push_back('\0');
    s.append(h.value).push_back('\0');
  }
  s.push_back('\x01');
  s.append(r.body);
  return s;
}

void check_error(const keygate::net::ParseError& e) {
  const int s = e.status;
  FUZZ_CHECK(s == 400 || s == 405 || s == 413 || s == 414 || s == 417 || s == 431 || s == 501 ||
             s == 505);
  FUZZ_CHECK(!e.code.empty());
  for (char c : e.message) {
    FUZZ_CHECK(c != '"' && c != '\\' && static_cast<unsigned char>(c) >= 0x20);
  }
}

bool is_limit_status(int status) { return status == 413 || status == 414 || status == 431; }

struct Outcome {
  std::vector<std::string> requests;
  size_t continues = 0;
  bool error = false;
  int error_status = 0;
  bool in_progress = false;
};

// Touches every byte the request says is readable past its body, so a wrong
// body_readable_padding is an out-of-bounds read under ASan.
void read_padding(const HttpRequest& r) {
  volatile unsigned char sink = 0;
  const char* end = r.body.data() + r.body.size();
  for (size_t i = 0; i < r.body_readable_padding; ++i)
    sink = sink ^ static_cast<unsigned char>(end[i]);
  (void)sink;
}

struct Pattern {
  const char* name;
  std::vector<size_t> cuts;  // slice lengths summing to the input size; 0 is an empty call
  size_t slack = 0;          // readable bytes after each slice (parse()'s readable_after)
  bool stabilize = false;    // defer every request: stabilize(), then drop the receive buffer
};

// One receive buffer: `len` bytes of input plus `slack` readable bytes after them.
std::unique_ptr<char[]> make_buffer(const char* bytes, size_t len, size_t slack) {
  std::unique_ptr<char[]> buf(new char[len + slack + 1]);
  std::memcpy(buf.get(), bytes, len);
  std::memset(buf.get() + len, 0x5A, slack + 1);
  return buf;
}

void drop_buffer(std::unique_ptr<char[]>& buf, size_t len) {
  std::memset(buf.get(), 0xA5, len);
  buf.reset();
}

Outcome run(HttpParser& parser, const Limits& limits, std::string_view data,
            const Pattern& pattern) {
  Outcome out;
  size_t pos = 0;
  for (size_t cut : pattern.cuts) {
    // A fresh allocation per receive, scribbled over and freed once the parser moved on.
    size_t len = cut;
    std::unique_ptr<char[]> buf = make_buffer(data.data() + pos, len, pattern.slack);
    pos += cut;
    size_t off = 0;
    int idle = 0;
    do {
      const size_t rest = len - off;
      const HttpParser::Result r =
          parser.parse(std::span<char>(buf.get() + off, rest), pattern.slack);
      FUZZ_CHECK(r.consumed <= rest);
      if (r.status == Status::kError) {
        check_error(parser.error());
        out.error = true;
        out.error_status = parser.error().status;
        return out;  // the parser must not be called after kError
      }
      off += r.consumed;
      if (r.status == Status::kNeedMore) {
        FUZZ_CHECK(r.consumed == rest);
      } else if (r.status == Status::kExpectContinue) {
        FUZZ_CHECK(parser.headers_complete());
        ++out.continues;
      } else {
        FUZZ_CHECK(!parser.request_in_progress());
        read_padding(parser.request());
        if (pattern.stabilize) {
          // As a deferring connection does: keep the unparsed rest, reuse the receive buffer.
          parser.stabilize();
          FUZZ_CHECK(parser.request().body_readable_padding == 0);
          std::unique_ptr<char[]> next = make_buffer(buf.get() + off, len - off, pattern.slack);
          drop_buffer(buf, len);
          buf = std::move(next);
          len -= off;
          off = 0;
        }
        out.requests.push_back(check_and_serialize(parser.request(), limits));
      }
      idle = r.consumed == 0 && rest > 0 ? idle + 1 : 0;
      FUZZ_CHECK(idle <= 2);  // no livelock: a stuck parser would spin here forever
    } while (off < len);
    drop_buffer(buf, len);
  }
  out.in_progress = parser.request_in_progress();
  return out;
}

uint64_t fnv1a(std::string_view data) {
  uint64_t h = 1469598103934665603ull;
  for (char c : data) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

void check_reset(HttpParser& parser) {
  parser.reset();
  char good[] = "GET /after-reset HTTP/1.1\r\nHost: h\r\n\r\n";
  const HttpParser::Result r = parser.parse(std::span<char>(good, sizeof(good) - 1));
  FUZZ_CHECK(r.status == Status::kRequest);
  FUZZ_CHECK(r.consumed == sizeof(good) - 1);
  FUZZ_CHECK(parser.request().target == "/after-reset");
}

void fuzz_with(const Limits& limits, std::string_view data) {
  std::vector<Pattern> patterns;
  patterns.push_back({"whole", {data.size()}});
  patterns.push_back({"bytewise", std::vector<size_t>(data.size(), 1)});
  const uint64_t h = fnv1a(data);
  const size_t split = data.empty() ? 0 : static_cast<size_t>(h % (data.size() + 1));
  patterns.push_back({"two-pieces", {split, data.size() - split}});
  std::vector<size_t> random_cuts;
  uint64_t state = h | 1;
  for (size_t left = data.size(); left > 0;) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    if (state % 5 == 0) random_cuts.push_back(0);  // an empty call between receives
    const size_t len = std::min<size_t>(left, 1 + static_cast<size_t>((state >> 8) % 17));
    random_cuts.push_back(len);
    left -= len;
  }
  patterns.push_back({"random-slices", random_cuts, 64});
  patterns.push_back({"random-slices-deferred", random_cuts, 0, true});

  Outcome reference;
  for (size_t i = 0; i < patterns.size(); ++i) {
    keygate::fuzz::context = patterns[i].name;
    HttpParser parser(limits);
    const Outcome o = run(parser, limits, data, patterns[i]);
    if (i == 0) {
      reference = o;
    } else {
      FUZZ_CHECK(o.requests.size() == reference.requests.size());
      for (size_t k = 0; k < o.requests.size(); ++k) {
        FUZZ_CHECK(o.requests[k] == reference.requests[k]);
      }
      FUZZ_CHECK(o.error == reference.error);
      // Limits are checked as bytes arrive, syntax when llhttp reaches it: input that is both
      // oversized and malformed may be refused for either reason depending on the split. Any
      // other difference in the verdict is a bug.
      if (o.error_status != reference.error_status) {
        FUZZ_CHECK(is_limit_status(o.error_status) || is_limit_status(reference.error_status));
      }
      FUZZ_CHECK(o.continues == reference.continues);
      FUZZ_CHECK(o.in_progress == reference.in_progress);
    }
    check_reset(parser);
  }
  keygate::fuzz::context = "";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Bytewise feeding is one parse() call per byte; larger inputs add nothing the limits do not.
  if (size > 64 * 1024) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  fuzz_with(default_limits(), input);
  fuzz_with(small_limits(), input);
  return 0;
}
