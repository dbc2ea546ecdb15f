#include "core/response_writer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace keygate {
namespace {

constexpr std::string_view kDate = "Sun, 06 Nov 1994 08:49:37 GMT";

// The fixed prefix every response starts with.
std::string status_line_and_fixed_headers(std::string_view status_line) {
  return std::string(status_line) + "\r\nServer: keygate\r\nDate: " + std::string(kDate) + "\r\n";
}

TEST(ResponseWriter, WritesStatusLineFixedHeadersAndBody) {
  std::string out;
  ResponseWriter w(out, kDate, /*head_request=*/false, /*keep_alive=*/true);
  w.start(200);
  w.finish("text/plain", "hello");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 200 OK") +
                     "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
}

TEST(ResponseWriter, AddsHeadersInCallOrderBeforeContentHeaders) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(201);
  w.header("Location", "/keys/1");
  w.header("X-Request-Id", "abc");
  w.finish("application/json", "{}");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 201 Created") +
                     "Location: /keys/1\r\nX-Request-Id: abc\r\n"
                     "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
}

TEST(ResponseWriter, OmitsContentTypeWhenEmpty) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(200);
  w.finish("", "");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 200 OK") + "Content-Length: 0\r\n\r\n");
}

TEST(ResponseWriter, AppendsToExistingOutput) {
  // Pipelined responses share one output buffer: a second response goes after the first.
  std::string out = "previous response bytes";
  ResponseWriter w(out, kDate, false, true);
  w.start(404);
  w.finish("text/plain", "no");
  EXPECT_EQ(out, "previous response bytes" +
                     status_line_and_fixed_headers("HTTP/1.1 404 Not Found") +
                     "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nno");
}

TEST(ResponseWriter, AddsConnectionCloseWhenNotKeepingAlive) {
  std::string out;
  ResponseWriter w(out, kDate, false, /*keep_alive=*/false);
  EXPECT_FALSE(w.keep_alive());
  w.start(200);
  w.finish("text/plain", "bye");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 200 OK") +
                     "Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
                     "bye");
}

TEST(ResponseWriter, KeepAliveResponseHasNoConnectionHeader) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(200);
  w.finish("text/plain", "x");
  EXPECT_EQ(out.find("Connection:"), std::string::npos);
}

TEST(ResponseWriter, CloseConnectionForcesConnectionClose) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(503);
  w.close_connection();
  EXPECT_FALSE(w.keep_alive());
  w.finish("text/plain", "busy");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 503 Service Unavailable") +
                     "Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
                     "busy");
}

TEST(ResponseWriter, HeadResponseHasContentLengthButNoBody) {
  std::string out;
  ResponseWriter w(out, kDate, /*head_request=*/true, true);
  w.start(200);
  w.finish("text/plain", "hello");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 200 OK") +
                     "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\n");
}

TEST(ResponseWriter, NoContentHasNeitherContentLengthNorBody) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(204);
  w.finish("", "ignored");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 204 No Content") + "\r\n");
}

TEST(ResponseWriter, NotModifiedHasNeitherContentLengthNorBody) {
  std::string out;
  ResponseWriter w(out, kDate, false, false);
  w.start(304);
  w.header("ETag", "\"v1\"");
  w.finish("", "ignored");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 304 Not Modified") +
                     "ETag: \"v1\"\r\nConnection: close\r\n\r\n");
}

TEST(ResponseWriter, ContinueInterimResponseHasNoContentLength) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(100);
  w.finish("", "");
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 100 Continue") + "\r\n");
}

TEST(ResponseWriter, UnlistedStatusUsesUnknownReason) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.start(299);
  w.finish("", "");
  EXPECT_EQ(out.substr(0, out.find("\r\n")), "HTTP/1.1 299 Unknown");
}

TEST(ResponseWriter, ErrorWritesJsonShape) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  w.error(431, "header_too_large", "header section too large");
  const std::string body =
      "{\"error\":\"header_too_large\",\"message\":\"header section too large\"}\n";
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 431 Request Header Fields Too Large") +
                     "Content-Type: application/json\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n" + body);
  EXPECT_EQ(w.status(), 431);
  EXPECT_TRUE(w.started());
  EXPECT_TRUE(w.finished());
}

