// The worker's side of the access log: one record per request, on both listeners, formatted on
// the worker (core's AccessRecordWriter, which redacts every trace of the key) and handed to the
// AccessSink, which only copies it into the worker's own lock-free buffer: no file I/O, no lock,
// no syscall here (a full buffer drops the record and counts it).
//
// A record begins when a request's head is parsed (log_begin; on a listener that reads whole
// requests, once its body is in), dated back to the request's first byte; it learns the key's
// identity and logging options from the handler (log_note, from RequestContext::access), and
// ends when its response is complete (log_end): at once for responses keygate writes itself,
// when the upstream's response ends for forwarded ones, or when the connection ends first
// (log_abandoned: status 499, reason "client_closed", or "write_timeout"/"send_too_slow"/
// "shutdown" when keygate cut it; a deferred request whose handler did its work anyway, an admin change the backend
// made, keeps that status with the same reason, also one the drain deadline cut off, logged
// after the workers exited: Worker::Impl::settle_deferred). For keys with log_request /
// log_response the request (head rebuilt from the parsed fields, body) and the response are
// captured up to capture_bytes_max each and marked truncated beyond it. A record ends when its
// response is queued, not when it was sent: status and bytes_out say what keygate answered,
// not what the client received (a response cut off by the drain deadline or a reset is still
// logged with its status).
#include <charconv>
#include <cstring>
#include <ctime>

#include "net/worker_impl.h"

namespace keygate::net {
namespace {

int64_t wall_us() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
}

void append_capped(std::string& to, std::string_view from, size_t max, bool* truncated) {
  if (to.size() >= max) {
    if (!from.empty()) *truncated = true;
    return;
  }
  const size_t room = max - to.size();
  if (from.size() > room) *truncated = true;
  to.append(from.substr(0, room));
}

// Cuts the captured bodies (marked truncated) so that the record gets shorter: each to `keep`
// of `total` of its length, or, with total == 0, to an equal share of the room the rest of the
// record leaves in `bytes_max` at the worst escape (6 bytes per text byte), which always fits.
void cut_captured_bodies(const AccessRecord& r, CapturedMessage* req, CapturedMessage* resp,
                         size_t keep, size_t total, size_t bytes_max) {
  CapturedMessage* const messages[2] = {req, resp};
  size_t share[2] = {0, 0};
  if (total != 0) {
    for (size_t i = 0; i < 2; ++i) share[i] = messages[i]->body.size() / total * keep +
                                              messages[i]->body.size() % total * keep / total;
  } else {
    const std::string_view bodies[2] = {req->body, resp->body};
    req->body = resp->body = {};
    const size_t rest = AccessRecordWriter::capacity_hint(r);
    share[0] = share[1] = rest < bytes_max ? (bytes_max - rest) / 12 : 0;
    req->body = bodies[0];
    resp->body = bodies[1];
  }
  for (size_t i = 0; i < 2; ++i) {
    if (messages[i]->body.size() <= share[i]) continue;
    messages[i]->body = messages[i]->body.substr(0, share[i]);
    messages[i]->body_truncated = true;
  }
}

}  // namespace

void ReasonCounters::bump(std::string_view code) noexcept {
  if (code.empty()) return;
  const uint32_t used = used_.load(std::memory_order_relaxed);  // this thread is the only writer
  for (uint32_t i = 0; i < used; ++i) {
    Slot& slot = slots_[i];
    if (code.size() == slot.length && std::memcmp(code.data(), slot.name, code.size()) == 0) {
      net::bump(slot.count);
      return;
    }
  }
  if (used == kSlots || code.size() > kNameMax || code == "other") {
    net::bump(other_);
    return;
  }
  Slot& slot = slots_[used];
  std::memcpy(slot.name, code.data(), code.size());
  slot.length = static_cast<uint8_t>(code.size());
  slot.count.store(1, std::memory_order_relaxed);
  used_.store(used + 1, std::memory_order_release);  // the name before it can be read
}

// One per access record, whether or not the log is on.
void Worker::Impl::count_response(const Connection* c, int status, std::string_view reason) {
  const size_t listener = c->listener < WorkerStats::kListeners ? c->listener : 0;
  const size_t slot = status >= 100 && static_cast<size_t>(status) < WorkerStats::kStatusSlots
                          ? static_cast<size_t>(status)
                          : 0;
  bump(stats.responses[listener][slot]);
  stats.reasons[listener].bump(reason);
}

