#include "net/http_parser.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/limits.h"

namespace keygate::net {

// Readable failure messages for statuses. Outside the anonymous namespace so ADL finds it.
static void PrintTo(HttpParser::Status status, std::ostream* os) {
  switch (status) {
    case HttpParser::Status::kNeedMore:
      *os << "kNeedMore";
      return;
    case HttpParser::Status::kRequest:
      *os << "kRequest";
      return;
    case HttpParser::Status::kExpectContinue:
      *os << "kExpectContinue";
      return;
    case HttpParser::Status::kError:
      *os << "kError";
      return;
    case HttpParser::Status::kHeaders:
      *os << "kHeaders";
      return;
    case HttpParser::Status::kBodyEnd:
      *os << "kBodyEnd";
      return;
  }
  *os << "Status(" << static_cast<int>(status) << ")";
}

namespace {

using namespace std::string_literals;
using Status = HttpParser::Status;

// HttpParser keeps a reference to its Limits, so they must outlive it: never pass a temporary.
const Limits kDefaultLimits;

// Small limits so every bound is reachable with short literals. Static because HttpParser keeps
// a reference to its Limits.
const Limits& small_limits() {
  static const Limits limits = [] {
    Limits l;
    l.request_line_bytes_max = 64;
    l.header_bytes_max = 256;
    l.header_count_max = 8;
    l.body_bytes_max = 32;
    return l;
  }();
  return limits;
}

// A completed request copied out of the parser (its views die at the next parse() call).
struct Parsed {
  std::string method;
  std::string target;
  std::string path;
  std::string query;
  int version_minor = -1;
  bool keep_alive = false;
  bool is_head = false;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

Parsed copy_request(const HttpRequest& r) {
  Parsed p;
  p.method = std::string(r.method);
  p.target = std::string(r.target);
  p.path = std::string(r.path);
  p.query = std::string(r.query);
  p.version_minor = r.version_minor;
  p.keep_alive = r.keep_alive;
  p.is_head = r.is_head();
  for (const HttpHeader& h : r.headers) p.headers.emplace_back(h.name, h.value);
  p.body = std::string(r.body);
  return p;
}

struct FeedResult {
  std::vector<Parsed> requests;
  std::vector<size_t> request_ends;     // input offset just past each request
  std::vector<size_t> continue_points;  // input offset where each kExpectContinue was returned
  bool error = false;
  int error_status = 0;
  std::string error_code;
  Status last = Status::kNeedMore;
};

// Feeds `input` to `parser` in slices of `slice` bytes (0: all at once), each slice in its own
// freshly allocated buffer that is scribbled over and freed after use, so a parser that kept a
// pointer into an old receive buffer trips ASan or produces garbage. Within a slice it keeps
// calling parse() on the unconsumed rest, as a connection would. Stops at the first kError:
// the parser must not be called again after one.
FeedResult feed(HttpParser& parser, std::string_view input, size_t slice) {
  FeedResult out;
  if (slice == 0) slice = input.size() == 0 ? 1 : input.size();
  for (size_t pos = 0; pos < input.size(); pos += slice) {
    std::string buf(input.substr(pos, slice));
    size_t off = 0;
    int idle_rounds = 0;
    while (off < buf.size()) {
      const size_t rest = buf.size() - off;
      const HttpParser::Result r = parser.parse(std::span<char>(buf.data() + off, rest));
      out.last = r.status;
      EXPECT_LE(r.consumed, rest);
      if (r.consumed > rest) return out;
      switch (r.status) {
        case Status::kNeedMore:
          EXPECT_EQ(r.consumed, rest) << "kNeedMore must consume all input";
          break;
        case Status::kRequest:
          out.requests.push_back(copy_request(parser.request()));
          out.request_ends.push_back(pos + off + r.consumed);
          break;
        case Status::kExpectContinue:
          out.continue_points.push_back(pos + off + r.consumed);
          break;
        case Status::kError:
          out.error = true;
          out.error_status = parser.error().status;
          out.error_code = std::string(parser.error().code);
          return out;
        case Status::kHeaders:
        case Status::kBodyEnd:
          ADD_FAILURE() << "head pause is off here";
          return out;
      }
      off += r.consumed;
      idle_rounds = r.consumed == 0 ? idle_rounds + 1 : 0;
      if (idle_rounds > 2) {
        ADD_FAILURE() << "parser makes no progress at offset " << pos + off;
        return out;
      }
      if (r.status == Status::kNeedMore) break;
    }
    std::memset(buf.data(), '#', buf.size());
  }
  return out;
}

// Whole input at once, one byte per call, and two odd slice sizes.
constexpr size_t kSlices[] = {0, 1, 3, 7};

// Parses `input` with a fresh parser per slice pattern and expects exactly one request and
// nothing left over.
Parsed parse_one(std::string_view input, const Limits& limits, size_t slice) {
  HttpParser parser(limits);
  FeedResult r = feed(parser, input, slice);
  EXPECT_FALSE(r.error) << "status " << r.error_status << " code " << r.error_code;
  EXPECT_EQ(r.requests.size(), 1u);
  if (r.requests.size() != 1) return Parsed{};
  EXPECT_EQ(r.request_ends[0], input.size());
  return r.requests[0];
}

// Expects `input` to be rejected with `status` (and `code` when given) in every slice pattern,
// with no request produced before the error.
void expect_rejected(std::string_view input, int status, std::string_view code = {},
                     const Limits& limits = kDefaultLimits) {
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(limits);
    FeedResult r = feed(parser, input, slice);
    EXPECT_TRUE(r.error);
    EXPECT_EQ(r.error_status, status);
    if (!code.empty()) {
      EXPECT_EQ(r.error_code, code);
    }
    EXPECT_TRUE(r.requests.empty());
  }
}

std::string header_value(const Parsed& p, std::string_view name) {
  for (const auto& [n, v] : p.headers) {
    if (equals_ignore_case(n, name)) return v;
  }
  return "<absent>";
}

// ---------------------------------------------------------------------------------------------
// Well-formed requests

TEST(HttpParser, ParsesSimpleGet) {
  const std::string input =
      "GET /v1/items?limit=10&x=y HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one(input, kDefaultLimits, slice);
    EXPECT_EQ(p.method, "GET");
    EXPECT_EQ(p.target, "/v1/items?limit=10&x=y");
    EXPECT_EQ(p.path, "/v1/items");
    EXPECT_EQ(p.query, "limit=10&x=y");
    EXPECT_EQ(p.version_minor, 1);
    EXPECT_TRUE(p.keep_alive);
    EXPECT_FALSE(p.is_head);
    ASSERT_EQ(p.headers.size(), 2u);
    EXPECT_EQ(p.headers[0].first, "Host");
    EXPECT_EQ(p.headers[0].second, "example.com");
    EXPECT_EQ(p.headers[1].first, "Accept");
    EXPECT_EQ(p.headers[1].second, "*/*");
    EXPECT_EQ(p.body, "");
  }
}

TEST(HttpParser, TargetWithoutQueryHasEmptyQuery) {
  const Parsed p = parse_one("GET /plain HTTP/1.1\r\nHost: h\r\n\r\n", kDefaultLimits, 0);
  EXPECT_EQ(p.path, "/plain");
  EXPECT_EQ(p.query, "");
}

TEST(HttpParser, HeaderLookupIsCaseInsensitive) {
  const std::string input = "GET / HTTP/1.1\r\nHost: h\r\nX-Api-Key: secret\r\n\r\n";
  HttpParser parser(kDefaultLimits);
  std::string buf = input;
  ASSERT_EQ(parser.parse(buf).status, Status::kRequest);
  const HttpRequest& req = parser.request();
  bool found = false;
  EXPECT_EQ(req.header("x-api-key", &found), "secret");
  EXPECT_TRUE(found);
  EXPECT_EQ(req.header("X-API-KEY"), "secret");
  EXPECT_EQ(req.header("HOST"), "h");
  EXPECT_EQ(req.header("x-missing", &found), "");
  EXPECT_FALSE(found);
  // The name is handed out as sent.
  EXPECT_EQ(req.headers[1].name, "X-Api-Key");
}

// A reload (adopt_limits) while a request is held (a deferred or forwarded one keeps its
// HttpRequest): the request's headers stay where they are, even when header_count_max grew, and
// the next request on the connection goes by the new caps.
TEST(HttpParser, AdoptedLimitsKeepAHeldRequestsHeadersAndApplyToTheNextRequest) {
  Limits limits;
  limits.header_count_max = 2;
  HttpParser parser(limits);
  std::string first = "GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n";
  ASSERT_EQ(parser.parse(first).status, Status::kRequest);
  const HttpRequest& held = parser.request();
  limits.header_count_max = 1000;
  limits.body_bytes_max = 5;
  parser.adopt_limits(5);
  ASSERT_EQ(held.headers.size(), 2u);
  EXPECT_EQ(held.headers[1].name, "X-A");  // not moved by a reserve (ASan: no use after free)
  EXPECT_EQ(held.header("x-a"), "1");
  // Four headers (431 under the old cap of 2), a body over the new cap of 5: 413.
  std::string second =
      "POST /b HTTP/1.1\r\nHost: h\r\nX-1: 1\r\nX-2: 2\r\nContent-Length: 11\r\n\r\n"
      "hello world";
  ASSERT_EQ(parser.parse(second).status, Status::kError);
  EXPECT_EQ(parser.error().status, 413);
  EXPECT_EQ(parser.error().code, "body_too_large");
}

TEST(HttpParser, TrimsWhitespaceAroundHeaderValues) {
  const std::string input =
      "GET / HTTP/1.1\r\nHost: h\r\nX-A:   spaced value \t \r\nX-B:\tv\t\r\nX-Empty:\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one(input, kDefaultLimits, slice);
    EXPECT_EQ(header_value(p, "x-a"), "spaced value");
    EXPECT_EQ(header_value(p, "x-b"), "v");
    EXPECT_EQ(header_value(p, "x-empty"), "");
  }
}

