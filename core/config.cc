#include "core/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>

// Header-only and exception-free: config errors come back as values, and the exception ABI of
// Debian's compiled toml++ does not leak into our build.
#define TOML_HEADER_ONLY 1
#define TOML_EXCEPTIONS 0
#include <toml++/toml.h>

#include "core/json_text.h"

namespace keygate {
namespace {

template <typename T>
bool parse_unsigned(std::string_view text, T* out) {
  if (text.empty()) return false;
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return false;
  *out = value;
  return true;
}

std::string where(const toml::source_region& region, std::string_view source) {
  return std::string(source) + ":" + std::to_string(region.begin.line) + ":" +
         std::to_string(region.begin.column);
}

// Reads an integer field into `out` when present, checking its range.
template <typename T>
bool read_uint(const toml::table& table, std::string_view key, std::string_view source,
               std::string_view table_name, uint64_t min, uint64_t max, T* out,
               std::string* error) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return true;
  auto value = node->value<int64_t>();
  if (!node->is_integer() || !value) {
    *error = where(node->source(), source) + ": " + std::string(table_name) + "." +
             std::string(key) + ": expected an integer";
    return false;
  }
  if (*value < 0 || static_cast<uint64_t>(*value) < min || static_cast<uint64_t>(*value) > max) {
    *error = where(node->source(), source) + ": " + std::string(table_name) + "." +
             std::string(key) + ": must be between " + std::to_string(min) + " and " +
             std::to_string(max);
    return false;
  }
  *out = static_cast<T>(*value);
  return true;
}

bool read_string(const toml::table& table, std::string_view key, std::string_view source,
                 std::string_view table_name, std::string* out, std::string* error) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return true;
  if (!node->is_string()) {
    *error = where(node->source(), source) + ": " + std::string(table_name) + "." +
             std::string(key) + ": expected a string";
    return false;
  }
  *out = **node->as_string();
  return true;
}

bool check_known_keys(const toml::table& table, std::initializer_list<std::string_view> known,
                      std::string_view source, std::string_view table_name, std::string* error) {
  for (const auto& [key, node] : table) {
    bool ok = false;
    for (std::string_view k : known) ok = ok || key.str() == k;
    if (!ok) {
      *error = where(node.source(), source) + ": unknown key '" +
               (table_name.empty() ? std::string() : std::string(table_name) + ".") +
               std::string(key.str()) + "'";
      return false;
    }
  }
  return true;
}

bool read_address(const toml::table& table, std::string_view key, std::string_view source,
                  ListenAddress* out, std::string* error) {
  std::string text;
  if (!read_string(table, key, source, "server", &text, error)) return false;
  if (table.get(key) == nullptr) return true;
  std::string why;
  if (!parse_listen_address(text, out, &why)) {
    *error = where(table.get(key)->source(), source) + ": server." + std::string(key) + ": " + why;
    return false;
  }
  return true;
}

constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();

// The 16 bytes of a numeric address (an IPv4 one in the first 4); false when `a.host` is no
// literal of its family.
bool address_bytes(const ListenAddress& a, unsigned char (&out)[16]) {
  std::memset(out, 0, sizeof(out));
  return inet_pton(a.ipv6 ? AF_INET6 : AF_INET, a.host.c_str(), out) == 1;
}

// 0.0.0.0, [::] and [::ffff:0.0.0.0] (an IPv4-mapped address is its IPv4 address).
bool is_unspecified(const ListenAddress& a) {
  unsigned char bytes[16];
  if (!address_bytes(a, bytes)) return false;
  const auto zero = [](unsigned char c) { return c == 0; };
  const bool mapped =
      a.ipv6 && std::all_of(bytes, bytes + 10, zero) && bytes[10] == 0xff && bytes[11] == 0xff;
  return std::all_of(mapped ? bytes + 12 : bytes, bytes + 16, zero);
}

