// Integration tests of the HTTP/1.1 engine: each test starts the real keygate binary on
// ephemeral loopback ports with its own temp directory and speaks raw HTTP to it.
//
// Every server a test starts is stopped with SIGTERM at the end and must exit 0 after printing
// "keygate: stopped", so a crash or a sanitizer report in the server fails the test that
// caused it. Timeouts are configured small (the engine's resolution is 100 ms) and every wait
// here is bounded.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using namespace std::chrono_literals;
using namespace std::string_literals;
using Clock = std::chrono::steady_clock;

std::string get(std::string_view path) {
  return "GET "s + std::string(path) + " HTTP/1.1\r\nHost: a\r\n\r\n";
}

const std::string kHealthz = get("/healthz");
const std::string kSmuggled = get("/smuggled");

Millis since(Clock::time_point start) {
  return std::chrono::duration_cast<Millis>(Clock::now() - start);
}

std::string describe(const std::optional<Response>& r, const RawClient& client) {
  if (!r) return "no response (" + std::string(to_string(client.last_end())) + ")";
  return "response:\n" + r->raw;
}

// A rejection as the engine sends it: this status, `Connection: close`, an error JSON body.
::testing::AssertionResult is_rejection(const std::optional<Response>& r, int status) {
  if (!r) return ::testing::AssertionFailure() << "no response";
  if (r->status != status) {
    return ::testing::AssertionFailure()
           << "status " << r->status << ", want " << status << "; response:\n"
           << r->raw;
  }
  if (!r->connection_close()) {
    return ::testing::AssertionFailure() << "no 'Connection: close'; response:\n" << r->raw;
  }
  if (!r->json_error_body()) {
    return ::testing::AssertionFailure() << "body is not error JSON; response:\n" << r->raw;
  }
  return ::testing::AssertionSuccess();
}

// The server closes the connection (FIN or RST) within `timeout` and sends nothing more.
::testing::AssertionResult closes_without_more_bytes(RawClient& client, Millis timeout = 3000ms) {
  const std::string rest = client.read_until_close(timeout);
  if (client.last_end() != ReadEnd::kEof && client.last_end() != ReadEnd::kReset) {
    return ::testing::AssertionFailure()
           << "connection not closed within " << timeout.count() << " ms ("
           << to_string(client.last_end()) << "); extra bytes: '" << rest << "'";
  }
  if (!rest.empty()) {
    return ::testing::AssertionFailure() << "bytes after the last expected response:\n" << rest;
  }
  return ::testing::AssertionSuccess();
}

// A fresh connection gets 200 for GET /healthz: the server is alive and serving.
::testing::AssertionResult serves_healthz(uint16_t port) {
  const std::optional<Response> r = round_trip(port, kHealthz);
  if (!r) return ::testing::AssertionFailure() << "no response to GET /healthz";
  if (r->status != 200 || r->body != "ok") {
    return ::testing::AssertionFailure() << "GET /healthz got:\n" << r->raw;
  }
  return ::testing::AssertionSuccess();
}

// Server options: `limits` for the [limits] table, `workers` worker threads.
ServerOptions with(std::vector<std::pair<std::string, uint64_t>> limits, unsigned workers = 2) {
  ServerOptions options;
  options.limits = std::move(limits);
  options.workers = workers;
  return options;
}

std::vector<int> statuses(const std::vector<Response>& responses) {
  std::vector<int> out;
  for (const Response& r : responses) out.push_back(r.status);
  return out;
}

// Base fixture: starts one keygate and, at teardown, stops it cleanly.
class ServerTest : public ::testing::Test {
 protected:
  ::testing::AssertionResult start(ServerOptions options = {}) {
    server_ = std::make_unique<TestServer>(std::move(options));
    std::string error;
    if (!server_->start(&error)) return ::testing::AssertionFailure() << error;
    return ::testing::AssertionSuccess();
  }

  TestServer& server() { return *server_; }
  uint16_t port() const { return server_->data_port(); }

  ::testing::AssertionResult connect(RawClient& client) {
    std::string error;
    if (!client.connect(port(), &error)) return ::testing::AssertionFailure() << error;
    return ::testing::AssertionSuccess();
  }

  void TearDown() override {
    if (server_ == nullptr || !server_->running()) return;
    const ExitStatus status = server_->stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << "keygate " << status.describe() << "; stdout:\n"
                                << server_->output();
    EXPECT_NE(server_->output().find("keygate: stopped\n"), std::string::npos) << server_->output();
  }

  std::unique_ptr<TestServer> server_;
};

// ---------------------------------------------------------------------------------------------
// Routing, keep-alive, pipelining, bodies

using HttpEngine = ServerTest;

TEST_F(HttpEngine, HealthzAnswers200WithBodyOk) {
  ASSERT_TRUE(start());
  const std::optional<Response> r = round_trip(port(), kHealthz);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "ok");
  EXPECT_EQ(r->header("Content-Type"), "text/plain");
  EXPECT_EQ(r->header("Content-Length"), "2");
  EXPECT_FALSE(r->connection_close()) << r->raw;
}

TEST_F(HttpEngine, UnknownPathAnswers404WithJsonErrorAndKeepsTheConnection) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(get("/no/such/route")));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(r->json_error_body()) << r->raw;
  EXPECT_NE(r->body.find("\"error\":\"no_route\""), std::string::npos) << r->body;
  EXPECT_FALSE(r->connection_close()) << r->raw;

  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> next = client.read_response();
  ASSERT_TRUE(next) << describe(next, client);
  EXPECT_EQ(next->status, 200);
}

TEST_F(HttpEngine, AClientThatHalfClosesAfterABadPartialRequestStillGetsItsRejection) {
  ASSERT_TRUE(start());
  for (int i = 0; i < 20; ++i) {
    RawClient client;
    ASSERT_TRUE(connect(client));
    // A space before the colon is rejected before the headers end, so the parser still counts
    // the request as in progress when the client's FIN arrives.
    ASSERT_TRUE(client.send("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n"));
    client.shutdown_write();
    const std::optional<Response> r = client.read_response();
    ASSERT_TRUE(r) << "attempt " << i << ": " << describe(r, client);
    EXPECT_EQ(r->status, 400);
    EXPECT_TRUE(r->connection_close()) << r->raw;
  }
}

TEST_F(HttpEngine, OtherMethodsOnHealthzAnswer405) {
  ASSERT_TRUE(start());
  const std::optional<Response> r =
      round_trip(port(), "DELETE /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_TRUE(r->json_error_body()) << r->raw;
}

TEST_F(HttpEngine, HeadHealthzHasContentLength2AndNoBody) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
  const std::optional<Response> r = client.read_response(3000ms, /*head=*/true);
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->header("Content-Length"), "2");
  // A body sent after a HEAD response would be sitting in the socket now.
  EXPECT_FALSE(client.readable(200ms))
      << "bytes after the HEAD response: '" << client.read_until_close(200ms) << "'";

  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> next = client.read_response();
  ASSERT_TRUE(next) << describe(next, client);
  EXPECT_EQ(next->status, 200);
  EXPECT_EQ(next->body, "ok");
}

// A HEAD rejected once its head is parsed is still a HEAD: the rejection has the error's
// Content-Length and no body (a client reading a HEAD response would take those bytes for the
// start of the next response).
TEST_F(HttpEngine, AHeadRejectedAfterItsHeadIsAnsweredWithoutABody) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n"));
  const std::optional<Response> r = client.read_response(3000ms, /*head=*/true);
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 413) << r->raw;
  EXPECT_TRUE(r->connection_close()) << r->raw;
  EXPECT_NE(r->header("Content-Length").value_or("0"), "0") << r->raw;
  EXPECT_TRUE(closes_without_more_bytes(client)) << "a body after the HEAD's rejection";
}

TEST_F(HttpEngine, KeepAliveServesThreeRequestsOnOneConnection) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(client.send(kHealthz));
    const std::optional<Response> r = client.read_response();
    ASSERT_TRUE(r) << describe(r, client);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "ok");
    EXPECT_FALSE(r->connection_close());
  }
}

// Alternating /healthz (200) and /x (404) makes any reordering visible in the status sequence.
std::pair<std::string, std::vector<int>> alternating_pipeline(int n) {
  std::string bytes;
  std::vector<int> want;
  for (int i = 0; i < n; ++i) {
    bytes += i % 2 == 0 ? kHealthz : get("/x");
    want.push_back(i % 2 == 0 ? 200 : 404);
  }
  return {bytes, want};
}

