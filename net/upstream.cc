// The reverse proxy half of a worker: forwarding allowed requests to an API's upstream servers
// over the worker's own io_uring, and streaming the responses back.
//
// Per worker, per upstream server: a pool of idle keep-alive connections (bounded by
// limits.upstream_idle_connections_max, closed after limits.upstream_idle_timeout_ms or when
// the server closes them: every pooled connection keeps a receive armed; a reload that keeps
// the server keeps its pool, see switch_apis). An upstream connection serves one request at a
// time and goes back to the pool only after its response was read completely and the whole
// request was sent.
//
// Bodies stream both ways with backpressure: the client's parser appends body bytes to the
// upstream connection's `fill` buffer and stops being fed at kProxyBufferMax (the client's
// receive then pauses, see Worker::Impl::on_data); response bytes go to the client's output and
// the upstream receive is not re-armed while that output holds more than kProxyBufferMax.
//
// Failures: connect refused (or any connect error) -> the server is skipped for
// limits.upstream_fail_timeout_ms and the next one is tried; none left -> 502; every server
// skipped -> one attempt anyway at the one whose skip ends soonest (connect_next); no socket
// to be had (keygate's descriptor limit) -> 503; connect timeout or no progress for
// response_timeout_ms -> 504; reset or close before the response is complete, or a malformed
// response -> 502 (if its head has not reached the client yet; otherwise the client connection
// is cut, see close_conn) and the upstream connection is discarded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <unordered_map>

#include "core/config.h"
#include "core/forwarding.h"
#include "net/worker_impl.h"