// The same server: one address (in any spelling: "::1" is "0::1") and one port.
bool same_endpoint(const ListenAddress& a, const ListenAddress& b) {
  unsigned char bytes_a[16];
  unsigned char bytes_b[16];
  if (a.port != b.port || a.ipv6 != b.ipv6) return false;
  if (!address_bytes(a, bytes_a) || !address_bytes(b, bytes_b)) return a.host == b.host;
  return std::memcmp(bytes_a, bytes_b, sizeof(bytes_a)) == 0;
}

}  // namespace

std::string ListenAddress::to_string() const {
  return ipv6 ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port);
}

bool parse_listen_address(std::string_view text, ListenAddress* out, std::string* error) {
  // The messages quote the text, which may hold any byte: the message must stay one line.
  const auto fail = [error](const std::string& message) {
    *error = one_line(message);
    return false;
  };
  ListenAddress result;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return fail("expected [IPv6]:PORT, got '" + std::string(text) + "'");
    }
    result.host = std::string(text.substr(1, close - 1));
    result.ipv6 = true;
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
      return fail("expected ADDR:PORT, got '" + std::string(text) + "'");
    }
    result.host = std::string(text.substr(0, colon));
    if (result.host.find(':') != std::string::npos) {
      return fail("IPv6 addresses need brackets: [ADDR]:PORT, got '" + std::string(text) + "'");
    }
    port_text = text.substr(colon + 1);
  }
  // Numeric literals only: name resolution would be I/O, and a listener should not depend on
  // it. inet_pton is pure parsing (no syscall).
  // inet_pton reads a C string: a NUL would end the literal there, and "127.0.0.1\0junk" would
  // pass as 127.0.0.1 while the host kept (and printed, and was compared as) all of it.
  unsigned char parsed[sizeof(in6_addr)];
  if (result.host.find('\0') != std::string::npos ||
      inet_pton(result.ipv6 ? AF_INET6 : AF_INET, result.host.c_str(), parsed) != 1) {
    return fail(std::string("address must be a numeric ") + (result.ipv6 ? "IPv6" : "IPv4") +
                " literal, got '" + result.host + "'");
  }
  uint16_t port = 0;
  if (!parse_unsigned(port_text, &port)) {
    return fail("port must be 0-65535, got '" + std::string(port_text) + "'");
  }
  result.port = port;
  *out = std::move(result);
  return true;
}

