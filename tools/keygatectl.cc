// keygatectl: the admin CLI. Manages the keys, users and APIs of a running keygate through its
// admin HTTP API (core/admin_api.h lists the routes and JSON shapes), and reads its access log.
//
// Single-threaded; every command makes one blocking request (keys list, users list and logs: one
// per page they need) through tools/ctl/http_client.h, each wait bounded by --timeout.
// `logs --follow` polls until SIGINT (or SIGTERM), which ends it with status 0. Exit status: 0
// success, 1 the server refused the request, could not be reached or answered something
// unexpected, 2 usage error (nothing was sent).
//
// Secrets: a key value is printed only by `keys create` and `keys rotate`, once, in the response
// that carries it. The admin key only ever goes into the X-ApiKey header: no message repeats it,
// nor any argument the user typed that could be one (unknown commands and options are named
// only when they look like words). Where a key id belongs (keys show|update|delete|rotate ID,
// keys list --cursor, logs --key), anything not shaped like one is refused before sending: it
// would go into the URL, and so into the admin access log. `keys create --key-file` keeps a
// chosen value off the command line.
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/admin_api.h"
#include "core/http_request.h"
#include "core/json_text.h"
#include "tools/ctl/http_client.h"
#include "tools/ctl/table.h"
#include "tools/read_fd.h"

namespace keygate::ctl {
namespace {

namespace dom = simdjson::dom;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

constexpr std::string_view kUrlDefault = "http://127.0.0.1:8081";
constexpr const char* kAdminKeyEnv = "KEYGATE_ADMIN_KEY";
constexpr int kTimeoutSecondsDefault = 10;
// reload: keygate waits up to 10 s for the reload to run before it answers 503
// reload_unavailable (tools/keygate_main.cc, ReloadRequests); with 10 s here too, keygatectl
// would give up just before that answer and say only "timed out".
constexpr int kReloadTimeoutSecondsDefault = 15;
// backup: the checkpoint copies the store's files when the backup directory is on another
// filesystem, and it waits its turn behind other backups; a minute covers a large store.
constexpr int kBackupTimeoutSecondsDefault = 60;
constexpr int kTimeoutSecondsMax = 3600;
// One request and its whole answer take at most this many --timeouts: each wait is bounded by
// --timeout, and this bounds a server that trickles its answer a byte at a time. The largest
// answer (a page of 32 MiB) takes well under a second on any link the admin port is used over.
constexpr int kExchangeTimeouts = 10;
// An import file is read whole and sent as one body; the server's own limit is usually lower.
constexpr size_t kImportFileBytesMax = size_t{1} << 30;
// keys create --key-file holds one value (the server takes up to 256 bytes); anything much
// larger is the wrong file, and is not read whole.
constexpr size_t kKeyFileBytesMax = 64 * 1024;
// keys list --all and users list: a bound on the pages followed (1000 records each at most), far
// above any real count, so a server that keeps returning cursors cannot loop us forever.
constexpr size_t kListPagesMax = 1'000'000;
// Rows `keys list --all` and `users list` gather before printing: ten times the largest
// deployment we know of, and about a gigabyte of table; a server that keeps sending rows under
// fresh cursors is cut off here instead of exhausting memory.
constexpr size_t kListRowsMax = 10'000'000;
// The admin API's page sizes (core/admin_api.cc): checked here to say so before sending.
constexpr int64_t kListLimitDefault = 100;
constexpr int64_t kListLimitMax = 1000;
// logs (core/admin_api.cc): a page holds 1 to 1000 records, 100 by default.
constexpr int64_t kLogsLimitDefault = 100;
constexpr int64_t kLogsLimitMax = 1000;
// logs --follow asks for new records this often while there are none.
constexpr long kFollowPollMs = 500;
// logs --follow while keygate cannot be reached (a restart): it asks again after a pause that
// doubles from kFollowPollMs up to this.
constexpr long kFollowRetryMsMax = 5000;
// Unknown commands and options are echoed only when they look like words of this length at
// most: anything else may be a key value typed in the wrong place.
constexpr size_t kEchoWordBytesMax = 24;

// ---------------------------------------------------------------------------------------------
// Help

constexpr std::string_view kUsageLine =
    "usage: keygatectl [--url URL] [--key KEY] [--json] [--timeout SECONDS] <command> ...\n";

constexpr std::string_view kMainHelp =
    R"(Usage: keygatectl [--url URL] [--key KEY] [--json] [--timeout SECONDS] <command> ...

Manages the keys, users and APIs of a running keygate through its admin HTTP API.

Global options (before the command; --url, --json and --timeout may also follow it):
  --url URL          the admin listener: http://HOST:PORT, HOST a numeric IP address or
                     localhost (default http://127.0.0.1:8081). keygatectl speaks plain HTTP
                     only, and the admin key travels in every request: run it on keygate's
                     host or through an SSH tunnel (ssh -L 8081:127.0.0.1:8081 HOST); a
                     non-loopback URL gets a warning on stderr
  --key KEY          an admin key (one whose apis include "admin"). Default: the environment
                     variable KEYGATE_ADMIN_KEY, which is preferable: command-line arguments
                     are visible to other users of the machine.
  --json             print the server's JSON response instead of a table, as is but for
                     terminal controls in it, written as \u escapes of the same meaning
  --timeout SECONDS  connect and read timeout, 1 to 3600 (default 10; 15 for reload, which
                     keygate may take 10 s to answer); each request with its whole answer must
                     also be done within 10 times this
  -h, --help         this help; 'keygatectl keys --help' and 'keygatectl users --help' for
                     the commands of a group

Commands:
  keys create|list|show|update|delete|rotate|import ...  API keys
  users create|list|show|update|delete ...               users and their grants
  apis                                                   the configured APIs and their routes
  logs [--key ID] [--status N] [--since TIME] [--limit N] [--follow] ...
                                                         the access log ('logs --help')
  stats                                                  the instance's counters
  reload                                                 applies the config file's edited
                                                         [[apis]] and live settings
                                                         ('reload --help')
  backup [create|list]                                   makes a backup of the key store, or
                                                         lists them ('backup --help')

Output: keys as a table (ID, HINT, APIS, USER, ENABLED, EXPIRES, LAST USED, DESCRIPTION),
users (NAME, GRANTS), apis (NAME, ROUTES), stats (GROUP, COUNTER, VALUE) and backups (NAME,
CREATED, KEYS, USERS, BYTES, PATH) likewise; one record, reload's outcome and a new backup, as
"field: value" lines; access-log records as JSON Lines, one record per line as keygate stored it.

Key values are printed exactly once: by 'keys create' and 'keys rotate', as a line
"key: VALUE" before the record (with --json, as the response's "key" member). Store them
then; keygate keeps only a digest and cannot show them again.

Exit status: 0 success; 1 the server refused the request ("keygatectl: STATUS ERROR: MESSAGE"
on stderr), could not be reached, or answered something unexpected; 2 usage error, or input
refused before anything was sent (a --key-file or import file that cannot be read, is empty,
or does not hold what it should).

Examples:
  export KEYGATE_ADMIN_KEY=...
  keygatectl keys create --api orders --description "shop frontend"
  keygatectl keys list --api orders --all
  keygatectl logs --key k7Qd2XcLm0aZb --status 403 --follow
  keygatectl reload
  keygatectl backup
  keygatectl --url http://127.0.0.1:9081 users create alice@example.com --grant orders:GET:/orders
)";

constexpr std::string_view kKeysHelp = R"(Usage: keygatectl [global options] keys <subcommand> ...

  keys create --api NAME [--api NAME ...] [--description TEXT] [--user NAME]
              [--key-file FILE | --key VALUE] [--log-request] [--log-response] [--disabled]
              [--expires-at TIME]
      Creates a key that may call the named APIs ("admin": full control of this keygate).
      Without --key-file or --key the server generates the value (kg_...). --key-file reads
      a chosen value from FILE ('-': stdin): one line, its line ending dropped. --key VALUE
      takes it on the command line instead; prefer --key-file: command-line arguments are
      visible to other users of the machine, and shell history keeps them. Prints
      "key: VALUE" once, then the record. --user ties the key to a user: it may then do only
      what the user's grants allow. --log-request/--log-response log the key's traffic;
      --disabled creates it switched off; --expires-at sets when it stops working.
  keys list [--api NAME] [--user NAME] [--unused-since TIME] [--limit N] [--cursor ID] [--all]
      Keys in id order, one page of up to N (1 to 1000, default 100), only those with API
      NAME, of user NAME, or not used since TIME (RFC 3339: never used, or last used before
      it) when asked. LAST USED is when the key last made a request (allowed or 403; up to a
      minute plus [keys] last_used_flush_interval_ms late), "never" if it has not. --all
      follows the cursor to the end (with --json: one document holding every key). Without
      --all, a note on stderr gives the cursor of the next page when there may be one. --json
      without --all prints the server's page as is (a filtered page may be short, even empty,
      and still have a next_cursor).
  keys show ID
      ID is a key id ("k" and 12 letters or digits, as 'keys list' shows), never a key value,
      here and below.
  keys update ID [--description TEXT] [--api NAME ...] [--user NAME | --no-user]
                 [--log-request=true|false] [--log-response=true|false]
                 [--enabled=true|false] [--expires-at TIME | --no-expiry]
      Changes only what is given; the --api options replace the whole list. A key's value
      cannot be changed: rotate it.
  keys delete ID
      The key stops working at once.
  keys rotate ID [--grace-seconds N]
      Gives the key a new generated value, printed once like create's. The old value keeps
      working for N more seconds (0 to 2592000; default 0: it stops at once).
  keys import FILE
      Imports keys with known values from a JSON Lines file ('-': stdin), one key object per
      line in the shape the import route expects, e.g.
        {"key":"VALUE","apis":["orders"],"description":"legacy","user":null}
      (members: key and apis required; description, user, log_request, log_response,
      enabled, expires_at optional). Blank lines are skipped. All or nothing: one bad line
      imports none, and the error names its line. Prints the number imported. keygate takes
      at most 100,000 keys in one import, in a request body of at most its [admin]
      body_bytes_max (default 64 MiB); beyond either it answers 413 body_too_large and
      imports none: split a larger file.

TIME is RFC 3339, e.g. 2026-11-26T10:00:00Z.
)";

constexpr std::string_view kUsersHelp = R"(Usage: keygatectl [global options] users <subcommand> ...

  users create NAME [--grant GRANT ...]
  users list [--limit N]
      Every user, in name order: keygatectl asks for N at a time (1 to 1000, default 1000) and
      follows the pages to the end (with --json: one document holding every user).
  users show NAME
  users update NAME (--grant GRANT ... | --no-grants)
      Replaces all of the user's grants.
  users delete NAME
      Keys of a deleted user are refused until their user is changed (keys update --user or
      --no-user).

A GRANT is API[:METHODS[:PATH_PREFIX]]: METHODS comma-separated upper-case HTTP methods or
'*' (any method, also when left out), PATH_PREFIX a path within the API (left out: any).
  users create alice@example.com --grant orders:GET,POST:/orders --grant billing:*
A key tied to a user may call a route only when one of the user's grants matches it (and the
key's own apis allow its API). Names are 1 to 256 printable ASCII characters (spaces
inside, not at either end; not . or ..); keygate sends a key's user name on to the upstream
as X-Keygate-User.
)";

constexpr std::string_view kApisHelp = R"(Usage: keygatectl [global options] apis

