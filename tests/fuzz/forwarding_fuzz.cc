// libFuzzer target for keygate::write_upstream_request_head (core/forwarding.h): whatever a
// client sends, the head keygate writes upstream is one well-formed request the upstream reads
// as the same request, minus what keygate promises to strip.
//
// Input: raw bytes a client sends. net::HttpParser (the strict parser the workers use) parses
// them as one connection, so only requests keygate would accept reach the code under test, as
// they reach it in production. For each request the head is written with the framing the
// worker picks for a buffered body (Content-Length when there is a body or the method takes
// one, else none) and again with chunked framing (a streamed body), then:
//   - the head holds no NUL and no CR or LF outside the CRLF that ends each line, and its only
//     empty line is the last;
//   - head + body (re-framed as the head says) parses again, with the same strict parser, into
//     exactly one complete request: same method, the target without its key parameters
//     (append_target_without_key), the same body;
//   - no header of it is hop-by-hop (Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
//     Transfer-Encoding but keygate's own chunked framing, Upgrade), none is named by a
//     Connection header of the client's (Host aside, and keygate's own headers aside), none is
//     X-ApiKey, Expect or a client's X-Keygate-*; keygate's X-Keygate-Key-Id/-Api/-User and
//     X-Forwarded-For/-Proto appear exactly once each, the last two ending with keygate's values;
//   - a request without Host gets exactly one, keygate's; one with Host keeps the client's;
//   - KeyExtractor finds no key in the forwarded header or query: the X-ApiKey header and every
//     key query parameter are gone however they were spelled (the body is forwarded as sent).
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/forwarding.h"
#include "core/handler.h"
#include "core/http_request.h"
#include "core/key_extractor.h"
#include "core/limits.h"
#include "net/http_parser.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using keygate::BodyFraming;
using keygate::equals_ignore_case;
using keygate::header_name_is_like;
using keygate::header_name_starts_like;
using keygate::HttpHeader;
using keygate::HttpRequest;
using keygate::Limits;
using keygate::net::HttpParser;
using Status = HttpParser::Status;

constexpr std::string_view kClientIp = "203.0.113.7";
constexpr std::string_view kUpstreamHost = "127.0.0.1:9000";
constexpr size_t kRequestsMax = 4;

const Limits& client_limits() {
  static const Limits limits = [] {
    Limits l;
    l.body_bytes_max = 4096;
    return l;
  }();
  return limits;
}

// The upstream side: the head grows by keygate's headers, so it gets room for them.
const Limits& upstream_limits() {
  static const Limits limits = [] {
    Limits l = client_limits();
    l.request_line_bytes_max *= 2;
    l.header_bytes_max *= 4;
    l.header_count_max += 8;
    return l;
  }();
  return limits;
}

bool is_body_method(std::string_view m) { return m == "POST" || m == "PUT" || m == "PATCH"; }

bool is_hop_by_hop_name(std::string_view name) {
  for (std::string_view n : {"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
                             "Transfer-Encoding", "Upgrade"}) {
    if (equals_ignore_case(name, n)) return true;
  }
  return false;
}

// Is `name` among the comma-separated options of some Connection header of `headers`?
bool named_by_connection(const std::vector<HttpHeader>& headers, std::string_view name) {
  for (const HttpHeader& h : headers) {
    if (!equals_ignore_case(h.name, "Connection")) continue;
    std::string_view list = h.value;
    while (true) {
      const size_t comma = list.find(',');
      std::string_view option = list.substr(0, comma);
      while (!option.empty() && (option.front() == ' ' || option.front() == '\t')) {
        option.remove_prefix(1);
      }
      while (!option.empty() && (option.back() == ' ' || option.back() == '\t')) {
        option.remove_suffix(1);
      }
      if (equals_ignore_case(option, name)) return true;
      if (comma == std::string_view::npos) break;
      list.remove_prefix(comma + 1);
    }
  }
  return false;
}

