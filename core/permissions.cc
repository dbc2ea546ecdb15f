#include "core/permissions.h"

#include <algorithm>
#include <map>

#include "core/assert.h"
#include "core/binary_codec.h"
#include "core/http_request.h"
#include "core/json_text.h"

namespace keygate {
namespace {

bool is_control(unsigned char c) noexcept { return c < 0x20 || c == 0x7f; }

// RFC 3986 unreserved characters: URI normalizers decode their escapes, so an upstream may see
// "%2e%2e" as ".." or "%61dmin" as "admin" even though we matched the encoded form.
bool is_unreserved(unsigned char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

// A segment is checked up to its first ';' because servlet containers strip ";params" from a
// segment before resolving it ("/..;/admin" is "/../admin" to them).
bool segment_ok(std::string_view segment, bool last) noexcept {
  std::string_view name = segment.substr(0, segment.find(';'));
  // An empty segment, also one that is only ";params" ("/;x/billing" is "//billing" once the
  // params are stripped), may be merged away upstream ("/a//b" becomes "/a/b"): it would be
  // routed here as a different path than there.
  if (name.empty()) return last;
  return name != "." && name != "..";
}

bool valid_api_name(std::string_view name) noexcept {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
           c == '.' || c == '-';
  });
}

// Where the ';' params of a path segment end: at the segment's '/', or the path's end. One path
// is matched against every route (or grant) in turn, and each that reaches the same ';' would
// scan the same params again: a path of 60 KiB of ';' under 1,024 routes was 60 MiB of scanning
// per request (4.7 times the CPU of a plain path that long, before any key). The last answer is
// kept for the path: it holds for every position from where that scan began up to that end.
class ParamsEnd {
 public:
  size_t at(std::string_view path, size_t j) noexcept {
    if (from_ <= j && j < to_) return to_;
    const size_t slash = path.find('/', j);
    from_ = j;
    to_ = slash == std::string_view::npos ? path.size() : slash;
    return to_;
  }

 private:
  size_t from_ = std::string_view::npos;
  size_t to_ = 0;
};

bool route_matches(std::string_view route, std::string_view path, ParamsEnd& params) noexcept;

bool grant_path_matches(std::string_view path_prefix, std::string_view path,
                        ParamsEnd& params) noexcept {
  return path_prefix.empty() || path_prefix == "/" || route_matches(path_prefix, path, params);
}

bool grant_matches(const Grant& grant, std::string_view api, std::string_view method,
                   std::string_view path, ParamsEnd& params) noexcept {
  return grant.api == api &&
         (grant.methods.empty() ||
          std::find(grant.methods.begin(), grant.methods.end(), method) != grant.methods.end()) &&
         grant_path_matches(grant.path_prefix, path, params);
}

// User layout, version 1 (same primitives as the key record in api_key.cc):
//   u8 version | str name | varint grants count |
//   per grant: str api | varint methods count | str method... | str path_prefix
// Nothing may follow.
constexpr uint8_t kUserVersion = 1;

// `route` against the start of `path`, one unit at a time (`same_unit` compares the units at
// route[*i] and path[*j] and moves both past them), as route_matches() and
// route_matches_decoded() share it. Each path segment counts up to its first ';': servlet
// containers and other frameworks strip ";params" before routing, so "/v1;x/admin" and
// "/v1/admin;x" are "/v1/admin" to them and must be to us (else they would fall back to a
// shorter route, e.g. "/v1"). A ';' inside a unit (a percent-escape) does not count.
template <typename SameUnit>
bool prefix_matches(std::string_view route, std::string_view path, ParamsEnd& params,
                    SameUnit same_unit) noexcept {
  if (route.empty()) return false;
  size_t i = 0;
  size_t j = 0;
  while (i < route.size()) {
    if (j < path.size() && path[j] == ';') {
      j = params.at(path, j);
      continue;
    }
    if (j >= path.size() || !same_unit(&i, &j)) return false;
  }
  if (route.back() == '/') return true;
  return j == path.size() || path[j] == '/' || path[j] == ';';
}

bool route_matches(std::string_view route, std::string_view path, ParamsEnd& params) noexcept {
  // A unit is a byte, or a percent-escape whose two hex digits compare in either case ("%C3" is
  // "%c3", RFC 3986 6.2.2.1): an upstream decodes both to the same byte.
  return prefix_matches(route, path, params, [&](size_t* i, size_t* j) {
    if (path[*j] != route[*i]) return false;
    if (route[*i] != '%') {
      ++*i;
      ++*j;
      return true;
    }
    const size_t n = std::min<size_t>(3, route.size() - *i);  // a cut escape: what there is
    if (path.size() - *j < n) return false;
    for (size_t k = 1; k < n; ++k) {
      if (ascii_lower(path[*j + k]) != ascii_lower(route[*i + k])) return false;
    }
    *i += n;
    *j += n;
    return true;
  });
}

// The byte at s[*i] as a decoding upstream reads it ("%XX" is the byte XX), advancing *i past it.
unsigned char decoded_byte(std::string_view s, size_t* i) noexcept {
  if (s[*i] == '%' && s.size() - *i >= 3) {
    const int hi = hex_value(s[*i + 1]);
    const int lo = hex_value(s[*i + 2]);
    if (hi >= 0 && lo >= 0) {
      *i += 3;
      return static_cast<unsigned char>(hi * 16 + lo);
    }
  }
  return static_cast<unsigned char>(s[(*i)++]);
}

// How many bytes `route` decodes to.
size_t decoded_length(std::string_view route) noexcept {
  size_t n = 0;
  for (size_t i = 0; i < route.size(); ++n) decoded_byte(route, &i);
  return n;
}

bool route_matches_decoded(std::string_view route, std::string_view path,
                           ParamsEnd& params) noexcept {
  // A unit is a byte as a decoding upstream reads it; a raw ';' in the path still starts the
  // segment's params (an encoded one is a literal ';' to servlet containers too).
  return prefix_matches(route, path, params, [&](size_t* i, size_t* j) {
    return decoded_byte(route, i) == decoded_byte(path, j);
  });
}

}  // namespace

