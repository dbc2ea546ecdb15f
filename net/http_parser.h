// HttpParser: incremental, strict HTTP/1.x request parser on llhttp, with every request limit.
//
// Worker-local: one per connection, reused across the connection's requests. The request it
// hands out is a set of views: into the caller's receive buffer when the request arrived in one
// piece (the common case, zero-copy), otherwise into the parser's own assembly buffer, which
// holds only the bytes of the request in progress and keeps its capacity between requests.
// Chunked bodies are de-chunked in place, so a request's body is always one contiguous view.
//
// On top of llhttp's strict mode it rejects what llhttp 8.1.0 still accepts: obs-fold, control
// characters in values, empty header names, a missing or repeated Host in HTTP/1.1, a Host
// that is not host[:port], Transfer-Encoding in HTTP/1.0, chunk extensions beyond
// header_bytes_max (llhttp reads them without a bound), protocols other than HTTP (RTSP/1.0,
// ICE/1.0), versions other than 1.0/1.1 (505), CONNECT and Upgrade.
// After an error the parser accepts no more input: the connection must be closed.
#pragma once

#include <llhttp.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/http_request.h"
#include "core/limits.h"

namespace keygate::net {

struct ParseError {
  int status = 400;                  // 4xx (or 505) to answer with
  std::string_view code;             // stable machine-readable code, e.g. "header_too_large"
  std::string_view message;          // short human text, safe to embed in JSON
};

class HttpParser {
 public:
  enum class Status {
    kNeedMore,        // all input consumed; the partial request is kept internally
    kRequest,         // request() is complete
    kExpectContinue,  // headers complete and the client waits for "100 Continue" before the body
    kError,           // error() says why; no further input is accepted
    kHeaders,         // with set_head_pause(true): headers of a request with a body are complete;
                      // request() has no body yet; call read_body() or stream_body() next and
                      // pass the rest of the same input (its views may still point into it)
    kBodyEnd,         // streaming: the body ended (the request is complete)
  };
  struct Result {
    Status status;
    size_t consumed;  // bytes of `input` used; the caller passes the rest in the next call
  };

  // Keeps a reference to `limits`: it must outlive the parser.
  explicit HttpParser(const Limits& limits);
  explicit HttpParser(Limits&&) = delete;
  HttpParser(const HttpParser&) = delete;
  // Makes the parser ready for a new connection (keeps buffer capacity). `body_bytes_max`
  // replaces limits.body_bytes_max for that connection (listeners differ: the admin port takes
  // bulk imports).
  void reset(uint64_t body_bytes_max);
  void reset() { reset(limits_.body_bytes_max); }
  // The Limits it refers to changed (a reload, on the parser's thread): `body_bytes_max`
  // replaces the connection's body cap from its next request on (the request in progress
  // keeps its own), and the header room and the kept assembly capacity follow the new head
  // caps. The head caps themselves are read from the Limits at each check. Allocates when
  // header_count_max grew: now, or, under a request that has begun (whose headers point into
  // that room), once that request is done.
  void adopt_limits(uint64_t body_bytes_max);
  HttpParser& operator=(const HttpParser&) = delete;

  // Parses from `input` (writable: chunked bodies are de-chunked in place). Stops after one
  // complete request so responses can be produced in order. The views of request() stay valid
  // until the next parse() call and as long as `input` is alive. Never throws, never blocks;
  // allocates only when a request spans receives and the assembly buffer must grow.
  // `readable_after` is how many bytes past input's end may be read (receive-buffer slack); it
  // becomes HttpRequest::body_readable_padding when the body lies in `input`.
  Result parse(std::span<char> input, size_t readable_after = 0);

  const HttpRequest& request() const { return request_; }

