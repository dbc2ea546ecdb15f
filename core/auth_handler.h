// AuthHandler: the data plane — resolve the key, authorize, then answer (auth-check APIs),
// forward (APIs with upstreams) or answer another proxy's auth request (/_keygate/auth).
//
// Worker-local: one per worker (AuthHandlerFactory), owning its Authenticator (key resolution,
// shared with the admin handler: authenticator.h) and scratch buffers; the APIs (an immutable
// ApiRegistry: the request's version, RequestContext::apis, which the worker keeps for the
// whole request across a reload) and the KeyDirectory (thread-safe) are shared.
//
// Order of checks for a request on the data port:
//   GET/HEAD /healthz -> 200 "ok" (no key needed);
//   a path that is not normalized (see path_is_normalized) -> 400 invalid_path;
//   no API route matches -> 404 no_route;
//   key extraction fails -> 401 missing/invalid/ambiguous_api_key (with
//     WWW-Authenticate: ApiKey realm="keygate"), 400 invalid_body or 413 body_too_large;
//   a value of the generated shape with a bad checksum -> 401 invalid_api_key, no lookup;
//   unknown digest, disabled or expired key, or an old value after its rotation's grace
//     period -> 401 invalid_api_key;
//   the key's apis lack the API -> 403 api_not_permitted; user grants -> 403 user_not_permitted;
//   allowed, auth-check API (no upstreams) -> 200 {"key_id","api","user"} with
//     X-Keygate-Key-Id / -Api / -User headers;
//   allowed, API with upstreams -> Result::kForward with ctx.forward set (the worker forwards).
// Every request whose key is valid (found, enabled, unexpired: allowed or 403) is a use of the
// key, reported to the KeyUseSink (its last_used_at; at most once per key per
// kKeyUseGranularitySeconds per worker, see key_use.h); a 401 is not.
// Error bodies never say anything about the key. A key the cache does not hold (partial cache)
// is fetched off the event loop: the request is deferred and resumed (503 store_unavailable if
// the store cannot answer); a key change that lands while the record is out makes the resume
// look again, and perhaps fetch again (Authenticator::finish_fetch), so a revocation that
// returned before the resume always wins.
//
// handle_head() runs for every data-port request with a body, before the body is read. For
// APIs with upstreams it decides: a key from the X-ApiKey header or the query gives kForward or
// the rejection (kDone; likewise 400 invalid_path and 404 no_route when some API has
// upstreams), after a fetch when the cache does not hold the key (kPending, then
// resume_head(): the body waits unread meanwhile, and streams afterwards like any other).
// Everything else gets kNeedBody and handle() answers, but the body is kept only as far as the
// answer needs it (RequestContext::body_keep_bytes): none of it for /healthz, a path no route
// takes (without upstream APIs), a key in the header or the query, or a body that cannot carry
// a key (not form or JSON); at most [keys] body_inspect_bytes_max when the body is the key
// carrier (413 body_too_large when longer). The rest is read and dropped, so no client makes a
// worker hold a body the answer does not need (the access log's capture of a log_request key
// keeps its [log] capture_bytes_max: body_keep_capture).
//
// The auth endpoint, `/_keygate/auth` on the data port, lets another proxy ask keygate (nginx
// `auth_request`, Envoy's HTTP `ext_authz`; any method). It describes a request in one of two
// forms and answers exactly what the data plane would answer for it, except that an allowed
// request always gets the 200 answer (never forwarded, whatever the API's upstreams):
//   nginx form: `X-Original-URI` (origin-form request-target, query optional) and
//     `X-Original-Method` headers on a request for exactly /_keygate/auth. Both or neither:
//     one alone, either repeated, a malformed method or URI, or a path after the prefix next
//     to them -> 400 invalid_auth_request.
//   ext_authz form (no X-Original-* header): the path after the prefix, the auth request's own
//     query and method: `POST /_keygate/auth/orders/7?x=1` describes `POST /orders/7?x=1`.
//     Bare /_keygate/auth -> 400 invalid_auth_request.
// Key sources are those of the data plane, taken from the auth request: its X-ApiKey header,
// the `key` parameter of the described query (X-Original-URI's in the nginx form), and a
// form/JSON body of the auth request. The described path is routed like any data-plane path
// (so /healthz is not special there); /_keygate/auth itself is never routed to an API.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/authenticator.h"
#include "core/builtin_handler.h"
#include "core/handler.h"
#include "core/key_directory.h"
#include "core/key_use.h"
#include "core/permissions.h"

namespace keygate {

class AuthHandler final : public Handler {
 public:
  // The auth endpoint's path (segment-aware prefix: "/_keygate/auth/..." too).
  static constexpr std::string_view kAuthPath = kAuthEndpointPath;

  // `uses` (may be null: no use is reported) gets this worker's (`worker`) key uses.
  AuthHandler(const ApiRegistry& registry, KeyDirectory& directory, size_t body_inspect_bytes_max,
              KeyUseSink* uses = nullptr, unsigned worker = 0);