namespace {

bool parse_config_text(std::string_view text, std::string_view source, Config* out,
                       std::string* error) {
  toml::parse_result parsed = toml::parse(text, source);
  if (!parsed) {
    const toml::parse_error& err = parsed.error();
    *error = where(err.source(), source) + ": " + std::string(err.description());
    return false;
  }
  const toml::table& root = parsed.table();
  if (!check_known_keys(root, {"server", "limits", "admin", "keys", "cache", "log", "apis"},
                        source, "", error)) {
    return false;
  }

  Config config;
  if (const toml::node* node = root.get("server")) {
    const toml::table* server = node->as_table();
    if (server == nullptr) {
      *error = where(node->source(), source) + ": server: expected a table";
      return false;
    }
    if (!check_known_keys(*server, {"listen", "admin_listen", "data_dir", "log_dir", "workers"},
                          source, "server", error) ||
        !read_address(*server, "listen", source, &config.listen, error) ||
        !read_address(*server, "admin_listen", source, &config.admin_listen, error) ||
        !read_string(*server, "data_dir", source, "server", &config.data_dir, error) ||
        !read_string(*server, "log_dir", source, "server", &config.log_dir, error) ||
        !read_uint(*server, "workers", source, "server", 0, 1024, &config.workers, error)) {
      return false;
    }
    if (const toml::node* data_dir = server->get("data_dir"); data_dir && config.data_dir.empty()) {
      *error = where(data_dir->source(), source) + ": server.data_dir must not be empty";
      return false;
    }
    // Unset means <data_dir>/logs; set, it must name a directory.
    if (const toml::node* log_dir = server->get("log_dir"); log_dir && config.log_dir.empty()) {
      *error = where(log_dir->source(), source) + ": server.log_dir must not be empty";
      return false;
    }
  }
  if (const toml::node* node = root.get("limits")) {
    const toml::table* limits = node->as_table();
    if (limits == nullptr) {
      *error = where(node->source(), source) + ": limits: expected a table";
      return false;
    }
    Limits& l = config.limits;
    if (!check_known_keys(*limits,
                          {"request_line_bytes_max", "header_bytes_max", "header_count_max",
                           "body_bytes_max", "connections_per_worker_max", "pipeline_depth_max",
                           "header_timeout_ms", "body_timeout_ms", "idle_timeout_ms",
                           "linger_timeout_ms", "drain_timeout_ms", "proxy_body_bytes_max",
                           "upstream_header_bytes_max", "upstream_idle_connections_max",
                           "upstream_idle_timeout_ms", "upstream_fail_timeout_ms",
                           "body_memory_per_worker_max"},
                          source, "limits", error) ||
        !read_uint(*limits, "request_line_bytes_max", source, "limits", 64, 1 << 20,
                   &l.request_line_bytes_max, error) ||
        !read_uint(*limits, "header_bytes_max", source, "limits", 256, 1 << 20,
                   &l.header_bytes_max, error) ||
        !read_uint(*limits, "header_count_max", source, "limits", 1, 10000, &l.header_count_max,
                   error) ||
        !read_uint(*limits, "body_bytes_max", source, "limits", 0, uint64_t{1} << 30,
                   &l.body_bytes_max, error) ||
        !read_uint(*limits, "connections_per_worker_max", source, "limits", 1, 1000000,
                   &l.connections_per_worker_max, error) ||
        !read_uint(*limits, "pipeline_depth_max", source, "limits", 1, 1024,
                   &l.pipeline_depth_max, error) ||
        !read_uint(*limits, "header_timeout_ms", source, "limits", 1, kU32Max,
                   &l.header_timeout_ms, error) ||
        !read_uint(*limits, "body_timeout_ms", source, "limits", 1, kU32Max, &l.body_timeout_ms,
                   error) ||
        !read_uint(*limits, "idle_timeout_ms", source, "limits", 1, kU32Max, &l.idle_timeout_ms,
                   error) ||
        !read_uint(*limits, "linger_timeout_ms", source, "limits", 0, kU32Max,
                   &l.linger_timeout_ms, error) ||
        !read_uint(*limits, "drain_timeout_ms", source, "limits", 0, kU32Max,
                   &l.drain_timeout_ms, error) ||
        !read_uint(*limits, "proxy_body_bytes_max", source, "limits", 0, uint64_t{1} << 40,
                   &l.proxy_body_bytes_max, error) ||
        !read_uint(*limits, "upstream_header_bytes_max", source, "limits", 1024, 1 << 20,
                   &l.upstream_header_bytes_max, error) ||
        !read_uint(*limits, "upstream_idle_connections_max", source, "limits", 0, 100000,
                   &l.upstream_idle_connections_max, error) ||
        !read_uint(*limits, "upstream_idle_timeout_ms", source, "limits", 1, kU32Max,
                   &l.upstream_idle_timeout_ms, error) ||
        !read_uint(*limits, "upstream_fail_timeout_ms", source, "limits", 0, kU32Max,
                   &l.upstream_fail_timeout_ms, error) ||
        !read_uint(*limits, "body_memory_per_worker_max", source, "limits", 0,
                   uint64_t{1} << 40, &l.body_memory_per_worker_max, error)) {
      return false;
    }
  }
  if (const toml::node* node = root.get("admin")) {
    const toml::table* admin = node->as_table();
    if (admin == nullptr) {
      *error = where(node->source(), source) + ": admin: expected a table";
      return false;
    }
    if (!check_known_keys(*admin, {"body_bytes_max", "connections_max"}, source, "admin",
                          error) ||
        !read_uint(*admin, "body_bytes_max", source, "admin", 1024, uint64_t{1} << 30,
                   &config.admin_body_bytes_max, error) ||
        !read_uint(*admin, "connections_max", source, "admin", 1, 100000,
                   &config.admin_connections_max, error)) {
      return false;
    }
  }
  if (const toml::node* node = root.get("keys")) {
    const toml::table* keys = node->as_table();
    if (keys == nullptr) {
      *error = where(node->source(), source) + ": keys: expected a table";
      return false;
    }
    if (!check_known_keys(*keys, {"body_inspect_bytes_max"}, source, "keys", error) ||
        !read_uint(*keys, "body_inspect_bytes_max", source, "keys", 0, uint64_t{1} << 30,
                   &config.body_inspect_bytes_max, error)) {
      return false;
    }
  }
  if (const toml::node* node = root.get("cache")) {
    const toml::table* cache = node->as_table();
    if (cache == nullptr) {
      *error = where(node->source(), source) + ": cache: expected a table";
      return false;
    }
    if (!check_known_keys(*cache, {"max_keys", "negative_entries"}, source, "cache", error) ||
        !read_uint(*cache, "max_keys", source, "cache", 0, uint64_t{1} << 32,
                   &config.cache_max_keys, error) ||
        !read_uint(*cache, "negative_entries", source, "cache", 0, 1u << 24,
                   &config.cache_negative_entries, error)) {
      return false;
    }
  }
  if (const toml::node* node = root.get("log")) {
    const toml::table* log = node->as_table();
    if (log == nullptr) {
      *error = where(node->source(), source) + ": log: expected a table";
      return false;
    }
    if (const toml::node* enabled = log->get("enabled")) {
      if (!enabled->is_boolean()) {
        *error = where(enabled->source(), source) + ": log.enabled: expected true or false";
        return false;
      }
      config.log_enabled = **enabled->as_boolean();
    }
    if (const toml::node* direct_io = log->get("direct_io")) {
      if (!direct_io->is_boolean()) {
        *error = where(direct_io->source(), source) + ": log.direct_io: expected true or false";
        return false;
      }
      config.log_direct_io = **direct_io->as_boolean();
    }
    if (!check_known_keys(*log,
                          {"enabled", "ring_bytes_per_worker", "segment_bytes_max",
                           "retention_bytes", "capture_bytes_max", "flush_interval_ms",
                           "direct_io", "backlog_bytes_max"},
                          source, "log", error) ||
        !read_uint(*log, "ring_bytes_per_worker", source, "log", 64 * 1024, uint64_t{1} << 30,
                   &config.log_ring_bytes_per_worker, error) ||
        !read_uint(*log, "segment_bytes_max", source, "log", 64 * 1024, uint64_t{1} << 40,
                   &config.log_segment_bytes_max, error) ||
        !read_uint(*log, "retention_bytes", source, "log", 64 * 1024, uint64_t{1} << 50,
                   &config.log_retention_bytes, error) ||
        !read_uint(*log, "capture_bytes_max", source, "log", 0, 16u << 20,
                   &config.log_capture_bytes_max, error) ||
        !read_uint(*log, "flush_interval_ms", source, "log", 1, 10000,
                   &config.log_flush_interval_ms, error) ||
        !read_uint(*log, "backlog_bytes_max", source, "log", 0, uint64_t{1} << 40,
                   &config.log_backlog_bytes_max, error)) {
      return false;
    }
    // The relief thread moves a whole ring at a time: a smaller backlog would never be used.
    if (config.log_backlog_bytes_max != 0 &&
        config.log_backlog_bytes_max < config.log_ring_bytes_per_worker) {
      const toml::node* value = log->get("backlog_bytes_max");
      *error = where(value != nullptr ? value->source() : log->source(), source) +
               ": log.backlog_bytes_max: must be 0 (no backlog) or at least "
               "log.ring_bytes_per_worker (" +
               std::to_string(config.log_ring_bytes_per_worker) +
               "): the backlog takes in a whole buffer at a time";
      return false;
    }
  }
  if (const toml::node* node = root.get("apis")) {
    const toml::array* apis = node->as_array();
    if (apis == nullptr) {
      *error = where(node->source(), source) + ": apis: expected an array of tables ([[apis]])";
      return false;
    }
    for (const toml::node& item : *apis) {
      const toml::table* api = item.as_table();
      if (api == nullptr) {
        *error = where(item.source(), source) + ": apis: expected a table";
        return false;
      }
      ApiConfig parsed_api;
      std::string mode;
      if (!check_known_keys(*api,
                            {"name", "routes", "mode", "upstreams", "connect_timeout_ms",
                             "response_timeout_ms"},
                            source, "apis", error) ||
          !read_string(*api, "name", source, "apis", &parsed_api.name, error) ||
          !read_string(*api, "mode", source, "apis", &mode, error) ||
          !read_uint(*api, "connect_timeout_ms", source, "apis", 1, kU32Max,
                     &parsed_api.connect_timeout_ms, error) ||
          !read_uint(*api, "response_timeout_ms", source, "apis", 1, kU32Max,
                     &parsed_api.response_timeout_ms, error)) {
        return false;
      }
      if (api->get("name") == nullptr) {
        *error = where(item.source(), source) + ": apis: every API needs a name";
        return false;
      }
      if (const toml::node* ups = api->get("upstreams")) {
        const toml::array* list = ups->as_array();
        if (list == nullptr) {
          *error = where(ups->source(), source) + ": apis." + parsed_api.name +
                   ".upstreams: expected an array of \"host:port\" strings";
          return false;
        }
        std::vector<ListenAddress> seen;
        for (const toml::node& up : *list) {
          ListenAddress addr;
          std::string why;
          if (!up.is_string() || !parse_listen_address(**up.as_string(), &addr, &why) ||
              addr.port == 0) {
            *error = where(up.source(), source) + ": apis." + parsed_api.name +
                     ".upstreams: expected \"IP:port\" with a numeric IP and a port above 0" +
                     (why.empty() ? std::string() : " (" + why + ")");
            return false;
          }
          // Connecting to the wildcard reaches this host by accident of the kernel, not a
          // server anyone named.
          if (is_unspecified(addr)) {
            *error = where(up.source(), source) + ": apis." + parsed_api.name +
                     ".upstreams: " + addr.to_string() +
                     " is the unspecified address, not a server: name one (127.0.0.1, [::1], ...)";
            return false;
          }
          // Listed twice, a server would get twice its share of the round robin unnoticed.
          for (const ListenAddress& other : seen) {
            if (same_endpoint(addr, other)) {
              *error = where(up.source(), source) + ": apis." + parsed_api.name +
                       ".upstreams: " + addr.to_string() + " is listed twice";
              return false;
            }
          }
          seen.push_back(addr);
          parsed_api.upstreams.push_back(**up.as_string());
        }
        if (parsed_api.upstreams.size() > kApiUpstreamsMax) {
          *error = where(ups->source(), source) + ": apis." + parsed_api.name +
                   ".upstreams: at most " + std::to_string(kApiUpstreamsMax);
          return false;
        }
      }
      const bool proxied = !parsed_api.upstreams.empty();
      if (api->get("mode") == nullptr) mode = proxied ? "proxy" : "auth-check";
      if (mode != "auth-check" && mode != "proxy") {
        *error = where(api->get("mode")->source(), source) + ": apis.mode: unknown mode '" + mode +
                 "' (supported: auth-check, proxy)";
        return false;
      }
      if ((mode == "proxy") != proxied) {
        *error = where(api->get("mode")->source(), source) + ": apis." + parsed_api.name +
                 (proxied ? ": mode auth-check cannot have upstreams"
                          : ": mode proxy needs upstreams");
        return false;
      }
      const toml::node* routes = api->get("routes");
      const toml::array* route_list = routes != nullptr ? routes->as_array() : nullptr;
      if (route_list == nullptr) {
        *error = where(item.source(), source) + ": apis." + parsed_api.name +
                 ".routes: expected an array of path prefixes";
        return false;
      }
      for (const toml::node& route : *route_list) {
        if (!route.is_string()) {
          *error = where(route.source(), source) + ": apis." + parsed_api.name +
                   ".routes: expected strings";
          return false;
        }
        parsed_api.routes.push_back(**route.as_string());
      }
      config.apis.push_back(std::move(parsed_api));
    }
    // The rules for names and routes are ApiRegistry's (validate_config applies them to any
    // Config); applied here as well, while the file's positions are at hand to point at the
    // value. config.apis[i] came from (*apis)[i].
    ApiRegistry registry;
    ApiConfigFault fault;
    std::string why;
    if (!registry.init(config.apis, &why, &fault)) {
      const toml::node* at = node;
      if (fault.part != ApiConfigFault::Part::kList) {
        const toml::table& api = *(*apis)[fault.api].as_table();
        switch (fault.part) {
          case ApiConfigFault::Part::kName:
            at = api.get("name");
            break;
          case ApiConfigFault::Part::kRoutes:
            at = api.get("routes");
            break;
          case ApiConfigFault::Part::kRoute:
            at = api.get("routes")->as_array()->get(fault.route);
            break;
          case ApiConfigFault::Part::kList:
            break;
        }
      }
      *error = where(at->source(), source) + ": apis: " + why;
      return false;
    }
  }
  *out = std::move(config);
  return true;
}

}  // namespace

