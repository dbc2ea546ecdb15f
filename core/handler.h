// Handler: the seam between the HTTP engine (net/) and what a request means (core/ and up).
//
// Threading: each worker owns its own Handler instances (made by a HandlerFactory at start), so
// a handler needs no locks for its own state; anything it shares across workers must be
// thread-safe. handle() and resume() run on the worker's event loop: they must not block, must
// not throw, and should not allocate per request.
//
// Asynchronous requests: a handler that must wait (a key lookup that misses the cache, an admin
// write that must be synced) calls ctx.defer(), starts the work elsewhere, returns kPending, and
// has the other thread call the returned ticket's post() when done. The worker then calls
// resume() on its own thread. When handle() defers, the worker moves the request out of the
// receive buffer, so the views handle() saw die with it; the views resume() sees stay valid
// until the request completes (a resume() that defers again may hand them to another thread).
// Responses stay in request order: the connection parses nothing further until the pending
// request completes.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "core/http_request.h"
#include "core/response_writer.h"

namespace keygate {

class ApiRegistry;

// Thread-safe handle to one deferred request. post() may be called from any thread, exactly once.
class ResumeTicket {
 public:
  class Sink {
   public:
    virtual ~Sink() = default;
    virtual void post(uint32_t slot, uint32_t gen) noexcept = 0;
  };
  ResumeTicket() = default;
  ResumeTicket(Sink* sink, uint32_t slot, uint32_t gen) : sink_(sink), slot_(slot), gen_(gen) {}
  void post() const noexcept { sink_->post(slot_, gen_); }
  bool valid() const noexcept { return sink_ != nullptr; }

 private:
  Sink* sink_ = nullptr;
  uint32_t slot_ = 0;
  uint32_t gen_ = 0;
};

// Where and as whom an allowed request goes upstream (Handler::Result::kForward). The views
// may point into the key record: the worker reads them before the handler call returns to
// the event loop, never later.
struct ForwardTarget {
  uint32_t api_index = 0;     // index in ApiRegistry::apis() of the API; it has upstreams
  std::string_view key_id;    // X-Keygate-Key-Id
  std::string_view api;       // X-Keygate-Api
  std::string_view user;      // X-Keygate-User; empty: the key has no user
};

// What a handler tells the access log about the request it handled (RequestContext::access).
// The worker clears it before each handle()/handle_head()/resume() call and copies what it
// keeps right after, so the views may point into the request or the key record.
struct AccessNote {
  std::string_view key_id;     // the identified key; empty: none
  std::string_view user;
  std::string_view api;
  std::string_view key_value;  // the plaintext the request carried (scrubbed from path, captures)
  bool log_request = false;    // the key asks for its requests to be captured
  bool log_response = false;   // ... and/or its responses
};

// Where finished access-log records go (storage's AccessLog). Every call is made by worker
// `worker` only and must not block. A record is one JSON object on one line, as
// AccessRecordWriter writes it.
class AccessSink {
 public:
  virtual ~AccessSink() = default;
  // Takes a copy of `record`, or drops it (returns false; the sink counts it).
  virtual bool append(unsigned worker, std::string_view record) noexcept = 0;
  // Writing in place instead: room for a record of up to `max_bytes`, or null when there is
  // none now (then append() the record). After writing the record there, commit() its length
  // before any other call for this worker; a reservation not committed is simply abandoned.
  virtual char* reserve(unsigned worker, size_t max_bytes) noexcept {
    (void)worker;
    (void)max_bytes;
    return nullptr;
  }
  virtual void commit(unsigned worker, size_t bytes) noexcept {
    (void)worker;
    (void)bytes;
  }
  // The longest record the sink can ever take (its per-worker buffer, less framing): a longer
  // one would always be dropped, so the worker cuts captured bodies to fit instead.
  virtual size_t record_bytes_max() const noexcept { return SIZE_MAX; }
};

// Per-connection context the worker passes to its handler. Worker-local.
class RequestContext {
 public:
  virtual ~RequestContext() = default;
  // Marks the current request as pending and returns its ticket. Call at most once per
  // handle()/resume() call, and then return Handler::Result::kPending.
  virtual ResumeTicket defer() noexcept = 0;
  // Wall-clock Unix seconds, refreshed by the worker every loop tick (no syscall per call).
  virtual int64_t now_unix() const noexcept = 0;
  // A slot for the handler's own per-request state while the request is pending. The worker
  // never touches it; Handler::abandon() is the handler's chance to free it.
  void* state = nullptr;
  // The version of the configured APIs this request is routed, checked and forwarded with,
  // set by the worker before the request's first handler call and kept until its last (a
  // reload meanwhile does not change it: see docs/architecture.md, "Reloading the APIs");
  // ForwardTarget::api_index indexes it. Null: the handler's own registry (tests).
  const ApiRegistry* apis = nullptr;
  // Set by a handler that returns kForward (see ForwardTarget).
  ForwardTarget forward;
  // Set by the handler for the access log (see AccessNote).
  AccessNote access;
  // handle_head()/resume_head() returning kNeedBody may set this to read at most this many body
  // bytes of the request (413 body_too_large above, as for the listener's limit, which a larger
  // value cannot raise); 0: the listener's limit. The worker clears it before handle_head().
  uint64_t body_bytes_max = 0;
  // handle_head()/resume_head() returning kNeedBody may set this to keep only the body's first
  // this many bytes: the worker reads the rest (up to the body limit, 413 above) and drops it,
  // and handle() sees that prefix as request.body with request.body_bytes_dropped set (0: no
  // byte kept — the answer does not depend on the body). kKeepWholeBody: the whole body. Set
  // body_keep_capture too when the access log may capture the body (a key with log_request,
  // or one not known yet): the worker then keeps up to [log] capture_bytes_max as well. The
  // worker resets both before handle_head().
  static constexpr uint64_t kKeepWholeBody = UINT64_MAX;
  uint64_t body_keep_bytes = kKeepWholeBody;
  bool body_keep_capture = false;
};

class Handler {
 public:
  enum class Result {
    kDone,      // one complete response was written
    kPending,   // deferred: see ctx.defer()
    kForward,   // ctx.forward is set: the worker forwards the request to the API's upstreams
    kNeedBody,  // handle_head() only: read the whole body, then call handle()
  };

