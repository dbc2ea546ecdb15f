// Integration tests of keygate-upstream, the origin server the proxy tests and benchmarks put
// behind keygate and nginx: every path's behaviour over real loopback HTTP, keep-alive and
// pipelining, streamed bodies of any size, and a clean exit on SIGTERM.
#include <gtest/gtest.h>
#include <signal.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/api_key.h"
#include "tests/integration/process_helper.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

const char* upstream_binary() { return KEYGATE_UPSTREAM_BINARY; }

// A whole response read to the close of the connection, split at the head; a chunked body is
// de-chunked (chunk extensions and trailers are not used by keygate-upstream). nullopt when
// the bytes do not frame as that.
struct RawResponse {
  std::string head;
  std::string body;
};
std::optional<RawResponse> split_and_dechunk(const std::string& raw) {
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) return std::nullopt;
  RawResponse r{raw.substr(0, head_end + 2), raw.substr(head_end + 4)};
  if (r.head.find("Transfer-Encoding: chunked") == std::string::npos) return r;
  std::optional<std::string> body = dechunk(r.body);
  if (!body) return std::nullopt;
  r.body = std::move(*body);
  return r;
}

class UpstreamTool : public ::testing::Test {
 protected:
  void SetUp() override { start("1"); }

  void start(const std::string& threads) {
    std::string line;
    std::string error;
    upstream_ = start_process_with_ready_line(upstream_binary(),
                                              {"--listen", "127.0.0.1:0", "--threads", threads},
                                              "listening on ", &line, &error);
    ASSERT_NE(upstream_, nullptr) << error;
    const size_t colon = line.rfind(':');
    std::from_chars(line.data() + colon + 1, line.data() + line.size(), port_);
    ASSERT_NE(port_, 0) << line;
    ASSERT_EQ(line, "listening on 127.0.0.1:" + std::to_string(port_));
  }

  void TearDown() override {
    if (upstream_ == nullptr) return;
    const ExitStatus status = upstream_->stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << upstream_->error_output();
  }

  RawClient connect() {
    RawClient c;
    std::string error;
    EXPECT_TRUE(c.connect(port_, &error)) << error;
    return c;
  }

  // Sends `request` (which should say Connection: close) and reads everything to the close.
  std::optional<RawResponse> fetch_to_close(std::string_view request,
                                            Millis timeout = Millis(10000)) {
    RawClient c = connect();
    EXPECT_TRUE(c.send(request));
    const std::string raw = c.read_until_close(timeout);
    EXPECT_EQ(c.last_end(), ReadEnd::kEof);
    return split_and_dechunk(raw);
  }

  std::unique_ptr<ChildProcess> upstream_;
  uint16_t port_ = 0;
};

TEST_F(UpstreamTool, DefaultResponseDescribesTheRequestAndCountsKeptAliveRequests) {
  RawClient c = connect();
  const std::string body = "hello upstream";
  ASSERT_TRUE(c.send(http_request("POST", "/orders/7?x=1", {"X-Keygate-Key-Id: k1"}, body) +
                     http_request("GET", "/second")));
  const std::vector<Response> rs = c.read_responses(2);
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].status, 200);
  EXPECT_EQ(rs[0].header("Content-Type"), "application/json");
  const std::string& j = rs[0].body;
  EXPECT_NE(j.find("\"method\":\"POST\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"target\":\"/orders/7?x=1\""), std::string::npos) << j;
  EXPECT_NE(j.find("[\"X-Keygate-Key-Id\",\"k1\"]"), std::string::npos) << j;
  EXPECT_EQ(number_member(j, "body_bytes"), static_cast<int64_t>(body.size()));
  EXPECT_EQ(string_member(j, "body_sha256"), hex_sha256(body));
  EXPECT_EQ(number_member(j, "request"), 1);
  EXPECT_EQ(number_member(rs[1].body, "request"), 2);
  EXPECT_EQ(number_member(rs[1].body, "body_bytes"), 0);
  EXPECT_EQ(number_member(rs[1].body, "connection"), number_member(j, "connection"));

  RawClient other = connect();
  ASSERT_TRUE(other.send(http_request("GET", "/")));
  const std::optional<Response> r = other.read_response();
  ASSERT_TRUE(r) << show(r);
  EXPECT_NE(number_member(r->body, "connection"), number_member(j, "connection"));
  EXPECT_EQ(number_member(r->body, "request"), 1);
}

