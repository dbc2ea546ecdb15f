// Differential libFuzzer target for the path rules of core/permissions.h: path_is_normalized,
// prefix_is_valid, route_matches and ApiRegistry::match, each against a slow reference written
// from the header's description alone (decode, split into segments, compare strings), so a
// fast-path shortcut in permissions.cc that lets a path past a prefix (or keeps it from its
// route) shows up as a disagreement.
//
// Input: NUL-separated strings; the last is the request path, the others (at most four) are
// routes, each given to an API of its own. Every string is also checked as a path and as a
// prefix; route_matches is compared for every route and every string as the path (also where
// neither is valid: it must not crash there); the match is compared where the routes pass
// ApiRegistry::init and the path is normalized (what reaches the matcher in production).
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/permissions.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

constexpr size_t kRoutesMax = 4;

int ref_hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool ref_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

bool ref_unreserved(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         c == '-' || c == '.' || c == '_' || c == '~';
}

std::vector<std::string> ref_split(std::string_view path) {
  std::vector<std::string> segments;
  std::string current;
  for (char c : path.substr(1)) {
    if (c == '/') {
      segments.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  segments.push_back(current);
  return segments;
}

std::string ref_strip_params(std::string_view segment) {
  const size_t semi = segment.find(';');
  return std::string(semi == std::string_view::npos ? segment : segment.substr(0, semi));
}

// "starts with '/', has no "." or ".." segments (also not before a ";param"), no empty segment
// except a trailing one, no backslash, '#', NUL or other control byte, no space or non-ASCII
// byte, and no percent-encoding that an upstream could decode into different segments: none of
// '/', '\\' or an unreserved character (any case), no escaped control byte and no malformed
// escape".
bool ref_path_is_normalized(std::string_view path) {
  if (path.empty() || path[0] != '/') return false;
  for (size_t i = 0; i < path.size(); ++i) {
    const auto c = static_cast<unsigned char>(path[i]);
    if (c == '\\' || c == '#' || ref_control(c) || c == ' ' || c >= 0x80) return false;
    if (c == '%') {
      if (i + 2 >= path.size()) return false;
      const int hi = ref_hex(path[i + 1]);
      const int lo = ref_hex(path[i + 2]);
      if (hi < 0 || lo < 0) return false;
      const auto d = static_cast<unsigned char>(hi * 16 + lo);
      if (d == '/' || d == '\\' || ref_unreserved(d) || ref_control(d)) return false;
      i += 2;
    }
  }
  const std::vector<std::string> segments = ref_split(path);
  for (size_t s = 0; s < segments.size(); ++s) {
    const std::string name = ref_strip_params(segments[s]);
    if (name == "." || name == "..") return false;
    if (name.empty() && s + 1 != segments.size()) return false;
  }
  return true;
}

bool ref_prefix_is_valid(std::string_view prefix) {
  return ref_path_is_normalized(prefix) && prefix.find(';') == std::string_view::npos &&
         prefix.find('?') == std::string_view::npos;
}

// Escapes' hex digits in one case.
std::string ref_canonical(std::string_view s) {
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] != '%') continue;
    for (size_t k = i + 1; k <= i + 2 && k < out.size(); ++k) {
      if (out[k] >= 'a' && out[k] <= 'f') out[k] = static_cast<char>(out[k] - 'a' + 'A');
    }
    i += 2;
  }
  return out;
}

// For a valid route and a normalized path: the path with every segment cut at its first ';',
// then a segment-aware prefix match with escapes compared in either case.
bool ref_route_matches(std::string_view route, std::string_view path) {
  std::string stripped;
  for (const std::string& segment : ref_split(path)) {
    stripped += '/';
    stripped += ref_strip_params(segment);
  }
  const std::string r = ref_canonical(route);
  const std::string p = ref_canonical(stripped);
  if (r.back() == '/') return p.starts_with(r);
  return p == r || p.starts_with(r + "/");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string_view> parts;
  std::string_view input(reinterpret_cast<const char*>(data), size);
  while (parts.size() <= kRoutesMax) {
    const size_t nul = input.find('\0');
    parts.push_back(input.substr(0, nul));
    if (nul == std::string_view::npos) break;
    input.remove_prefix(nul + 1);
  }
  const std::string_view path = parts.back();
  const std::vector<std::string_view> routes(parts.begin(), parts.end() - 1);

  for (std::string_view s : parts) {
    keygate::fuzz::context = "path_is_normalized";
    FUZZ_CHECK(keygate::path_is_normalized(s) == ref_path_is_normalized(s));
    keygate::fuzz::context = "prefix_is_valid";
    FUZZ_CHECK(keygate::prefix_is_valid(s) == ref_prefix_is_valid(s));
  }
  const bool normalized = keygate::path_is_normalized(path);
  for (std::string_view route : routes) {
    for (std::string_view p : parts) {
      const bool matches = keygate::route_matches(route, p);
      if (keygate::prefix_is_valid(route) && keygate::path_is_normalized(p)) {
        keygate::fuzz::context = "route_matches";
        FUZZ_CHECK(matches == ref_route_matches(route, p));
        // A decoding upstream reads a match the same way (so a path keygate routes to a route
        // is routed there, or to a longer route, once decoded).
        keygate::fuzz::context = "route_matches_decoded";
        FUZZ_CHECK(!matches || keygate::route_matches_decoded(route, p));
      }
    }
  }
  keygate::fuzz::context = "";
  if (routes.empty() || !normalized) return 0;

  std::vector<keygate::ApiConfig> apis;
  for (size_t i = 0; i < routes.size(); ++i) {
    apis.emplace_back("api" + std::to_string(i), std::vector<std::string>{std::string(routes[i])});
  }
  keygate::ApiRegistry registry;
  std::string error;
  if (!registry.init(apis, &error)) return 0;
  // The reference: the API of the longest matching route; two matching routes of one length
  // would be the same route (init refuses that), so the longest is unique.
  const keygate::ApiConfig* best = nullptr;
  size_t best_length = 0;
  for (const keygate::ApiConfig& api : registry.apis()) {
    const std::string& route = api.routes[0];
    if (!ref_route_matches(route, path)) continue;
    FUZZ_CHECK(best == nullptr || route.size() != best_length);
    if (best == nullptr || route.size() > best_length) {
      best = &api;
      best_length = route.size();
    }
  }
  keygate::fuzz::context = "ApiRegistry::match";
  FUZZ_CHECK(registry.match(path) == best);
  // match_decoded: the API of the longest route, by decoded length, that matches decoded; a
  // route as long as the best one once decoded may only tie when it is the same API's match.
  // (Routes are valid prefixes: every '%' starts a well-formed escape.)
  const auto decoded_length = [](std::string_view route) {
    size_t n = 0;
    for (size_t i = 0; i < route.size(); ++n) i += route[i] == '%' ? 3 : 1;
    return n;
  };
  const keygate::ApiConfig* decoded = registry.match_decoded(path);
  size_t decoded_best = 0;
  bool found = false;
  for (const keygate::ApiConfig& api : registry.apis()) {
    const std::string& route = api.routes[0];
    if (!keygate::route_matches_decoded(route, path)) continue;
    decoded_best = std::max(decoded_best, decoded_length(route));
    found = true;
  }
  keygate::fuzz::context = "ApiRegistry::match_decoded";
  FUZZ_CHECK(found == (decoded != nullptr));
  FUZZ_CHECK(decoded == nullptr || decoded_length(decoded->routes[0]) == decoded_best);
  if (path.find('%') == std::string_view::npos) FUZZ_CHECK(decoded == best);
  return 0;
}