TEST(HttpParser, RequestInOnePieceIsViewedInPlace) {
  std::string buf = "POST /p?q HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
  HttpParser parser(kDefaultLimits);
  ASSERT_EQ(parser.parse(buf).status, Status::kRequest);
  const HttpRequest& req = parser.request();
  const char* begin = buf.data();
  const char* end = buf.data() + buf.size();
  EXPECT_TRUE(req.method.data() >= begin && req.method.data() < end);
  EXPECT_TRUE(req.target.data() >= begin && req.target.data() < end);
  EXPECT_TRUE(req.body.data() >= begin && req.body.data() + req.body.size() <= end);
  EXPECT_EQ(req.body, "abc");
}

TEST(HttpParser, ReportsProgressStateWhileARequestArrives) {
  HttpParser parser(kDefaultLimits);
  EXPECT_FALSE(parser.request_in_progress());
  std::string part1 = "POST / HTTP/1.1\r\nHost: h\r\n";
  EXPECT_EQ(parser.parse(part1).status, Status::kNeedMore);
  EXPECT_TRUE(parser.request_in_progress());
  EXPECT_FALSE(parser.headers_complete());
  std::string part2 = "Content-Length: 4\r\n\r\nab";
  EXPECT_EQ(parser.parse(part2).status, Status::kNeedMore);
  EXPECT_TRUE(parser.request_in_progress());
  EXPECT_TRUE(parser.headers_complete());
  std::string part3 = "cd";
  ASSERT_EQ(parser.parse(part3).status, Status::kRequest);
  EXPECT_FALSE(parser.request_in_progress());
  EXPECT_EQ(parser.request().body, "abcd");
}

TEST(HttpParser, ParsesPipelinedRequestsOneAtATime) {
  const std::string first = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string second = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
  const std::string third = "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
  std::string buf = first + second + third;
  HttpParser parser(kDefaultLimits);

  HttpParser::Result r = parser.parse(buf);
  ASSERT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(r.consumed, first.size());
  EXPECT_EQ(parser.request().target, "/a");

  std::span<char> rest = std::span<char>(buf).subspan(r.consumed);
  r = parser.parse(rest);
  ASSERT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(r.consumed, second.size());
  EXPECT_EQ(parser.request().target, "/b");
  EXPECT_EQ(parser.request().body, "hi");

  rest = rest.subspan(r.consumed);
  r = parser.parse(rest);
  ASSERT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(r.consumed, third.size());
  EXPECT_EQ(parser.request().target, "/c");
  EXPECT_FALSE(parser.request().keep_alive);
}

TEST(HttpParser, PipelinedRequestsParseTheSameInEverySlicing) {
  const std::string first = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
  const std::string second =
      "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
  const std::string third = "GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string input = first + second + third;
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(kDefaultLimits);
    FeedResult r = feed(parser, input, slice);
    ASSERT_FALSE(r.error) << r.error_code;
    ASSERT_EQ(r.requests.size(), 3u);
    EXPECT_EQ(r.requests[0].target, "/a");
    EXPECT_EQ(r.requests[0].body, "hello");
    EXPECT_EQ(r.requests[1].target, "/b");
    EXPECT_EQ(r.requests[1].body, "abc");
    EXPECT_EQ(r.requests[2].target, "/c");
    EXPECT_EQ(r.requests[2].body, "");
    EXPECT_EQ(r.request_ends,
              (std::vector<size_t>{first.size(), first.size() + second.size(), input.size()}));
  }
}

TEST(HttpParser, ReadsContentLengthBody) {
  const std::string input =
      "POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one(input, kDefaultLimits, slice);
    EXPECT_EQ(p.method, "POST");
    EXPECT_EQ(p.body, "hello world");
    EXPECT_EQ(header_value(p, "content-length"), "11");
  }
}

TEST(HttpParser, ReadsBodyArrivingOverSeveralCalls) {
  HttpParser parser(kDefaultLimits);
  std::string headers = "PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n";
  std::string part1 = "0123";
  std::string part2 = "456";
  std::string part3 = "789";
  EXPECT_EQ(parser.parse(headers).status, Status::kNeedMore);
  EXPECT_EQ(parser.parse(part1).status, Status::kNeedMore);
  // Overwrite delivered buffers the way a reused receive buffer would be.
  headers.assign(headers.size(), 'Z');
  part1.assign(part1.size(), 'Z');
  EXPECT_EQ(parser.parse(part2).status, Status::kNeedMore);
  part2.assign(part2.size(), 'Z');
  const HttpParser::Result r = parser.parse(part3);
  ASSERT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(r.consumed, 3u);
  EXPECT_EQ(parser.request().method, "PUT");
  EXPECT_EQ(parser.request().target, "/x");
  EXPECT_EQ(parser.request().header("host"), "h");
  EXPECT_EQ(parser.request().body, "0123456789");
}

TEST(HttpParser, DechunksBodyIntoOneContiguousView) {
  const std::string input =
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one(input, kDefaultLimits, slice);
    EXPECT_EQ(p.body, "hello 0123456789");
  }
}

TEST(HttpParser, AcceptsChunkExtensions) {
  const std::string input =
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3;name=value\r\nabc\r\n0\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_EQ(parse_one(input, kDefaultLimits, slice).body, "abc");
  }
}