  // Makes parse() stop with kHeaders once the headers of a request that has a body are complete
  // (requests without a body still come whole, as kRequest), so the caller can decide how to
  // read the body before any of it is consumed. For this connection until the next reset().
  void set_head_pause(bool on) { head_pause_ = on; }
  // After kHeaders: the client sent "Expect: 100-continue" (HTTP/1.1) for this body.
  bool expects_continue() const { return expect_is_continue_ && parser_.http_minor == 1; }
  // After kHeaders: buffer the body as usual (the next complete parse returns kRequest). False
  // (with error() set, 413) when Content-Length already exceeds the body limit. A non-zero
  // `body_bytes_max` below the connection's limit lowers it for this request only.
  // `keep_bytes` below kKeepWholeBody keeps only the body's first `keep_bytes` bytes: the rest
  // is read (up to the body limit, 413 above as usual) and dropped, so the request occupies no
  // more than its head and that prefix, and request().body_bytes_dropped counts what went.
  static constexpr uint64_t kKeepWholeBody = UINT64_MAX;
  bool read_body(uint64_t body_bytes_max = 0, uint64_t keep_bytes = kKeepWholeBody);
  // After kHeaders: stream the body instead. Each parse() appends the body bytes it consumes to
  // `*sink` (re-framed as chunks when the request is chunked: see streamed_chunked()) and returns
  // kNeedMore, or kBodyEnd when the body ended (a chunked body's last-chunk is appended then).
  // More than `body_bytes_max` body bytes: kError 413 (already on Content-Length). Nothing of the
  // request is kept: request() is invalid from here on. False (error() set) on a too-large
  // Content-Length.
  bool stream_body(uint64_t body_bytes_max, std::string* sink);
  // The body being streamed is chunked (else it has a Content-Length: content_length()).
  bool streamed_chunked() const { return (parser_.flags & F_CHUNKED) != 0; }
  uint64_t content_length() const { return declared_length_; }
  // Bytes the parser holds for assembling requests across receives (tests).
  size_t assembly_capacity() const { return assembly_.capacity(); }
  // Gives back assembly capacity above what a parser keeps between requests. Only while no
  // view into the current request is in use (the connection is being released).
  void trim();
  // Body bytes streamed so far.
  uint64_t streamed_bytes() const { return streamed_bytes_; }
  // Raw bytes of the current (or just completed) request consumed so far, framing included.
  uint64_t request_bytes() const { return raw_consumed_; }
  // While streaming: also copy the first `max` body bytes to `*capture` (the access log's
  // request capture); body_captured_all() says whether that was all of it.
  void set_body_capture(std::string* capture, size_t max) {
    capture_ = capture;
    capture_max_ = max;
  }
  bool body_captured_all() const { return streamed_bytes_ <= capture_max_; }

  // Copies the completed request into the parser's own buffer (if it still points into the
  // caller's receive buffer) so its views outlive that buffer: used when a handler defers the
  // request. The views stay valid until the next parse() call.
  void stabilize();
  // The same after kHeaders (a handler deferred its decision on the head): request() (the
  // head, no body yet) stays valid until the next parse(), read_body() or stream_body() call
  // that follows; the caller keeps the unconsumed rest of the input and passes it on later.
  void stabilize_head();
  const ParseError& error() const { return error_; }

  // A request has begun (bytes of it were consumed) and is not yet complete.
  bool request_in_progress() const { return started_ && !message_done_; }
  // Headers of the request in progress are complete (its body may still be arriving).
  bool headers_complete() const { return headers_done_; }
  // The request in progress, or the one just rejected, is a HEAD whose head was parsed: any
  // answer to it (a rejection too) has no body.
  bool head_of_head_request() const { return headers_done_ && parser_.method == HTTP_HEAD; }
  // A request whose headers are complete and whose body is still being buffered (not
  // streamed): its method and target, so that a request the client abandons mid-body can be
  // logged on a connection that did not stop at its head. Views valid until the next parse(),
  // reset() or trim(); false (nothing set) for any other state.
  bool head_in_progress(std::string_view* method, std::string_view* target) const;
  // The request in progress, or the one parse() just rejected (an error of its head or body,
  // read_body()'s 413, a body that timed out), got as far as a complete head: its method and
  // target, for the record of the error answering it. Views valid until the next parse(),
  // reset() or trim(); false (nothing set) before the head is complete or while streaming.
  bool head_parsed(std::string_view* method, std::string_view* target) const;
  // The header fields of that same request (when head_parsed() is true; else none), for its
  // access record (the error answering it, or its abandonment mid-body): the log scrubs the
  // key they carry. Rebuilds the
  // request's header views (the same fields); valid as head_parsed()'s. Does not allocate.
  std::span<const HttpHeader> parsed_headers();

 private:
  struct Span {
    uint32_t off = 0;
    uint32_t len = 0;
  };
  struct RawHeader {
    Span name;
    Span value;
  };

