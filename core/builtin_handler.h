// BuiltinHandler: the routes keygate answers itself on the data port.
//
// Worker-local, stateless. GET/HEAD /healthz answers 200 "ok"; everything else is a JSON 404.
// The data-plane AuthHandler and the AdminHandler delegate /healthz to it.
#pragma once

#include "core/handler.h"

namespace keygate {

class BuiltinHandler final : public Handler {
 public:
  Result handle(const HttpRequest& request, ResponseWriter& response,
                RequestContext& ctx) noexcept override;
};

class BuiltinHandlerFactory final : public HandlerFactory {
 public:
  std::unique_ptr<Handler> make(unsigned) override { return std::make_unique<BuiltinHandler>(); }
};

}  // namespace keygate