TEST(HttpParser, DropsChunkedTrailers) {
  const std::string input =
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one(input, kDefaultLimits, slice);
    EXPECT_EQ(p.body, "wikipedia");
    // Trailers are bounded and dropped, never merged into the header list.
    EXPECT_EQ(header_value(p, "x-checksum"), "<absent>");
    EXPECT_EQ(p.headers.size(), 2u);
  }
}

TEST(HttpParser, ChunkedRequestFollowedByPipelinedRequestKeepsBothIntact) {
  const std::string first =
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "2\r\nab\r\n2\r\ncd\r\n0\r\nT: v\r\n\r\n";
  const std::string second = "GET /next HTTP/1.1\r\nHost: h2\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(kDefaultLimits);
    FeedResult r = feed(parser, first + second, slice);
    ASSERT_EQ(r.requests.size(), 2u);
    EXPECT_EQ(r.requests[0].body, "abcd");
    EXPECT_EQ(r.requests[1].target, "/next");
    EXPECT_EQ(header_value(r.requests[1], "host"), "h2");
    EXPECT_EQ(r.request_ends[0], first.size());
  }
}

TEST(HttpParser, ExpectContinuePausesBeforeTheBody) {
  const std::string head =
      "POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
  HttpParser parser(kDefaultLimits);
  std::string buf = head;
  HttpParser::Result r = parser.parse(buf);
  ASSERT_EQ(r.status, Status::kExpectContinue);
  EXPECT_EQ(r.consumed, head.size());
  EXPECT_TRUE(parser.headers_complete());
  std::string body = "data";
  r = parser.parse(body);
  ASSERT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(r.consumed, 4u);
  EXPECT_EQ(parser.request().body, "data");
  EXPECT_EQ(parser.request().header("expect"), "100-continue");
}

TEST(HttpParser, ExpectContinueWithBodyInSameBufferStopsAtHeaderEnd) {
  const std::string head =
      "POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
  const std::string input = head + "data";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(kDefaultLimits);
    FeedResult r = feed(parser, input, slice);
    ASSERT_FALSE(r.error) << r.error_code;
    EXPECT_EQ(r.continue_points, std::vector<size_t>{head.size()});
    ASSERT_EQ(r.requests.size(), 1u);
    EXPECT_EQ(r.requests[0].body, "data");
  }
}

TEST(HttpParser, ExpectContinueWithoutBodyDoesNotPause) {
  std::string buf = "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n";
  HttpParser parser(kDefaultLimits);
  EXPECT_EQ(parser.parse(buf).status, Status::kRequest);
}

TEST(HttpParser, ExpectContinuePausesBeforeAChunkedBody) {
  const std::string head =
      "POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  const std::string input = head + "3\r\nabc\r\n0\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(kDefaultLimits);
    FeedResult r = feed(parser, input, slice);
    ASSERT_FALSE(r.error) << r.error_code;
    EXPECT_EQ(r.continue_points, std::vector<size_t>{head.size()});
    ASSERT_EQ(r.requests.size(), 1u);
    EXPECT_EQ(r.requests[0].body, "abc");
  }
}

TEST(HttpParser, OversizedBodyIs413WithoutAskingForIt) {
  // No kExpectContinue first: the client must not be invited to send a body we will refuse.
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(small_limits());
    FeedResult r = feed(
        parser, "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 33\r\n\r\n",
        slice);
    EXPECT_TRUE(r.error);
    EXPECT_EQ(r.error_status, 413);
    EXPECT_TRUE(r.continue_points.empty());
  }
}

TEST(HttpParser, UnknownExpectationIs417) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\nx", 417,
      "expectation_failed");
}

TEST(HttpParser, ParsesHeadRequest) {
  const std::string head = "HEAD /res HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string next = "GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(kDefaultLimits);
    FeedResult r = feed(parser, head + next, slice);
    ASSERT_EQ(r.requests.size(), 2u);
    EXPECT_EQ(r.requests[0].method, "HEAD");
    EXPECT_TRUE(r.requests[0].is_head);
    EXPECT_EQ(r.requests[0].body, "");
    EXPECT_EQ(r.request_ends[0], head.size());
    EXPECT_EQ(r.requests[1].target, "/after");
    EXPECT_FALSE(r.requests[1].is_head);
  }
}

TEST(HttpParser, AcceptsHttp10WithoutHost) {
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one("GET /old HTTP/1.0\r\n\r\n", kDefaultLimits, slice);
    EXPECT_EQ(p.version_minor, 0);
    EXPECT_EQ(p.target, "/old");
    EXPECT_TRUE(p.headers.empty());
  }
}

TEST(HttpParser, ConnectionCloseEndsKeepAlive) {
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_FALSE(
        parse_one("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", kDefaultLimits, slice)
            .keep_alive);
  }
}

TEST(HttpParser, Http10IsNotKeptAliveUnlessAsked) {
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_FALSE(parse_one("GET / HTTP/1.0\r\nHost: h\r\n\r\n", kDefaultLimits, slice).keep_alive);
    EXPECT_TRUE(parse_one("GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
                          kDefaultLimits, slice)
                    .keep_alive);
  }
}

// ---------------------------------------------------------------------------------------------
// Limits

TEST(HttpParser, RequestLineOverLimitIs414) {
  const std::string input = "GET /" + std::string(100, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n";
  expect_rejected(input, 414, "uri_too_long", small_limits());
}

TEST(HttpParser, RequestLineOverLimitIs414BeforeItEnds) {
  // The line never finishes: the parser must not buffer it without bound.
  HttpParser parser(small_limits());
  std::string buf = "GET /" + std::string(200, 'a');
  FeedResult r = feed(parser, buf, 1);
  EXPECT_TRUE(r.error);
  EXPECT_EQ(r.error_status, 414);
}

TEST(HttpParser, RequestLineAtLimitIsAccepted) {
  // "GET " + target + " HTTP/1.1" is exactly request_line_bytes_max (64) bytes.
  const std::string target = "/" + std::string(64 - 4 - 9 - 1, 'a');
  const std::string line = "GET " + target + " HTTP/1.1";
  ASSERT_EQ(line.size(), small_limits().request_line_bytes_max);
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_EQ(parse_one(line + "\r\nHost: h\r\n\r\n", small_limits(), slice).target, target);
  }
}

TEST(HttpParser, RequestLineOneByteOverLimitIs414) {
  // The target ends within the limit; only " HTTP/1.1" pushes the line one byte past it.
  const std::string target = "/" + std::string(64 - 4 - 9, 'a');
  const std::string line = "GET " + target + " HTTP/1.1";
  ASSERT_EQ(line.size(), small_limits().request_line_bytes_max + 1);
  expect_rejected(line + "\r\nHost: h\r\n\r\n", 414, "uri_too_long", small_limits());
}

// The verdict on a request must depend on its bytes, not on how TCP happened to cut them up.
TEST(HttpParser, HeaderSectionLimitDoesNotDependOnHowBytesArrive) {
  // Field lines "Host: h\r\n" + "X-Big: <n>\r\n" walk across header_bytes_max (256).
  for (size_t n = 230; n <= 245; ++n) {
    const std::string fields = "Host: h\r\nX-Big: " + std::string(n, 'v') + "\r\n";
    SCOPED_TRACE("header section of " + std::to_string(fields.size()) + " bytes");
    const std::string input = "GET / HTTP/1.1\r\n" + fields + "\r\n";
    HttpParser whole(small_limits());
    HttpParser bytewise(small_limits());
    const FeedResult a = feed(whole, input, 0);
    const FeedResult b = feed(bytewise, input, 1);
    EXPECT_EQ(a.error, b.error);
    EXPECT_EQ(a.requests.size(), b.requests.size());
  }
}

