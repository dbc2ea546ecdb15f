#include "core/auth_handler.h"

#include "core/json_text.h"

namespace keygate {

AuthHandler::AuthHandler(const ApiRegistry& registry, KeyDirectory& directory,
                         size_t body_inspect_bytes_max)
    : registry_(registry), directory_(directory), extractor_(body_inspect_bytes_max) {
  body_.reserve(512);
}

void AuthHandler::unauthorized(ResponseWriter& response, std::string_view code,
                               std::string_view message) noexcept {
  response.start(401);
  response.header("WWW-Authenticate", "ApiKey realm=\"keygate\"");
  response.finish_error(code, message);
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
  const ExtractResult extracted = extractor_.extract(request, request.body_readable_padding);
  if (extracted.outcome != KeyOutcome::kFound) {
    const KeyRejection r = key_rejection(extracted.outcome);
    if (r.status == 401) {
      unauthorized(response, r.code, r.message);
    } else {
      response.error(r.status, r.code, r.message);
    }
    return Result::kDone;
  }
  if (has_generated_shape(extracted.key) && !generated_checksum_ok(extracted.key)) {
    unauthorized(response, "invalid_api_key", "the API key is not valid");
    return Result::kDone;
  }
  const KeyDigest digest = digest_key(extracted.key);
  const KeyRecord* key = nullptr;
  switch (directory_.find_key(digest, &key)) {
    case KeyDirectory::Lookup::kFound: {
      const User* user = key->user ? directory_.find_user(*key->user) : nullptr;
      respond(request, response, *api, *key, user, ctx.now_unix());
      return Result::kDone;
    }
    case KeyDirectory::Lookup::kUnknown:
      unauthorized(response, "invalid_api_key", "the API key is not valid");
      return Result::kDone;
    case KeyDirectory::Lookup::kNotCached: {
      Pending* p = take_pending();
      p->api = api;
      ctx.state = p;
      directory_.fetch(digest, &p->fetch, ctx.defer());
      return Result::kPending;
    }
  }
  response.error(500, "internal_error", "unexpected lookup result");
  return Result::kDone;
}

Handler::Result AuthHandler::resume(const HttpRequest& request, ResponseWriter& response,
                                    RequestContext& ctx) noexcept {
  auto* p = static_cast<Pending*>(ctx.state);
  ctx.state = nullptr;
  if (p->fetch.failed) {
    response.error(503, "store_unavailable", "the key store cannot answer right now");
  } else if (!p->fetch.found) {
    unauthorized(response, "invalid_api_key", "the API key is not valid");
  } else {
    respond(request, response, *p->api, p->fetch.record, p->fetch.has_user ? &p->fetch.user : nullptr,
            ctx.now_unix());
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
  if (key.user) {
    append_json_string(body_, *key.user);
  } else {
    body_.append("null");
  }
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
  p->fetch = KeyDirectory::FetchResult{};
  pending_pool_.emplace_back(p);
}

}  // namespace keygate