namespace keygate::net {
namespace {

UpConn* self(llhttp_t* p) { return static_cast<UpConn*>(p->data); }

// Header fields of one response head, and of its trailer section on its own.
constexpr size_t kResponseFieldsMax = 256;

// Response parser callbacks: the head is copied into UpConn::head, the body goes straight into
// the client's output buffer, trailer fields are counted and dropped.
int append_span(UpConn* u, UpConn::Span* span, const char* at, size_t len) {
  u->piece_end = at + len;
  if (u->head.size() + len > u->header_bytes_max) {
    u->parse_failed = true;
    return -1;
  }
  if (span->len == 0) span->off = static_cast<uint32_t>(u->head.size());
  u->head.append(at, len);
  span->len += static_cast<uint32_t>(len);
  return 0;
}

// A piece of a trailer field's name or value (the final head is complete: head_sent).
int count_trailer(UpConn* u, size_t len) {
  u->trailer_bytes += len;
  if (u->trailer_bytes > u->header_bytes_max) {
    u->parse_failed = true;
    return -1;
  }
  return 0;
}

// A piece of a chunk extension of the body ("5;name=value"). llhttp reads them without a bound
// and keygate forwards none (the body is re-chunked): all of one body's together are bounded
// like its trailers, or an upstream could stream them forever with no byte for the client.
int on_chunk_extension(llhttp_t* p, const char*, size_t len) {
  UpConn* u = self(p);
  u->chunk_extension_bytes += len;
  if (u->chunk_extension_bytes > u->header_bytes_max) {
    u->parse_failed = true;
    return -1;
  }
  return 0;
}

int on_status(llhttp_t* p, const char* at, size_t len) {
  UpConn* u = self(p);
  return append_span(u, &u->reason, at, len);
}

int on_header_field(llhttp_t* p, const char* at, size_t len) {
  UpConn* u = self(p);
  if (u->head_sent) return count_trailer(u, len);
  if (u->header_spans.empty() || u->header_spans.back().second.len != 0 ||
      u->header_spans.back().first.off + u->header_spans.back().first.len !=
          u->head.size()) {
    // A new field (the previous one has a value, or this is the first).
    if (u->header_spans.size() >= kResponseFieldsMax) {
      u->parse_failed = true;
      return -1;
    }
    u->header_spans.emplace_back();
  }
  return append_span(u, &u->header_spans.back().first, at, len);
}

int on_header_value(llhttp_t* p, const char* at, size_t len) {
  UpConn* u = self(p);
  if (u->head_sent) return count_trailer(u, len);
  if (u->header_spans.empty()) return -1;
  return append_span(u, &u->header_spans.back().second, at, len);
}

int on_header_value_complete(llhttp_t* p) {
  UpConn* u = self(p);
  if (u->head_sent) {
    if (++u->trailer_fields > kResponseFieldsMax) {
      u->parse_failed = true;
      return -1;
    }
    return 0;
  }
  // Marks the field finished even when its value is empty, so the next field starts anew.
  if (!u->header_spans.empty() && u->header_spans.back().second.len == 0) {
    u->header_spans.back().second.off = static_cast<uint32_t>(u->head.size());
  }
  u->head.push_back('\0');  // separator: the next field never looks contiguous
  return 0;
}

int on_message_begin(llhttp_t* p) {
  UpConn* u = self(p);
  u->head.clear();
  u->header_spans.clear();
  u->reason = {};
  return 0;
}

int on_headers_complete(llhttp_t* p);
int on_body(llhttp_t* p, const char* at, size_t len);
int on_message_complete(llhttp_t* p);

const llhttp_settings_t kResponseSettings = [] {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_message_begin = &on_message_begin;
  s.on_status = &on_status;
  s.on_header_field = &on_header_field;
  s.on_header_value = &on_header_value;
  s.on_header_value_complete = &on_header_value_complete;
  s.on_headers_complete = &on_headers_complete;
  s.on_chunk_extension_name = &on_chunk_extension;
  s.on_chunk_extension_value = &on_chunk_extension;
  s.on_body = &on_body;
  s.on_message_complete = &on_message_complete;
  return s;
}();

// The head parsed so far as a ResponseHead (views into u->head, via u->headers).
ResponseHead collect_head(UpConn* u, const llhttp_t* p) {
  u->headers.clear();
  for (const auto& [name, value] : u->header_spans) {
    std::string_view v(u->head.data() + value.off, value.len);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    u->headers.push_back(HttpHeader{std::string_view(u->head.data() + name.off, name.len), v});
  }
  ResponseHead head;
  head.status = p->status_code;
  head.reason = std::string_view(u->head.data() + u->reason.off, u->reason.len);
  head.version_minor = static_cast<uint8_t>(p->http_minor);
  head.headers = std::span<const HttpHeader>(u->headers.data(), u->headers.size());
  return head;
}

int on_headers_complete(llhttp_t* p) {
  UpConn* u = self(p);
  Connection* c = u->client;
  const int status = p->status_code;
  // llhttp takes 0 to 3 digits, so 0..99 pass it ("HTTP/1.1 099", "HTTP/1.1 0"); RFC 9110 15
  // has none below 100, and write_client_response_head() asserts 100..999.
  if (status < 100) {
    u->parse_failed = true;
    return -1;
  }
  if (status >= 100 && status < 200) {
    if (status == 101) {
      u->parse_failed = true;  // no protocol switches through the proxy
      return -1;
    }
    u->interim = true;
    // RFC 9110 15.2: a proxy forwards 1xx responses (103 Early Hints...), except one it asked
    // for itself and to an HTTP/1.0 client, which knows none. 100 Continue counts as keygate's
    // own: it answers Expect itself and never forwards the header.
    if (status != 100 && c != nullptr && !c->http10) {
      write_client_response_head(collect_head(u, p), BodyFraming::kNone, 0, true, false,
                                 c->out[c->fill]);
    }
    return 1;  // no body, whatever the head says (see below)
  }
  if (c == nullptr) return -1;
  // Every head of this request on the wire (1xx ones included), up to this one's last field.
  const size_t in_recv = u->piece_end != nullptr ? static_cast<size_t>(u->piece_end - u->recv_at)
                                                 : 0;
  if (u->head_wire_bytes + in_recv > u->header_bytes_max) {
    u->parse_failed = true;
    return -1;
  }
  const ResponseHead head = collect_head(u, p);
  size_t chunked = 0;
  bool has_transfer_encoding = false;
  for (const HttpHeader& h : head.headers) {
    if (!equals_ignore_case(h.name, "Transfer-Encoding")) continue;
    has_transfer_encoding = true;
    chunked += chunked_codings(h.value);
    // A coding keygate cannot undo (gzip...), or chunked applied twice (de-chunked once, the
    // inner framing would be the content): 502, not a misread body.
    if (!only_chunked_coding(h.value) || chunked > 1) {
      u->parse_failed = true;
      return -1;
    }
  }
  // What llhttp frames the body by decides, not only_chunked_coding(): "chunked," or "chunked ,"
  // (an empty list element, which the list walk skips) is not chunked to llhttp, which then
  // reads the body until the close: the chunk framing would reach the client as content.
  if (has_transfer_encoding && (p->flags & F_CHUNKED) == 0) {
    u->parse_failed = true;
    return -1;
  }

  const bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  const bool no_body = u->head_request || status == 204 || status == 304;
  u->body_announced = no_body && (has_transfer_encoding || (has_length && p->content_length > 0));
  BodyFraming framing;
  uint64_t length = 0;
  if (no_body) {
    // A HEAD response describes the GET body: its Content-Length passes through. Not a 204's:
    // RFC 9110 8.6 forbids Content-Length in one (a GET's 204 loses it here too).
    framing = (u->head_request && has_length && status != 204) ? BodyFraming::kContentLength
                                                               : BodyFraming::kNone;
    length = has_length ? p->content_length : 0;
  } else if (has_length) {
    framing = BodyFraming::kContentLength;
    length = p->content_length;
  } else {
    // Chunked or delimited by the upstream closing: chunked to a 1.1 client, close-delimited
    // to a 1.0 one (which cannot take chunks).
    framing = c->http10 ? BodyFraming::kUntilClose : BodyFraming::kChunked;
  }
  // Close-delimited, or the request body is still arriving (an early answer: the rest of the
  // body will not be read), so this connection ends with the response.
  if (framing == BodyFraming::kUntilClose || c->streaming) c->client_keep_alive = false;
  c->until_close_open = framing == BodyFraming::kUntilClose;
  u->rechunk = framing == BodyFraming::kChunked;
  std::string& out = c->out[c->fill];
  u->head_at = out.size();
  u->head_at_flush = c->flushes;
  write_client_response_head(head, framing, length, c->client_keep_alive, c->http10, out, u->date);
  u->head_sent = true;
  c->rlog.response_head(std::string_view(out).substr(u->head_at));
  // 1: this response has no body. llhttp 8 knows that only for a HEAD response, and only when
  // told: it would read the body a 204 or 304 head announces (a 304 may carry the GET's
  // Content-Length, RFC 9110 8.6) and wait for it or take the next response's bytes for it.
  // Bytes after such a response are not part of it: on_up_data() then never reuses the
  // connection, nor one whose head announced a body (body_announced), whose bytes may come late.
  return no_body ? 1 : 0;
}

int on_body(llhttp_t* p, const char* at, size_t len) {
  UpConn* u = self(p);
  Connection* c = u->client;
  if (c == nullptr) return -1;
  std::string& out = c->out[c->fill];
  const size_t before = out.size();
  if (u->rechunk) {
    append_chunk(std::string_view(at, len), out);
  } else {
    out.append(at, len);
  }
  c->rlog.response_body(std::string_view(at, len), out.size() - before);
  return 0;
}

int on_message_complete(llhttp_t* p) {
  UpConn* u = self(p);
  if (u->interim) {
    u->interim = false;
    return 0;
  }
  u->message_done = true;
  if (u->rechunk && u->client != nullptr) u->client->out[u->client->fill].append("0\r\n\r\n", 5);
  return HPE_PAUSED;  // anything after the response is not ours to parse
}

// A slot kept for reuse (pooled or free) does not keep a large response head's buffer past
// kOutputKeepCapacity (as the client side's HttpParser::trim()): slots are never freed, and
// 200 concurrent 400 KB heads kept ~100 MB for good. The field spans and views need no trim:
// at most kResponseFieldsMax of them (4 and 8 KiB).
void trim_head(UpConn* up) {
  up->head.clear();
  up->header_spans.clear();
  up->headers.clear();
  if (up->head.capacity() > kOutputKeepCapacity) up->head.shrink_to_fit();
}

bool is_body_method(std::string_view m) { return m == "POST" || m == "PUT" || m == "PATCH"; }

// RFC 9110 9.2.2: requests a client may send again after a failed connection.
bool is_idempotent_method(std::string_view m) {
  return m == "GET" || m == "HEAD" || m == "PUT" || m == "DELETE" || m == "OPTIONS" ||
         m == "TRACE";
}

// The upstream groups and servers of `apis` (index = API index), or false with one line in
// `error` on an address that cannot be used.
bool build_upstreams(const std::vector<ApiConfig>& apis, std::vector<UpstreamGroup>& groups,
                     std::vector<UpstreamServer>& servers, std::string* error) {
  groups.resize(apis.size());
  for (size_t a = 0; a < apis.size(); ++a) {
    UpstreamGroup& g = groups[a];
    const uint32_t ms = apis[a].connect_timeout_ms;
    g.connect_timeout.tv_sec = ms / 1000;
    g.connect_timeout.tv_nsec = static_cast<long long>(ms % 1000) * 1'000'000;
    g.response_timeout_ms = apis[a].response_timeout_ms;
    for (const std::string& text : apis[a].upstreams) {
      ListenAddress parsed;
      std::string why;
      if (!parse_listen_address(text, &parsed, &why)) {
        *error = "apis." + apis[a].name + ".upstreams: " + text + ": " + why;
        return false;
      }
      UpstreamServer server;
      server.authority = parsed.to_string();
      server.api = static_cast<uint32_t>(a);
      if (parsed.ipv6) {
        auto* sa = reinterpret_cast<sockaddr_in6*>(&server.addr);
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(parsed.port);
        if (inet_pton(AF_INET6, parsed.host.c_str(), &sa->sin6_addr) != 1) {
          *error = "apis." + apis[a].name + ".upstreams: bad address " + text;
          return false;
        }
        server.addr_len = sizeof(sockaddr_in6);
      } else {
        auto* sa = reinterpret_cast<sockaddr_in*>(&server.addr);
        sa->sin_family = AF_INET;
        sa->sin_port = htons(parsed.port);
        if (inet_pton(AF_INET, parsed.host.c_str(), &sa->sin_addr) != 1) {
          *error = "apis." + apis[a].name + ".upstreams: bad address " + text;
          return false;
        }
        server.addr_len = sizeof(sockaddr_in);
      }
      g.servers.push_back(static_cast<uint32_t>(servers.size()));
      servers.push_back(std::move(server));
    }
  }
  return true;
}

}  // namespace

std::unique_ptr<ApiVersion> Worker::Impl::make_apis(std::shared_ptr<const ApiSet> set,
                                                    std::string* error) {
  auto v = std::make_unique<ApiVersion>();
  if (!build_upstreams(set->registry.apis(), v->groups, v->servers, error)) return nullptr;
  v->set = std::move(set);
  return v;
}

namespace {

// What makes two versions' upstream servers the same server: its API's name and its address
// (the bytes of the sockaddr: "::1" and "0::1" are one). Unique within a version: an API lists
// an address once (validate_config).
std::string server_identity(const ApiVersion& v, const UpstreamServer& server) {
  std::string key = v.set->registry.apis()[server.api].name;
  key.push_back('\0');
  key.append(reinterpret_cast<const char*>(&server.addr), server.addr_len);
  return key;
}

}  // namespace

void Worker::Impl::switch_apis(std::shared_ptr<const ApiSet> set) {
  // Server::set_apis checked the same addresses with the same code first
  // (Worker::check_upstreams): a failure here is a bug.
  std::string why;
  std::unique_ptr<ApiVersion> next_owned = make_apis(std::move(set), &why);
  KEYGATE_ASSERT(next_owned != nullptr);
  ApiVersion* old = apis_now;
  ApiVersion* next = next_owned.get();
  apis_now = next;
  api_versions.push_back(std::move(next_owned));

  // Every older version still in use learns where its servers are now: its busy connections
  // join the pools of the new version after their response (adopt_up), and their failed
  // connects mark the new version's servers down (mark_down). A server is the same one when
  // its API (by name: keys and grants name APIs the same way) lists the same address; the
  // idle connections to it do not depend on anything else (the Host, the route and the
  // response timeout are per request). Its skip state is kept only when the API's
  // connect_timeout_ms is the same too: a server skipped for a connect that timed out under
  // the old timeout was judged by a rule that no longer applies.
  std::unordered_map<std::string, uint32_t> by_identity;
  by_identity.reserve(next->servers.size());
  for (uint32_t s = 0; s < next->servers.size(); ++s) {
    by_identity.emplace(server_identity(*next, next->servers[s]), s);
  }
  for (const std::unique_ptr<ApiVersion>& owned : api_versions) {
    ApiVersion* v = owned.get();
    if (v == next) continue;
    for (UpstreamServer& server : v->servers) {
      const auto it = by_identity.find(server_identity(*v, server));
      server.successor = it == by_identity.end() ? kNoSuccessor : it->second;
      server.successor_skip =
          it != by_identity.end() &&
          v->set->registry.apis()[server.api].connect_timeout_ms ==
              next->set->registry.apis()[next->servers[it->second].api].connect_timeout_ms;
    }
  }
  // Only the version that was current has idle connections (finish_forward pools only the
  // current version's) and the latest skip states. Idle connections to a server the new
  // version keeps move to its pool, each now holding the new version (the old one is freed
  // once its busy connections are done); a moved connection's connect was submitted long ago
  // (its linked timeout's timespec is no longer read). The others carry no request: closed now.
  // Busy ones finish their response (finish_forward).
  for (UpstreamServer& server : old->servers) {
    if (server.successor == kNoSuccessor) {
      while (!server.idle.empty()) close_up(server.idle.back());
      continue;
    }
    UpstreamServer& kept = next->servers[server.successor];
    if (server.successor_skip) kept.down_until_ms = server.down_until_ms;
    for (UpConn* up : server.idle) {
      drop_apis(up->apis);
      up->apis = next;
      ++next->users;
      up->server = server.successor;
      up->group = kept.api;
    }
    kept.idle = std::move(server.idle);
    server.idle.clear();
  }
  // The reload's upstream limits (adopt_settings took them just before) apply to the pooled
  // connections too, not only to those pooled from now on: beyond a lower
  // upstream_idle_connections_max the oldest close now, and a shorter upstream_idle_timeout_ms
  // cuts the others' deadlines to that from now. Without a change this closes nothing and
  // moves no deadline (each was set at most the timeout ago).
  const int64_t idle_deadline_max = now_ms + limits.upstream_idle_timeout_ms;
  for (UpstreamServer& server : next->servers) {
    while (server.idle.size() > limits.upstream_idle_connections_max) {
      close_up(server.idle.front());  // most recent last: the front waited longest
    }
    for (UpConn* up : server.idle) up->deadline_ms = std::min(up->deadline_ms, idle_deadline_max);
  }
  apis_generation.store(apis_now->set->generation, std::memory_order_release);
}

void Worker::Impl::adopt_up(UpConn* up) {
  const uint32_t s = up->apis->servers[up->server].successor;
  if (s == kNoSuccessor) return;  // the current version does not use its server
  drop_apis(up->apis);
  up->apis = apis_now;
  ++apis_now->users;
  up->server = s;
  up->group = apis_now->servers[s].api;
}

void Worker::Impl::mark_down(UpConn* up) {
  const int64_t until = now_ms + limits.upstream_fail_timeout_ms;
  UpstreamServer& server = up->apis->servers[up->server];
  server.down_until_ms = until;
  // A request that started before a reload fails over on its own version; the servers that
  // new requests go to learn of the failure all the same.
  if (up->apis != apis_now && server.successor != kNoSuccessor && server.successor_skip) {
    apis_now->servers[server.successor].down_until_ms = until;
  }
}

void Worker::Impl::reap_apis() {
  for (size_t i = 0; i < api_versions.size();) {
    ApiVersion* v = api_versions[i].get();
    if (v != apis_now && v->users == 0) {
      // Its last user is gone: no connection, upstream connection or submission refers to it.
      api_versions.erase(api_versions.begin() + static_cast<ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
}

bool Worker::check_upstreams(const std::vector<ApiConfig>& apis, std::string* error) {
  std::vector<UpstreamGroup> groups;
  std::vector<UpstreamServer> servers;
  return build_upstreams(apis, groups, servers, error);
}

// Called with the parser stopped at the head of a request that has a body.
void Worker::Impl::head_ready(Connection* c, bool resuming) {
  const HttpRequest& request = c->parser.request();
  // A rejection here leaves the body unread: the connection closes after the response.
  ResponseWriter writer(fill_buf(c), date, request.is_head(), false);
  if (request.version_minor == 0) writer.http10_client();
  Handler& handler = *listeners[c->listener].handler;
  log_begin(c, &request);
  const size_t response_at = fill_buf(c).size();
  c->ctx.access = AccessNote{};
  c->ctx.body_bytes_max = 0;
  c->ctx.body_keep_bytes = RequestContext::kKeepWholeBody;
  c->ctx.body_keep_capture = false;
  const Handler::Result result = resuming ? handler.resume_head(request, writer, c->ctx)
                                          : handler.handle_head(request, writer, c->ctx);
  log_note(c, request);
  // Counted at its head: its kRequest (after kNeedBody) must not count it again. Forwarded or
  // answered heads end without one, so the next request is counted as usual.
  c->head_counted = result == Handler::Result::kNeedBody || result == Handler::Result::kPending;
  switch (result) {
    case Handler::Result::kNeedBody: {
      uint64_t keep = c->ctx.body_keep_bytes;
      if (keep != RequestContext::kKeepWholeBody && c->ctx.body_keep_capture &&
          c->rlog.active && keep < capture_bytes_max) {
        keep = capture_bytes_max;  // the access log may capture this much of it
      }
      if (!c->parser.read_body(c->ctx.body_bytes_max, keep)) {
        const ParseError& e = c->parser.error();
        write_error(c, e.status, e.code, e.message);
        return;
      }
      if (!charge_body(c, keep)) return;
      if (c->parser.expects_continue()) send_continue(c);
      update_timer(c);
      return;
    }
    case Handler::Result::kForward:
      start_forward(c, true);
      return;
    case Handler::Result::kDone:
      KEYGATE_ASSERT(writer.finished());
      log_end(c, writer.status(), writer.error_code(),
              std::string_view(fill_buf(c)).substr(response_at));
      ++c->responses_fill;
      c->close_after_send = true;
      c->pending.clear();
      timer_clear(c);
      mark_dirty(c);
      return;
    case Handler::Result::kPending:
      // The views point into the receive buffer, which goes back to the kernel at the end of
      // this pass; the rest of the input (body bytes) waits in `pending` until the decision.
      KEYGATE_ASSERT(c->awaiting && !writer.started());
      c->parser.stabilize_head();
      c->head_deferred = true;
      timer_clear(c);
      return;
  }
  KEYGATE_ASSERT(false);
}

void Worker::Impl::start_forward(Connection* c, bool stream_body) {
  const HttpRequest& request = c->parser.request();
  const ForwardTarget& target = c->ctx.forward;
  // The version the handler routed this request with (pinned at its start).
  ApiVersion& v = *c->apis;
  std::vector<UpstreamServer>& servers = v.servers;
  KEYGATE_ASSERT(target.api_index < v.groups.size() &&
                 !v.groups[target.api_index].servers.empty());
  c->http10 = request.version_minor == 0;
  c->client_keep_alive = request.keep_alive && !draining && !c->close_after_send;
  learn_peer(c);

  // Round robin over the servers that are not down picks the server first; then its pooled
  // connection if it has one, else a new one (connected below, failing over from there).
  // Preferring any server with an idle connection instead would send all traffic of a lightly
  // loaded API to one server, and none back to a server once it restarted.
  // Every server skipped: the one whose skip ends soonest (the panic rule, see connect_next).
  UpstreamGroup& g = v.groups[target.api_index];
  const auto n = static_cast<uint32_t>(g.servers.size());
  uint32_t first = g.next;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t at = (g.next + i) % n;
    const int64_t until = servers[g.servers[at]].down_until_ms;
    if (until <= now_ms) {
      first = at;
      break;
    }
    if (until < servers[g.servers[first]].down_until_ms) first = at;
  }
  g.next = (first + 1) % n;
  UpstreamServer& chosen = servers[g.servers[first]];
  UpConn* up = nullptr;
  if (chosen.down_until_ms <= now_ms && !chosen.idle.empty()) {
    up = chosen.idle.back();
    chosen.idle.pop_back();
    up->state = UpConn::State::kBusy;
    up->reused = true;
  } else {
    up = new_upconn();
  }
  up->replayable = up->reused && !stream_body && is_idempotent_method(request.method);
  up->fill.clear();
  begin_exchange(up, c, target.api_index, first, request.is_head(), !stream_body);
  c->proxying = true;
  c->streaming = stream_body;

  BodyFraming framing = BodyFraming::kNone;
  uint64_t length = 0;
  if (stream_body) {
    if (c->parser.streamed_chunked()) {
      framing = BodyFraming::kChunked;
    } else {
      framing = BodyFraming::kContentLength;
      length = c->parser.content_length();
    }
  } else if (!request.body.empty() || is_body_method(request.method)) {
    framing = BodyFraming::kContentLength;
    length = request.body.size();
  }
  up->host_at = write_upstream_request_head(request, target, c->peer_ip, framing, length,
                                            up->fill, chosen.authority);
  up->host_server = g.servers[first];
  if (stream_body) {
    const bool expect = c->parser.expects_continue();
    // From here on request() is gone: the parser appends body bytes to up->fill.
    if (c->rlog.active && c->rlog.log_request) {
      c->parser.set_body_capture(&c->rlog.req_body, capture_bytes_max);
      c->rlog.body_streamed = true;
    }
    if (!c->parser.stream_body(limits.proxy_body_bytes_max, &up->fill)) {
      const ParseError& e = c->parser.error();
      fail_forward(up, e.status, e.code, e.message);
      return;
    }
    if (expect) send_continue(c);
  } else {
    up->fill.append(request.body);
  }
  // The upstream's deadlines govern now, and while the body streams the body timer too (armed
  // here, from the end of the headers: a client that sends no body byte at all is bounded by
  // it as well).
  timer_clear(c);
  update_timer(c);
  if (up->state == UpConn::State::kBusy) {
    up->deadline_ms = now_ms + g.response_timeout_ms;
    flush_up(up);
    if (!up->recv_armed) arm_up_recv(up);
    return;
  }
  connect_next(up);
}

// Makes `up` serve `c`'s request (its bytes go to up->fill): fresh response parsing state.
void Worker::Impl::begin_exchange(UpConn* up, Connection* c, uint32_t group, uint32_t first,
                                  bool head_request, bool request_complete) {
  up->client = c;
  if (up->apis != c->apis) {
    // A new connection (a free slot): it belongs to the request's version from now on.
    drop_apis(up->apis);
    up->apis = c->apis;
    ++up->apis->users;
  }
  up->group = group;
  up->first = first;
  up->host_at = 0;
  up->attempts = 0;
  up->tried = 0;
  up->panicked = false;
  up->connect_timed_out = false;
  up->header_bytes_max = limits.upstream_header_bytes_max;
  up->head_request = head_request;
  up->date = date;
  up->request_complete = request_complete;
  up->got_bytes = up->head_sent = up->message_done = up->parse_failed = false;
  up->body_announced = false;
  up->head_wire_bytes = 0;
  up->trailer_fields = 0;
  up->trailer_bytes = 0;
  up->chunk_extension_bytes = 0;
  up->interim = up->rechunk = up->send_failed = up->recv_paused = false;
  up->head.clear();
  up->header_spans.clear();
  llhttp_init(&up->rp, HTTP_RESPONSE, &kResponseSettings);
  up->rp.data = up;
  c->up = up;
}

// A free upstream slot, not connected yet.
UpConn* Worker::Impl::new_upconn() {
  uint32_t slot;
  if (!free_upconns.empty()) {
    slot = free_upconns.back();
    free_upconns.pop_back();
  } else {
    slot = static_cast<uint32_t>(upconns.size());
    upconns.push_back(std::make_unique<UpConn>(slot));
  }
  UpConn* up = upconns[slot].get();
  up->state = UpConn::State::kConnecting;
  up->fd = -1;
  up->reused = up->replayable = false;
  return up;
}

// A connection taken from the pool ended (closed or reset by the server) before any byte of
// the response: most likely the server closed it as idle while the request was on its way,
// not an answer to the request. An idempotent request held whole in memory is sent again,
// once, on a new connection (RFC 9110 9.2.2; nginx does the same for its keep-alive cache).
// False when it cannot be, and the caller answers 502.
bool Worker::Impl::retry_forward(UpConn* up, int res) {
  Connection* c = up->client;
  if (c == nullptr || !up->replayable || up->got_bytes ||
      (res != 0 && res != -ECONNRESET && res != -EPIPE)) {
    return false;
  }
  UpConn* next = new_upconn();
  // The whole request as it was sent (copied: a send may still be reading `sending`).
  next->fill.assign(up->sending.data(), up->sending.size());
  next->fill.append(up->fill);
  // The same server first: it closed an idle connection, it did not fail.
  begin_exchange(next, c, up->group, up->first, up->head_request, true);
  next->host_at = up->host_at;  // `sending` starts with the request head
  next->host_server = up->host_server;
  up->client = nullptr;
  close_up(up);
  bump(stats.upstream_retries);
  connect_next(next);
  return true;
}

// Starts a connection to the next server this request has not tried yet (walking the group
// from up->first) that is not down. When the walk finds none (each server tried or skipped),
// the panic rule (Envoy's): one attempt per request at the untried server whose skip ends
// soonest, so an API is never unavailable only because its servers are skipped (a one-server
// API whose server refused one connect, a group whose servers all blipped). False when the
// request was answered instead (502/504, or 503 sockets_exhausted).
bool Worker::Impl::connect_next(UpConn* up) {
  static_assert(kApiUpstreamsMax <= 64, "UpConn::tried has a bit per server of an API");
  UpstreamGroup& g = up->apis->groups[up->group];
  const std::vector<UpstreamServer>& servers = up->apis->servers;
  const size_t n = g.servers.size();
  while (up->attempts < n) {
    const uint32_t at = (up->first + up->attempts) % static_cast<uint32_t>(n);
    ++up->attempts;
    if (servers[g.servers[at]].down_until_ms > now_ms) continue;
    return connect_to(up, at);
  }
  if (!up->panicked) {
    // From up->first, as the walk: start_forward() gave the request the soonest back already.
    uint32_t best = static_cast<uint32_t>(n);
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t at = (up->first + i) % static_cast<uint32_t>(n);
      if ((up->tried & (uint64_t{1} << at)) != 0) continue;
      if (best == n || servers[g.servers[at]].down_until_ms <
                           servers[g.servers[best]].down_until_ms) {
        best = at;
      }
    }
    if (best != n) {
      up->panicked = true;
      return connect_to(up, best);
    }
  }
  // Nothing left to try. At least one server was (a request that found every server skipped
  // made its panic attempt), and its failure, the last one, says what the client gets.
  KEYGATE_ASSERT(up->tried != 0);
  if (up->connect_timed_out) {
    fail_forward(up, 504, "upstream_timeout", "the upstream server did not accept in time");
  } else {
    fail_forward(up, 502, "upstream_unavailable", "the upstream server refused the connection");
  }
  return false;
}

// Starts the connect to server g.servers[at] for `up`'s request. False when no socket could be
// had (the request was answered 503).
bool Worker::Impl::connect_to(UpConn* up, uint32_t at) {
  UpstreamGroup& g = up->apis->groups[up->group];
  const uint32_t s = g.servers[at];
  std::vector<UpstreamServer>& servers = up->apis->servers;
  UpstreamServer& server = servers[s];
  up->tried |= uint64_t{1} << at;
  if (up->host_at != 0 && up->host_server != s) {
    up->fill.replace(up->host_at, servers[up->host_server].authority.size(), server.authority);
    up->host_server = s;
  }
  int fd = ::socket(server.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && static_cast<uint64_t>(fd) >= upstream_descriptor_ceiling) {
    ::close(fd);  // it would take the descriptors kept for the admin port and the log
    fd = -1;
  }
  if (fd < 0) {
    // keygate's own shortage (EMFILE: RLIMIT_NOFILE reached, ENFILE, ENOMEM, or the reserve
    // reached), not the server's fault: no server is marked down, and the others would fail
    // the same way.
    fail_forward(up, 503, "sockets_exhausted",
                 "keygate cannot open a connection to the upstream now");
    return false;
  }
  const int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  up->fd = fd;
  up->server = s;
  up->state = UpConn::State::kConnecting;
  // The connect and its linked timeout must go in one submission: get_sqe() submitting
  // between them (a full queue) would send the connect without its timeout.
  if (io_uring_sq_space_left(&ring) < 2) io_uring_submit(&ring);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_connect(sqe, fd, reinterpret_cast<const sockaddr*>(&server.addr),
                        server.addr_len);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpUpConnect, up->slot, up->gen));
  sqe->flags |= IOSQE_IO_LINK;
  ++up->ops;
  // The linked timeout cancels the connect when it fires; its own completion only counts.
  // Its timespec lives in the group, whose version `up` holds until its slot is released (after
  // every completion of it is reaped).
  sqe = get_sqe();
  io_uring_prep_link_timeout(sqe, &g.connect_timeout, 0);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpUpConnectTimeout, up->slot, up->gen));
  ++up->ops;
  up->deadline_ms = 0;
  return true;
}