Lists the APIs keygate serves now, with their routes. APIs are not changed through the admin
API: edit keygate's config file, then 'keygatectl reload' applies its [[apis]] without a
restart.
)";

constexpr std::string_view kStatsHelp = R"(Usage: keygatectl [global options] stats

Prints keygate's counters as a table (GROUP, COUNTER, VALUE), read when asked
(GET /admin/stats): "workers" (connections accepted and refused, requests, parse errors,
timeouts, upstream retries, summed over the workers), "data_responses" and
"admin_responses" (answers on each port by status, e.g. 200, 401, 502), "data_reasons" and
"admin_reasons" (by error code, e.g. invalid_api_key, upstream_timeout, client_closed),
"keys" (the key cache), "access_log" (records enqueued, written, dropped, still queued, the
backlog, segments; "off" when the access log is disabled), "backups" (backups created and
failed, pruned by the retention; "off" without [backup] dir), "admin" (admin requests run and
refused) and "config" (the reloads of the APIs: the generation serving, reloads_total,
reloads_refused_total). With --json, the server's object as is.
)";

constexpr std::string_view kReloadHelp = R"(Usage: keygatectl [global options] reload

Makes keygate read its --config file again and apply its [[apis]] and the settings that can
change live (limits, timeouts, log retention, ...) without a restart, as SIGHUP does
(POST /admin/reload; docs/configuration.md, "Reload"), and prints the outcome once every
worker serves new requests with them:
  generation        the APIs' generation now (1 at start, +1 per applied reload)
  apis              how many APIs keygate has now
  applied_settings  each other setting the file changes that now serves, one per line, or
                    (none)
  restart_settings  each other setting the file changes that cannot change live, one per
                    line, or (none): keygate keeps its old value until it restarts (also said
                    on stderr)
  workers_pending   only when there are any: the workers (by index) that had not taken the
                    new APIs and settings yet, their event loop held up (also said on stderr);
                    each takes them at its next loop pass, and until then serves new requests
                    with the old ones
With --json, the server's object as is ({"generation":N,"apis":N,"restart_settings":[...],
"workers_pending":[...],"applied_settings":[...]}).

Exit status 1 with "keygatectl: 400 reload_refused: FILE:LINE:COLUMN: WHAT" on stderr when
the file is invalid (or keygate runs without a --config file it can read again): nothing
changed, the APIs it had keep serving. Exit status 1 with "503 reload_unavailable" when
keygate cannot reload now (it is draining, or the reload did not run within 10 s). keygate
waits up to 10 s for the reload, so --timeout defaults to 15 s here.
)";

constexpr std::string_view kLogsHelp = R"(Usage: keygatectl [global options] logs [options]

  logs [--key ID] [--status N] [--since TIME] [--until TIME] [--limit N] [--cursor C]
  logs --follow [--key ID] [--status N] [--since TIME] [--until TIME] [--limit N]

Prints access-log records, one per line, each the JSON object keygate stored: newest first,
up to N (1 to 1000, default 100). A note on stderr gives the --cursor of the next (older) page
when there may be one.
  --key ID       only requests made with this key (its id, as 'keys list' shows)
  --status N     only responses with this HTTP status (100 to 599)
  --since TIME   only records at or after TIME
  --until TIME   only records before TIME
  --limit N      records per page, 1 to 1000 (default 100)
  --cursor C     continue from an earlier page's note
  --follow       print the newest N matching records oldest first, then every new matching
                 record as it is logged (checking every 0.5 s) until interrupted (Ctrl-C
                 ends it with exit status 0); log queries (GET /admin/logs, its own polling
                 included) are left out. While keygate cannot be reached (a restart) it asks
                 again, at most every 5 s, and goes on where it was; records deleted by
                 retention before it read them are counted on stderr
  --json         print the server's page as is ({"records":[...],"next_cursor":...}); not
                 with --follow

TIME is RFC 3339 UTC, e.g. 2026-11-26T12:00:00Z (fractions of a second are ignored).
Records carry seq, time_us, request_id, worker, listener, client, key_id, user, api, method,
path, status, bytes_in, bytes_out, duration_us, reason, ...; a {"type":"dropped",...} line
says how many records were lost to a full buffer (shown only without --key and --status).
Exit status 1 with "503 logs_unavailable" when keygate runs without an access log.
)";

constexpr std::string_view kBackupHelp = R"(Usage: keygatectl [global options] backup [create|list]

  backup, backup create
      Makes a backup of keygate's key store (POST /admin/backups): a consistent copy of every
      key and user as of the request, in a directory of its own under keygate's [backup] dir,
      and prints it:
        name        keygate-YYYYMMDDTHHMMSSZ-SEQ (time of creation, UTC; SEQ counts up)
        path        where it is; 'keygate --data-dir COPY' starts on a copy of it made
                    outside [backup] dir (keygate refuses a data directory inside it)
        created_at  RFC 3339 UTC
        seq         its sequence number
        keys        keys in it
        users       users in it
        bytes       the size of its files
      keygate then deletes the oldest backups beyond [backup] retention_count. Access logs are
      not part of a backup. --timeout defaults to 60 s here.
  backup list, backups
      Lists the complete backups, newest first, as a table (NAME, CREATED, KEYS, USERS,
      BYTES, PATH; KEYS and USERS are "-" for a backup made before keygate recorded them).
      A backup being made is said on stderr: a backup is in progress (started TIME).

With --json, the server's object as is. Exit status 1 with "keygatectl: 409
backups_disabled: ..." on stderr when keygate runs without [backup] dir, and with "500
backup_failed: REASON" when the backup could not be made (a full disk, permissions): nothing
that looks like a backup is then left behind. Restoring: README.md, "Backups".
)";

enum class Group : uint8_t { kNone, kKeys, kUsers, kApis, kLogs, kStats, kReload, kBackup };

std::string_view help_for(Group group) {
  switch (group) {
    case Group::kKeys:
      return kKeysHelp;
    case Group::kUsers:
      return kUsersHelp;
    case Group::kApis:
      return kApisHelp;
    case Group::kLogs:
      return kLogsHelp;
    case Group::kStats:
      return kStatsHelp;
    case Group::kReload:
      return kReloadHelp;
    case Group::kBackup:
      return kBackupHelp;
    case Group::kNone:
      break;
  }
  return kMainHelp;
}

std::string_view group_name(Group group) {
  switch (group) {
    case Group::kKeys:
      return "keys";
    case Group::kUsers:
      return "users";
    case Group::kApis:
      return "apis";
    case Group::kLogs:
      return "logs";
    case Group::kStats:
      return "stats";
    case Group::kReload:
      return "reload";
    case Group::kBackup:
      return "backup";
    case Group::kNone:
      break;
  }
  return "";
}

// `text` when it looks like a command or option word, else a neutral stand-in: what the user
// typed in the wrong place may be a key value.
std::string echo_word(std::string_view text, std::string_view stand_in) {
  std::string_view word = text;
  while (word.starts_with('-')) word.remove_prefix(1);
  bool ok = !word.empty() && text.size() <= kEchoWordBytesMax;
  for (char c : word) ok = ok && ((c >= 'a' && c <= 'z') || c == '-');
  return ok ? "'" + std::string(text) + "'" : std::string(stand_in);
}

std::string_view usage_line(Group group) {
  switch (group) {
    case Group::kKeys:
      return "usage: keygatectl [global options] keys "
             "create|list|show|update|delete|rotate|import ...\n";
    case Group::kUsers:
      return "usage: keygatectl [global options] users create|list|show|update|delete ...\n";
    case Group::kApis:
      return "usage: keygatectl [global options] apis\n";
    case Group::kLogs:
      return "usage: keygatectl [global options] logs [--key ID] [--status N] [--since TIME] "
             "[--until TIME] [--limit N] [--cursor C] [--follow]\n";
    case Group::kStats:
      return "usage: keygatectl [global options] stats\n";
    case Group::kReload:
      return "usage: keygatectl [global options] reload\n";
    case Group::kBackup:
      return "usage: keygatectl [global options] backup [create|list]\n";
    case Group::kNone:
      break;
  }
  return kUsageLine;
}

int usage_error(Group group, const std::string& message) {
  std::string out = "keygatectl: " + message + "\n";
  out += usage_line(group);
  out += "Try 'keygatectl ";
  if (group != Group::kNone) out.append(group_name(group)).push_back(' ');
  out += "--help'.\n";
  std::fputs(out.c_str(), stderr);
  return kExitUsage;
}

int failure(const std::string& message) {
  std::fprintf(stderr, "keygatectl: %s\n", message.c_str());
  return kExitFailure;
}

// The user's own input, refused before anything was sent (a file that cannot be read or does
// not hold what it should): exit status 2 like a usage error, so 1 always means the server.
int input_error(const std::string& message) {
  std::fprintf(stderr, "keygatectl: %s\n", message.c_str());
  return kExitUsage;
}

// Writes all of `text` to stdout; the exit code to return.
int emit(const std::string& text) {
  if (!text.empty() && std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) {
    return failure("cannot write the output");
  }
  if (std::fflush(stdout) != 0) return failure("cannot write the output");
  return kExitOk;
}

// Writes `table` to stdout, or, when it has no rows, "keygatectl: no <what>" to stderr (an
// empty listing is not an error). The exit code to return.
int emit_table(const Table& table, const char* what) {
  if (table.rows() == 0) {
    std::fprintf(stderr, "keygatectl: no %s\n", what);
    return kExitOk;
  }
  std::string out;
  table.render(&out);
  return emit(out);
}

// ---------------------------------------------------------------------------------------------
// Arguments

enum class Arity : uint8_t {
  kFlag,   // --name
  kValue,  // --name VALUE or --name=VALUE
  kBool,   // --name (true) or --name=true|false
};

struct OptionSpec {
  std::string_view name;  // with the leading "--"
  Arity arity;
};

// Options every command takes after it, as well as before.
constexpr OptionSpec kCommonOptions[] = {
    {"--url", Arity::kValue}, {"--json", Arity::kFlag}, {"--timeout", Arity::kValue}};

struct Args {
  std::vector<std::string> positionals;
  std::vector<std::pair<std::string_view, std::string>> options;  // spec name, value

  bool has(std::string_view name) const {
    for (const auto& [n, v] : options) {
      if (n == name) return true;
    }
    return false;
  }
  // The last value given (a repeated single-valued option: the last one wins).
  std::optional<std::string> last(std::string_view name) const {
    std::optional<std::string> out;
    for (const auto& [n, v] : options) {
      if (n == name) out = v;
    }
    return out;
  }
  std::vector<std::string> all(std::string_view name) const {
    std::vector<std::string> out;
    for (const auto& [n, v] : options) {
      if (n == name) out.push_back(v);
    }
    return out;
  }
};