TEST(HttpParser, HeaderSectionOverLimitIs431) {
  const std::string input =
      "GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + std::string(300, 'v') + "\r\n\r\n";
  expect_rejected(input, 431, "header_too_large", small_limits());
}

TEST(HttpParser, HeaderSectionOverLimitIs431BeforeItEnds) {
  // A header line that never ends must not be buffered without bound.
  const std::string input = "GET / HTTP/1.1\r\nHost: h\r\n" + std::string(400, 'X');
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    HttpParser parser(small_limits());
    FeedResult r = feed(parser, input, slice);
    EXPECT_TRUE(r.error);
    EXPECT_EQ(r.error_status, 431);
  }
}

TEST(HttpParser, ManySmallHeadersOverByteLimitAre431) {
  // Under the count limit in fields but over the byte limit in total.
  std::string input = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 6; ++i)
    input += "X-" + std::to_string(i) + ": " + std::string(50, 'v') + "\r\n";
  input += "\r\n";
  expect_rejected(input, 431, "header_too_large", small_limits());
}

TEST(HttpParser, HeaderCountOverLimitIs431) {
  std::string input = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 8; ++i) input += "X-" + std::to_string(i) + ": v\r\n";  // 9 fields
  input += "\r\n";
  expect_rejected(input, 431, "too_many_headers", small_limits());
}

TEST(HttpParser, HeaderCountAtLimitIsAccepted) {
  std::string input = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 7; ++i) input += "X-" + std::to_string(i) + ": v\r\n";  // 8 fields
  input += "\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_EQ(parse_one(input, small_limits(), slice).headers.size(), 8u);
  }
}

TEST(HttpParser, ContentLengthOverLimitIs413BeforeTheBodyArrives) {
  // Only the headers are sent: the verdict must not wait for 33 body bytes.
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 33\r\n\r\n", 413, "body_too_large",
                  small_limits());
}

TEST(HttpParser, ContentLengthAtLimitIsAccepted) {
  const std::string body(32, 'b');
  const std::string input = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 32\r\n\r\n" + body;
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_EQ(parse_one(input, small_limits(), slice).body, body);
  }
}

TEST(HttpParser, ChunkedBodyOverLimitIs413) {
  const std::string input =
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "14\r\n" +
      std::string(20, 'a') + "\r\n14\r\n" + std::string(20, 'b') + "\r\n0\r\n\r\n";
  expect_rejected(input, 413, "body_too_large", small_limits());
}

TEST(HttpParser, ChunkedBodyAtLimitIsAccepted) {
  const std::string input =
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "10\r\n" +
      std::string(16, 'a') + "\r\n10\r\n" + std::string(16, 'b') + "\r\n0\r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    EXPECT_EQ(parse_one(input, small_limits(), slice).body,
              std::string(16, 'a') + std::string(16, 'b'));
  }
}

TEST(HttpParser, OversizedTrailersAre431) {
  const std::string input =
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "1\r\na\r\n0\r\nX-T: " +
      std::string(300, 't') + "\r\n\r\n";
  expect_rejected(input, 431, "header_too_large", small_limits());
}

// llhttp reads chunk extensions without a bound and reports them to no limit: 64 KiB of them
// around a 1-byte body passed a 32-byte body limit. All of one body's extensions together are
// bounded like its trailers (header_bytes_max, 256 here).
TEST(HttpParser, ChunkExtensionsOverTheHeaderLimitAre431) {
  const std::string head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  expect_rejected(head + "1;x=" + std::string(1 << 16, 'e') + "\r\na\r\n0\r\n\r\n", 431,
                  "header_too_large", small_limits());
  // Many small ones add up; the last chunk's count too.
  std::string many = head;
  for (int i = 0; i < 20; ++i) many += "1;name=" + std::string(10, 'v') + "\r\na\r\n";
  expect_rejected(many + "0\r\n\r\n", 431, "header_too_large", small_limits());
  expect_rejected(head + "0;" + std::string(300, 'n') + "\r\n\r\n", 431, "header_too_large",
                  small_limits());
  // Up to the limit they are accepted (and dropped) as before, quoted values included.
  const Parsed p = parse_one(head + "1;a=\"q;r\"\r\nb\r\n1;" + std::string(200, 'n') +
                                 "\r\nc\r\n0\r\n\r\n",
                             small_limits(), 0);
  EXPECT_EQ(p.body, "bc");
}

// ---------------------------------------------------------------------------------------------
// Malformed requests

TEST(HttpParser, RejectsContentLengthWithTransferEncoding) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
      "0\r\n\r\n",
      400);
}

TEST(HttpParser, RejectsTwoDifferentContentLengths) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400);
}

TEST(HttpParser, RejectsSignedContentLength) {
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400);
}

TEST(HttpParser, RejectsObsFoldHidingContentLength) {
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n Content-Length: 5\r\n\r\nhello", 400);
}

TEST(HttpParser, RejectsObsFoldWithTab) {
  expect_rejected("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", 400);
}

TEST(HttpParser, RejectsObsFoldArrivingInTheNextReceive) {
  // The fold's continuation line starts a new receive: the folded value must still be refused.
  HttpParser parser(kDefaultLimits);
  std::string first = "POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n";
  std::string second = " Content-Length: 5\r\n\r\nhello";
  ASSERT_EQ(parser.parse(first).status, Status::kNeedMore);
  const HttpParser::Result r = parser.parse(second);
  EXPECT_EQ(r.status, Status::kError);
  if (r.status == Status::kRequest) {
    ADD_FAILURE() << "accepted with X = '" << parser.request().header("x") << "'";
  }
}

// llhttp drops a fold that comes before any value byte and starts the value on the
// continuation line: without a check X would be "Content-Length: 5", the request would have no
// body, and "hello" would be parsed as the start of a second request. Every slicing, one byte
// per call included (the fold then lies in earlier receives than the value).
TEST(HttpParser, RejectsObsFoldBeforeTheFirstValueByte) {
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nX:\r\n Content-Length: 5\r\n\r\nhello", 400);
  expect_rejected("GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\tb\r\n\r\n", 400);
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
                  400);
  expect_rejected("GET / HTTP/1.1\r\nHost:\r\n\th\r\n\r\n", 400);
}

TEST(HttpParser, EmptyHeaderValuesAndValuesAfterWhitespaceAreStillAccepted) {
  const std::string input = "GET / HTTP/1.1\r\nHost: h\r\nX:\r\nY:   \t y\r\nZ: \r\n\r\n";
  for (size_t slice : kSlices) {
    SCOPED_TRACE("slice " + std::to_string(slice));
    const Parsed p = parse_one(input, kDefaultLimits, slice);
    EXPECT_EQ(header_value(p, "x"), "");
    EXPECT_EQ(header_value(p, "y"), "y");
    EXPECT_EQ(header_value(p, "z"), "");
  }
}

TEST(HttpParser, RejectsBareLfLineEndings) { expect_rejected("GET / HTTP/1.1\nHost: h\n\n", 400); }