void Worker::Impl::on_up_connect(UpConn* up, int res) {
  up_op_done(up);
  if (up->state != UpConn::State::kConnecting) return;  // the request went away meanwhile
  if (res == 0) {
    up->state = UpConn::State::kBusy;
    up->deadline_ms = now_ms + up->apis->groups[up->group].response_timeout_ms;
    arm_up_recv(up);
    flush_up(up);
    return;
  }
  ::close(up->fd);
  up->fd = -1;
  // Refused or timed out (the link timeout cancels the connect: ECANCELED), it is a failed
  // connect: the server is skipped for upstream_fail_timeout_ms and the next one is tried.
  up->connect_timed_out = res == -ECANCELED || res == -ETIME;
  mark_down(up);
  connect_next(up);
}

// Feeds a streaming request body to the parser, which appends it to the upstream's buffer.
// Consumes from `*data` what it takes; stops (leaving the rest) at kProxyBufferMax queued.
void Worker::Impl::stream_request_body(Connection* c, std::span<char>* data) {
  UpConn* up = c->up;
  if (up->fill.size() >= kProxyBufferMax || data->empty()) return;
  const HttpParser::Result r = c->parser.parse(*data, 0);
  *data = data->subspan(r.consumed);
  switch (r.status) {
    case HttpParser::Status::kNeedMore:
      break;
    case HttpParser::Status::kBodyEnd:
      c->streaming = false;
      up->request_complete = true;
      break;
    case HttpParser::Status::kError: {
      bump(stats.parse_errors);
      const ParseError& e = c->parser.error();
      fail_forward(up, e.status, e.code, e.message);  // closes: the body is not all read
      return;
    }
    default:
      KEYGATE_ASSERT(false);
  }
  flush_up(up);
  update_timer(c);
}