bool route_matches(std::string_view route, std::string_view path) noexcept {
  ParamsEnd params;
  return route_matches(route, path, params);
}

bool route_matches_decoded(std::string_view route, std::string_view path) noexcept {
  ParamsEnd params;
  return route_matches_decoded(route, path, params);
}

bool path_is_normalized(std::string_view path) noexcept {
  if (path.empty() || path.front() != '/') return false;
  for (size_t i = 0; i < path.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(path[i]);
    // '#' (a fragment has no place in a request target, and upstreams cut the path there).
    if (c == '\\' || c == '#' || is_control(c)) return false;
    // A space or a byte above 0x7e: the data port's parser (llhttp, strict) refuses them in a
    // request target, so no path it routes holds one. A route or grant prefix holding one would
    // never match there (an operator who wrote "/café" must write "/caf%C3%A9", as clients send
    // it), and an X-Original-URI holding one would be routed apart from its encoded form, which
    // an upstream reads as the same path.
    if (c == ' ' || c > 0x7e) return false;
    if (c != '%') continue;
    if (path.size() - i < 3) return false;
    int hi = hex_value(path[i + 1]);
    int lo = hex_value(path[i + 2]);
    if (hi < 0 || lo < 0) return false;
    unsigned char decoded = static_cast<unsigned char>(hi * 16 + lo);
    if (decoded == '/' || decoded == '\\' || is_unreserved(decoded) || is_control(decoded)) {
      return false;
    }
    i += 2;
  }
  size_t start = 1;
  while (true) {
    size_t end = path.find('/', start);
    bool last = end == std::string_view::npos;
    if (!segment_ok(path.substr(start, last ? std::string_view::npos : end - start), last)) {
      return false;
    }
    if (last) return true;
    start = end + 1;
  }
}

bool prefix_is_valid(std::string_view prefix) noexcept {
  return path_is_normalized(prefix) && prefix.find_first_of(";?") == std::string_view::npos;
}