  Result handle(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
  Result resume(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
  Result handle_head(const HttpRequest& request, ResponseWriter& response,
                     RequestContext& ctx) noexcept override;
  Result resume_head(const HttpRequest& request, ResponseWriter& response,
                     RequestContext& ctx) noexcept override;
  int abandon(RequestContext& ctx) noexcept override;  // 0: a key lookup changes nothing

 private:
  // Whom an allowed request is answered for: the data plane forwards when the API has
  // upstreams; the auth endpoint always answers.
  enum class Mode : uint8_t { kDataPlane, kAuthEndpoint };

  struct Pending {
    Authenticator::PendingLookup lookup;
    const ApiConfig* api = nullptr;
    Mode mode = Mode::kDataPlane;
  };

  // The request an auth request describes (views into `auth`), or false after writing the
  // 400 into `response` (when not null).
  static bool describe(const HttpRequest& auth, HttpRequest* described,
                       ResponseWriter* response) noexcept;
  // The APIs this request goes by: the worker's version for it (RequestContext::apis), else
  // the registry the handler was made with.
  const ApiRegistry& apis(const RequestContext& ctx) const noexcept {
    return ctx.apis != nullptr ? *ctx.apis : registry_;
  }
  // The path is in normal form and some API's route matches it (route() would accept it).
  bool routes(const ApiRegistry& apis, const HttpRequest& request) const noexcept;
  // handle_head() for a request handle() answers itself (an auth-check API, the auth
  // endpoint): kNeedBody, keeping no more of the body than the key's extraction and capture
  // need (ctx.body_keep_bytes, ctx.body_keep_capture).
  Result body_for_key(const HttpRequest& request, RequestContext& ctx) noexcept;
  // The API whose routes match `request`'s path, or nullptr after writing the rejection
  // (400 invalid_path, 404 no_route) into `response`.
  const ApiConfig* route(const ApiRegistry& apis, const HttpRequest& request,
                         ResponseWriter& response) const noexcept;
  // For an answer given before the key is looked at (/healthz, 400 invalid_path, 404
  // no_route, 400 invalid_auth_request): notes the key value `request` carries anyway
  // (ctx.access.key_value), so the access log scrubs it from the record's path (a client
  // may put it in a path segment or another parameter as well). Does not allocate.
  void note_unlooked_key(const HttpRequest& request, RequestContext& ctx) noexcept;
  // Route, resolve and decide for `request` (the described one for the auth endpoint).
  Result check(const HttpRequest& request, ResponseWriter& response, RequestContext& ctx,
               Mode mode) noexcept;
  // authorize() and what follows: a rejection, the 200 answer, or kForward.
  Result decide(const HttpRequest& request, ResponseWriter& response, RequestContext& ctx,
                const ApiConfig& api, const KeyRecord& key, const User* user, int64_t now,
                Mode mode) noexcept;
  void answer_allowed(ResponseWriter& response, const ApiConfig& api,
                      const KeyRecord& key) noexcept;
  void unauthorized(ResponseWriter& response, std::string_view code,
                    std::string_view message) noexcept;
  void reject(ResponseWriter& response, const Authenticator::Rejection& r) noexcept;
  // Starts reading the key filed under `digest` from the store and defers the request;
  // resume() / resume_head() decide with the record, or read it again when a key changed
  // meanwhile (deferring once more).
  Result defer_fetch(const KeyDigest& digest, const ApiConfig& api, Mode mode,
                     RequestContext& ctx) noexcept;
  // take_pending() hands out an emptied Pending; give_back() keeps its lookup as it is, so a
  // record a resume() forwarded stays valid after the call (ForwardTarget's views).
  Pending* take_pending();
  void give_back(Pending* p) noexcept;

  const ApiRegistry& registry_;
  Authenticator authenticator_;
  KeyUseReporter uses_;
  BuiltinHandler builtin_;
  std::string body_;  // response body scratch, capacity reused
  std::vector<std::unique_ptr<Pending>> pending_pool_;
};

class AuthHandlerFactory final : public HandlerFactory {
 public:
  AuthHandlerFactory(const ApiRegistry& registry, KeyDirectory& directory,
                     size_t body_inspect_bytes_max, KeyUseSink* uses = nullptr)
      : registry_(registry),
        directory_(directory),
        body_inspect_bytes_max_(body_inspect_bytes_max),
        uses_(uses) {}
  std::unique_ptr<Handler> make(unsigned worker_index) override {
    return std::make_unique<AuthHandler>(registry_, directory_, body_inspect_bytes_max_, uses_,
                                         worker_index);
  }

 private:
  const ApiRegistry& registry_;
  KeyDirectory& directory_;
  size_t body_inspect_bytes_max_;
  KeyUseSink* uses_;
};

}  // namespace keygate