void Worker::Impl::flush_up(UpConn* up) {
  if (up->send_in_flight || up->fill.empty() || up->state != UpConn::State::kBusy ||
      up->send_failed) {
    return;
  }
  std::swap(up->fill, up->sending);
  up->fill.clear();
  up->send_off = 0;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_send(sqe, up->fd, up->sending.data(), up->sending.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpUpSend, up->slot, up->gen));
  up->send_in_flight = true;
  ++up->ops;
}

void Worker::Impl::on_up_send(UpConn* up, int res) {
  up->send_in_flight = false;
  up_op_done(up);
  if (up->state != UpConn::State::kBusy) return;
  if (res < 0) {
    // The upstream stopped reading (it may have answered early and closed): the receive side
    // decides what the client gets.
    up->send_failed = true;
    return;
  }
  up->deadline_ms = now_ms + up->apis->groups[up->group].response_timeout_ms;
  up->send_off += static_cast<size_t>(res);
  if (up->send_off < up->sending.size()) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_send(sqe, up->fd, up->sending.data() + up->send_off,
                       up->sending.size() - up->send_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, make_user_data(kOpUpSend, up->slot, up->gen));
    up->send_in_flight = true;
    ++up->ops;
    return;
  }
  if (!up->replayable) {
    up->sending.clear();
    if (up->sending.capacity() > kOutputKeepCapacity) up->sending.shrink_to_fit();
  }
  flush_up(up);
  Connection* c = up->client;
  // Room again for body bytes the client sent meanwhile.
  if (c != nullptr && c->streaming && up->fill.size() < kProxyBufferMax) drain_pending(c);
}