const OptionSpec* find_option(std::string_view name, std::span<const OptionSpec> specs) {
  for (const OptionSpec& s : specs) {
    if (s.name == name) return &s;
  }
  for (const OptionSpec& s : kCommonOptions) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

// Splits a command's arguments into positionals and options known to `specs` (plus
// kCommonOptions). False with a message for the user on anything else.
bool parse_args(std::span<char* const> argv, std::span<const OptionSpec> specs, Args* out,
                std::string* error) {
  bool options_done = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string_view arg = argv[i];
    if (options_done || arg == "-" || !arg.starts_with('-')) {
      out->positionals.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    const size_t eq = arg.find('=');
    const std::string_view name = arg.substr(0, eq);
    const OptionSpec* spec = find_option(name, specs);
    if (spec == nullptr) {
      if (name == "--key") {
        *error = "--key (the admin key) goes before the command: keygatectl --key KEY ...";
      } else {
        *error = "unknown option " + echo_word(name, "(an unrecognized option)");
      }
      return false;
    }
    std::string value;
    switch (spec->arity) {
      case Arity::kFlag:
        if (eq != std::string_view::npos) {
          *error = std::string(spec->name) + " takes no value";
          return false;
        }
        value = "true";
        break;
      case Arity::kValue:
        if (eq != std::string_view::npos) {
          value = std::string(arg.substr(eq + 1));
        } else if (i + 1 < argv.size()) {
          value = argv[++i];
        } else {
          *error = std::string(spec->name) + " needs a value";
          return false;
        }
        break;
      case Arity::kBool:
        value = eq == std::string_view::npos ? "true" : std::string(arg.substr(eq + 1));
        if (value != "true" && value != "false") {
          *error = std::string(spec->name) + " takes =true or =false";
          return false;
        }
        break;
    }
    out->options.emplace_back(spec->name, std::move(value));
  }
  return true;
}

bool parse_count(std::string_view text, int64_t max, int64_t* out) {
  if (text.empty() || text.size() > 10) return false;
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > max) return false;
  *out = v;
  return true;
}

// A decimal number of 1 to 20 digits that fits in 64 bits (a cursor or seq from the server).
bool parse_count_u64(std::string_view text, uint64_t* out) {
  if (text.empty() || text.size() > 20) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    const auto digit = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *out = v;
  return true;
}

// The shape of a key id as keygate assigns them: "k" and 12 base62 characters.
bool looks_like_key_id(std::string_view text) {
  if (text.size() != 13 || text[0] != 'k') return false;
  for (char c : text.substr(1)) {
    const bool base62 = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    if (!base62) return false;
  }
  return true;
}

// The usage error for something not shaped like a key id where one belongs (`what`: the
// command or option). Checked before anything is sent, so that a key value typed in the wrong
// place never goes into a URL: the admin access log redacts only key= query values. The text
// given is not repeated.
int not_a_key_id(Group group, std::string_view what) {
  return usage_error(group, std::string(what) +
                                " takes a key id (\"k\" and 12 letters or digits, as 'keys list' "
                                "shows), not a key value");
}

// `logs --cursor`: a record's seq, as the note about older records gives it (a decimal number
// from 1). Checked before anything is sent, as key ids are: whatever was typed goes into the
// URL, and so into the admin port's access log in plain text (only key= values are redacted).
bool looks_like_log_cursor(std::string_view text) {
  uint64_t seq = 0;
  return parse_count_u64(text, &seq) && seq > 0;
}

// `logs --since/--until`: an RFC 3339 time from 1970 on, read by the parser GET /admin/logs
// uses (so what passes here is what the server takes); until must be after 1970-01-01T00:00:00Z.
bool looks_like_log_time(std::string_view text, bool until) {
  int64_t seconds = 0;
  return keygate::parse_rfc3339(text, &seconds) && (until ? seconds > 0 : seconds >= 0);
}

// Percent-encodes everything but RFC 3986 unreserved characters: safe in a path segment and in
// a query value alike ('@', '/', '+', ' ' included).
std::string url_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON

// Builds one JSON object member by member; strings are escaped.
class JsonObject {
 public:
  void string(std::string_view name, std::string_view value) {
    member(name);
    append_json_string(out_, value);
  }
  void boolean(std::string_view name, bool value) {
    member(name);
    out_ += value ? "true" : "false";
  }
  void null(std::string_view name) {
    member(name);
    out_ += "null";
  }
  void integer(std::string_view name, int64_t value) {
    member(name);
    out_ += std::to_string(value);
  }
  void string_array(std::string_view name, const std::vector<std::string>& values) {
    member(name);
    out_ += '[';
    for (size_t i = 0; i < values.size(); ++i) {
      if (i > 0) out_ += ',';
      append_json_string(out_, values[i]);
    }
    out_ += ']';
  }
  // `json` must be valid JSON text (the caller built or validated it).
  void raw(std::string_view name, std::string_view json) {
    member(name);
    out_ += json;
  }
  bool empty() const { return out_.size() == 1; }
  std::string finish() {
    out_ += '}';
    return std::move(out_);
  }

 private:
  void member(std::string_view name) {
    if (out_.size() > 1) out_ += ',';
    append_json_string(out_, name);
    out_ += ':';
  }
  std::string out_ = "{";
};

std::string string_member(dom::object o, std::string_view name) {
  std::string_view s;
  if (o[name].get_string().get(s) != simdjson::SUCCESS) return "";
  return std::string(s);
}

// A string member, or nullopt when null or absent.
std::optional<std::string> nullable_string(dom::object o, std::string_view name) {
  std::string_view s;
  if (o[name].get_string().get(s) != simdjson::SUCCESS) return std::nullopt;
  return std::string(s);
}

bool bool_member(dom::object o, std::string_view name) {
  bool b = false;
  if (o[name].get_bool().get(b) != simdjson::SUCCESS) return false;
  return b;
}

