// ResponseWriter: serializes one HTTP/1.1 response into a connection's reusable output buffer.
//
// Worker-local, no I/O. Appends to the std::string it is given (whose capacity the connection
// keeps between requests, so steady-state responses do not allocate). Handles HEAD (headers
// only), keep-alive vs close, and the JSON error shape every rejection uses:
//   {"error":"<code>","message":"<text>"}
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace keygate {

class ResponseWriter {
 public:
  // `date` is an IMF-fixdate string the worker refreshes once a second; it must outlive the
  // writer. `head_request` suppresses the body; `keep_alive` false adds "Connection: close".
  ResponseWriter(std::string& out, std::string_view date, bool head_request,
                 bool keep_alive) noexcept
      : out_(out), date_(date), head_request_(head_request), keep_alive_(keep_alive) {}

  // Writes the status line and the fixed headers. Call exactly once, first.
  void start(int status) noexcept;
  // Adds one header line. Name and value must not contain CR or LF (callers pass trusted or
  // validated text).
  void header(std::string_view name, std::string_view value) noexcept;
  // Adds Content-Type (when non-empty), Content-Length, Connection and the body; ends the
  // response. Call exactly once, last.
  void finish(std::string_view content_type, std::string_view body) noexcept;

  // A complete JSON error response: start(status) + finish_error(code, message).
  void error(int status, std::string_view code, std::string_view message) noexcept;
  // Ends a started response with the JSON error body {"error":code,"message":message}, or
  // {"error":code,"field":null,"message":message} with `field_null` (the admin API's shape).
  // `code` and `message` are static text without characters that need JSON escaping.
  void finish_error(std::string_view code, std::string_view message,
                    bool field_null = false) noexcept;

  // Names the error code (static text) of an error answer written with finish(), whose body
  // the caller formatted itself (the admin API's): error_code() then reports it.
  void set_error_code(std::string_view code) noexcept { error_code_ = code; }

  // The request was HTTP/1.0: a kept-alive connection must then say "Connection: keep-alive"
  // (1.0 clients assume close otherwise). Call before finish().
  void http10_client() noexcept { http10_ = true; }
  // Forces "Connection: close" on this response (call before finish()).
  void close_connection() noexcept { keep_alive_ = false; }
  bool keep_alive() const noexcept { return keep_alive_; }
  bool started() const noexcept { return started_; }
  bool finished() const noexcept { return finished_; }
  int status() const noexcept { return status_; }
  // The error code of an error response (error()/finish_error()), else empty: the access
  // log's "reason".
  std::string_view error_code() const noexcept { return error_code_; }

 private:
  std::string& out_;
  std::string_view date_;
  bool head_request_;
  bool keep_alive_;
  bool http10_ = false;
  bool started_ = false;
  bool finished_ = false;
  int status_ = 0;
  std::string_view error_code_;
};

// Reason phrase for a status code ("OK", "Not Found", ...); "Unknown" for unlisted codes.
std::string_view reason_phrase(int status) noexcept;

// Formats `unix_seconds` as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into `out`
// (exactly 29 bytes). Returns the written view.
std::string_view format_http_date(int64_t unix_seconds, char (&out)[29]) noexcept;

}  // namespace keygate