bool parse_config(std::string_view text, std::string_view source, Config* out,
                  std::string* error) {
  if (parse_config_text(text, source, out, error)) return true;
  // The messages quote the file's text (keys, names, modes, routes, addresses, toml++'s view of
  // a bad character): a line break or other control character in it would split, or hide part
  // of, the one line the caller prints about why keygate does not start.
  *error = one_line(*error);
  return false;
}

bool parse_command_line(int argc, const char* const* argv, CommandLine* out,
                        std::string* error) {
  CommandLine cli;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      cli.help = true;
      continue;
    }
    if (arg.substr(0, 2) != "--") {
      *error = "unexpected argument '" + std::string(arg) + "' (see --help)";
      return false;
    }
    std::string_view name = arg;
    std::optional<std::string_view> value;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    auto take_value = [&]() -> std::optional<std::string> {
      if (value) return std::string(*value);
      if (i + 1 >= argc) {
        *error = "flag " + std::string(name) + " needs a value (see --help)";
        return std::nullopt;
      }
      return std::string(argv[++i]);
    };
    std::optional<std::string>* target = nullptr;
    if (name == "--config") target = &cli.config_path;
    else if (name == "--listen") target = &cli.listen;
    else if (name == "--admin-listen") target = &cli.admin_listen;
    else if (name == "--data-dir") target = &cli.data_dir;
    else if (name == "--log-dir") target = &cli.log_dir;
    if (target != nullptr) {
      *target = take_value();
      if (!*target) return false;
      if ((*target)->empty()) {
        *error = "flag " + std::string(name) + " needs a non-empty value";
        return false;
      }
      continue;
    }
    if (name == "--workers") {
      std::optional<std::string> text = take_value();
      if (!text) return false;
      unsigned n = 0;
      if (!parse_unsigned(std::string_view(*text), &n) || n > 1024) {
        *error = "--workers must be 0-1024 (0: one per CPU), got '" + *text + "'";
        return false;
      }
      cli.workers = n;
      continue;
    }
    *error = "unknown flag '" + std::string(name) + "' (see --help)";
    return false;
  }
  *out = std::move(cli);
  return true;
}