  virtual ~Handler() = default;
  // Writes exactly one complete response into `response` (kDone), or defers (kPending). The
  // request's views are valid during this call only (see above for resume()).
  virtual Result handle(const HttpRequest& request, ResponseWriter& response,
                        RequestContext& ctx) noexcept = 0;
  // Continues a deferred request after its ticket was posted. Same contract as handle().
  virtual Result resume(const HttpRequest& request, ResponseWriter& response,
                        RequestContext& ctx) noexcept {
    (void)request;
    (void)ctx;
    response.error(500, "internal_error", "unexpected resume");
    return Result::kDone;
  }
  // Called on listeners that decide at the head (the data port and the admin port) as soon as a
  // request's headers are complete, before its body is read; request.body is empty.
  //   kNeedBody: the worker reads the whole body (up to the listener's body limit) and calls
  //              handle() as for any request (the default: key in the body, a cache miss, ...);
  //              with ctx.body_keep_bytes it keeps only a prefix of it (see RequestContext);
  //   kForward:  ctx.forward is set; the worker forwards the request, streaming its body (up to
  //              Limits::proxy_body_bytes_max) without buffering it whole;
  //   kDone:     a complete response was written (a rejection); if the request has a body the
  //              worker closes the connection after the response instead of reading it;
  //   kPending:  deferred as in handle() (a key the cache does not hold): no byte of the body is
  //              read meanwhile, and the worker calls resume_head() with the head, whose
  //              answer is one of the three above.
  // handle()/resume() may also return kForward (the body is then forwarded from memory).
  virtual Result handle_head(const HttpRequest& request, ResponseWriter& response,
                             RequestContext& ctx) noexcept {
    (void)request;
    (void)response;
    (void)ctx;
    return Result::kNeedBody;
  }
  // Continues a handle_head() that deferred. Same contract as handle_head() (and may defer
  // again).
  virtual Result resume_head(const HttpRequest& request, ResponseWriter& response,
                             RequestContext& ctx) noexcept {
    (void)request;
    (void)ctx;
    response.error(500, "internal_error", "unexpected resume");
    return Result::kDone;
  }
  // The connection of a deferred request closed; its ticket was posted (so no other thread
  // still uses ctx.state). Free any per-request state. Returns the status of what the request
  // did anyway although nobody hears the answer (the admin API's status when its backend ran
  // the request: a key created or deleted), or 0 when it did nothing; the worker logs the
  // request with that status, or 499, and reason "client_closed".
  virtual int abandon(RequestContext& ctx) noexcept {
    (void)ctx;
    return 0;
  }
};

// Makes one Handler per worker. Called once per worker at start-up, on the main thread.
class HandlerFactory {
 public:
  virtual ~HandlerFactory() = default;
  virtual std::unique_ptr<Handler> make(unsigned worker_index) = 0;
};

// Hooks a worker calls around its blocking wait, once per event-loop pass, on its own thread.
// Between after_wait() and the next before_wait() the worker may hold references into shared
// read-mostly structures; across before_wait() it holds none. That is exactly what
// quiescent-state-based reclamation (the key cache's) needs.
class LoopObserver {
 public:
  virtual ~LoopObserver() = default;
  virtual void before_wait() noexcept = 0;
  virtual void after_wait() noexcept = 0;
};

}  // namespace keygate