TEST_F(HttpEngine, TenPipelinedRequestsInOneWriteAreAnsweredInOrder) {
  ASSERT_TRUE(start());
  const auto [bytes, want] = alternating_pipeline(10);
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(bytes));
  const std::vector<Response> responses = client.read_responses(10);
  EXPECT_EQ(statuses(responses), want) << "read ended: " << to_string(client.last_end());
  EXPECT_FALSE(client.readable(100ms)) << "extra bytes after 10 responses";
}

TEST_F(HttpEngine, PipelineDeeperThanDepthMaxIsAnsweredCompletelyInOrder) {
  ASSERT_TRUE(start(with({{"pipeline_depth_max", 4}})));
  const auto [bytes, want] = alternating_pipeline(50);
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(bytes));
  const std::vector<Response> responses = client.read_responses(50);
  EXPECT_EQ(statuses(responses), want) << "read ended: " << to_string(client.last_end());

  // Still a healthy keep-alive connection after the backlog drained.
  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 200);
}

// The same deep pipeline followed at once by the client's FIN: the requests still waiting at
// the cap when the FIN arrives are answered too, then keygate closes.
TEST_F(HttpEngine, PipelineDeeperThanDepthMaxThenAHalfCloseIsAnsweredCompletely) {
  ASSERT_TRUE(start(with({{"pipeline_depth_max", 4}})));
  const auto [bytes, want] = alternating_pipeline(50);
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(bytes));
  client.shutdown_write();
  const std::vector<Response> responses = client.read_responses(50);
  EXPECT_EQ(statuses(responses), want) << "read ended: " << to_string(client.last_end());
  EXPECT_TRUE(closes_without_more_bytes(client));
}

TEST_F(HttpEngine, PipelinedRequestsSentOneBytePerWriteAreAnsweredInOrder) {
  ASSERT_TRUE(start());
  const auto [bytes, want] = alternating_pipeline(20);
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send_bytewise(bytes));
  const std::vector<Response> responses = client.read_responses(20);
  EXPECT_EQ(statuses(responses), want) << "read ended: " << to_string(client.last_end());
}

TEST_F(HttpEngine, BodySpanningManyReceivesIsConsumedAndThePipelinedRequestAfterItServed) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n" +
                          std::string(200000, 'x') + kHealthz));
  const std::vector<Response> responses = client.read_responses(2);
  EXPECT_EQ(statuses(responses), (std::vector<int>{404, 200}))
      << "read ended: " << to_string(client.last_end());
}

// At the pipeline cap received bytes wait in keygate; past 64 KiB of them the receive is
// cancelled. Here the GET's answer is sent and its completion drains the waiting bytes (the
// POST's head and the first 100 KB of its body) in the same pass that reaps the cancel's
// completion, the send's first: the cancel's completion must re-arm the receive, the rest of
// the body is still to come. It did not, and the POST stalled until its body timeout. The rest
// is sent once the GET's answer is in, so it cannot reach keygate in that first pass.
TEST_F(HttpEngine, ABodyStillArrivingWhenTheReceiveCancelAtThePendingCapCompletesIsRead) {
  ASSERT_TRUE(start(with({{"pipeline_depth_max", 1}}, /*workers=*/1)));
  const std::string request = kHealthz +
                              "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n" +
                              std::string(200000, 'x');
  const size_t first_part = request.size() - 100000;
  for (int i = 0; i < 10; ++i) {
    SCOPED_TRACE("attempt " + std::to_string(i));
    RawClient client;
    ASSERT_TRUE(connect(client));
    ASSERT_TRUE(client.send(std::string_view(request).substr(0, first_part)));
    const std::optional<Response> healthz = client.read_response(2000ms);
    ASSERT_TRUE(healthz) << describe(healthz, client);
    ASSERT_EQ(healthz->status, 200) << healthz->raw;
    ASSERT_TRUE(client.send(std::string_view(request).substr(first_part)));
    const std::optional<Response> post = client.read_response(2000ms);
    ASSERT_TRUE(post) << describe(post, client);
    EXPECT_EQ(post->status, 404) << post->raw;
  }
}

TEST_F(HttpEngine, ChunkedBodyOfSmallChunksSentOneBytePerWriteIsConsumed) {
  ASSERT_TRUE(start());
  std::string request = "POST /nope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 50; ++i) request += "3\r\nabc\r\n";
  request += "0\r\n\r\n" + kHealthz;
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send_bytewise(request));
  const std::vector<Response> responses = client.read_responses(2);
  EXPECT_EQ(statuses(responses), (std::vector<int>{404, 200}))
      << "read ended: " << to_string(client.last_end());
}

TEST_F(HttpEngine, Http10RequestWithoutKeepAliveIsAnsweredThenClosed) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("GET /healthz HTTP/1.0\r\n\r\n"));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->connection_close()) << r->raw;
  EXPECT_TRUE(closes_without_more_bytes(client));
}

TEST_F(HttpEngine, ContentLengthBodyIsConsumedAndTheConnectionStaysUsable) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(
      client.send("POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 404);
  EXPECT_FALSE(r->connection_close());

  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> next = client.read_response();
  ASSERT_TRUE(next) << describe(next, client);
  EXPECT_EQ(next->status, 200);
}

TEST_F(HttpEngine, ChunkedBodyIsConsumedAndTheConnectionStaysUsable) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(
      client.send("POST /nope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 404);
  EXPECT_FALSE(r->connection_close());

  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> next = client.read_response();
  ASSERT_TRUE(next) << describe(next, client);
  EXPECT_EQ(next->status, 200);
}

TEST_F(HttpEngine, ExpectContinueGets100ContinueBeforeTheBodyThenTheFinalResponse) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(
      "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  const std::optional<Response> interim = client.read_response();
  ASSERT_TRUE(interim) << describe(interim, client);
  EXPECT_EQ(interim->status, 100);
  EXPECT_EQ(interim->raw.rfind("HTTP/1.1 100 Continue\r\n", 0), 0u) << interim->raw;

  ASSERT_TRUE(client.send("hello"));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 404);
  EXPECT_FALSE(r->connection_close());

  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> next = client.read_response();
  ASSERT_TRUE(next) << describe(next, client);
  EXPECT_EQ(next->status, 200);
}

TEST_F(HttpEngine, ExpectContinueWithLengthOverBodyMaxGets413Without100Continue) {
  ASSERT_TRUE(start(with({{"body_bytes_max", 1024}})));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(
      "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n"));
  const std::optional<Response> r = client.read_response();
  EXPECT_TRUE(is_rejection(r, 413)) << describe(r, client);
  EXPECT_TRUE(closes_without_more_bytes(client));
}

// ---------------------------------------------------------------------------------------------
// Limits

class HttpEngineLimits : public ServerTest {
 protected:
  static ServerOptions small_limits() {
    return with({{"request_line_bytes_max", 256},
                 {"header_bytes_max", 512},
                 {"header_count_max", 8},
                 {"body_bytes_max", 1024}});
  }
};

