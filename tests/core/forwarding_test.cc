#include "core/forwarding.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/handler.h"
#include "core/key_extractor.h"
#include "core/http_request.h"

namespace keygate {
namespace {

std::string strip(std::string_view target) {
  std::string out;
  append_target_without_key(target, out);
  return out;
}

// A request under construction; owns what the HttpRequest views point into.
struct TestRequest {
  std::string method = "GET";
  std::string target = "/orders";
  std::vector<std::pair<std::string, std::string>> fields;
  std::vector<HttpHeader> views;

  TestRequest &header(std::string name, std::string value) {
    fields.emplace_back(std::move(name), std::move(value));
    return *this;
  }
  HttpRequest view() {
    views.clear();
    for (const auto &[n, v] : fields)
      views.push_back({n, v});
    HttpRequest r;
    r.method = method;
    r.target = target;
    const size_t q = r.target.find('?');
    r.path = r.target.substr(0, q);
    r.query = q == std::string_view::npos ? std::string_view()
                                          : r.target.substr(q + 1);
    r.headers = views;
    return r;
  }
};

constexpr ForwardTarget kId{0, "k_123", "orders", "alice"};

std::string upstream_head(TestRequest &t,
                          BodyFraming framing = BodyFraming::kNone,
                          uint64_t length = 0, ForwardTarget id = kId) {
  const HttpRequest r = t.view();
  std::string out;
  write_upstream_request_head(r, id, "10.0.0.7", framing, length, out);
  return out;
}

// The header lines of a head (without the start line and the final CRLF).
std::vector<std::string> header_lines(std::string_view head) {
  std::vector<std::string> lines;
  EXPECT_TRUE(head.ends_with("\r\n\r\n"));
  size_t pos = head.find("\r\n") + 2;
  while (pos < head.size()) {
    const size_t end = head.find("\r\n", pos);
    if (end == pos)
      break;
    lines.emplace_back(head.substr(pos, end - pos));
    pos = end + 2;
  }
  return lines;
}

TEST(ForwardingChunk, FramesDataAsOneChunkAndSkipsEmptyData) {
  std::string out = "x";
  append_chunk("hello", out);
  EXPECT_EQ(out, "x5\r\nhello\r\n");
  append_chunk(std::string(0x1a2b, 'z'), out);
  EXPECT_EQ(out.substr(0, 17), "x5\r\nhello\r\n1a2b\r\n");
  EXPECT_EQ(out.size(), 11u + 6 + 0x1a2b + 2);
  const size_t before = out.size();
  append_chunk("", out);  // an empty chunk would end the body
  EXPECT_EQ(out.size(), before);
}

TEST(ForwardingCodings, OnlyChunkedIsImplemented) {
  EXPECT_TRUE(only_chunked_coding("chunked"));
  EXPECT_TRUE(only_chunked_coding(" Chunked ,"));
  EXPECT_FALSE(only_chunked_coding("gzip, chunked"));
  EXPECT_FALSE(only_chunked_coding("chunked, gzip"));
  EXPECT_FALSE(only_chunked_coding("identity"));
}

TEST(ForwardingCodings, CountsChunkedElements) {
  EXPECT_EQ(chunked_codings(""), 0u);
  EXPECT_EQ(chunked_codings("gzip"), 0u);
  EXPECT_EQ(chunked_codings(" Chunked ,"), 1u);
  EXPECT_EQ(chunked_codings("chunked, gzip, CHUNKED"), 2u);
}

TEST(ForwardingTarget, KeyParameterIsRemovedWhereverItStands) {
  EXPECT_EQ(strip("/p?key=abc&a=1&b=2"), "/p?a=1&b=2");
  EXPECT_EQ(strip("/p?a=1&key=abc&b=2"), "/p?a=1&b=2");
  EXPECT_EQ(strip("/p?a=1&b=2&key=abc"), "/p?a=1&b=2");
  EXPECT_EQ(strip("/p?key=abc"), "/p");
}

TEST(ForwardingTarget, RepeatedAndEncodedNamesAreAllRemoved) {
  EXPECT_EQ(strip("/p?key=a&x=1&key=b&key=c"), "/p?x=1");
  EXPECT_EQ(strip("/p?k%65y=abc&x=1"), "/p?x=1");
  EXPECT_EQ(strip("/p?%6B%65%79=abc&x=1"), "/p?x=1");
  EXPECT_EQ(strip("/p?%6b%65%79=abc"), "/p");
}

TEST(ForwardingTarget, KeyWithoutEqualsSignIsRemoved) {
  EXPECT_EQ(strip("/p?key&x=1"), "/p?x=1");
  EXPECT_EQ(strip("/p?x=1&key"), "/p?x=1");
  EXPECT_EQ(strip("/p?key="), "/p");
}

TEST(ForwardingTarget, SimilarNamesAreKept) {
  EXPECT_EQ(strip("/p?keys=1&akey=2&KEY=3&key%3D=4&ke=5"),
            "/p?keys=1&akey=2&KEY=3&key%3D=4&ke=5");
  EXPECT_EQ(strip("/p?k+ey=1&%6B%65%7=2"), "/p?k+ey=1&%6B%65%7=2");
}

TEST(ForwardingTarget, OtherParametersAreKeptByteForByte) {
  EXPECT_EQ(strip("/p?a=1&&b=2"), "/p?a=1&&b=2");
  EXPECT_EQ(strip("/p?a=1&&key=x&b=2"), "/p?a=1&&b=2");
  EXPECT_EQ(strip("/p?q=a+b%20c&x=%2B+&key=k"), "/p?q=a+b%20c&x=%2B+");
  EXPECT_EQ(strip("/p?=v&a==b"), "/p?=v&a==b");
  EXPECT_EQ(strip("/p?&"), "/p?&");
  EXPECT_EQ(strip("/a/b%20c"), "/a/b%20c");
}

TEST(ForwardingTarget, QueryLeftEmptyDropsTheQuestionMark) {
  EXPECT_EQ(strip("/p?"), "/p");
  EXPECT_EQ(strip("/p?key=a&key=b"), "/p");
  EXPECT_EQ(strip("/p?key=x&"), "/p");
}

TEST(ForwardingTarget, IsKeyParamNameDecodesOnce) {
  EXPECT_TRUE(is_key_param_name("key"));
  EXPECT_TRUE(is_key_param_name("k%65y"));
  EXPECT_TRUE(is_key_param_name("%6B%65%79"));
  EXPECT_FALSE(is_key_param_name("k%2565y"));
  EXPECT_FALSE(is_key_param_name("keys"));
  EXPECT_FALSE(is_key_param_name(""));
  EXPECT_FALSE(is_key_param_name("%"));
  EXPECT_FALSE(is_key_param_name("ke%7"));
}

TEST(UpstreamRequestHead, WritesRequestLineHeadersIdentityAndForwardedFor) {
  TestRequest t;
  t.target = "/orders/7?key=secret&x=1";
  t.header("Host", "api.example")
      .header("Accept", "*/*")
      .header("X-ApiKey", "secret");
  EXPECT_EQ(upstream_head(t), "GET /orders/7?x=1 HTTP/1.1\r\n"
                              "Host: api.example\r\n"
                              "Accept: */*\r\n"
                              "X-Keygate-Key-Id: k_123\r\n"
                              "X-Keygate-Api: orders\r\n"
                              "X-Keygate-User: alice\r\n"
                              "X-Forwarded-For: 10.0.0.7\r\n"
                              "X-Forwarded-Proto: http\r\n"
                              "\r\n");
}

TEST(UpstreamRequestHead, AlwaysSpeaksHttp11AndKeepsMethod) {
  TestRequest t;
  t.method = "DELETE";
  const HttpRequest r0 = t.view();
  HttpRequest r = r0;
  r.version_minor = 0;
  std::string out;
  write_upstream_request_head(r, kId, "1.2.3.4", BodyFraming::kNone, 0, out);
  EXPECT_TRUE(out.starts_with("DELETE /orders HTTP/1.1\r\n"));
}

TEST(UpstreamRequestHead, UserHeaderIsOmittedWhenEmpty) {
  TestRequest t;
  const std::string head =
      upstream_head(t, BodyFraming::kNone, 0, {0, "k_1", "orders", ""});
  EXPECT_EQ(head.find("X-Keygate-User"), std::string::npos);
  EXPECT_NE(head.find("X-Keygate-Key-Id: k_1\r\n"), std::string::npos);
  EXPECT_NE(head.find("X-Keygate-Api: orders\r\n"), std::string::npos);
}

TEST(UpstreamRequestHead, ApiKeyHeaderIsRemovedInAnyCase) {
  TestRequest t;
  t.header("x-apikey", "a")
      .header("X-APIKEY", "b")
      .header("X-ApiKey", "c")
      .header("A", "1");
  EXPECT_EQ(header_lines(upstream_head(t)),
            (std::vector<std::string>{
                "A: 1", "X-Keygate-Key-Id: k_123", "X-Keygate-Api: orders",
                "X-Keygate-User: alice", "X-Forwarded-For: 10.0.0.7",
                "X-Forwarded-Proto: http"}));
}

// CGI, WSGI and Rack upstreams read X_Keygate_User as HTTP_X_KEYGATE_USER, like
// X-Keygate-User: a client could pose as a user through the underscore spelling (a key with
// no user gets no X-Keygate-User from keygate to override it), or pass a second key.
TEST(UpstreamRequestHead, UnderscoreSpellingsOfStrippedHeadersAreRemovedToo) {
  TestRequest t;
  t.header("X_Keygate_User", "root")
      .header("x_keygate-key_id", "forged")
      .header("X_ApiKey", "other-key")
      .header("X_Forwarded_For", "6.6.6.6")
      .header("X_Forwarded-Proto", "https")
      .header("X_Other", "kept");
  EXPECT_EQ(header_lines(upstream_head(t, BodyFraming::kNone, 0, {0, "k_1", "orders", ""})),
            (std::vector<std::string>{"X_Other: kept", "X-Keygate-Key-Id: k_1",
                                      "X-Keygate-Api: orders", "X-Forwarded-For: 10.0.0.7",
                                      "X-Forwarded-Proto: http"}));
}

TEST(UpstreamRequestHead, EveryHopByHopHeaderIsRemoved) {
  for (const char *name :
       {"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "connection", "keep-alive", "te",
        "TRANSFER-ENCODING", "upgrade"}) {
    TestRequest t;
    t.header("A", "1").header(name, "x").header("B", "2");
    const std::vector<std::string> lines = header_lines(upstream_head(t));
    ASSERT_GE(lines.size(), 2u) << name;
    EXPECT_EQ(lines[0], "A: 1") << name;
    EXPECT_EQ(lines[1], "B: 2") << name;
    EXPECT_EQ(lines.size(), 7u) << name;
  }
}

TEST(UpstreamRequestHead, HeadersNamedByConnectionAreRemoved) {
  TestRequest t;
  t.header("Connection", "keep-alive, X-Secret ,x-other")
      .header("Connection", "Foo")
      .header("X-Secret", "s")
      .header("X-Other", "o")
      .header("foo", "f")
      .header("X-Kept", "k")
      .header("Host", "h");
  const std::string head = upstream_head(t);
  EXPECT_EQ(head.find("X-Secret"), std::string::npos);
  EXPECT_EQ(head.find("X-Other"), std::string::npos);
  EXPECT_EQ(head.find("foo"), std::string::npos);
  EXPECT_EQ(head.find("Connection"), std::string::npos);
  EXPECT_NE(head.find("X-Kept: k\r\n"), std::string::npos);
}

TEST(UpstreamRequestHead, HostIsKeptEvenWhenConnectionNamesIt) {
  TestRequest t;
  t.header("Host", "Api.Example:8080").header("Connection", "Host");
  EXPECT_NE(upstream_head(t).find("\r\nHost: Api.Example:8080\r\n"),
            std::string::npos);
}

// keygate is the client of the upstream: an HTTP/1.1 request needs a Host (RFC 9112 3.2), and
// an HTTP/1.0 client may have sent none.
TEST(UpstreamRequestHead, ARequestWithoutHostGetsTheUpstreamsAuthorityFirst) {
  TestRequest t;
  t.header("Accept", "*/*");
  std::string out = "x";
  const size_t host_at =
      write_upstream_request_head(t.view(), kId, "1.2.3.4", BodyFraming::kNone, 0, out,
                                  "127.0.0.1:9001");
  EXPECT_EQ(header_lines(out.substr(1)).at(0), "Host: 127.0.0.1:9001");
  EXPECT_EQ(out.substr(host_at, 14), "127.0.0.1:9001");
  // The client's own Host is kept as sent, and nothing is added.
  TestRequest with_host;
  with_host.header("Host", "api.example");
  std::string kept;
  EXPECT_EQ(write_upstream_request_head(with_host.view(), kId, "1.2.3.4", BodyFraming::kNone, 0,
                                        kept, "127.0.0.1:9001"),
            0u);
  EXPECT_NE(kept.find("\r\nHost: api.example\r\n"), std::string::npos) << kept;
  EXPECT_EQ(kept.find("127.0.0.1:9001"), std::string::npos);
}

TEST(UpstreamRequestHead, ContentLengthAndExpectAreRemoved) {
  TestRequest t;
  t.method = "POST";
  t.header("Content-Length", "99")
      .header("Expect", "100-continue")
      .header("Content-Type", "a/b");
  const std::string head = upstream_head(t, BodyFraming::kContentLength, 12);
  EXPECT_EQ(head.find("99"), std::string::npos);
  EXPECT_EQ(head.find("Expect"), std::string::npos);
  EXPECT_TRUE(
      head.ends_with("X-Forwarded-Proto: http\r\nContent-Length: 12\r\n\r\n"));
}

TEST(UpstreamRequestHead, FramingLineFollowsTheFraming) {
  TestRequest t;
  t.header("Transfer-Encoding", "chunked");
  EXPECT_TRUE(
      upstream_head(t, BodyFraming::kChunked)
          .ends_with(
              "X-Forwarded-Proto: http\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const std::string none = upstream_head(t, BodyFraming::kNone, 55);
  EXPECT_TRUE(none.ends_with("X-Forwarded-Proto: http\r\n\r\n"));
  EXPECT_EQ(none.find("Transfer-Encoding"), std::string::npos);
  EXPECT_EQ(none.find("Content-Length"), std::string::npos);
  EXPECT_TRUE(upstream_head(t, BodyFraming::kContentLength, 0)
                  .ends_with("\r\nContent-Length: 0\r\n\r\n"));
  EXPECT_TRUE(
      upstream_head(t, BodyFraming::kContentLength, 18446744073709551615u)
          .ends_with("\r\nContent-Length: 18446744073709551615\r\n\r\n"));
}

TEST(UpstreamRequestHead, SpoofedKeygateHeadersAreRemovedInAnyCase) {
  TestRequest t;
  t.header("X-Keygate-Key-Id", "evil")
      .header("x-keygate-user", "root")
      .header("X-KEYGATE-API", "admin")
      .header("X-Keygate-Anything", "1")
      .header("X-Keygated", "kept");
  const std::string head = upstream_head(t);
  EXPECT_EQ(head.find("evil"), std::string::npos);
  EXPECT_EQ(head.find("root"), std::string::npos);
  EXPECT_EQ(head.find("admin"), std::string::npos);
  EXPECT_EQ(head.find("Anything"), std::string::npos);
  EXPECT_NE(head.find("X-Keygated: kept\r\n"), std::string::npos);
  EXPECT_NE(head.find("X-Keygate-User: alice\r\n"), std::string::npos);
}

TEST(UpstreamRequestHead, ForwardedForAndProtoAppendToTheClientsValues) {
  TestRequest t;
  t.header("X-Forwarded-For", "1.1.1.1")
      .header("A", "1")
      .header("x-forwarded-for", "2.2.2.2, 3.3.3.3")
      .header("X-Forwarded-For", "")
      .header("X-Forwarded-Proto", "https");
  const std::vector<std::string> lines = header_lines(upstream_head(t));
  EXPECT_EQ(lines, (std::vector<std::string>{
                       "A: 1", "X-Keygate-Key-Id: k_123",
                       "X-Keygate-Api: orders", "X-Keygate-User: alice",
                       "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7",
                       "X-Forwarded-Proto: https, http"}));
}

TEST(UpstreamRequestHead, ForwardedForNamedByConnectionIsNotCarriedOver) {
  TestRequest t;
  t.header("X-Forwarded-For", "1.1.1.1")
      .header("Connection", "X-Forwarded-For");
  EXPECT_NE(upstream_head(t).find("\r\nX-Forwarded-For: 10.0.0.7\r\n"),
            std::string::npos);
}

TEST(UpstreamRequestHead, AppendsToExistingOutput) {
  TestRequest t;
  std::string out = "previous";
  write_upstream_request_head(t.view(), kId, "::1", BodyFraming::kNone, 0, out);
  EXPECT_TRUE(out.starts_with("previousGET /orders HTTP/1.1\r\n"));
  EXPECT_NE(out.find("X-Forwarded-For: ::1\r\n"), std::string::npos);
}

// --- responses ---

std::string client_head(std::vector<HttpHeader> headers, BodyFraming framing,
                        uint64_t length, bool keep_alive, bool http10,
                        int status = 200, std::string_view reason = "OK") {
  ResponseHead head{status, reason, 1, headers};
  std::string out;
  write_client_response_head(head, framing, length, keep_alive, http10, out);
  return out;
}

TEST(ClientResponseHead, WritesStatusHeadersAndFraming) {
  EXPECT_EQ(client_head({{"Content-Type", "text/plain"},
                         {"Content-Length", "5"},
                         {"X-A", "1"}},
                        BodyFraming::kContentLength, 5, true, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: "
            "1\r\nContent-Length: 5\r\n\r\n");
}

TEST(ClientResponseHead, KeepsTheUpstreamsReasonAndStatus) {
  EXPECT_TRUE(
      client_head({}, BodyFraming::kNone, 0, true, false, 418, "I'm a teapot")
          .starts_with("HTTP/1.1 418 I'm a teapot\r\n"));
  EXPECT_TRUE(client_head({}, BodyFraming::kNone, 0, true, false, 299, "")
                  .starts_with("HTTP/1.1 299 \r\n"));
}

// llhttp passes any byte but CR and LF in a reason phrase: control characters never reach the
// client. HTAB, SP, visible ASCII and obs-text (0x80-0xff) are valid and kept.
TEST(ClientResponseHead, AReasonWithControlCharactersIsReplacedByTheStandardOne) {
  EXPECT_TRUE(client_head({}, BodyFraming::kNone, 0, true, false, 200, "O\x01K")
                  .starts_with("HTTP/1.1 200 OK\r\n"));
  EXPECT_TRUE(client_head({}, BodyFraming::kNone, 0, true, false, 404,
                          std::string_view("A\0B", 3))
                  .starts_with("HTTP/1.1 404 Not Found\r\n"));
  EXPECT_TRUE(client_head({}, BodyFraming::kNone, 0, true, false, 200, "del\x7f")
                  .starts_with("HTTP/1.1 200 OK\r\n"));
  EXPECT_TRUE(client_head({}, BodyFraming::kNone, 0, true, false, 299, "bad\x1b[0m")
                  .starts_with("HTTP/1.1 299 \r\n"));
  EXPECT_TRUE(client_head({}, BodyFraming::kNone, 0, true, false, 200, "Fine\tand \xe9t\xe9")
                  .starts_with("HTTP/1.1 200 Fine\tand \xe9t\xe9\r\n"));
}

TEST(ClientResponseHead, HopByHopAndFramingHeadersAreRemoved) {
  const std::string head = client_head({{"Connection", "close, X-Private"},
                                        {"Keep-Alive", "timeout=5"},
                                        {"Proxy-Connection", "x"},
                                        {"TE", "trailers"},
                                        {"Trailer", "X-T"},
                                        {"Transfer-Encoding", "chunked"},
                                        {"Upgrade", "h2c"},
                                        {"content-length", "10"},
                                        {"x-private", "p"},
                                        {"X-Public", "q"}},
                                       BodyFraming::kChunked, 0, true, false);
  EXPECT_EQ(
      head,
      "HTTP/1.1 200 OK\r\nX-Public: q\r\nTransfer-Encoding: chunked\r\n\r\n");
}

TEST(ClientResponseHead, ConnectionHeaderFollowsKeepAliveAndClientVersion) {
  EXPECT_EQ(
      client_head({}, BodyFraming::kContentLength, 2, false, false),
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(
      client_head({}, BodyFraming::kContentLength, 2, true, true),
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_EQ(
      client_head({}, BodyFraming::kContentLength, 2, false, true),
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(client_head({}, BodyFraming::kContentLength, 2, true, false),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
}

// RFC 9110 6.6.1: a recipient with a clock that forwards a response without Date adds one. The
// upstream's own Date is kept (never a second one); interim responses need none.
TEST(ClientResponseHead, AddsTheDateOnlyWhenTheUpstreamSentNone) {
  constexpr std::string_view kDate = "Sat, 28 Nov 2026 09:00:00 GMT";
  auto head_with_date = [&](std::vector<HttpHeader> headers, int status) {
    const ResponseHead head{status, "R", 1, headers};
    std::string out;
    write_client_response_head(head, BodyFraming::kContentLength, 2, true, false, out, kDate);
    return out;
  };
  EXPECT_EQ(head_with_date({{"X-A", "1"}}, 200),
            "HTTP/1.1 200 R\r\nX-A: 1\r\nDate: Sat, 28 Nov 2026 09:00:00 GMT\r\n"
            "Content-Length: 2\r\n\r\n");
  EXPECT_EQ(head_with_date({{"date", "Mon, 01 Jan 2024 00:00:00 GMT"}}, 404),
            "HTTP/1.1 404 R\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            "Content-Length: 2\r\n\r\n");
  EXPECT_EQ(head_with_date({}, 103).find("Date"), std::string::npos);
  // Without a date to give (the default), nothing is added.
  EXPECT_EQ(client_head({}, BodyFraming::kNone, 0, true, false, 204, "No Content"),
            "HTTP/1.1 204 No Content\r\n\r\n");
}

TEST(ClientResponseHead, UntilCloseAndNoneWriteNoFramingHeader) {
  // A chunked upstream body for an HTTP/1.0 client: delimited by the close
  // instead.
  EXPECT_EQ(client_head({{"Transfer-Encoding", "chunked"}, {"X-A", "1"}},
                        BodyFraming::kUntilClose, 0, false, true),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(client_head({{"Content-Length", "0"}}, BodyFraming::kNone, 0, true,
                        false, 204, "No Content"),
            "HTTP/1.1 204 No Content\r\n\r\n");
}

} // namespace
} // namespace keygate
