// HttpRequest: a parsed HTTP/1.x request as views into the connection's receive buffers.
//
// Worker-local and borrowed: nothing here owns memory. The views stay valid for the duration of
// Handler::handle() only; a handler that needs a value later must copy it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace keygate {

struct HttpHeader {
  std::string_view name;   // as sent (case preserved); compare case-insensitively
  std::string_view value;  // optional whitespace around it already trimmed
};

constexpr char ascii_lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c;
}

// ASCII case-insensitive equality for header names and tokens.
constexpr bool equals_ignore_case(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

// Header-name likeness: case-insensitive, and '_' equal to '-'. CGI, WSGI and Rack upstreams
// turn both into '_' (X_Keygate_User is HTTP_X_KEYGATE_USER to them, like X-Keygate-User), so a
// header keygate strips or acts on must also count in its underscore spelling.
constexpr bool header_name_starts_like(std::string_view name, std::string_view prefix) noexcept {
  if (name.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (ascii_lower(name[i] == '_' ? '-' : name[i]) != ascii_lower(prefix[i])) return false;
  }
  return true;
}
constexpr bool header_name_is_like(std::string_view name, std::string_view other) noexcept {
  return name.size() == other.size() && header_name_starts_like(name, other);
}

// The hex digits, lower case: kHexDigits[v] for v in 0..15 (hex_value's inverse).
inline constexpr char kHexDigits[] = "0123456789abcdef";

// The value of one hex digit (either case), or -1 for any other character.
constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct HttpRequest {
  std::string_view method;  // e.g. "GET"
  std::string_view target;  // request-target as sent: path plus optional "?query"
  std::string_view path;    // target up to '?'
  std::string_view query;   // after '?', without it; empty when absent
  // Sets target, and path and query from it (views into `t`).
  void set_target(std::string_view t) noexcept {
    target = t;
    const size_t q = t.find('?');
    path = t.substr(0, q);
    query = q == std::string_view::npos ? std::string_view() : t.substr(q + 1);
  }
  uint8_t version_minor = 1;  // HTTP/1.<minor>; only 0 and 1 reach a handler
  bool keep_alive = true;     // false when this is the connection's last request
  std::span<const HttpHeader> headers;
  std::string_view body;  // decoded (de-chunked) body; empty when none
  // Body bytes read after `body` and dropped, not kept: a handler that said at the head it
  // needs no more of the body than a prefix (RequestContext::body_keep_bytes) gets that prefix
  // in `body`; the whole body was body.size() + body_bytes_dropped bytes. 0 for a whole body.
  uint64_t body_bytes_dropped = 0;
  // Bytes known readable after body's end (receive-buffer slack), so a parser that reads
  // ahead (simdjson needs 64) can work in place; 0 when unknown.
  size_t body_readable_padding = 0;

  bool is_head() const noexcept { return method == "HEAD"; }

  // First header with this name (case-insensitive), or an empty view with found == false.
  std::string_view header(std::string_view name, bool* found = nullptr) const noexcept {
    for (const HttpHeader& h : headers) {
      if (equals_ignore_case(h.name, name)) {
        if (found != nullptr) *found = true;
        return h.value;
      }
    }
    if (found != nullptr) *found = false;
    return {};
  }
};

}  // namespace keygate