// A request copied out of the parser's views.
struct OwnedRequest {
  std::string method;
  std::string target;
  uint8_t version_minor = 1;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

void check_head_bytes(std::string_view head) {
  FUZZ_CHECK(head.ends_with("\r\n\r\n"));
  FUZZ_CHECK(head.find("\r\n\r\n") == head.size() - 4);
  for (size_t i = 0; i < head.size(); ++i) {
    FUZZ_CHECK(head[i] != '\0');
    if (head[i] == '\r') FUZZ_CHECK(i + 1 < head.size() && head[i + 1] == '\n');
    if (head[i] == '\n') FUZZ_CHECK(i > 0 && head[i - 1] == '\r');
  }
}

// Parses `wire` upstream-side: exactly one complete request.
OwnedRequest reparse(std::string wire) {
  HttpParser parser(upstream_limits());
  parser.reset();
  OwnedRequest out;
  std::span<char> rest(wire.data(), wire.size());
  while (true) {
    const HttpParser::Result r = parser.parse(rest);
    if (r.status == Status::kError) {
      std::fprintf(stderr, "upstream parser: %.*s\n%s\n", static_cast<int>(parser.error().code.size()),
                   parser.error().code.data(), wire.c_str());
    }
    FUZZ_CHECK(r.status != Status::kError);
    FUZZ_CHECK(r.status != Status::kNeedMore);
    FUZZ_CHECK(r.status != Status::kExpectContinue);  // keygate strips Expect
    rest = rest.subspan(r.consumed);
    if (r.status == Status::kRequest) break;
  }
  FUZZ_CHECK(rest.empty());
  const HttpRequest& req = parser.request();
  out.method = req.method;
  out.target = req.target;
  out.version_minor = req.version_minor;
  for (const HttpHeader& h : req.headers) out.headers.emplace_back(h.name, h.value);
  out.body = req.body;
  return out;
}

void check_forwarded(const HttpRequest& request, BodyFraming framing) {
  const keygate::ForwardTarget id{0, "kAAAAAAAAAAAA", "orders", "alice"};
  std::string head;
  const size_t host_at = keygate::write_upstream_request_head(request, id, kClientIp, framing,
                                                              request.body.size(), head,
                                                              kUpstreamHost);
  check_head_bytes(head);

  std::string wire = head;
  if (framing == BodyFraming::kContentLength) {
    wire += request.body;
  } else if (framing == BodyFraming::kChunked) {
    keygate::append_chunk(request.body, wire);
    wire += "0\r\n\r\n";
  }
  const OwnedRequest up = reparse(std::move(wire));

  // Header and query only: the extractor looks at the body only when they carry nothing, and
  // an empty body is never a source.
  static keygate::KeyExtractor extractor(4096);
  std::vector<HttpHeader> up_headers;
  for (const auto& [name, value] : up.headers) up_headers.push_back({name, value});
  HttpRequest forwarded;
  forwarded.method = up.method;
  forwarded.target = up.target;
  const size_t question = up.target.find('?');
  forwarded.path = std::string_view(up.target).substr(0, question);
  if (question != std::string::npos) {
    forwarded.query = std::string_view(up.target).substr(question + 1);
  }
  forwarded.headers = up_headers;
  const keygate::ExtractResult found = extractor.extract(forwarded);
  FUZZ_CHECK(found.outcome != keygate::KeyOutcome::kFound &&
             found.outcome != keygate::KeyOutcome::kAmbiguous);

  FUZZ_CHECK(up.method == request.method);
  std::string target;
  keygate::append_target_without_key(request.target, target);
  FUZZ_CHECK(up.target == target);
  FUZZ_CHECK(up.version_minor == 1);
  FUZZ_CHECK(up.body == request.body);

  const std::vector<HttpHeader> client(request.headers.begin(), request.headers.end());
  bool client_host = false;
  (void)request.header("Host", &client_host);
  FUZZ_CHECK((host_at != 0) == !client_host);
  size_t hosts = 0;
  size_t key_ids = 0;
  size_t apis = 0;
  size_t users = 0;
  size_t xffs = 0;
  size_t xfps = 0;
  for (const auto& [name, value] : up.headers) {
    if (equals_ignore_case(name, "Host")) {
      ++hosts;
      if (!client_host) FUZZ_CHECK(value == kUpstreamHost);
      continue;
    }
    if (name == "X-Keygate-Key-Id") {
      ++key_ids;
      FUZZ_CHECK(value == id.key_id);
      continue;
    }
    if (name == "X-Keygate-Api") {
      ++apis;
      FUZZ_CHECK(value == id.api);
      continue;
    }
    if (name == "X-Keygate-User") {
      ++users;
      FUZZ_CHECK(value == id.user);
      continue;
    }
    if (name == "X-Forwarded-For") {
      ++xffs;
      FUZZ_CHECK(value == kClientIp || value.ends_with(", " + std::string(kClientIp)));
      continue;
    }
    if (name == "X-Forwarded-Proto") {
      ++xfps;
      FUZZ_CHECK(value == "http" || value.ends_with(", http"));
      continue;
    }
    if (name == "Content-Length") {
      FUZZ_CHECK(framing == BodyFraming::kContentLength);
      continue;
    }
    if (name == "Transfer-Encoding") {
      FUZZ_CHECK(framing == BodyFraming::kChunked && value == "chunked");
      continue;
    }
    // A header of the client's.
    FUZZ_CHECK(!is_hop_by_hop_name(name));
    FUZZ_CHECK(!named_by_connection(client, name));
    FUZZ_CHECK(!header_name_is_like(name, "X-ApiKey"));
    FUZZ_CHECK(!equals_ignore_case(name, "Expect"));
    FUZZ_CHECK(!header_name_starts_like(name, "X-Keygate-"));
    FUZZ_CHECK(!header_name_is_like(name, "X-Forwarded-For"));
    FUZZ_CHECK(!header_name_is_like(name, "X-Forwarded-Proto"));
  }
  FUZZ_CHECK(hosts == 1);
  FUZZ_CHECK(key_ids == 1 && apis == 1 && users == 1 && xffs == 1 && xfps == 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);
  HttpParser parser(client_limits());
  parser.reset();
  std::span<char> rest(input.data(), input.size());
  size_t requests = 0;
  while (!rest.empty() && requests < kRequestsMax) {
    const HttpParser::Result r = parser.parse(rest);
    if (r.status == Status::kError || r.status == Status::kNeedMore) break;
    rest = rest.subspan(r.consumed);
    if (r.status != Status::kRequest) {
      if (r.consumed == 0) break;
      continue;
    }
    ++requests;
    const HttpRequest& request = parser.request();
    const bool has_body = !request.body.empty() || is_body_method(request.method);
    check_forwarded(request, has_body ? BodyFraming::kContentLength : BodyFraming::kNone);
    check_forwarded(request, BodyFraming::kChunked);
  }
  return 0;
}
