// Permissions: which configured API a request path belongs to, users and their grants, and the
// decision for one request.
//
// Pure logic, no I/O. An ApiRegistry is immutable once initialized (built from config) and shared
// by all workers; a reload builds a new one (core/api_versions.h). Users live in the store and
// reach workers through the key cache.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/api_key.h"
#include "core/http_request.h"

namespace keygate {

constexpr std::string_view kAdminApi = "admin";

// Data-port paths keygate answers itself before looking at any route (core/auth_handler.cc):
// exactly /healthz, and the auth endpoint with every path under it ("/_keygate/auth/...").
// ApiRegistry::init refuses a route equal to kHealthzPath (the API would still get
// "/healthz/x", but the route names a path it never receives) or at or under
// kAuthEndpointPath (the API would receive nothing through it). "/_keygate" and "/healthz/"
// are routes like any other.
constexpr std::string_view kHealthzPath = "/healthz";
constexpr std::string_view kAuthEndpointPath = "/_keygate/auth";

struct ApiConfig {
  ApiConfig() = default;
  ApiConfig(std::string api_name, std::vector<std::string> api_routes)
      : name(std::move(api_name)), routes(std::move(api_routes)) {}

  std::string name;                 // unique; "admin" is reserved for the built-in admin API
  std::vector<std::string> routes;  // path prefixes, each starting with '/'
  // "IP:port" (numeric IPv4, or [IPv6]:port) of the API's servers, tried round robin; empty:
  // auth-check mode (keygate answers allowed requests itself).
  std::vector<std::string> upstreams;
  uint32_t connect_timeout_ms = 1000;    // TCP connect to one upstream: 504 after it
  uint32_t response_timeout_ms = 30000;  // request sent until response headers: 504 after it
};

// Segment-aware prefix match: "/orders" matches "/orders", "/orders/", "/orders/7" but not
// "/ordersX"; a route ending in '/' (including "/") matches every path that starts with it.
// Path segments are compared up to their first ';' (";params" are stripped by many upstreams
// before routing): "/orders;x/7" and "/orders;x" match "/orders", "/ord;x/ers" does not. The
// hex digits of a percent-escape compare in either case: "/caf%c3%a9" matches "/caf%C3%A9".
bool route_matches(std::string_view route, std::string_view path) noexcept;

// route_matches() as an upstream that percent-decodes a path before routing it reads both
// (Go's net/http, Spring, ...): each "%XX" (either hex case) stands for the byte XX, in the route
// as in the path, so "/v1/a%3Ab" matches "/v1/a:b" and the other way round. Every match of
// route_matches() is one here too.
bool route_matches_decoded(std::string_view route, std::string_view path) noexcept;

// True when `path` is safe to match against prefixes: starts with '/', has no "." or ".."
// segments (also not before a ";param", as in "/..;/"), no empty segment except a trailing
// one ("//"), no backslash, '#', NUL or other control byte, no space or byte above 0x7e (the
// data port's parser refuses them in a request target), and no percent-encoding that an
// upstream could decode into different segments: none of '/', '\\' or an unreserved character
// (%2e %2f %5c %41 ..., any case), no escaped control byte (%00..%1f, %7f) and no malformed
// escape. Requests with other paths are rejected (400) before any permission check, so a
// prefix grant cannot be escaped with "/orders/../admin", and a path is routed here as the
// upstream will route it.
bool path_is_normalized(std::string_view path) noexcept;

// True when `prefix` can serve as an API route or a grant's path_prefix: a normalized path
// (above) without ';' or '?'. A request path is cut at '?' and its ";params" are skipped when
// matching, so a prefix holding either could never match anything.
bool prefix_is_valid(std::string_view prefix) noexcept;

constexpr size_t kApisMax = 256;
constexpr size_t kApiRoutesMax = 64;  // per API
constexpr size_t kApiUpstreamsMax = 64;  // per API

// What ApiRegistry::init refused, so a caller that knows where each value came from (the
// config file's positions) can point there.
struct ApiConfigFault {
  enum class Part : uint8_t {
    kList,    // the list as a whole (too many APIs)
    kName,    // apis[api].name
    kRoutes,  // apis[api].routes as a whole (none, too many)
    kRoute,   // apis[api].routes[route]
  };
  Part part = Part::kList;
  size_t api = 0;    // index into the list given to init (not for kList)
  size_t route = 0;  // index into that API's routes (kRoute only)
};

class ApiRegistry {
 public:
  // Validates and indexes. Fails (false, one line in `error`, registry unchanged; `fault`, when
  // not null, says which entry) on: empty or duplicate names, the reserved name "admin", names
  // that are not [A-Za-z0-9_.-]{1,64}, an API without routes or with more than kApiRoutesMax,
  // a route that is not a valid prefix (see prefix_is_valid; so it starts with '/'), a route
  // keygate answers itself (kHealthzPath, kAuthEndpointPath or under it: see there), the same
  // route twice (in one API or two; also spelled with and without an escape, "/x:y" and
  // "/x%3Ay", which a decoding upstream takes for one), more than kApisMax APIs.
  bool init(std::vector<ApiConfig> apis, std::string* error, ApiConfigFault* fault = nullptr);