void Worker::Impl::arm_up_recv(UpConn* up) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv(sqe, up->fd, nullptr, kBufSize, 0);
  // Armed before a response starts (just connected, request just sent, pooled), the socket is
  // as good as always empty: wait for readiness first instead of a recv try that fails with
  // EAGAIN and then arms the poll anyway. Mid-response, more bytes are likely already queued.
  if (up->state == UpConn::State::kIdle || !up->got_bytes) {
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  }
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = kBufGroup;
  io_uring_sqe_set_data64(sqe, make_user_data(kOpUpRecv, up->slot, up->gen));
  up->recv_armed = true;
  ++up->ops;
}

void Worker::Impl::on_up_recv(UpConn* up, io_uring_cqe* cqe) {
  up->recv_armed = false;
  const int res = cqe->res;
  if ((cqe->flags & IORING_CQE_F_BUFFER) != 0) {
    const auto bid = static_cast<unsigned short>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    char* buf = buf_base + static_cast<size_t>(bid) * kBufSize;
    if (res > 0) {
      if (up->state == UpConn::State::kIdle) {
        close_up(up);  // a pooled connection must stay silent
      } else {
        on_up_data(up, buf, static_cast<size_t>(res));
      }
    }
    io_uring_buf_ring_add(buf_ring, buf, kBufSize, bid, io_uring_buf_ring_mask(kBufCount),
                          static_cast<int>(buf_adv));
    ++buf_adv;
  }
  if (res == -ENOBUFS) {
    if (up->state == UpConn::State::kBusy || up->state == UpConn::State::kIdle) {
      uprearm.emplace_back(up, up->gen);  // once the buffers are back, at the end of this pass
    }
  } else if (res <= 0) {
    on_up_eof(up, res);
  } else if (up->state == UpConn::State::kBusy && !up->recv_armed) {
    Connection* c = up->client;
    if (c != nullptr && client_buffered(c) > kProxyBufferMax) {
      up->recv_paused = true;  // client_output_drained() re-arms
    } else {
      arm_up_recv(up);
    }
  }
  up_op_done(up);
}