TEST(HttpParser, RejectsBareLfInsideHeaderSection) {
  expect_rejected("GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400);
}

TEST(HttpParser, RejectsNulInHeaderValue) {
  expect_rejected("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"s, 400);
}

TEST(HttpParser, RejectsControlCharacterInHeaderValue) {
  expect_rejected("GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n"s, 400);
}

TEST(HttpParser, RejectsSpaceBeforeColon) {
  expect_rejected("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400);
}

TEST(HttpParser, RejectsEmptyHeaderName) {
  expect_rejected("GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n", 400);
}

TEST(HttpParser, RejectsHttp11WithoutHost) {
  expect_rejected("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
}

TEST(HttpParser, RejectsTwoHostHeaders) {
  expect_rejected("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
}

TEST(HttpParser, RejectsTwoHostHeadersInHttp10) {
  expect_rejected("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
}

// RFC 9112 3.2: a Host with an invalid field value is a 400. keygate passes Host upstream as
// sent, and an upstream may build absolute URLs from it: "evil.example/x?", "a@b", a space or
// a quote must not get there.
TEST(HttpParser, RejectsAHostThatIsNotHostAndPort) {
  for (const char* host : {"a b", "a@b", "evil.example/x", "a?b", "a#b", "a\\b", "\"a\"", "a:8o",
                           "a:80:90", "[::1", "[]", "[::1]x", "[::1]:8o", "a%4", "a%zz", "<a>"}) {
    SCOPED_TRACE(host);
    expect_rejected("GET / HTTP/1.1\r\nHost: "s + host + "\r\n\r\n", 400, "bad_request");
    expect_rejected("GET / HTTP/1.0\r\nHost: "s + host + "\r\n\r\n", 400, "bad_request");
  }
}

TEST(HttpParser, AcceptsEveryHostTheGrammarAllows) {
  for (const char* host :
       {"", "h", "example.com", "example.com:443", "a:", "127.0.0.1:9001", "[::1]", "[::1]:8080",
        "[v1.fe80::a+en1]", "[fe80::1%25en0]", "xn--bcher-kva.example", "a%41b",
        "a-b_c~d.e!$&'()*+,;=", "Api.Example:8080"}) {
    SCOPED_TRACE(host);
    const Parsed p = parse_one("GET / HTTP/1.1\r\nHost: "s + host + " \r\n\r\n", kDefaultLimits, 0);
    EXPECT_EQ(header_value(p, "host"), host);
  }
}

TEST(HttpParser, RejectsHttp2RequestLineWith505) {
  expect_rejected("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "http_version_not_supported");
}

// An HTTP/0.9 request line has no header section after it: the answer cannot wait for one.
TEST(HttpParser, RejectsHttp09RequestLineAtItsEndWith505) {
  expect_rejected("GET /\r\n", 505, "http_version_not_supported");
  expect_rejected("GET /index.html\r\n\r\n", 505, "http_version_not_supported");
  // Not before the line ends: "GET /" may still become "GET / HTTP/1.1".
  HttpParser parser(kDefaultLimits);
  std::string partial = "GET /";
  EXPECT_EQ(parser.parse(partial).status, Status::kNeedMore);
}

TEST(HttpParser, RejectsHttp12With505) {
  expect_rejected("GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505, "http_version_not_supported");
}

// llhttp 8 parses these protocol names like "HTTP/" and reports only the version digits.
TEST(HttpParser, RejectsRtspAndIceRequestLines) {
  expect_rejected("GET /healthz RTSP/1.0\r\n\r\n", 400, "bad_request");
  expect_rejected("GET /healthz RTSP/1.1\r\nHost: h\r\n\r\n", 400, "bad_request");
  expect_rejected("SOURCE /healthz ICE/1.0\r\n\r\n", 400, "bad_request");
}

TEST(HttpParser, RejectsTransferEncodingNotEndingInChunked) {
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
                  400);
}

// RFC 9112 6.1: a transfer coding keygate does not implement is 501 (it was dropped with the
// header while the body stayed encoded), in one field or across several.
TEST(HttpParser, RejectsTransferCodingsOtherThanChunkedWith501) {
  expect_rejected("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                  501, "not_implemented");
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
      "\r\n0\r\n\r\n",
      501, "not_implemented");
}

TEST(HttpParser, RejectsChunkedListedTwiceWith400) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
      400, "bad_request");
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: Chunked\r\n"
      "\r\n0\r\n\r\n",
      400, "bad_request");
}

TEST(HttpParser, RejectsTransferEncodingInHttp10) {
  expect_rejected("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 400);
}

TEST(HttpParser, RejectsHexPrefixedChunkSize) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
      400);
}

TEST(HttpParser, RejectsMissingCrlfAfterChunkData) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
      400);
}

TEST(HttpParser, RejectsConnectWith405) {
  expect_rejected("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405,
                  "method_not_allowed");
}

// RFC 9112 3.2.2: absolute-form is accepted; everything after the parser sees the origin-form.
TEST(HttpParser, AnAbsoluteFormTargetBecomesItsOriginForm) {
  for (const std::string target : {"http://api.example/v1/items?limit=10", "HTTPS://api.example/v1/items?limit=10"}) {
    const std::string input =
        "GET " + target + " HTTP/1.1\r\nHost: API.example\r\nAccept: */*\r\n\r\n";
    for (size_t slice : kSlices) {
      SCOPED_TRACE(target + ", slice " + std::to_string(slice));
      const Parsed p = parse_one(input, kDefaultLimits, slice);
      EXPECT_EQ(p.target, "/v1/items?limit=10");
      EXPECT_EQ(p.path, "/v1/items");
      EXPECT_EQ(p.query, "limit=10");
    }
  }
  // HTTP/1.0 without a Host: the authority alone.
  const Parsed p = parse_one("GET http://h:8080/a HTTP/1.0\r\n\r\n", kDefaultLimits, 0);
  EXPECT_EQ(p.target, "/a");
}

// A Host naming another host than the target's authority, an authority that is no host, and
// no path are 400; another scheme is left to the path checks after the parser.
TEST(HttpParser, AnAbsoluteFormTargetWithAnotherHostOrNoPathIs400) {
  expect_rejected("GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", 400);
  expect_rejected("GET http://a.example:81/x HTTP/1.1\r\nHost: a.example\r\n\r\n", 400);
  expect_rejected("GET http://u@a.example/x HTTP/1.1\r\nHost: u@a.example\r\n\r\n", 400);
  expect_rejected("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  expect_rejected("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  expect_rejected("GET http://h?key=v HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  const Parsed p = parse_one("GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", kDefaultLimits, 0);
  EXPECT_EQ(p.target, "ftp://h/x");
}

// TRACE would have the upstream echo the key header back in its response body.
TEST(HttpParser, RejectsTraceWith405) {
  expect_rejected("TRACE /orders HTTP/1.1\r\nHost: h\r\nX-ApiKey: k\r\n\r\n", 405,
                  "method_not_allowed");
  expect_rejected("TRACE / HTTP/1.0\r\n\r\n", 405, "method_not_allowed");
}

TEST(HttpParser, RejectsUpgradeHeader) {
  expect_rejected(
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400,
      "upgrade_not_supported");
}

TEST(HttpParser, RejectsUpgradeHeaderWithoutConnectionUpgrade) {
  expect_rejected("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n", 400,
                  "upgrade_not_supported");
}

TEST(HttpParser, RejectsGarbageMethod) {
  expect_rejected("FOO@ / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(HttpParser, RejectsRepeatedExpect) {
  expect_rejected(
      "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n"
      "Content-Length: 1\r\n\r\nx",
      400);
}

TEST(HttpParser, ErrorMessageIsJsonSafe) {
  // llhttp's own reason text is copied into the error; it must never carry quotes, backslashes
  // or control characters into the JSON error body.
  HttpParser parser(kDefaultLimits);
  std::string buf = "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n";
  ASSERT_EQ(parser.parse(buf).status, Status::kError);
  EXPECT_FALSE(parser.error().message.empty());
  for (char c : parser.error().message) {
    EXPECT_NE(c, '"');
    EXPECT_NE(c, '\\');
    EXPECT_GE(static_cast<unsigned char>(c), 0x20);
  }
}

TEST(HttpParser, RefusesInputAfterAnError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        HttpParser parser(kDefaultLimits);
        std::string bad = "GET / HTTP/1.1\nHost: h\n\n";
        (void)parser.parse(bad);
        std::string good = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        (void)parser.parse(good);
      },
      "assertion failed");
}

// ---------------------------------------------------------------------------------------------
// Deferred requests

TEST(HttpParser, StabilizedRequestOutlivesTheReceiveBuffer) {
  const std::string first =
      "POST /defer?x=1 HTTP/1.1\r\nHost: h\r\nX-Api-Key: k1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  const std::string second = "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  std::string buf = first + second;
  HttpParser parser(kDefaultLimits);
  const HttpParser::Result r = parser.parse(buf);
  ASSERT_EQ(r.status, Status::kRequest);
  parser.stabilize();
  // The connection keeps the unparsed rest, then reuses its receive buffer.
  std::string rest = buf.substr(r.consumed);
  buf.assign(buf.size(), '#');
  const HttpRequest& req = parser.request();
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.target, "/defer?x=1");
  EXPECT_EQ(req.path, "/defer");
  EXPECT_EQ(req.query, "x=1");
  EXPECT_EQ(req.header("x-api-key"), "k1");
  EXPECT_EQ(req.body, "abcde");
  // The next request still parses normally from the saved rest.
  ASSERT_EQ(parser.parse(rest).status, Status::kRequest);
  EXPECT_EQ(parser.request().target, "/next");
}