void Worker::Impl::log_begin(Connection* c, const HttpRequest* request) {
  RequestLog& l = c->rlog;
  if (l.open) return;
  l.open = true;
  if (access_sink == nullptr) return;
  l.active = true;
  // Back to the request's first byte: a record begun once the body is in (a listener that does
  // not stop at heads), or when the request is abandoned or rejected, covers its upload too.
  // The loop's cached clock, so no clock read is added: to the millisecond, at the pass.
  const int64_t waited_ms = now_ms - l.head_ms;
  l.start_us = wall_us() - (l.head_ms != 0 && waited_ms > 0 ? waited_ms * 1000 : 0);
  l.id = (static_cast<uint64_t>(index) << 48) | ++request_counter;
  l.method.clear();
  l.target.clear();
  if (request != nullptr) {
    l.method.assign(request->method);
    l.target.assign(request->target);
  }
  l.key_id.clear();
  l.user.clear();
  l.api.clear();
  l.key_value.clear();
  l.log_request = l.log_response = false;
  l.req_head.clear();
  l.req_body.clear();
  l.req_content_type.clear();
  l.resp_head.clear();
  l.resp_body.clear();
  l.resp_content_type.clear();
  l.req_truncated = l.resp_truncated = false;
  l.bytes_out = 0;
  l.capture_max = capture_bytes_max;
  l.body_streamed = false;
}

void Worker::Impl::log_note_head_key(Connection* c, HttpRequest head) {
  RequestLog& l = c->rlog;
  if (!l.active) return;
  // No handler saw this request (a missing Host, an Upgrade, an Expect keygate does not meet,
  // a body its client abandoned on a listener that reads whole requests), yet it may carry its
  // key, and a copy of it elsewhere in the target (?token=...): every record's path is
  // scrubbed of the key the request presented.
  head.set_target(head.target);
  head.headers = c->parser.parsed_headers();
  l.key_value.assign(head_keys.extract(head).seen);
}