void Worker::Impl::on_up_data(UpConn* up, const char* data, size_t len) {
  if (up->state != UpConn::State::kBusy || up->client == nullptr || up->message_done) {
    if (up->state == UpConn::State::kBusy) up->parse_failed = true;
    return;
  }
  up->got_bytes = true;
  up->recv_at = data;
  up->piece_end = nullptr;
  const llhttp_errno_t err = llhttp_execute(&up->rp, data, len);
  Connection* c = up->client;
  if (err == HPE_PAUSED) {
    const size_t used = static_cast<size_t>(llhttp_get_error_pos(&up->rp) - data);
    // Bytes after a complete response: the upstream is out of step; never reuse it.
    const bool clean = used == len;
    if (!up->request_complete || up->send_in_flight || !up->fill.empty()) {
      // The response came before the whole request was sent (e.g. an early 413): the client
      // gets it, and the connection is not reused.
      finish_forward(up, false);
      return;
    }
    finish_forward(up, clean && !up->body_announced && llhttp_should_keep_alive(&up->rp) != 0);
    return;
  }
  if (!up->head_sent && err == HPE_OK && !up->parse_failed) {
    // Still no final head: this receive counts whole against the head limit, and does not
    // extend the deadline. The final head is due within response_timeout_ms of the request's
    // last byte sent (on_up_send) however the upstream drips it: a header value of endless
    // spaces, 1xx after 1xx, a field every so often.
    up->head_wire_bytes += len;
    if (up->head_wire_bytes > up->header_bytes_max) up->parse_failed = true;
  }
  if (err != HPE_OK || up->parse_failed) {
    fail_forward(up, 502, "bad_upstream_response", "the upstream sent an invalid response");
    return;
  }
  // From the head on, any byte is progress: the body may take as long as it keeps coming.
  if (up->head_sent) up->deadline_ms = now_ms + up->apis->groups[up->group].response_timeout_ms;
  if (c != nullptr) mark_dirty(c);
}