std::vector<std::string> string_array(dom::object o, std::string_view name) {
  std::vector<std::string> out;
  dom::array array;
  if (o[name].get_array().get(array) != simdjson::SUCCESS) return out;
  for (dom::element e : array) {
    std::string_view s;
    if (e.get_string().get(s) == simdjson::SUCCESS) out.emplace_back(s);
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += separator;
    out += parts[i];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Rendering

struct KeyView {
  std::string id;
  std::string hint;
  std::string description;
  std::vector<std::string> apis;
  std::optional<std::string> user;
  bool log_request = false;
  bool log_response = false;
  bool enabled = false;
  std::string created_at;
  std::string updated_at;
  std::optional<std::string> expires_at;
  std::optional<std::string> last_used_at;
};

bool read_key(dom::element e, KeyView* out) {
  dom::object o;
  if (e.get_object().get(o) != simdjson::SUCCESS) return false;
  out->id = string_member(o, "id");
  if (out->id.empty()) return false;
  out->hint = string_member(o, "hint");
  out->description = string_member(o, "description");
  out->apis = string_array(o, "apis");
  out->user = nullable_string(o, "user");
  out->log_request = bool_member(o, "log_request");
  out->log_response = bool_member(o, "log_response");
  out->enabled = bool_member(o, "enabled");
  out->created_at = string_member(o, "created_at");
  out->updated_at = string_member(o, "updated_at");
  out->expires_at = nullable_string(o, "expires_at");
  out->last_used_at = nullable_string(o, "last_used_at");
  return true;
}

Table key_table() {
  return Table({"ID", "HINT", "APIS", "USER", "ENABLED", "EXPIRES", "LAST USED", "DESCRIPTION"});
}

void add_key_row(Table& table, const KeyView& k) {
  table.add_row({k.id, k.hint, join(k.apis, ","), k.user.value_or("-"), k.enabled ? "yes" : "no",
                 k.expires_at.value_or("never"), k.last_used_at.value_or("never"), k.description});
}

void render_key(const KeyView& k, std::string* out) {
  render_fields({{"id", {k.id}},
                 {"hint", {k.hint}},
                 {"description", {k.description}},
                 {"apis", {join(k.apis, ", ")}},
                 {"user", {k.user.value_or("-")}},
                 {"enabled", {k.enabled ? "yes" : "no"}},
                 {"expires_at", {k.expires_at.value_or("never")}},
                 {"log_request", {k.log_request ? "yes" : "no"}},
                 {"log_response", {k.log_response ? "yes" : "no"}},
                 {"created_at", {k.created_at}},
                 {"updated_at", {k.updated_at}},
                 {"last_used_at", {k.last_used_at.value_or("never")}}},
                out);
}

// A grant in the syntax --grant takes: api:METHODS[:prefix], '*' for any method.
std::string grant_text(dom::element e) {
  dom::object o;
  if (e.get_object().get(o) != simdjson::SUCCESS) return "?";
  const std::vector<std::string> methods = string_array(o, "methods");
  std::string out = string_member(o, "api");
  out += ':';
  out += methods.empty() ? "*" : join(methods, ",");
  const std::string prefix = string_member(o, "path_prefix");
  if (!prefix.empty()) out += ":" + prefix;
  return out;
}

struct UserView {
  std::string name;
  std::vector<std::string> grants;
};

bool read_user(dom::element e, UserView* out) {
  dom::object o;
  if (e.get_object().get(o) != simdjson::SUCCESS) return false;
  out->name = string_member(o, "name");
  if (out->name.empty()) return false;
  out->grants.clear();
  dom::array grants;
  if (o["grants"].get_array().get(grants) == simdjson::SUCCESS) {
    for (dom::element g : grants) out->grants.push_back(grant_text(g));
  }
  return true;
}

void render_user(const UserView& u, std::string* out) {
  render_fields({{"name", {u.name}},
                 {"grants", u.grants.empty() ? std::vector<std::string>{"(none)"} : u.grants}},
                out);
}

// ---------------------------------------------------------------------------------------------
// Talking to keygate

struct Context {
  Endpoint endpoint;
  std::string admin_key;
  bool json = false;
  ClientLimits limits;
};

// True for a host that stays on this machine: 127.0.0.0/8, ::1, localhost (parse_url takes
// numeric addresses and localhost only).
bool is_loopback(std::string_view host) {
  // An IPv4-mapped 127.x ("::ffff:127.0.0.1") is that IPv4 address (any case of the prefix).
  constexpr std::string_view kMapped = "::ffff:";
  if (equals_ignore_case(host.substr(0, kMapped.size()), kMapped)) {
    host.remove_prefix(kMapped.size());
  }
  return host == "localhost" || host == "::1" || host.starts_with("127.");
}

// Sends one admin request (`body` as JSON when given). False with the reason in `error` when
// keygate could not be reached or answered garbage.
bool try_exchange(const Context& ctx, std::string_view method, const std::string& target,
                  const std::string* body, HttpResponse* out, std::string* error) {
  HttpRequest request;
  request.method = method;
  request.target = target;
  request.headers = {
      {"X-ApiKey", ctx.admin_key}, {"Accept", "application/json"}, {"User-Agent", "keygatectl"}};
  if (body != nullptr) {
    request.body = *body;
    request.json_body = true;
  }
  return http_exchange(ctx.endpoint, request, ctx.limits, out, error);
}

// try_exchange(), saying why on stderr when it fails.
bool exchange(const Context& ctx, std::string_view method, const std::string& target,
              const std::string* body, HttpResponse* out) {
  std::string error;
  if (!try_exchange(ctx, method, target, body, out, &error)) {
    failure(error);
    return false;
  }
  return true;
}

bool success(const HttpResponse& r) { return r.status >= 200 && r.status < 300; }

// Says on stderr why keygate refused a request: "keygatectl: STATUS ERROR: MESSAGE (field: F)".
// `field_note` may add to the field (import: the line it came from). Returns kExitFailure.
int report_refusal(const HttpResponse& r,
                   std::string (*field_note)(std::string_view field, const void* arg) = nullptr,
                   const void* note_arg = nullptr) {
  dom::parser parser;
  dom::object o;
  std::string line = "keygatectl: " + std::to_string(r.status);
  std::string code;
  if (parser.parse(r.body.data(), r.body.size()).get_object().get(o) == simdjson::SUCCESS &&
      !(code = string_member(o, "error")).empty()) {
    line += " " + printable(code) + ": " + printable(string_member(o, "message"));
    const std::optional<std::string> field = nullable_string(o, "field");
    if (field) {
      line += " (field: " + printable(*field);
      if (field_note != nullptr) line += field_note(*field, note_arg);
      line += ")";
    }
  } else {
    line += " " + printable(r.reason) + " (the response is not a keygate admin error)";
  }
  line += '\n';
  if (r.status == 401) {
    line += "keygatectl: the admin key was not accepted: check --key or " +
            std::string(kAdminKeyEnv) + "\n";
  } else if (r.status == 403 && code == "api_not_permitted") {
    line += "keygatectl: the key given is not an admin key (its apis lack \"admin\")\n";
  }
  std::fputs(line.c_str(), stderr);
  return kExitFailure;
}

int unexpected_response(std::string_view what) {
  return failure("unexpected response from the server: " + std::string(what));
}

// The response body as the --json output: as it came, newline-terminated, except that what a
// terminal would act on (C1 controls, raw control bytes, invalid UTF-8) is written as JSON escapes
// per `convention` (terminal_safe_json): a valid document still means the same.
int emit_json(const HttpResponse& r, RawBytes convention = RawBytes::kCodePoints) {
  std::string out = terminal_safe_json(r.body, convention);
  if (!out.empty() && out.back() != '\n') out += '\n';
  return emit(out);
}

// Runs one request whose answer is a single key record, printed with its value first when the
// response carries one (create and rotate).
// Sends one request whose answer is one JSON document. Returns kRender with `*root` parsed
// when the caller should render it; otherwise the exit code (a refusal, a transport failure, or
// --json output already printed).
constexpr int kRender = -1;
int fetch_document(const Context& ctx, std::string_view method, const std::string& target,
                   const std::string* body, HttpResponse* r, dom::parser* parser,
                   dom::element* root) {
  if (!exchange(ctx, method, target, body, r)) return kExitFailure;
  if (!success(*r)) return report_refusal(*r);
  if (ctx.json) return emit_json(*r);
  if (parser->parse(r->body.data(), r->body.size()).get(*root) != simdjson::SUCCESS) {
    return unexpected_response("not JSON");
  }
  return kRender;
}

// Appends `e` to `*items`, the members of a JSON array being built (without its brackets).
void append_array_item(std::string* items, dom::element e) {
  if (!items->empty()) *items += ',';
  *items += simdjson::to_string(e);
}

// The cursors a paged listing has been given. A server that hands one out again (A, B, A, B, ...)
// would page forever, gathering rows; any repeat ends the walk. Each cursor is kept as a 64-bit
// hash (at most kListPagesMax of them, 8 MiB): a chance collision among a million cursors, which
// would end a legitimate walk early with an error, has odds near 1 in 10^7.
class CursorTrail {
 public:
  // False when `cursor` was given before.
  bool is_new(std::string_view cursor) {
    return seen_.insert(std::hash<std::string_view>{}(cursor)).second;
  }

 private:
  std::unordered_set<size_t> seen_;
};

// One page of a paged listing (GET /admin/keys or /admin/users).
struct ListPage {
  dom::object root;
  dom::array items;  // the listing's array member ("keys", "users")
  bool last = true;  // next_cursor is null (or absent: a server that sends everything at once)
};

// GETs `target` (a query string already begun) with `*cursor`, when set, as its cursor, reads the
// page into `*page` and moves `*cursor` on to the page's next_cursor. kRender, or the exit code:
// the request was refused or failed, the answer is not a listing of `member`, or its cursor is
// one `trail` has seen (the server would page forever). With `raw_json` the page is printed as it
// came instead (the --json output of a single page).
int fetch_list_page(const Context& ctx, std::string target, std::string_view member, bool raw_json,
                    dom::parser& parser, std::optional<std::string>* cursor, CursorTrail* trail,
                    ListPage* page) {
  if (*cursor) target += "&cursor=" + url_encode(**cursor);
  HttpResponse r;
  if (!exchange(ctx, "GET", target, nullptr, &r)) return kExitFailure;
  if (!success(r)) return report_refusal(r);
  if (raw_json) return emit_json(r);
  if (parser.parse(r.body.data(), r.body.size()).get_object().get(page->root) !=
          simdjson::SUCCESS ||
      page->root[member].get_array().get(page->items) != simdjson::SUCCESS) {
    return unexpected_response("not a listing of " + std::string(member));
  }
  std::optional<std::string> next = nullable_string(page->root, "next_cursor");
  page->last = !next;
  if (next) {
    if ((*cursor && *next == **cursor) || !trail->is_new(*next)) {
      return unexpected_response("the cursor did not advance (a cursor came again)");
    }
    *cursor = std::move(next);
  }
  return kRender;
}

int key_record_command(const Context& ctx, std::string_view method, const std::string& target,
                       const std::string* body) {
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  if (const int rc = fetch_document(ctx, method, target, body, &r, &parser, &root);
      rc != kRender) {
    return rc;
  }
  KeyView k;
  if (!read_key(root, &k)) return unexpected_response("not a key record");
  std::string out;
  std::string_view value;
  if (root["key"].get_string().get(value) == simdjson::SUCCESS) {
    out += "key: " + printable(value) + "\n";
    std::fputs("keygatectl: this is the only time the key's value is shown: store it now\n",
               stderr);
  }
  render_key(k, &out);
  return emit(out);
}

int user_record_command(const Context& ctx, std::string_view method, const std::string& target,
                        const std::string* body) {
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  if (const int rc = fetch_document(ctx, method, target, body, &r, &parser, &root);
      rc != kRender) {
    return rc;
  }
  UserView u;
  if (!read_user(root, &u)) return unexpected_response("not a user record");
  std::string out;
  render_user(u, &out);
  return emit(out);
}

int delete_command(const Context& ctx, const std::string& target, std::string_view what) {
  HttpResponse r;
  if (!exchange(ctx, "DELETE", target, nullptr, &r)) return kExitFailure;
  if (!success(r)) return report_refusal(r);
  if (ctx.json) return emit_json(r);
  return emit("deleted " + printable(what) + "\n");
}

// ---------------------------------------------------------------------------------------------
// keys

// Reads `path` ('-': stdin) into *out, stopping once it holds more than `bytes_max` bytes: the
// caller checks the size. False with a message naming the file `name` when it cannot be
// opened or read (a directory opens, then fails to read). Plain read(2) rather than iostreams,
// which throw from inside istreambuf_iterator on a read error.
bool read_all(const std::string& path, const std::string& name, size_t bytes_max, std::string* out,
              std::string* error) {
  int fd = STDIN_FILENO;
  if (path != "-") {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *error = "cannot open " + name + ": " + std::strerror(errno);
      return false;
    }
  }
  int err = 0;
  const bool ok = keygate::tools::read_fd(fd, bytes_max, out, &err);
  if (!ok) *error = "cannot read " + name + ": " + std::strerror(err);
  if (fd != STDIN_FILENO) ::close(fd);
  return ok;
}

std::string key_path(std::string_view id) { return "/admin/keys/" + url_encode(id); }

int keys_create(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kKeys, "keys create takes no ID");
  const std::vector<std::string> apis = args.all("--api");
  if (apis.empty()) return usage_error(Group::kKeys, "keys create needs at least one --api NAME");
  std::optional<std::string> value = args.last("--key");
  if (auto path = args.last("--key-file")) {
    if (value) return usage_error(Group::kKeys, "--key and --key-file exclude each other");
    std::string text;
    std::string error;
    // The file is named in no message: what was typed there may be the key value itself.
    if (!read_all(*path, "the --key-file", kKeyFileBytesMax, &text, &error)) {
      return input_error(error);
    }
    if (text.size() > kKeyFileBytesMax) {
      return usage_error(Group::kKeys, "the --key-file is larger than 64 KiB: not one key value");
    }
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (text.empty()) return usage_error(Group::kKeys, "the --key-file is empty");
    if (text.find_first_of("\r\n") != std::string::npos) {
      return usage_error(Group::kKeys, "the --key-file holds more than one line");
    }
    value = std::move(text);
  }
  JsonObject body;
  body.string_array("apis", apis);
  if (auto v = args.last("--description")) body.string("description", *v);
  if (auto v = args.last("--user")) body.string("user", *v);
  if (value) body.string("key", *value);
  if (auto v = args.last("--log-request")) body.boolean("log_request", *v == "true");
  if (auto v = args.last("--log-response")) body.boolean("log_response", *v == "true");
  if (args.has("--disabled")) body.boolean("enabled", false);
  if (auto v = args.last("--expires-at")) body.string("expires_at", *v);
  const std::string json = body.finish();
  return key_record_command(ctx, "POST", "/admin/keys", &json);
}

int keys_list(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kKeys, "keys list takes no arguments");
  int64_t limit = kListLimitDefault;
  if (auto v = args.last("--limit"); v && !parse_count(*v, kListLimitMax, &limit)) {
    return usage_error(Group::kKeys, "--limit takes 1 to 1000");
  }
  if (limit < 1) return usage_error(Group::kKeys, "--limit takes 1 to 1000");
  std::string filters;
  if (auto v = args.last("--api")) filters += "&api=" + url_encode(*v);
  if (auto v = args.last("--user")) filters += "&user=" + url_encode(*v);
  if (auto v = args.last("--unused-since")) filters += "&unused_since=" + url_encode(*v);
  const bool all = args.has("--all");
  std::optional<std::string> cursor = args.last("--cursor");
  if (cursor && !looks_like_key_id(*cursor)) return not_a_key_id(Group::kKeys, "--cursor");

  Table table = key_table();
  std::string merged;  // --all --json: the records of every page
  size_t shown = 0;
  dom::parser parser;
  CursorTrail trail;
  for (size_t page = 0;; ++page) {
    if (page == kListPagesMax) return failure("keys list: too many pages; giving up");
    if (shown > kListRowsMax) return failure("keys list: too many keys; giving up");
    // A filtered page may come back short, even empty (the server bounds its scan). Unless the
    // raw page is wanted (--json without --all), ask again for what is missing, so a table
    // shows up to --limit keys.
    const int64_t want = all ? limit : limit - static_cast<int64_t>(shown);
    ListPage keys;
    if (const int rc = fetch_list_page(ctx, "/admin/keys?limit=" + std::to_string(want) + filters,
                                       "keys", ctx.json && !all, parser, &cursor, &trail, &keys);
        rc != kRender) {
      return rc;
    }
    for (dom::element e : keys.items) {
      ++shown;
      if (ctx.json) {
        append_array_item(&merged, e);
        continue;
      }
      KeyView k;
      if (!read_key(e, &k)) return unexpected_response("not a key record");
      add_key_row(table, k);
    }
    if (keys.last) break;
    if (!all && static_cast<int64_t>(shown) >= limit) {
      std::fprintf(stderr,
                   "keygatectl: more keys may follow: add --cursor %s for the next page, or "
                   "--all\n",
                   printable(*cursor).c_str());
      break;
    }
  }
  if (ctx.json) return emit("{\"keys\":[" + merged + "],\"next_cursor\":null}\n");
  return emit_table(table, "keys");
}

int keys_show(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kKeys, "keys show needs one ID");
  if (!looks_like_key_id(args.positionals[0])) return not_a_key_id(Group::kKeys, "keys show");
  return key_record_command(ctx, "GET", key_path(args.positionals[0]), nullptr);
}