TEST(ResponseWriter, ErrorOnHeadRequestSendsNoBody) {
  std::string out;
  ResponseWriter w(out, kDate, /*head_request=*/true, /*keep_alive=*/false);
  w.error(404, "not_found", "no such route");
  const std::string body = "{\"error\":\"not_found\",\"message\":\"no such route\"}\n";
  EXPECT_EQ(out, status_line_and_fixed_headers("HTTP/1.1 404 Not Found") +
                     "Content-Type: application/json\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n");
}

TEST(ResponseWriter, TracksStartAndFinish) {
  std::string out;
  ResponseWriter w(out, kDate, false, true);
  EXPECT_FALSE(w.started());
  EXPECT_FALSE(w.finished());
  EXPECT_EQ(w.status(), 0);
  w.start(401);
  EXPECT_TRUE(w.started());
  EXPECT_FALSE(w.finished());
  EXPECT_EQ(w.status(), 401);
  w.finish("", "");
  EXPECT_TRUE(w.finished());
}

TEST(ResponseWriter, StartingTwiceIsAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::string out;
        ResponseWriter w(out, kDate, false, true);
        w.start(200);
        w.start(200);
      },
      "assertion failed");
}

TEST(ResponseWriter, HeaderAfterFinishIsAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::string out;
        ResponseWriter w(out, kDate, false, true);
        w.start(200);
        w.finish("", "");
        w.header("X", "y");
      },
      "assertion failed");
}

TEST(ResponseWriter, ReasonPhraseNamesEveryStatusTheServerSends) {
  EXPECT_EQ(reason_phrase(200), "OK");
  EXPECT_EQ(reason_phrase(400), "Bad Request");
  EXPECT_EQ(reason_phrase(405), "Method Not Allowed");
  EXPECT_EQ(reason_phrase(408), "Request Timeout");
  EXPECT_EQ(reason_phrase(413), "Content Too Large");
  EXPECT_EQ(reason_phrase(414), "URI Too Long");
  EXPECT_EQ(reason_phrase(417), "Expectation Failed");
  EXPECT_EQ(reason_phrase(429), "Too Many Requests");
  EXPECT_EQ(reason_phrase(431), "Request Header Fields Too Large");
  EXPECT_EQ(reason_phrase(503), "Service Unavailable");
  EXPECT_EQ(reason_phrase(505), "HTTP Version Not Supported");
}

TEST(ResponseWriter, ReasonPhraseIsUnknownForUnlistedCodes) {
  EXPECT_EQ(reason_phrase(299), "Unknown");
  EXPECT_EQ(reason_phrase(418), "Unknown");
  EXPECT_EQ(reason_phrase(999), "Unknown");
}

std::string http_date(int64_t unix_seconds) {
  char buf[29];
  const std::string_view v = format_http_date(unix_seconds, buf);
  EXPECT_EQ(v.data(), buf);
  EXPECT_EQ(v.size(), 29u);
  return std::string(v);
}

TEST(ResponseWriter, FormatsHttpDateOfTheEpoch) {
  EXPECT_EQ(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
}

TEST(ResponseWriter, FormatsHttpDateOfTheRfcExample) {
  EXPECT_EQ(http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
}

TEST(ResponseWriter, FormatsHttpDateOnLeapDays) {
  EXPECT_EQ(http_date(951782400), "Tue, 29 Feb 2000 00:00:00 GMT");
  EXPECT_EQ(http_date(1709164800), "Thu, 29 Feb 2024 00:00:00 GMT");
}

TEST(ResponseWriter, FormatsHttpDateAtEndOfDayAndYear) {
  EXPECT_EQ(http_date(1234567890), "Fri, 13 Feb 2009 23:31:30 GMT");
  EXPECT_EQ(http_date(1704067199), "Sun, 31 Dec 2023 23:59:59 GMT");
  EXPECT_EQ(http_date(253402300799), "Fri, 31 Dec 9999 23:59:59 GMT");
}

}  // namespace
}  // namespace keygate