  static int on_message_begin(llhttp_t* p);
  static int on_method(llhttp_t* p, const char* at, size_t len);
  static int on_url(llhttp_t* p, const char* at, size_t len);
  static int on_version(llhttp_t* p, const char* at, size_t len);
  static int on_version_complete(llhttp_t* p);
  static int on_header_field(llhttp_t* p, const char* at, size_t len);
  static int on_header_value(llhttp_t* p, const char* at, size_t len);
  static int on_header_value_complete(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_chunk_extension(llhttp_t* p, const char* at, size_t len);
  static int on_body(llhttp_t* p, const char* at, size_t len);
  static int on_message_complete(llhttp_t* p);

  int fail(int status, std::string_view code, std::string_view message);
  bool extend(Span* span, const char* at, size_t len);
  bool line_break_before(Span name, const char* value_at) const;
  uint64_t raw_position(const char* at) const;
  size_t kept_bytes(size_t consumed_end) const;
  bool header_section_over(uint64_t end) const;
  void begin_next_request();
  void move_to_assembly(size_t consumed_end);
  void reserve_body_room(size_t size);
  void build_request();
  void check_partial_limits();
  std::string_view view(Span s) const { return std::string_view(base_ + s.off, s.len); }
  // on_headers_complete for a target that does not start with '/': an absolute-form one
  // becomes its origin-form (0), or is refused (fail()'s code). Others are left as they are.
  int take_absolute_form();

  static const llhttp_settings_t kSettings;

  const Limits& limits_;
  uint64_t body_bytes_max_;             // this request's body limit
  uint64_t body_keep_max_ = kKeepWholeBody;  // body bytes kept (read_body); the rest dropped
  uint64_t body_seen_ = 0;              // body bytes consumed while buffering (kept or not)
  bool paused_body_read_ = false;       // read_body() after a head pause: the body's size known
  uint64_t connection_body_bytes_max_;  // the connection's (reset()), restored per request
  size_t assembly_keep_max_ = 0;        // assembly capacity kept between requests
  bool header_room_pending_ = false;    // adopt_limits() during a request: reserve after it
  llhttp_t parser_;

  // Where offsets point: the start of the request in the caller's buffer (direct mode) or
  // assembly_.data() (assembled mode). Valid only during and right after parse().
  char* base_ = nullptr;
  bool assembled_ = false;
  std::string assembly_;

  // Raw bytes of this request consumed so far, and where the current execute began.
  uint64_t raw_consumed_ = 0;
  const char* exec_start_ = nullptr;
  const char* exec_end_ = nullptr;  // end of the input llhttp is executing
  const char* readable_end_ = nullptr;  // direct mode: end of what may be read after input
  bool request_line_done_ = false;
  bool version_seen_ = false;      // on_version() had the version's first piece
  uint64_t header_start_raw_ = 0;  // raw position of the first header field line

  bool started_ = false;
  bool headers_done_ = false;
  bool message_done_ = false;
  bool paused_continue_ = false;
  bool failed_ = false;
  bool header_value_started_ = false;
  uint32_t host_count_ = 0;
  bool has_transfer_encoding_ = false;
  bool has_other_coding_ = false;  // a Transfer-Encoding lists a coding other than chunked
  size_t chunked_codings_ = 0;     // "chunked" elements over all Transfer-Encoding fields
  bool has_upgrade_ = false;
  bool has_expect_ = false;
  bool expect_is_continue_ = false;
  bool keep_alive_ = true;
  bool head_pause_ = false;
  bool paused_head_ = false;
  std::string* sink_ = nullptr;  // streaming: where body bytes go
  std::string* capture_ = nullptr;
  size_t capture_max_ = 0;
  uint64_t streamed_bytes_ = 0;
  uint64_t declared_length_ = 0;

  Span method_;
  Span url_;
  Span body_;
  uint32_t recorded_end_ = 0;  // end offset of the last recorded span (method, url, header)
  uint64_t trailer_bytes_ = 0;
  uint64_t chunk_extension_bytes_ = 0;  // names and values of all of the body's chunks
  std::vector<RawHeader> raw_headers_;
  std::vector<HttpHeader> headers_;

  HttpRequest request_;
  ParseError error_;
  char error_message_[96];
};

}  // namespace keygate::net