TEST_F(UpstreamTool, ChunkedRequestBodyIsCountedAndHashed) {
  RawClient c = connect();
  ASSERT_TRUE(
      c.send("POST /up HTTP/1.1\r\nHost: it\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  const std::optional<Response> r = c.read_response();
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(number_member(r->body, "body_bytes"), 11);
  EXPECT_EQ(string_member(r->body, "body_sha256"), hex_sha256("hello world"));
}

TEST_F(UpstreamTool, LargeBodyIsStreamHashed) {
  const std::string body(64u << 20, 'x');
  RawClient c = connect();
  ASSERT_TRUE(c.send(http_request("PUT", "/big", {}, body)));
  const std::optional<Response> r = c.read_response(Millis(30000));
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(number_member(r->body, "body_bytes"), static_cast<int64_t>(body.size()));
  EXPECT_EQ(string_member(r->body, "body_sha256"), hex_sha256(body));
}

TEST_F(UpstreamTool, BytesAndFixedServeThePatternWithContentLengthOrChunked) {
  RawClient c = connect();
  ASSERT_TRUE(c.send(http_request("GET", "/bytes/100000") + http_request("GET", "/fixed/1024")));
  const std::vector<Response> rs = c.read_responses(2);
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].header("Content-Length"), "100000");
  EXPECT_TRUE(rs[0].body == byte_pattern(100000));
  EXPECT_EQ(rs[1].header("Content-Length"), "1024");
  EXPECT_TRUE(rs[1].body == byte_pattern(1024));

  const std::optional<RawResponse> chunked =
      fetch_to_close(http_request("GET", "/bytes/40000?chunked=1", {"Connection: close"}));
  ASSERT_TRUE(chunked);
  EXPECT_NE(chunked->head.find("Transfer-Encoding: chunked"), std::string::npos);
  EXPECT_EQ(chunked->head.find("Content-Length"), std::string::npos);
  EXPECT_TRUE(chunked->body == byte_pattern(40000)) << chunked->body.size();
}

TEST_F(UpstreamTool, LargeResponseIsStreamedToASlowReader) {
  constexpr size_t kBytes = 32u << 20;
  RawClient c = connect();
  ASSERT_TRUE(c.send(http_request("GET", "/bytes/" + std::to_string(kBytes))));
  // The client does not read for a while: the server must wait on the socket, not buffer.
  std::this_thread::sleep_for(Millis(200));
  const std::optional<Response> r = c.read_response(Millis(30000));
  ASSERT_TRUE(r) << "no response: " << to_string(c.last_end());
  ASSERT_EQ(r->body.size(), kBytes);
  EXPECT_TRUE(r->body == byte_pattern(kBytes));
}

TEST_F(UpstreamTool, EchoStreamsTheRequestBodyBack) {
  std::string body;
  for (int i = 0; i < 20000; ++i) body += "line " + std::to_string(i) + "\n";
  const std::optional<RawResponse> r =
      fetch_to_close(http_request("POST", "/echo", {"Connection: close"}, body));
  ASSERT_TRUE(r);
  EXPECT_NE(r->head.find("HTTP/1.1 200"), std::string::npos) << r->head;
  EXPECT_TRUE(r->body == body) << r->body.size() << " bytes back, want " << body.size();

  // A chunked request's body comes back too, before the request has ended.
  RawClient c = connect();
  ASSERT_TRUE(
      c.send("POST /echo HTTP/1.1\r\nHost: it\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nfirst\r\n"));
  ASSERT_TRUE(c.readable(Millis(3000)));
  std::this_thread::sleep_for(Millis(50));
  ASSERT_TRUE(c.readable(Millis(0)));
  ASSERT_TRUE(c.send("4\r\nlast\r\n0\r\n\r\n"));
  c.shutdown_write();
  const std::optional<RawResponse> echoed = split_and_dechunk(c.read_until_close());
  ASSERT_TRUE(echoed);
  EXPECT_EQ(echoed->body, "firstlast");
}

