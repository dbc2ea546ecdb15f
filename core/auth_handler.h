// AuthHandler: the data plane in auth-check mode — resolve the key, authorize, answer.
//
// Worker-local: one per worker (AuthHandlerFactory), owning its Authenticator (key resolution,
// shared with the admin handler: authenticator.h) and scratch buffers; the ApiRegistry
// (immutable) and the KeyDirectory (thread-safe) are shared.
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
//   allowed -> 200 {"key_id","api","user"} with X-Keygate-Key-Id / -Api / -User headers.
// Error bodies never say anything about the key. A key the cache does not hold (partial cache)
// is fetched off the event loop: the request is deferred and resumed (503 store_unavailable if
// the store cannot answer).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/authenticator.h"
#include "core/builtin_handler.h"
#include "core/handler.h"
#include "core/key_directory.h"
#include "core/permissions.h"

namespace keygate {

class AuthHandler final : public Handler {
 public:
  AuthHandler(const ApiRegistry& registry, KeyDirectory& directory,
              size_t body_inspect_bytes_max);

  Result handle(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
  Result resume(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
  void abandon(RequestContext& ctx) noexcept override;

 private:
  struct Pending {
    Authenticator::PendingLookup lookup;
    const ApiConfig* api = nullptr;
  };

  void respond(const HttpRequest& request, ResponseWriter& response, const ApiConfig& api,
               const KeyRecord& key, const User* user, int64_t now) noexcept;
  void unauthorized(ResponseWriter& response, std::string_view code,
                    std::string_view message) noexcept;
  void reject(ResponseWriter& response, const Authenticator::Rejection& r) noexcept;
  Pending* take_pending();
  void give_back(Pending* p) noexcept;

  const ApiRegistry& registry_;
  Authenticator authenticator_;
  BuiltinHandler builtin_;
  std::string body_;  // response body scratch, capacity reused
  std::vector<std::unique_ptr<Pending>> pending_pool_;
};

class AuthHandlerFactory final : public HandlerFactory {
 public:
  AuthHandlerFactory(const ApiRegistry& registry, KeyDirectory& directory,
                     size_t body_inspect_bytes_max)
      : registry_(registry), directory_(directory), body_inspect_bytes_max_(body_inspect_bytes_max) {}
  std::unique_ptr<Handler> make(unsigned) override {
    return std::make_unique<AuthHandler>(registry_, directory_, body_inspect_bytes_max_);
  }

 private:
  const ApiRegistry& registry_;
  KeyDirectory& directory_;
  size_t body_inspect_bytes_max_;
};

}  // namespace keygate