TEST(HttpParser, StabilizeKeepsAnAssembledRequestIntact) {
  HttpParser parser(kDefaultLimits);
  std::string part1 = "PUT /p HTTP/1.1\r\nHost: h\r\nContent-Len";
  std::string part2 = "gth: 3\r\n\r\nxyz";
  ASSERT_EQ(parser.parse(part1).status, Status::kNeedMore);
  ASSERT_EQ(parser.parse(part2).status, Status::kRequest);
  parser.stabilize();
  part1.assign(part1.size(), '#');
  part2.assign(part2.size(), '#');
  EXPECT_EQ(parser.request().target, "/p");
  EXPECT_EQ(parser.request().header("content-length"), "3");
  EXPECT_EQ(parser.request().body, "xyz");
}

TEST(HttpParser, StabilizedRequestHasNoBodyPadding) {
  std::string buf = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
  HttpParser parser(kDefaultLimits);
  ASSERT_EQ(parser.parse(buf, 64).status, Status::kRequest);
  EXPECT_EQ(parser.request().body_readable_padding, 64u);
  parser.stabilize();
  EXPECT_EQ(parser.request().body_readable_padding, 0u);
  EXPECT_EQ(parser.request().body, "hi");
}

// ---------------------------------------------------------------------------------------------
// Body padding (bytes readable past the body, for parsers that read ahead)

TEST(HttpParser, BodyPaddingCountsInputAfterTheBodyAndReceiveSlack) {
  const std::string first = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
  const std::string second = "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  std::string buf = first + second;
  HttpParser parser(kDefaultLimits);
  const HttpParser::Result r = parser.parse(buf, 100);
  ASSERT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(parser.request().body, "abc");
  // Everything after "abc" in the buffer is readable, plus the 100 bytes of slack.
  EXPECT_EQ(parser.request().body_readable_padding, second.size() + 100);
}

TEST(HttpParser, BodyPaddingOfDechunkedBodyReachesTheInputEnd) {
  std::string buf =
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
  HttpParser parser(kDefaultLimits);
  ASSERT_EQ(parser.parse(buf, 8).status, Status::kRequest);
  const HttpRequest& req = parser.request();
  EXPECT_EQ(req.body, "abcd");
  EXPECT_EQ(req.body.data() + req.body.size() + req.body_readable_padding,
            buf.data() + buf.size() + 8);
}

TEST(HttpParser, AssembledBodyHasNoPadding) {
  HttpParser parser(kDefaultLimits);
  std::string head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n";
  std::string body = "abc";
  ASSERT_EQ(parser.parse(head, 64).status, Status::kNeedMore);
  ASSERT_EQ(parser.parse(body, 64).status, Status::kRequest);
  EXPECT_EQ(parser.request().body, "abc");
  EXPECT_EQ(parser.request().body_readable_padding, 0u);
}

// ---------------------------------------------------------------------------------------------
// Reuse

// A large assembled request does not leave megabytes with the (pooled) parser: the next request
// starts without its capacity; a small one keeps it (no allocation per request).
TEST(HttpParser, ALargeAssembledRequestsBufferIsReleasedSmallOnesAreKept) {
  HttpParser parser(kDefaultLimits);
  const std::string body(900 * 1024, 'x');  // under the default 1 MiB body limit
  std::string head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n";
  std::string rest = body;
  ASSERT_EQ(parser.parse(head).status, Status::kNeedMore);
  ASSERT_EQ(parser.parse(rest).status, Status::kRequest);
  EXPECT_EQ(parser.request().body.size(), body.size());
  EXPECT_GE(parser.assembly_capacity(), body.size());
  std::string next = "GET /next HTTP/1.1\r\nHost: h\r\n";
  ASSERT_EQ(parser.parse(next).status, Status::kNeedMore);
  EXPECT_LT(parser.assembly_capacity(), 64u * 1024);

  std::string end = "\r\n";
  ASSERT_EQ(parser.parse(end).status, Status::kRequest);
  const size_t small = parser.assembly_capacity();
  EXPECT_GT(small, 0u);
  std::string again = "GET /again HTTP/1.1\r\nHost: h\r\n";
  ASSERT_EQ(parser.parse(again).status, Status::kNeedMore);
  EXPECT_EQ(parser.assembly_capacity(), small);
}

// A connection released right after a large request (no next request to release it) gives the
// buffer back through trim(), and the parser serves the next connection after reset().
TEST(HttpParser, TrimGivesBackALargeBufferAtOnce) {
  HttpParser parser(kDefaultLimits);
  std::string head =
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + std::to_string(900 * 1024) + "\r\n\r\n";
  std::string body(900 * 1024, 'y');
  ASSERT_EQ(parser.parse(head).status, Status::kNeedMore);
  ASSERT_EQ(parser.parse(body).status, Status::kRequest);
  ASSERT_GE(parser.assembly_capacity(), body.size());
  parser.trim();
  EXPECT_LT(parser.assembly_capacity(), 64u * 1024);
  parser.reset();
  FeedResult r = feed(parser, "GET /next HTTP/1.1\r\nHost: h\r\n\r\n", 0);
  EXPECT_FALSE(r.error);
  ASSERT_EQ(r.requests.size(), 1u);
  EXPECT_EQ(r.requests[0].target, "/next");
}

TEST(HttpParser, ResetMakesParserReusableAfterAnError) {
  HttpParser parser(kDefaultLimits);
  std::string bad = "GET / HTTP/2.0\r\nHost: h\r\n\r\n";
  ASSERT_EQ(parser.parse(bad).status, Status::kError);
  EXPECT_EQ(parser.error().status, 505);
  parser.reset();
  FeedResult r = feed(parser, "GET /again HTTP/1.1\r\nHost: h\r\n\r\n", 0);
  EXPECT_FALSE(r.error);
  ASSERT_EQ(r.requests.size(), 1u);
  EXPECT_EQ(r.requests[0].target, "/again");
}