bool ApiRegistry::init(std::vector<ApiConfig> apis, std::string* error, ApiConfigFault* fault) {
  using Part = ApiConfigFault::Part;
  const auto refuse = [&](Part part, size_t api, size_t route, const std::string& message) {
    // Messages quote names and routes as configured, control characters included: one line.
    *error = one_line(message);
    if (fault != nullptr) *fault = ApiConfigFault{part, api, route};
    return false;
  };
  if (apis.size() > kApisMax) {
    return refuse(Part::kList, 0, 0,
                  "too many apis: " + std::to_string(apis.size()) + " (at most " +
                      std::to_string(kApisMax) + ")");
  }
  // Escapes in one case, so "/caf%c3%a9" and "/caf%C3%A9" are seen as the same route (they
  // match the same paths) and named in that spelling in errors.
  for (ApiConfig& api : apis) {
    for (std::string& route : api.routes) {
      for (size_t i = 0; i + 2 < route.size(); ++i) {
        if (route[i] != '%') continue;
        for (size_t k = i + 1; k <= i + 2; ++k) {
          if (route[k] >= 'a' && route[k] <= 'f') route[k] = static_cast<char>(route[k] - 32);
        }
        i += 2;
      }
    }
  }
  std::vector<RouteRef> refs;
  std::map<std::string_view, uint32_t> owner;  // route -> index of the api that has it
  // Each route percent-decoded -> (api, route) that has it: "/x%3Ay" and "/x:y" are one route
  // to an upstream that decodes before routing (match_decoded could not tell them apart).
  std::map<std::string, RouteRef> decoded_owner;
  for (size_t a = 0; a < apis.size(); ++a) {
    const ApiConfig& api = apis[a];
    std::string label = "api \"" + api.name + "\"";
    if (api.name.empty()) {
      return refuse(Part::kName, a, 0, "api #" + std::to_string(a + 1) + ": name is empty");
    }
    if (!valid_api_name(api.name)) {
      return refuse(Part::kName, a, 0, label + ": name must be 1 to 64 of A-Z a-z 0-9 _ . -");
    }
    if (api.name == kAdminApi) {
      return refuse(Part::kName, a, 0, label + ": the name is reserved for the built-in admin API");
    }
    for (size_t b = 0; b < a; ++b) {
      if (apis[b].name == api.name) return refuse(Part::kName, a, 0, label + ": duplicate name");
    }
    if (api.routes.empty()) return refuse(Part::kRoutes, a, 0, label + ": has no routes");
    if (api.routes.size() > kApiRoutesMax) {
      return refuse(Part::kRoutes, a, 0,
                    label + ": more than " + std::to_string(kApiRoutesMax) + " routes");
    }
    for (size_t r = 0; r < api.routes.size(); ++r) {
      const std::string& route = api.routes[r];
      if (!prefix_is_valid(route)) {
        return refuse(Part::kRoute, a, r,
                      label + ": route \"" + route +
                          "\" must be a normalized path starting with '/' (no . or .. segments, "
                          "no //, no backslash, ';' or '?', no encoded / \\ or unreserved "
                          "characters, no space or non-ASCII byte: percent-encode them, as in "
                          "/caf%C3%A9)");
      }
      if (route == kHealthzPath) {
        return refuse(Part::kRoute, a, r,
                      label + ": route \"" + route +
                          "\" is reserved: keygate answers /healthz itself, so the API would "
                          "never receive it");
      }
      if (route_matches(kAuthEndpointPath, route)) {
        return refuse(Part::kRoute, a, r,
                      label + ": route \"" + route +
                          "\" is reserved: keygate answers /_keygate/auth and every path under "
                          "it itself, so the API would never receive them");
      }
      auto [it, inserted] = owner.emplace(route, static_cast<uint32_t>(a));
      if (!inserted) {
        return refuse(Part::kRoute, a, r,
                      label + ": route \"" + route + "\" is already used by api \"" +
                          apis[it->second].name + "\"");
      }
      std::string decoded;
      for (size_t i = 0; i < route.size();) {
        decoded.push_back(static_cast<char>(decoded_byte(route, &i)));
      }
      auto [same, fresh] = decoded_owner.emplace(std::move(decoded),
                                                 RouteRef{static_cast<uint32_t>(a),
                                                          static_cast<uint32_t>(r)});
      if (!fresh) {
        return refuse(Part::kRoute, a, r,
                      label + ": route \"" + route + "\" is route \"" +
                          apis[same->second.api].routes[same->second.route] + "\" of api \"" +
                          apis[same->second.api].name + "\" once percent-decoded");
      }
      refs.push_back({static_cast<uint32_t>(a), static_cast<uint32_t>(r)});
    }
  }
  // Two distinct routes that both match a path differ in length, so longest-first order makes
  // the first match the longest one.
  std::stable_sort(refs.begin(), refs.end(), [&apis](const RouteRef& x, const RouteRef& y) {
    return apis[x.api].routes[x.route].size() > apis[y.api].routes[y.route].size();
  });
  apis_ = std::move(apis);
  forwards_ = false;
  for (const ApiConfig& api : apis_) forwards_ = forwards_ || !api.upstreams.empty();
  longest_first_ = std::move(refs);
  return true;
}

const ApiConfig* ApiRegistry::match(std::string_view path) const noexcept {
  ParamsEnd params;
  for (const RouteRef& ref : longest_first_) {
    const ApiConfig& api = apis_[ref.api];
    if (route_matches(api.routes[ref.route], path, params)) return &api;
  }
  return nullptr;
}