bool apply_overrides(const CommandLine& cli, Config* config, std::string* error) {
  std::string why;
  if (cli.listen && !parse_listen_address(*cli.listen, &config->listen, &why)) {
    *error = "--listen: " + why;
    return false;
  }
  if (cli.admin_listen && !parse_listen_address(*cli.admin_listen, &config->admin_listen, &why)) {
    *error = "--admin-listen: " + why;
    return false;
  }
  if (cli.data_dir) config->data_dir = *cli.data_dir;
  if (cli.log_dir) {
    if (cli.log_dir->empty()) {
      *error = "--log-dir must not be empty";
      return false;
    }
    config->log_dir = *cli.log_dir;
  }
  if (cli.workers) config->workers = *cli.workers;
  return true;
}

std::string log_directory(const Config& config) {
  if (!config.log_dir.empty()) return config.log_dir;
  std::string dir = config.data_dir;
  if (!dir.empty() && dir.back() != '/') dir += '/';
  return dir + "logs";
}

bool validate_config(const Config& config, std::string* error) {
  if (config.data_dir.empty()) {
    *error = "server.data_dir must not be empty";
    return false;
  }
  ApiRegistry registry;
  if (!registry.init(config.apis, error)) {
    *error = "apis: " + *error;
    return false;
  }
  if (addresses_overlap(config.listen, config.admin_listen)) {
    *error = "server.listen and server.admin_listen must differ (" + config.listen.to_string() +
             " and " + config.admin_listen.to_string() + " take the same port on one address)";
    return false;
  }
  return true;
}