// After a handler call: what it said about the key.
void Worker::Impl::log_note(Connection* c, const HttpRequest& request) {
  RequestLog& l = c->rlog;
  if (!l.active) return;
  const AccessNote& note = c->ctx.access;
  if (!note.key_id.empty()) {
    l.key_id.assign(note.key_id);
    l.user.assign(note.user);
    l.api.assign(note.api);
  }
  l.log_request = l.log_request || note.log_request;
  l.log_response = l.log_response || note.log_response;
  // Every record scrubs the presented key by value from its path (a key the client also put in
  // a path segment or another query parameter), not only records with captures.
  if (!note.key_value.empty()) l.key_value.assign(note.key_value);
  if (l.log_request && l.req_head.empty()) {
    l.req_head.append(request.method).append(" ").append(request.target);
    l.req_head.append(request.version_minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
    for (const HttpHeader& h : request.headers) {
      l.req_head.append(h.name).append(": ").append(h.value).append("\r\n");
    }
    l.req_head.append("\r\n");
    l.req_content_type.assign(request.header("content-type"));
    append_capped(l.req_body, request.body, capture_bytes_max, &l.req_truncated);
    // Only a prefix of the body was kept (the rest read and dropped): it is cut short.
    if (request.body_bytes_dropped != 0) l.req_truncated = true;
  }
}

void RequestLog::response_head(std::string_view head) {
  if (!active) return;
  bytes_out += head.size();
  if (!log_response) return;
  resp_head.assign(head);
  // Content-Type picks the body redaction rules; keygate and llhttp-parsed heads spell it so.
  for (std::string_view name : {"\r\nContent-Type:", "\r\ncontent-type:"}) {
    const size_t at = head.find(name);
    if (at == std::string_view::npos) continue;
    std::string_view v = head.substr(at + name.size());
    v = v.substr(0, v.find("\r\n"));
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    resp_content_type.assign(v);
    break;
  }
}

void RequestLog::release_large(size_t keep_bytes) noexcept {
  for (std::string* s : {&method, &target, &key_id, &user, &api, &key_value, &req_head, &req_body,
                         &req_content_type, &resp_head, &resp_body, &resp_content_type}) {
    if (s->capacity() > keep_bytes) std::string().swap(*s);
  }
}

void RequestLog::response_body(std::string_view data, size_t wire_bytes) {
  if (!active) return;
  bytes_out += wire_bytes;
  if (log_response) append_capped(resp_body, data, capture_max, &resp_truncated);
}

// The response is complete (or the exchange ended): write the record. `response_text` is the
// whole response when keygate wrote it itself (empty when it was streamed: the captures and
// bytes_out were collected on the way).
void Worker::Impl::log_end(Connection* c, int status, std::string_view reason,
                           std::string_view response_text) {
  RequestLog& l = c->rlog;
  if (!l.open) return;
  l.open = false;
  count_response(c, status, reason);
  if (!l.active) return;
  learn_peer(c);
  // "ip:port" without snprintf (a measurable share of a small record's cost).
  char client[sizeof(c->peer_ip) + 8];
  const size_t ip_len = std::strlen(c->peer_ip);
  std::memcpy(client, c->peer_ip, ip_len);
  client[ip_len] = ':';
  const auto [port_end, ec] =
      std::to_chars(client + ip_len + 1, client + sizeof(client), c->peer_port);
  if (!response_text.empty()) {
    const size_t split = response_text.find("\r\n\r\n");
    const size_t head_len = split == std::string_view::npos ? response_text.size() : split + 4;
    l.response_head(response_text.substr(0, head_len));
    const std::string_view body = response_text.substr(head_len);
    l.response_body(body, body.size());
  }
  CapturedMessage req;
  CapturedMessage resp;
  AccessRecord r;
  r.time_us = l.start_us;
  r.request_id = l.id;
  r.worker = index;
  r.listener = listeners[c->listener].name;
  r.client = std::string_view(client, static_cast<size_t>(port_end - client));
  r.key_id = l.key_id;
  r.user = l.user;
  r.api = l.api;
  r.method = l.method;
  r.target = l.target;
  r.reason = reason;
  r.status = status;
  r.bytes_in = c->parser.request_bytes();
  r.bytes_out = l.bytes_out;
  const int64_t end = wall_us();
  r.duration_us = end > l.start_us ? static_cast<uint64_t>(end - l.start_us) : 0;
  if (l.log_request) {
    // A body still streaming when the exchange ends (the upstream answered before it was all
    // sent, the client left, an error) was not captured whole either, however little of it
    // arrived: callers end the record before they clear `streaming`.
    if (l.body_streamed) l.req_truncated = !c->parser.body_captured_all() || c->streaming;
    req.head = l.req_head;
    req.body = l.req_body;
    req.body_truncated = l.req_truncated;
    req.content_type = l.req_content_type;
    r.request = &req;
  }
  if (l.log_response) {
    resp.head = l.resp_head;
    resp.body = l.resp_body;
    resp.body_truncated = l.resp_truncated;
    resp.content_type = l.resp_content_type;
    r.response = &resp;
  }
  const std::string_view key_values[1] = {l.key_value};
  if (!l.key_value.empty()) r.key_values = std::span<const std::string_view>(key_values, 1);
  l.active = false;
  // Straight into the log's buffer when it has room for the worst case; else (a full buffer,
  // or a record longer than that) formatted here and copied, or dropped and counted.
  const size_t max_bytes = AccessRecordWriter::capacity_hint(r);
  char* const at = access_sink->reserve(index, max_bytes);
  const size_t bytes = at != nullptr ? record_writer.append(r, at, max_bytes) : 0;
  if (bytes != 0) {
    access_sink->commit(index, bytes);
  } else {
    record_buf.clear();
    record_writer.append(r, record_buf);
    // Longer than the log could ever take (large captures, a small buffer): the captured
    // bodies are cut to fit, so the request is still logged rather than dropped. The rest of
    // the record is fixed, so cutting in proportion fits within a step or two; the last resort
    // is the share that fits even at the worst escape.
    const size_t record_max = access_sink->record_bytes_max();
    for (int step = 0; record_buf.size() > record_max && step < 4; ++step) {
      if (step < 3) {
        cut_captured_bodies(r, &req, &resp, record_max - record_max / 16, record_buf.size(),
                            record_max);
      } else {
        cut_captured_bodies(r, &req, &resp, 0, 0, record_max);
      }
      record_buf.clear();
      record_writer.append(r, record_buf);
    }
    (void)access_sink->append(index, record_buf);
    if (record_buf.capacity() > kOutputKeepCapacity) record_buf.shrink_to_fit();
  }
  l.key_value.clear();
  l.release_large(kRecordFieldKeepCapacity);
}

// Why a request in progress had no complete answer when its connection ended: keygate's own
// cut (Connection::cut_reason: "write_timeout", "send_too_slow", "worker_failed", "shutdown")
// or else the client's leaving.
const char* Worker::Impl::abandoned_reason(const Connection* c) {
  return c->cut_reason != nullptr ? c->cut_reason : "client_closed";
}

// The connection ends (reset, closed mid-request, timed out writing, cut at the drain deadline)
// before the request in progress was answered; or, for a deferred request, its ticket came back
// after that. Writes the record that request never got, with reason abandoned_reason() and
// `status` (499, or what the handler did anyway: Handler::abandon()). Nothing when there is no such request: the
// connection's last record was written (close_after_send, lingering), or none began.
void Worker::Impl::log_abandoned(Connection* c, int status) {
  HttpRequest head;
  const bool mid_body = c->parser.head_in_progress(&head.method, &head.target);
  if (!c->rlog.open) {
    // A listener that does not stop at heads begins a record only once the body is in: a
    // request abandoned mid-body begins its record here, from the head the parser holds.
    if (c->close_after_send || c->lingering) return;
    if (!mid_body) return;
    log_begin(c, &head);
  }
  // Mid-body, no handler may have noted the key yet: none saw the request on such a listener,
  // and one that admitted its head leaves the note to the whole request. The head's key, then.
  if (mid_body && c->rlog.key_value.empty()) log_note_head_key(c, head);
  log_end(c, status, abandoned_reason(c), {});
}

}  // namespace keygate::net