int keys_update(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kKeys, "keys update needs one ID");
  if (!looks_like_key_id(args.positionals[0])) return not_a_key_id(Group::kKeys, "keys update");
  if (args.has("--user") && args.has("--no-user")) {
    return usage_error(Group::kKeys, "--user and --no-user exclude each other");
  }
  if (args.has("--expires-at") && args.has("--no-expiry")) {
    return usage_error(Group::kKeys, "--expires-at and --no-expiry exclude each other");
  }
  JsonObject body;
  if (auto v = args.last("--description")) body.string("description", *v);
  const std::vector<std::string> apis = args.all("--api");
  if (!apis.empty()) body.string_array("apis", apis);
  if (auto v = args.last("--user")) body.string("user", *v);
  if (args.has("--no-user")) body.null("user");
  if (auto v = args.last("--log-request")) body.boolean("log_request", *v == "true");
  if (auto v = args.last("--log-response")) body.boolean("log_response", *v == "true");
  if (auto v = args.last("--enabled")) body.boolean("enabled", *v == "true");
  if (auto v = args.last("--expires-at")) body.string("expires_at", *v);
  if (args.has("--no-expiry")) body.null("expires_at");
  if (body.empty()) return usage_error(Group::kKeys, "keys update needs something to change");
  const std::string json = body.finish();
  return key_record_command(ctx, "PATCH", key_path(args.positionals[0]), &json);
}

int keys_delete(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kKeys, "keys delete needs one ID");
  if (!looks_like_key_id(args.positionals[0])) return not_a_key_id(Group::kKeys, "keys delete");
  return delete_command(ctx, key_path(args.positionals[0]), "key " + args.positionals[0]);
}

int keys_rotate(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kKeys, "keys rotate needs one ID");
  if (!looks_like_key_id(args.positionals[0])) return not_a_key_id(Group::kKeys, "keys rotate");
  std::string json;
  if (auto v = args.last("--grace-seconds")) {
    int64_t seconds = 0;
    if (!parse_count(*v, 9'999'999'999, &seconds)) {
      return usage_error(Group::kKeys, "--grace-seconds takes a number of seconds");
    }
    JsonObject body;
    body.integer("grace_seconds", seconds);
    json = body.finish();
  }
  return key_record_command(ctx, "POST", key_path(args.positionals[0]) + "/rotate", &json);
}

// Import errors name a field "keys[N]..."; this turns N into the file's line number.
struct ImportLines {
  std::string file;
  std::vector<size_t> line_of_key;
};

std::string import_line_note(std::string_view field, const void* arg) {
  const auto& lines = *static_cast<const ImportLines*>(arg);
  if (!field.starts_with("keys[")) return "";
  const size_t close = field.find(']');
  int64_t index = 0;
  if (close == std::string_view::npos ||
      !parse_count(field.substr(5, close - 5), 1'000'000'000, &index) ||
      static_cast<size_t>(index) >= lines.line_of_key.size()) {
    return "";
  }
  return ", " + lines.file + " line " +
         std::to_string(lines.line_of_key[static_cast<size_t>(index)]);
}

int keys_import(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kKeys, "keys import needs one FILE");
  ImportLines lines;
  lines.file = args.positionals[0] == "-" ? "stdin" : args.positionals[0];
  std::string text;
  std::string error;
  if (!read_all(args.positionals[0], lines.file, kImportFileBytesMax, &text, &error)) {
    return input_error(error);
  }
  if (text.size() > kImportFileBytesMax) {
    return input_error("the import file is larger than 1 GiB");
  }

  // Each line is checked to be one JSON object here, so a typo is reported by line before
  // anything is sent, and the lines can then be joined into the body as they are. Messages name
  // lines only: their text holds key values.
  std::string body = "{\"keys\":[";
  dom::parser parser;
  size_t line_number = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line = std::string_view(text).substr(start, end - start);
    start = end + 1;
    ++line_number;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.remove_suffix(1);
    }
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty()) continue;
    dom::object object;
    if (parser.parse(line.data(), line.size()).get_object().get(object) != simdjson::SUCCESS) {
      return input_error(lines.file + " line " + std::to_string(line_number) +
                         ": not a JSON object (one key object per line)");
    }
    if (!lines.line_of_key.empty()) body += ',';
    body += line;
    lines.line_of_key.push_back(line_number);
  }
  body += "]}";
  if (lines.line_of_key.empty()) return input_error(lines.file + " holds no keys");

  HttpResponse r;
  if (!exchange(ctx, "POST", "/admin/keys/import", &body, &r)) return kExitFailure;
  if (!success(r)) return report_refusal(r, import_line_note, &lines);
  if (ctx.json) return emit_json(r);
  dom::object root;
  uint64_t imported = 0;
  if (parser.parse(r.body.data(), r.body.size()).get_object().get(root) != simdjson::SUCCESS ||
      root["imported"].get_uint64().get(imported) != simdjson::SUCCESS) {
    return unexpected_response("not an import result");
  }
  return emit("imported " + std::to_string(imported) + (imported == 1 ? " key\n" : " keys\n"));
}

// ---------------------------------------------------------------------------------------------
// users

std::string user_path(std::string_view name) { return "/admin/users/" + url_encode(name); }

// Parses API[:METHODS[:PATH_PREFIX]] into a grant object's JSON.
bool grant_json(std::string_view text, std::string* out, std::string* error) {
  const size_t first = text.find(':');
  const std::string_view api = text.substr(0, first);
  std::string_view methods_text;
  std::string_view prefix;
  if (first != std::string_view::npos) {
    const std::string_view rest = text.substr(first + 1);
    const size_t second = rest.find(':');
    methods_text = rest.substr(0, second);
    if (second != std::string_view::npos) prefix = rest.substr(second + 1);
  }
  if (api.empty()) {
    *error = "a --grant names its API first: API[:METHODS[:PATH_PREFIX]]";
    return false;
  }
  JsonObject grant;
  grant.string("api", api);
  if (!methods_text.empty() && methods_text != "*") {
    std::vector<std::string> methods;
    while (true) {
      const size_t comma = methods_text.find(',');
      const std::string_view method = methods_text.substr(0, comma);
      if (method.empty()) {
        *error = "a --grant's METHODS are comma-separated HTTP methods, or '*'";
        return false;
      }
      methods.emplace_back(method);
      if (comma == std::string_view::npos) break;
      methods_text = methods_text.substr(comma + 1);
    }
    grant.string_array("methods", methods);
  }
  if (!prefix.empty()) grant.string("path_prefix", prefix);
  *out = grant.finish();
  return true;
}

bool grants_json(const Args& args, std::string* out, std::string* error) {
  *out = "[";
  for (const std::string& g : args.all("--grant")) {
    std::string one;
    if (!grant_json(g, &one, error)) return false;
    if (out->size() > 1) *out += ',';
    *out += one;
  }
  *out += ']';
  return true;
}

int users_create(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kUsers, "users create needs a NAME");
  std::string grants;
  std::string error;
  if (!grants_json(args, &grants, &error)) return usage_error(Group::kUsers, error);
  JsonObject body;
  body.string("name", args.positionals[0]);
  body.raw("grants", grants);
  const std::string json = body.finish();
  return user_record_command(ctx, "POST", "/admin/users", &json);
}

// Every user: the server hands them out a page at a time, and every page is followed, so that a
// listing never stops at the first page.
int users_list(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) {
    return usage_error(Group::kUsers, "users list takes no arguments");
  }
  int64_t limit = kListLimitMax;
  if (auto v = args.last("--limit"); v && (!parse_count(*v, kListLimitMax, &limit) || limit < 1)) {
    return usage_error(Group::kUsers, "--limit takes 1 to 1000");
  }
  Table table({"NAME", "GRANTS"});
  std::string merged;  // --json: the users of every page
  std::optional<std::string> cursor;
  dom::parser parser;
  CursorTrail trail;
  size_t rows = 0;
  for (size_t page = 0;; ++page) {
    if (page == kListPagesMax) return failure("users list: too many pages; giving up");
    if (rows > kListRowsMax) return failure("users list: too many users; giving up");
    ListPage users;
    if (const int rc = fetch_list_page(ctx, "/admin/users?limit=" + std::to_string(limit), "users",
                                       false, parser, &cursor, &trail, &users);
        rc != kRender) {
      return rc;
    }
    for (dom::element e : users.items) {
      ++rows;
      if (ctx.json) {
        append_array_item(&merged, e);
        continue;
      }
      UserView u;
      if (!read_user(e, &u)) return unexpected_response("not a user record");
      table.add_row({u.name, u.grants.empty() ? "(none)" : join(u.grants, " ")});
    }
    if (users.last) break;
  }
  if (ctx.json) return emit("{\"users\":[" + merged + "],\"next_cursor\":null}\n");
  return emit_table(table, "users");
}

int users_show(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kUsers, "users show needs a NAME");
  return user_record_command(ctx, "GET", user_path(args.positionals[0]), nullptr);
}

int users_update(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kUsers, "users update needs a NAME");
  const bool grants_given = args.has("--grant");
  if (grants_given && args.has("--no-grants")) {
    return usage_error(Group::kUsers, "--grant and --no-grants exclude each other");
  }
  if (!grants_given && !args.has("--no-grants")) {
    return usage_error(Group::kUsers, "users update needs --grant GRANT ... or --no-grants");
  }
  std::string grants;
  std::string error;
  if (!grants_json(args, &grants, &error)) return usage_error(Group::kUsers, error);
  JsonObject body;
  body.raw("grants", grants);
  const std::string json = body.finish();
  return user_record_command(ctx, "PATCH", user_path(args.positionals[0]), &json);
}

int users_delete(const Context& ctx, const Args& args) {
  if (args.positionals.size() != 1) return usage_error(Group::kUsers, "users delete needs a NAME");
  return delete_command(ctx, user_path(args.positionals[0]), "user " + args.positionals[0]);
}

// ---------------------------------------------------------------------------------------------
// apis

int apis_list(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kApis, "apis takes no arguments");
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  if (const int rc = fetch_document(ctx, "GET", "/admin/apis", nullptr, &r, &parser, &root);
      rc != kRender) {
    return rc;
  }
  dom::array apis;
  if (root["apis"].get_array().get(apis) != simdjson::SUCCESS) {
    return unexpected_response("not an API listing");
  }
  Table table({"NAME", "ROUTES"});
  for (dom::element e : apis) {
    dom::object o;
    if (e.get_object().get(o) != simdjson::SUCCESS) return unexpected_response("not an API");
    table.add_row({string_member(o, "name"), join(string_array(o, "routes"), " ")});
  }
  std::string out;
  table.render(&out);
  return emit(out);
}

// ---------------------------------------------------------------------------------------------
// stats

int stats_show(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kStats, "stats takes no arguments");
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  if (const int rc = fetch_document(ctx, "GET", "/admin/stats", nullptr, &r, &parser, &root);
      rc != kRender) {
    return rc;
  }
  dom::object groups;
  if (root.get_object().get(groups) != simdjson::SUCCESS) {
    return unexpected_response("not a stats object");
  }
  Table table({"GROUP", "COUNTER", "VALUE"});
  for (dom::key_value_pair group : groups) {
    const std::string name(group.key);
    if (group.value.is_null()) {
      table.add_row({name, "-", "off"});
      continue;
    }
    dom::object counters;
    if (group.value.get_object().get(counters) != simdjson::SUCCESS) {
      return unexpected_response("not a stats group");
    }
    for (dom::key_value_pair counter : counters) {
      uint64_t value = 0;
      if (counter.value.get_uint64().get(value) != simdjson::SUCCESS) {
        return unexpected_response("not a counter");
      }
      table.add_row({name, std::string(counter.key), std::to_string(value)});
    }
  }
  std::string out;
  table.render(&out);
  return emit(out);
}