TEST(HttpParser, ResetDiscardsAPartialRequest) {
  HttpParser parser(kDefaultLimits);
  std::string partial = "POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc";
  ASSERT_EQ(parser.parse(partial).status, Status::kNeedMore);
  ASSERT_TRUE(parser.request_in_progress());
  parser.reset();
  EXPECT_FALSE(parser.request_in_progress());
  EXPECT_FALSE(parser.headers_complete());
  FeedResult r = feed(parser, "GET /second HTTP/1.1\r\nHost: h\r\n\r\n", 1);
  EXPECT_FALSE(r.error);
  ASSERT_EQ(r.requests.size(), 1u);
  EXPECT_EQ(r.requests[0].target, "/second");
  EXPECT_EQ(r.requests[0].body, "");
}

TEST(HttpParser, ResetClearsAPendingExpectContinue) {
  HttpParser parser(kDefaultLimits);
  std::string head =
      "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  ASSERT_EQ(parser.parse(head).status, Status::kExpectContinue);
  parser.reset();
  FeedResult r = feed(parser, "GET /fresh HTTP/1.1\r\nHost: h\r\n\r\n", 0);
  EXPECT_FALSE(r.error) << r.error_code;
  ASSERT_EQ(r.requests.size(), 1u);
  EXPECT_EQ(r.requests[0].target, "/fresh");
}


// --- Head pause and streamed bodies (the reverse proxy's path) -----------------------------

// Feeds `wire` in pieces of `step` bytes to a parser with head pause on. At kHeaders it calls
// `decide` (which calls read_body() or stream_body()); returns the statuses seen in order.
// Feeds `wire` in receives of `step` bytes to a parser with head pause on, each receive passed
// again from where the parser stopped (as the worker does: the rest of a receive is the same
// buffer). At kHeaders it calls `decide` (read_body() or stream_body()); `done` sees every
// complete request. Returns the statuses seen in order.
std::vector<Status> feed_paused(HttpParser& parser, const std::string& wire, size_t step,
                                const std::function<void()>& decide,
                                const std::function<void()>& done = [] {}) {
  std::vector<Status> seen;
  for (size_t pos = 0; pos < wire.size(); pos += step) {
    std::string piece = wire.substr(pos, step);
    size_t off = 0;
    while (off < piece.size()) {
      const HttpParser::Result r =
          parser.parse(std::span<char>(piece.data() + off, piece.size() - off));
      seen.push_back(r.status);
      if (r.status == Status::kError) return seen;
      if (r.status == Status::kHeaders) decide();
      if (r.status == Status::kRequest) done();
      off += r.consumed;
      if (r.status == Status::kNeedMore) break;
    }
  }
  return seen;
}

TEST(HttpParserStreaming, HeadPauseThenBufferedBodyInEverySlicing) {
  const std::string wire =
      "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  for (size_t step = 1; step <= wire.size(); ++step) {
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::vector<std::string> bodies;
    std::vector<std::string> targets;
    bool decided = false;
    const auto seen = feed_paused(
        parser, wire, step,
        [&] {
          EXPECT_EQ(parser.request().target, "/p") << "step " << step;
          EXPECT_TRUE(parser.request().body.empty());
          ASSERT_TRUE(parser.read_body());
          decided = true;
        },
        [&] {
          targets.emplace_back(parser.request().target);
          bodies.emplace_back(parser.request().body);
        });
    ASSERT_FALSE(seen.empty());
    EXPECT_NE(seen.back(), Status::kError) << "step " << step;
    EXPECT_TRUE(decided) << "step " << step;
    ASSERT_EQ(targets.size(), 2u) << "step " << step;
    EXPECT_EQ(targets[0], "/p");
    EXPECT_EQ(bodies[0], "hello world") << "step " << step;
    EXPECT_EQ(targets[1], "/next");  // a request without a body comes whole
  }
}

// read_body() with a keep bound keeps the body's first bytes and drops the rest as it is read
// (Content-Length and chunked, in every slicing): the request says how much went, the body
// limit still counts every byte, and the next request parses as usual.
TEST(HttpParserStreaming, ABodyKeptOnlyInPartDropsTheRestInEverySlicing) {
  const std::string next = "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string wires[] = {
      "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world" + next,
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nhel\r\n8\r\nlo world\r\n0\r\n\r\n" + next,
  };
  for (const std::string& wire : wires) {
    for (uint64_t keep : {uint64_t{0}, uint64_t{4}, uint64_t{11}, uint64_t{64}}) {
      for (size_t step = 1; step <= wire.size(); ++step) {
        HttpParser parser(kDefaultLimits);
        parser.set_head_pause(true);
        std::vector<std::string> bodies;
        std::vector<uint64_t> dropped;
        const auto seen = feed_paused(
            parser, wire, step, [&] { ASSERT_TRUE(parser.read_body(0, keep)); },
            [&] {
              bodies.emplace_back(parser.request().body);
              dropped.push_back(parser.request().body_bytes_dropped);
            });
        ASSERT_FALSE(seen.empty());
        EXPECT_NE(seen.back(), Status::kError) << "step " << step;
        ASSERT_EQ(bodies.size(), 2u) << "keep " << keep << " step " << step;
        const size_t kept = std::min<size_t>(keep, 11);
        EXPECT_EQ(bodies[0], std::string("hello world").substr(0, kept)) << "step " << step;
        EXPECT_EQ(dropped[0], 11 - kept);
        EXPECT_EQ(bodies[1], "");
        EXPECT_EQ(dropped[1], 0u);
        // What the parser holds is the head and the kept prefix (with room for one receive),
        // not the dropped rest.
        EXPECT_LE(parser.assembly_capacity(), 2 * wire.size() + 16 * 1024);
      }
    }
  }
  // The body limit counts dropped bytes too: 413 for a declared length, and mid-body for chunks.
  Limits small = kDefaultLimits;
  small.body_bytes_max = 8;
  {
    HttpParser parser(small);
    parser.set_head_pause(true);
    std::string wire = wires[0];
    const HttpParser::Result r = parser.parse(std::span<char>(wire.data(), wire.size()));
    ASSERT_EQ(r.status, Status::kHeaders);
    EXPECT_FALSE(parser.read_body(0, 0));
    EXPECT_EQ(parser.error().status, 413);
  }
  {
    HttpParser parser(small);
    parser.set_head_pause(true);
    std::vector<Status> seen = feed_paused(parser, wires[1], wires[1].size(),
                                           [&] { ASSERT_TRUE(parser.read_body(0, 0)); });
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back(), Status::kError);
    EXPECT_EQ(parser.error().status, 413);
  }
}

// A connection keeps no more assembly capacity between requests than a head may need, so a
// large body that spanned receives does not stay behind in memory.
TEST(HttpParserStreaming, ALargeAssembledBodyLeavesNoCapacityBehind) {
  HttpParser parser(kDefaultLimits);
  parser.set_head_pause(true);
  const std::string body(200 * 1024, 'b');
  const std::string wire = "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n" + body +
                           "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t requests = 0;
  feed_paused(parser, wire, 16 * 1024, [&] { ASSERT_TRUE(parser.read_body()); },
              [&] { ++requests; });
  EXPECT_EQ(requests, 2u);
  EXPECT_LE(parser.assembly_capacity(),
            2 * (size_t{kDefaultLimits.request_line_bytes_max} + kDefaultLimits.header_bytes_max));
}