  // The API whose route is the longest match for `path` (see route_matches), or nullptr.
  // Does not allocate.
  const ApiConfig* match(std::string_view path) const noexcept;
  // The API whose route is the longest match for `path` once both are percent-decoded (see
  // route_matches_decoded), or nullptr: what a decoding upstream would take the path for. For
  // a path without '%' it is match()'s. Does not allocate.
  const ApiConfig* match_decoded(std::string_view path) const noexcept;
  // The API with exactly this name, or nullptr.
  const ApiConfig* find(std::string_view name) const noexcept;
  const std::vector<ApiConfig>& apis() const noexcept { return apis_; }
  // Some API has upstreams (the data port then refuses on the path at a request's head).
  bool forwards() const noexcept { return forwards_; }

 private:
  struct RouteRef {
    uint32_t api;    // index into apis_
    uint32_t route;  // index into apis_[api].routes
  };
  std::vector<ApiConfig> apis_;
  bool forwards_ = false;
  std::vector<RouteRef> longest_first_;  // every route, longest first: the first match wins
};

struct Grant {
  std::string api;                   // an API name
  std::vector<std::string> methods;  // e.g. {"GET","POST"}; empty = any method
  std::string path_prefix;           // "" or "/" = any path within the API; segment-aware
};

struct User {
  std::string name;  // compared exactly, case-sensitive (e.g. "kharnagy@domain.corp")
  std::vector<Grant> grants;
};

enum class Decision : uint8_t {
  kAllowed,
  kApiNotPermitted,   // 403 api_not_permitted: the key's apis lack the route's API
  kUserNotPermitted,  // 403 user_not_permitted: no grant matches, or the key's user is gone
  kInvalidKey,        // 401 invalid_api_key: disabled or expired
  kUrlOverride,       // 403 url_override_not_permitted: see authorize_request
};

// The decision for a key, an already-matched API, method and path at `now` (Unix seconds).
// `user` is the key's user when the key has one and it exists, nullptr otherwise (a key whose
// user no longer exists gets kUserNotPermitted). "admin" in a key's apis grants the admin API
// only, not data-plane APIs (least privilege: name them too). Checks, in order: key unusable
// (kInvalidKey), API not in the key's apis (kApiNotPermitted), key has a user that is missing or
// has no grant for this API, method (exact, case-sensitive) and path (kUserNotPermitted).
// A key without a user acts as an administrator within its apis. Passing a user for a key
// without one, or a different user, is a programmer error (asserts). Does not allocate.
Decision authorize(const KeyRecord& key, const User* user, const ApiConfig& api,
                   std::string_view method, std::string_view path, int64_t now) noexcept;

// Request headers some upstream frameworks take the method from instead of the request line
// (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override: Symfony and Laravel, Rails,
// Express's method-override, ASP.NET Core), in any case and '_' spelling.
bool is_method_override_header(std::string_view name) noexcept;
// Request headers some upstreams take the path from instead of the request line (X-Original-URL,
// X-Rewrite-URL: IIS URL Rewrite, older Symfony and Zend), in any case and '_' spelling.
bool is_url_override_header(std::string_view name) noexcept;

// A method override longer than this is refused, even where a grant allows any method.
constexpr size_t kMethodOverrideBytesMax = 32;

// authorize() for a whole request, so that what an upstream may take from the headers instead of
// the request line cannot escape the decision: after the request line is allowed,
//   - a request carrying a URL-override header gets kUrlOverride (whatever the key: it could
//     route the request to another API, or past a grant's path, on the upstream);
//   - for a key with a user, every method a method-override header names (trimmed, ASCII
//     upper-cased as those frameworks do; empty ones are ignored, as they ignore them) must be
//     allowed too, for the same API and path; else kUserNotPermitted. A key without a user may
//     use any method within its apis, so its overrides need no check.
// Does not allocate.
Decision authorize_request(const KeyRecord& key, const User* user, const ApiConfig& api,
                           const HttpRequest& request, int64_t now) noexcept;

// Bounds a user must respect to be encoded (and that decode enforces on bytes from disk);
// strings are bounded by kRecordStringBytesMax. The admin API validates against them.
constexpr size_t kUserGrantsMax = 1024;
constexpr size_t kGrantMethodsMax = 32;

// Stable binary encoding of a user for storage (versioned; see permissions.cc). decode returns
// false on malformed, truncated, trailing or unknown-version input and never crashes on
// arbitrary bytes; `*out` is only written on success.
std::string encode_user(const User& user);
bool decode_user(std::string_view bytes, User* out);

}  // namespace keygate
