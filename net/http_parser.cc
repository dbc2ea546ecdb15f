#include "net/http_parser.h"

#include <algorithm>
#include <cstring>

#include "core/assert.h"
#include "core/forwarding.h"

namespace keygate::net {
namespace {

// Assembly capacity a parser keeps between requests (see begin_next_request).
constexpr size_t kKeptAssemblyBytesMax = 256 * 1024;
// One receive buffer's worth: parse() appends a whole receive to the assembly before it trims.
constexpr size_t kReceiveSlackBytes = 16 * 1024;

HttpParser* self(llhttp_t* p) { return static_cast<HttpParser*>(p->data); }

std::string_view trim_trailing_ows(std::string_view v) {
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// RFC 3986 2.3 unreserved and 2.2 sub-delims: the bytes a reg-name takes besides
// pct-encoded ones.
bool is_reg_name_char(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("-._~!$&'()*+,;=").find(c) != std::string_view::npos;
}

// RFC 9112 3.2: Host = uri-host [ ":" port ], uri-host = IP-literal / IPv4address / reg-name,
// port = *DIGIT. An IP literal's inside is checked only for its alphabet (hex digits, ':', '.',
// an IPvFuture's unreserved and sub-delims, a zone's "%25"): what matters here is that no byte
// outside the grammar ('/', '@', '?', '#', a space, a quote...) reaches the upstream, which may
// build absolute URLs (redirects, links, password-reset mails) from the Host it receives. Empty
// is valid: a target without an authority sends an empty Host.
bool is_valid_host(std::string_view v) {
  size_t i = 0;
  if (!v.empty() && v[0] == '[') {
    const size_t close = v.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    for (i = 1; i < close; ++i) {
      if (!is_reg_name_char(v[i]) && v[i] != ':' && v[i] != '%') return false;
    }
    i = close + 1;
  } else {
    for (; i < v.size() && v[i] != ':'; ++i) {
      if (v[i] == '%') {
        if (i + 2 >= v.size() || hex_value(v[i + 1]) < 0 || hex_value(v[i + 2]) < 0) return false;
        i += 2;
      } else if (!is_reg_name_char(v[i])) {
        return false;
      }
    }
  }
  if (i == v.size()) return true;
  if (v[i] != ':') return false;
  for (++i; i < v.size(); ++i) {
    if (v[i] < '0' || v[i] > '9') return false;
  }
  return true;
}

}  // namespace

const llhttp_settings_t HttpParser::kSettings = [] {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_message_begin = &HttpParser::on_message_begin;
  s.on_method = &HttpParser::on_method;
  s.on_url = &HttpParser::on_url;
  s.on_version = &HttpParser::on_version;
  s.on_version_complete = &HttpParser::on_version_complete;
  s.on_header_field = &HttpParser::on_header_field;
  s.on_header_value = &HttpParser::on_header_value;
  s.on_header_value_complete = &HttpParser::on_header_value_complete;
  s.on_headers_complete = &HttpParser::on_headers_complete;
  s.on_chunk_extension_name = &HttpParser::on_chunk_extension;
  s.on_chunk_extension_value = &HttpParser::on_chunk_extension;
  s.on_body = &HttpParser::on_body;
  s.on_message_complete = &HttpParser::on_message_complete;
  return s;
}();

namespace {

// Twice the largest head (request line and header section), so that a head spanning receives
// reuses its capacity; at most kKeptAssemblyBytesMax.
size_t assembly_keep_for(const Limits& limits) {
  return static_cast<size_t>(std::min<uint64_t>(
      kKeptAssemblyBytesMax,
      2 * (uint64_t{limits.request_line_bytes_max} + limits.header_bytes_max)));
}

}  // namespace

HttpParser::HttpParser(const Limits& limits)
    : limits_(limits),
      body_bytes_max_(limits.body_bytes_max),
      connection_body_bytes_max_(limits.body_bytes_max),
      assembly_keep_max_(assembly_keep_for(limits)) {
  llhttp_init(&parser_, HTTP_REQUEST, &kSettings);
  parser_.data = this;
  // Reserve up front so the header vectors never reallocate on the request path.
  raw_headers_.reserve(limits_.header_count_max);
  headers_.reserve(limits_.header_count_max);
  error_message_[0] = '\0';
}

int HttpParser::fail(int status, std::string_view code, std::string_view message) {
  if (!failed_) {
    failed_ = true;
    error_ = ParseError{status, code, message};
  }
  return -1;
}

uint64_t HttpParser::raw_position(const char* at) const {
  return raw_consumed_ + static_cast<uint64_t>(at - exec_start_);
}

bool HttpParser::extend(Span* span, const char* at, size_t len) {
  const auto off = static_cast<uint32_t>(at - base_);
  if (span->len == 0) {
    span->off = off;
  } else if (off != span->off + span->len) {
    return false;  // not contiguous with what came before: a folded (obs-fold) line
  }
  span->len += static_cast<uint32_t>(len);
  if (span->off + span->len > recorded_end_) recorded_end_ = span->off + span->len;
  return true;
}

// llhttp 8 (strict mode too) skips a fold that comes before the first value byte: for
// "X:\r\n Content-Length: 5" it discards the whitespace and the line break and starts X's value
// at "Content-Length", so the value looks like one contiguous piece. What lies between the
// name's end and the value's start must be the colon and whitespace only. Those bytes are all
// still at base_: until the headers are complete every consumed byte of the request is kept
// (kept_bytes), however the input was split.
bool HttpParser::line_break_before(Span name, const char* value_at) const {
  for (const char* c = base_ + name.off + name.len; c < value_at; ++c) {
    if (*c == '\r' || *c == '\n') return true;
  }
  return false;
}

int HttpParser::on_message_begin(llhttp_t* p) {
  self(p)->started_ = true;
  return 0;
}

int HttpParser::on_method(llhttp_t* p, const char* at, size_t len) {
  HttpParser* h = self(p);
  h->extend(&h->method_, at, len);
  return 0;
}

int HttpParser::on_url(llhttp_t* p, const char* at, size_t len) {
  HttpParser* h = self(p);
  h->extend(&h->url_, at, len);
  // The target alone already too long: no need to wait for the version.
  if (h->raw_position(at + len) > h->limits_.request_line_bytes_max) {
    return h->fail(414, "uri_too_long", "request line too long");
  }
  // The target ended by the line's end ("GET /\r\n") is HTTP/0.9, whose client sends no header
  // section and waits for the body at once: answered now, not at the header timeout (408) that
  // waiting for headers would end in (llhttp reads the version as 0.9 only at the next byte).
  // A span cut at the end of the input is a part of the target, not its end.
  const char* end = at + len;
  if (end < h->exec_end_ && (*end == '\r' || *end == '\n')) {
    return h->fail(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
  }
  return 0;
}

// The request line is "method SP target SP version"; its end is the version's end.
int HttpParser::on_version(llhttp_t* p, const char* at, size_t len) {
  HttpParser* h = self(p);
  const uint64_t end = h->raw_position(at + len);
  if (end > h->limits_.request_line_bytes_max) {
    return h->fail(414, "uri_too_long", "request line too long");
  }
  if (!h->version_seen_) {
    // llhttp 8 also takes "RTSP/" and "ICE/" before the version digits, and reports only the
    // digits. The protocol name precedes the first piece of the version; like every consumed
    // byte of the request line it is still at base_ (kept_bytes), however the input was split.
    h->version_seen_ = true;
    const auto off = static_cast<size_t>(at - h->base_);
    if (off < 5 || std::memcmp(h->base_ + off - 5, "HTTP/", 5) != 0) {
      return h->fail(400, "bad_request", "the protocol is not HTTP");
    }
  }
  h->header_start_raw_ = end + 2;  // after its CRLF
  return 0;
}

int HttpParser::on_version_complete(llhttp_t* p) {
  self(p)->request_line_done_ = true;
  return 0;
}

// The header section is counted as its field lines, each with its CRLF. A field or value
// ending at raw position `end` needs at least a CRLF after it.
bool HttpParser::header_section_over(uint64_t end) const {
  return end + 2 - header_start_raw_ > limits_.header_bytes_max;
}

int HttpParser::on_header_field(llhttp_t* p, const char* at, size_t len) {
  HttpParser* h = self(p);
  if (h->headers_done_) {
    // Chunked trailers: bounded like headers, then dropped (nothing downstream reads them).
    h->trailer_bytes_ += len;
    if (h->trailer_bytes_ > h->limits_.header_bytes_max) {
      return h->fail(431, "header_too_large", "trailer section too large");
    }
    return 0;
  }
  if (h->raw_headers_.empty() || h->header_value_started_) {
    if (h->raw_headers_.size() >= h->limits_.header_count_max) {
      return h->fail(431, "too_many_headers", "too many header fields");
    }
    h->raw_headers_.push_back(RawHeader{});
    h->header_value_started_ = false;
  }
  h->extend(&h->raw_headers_.back().name, at, len);
  if (h->header_section_over(h->raw_position(at + len))) {
    return h->fail(431, "header_too_large", "header section too large");
  }
  return 0;
}

int HttpParser::on_header_value(llhttp_t* p, const char* at, size_t len) {
  HttpParser* h = self(p);
  if (h->headers_done_) {
    h->trailer_bytes_ += len;
    if (h->trailer_bytes_ > h->limits_.header_bytes_max) {
      return h->fail(431, "header_too_large", "trailer section too large");
    }
    return 0;
  }
  if (h->raw_headers_.empty()) return h->fail(400, "bad_request", "header value without name");
  h->header_value_started_ = true;
  RawHeader& raw = h->raw_headers_.back();
  // The value's first piece (llhttp reports an empty value as an empty piece at the start of
  // the next line: nothing folded there).
  if (raw.value.len == 0 && len != 0 && h->line_break_before(raw.name, at)) {
    return h->fail(400, "bad_request", "obsolete line folding is not allowed");
  }
  if (!h->extend(&raw.value, at, len)) {
    return h->fail(400, "bad_request", "obsolete line folding is not allowed");
  }
  if (h->header_section_over(h->raw_position(at + len))) {
    return h->fail(431, "header_too_large", "header section too large");
  }
  return 0;
}

int HttpParser::on_header_value_complete(llhttp_t* p) {
  HttpParser* h = self(p);
  if (h->headers_done_) return 0;  // trailer
  if (h->raw_headers_.empty()) return h->fail(400, "bad_request", "header value without name");
  // A header whose value is empty never calls on_header_value.
  h->header_value_started_ = true;
  const RawHeader& raw = h->raw_headers_.back();
  const std::string_view name = h->view(raw.name);
  const std::string_view value = h->view(raw.value);
  if (name.empty()) return h->fail(400, "bad_request", "empty header name");
  // No early exit: the loop vectorizes, and values are short.
  bool control = false;
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    control |= (u < 0x20) & (u != '\t');
    control |= u == 0x7f;
  }
  if (control) return h->fail(400, "bad_request", "control character in header value");
  if (equals_ignore_case(name, "host")) {
    ++h->host_count_;
    // RFC 9112 3.2: a server MUST answer 400 to a Host with an invalid field value.
    if (!is_valid_host(trim_trailing_ows(value))) {
      return h->fail(400, "bad_request", "invalid Host header");
    }
  } else if (equals_ignore_case(name, "transfer-encoding")) {
    h->has_transfer_encoding_ = true;
    if (!only_chunked_coding(value)) h->has_other_coding_ = true;
    h->chunked_codings_ += chunked_codings(value);
  } else if (equals_ignore_case(name, "upgrade")) {
    h->has_upgrade_ = true;
  } else if (equals_ignore_case(name, "expect")) {
    if (h->has_expect_) return h->fail(400, "bad_request", "repeated Expect header");
    h->has_expect_ = true;
    h->expect_is_continue_ = equals_ignore_case(trim_trailing_ows(value), "100-continue");
  }
  return 0;
}

int HttpParser::on_headers_complete(llhttp_t* p) {
  HttpParser* h = self(p);
  h->headers_done_ = true;
  if (p->http_major != 1 || p->http_minor > 1) {
    return h->fail(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
  }
  if (p->method == HTTP_CONNECT) {
    return h->fail(405, "method_not_allowed", "CONNECT is not supported");
  }
  // TRACE has the upstream echo the request back, its credentials (the X-ApiKey header, a key
  // in the query) included, into a response a script may read (cross-site tracing); keygate
  // authenticates requests, and forwards none that asks for its key back. nginx refuses it too.
  if (p->method == HTTP_TRACE) {
    return h->fail(405, "method_not_allowed", "TRACE is not supported");
  }
  if (h->has_upgrade_ || p->upgrade) {
    return h->fail(400, "upgrade_not_supported", "protocol upgrades are not supported");
  }
  if (p->http_minor == 1 && h->host_count_ != 1) {
    return h->fail(400, "bad_request", h->host_count_ == 0 ? "missing Host header"
                                                           : "repeated Host header");
  }
  if (p->http_minor == 0 && h->host_count_ > 1) {
    return h->fail(400, "bad_request", "repeated Host header");
  }
  if (h->url_.len != 0 && h->base_[h->url_.off] != '/') {
    if (const int rc = h->take_absolute_form(); rc != 0) return rc;
  }
  if (p->http_minor == 0 && h->has_transfer_encoding_) {
    return h->fail(400, "bad_request", "Transfer-Encoding is not allowed in HTTP/1.0");
  }
  if (h->chunked_codings_ > 1) {
    // RFC 9112 7: chunked is applied at most once. Read once here and re-framed, such a body
    // would reach the upstream with the inner chunk framing as its content.
    return h->fail(400, "bad_request", "the chunked transfer coding is listed more than once");
  }
  if (h->has_other_coding_ && (p->flags & F_CHUNKED) != 0) {
    // RFC 9112 6.1: a coding keygate does not implement ("gzip, chunked") would be forwarded
    // without its header, the body still encoded. (Without chunked last the length is unknown:
    // llhttp answers that with 400, as RFC 9112 6.3 requires.)
    return h->fail(501, "not_implemented", "only the chunked transfer coding is supported");
  }
  if (h->has_expect_ && !h->expect_is_continue_) {
    return h->fail(417, "expectation_failed", "only 100-continue is supported");
  }
  // Known from the head already (version, Connection): a request handed out at its head
  // (head pause) must say so too.
  h->keep_alive_ = llhttp_should_keep_alive(p) != 0;
  const bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  const bool chunked = (p->flags & F_CHUNKED) != 0;
  h->declared_length_ = has_length ? p->content_length : 0;
  h->body_.off = h->recorded_end_;
  const bool body_expected = chunked || (has_length && p->content_length > 0);
  if (h->head_pause_ && body_expected) {
    // The caller decides how (and whether) to read the body; limits are checked then.
    h->paused_head_ = true;
    return HPE_PAUSED;
  }
  if (has_length && p->content_length > h->body_bytes_max_) {
    return h->fail(413, "body_too_large", "request body too large");
  }
  if (h->expect_is_continue_ && p->http_minor == 1 && body_expected) {
    h->paused_continue_ = true;
    return HPE_PAUSED;
  }
  return 0;
}

// RFC 9112 3.2.2: a server must accept a target in absolute-form ("GET http://api.example/orders
// HTTP/1.1", what a client sends to a proxy it was configured with). Routing, the key search,
// the forwarded request line and the log then see its origin-form ("/orders"): the span of the
// target moves past the scheme and authority, nothing is copied. The authority is where the
// origin server takes the host from (the RFC has it override Host): a Host that says another
// one is refused rather than picked from, so the upstream and keygate never read two hosts.
// Without a path ("http://h", "http://h?x") the origin-form would be "/" plus the query, which
// no view of the target spells: 400 too. Another scheme, or none, is left to the path checks.
int HttpParser::take_absolute_form() {
  const std::string_view target = view(url_);
  size_t scheme_bytes = 0;
  for (const std::string_view scheme : {std::string_view("http://"), std::string_view("https://")}) {
    if (target.size() > scheme.size() && equals_ignore_case(target.substr(0, scheme.size()), scheme)) {
      scheme_bytes = scheme.size();
    }
  }
  if (scheme_bytes == 0) return 0;
  const size_t path_at = target.find_first_of("/?", scheme_bytes);
  const std::string_view authority = target.substr(scheme_bytes, path_at - scheme_bytes);
  if (authority.empty() || !is_valid_host(authority)) {
    return fail(400, "bad_request", "invalid authority in an absolute-form target");
  }
  if (path_at == std::string_view::npos || target[path_at] != '/') {
    return fail(400, "bad_request", "an absolute-form target without a path");
  }
  for (const RawHeader& raw : raw_headers_) {
    if (equals_ignore_case(view(raw.name), "host") &&
        !equals_ignore_case(trim_trailing_ows(view(raw.value)), authority)) {
      return fail(400, "bad_request", "Host differs from the absolute-form target's authority");
    }
  }
  url_.off += static_cast<uint32_t>(path_at);
  url_.len -= static_cast<uint32_t>(path_at);
  return 0;
}

// llhttp reads chunk extensions ("5;name=value") without a bound and reports them to nobody:
// they count against no body limit, so a body of 5 bytes could bring 200 MB of them (Node.js
// CVE-2024-22019). keygate uses none of them (and forwards none): bounded like trailers, all of
// one body's together.
int HttpParser::on_chunk_extension(llhttp_t* p, const char*, size_t len) {
  HttpParser* h = self(p);
  h->chunk_extension_bytes_ += len;
  if (h->chunk_extension_bytes_ > h->limits_.header_bytes_max) {
    return h->fail(431, "header_too_large", "chunk extensions too large");
  }
  return 0;
}

int HttpParser::on_body(llhttp_t* p, const char* at, size_t len) {
  HttpParser* h = self(p);
  if (h->sink_ != nullptr) {
    if (h->capture_ != nullptr && h->capture_->size() < h->capture_max_) {
      h->capture_->append(at, std::min(len, h->capture_max_ - h->capture_->size()));
    }
    h->streamed_bytes_ += len;
    if (h->streamed_bytes_ > h->body_bytes_max_) {
      return h->fail(413, "body_too_large", "request body too large");
    }
    if ((p->flags & F_CHUNKED) != 0) {
      append_chunk(std::string_view(at, len), *h->sink_);
    } else {
      h->sink_->append(at, len);
    }
    return 0;
  }
  h->body_seen_ += len;
  if (h->body_seen_ > h->body_bytes_max_) {
    return h->fail(413, "body_too_large", "request body too large");
  }
  if (h->body_.len + len > h->body_keep_max_) {
    // Only a prefix is wanted: the rest is consumed and dropped (not moved, not kept).
    len = static_cast<size_t>(h->body_keep_max_ - h->body_.len);
    if (len == 0) return 0;
  }
  const auto off = static_cast<uint32_t>(at - h->base_);
  if (h->body_.len == 0) {
    h->body_.off = off;
  } else if (off != h->body_.off + h->body_.len) {
    // Chunk framing sat between this piece and the last: slide it down so the body stays one
    // contiguous view. Safe because the destination lies in bytes llhttp already consumed.
    std::memmove(h->base_ + h->body_.off + h->body_.len, at, len);
  }
  h->body_.len += static_cast<uint32_t>(len);
  return 0;
}

int HttpParser::on_message_complete(llhttp_t* p) {
  HttpParser* h = self(p);
  h->message_done_ = true;
  if (h->sink_ != nullptr && (p->flags & F_CHUNKED) != 0) h->sink_->append("0\r\n\r\n", 5);
  h->keep_alive_ = llhttp_should_keep_alive(p) != 0;
  // Stop here so the caller answers this request before the next pipelined one is parsed.
  return HPE_PAUSED;
}

// What of the request so far must survive the caller's buffer: in the body only the body (the
// chunk framing is dropped), before that every consumed byte, so that line structure (the CRLF
// that separates a folded line from its value) stays visible to the next parse() call.
size_t HttpParser::kept_bytes(size_t consumed_end) const {
  if (sink_ != nullptr) return 0;  // streaming: the head was handled, the body went to the sink
  if (headers_done_) return body_.off + body_.len;
  return consumed_end;
}

// Room in the assembly buffer for the rest of a kept body of known length, so that it grows
// once instead of doubling its way there (which leaves up to twice the body allocated, and
// the smaller copies to the allocator). The length is the client's claim, but bounded by the
// body limits and counted against the worker's body memory before any of it is read.
void HttpParser::reserve_body_room(size_t size) {
  if (!headers_done_ || !paused_body_read_ || (parser_.flags & F_CHUNKED) != 0) return;
  const uint64_t body = std::min({declared_length_, body_keep_max_, body_bytes_max_});
  if (body <= body_.len) return;
  assembly_.reserve(size + static_cast<size_t>(body - body_.len) + kReceiveSlackBytes);
}

void HttpParser::move_to_assembly(size_t consumed_end) {
  const size_t kept = kept_bytes(consumed_end);
  if (!assembled_) {
    reserve_body_room(kept);
    assembly_.assign(base_, kept);
    assembled_ = true;
  } else {
    // Drop consumed chunk framing no view needs, so the buffer stays bounded by the limits
    // rather than by what the client sends.
    assembly_.resize(kept);
  }
  base_ = assembly_.data();
}

void HttpParser::begin_next_request() {
  started_ = headers_done_ = message_done_ = false;
  header_value_started_ = false;
  has_transfer_encoding_ = has_other_coding_ = has_upgrade_ = has_expect_ = false;
  chunked_codings_ = 0;
  expect_is_continue_ = false;
  host_count_ = 0;
  keep_alive_ = true;
  paused_head_ = false;
  sink_ = nullptr;
  capture_ = nullptr;
  capture_max_ = 0;
  body_bytes_max_ = connection_body_bytes_max_;
  body_keep_max_ = kKeepWholeBody;
  body_seen_ = 0;
  paused_body_read_ = false;
  streamed_bytes_ = declared_length_ = 0;
  method_ = url_ = body_ = Span{};
  recorded_end_ = 0;
  trailer_bytes_ = 0;
  chunk_extension_bytes_ = 0;
  raw_consumed_ = 0;
  request_line_done_ = false;
  version_seen_ = false;
  header_start_raw_ = 0;
  raw_headers_.clear();
  headers_.clear();
  // A large assembled request (a body up to the listener's limit: 64 MiB on the admin port)
  // does not leave its capacity to the connection slot, which is kept for reuse: what a
  // connection keeps between requests is no more than a head spanning receives needs, so a
  // body (a key-less one too) cannot leave more memory behind than a head can.
  if (assembly_.capacity() > assembly_keep_max_) {
    std::string().swap(assembly_);
  } else {
    assembly_.clear();
  }
  assembled_ = false;
  base_ = nullptr;
  request_ = HttpRequest{};
  // A reload raised header_count_max while the last request was under way (adopt_limits):
  // once per connection busy at that reload, between its requests.
  if (header_room_pending_) {
    header_room_pending_ = false;
    raw_headers_.reserve(limits_.header_count_max);
    headers_.reserve(limits_.header_count_max);
  }
}

void HttpParser::trim() {
  if (assembly_.capacity() > assembly_keep_max_) {
    std::string().swap(assembly_);
    assembled_ = false;
    base_ = nullptr;
  }
}

void HttpParser::reset(uint64_t body_bytes_max) {
  connection_body_bytes_max_ = body_bytes_max;
  begin_next_request();
  llhttp_init(&parser_, HTTP_REQUEST, &kSettings);
  parser_.data = this;
  paused_continue_ = false;
  head_pause_ = false;
  failed_ = false;
  error_ = ParseError{};
}

void HttpParser::adopt_limits(uint64_t body_bytes_max) {
  connection_body_bytes_max_ = body_bytes_max;
  // Between requests the next one's cap is set already (begin_next_request): it is the next
  // request's to take.
  if (!started_) body_bytes_max_ = body_bytes_max;
  assembly_keep_max_ = assembly_keep_for(limits_);
  // Room for the new header_count_max, so the header vectors never reallocate while a request
  // is parsed (reserve never shrinks: a lowered cap keeps the room it had). Not under a
  // request that has begun: its HttpRequest's headers point into the vector (a deferred or
  // forwarded request holds them for long), so it is reserved when that request is done.
  if (started_) {
    header_room_pending_ = true;
  } else {
    raw_headers_.reserve(limits_.header_count_max);
    headers_.reserve(limits_.header_count_max);
  }
}

bool HttpParser::read_body(uint64_t body_bytes_max, uint64_t keep_bytes) {
  KEYGATE_ASSERT(paused_head_);
  // For this request only (begin_next_request restores).
  if (body_bytes_max != 0 && body_bytes_max < body_bytes_max_) body_bytes_max_ = body_bytes_max;
  body_keep_max_ = keep_bytes;
  paused_body_read_ = true;
  // Before any room is made for it: a declared length is the client's word until checked.
  if (declared_length_ > body_bytes_max_) {
    fail(413, "body_too_large", "request body too large");
    return false;
  }
  if (assembled_) reserve_body_room(assembly_.size());
  return true;
}

bool HttpParser::stream_body(uint64_t body_bytes_max, std::string* sink) {
  KEYGATE_ASSERT(paused_head_ && sink != nullptr);
  body_bytes_max_ = body_bytes_max;  // for this request only (begin_next_request restores)
  if (declared_length_ > body_bytes_max) {
    fail(413, "body_too_large", "request body too large");
    return false;
  }
  sink_ = sink;
  // Nothing of the request is needed any more: drop the assembled head.
  assembly_.clear();
  assembled_ = false;
  base_ = nullptr;
  return true;
}

void HttpParser::stabilize() {
  KEYGATE_ASSERT(message_done_);
  if (assembled_) return;
  assembly_.assign(base_, kept_bytes(0));
  assembled_ = true;
  base_ = assembly_.data();
  build_request();
}

void HttpParser::stabilize_head() {
  KEYGATE_ASSERT(paused_head_);
  if (assembled_) return;
  assembly_.assign(base_, kept_bytes(0));
  assembled_ = true;
  base_ = assembly_.data();
  build_request();
}

bool HttpParser::head_in_progress(std::string_view* method, std::string_view* target) const {
  // Between parse() calls a request in progress lives in the assembly buffer (parse() moves it
  // there before returning kNeedMore), so base_ is still valid here.
  if (!started_ || !headers_done_ || message_done_ || failed_ || sink_ != nullptr ||
      base_ == nullptr) {
    return false;
  }
  *method = view(method_);
  *target = view(url_);
  return true;
}

bool HttpParser::head_parsed(std::string_view* method, std::string_view* target) const {
  // As head_in_progress(), and also once parse() failed: an error returns before the request
  // is moved anywhere, so base_ still points at it (the caller's input, or the assembly).
  if (!started_ || !headers_done_ || message_done_ || sink_ != nullptr || base_ == nullptr) {
    return false;
  }
  *method = view(method_);
  *target = view(url_);
  return true;
}

std::span<const HttpHeader> HttpParser::parsed_headers() {
  std::string_view method;
  std::string_view target;
  if (!head_parsed(&method, &target)) return {};
  // Reserved up front: this never reallocates (see the constructor).
  headers_.clear();
  for (const RawHeader& raw : raw_headers_) {
    headers_.push_back(HttpHeader{view(raw.name), trim_trailing_ows(view(raw.value))});
  }
  return std::span<const HttpHeader>(headers_.data(), headers_.size());
}

void HttpParser::check_partial_limits() {
  if (headers_done_ || failed_) return;
  if (!request_line_done_) {
    if (raw_consumed_ > limits_.request_line_bytes_max) {
      fail(414, "uri_too_long", "request line too long");
    }
  } else if (raw_consumed_ > header_start_raw_ &&
             raw_consumed_ - header_start_raw_ > limits_.header_bytes_max + 2) {
    // + 2: the empty line ending the section may be partly consumed already.
    fail(431, "header_too_large", "header section too large");
  }
}

void HttpParser::build_request() {
  headers_.clear();
  for (const RawHeader& raw : raw_headers_) {
    headers_.push_back(HttpHeader{view(raw.name), trim_trailing_ows(view(raw.value))});
  }
  request_.method = view(method_);
  request_.set_target(view(url_));
  request_.version_minor = static_cast<uint8_t>(parser_.http_minor);
  request_.keep_alive = keep_alive_;
  request_.headers = std::span<const HttpHeader>(headers_.data(), headers_.size());
  request_.body = view(body_);
  request_.body_bytes_dropped = body_seen_ > body_.len ? body_seen_ - body_.len : 0;
  request_.body_readable_padding =
      assembled_ ? 0 : static_cast<size_t>(readable_end_ - (request_.body.data() + request_.body.size()));
}

HttpParser::Result HttpParser::parse(std::span<char> input, size_t readable_after) {
  KEYGATE_ASSERT(!failed_);
  if (message_done_) {
    begin_next_request();
    llhttp_resume(&parser_);
  } else if (paused_continue_) {
    paused_continue_ = false;
    llhttp_resume(&parser_);
  } else if (paused_head_) {
    // The caller chose read_body() or stream_body() (or closes the connection instead).
    paused_head_ = false;
    llhttp_resume(&parser_);
  }
  if (input.empty()) return {Status::kNeedMore, 0};

  char* exec_start;
  if (sink_ != nullptr) {
    exec_start = input.data();  // streaming: bytes are consumed in place, nothing kept
  } else if (!assembled_) {
    if (!started_) base_ = input.data();
    exec_start = input.data();
  } else {
    const size_t old_size = assembly_.size();
    assembly_.append(input.data(), input.size());
    base_ = assembly_.data();
    exec_start = base_ + old_size;
  }
  exec_start_ = exec_start;
  exec_end_ = exec_start + input.size();
  readable_end_ = input.data() + input.size() + readable_after;

  const llhttp_errno_t err = llhttp_execute(&parser_, exec_start, input.size());
  size_t consumed = input.size();
  if (err == HPE_PAUSED) {
    consumed = static_cast<size_t>(llhttp_get_error_pos(&parser_) - exec_start);
  } else if (err != HPE_OK) {
    if (!failed_) {
      // llhttp's own verdict. Its reason strings are static; copy one into JSON-safe text.
      const char* reason = llhttp_get_error_reason(&parser_);
      size_t n = 0;
      for (; reason != nullptr && reason[n] != '\0' && n + 1 < sizeof(error_message_); ++n) {
        const char c = reason[n];
        error_message_[n] = (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) ? ' ' : c;
      }
      error_message_[n] = '\0';
      const bool version = err == HPE_INVALID_VERSION;
      failed_ = true;
      error_ = ParseError{version ? 505 : 400,
                          version ? "http_version_not_supported" : "bad_request",
                          std::string_view(error_message_, n)};
    }
    raw_consumed_ += input.size();
    return {Status::kError, input.size()};
  }
  if (failed_) {
    raw_consumed_ += input.size();
    return {Status::kError, input.size()};
  }
  raw_consumed_ += consumed;

  if (message_done_) {
    if (sink_ != nullptr) return {Status::kBodyEnd, consumed};
    build_request();
    return {Status::kRequest, consumed};
  }
  if (sink_ != nullptr) return {Status::kNeedMore, consumed};
  if (assembled_ && consumed < input.size()) {
    // Paused mid-input (100-continue, head pause): the unconsumed tail was appended to the
    // assembly too, and the caller passes it again.
    assembly_.resize(static_cast<size_t>(exec_start - base_) + consumed);
  }
  check_partial_limits();
  if (failed_) return {Status::kError, input.size()};
  if (paused_head_) {
    // The head must survive `input` if the body is to be buffered and arrives later.
    if (consumed == input.size()) {
      move_to_assembly(static_cast<size_t>(exec_start + consumed - base_));
    }
    build_request();
    return {Status::kHeaders, consumed};
  }
  if (started_ && consumed == input.size()) {
    move_to_assembly(static_cast<size_t>(exec_start + consumed - base_));
  }
  if (paused_continue_) return {Status::kExpectContinue, consumed};
  return {Status::kNeedMore, consumed};
}

}  // namespace keygate::net