// A decision deferred at the head (a key fetched from the store): stabilize_head() copies the
// head out of the receive buffer, which is then reused, and the rest of the input is passed
// later from elsewhere (the worker's pending buffer). The head stays intact and the body is
// read, buffered or streamed, from where the parser stopped.
TEST(HttpParserStreaming, AHeadStabilizedAtThePauseOutlivesItsReceiveBuffer) {
  const std::string wire =
      "POST /p?x=1 HTTP/1.1\r\nHost: h\r\nX-Api: v\r\nContent-Length: 11\r\n\r\nhello world"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  for (const bool stream : {false, true}) {
    for (size_t step = 1; step <= wire.size(); ++step) {
      HttpParser parser(kDefaultLimits);
      parser.set_head_pause(true);
      std::string sink;
      std::vector<std::string> targets;
      std::vector<std::string> bodies;
      std::vector<std::string> pieces;
      for (size_t pos = 0; pos < wire.size(); pos += step) pieces.push_back(wire.substr(pos, step));
      for (size_t p = 0; p < pieces.size(); ++p) {
        size_t off = 0;
        while (off < pieces[p].size()) {
          const HttpParser::Result r =
              parser.parse(std::span<char>(pieces[p].data() + off, pieces[p].size() - off));
          ASSERT_NE(r.status, Status::kError) << "step " << step;
          off += r.consumed;
          if (r.status == Status::kHeaders) {
            parser.stabilize_head();
            // The rest of this receive moves away; the receive buffers are reused.
            const std::string rest = pieces[p].substr(off);
            for (size_t q = 0; q <= p; ++q) std::fill(pieces[q].begin(), pieces[q].end(), '#');
            pieces[p] = rest;
            off = 0;
            const HttpRequest& head = parser.request();
            EXPECT_EQ(head.method, "POST") << "step " << step;
            EXPECT_EQ(head.target, "/p?x=1") << "step " << step;
            EXPECT_EQ(head.header("x-api"), "v") << "step " << step;
            EXPECT_EQ(head.header("host"), "h") << "step " << step;
            if (stream) {
              ASSERT_TRUE(parser.stream_body(1000, &sink));
            } else {
              ASSERT_TRUE(parser.read_body());
            }
          } else if (r.status == Status::kRequest) {
            targets.emplace_back(parser.request().target);
            bodies.emplace_back(parser.request().body);
          } else if (r.status == Status::kBodyEnd) {
            targets.emplace_back("(streamed)");
            bodies.push_back(sink);
            parser.reset();  // as the worker does after a forwarded request
            parser.set_head_pause(true);
          } else if (r.status == Status::kNeedMore) {
            break;
          }
        }
      }
      ASSERT_EQ(targets.size(), 2u) << "step " << step << (stream ? " streamed" : " buffered");
      EXPECT_EQ(targets[0], stream ? "(streamed)" : "/p?x=1");
      EXPECT_EQ(bodies[0], "hello world") << "step " << step;
      EXPECT_EQ(targets[1], "/next") << "step " << step;
    }
  }
}

TEST(HttpParserStreaming, StreamsContentLengthBodyToTheSinkInEverySlicing) {
  const std::string body = "0123456789abcdefghij";
  const std::string wire = "PUT /u HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n" + body;
  for (size_t step = 1; step <= wire.size(); ++step) {
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::string sink;
    const auto seen = feed_paused(parser, wire, step, [&] {
      EXPECT_FALSE(parser.streamed_chunked());
      EXPECT_EQ(parser.content_length(), 20u);
      ASSERT_TRUE(parser.stream_body(1000, &sink));
    });
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back(), Status::kBodyEnd) << "step " << step;
    EXPECT_EQ(sink, body) << "step " << step;
    EXPECT_EQ(parser.streamed_bytes(), 20u);
    EXPECT_EQ(parser.request_bytes(), wire.size());
  }
}

TEST(HttpParserStreaming, ReframesChunkedBodiesAndCapturesTheirStart) {
  const std::string wire =
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n";
  for (size_t step = 1; step <= wire.size(); ++step) {
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::string sink;
    std::string capture;
    const auto seen = feed_paused(parser, wire, step, [&] {
      EXPECT_TRUE(parser.streamed_chunked());
      parser.set_body_capture(&capture, 7);
      ASSERT_TRUE(parser.stream_body(1000, &sink));
    });
    EXPECT_EQ(seen.back(), Status::kBodyEnd) << "step " << step;
    // Whatever the pieces, the re-framed chunks carry exactly the body and end with 0-chunk.
    std::string decoded;
    std::string_view rest = sink;
    bool ended = false;
    while (!rest.empty()) {
      const size_t eol = rest.find("\r\n");
      ASSERT_NE(eol, std::string_view::npos);
      const size_t n = std::stoul(std::string(rest.substr(0, eol)), nullptr, 16);
      rest.remove_prefix(eol + 2);
      if (n == 0) {
        EXPECT_EQ(rest, "\r\n");
        ended = true;
        break;
      }
      decoded.append(rest.substr(0, n));
      EXPECT_EQ(rest.substr(n, 2), "\r\n");
      rest.remove_prefix(n + 2);
    }
    EXPECT_TRUE(ended) << "step " << step;
    EXPECT_EQ(decoded, "hello world") << "step " << step;
    EXPECT_EQ(capture, "hello w");
    EXPECT_FALSE(parser.body_captured_all());
  }
}

TEST(HttpParserStreaming, StreamLimitAppliesToDeclaredAndChunkedBodies) {
  {
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::string wire = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n";
    const HttpParser::Result r = parser.parse(std::span<char>(wire.data(), wire.size()));
    ASSERT_EQ(r.status, Status::kHeaders);
    std::string sink;
    EXPECT_FALSE(parser.stream_body(1000, &sink));
    EXPECT_EQ(parser.error().status, 413);
  }
  {
    // Larger than the connection's buffered limit is fine when streaming...
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::string wire = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n";
    ASSERT_EQ(parser.parse(std::span<char>(wire.data(), wire.size())).status, Status::kHeaders);
    std::string sink;
    EXPECT_TRUE(parser.stream_body(uint64_t{1} << 30, &sink));
  }
  {
    // ...but not when buffering: read_body() applies body_bytes_max.
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::string wire = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n";
    ASSERT_EQ(parser.parse(std::span<char>(wire.data(), wire.size())).status, Status::kHeaders);
    EXPECT_FALSE(parser.read_body());
    EXPECT_EQ(parser.error().status, 413);
  }
  {
    HttpParser parser(kDefaultLimits);
    parser.set_head_pause(true);
    std::string wire = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    ASSERT_EQ(parser.parse(std::span<char>(wire.data(), wire.size())).status, Status::kHeaders);
    std::string sink;
    ASSERT_TRUE(parser.stream_body(8, &sink));
    std::string chunks = "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
    EXPECT_EQ(parser.parse(std::span<char>(chunks.data(), chunks.size())).status, Status::kError);
    EXPECT_EQ(parser.error().status, 413);
  }
}

TEST(HttpParserStreaming, ExpectContinueIsReportedAtTheHead) {
  HttpParser parser(kDefaultLimits);
  parser.set_head_pause(true);
  std::string wire =
      "POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  ASSERT_EQ(parser.parse(std::span<char>(wire.data(), wire.size())).status, Status::kHeaders);
  EXPECT_TRUE(parser.expects_continue());
  ASSERT_TRUE(parser.read_body());
  std::string body = "abc";
  const HttpParser::Result r = parser.parse(std::span<char>(body.data(), body.size()));
  EXPECT_EQ(r.status, Status::kRequest);
  EXPECT_EQ(parser.request().body, "abc");
}

}  // namespace
}  // namespace keygate::net
