// Worker internals shared by the worker's translation units (worker.cc: client connections and
// the event loop; upstream.cc: the reverse proxy). Not part of net/'s interface.
#pragma once

#include <liburing.h>
#include <llhttp.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/access_record.h"
#include "core/api_versions.h"
#include "core/assert.h"
#include "core/key_extractor.h"
#include "core/permissions.h"
#include "core/response_writer.h"
#include "core/send_rate.h"
#include "net/http_parser.h"
#include "net/worker.h"

namespace keygate::net {

// Provided-buffer ring: every receive lands in one of these, is parsed in place, and the buffer
// goes back to the kernel at the end of the event-loop pass.
inline constexpr unsigned kBufCount = 512;  // power of two (ring requirement)
inline constexpr unsigned kBufSize = 16 * 1024;
inline constexpr uint16_t kBufGroup = 1;
// Received bytes a connection holds while it cannot parse them (at its pipeline cap, behind a
// deferred or forwarded request, streaming a body the upstream does not take yet). The first
// byte held stops the connection's multishot receive (which keeps delivering buffers until a
// cancel lands: measured up to megabytes in one event-loop pass). From then on it reads with
// single-shot receives no larger than the room left under this, and not at all once it is
// reached, until the held input is through. What the multishot receive had already delivered
// in the pass the connection paused in is held too: that one pass can take the connection past
// this, by at most the worker's buffer ring (docs/configuration.md, "Fixed limits").
inline constexpr size_t kPendingInputMax = 64 * 1024;
// Descriptors the data port leaves free below RLIMIT_NOFILE (the admin port half as many).
inline constexpr uint64_t kDescriptorReserve = 64;
// An input buffer (`pending`, `resume_buf`) that grew past this is released once it is empty
// again, and when its slot is released: a slot does not keep a backlog's memory.
inline constexpr size_t kInputKeepCapacity = 16 * 1024;
// An output buffer that grew past this (a large response) is released rather than kept.
inline constexpr size_t kOutputKeepCapacity = 256 * 1024;
// What a released slot (its connection closed) keeps of each output buffer, and a released
// upstream slot of its request and head buffers. Slots are never freed and one may wait long
// for its next connection, so it keeps no more than a typical response needs: up to
// kOutputKeepCapacity each, 200 slack-read proxied responses left ~100 MiB resident for good.
inline constexpr size_t kSlotOutputKeepCapacity = 16 * 1024;
// What each string of a connection's access-log record (RequestLog) keeps: once its record is
// written, up to kRecordFieldKeepCapacity (the default [log] capture_bytes_max, so that a key
// with full capture at the defaults reuses its buffers request after request instead of
// allocating them again for each); once the connection closed, up to kSlotRecordKeepCapacity.
// A capture (up to capture_bytes_max, 16 MiB) or a long target would otherwise stay allocated
// in the slot for good (200 connections with 4 MiB captures: 800 MiB).
inline constexpr size_t kRecordFieldKeepCapacity = 64 * 1024;
inline constexpr size_t kSlotRecordKeepCapacity = 4 * 1024;
inline constexpr long kTickNs = 100'000'000;  // timeout resolution and drain check interval
// How long a drain waits for the first byte of a connection that has sent none yet
// (Connection::fresh), from the drain's start; its header timeout and the drain deadline, when
// sooner, end the wait first. Why 1 s: a client whose connection was accepted a moment before
// the signal sends its request within a round trip of the accept (milliseconds on a LAN, well
// under a second on a slow path), so 1 s serves it; a connection that sends nothing (a
// browser's speculative pre-connect, a port probe) then delays a restart by at most 1 s
// rather than header_timeout_ms (10 s by default).
inline constexpr int64_t kDrainFreshWaitMaxMs = 1000;
// Longest a busy worker waits for a batch of completions before it runs with what it has.
// 50 us measured ~2-4% less CPU per request at ~150k req/s (200 us was worse).
inline constexpr long kBatchWaitNs = 50'000;
// Entries of a worker ring's registered file table at most (client connections beyond it use
// their plain descriptors).
inline constexpr uint32_t kFixedFilesMax = 65536;

enum Op : uint64_t {
  kOpAccept = 1, kOpRecv, kOpSend, kOpCancel, kOpTick, kOpWake, kOpAcceptCancel,
  // Upstream connections (slot = UpConn slot).
  kOpUpConnect, kOpUpConnectTimeout, kOpUpSend, kOpUpRecv, kOpUpCancel,
};
// Request body bytes queued for an upstream (or response bytes for a client) past which the
// other side stops being read: backpressure, so a slow peer never makes us buffer without bound.
inline constexpr size_t kProxyBufferMax = 256 * 1024;

inline uint64_t make_user_data(Op op, uint32_t slot, uint32_t gen) {
  return (static_cast<uint64_t>(gen) << 32) | (static_cast<uint64_t>(slot) << 4) | op;
}
inline Op op_of(uint64_t ud) { return static_cast<Op>(ud & 0xf); }
inline uint32_t slot_of(uint64_t ud) { return static_cast<uint32_t>((ud >> 4) & 0x0fffffff); }
inline uint32_t gen_of(uint64_t ud) { return static_cast<uint32_t>(ud >> 32); }

inline int64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

enum TimerKind : uint8_t { kHeader, kBody, kIdle, kWrite, kLinger, kTimerKinds, kNoTimer };

// The worker is the only writer of its stats: a plain load/store keeps the lock prefix of an
// atomic read-modify-write off the request path; readers take relaxed snapshots.
inline void bump(std::atomic<uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

struct Connection;
struct UpConn;
struct ApiVersion;

// The access-log state of the request a connection is serving (request_log.cc). Strings keep
// their capacity between requests, up to kRecordFieldKeepCapacity each (release_large), and
// up to kSlotRecordKeepCapacity once the connection closed.
struct RequestLog {
  bool open = false;    // a request began and its record (counted in WorkerStats) did not end
  bool active = false;  // open, with the access log on: the record is being collected
  int64_t start_us = 0;  // wall clock, Unix microseconds: when the request's first byte was read
  // Worker::Impl::now_ms (the loop's cached monotonic clock) when the parser began the request
  // in progress: log_begin() dates the record back to it without another clock read.
  int64_t head_ms = 0;
  uint64_t id = 0;
  std::string method;
  std::string target;
  std::string key_id;
  std::string user;
  std::string api;
  std::string key_value;  // only while capturing (scrubbed from the captures by value)
  bool log_request = false;
  bool log_response = false;
  std::string req_head;
  std::string req_body;
  std::string req_content_type;
  bool req_truncated = false;
  std::string resp_head;
  std::string resp_body;
  std::string resp_content_type;
  bool resp_truncated = false;
  uint64_t bytes_out = 0;
  size_t capture_max = 0;
  bool body_streamed = false;  // req_body was captured by the parser while streaming

  // Response bytes as they are queued for the client (head: the exact text; body: the payload,
  // `wire_bytes` what it took on the wire with chunk framing).
  void response_head(std::string_view head);
  void response_body(std::string_view data, size_t wire_bytes);
  // Frees every string whose capacity is past `keep_bytes`: its record is written (or the slot
  // released), and the next one starts empty.
  void release_large(size_t keep_bytes) noexcept;
};

// The RequestContext a connection hands its handler; defer() makes the request pending.
class ConnContext final : public RequestContext {
 public:
  ConnContext(Connection* c, ResumeTicket::Sink* sink, const int64_t* clock)
      : conn_(c), sink_(sink), clock_(clock) {}
  ResumeTicket defer() noexcept override;
  int64_t now_unix() const noexcept override { return *clock_; }

 private:
  Connection* conn_;
  ResumeTicket::Sink* sink_;
  const int64_t* clock_;
};

struct Connection {
  Connection(const Limits& limits, uint32_t s, ResumeTicket::Sink* sink, const int64_t* clock)
      : parser(limits), slot(s), ctx(this, sink, clock) {}

  HttpParser parser;
  uint32_t slot;
  ConnContext ctx;
  uint32_t gen = 0;
  int fd = -1;
  bool fixed = false;  // fd is also in the ring's registered file table, at index `slot`
  uint32_t listener = 0;
  uint32_t ops = 0;  // operations whose final completion has not been reaped

  std::string out[2];  // out[fill] collects responses; the other one is being sent
  uint8_t fill = 0;
  size_t send_off = 0;
  // Limits::send_rate_min_bytes_per_s: when the send in flight was submitted (the loop's cached
  // clock), and the connection's account of how far behind the minimum its client is. A send
  // completes at once while the socket buffer has room (reaped in the next loop pass: a wait of
  // about 0 ms), so only the time keygate waits for the client counts, never the time it waits
  // for an upstream or for the next request.
  int64_t send_started_ms = 0;
  SendRate send_rate;
  uint32_t responses_fill = 0;
  uint32_t responses_send = 0;
  std::string pending;     // received, not yet parsed (paused: see kPendingInputMax)
  std::string resume_buf;  // pending's bytes while they are being parsed
  size_t input_heap = 0;   // heap bytes of the two, as counted in stats.pending_input_bytes
  // process() is on the stack: a request it dispatched may be answered synchronously (an
  // upstream failure found at once), and drain_pending() must then leave the rest of the input
  // to that process() loop rather than conclude on `pending` (empty while it runs).
  bool in_process = false;

  bool awaiting = false;  // a deferred request waits for its ticket to be posted
  bool head_deferred = false;  // ...and it was deferred at its head (resume_head() next)
  bool head_counted = false;   // the request was counted at its head (kHeaders), not again
  // Body bytes of the request in progress counted against the worker's body memory
  // (Worker::Impl::held_body_bytes) until it is answered or the connection ends.
  uint64_t body_charge = 0;
  bool send_in_flight = false;
  bool recv_armed = false;
  bool recv_multishot = false;  // the armed receive is multishot (else single-shot, input held)
  bool recv_cancel_sent = false;
  bool close_after_send = false;
  bool lingering = false;
  bool closed = false;
  // Set when keygate itself ends the connection ("write_timeout": the client stopped reading
  // its answer; "send_too_slow": it read it slower than send_rate_min_bytes_per_s;
  // "worker_failed": the worker's ring failed (stop_serving); "shutdown": the drain deadline
  // passed): the reason a request still in progress is logged with instead of "client_closed".
  const char* cut_reason = nullptr;
  // The client sent its FIN. Requests received before it are still answered (they may wait
  // in `pending`); the connection closes once they are.
  bool peer_eof = false;
  // Accepted and nothing received yet, on any listener. The drain does not close such a
  // connection as idle at once: its client has just connected and is about to send its first
  // request (closing would leave it an empty reply, and clients retry a request on their own
  // only on a reused connection, so it would be a failed request). It gets that request
  // answered (`Connection: close`) if its first byte comes within kDrainFreshWaitMaxMs of the
  // drain's start, bounded by the header timeout and the drain deadline like any request; one
  // still fresh then is closed (Worker::Impl::on_tick), so it cannot hold a restart longer.
  bool fresh = false;

  TimerKind timer = kNoTimer;
  int64_t deadline_ms = 0;
  Connection* tprev = nullptr;
  Connection* tnext = nullptr;

  // Reverse proxy (upstream.cc). While `proxying`, the connection parses no further request:
  // the forwarded one's response comes first.
  UpConn* up = nullptr;
  bool proxying = false;     // a forwarded request's response is not complete yet
  bool streaming = false;    // its body is still arriving and being streamed upstream
  bool client_keep_alive = true;
  bool http10 = false;
  // The response under way is delimited by the close (an HTTP/1.0 client and no upstream
  // length): cut before its end, the connection is reset, not closed (close_conn).
  bool until_close_open = false;
  uint32_t flushes = 0;      // sends started: tells whether queued output already left
  char peer_ip[48] = {};     // client address (learn_peer(), on first use)
  uint16_t peer_port = 0;
  RequestLog rlog;
  // The version of the APIs the connection's request in progress (or its last one) goes by:
  // taken at each request's start (pin_apis), so a reload never changes it mid-request; held
  // until the next request starts or the slot is released.
  ApiVersion* apis = nullptr;
};

// One upstream server (host:port of an API) as a worker sees it.
// No successor (UpstreamServer::successor): the current version has no such server.
inline constexpr uint32_t kNoSuccessor = UINT32_MAX;

// One upstream server of one API in one version (the same address in two APIs is two of
// them: two pools, two skip states).
struct UpstreamServer {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string authority;      // "host:port" ("[v6]:port"): the Host of a request without one
  uint32_t api = 0;           // its API's index (= its group's) in its version
  std::vector<UpConn*> idle;  // keep-alive connections ready for reuse (most recent last)
  int64_t down_until_ms = 0;  // skipped until then after a connect failure
  // In a version a reload replaced: the same server (same API name, same address) in the
  // current version, whose pool this one's connections join after their response
  // (Worker::Impl::adopt_up), or kNoSuccessor. Set by switch_apis for every live version.
  uint32_t successor = kNoSuccessor;
  // ...and whether the successor shares this one's skip state (its API's connect_timeout_ms
  // is unchanged): a connect failing here marks it down too.
  bool successor_skip = false;
};

// The upstreams of one API (index = the API's index in its version's ApiRegistry::apis()).
struct UpstreamGroup {
  std::vector<uint32_t> servers;  // indexes into its ApiVersion's servers
  uint32_t next = 0;              // round robin
  __kernel_timespec connect_timeout{};  // the linked timeout of every connect
  uint32_t response_timeout_ms = 0;
};

// One connection to an upstream server, owned by the worker; serves one client request at a
// time, then waits in its server's idle list for the next.
struct UpConn {
  enum class State : uint8_t { kFree, kConnecting, kBusy, kIdle, kClosing };
  explicit UpConn(uint32_t s) : slot(s) {}

  uint32_t slot;
  uint32_t gen = 0;
  int fd = -1;
  // The version of the APIs whose servers and group this connection belongs to (`server`,
  // `group` and `host_server` index its tables), held until the slot is released: its connect
  // timeout's timespec must outlive the submission. Null while free.
  ApiVersion* apis = nullptr;
  uint32_t server = 0;
  uint32_t ops = 0;
  State state = State::kFree;
  Connection* client = nullptr;  // the request it serves (kConnecting/kBusy)
  uint32_t group = 0;
  // Failover walks the group's servers from `first` (an index into UpstreamGroup::servers),
  // each at most once per request: `attempts` of them so far. Per request, not the group's
  // shared round-robin position, which concurrent requests move on meanwhile.
  uint32_t first = 0;
  uint32_t attempts = 0;  // servers of the walk passed so far (tried, or skipped as down)
  // Servers connected to for this request, by index into UpstreamGroup::servers (at most
  // kApiUpstreamsMax of them): the panic attempt (connect_next) picks one not among them.
  uint64_t tried = 0;
  bool panicked = false;  // the one attempt at a skipped server was made
  bool connect_timed_out = false;  // the last failed attempt timed out (504, not 502)
  uint32_t header_bytes_max = 0;
  // A request without Host (HTTP/1.0) gets the server's authority as its Host: it starts at
  // fill[host_at] (0: the client sent a Host) and names servers[host_server], until failover
  // to another server rewrites it (nothing is sent before a connect succeeds).
  size_t host_at = 0;
  uint32_t host_server = 0;

  // Request bytes: appended to `fill` (also by the client's parser when streaming), sent from
  // `sending`; swapped when a send completes, so neither moves under the kernel.
  std::string fill;
  std::string sending;
  size_t send_off = 0;
  bool send_in_flight = false;
  bool send_failed = false;
  bool recv_armed = false;
  bool recv_paused = false;  // the client's output is backed up
  bool request_complete = false;  // every request byte is in fill/sending
  // Taken from the keep-alive pool for this request (the server may have closed it).
  bool reused = false;
  // The request can be sent again: idempotent, whole in memory (no streamed body), not yet
  // retried. `sending` keeps its bytes after they were sent, for retry_forward().
  bool replayable = false;

  // Response parsing (llhttp, response mode). The head is copied into `head` (its pieces
  // arrive across receives); the body streams into the client's output.
  llhttp_t rp{};
  std::string head;
  struct Span {
    uint32_t off = 0;
    uint32_t len = 0;
  };
  std::vector<std::pair<Span, Span>> header_spans;
  std::vector<HttpHeader> headers;
  Span reason;
  // Wire bytes of this request's response heads (1xx ones too) in the receives parsed before
  // the one in progress, while the final head was not complete: bounded by header_bytes_max,
  // which the stored head alone is not (llhttp stores no leading whitespace of a value, and
  // every 1xx head starts it anew). The receive in progress starts at `recv_at`; the last
  // field piece parsed in it ends at `piece_end` (nullptr: none yet).
  size_t head_wire_bytes = 0;
  const char* recv_at = nullptr;
  const char* piece_end = nullptr;
  // Trailer fields after a chunked body: not stored (keygate drops them), only bounded by the
  // head's limits on their own.
  uint32_t trailer_fields = 0;
  size_t trailer_bytes = 0;
  size_t chunk_extension_bytes = 0;  // of the whole body, bounded like the trailers
  bool head_request = false;   // the client's request was HEAD: the response has no body
  // The worker's cached Date value (Worker::Impl::date, rewritten in place every second), for a
  // response that comes without one.
  std::string_view date;
  bool interim = false;        // the current response is 1xx (forwarded or dropped)
  bool got_bytes = false;      // any response byte arrived for this request
  bool head_sent = false;      // the response head was queued for the client
  uint32_t head_at_flush = 0;  // the client's `flushes` when it was queued...
  size_t head_at = 0;          // ...and where in its fill buffer: while no send took it, an
                               // error can still replace it with a 502
  bool rechunk = false;        // the body goes to the client in chunks
  bool message_done = false;
  bool parse_failed = false;
  // A response without a body (HEAD, 204, 304) whose head announced one (Content-Length > 0,
  // Transfer-Encoding): a server that sends that body anyway may send it after the head, as the
  // next request's "response". Such a connection is closed, never pooled.
  bool body_announced = false;
  int64_t deadline_ms = 0;     // connect, response (no progress) or idle expiry
};

// One version of the APIs as one worker serves it (worker-local): the shared ApiSet (routes for
// the handlers, through RequestContext::apis) and this worker's upstream servers and keep-alive
// pools for it. A reload makes a new one current (Worker::Impl::switch_apis), which takes over
// the pools and skip states of the servers it keeps (same API name, same address: the idle
// connections move, each now holding the new version); the previous one stays while a client
// connection's request or an upstream connection still uses it, and is freed at the end of the
// first loop pass where none does (reap_apis). Only the current version has idle connections.
struct ApiVersion {
  std::shared_ptr<const ApiSet> set;
  std::vector<UpstreamServer> servers;
  std::vector<UpstreamGroup> groups;  // index = API index in set->registry.apis()
  // Client connections (Connection::apis) and upstream connections (UpConn::apis) that hold it.
  uint32_t users = 0;
};

// Connections waiting on one kind of timeout. Every member's deadline is "when it joined + the
// kind's fixed duration", and time only moves forward, so appending keeps the list sorted and
// expiry only ever looks at the head.
struct TimerList {
  Connection* head = nullptr;
  Connection* tail = nullptr;

  void push_back(Connection* c) {
    c->tprev = tail;
    c->tnext = nullptr;
    if (tail != nullptr) tail->tnext = c;
    else head = c;
    tail = c;
  }
  void remove(Connection* c) {
    if (c->tprev != nullptr) c->tprev->tnext = c->tnext;
    else head = c->tnext;
    if (c->tnext != nullptr) c->tnext->tprev = c->tprev;
    else tail = c->tprev;
    c->tprev = c->tnext = nullptr;
  }
};

struct Worker::Impl final : public ResumeTicket::Sink {
  Impl(unsigned i, const Limits& l, std::vector<WorkerListener> ls, LoopObserver* o,
       std::shared_ptr<const ApiSet> a)
      : index(i),
        limits(l),
        listeners(std::move(ls)),
        accept_armed(listeners.size(), false),
        descriptor_ceiling(listeners.size(), UINT64_MAX),
        observer(o),
        apis_initial(std::move(a)) {}
  ~Impl() override;

  // ResumeTicket::Sink: any thread.
  void post(uint32_t slot, uint32_t gen) noexcept override;
  void on_wake();
  void on_posted(uint32_t slot, uint32_t gen);
  void settle_deferred();

  bool init(std::string* error);
  void run();

  io_uring_sqe* get_sqe();
  void arm_accept(uint32_t li);
  void arm_recv(Connection* c);
  void arm_tick();
  void arm_wake();

  void handle_cqe(io_uring_cqe* cqe);
  void on_accept(uint32_t li, io_uring_cqe* cqe);
  void check_shared_backlog(uint32_t li);
  bool admit(uint32_t li);
  void on_recv(Connection* c, io_uring_cqe* cqe);
  void on_send(Connection* c, int res);
  void on_tick();
  void on_data(Connection* c, std::span<char> data, size_t readable_after);
  void process(Connection* c, std::span<char> data, size_t readable_after);
  void process_input(Connection* c, std::span<char> data, size_t readable_after);
  void drain_pending(Connection* c);
  void hold_input(Connection* c, std::span<const char> data);
  void account_input(Connection* c);
  void dispatch(Connection* c, bool resuming);
  void write_error(Connection* c, int status, std::string_view code, std::string_view message);
  void flush(Connection* c);
  void submit_send(Connection* c);
  void start_linger(Connection* c);
  void on_peer_eof(Connection* c);
  void close_conn(Connection* c);
  // Ends a connection whose client is not taking its response (the write timeout,
  // send_rate_min_bytes_per_s) with a reset: `reason` for the request in progress.
  void cut_unread(Connection* c, const char* reason);
  // Resets the client connection now (before close_conn): its unsent output is dropped.
  void reset_socket(Connection* c);
  void op_done(Connection* c);
  void release(Connection* c);
  void mark_dirty(Connection* c) { dirty.emplace_back(c, c->gen); }
  void send_continue(Connection* c);
  // Counts the body a kNeedBody at `c`'s head may keep against the worker's body memory; false
  // (after answering 503 body_memory_exhausted) when it would pass the limit.
  bool charge_body(Connection* c, uint64_t keep_bytes);
  void uncharge_body(Connection* c);
  void learn_peer(Connection* c);
  void begin_drain();
  // The event loop exited outside a drain (its ring failed): closes this worker's listening
  // sockets, so the kernel hands new connections to the other workers, cuts its connections
  // and tears the ring down (which cancels an accept still pending on a shared socket). Says
  // one line on stderr naming `why`.
  void stop_serving(const char* why);

  // Access log (request_log.cc).
  void log_begin(Connection* c, const HttpRequest* request);
  // For a request no handler saw (the HTTP layer refused it once its head was complete, or its
  // client left mid-body on a listener that reads whole requests): notes the key its head
  // carries, so its record is scrubbed of it like every other.
  void log_note_head_key(Connection* c, HttpRequest head);
  void log_note(Connection* c, const HttpRequest& request);
  void log_end(Connection* c, int status, std::string_view reason,
               std::string_view response_text);
  void log_abandoned(Connection* c, int status);
  void log_cut_off(Connection* c);
  void count_response(const Connection* c, int status, std::string_view reason);
  static const char* abandoned_reason(const Connection* c);

  // Versions of the APIs (upstream.cc). make_apis() builds this worker's state for `set`
  // (its upstream addresses: null with one line in `error` on a bad one); switch_apis() makes
  // a posted set current, moves the idle upstream connections and skip states of the servers
  // it keeps into it and closes the other idle ones (allocates: a reload, not a request);
  // pin_apis() gives a starting request the current version; drop_apis() lets go of one;
  // reap_apis() frees the versions nothing uses any more.
  std::unique_ptr<ApiVersion> make_apis(std::shared_ptr<const ApiSet> set, std::string* error);
  void switch_apis(std::shared_ptr<const ApiSet> set);
  // Makes the set Worker::set_apis posted current, if one is waiting (on_wake, pin_apis).
  void take_posted_apis();
  // A reload's settings (worker.cc), before the APIs they came with become current: the limits
  // every check from now on uses (connections_per_worker_max excepted: sized at start), the
  // listeners' body caps for the connections' next requests, armed timers cut to the new
  // duration when it is shorter, the capture cap for requests that start from now on.
  // Allocates (each connection slot's header room): a reload, not a request.
  void adopt_settings(const WorkerSettings& settings);
  // adopt_up() moves a connection of a replaced version, its response complete, to its
  // server's successor in the current version (so it can be pooled there); it stays where it
  // is when there is none. mark_down() skips `up`'s server after a failed connect, and its
  // successor with it when they share the skip state.
  void adopt_up(UpConn* up);
  void mark_down(UpConn* up);
  void pin_apis(Connection* c) {
    // A reload posted while this worker was held up (a long pass): its wake-up may come later
    // in this pass than the request's bytes, and a request that starts now is to get it, as
    // Server::set_apis promises for a worker that had not taken it when the reload was said.
    if (apis_pending.load(std::memory_order_acquire)) [[unlikely]] take_posted_apis();
    if (c->apis == apis_now) return;
    drop_apis(c->apis);
    c->apis = apis_now;
    ++apis_now->users;
    c->ctx.apis = &apis_now->set->registry;
  }
  void drop_apis(ApiVersion* v) {
    if (v == nullptr) return;
    KEYGATE_ASSERT(v->users > 0);
    --v->users;
  }
  void reap_apis();

  // Reverse proxy (upstream.cc).
  void head_ready(Connection* c, bool resuming);
  void start_forward(Connection* c, bool stream_body);
  bool connect_next(UpConn* up);
  bool connect_to(UpConn* up, uint32_t at);
  UpConn* new_upconn();
  void begin_exchange(UpConn* up, Connection* c, uint32_t group, uint32_t first,
                      bool head_request, bool request_complete);
  bool retry_forward(UpConn* up, int res);
  void stream_request_body(Connection* c, std::span<char>* data);
  void flush_up(UpConn* up);
  void arm_up_recv(UpConn* up);
  void on_up_connect(UpConn* up, int res);
  void on_up_send(UpConn* up, int res);
  void on_up_recv(UpConn* up, io_uring_cqe* cqe);
  void on_up_data(UpConn* up, const char* data, size_t len);
  void on_up_eof(UpConn* up, int res);
  void finish_forward(UpConn* up, bool reusable);
  void fail_forward(UpConn* up, int status, std::string_view code, std::string_view message);
  void detach_client(Connection* c);
  void close_up(UpConn* up);
  void up_op_done(UpConn* up);
  void release_up(UpConn* up);
  void check_upstream_timers();
  void client_output_drained(Connection* c);
  // Response bytes queued for a client and not yet sent.
  size_t client_buffered(const Connection* c) const {
    const std::string& sending = c->out[c->fill ^ 1];
    return c->out[c->fill].size() + (sending.size() > c->send_off ? sending.size() - c->send_off : 0);
  }

  void timer_set(Connection* c, TimerKind kind);
  void timer_clear(Connection* c);
  void update_timer(Connection* c);
  void expire(Connection* c);
  std::string& fill_buf(Connection* c) { return c->out[c->fill]; }
  // Whether the drain may end: no connection left, and no accept on an inherited listener still
  // armed. Such an accept can still deliver a connection it took off the shared backlog until
  // its cancellation completes; a loop that ended before would leave that connection unserved.
  bool drained() const {
    if (live != 0) return false;
    for (size_t li = 0; li < listeners.size(); ++li) {
      if (listeners[li].inherited && accept_armed[li]) return false;
    }
    return true;
  }
  bool idle(const Connection* c) const {
    return !c->parser.request_in_progress() && !c->awaiting && !c->proxying &&
           !c->send_in_flight &&
           c->out[c->fill].empty() && c->pending.empty();
  }

  unsigned index;
  // The worker's own copy (the parsers of its connections refer to it): a reload replaces it
  // at a loop pass on this thread (adopt_settings), so nothing reads it while it changes.
  Limits limits;
  std::vector<WorkerListener> listeners;
  std::vector<bool> accept_armed;
  std::vector<bool> accept_retry;
  // Per listener of a shared (inherited) socket: check_shared_backlog cancelled its accept to
  // arm it again, at the -ECANCELED completion (or cleared when the cancel found nothing); and
  // the ticks in a row at which the socket had a connection waiting while the accept waited.
  std::vector<bool> accept_rearm;
  std::vector<uint8_t> backlog_seen;
  // Per listener: an accepted descriptor numbered at or above this is closed at once (see init).
  std::vector<uint64_t> descriptor_ceiling;
  // An upstream socket numbered at or above this is closed at once: 503 sockets_exhausted.
  uint64_t upstream_descriptor_ceiling = UINT64_MAX;
  LoopObserver* observer;

  io_uring ring{};
  bool ring_ready = false;
  // The ring failed at run time (stop_serving, or a fatal submit in get_sqe): get_sqe hands
  // out scratch_sqe, never submitted, so the paths that close connections cannot spin on a
  // full submission queue or touch an unmapped ring.
  bool ring_failed = false;
  int ring_submit_error = 0;  // errno of get_sqe's fatal submit, which ends the loop (run)
  io_uring_sqe scratch_sqe{};
  io_uring_buf_ring* buf_ring = nullptr;
  char* buf_base = nullptr;
  unsigned buf_adv = 0;
  // Size of the ring's registered file table (0: none). A client connection whose slot fits
  // is registered at index `slot`, so its receives and sends skip the per-operation file
  // lookup and reference count (fget/fput).
  uint32_t fixed_files = 0;
  bool registered_files = true;  // may init() set up that table at all

  int wake_fd = -1;
  uint64_t wake_value = 0;
  // Tickets posted by other threads. A mutex is fine here: only deferred requests (cache
  // misses, admin writes) come this way, never the common request path.
  std::mutex posted_mu;
  std::vector<std::pair<uint32_t, uint32_t>> posted;
  std::vector<std::pair<uint32_t, uint32_t>> posted_local;
  std::atomic<bool> ready{false};  // init() succeeded; run() will (or does) serve
  std::atomic<bool> stop_requested{false};
  // request_stop_now(): the drain deadline is now (a second SIGTERM/SIGINT). Set before the
  // wake-up, read by on_wake() after stop_requested.
  std::atomic<bool> stop_now_requested{false};
  // Worker::fail_ring_for_testing(): the next loop pass fails as if io_uring_enter had.
  std::atomic<bool> ring_fail_for_testing{false};
  __kernel_timespec tick_ts{0, kTickNs};

  std::vector<std::unique_ptr<Connection>> conns;
  std::vector<uint32_t> free_slots;
  uint32_t live = 0;                // open client connections, all listeners
  std::vector<uint32_t> open;       // ...per listener (index = listener): admit() checks it
  TimerList timers[kTimerKinds];
  std::vector<std::pair<Connection*, uint32_t>> dirty;
  std::vector<std::pair<Connection*, uint32_t>> rearm;

  int64_t now_ms = 0;
  unsigned last_batch = 0;
  int64_t date_sec = -1;
  char date_buf[29];
  std::string_view date;
  bool draining = false;
  int64_t drain_deadline_ms = 0;
  // When the drain stops waiting for fresh connections' first bytes (kDrainFreshWaitMaxMs
  // after it began); 0 once those still fresh then were closed, or before a drain.
  int64_t fresh_wait_end_ms = 0;

  std::string mode;
  WorkerStats stats;
  uint64_t held_body_bytes = 0;  // the sum of every connection's body_charge

  AccessSink* access_sink = nullptr;
  size_t capture_bytes_max = 0;
  AccessRecordWriter record_writer;
  // Finds the key of a head the HTTP layer refused (header and query only: it searches no
  // body, so it holds no body buffer).
  KeyExtractor head_keys{0};
  std::string record_buf;
  uint64_t request_counter = 0;

  // The APIs: the version new requests get (apis_now), and every version still in use (apis_now
  // among them; more than one only after a reload, until the old ones' requests are done).
  std::shared_ptr<const ApiSet> apis_initial;  // until init() made it the first version
  ApiVersion* apis_now = nullptr;
  std::vector<std::unique_ptr<ApiVersion>> api_versions;
  // A set posted by Worker::set_apis (posted_mu), taken by on_wake(); a newer post replaces
  // one not taken yet (the newest wins: reloads coalesce).
  std::shared_ptr<const ApiSet> apis_posted;
  // apis_posted is set: one load per starting request tells it (posted_mu guards the set).
  std::atomic<bool> apis_pending{false};
  // apis_now's generation, for the main thread waiting for every worker to serve a reload.
  std::atomic<uint64_t> apis_generation{0};
  std::atomic<bool> exited{false};  // run() returned
  std::vector<std::unique_ptr<UpConn>> upconns;
  std::vector<uint32_t> free_upconns;
  std::vector<std::pair<UpConn*, uint32_t>> uprearm;
};

}  // namespace keygate::net