TEST_F(HttpEngineLimits, RequestLineOverMaxAnswers414) {
  ASSERT_TRUE(start(small_limits()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("GET /" + std::string(300, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n"));
  const std::optional<Response> r = client.read_response();
  EXPECT_TRUE(is_rejection(r, 414)) << describe(r, client);
  EXPECT_TRUE(closes_without_more_bytes(client));
  EXPECT_TRUE(serves_healthz(port()));
}

TEST_F(HttpEngineLimits, HeaderSectionOverMaxAnswers431) {
  ASSERT_TRUE(start(small_limits()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(600, 'b') +
                          "\r\n\r\n"));
  const std::optional<Response> r = client.read_response();
  EXPECT_TRUE(is_rejection(r, 431)) << describe(r, client);
  EXPECT_TRUE(closes_without_more_bytes(client));
  EXPECT_TRUE(serves_healthz(port()));
}

TEST_F(HttpEngineLimits, MoreHeadersThanCountMaxAnswers431) {
  ASSERT_TRUE(start(small_limits()));
  std::string request = "GET /healthz HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 9; ++i) request += "X-" + std::to_string(i) + ": v\r\n";
  request += "\r\n";
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(request));
  const std::optional<Response> r = client.read_response();
  EXPECT_TRUE(is_rejection(r, 431)) << describe(r, client);
  EXPECT_TRUE(closes_without_more_bytes(client));
}

TEST_F(HttpEngineLimits, ExactlyCountMaxHeadersAndBodyMaxBytesAreAccepted) {
  ASSERT_TRUE(start(small_limits()));
  std::string request = "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\n";
  for (int i = 0; i < 6; ++i) request += "X-" + std::to_string(i) + ": v\r\n";  // 8 in all
  request += "\r\n" + std::string(1024, 'x');
  const std::optional<Response> r = round_trip(port(), request);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404) << r->raw;
}

TEST_F(HttpEngineLimits, ContentLengthOverBodyMaxAnswers413BeforeTheBodyIsSent) {
  ASSERT_TRUE(start(small_limits()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n"));
  // No body byte is ever sent: the answer must come from the headers alone.
  const std::optional<Response> r = client.read_response(2000ms);
  EXPECT_TRUE(is_rejection(r, 413)) << describe(r, client);
  EXPECT_TRUE(closes_without_more_bytes(client));
}

TEST_F(HttpEngineLimits, ChunkedBodyOverBodyMaxAnswers413) {
  ASSERT_TRUE(start(small_limits()));
  const std::string chunk = "258\r\n" + std::string(600, 'c') + "\r\n";  // 0x258 = 600
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("POST /nope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
                          chunk + chunk + "0\r\n\r\n"));
  const std::optional<Response> r = client.read_response();
  EXPECT_TRUE(is_rejection(r, 413)) << describe(r, client);
  EXPECT_TRUE(closes_without_more_bytes(client));
}

TEST_F(HttpEngineLimits, ConnectionOverPerWorkerMaxIsClosedWithoutAResponse) {
  ASSERT_TRUE(start(with({{"connections_per_worker_max", 2}}, /*workers=*/1)));
  RawClient first;
  RawClient second;
  ASSERT_TRUE(connect(first));
  ASSERT_TRUE(connect(second));
  // A round trip on each proves both are accepted before the third arrives.
  for (RawClient* c : {&first, &second}) {
    ASSERT_TRUE(c->send(kHealthz));
    const std::optional<Response> r = c->read_response();
    ASSERT_TRUE(r) << describe(r, *c);
    EXPECT_EQ(r->status, 200);
  }

  RawClient third;
  ASSERT_TRUE(connect(third));  // the kernel completes the handshake; keygate closes at accept
  EXPECT_TRUE(closes_without_more_bytes(third, 2000ms));

  for (RawClient* c : {&first, &second}) {
    ASSERT_TRUE(c->send(kHealthz));
    const std::optional<Response> r = c->read_response();
    ASSERT_TRUE(r) << describe(r, *c);
    EXPECT_EQ(r->status, 200);
  }

  // A freed slot is usable again (once the worker has seen the close).
  first.close();
  bool served = false;
  for (int attempt = 0; attempt < 20 && !served; ++attempt) {
    const std::optional<Response> r = round_trip(port(), kHealthz, 500ms);
    served = r && r->status == 200;
  }
  EXPECT_TRUE(served) << "no new connection served after one of the two was closed";
}

// The two ports have separate connection budgets: a data-plane flood (idle or slowloris
// clients) must not lock operators out of the admin port, nor admin clients the data port.
constexpr std::string_view kBudgetAdminKey = "it-connection-budget-admin-key";

std::string admin_get(std::string_view path) {
  return http_request("GET", path, {"X-ApiKey: " + std::string(kBudgetAdminKey)});
}

// Connects `client` to `port` and makes one GET /healthz round trip: the server has accepted
// the connection, which stays open (keep-alive) and idle.
::testing::AssertionResult connect_and_serve(RawClient& client, uint16_t port) {
  std::string error;
  if (!client.connect(port, &error)) return ::testing::AssertionFailure() << error;
  if (!client.send(kHealthz)) return ::testing::AssertionFailure() << "send failed";
  const std::optional<Response> r = client.read_response();
  if (!r || r->status != 200) return ::testing::AssertionFailure() << describe(r, client);
  return ::testing::AssertionSuccess();
}

TEST_F(HttpEngineLimits, AdminPortAnswersWhileIdleClientsHoldEveryDataConnection) {
  ServerOptions options = admin_server_options(std::string(kBudgetAdminKey));
  options.workers = 1;
  options.limits = {{"connections_per_worker_max", 2}};
  ASSERT_TRUE(start(std::move(options)));
  // Two connections that never send a byte take the data port's two...
  RawClient idle[2];
  for (RawClient& c : idle) ASSERT_TRUE(connect(c));
  // ...as a third shows: it is closed at accept (one worker accepts in arrival order).
  RawClient third;
  ASSERT_TRUE(connect(third));
  EXPECT_TRUE(closes_without_more_bytes(third, 2000ms));

  const std::optional<Response> health = round_trip(server().admin_port(), kHealthz);
  ASSERT_TRUE(health) << "GET /healthz on the admin port: no response";
  EXPECT_EQ(health->status, 200) << health->raw;
  const std::optional<Response> stats = round_trip(server().admin_port(), admin_get("/admin/stats"));
  ASSERT_TRUE(stats) << "GET /admin/stats: no response";
  EXPECT_EQ(stats->status, 200) << stats->raw;
  EXPECT_EQ(number_member(stats->body, "connections_refused"), 1) << stats->body;
  EXPECT_EQ(number_member(stats->body, "admin_connections_refused"), 0) << stats->body;
  // The idle clients still hold their connections (header_timeout_ms is 10 s).
  for (RawClient& c : idle) EXPECT_FALSE(c.readable(0ms));
}

TEST_F(HttpEngineLimits, DataPortServesWhileAdminClientsHoldEveryAdminConnection) {
  ServerOptions options = admin_server_options(std::string(kBudgetAdminKey));
  options.workers = 1;
  options.limits = {{"connections_per_worker_max", 2}};
  options.extra_config = "[admin]\nconnections_max = 2\n" + options.extra_config;
  ASSERT_TRUE(start(std::move(options)));
  // Two keep-alive admin connections (a round trip each proves both accepted) fill the admin
  // port; a third is closed at accept without a response.
  RawClient admin[2];
  for (RawClient& c : admin) ASSERT_TRUE(connect_and_serve(c, server().admin_port()));
  RawClient refused;
  ASSERT_TRUE(refused.connect(server().admin_port()));
  EXPECT_TRUE(closes_without_more_bytes(refused, 2000ms));

  // The data port still has both of its connections, at once.
  RawClient data[2];
  for (RawClient& c : data) ASSERT_TRUE(connect(c));
  for (RawClient& c : data) {
    ASSERT_TRUE(c.send(get("/orders/1")));
    const std::optional<Response> r = c.read_response();
    ASSERT_TRUE(r) << describe(r, c);
    EXPECT_EQ(r->status, 401) << r->raw;  // served: the key check answered (no key sent)
  }

  // A closed admin connection frees its place; the refusal was counted as the admin port's.
  admin[0].close();
  std::optional<Response> stats;
  for (int attempt = 0; attempt < 20 && !stats; ++attempt) {
    stats = round_trip(server().admin_port(), admin_get("/admin/stats"), 500ms);
    if (!stats) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(stats) << "no admin connection served after one of the two was closed";
  EXPECT_EQ(stats->status, 200) << stats->raw;
  // (A retry that came before the worker saw the close was refused too.)
  const int64_t admin_refused = number_member(stats->body, "admin_connections_refused");
  EXPECT_GE(admin_refused, 1) << stats->body;
  EXPECT_EQ(number_member(stats->body, "connections_refused"), admin_refused) << stats->body;
}

// [admin] connections_max is the admin port's total over all workers, wherever the kernel's
// SO_REUSEPORT hash sends each connection.
TEST_F(HttpEngineLimits, AdminConnectionsMaxCountsTheConnectionsOfEveryWorker) {
  ServerOptions options = with({}, /*workers=*/2);
  options.extra_config = "[admin]\nconnections_max = 3\n";
  ASSERT_TRUE(start(std::move(options)));
  RawClient admin[3];
  for (RawClient& c : admin) ASSERT_TRUE(connect_and_serve(c, server().admin_port()));
  // Each of these lands on one of the two workers (both, almost surely): every one is refused.
  for (int i = 0; i < 8; ++i) {
    RawClient more;
    ASSERT_TRUE(more.connect(server().admin_port()));
    (void)more.send(kHealthz);
    EXPECT_TRUE(closes_without_more_bytes(more, 2000ms)) << "connection " << i;
  }
  EXPECT_TRUE(serves_healthz(port()));
}

// Connections go through the worker ring's registered file table (KEYGATE_REGISTERED_FILES
// unset) or use plain descriptors (=0). In both, slots are reused many times over and every
// close reaches the client: with the table, a slot left registered after release would keep
// the socket open (no EOF), and a stale registration would send to the wrong client.
class ConnectionSlots : public ServerTest, public ::testing::WithParamInterface<bool> {};

bool kernel_at_least(int want_major, int want_minor) {
  utsname u{};
  int major = 0, minor = 0;
  if (uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major > want_major || (major == want_major && minor >= want_minor);
}

// Sockets in the registered file tables of the process's io_uring instances, as the kernel
// lists them in each ring's fdinfo ("UserFiles:" then one "<index>: socket:[inode]" line per
// occupied entry).
int registered_sockets(pid_t pid) {
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  int n = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(fd_dir, ec)) {
    std::error_code link_ec;
    const std::string target = std::filesystem::read_symlink(entry.path(), link_ec).string();
    if (target.find("io_uring") == std::string::npos) continue;
    std::ifstream info("/proc/" + std::to_string(pid) + "/fdinfo/" +
                       entry.path().filename().string());
    std::string line;
    bool in_files = false;
    while (std::getline(info, line)) {
      if (line.rfind("UserFiles:", 0) == 0) {
        in_files = true;
      } else if (in_files && line.find(": socket:[") != std::string::npos) {
        ++n;
      } else if (in_files && line.find(':') != std::string::npos && line[0] != ' ') {
        in_files = false;  // the next section
      }
    }
  }
  return n;
}

// Polls registered_sockets() until it equals `want` (the worker releases a slot once the
// close's completions are reaped, a moment after the client sees the end).
::testing::AssertionResult registered_sockets_become(pid_t pid, int want) {
  int got = -1;
  for (int attempt = 0; attempt < 100; ++attempt) {
    got = registered_sockets(pid);
    if (got == want) return ::testing::AssertionSuccess();
    std::this_thread::sleep_for(20ms);
  }
  return ::testing::AssertionFailure() << got << " registered sockets, expected " << want;
}

TEST_P(ConnectionSlots, ReusedSlotsServeTheirOwnClientAndEveryCloseReachesIt) {
  // keygate uses the table from Linux 6.13 on (see docs/architecture.md).
  const bool registered = GetParam() && kernel_at_least(6, 13);
  ServerOptions options = with({{"connections_per_worker_max", 3}}, /*workers=*/1);
  if (!GetParam()) options.env.emplace_back("KEYGATE_REGISTERED_FILES", "0");
  ASSERT_TRUE(start(std::move(options)));
  EXPECT_EQ(server().output().find("+fixed_files") != std::string::npos, registered)
      << server().output();

  for (int round = 0; round < 4; ++round) {
    RawClient clients[3];
    for (RawClient& c : clients) ASSERT_TRUE(connect(c)) << "round " << round;
    // Interleaved keep-alive requests with a different answer each (200, 404, 405): every
    // client must get its own, so no slot answers on another client's socket.
    const std::string requests[3] = {"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
                                     "GET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
                                     "DELETE /healthz HTTP/1.1\r\nHost: a\r\n\r\n"};
    const int expected[3] = {200, 404, 405};
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(clients[i].send(requests[i]));
    for (int i = 0; i < 3; ++i) {
      const std::optional<Response> r = clients[i].read_response();
      ASSERT_TRUE(r) << describe(r, clients[i]);
      EXPECT_EQ(r->status, expected[i]) << "round " << round << " client " << i;
    }
    EXPECT_TRUE(registered_sockets_become(server().pid(), registered ? 3 : 0))
        << "round " << round;
    // Two closes the server starts (Connection: close), one the client starts (half-close,
    // then the server closes its side): each client must see the end of its connection.
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(
          clients[i].send("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
      const std::optional<Response> r = clients[i].read_response();
      ASSERT_TRUE(r) << describe(r, clients[i]);
      EXPECT_EQ(r->status, 200);
      EXPECT_TRUE(closes_without_more_bytes(clients[i])) << "round " << round << " client " << i;
      clients[i].close();  // ends the server's linger
    }
    clients[2].shutdown_write();
    EXPECT_TRUE(closes_without_more_bytes(clients[2])) << "round " << round;
    clients[2].close();
    // Closed means closed: no socket left behind in the table (it would stay open there).
    EXPECT_TRUE(registered_sockets_become(server().pid(), 0)) << "round " << round;
  }
}

INSTANTIATE_TEST_SUITE_P(Files, ConnectionSlots, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return std::string(param.param ? "Registered" : "Plain");
                         });

// ---------------------------------------------------------------------------------------------
// Input held for clients that do not read their answers

constexpr std::string_view kInputAdminKey = "it-input-bounds-admin-key-0123";
constexpr int64_t kPendingInputMax = 64 * 1024;  // net/worker_impl.h

// workers.<name> of a GET /admin/stats answer (pending_input_bytes, pending_input_peak), or -1.
int64_t worker_stat(const TestServer& server, std::string_view name) {
  const std::optional<Response> r = round_trip(
      server.admin_port(),
      http_request("GET", "/admin/stats", {"X-ApiKey: " + std::string(kInputAdminKey)}));
  if (!r || r->status != 200) return -1;
  return number_member(r->body, name);
}

// Clients that pipeline GET /healthz and never read: non-blocking sockets with a small receive
// buffer, so keygate's answers back up and every connection ends up paused at
// pipeline_depth_max with whatever input it holds. Reset (not closed) on destruction.
class NonReadingClients {
 public:
  ~NonReadingClients() { reset_all(); }

  ::testing::AssertionResult connect(uint16_t port, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return ::testing::AssertionFailure() << "socket: " << std::strerror(errno);
      fds_.push_back(fd);
      const int small = 4096;
      (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(port);
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        return ::testing::AssertionFailure() << "connect: " << std::strerror(errno);
      }
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return ::testing::AssertionSuccess();
  }

  // Writes pipelined requests on every socket that takes them, for `duration`; bytes sent.
  uint64_t send_for(Millis duration) {
    std::string chunk;
    while (chunk.size() < 64 * 1024) chunk += kHealthz;
    uint64_t sent = 0;
    const auto end = Clock::now() + duration;
    while (Clock::now() < end) {
      for (const int fd : fds_) {
        const ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) sent += static_cast<uint64_t>(n);
      }
      std::this_thread::sleep_for(2ms);
    }
    return sent;
  }

  void reset_all() {
    for (const int fd : fds_) {
      const linger reset{1, 0};
      (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      ::close(fd);
    }
    fds_.clear();
  }

 private:
  std::vector<int> fds_;
};

ServerOptions input_bounds_options() {
  ServerOptions options = admin_server_options(std::string(kInputAdminKey));
  options.workers = 1;
  // Nothing times out while the test looks.
  options.limits = {{"idle_timeout_ms", 60000}, {"header_timeout_ms", 60000}};
  return options;
}

using InputBounds = ServerTest;

// Many clients pipeline requests and never read: each connection pauses at pipeline_depth_max
// and keeps at most kPendingInputMax of input, plus what its multishot receive had already
// delivered in the event-loop pass it paused in (at most the worker's buffer ring). So many
// busy connections drain that shared ring now and then (a receive ends with ENOBUFS); such a
// receive was re-armed even on a paused connection, which then read another batch, and
// another: gigabytes with enough clients.
TEST_F(InputBounds, ClientsThatPipelineAndNeverReadHoldBoundedInput) {
  ASSERT_TRUE(start(input_bounds_options()));
  constexpr size_t kClients = 64;
  NonReadingClients clients;
  ASSERT_TRUE(clients.connect(port(), kClients));
  const uint64_t sent = clients.send_for(3000ms);
  const int64_t held = worker_stat(server(), "pending_input_bytes");
  const int64_t peak = worker_stat(server(), "pending_input_peak");
  std::printf("sent %llu bytes; pending_input_bytes %lld, pending_input_peak %lld\n",
              static_cast<unsigned long long>(sent), static_cast<long long>(held),
              static_cast<long long>(peak));
  ASSERT_GE(held, 0);
  // The connections did pause with input held.
  EXPECT_GE(peak, kPendingInputMax / 2);
  // One connection: kPendingInputMax plus what one pass of its multishot receive delivered,
  // at most the worker's whole buffer ring (512 x 16 KiB).
  EXPECT_LE(peak, kPendingInputMax + 512 * 16 * 1024);
  // All of them: the same bound (measured: 8-27 MiB here; 30-135 MiB while the multishot
  // receive ran on until more than 64 KiB was held; 1.5 GiB, and growing, when a paused
  // receive was re-armed after ENOBUFS).
  EXPECT_LE(held, static_cast<int64_t>(kClients) * (kPendingInputMax + 512 * 16 * 1024));
  clients.reset_all();
  EXPECT_TRUE(serves_healthz(port()));
}

// Connections that held input give its memory back when they close: a released slot keeps at
// most 16 KiB in each of its two input buffers (it kept their whole capacity, so every slot
// that ever paused kept its largest backlog for the life of the process).
TEST_F(InputBounds, ClosedConnectionsKeepNoLargeInputBuffers) {
  ASSERT_TRUE(start(input_bounds_options()));
  constexpr size_t kClients = 32;
  NonReadingClients clients;
  ASSERT_TRUE(clients.connect(port(), kClients));
  (void)clients.send_for(1500ms);
  const int64_t held = worker_stat(server(), "pending_input_bytes");
  // The connections hold input: at least kPendingInputMax / 2 each on average.
  ASSERT_GE(held, static_cast<int64_t>(kClients) * kPendingInputMax / 2);
  clients.reset_all();
  const int64_t bound = static_cast<int64_t>(kClients) * 2 * 16 * 1024;
  int64_t after = -1;
  for (const auto end = Clock::now() + 5000ms; Clock::now() < end;) {
    after = worker_stat(server(), "pending_input_bytes");
    if (after >= 0 && after <= bound) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_GE(after, 0);
  EXPECT_LE(after, bound) << "held while the clients were connected: " << held;
}

// ---------------------------------------------------------------------------------------------
// Timeouts

class HttpEngineTimeouts : public ServerTest {
 protected:
  static ServerOptions short_timeouts() {
    return with({{"header_timeout_ms", 500},
                 {"body_timeout_ms", 500},
                 {"idle_timeout_ms", 500},
                 {"linger_timeout_ms", 200}});
  }
};

TEST_F(HttpEngineTimeouts, IdleKeepAliveConnectionIsClosedSilentlyAfterIdleTimeout) {
  ASSERT_TRUE(start(short_timeouts()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send(kHealthz));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  ASSERT_EQ(r->status, 200);
  const auto idle_since = Clock::now();
  EXPECT_TRUE(closes_without_more_bytes(client, 3000ms));
  EXPECT_GE(since(idle_since), 300ms) << "closed long before idle_timeout_ms=500";
}

TEST_F(HttpEngineTimeouts, SlowlorisHeadersGet408WithinHeaderTimeoutDespiteSteadyBytes) {
  ASSERT_TRUE(start(short_timeouts()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  // Never completes; one byte per 100 ms would take 20 s to send.
  const std::string trickle =
      "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: " + std::string(200, 'a');
  const auto start_time = Clock::now();
  for (char c : trickle) {
    if (!client.send(std::string_view(&c, 1))) break;  // server gone: read what it said
    if (client.readable(100ms)) break;                 // paces the trickle, without sleeping
  }
  const std::optional<Response> r = client.read_response(2000ms);
  const Millis answered_after = since(start_time);
  EXPECT_TRUE(is_rejection(r, 408)) << describe(r, client);
  EXPECT_GE(answered_after, 400ms);
  EXPECT_LT(answered_after, 2000ms) << "the header timeout was extended by the trickle";
  EXPECT_TRUE(closes_without_more_bytes(client, 2000ms));
  EXPECT_LT(since(start_time), 3000ms);
}

TEST_F(HttpEngineTimeouts, StalledBodyGets408AndTheConnectionIsClosed) {
  ASSERT_TRUE(start(short_timeouts()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  const auto start_time = Clock::now();
  ASSERT_TRUE(client.send("POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello"));
  const std::optional<Response> r = client.read_response(3000ms);
  EXPECT_TRUE(is_rejection(r, 408)) << describe(r, client);
  EXPECT_GE(since(start_time), 400ms);
  EXPECT_TRUE(closes_without_more_bytes(client, 2000ms));
  EXPECT_LT(since(start_time), 3000ms);
}

TEST_F(HttpEngineTimeouts, AStalledHeadRequestBodyGets408WithoutABody) {
  ASSERT_TRUE(start(short_timeouts()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(client.send("HEAD /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello"));
  const std::optional<Response> r = client.read_response(3000ms, /*head=*/true);
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 408) << r->raw;
  EXPECT_TRUE(r->connection_close()) << r->raw;
  EXPECT_TRUE(closes_without_more_bytes(client, 2000ms)) << "a body after the HEAD's 408";
}

TEST_F(HttpEngineTimeouts, ConnectionThatSendsNothingIsClosedWithoutAResponse) {
  ASSERT_TRUE(start(short_timeouts()));
  RawClient client;
  ASSERT_TRUE(connect(client));
  const auto start_time = Clock::now();
  EXPECT_TRUE(closes_without_more_bytes(client, 3000ms));
  EXPECT_GE(since(start_time), 300ms);
  EXPECT_TRUE(serves_healthz(port()));
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

class GracefulShutdown : public ServerTest {
 protected:
  // Starts "POST /nope" with a 10-byte body and sends the first 5 bytes. Waiting for the
  // 100 Continue proves keygate has parsed the headers, so the request is in flight (not an
  // idle connection) when a signal arrives.
  static ::testing::AssertionResult start_half_request(RawClient& client) {
    if (!client.send("POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
                     "Expect: 100-continue\r\n\r\n")) {
      return ::testing::AssertionFailure() << "send failed";
    }
    const std::optional<Response> interim = client.read_response();
    if (!interim || interim->status != 100) {
      return ::testing::AssertionFailure() << "no 100 Continue: " << describe(interim, client);
    }
    if (!client.send("hello")) return ::testing::AssertionFailure() << "send failed";
    return ::testing::AssertionSuccess();
  }
};

TEST_F(GracefulShutdown, InFlightRequestIsAnsweredAfterSigtermThenTheServerExitsZero) {
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(start_half_request(client));

  ASSERT_TRUE(server().send_signal(SIGTERM));
  ASSERT_TRUE(server().wait_for_output("draining", 3000ms)) << server().output();
  // The line is printed just before the workers are told; give them a moment to act on it.
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(client.send("world"));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(r->connection_close()) << "a draining server should end keep-alive:\n" << r->raw;
  EXPECT_TRUE(closes_without_more_bytes(client));
  client.close();  // ends the server's lingering close at once

  const ExitStatus status = server().wait_exit(5000ms);
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_NE(server().output().find("keygate: stopped\n"), std::string::npos) << server().output();
}

TEST_F(GracefulShutdown, NewConnectionsAfterSigtermAreRefused) {
  ASSERT_TRUE(start(with({{"drain_timeout_ms", 5000}})));
  RawClient in_flight;
  ASSERT_TRUE(connect(in_flight));
  ASSERT_TRUE(start_half_request(in_flight));  // keeps the server draining, not exiting

  ASSERT_TRUE(server().send_signal(SIGTERM));
  ASSERT_TRUE(server().wait_for_output("draining", 3000ms)) << server().output();
  // The line is printed just before the workers are told; give them a moment to act on it.
  std::this_thread::sleep_for(100ms);

  RawClient late;
  std::string error;
  if (late.connect(port(), &error, 1000ms)) {
    late.send(kHealthz);
    const std::string bytes = late.read_until_close(1000ms);
    EXPECT_EQ(bytes, "") << "a connection opened after SIGTERM was served";
    EXPECT_NE(late.last_end(), ReadEnd::kTimeout)
        << "a connection opened after SIGTERM was accepted by the kernel and then neither "
           "answered nor closed for 1 s: it waits in the listen backlog until the drain ends";
  }

  ASSERT_TRUE(in_flight.send("world"));
  const std::optional<Response> r = in_flight.read_response();
  ASSERT_TRUE(r) << describe(r, in_flight);
  EXPECT_EQ(r->status, 404);
  in_flight.close();  // ends the server's lingering close at once
  const ExitStatus status = server().wait_exit(5000ms);
  EXPECT_TRUE(status.clean()) << status.describe();
}

TEST_F(GracefulShutdown, StalledClientCannotHoldTheServerPastDrainTimeout) {
  // body_timeout_ms stays at its 30 s default: only the drain deadline can end the request.
  ASSERT_TRUE(start(with({{"drain_timeout_ms", 500}})));
  RawClient stalled;
  ASSERT_TRUE(connect(stalled));
  ASSERT_TRUE(start_half_request(stalled));

  const auto signalled = Clock::now();
  ASSERT_TRUE(server().send_signal(SIGTERM));
  const ExitStatus status = server().wait_exit(5000ms);
  EXPECT_LT(since(signalled), 3000ms);
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_NE(server().output().find("keygate: stopped\n"), std::string::npos) << server().output();
  stalled.read_until_close(1000ms);
  EXPECT_NE(stalled.last_end(), ReadEnd::kTimeout) << "the stalled connection was left open";
}

TEST_F(GracefulShutdown, IdleConnectionsDoNotDelayShutdown) {
  ASSERT_TRUE(start());  // drain_timeout_ms keeps its 10 s default
  RawClient kept_alive;
  ASSERT_TRUE(connect(kept_alive));
  ASSERT_TRUE(kept_alive.send(kHealthz));
  const std::optional<Response> r = kept_alive.read_response();
  ASSERT_TRUE(r) << describe(r, kept_alive);
  RawClient silent;  // connected, never sends
  ASSERT_TRUE(connect(silent));

  const auto signalled = Clock::now();
  const ExitStatus status = server().stop(SIGTERM, 5000ms);
  // The silent one is waited for, for its first byte, 1 s at most (kDrainFreshWaitMaxMs):
  // the stop takes about that, not drain_timeout_ms.
  EXPECT_LT(since(signalled), 3000ms) << "idle connections held the drain";
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_TRUE(closes_without_more_bytes(kept_alive, 1000ms));
  EXPECT_TRUE(closes_without_more_bytes(silent, 1000ms));
}

// One worker, so a request answered on a later connection shows the earlier one was accepted
// (a worker takes its backlog in order).
void answer_one_request_after(RawClient& earlier, uint16_t port) {
  ASSERT_TRUE(earlier.connected());
  const std::optional<Response> r = round_trip(port, kHealthz);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->status, 200);
}

// A client that connected a moment before the SIGTERM and sends its request just after it
// (keygate's own SO_REUSEPORT socket): the request is served, with `Connection: close`, not
// met with an empty reply (a client retries on its own only on a reused connection).
TEST_F(GracefulShutdown, AConnectionAcceptedBeforeSigtermGetsItsFirstRequestAnswered) {
  ASSERT_TRUE(start(with({}, 1)));  // drain_timeout_ms and header_timeout_ms: 10 s defaults
  RawClient just_connected;
  ASSERT_TRUE(connect(just_connected));
  ASSERT_NO_FATAL_FAILURE(answer_one_request_after(just_connected, port()));

  ASSERT_TRUE(server().send_signal(SIGTERM));
  ASSERT_TRUE(server().wait_for_output("draining", 3000ms)) << server().output();
  // The line is printed just before the workers are told; give them a moment to act on it.
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(just_connected.send(kHealthz));
  const std::optional<Response> r = just_connected.read_response();
  ASSERT_TRUE(r) << describe(r, just_connected);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "ok");
  EXPECT_TRUE(r->connection_close()) << "a draining server should end keep-alive:\n" << r->raw;
  EXPECT_TRUE(closes_without_more_bytes(just_connected));
  just_connected.close();  // ends the server's lingering close at once

  const ExitStatus status = server().wait_exit(5000ms);
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_NE(server().output().find("keygate: stopped\n"), std::string::npos) << server().output();
}

// A connection that never sends a byte is waited for at the drain, but only for
// kDrainFreshWaitMaxMs (1 s), not for its header timeout or the drain deadline (10 s each).
TEST_F(GracefulShutdown, AConnectionThatNeverSendsIsWaitedForOneSecondAtMost) {
  ASSERT_TRUE(start(with({}, 1)));  // drain_timeout_ms and header_timeout_ms: 10 s defaults
  RawClient silent;
  ASSERT_TRUE(connect(silent));
  ASSERT_NO_FATAL_FAILURE(answer_one_request_after(silent, port()));

  const auto signalled = Clock::now();
  ASSERT_TRUE(server().send_signal(SIGTERM));
  ASSERT_TRUE(server().wait_for_output("draining", 3000ms)) << server().output();
  // Still open a while into the drain: its request may be on the way.
  silent.read_until_close(400ms);
  EXPECT_EQ(silent.last_end(), ReadEnd::kTimeout) << "closed at once, as an idle connection";
  const ExitStatus status = server().wait_exit(5000ms);
  EXPECT_LT(since(signalled), 2500ms) << "a silent connection held the drain";
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_TRUE(closes_without_more_bytes(silent, 1000ms));
}

TEST_F(GracefulShutdown, SigintStopsTheServerLikeSigterm) {
  ASSERT_TRUE(start());
  EXPECT_TRUE(serves_healthz(port()));
  const ExitStatus status = server().stop(SIGINT, 5000ms);
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_NE(server().output().find("keygate: stopped\n"), std::string::npos) << server().output();
}

// Ctrl-C twice: the second SIGINT ends a drain that a stalled request would hold for 30 s, and
// keygate still exits 0 with its "stopped" line.
TEST_F(GracefulShutdown, ASecondSigintDuringTheDrainStopsNow) {
  ASSERT_TRUE(start(with({{"drain_timeout_ms", 30000}})));
  RawClient stalled;
  ASSERT_TRUE(connect(stalled));
  ASSERT_TRUE(start_half_request(stalled));
  ASSERT_TRUE(server().send_signal(SIGINT));
  ASSERT_TRUE(server().wait_for_output("draining", 3000ms)) << server().output();
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(server().running()) << "the stalled request did not hold the drain";
  const auto second = Clock::now();
  ASSERT_TRUE(server().send_signal(SIGINT));
  const ExitStatus status = server().wait_exit(10000ms);
  EXPECT_LT(since(second), 3000ms) << "the second SIGINT did not cut the drain short";
  EXPECT_TRUE(status.clean()) << status.describe();
  EXPECT_NE(server().output().find("keygate: second SIGINT received"), std::string::npos)
      << server().output();
  EXPECT_NE(server().output().find("keygate: stopped\n"), std::string::npos) << server().output();
  stalled.read_until_close(1000ms);
  EXPECT_NE(stalled.last_end(), ReadEnd::kTimeout) << "the stalled connection was left open";
}

// SIGHUP, SIGUSR1 and SIGUSR2 (a reload request, a terminal hangup, a stray signal) neither
// stop keygate nor cut a request: they are said on stderr and ignored.
// SIGHUP is a reload (tests/integration/reload_test.cc): here, that it too leaves keygate
// running and the request in flight whole.
TEST_F(GracefulShutdown, UserSignalsAreIgnoredAndSaidAndAHangupReloads) {
  ServerOptions options;
  options.capture_stderr = true;
  ASSERT_TRUE(start(options));
  RawClient client;
  ASSERT_TRUE(connect(client));
  ASSERT_TRUE(start_half_request(client));
  for (const int sig : {SIGHUP, SIGUSR1, SIGUSR2}) ASSERT_TRUE(server().send_signal(sig));
  for (const char* said : {"keygate: reloaded ", "keygate: SIGUSR1 ignored",
                           "keygate: SIGUSR2 ignored"}) {
    EXPECT_TRUE(server().wait_for_error_output(said, 3000ms)) << server().error_output();
  }
  ASSERT_TRUE(server().running());
  // The request in flight completes on its connection, and new ones are served.
  ASSERT_TRUE(client.send("world"));
  const std::optional<Response> answer = client.read_response();
  ASSERT_TRUE(answer.has_value()) << describe(answer, client);
  EXPECT_EQ(answer->status, 404);
  EXPECT_TRUE(serves_healthz(port()));
  const ExitStatus status = server().stop(SIGTERM, 5000ms);
  EXPECT_TRUE(status.clean()) << status.describe();
}

// A SIGTERM that comes while keygate is still starting does not kill it (exit 143, nothing
// closed): it is taken once keygate is up, which then stops as usual, exit 0. keygate is caught
// mid-start-up for sure by reading its config from a pipe (`--config <(generate)`): the signal
// is sent while it waits for the config text, after which the rest of the start-up runs.
TEST(StartupSignals, ASigtermWhileStartingStopsKeygateOnceUpWithExitZero) {
  TempDir dir;
  const std::string fifo = dir.path() + "/config.toml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  SpawnedChild child;
  std::string error;
  ASSERT_TRUE(spawn_child(keygate_binary(),
                          {"--config", fifo, "--listen", "127.0.0.1:0", "--admin-listen",
                           "127.0.0.1:0", "--workers", "1", "--data-dir", dir.path() + "/data"},
                          false, &child, &error))
      << error;
  // The open for writing succeeds only once keygate has the pipe open for reading: it is in
  // main, waiting for the config.
  int fd = -1;
  const auto deadline = Clock::now() + 10s;
  while (fd < 0 && Clock::now() < deadline) {
    fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) std::this_thread::sleep_for(1ms);
  }
  ASSERT_GE(fd, 0) << "keygate never opened its config: " << std::strerror(errno);
  ASSERT_EQ(::kill(child.pid, SIGTERM), 0);
  std::this_thread::sleep_for(50ms);  // delivered (or left pending) before the config is in
  ::close(fd);  // an empty config: the defaults, with the flags above
  const ExitStatus status = reap_child(child.pid, Clock::now() + 20s);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(child.out_fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(child.out_fd);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstdout:\n" << out;
  EXPECT_NE(out.find("keygate: listening"), std::string::npos) << out;
  EXPECT_NE(out.find("keygate: stopped\n"), std::string::npos) << out;
}

// ---------------------------------------------------------------------------------------------
// Command line

size_t line_count(std::string_view text) {
  size_t n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

TEST(Cli, UnknownFlagExitsWithCode2AndOneStderrLine) {
  const ProcessResult p = run_keygate({"--no-such-flag"});
  EXPECT_TRUE(p.status.exited && p.status.code == 2) << p.status.describe();
  EXPECT_EQ(line_count(p.err), 1u) << p.err;
  EXPECT_EQ(p.err.rfind("keygate: ", 0), 0u) << p.err;
  EXPECT_NE(p.err.find("--no-such-flag"), std::string::npos) << p.err;
  EXPECT_EQ(p.out, "");
}

// argv and paths can hold any bytes: a line break or a terminal escape in a flag or a directory
// name is quoted as \xHH, so the failure stays the one line a supervisor's log shows.
TEST(Cli, FailuresQuotingTheCommandLineStayOneLine) {
  const ProcessResult flag = run_keygate({"--no\nsuch\x1b[2J"});
  EXPECT_TRUE(flag.status.exited && flag.status.code == 2) << flag.status.describe();
  EXPECT_EQ(flag.err, "keygate: unknown flag '--no\\x0asuch\\x1b[2J' (see --help)\n");
  const ProcessResult workers = run_keygate({"--workers", "1\r2"});
  EXPECT_TRUE(workers.status.exited && workers.status.code == 2) << workers.status.describe();
  EXPECT_EQ(line_count(workers.err), 1u) << workers.err;
  EXPECT_NE(workers.err.find("'1\\x0d2'"), std::string::npos) << workers.err;
  // A data directory that cannot be created (its parent is a file), named with a line break.
  TempDir dir;
  const std::string file = dir.path() + "/file";
  ASSERT_TRUE(std::ofstream(file).good());
  const ProcessResult data =
      run_keygate({"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir",
                   file + "/a\nb"});
  EXPECT_TRUE(data.status.exited && data.status.code == 1) << data.status.describe();
  EXPECT_EQ(line_count(data.err), 1u) << data.err;
  EXPECT_NE(data.err.find("/a\\x0ab"), std::string::npos) << data.err;
  EXPECT_EQ(data.out, "");
}

TEST(Cli, HelpExitsZeroAndMentionsEveryFlag) {
  const ProcessResult p = run_keygate({"--help"});
  EXPECT_TRUE(p.status.clean()) << p.status.describe();
  for (const char* flag :
       {"--config", "--listen", "--admin-listen", "--data-dir", "--workers", "--log-dir"}) {
    EXPECT_NE(p.out.find(flag), std::string::npos) << flag << " missing from --help:\n" << p.out;
  }
}

// Every KEYGATE_* variable the server reads (a getenv in the files the keygate binary is built
// from), and NOTIFY_SOCKET, is listed by --help and in docs/configuration.md's "Environment"
// table.
TEST(Cli, HelpAndTheConfigurationDocNameEveryEnvironmentVariableTheServerReads) {
  namespace fs = std::filesystem;
  const fs::path root = KEYGATE_SOURCE_DIR;
  std::vector<fs::path> sources = {root / "tools" / "keygate_main.cc",
                                   root / "tools" / "service_notifier.cc"};
  for (const char* dir : {"core", "net", "storage"}) {
    for (const fs::directory_entry& e : fs::recursive_directory_iterator(root / dir)) {
      const std::string ext = e.path().extension().string();
      if (ext == ".cc" || ext == ".h") sources.push_back(e.path());
    }
  }
  auto read = [](const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  std::vector<std::string> variables;
  for (const fs::path& path : sources) {
    const std::string text = read(path);
    constexpr std::string_view kCall = "getenv(\"KEYGATE_";
    for (size_t at = text.find(kCall); at != std::string::npos; at = text.find(kCall, at + 1)) {
      const size_t begin = at + kCall.size() - std::string_view("KEYGATE_").size();
      variables.push_back(text.substr(begin, text.find('"', begin) - begin));
    }
    if (text.find("getenv(\"NOTIFY_SOCKET\")") != std::string::npos) {
      variables.push_back("NOTIFY_SOCKET");
    }
  }
  EXPECT_NE(std::find(variables.begin(), variables.end(), "NOTIFY_SOCKET"), variables.end())
      << "tools/service_notifier.cc no longer reads NOTIFY_SOCKET: is the tree moved?";
  ASSERT_GE(variables.size(), 4u) << "the scan found too few getenv calls: is the tree moved?";
  const ProcessResult help = run_keygate({"--help"});
  ASSERT_TRUE(help.status.clean()) << help.status.describe();
  const std::string doc = read(root / "docs" / "configuration.md");
  const size_t table = doc.find("\n## Environment\n");
  ASSERT_NE(table, std::string::npos) << "docs/configuration.md has no Environment section";
  for (const std::string& name : variables) {
    EXPECT_NE(help.out.find("  " + name + " "), std::string::npos)
        << name << " missing from --help:\n"
        << help.out;
    EXPECT_NE(doc.find("| `" + name + "` |", table), std::string::npos)
        << name << " missing from docs/configuration.md's Environment table";
  }
}

TEST(Cli, ReadyLineNamesBothPortsTheWorkerCountAndTheRingMode) {
  TestServer server(with({}, /*workers=*/2));
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  const std::string& out = server.output();
  EXPECT_EQ(line_count(out), 1u) << out;
  EXPECT_EQ(
      out.rfind("keygate: listening data=127.0.0.1:" + std::to_string(server.data_port()) +
                    " admin=127.0.0.1:" + std::to_string(server.admin_port()) + " workers=2 ring=",
                0),
      0u)
      << out;
  EXPECT_NE(server.data_port(), server.admin_port());
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe();
}

// --workers 0 counts the CPUs the process may run on, not the machine's: under `taskset -c 0`
// that is one worker, however many CPUs are online.
TEST(Cli, WorkersZeroFollowsTheCpuAffinityMask) {
  ServerOptions options = with({}, /*workers=*/0);
  options.wrapper = {"/usr/bin/taskset", "-c", "0"};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  EXPECT_NE(server.output().find(" workers=1 ring="), std::string::npos) << server.output();
  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe();
}

TEST(Cli, DataDirLockedByARunningServerMakesTheSecondExitWithInUse) {
  TestServer first;
  std::string error;
  ASSERT_TRUE(first.start(&error)) << error;
  TempDir other;
  const ProcessResult second =
      run_keygate({"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--workers", "1",
                   "--data-dir", first.data_dir(), "--log-dir", other.path() + "/logs"});
  EXPECT_TRUE(second.status.exited && second.status.code != 0) << second.status.describe();
  EXPECT_NE(second.err.find("in use"), std::string::npos) << second.err;
  EXPECT_EQ(second.out, "");
  EXPECT_TRUE(serves_healthz(first.data_port()));
  const ExitStatus status = first.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe();
}

// A directory opens as an ifstream and reads as an empty, valid config: keygate used to start on
// its defaults (and create a bootstrap admin key) instead of refusing.
TEST(Cli, ConfigPathThatIsADirectoryOrMissingExitsWithCode2AndTheReason) {
  TempDir dir;
  for (const auto& [path, reason] :
       {std::pair<std::string, std::string>{dir.path(), "Is a directory"},
        {dir.path() + "/absent.toml", "No such file or directory"}}) {
    const ProcessResult p =
        run_keygate({"--config", path, "--listen", "127.0.0.1:0", "--admin-listen",
                     "127.0.0.1:0", "--data-dir", dir.path() + "/data"});
    EXPECT_TRUE(p.status.exited && p.status.code == 2) << p.status.describe() << "\n" << p.err;
    EXPECT_EQ(p.err, "keygate: cannot read config file " + path + ": " + reason + "\n");
    EXPECT_EQ(p.out, "");
  }
}

// A bad bootstrap admin key is a usage error with the reason, before any file is touched; the
// value itself is never printed.
TEST(Cli, BadBootstrapAdminKeyExitsWithCode2AndTheReason) {
  TempDir dir;
  const std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--admin-listen",
                                         "127.0.0.1:0", "--data-dir", dir.path() + "/data"};
  for (const auto& [value, reason] : {std::pair<std::string, std::string>{
                                          "has a-space-inside", "outside printable ASCII"},
                                      {std::string(257, 'k'), "longer than 256"},
                                      {"kg_" + std::string(37, 'A'), "checksum"}}) {
    const std::vector<std::string> env = {"PATH=/usr/bin:/bin",
                                          "KEYGATE_BOOTSTRAP_ADMIN_KEY=" + value};
    const ProcessResult p = run_process(keygate_binary(), args, &env);
    EXPECT_TRUE(p.status.exited && p.status.code == 2) << p.status.describe() << "\n" << p.err;
    EXPECT_EQ(p.err.rfind("keygate: KEYGATE_BOOTSTRAP_ADMIN_KEY ", 0), 0u) << p.err;
    EXPECT_NE(p.err.find(reason), std::string::npos) << p.err;
    EXPECT_EQ(p.err.find(value), std::string::npos) << "the value was printed";
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/data")) << "a store was created";
  }
}

// A pipe is read like a file (`--config <(generate)`).
TEST(Cli, ConfigFromAPipeIsRead) {
  TempDir dir;
  const std::string fifo = dir.path() + "/config.pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  std::thread writer([&] {
    const int fd = ::open(fifo.c_str(), O_WRONLY);
    if (fd < 0) return;
    const std::string text = "[limits]\npipeline_depth_max = 0\n";  // out of range: exit 2
    (void)!::write(fd, text.data(), text.size());
    ::close(fd);
  });
  const ProcessResult p = run_keygate({"--config", fifo});
  writer.join();
  EXPECT_TRUE(p.status.exited && p.status.code == 2) << p.status.describe();
  EXPECT_NE(p.err.find("pipeline_depth_max"), std::string::npos) << p.err;
}

// ...but an empty file is a valid config: the run gets past it to the next check (--listen).
TEST(Cli, EmptyConfigFileIsRead) {
  TempDir dir;
  const std::string config = dir.write_file("keygate.toml", "");
  const ProcessResult p = run_keygate({"--config", config, "--listen", "localhost:80"});
  EXPECT_TRUE(p.status.exited && p.status.code == 2) << p.status.describe();
  EXPECT_EQ(p.err.find("config file"), std::string::npos) << p.err;
  EXPECT_NE(p.err.find("--listen"), std::string::npos) << p.err;
}

struct BadConfig {
  const char* name;
  const char* toml;
};

void PrintTo(const BadConfig& c, std::ostream* os) { *os << c.name; }

class CliBadConfig : public ::testing::TestWithParam<BadConfig> {};

TEST_P(CliBadConfig, ExitsWithCode2AndOneStderrLine) {
  TempDir dir;
  const std::string config = dir.write_file("keygate.toml", GetParam().toml);
  const ProcessResult p =
      run_keygate({"--config", config, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                   "--data-dir", dir.path() + "/data"});
  EXPECT_TRUE(p.status.exited && p.status.code == 2) << p.status.describe() << "\n" << p.err;
  EXPECT_EQ(line_count(p.err), 1u) << p.err;
  EXPECT_EQ(p.err.rfind("keygate: ", 0), 0u) << p.err;
  EXPECT_EQ(p.out, "");
}

INSTANTIATE_TEST_SUITE_P(
    Configs, CliBadConfig,
    ::testing::Values(BadConfig{"UnknownKey", "[limits]\nheader_timeout = 5\n"},
                      BadConfig{"UnknownTable", "[limit]\nheader_timeout_ms = 5\n"},
                      BadConfig{"WrongType", "[limits]\nheader_timeout_ms = \"fast\"\n"},
                      BadConfig{"OutOfRange", "[limits]\npipeline_depth_max = 0\n"},
                      BadConfig{"AdminConnectionsOutOfRange", "[admin]\nconnections_max = 0\n"},
                      BadConfig{"MalformedToml", "[server\nlisten = \n"},
                      BadConfig{"BadListenAddress", "[server]\nlisten = \"localhost:80\"\n"}),
    [](const ::testing::TestParamInfo<BadConfig>& param) { return std::string(param.param.name); });

// ---------------------------------------------------------------------------------------------
// Malformed and smuggling-shaped requests

struct MalformedCase {
  const char* name;
  std::string bytes;  // the malformed request, smuggled request appended where meaningful
  int status;         // 0: any 4xx
};

enum class SendMode { kOneWrite, kBytewise };

// Readable parameter names in test listings (gtest would print the bytes of the struct).
void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }
void PrintTo(SendMode mode, std::ostream* os) {
  *os << (mode == SendMode::kOneWrite ? "one write" : "one byte per write");
}

std::vector<MalformedCase> malformed_cases() {
  const std::string te = "Transfer-Encoding: chunked\r\n";
  return {
      {"ContentLengthAndTransferEncoding",
       "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n" + te + "\r\n0\r\n\r\n" + kSmuggled,
       0},
      {"TwoDifferentContentLengths",
       "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" +
           kSmuggled,
       0},
      {"ContentLengthWithPlusSign",
       "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello" + kSmuggled, 0},
      {"ObsFoldHidingContentLength",
       "POST /nope HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n Content-Length: 5\r\n\r\nhello" + kSmuggled,
       0},
      // The fold before any value byte: llhttp starts X-Fold's value on the continuation line.
      {"ObsFoldOfAnEmptyValueHidingContentLength",
       "POST /nope HTTP/1.1\r\nHost: a\r\nX-Fold:\r\n Content-Length: 5\r\n\r\nhello" + kSmuggled,
       0},
      {"ObsFoldOfAnEmptyValueHidingChunked",
       "POST /nope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" +
           kSmuggled,
       0},
      {"BareLfLineEndings", "GET /healthz HTTP/1.1\nHost: a\n\n" + kSmuggled, 0},
      {"NulInHeaderValue", "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n"s + kSmuggled, 0},
      {"SpaceBeforeColon",
       "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello" + kSmuggled, 0},
      {"EmptyHeaderName", "GET /healthz HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n" + kSmuggled, 0},
      {"Http11WithoutHost", "GET /healthz HTTP/1.1\r\n\r\n" + kSmuggled, 0},
      {"TwoHostHeaders", "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + kSmuggled, 0},
      {"Http2VersionOnRequestLine", "GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n" + kSmuggled, 505},
      // llhttp 8 takes these protocol names where HTTP/ belongs.
      {"RtspRequestLine",
       "GET /healthz RTSP/1.0\r\nConnection: keep-alive\r\n\r\n" + kSmuggled, 400},
      {"IceRequestLine",
       "SOURCE /healthz ICE/1.0\r\nConnection: keep-alive\r\n\r\n" + kSmuggled, 400},
      {"TransferEncodingInHttp10",
       "POST /nope HTTP/1.0\r\nHost: a\r\n" + te + "\r\n5\r\nhello\r\n0\r\n\r\n" + kSmuggled, 0},
      {"HexPrefixedChunkSize",
       "POST /nope HTTP/1.1\r\nHost: a\r\n" + te + "\r\n0x5\r\nhello\r\n0\r\n\r\n" + kSmuggled, 0},
      {"MissingCrlfAfterChunkData",
       "POST /nope HTTP/1.1\r\nHost: a\r\n" + te + "\r\n5\r\nhello0\r\n\r\n" + kSmuggled, 0},
      {"ConnectMethod", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" + kSmuggled, 0},
      {"UpgradeToWebsocket",
       "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" +
           kSmuggled,
       0},
      // Not malformed: the first request is served normally, the one after it must not be.
      {"ConnectionCloseThenPipelinedRequest",
       "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + kSmuggled, 200},
  };
}

class Malformed : public ServerTest,
                  public ::testing::WithParamInterface<std::tuple<MalformedCase, SendMode>> {};

TEST_P(Malformed, GetsOneRejectionThenCloseAndTheServerStaysUp) {
  const auto& [c, mode] = GetParam();
  ASSERT_TRUE(start());
  RawClient client;
  ASSERT_TRUE(connect(client));
  // A failed write only means the server already answered and closed; the response is read
  // either way.
  if (mode == SendMode::kOneWrite) {
    client.send(c.bytes);
  } else {
    client.send_bytewise(c.bytes);
  }
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r) << describe(r, client);
  if (c.status == 200) {
    EXPECT_EQ(r->status, 200) << r->raw;
    EXPECT_EQ(r->body, "ok");
    EXPECT_TRUE(r->connection_close()) << r->raw;
  } else if (c.status != 0) {
    EXPECT_TRUE(is_rejection(r, c.status));
  } else {
    EXPECT_TRUE(r->status >= 400 && r->status <= 499) << r->raw;
    EXPECT_TRUE(is_rejection(r, r->status));
  }
  EXPECT_EQ(r->raw.find("smuggled"), std::string::npos) << r->raw;
  EXPECT_TRUE(closes_without_more_bytes(client)) << "the request after it was parsed";
  EXPECT_TRUE(serves_healthz(port())) << "canary on a new connection";
}

INSTANTIATE_TEST_SUITE_P(
    Requests, Malformed,
    ::testing::Combine(::testing::ValuesIn(malformed_cases()),
                       ::testing::Values(SendMode::kOneWrite, SendMode::kBytewise)),
    [](const ::testing::TestParamInfo<std::tuple<MalformedCase, SendMode>>& param) {
      return std::string(std::get<0>(param.param).name) +
             (std::get<1>(param.param) == SendMode::kOneWrite ? "_OneWrite" : "_Bytewise");
    });

}  // namespace
}  // namespace keygate::integration