// ---------------------------------------------------------------------------------------------
// reload

int reload_config(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kReload, "reload takes no arguments");
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  const std::string no_body;  // sent as Content-Length: 0, as a POST without a body should be
  if (const int rc = fetch_document(ctx, "POST", "/admin/reload", &no_body, &r, &parser, &root);
      rc != kRender) {
    return rc;  // a refusal (400 reload_refused, 503 reload_unavailable) said on stderr, exit 1
  }
  uint64_t generation = 0;
  uint64_t apis = 0;
  dom::array changed;
  if (root["generation"].get_uint64().get(generation) != simdjson::SUCCESS ||
      root["apis"].get_uint64().get(apis) != simdjson::SUCCESS ||
      root["restart_settings"].get_array().get(changed) != simdjson::SUCCESS) {
    return unexpected_response("not a reload outcome");
  }
  const auto names = [](dom::array list, std::vector<std::string>* out) {
    for (dom::element e : list) {
      std::string_view name;
      if (e.get_string().get(name) != simdjson::SUCCESS) return false;
      out->emplace_back(name);
    }
    return true;
  };
  std::vector<std::string> settings;
  if (!names(changed, &settings)) return unexpected_response("not a reload outcome");
  // Absent from a keygate that applied [[apis]] only: shown as (none).
  std::vector<std::string> applied;
  dom::array applied_list;
  if (root["applied_settings"].get_array().get(applied_list) == simdjson::SUCCESS &&
      !names(applied_list, &applied)) {
    return unexpected_response("not a reload outcome");
  }
  // Absent from a keygate older than the field: as none.
  std::vector<std::string> pending;
  dom::array late;
  if (root["workers_pending"].get_array().get(late) == simdjson::SUCCESS) {
    for (dom::element e : late) {
      uint64_t worker = 0;
      if (e.get_uint64().get(worker) != simdjson::SUCCESS) {
        return unexpected_response("not a reload outcome");
      }
      pending.push_back(std::to_string(worker));
    }
  }
  const auto or_none = [](std::vector<std::string> list) {
    return list.empty() ? std::vector<std::string>{"(none)"} : list;
  };
  std::vector<std::pair<std::string, std::vector<std::string>>> fields = {
      {"generation", {std::to_string(generation)}},
      {"apis", {std::to_string(apis)}},
      {"applied_settings", or_none(applied)},
      {"restart_settings", or_none(settings)}};
  if (!pending.empty()) fields.push_back({"workers_pending", pending});
  std::string out;
  render_fields(fields, &out);
  if (!pending.empty()) {
    std::fputs("keygatectl: the workers_pending had not taken the new APIs yet (their event loop "
               "is held up): each takes them at its next loop pass\n",
               stderr);
  }
  if (!settings.empty()) {
    // On stderr, like the notes of other commands: stdout stays the outcome alone.
    std::fputs("keygatectl: the restart_settings changed in the file but take effect only when "
               "keygate restarts\n",
               stderr);
  }
  return emit(out);
}

// ---------------------------------------------------------------------------------------------
// backup

int backup_create(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kBackup, "backup takes no arguments");
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  const std::string no_body;  // sent as Content-Length: 0, as a POST without a body should be
  if (const int rc = fetch_document(ctx, "POST", "/admin/backups", &no_body, &r, &parser, &root);
      rc != kRender) {
    return rc;  // a refusal (409 backups_disabled, 500 backup_failed) said on stderr, exit 1
  }
  dom::object o;
  uint64_t seq = 0;
  uint64_t keys = 0;
  uint64_t users = 0;
  uint64_t bytes = 0;
  if (root.get_object().get(o) != simdjson::SUCCESS ||
      o["seq"].get_uint64().get(seq) != simdjson::SUCCESS ||
      o["keys"].get_uint64().get(keys) != simdjson::SUCCESS ||
      o["users"].get_uint64().get(users) != simdjson::SUCCESS ||
      o["bytes"].get_uint64().get(bytes) != simdjson::SUCCESS) {
    return unexpected_response("not a backup");
  }
  std::string out;
  render_fields({{"name", {string_member(o, "name")}},
                 {"path", {string_member(o, "path")}},
                 {"created_at", {string_member(o, "created_at")}},
                 {"seq", {std::to_string(seq)}},
                 {"keys", {std::to_string(keys)}},
                 {"users", {std::to_string(users)}},
                 {"bytes", {std::to_string(bytes)}}},
                &out);
  return emit(out);
}

int backup_list(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) {
    return usage_error(Group::kBackup, "backup list takes no arguments");
  }
  HttpResponse r;
  dom::parser parser;
  dom::element root;
  if (const int rc = fetch_document(ctx, "GET", "/admin/backups", nullptr, &r, &parser, &root);
      rc != kRender) {
    return rc;
  }
  dom::array backups;
  if (root["backups"].get_array().get(backups) != simdjson::SUCCESS) {
    return unexpected_response("not a backup listing");
  }
  // keys/users: null for a backup made before keygate recorded them ("-" here).
  const auto count_or_dash = [](dom::object o, const char* member) {
    uint64_t n = 0;
    return o[member].get_uint64().get(n) == simdjson::SUCCESS ? std::to_string(n)
                                                              : std::string("-");
  };
  Table table({"NAME", "CREATED", "KEYS", "USERS", "BYTES", "PATH"});
  for (dom::element e : backups) {
    dom::object o;
    uint64_t bytes = 0;
    if (e.get_object().get(o) != simdjson::SUCCESS ||
        o["bytes"].get_uint64().get(bytes) != simdjson::SUCCESS) {
      return unexpected_response("not a backup");
    }
    table.add_row({string_member(o, "name"), string_member(o, "created_at"),
                   count_or_dash(o, "keys"), count_or_dash(o, "users"), std::to_string(bytes),
                   string_member(o, "path")});
  }
  // On stderr, so the table stays what a script parses: a backup being made is not listed
  // until it is complete, and an operator waiting for one should know it is coming.
  dom::object progress;
  if (root["in_progress"].get_object().get(progress) == simdjson::SUCCESS) {
    std::fprintf(stderr, "keygatectl: a backup is in progress (started %s)\n",
                 one_line(string_member(progress, "started_at")).c_str());
  }
  return emit_table(table, "backups");
}

// ---------------------------------------------------------------------------------------------
// logs

// Set by SIGINT/SIGTERM while `logs --follow` runs.
volatile sig_atomic_t g_stop_requested = 0;

void on_stop_signal(int) { g_stop_requested = 1; }

// Without SA_RESTART, so a sleep ends at once; the HTTP client retries on EINTR, so a request
// in flight finishes (bounded by --timeout) before the flag is seen.
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// Sleeps `ms` or until a stop signal arrives.
void sleep_or_stop(long ms) {
  timespec left{ms / 1000, (ms % 1000) * 1'000'000};
  while (g_stop_requested == 0 && nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

// The end of the JSON value starting at text[pos]; `text` is known to be valid JSON.
size_t skip_json_value(std::string_view text, size_t pos) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = pos; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
        if (depth == 0) return i + 1;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '{':
      case '[':
        ++depth;
        break;
      case '}':
      case ']':
        if (depth == 0) return i;  // the end of a scalar inside a container
        if (--depth == 0) return i + 1;
        break;
      case ',':
      case ' ':
      case '\t':
      case '\r':
      case '\n':
        if (depth == 0) return i;
        break;
      default:
        break;
    }
  }
  return text.size();
}