void Worker::Impl::on_up_eof(UpConn* up, int res) {
  if (up->state == UpConn::State::kIdle) {
    close_up(up);  // the server closed a pooled connection
    return;
  }
  if (up->state != UpConn::State::kBusy) return;
  if (res == 0 && up->head_sent) {
    // A body delimited by the close ends here (llhttp_finish says whether that is valid). It
    // ends through on_message_complete, whose HPE_PAUSED llhttp_finish passes on.
    const llhttp_errno_t err = llhttp_finish(&up->rp);
    if ((err == HPE_OK || err == HPE_PAUSED) && up->message_done) {
      finish_forward(up, false);
      return;
    }
  }
  if (up->reused && retry_forward(up, res)) return;
  fail_forward(up, 502, "upstream_closed", "the upstream server closed the connection early");
}

// The response was forwarded completely.
void Worker::Impl::finish_forward(UpConn* up, bool reusable) {
  Connection* c = up->client;
  up->client = nullptr;
  if (c != nullptr) {
    c->up = nullptr;
    c->proxying = false;  // until_close_open stays: cleared once the output is all sent
    log_end(c, up->rp.status_code, {}, {});  // while `streaming` still says the body was cut
    if (c->streaming) {
      // The upstream answered before the body ended; the rest of it is not read.
      c->streaming = false;
      c->client_keep_alive = false;
    }
    ++c->responses_fill;
    if (!c->client_keep_alive) c->close_after_send = true;
    mark_dirty(c);
  }
  // A connection of a version a reload replaced joins the current version's pool of the same
  // server; one to a server the current version no longer uses is not pooled: those are
  // drained this way, each connection closed once its response is complete.
  if (up->apis != apis_now) adopt_up(up);
  UpstreamServer& server = up->apis->servers[up->server];
  if (reusable && up->request_complete && !up->send_failed && !up->send_in_flight &&
      up->fill.empty() && server.idle.size() < limits.upstream_idle_connections_max &&
      !draining && up->apis == apis_now) {
    up->state = UpConn::State::kIdle;
    up->deadline_ms = now_ms + limits.upstream_idle_timeout_ms;
    up->recv_paused = false;
    // The request kept for a retry (up to the buffered-body limit) is not held while idle.
    up->replayable = false;
    up->sending.clear();
    if (up->sending.capacity() > kOutputKeepCapacity) up->sending.shrink_to_fit();
    trim_head(up);
    server.idle.push_back(up);
    if (!up->recv_armed) arm_up_recv(up);  // notices the server closing it
  } else {
    close_up(up);
  }
  if (c != nullptr) {
    drain_pending(c);
    update_timer(c);
  }
}