bool addresses_overlap(const ListenAddress& a, const ListenAddress& b) {
  if (a.port == 0 || a.port != b.port) return false;  // port 0: two different ephemeral ports
  // The literals as bytes ("::1" and "0::1" are one address); unparsable ones compare as text.
  unsigned char bytes_a[16];
  unsigned char bytes_b[16];
  if (!address_bytes(a, bytes_a) || !address_bytes(b, bytes_b)) return a.host == b.host;
  const auto wildcard = [](const unsigned char* bytes) {
    for (int i = 0; i < 16; ++i) {
      if (bytes[i] != 0) return false;
    }
    return true;
  };
  // A wildcard takes the port on every address (IPv6's "::" on IPv4 ones too, by default).
  if (wildcard(bytes_a) || wildcard(bytes_b)) return true;
  return a.ipv6 == b.ipv6 && std::memcmp(bytes_a, bytes_b, a.ipv6 ? 16 : 4) == 0;
}

std::string_view usage_text() {
  return R"(Usage: keygate [--config FILE] [flags]

keygate is an API-key gateway. With no flags it runs on its embedded defaults:
data port 127.0.0.1:8080, admin port 127.0.0.1:8081, data in ./data.

Flags (each overrides the config file):
  --config FILE          TOML configuration file (see examples/keygate.toml and
                         docs/configuration.md for every key and its default)
  --listen ADDR:PORT     data-plane listener (default 127.0.0.1:8080; port 0 = ephemeral)
  --admin-listen ADDR:PORT
                         admin listener (default 127.0.0.1:8081; loopback by default)
  --data-dir DIR         data directory, created if missing (default ./data)
  --log-dir DIR          access-log directory (default: logs inside the data directory)
  --workers N            worker threads, each with its own io_uring (default 0 = one per
                         CPU the process may run on)
  -h, --help             print this help and exit

Once ready keygate prints one line to stdout, with the ports actually bound and the io_uring
features in use:
  keygate: listening data=ADDR:PORT admin=ADDR:PORT workers=N ring=MODE
SIGTERM or SIGINT: stop accepting, finish in-flight requests (bounded by
limits.drain_timeout_ms), exit 0. SIGHUP, SIGUSR1, SIGUSR2: ignored (said on
stderr; there is no reload). Exit code 2: bad flags or config; 1: start-up failure.

Environment (docs/configuration.md, "Environment"):
  KEYGATE_BOOTSTRAP_ADMIN_KEY  the admin key created on first start (empty store); unset,
                               keygate generates one and prints it once on stderr
  KEYGATE_REGISTERED_FILES     0: no io_uring registered file table for connections
  KEYGATE_MALLOC_HUGEPAGES     0: no transparent huge pages for the heap (otherwise keygate
                               re-executes itself once with glibc.malloc.hugetlb=1)
  KEYGATE_NO_AVX2              set: the access log's scanners use SSE2 even where AVX2 exists
)";
}

}  // namespace keygate