const ApiConfig* ApiRegistry::match_decoded(std::string_view path) const noexcept {
  if (path.find('%') == std::string_view::npos) return match(path);
  // Routes are ordered by their raw length, which bounds their decoded length: once a route is
  // shorter than the best decoded match so far, no later one can beat it.
  const ApiConfig* best = nullptr;
  size_t best_length = 0;
  ParamsEnd params;
  for (const RouteRef& ref : longest_first_) {
    const ApiConfig& api = apis_[ref.api];
    const std::string_view route = api.routes[ref.route];
    if (best != nullptr && route.size() <= best_length) break;
    if (!route_matches_decoded(route, path, params)) continue;
    const size_t length = decoded_length(route);
    if (best == nullptr || length > best_length) {
      best = &api;
      best_length = length;
    }
  }
  return best;
}

const ApiConfig* ApiRegistry::find(std::string_view name) const noexcept {
  for (const ApiConfig& api : apis_) {
    if (api.name == name) return &api;
  }
  return nullptr;
}

Decision authorize(const KeyRecord& key, const User* user, const ApiConfig& api,
                   std::string_view method, std::string_view path, int64_t now) noexcept {
  if (!key.usable_at(now)) return Decision::kInvalidKey;
  if (!key.has_api(api.name)) return Decision::kApiNotPermitted;
  if (!key.user) {
    KEYGATE_ASSERT(user == nullptr);
    return Decision::kAllowed;
  }
  if (user == nullptr) return Decision::kUserNotPermitted;
  KEYGATE_ASSERT(user->name == *key.user);
  ParamsEnd params;
  for (const Grant& grant : user->grants) {
    if (grant_matches(grant, api.name, method, path, params)) return Decision::kAllowed;
  }
  return Decision::kUserNotPermitted;
}

bool is_method_override_header(std::string_view name) noexcept {
  return header_name_is_like(name, "X-HTTP-Method-Override") ||
         header_name_is_like(name, "X-HTTP-Method") || header_name_is_like(name, "X-Method-Override");
}

bool is_url_override_header(std::string_view name) noexcept {
  return header_name_is_like(name, "X-Original-URL") || header_name_is_like(name, "X-Rewrite-URL");
}

Decision authorize_request(const KeyRecord& key, const User* user, const ApiConfig& api,
                           const HttpRequest& request, int64_t now) noexcept {
  const Decision line = authorize(key, user, api, request.method, request.path, now);
  if (line != Decision::kAllowed) return line;
  for (const HttpHeader& h : request.headers) {
    if (is_url_override_header(h.name)) return Decision::kUrlOverride;
  }
  if (!key.user) return Decision::kAllowed;
  for (const HttpHeader& h : request.headers) {
    if (!is_method_override_header(h.name)) continue;
    std::string_view value = h.value;
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (value.empty()) continue;
    if (value.size() > kMethodOverrideBytesMax) return Decision::kUserNotPermitted;
    char upper[kMethodOverrideBytesMax];
    for (size_t i = 0; i < value.size(); ++i) {
      const char c = value[i];
      upper[i] = c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c;
    }
    const Decision d =
        authorize(key, user, api, std::string_view(upper, value.size()), request.path, now);
    if (d != Decision::kAllowed) return d;
  }
  return Decision::kAllowed;
}

std::string encode_user(const User& user) {
  KEYGATE_ASSERT(user.grants.size() <= kUserGrantsMax);
  std::string out;
  BinaryWriter w(&out);
  w.byte(kUserVersion);
  w.str(user.name);
  w.varint(user.grants.size());
  for (const Grant& grant : user.grants) {
    KEYGATE_ASSERT(grant.methods.size() <= kGrantMethodsMax);
    w.str(grant.api);
    w.varint(grant.methods.size());
    for (const std::string& method : grant.methods) w.str(method);
    w.str(grant.path_prefix);
  }
  return out;
}

bool decode_user(std::string_view bytes, User* out) {
  BinaryReader r(bytes);
  User user;
  uint8_t version = 0;
  if (!r.byte(&version) || version != kUserVersion || !r.str(&user.name)) return false;
  size_t grant_count = 0;
  if (!r.count(kUserGrantsMax, &grant_count)) return false;
  user.grants.resize(grant_count);
  for (Grant& grant : user.grants) {
    size_t method_count = 0;
    if (!r.str(&grant.api) || !r.count(kGrantMethodsMax, &method_count)) return false;
    grant.methods.resize(method_count);
    for (std::string& method : grant.methods) {
      if (!r.str(&method)) return false;
    }
    if (!r.str(&grant.path_prefix)) return false;
  }
  if (!r.at_end()) return false;
  *out = std::move(user);
  return true;
}

}  // namespace keygate