size_t skip_json_space(std::string_view text, size_t pos) {
  while (pos < text.size() &&
         (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\r' || text[pos] == '\n')) {
    ++pos;
  }
  return pos;
}

// One page of GET /admin/logs: each record as the exact text the server sent (parsing and
// re-serializing would change escapes such as "\u00e9", which in a record stands for a raw
// byte), and the cursor.
struct LogsPage {
  std::vector<std::string_view> records;  // views into the response body
  std::optional<std::string> next_cursor;
  // Follow: the seqs (from, to) the log no longer holds, between the poll's after and the
  // page's first record ("missing").
  std::optional<std::pair<uint64_t, uint64_t>> missing;
};

// Validates the page with simdjson, then cuts the members of "records" out of the text.
bool read_logs_page(const std::string& body, dom::parser& parser, LogsPage* out) {
  out->records.clear();
  dom::object root;
  dom::array records;
  if (parser.parse(body.data(), body.size()).get_object().get(root) != simdjson::SUCCESS ||
      root["records"].get_array().get(records) != simdjson::SUCCESS) {
    return false;
  }
  for (dom::element e : records) {
    if (!e.is_object()) return false;
  }
  out->next_cursor = nullable_string(root, "next_cursor");
  out->missing.reset();
  if (dom::object missing; root["missing"].get_object().get(missing) == simdjson::SUCCESS) {
    uint64_t from = 0;
    uint64_t to = 0;
    if (!parse_count_u64(string_member(missing, "from"), &from) ||
        !parse_count_u64(string_member(missing, "to"), &to) || from == 0 || to < from) {
      return false;
    }
    out->missing.emplace(from, to);
  }
  const std::string_view text = body;
  size_t pos = skip_json_space(text, 0) + 1;  // past '{'
  while (true) {
    pos = skip_json_space(text, pos);
    if (pos >= text.size() || text[pos] != '"') return false;
    const size_t name_end = skip_json_value(text, pos);
    const std::string_view name = text.substr(pos, name_end - pos);
    pos = skip_json_space(text, name_end);
    if (pos >= text.size() || text[pos] != ':') return false;
    pos = skip_json_space(text, pos + 1);
    if (name != "\"records\"") {
      pos = skip_json_space(text, skip_json_value(text, pos));
      if (pos >= text.size() || text[pos] != ',') return false;
      ++pos;
      continue;
    }
    pos = skip_json_space(text, pos + 1);  // past '['
    while (pos < text.size() && text[pos] != ']') {
      const size_t end = skip_json_value(text, pos);
      out->records.push_back(text.substr(pos, end - pos));
      pos = skip_json_space(text, end);
      if (pos < text.size() && text[pos] == ',') pos = skip_json_space(text, pos + 1);
    }
    return out->records.size() == records.size();
  }
}

struct LogsQuery {
  std::string filters;  // "&key_id=...&status=..." as given
  int64_t limit = kLogsLimitDefault;
};

// fetch_logs() when keygate could not be reached and the caller retries (--follow).
constexpr int kUnreachable = -2;

// Fetches one page; kRender when `*page` holds it, else the exit code. With `unreachable`, a
// keygate that cannot be reached is kUnreachable with the reason there (nothing is printed).
int fetch_logs(const Context& ctx, const std::string& params, HttpResponse* r, dom::parser& parser,
               LogsPage* page, std::string* unreachable = nullptr) {
  if (unreachable != nullptr) {
    if (!try_exchange(ctx, "GET", "/admin/logs?" + params, nullptr, r, unreachable)) {
      return kUnreachable;
    }
  } else if (!exchange(ctx, "GET", "/admin/logs?" + params, nullptr, r)) {
    return kExitFailure;
  }
  if (!success(*r)) return report_refusal(*r);
  if (!read_logs_page(r->body, parser, page)) {
    return unexpected_response("not a page of access-log records");
  }
  return kRender;
}

// Prints records newest first, following the cursor until --limit records were shown (a
// filtered page may come back short: the server bounds the bytes one request scans).
int logs_page(const Context& ctx, const LogsQuery& q, std::optional<std::string> cursor) {
  dom::parser parser;
  int64_t shown = 0;
  for (size_t page_number = 0;; ++page_number) {
    if (page_number == kListPagesMax) return failure("logs: too many pages; giving up");
    std::string params = "limit=" + std::to_string(q.limit - shown) + q.filters;
    if (cursor) params += "&cursor=" + url_encode(*cursor);
    HttpResponse r;
    if (ctx.json) {
      // The server's page as is.
      if (!exchange(ctx, "GET", "/admin/logs?" + params, nullptr, &r)) return kExitFailure;
      if (!success(r)) return report_refusal(r);
      return emit_json(r, RawBytes::kRawByte);  // records: "\u00XX" is the raw byte XX
    }
    LogsPage page;
    if (const int rc = fetch_logs(ctx, params, &r, parser, &page); rc != kRender) return rc;
    std::string out;
    for (std::string_view record : page.records) {
      out.append(terminal_safe_json(record, RawBytes::kRawByte)).push_back('\n');
      ++shown;
    }
    if (const int rc = emit(out); rc != kExitOk) return rc;
    if (!page.next_cursor) break;
    if (cursor && *page.next_cursor == *cursor) {
      return unexpected_response("the cursor did not advance");
    }
    cursor = page.next_cursor;
    if (shown >= q.limit) {
      std::fprintf(stderr,
                   "keygatectl: older records may follow: add --cursor %s for the next page\n",
                   printable(*cursor).c_str());
      return kExitOk;
    }
  }
  if (shown == 0) std::fputs("keygatectl: no records\n", stderr);
  return kExitOk;
}

// The seq of the newest record of the whole log, unfiltered (0 when the log is empty); kRender
// on success, else the exit code (see fetch_logs() for `unreachable`).
int newest_seq(const Context& ctx, dom::parser& parser, uint64_t* seq,
               std::string* unreachable = nullptr) {
  HttpResponse r;
  LogsPage page;
  if (const int rc = fetch_logs(ctx, "limit=1", &r, parser, &page, unreachable); rc != kRender) {
    return rc;
  }
  *seq = 0;
  if (page.records.empty()) return kRender;
  dom::parser record_parser;
  dom::object o;
  const std::string_view record = page.records.front();
  if (record_parser.parse(record.data(), record.size()).get_object().get(o) != simdjson::SUCCESS ||
      o["seq"].get_uint64().get(*seq) != simdjson::SUCCESS || *seq == 0) {
    return unexpected_response("a record without a seq");
  }
  return kRender;
}

// A record of a log query (GET /admin/logs on the admin port). --follow leaves them out: its
// own polling would otherwise add two lines a second to what it shows.
bool is_log_query(dom::parser& parser, std::string_view record) {
  dom::object object;
  if (parser.parse(record.data(), record.size()).get(object) != simdjson::SUCCESS) return false;
  std::string_view listener;
  std::string_view path;
  return object["listener"].get(listener) == simdjson::SUCCESS && listener == "admin" &&
         object["path"].get(path) == simdjson::SUCCESS &&
         (path == "/admin/logs" || path.starts_with("/admin/logs?"));
}

// Appends the records that are not log queries to `out`, one per line.
void append_followed(dom::parser& parser, std::string_view record, std::string* out) {
  if (is_log_query(parser, record)) return;
  out->append(terminal_safe_json(record, RawBytes::kRawByte)).push_back('\n');
}

// Prints the matching records with seq <= `upto`, oldest first (log queries left out): the
// newest `limit` of them, or all of them when `limit` is 0. Log queries are left out as the
// pages come, so they do not count towards `limit`: the pages go on until `limit` other
// records are in or the log ends (each `keygatectl logs` run adds one query record, and those
// used to fill the backlog and push the records asked for out of it). Prints nothing unless
// every page came (see fetch_logs() for `unreachable`).
int print_backlog(const Context& ctx, const LogsQuery& q, uint64_t upto, int64_t limit,
                  std::string* unreachable = nullptr) {
  dom::parser parser;
  dom::parser record_parser;
  std::vector<std::string> backlog;  // newest first
  const auto enough = [&] { return limit != 0 && static_cast<int64_t>(backlog.size()) >= limit; };
  std::optional<std::string> cursor = std::to_string(upto + 1);
  for (size_t page_number = 0; cursor && g_stop_requested == 0 && !enough(); ++page_number) {
    if (page_number == kListPagesMax) return failure("logs: too many pages; giving up");
    // Whole pages even when few records are missing: a log whose newest records are log
    // queries (another follow polling for an hour leaves thousands) would otherwise be walked
    // a record or two per request.
    HttpResponse r;
    LogsPage page;
    const std::string params =
        "limit=" + std::to_string(kLogsLimitMax) + q.filters + "&cursor=" + url_encode(*cursor);
    if (const int rc = fetch_logs(ctx, params, &r, parser, &page, unreachable); rc != kRender) {
      return rc;
    }
    for (size_t i = 0; i < page.records.size() && !enough(); ++i) {
      if (!is_log_query(record_parser, page.records[i])) backlog.emplace_back(page.records[i]);
    }
    if (page.next_cursor && *page.next_cursor == *cursor) {
      return unexpected_response("the cursor did not advance");
    }
    cursor = page.next_cursor;
  }
  std::string out;
  for (auto it = backlog.rbegin(); it != backlog.rend(); ++it) {
    out.append(terminal_safe_json(*it, RawBytes::kRawByte)).push_back('\n');
  }
  return emit(out);
}

// A follow page that starts after a gap: those records were deleted by retention (or are in a
// segment keygate cannot read) before the follow read them. Said on stderr, so stdout keeps
// only records.
void report_missing(const LogsPage& page) {
  if (!page.missing) return;
  const auto [from, to] = *page.missing;
  if (from == to) {
    std::fprintf(stderr,
                 "keygatectl: 1 record (seq %llu) is no longer in the log: deleted by retention "
                 "(or unreadable) before this follow read it\n",
                 static_cast<unsigned long long>(from));
    return;
  }
  std::fprintf(stderr,
               "keygatectl: %llu records (seq %llu to %llu) are no longer in the log: deleted "
               "by retention (or unreadable) before this follow read them\n",
               static_cast<unsigned long long>(to - from + 1),
               static_cast<unsigned long long>(from), static_cast<unsigned long long>(to));
}

// --follow: the newest --limit matching records oldest first, then new ones as they come, by
// polling with after=<the newest seq examined>. The starting point is the seq of the newest
// record of the whole log, so no record is lost or shown twice between the requests. Once
// following, a keygate that cannot be reached (restarting) is asked again with a growing pause
// (kFollowPollMs doubling to kFollowRetryMsMax), said once on stderr when it goes and when it
// answers again; seqs continue across restarts, so the follow picks up where it was.
int logs_follow(const Context& ctx, const LogsQuery& q) {
  install_stop_handlers();
  // An error after a stop signal is the interruption, not a failure.
  const auto end = [](int rc) { return g_stop_requested != 0 ? kExitOk : rc; };
  dom::parser parser;
  dom::parser record_parser;
  uint64_t after = 0;
  // The first request must work: a wrong --url or key is an error, not an outage.
  if (const int rc = newest_seq(ctx, parser, &after); rc != kRender) return end(rc);
  if (after > 0) {
    if (const int rc = print_backlog(ctx, q, after, q.limit); rc != kExitOk) return end(rc);
  }
  // One poll: kRender after it printed what it got (and set `*full` when more is waiting),
  // kUnreachable with the reason in `unreachable`, else the exit code.
  std::string unreachable;
  const auto poll = [&](bool* full) {
    *full = false;
    if (after == 0) {
      // The log was empty: wait for its first record, then show every matching record up to
      // it (all of them were logged since we started).
      uint64_t newest = 0;
      if (const int rc = newest_seq(ctx, parser, &newest, &unreachable); rc != kRender) return rc;
      if (newest == 0) return kRender;
      if (const int rc = print_backlog(ctx, q, newest, 0, &unreachable); rc != kExitOk) return rc;
      after = newest;
      *full = true;  // look for newer ones at once
      return kRender;
    }
    HttpResponse r;
    LogsPage page;
    const std::string params =
        "limit=" + std::to_string(kLogsLimitMax) + q.filters + "&after=" + std::to_string(after);
    if (const int rc = fetch_logs(ctx, params, &r, parser, &page, &unreachable); rc != kRender) {
      return rc;
    }
    report_missing(page);
    std::string out;
    for (std::string_view record : page.records) append_followed(record_parser, record, &out);
    if (const int rc = emit(out); rc != kExitOk) return rc;
    uint64_t next = 0;
    if (!page.next_cursor || !parse_count_u64(*page.next_cursor, &next) || next < after) {
      return unexpected_response("a follow page without a usable next_cursor");
    }
    after = next;
    // Only a full page says more is waiting: ask again at once. Whether anything new was
    // examined says nothing, because the previous poll's own record (this query, logged) is
    // always new: waiting only when the cursor stood still never waited, and an idle follow
    // polled as fast as the server answered, each poll a record, a flush and a scan. A page
    // the server's scan budget cut short waits one interval too; the cursor keeps its place.
    *full = static_cast<int64_t>(page.records.size()) >= kLogsLimitMax;
    return kRender;
  };
  bool lost = false;  // keygate could not be reached at the last poll
  long retry_ms = kFollowPollMs;
  while (g_stop_requested == 0) {
    bool full = false;
    const int rc = poll(&full);
    if (rc == kUnreachable) {
      if (!lost) {
        std::fprintf(stderr,
                     "keygatectl: cannot reach keygate (%s); asking again, at most every %ld s, "
                     "until it answers (Ctrl-C to stop)\n",
                     printable(unreachable).c_str(), kFollowRetryMsMax / 1000);
        lost = true;
        retry_ms = kFollowPollMs;
      }
      sleep_or_stop(retry_ms);
      retry_ms = std::min(retry_ms * 2, kFollowRetryMsMax);
      continue;
    }
    if (rc != kRender) return end(rc);
    if (lost) {
      lost = false;
      std::fprintf(stderr, "keygatectl: keygate answers again; following on after seq %llu\n",
                   static_cast<unsigned long long>(after));
      // A restart on a fresh log directory numbers from 1 again: follow that log from its
      // newest record instead of waiting for it to pass the old seq.
      uint64_t newest = 0;
      if (after > 0 && newest_seq(ctx, parser, &newest, &unreachable) == kRender &&
          newest < after) {
        std::fprintf(stderr,
                     "keygatectl: the log now ends at seq %llu, before seq %llu (a new log?): "
                     "following it from there\n",
                     static_cast<unsigned long long>(newest),
                     static_cast<unsigned long long>(after));
        after = newest;
      }
    }
    if (!full) sleep_or_stop(kFollowPollMs);
  }
  return kExitOk;
}

int logs_command(const Context& ctx, const Args& args) {
  if (!args.positionals.empty()) return usage_error(Group::kLogs, "logs takes no arguments");
  LogsQuery q;
  if (auto v = args.last("--limit");
      v && (!parse_count(*v, kLogsLimitMax, &q.limit) || q.limit < 1)) {
    return usage_error(Group::kLogs, "--limit takes 1 to 1000");
  }
  if (auto v = args.last("--key")) {
    if (!looks_like_key_id(*v)) return not_a_key_id(Group::kLogs, "--key");
    q.filters += "&key_id=" + url_encode(*v);
  }
  if (auto v = args.last("--status")) {
    int64_t status = 0;
    if (!parse_count(*v, 599, &status) || status < 100) {
      return usage_error(Group::kLogs, "--status takes an HTTP status code, 100 to 599");
    }
    q.filters += "&status=" + std::to_string(status);
  }
  // The values refused below are not repeated: a key pasted in the wrong place would be.
  if (auto v = args.last("--since")) {
    if (!looks_like_log_time(*v, false)) {
      return usage_error(Group::kLogs,
                         "--since takes an RFC 3339 time, e.g. 2026-11-26T12:00:00Z");
    }
    q.filters += "&since=" + url_encode(*v);
  }
  if (auto v = args.last("--until")) {
    if (!looks_like_log_time(*v, true)) {
      return usage_error(Group::kLogs,
                         "--until takes an RFC 3339 time after 1970, e.g. 2026-11-26T12:00:00Z");
    }
    q.filters += "&until=" + url_encode(*v);
  }
  const std::optional<std::string> cursor = args.last("--cursor");
  if (cursor && !looks_like_log_cursor(*cursor)) {
    return usage_error(Group::kLogs,
                       "--cursor takes a record's seq (a number from 1), as the note about "
                       "older records gives it");
  }
  if (args.has("--follow")) {
    if (cursor) return usage_error(Group::kLogs, "--cursor and --follow exclude each other");
    if (ctx.json) return usage_error(Group::kLogs, "--json and --follow exclude each other");
    return logs_follow(ctx, q);
  }
  return logs_page(ctx, q, cursor);
}

// ---------------------------------------------------------------------------------------------
// Dispatch

using Handler = int (*)(const Context&, const Args&);

struct Command {
  Group group;
  std::string_view name;  // the subcommand; "" for apis
  Handler handler;
  std::span<const OptionSpec> options;
};

constexpr OptionSpec kCreateKeyOptions[] = {
    {"--api", Arity::kValue},         {"--description", Arity::kValue},
    {"--user", Arity::kValue},        {"--key", Arity::kValue},
    {"--key-file", Arity::kValue},    {"--log-request", Arity::kBool},
    {"--log-response", Arity::kBool}, {"--disabled", Arity::kFlag},
    {"--expires-at", Arity::kValue}};
constexpr OptionSpec kListKeyOptions[] = {{"--api", Arity::kValue},
                                          {"--unused-since", Arity::kValue},
                                          {"--user", Arity::kValue},
                                          {"--limit", Arity::kValue},
                                          {"--cursor", Arity::kValue},
                                          {"--all", Arity::kFlag}};
constexpr OptionSpec kUpdateKeyOptions[] = {
    {"--description", Arity::kValue}, {"--api", Arity::kValue},
    {"--user", Arity::kValue},        {"--no-user", Arity::kFlag},
    {"--log-request", Arity::kBool},  {"--log-response", Arity::kBool},
    {"--enabled", Arity::kBool},      {"--expires-at", Arity::kValue},
    {"--no-expiry", Arity::kFlag}};
constexpr OptionSpec kRotateKeyOptions[] = {{"--grace-seconds", Arity::kValue}};
constexpr OptionSpec kCreateUserOptions[] = {{"--grant", Arity::kValue}};
constexpr OptionSpec kListUserOptions[] = {{"--limit", Arity::kValue}};
constexpr OptionSpec kUpdateUserOptions[] = {{"--grant", Arity::kValue},
                                             {"--no-grants", Arity::kFlag}};
constexpr OptionSpec kLogsOptions[] = {{"--key", Arity::kValue},   {"--status", Arity::kValue},
                                       {"--since", Arity::kValue}, {"--until", Arity::kValue},
                                       {"--limit", Arity::kValue}, {"--cursor", Arity::kValue},
                                       {"--follow", Arity::kFlag}};

const Command kCommands[] = {
    {Group::kKeys, "create", keys_create, kCreateKeyOptions},
    {Group::kKeys, "list", keys_list, kListKeyOptions},
    {Group::kKeys, "show", keys_show, {}},
    {Group::kKeys, "update", keys_update, kUpdateKeyOptions},
    {Group::kKeys, "delete", keys_delete, {}},
    {Group::kKeys, "rotate", keys_rotate, kRotateKeyOptions},
    {Group::kKeys, "import", keys_import, {}},
    {Group::kUsers, "create", users_create, kCreateUserOptions},
    {Group::kUsers, "list", users_list, kListUserOptions},
    {Group::kUsers, "show", users_show, {}},
    {Group::kUsers, "update", users_update, kUpdateUserOptions},
    {Group::kUsers, "delete", users_delete, {}},
    {Group::kApis, "", apis_list, {}},
    {Group::kLogs, "", logs_command, kLogsOptions},
    {Group::kStats, "", stats_show, {}},
    {Group::kReload, "", reload_config, {}},
    {Group::kBackup, "create", backup_create, {}},
    {Group::kBackup, "list", backup_list, {}},
};

Group parse_group(std::string_view word) {
  if (word == "keys" || word == "key") return Group::kKeys;
  if (word == "users" || word == "user") return Group::kUsers;
  if (word == "apis" || word == "api") return Group::kApis;
  if (word == "logs" || word == "log") return Group::kLogs;
  if (word == "stats") return Group::kStats;
  if (word == "reload") return Group::kReload;
  if (word == "backup" || word == "backups") return Group::kBackup;
  return Group::kNone;
}

int print_help(Group group) { return emit(std::string(help_for(group))); }

bool is_help(std::string_view arg) { return arg == "--help" || arg == "-h"; }

struct GlobalOptions {
  std::optional<std::string> url;
  std::optional<std::string> key;
  std::optional<std::string> timeout;
  bool json = false;
};

int run(int argc, char** argv) {
  const std::span<char* const> all(argv + 1, static_cast<size_t>(argc > 0 ? argc - 1 : 0));
  GlobalOptions global;
  size_t i = 0;
  // Global options, up to the command.
  for (; i < all.size(); ++i) {
    const std::string_view arg = all[i];
    if (!arg.starts_with('-')) break;
    if (arg == "--help" || arg == "-h") return print_help(Group::kNone);
    const size_t eq = arg.find('=');
    const std::string_view name = arg.substr(0, eq);
    std::optional<std::string>* slot = nullptr;
    if (name == "--url") slot = &global.url;
    if (name == "--key") slot = &global.key;
    if (name == "--timeout") slot = &global.timeout;
    if (name == "--json") {
      if (eq != std::string_view::npos) return usage_error(Group::kNone, "--json takes no value");
      global.json = true;
      continue;
    }
    if (slot == nullptr) {
      return usage_error(Group::kNone,
                         "unknown option " + echo_word(name, "(an unrecognized option)"));
    }
    if (eq != std::string_view::npos) {
      *slot = std::string(arg.substr(eq + 1));
    } else if (i + 1 < all.size()) {
      *slot = std::string(all[++i]);
    } else {
      return usage_error(Group::kNone, std::string(name) + " needs a value");
    }
  }
  if (i == all.size()) return usage_error(Group::kNone, "no command given");

  const std::string_view command = all[i++];
  if (command == "help") {
    return print_help(i < all.size() ? parse_group(all[i]) : Group::kNone);
  }
  const Group group = parse_group(command);
  if (group == Group::kNone) {
    return usage_error(Group::kNone, "unknown command " + echo_word(command, "(not a command)"));
  }
  for (size_t j = i; j < all.size(); ++j) {
    if (std::string_view(all[j]) == "--") break;
    if (is_help(all[j])) return print_help(group);
  }
  std::string_view sub;
  if (group == Group::kBackup) {
    // "backup" alone makes one, "backups" alone lists them: the two things done most.
    if (i < all.size() && !std::string_view(all[i]).starts_with('-')) {
      sub = all[i++];
      if (sub == "help") return print_help(group);
    } else {
      sub = command == "backups" ? "list" : "create";
    }
  } else if (group != Group::kApis && group != Group::kLogs && group != Group::kStats &&
             group != Group::kReload) {
    if (i == all.size()) {
      return usage_error(group, std::string(group_name(group)) + " needs a subcommand");
    }
    sub = all[i++];
    if (sub == "help") return print_help(group);
  }
  const Command* cmd = nullptr;
  for (const Command& c : kCommands) {
    if (c.group == group && c.name == sub) cmd = &c;
  }
  if (cmd == nullptr) {
    return usage_error(group, "unknown " + std::string(group_name(group)) + " subcommand " +
                                  echo_word(sub, "(not a subcommand)"));
  }
  Args args;
  std::string error;
  if (!parse_args(all.subspan(i), cmd->options, &args, &error)) return usage_error(group, error);

  // Options after the command win over the same ones before it.
  Context ctx;
  ctx.json = global.json || args.has("--json");
  const std::string url =
      args.last("--url").value_or(global.url.value_or(std::string(kUrlDefault)));
  if (!parse_url(url, &ctx.endpoint, &error)) return usage_error(group, "invalid --url: " + error);
  if (!is_loopback(ctx.endpoint.host)) {
    std::fputs("keygatectl: warning: --url is not a loopback address: the admin key crosses the "
               "network in cleartext (use an SSH tunnel)\n",
               stderr);
  }
  if (const std::optional<std::string> t =
          args.last("--timeout") ? args.last("--timeout") : global.timeout) {
    int64_t seconds = 0;
    if (!parse_count(*t, kTimeoutSecondsMax, &seconds) || seconds < 1) {
      return usage_error(group, "--timeout takes 1 to 3600 seconds");
    }
    ctx.limits.connect_timeout_ms = static_cast<int>(seconds * 1000);
    ctx.limits.io_timeout_ms = static_cast<int>(seconds * 1000);
    ctx.limits.exchange_timeout_ms = static_cast<int>(seconds * 1000 * kExchangeTimeouts);
  } else {
    const int seconds = group == Group::kReload   ? kReloadTimeoutSecondsDefault
                        : group == Group::kBackup ? kBackupTimeoutSecondsDefault
                                                  : kTimeoutSecondsDefault;
    ctx.limits.connect_timeout_ms = seconds * 1000;
    ctx.limits.io_timeout_ms = seconds * 1000;
    ctx.limits.exchange_timeout_ms = seconds * 1000 * kExchangeTimeouts;
  }
  if (global.key) {
    ctx.admin_key = *global.key;
  } else if (const char* env = std::getenv(kAdminKeyEnv); env != nullptr) {
    ctx.admin_key = env;
  }
  if (ctx.admin_key.empty()) {
    return usage_error(group, "no admin key: pass --key KEY or set " + std::string(kAdminKeyEnv));
  }
  if (!header_safe(ctx.admin_key)) {
    return usage_error(group,
                       "the admin key holds characters that cannot be sent in an HTTP header");
  }
  return cmd->handler(ctx, args);
}

}  // namespace
}  // namespace keygate::ctl

int main(int argc, char** argv) { return keygate::ctl::run(argc, argv); }
