// AdminHandler: the admin listener's Handler — authenticate on the worker, run the admin API
// (admin_api.h) on an AdminBackend's thread, answer when it posts.
//
// Worker-local: one per worker (AdminHandlerFactory), owning its Authenticator (the same key
// resolution as the data plane: authenticator.h) and a pool of per-request states. The
// KeyDirectory and the AdminBackend are shared and thread-safe.
//
// Order of checks for a request on the admin port:
//   GET/HEAD /healthz -> 200 "ok" (no key needed; other methods 405);
//   a Host admin_host_allowed() refuses -> 421 host_not_allowed (before any other check);
//   GET/HEAD /console and its files (console_assets.h) -> 200 with the console's security
//     headers (no key needed: they hold no secrets); other methods 405 (Allow: GET, HEAD), an
//     unknown /console/... 404 not_found;
//   a path outside /admin, or one is_admin_route() does not know -> 404 not_found, before any
//     key work;
//   (a request with a body: the same key checks at its head first, see handle_head())
//   key resolution fails -> 401 missing/invalid/ambiguous_api_key (with WWW-Authenticate),
//     400 invalid_body, 413 body_too_large, 503 store_unavailable (see authenticator.h); the key
//     may come in any of the data plane's four ways (X-ApiKey, ?key=, form `key`, JSON
//     `API_Key`);
//   the key is disabled or expired -> 401 invalid_api_key;
//   its apis lack "admin" -> 403 api_not_permitted ("admin" is full control of the instance:
//     user grants do not narrow it);
//   otherwise the AdminBackend runs execute_admin() and the response is its status, its Allow
//     header (405), Content-Type application/json and its body (none for 204).
// A valid key (allowed, or 403) is a use of that key, reported to the KeyUseSink as on the
// data port (auth_handler.h).
// Error bodies have the admin API's shape: {"error":code,"field":null,"message":text}.
//
// Deferral: the views handle() sees point into the worker's receive buffer, which goes back to
// the kernel at the end of the pass (the parser then copies the request out; only views that
// resume() sees stay valid until the request completes). So an authenticated request is first
// deferred with a ticket the handler posts itself, and handed to the backend from resume().
// Every admin request therefore costs the worker one extra wake-up; admin traffic is rare.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/admin_api.h"
#include "core/authenticator.h"
#include "core/builtin_handler.h"
#include "core/handler.h"
#include "core/key_directory.h"
#include "core/key_use.h"

namespace keygate {

// Where admin requests are executed, off the workers (storage/admin_executor.h; test doubles).
// Thread-safe.
class AdminBackend {
 public:
  virtual ~AdminBackend() = default;
  // Worker thread, non-blocking: runs `request` elsewhere, fills `*out`, then posts `ticket` —
  // exactly once, also when it cannot run it (then `*out` is a 503 store_unavailable; it may
  // post before returning). `request` is copied, but the bytes its views point to and `*out`
  // must stay valid, and untouched by the caller, until the post.
  virtual void submit(const AdminRequest& request, AdminResponse* out,
                      ResumeTicket ticket) noexcept = 0;
};

// Whether a request with this Host (its value; empty when the request has none, as HTTP/1.0
// allows) may reach the admin port: none, an IP literal ("127.0.0.1", "[::1]", with or without
// a port), "localhost", or one of `names` ([admin] hosts), compared without case, port or a
// final dot. Why: a web page the operator's browser opens can make a name it controls resolve
// to 127.0.0.1 (DNS rebinding) and then call the admin port as its own origin, free to send
// X-ApiKey and read the answers: an admin key left weak (the README's quick-start one) could be
// tried from there. Such requests carry that name as their Host; a browser sends an IP literal
// only for a page whose origin is that IP.
bool admin_host_allowed(std::string_view host, std::span<const std::string> names) noexcept;

class AdminHandler final : public Handler {
 public:
  // `directory` and `backend` must outlive the handler. `body_inspect_bytes_max`: the largest
  // form/JSON body searched for a key (413 above it when the key is not in the header or query).
  // `uses` (may be null) gets this worker's (`worker`) key uses. `hosts`: the names a Host may
  // give besides IP literals and localhost (admin_host_allowed).
  AdminHandler(KeyDirectory& directory, AdminBackend& backend, size_t body_inspect_bytes_max,
               KeyUseSink* uses = nullptr, unsigned worker = 0,
               std::vector<std::string> hosts = {});

