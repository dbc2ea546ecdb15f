// Forwarding: the request head keygate sends upstream and the response head it
// sends back.
//
// Pure functions, no I/O, no exceptions. They append to a caller-owned
// std::string whose capacity the caller (the connection) reuses, so
// steady-state use does not allocate. Inputs are views the request parser (or
// the upstream response parser) validated: header names are tokens and header
// values hold no CR or LF, so everything here is copied without re-checking.
//
// Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded in either direction:
// Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
// Upgrade, and every header a Connection header names in its comma-separated
// list (except Host, which a request always keeps: an upstream must not receive
// a Host-less HTTP/1.1 request because a client said so).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/handler.h"
#include "core/http_request.h"

namespace keygate {

// How a message body is delimited on the wire.
enum class BodyFraming : uint8_t {
  kNone,          // no body (no framing header)
  kContentLength, // "Content-Length: N"
  kChunked,       // "Transfer-Encoding: chunked"
  kUntilClose, // responses only: the body runs until the connection closes (no
               // header)
};

// True when every transfer coding a Transfer-Encoding field value lists is "chunked" (any
// case; whitespace and empty list elements are skipped). keygate implements no other coding:
// one it forwarded would lose its header (hop-by-hop) while the body stayed encoded.
bool only_chunked_coding(std::string_view transfer_encoding) noexcept;
// How many times a Transfer-Encoding field value lists "chunked" (any case).
size_t chunked_codings(std::string_view transfer_encoding) noexcept;

// Appends `data` to `out` as one chunk of chunked transfer coding ("<hex size>\r\n<data>\r\n");
// nothing for empty data (an empty chunk would end the body).
void append_chunk(std::string_view data, std::string& out) noexcept;

// Appends to `out` the request head keygate sends upstream for `request`,
// always HTTP/1.1:
//   - request line: method, the target as append_target_without_key() writes
//   it, "HTTP/1.1";
//   - "Host: <host_if_missing>" when the request has no Host header (an
//   HTTP/1.0 request may lack it; an HTTP/1.1 request must have one, RFC 9112
//   3.2, and keygate is the client here), before any other header; nothing
//   when host_if_missing is empty;
//   - the client's headers in order, minus X-ApiKey (any case), the hop-by-hop
//   headers (see the
//     top of this file), Content-Length and Transfer-Encoding (framing is
//     re-added from `framing`), Expect (keygate answers 100-continue itself),
//     every X-Keygate-* header the client sent (they would spoof keygate's
//     own), and X-Forwarded-For/-Proto (re-added below); Host is kept as sent;
//   - X-Keygate-Key-Id and X-Keygate-Api from `id`, X-Keygate-User only when
//   id.user is
//     non-empty;
//   - X-Forwarded-For: the client's X-Forwarded-For values (every such header,
//   in order, empty
//     ones skipped; none when a Connection header names it) joined with ", ",
//     then `client_ip`, as one header; X-Forwarded-Proto: the same with "http"
//     appended;
//   - the framing line: "Content-Length: <content_length>" for kContentLength,
//     "Transfer-Encoding: chunked" for kChunked, nothing for kNone (kUntilClose
//     is not valid for a request and asserts);
//   - no Connection header (keep-alive is HTTP/1.1's default), then the final
//   CRLF.
// `content_length` is read for kContentLength only. Returns where in `out` the
// added Host value starts (so the caller can name another server in its place),
// 0 when none was added.
size_t write_upstream_request_head(const HttpRequest &request,
                                   const ForwardTarget &id,
                                   std::string_view client_ip,
                                   BodyFraming framing, uint64_t content_length,
                                   std::string &out,
                                   std::string_view host_if_missing = {}) noexcept;

// Appends `target` (path plus optional "?query") with every `key` query
// parameter removed (see is_key_param_name() in key_extractor.h; a "key" without
// '=' goes too).
// All other parameters are kept byte for byte, in order, with the '&' between
// them, so empty pairs ("a=1&&b=2") survive; when nothing is removed the output
// equals the input, except that a query left empty (also one that was empty:
// "/p?") drops its '?'. Used for the upstream request line and access logs.
void append_target_without_key(std::string_view target,
                               std::string &out) noexcept;

// An upstream response's status line and headers: views into the upstream's
// bytes.
struct ResponseHead {
  int status = 0;          // 100..999
  std::string_view reason; // may be empty
  uint8_t version_minor =
      1; // HTTP/1.<minor> the upstream spoke (for the caller's decisions)
  std::span<const HttpHeader> headers;
};

// Appends the head keygate sends to the client for an upstream response:
// "HTTP/1.1 <status> <reason>" (a reason with a control character other than
// HTAB is replaced by reason_phrase(status), or left empty for a status that
// has none listed), the upstream's headers in order minus the
// hop-by-hop ones (see the top of this file) and minus
// Content-Length/Transfer-Encoding, then the framing line
// ("Content-Length: <content_length>" for kContentLength, "Transfer-Encoding:
// chunked" for kChunked, nothing for kNone and kUntilClose), then "Connection:
// close" when !keep_alive, or "Connection: keep-alive" when keep_alive &&
// http10_client (HTTP/1.1 needs no header), then the final CRLF. A non-empty `date` (an
// IMF-fixdate) is added as "Date: <date>" after the upstream's headers when they have no Date
// and the status is final (RFC 9110 6.6.1: a recipient with a clock that forwards a response
// without Date adds one; an interim response needs none).
//
// The caller picks the framing: an HTTP/1.0 client cannot read chunked coding,
// so for a body that has no length up front the caller passes kUntilClose with
// keep_alive=false (the end of the body is the close); kUntilClose with
// keep_alive=true asserts.
void write_client_response_head(const ResponseHead &head, BodyFraming framing,
                                uint64_t content_length, bool keep_alive,
                                bool http10_client, std::string &out,
                                std::string_view date = {}) noexcept;

} // namespace keygate
