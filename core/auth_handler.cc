#include "core/auth_handler.h"

#include "core/assert.h"
#include "core/json_text.h"

namespace keygate {
namespace {

constexpr std::string_view kOriginalUri = "X-Original-URI";
constexpr std::string_view kOriginalMethod = "X-Original-Method";

// RFC 9110 tchar: what a method token may be made of.
bool is_tchar(char c) noexcept {
  if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool is_method(std::string_view s) noexcept {
  if (s.empty() || s.size() > 32) return false;
  for (char c : s) {
    if (!is_tchar(c)) return false;
  }
  return true;
}

// The value of header `name` and how often it occurs.
std::string_view header_once(const HttpRequest& request, std::string_view name,
                             int* count) noexcept {
  std::string_view value;
  *count = 0;
  for (const HttpHeader& h : request.headers) {
    if (!equals_ignore_case(h.name, name)) continue;
    if (*count == 0) value = h.value;
    ++*count;
  }
  return value;
}

// True when an upstream that percent-decodes the path before routing it would take `path` for
// the same API as keygate does (`api`, match()'s, may be null): else a key for one API could
// reach another's path there ("/v1/things%3Apurge" matches a "/v1" route here, and another
// API's "/v1/things:purge" once decoded). Such a path is refused (400 invalid_path) rather than
// routed either way, since a non-decoding upstream takes it as keygate does.
bool routes_alike_decoded(const ApiRegistry& apis, std::string_view path,
                          const ApiConfig* api) noexcept {
  return path.find('%') == std::string_view::npos || apis.match_decoded(path) == api;
}

void bad_auth_request(ResponseWriter* response, std::string_view message) noexcept {
  if (response != nullptr) response->error(400, "invalid_auth_request", message);
}

// Keys this worker remembers having reported (32 bytes each: 64 KiB). More keys in steady use
// than this only cost more reports (slots evict each other), never a missed one.
constexpr size_t kKeyUseSlots = 2048;

}  // namespace

AuthHandler::AuthHandler(const ApiRegistry& registry, KeyDirectory& directory,
                         size_t body_inspect_bytes_max, KeyUseSink* uses, unsigned worker)
    : registry_(registry),
      authenticator_(directory, body_inspect_bytes_max),
      uses_(uses, worker, kKeyUseSlots) {
  body_.reserve(512);
}

void AuthHandler::unauthorized(ResponseWriter& response, std::string_view code,
                               std::string_view message) noexcept {
  response.start(401);
  response.header("WWW-Authenticate", Authenticator::kChallenge);
  response.finish_error(code, message);
}

void AuthHandler::reject(ResponseWriter& response, const Authenticator::Rejection& r) noexcept {
  if (r.challenge) {
    unauthorized(response, r.code, r.message);
  } else {
    response.error(r.status, r.code, r.message);
  }
}

bool AuthHandler::describe(const HttpRequest& auth, HttpRequest* described,
                           ResponseWriter* response) noexcept {
  *described = auth;
  int uri_count = 0;
  int method_count = 0;
  const std::string_view uri = header_once(auth, kOriginalUri, &uri_count);
  const std::string_view method = header_once(auth, kOriginalMethod, &method_count);
  if (uri_count == 0 && method_count == 0) {
    // ext_authz form: the path after the prefix, with the auth request's method and query.
    const std::string_view rest = auth.path.substr(kAuthPath.size());
    if (rest.empty()) {
      bad_auth_request(response,
                       "describe the request: X-Original-URI and X-Original-Method, or a path "
                       "after /_keygate/auth");
      return false;
    }
    described->path = rest;
    described->target =
        auth.target.starts_with(kAuthPath) ? auth.target.substr(kAuthPath.size()) : rest;
    return true;
  }
  if (uri_count != 1 || method_count != 1) {
    bad_auth_request(response, "X-Original-URI and X-Original-Method must both be sent, once");
    return false;
  }
  // Two descriptions of one request could disagree; the proxy must pick one form.
  if (auth.path != kAuthPath) {
    bad_auth_request(response, "X-Original-URI goes with a request for /_keygate/auth exactly");
    return false;
  }
  if (!is_method(method)) {
    bad_auth_request(response, "X-Original-Method is not a request method");
    return false;
  }
  if (uri.empty() || uri.front() != '/') {
    bad_auth_request(response, "X-Original-URI is not an origin-form request target");
    return false;
  }
  described->method = method;
  described->set_target(uri);
  return true;
}

Handler::Result AuthHandler::handle(const HttpRequest& request, ResponseWriter& response,
                                    RequestContext& ctx) noexcept {
  if (request.path == kHealthzPath) {
    note_unlooked_key(request, ctx);
    return builtin_.handle(request, response, ctx);
  }
  if (route_matches(kAuthPath, request.path)) {
    HttpRequest described;
    if (!describe(request, &described, &response)) {
      note_unlooked_key(request, ctx);
      return Result::kDone;
    }
    return check(described, response, ctx, Mode::kAuthEndpoint);
  }
  return check(request, response, ctx, Mode::kDataPlane);
}

void AuthHandler::note_unlooked_key(const HttpRequest& request, RequestContext& ctx) noexcept {
  ctx.access.key_value = authenticator_.extracted_key(request);
}

const ApiConfig* AuthHandler::route(const ApiRegistry& apis, const HttpRequest& request,
                                     ResponseWriter& response) const noexcept {
  if (!path_is_normalized(request.path)) {
    response.error(400, "invalid_path", "request path is not in normal form");
    return nullptr;
  }
  const ApiConfig* api = apis.match(request.path);
  if (!routes_alike_decoded(apis, request.path, api)) {
    response.error(400, "invalid_path", "request path routes to another API once percent-decoded");
    return nullptr;
  }
  if (api == nullptr) response.error(404, "no_route", "no API serves this path");
  return api;
}

Handler::Result AuthHandler::handle_head(const HttpRequest& request, ResponseWriter& response,
                                         RequestContext& ctx) noexcept {
  // Whatever handle() answers without the body (/healthz, a bad or unrouted path, an auth
  // request that describes nothing) reads the body and keeps none of it: the answer and the
  // connection stay what they were when the whole body was read, and no client can make a
  // worker hold a body it does not need.
  ctx.body_keep_bytes = 0;
  if (request.path == kHealthzPath) return Result::kNeedBody;
  if (route_matches(kAuthPath, request.path)) {
    HttpRequest described;
    if (!describe(request, &described, nullptr) || !routes(apis(ctx), described)) {
      return Result::kNeedBody;
    }
    return body_for_key(described, ctx);
  }
  // Without forwarding APIs, route rejections keep the connection as they always did; with
  // them, routing needs no body, so its rejections need not wait for one (the body is left
  // unread and the connection closes, as for a forwarded API's at-head refusals).
  if (!apis(ctx).forwards() && !routes(apis(ctx), request)) return Result::kNeedBody;
  const ApiConfig* api = route(apis(ctx), request, response);
  if (api == nullptr) {
    note_unlooked_key(request, ctx);
    return Result::kDone;
  }
  if (api->upstreams.empty()) return body_for_key(request, ctx);
  const int64_t now = ctx.now_unix();
  KeyDigest digest{};
  Authenticator::Result r;
  if (!authenticator_.resolve_head(request, now, &digest, &r)) {
    // Only the body can carry the key: keep no more of it than the extractor searches (a
    // longer body is 413 body_too_large in handle(), its rest read and dropped).
    ctx.body_keep_bytes = authenticator_.body_inspect_bytes_max();
    return Result::kNeedBody;
  }
  ctx.access.key_value = r.presented;  // as in check()
  switch (r.outcome) {
    case Authenticator::Outcome::kFound:
      return decide(request, response, ctx, *api, *r.key, r.user, now, Mode::kDataPlane);
    case Authenticator::Outcome::kRejected:
      reject(response, r.rejection);
      return Result::kDone;
    case Authenticator::Outcome::kFetch:
      // Decided in resume_head() once the record is read; the body waits unread.
      return defer_fetch(digest, *api, Mode::kDataPlane, ctx);
  }
  KEYGATE_ASSERT(false && "every Authenticator outcome is handled above");
  return Result::kNeedBody;
}

bool AuthHandler::routes(const ApiRegistry& apis, const HttpRequest& request) const noexcept {
  if (!path_is_normalized(request.path)) return false;
  const ApiConfig* api = apis.match(request.path);
  return api != nullptr && routes_alike_decoded(apis, request.path, api);
}

Handler::Result AuthHandler::body_for_key(const HttpRequest& request,
                                          RequestContext& ctx) noexcept {
  KeyDigest digest{};
  Authenticator::Result r;
  if (!authenticator_.resolve_head(request, ctx.now_unix(), &digest, &r)) {
    // The body is the key carrier (form or JSON, no key in the header or the query): keep as
    // much as the extractor searches; a longer body is 413 body_too_large in handle().
    ctx.body_keep_bytes = authenticator_.body_inspect_bytes_max();
    return Result::kNeedBody;
  }
  // The header or the query decides (or nothing carries a key: 401 missing_api_key), so the
  // body is never examined. handle() decides again with the whole head, as always; the body
  // is kept only as far as the access log may capture it for the key (one with log_request,
  // or one the cache does not hold yet).
  ctx.body_keep_bytes = 0;
  ctx.body_keep_capture = r.outcome == Authenticator::Outcome::kFetch ||
                          (r.outcome == Authenticator::Outcome::kFound && r.key->log_request);
  return Result::kNeedBody;
}

Handler::Result AuthHandler::resume_head(const HttpRequest& request, ResponseWriter& response,
                                         RequestContext& ctx) noexcept {
  // The same as resume() for a data-plane request; decide() forwards (kForward) or rejects.
  return resume(request, response, ctx);
}

Handler::Result AuthHandler::check(const HttpRequest& request, ResponseWriter& response,
                                   RequestContext& ctx, Mode mode) noexcept {
  const ApiConfig* api = route(apis(ctx), request, response);
  if (api == nullptr) {
    note_unlooked_key(request, ctx);
    return Result::kDone;
  }
  const int64_t now = ctx.now_unix();
  KeyDigest digest{};
  const Authenticator::Result r = authenticator_.resolve(request, now, &digest);
  // The record's path and captures are scrubbed of the key by value (wherever else the client
  // put it), whatever the decision.
  ctx.access.key_value = r.presented;
  switch (r.outcome) {
    case Authenticator::Outcome::kFound:
      return decide(request, response, ctx, *api, *r.key, r.user, now, mode);
    case Authenticator::Outcome::kRejected:
      reject(response, r.rejection);
      return Result::kDone;
    case Authenticator::Outcome::kFetch:
      return defer_fetch(digest, *api, mode, ctx);
  }
  KEYGATE_ASSERT(false && "every Authenticator outcome is handled above");
  return Result::kDone;
}

Handler::Result AuthHandler::resume(const HttpRequest& request, ResponseWriter& response,
                                    RequestContext& ctx) noexcept {
  auto* p = static_cast<Pending*>(ctx.state);
  KEYGATE_ASSERT(p != nullptr);
  ctx.state = nullptr;
  HttpRequest described = request;
  if (p->mode == Mode::kAuthEndpoint) {
    // handle() described this same request before it deferred, so this cannot fail.
    const bool ok = describe(request, &described, &response);
    KEYGATE_ASSERT(ok);
  }
  const int64_t now = ctx.now_unix();
  const Authenticator::Result r = authenticator_.finish_fetch(p->lookup, now);
  // As in check(); a fetch's result carries no view of the value, so it is extracted again.
  ctx.access.key_value = authenticator_.extracted_key(described);
  Result result = Result::kDone;
  switch (r.outcome) {
    case Authenticator::Outcome::kFound:
      result = decide(described, response, ctx, *p->api, *r.key, r.user, now, p->mode);
      break;
    case Authenticator::Outcome::kRejected:
      reject(response, r.rejection);
      break;
    case Authenticator::Outcome::kFetch:
      // A key changed while the record was being read: read it again (bounded).
      ctx.state = p;
      authenticator_.fetch(p->lookup.digest, &p->lookup, ctx);
      return Result::kPending;
  }
  // With kForward, ctx.forward points into p->lookup's record (give_back() keeps it intact,
  // take_pending() empties it, so it outlives this call as ForwardTarget requires) or into the
  // cache (valid until the worker's next wait).
  give_back(p);
  return result;
}

int AuthHandler::abandon(RequestContext& ctx) noexcept {
  if (ctx.state != nullptr) give_back(static_cast<Pending*>(ctx.state));
  ctx.state = nullptr;
  return 0;
}

Handler::Result AuthHandler::decide(const HttpRequest& request, ResponseWriter& response,
                                    RequestContext& ctx, const ApiConfig& api, const KeyRecord& key,
                                    const User* user, int64_t now, Mode mode) noexcept {
  // The access log learns whose request this is, whatever the decision.
  ctx.access.key_id = key.id;
  ctx.access.user = key.user ? std::string_view(*key.user) : std::string_view();
  ctx.access.api = api.name;
  ctx.access.log_request = key.log_request;
  ctx.access.log_response = key.log_response;
  const Decision decision = authorize_request(key, user, api, request, now);
  // "Used" means presented and valid: a 403 for a valid key is a client still holding it (what
  // an operator about to disable the key must know); a disabled or expired key is not in use.
  if (decision != Decision::kInvalidKey) uses_.note(key.id, now);
  switch (decision) {
    case Decision::kInvalidKey:
      unauthorized(response, "invalid_api_key", "the API key is not valid");
      return Result::kDone;
    case Decision::kApiNotPermitted:
      response.error(403, "api_not_permitted", "the API key may not call this API");
      return Result::kDone;
    case Decision::kUserNotPermitted:
      response.error(403, "user_not_permitted", "the key's user may not make this request");
      return Result::kDone;
    case Decision::kUrlOverride:
      response.error(403, "url_override_not_permitted",
                     "X-Original-URL and X-Rewrite-URL are not accepted: an upstream could route "
                     "by them past keygate's check");
      return Result::kDone;
    case Decision::kAllowed:
      break;
  }
  if (key.user && !header_value_round_trips(*key.user)) {
    // The user is passed on as X-Keygate-User; a name that cannot be a header value as written
    // (control bytes, non-ASCII, surrounding spaces: possible in stores from before names were
    // limited) would be left out or arrive changed (" " as no header at all), and an upstream
    // would take the request for a user-less, administrator key or another user. Fail closed.
    response.error(403, "user_not_permitted", "the key's user name cannot be passed on");
    return Result::kDone;
  }
  if (mode == Mode::kDataPlane && !api.upstreams.empty()) {
    // `api` came from this same version (the worker keeps a request's version until its last
    // handler call), so its index is the one the worker forwards by.
    const std::vector<ApiConfig>& all = apis(ctx).apis();
    const ApiConfig* first = all.data();
    KEYGATE_ASSERT(&api >= first && &api < first + all.size());
    ctx.forward.api_index = static_cast<uint32_t>(&api - first);
    ctx.forward.key_id = key.id;
    ctx.forward.api = api.name;
    ctx.forward.user = key.user ? std::string_view(*key.user) : std::string_view();
    return Result::kForward;
  }
  answer_allowed(response, api, key);
  return Result::kDone;
}

void AuthHandler::answer_allowed(ResponseWriter& response, const ApiConfig& api,
                                 const KeyRecord& key) noexcept {
  body_.clear();
  body_.append("{\"key_id\":");
  append_json_string(body_, key.id);
  body_.append(",\"api\":");
  append_json_string(body_, api.name);
  body_.append(",\"user\":");
  append_json_string_or_null(body_, key.user);
  body_.append("}\n");
  response.start(200);
  response.header("X-Keygate-Key-Id", key.id);
  response.header("X-Keygate-Api", api.name);
  if (key.user) response.header("X-Keygate-User", *key.user);  // header-safe: checked above
  response.finish("application/json", body_);
}

Handler::Result AuthHandler::defer_fetch(const KeyDigest& digest, const ApiConfig& api, Mode mode,
                                         RequestContext& ctx) noexcept {
  Pending* p = take_pending();
  p->api = &api;
  p->mode = mode;
  ctx.state = p;
  authenticator_.fetch(digest, &p->lookup, ctx);
  return Result::kPending;
}

AuthHandler::Pending* AuthHandler::take_pending() {
  Pending* p = nullptr;
  if (pending_pool_.empty()) {
    p = new Pending();
  } else {
    p = pending_pool_.back().release();
    pending_pool_.pop_back();
  }
  p->lookup.reset();
  return p;
}

void AuthHandler::give_back(Pending* p) noexcept { pending_pool_.emplace_back(p); }

}  // namespace keygate