// The request cannot be forwarded (or its response not completed): answer the client with an
// error if nothing of the response reached it yet, else cut its connection.
void Worker::Impl::fail_forward(UpConn* up, int status, std::string_view code,
                                std::string_view message) {
  Connection* c = up->client;
  const bool head_request = up->head_request;
  bool head_sent = up->head_sent;
  if (c != nullptr && head_sent && up->head_at_flush == c->flushes) {
    // Nothing of this response left yet: take it back and answer with the error instead.
    fill_buf(c).resize(up->head_at);
    head_sent = false;
    c->until_close_open = false;
  }
  up->client = nullptr;
  close_up(up);
  if (c == nullptr) return;
  c->up = nullptr;
  c->proxying = false;
  if (head_sent) {
    log_end(c, up->rp.status_code, code, {});
    close_conn(c);  // a reset when the client would take the close for the body's end
    return;
  }
  const bool body_unread = c->streaming;
  // The answer to a HEAD has no body here either: the connection stays in step.
  ResponseWriter writer(fill_buf(c), date, head_request,
                        c->client_keep_alive && !body_unread && !draining);
  if (c->http10) writer.http10_client();
  const size_t response_at = fill_buf(c).size();
  writer.error(status, code, message);
  log_end(c, status, code, std::string_view(fill_buf(c)).substr(response_at));
  c->streaming = false;  // after log_end: a body cut short is logged as truncated
  ++c->responses_fill;
  if (!writer.keep_alive()) {
    c->close_after_send = true;
    c->pending.clear();
  }
  mark_dirty(c);
  drain_pending(c);
  update_timer(c);
}

// The client connection is closing: its upstream connection cannot finish cleanly.
void Worker::Impl::detach_client(Connection* c) {
  UpConn* up = c->up;
  if (up == nullptr) return;
  log_end(c, 499, abandoned_reason(c), {});
  c->up = nullptr;
  c->proxying = c->streaming = false;
  up->client = nullptr;
  close_up(up);
}

void Worker::Impl::close_up(UpConn* up) {
  if (up->state == UpConn::State::kClosing || up->state == UpConn::State::kFree) return;
  if (up->state == UpConn::State::kIdle) {
    auto& idle = up->apis->servers[up->server].idle;
    for (size_t i = 0; i < idle.size(); ++i) {
      if (idle[i] == up) {
        idle.erase(idle.begin() + static_cast<ptrdiff_t>(i));
        break;
      }
    }
  }
  up->state = UpConn::State::kClosing;
  up->client = nullptr;
  if (up->ops == 0) {
    release_up(up);
    return;
  }
  // Cancels the connect, send and receive still in flight on this socket; the slot is freed
  // when their completions are reaped.
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_cancel_fd(sqe, up->fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, make_user_data(kOpUpCancel, up->slot, up->gen));
  ++up->ops;
  if (up->fd >= 0) ::shutdown(up->fd, SHUT_RDWR);
}

void Worker::Impl::up_op_done(UpConn* up) {
  KEYGATE_ASSERT(up->ops > 0);
  --up->ops;
  if (up->state == UpConn::State::kClosing && up->ops == 0) release_up(up);
}

void Worker::Impl::release_up(UpConn* up) {
  if (up->fd >= 0) ::close(up->fd);
  up->fd = -1;
  ++up->gen;
  up->state = UpConn::State::kFree;
  up->client = nullptr;
  up->fill.clear();
  up->sending.clear();
  trim_head(up);
  for (std::string* b : {&up->fill, &up->sending, &up->head}) {
    if (b->capacity() > kSlotOutputKeepCapacity) std::string().swap(*b);
  }
  up->send_off = 0;
  up->send_in_flight = up->send_failed = up->recv_armed = up->recv_paused = false;
  up->reused = up->replayable = false;
  up->attempts = 0;
  up->tried = 0;
  up->panicked = false;
  up->connect_timed_out = false;
  up->server = 0;
  drop_apis(up->apis);
  up->apis = nullptr;
  free_upconns.push_back(up->slot);
}

void Worker::Impl::check_upstream_timers() {
  // By index: fail_forward() can serve the client's next pipelined request, whose forward may
  // add an upstream connection (push_back would invalidate a range-for's iterator).
  for (size_t i = 0; i < upconns.size(); ++i) {
    UpConn* up = upconns[i].get();
    if (up->deadline_ms == 0 || up->deadline_ms > now_ms) continue;
    if (up->state == UpConn::State::kBusy && !up->message_done) {
      // Paused for a slow client: the upstream waits for us, not we for it (the client's
      // write timeout governs; client_output_drained() gives the upstream a fresh deadline).
      if (up->recv_paused) continue;
      // Likewise while it has taken every body byte the client sent so far: the client's body
      // timer governs a stalled upload.
      const Connection* c = up->client;
      if (c != nullptr && c->streaming && up->fill.empty() && !up->send_in_flight) {
        up->deadline_ms = now_ms + up->apis->groups[up->group].response_timeout_ms;
        continue;
      }
      up->deadline_ms = 0;
      fail_forward(up, 504, "upstream_timeout", "the upstream server did not answer in time");
    } else if (up->state == UpConn::State::kIdle) {
      up->deadline_ms = 0;
      close_up(up);
    }
  }
}

// The client's output drained below the backpressure mark: resume reading the upstream.
void Worker::Impl::client_output_drained(Connection* c) {
  UpConn* up = c->up;
  if (up == nullptr || !up->recv_paused || client_buffered(c) > kProxyBufferMax) return;
  up->recv_paused = false;
  // A fresh no-progress deadline for the body; a head still due keeps its own.
  if (up->deadline_ms != 0 && up->head_sent) {
    up->deadline_ms = now_ms + up->apis->groups[up->group].response_timeout_ms;
  }
  if (up->state == UpConn::State::kBusy && !up->recv_armed) arm_up_recv(up);
}

}  // namespace keygate::net
