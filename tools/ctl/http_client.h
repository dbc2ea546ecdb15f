// A tiny blocking HTTP/1.1 client for keygatectl: one request per connection, plain TCP only.
//
// No global state and nothing shared: every call owns its socket and closes it before returning,
// so calls are safe from any thread. Every call blocks the calling thread, but no single wait
// (connect, each send, each receive) lasts longer than the limits given, the whole exchange ends
// by its deadline (a server trickling a byte at a time is cut off too), and the response is
// bounded in size, so a silent or misbehaving server cannot hang keygatectl.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace keygate::ctl {

// Where the server listens, from an http:// URL.
struct Endpoint {
  std::string host;  // as written in the URL, brackets stripped: "127.0.0.1", "::1", "localhost"
  uint16_t port = 80;

  // "host:port" ("[::1]:8081" for IPv6): the Host header and what error messages name.
  std::string authority() const;
};

// Parses "http://HOST[:PORT][/]" where HOST is a numeric IPv4 address, a bracketed numeric IPv6
// address or "localhost" (no DNS: keygatectl talks to a local or explicitly addressed admin
// listener). No user info, path, query or fragment. On failure returns false with a reason in
// `*error` that does not repeat the URL (a mistyped URL may hold a secret).
bool parse_url(std::string_view url, Endpoint* out, std::string* error);

struct HttpHeader {
  std::string name;
  std::string value;
};

struct HttpRequest {
  std::string_view method;
  std::string_view target;  // origin-form, already percent-encoded: "/admin/keys?limit=10"
  // Sent after Host; must be header-safe (the caller checks values that come from the user).
  std::vector<HttpHeader> headers;
  std::string_view body;
  // Sends Content-Type: application/json and Content-Length (also for an empty body, e.g. a POST
  // without one). Without it neither header is sent.
  bool json_body = false;
};

struct HttpResponse {
  int status = 0;
  std::string reason;
  std::vector<HttpHeader> headers;
  std::string body;  // de-chunked

  // The first header with this name (case-insensitive), or nullptr.
  const std::string* header(std::string_view name) const;
};

struct ClientLimits {
  int connect_timeout_ms = 10000;
  // The longest any single send or receive waits for the peer (an inactivity timeout: a large
  // response that keeps arriving is not cut off).
  int io_timeout_ms = 10000;
  // The longest a whole exchange (connect, send, every receive) may take, however the waits add
  // up.
  int exchange_timeout_ms = 100000;
  size_t head_bytes_max = 64 * 1024;
  // Above the largest answer the admin API gives: a logs page stops after the record that takes
  // it past 32 MiB (a record fits a worker's log buffer, 4 MiB by default), a users page after
  // the user past 4 MiB; keys pages and the rest are far smaller. (Only a log buffer configured
  // above 32 MiB with captured bodies escaping past that could make a larger page.) A server
  // that sends more costs keygatectl little beyond twice this (the body and the receive buffer
  // it is cut from), where 256 MiB cost 827 MB.
  size_t body_bytes_max = 64 * 1024 * 1024;
};

// Connects to `endpoint`, sends `request` with Host, the request's headers, Content-Type and
// Content-Length (see json_body) and Connection: close, reads one final response (skipping 1xx)
// framed by Content-Length, chunked transfer coding or the close of the connection, and closes.
// Returns false with a one-line reason in `*error` when the server cannot be reached, times out,
// or sends something that is not a well-formed HTTP/1.x response; the reason never contains
// request headers or body. Any status counts as success here: the caller interprets it.
bool http_exchange(const Endpoint& endpoint, const HttpRequest& request, const ClientLimits& limits,
                   HttpResponse* out, std::string* error);

}  // namespace keygate::ctl
