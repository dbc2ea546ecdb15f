// Handler: the seam between the HTTP engine (net/) and what a request means (core/ and up).
//
// Threading: each worker owns its own Handler instances (made by a HandlerFactory at start), so
// a handler needs no locks for its own state; anything it shares across workers must be
// thread-safe. handle() runs on the worker's event loop: it must not block, must not throw, and
// should not allocate per request.
//
// Contract for issue #2: handle() completes the response synchronously. Later issues add an
// asynchronous completion for the rare paths that must wait (a key lookup that misses the cache,
// an admin write); the engine already serializes responses per connection in request order, so
// a pending request will simply hold back the responses pipelined behind it.
#pragma once

#include <memory>

#include "core/http_request.h"
#include "core/response_writer.h"

namespace keygate {

class Handler {
 public:
  virtual ~Handler() = default;
  // Writes exactly one complete response into `response`. The request's views are valid only
  // during this call.
  virtual void handle(const HttpRequest& request, ResponseWriter& response) noexcept = 0;
};

// Makes one Handler per worker. Called once per worker at start-up, on the main thread.
class HandlerFactory {
 public:
  virtual ~HandlerFactory() = default;
  virtual std::unique_ptr<Handler> make(unsigned worker_index) = 0;
};

}  // namespace keygate