TEST_F(UpstreamTool, StatusPathsAndHeadGetTheirHeaders) {
  RawClient c = connect();
  ASSERT_TRUE(c.send(http_request("GET", "/status/503")));
  std::optional<Response> r = c.read_response();
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, "{\"status\":503}\n");

  ASSERT_TRUE(c.send(http_request("GET", "/status/204")));
  r = c.read_response();
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_FALSE(r->header("Content-Length"));

  ASSERT_TRUE(c.send(http_request("HEAD", "/status/404") + http_request("HEAD", "/bytes/10") +
                     http_request("GET", "/after-heads")));
  r = c.read_response(Millis(3000), true);
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->header("Content-Length"), "15");
  r = c.read_response(Millis(3000), true);
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(r->header("Content-Length"), "10");
  // Nothing of a body followed the HEAD responses: the next response parses right after them.
  r = c.read_response();
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(string_member(r->body, "target"), "/after-heads");
}

TEST_F(UpstreamTool, DelayAnswersLaterWithoutBlockingOtherConnections) {
  RawClient slow = connect();
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(slow.send(http_request("GET", "/delay/400")));
  RawClient fast = connect();
  ASSERT_TRUE(fast.send(http_request("GET", "/quick")));
  const std::optional<Response> quick = fast.read_response();
  ASSERT_TRUE(quick) << show(quick);
  EXPECT_LT(std::chrono::steady_clock::now() - start, Millis(300));
  EXPECT_FALSE(slow.readable(Millis(0)));
  const std::optional<Response> r = slow.read_response(Millis(5000));
  ASSERT_TRUE(r) << show(r);
  EXPECT_GE(std::chrono::steady_clock::now() - start, Millis(400));
  EXPECT_EQ(string_member(r->body, "target"), "/delay/400");
}

TEST_F(UpstreamTool, CloseAndResetEndTheConnectionWithoutAResponse) {
  RawClient closed = connect();
  ASSERT_TRUE(closed.send(http_request("GET", "/close")));
  EXPECT_EQ(closed.read_until_close(), "");
  EXPECT_EQ(closed.last_end(), ReadEnd::kEof);

  RawClient reset = connect();
  ASSERT_TRUE(reset.send(http_request("GET", "/reset")));
  EXPECT_EQ(reset.read_until_close(), "");
  EXPECT_EQ(reset.last_end(), ReadEnd::kReset);
}

TEST_F(UpstreamTool, MalformedResponsesAreSentAsAskedThenClosed) {
  auto raw = [&](std::string_view target) {
    RawClient c = connect();
    EXPECT_TRUE(c.send(http_request("GET", target)));
    std::string bytes = c.read_until_close();
    EXPECT_EQ(c.last_end(), ReadEnd::kEof) << target;
    return bytes;
  };
  EXPECT_EQ(raw("/malformed/garbage"), "NOT HTTP\r\n\r\n");
  const std::string cl_te = raw("/malformed/cl-te");
  EXPECT_NE(cl_te.find("Content-Length: "), std::string::npos) << cl_te;
  EXPECT_NE(cl_te.find("Transfer-Encoding: chunked"), std::string::npos) << cl_te;
  const std::string bad_chunk = raw("/malformed/bad-chunk");
  EXPECT_NE(bad_chunk.find("\r\n\r\nzz\r\n"), std::string::npos) << bad_chunk;
  const std::string short_body = raw("/headers-then-close");
  EXPECT_NE(short_body.find("Content-Length: 100\r\n"), std::string::npos) << short_body;
  EXPECT_TRUE(short_body.ends_with("\r\n\r\n" + byte_pattern(10))) << short_body;
}

TEST_F(UpstreamTool, MalformedRequestGetsBadRequestAndClose) {
  RawClient c = connect();
  ASSERT_TRUE(
      c.send("GET / HTTP/1.1\r\nHost: it\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"));
  const std::optional<Response> r = c.read_response();
  ASSERT_TRUE(r) << show(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_TRUE(r->connection_close());
}

TEST_F(UpstreamTool, SeveralThreadsShareThePortAndStopOnSigint) {
  const ExitStatus first = upstream_->stop(SIGTERM);
  EXPECT_TRUE(first.clean()) << first.describe();
  upstream_.reset();
  start("3");
  std::vector<RawClient> clients;
  for (int i = 0; i < 12; ++i) {
    clients.push_back(connect());
    ASSERT_TRUE(clients.back().send(http_request("GET", "/fixed/64")));
  }
  for (RawClient& c : clients) {
    const std::optional<Response> r = c.read_response();
    ASSERT_TRUE(r) << show(r);
    EXPECT_EQ(r->body, byte_pattern(64));
  }
  const ExitStatus status = upstream_->stop(SIGINT);
  EXPECT_TRUE(status.clean()) << status.describe();
  upstream_.reset();
}

}  // namespace
}  // namespace keygate::integration
