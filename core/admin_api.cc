#include "core/admin_api.h"

// The error-code API only: nothing here may throw.
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/assert.h"
#include "core/decimal.h"
#include "core/http_request.h"
#include "core/json_text.h"
#include "core/key_extractor.h"

namespace keygate {

namespace dom = simdjson::dom;

namespace {

// All limits of the admin API in one place.
constexpr size_t kDescriptionBytesMax = 1024;
constexpr size_t kUserNameBytesMax = 256;
constexpr size_t kMethodTokenBytesMax = 64;
constexpr size_t kListLimitDefault = 100;
constexpr size_t kListLimitMax = 1000;
// A filtered listing examines at most this many records per record a page may hold, so one request
// does bounded store work however rare the matches are; past that budget the page comes back short
// (possibly empty) with a next_cursor to continue from.
constexpr size_t kListScanFactor = 10;
// GET /admin/users: a page ends after the user that takes its body past this many bytes.
constexpr size_t kUserListBytesMax = 4u << 20;
constexpr int64_t kRotateGraceSecondsMax = 30 * 86400;
// GET /admin/logs: page sizes, and the bytes of log lines one request examines at most, which
// bounds both its disk reads (a rare filter over a large log comes back short, even empty, with a
// cursor) and the size of its response.
constexpr uint32_t kLogLimitDefault = 100;
constexpr uint32_t kLogLimitMax = 1000;
constexpr uint64_t kLogScanBytesMax = 32ull << 20;
// A generated key that hits a conflict collided on its id (a 192-bit value cannot collide), so a
// fresh id is worth a few more tries.
constexpr int kCreateIdRetriesMax = 3;

constexpr std::string_view kAdminPrefix = "/admin/";

// ---------------------------------------------------------------------------------------------
// Errors

struct Failure {
  int status = 500;
  std::string_view code;
  std::optional<std::string> field;  // as the client names it: "apis", "keys[17].apis"
  std::string_view message;          // static text: never echoes a key value
};

Failure failure(int status, std::string_view code, std::string_view message) {
  return Failure{status, code, std::nullopt, message};
}

Failure field_failure(int status, std::string_view code, std::string field,
                      std::string_view message) {
  return Failure{status, code, std::move(field), message};
}

Failure invalid_type(std::string field, std::string_view message) {
  return field_failure(400, "invalid_type", std::move(field), message);
}

Failure invalid_value(std::string field, std::string_view message) {
  return field_failure(400, "invalid_value", std::move(field), message);
}

Failure store_unavailable(const AdminStoreResult& result) {
  const std::string_view message = result.message != nullptr && result.message[0] != '\0'
                                       ? result.message
                                       : "the key store is unavailable";
  return failure(503, "store_unavailable", message);
}

Failure random_failed() { return failure(500, "internal_error", "the random source failed"); }

// "application/json" with any parameters ("; charset=utf-8"), case-insensitive, optional
// whitespace around it (RFC 9110 8.3.1).
bool is_json_media_type(std::string_view value) noexcept {
  const size_t semicolon = value.find(';');
  std::string_view type = value.substr(0, semicolon);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  return equals_ignore_case(type, "application/json");
}

AdminResponse error_response(const Failure& f) {
  AdminResponse response;
  response.status = f.status;
  response.error_code = f.code;
  std::string& out = response.body;
  out.reserve(64 + f.message.size() + (f.field ? f.field->size() : 0));
  out += "{\"error\":";
  append_json_string(out, f.code);
  out += ",\"field\":";
  append_json_string_or_null(out, f.field);
  out += ",\"message\":";
  append_json_string(out, f.message);
  out += '}';
  return response;
}

// ---------------------------------------------------------------------------------------------
// Time

int64_t floor_div(int64_t a, int64_t b) noexcept {
  const int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, int64_t m, int64_t d) noexcept {
  y -= m <= 2 ? 1 : 0;
  const int64_t era = floor_div(y, 400);
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void civil_from_days(int64_t z, int64_t* y, int64_t* m, int64_t* d) noexcept {
  z += 719468;
  const int64_t era = floor_div(z, 146097);
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = yoe + era * 400 + (*m <= 2 ? 1 : 0);
}

bool is_leap_year(int64_t y) noexcept { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int64_t days_in_month(int64_t y, int64_t m) noexcept {
  static constexpr std::array<int64_t, 12> kDays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap_year(y) ? 29 : kDays[static_cast<size_t>(m - 1)];
}

// Exactly `n` decimal digits at s[pos..].
bool read_digits(std::string_view s, size_t pos, size_t n, int64_t* out) noexcept {
  if (pos + n > s.size()) return false;
  int64_t v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Small validators

bool is_base62(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// The shape make_key_id() produces: "k" + 12 base62 digits.
bool is_key_id(std::string_view s) noexcept {
  if (s.size() != 13 || s[0] != 'k') return false;
  for (size_t i = 1; i < s.size(); ++i) {
    if (!is_base62(s[i])) return false;
  }
  return true;
}

// Sent on as X-Keygate-User, so it must reach the upstream as written: a header value of
// printable ASCII, without the leading or trailing spaces a receiver strips (" " would arrive
// as no user at all, "alice " as "alice"). "." and ".." could not be named in a URL path: a
// client resolves them away (/admin/users/.. is /admin/).
bool valid_user_name(std::string_view name) noexcept {
  if (name.size() > kUserNameBytesMax || !header_value_round_trips(name)) return false;
  return name != "." && name != "..";
}

// What a user already in the store may be called: names from before the space and dot rules
// must stay reachable by GET, PATCH and DELETE (and the keys filter), or such a user could not
// be fixed or removed.
bool may_name_stored_user(std::string_view name) noexcept {
  return !name.empty() && name.size() <= kUserNameBytesMax && header_safe(name);
}

constexpr std::string_view kStoredUserNameRule =
    "a user name is 1 to 256 printable ASCII characters";

constexpr std::string_view kUserNameRule =
    "a user name is 1 to 256 printable ASCII characters, without leading or trailing spaces, "
    "and not . or ..";

// An HTTP method token (RFC 9110 tchar) without lowercase letters: methods are compared
// case-sensitively, so a lowercase grant would silently never match.
bool valid_method_token(std::string_view m) noexcept {
  static constexpr std::string_view kSymbols = "!#$%&'*+-.^_`|~";
  if (m.empty() || m.size() > kMethodTokenBytesMax) return false;
  for (char c : m) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    kSymbols.find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

// Percent-decoding; `plus_is_space` for query strings (form convention), not for paths.
bool percent_decode(std::string_view in, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+' && plus_is_space) {
      c = ' ';
    } else if (c == '%') {
      if (in.size() - i < 3) return false;
      const int hi = hex_value(in[i + 1]);
      const int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    out->push_back(c);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Routing

enum class Route : uint8_t {
  kNone,
  kKeys,
  kKeysImport,
  kKey,
  kKeyRotate,
  kUsers,
  kUser,
  kApis,
  kLogs,
  kStats,
  kMetrics,
  kReload,
  kBackups
};

struct RouteMatch {
  Route route = Route::kNone;
  std::string_view param;  // {id} or the still-encoded {name}
};

RouteMatch match_route(std::string_view path) noexcept {
  if (!path.starts_with(kAdminPrefix)) return {};
  std::string_view rest = path.substr(kAdminPrefix.size());
  std::array<std::string_view, 3> segments;
  size_t count = 0;
  while (true) {
    if (count == segments.size()) return {};
    const size_t slash = rest.find('/');
    const std::string_view segment = rest.substr(0, slash);
    // An empty segment is "//" or a trailing slash: neither names a route.
    if (segment.empty()) return {};
    segments[count++] = segment;
    if (slash == std::string_view::npos) break;
    rest = rest.substr(slash + 1);
  }
  if (segments[0] == "keys") {
    if (count == 1) return {Route::kKeys, {}};
    if (count == 2) {
      if (segments[1] == "import") return {Route::kKeysImport, {}};
      return {Route::kKey, segments[1]};
    }
    if (segments[2] == "rotate") return {Route::kKeyRotate, segments[1]};
    return {};
  }
  if (segments[0] == "users") {
    if (count == 1) return {Route::kUsers, {}};
    if (count == 2) return {Route::kUser, segments[1]};
    return {};
  }
  if (segments[0] == "apis" && count == 1) return {Route::kApis, {}};
  if (segments[0] == "logs" && count == 1) return {Route::kLogs, {}};
  if (segments[0] == "stats" && count == 1) return {Route::kStats, {}};
  if (segments[0] == "metrics" && count == 1) return {Route::kMetrics, {}};
  if (segments[0] == "reload" && count == 1) return {Route::kReload, {}};
  if (segments[0] == "backups" && count == 1) return {Route::kBackups, {}};
  return {};
}

std::string_view allowed_methods(Route route) noexcept {
  switch (route) {
    case Route::kKeys:
    case Route::kUsers:
    case Route::kBackups:
      return "GET, POST";
    case Route::kKeysImport:
    case Route::kKeyRotate:
    case Route::kReload:
      return "POST";
    case Route::kKey:
    case Route::kUser:
      return "GET, PATCH, DELETE";
    case Route::kApis:
    case Route::kLogs:
    case Route::kStats:
    case Route::kMetrics:
      return "GET";
    case Route::kNone:
      break;
  }
  return "";
}

bool method_allowed(std::string_view allow, std::string_view method) noexcept {
  while (!allow.empty()) {
    const size_t comma = allow.find(',');
    if (allow.substr(0, comma) == method) return true;
    if (comma == std::string_view::npos) break;
    allow = allow.substr(comma + 2);  // ", "
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// JSON input

// Parses a body into a DOM whose strings live as long as this object.
class JsonBody {
 public:
  bool parse(const AdminRequest& request, Failure* f) {
    if (request.body.empty()) {
      *f = failure(400, "invalid_json", "a JSON object body is required");
      return false;
    }
    const char* input = request.body.data();
    if (request.body_readable_padding < simdjson::SIMDJSON_PADDING) {
      copy_ = simdjson::padded_string(request.body);
      if (copy_.data() == nullptr) {
        *f = failure(500, "internal_error", "out of memory");
        return false;
      }
      input = copy_.data();
    }
    dom::element root;
    if (parser_.parse(input, request.body.size(), false).get(root) != simdjson::SUCCESS) {
      *f = failure(400, "invalid_json", "the body is not valid JSON");
      return false;
    }
    if (root.get_object().get(root_) != simdjson::SUCCESS) {
      *f = failure(400, "invalid_json", "the body must be a JSON object");
      return false;
    }
    return true;
  }

  dom::object root() const noexcept { return root_; }

 private:
  dom::parser parser_;
  simdjson::padded_string copy_;
  dom::object root_;
};

std::string field_name(std::string_view prefix, std::string_view name) {
  std::string out;
  out.reserve(prefix.size() + name.size());
  out += prefix;
  out += name;
  return out;
}

// Visits every member of `object`, with the index of its name in `names`. An unknown member is 400
// unknown_field, a repeated one 400 invalid_json (a repeat would make the outcome depend on which
// copy a reader keeps). `visit(index, value)` returns false after setting `*f`. A root object's
// (empty prefix) "API_Key" is skipped: it is where a client may put the admin key (when the key
// came from there, the authenticator already refused a repeated or non-string one; when it came
// from the header or the query, the body is not a key source and its API_Key is ignored).
template <size_t N, typename Visit>
bool visit_members(dom::object object, const std::array<std::string_view, N>& names,
                   std::string_view prefix, Failure* f, Visit&& visit) {
  static_assert(N <= 32);
  uint32_t seen = 0;
  for (dom::key_value_pair member : object) {
    if (prefix.empty() && member.key == kKeyJsonMemberName) continue;
    size_t index = N;
    for (size_t i = 0; i < N; ++i) {
      if (names[i] == member.key) {
        index = i;
        break;
      }
    }
    if (index == N) {
      *f = field_failure(400, "unknown_field", field_name(prefix, member.key), "unknown member");
      return false;
    }
    const uint32_t bit = uint32_t{1} << index;
    if ((seen & bit) != 0) {
      *f = field_failure(400, "invalid_json", field_name(prefix, member.key),
                         "member given more than once");
      return false;
    }
    seen |= bit;
    if (!visit(index, member.value)) return false;
  }
  return true;
}

bool read_string(dom::element v, const std::string& field, size_t bytes_max, std::string_view* out,
                 Failure* f) {
  if (v.get_string().get(*out) != simdjson::SUCCESS) {
    *f = invalid_type(field, "must be a string");
    return false;
  }
  if (out->size() > bytes_max) {
    *f = invalid_value(field, "too long");
    return false;
  }
  return true;
}

bool read_bool(dom::element v, const std::string& field, bool* out, Failure* f) {
  if (v.get_bool().get(*out) != simdjson::SUCCESS) {
    *f = invalid_type(field, "must be true or false");
    return false;
  }
  return true;
}

// A user name or null.
bool read_user_ref(dom::element v, const std::string& field, std::optional<std::string>* out,
                   Failure* f) {
  if (v.is_null()) {
    out->reset();
    return true;
  }
  std::string_view name;
  if (v.get_string().get(name) != simdjson::SUCCESS) {
    *f = invalid_type(field, "must be a user name or null");
    return false;
  }
  if (!valid_user_name(name)) {
    *f = invalid_value(field, kUserNameRule);
    return false;
  }
  *out = std::string(name);
  return true;
}

// An RFC 3339 time or null.
bool read_time(dom::element v, const std::string& field, std::optional<int64_t>* out, Failure* f) {
  if (v.is_null()) {
    out->reset();
    return true;
  }
  std::string_view text;
  if (v.get_string().get(text) != simdjson::SUCCESS) {
    *f = invalid_type(field, "must be an RFC 3339 time string or null");
    return false;
  }
  int64_t t = 0;
  if (!parse_rfc3339(text, &t)) {
    *f = invalid_value(field, "not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)");
    return false;
  }
  *out = t;
  return true;
}

// A key's apis: a non-empty array of distinct configured API names or "admin".
bool read_apis(dom::element v, const std::string& field, const ApiRegistry& apis,
               std::vector<std::string>* out, Failure* f) {
  dom::array array;
  if (v.get_array().get(array) != simdjson::SUCCESS) {
    *f = invalid_type(field, "must be an array of API names");
    return false;
  }
  const size_t n = array.size();
  if (n == 0) {
    *f = invalid_value(field, "at least one API is required");
    return false;
  }
  if (n > kKeyApisMax) {
    *f = invalid_value(field, "too many APIs");
    return false;
  }
  out->clear();
  out->reserve(n);
  for (dom::element e : array) {
    std::string_view name;
    if (e.get_string().get(name) != simdjson::SUCCESS) {
      *f = invalid_type(field, "must be an array of API names");
      return false;
    }
    if (name != kAdminApi && apis.find(name) == nullptr) {
      *f = field_failure(400, "unknown_api", field, "names an API that is not configured");
      return false;
    }
    for (const std::string& earlier : *out) {
      if (earlier == name) {
        *f = invalid_value(field, "an API is listed twice");
        return false;
      }
    }
    out->emplace_back(name);
  }
  return true;
}

enum class KeyBody : uint8_t { kCreate, kPatch, kImport };

constexpr std::array<std::string_view, 8> kKeyMembers = {
    "key", "description", "apis", "user", "log_request", "log_response", "enabled", "expires_at"};

// The members of a key body; each is set only when present.
struct KeyFields {
  std::optional<std::string_view> key;  // view into the parsed body
  std::optional<std::string> description;
  std::optional<std::vector<std::string>> apis;
  std::optional<std::optional<std::string>> user;
  std::optional<bool> log_request;
  std::optional<bool> log_response;
  std::optional<bool> enabled;
  std::optional<std::optional<int64_t>> expires_at;

  bool empty() const noexcept {
    return !key && !description && !apis && !user && !log_request && !log_response && !enabled &&
           !expires_at;
  }

  void apply_to(KeyRecord* r) const {
    if (description) r->description = *description;
    if (apis) r->apis = *apis;
    if (user) r->user = *user;
    if (log_request) r->log_request = *log_request;
    if (log_response) r->log_response = *log_response;
    if (enabled) r->enabled = *enabled;
    if (expires_at) r->expires_at = *expires_at;
  }
};

bool read_key_fields(dom::object object, KeyBody kind, std::string_view prefix,
                     const ApiRegistry& apis, KeyFields* out, Failure* f) {
  const bool ok = visit_members(object, kKeyMembers, prefix, f, [&](size_t index, dom::element v) {
    const std::string field = field_name(prefix, kKeyMembers[index]);
    switch (index) {
      case 0: {
        if (kind == KeyBody::kPatch) {
          *f = field_failure(400, "unknown_field", field,
                             "a key's value cannot be changed: rotate the key instead");
          return false;
        }
        std::string_view value;
        if (v.get_string().get(value) != simdjson::SUCCESS) {
          *f = invalid_type(field, "must be a string");
          return false;
        }
        std::string_view reason;
        if (!validate_key_value(value, &reason)) {
          *f = invalid_value(field, reason);
          return false;
        }
        out->key = value;
        return true;
      }
      case 1: {
        std::string_view text;
        if (!read_string(v, field, kDescriptionBytesMax, &text, f)) return false;
        out->description = std::string(text);
        return true;
      }
      case 2: {
        std::vector<std::string> list;
        if (!read_apis(v, field, apis, &list, f)) return false;
        out->apis = std::move(list);
        return true;
      }
      case 3: {
        std::optional<std::string> user;
        if (!read_user_ref(v, field, &user, f)) return false;
        out->user = std::move(user);
        return true;
      }
      case 4:
      case 5:
      case 6: {
        bool b = false;
        if (!read_bool(v, field, &b, f)) return false;
        (index == 4 ? out->log_request : index == 5 ? out->log_response : out->enabled) = b;
        return true;
      }
      case 7: {
        std::optional<int64_t> t;
        if (!read_time(v, field, &t, f)) return false;
        out->expires_at = t;
        return true;
      }
    }
    return false;
  });
  if (!ok) return false;
  if (kind == KeyBody::kImport && !out->key) {
    *f =
        field_failure(400, "missing_field", field_name(prefix, "key"), "the key value is required");
    return false;
  }
  if (kind != KeyBody::kPatch && !out->apis) {
    *f = field_failure(400, "missing_field", field_name(prefix, "apis"),
                       "the APIs the key may call are required");
    return false;
  }
  if (kind == KeyBody::kPatch && out->empty()) {
    *f = failure(400, "missing_field", "at least one member to change is required");
    return false;
  }
  return true;
}

// A user's grants: an array of {api, methods?, path_prefix?}.
bool read_grants(dom::element v, const ApiRegistry& apis, std::vector<Grant>* out, Failure* f) {
  static constexpr std::array<std::string_view, 3> kGrantMembers = {"api", "methods",
                                                                    "path_prefix"};
  dom::array array;
  if (v.get_array().get(array) != simdjson::SUCCESS) {
    *f = invalid_type("grants", "must be an array of grants");
    return false;
  }
  if (array.size() > kUserGrantsMax) {
    *f = invalid_value("grants", "too many grants");
    return false;
  }
  out->clear();
  out->reserve(array.size());
  size_t i = 0;
  for (dom::element e : array) {
    const std::string prefix = "grants[" + std::to_string(i++) + "]";
    dom::object object;
    if (e.get_object().get(object) != simdjson::SUCCESS) {
      *f = invalid_type(prefix, "a grant must be an object");
      return false;
    }
    const std::string member_prefix = prefix + ".";
    Grant grant;
    bool has_api = false;
    const bool ok = visit_members(
        object, kGrantMembers, member_prefix, f, [&](size_t index, dom::element value) {
          const std::string field = field_name(member_prefix, kGrantMembers[index]);
          std::string_view text;
          if (index == 0) {
            if (!read_string(value, field, kRecordStringBytesMax, &text, f)) return false;
            if (text == kAdminApi) {
              *f = invalid_value(field, "the admin API is granted by a key's apis, not by users");
              return false;
            }
            if (apis.find(text) == nullptr) {
              *f = field_failure(400, "unknown_api", field, "names an API that is not configured");
              return false;
            }
            grant.api = std::string(text);
            has_api = true;
            return true;
          }
          if (index == 1) {
            dom::array methods;
            if (value.get_array().get(methods) != simdjson::SUCCESS) {
              *f = invalid_type(field, "must be an array of HTTP methods");
              return false;
            }
            if (methods.size() > kGrantMethodsMax) {
              *f = invalid_value(field, "too many methods");
              return false;
            }
            for (dom::element m : methods) {
              std::string_view method;
              if (m.get_string().get(method) != simdjson::SUCCESS) {
                *f = invalid_type(field, "must be an array of HTTP methods");
                return false;
              }
              if (!valid_method_token(method)) {
                *f = invalid_value(field, "a method is an uppercase HTTP token such as GET");
                return false;
              }
              for (const std::string& earlier : grant.methods) {
                if (earlier == method) {
                  *f = invalid_value(field, "a method is listed twice");
                  return false;
                }
              }
              grant.methods.emplace_back(method);
            }
            return true;
          }
          if (!read_string(value, field, kRecordStringBytesMax, &text, f)) return false;
          if (!text.empty() && !prefix_is_valid(text)) {
            *f = invalid_value(field,
                               "a path prefix is empty or a normalized path starting with / "
                               "(no ; or ?; a space or non-ASCII character percent-encoded, "
                               "as in /caf%C3%A9)");
            return false;
          }
          grant.path_prefix = std::string(text);
          return true;
        });
    if (!ok) return false;
    if (!has_api) {
      *f = field_failure(400, "missing_field", field_name(member_prefix, "api"),
                         "a grant names its API");
      return false;
    }
    out->push_back(std::move(grant));
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// JSON output

void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  const int n = std::snprintf(buf, sizeof(buf), "%" PRIu64, v);
  out.append(buf, static_cast<size_t>(n));
}

void append_bool(std::string& out, bool b) { out += b ? "true" : "false"; }

void append_time(std::string& out, int64_t t) { append_json_string(out, format_rfc3339(t)); }

// A time, or `null` when there is none (no expiry, never used).
void append_time_or_null(std::string& out, std::optional<int64_t> t) {
  if (t) {
    append_time(out, *t);
  } else {
    out += "null";
  }
}

void append_string_array(std::string& out, const std::vector<std::string>& list) {
  out += '[';
  for (size_t i = 0; i < list.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, list[i]);
  }
  out += ']';
}

// A record as the API shows it: never the digest, and the plaintext only when given (create and
// rotate, the one time it is shown).
void append_record(std::string& out, const KeyRecord& r, std::optional<int64_t> last_used_at,
                   std::optional<std::string_view> plaintext = std::nullopt) {
  out += "{\"id\":";
  append_json_string(out, r.id);
  out += ",\"hint\":";
  append_json_string(out, r.hint);
  out += ",\"description\":";
  append_json_string(out, r.description);
  out += ",\"apis\":";
  append_string_array(out, r.apis);
  out += ",\"user\":";
  append_json_string_or_null(out, r.user);
  out += ",\"log_request\":";
  append_bool(out, r.log_request);
  out += ",\"log_response\":";
  append_bool(out, r.log_response);
  out += ",\"enabled\":";
  append_bool(out, r.enabled);
  out += ",\"created_at\":";
  append_time(out, r.created_at);
  out += ",\"updated_at\":";
  append_time(out, r.updated_at);
  out += ",\"expires_at\":";
  append_time_or_null(out, r.expires_at);
  out += ",\"last_used_at\":";
  append_time_or_null(out, last_used_at);
  if (plaintext) {
    out += ",\"key\":";
    append_json_string(out, *plaintext);
  }
  out += '}';
}

void append_user(std::string& out, const User& user) {
  out += "{\"name\":";
  append_json_string(out, user.name);
  out += ",\"grants\":[";
  for (size_t i = 0; i < user.grants.size(); ++i) {
    const Grant& g = user.grants[i];
    if (i > 0) out += ',';
    out += "{\"api\":";
    append_json_string(out, g.api);
    out += ",\"methods\":";
    append_string_array(out, g.methods);
    out += ",\"path_prefix\":";
    append_json_string(out, g.path_prefix);
    out += '}';
  }
  out += "]}";
}

AdminResponse json_response(int status, std::string body) {
  AdminResponse response;
  response.status = status;
  response.body = std::move(body);
  return response;
}

AdminResponse no_content() {
  AdminResponse response;
  response.status = 204;
  return response;
}

// ---------------------------------------------------------------------------------------------
// Key routes

Failure key_not_found() { return failure(404, "not_found", "no key with this id"); }

Failure user_not_found() { return failure(404, "not_found", "no user with this name"); }

// A fresh generated value; false when the random source fails.
bool new_key_value(const AdminContext& ctx, std::string* value) {
  std::array<uint8_t, kGeneratedKeyRandomBytes> bytes{};
  if (!ctx.random(bytes)) return false;
  *value = generate_key_value(bytes);
  return true;
}

bool new_key_id(const AdminContext& ctx, std::string* id) {
  std::array<uint8_t, kKeyIdRandomBytes> bytes{};
  if (!ctx.random(bytes)) return false;
  *id = make_key_id(bytes);
  return true;
}

void set_value(KeyRecord* r, std::string_view plaintext) {
  r->digest = digest_key(plaintext);
  r->hint = make_key_hint(plaintext);
}

// update_key's not_found means the key is gone or its user is: a key whose user was deleted cannot
// be changed until its user is set to null or to an existing user.
Failure update_failure(const AdminStoreResult& result, const KeyRecord& record, AdminStore& store) {
  switch (result.code) {
    case AdminStoreCode::kNotFound: {
      if (!record.user) return key_not_found();
      User user;
      const AdminStoreResult check = store.get_user(*record.user, &user);
      if (check.code == AdminStoreCode::kNotFound) {
        return field_failure(400, "unknown_user", "user", "the key's user does not exist");
      }
      return key_not_found();
    }
    case AdminStoreCode::kConflict:
      return failure(409, "conflict", "the key's value collides with another key");
    case AdminStoreCode::kIoError:
    case AdminStoreCode::kNotConfigured:
    case AdminStoreCode::kOk:
      break;
  }
  return store_unavailable(result);
}

AdminResponse create_key(const AdminRequest& request, AdminStore& store, const AdminContext& ctx) {
  JsonBody body;
  Failure f;
  if (!body.parse(request, &f)) return error_response(f);
  KeyFields fields;
  if (!read_key_fields(body.root(), KeyBody::kCreate, "", *ctx.apis, &fields, &f)) {
    return error_response(f);
  }
  // A key created expired could never be used: a wrong year or offset, not an intent (an
  // update may set a past time: that expires the key at once; an import keeps what it is given).
  if (fields.expires_at && *fields.expires_at && **fields.expires_at <= ctx.now) {
    return error_response(invalid_value("expires_at", "must be in the future"));
  }
  KeyRecord record;
  fields.apply_to(&record);
  record.created_at = ctx.now;
  record.updated_at = ctx.now;

  const bool operator_value = fields.key.has_value();
  std::string plaintext;
  if (operator_value) {
    plaintext = std::string(*fields.key);
  } else if (!new_key_value(ctx, &plaintext)) {
    return error_response(random_failed());
  }
  set_value(&record, plaintext);

  for (int attempt = 0;; ++attempt) {
    if (!new_key_id(ctx, &record.id)) return error_response(random_failed());
    const AdminStoreResult result = store.create_key(record);
    if (result.ok()) break;
    switch (result.code) {
      case AdminStoreCode::kConflict:
        // The store cannot say whether the id or the digest collided. An operator-chosen value can
        // repeat an existing one; a generated value cannot, so the id collided: retry.
        if (operator_value) {
          return error_response(
              field_failure(409, "conflict", "key", "a key with this value already exists"));
        }
        if (attempt == kCreateIdRetriesMax) {
          return error_response(failure(409, "conflict", "could not allocate a unique key id"));
        }
        continue;
      case AdminStoreCode::kNotFound:
        return error_response(
            field_failure(400, "unknown_user", "user", "no user with this name exists"));
      case AdminStoreCode::kIoError:
      case AdminStoreCode::kNotConfigured:
      case AdminStoreCode::kOk:
        return error_response(store_unavailable(result));
    }
  }
  std::string out;
  out.reserve(512);
  append_record(out, record, std::nullopt, plaintext);  // a new key: never used
  return json_response(201, std::move(out));
}

// What a listing pages through: keys by id (with the api and user filters) or users by name.
enum class Listing : uint8_t { kKeys, kUsers };

// GET /admin/users: a cursor is the page's last user name in hex. A name may hold any printable
// character, and in a query value ' ', '+', '%', '&' or '/' mean something unless the client
// percent-encodes them; hex digits mean nothing, so a cursor put into a URL as it came (or
// encoded anyway) still names exactly the same bytes.
std::string user_cursor(std::string_view name) {
  std::string out;
  out.reserve(2 * name.size());
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    out += kHexDigits[u >> 4];
    out += kHexDigits[u & 0xf];
  }
  return out;
}

// The name in a non-empty user_cursor(). Any bytes are taken, not only what a name may hold
// now: the cursor is a position in the store's byte order, and a page may end at a name stored
// under older rules.
bool decode_user_cursor(std::string_view cursor, std::string* name) {
  if (cursor.size() % 2 != 0 || cursor.size() > 2 * kUserNameBytesMax) return false;
  name->clear();
  for (size_t i = 0; i < cursor.size(); i += 2) {
    const int hi = hex_value(cursor[i]);
    const int lo = hex_value(cursor[i + 1]);
    if (hi < 0 || lo < 0) return false;
    name->push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

struct ListQuery {
  size_t limit = kListLimitDefault;
  std::string cursor;  // where the page starts after: a key id, or a decoded user name; "" = first
  std::optional<std::string> api;
  std::optional<std::string> user;
  // Keys never used, or last used before this (Unix seconds): candidates to disable.
  std::optional<int64_t> unused_since;
};

// Calls `visit(name, value)` for every name=value pair of a query string, both percent-decoded
// ('+' is a space); empty pairs and `key` (it carried the admin key the request was
// authenticated with) are skipped. False when a pair is malformed (with `*f` set) or `visit`
// returned false (after setting `*f`).
template <typename Visit>
bool visit_query(std::string_view query, Failure* f, Visit&& visit) {
  std::string name;
  std::string value;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    const std::string_view raw_value =
        eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    if (!percent_decode(pair.substr(0, eq), true, &name) ||
        !percent_decode(raw_value, true, &value)) {
      *f = failure(400, "invalid_value", "malformed percent-encoding in the query string");
      return false;
    }
    if (name == kKeyParamName) continue;
    if (!visit(name, value)) return false;
  }
  return true;
}

// The query of GET /admin/keys (limit, cursor, api, user, unused_since) or GET /admin/users
// (limit, cursor).
bool parse_list_query(std::string_view query, Listing listing, ListQuery* q, Failure* f) {
  bool seen_limit = false;
  bool seen_cursor = false;
  return visit_query(query, f, [&](const std::string& name, const std::string& value) {
    bool* seen = nullptr;
    if (name == "limit") {
      seen = &seen_limit;
    } else if (name == "cursor") {
      seen = &seen_cursor;
    } else if (listing == Listing::kUsers ||
               (name != "api" && name != "user" && name != "unused_since")) {
      *f = field_failure(400, "unknown_field", name, "unknown query parameter");
      return false;
    }
    const bool repeated = seen != nullptr         ? *seen
                          : name == "api"         ? q->api.has_value()
                          : name == "unused_since" ? q->unused_since.has_value()
                                                  : q->user.has_value();
    if (repeated) {
      *f = invalid_value(name, "query parameter given more than once");
      return false;
    }
    if (seen != nullptr) *seen = true;
    if (name == "limit") {
      uint64_t limit = 0;
      if (!parse_decimal(value, kListLimitMax, &limit) || limit < 1) {
        *f = invalid_value("limit", "limit is an integer from 1 to 1000");
        return false;
      }
      q->limit = static_cast<size_t>(limit);
    } else if (name == "cursor") {
      // Empty starts at the first record, as no cursor does.
      bool ok = true;
      if (value.empty()) {
        q->cursor.clear();
      } else if (listing == Listing::kKeys) {
        ok = is_key_id(value);
        q->cursor = value;
      } else {
        ok = decode_user_cursor(value, &q->cursor);
      }
      if (!ok) {
        *f = invalid_value("cursor", "not a cursor returned by this API");
        return false;
      }
    } else if (name == "api") {
      if (value.empty()) {
        *f = invalid_value("api", "the api filter names an API");
        return false;
      }
      q->api = value;
    } else if (name == "unused_since") {
      int64_t since = 0;
      if (!parse_rfc3339(value, &since)) {
        *f = invalid_value("unused_since", "unused_since is an RFC 3339 time");
        return false;
      }
      q->unused_since = since;
    } else {
      if (!may_name_stored_user(value)) {
        *f = invalid_value("user", kStoredUserNameRule);
        return false;
      }
      q->user = value;
    }
    return true;
  });
}

// Pages through the store until `limit` records match the filters, the store is exhausted, or the
// scan budget (kListScanFactor * limit records) is spent. next_cursor is the last id examined
// whenever records may remain after it, so a filtered page can come back short or empty with a
// cursor; null means the listing is complete.
AdminResponse list_keys(const AdminRequest& request, AdminStore& store) {
  ListQuery q;
  Failure f;
  if (!parse_list_query(request.query, Listing::kKeys, &q, &f)) return error_response(f);

  std::string out;
  out.reserve(256 * q.limit);
  out += "{\"keys\":[";
  std::string after = q.cursor;
  size_t matched = 0;
  size_t budget = kListScanFactor * q.limit;
  bool more = true;
  std::vector<KeyRecord> page;
  while (matched < q.limit && budget > 0 && more) {
    // Unfiltered, every record fetched is shown; filtered, fetch in large batches since most may
    // not match. One record more than may be examined shows whether the store holds more.
    const bool filtered = q.api || q.user || q.unused_since;
    const size_t fetch =
        filtered ? std::min(budget, kListLimitMax) : std::min(q.limit - matched, budget);
    page.clear();
    const AdminStoreResult result = store.list_keys(after, fetch + 1, &page);
    if (!result.ok()) return error_response(store_unavailable(result));
    size_t examined = 0;
    for (const KeyRecord& r : page) {
      if (examined == fetch || matched == q.limit) break;
      ++examined;
      --budget;
      after = r.id;
      if (q.api && !r.has_api(*q.api)) continue;
      if (q.user && r.user != *q.user) continue;
      const std::optional<int64_t> last_used_at = store.get_last_used(r.id);
      if (q.unused_since && last_used_at && *last_used_at >= *q.unused_since) continue;
      if (matched > 0) out += ',';
      append_record(out, r, last_used_at);
      ++matched;
    }
    more = page.size() > examined;
  }
  out += "],\"next_cursor\":";
  if (more) {
    append_json_string(out, after);
  } else {
    out += "null";
  }
  out += '}';
  return json_response(200, std::move(out));
}

AdminResponse get_key(std::string_view id, AdminStore& store) {
  if (!is_key_id(id)) return error_response(key_not_found());
  KeyRecord record;
  const AdminStoreResult result = store.get_key(id, &record);
  if (result.code == AdminStoreCode::kNotFound) return error_response(key_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));
  std::string out;
  append_record(out, record, store.get_last_used(record.id));
  return json_response(200, std::move(out));
}

AdminResponse patch_key(std::string_view id, const AdminRequest& request, AdminStore& store,
                        const AdminContext& ctx) {
  JsonBody body;
  Failure f;
  if (!body.parse(request, &f)) return error_response(f);
  KeyFields fields;
  if (!read_key_fields(body.root(), KeyBody::kPatch, "", *ctx.apis, &fields, &f)) {
    return error_response(f);
  }
  if (!is_key_id(id)) return error_response(key_not_found());
  KeyRecord record;
  AdminStoreResult result = store.get_key(id, &record);
  if (result.code == AdminStoreCode::kNotFound) return error_response(key_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));
  // update_key's not_found speaks of the key, so a newly named user is checked here.
  if (fields.user && *fields.user && *fields.user != record.user) {
    User user;
    result = store.get_user(**fields.user, &user);
    if (result.code == AdminStoreCode::kNotFound) {
      return error_response(
          field_failure(400, "unknown_user", "user", "no user with this name exists"));
    }
    if (!result.ok()) return error_response(store_unavailable(result));
  }
  fields.apply_to(&record);
  record.updated_at = ctx.now;
  result = store.update_key(record, std::nullopt);
  if (!result.ok()) return error_response(update_failure(result, record, store));
  std::string out;
  append_record(out, record, store.get_last_used(record.id));
  return json_response(200, std::move(out));
}

AdminResponse delete_key(std::string_view id, AdminStore& store) {
  if (!is_key_id(id)) return error_response(key_not_found());
  const AdminStoreResult result = store.delete_key(id);
  if (result.code == AdminStoreCode::kNotFound) return error_response(key_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));
  return no_content();
}

AdminResponse rotate_key(std::string_view id, const AdminRequest& request, AdminStore& store,
                         const AdminContext& ctx) {
  int64_t grace_seconds = 0;
  if (!request.body.empty()) {
    static constexpr std::array<std::string_view, 1> kRotateMembers = {"grace_seconds"};
    JsonBody body;
    Failure f;
    if (!body.parse(request, &f)) return error_response(f);
    const bool ok = visit_members(body.root(), kRotateMembers, "", &f, [&](size_t, dom::element v) {
      if (!v.is_int64() && !v.is_uint64()) {
        f = invalid_type("grace_seconds", "must be an integer");
        return false;
      }
      if (v.get_int64().get(grace_seconds) != simdjson::SUCCESS || grace_seconds < 0 ||
          grace_seconds > kRotateGraceSecondsMax) {
        f = invalid_value("grace_seconds", "grace_seconds is 0 to 2592000 (30 days)");
        return false;
      }
      return true;
    });
    if (!ok) return error_response(f);
  }
  if (!is_key_id(id)) return error_response(key_not_found());
  KeyRecord record;
  AdminStoreResult result = store.get_key(id, &record);
  if (result.code == AdminStoreCode::kNotFound) return error_response(key_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));

  std::string plaintext;
  if (!new_key_value(ctx, &plaintext)) return error_response(random_failed());
  // A rotation keeps at most one previous value: rotating again during a grace period ends the
  // earlier grace at once. The record's own fields mirror `previous` for stores that keep them.
  std::optional<AdminStore::PreviousDigest> previous;
  if (grace_seconds > 0) {
    previous = AdminStore::PreviousDigest{record.digest, ctx.now + grace_seconds};
    record.previous_digest = record.digest;
    record.previous_valid_until = ctx.now + grace_seconds;
  } else {
    record.previous_digest.reset();
    record.previous_valid_until = 0;
  }
  set_value(&record, plaintext);
  record.updated_at = ctx.now;
  result = store.update_key(record, previous);
  if (!result.ok()) return error_response(update_failure(result, record, store));
  std::string out;
  out.reserve(512);
  // Same id, same key: its uses before the rotation stay its uses.
  append_record(out, record, store.get_last_used(record.id), plaintext);
  return json_response(201, std::move(out));
}

std::string import_field(size_t index, std::string_view member) {
  std::string out = "keys[" + std::to_string(index) + "]";
  if (!member.empty()) {
    out += '.';
    out += member;
  }
  return out;
}

// Validates every record before the one store call, so a bad record anywhere stores nothing.
AdminResponse import_keys(const AdminRequest& request, AdminStore& store, const AdminContext& ctx) {
  static constexpr std::array<std::string_view, 1> kImportMembers = {"keys"};
  JsonBody body;
  Failure f;
  if (!body.parse(request, &f)) return error_response(f);
  dom::array keys;
  bool has_keys = false;
  const bool ok = visit_members(body.root(), kImportMembers, "", &f, [&](size_t, dom::element v) {
    if (v.get_array().get(keys) != simdjson::SUCCESS) {
      f = invalid_type("keys", "must be an array of key objects");
      return false;
    }
    has_keys = true;
    return true;
  });
  if (!ok) return error_response(f);
  if (!has_keys) {
    return error_response(field_failure(400, "missing_field", "keys", "the keys are required"));
  }
  const size_t n = keys.size();
  if (n > ctx.import_keys_max) {
    return error_response(
        field_failure(413, "body_too_large", "keys", "too many keys in one import"));
  }

  std::vector<KeyRecord> records;
  records.reserve(n);
  // Key values are views into the parsed body, alive as long as `body`.
  std::unordered_map<std::string_view, size_t> value_index;
  value_index.reserve(n);
  std::unordered_set<std::string> ids;
  ids.reserve(n);
  size_t i = 0;
  for (dom::element e : keys) {
    dom::object object;
    if (e.get_object().get(object) != simdjson::SUCCESS) {
      return error_response(invalid_type(import_field(i, ""), "a key must be an object"));
    }
    KeyFields fields;
    if (!read_key_fields(object, KeyBody::kImport, import_field(i, "") + ".", *ctx.apis, &fields,
                         &f)) {
      return error_response(f);
    }
    if (!value_index.emplace(*fields.key, i).second) {
      return error_response(field_failure(409, "conflict", import_field(i, "key"),
                                          "the same key value appears twice in this import"));
    }
    KeyRecord record;
    fields.apply_to(&record);
    set_value(&record, *fields.key);
    record.created_at = ctx.now;
    record.updated_at = ctx.now;
    do {
      if (!new_key_id(ctx, &record.id)) return error_response(random_failed());
    } while (!ids.insert(record.id).second);
    records.push_back(std::move(record));
    ++i;
  }

  std::string out;
  out.reserve(32 + 16 * n);
  out += "{\"imported\":";
  append_uint(out, n);
  out += ",\"ids\":[";
  for (size_t k = 0; k < n; ++k) {
    if (k > 0) out += ',';
    append_json_string(out, records[k].id);
  }
  out += "]}";
  if (n > 0) {
    const AdminStoreResult result = store.import_keys(std::move(records));
    const auto failed_field = [&](std::string_view member) -> std::optional<std::string> {
      if (result.failed_index < n) return import_field(result.failed_index, member);
      return std::nullopt;
    };
    switch (result.code) {
      case AdminStoreCode::kOk:
        break;
      case AdminStoreCode::kConflict:
        return error_response(
            Failure{409, "conflict", failed_field("key"), "a key with this value already exists"});
      case AdminStoreCode::kNotFound:
        return error_response(
            Failure{400, "unknown_user", failed_field("user"), "no user with this name exists"});
      case AdminStoreCode::kIoError:
      case AdminStoreCode::kNotConfigured:
        return error_response(store_unavailable(result));
    }
  }
  return json_response(200, std::move(out));
}

// ---------------------------------------------------------------------------------------------
// User routes

// The decoded {name} segment; false (with `*f` set) when it cannot name a user.
bool decode_user_name(std::string_view segment, std::string* name, Failure* f) {
  if (!percent_decode(segment, false, name)) {
    *f = invalid_value("name", "malformed percent-encoding in the user name");
    return false;
  }
  if (!may_name_stored_user(*name)) {
    *f = invalid_value("name", kStoredUserNameRule);
    return false;
  }
  return true;
}

AdminResponse create_user(const AdminRequest& request, AdminStore& store, const AdminContext& ctx) {
  static constexpr std::array<std::string_view, 2> kUserMembers = {"name", "grants"};
  JsonBody body;
  Failure f;
  if (!body.parse(request, &f)) return error_response(f);
  User user;
  bool has_name = false;
  const bool ok =
      visit_members(body.root(), kUserMembers, "", &f, [&](size_t index, dom::element v) {
        if (index == 1) return read_grants(v, *ctx.apis, &user.grants, &f);
        std::string_view name;
        if (v.get_string().get(name) != simdjson::SUCCESS) {
          f = invalid_type("name", "must be a string");
          return false;
        }
        if (!valid_user_name(name)) {
          f = invalid_value("name", kUserNameRule);
          return false;
        }
        user.name = std::string(name);
        has_name = true;
        return true;
      });
  if (!ok) return error_response(f);
  if (!has_name) {
    return error_response(field_failure(400, "missing_field", "name", "the user name is required"));
  }
  User existing;
  AdminStoreResult result = store.get_user(user.name, &existing);
  if (result.ok()) {
    return error_response(
        field_failure(409, "conflict", "name", "a user with this name already exists"));
  }
  if (result.code != AdminStoreCode::kNotFound) return error_response(store_unavailable(result));
  result = store.put_user(user);
  if (!result.ok()) return error_response(store_unavailable(result));
  std::string out;
  append_user(out, user);
  return json_response(201, std::move(out));
}

// Users in name order, `limit` at a time, read from the cursor on (the store seeks there).
// next_cursor names the page's last user, and is null once no user follows it. The next page
// starts after that name whether or not it is still stored, so users created or deleted between
// pages do not upset the paging: each user present throughout is listed exactly once.
AdminResponse list_users(const AdminRequest& request, AdminStore& store) {
  ListQuery q;
  Failure f;
  if (!parse_list_query(request.query, Listing::kUsers, &q, &f)) return error_response(f);
  std::vector<User> users;
  // One user more than the page holds shows whether the store holds more.
  const AdminStoreResult result = store.list_users(q.cursor, q.limit + 1, &users);
  if (!result.ok()) return error_response(store_unavailable(result));
  bool more = users.size() > q.limit;
  if (more) users.resize(q.limit);
  std::string out = "{\"users\":[";
  size_t listed = 0;
  while (listed < users.size()) {
    // A user may hold up to kUserGrantsMax grants: a page of the largest would run to
    // gigabytes, so it ends early (with a cursor) once it passes kUserListBytesMax.
    if (listed > 0 && out.size() >= kUserListBytesMax) {
      more = true;
      break;
    }
    if (listed > 0) out += ',';
    append_user(out, users[listed]);
    ++listed;
  }
  out += "],\"next_cursor\":";
  if (more) {
    append_json_string(out, user_cursor(users[listed - 1].name));
  } else {
    out += "null";
  }
  out += '}';
  return json_response(200, std::move(out));
}

AdminResponse get_user(std::string_view segment, AdminStore& store) {
  std::string name;
  Failure f;
  if (!decode_user_name(segment, &name, &f)) return error_response(f);
  User user;
  const AdminStoreResult result = store.get_user(name, &user);
  if (result.code == AdminStoreCode::kNotFound) return error_response(user_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));
  std::string out;
  append_user(out, user);
  return json_response(200, std::move(out));
}

AdminResponse patch_user(std::string_view segment, const AdminRequest& request, AdminStore& store,
                         const AdminContext& ctx) {
  static constexpr std::array<std::string_view, 1> kPatchMembers = {"grants"};
  std::string name;
  Failure f;
  if (!decode_user_name(segment, &name, &f)) return error_response(f);
  JsonBody body;
  if (!body.parse(request, &f)) return error_response(f);
  std::vector<Grant> grants;
  bool has_grants = false;
  const bool ok = visit_members(body.root(), kPatchMembers, "", &f, [&](size_t, dom::element v) {
    has_grants = true;
    return read_grants(v, *ctx.apis, &grants, &f);
  });
  if (!ok) return error_response(f);
  if (!has_grants) {
    return error_response(field_failure(400, "missing_field", "grants", "the grants are required"));
  }
  User user;
  AdminStoreResult result = store.get_user(name, &user);
  if (result.code == AdminStoreCode::kNotFound) return error_response(user_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));
  user.grants = std::move(grants);
  result = store.put_user(user);
  if (!result.ok()) return error_response(store_unavailable(result));
  std::string out;
  append_user(out, user);
  return json_response(200, std::move(out));
}

AdminResponse delete_user(std::string_view segment, AdminStore& store) {
  std::string name;
  Failure f;
  if (!decode_user_name(segment, &name, &f)) return error_response(f);
  const AdminStoreResult result = store.delete_user(name);
  if (result.code == AdminStoreCode::kNotFound) return error_response(user_not_found());
  if (!result.ok()) return error_response(store_unavailable(result));
  return no_content();
}

AdminResponse list_apis(const AdminContext& ctx) {
  std::string out = "{\"apis\":[";
  const std::vector<ApiConfig>& apis = ctx.apis->apis();
  for (size_t i = 0; i < apis.size(); ++i) {
    if (i > 0) out += ',';
    out += "{\"name\":";
    append_json_string(out, apis[i].name);
    out += ",\"routes\":";
    append_string_array(out, apis[i].routes);
    out += '}';
  }
  out += "]}";
  return json_response(200, std::move(out));
}

// POST /admin/reload: {"generation","apis","restart_settings":[...],"workers_pending":[...],
// "applied_settings":[...]} once the new APIs and settings serve on every worker but those
// named in workers_pending (stalled ones); 400 reload_refused with the reason when the file is
// invalid (nothing changed); 503 reload_unavailable when keygate cannot reload now.
AdminResponse reload_config(const AdminContext& ctx) {
  if (!ctx.reload) {
    return error_response(failure(503, "reload_unavailable", "this keygate cannot reload"));
  }
  const ReloadOutcome outcome = ctx.reload();
  if (!outcome.applied) {
    return error_response(failure(outcome.unavailable ? 503 : 400,
                                  outcome.unavailable ? "reload_unavailable" : "reload_refused",
                                  outcome.error));
  }
  std::string out = "{\"generation\":";
  append_uint(out, outcome.generation);
  out += ",\"apis\":";
  append_uint(out, outcome.apis);
  out += ",\"restart_settings\":";
  append_string_array(out, outcome.restart_settings);
  out += ",\"workers_pending\":[";
  for (size_t i = 0; i < outcome.workers_pending.size(); ++i) {
    if (i > 0) out += ',';
    append_uint(out, outcome.workers_pending[i]);
  }
  out += ']';
  // After the older fields: clients that read those keep working.
  out += ",\"applied_settings\":";
  append_string_array(out, outcome.applied_settings);
  out += '}';
  return json_response(200, std::move(out));
}

// Backups: 409 backups_disabled says how to turn them on; a failure is the operator's to fix
// (disk full, permissions), not the client's, and retrying will not help until then: 500 with
// the reason.
Failure backups_disabled() {
  return failure(409, "backups_disabled",
                 "backups are disabled: set [backup] dir in the config file and restart keygate");
}

void append_optional_uint(std::string& out, const std::optional<uint64_t>& v) {
  if (v) {
    append_uint(out, *v);
  } else {
    out += "null";
  }
}

void append_backup(std::string& out, const BackupInfo& b) {
  out += "{\"name\":";
  append_json_string(out, b.name);
  out += ",\"path\":";
  append_json_string(out, b.path);
  out += ",\"created_at\":";
  append_time(out, b.created);
  out += ",\"seq\":";
  append_uint(out, b.seq);
  out += ",\"bytes\":";
  append_uint(out, b.bytes);
  out += ",\"keys\":";
  append_optional_uint(out, b.keys);
  out += ",\"users\":";
  append_optional_uint(out, b.users);
  out += '}';
}

// POST /admin/backups: 201 with the backup made. It runs on the executor's backup lane
// (is_backup_route), one at a time, so a second request waits for the first (each makes its own
// backup) while the key changes go on: every change that returned before the request is in the
// backup; one made while it runs may be or not.
AdminResponse create_backup(AdminStore& store, const AdminContext& ctx) {
  BackupInfo backup;
  std::string error;
  const AdminStoreResult result = store.create_backup(ctx.now, &backup, &error);
  if (result.code == AdminStoreCode::kNotConfigured) return error_response(backups_disabled());
  if (!result.ok()) {
    if (error.empty()) error = result.message;
    return error_response(failure(500, "backup_failed", error));
  }
  std::string out;
  append_backup(out, backup);
  return json_response(201, std::move(out));
}

// GET /admin/backups: {"backups":[...],"in_progress":...} newest first. It runs on a lane of
// its own (is_backup_listing), so it answers while a backup is being made, and says so.
AdminResponse list_backups(AdminStore& store) {
  BackupListing listing;
  std::string error;
  const AdminStoreResult result = store.list_backups(&listing, &error);
  if (result.code == AdminStoreCode::kNotConfigured) return error_response(backups_disabled());
  if (!result.ok()) {
    if (error.empty()) error = result.message;
    return error_response(failure(500, "backup_failed", error));
  }
  std::string out = "{\"backups\":[";
  for (size_t i = 0; i < listing.backups.size(); ++i) {
    if (i > 0) out += ',';
    append_backup(out, listing.backups[i]);
  }
  out += "],\"in_progress\":";
  if (listing.in_progress_started) {
    out += "{\"started_at\":";
    append_time(out, *listing.in_progress_started);
    out += '}';
  } else {
    out += "null";
  }
  out += '}';
  return json_response(200, std::move(out));
}

AdminResponse instance_stats(const AdminContext& ctx) {
  std::vector<StatsGroup> groups;
  if (ctx.stats) ctx.stats(&groups);
  std::string out = "{";
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g > 0) out += ',';
    append_json_string(out, groups[g].name);
    out += ':';
    if (!groups[g].present) {
      out += "null";
      continue;
    }
    out += '{';
    for (size_t v = 0; v < groups[g].values.size(); ++v) {
      if (v > 0) out += ',';
      append_json_string(out, groups[g].values[v].first);
      out += ':';
      out += std::to_string(groups[g].values[v].second);
    }
    out += '}';
  }
  out += '}';
  return json_response(200, std::move(out));
}

// The same counters in the Prometheus text exposition format (version 0.0.4), for scrapers.
// Metric names keep only [a-zA-Z0-9_] (anything else becomes '_'); label values are escaped as
// the format asks (backslash, double quote, line feed). Every series of a metric follows its
// one TYPE line, also when several groups feed it (data_responses and admin_responses).
void append_metric_name(std::string& out, std::string_view text) {
  for (const char c : text) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    out += ok ? c : '_';
  }
}

void append_label_value(std::string& out, std::string_view text) {
  for (const char c : text) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

AdminResponse instance_metrics(const AdminContext& ctx) {
  std::vector<StatsGroup> groups;
  if (ctx.stats) ctx.stats(&groups);
  std::string out;
  struct Labelled {
    std::string metric;
    std::string series;
    bool gauge = false;
  };
  std::vector<Labelled> labelled;
  for (const StatsGroup& group : groups) {
    if (!group.present) continue;
    if (!group.metric.empty()) {
      std::string metric = "keygate_";
      append_metric_name(metric, group.metric);
      auto at = std::find_if(labelled.begin(), labelled.end(),
                             [&](const Labelled& m) { return m.metric == metric; });
      if (at == labelled.end()) {
        at = labelled.insert(labelled.end(), Labelled{metric, {}, group.metric_gauge});
      }
      for (const auto& [name, value] : group.values) {
        std::string& series = at->series;
        series += metric;
        series += '{';
        if (!group.labels.empty()) series.append(group.labels).append(",");
        append_metric_name(series, group.label);
        series += "=\"";
        append_label_value(series, name);
        series += "\"} ";
        series += std::to_string(value);
        series += '\n';
      }
      continue;
    }
    for (const auto& [name, value] : group.values) {
      const bool gauge =
          std::find(group.gauges.begin(), group.gauges.end(), name) != group.gauges.end();
      std::string metric = "keygate_";
      append_metric_name(metric, group.name);
      metric += '_';
      append_metric_name(metric, name);
      if (!gauge && !metric.ends_with("_total")) metric += "_total";
      out.append("# TYPE ").append(metric).append(gauge ? " gauge\n" : " counter\n");
      out.append(metric).append(" ").append(std::to_string(value)).append("\n");
    }
  }
  for (const Labelled& m : labelled) {
    out.append("# TYPE ").append(m.metric).append(m.gauge ? " gauge\n" : " counter\n");
    out.append(m.series);
  }
  AdminResponse response;
  response.status = 200;
  response.body = std::move(out);
  response.content_type = "text/plain; version=0.0.4; charset=utf-8";
  return response;
}

// ---------------------------------------------------------------------------------------------
// Access log

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// since/until: RFC 3339 like every time of the admin API (fractions of a second are dropped), as
// microseconds since 1970 to compare with the records' "time_us". The log's own "0 = unbounded"
// cannot be asked for by a time: since=1970-01-01T00:00:00Z is unbounded anyway, and until at or
// before it is refused (nothing is logged before 1970).
bool read_log_time(const std::string& value, const char* field, int64_t* us, Failure* f) {
  int64_t seconds = 0;
  if (!parse_rfc3339(value, &seconds)) {
    *f = invalid_value(field, "not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)");
    return false;
  }
  if (seconds < 0 || (seconds == 0 && std::string_view(field) == "until")) {
    *f = invalid_value(field, "times start after 1970-01-01T00:00:00Z");
    return false;
  }
  // Four-digit years keep this far from overflow (9999-12-31 is 2.5e17 us).
  *us = seconds * 1'000'000;
  return true;
}

bool parse_log_query(std::string_view query, LogQuery* q, Failure* f) {
  static constexpr std::array<std::string_view, 7> kParams = {"key_id", "status", "since", "until",
                                                              "limit",  "cursor", "after"};
  enum : size_t { kKeyId, kStatus, kSince, kUntil, kLimit, kCursor, kAfter };
  q->limit = kLogLimitDefault;
  q->scan_bytes_max = kLogScanBytesMax;
  uint32_t seen = 0;
  const bool ok = visit_query(query, f, [&](const std::string& name, const std::string& value) {
    size_t index = kParams.size();
    for (size_t i = 0; i < kParams.size(); ++i) {
      if (kParams[i] == name) index = i;
    }
    if (index == kParams.size()) {
      *f = field_failure(400, "unknown_field", name, "unknown query parameter");
      return false;
    }
    const uint32_t bit = uint32_t{1} << index;
    if ((seen & bit) != 0) {
      *f = invalid_value(name, "query parameter given more than once");
      return false;
    }
    seen |= bit;
    uint64_t n = 0;
    switch (index) {
      case kKeyId:
        if (!is_key_id(value)) {
          *f = invalid_value("key_id", "a key id is \"k\" and 12 base62 characters");
          return false;
        }
        q->key_id = value;
        return true;
      case kStatus:
        if (!parse_decimal(value, 599, &n) || n < 100) {
          *f = invalid_value("status", "status is an HTTP status code from 100 to 599");
          return false;
        }
        q->status = static_cast<int>(n);
        return true;
      case kSince:
        return read_log_time(value, "since", &q->since_us, f);
      case kUntil:
        return read_log_time(value, "until", &q->until_us, f);
      case kLimit:
        if (!parse_decimal(value, kLogLimitMax, &n) || n < 1) {
          *f = invalid_value("limit", "limit is an integer from 1 to 1000");
          return false;
        }
        q->limit = static_cast<uint32_t>(n);
        return true;
      case kCursor:
        // Empty starts at the newest record, as for the key listing.
        if (!value.empty() && (!parse_decimal(value, kU64Max, &n) || n == 0)) {
          *f = invalid_value("cursor", "not a cursor returned by this API");
          return false;
        }
        q->before_seq = n;
        return true;
      case kAfter:
        // Seqs start at 1; the log reads 0 as "not following".
        if (!parse_decimal(value, kU64Max, &n) || n == 0) {
          *f = invalid_value("after", "after is a record's seq (from 1) or a follow next_cursor");
          return false;
        }
        q->after_seq = n;
        return true;
    }
    return false;
  });
  if (!ok) return false;
  if ((seen & (uint32_t{1} << kCursor)) != 0 && (seen & (uint32_t{1} << kAfter)) != 0) {
    *f = invalid_value("after", "cursor (newest first) and after (follow) exclude each other");
    return false;
  }
  if (q->since_us != 0 && q->until_us != 0 && q->since_us >= q->until_us) {
    *f = invalid_value("until", "until must be later than since");
    return false;
  }
  return true;
}

Failure logs_unavailable(const AdminStoreResult& result) {
  const std::string_view message = result.message != nullptr && result.message[0] != '\0'
                                       ? result.message
                                       : "the access log is unavailable";
  return failure(503, "logs_unavailable", message);
}

// Records go out verbatim: keygate wrote them as one JSON object per line. They come from disk,
// so each is still checked to be one, and a line that is not (damage) is left out rather than
// breaking the whole response.
AdminResponse query_logs(const AdminRequest& request, AdminStore& store) {
  LogQuery q;
  Failure f;
  if (!parse_log_query(request.query, &q, &f)) return error_response(f);
  LogPage page;
  const AdminStoreResult result = store.query_logs(q, &page);
  if (!result.ok()) return error_response(logs_unavailable(result));

  size_t bytes = 64;
  for (const std::string& record : page.records) bytes += record.size() + 1;
  std::string out;
  out.reserve(bytes);
  out += "{\"records\":[";
  dom::parser parser;
  bool first = true;
  for (const std::string& record : page.records) {
    dom::object object;
    if (parser.parse(record).get_object().get(object) != simdjson::SUCCESS) continue;
    if (!first) out += ',';
    first = false;
    out += record;
  }
  out += "],\"next_cursor\":";
  if (page.next_cursor == 0) {
    out += "null";
  } else {
    out += '"';
    append_uint(out, page.next_cursor);
    out += '"';
  }
  if (page.missing_from != 0) {
    out += ",\"missing\":{\"from\":\"";
    append_uint(out, page.missing_from);
    out += "\",\"to\":\"";
    append_uint(out, page.missing_to);
    out += "\"}";
  }
  out += '}';
  return json_response(200, std::move(out));
}

}  // namespace

// The key that authenticated the request, checked again now that every change queued ahead of
// it has run (see AdminRequest::key_id): the worker's verdict may be stale. Same answers as the
// worker's checks; false with `*out` set when the key no longer may call the admin API.
bool key_still_admits(const AdminRequest& request, AdminStore& store, int64_t now,
                      AdminResponse* out) {
  if (request.key_id.empty()) return true;
  KeyRecord record;
  const AdminStoreResult result = store.get_key(request.key_id, &record);
  if (!result.ok() && result.code != AdminStoreCode::kNotFound) {
    *out = error_response(store_unavailable(result));
    return false;
  }
  const bool current = digests_equal(record.digest, request.key_digest);
  const bool in_grace = record.previous_digest &&
                        digests_equal(*record.previous_digest, request.key_digest) &&
                        now < record.previous_valid_until;
  if (!result.ok() || !(current || in_grace) || !record.usable_at(now)) {
    *out = error_response(failure(401, "invalid_api_key", "the API key is not valid"));
    out->challenge = true;
    return false;
  }
  if (!record.has_api(kAdminApi)) {
    *out = error_response(
        failure(403, "api_not_permitted", "the API key may not call this API"));
    return false;
  }
  return true;
}

AdminResponse execute_admin(const AdminRequest& request, AdminStore& store,
                            const AdminContext& ctx) {
  KEYGATE_ASSERT(ctx.apis != nullptr);
  KEYGATE_ASSERT(ctx.random != nullptr);
  const RouteMatch match = match_route(request.path);
  if (match.route == Route::kNone) {
    return error_response(failure(404, "not_found", "no such admin route"));
  }
  if (AdminResponse refused; !key_still_admits(request, store, ctx.now, &refused)) {
    return refused;
  }
  const std::string_view allow = allowed_methods(match.route);
  if (!method_allowed(allow, request.method)) {
    AdminResponse response = error_response(
        failure(405, "method_not_allowed", "this method is not allowed on this route"));
    response.allow = allow;
    return response;
  }
  // Import takes the listener's body limit (bulk); every other route is small.
  if (match.route != Route::kKeysImport && request.body.size() > ctx.small_body_bytes_max) {
    return error_response(failure(413, "body_too_large", "request body too large"));
  }
  const std::string_view m = request.method;
  // Every POST and PATCH route that reads a body reads JSON (reload and backups read none, and
  // take an empty or JSON one alike). One sent as another media type (a form,
  // text/plain: `curl -d` without -H, a client's mistake) is refused for what it is instead of
  // failing as invalid_json, or parsing by accident. No Content-Type is taken as JSON: it
  // claims nothing, raw clients (nc, scripts) often leave it out, and keygate has no ambient
  // credentials (no cookies; the key is in every request) that would make this a CSRF guard.
  // An empty body has nothing to mistake (rotate's is optional).
  if ((m == "POST" || m == "PATCH") && !request.body.empty() && !request.content_type.empty() &&
      !is_json_media_type(request.content_type)) {
    return error_response(failure(415, "unsupported_media_type",
                                  "the body must be JSON (Content-Type: application/json)"));
  }
  // Only the listings read a query. Elsewhere a parameter (but the admin key's own `key`) was
  // ignored, so DELETE /admin/keys/{id}?dry_run=1 deleted and POST /admin/keys?user=bob made a
  // key without a user: refused instead, as the listings refuse one they do not know.
  const bool reads_query = m == "GET" && (match.route == Route::kKeys ||
                                          match.route == Route::kUsers ||
                                          match.route == Route::kLogs);
  if (Failure f; !reads_query && !visit_query(request.query, &f, [&f](const std::string& name,
                                                                       const std::string&) {
        f = field_failure(400, "unknown_field", name, "this route takes no query parameter");
        return false;
      })) {
    return error_response(f);
  }
  switch (match.route) {
    case Route::kKeys:
      return m == "GET" ? list_keys(request, store) : create_key(request, store, ctx);
    case Route::kKeysImport:
      return import_keys(request, store, ctx);
    case Route::kKey:
      if (m == "GET") return get_key(match.param, store);
      if (m == "PATCH") return patch_key(match.param, request, store, ctx);
      return delete_key(match.param, store);
    case Route::kKeyRotate:
      return rotate_key(match.param, request, store, ctx);
    case Route::kUsers:
      return m == "GET" ? list_users(request, store) : create_user(request, store, ctx);
    case Route::kUser:
      if (m == "GET") return get_user(match.param, store);
      if (m == "PATCH") return patch_user(match.param, request, store, ctx);
      return delete_user(match.param, store);
    case Route::kApis:
      return list_apis(ctx);
    case Route::kLogs:
      return query_logs(request, store);
    case Route::kStats:
      return instance_stats(ctx);
    case Route::kMetrics:
      return instance_metrics(ctx);
    case Route::kReload:
      return reload_config(ctx);
    case Route::kBackups:
      return m == "GET" ? list_backups(store) : create_backup(store, ctx);
    case Route::kNone:
      break;
  }
  return error_response(failure(404, "not_found", "no such admin route"));
}

bool is_admin_route(std::string_view path) noexcept {
  return match_route(path).route != Route::kNone;
}

bool is_log_route(std::string_view path) noexcept {
  return match_route(path).route == Route::kLogs;
}

bool is_backup_route(std::string_view path) noexcept {
  return match_route(path).route == Route::kBackups;
}

bool is_backup_listing(std::string_view method, std::string_view path) noexcept {
  return method != "POST" && is_backup_route(path);
}

std::string format_rfc3339(int64_t unix_seconds) {
  const int64_t days = floor_div(unix_seconds, 86400);
  const int64_t secs = unix_seconds - days * 86400;
  int64_t y = 0;
  int64_t m = 0;
  int64_t d = 0;
  civil_from_days(days, &y, &m, &d);
  char buf[48];
  const int n = std::snprintf(buf, sizeof(buf),
                              "%04" PRId64 "-%02" PRId64 "-%02" PRId64 "T%02" PRId64 ":%02" PRId64
                              ":%02" PRId64 "Z",
                              y, m, d, secs / 3600, secs / 60 % 60, secs % 60);
  return std::string(buf, static_cast<size_t>(n));
}

bool parse_rfc3339(std::string_view s, int64_t* unix_seconds) noexcept {
  // YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM); uppercase T and Z only; no leap seconds (Unix time
  // has no second 60).
  int64_t y = 0;
  int64_t mo = 0;
  int64_t d = 0;
  int64_t h = 0;
  int64_t mi = 0;
  int64_t sec = 0;
  if (!read_digits(s, 0, 4, &y) || s.size() < 20 || s[4] != '-' || !read_digits(s, 5, 2, &mo) ||
      s[7] != '-' || !read_digits(s, 8, 2, &d) || s[10] != 'T' || !read_digits(s, 11, 2, &h) ||
      s[13] != ':' || !read_digits(s, 14, 2, &mi) || s[16] != ':' || !read_digits(s, 17, 2, &sec)) {
    return false;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59) {
    return false;
  }
  size_t pos = 19;
  if (s[pos] == '.') {
    const size_t start = ++pos;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') ++pos;
    // Fractions are dropped (floor); more than nanoseconds is not a real timestamp.
    if (pos == start || pos - start > 9) return false;
  }
  if (pos >= s.size()) return false;
  int64_t offset = 0;
  if (s[pos] == 'Z') {
    if (pos + 1 != s.size()) return false;
  } else if (s[pos] == '+' || s[pos] == '-') {
    int64_t oh = 0;
    int64_t om = 0;
    if (s.size() != pos + 6 || !read_digits(s, pos + 1, 2, &oh) || s[pos + 3] != ':' ||
        !read_digits(s, pos + 4, 2, &om) || oh > 23 || om > 59) {
      return false;
    }
    offset = (oh * 60 + om) * 60;
    if (s[pos] == '-') offset = -offset;
  } else {
    return false;
  }
  const int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
  // An offset can carry the instant past the years 0000-9999 a four-digit year can write
  // ("9999-12-31T23:59:59-23:59" is in year 10000 UTC): such a time could not be written back.
  constexpr int64_t kFirstSecond = -62167219200;  // 0000-01-01T00:00:00Z
  constexpr int64_t kLastSecond = 253402300799;   // 9999-12-31T23:59:59Z
  if (t < kFirstSecond || t > kLastSecond) return false;
  *unix_seconds = t;
  return true;
}

}  // namespace keygate