  Result handle(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
  Result resume(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
  // Requests with a body are judged at their head first, so that no body is read for a client
  // the admin API would refuse (an unauthenticated client could otherwise make a worker buffer
  // [admin] body_bytes_max, 64 MiB by default, per connection): a path that is no admin route
  // is 404, a key in the header or query that does not admit is answered (the connection then
  // closes unread), and when only the body can carry the key at most body_inspect_bytes_max
  // of it is read (413 above, as the extractor would answer). An admitted head reads its body
  // and handle() runs as for any request.
  Result handle_head(const HttpRequest& request, ResponseWriter& response,
                     RequestContext& ctx) noexcept override;
  Result resume_head(const HttpRequest& request, ResponseWriter& response,
                     RequestContext& ctx) noexcept override;
  // Before the backend ran the request: 0. After: the backend's status (a key was created,
  // rotated, deleted... although the client left).
  int abandon(RequestContext& ctx) noexcept override;

 private:
  // Per-request state while deferred (RequestContext::state), pooled per worker.
  struct State {
    enum class Phase : uint8_t {
      kHeadLookup,  // handle_head(): the key is being fetched from the store (maybe again)
      kLookup,      // the key is being fetched from the store (again when a key changed
                    // while it was out: Authenticator::finish_fetch)
      kStabilize,   // authenticated; waiting for the self-posted ticket (stable views)
      kExecute,     // the backend runs the request
    };
    Phase phase = Phase::kLookup;
    Authenticator::PendingLookup lookup;
    AdminResponse response;
    // The key's id and user for the access record: the record they came from may be the
    // fetched one in `lookup`, which is reset before the request is executed.
    std::string key_id;
    std::string user;
    KeyDigest key_digest{};  // of the value presented, checked again by the backend
  };

  // /healthz and the console (no key needed) and paths that name no admin route (404 before
  // any key work): true when answered.
  bool answered_without_key(const HttpRequest& request, ResponseWriter& response,
                            RequestContext& ctx) noexcept;
  // A path under /console: the embedded file, 404 or 405.
  void write_console(const HttpRequest& request, ResponseWriter& response) noexcept;
  // Starts fetching the key the cache does not hold; the request resumes in `phase`.
  Result fetch_key(const KeyDigest& digest, State::Phase phase, RequestContext& ctx) noexcept;
  // Tells the access log the presented key value, for every admin request (see AccessNote).
  void note_key_value(const HttpRequest& request, const Authenticator::Result& resolved,
                      RequestContext& ctx) noexcept;
  // Writes the answer when the resolved key may not call the admin API (true); sets the access
  // note's key fields either way (views into the record).
  bool refused(const Authenticator::Result& resolved, ResponseWriter& response,
               RequestContext& ctx) noexcept;
  // After the key resolved: authorizes and defers towards execution (kPending), or answers.
  Result admit(const Authenticator::Result& resolved, ResponseWriter& response, RequestContext& ctx,
               State* state) noexcept;
  void submit(const HttpRequest& request, RequestContext& ctx, State* state) noexcept;
  void write_result(const AdminResponse& out, ResponseWriter& response) noexcept;
  void write_error(ResponseWriter& response, int status, std::string_view code,
                   std::string_view message, bool challenge) noexcept;
  State* take_state();
  void give_back(State* state) noexcept;

  Authenticator authenticator_;
  KeyUseReporter uses_;
  size_t body_inspect_bytes_max_;
  std::vector<std::string> hosts_;
  AdminBackend& backend_;
  BuiltinHandler builtin_;
  std::vector<std::unique_ptr<State>> pool_;
};

class AdminHandlerFactory final : public HandlerFactory {
 public:
  AdminHandlerFactory(KeyDirectory& directory, AdminBackend& backend, size_t body_inspect_bytes_max,
                      KeyUseSink* uses = nullptr, std::vector<std::string> hosts = {})
      : directory_(directory),
        backend_(backend),
        body_inspect_bytes_max_(body_inspect_bytes_max),
        uses_(uses),
        hosts_(std::move(hosts)) {}
  std::unique_ptr<Handler> make(unsigned worker_index) override {
    return std::make_unique<AdminHandler>(directory_, backend_, body_inspect_bytes_max_, uses_,
                                          worker_index, hosts_);
  }

 private:
  KeyDirectory& directory_;
  AdminBackend& backend_;
  size_t body_inspect_bytes_max_;
  KeyUseSink* uses_;
  std::vector<std::string> hosts_;
};

}  // namespace keygate
