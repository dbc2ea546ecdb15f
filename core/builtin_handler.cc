#include "core/builtin_handler.h"

namespace keygate {

Handler::Result BuiltinHandler::handle(const HttpRequest& request, ResponseWriter& response,
                                       RequestContext&) noexcept {
  if (request.path == "/healthz") {
    if (request.method != "GET" && request.method != "HEAD") {
      response.start(405);
      response.header("Allow", "GET, HEAD");
      response.finish_error("method_not_allowed", "use GET or HEAD");
      return Result::kDone;
    }
    response.start(200);
    response.finish("text/plain", "ok");
    return Result::kDone;
  }
  response.error(404, "not_found", "no such route");
  return Result::kDone;
}

}  // namespace keygate
