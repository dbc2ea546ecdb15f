#include "core/auth_handler.h"

#include "core/assert.h"

#include "core/json_text.h"

namespace keygate {

AuthHandler::AuthHandler(const ApiRegistry& registry, KeyDirectory& directory,
                         size_t body_inspect_bytes_max)
    : registry_(registry), authenticator_(directory, body_inspect_bytes_max) {
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

Handler::Result AuthHandler::handle(const HttpRequest& request, ResponseWriter& response,
                                    RequestContext& ctx) noexcept {
  if (request.path == "/healthz") return builtin_.handle(request, response, ctx);
  if (!path_is_normalized(request.path)) {
    response.error(400, "invalid_path", "request path is not in normal form");
    return Result::kDone;
  }
  const ApiConfig* api = registry_.match(request.path);
  if (api == nullptr) {
    response.error(404, "no_route", "no API serves this path");
    return Result::kDone;
  }
  const int64_t now = ctx.now_unix();
  KeyDigest digest{};
  const Authenticator::Result r = authenticator_.resolve(request, now, &digest);
  switch (r.outcome) {
    case Authenticator::Outcome::kFound:
      respond(request, response, *api, *r.key, r.user, now);
      return Result::kDone;
    case Authenticator::Outcome::kRejected:
      reject(response, r.rejection);
      return Result::kDone;
    case Authenticator::Outcome::kFetch: {
      Pending* p = take_pending();
      p->api = api;
      ctx.state = p;
      authenticator_.fetch(digest, &p->lookup, ctx);
      return Result::kPending;
    }
  }
  KEYGATE_ASSERT(false && "every Authenticator outcome is handled above");
  return Result::kDone;
}

Handler::Result AuthHandler::resume(const HttpRequest& request, ResponseWriter& response,
                                    RequestContext& ctx) noexcept {
  auto* p = static_cast<Pending*>(ctx.state);
  KEYGATE_ASSERT(p != nullptr);
  ctx.state = nullptr;
  const int64_t now = ctx.now_unix();
  const Authenticator::Result r = authenticator_.finish_fetch(p->lookup, now);
  if (r.outcome == Authenticator::Outcome::kFound) {
    respond(request, response, *p->api, *r.key, r.user, now);
  } else {
    reject(response, r.rejection);
  }
  give_back(p);
  return Result::kDone;
}

void AuthHandler::abandon(RequestContext& ctx) noexcept {
  if (ctx.state != nullptr) give_back(static_cast<Pending*>(ctx.state));
  ctx.state = nullptr;
}

void AuthHandler::respond(const HttpRequest& request, ResponseWriter& response,
                          const ApiConfig& api, const KeyRecord& key, const User* user,
                          int64_t now) noexcept {
  switch (authorize(key, user, api, request.method, request.path, now)) {
    case Decision::kInvalidKey:
      unauthorized(response, "invalid_api_key", "the API key is not valid");
      return;
    case Decision::kApiNotPermitted:
      response.error(403, "api_not_permitted", "the API key may not call this API");
      return;
    case Decision::kUserNotPermitted:
      response.error(403, "user_not_permitted", "the key's user may not make this request");
      return;
    case Decision::kAllowed:
      break;
  }
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
  if (key.user && header_safe(*key.user)) response.header("X-Keygate-User", *key.user);
  response.finish("application/json", body_);
}

AuthHandler::Pending* AuthHandler::take_pending() {
  if (pending_pool_.empty()) return new Pending();
  Pending* p = pending_pool_.back().release();
  pending_pool_.pop_back();
  return p;
}

void AuthHandler::give_back(Pending* p) noexcept {
  p->lookup.reset();
  pending_pool_.emplace_back(p);
}

}  // namespace keygate
