// Config: everything keygate reads from its TOML file and command-line flags.
//
// Pure logic. Read at start; a reload changes the APIs and the settings apply_live_settings()
// copies (see reload_changes()), the rest only at the next start. parse_config() turns TOML
// text into a Config (the caller reads the file), parse_command_line() turns argv into flag
// overrides, apply_overrides() merges them. Unknown tables, keys and flags are errors, so a
// typo never silently keeps a default.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/limits.h"
#include "core/permissions.h"
#include "core/worker_watch.h"

namespace keygate {

// "ADDR:PORT" or "[IPv6]:PORT". Port 0 asks the kernel for an ephemeral port.
struct ListenAddress {
  std::string host;  // numeric IPv4 or IPv6 literal, without brackets
  uint16_t port = 0;
  bool ipv6 = false;

  std::string to_string() const;
};

// The same host address, in any spelling ("::1" is "0::1"; an IPv4-mapped "::ffff:127.0.0.1" is
// "127.0.0.1", which a socket bound to it binds); literals that do not parse compare as text.
// Ports are not compared.
bool same_host(const ListenAddress& a, const ListenAddress& b);

// True when listening on both would take the same port on some address: same port (not 0) and
// the same host (same_host), or either a wildcard (0.0.0.0, ::, ::ffff:0.0.0.0).
bool addresses_overlap(const ListenAddress& a, const ListenAddress& b);

// Parses "ADDR:PORT". Returns false with a message in `error` when malformed.
bool parse_listen_address(std::string_view text, ListenAddress* out, std::string* error);

struct Config {
  ListenAddress listen{"127.0.0.1", 8080, false};
  ListenAddress admin_listen{"127.0.0.1", 8081, false};
  std::string data_dir = "./data";
  std::string log_dir;  // empty: <data_dir>/logs (see log_directory)
  unsigned workers = 0;  // 0: one per CPU the process may run on
  // A worker whose event loop has not passed for longer than this is stalled: said on stderr,
  // counted in /admin/stats, and no WATCHDOG=1 goes to systemd until it passes again
  // (core/worker_watch.h).
  uint32_t worker_stall_timeout_ms = kWorkerStallTimeoutMsDefault;
  Limits limits;

  // [admin]
  uint64_t admin_body_bytes_max = 64 * 1024 * 1024;  // admin port request bodies (bulk import)
  // Open admin-port connections, all workers together: a budget apart from the data port's
  // limits.connections_per_worker_max, so neither port's clients can take the other's places.
  uint32_t admin_connections_max = 64;
  // [admin] hosts: names a request's Host may give on the admin port besides IP literals and
  // localhost (admin_host_allowed in core/admin_handler.h), lower case. Restart-only.
  std::vector<std::string> admin_hosts;
  // [keys]
  uint64_t body_inspect_bytes_max = 1024 * 1024;  // form/JSON bodies searched for a key (413 above)
  // Keys' last uses (last_used_at) are written to the store at least this often; a crash
  // loses at most this much of them.
  uint32_t last_used_flush_interval_ms = 30000;
  // [cache]
  uint64_t cache_max_keys = 0;            // 0: every key of the store stays cached
  uint32_t cache_negative_entries = 65536;  // unknown digests remembered (partial cache only)
  // [log]: the access log in log_dir (see docs/configuration.md)
  bool log_enabled = true;
  uint64_t log_ring_bytes_per_worker = 4 * 1024 * 1024;  // per-worker buffer; full: drop+count
  uint64_t log_segment_bytes_max = 64 * 1024 * 1024;     // rotate a segment file at this size
  uint64_t log_retention_bytes = 1024ull * 1024 * 1024;  // delete the oldest segments beyond it
  uint64_t log_capture_bytes_max = 64 * 1024;  // per captured body (log_request/log_response)
  uint32_t log_flush_interval_ms = 10;         // the log writer drains at least this often
  bool log_direct_io = true;  // whole blocks written with O_DIRECT (falls back if refused)
  uint64_t log_backlog_bytes_max = 64 * 1024 * 1024;  // records held while the writer is behind
  // [backup]: POST /admin/backups writes backups of the key store here (see
  // docs/configuration.md). Empty: backups are disabled.
  std::string backup_dir;
  uint32_t backup_retention_count = 7;  // complete backups kept; 0 = all
  // [[apis]], validated by ApiRegistry::init in validate_config.
  std::vector<ApiConfig> apis;
};

// Parses TOML text. `source` names the file in error messages. On failure returns false and
// sets `error` to one line: "<source>:<line>:<col>: <what>" or "<source>: <key>: <what>".
bool parse_config(std::string_view text, std::string_view source, Config* out, std::string* error);

struct CommandLine {
  bool help = false;
  std::optional<std::string> config_path;
  std::optional<std::string> listen;
  std::optional<std::string> admin_listen;
  std::optional<std::string> data_dir;
  std::optional<std::string> log_dir;
  std::optional<unsigned> workers;
};

// Parses argv (argv[0] is skipped). Accepts "--flag value" and "--flag=value".
bool parse_command_line(int argc, const char* const* argv, CommandLine* out, std::string* error);

// Applies flag overrides on top of `config`. Fails on a malformed address.
bool apply_overrides(const CommandLine& cli, Config* config, std::string* error);

// The access-log directory: log_dir when set, else "logs" inside data_dir, so moving the data
// directory moves the logs with it.
std::string log_directory(const Config& config);

// Checks cross-field rules (e.g. limits that must be positive). Fails with one line.
bool validate_config(const Config& config, std::string* error);

// Fails when an API's upstream is the data port keygate listens on at `listen` (the address
// itself, or a loopback address on a wildcard's port): every request would be forwarded back
// to keygate. validate_config applies it with the config's own listen; a reload also with the
// running one, which a changed listen in the file does not move until a restart.
bool check_upstreams_are_not(const ListenAddress& listen, const std::vector<ApiConfig>& apis,
                             std::string* error);

// What a reload (SIGHUP, POST /admin/reload) changes besides [[apis]]: the settings whose value
// differs between the running config and a reloaded one, by their key in the file
// ("server.listen", "limits.idle_timeout_ms", "log.enabled", ...), in the file's order, split
// by whether the reload applies them in the running process (`live`: the per-request and
// per-connection bounds, the timeouts, the log writer's segment size, retention and pace, ...)
// or they take effect at the next start only (`restart`: addresses, directories, the worker
// count, and whatever is sized or opened at start: caches, rings, the registered file table).
// docs/configuration.md, "Reload", lists both and says why. Both empty when only [[apis]] (or
// nothing) changed.
struct ReloadChanges {
  std::vector<std::string> live;
  std::vector<std::string> restart;
};
ReloadChanges reload_changes(const Config& running, const Config& reloaded);

// reload_changes(running, reloaded).restart.
std::vector<std::string> settings_needing_restart(const Config& running, const Config& reloaded);

// Copies into `running` the settings of `reloaded` that a reload applies (those
// reload_changes() names `live`), and nothing else: `running` keeps its restart-only settings
// and its apis.
void apply_live_settings(const Config& reloaded, Config* running);

// The --help text.
std::string_view usage_text();

}  // namespace keygate
