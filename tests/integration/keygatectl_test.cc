// Integration tests of keygatectl, the admin CLI: the real keygatectl binary (KEYGATECTL_BINARY)
// run as a subprocess against the real keygate binary on ephemeral loopback ports, started on an
// empty data directory with a bootstrap admin key and two data APIs (auth-check mode). What the
// CLI changes is checked where it matters, on the data port.
//
// Secrets: every keygatectl run is recorded, and each test ends by checking that the admin key
// appears in none of the output; a created or rotated key's value may appear only in the output
// of the command that made it.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tests/integration/process_helper.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

// keygatectl talks to a local server: a run taking longer than this is a hang.
constexpr Millis kCtlTimeout(10000);

const char* keygatectl_binary() { return KEYGATECTL_BINARY; }

struct CtlRun {
  std::vector<std::string> args;
  ExitStatus status;
  std::string out;
  std::string err;

  bool exited_with(int code) const { return status.exited && status.code == code; }
  std::string describe() const {
    std::string s = "keygatectl";
    for (const std::string& a : args) s += " " + a;
    return s + "\n  " + status.describe() + "\n  stdout: " + out + "\n  stderr: " + err;
  }
};

// The environment for a keygatectl run: ours without KEYGATE_ADMIN_KEY, plus `admin_key` as
// KEYGATE_ADMIN_KEY when given.
std::vector<std::string> ctl_environment(const std::optional<std::string>& admin_key) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!std::string_view(*e).starts_with("KEYGATE_ADMIN_KEY=")) env.emplace_back(*e);
  }
  if (admin_key) env.push_back("KEYGATE_ADMIN_KEY=" + *admin_key);
  return env;
}

// Runs keygatectl with `args` and environment `env`, stdin on /dev/null, capturing stdout and
// stderr; SIGKILLed at kCtlTimeout (then status.timed_out).
CtlRun run_ctl(std::vector<std::string> args, const std::vector<std::string>& env) {
  ProcessResult result = run_process(keygatectl_binary(), args, &env, kCtlTimeout);
  return CtlRun{std::move(args), result.status, std::move(result.out), std::move(result.err)};
}

// The value on the "key: VALUE" line of create/rotate output ("" when absent).
std::string printed_key(std::string_view out) {
  constexpr std::string_view kPrefix = "key: ";
  for (size_t at = 0; at < out.size();) {
    size_t end = out.find('\n', at);
    if (end == std::string_view::npos) end = out.size();
    const std::string_view line = out.substr(at, end - at);
    if (line.starts_with(kPrefix)) return std::string(line.substr(kPrefix.size()));
    at = end + 1;
  }
  return "";
}

// The value of the "label:  value" line of a record listing ("" when absent).
std::string field(std::string_view out, std::string_view label) {
  const std::string needle = std::string(label) + ":";
  for (size_t at = 0; at < out.size();) {
    size_t end = out.find('\n', at);
    if (end == std::string_view::npos) end = out.size();
    std::string_view line = out.substr(at, end - at);
    if (line.starts_with(needle)) {
      line.remove_prefix(needle.size());
      while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      return std::string(line);
    }
    at = end + 1;
  }
  return "";
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// A table's first line as keygatectl --help names it: its headings (separated by two spaces or
// more; "LAST USED" is one) joined by ", ", e.g. "NAME, ROUTES".
std::string headings_as_documented(std::string_view table) {
  const std::string_view line = table.substr(0, table.find('\n'));
  std::string out;
  for (size_t at = 0; at < line.size();) {
    const size_t start = line.find_first_not_of(' ', at);
    if (start == std::string_view::npos) break;
    size_t end = line.find("  ", start);
    if (end == std::string_view::npos) end = line.size();
    while (end > start && line[end - 1] == ' ') --end;
    if (!out.empty()) out += ", ";
    out += line.substr(start, end - start);
    at = end;
  }
  return out;
}

// `text` with every run of spaces and newlines as one space: help text as it reads, whatever
// its wrapping.
std::string one_line(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const bool space = c == ' ' || c == '\n';
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
  }
  return out;
}

// Whether keygatectl --help names `what`'s table columns exactly as `table` prints them:
// "<what> (<HEADING>, <HEADING>, ...)" in its Output paragraph.
::testing::AssertionResult help_names_columns(const std::string& help, std::string_view what,
                                              std::string_view table) {
  const std::string documented = std::string(what) + " (" + headings_as_documented(table) + ")";
  if (contains(one_line(help), documented)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "keygatectl --help does not say \"" << documented
                                       << "\"";
}

// A loopback port bound but not listening: it refuses connections, and nothing else can take it
// while this lives. A keygatectl run pointed at it fails to connect if it sends anything.
class ClosedPort {
 public:
  ClosedPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~ClosedPort() {
    if (fd_ >= 0) ::close(fd_);
  }
  ClosedPort(const ClosedPort&) = delete;
  ClosedPort& operator=(const ClosedPort&) = delete;

  bool ok() const { return port_ != 0; }
  std::string port() const { return std::to_string(port_); }
  std::string url() const { return "http://127.0.0.1:" + port(); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

class Keygatectl : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<TestServer>(admin_server_options(admin_value_));
    std::string error;
    ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
    url_ = "http://127.0.0.1:" + std::to_string(server_->admin_port());
  }

  void TearDown() override {
    // The admin key never shows, in any run, whatever it did.
    for (const CtlRun& run : runs_) {
      EXPECT_FALSE(contains(run.out, admin_value_)) << run.describe();
      EXPECT_FALSE(contains(run.err, admin_value_)) << run.describe();
    }
    // A created key's value shows only in the output of the run that created it.
    for (const auto& [value, maker] : created_) {
      for (size_t i = 0; i < runs_.size(); ++i) {
        if (i == maker) continue;
        EXPECT_FALSE(contains(runs_[i].out, value)) << runs_[i].describe();
        EXPECT_FALSE(contains(runs_[i].err, value)) << runs_[i].describe();
      }
      EXPECT_EQ(count_of(runs_[maker].out + runs_[maker].err, value), 1u)
          << runs_[maker].describe();
    }
    if (!server_ || !server_->running()) return;
    const ExitStatus status = server_->stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server_->error_output();
  }

  // keygatectl --url <admin port> ARGS, with the admin key in KEYGATE_ADMIN_KEY.
  CtlRun ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--url", url_});
    runs_.push_back(run_ctl(std::move(args), ctl_environment(admin_value_)));
    return runs_.back();
  }
  // keygatectl ARGS exactly, with KEYGATE_ADMIN_KEY set to `admin_key` or unset.
  CtlRun ctl_raw(std::vector<std::string> args, std::optional<std::string> admin_key) {
    runs_.push_back(run_ctl(std::move(args), ctl_environment(admin_key)));
    return runs_.back();
  }

  // keygatectl --url <admin port> ARGS with stdin read from `input` (a file), through /bin/sh:
  // the process helper gives its children /dev/null as stdin.
  CtlRun ctl_stdin(std::vector<std::string> args, const std::string& input) {
    args.insert(args.begin(), {"--url", url_});
    std::vector<std::string> sh_args = {"-c", "in=$1; shift; exec \"$0\" \"$@\" < \"$in\"",
                                        keygatectl_binary(), input};
    sh_args.insert(sh_args.end(), args.begin(), args.end());
    const std::vector<std::string> env = ctl_environment(admin_value_);
    ProcessResult result = run_process("/bin/sh", sh_args, &env, kCtlTimeout);
    args.push_back("< " + input);
    runs_.push_back(
        CtlRun{std::move(args), result.status, std::move(result.out), std::move(result.err)});
    return runs_.back();
  }

  // A create or rotate that must succeed; returns the printed value and remembers it.
  std::string made_key(const CtlRun& run) {
    EXPECT_TRUE(run.exited_with(0)) << run.describe();
    const std::string value = printed_key(run.out);
    EXPECT_TRUE(value.starts_with("kg_")) << run.describe();
    if (!value.empty()) created_.emplace_back(value, runs_.size() - 1);
    return value;
  }

  // Replaces keygate's config file with `text`, atomically (a new file renamed over the old, as
  // docs/configuration.md asks): a reload never reads it half written. Returns its path.
  // `as_written`: without the harness's [admin] hosts (a file that does not parse anyway).
  std::string replace_config(const std::string& text, bool as_written = false) {
    const std::string path = server_->dir().path() + "/keygate.toml";
    const std::string written = server_->dir().write_file(
        "keygate.toml.new", as_written ? text : with_harness_admin_hosts(text));
    EXPECT_EQ(std::rename(written.c_str(), path.c_str()), 0) << written;
    return path;
  }

  // The data-port status of METHOD target with `key` in X-ApiKey (0: no response).
  int data_status(std::string_view target, std::string_view key, std::string_view method = "GET") {
    const std::optional<Response> r = round_trip(
        server_->data_port(), http_request(method, target, {"X-ApiKey: " + std::string(key)}));
    return r ? r->status : 0;
  }

  const std::string admin_value_ = "it-admin-" + random_hex(24);
  std::unique_ptr<TestServer> server_;
  std::string url_;
  std::vector<CtlRun> runs_;  // every keygatectl run of the test, in order
  std::vector<std::pair<std::string, size_t>> created_;  // key value, index of its run
};

// --- keys ------------------------------------------------------------------------------------

TEST_F(Keygatectl, KeysCreatePrintsTheValueOnceAndTheKeyWorksOnTheDataPort) {
  const CtlRun create = ctl({"keys", "create", "--api", "orders", "--description", "shop front"});
  const std::string value = made_key(create);
  const std::string id = field(create.out, "id");
  ASSERT_EQ(id.size(), 13u) << create.describe();
  EXPECT_EQ(field(create.out, "apis"), "orders");
  EXPECT_EQ(field(create.out, "enabled"), "yes");
  EXPECT_EQ(field(create.out, "description"), "shop front");
  EXPECT_TRUE(contains(create.err, "only time")) << create.describe();

  EXPECT_EQ(data_status("/orders/1", value), 200);
  EXPECT_EQ(data_status("/billing/1", value), 403);

  // The table: headings, the new key's row, the bootstrap admin key's row; no value.
  const CtlRun list = ctl({"keys", "list"});
  ASSERT_TRUE(list.exited_with(0)) << list.describe();
  EXPECT_TRUE(list.out.starts_with("ID ")) << list.describe();
  EXPECT_TRUE(help_names_columns(ctl_raw({"--help"}, std::nullopt).out, "keys as a table",
                                 list.out));
  for (const char* heading : {"HINT", "APIS", "USER", "ENABLED", "EXPIRES", "DESCRIPTION"}) {
    EXPECT_TRUE(contains(list.out.substr(0, list.out.find('\n')), heading)) << list.describe();
  }
  EXPECT_EQ(count_of(list.out, "\n"), 3u) << list.describe();
  EXPECT_TRUE(contains(list.out, id)) << list.describe();
  EXPECT_TRUE(contains(list.out, "shop front")) << list.describe();
  EXPECT_TRUE(contains(list.out, "admin")) << list.describe();

  const CtlRun json = ctl({"keys", "list", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_TRUE(json.out.starts_with("{\"keys\":[")) << json.describe();
  EXPECT_TRUE(contains(json.out, "\"id\":\"" + id + "\"")) << json.describe();
  EXPECT_TRUE(contains(json.out, "\"next_cursor\":null")) << json.describe();

  const CtlRun show = ctl({"keys", "show", id});
  ASSERT_TRUE(show.exited_with(0)) << show.describe();
  EXPECT_EQ(field(show.out, "id"), id);
  EXPECT_EQ(field(show.out, "hint"), value.substr(0, 6) + "...");
  EXPECT_EQ(field(show.out, "expires_at"), "never");

  // --json output of create is the server's record, with the value in it, once.
  const CtlRun created_json =
      ctl({"--json", "keys", "create", "--api", "billing", "--log-request", "--disabled"});
  ASSERT_TRUE(created_json.exited_with(0)) << created_json.describe();
  EXPECT_TRUE(created_json.out.starts_with("{\"id\":\"")) << created_json.describe();
  EXPECT_TRUE(contains(created_json.out, "\"log_request\":true")) << created_json.describe();
  EXPECT_TRUE(contains(created_json.out, "\"enabled\":false")) << created_json.describe();
  const size_t at = created_json.out.find("\"key\":\"");
  ASSERT_NE(at, std::string::npos) << created_json.describe();
  const std::string json_value =
      created_json.out.substr(at + 7, created_json.out.find('"', at + 7) - at - 7);
  created_.emplace_back(json_value, runs_.size() - 1);
  EXPECT_EQ(data_status("/billing/1", json_value), 401);  // created disabled
}

TEST_F(Keygatectl, KeysListAndShowSayWhenAKeyWasLastUsed) {
  // A server that writes last uses every 200 ms (the default is 30 s).
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  ServerOptions options = admin_server_options(admin_value_);
  options.extra_config += "\n[keys]\nlast_used_flush_interval_ms = 200\n";
  server_ = std::make_unique<TestServer>(options);
  std::string error;
  ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
  url_ = "http://127.0.0.1:" + std::to_string(server_->admin_port());

  const CtlRun unused_create = ctl({"keys", "create", "--api", "orders"});
  made_key(unused_create);
  const std::string unused = field(unused_create.out, "id");
  EXPECT_EQ(field(unused_create.out, "last_used_at"), "never");
  const CtlRun used_create = ctl({"keys", "create", "--api", "orders"});
  const std::string value = made_key(used_create);
  const std::string used = field(used_create.out, "id");
  ASSERT_EQ(data_status("/orders/1", value), 200);

  // The used key's time shows once written; the unused key's row says never.
  std::string last_used;
  for (int i = 0; i < 100 && (last_used.empty() || last_used == "never"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    last_used = field(ctl({"keys", "show", used}).out, "last_used_at");
  }
  ASSERT_EQ(last_used.size(), 20u) << last_used;  // 2026-11-28T00:00:00Z
  EXPECT_EQ(last_used.back(), 'Z') << last_used;
  EXPECT_EQ(field(ctl({"keys", "show", unused}).out, "last_used_at"), "never");

  const CtlRun list = ctl({"keys", "list", "--api", "orders"});
  ASSERT_TRUE(list.exited_with(0)) << list.describe();
  EXPECT_TRUE(contains(list.out.substr(0, list.out.find('\n')), "LAST USED")) << list.describe();
  const auto row = [&](const std::string& id) {
    const size_t at = list.out.find(id);
    return at == std::string::npos ? std::string()
                                   : list.out.substr(at, list.out.find('\n', at) - at);
  };
  EXPECT_TRUE(contains(row(used), last_used)) << list.describe();
  EXPECT_TRUE(contains(row(unused), "never")) << list.describe();

  // --unused-since: the keys to look at before disabling some.
  const CtlRun stale = ctl({"keys", "list", "--api", "orders", "--unused-since", last_used});
  ASSERT_TRUE(stale.exited_with(0)) << stale.describe();
  EXPECT_TRUE(contains(stale.out, unused)) << stale.describe();
  EXPECT_FALSE(contains(stale.out, used)) << stale.describe();
}

TEST_F(Keygatectl, KeysUpdateRotateAndDeleteTakeEffectOnTheDataPort) {
  const CtlRun create = ctl({"keys", "create", "--api", "orders"});
  const std::string value = made_key(create);
  const std::string id = field(create.out, "id");
  ASSERT_FALSE(id.empty());

  const CtlRun disable = ctl({"keys", "update", id, "--enabled=false", "--description", "paused"});
  ASSERT_TRUE(disable.exited_with(0)) << disable.describe();
  EXPECT_EQ(field(disable.out, "enabled"), "no");
  EXPECT_EQ(field(disable.out, "description"), "paused");
  EXPECT_EQ(data_status("/orders/1", value), 401);

  const CtlRun enable = ctl({"keys", "update", id, "--enabled=true", "--api", "orders", "--api",
                             "billing", "--expires-at", "2099-01-02T03:04:05Z"});
  ASSERT_TRUE(enable.exited_with(0)) << enable.describe();
  EXPECT_EQ(field(enable.out, "apis"), "orders, billing");
  EXPECT_EQ(field(enable.out, "expires_at"), "2099-01-02T03:04:05Z");
  EXPECT_EQ(data_status("/billing/1", value), 200);
  const CtlRun no_expiry = ctl({"keys", "update", id, "--no-expiry"});
  ASSERT_TRUE(no_expiry.exited_with(0)) << no_expiry.describe();
  EXPECT_EQ(field(no_expiry.out, "expires_at"), "never");

  // Rotation without grace: the old value stops at once, the new one works.
  const std::string rotated = made_key(ctl({"keys", "rotate", id}));
  ASSERT_FALSE(rotated.empty());
  EXPECT_NE(rotated, value);
  EXPECT_EQ(data_status("/orders/1", value), 401);
  EXPECT_EQ(data_status("/orders/1", rotated), 200);
  // With grace, both work for now.
  const std::string graced = made_key(ctl({"keys", "rotate", id, "--grace-seconds", "600"}));
  ASSERT_FALSE(graced.empty());
  EXPECT_EQ(data_status("/orders/1", rotated), 200);
  EXPECT_EQ(data_status("/orders/1", graced), 200);

  const CtlRun del = ctl({"keys", "delete", id});
  ASSERT_TRUE(del.exited_with(0)) << del.describe();
  EXPECT_EQ(del.out, "deleted key " + id + "\n");
  EXPECT_EQ(data_status("/orders/1", graced), 401);

  const CtlRun gone = ctl({"keys", "show", id});
  EXPECT_TRUE(gone.exited_with(1)) << gone.describe();
  EXPECT_TRUE(contains(gone.err, "keygatectl: 404 not_found: no key with this id"))
      << gone.describe();
  EXPECT_TRUE(gone.out.empty()) << gone.describe();
}

TEST_F(Keygatectl, KeysImportReadsJsonLinesAndNamesTheLineOfABadRecord) {
  const std::string v1 = "it-import-" + random_hex(16);
  const std::string v2 = "it-import-" + random_hex(16);
  const std::string file = server_->dir().write_file(
      "keys.jsonl", "{\"key\":\"" + v1 + "\",\"apis\":[\"orders\"],\"description\":\"one\"}\n\n" +
                        "{\"key\":\"" + v2 + "\",\"apis\":[\"billing\"],\"user\":null}\r\n");
  const CtlRun import = ctl({"keys", "import", file});
  ASSERT_TRUE(import.exited_with(0)) << import.describe();
  EXPECT_EQ(import.out, "imported 2 keys\n");
  EXPECT_EQ(data_status("/orders/1", v1), 200);
  EXPECT_EQ(data_status("/billing/1", v2), 200);

  // The server's refusal names the record; keygatectl adds its line. Nothing is imported.
  const std::string v3 = "it-import-" + random_hex(16);
  const std::string bad_api = server_->dir().write_file(
      "bad_api.jsonl", "{\"key\":\"" + v3 + "\",\"apis\":[\"orders\"]}\n\n" +
                           "{\"key\":\"it-import-" + random_hex(16) + "\",\"apis\":[\"nope\"]}\n");
  const CtlRun refused = ctl({"keys", "import", bad_api});
  EXPECT_TRUE(refused.exited_with(1)) << refused.describe();
  EXPECT_TRUE(contains(refused.err,
                       "400 unknown_api: names an API that is not configured "
                       "(field: keys[1].apis, " +
                           bad_api + " line 3)"))
      << refused.describe();
  EXPECT_EQ(data_status("/orders/1", v3), 401);

  // A line that is not JSON is caught before sending, by line, without echoing it: the user's
  // input, exit status 2 (1 is for the server's answers).
  const std::string broken = server_->dir().write_file(
      "broken.jsonl", "{\"key\":\"" + v3 + "\",\"apis\":[\"orders\"]}\n{\"key\":\"" + v3 + "\n");
  const CtlRun parse_error = ctl({"keys", "import", broken});
  EXPECT_TRUE(parse_error.exited_with(2)) << parse_error.describe();
  EXPECT_TRUE(contains(parse_error.err, broken + " line 2: not a JSON object"))
      << parse_error.describe();
  for (const CtlRun& run : {import, refused, parse_error}) {
    for (const std::string& v : {v1, v2, v3}) {
      EXPECT_FALSE(contains(run.out + run.err, v)) << run.describe();
    }
  }
  EXPECT_EQ(data_status("/orders/1", v3), 401);

  const CtlRun missing = ctl({"keys", "import", server_->dir().path() + "/absent.jsonl"});
  EXPECT_TRUE(missing.exited_with(2)) << missing.describe();
  EXPECT_TRUE(contains(missing.err, "cannot open")) << missing.describe();
}

TEST_F(Keygatectl, KeysImportOfAnUnreadableFileFailsWithTheReasonAndStdinWorks) {
  // A directory opens but cannot be read: the reason, exit 2 (the user's input), not an abort.
  const std::string dir = server_->dir().path();
  const CtlRun directory = ctl({"keys", "import", dir});
  EXPECT_TRUE(directory.exited_with(2)) << directory.describe();
  EXPECT_EQ(directory.err, "keygatectl: cannot read " + dir + ": Is a directory\n")
      << directory.describe();
  EXPECT_TRUE(directory.out.empty()) << directory.describe();

  const std::string value = "it-import-" + random_hex(16);
  const std::string file = server_->dir().write_file(
      "stdin.jsonl", "{\"key\":\"" + value + "\",\"apis\":[\"orders\"]}\n");
  const CtlRun piped = ctl_stdin({"keys", "import", "-"}, file);
  ASSERT_TRUE(piped.exited_with(0)) << piped.describe();
  EXPECT_EQ(piped.out, "imported 1 key\n");
  EXPECT_EQ(data_status("/orders/1", value), 200);
  const CtlRun empty = ctl_stdin({"keys", "import", "-"}, "/dev/null");
  EXPECT_TRUE(empty.exited_with(2)) << empty.describe();
  EXPECT_EQ(empty.err, "keygatectl: stdin holds no keys\n") << empty.describe();
}

TEST_F(Keygatectl, KeysCreateTakesTheValueFromAKeyFileOrStdin) {
  // From a file, its line ending dropped.
  const std::string from_file = "it-keyfile-" + random_hex(16);
  const std::string file = server_->dir().write_file("key.txt", from_file + "\r\n");
  const CtlRun create = ctl({"keys", "create", "--api", "orders", "--key-file", file});
  ASSERT_TRUE(create.exited_with(0)) << create.describe();
  EXPECT_EQ(printed_key(create.out), from_file) << create.describe();
  EXPECT_EQ(field(create.out, "hint"), from_file.substr(0, 6) + "...") << create.describe();
  created_.emplace_back(from_file, runs_.size() - 1);
  EXPECT_EQ(data_status("/orders/1", from_file), 200);

  // From stdin ('-'), also as --key-file=-.
  const std::string from_stdin = "it-keyfile-" + random_hex(16);
  const CtlRun piped = ctl_stdin({"keys", "create", "--api", "billing", "--key-file", "-"},
                                 server_->dir().write_file("stdin.txt", from_stdin + "\n"));
  ASSERT_TRUE(piped.exited_with(0)) << piped.describe();
  EXPECT_EQ(printed_key(piped.out), from_stdin) << piped.describe();
  created_.emplace_back(from_stdin, runs_.size() - 1);
  EXPECT_EQ(data_status("/billing/1", from_stdin), 200);
  const std::string bare = "it-keyfile-" + random_hex(16);  // no line ending at all
  const CtlRun piped_eq = ctl_stdin({"keys", "create", "--api", "orders", "--key-file=-"},
                                    server_->dir().write_file("bare.txt", bare));
  ASSERT_TRUE(piped_eq.exited_with(0)) << piped_eq.describe();
  created_.emplace_back(bare, runs_.size() - 1);
  EXPECT_EQ(data_status("/orders/1", bare), 200);

  // Refused before sending: an empty file, a file of line endings only, two lines, and --key
  // with --key-file. None of them echoes what it read or was given.
  const std::string other = "it-keyfile-" + random_hex(16);
  const std::string two_lines = server_->dir().write_file("two.txt", other + "\n" + other + "\n");
  struct Refusal {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Refusal> refusals = {
      {{"--key-file", server_->dir().write_file("empty.txt", "")}, "the --key-file is empty"},
      {{"--key-file", server_->dir().write_file("newline.txt", "\r\n\n")},
       "the --key-file is empty"},
      {{"--key-file", two_lines}, "the --key-file holds more than one line"},
      {{"--key", other, "--key-file", file}, "--key and --key-file exclude each other"},
  };
  for (const Refusal& refusal : refusals) {
    std::vector<std::string> args = {"keys", "create", "--api", "orders"};
    args.insert(args.end(), refusal.args.begin(), refusal.args.end());
    const CtlRun run = ctl(args);
    EXPECT_TRUE(run.exited_with(2)) << run.describe();
    EXPECT_TRUE(contains(run.err, "keygatectl: " + refusal.message)) << run.describe();
    EXPECT_TRUE(contains(run.err, "usage: keygatectl")) << run.describe();
    EXPECT_FALSE(contains(run.out + run.err, other)) << run.describe();
  }
  const CtlRun empty_stdin =
      ctl_stdin({"keys", "create", "--api", "orders", "--key-file", "-"}, "/dev/null");
  EXPECT_TRUE(empty_stdin.exited_with(2)) << empty_stdin.describe();
  EXPECT_TRUE(contains(empty_stdin.err, "the --key-file is empty")) << empty_stdin.describe();
  EXPECT_EQ(data_status("/orders/1", other), 401);

  // A file that cannot be read fails like an import file, without naming it (the name given
  // may be a key value typed in the wrong place): exit status 2 like the empty file, since
  // 1 means the server refused or could not be reached, and nothing was sent.
  const std::string absent = server_->dir().path() + "/" + other;
  const CtlRun missing = ctl({"keys", "create", "--api", "orders", "--key-file", absent});
  EXPECT_TRUE(missing.exited_with(2)) << missing.describe();
  EXPECT_EQ(missing.err, "keygatectl: cannot open the --key-file: No such file or directory\n")
      << missing.describe();
  const CtlRun directory =
      ctl({"keys", "create", "--api", "orders", "--key-file", server_->dir().path()});
  EXPECT_TRUE(directory.exited_with(2)) << directory.describe();
  EXPECT_EQ(directory.err, "keygatectl: cannot read the --key-file: Is a directory\n")
      << directory.describe();

  // Three keys made, besides the bootstrap admin key.
  const CtlRun list = ctl({"keys", "list"});
  ASSERT_TRUE(list.exited_with(0)) << list.describe();
  EXPECT_EQ(count_of(list.out, "\n"), 5u) << list.describe();
}

TEST_F(Keygatectl, CommandsTakingAKeyIdRefuseAKeyValueBeforeSendingAnything) {
  // A key value where a key id belongs would go into the URL, and so into the admin access
  // log. Pointed at a port that refuses connections, each run must end with a usage error, not
  // a connection error; the values are never echoed (TearDown checks).
  const std::string value = made_key(ctl({"keys", "create", "--api", "orders"}));
  ASSERT_FALSE(value.empty());
  const ClosedPort closed;
  ASSERT_TRUE(closed.ok());
  for (const std::string& wrong : {value, admin_value_, std::string("kAAAAAAAAAAA/")}) {
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"keys", "show", wrong},
             {"keys", "update", wrong, "--description", "x"},
             {"keys", "delete", wrong},
             {"keys", "rotate", wrong},
             {"keys", "rotate", wrong, "--grace-seconds", "60"},
             {"keys", "list", "--cursor", wrong}}) {
      std::vector<std::string> all = {"--url", closed.url()};
      all.insert(all.end(), args.begin(), args.end());
      const CtlRun run = ctl_raw(all, admin_value_);
      EXPECT_TRUE(run.exited_with(2)) << run.describe();
      EXPECT_TRUE(contains(run.err, "takes a key id (\"k\" and 12 letters or digits"))
          << run.describe();
      EXPECT_TRUE(contains(run.err, "usage: keygatectl [global options] keys")) << run.describe();
    }
  }
  // Against the server: refused the same way, and the key is untouched.
  const CtlRun del = ctl({"keys", "delete", value});
  EXPECT_TRUE(del.exited_with(2)) << del.describe();
  EXPECT_EQ(data_status("/orders/1", value), 200);
}

TEST_F(Keygatectl, KeysListPagesWithCursorsFiltersAndFollowsThemAllWithAll) {
  std::string lines;
  for (int i = 0; i < 5; ++i) {
    lines += "{\"key\":\"it-page-" + random_hex(16) + "\",\"apis\":[\"" +
             (i % 2 == 0 ? "orders" : "billing") + "\"]}\n";
  }
  ASSERT_TRUE(ctl({"keys", "import", server_->dir().write_file("k.jsonl", lines)}).exited_with(0));

  // Six keys in all with the bootstrap admin key.
  const CtlRun page = ctl({"keys", "list", "--limit", "2"});
  ASSERT_TRUE(page.exited_with(0)) << page.describe();
  EXPECT_EQ(count_of(page.out, "\n"), 3u) << page.describe();
  EXPECT_TRUE(contains(page.err, "more keys may follow: add --cursor k")) << page.describe();

  const CtlRun all = ctl({"keys", "list", "--limit", "2", "--all"});
  ASSERT_TRUE(all.exited_with(0)) << all.describe();
  EXPECT_EQ(count_of(all.out, "\n"), 7u) << all.describe();
  EXPECT_TRUE(all.err.empty()) << all.describe();

  const CtlRun all_json = ctl({"keys", "list", "--limit", "2", "--all", "--json"});
  ASSERT_TRUE(all_json.exited_with(0)) << all_json.describe();
  EXPECT_EQ(count_of(all_json.out, "\"id\":"), 6u) << all_json.describe();
  EXPECT_TRUE(all_json.out.ends_with(",\"next_cursor\":null}\n")) << all_json.describe();

  const CtlRun billing = ctl({"keys", "list", "--api", "billing", "--all"});
  ASSERT_TRUE(billing.exited_with(0)) << billing.describe();
  EXPECT_EQ(count_of(billing.out, "\n"), 3u) << billing.describe();
  EXPECT_EQ(count_of(billing.out, "orders"), 0u) << billing.describe();

  // The cursor from the note continues the listing.
  const std::string note = "--cursor ";
  const size_t at = page.err.find(note);
  ASSERT_NE(at, std::string::npos) << page.describe();
  const std::string cursor = page.err.substr(at + note.size(), 13);
  const CtlRun rest = ctl({"keys", "list", "--cursor", cursor});
  ASSERT_TRUE(rest.exited_with(0)) << rest.describe();
  EXPECT_EQ(count_of(rest.out, "\n"), 5u) << rest.describe();
  EXPECT_TRUE(rest.err.empty()) << rest.describe();

  const CtlRun bad_limit = ctl({"keys", "list", "--limit", "0"});
  EXPECT_TRUE(bad_limit.exited_with(2)) << bad_limit.describe();
  EXPECT_TRUE(contains(bad_limit.err, "--limit takes 1 to 1000")) << bad_limit.describe();
  // The server's own validation comes back as its message.
  const CtlRun bad_grace = ctl({"keys", "rotate", "kAAAAAAAAAAAA", "--grace-seconds", "9999999"});
  EXPECT_TRUE(bad_grace.exited_with(1)) << bad_grace.describe();
  EXPECT_TRUE(contains(bad_grace.err,
                       "400 invalid_value: grace_seconds is 0 to 2592000 (30 days) "
                       "(field: grace_seconds)"))
      << bad_grace.describe();
}

// --- users and apis --------------------------------------------------------------------------

TEST_F(Keygatectl, UsersCanBeCreatedListedShownUpdatedAndDeleted) {
  const std::string name = "alice@example.com";
  const CtlRun create =
      ctl({"users", "create", name, "--grant", "orders:GET,POST:/orders", "--grant", "billing:*"});
  ASSERT_TRUE(create.exited_with(0)) << create.describe();
  EXPECT_EQ(field(create.out, "name"), name);
  EXPECT_TRUE(contains(create.out, "orders:GET,POST:/orders\n")) << create.describe();
  EXPECT_TRUE(contains(create.out, "billing:*\n")) << create.describe();
  // A name that needs encoding in a path.
  const std::string odd = "team a/b?c%";
  ASSERT_TRUE(ctl({"users", "create", odd}).exited_with(0));

  const CtlRun list = ctl({"users", "list"});
  ASSERT_TRUE(list.exited_with(0)) << list.describe();
  EXPECT_TRUE(list.out.starts_with("NAME ")) << list.describe();
  EXPECT_TRUE(contains(list.out, "GRANTS")) << list.describe();
  EXPECT_TRUE(contains(list.out, name)) << list.describe();
  EXPECT_TRUE(help_names_columns(ctl_raw({"--help"}, std::nullopt).out, "users", list.out));
  EXPECT_TRUE(contains(list.out, odd)) << list.describe();

  const CtlRun show_odd = ctl({"users", "show", odd});
  ASSERT_TRUE(show_odd.exited_with(0)) << show_odd.describe();
  EXPECT_EQ(field(show_odd.out, "name"), odd);
  EXPECT_EQ(field(show_odd.out, "grants"), "(none)");

  // A key of the user may POST under /orders until the grants say GET only.
  const std::string value = made_key(ctl({"keys", "create", "--api", "orders", "--user", name}));
  EXPECT_EQ(data_status("/orders/1", value, "POST"), 200);
  const CtlRun update = ctl({"users", "update", name, "--grant", "orders:GET:/orders"});
  ASSERT_TRUE(update.exited_with(0)) << update.describe();
  EXPECT_EQ(field(update.out, "grants"), "orders:GET:/orders");
  EXPECT_EQ(data_status("/orders/1", value, "POST"), 403);
  EXPECT_EQ(data_status("/orders/1", value), 200);

  const CtlRun show_json = ctl({"users", "show", name, "--json"});
  ASSERT_TRUE(show_json.exited_with(0)) << show_json.describe();
  EXPECT_TRUE(contains(show_json.out, "\"methods\":[\"GET\"],\"path_prefix\":\"/orders\""))
      << show_json.describe();

  const CtlRun del = ctl({"users", "delete", name});
  ASSERT_TRUE(del.exited_with(0)) << del.describe();
  EXPECT_EQ(del.out, "deleted user " + name + "\n");
  const CtlRun gone = ctl({"users", "show", name});
  EXPECT_TRUE(gone.exited_with(1)) << gone.describe();
  EXPECT_TRUE(contains(gone.err, "404 not_found: no user with this name")) << gone.describe();
  ASSERT_TRUE(ctl({"users", "delete", odd}).exited_with(0));
  // An empty listing is not an error: nothing on stdout, a word on stderr, exit 0.
  const CtlRun empty = ctl({"users", "list"});
  EXPECT_TRUE(empty.exited_with(0)) << empty.describe();
  EXPECT_EQ(empty.out, "") << empty.describe();
  EXPECT_EQ(empty.err, "keygatectl: no users\n") << empty.describe();

  const CtlRun bad_grant = ctl({"users", "update", "x", "--grant", ":GET"});
  EXPECT_TRUE(bad_grant.exited_with(2)) << bad_grant.describe();
  const CtlRun no_grants = ctl({"users", "update", "x"});
  EXPECT_TRUE(no_grants.exited_with(2)) << no_grants.describe();
  EXPECT_TRUE(contains(no_grants.err, "users update needs --grant GRANT ... or --no-grants"))
      << no_grants.describe();
  // Both is a contradiction, said as such (as --user with --no-user), not "needs one of them".
  const CtlRun both = ctl({"users", "update", "x", "--grant", "orders", "--no-grants"});
  EXPECT_TRUE(both.exited_with(2)) << both.describe();
  EXPECT_TRUE(contains(both.err, "keygatectl: --grant and --no-grants exclude each other"))
      << both.describe();
}

TEST_F(Keygatectl, UsersListFollowsEveryPageWhateverTheNamesHold) {
  // In name (byte) order; each page ends at a name its cursor must carry exactly.
  const std::vector<std::string> names = {"a b", "a%20b", "a&b=c", "a+b", "a/b", "bob", "z z"};
  for (const std::string& name : names) {
    const CtlRun create = ctl({"users", "create", name});
    ASSERT_TRUE(create.exited_with(0)) << create.describe();
  }

  // Four pages of at most two.
  const CtlRun list = ctl({"users", "list", "--limit", "2"});
  ASSERT_TRUE(list.exited_with(0)) << list.describe();
  EXPECT_TRUE(list.out.starts_with("NAME ")) << list.describe();
  EXPECT_EQ(count_of(list.out, "\n"), names.size() + 1) << list.describe();
  size_t previous = 0;
  for (const std::string& name : names) {
    const std::string row = "\n" + name + "  ";
    EXPECT_EQ(count_of(list.out, row), 1u) << name << "\n" << list.describe();
    const size_t at = list.out.find(row);
    EXPECT_GT(at, previous) << name << " is out of order\n" << list.describe();
    previous = at;
  }
  EXPECT_TRUE(list.err.empty()) << list.describe();

  // --json: one document holding every page's users.
  const CtlRun json = ctl({"users", "list", "--limit", "3", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_TRUE(json.out.starts_with("{\"users\":[{\"name\":\"a b\"")) << json.describe();
  EXPECT_EQ(count_of(json.out, "\"name\":"), names.size()) << json.describe();
  EXPECT_TRUE(json.out.ends_with("}],\"next_cursor\":null}\n")) << json.describe();

  const CtlRun whole = ctl({"users", "list"});
  ASSERT_TRUE(whole.exited_with(0)) << whole.describe();
  EXPECT_EQ(whole.out, list.out);

  for (const char* bad : {"0", "1001", "x"}) {
    const CtlRun bad_limit = ctl({"users", "list", "--limit", bad});
    EXPECT_TRUE(bad_limit.exited_with(2)) << bad_limit.describe();
    EXPECT_TRUE(contains(bad_limit.err, "--limit takes 1 to 1000")) << bad_limit.describe();
  }
}

TEST_F(Keygatectl, ApisListsTheConfiguredApis) {
  const CtlRun table = ctl({"apis"});
  ASSERT_TRUE(table.exited_with(0)) << table.describe();
  EXPECT_TRUE(table.out.starts_with("NAME     ROUTES\n")) << table.describe();
  EXPECT_TRUE(help_names_columns(ctl_raw({"--help"}, std::nullopt).out, "apis", table.out));
  EXPECT_TRUE(contains(table.out, "orders   /orders\n")) << table.describe();
  EXPECT_TRUE(contains(table.out, "billing  /billing\n")) << table.describe();
  const CtlRun json = ctl({"apis", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_TRUE(json.out.starts_with("{\"apis\":[{\"name\":\"orders\"")) << json.describe();
}

TEST_F(Keygatectl, StatsPrintsEveryGroupsCounters) {
  ASSERT_TRUE(round_trip(server_->data_port(), http_request("GET", "/healthz")).has_value());
  const CtlRun table = ctl({"stats"});
  ASSERT_TRUE(table.exited_with(0)) << table.describe();
  // Columns as wide as their longest cell ("data_responses"): each row is its group, its
  // counter and its value, apart by spaces.
  std::vector<std::vector<std::string>> rows;
  std::istringstream lines(table.out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream cells(line);
    rows.emplace_back();
    for (std::string cell; cells >> cell;) rows.back().push_back(cell);
  }
  const auto has_row = [&](std::string_view group, std::string_view counter) {
    return std::any_of(rows.begin(), rows.end(), [&](const std::vector<std::string>& row) {
      return row.size() == 3 && row[0] == group && row[1] == counter &&
             row[2].find_first_not_of("0123456789") == std::string::npos;
    });
  };
  ASSERT_FALSE(rows.empty()) << table.describe();
  EXPECT_EQ(rows.front(), (std::vector<std::string>{"GROUP", "COUNTER", "VALUE"}))
      << table.describe();
  EXPECT_TRUE(help_names_columns(ctl_raw({"--help"}, std::nullopt).out, "stats", table.out));
  for (const auto& [group, counter] :
       std::vector<std::pair<std::string_view, std::string_view>>{
           {"workers", "requests"}, {"keys", "cached_keys"}, {"access_log", "enqueued"},
           {"access_log", "dropped"}, {"admin", "executed_total"}, {"data_responses", "200"}}) {
    EXPECT_TRUE(has_row(group, counter)) << group << " " << counter << "\n" << table.describe();
  }
  const CtlRun json = ctl({"stats", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_TRUE(json.out.starts_with("{\"workers\":{\"workers\":")) << json.describe();
  const CtlRun extra = ctl({"stats", "now"});
  EXPECT_TRUE(extra.exited_with(2)) << extra.describe();
}

// --- backup ----------------------------------------------------------------------------------

TEST_F(Keygatectl, BackupMakesOneListsThemAndSaysWhenTheyAreDisabled) {
  const CtlRun disabled = ctl({"backup"});
  EXPECT_TRUE(disabled.exited_with(1)) << disabled.describe();
  EXPECT_TRUE(contains(disabled.err, "409 backups_disabled")) << disabled.describe();
  EXPECT_TRUE(contains(disabled.err, "[backup] dir")) << disabled.describe();

  // The same keygate with backups on.
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  TempDir backups;
  ServerOptions options = admin_server_options(admin_value_);
  options.data_dir = backups.path() + "/data";
  options.extra_config += "\n[backup]\ndir = \"" + backups.path() + "/b\"\n";
  server_ = std::make_unique<TestServer>(options);
  std::string error;
  ASSERT_TRUE(server_->start(&error)) << error;
  url_ = "http://127.0.0.1:" + std::to_string(server_->admin_port());

  const CtlRun made = ctl({"backup"});
  ASSERT_TRUE(made.exited_with(0)) << made.describe();
  const std::string name = field(made.out, "name");
  EXPECT_TRUE(name.starts_with("keygate-")) << made.describe();
  EXPECT_EQ(field(made.out, "path"), backups.path() + "/b/" + name) << made.describe();
  EXPECT_EQ(field(made.out, "seq"), "1") << made.describe();
  EXPECT_EQ(field(made.out, "keys"), "1") << made.describe();
  EXPECT_EQ(field(made.out, "users"), "0") << made.describe();
  EXPECT_FALSE(field(made.out, "created_at").empty()) << made.describe();
  EXPECT_FALSE(field(made.out, "bytes").empty()) << made.describe();
  const CtlRun second = ctl({"backup", "create", "--json"});
  ASSERT_TRUE(second.exited_with(0)) << second.describe();
  EXPECT_TRUE(second.out.starts_with("{\"name\":\"keygate-")) << second.describe();

  for (const std::vector<std::string>& list : std::vector<std::vector<std::string>>{
           {"backup", "list"}, {"backups"}}) {
    const CtlRun table = ctl(list);
    ASSERT_TRUE(table.exited_with(0)) << table.describe();
    EXPECT_TRUE(table.out.starts_with("NAME ")) << table.describe();
    for (const char* heading : {"CREATED", "KEYS", "USERS", "BYTES", "PATH"}) {
      EXPECT_TRUE(contains(table.out.substr(0, table.out.find('\n')), heading))
          << table.describe();
    }
    EXPECT_EQ(count_of(table.out, "\n"), 3u) << table.describe();
    EXPECT_TRUE(help_names_columns(ctl_raw({"--help"}, std::nullopt).out, "backups", table.out));
    // The first backup's row: its name, created time, then 1 key (the admin key) and 0 users.
    const size_t row = table.out.find(name);
    ASSERT_NE(row, std::string::npos) << table.describe();
    const std::string line = table.out.substr(row, table.out.find('\n', row) - row);
    std::vector<std::string> cells;
    for (size_t at = 0; at < line.size();) {
      const size_t start = line.find_first_not_of(' ', at);
      if (start == std::string::npos) break;
      const size_t end = std::min(line.find(' ', start), line.size());
      cells.push_back(line.substr(start, end - start));
      at = end;
    }
    ASSERT_GE(cells.size(), 6u) << line;
    EXPECT_EQ(cells[2], "1") << line;
    EXPECT_EQ(cells[3], "0") << line;
    EXPECT_FALSE(contains(table.err, "in progress")) << table.describe();
    // Newest first.
    EXPECT_GT(table.out.find(name), table.out.find(string_member(second.out, "name")))
        << table.describe();
  }
  const CtlRun json = ctl({"backups", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_TRUE(json.out.starts_with("{\"backups\":[{\"name\":\"keygate-")) << json.describe();

  const CtlRun help = ctl({"backup", "--help"});
  ASSERT_TRUE(help.exited_with(0)) << help.describe();
  EXPECT_TRUE(help.out.starts_with("Usage: keygatectl [global options] backup")) << help.describe();
  const CtlRun wrong = ctl({"backup", "now"});
  EXPECT_TRUE(wrong.exited_with(2)) << wrong.describe();
  EXPECT_TRUE(contains(wrong.err, "usage: keygatectl [global options] backup")) << wrong.describe();
}

// A backup being made is not listed until it is complete: `backups` says on stderr that one is
// coming, and the table stays what a script parses.
TEST_F(Keygatectl, BackupsSaysABackupInProgressOnStderr) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  TempDir backups;
  ServerOptions options = admin_server_options(admin_value_);
  options.data_dir = backups.path() + "/data";
  options.extra_config += "\n[backup]\ndir = \"" + backups.path() + "/b\"\n";
  options.env.emplace_back("KEYGATE_TEST_BACKUP_DELAY_MS", "3000");
  server_ = std::make_unique<TestServer>(options);
  std::string error;
  ASSERT_TRUE(server_->start(&error)) << error;
  url_ = "http://127.0.0.1:" + std::to_string(server_->admin_port());

  ChildProcess making;
  const std::vector<std::string> env = ctl_environment(admin_value_);
  ASSERT_TRUE(making.spawn(keygatectl_binary(), {"--url", url_, "backup"}, &error, &env))
      << error;
  // Until the listing sees it (the POST is on its way; the backup then takes 3 s).
  CtlRun listed;
  for (int i = 0; i < 50; ++i) {
    listed = ctl({"backups"});
    if (contains(listed.err, "in progress")) break;
    std::this_thread::sleep_for(Millis(50));
  }
  EXPECT_TRUE(listed.exited_with(0)) << listed.describe();
  EXPECT_TRUE(contains(listed.err, "keygatectl: a backup is in progress (started 20"))
      << listed.describe();
  EXPECT_FALSE(contains(listed.out, "in progress")) << listed.describe();
  ExitStatus made;
  for (int i = 0; i < 200 && !making.exited(&made); ++i) std::this_thread::sleep_for(Millis(50));
  EXPECT_TRUE(made.clean()) << made.describe() << making.error_output();
  const CtlRun after = ctl({"backups"});
  EXPECT_TRUE(after.exited_with(0)) << after.describe();
  EXPECT_FALSE(contains(after.err, "in progress")) << after.describe();
  EXPECT_TRUE(after.out.starts_with("NAME ")) << after.describe();
}

// --- reload ----------------------------------------------------------------------------------

// An auth-check API named "checks" on /checks, as config text.
constexpr std::string_view kChecksApi = "[[apis]]\nname = \"checks\"\nroutes = [\"/checks\"]\n";

TEST_F(Keygatectl, ReloadAppliesTheEditedConfigAndANewApiIsReachableAfterwards) {
  // Before: keygate has no such API, and refuses a key for it.
  const CtlRun early = ctl({"keys", "create", "--api", "checks"});
  EXPECT_TRUE(early.exited_with(1)) << early.describe();
  EXPECT_TRUE(contains(early.err, "400 unknown_api")) << early.describe();

  replace_config(std::string(kOrdersAndBillingApis) + "\n" + std::string(kChecksApi));
  const CtlRun reload = ctl({"reload"});
  ASSERT_TRUE(reload.exited_with(0)) << reload.describe();
  EXPECT_EQ(reload.out,
            "generation:        2\n"
            "apis:              3\n"
            "applied_settings:  (none)\n"
            "restart_settings:  (none)\n")
      << reload.describe();
  EXPECT_EQ(reload.err, "") << reload.describe();

  // Answered once the new API serves: a key for it is accepted at once and works on the data
  // port, and the old APIs keep working.
  const std::string value = made_key(ctl({"keys", "create", "--api", "checks"}));
  ASSERT_FALSE(value.empty());
  EXPECT_EQ(data_status("/checks/1", value), 200);
  EXPECT_EQ(data_status("/orders/1", value), 403);
  const CtlRun apis = ctl({"apis"});
  ASSERT_TRUE(apis.exited_with(0)) << apis.describe();
  EXPECT_TRUE(contains(apis.out, "checks   /checks\n")) << apis.describe();

  // --json: the server's outcome as is. Every reload is a new generation, changed or not.
  const CtlRun json = ctl({"reload", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_EQ(json.out,
            "{\"generation\":3,\"apis\":3,\"restart_settings\":[],\"workers_pending\":[],"
            "\"applied_settings\":[]}\n")
      << json.describe();

  const CtlRun extra = ctl({"reload", "now"});
  EXPECT_TRUE(extra.exited_with(2)) << extra.describe();
  EXPECT_TRUE(contains(extra.err, "usage: keygatectl [global options] reload")) << extra.describe();
}

TEST_F(Keygatectl, ReloadOfAnInvalidFileSaysWhyOnStderrAndExitsOneAndNothingChanges) {
  const std::string value = made_key(ctl({"keys", "create", "--api", "orders"}));
  const std::string path = replace_config(
      std::string(kOrdersAndBillingApis) + "\n[[apis]]\nname = \"checks\"\nroutes = [\n", true);
  const CtlRun refused = ctl({"reload"});
  EXPECT_TRUE(refused.exited_with(1)) << refused.describe();
  EXPECT_EQ(refused.out, "") << refused.describe();
  // The server's reason, with the file and line, on one line.
  EXPECT_EQ(refused.err, "keygatectl: 400 reload_refused: " + path +
                             ":11:12: Error while parsing array: encountered end-of-file\n")
      << refused.describe();
  // --json does not turn a refusal into output: stderr and exit 1 all the same.
  const CtlRun json = ctl({"--json", "reload"});
  EXPECT_TRUE(json.exited_with(1)) << json.describe();
  EXPECT_EQ(json.out, "") << json.describe();
  EXPECT_EQ(json.err, refused.err) << json.describe();

  // A file that parses but breaks a rule (one route in two APIs) is refused the same way.
  replace_config(std::string(kOrdersAndBillingApis) +
                 "\n[[apis]]\nname = \"checks\"\nroutes = [\"/orders\"]\n");
  const CtlRun rule = ctl({"reload"});
  EXPECT_TRUE(rule.exited_with(1)) << rule.describe();
  EXPECT_EQ(rule.err, "keygatectl: 400 reload_refused: " + path +
                          ":11:11: apis: api \"checks\": route \"/orders\" is already used by "
                          "api \"orders\"\n")
      << rule.describe();

  // Nothing changed: the running APIs serve, and the next good file is generation 2.
  EXPECT_EQ(data_status("/orders/1", value), 200);
  replace_config(std::string(kOrdersAndBillingApis));
  const CtlRun fixed = ctl({"reload"});
  ASSERT_TRUE(fixed.exited_with(0)) << fixed.describe();
  EXPECT_EQ(field(fixed.out, "generation"), "2") << fixed.describe();
  EXPECT_EQ(field(fixed.out, "apis"), "2") << fixed.describe();
}

TEST_F(Keygatectl, ReloadListsEachChangedSettingAppliedAndEachThatTakesEffectOnlyAtRestart) {
  replace_config("[limits]\nidle_timeout_ms = 1234\n\n[cache]\nnegative_entries = 1024\n\n"
                 "[log]\nring_bytes_per_worker = 131072\ncapture_bytes_max = 100\n\n" +
                 std::string(kOrdersAndBillingApis) + "\n" + std::string(kChecksApi));
  const CtlRun reload = ctl({"reload"});
  ASSERT_TRUE(reload.exited_with(0)) << reload.describe();
  // One setting a line, the second under the first; the APIs and the live settings are
  // applied all the same.
  EXPECT_EQ(reload.out,
            "generation:        2\n"
            "apis:              3\n"
            "applied_settings:  limits.idle_timeout_ms\n"
            "                   log.capture_bytes_max\n"
            "restart_settings:  cache.negative_entries\n"
            "                   log.ring_bytes_per_worker\n")
      << reload.describe();
  EXPECT_EQ(reload.err,
            "keygatectl: the restart_settings changed in the file but take effect only when "
            "keygate restarts\n")
      << reload.describe();
  // The next reload compares with what runs now: the applied ones are no change any more, the
  // restart-only ones still are.
  const CtlRun json = ctl({"reload", "--json"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_EQ(json.out,
            "{\"generation\":3,\"apis\":3,\"restart_settings\":"
            "[\"cache.negative_entries\",\"log.ring_bytes_per_worker\"],"
            "\"workers_pending\":[],\"applied_settings\":[]}\n")
      << json.describe();
  EXPECT_EQ(json.err, "") << json.describe();
}

// --- errors ----------------------------------------------------------------------------------

TEST_F(Keygatectl, ErrorsExitNonZeroWithAClearMessageAndNeverShowTheAdminKey) {
  const CtlRun unknown_api = ctl({"keys", "create", "--api", "nope"});
  EXPECT_TRUE(unknown_api.exited_with(1)) << unknown_api.describe();
  EXPECT_EQ(unknown_api.err,
            "keygatectl: 400 unknown_api: names an API that is not configured (field: apis)\n");
  EXPECT_TRUE(unknown_api.out.empty()) << unknown_api.describe();

  const CtlRun no_key = ctl_raw({"--url", url_, "apis"}, std::nullopt);
  EXPECT_TRUE(no_key.exited_with(2)) << no_key.describe();
  EXPECT_TRUE(contains(no_key.err, "no admin key: pass --key KEY or set KEYGATE_ADMIN_KEY"))
      << no_key.describe();

  const std::string wrong = "it-wrong-" + random_hex(24);
  const CtlRun wrong_key = ctl_raw({"--url", url_, "--key", wrong, "apis"}, admin_value_);
  EXPECT_TRUE(wrong_key.exited_with(1)) << wrong_key.describe();
  EXPECT_TRUE(wrong_key.err.starts_with("keygatectl: 401 invalid_api_key: "))
      << wrong_key.describe();
  EXPECT_FALSE(contains(wrong_key.out + wrong_key.err, wrong)) << wrong_key.describe();

  // --key wins over the environment, and a data-only key is not an admin key.
  const std::string data_key = made_key(ctl({"keys", "create", "--api", "orders"}));
  const CtlRun not_admin =
      ctl_raw({"--url", url_, "--key", data_key, "keys", "list"}, admin_value_);
  EXPECT_TRUE(not_admin.exited_with(1)) << not_admin.describe();
  EXPECT_TRUE(contains(not_admin.err, "403 api_not_permitted")) << not_admin.describe();

  const CtlRun unknown_command = ctl({"frobnicate"});
  EXPECT_TRUE(unknown_command.exited_with(2)) << unknown_command.describe();
  EXPECT_TRUE(contains(unknown_command.err, "unknown command 'frobnicate'"))
      << unknown_command.describe();
  EXPECT_TRUE(contains(unknown_command.err, "usage: keygatectl")) << unknown_command.describe();
  // A misplaced key value is not echoed back.
  const CtlRun misplaced = ctl({admin_value_, "keys", "list"});
  EXPECT_TRUE(misplaced.exited_with(2)) << misplaced.describe();
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"keys", "frob"},
           {"keys"},
           {"keys", "list", "--bogus"},
           {"keys", "show"},
           {"keys", "list", "--key", "x"},
           {"keys", "update", "kAAAAAAAAAAAA"},
           {"keys", "rotate", "kAAAAAAAAAAAA", "--grace-seconds", "soon"}}) {
    const CtlRun run = ctl(args);
    EXPECT_TRUE(run.exited_with(2)) << run.describe();
    EXPECT_TRUE(contains(run.err, "usage: keygatectl")) << run.describe();
  }

  const CtlRun bad_url = ctl_raw({"--url", "https://127.0.0.1:1", "apis"}, admin_value_);
  EXPECT_TRUE(bad_url.exited_with(2)) << bad_url.describe();
  EXPECT_TRUE(contains(bad_url.err, "only http://")) << bad_url.describe();
  const CtlRun dns = ctl_raw({"--url", "http://example.com:8081", "apis"}, admin_value_);
  EXPECT_TRUE(dns.exited_with(2)) << dns.describe();
  const ClosedPort closed;
  ASSERT_TRUE(closed.ok());
  const CtlRun refused = ctl_raw({"--url", closed.url(), "apis"}, admin_value_);
  EXPECT_TRUE(refused.exited_with(1)) << refused.describe();
  EXPECT_TRUE(contains(refused.err,
                       "cannot connect to 127.0.0.1:" + closed.port() + ": Connection refused"))
      << refused.describe();
}

TEST_F(Keygatectl, HelpDocumentsEveryCommand) {
  const CtlRun help = ctl_raw({"--help"}, std::nullopt);
  ASSERT_TRUE(help.exited_with(0)) << help.describe();
  for (const char* word :
       {"--url", "--key", "--json", "KEYGATE_ADMIN_KEY", "keys", "users", "apis", "logs",
        "stats", "reload", "15 for reload", "Exit status", "refused before anything was sent"}) {
    EXPECT_TRUE(contains(help.out, word)) << word << "\n" << help.describe();
  }
  const CtlRun keys = ctl_raw({"keys", "--help"}, std::nullopt);
  ASSERT_TRUE(keys.exited_with(0)) << keys.describe();
  for (const char* word :
       {"keys create", "keys list", "keys show", "keys update", "keys delete", "keys rotate",
        "keys import", "--grace-seconds", "--no-expiry", "--enabled=true|false", "--all",
        "--key-file FILE", "visible to other users", "100,000 keys in one import",
        "body_bytes_max"}) {
    EXPECT_TRUE(contains(keys.out, word)) << word << "\n" << keys.describe();
  }
  const CtlRun users = ctl_raw({"users", "create", "--help"}, std::nullopt);
  ASSERT_TRUE(users.exited_with(0)) << users.describe();
  for (const char* word :
       {"users create", "users list", "users show", "users update", "users delete", "--grant",
        "--no-grants", "1 to 256 printable ASCII characters"}) {
    EXPECT_TRUE(contains(users.out, word)) << word << "\n" << users.describe();
  }
  const CtlRun stats = ctl_raw({"stats", "--help"}, std::nullopt);
  ASSERT_TRUE(stats.exited_with(0)) << stats.describe();
  for (const char* word : {"GROUP, COUNTER, VALUE", "workers", "access_log", "GET /admin/stats",
                           "\"config\"", "reloads_refused_total"}) {
    EXPECT_TRUE(contains(stats.out, word)) << word << "\n" << stats.describe();
  }
  const CtlRun reload = ctl_raw({"reload", "--help"}, std::nullopt);
  ASSERT_TRUE(reload.exited_with(0)) << reload.describe();
  for (const char* word :
       {"POST /admin/reload", "[[apis]]", "generation", "restart_settings", "--json",
        "400 reload_refused: FILE:LINE:COLUMN", "503 reload_unavailable", "15 s"}) {
    EXPECT_TRUE(contains(reload.out, word)) << word << "\n" << reload.describe();
  }
  const CtlRun apis = ctl_raw({"apis", "--help"}, std::nullopt);
  ASSERT_TRUE(apis.exited_with(0)) << apis.describe();
  EXPECT_TRUE(contains(apis.out, "'keygatectl reload'")) << apis.describe();
  const CtlRun logs = ctl_raw({"logs", "--help"}, std::nullopt);
  ASSERT_TRUE(logs.exited_with(0)) << logs.describe();
  for (const char* word : {"logs --follow", "--key ID", "--status N", "--since TIME",
                           "--until TIME", "--limit N", "--cursor C", "RFC 3339", "JSON",
                           "newest first", "oldest first", "logs_unavailable"}) {
    EXPECT_TRUE(contains(logs.out, word)) << word << "\n" << logs.describe();
  }
}

// Every help text fits a 100-column terminal (and the 100-column source it is written in): a
// longer line wraps mid-word on an operator's terminal.
TEST_F(Keygatectl, EveryHelpTextFitsOneHundredColumns) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--help"}, {"keys", "--help"}, {"users", "--help"}, {"apis", "--help"},
           {"logs", "--help"}, {"stats", "--help"}, {"reload", "--help"}, {"backup", "--help"}}) {
    const CtlRun run = ctl_raw(args, std::nullopt);
    ASSERT_TRUE(run.exited_with(0)) << run.describe();
    size_t at = 0;
    while (at < run.out.size()) {
      size_t end = run.out.find('\n', at);
      if (end == std::string::npos) end = run.out.size();
      EXPECT_LE(end - at, 100u) << args[0] << ": " << run.out.substr(at, end - at);
      at = end + 1;
    }
  }
}

TEST_F(Keygatectl, LogsRefusesBadOptionsBeforeSendingAnything) {
  // A key value where a key id belongs is refused without being echoed or sent.
  CtlRun run = ctl({"logs", "--key", admin_value_});
  EXPECT_TRUE(run.exited_with(2)) << run.describe();
  EXPECT_TRUE(contains(run.err, "--key takes a key id")) << run.describe();
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"logs", "--status", "42"},
           {"logs", "--status", "600"},
           {"logs", "--limit", "0"},
           {"logs", "--limit", "1001"},
           {"logs", "--follow", "--cursor", "5"},
           {"logs", "--follow", "--json"},
           {"logs", "extra"},
           {"logs", "--user", "alice"},
           {"logs", "--cursor", "0"},
           {"logs", "--cursor", "-5"},
           {"logs", "--cursor", "12abc"},
           {"logs", "--since", "yesterday"},
           {"logs", "--since", "2026-11-26"},
           {"logs", "--until", "1970-01-01T00:00:00Z"},
           {"logs", "--follow", "--until", "noon"}}) {
    run = ctl(args);
    EXPECT_TRUE(run.exited_with(2)) << run.describe();
    EXPECT_TRUE(contains(run.err, "usage: keygatectl [global options] logs")) << run.describe();
  }
}

TEST_F(Keygatectl, LogsCursorSinceAndUntilAreCheckedSoAKeyTypedThereNeverReachesTheLog) {
  // A key value where a seq or a time belongs: refused before anything is sent, not echoed
  // (TearDown checks every run's output for the admin key).
  for (const char* option : {"--cursor", "--since", "--until"}) {
    const CtlRun run = ctl({"logs", option, admin_value_});
    EXPECT_TRUE(run.exited_with(2)) << run.describe();
    EXPECT_TRUE(contains(run.err, std::string(option) + " takes")) << run.describe();
  }
  // What the server takes passes (and the query flushes the log to its files).
  const CtlRun ok = ctl({"logs", "--since", "2026-01-01T00:00:00Z", "--until",
                         "2099-12-31T23:59:59+01:00", "--cursor", "18446744073709551615"});
  EXPECT_TRUE(ok.exited_with(0)) << ok.describe();
  // The query's own record reaches the files at the writer's next flush (the log held nothing
  // to flush before the query): read them until it is there, at most 5 s.
  size_t files = 0;
  std::string bytes;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    files = 0;
    bytes.clear();
    std::error_code ec;
    for (const auto& e : std::filesystem::recursive_directory_iterator(server_->log_dir(), ec)) {
      if (!e.is_regular_file()) continue;
      ++files;
      std::ifstream f(e.path(), std::ios::binary);
      bytes.append(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
    if (contains(bytes, "/admin/logs?")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  ASSERT_GT(files, 0u);
  EXPECT_TRUE(contains(bytes, "/admin/logs?")) << "the accepted query is not in the log";
  EXPECT_FALSE(contains(bytes, admin_value_)) << "the key reached the access log";
}

TEST_F(Keygatectl, C1ControlsInADescriptionOrACapturedRequestStayEscaped) {
  const std::string csi = "\xc2\x9b";  // U+009B, CSI to a terminal
  const CtlRun create = ctl({"keys", "create", "--api", "orders", "--log-request", "--description",
                             "a" + csi + "31m b"});
  const std::string value = made_key(create);
  const std::string id = field(create.out, "id");
  EXPECT_FALSE(contains(create.out, csi)) << create.describe();
  EXPECT_EQ(field(create.out, "description"), "a\\xc2\\x9b31m b") << create.describe();

  const CtlRun list = ctl({"keys", "list"});
  ASSERT_TRUE(list.exited_with(0)) << list.describe();
  EXPECT_FALSE(contains(list.out, csi)) << list.describe();
  EXPECT_TRUE(contains(list.out, "a\\xc2\\x9b31m b")) << list.describe();

  // The admin API writes it as the code point escape.
  const CtlRun json = ctl({"--json", "keys", "show", id});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_TRUE(contains(json.out, R"("description":"a\u009b31m b")")) << json.describe();

  // A captured request with CSI in a header and the body: the log has each byte escaped.
  const std::optional<Response> r =
      round_trip(server_->data_port(),
                 http_request("POST", "/orders/1", {"X-ApiKey: " + value, "X-Note: n" + csi + "2J"},
                              "b" + csi + "2J"));
  ASSERT_TRUE(r.has_value());
  CtlRun logs;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {  // the record reaches GET /admin/logs at the writer's next flush
    logs = ctl({"logs", "--key", id});
    if (contains(logs.out, "X-Note")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < deadline);
  ASSERT_TRUE(logs.exited_with(0)) << logs.describe();
  EXPECT_FALSE(contains(logs.out, csi)) << logs.describe();
  EXPECT_TRUE(contains(logs.out, R"(X-Note: n\u00c2\u009b2J)")) << logs.describe();
  EXPECT_TRUE(contains(logs.out, R"("body":"b\u00c2\u009b2J")")) << logs.describe();
}

// --- against a server that misbehaves -----------------------------------------------------------

// A stand-in for the admin port, for what keygate itself never sends: a thread accepts loopback
// connections (at most kConnectionsMax, then it stops) and hands each one, with its request head,
// to `respond`, which writes what it likes; the connection is then closed. The destructor stops
// the thread (`stopping()` tells a slow `respond` to give up).
class FakeAdmin {
 public:
  using Respond = std::function<void(FakeAdmin&, int fd, const std::string& head)>;
  static constexpr int kConnectionsMax = 64;

  explicit FakeAdmin(Respond respond) : respond_(std::move(respond)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeAdmin() {
    stopping_ = true;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);  // wakes accept()
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  FakeAdmin(const FakeAdmin&) = delete;
  FakeAdmin& operator=(const FakeAdmin&) = delete;

  bool ok() const { return port_ != 0; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  bool stopping() const { return stopping_; }
  int requests() const { return requests_; }

  // Sends all of `bytes` (false when the client has gone).
  static bool send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // A complete 200 response with a JSON body.
  static void send_json(int fd, std::string_view body) {
    send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
                     std::string(body));
  }

 private:
  void serve() {
    for (int n = 0; n < kConnectionsMax && !stopping_; ++n) {
      const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      std::string head;
      char buf[4096];
      while (head.find("\r\n\r\n") == std::string::npos && head.size() < 65536) {
        const ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
        if (r <= 0) break;
        head.append(buf, static_cast<size_t>(r));
      }
      ++requests_;
      respond_(*this, fd, head);
      ::close(fd);
    }
  }

  Respond respond_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

// keygatectl --url <fake> ARGS with an admin key, SIGKILLed after `timeout`.
CtlRun ctl_against(const FakeAdmin& fake, std::vector<std::string> args,
                   Millis timeout = kCtlTimeout) {
  args.insert(args.begin(), {"--url", fake.url()});
  const std::vector<std::string> env = ctl_environment("fake-admin-key");
  ProcessResult result = run_process(keygatectl_binary(), args, &env, timeout);
  return CtlRun{std::move(args), result.status, std::move(result.out), std::move(result.err)};
}

constexpr std::string_view kCsi = "\xc2\x9b";  // U+009B, CSI to a terminal
constexpr std::string_view kOsc = "\xc2\x9d";  // U+009D, OSC

TEST(KeygatectlAgainstAFakeServer, C1ControlsInTextFromTheServerNeverReachTheTerminalRaw) {
  // A key record whose description holds raw C1 controls (valid JSON: keygate itself escapes
  // them, an older or hostile server may not), and an access-log page whose record does too.
  const std::string key_record = R"({"id":"kAAAAAAAAAAAA","hint":"x","description":"a)" +
                                 std::string(kCsi) + "2J" + std::string(kOsc) +
                                 R"(0;t b","apis":[],"user":null,"enabled":true,"expires_at":null})";
  const std::string logs_page = R"({"records":[{"seq":7,"path":"/x)" + std::string(kCsi) +
                                R"(31m"}],"next_cursor":null})";
  FakeAdmin fake([&](FakeAdmin&, int fd, const std::string& head) {
    FakeAdmin::send_json(fd, head.starts_with("GET /admin/logs") ? logs_page : key_record);
  });
  ASSERT_TRUE(fake.ok());
  const auto raw_c1 = [](const std::string& text) {
    return contains(text, kCsi) || contains(text, kOsc);
  };

  const CtlRun show = ctl_against(fake, {"keys", "show", "kAAAAAAAAAAAA"});
  ASSERT_TRUE(show.exited_with(0)) << show.describe();
  EXPECT_FALSE(raw_c1(show.out)) << show.describe();
  EXPECT_EQ(field(show.out, "description"), "a\\xc2\\x9b2J\\xc2\\x9d0;t b") << show.describe();

  // --json: as code point escapes, which mean the same to a JSON parser.
  const CtlRun json = ctl_against(fake, {"--json", "keys", "show", "kAAAAAAAAAAAA"});
  ASSERT_TRUE(json.exited_with(0)) << json.describe();
  EXPECT_FALSE(raw_c1(json.out)) << json.describe();
  EXPECT_TRUE(contains(json.out, R"("description":"a\u009b2J\u009d0;t b")")) << json.describe();

  // Log records keep the log's convention, "\u00XX" = the raw byte XX.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"logs"}, std::vector<std::string>{"--json", "logs"}}) {
    const CtlRun logs = ctl_against(fake, args);
    ASSERT_TRUE(logs.exited_with(0)) << logs.describe();
    EXPECT_FALSE(raw_c1(logs.out)) << logs.describe();
    EXPECT_TRUE(contains(logs.out, R"("path":"/x\u00c2\u009b31m")")) << logs.describe();
  }
}

TEST(KeygatectlAgainstAFakeServer, AServerTricklingItsAnswerIsCutOffByTheExchangeDeadline) {
  // One byte every 400 ms: each wait is short of --timeout 1, the answer never ends (at most
  // 60 s of it, and the fake gives up when the test ends).
  FakeAdmin fake([](FakeAdmin& self, int fd, const std::string&) {
    if (!FakeAdmin::send_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 150\r\n\r\n")) return;
    for (int i = 0; i < 150 && !self.stopping(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      if (!FakeAdmin::send_all(fd, "{")) return;
    }
  });
  ASSERT_TRUE(fake.ok());
  const auto start = std::chrono::steady_clock::now();
  const CtlRun run = ctl_against(fake, {"--timeout", "1", "stats"}, Millis(30000));
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(run.exited_with(1)) << run.describe();
  EXPECT_TRUE(contains(run.err, "no complete response within 10 s")) << run.describe();
  EXPECT_GE(took, std::chrono::seconds(9));
  EXPECT_LT(took, std::chrono::seconds(20));
}

TEST(KeygatectlAgainstAFakeServer, AListingWhoseCursorsComeAgainEnds) {
  // Cursors A, B, A, B, ...: never the same twice in a row, so only remembering every cursor
  // notices; each page brings a user, so the listing would grow without end.
  FakeAdmin fake([](FakeAdmin&, int fd, const std::string& head) {
    const bool at_a = contains(head.substr(0, head.find('\n')), "cursor=A");
    FakeAdmin::send_json(fd, std::string(R"({"users":[{"name":"u","grants":[]}],"next_cursor":")") +
                                 (at_a ? "B" : "A") + "\"}");
  });
  ASSERT_TRUE(fake.ok());
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"users", "list"},
        std::vector<std::string>{"--json", "users", "list"}}) {
    const CtlRun run = ctl_against(fake, args);
    EXPECT_TRUE(run.exited_with(1)) << run.describe();
    EXPECT_TRUE(contains(run.err, "a cursor came again")) << run.describe();
  }
  EXPECT_LE(fake.requests(), 8);
}

TEST(KeygatectlAgainstAFakeServer, AnAnswerAboveTheLargestTheAdminApiGivesIsRefusedUpFront) {
  // 100 MiB announced (above 64 MiB, the cap; a logs page, the largest answer, is about 32 MiB),
  // then nothing: refused at the head, without waiting for or buffering the body.
  FakeAdmin fake([](FakeAdmin&, int fd, const std::string&) {
    FakeAdmin::send_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n{");
  });
  ASSERT_TRUE(fake.ok());
  const CtlRun run = ctl_against(fake, {"stats"});
  EXPECT_TRUE(run.exited_with(1)) << run.describe();
  EXPECT_TRUE(contains(run.err, "too large")) << run.describe();
}

// keygate answers 503 reload_unavailable while it drains, or when the reload did not run within
// 10 s: an error like any other (exit 1, the reason on stderr). A stand-in sends it, since a
// draining keygate no longer accepts the connection keygatectl would open.
TEST(KeygatectlAgainstAFakeServer, ReloadUnavailableExitsOneWithTheServersReason) {
  std::mutex mu;
  std::string seen;  // mu: the last request head (the fake's thread writes it)
  FakeAdmin fake([&](FakeAdmin&, int fd, const std::string& head) {
    {
      std::lock_guard lock(mu);
      seen = head;
    }
    const std::string body =
        R"({"error":"reload_unavailable","message":"keygate is draining: nothing to reload",)"
        R"("field":null})";
    FakeAdmin::send_all(fd, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                            "application/json\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
                                body);
  });
  ASSERT_TRUE(fake.ok());
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"reload"}, {"reload", "--json"}}) {
    const CtlRun run = ctl_against(fake, args);
    EXPECT_TRUE(run.exited_with(1)) << run.describe();
    EXPECT_EQ(run.err, "keygatectl: 503 reload_unavailable: keygate is draining: nothing to reload\n")
        << run.describe();
    EXPECT_EQ(run.out, "") << run.describe();
  }
  // A POST without a body, said so (Content-Length: 0).
  std::lock_guard lock(mu);
  EXPECT_TRUE(seen.starts_with("POST /admin/reload HTTP/1.1\r\n")) << seen;
  EXPECT_TRUE(contains(seen, "\r\nContent-Length: 0\r\n")) << seen;
}

// keygate may take up to 10 s to answer a reload (it waits that long for the main thread):
// keygatectl's default --timeout (10 s) would cut off an answer that comes just before then.
TEST(KeygatectlAgainstAFakeServer, ReloadWaitsLongerThanTheServersTenSecondsByDefault) {
  FakeAdmin fake([](FakeAdmin& self, int fd, const std::string&) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(11000);
    while (!self.stopping() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FakeAdmin::send_json(fd, R"({"generation":2,"apis":1,"restart_settings":[]})");
  });
  ASSERT_TRUE(fake.ok());
  const CtlRun run = ctl_against(fake, {"reload"}, Millis(30000));
  EXPECT_TRUE(run.exited_with(0)) << run.describe();
  EXPECT_EQ(field(run.out, "generation"), "2") << run.describe();
}

// A reload that a stalled worker had not taken yet: the outcome names it, and stderr says what
// that means.
TEST(KeygatectlAgainstAFakeServer, ReloadNamesTheWorkersThatHadNotTakenTheNewApis) {
  FakeAdmin fake([](FakeAdmin&, int fd, const std::string&) {
    FakeAdmin::send_json(
        fd, R"({"generation":2,"apis":1,"restart_settings":[],"workers_pending":[1,3]})");
  });
  ASSERT_TRUE(fake.ok());
  const CtlRun run = ctl_against(fake, {"reload"});
  EXPECT_TRUE(run.exited_with(0)) << run.describe();
  EXPECT_EQ(field(run.out, "generation"), "2") << run.describe();
  EXPECT_TRUE(contains(run.out, "workers_pending:   1\n                   3\n")) << run.describe();
  EXPECT_EQ(run.err,
            "keygatectl: the workers_pending had not taken the new APIs yet (their event loop "
            "is held up): each takes them at its next loop pass\n")
      << run.describe();
}

TEST(KeygatectlAgainstAFakeServer, ANonLoopbackUrlIsWarnedAboutALoopbackOneIsNot) {
  // 192.0.2.1 (TEST-NET-1) is never contacted: the warning comes before the command, and this
  // one (not a key id) is refused before sending anything.
  const std::vector<std::string> env = ctl_environment("fake-admin-key");
  const ProcessResult remote = run_process(
      keygatectl_binary(), {"--url", "http://192.0.2.1:1", "keys", "show", "nokey"}, &env,
      kCtlTimeout);
  EXPECT_TRUE(contains(remote.err, "not a loopback address")) << remote.err;
  EXPECT_TRUE(contains(remote.err, "SSH tunnel")) << remote.err;
  const ClosedPort closed;
  ASSERT_TRUE(closed.ok());
  const ProcessResult local =
      run_process(keygatectl_binary(), {"--url", closed.url(), "stats"}, &env, kCtlTimeout);
  EXPECT_FALSE(contains(local.err, "loopback")) << local.err;
  // 127.0.0.1 spelled as an IPv4-mapped IPv6 address is loopback too.
  const ProcessResult mapped = run_process(
      keygatectl_binary(), {"--url", "http://[::FFFF:127.0.0.1]:" + closed.port(), "stats"}, &env,
      kCtlTimeout);
  EXPECT_FALSE(contains(mapped.err, "loopback")) << mapped.err;
}

// --- logs --follow across restarts and retention ----------------------------------------

// The "path" of each stdout line of a follow, in order.
std::vector<std::string> followed_paths(const std::string& out) {
  std::vector<std::string> paths;
  for (size_t at = 0; at < out.size();) {
    size_t end = out.find('\n', at);
    if (end == std::string::npos) end = out.size();
    paths.push_back(string_member(std::string_view(out).substr(at, end - at), "path"));
    at = end + 1;
  }
  return paths;
}

class KeygatectlFollow : public Keygatectl {
 protected:
  // Replaces the fixture's server with one on `options` (admin key and APIs as before).
  void restart_with(ServerOptions options) {
    if (server_->running()) {
      ASSERT_TRUE(server_->stop(SIGTERM).clean());
    }
    server_ = std::make_unique<TestServer>(std::move(options));
    std::string error;
    ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
    url_ = "http://127.0.0.1:" + std::to_string(server_->admin_port());
  }
  // A request without a key on the data port: a 401 record with this path.
  void unauthorized(const std::string& path) {
    const std::optional<Response> r = round_trip(server_->data_port(), http_request("GET", path, {}));
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(r->status, 401) << r->raw;
  }
  // Starts `keygatectl logs --status 401 --follow` and waits for its first record.
  void start_follow(ChildProcess* follow) {
    const std::vector<std::string> env = ctl_environment(admin_value_);
    std::string error;
    ASSERT_TRUE(follow->spawn(keygatectl_binary(),
                              {"--url", url_, "logs", "--status", "401", "--follow"}, &error,
                              &env))
        << error;
    ASSERT_TRUE(follow->wait_for_lines(1, Millis(5000)))
        << follow->output() << follow->error_output();
  }
  // Reads the follow's output until its stderr holds `needle` or 10 s pass.
  static bool wait_for_error_text(ChildProcess* follow, std::string_view needle) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!contains(follow->error_output(), needle) &&
           std::chrono::steady_clock::now() < deadline) {
      follow->drain_output(Millis(50));
    }
    return contains(follow->error_output(), needle);
  }
};

// keygate restarts (an upgrade, a crash): the follow used to exit 1 with "cannot connect",
// although its help says it runs until interrupted. It now says so, asks again with a growing
// pause, and goes on where it was (seqs continue across restarts).
TEST_F(KeygatectlFollow, LogsFollowRidesOutARestartAndGoesOnWhereItWas) {
  TempDir dirs;
  const uint16_t port = probe_free_port();
  ASSERT_NE(port, 0);
  ServerOptions options = admin_server_options(admin_value_);
  options.data_dir = dirs.path() + "/data";
  options.log_dir = dirs.path() + "/logs";
  options.admin_port = port;  // the follow's --url stays right
  ASSERT_NO_FATAL_FAILURE(restart_with(options));
  ASSERT_NO_FATAL_FAILURE(unauthorized("/orders/before"));
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow));

  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  EXPECT_TRUE(wait_for_error_text(&follow, "keygatectl: cannot reach keygate ("))
      << follow.error_output();
  ExitStatus early;
  ASSERT_FALSE(follow.exited(&early)) << "the follow ended: " << early.describe() << "\n"
                                      << follow.error_output();
  ASSERT_NO_FATAL_FAILURE(restart_with(options));
  ASSERT_NO_FATAL_FAILURE(unauthorized("/orders/after"));
  EXPECT_TRUE(follow.wait_for_lines(2, Millis(10000)))
      << follow.output() << follow.error_output();
  EXPECT_TRUE(wait_for_error_text(&follow, "keygatectl: keygate answers again; following on"))
      << follow.error_output();
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  EXPECT_EQ(followed_paths(follow.output()),
            (std::vector<std::string>{"/orders/before", "/orders/after"}))
      << follow.output();
  EXPECT_EQ(count_of(follow.error_output(), "cannot reach keygate"), 1u) << follow.error_output();
  ASSERT_TRUE(server_->stop(SIGTERM).clean());  // before `dirs` goes
}

// Records retention deleted before the follow read them (it was stopped, or too slow for the
// traffic) used to be skipped without a word. The server now names the seqs missing after the
// follow's cursor, filtered follows included, and the follow counts them on stderr.
TEST_F(KeygatectlFollow, LogsFollowSaysHowManyRecordsRetentionDeletedBeforeItReadThem) {
  ServerOptions options = admin_server_options(admin_value_);
  options.extra_config += "\n[log]\nsegment_bytes_max = 65536\nretention_bytes = 65536\n";
  // One worker, so seqs follow the requests' order. With two, a writer pass that comes late on
  // a loaded machine drains one worker's share of the burst, then the other's: the first
  // worker's newest records get lower seqs than the second's older ones, and retention (which
  // keeps the newest ~110 seqs here) deletes them — the newest request's record is then gone
  // for good, which this test took for a record never written.
  options.workers = 1;
  ASSERT_NO_FATAL_FAILURE(restart_with(options));
  ASSERT_NO_FATAL_FAILURE(unauthorized("/orders/first"));
  ChildProcess follow;
  ASSERT_NO_FATAL_FAILURE(start_follow(&follow));
  ASSERT_EQ(::kill(follow.pid(), SIGSTOP), 0);
  // ~450-byte records, ~270 KB: retention keeps about the newest 64 KiB.
  const std::string pad = random_hex(300);
  for (int i = 0; i < 600; ++i) {
    ASSERT_NO_FATAL_FAILURE(unauthorized("/orders/gone-" + std::to_string(i) + "-" + pad));
  }
  // Until the newest of them is in the log and the oldest is deleted (usually 20-50 ms). Which
  // of the two did not happen is said apart.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  bool newest_written = false;
  bool oldest_kept = true;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string bytes;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(server_->log_dir(), ec)) {
      std::ifstream f(e.path(), std::ios::binary);
      bytes.append(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
    newest_written = contains(bytes, "/orders/gone-599-");
    oldest_kept = contains(bytes, "/orders/gone-0-");
    if (newest_written && !oldest_kept) break;
    std::this_thread::sleep_for(Millis(20));
  }
  ASSERT_TRUE(newest_written) << "the last record was not written";
  ASSERT_FALSE(oldest_kept) << "retention did not delete the first records";
  ASSERT_NO_FATAL_FAILURE(unauthorized("/orders/last"));
  ASSERT_EQ(::kill(follow.pid(), SIGCONT), 0);
  EXPECT_TRUE(wait_for_error_text(&follow, " no longer in the log: deleted by retention"))
      << follow.error_output();
  bool last = false;
  for (int i = 0; i < 100 && !last; ++i) {
    follow.drain_output(Millis(50));
    last = contains(follow.output(), "\"/orders/last\"");
  }
  EXPECT_TRUE(last) << follow.output();
  const ExitStatus status = follow.stop(SIGINT, Millis(5000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\n" << follow.error_output();
  const std::vector<std::string> paths = followed_paths(follow.output());
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), "/orders/first");
  EXPECT_EQ(paths.back(), "/orders/last");
  // None of the records said to be deleted was printed, and none twice. (Some of the gone-*
  // records may have been: a poll the follow had in flight when it was stopped can have brought
  // the oldest of them before retention deleted them; their seqs are before the missing ones.)
  const std::string& err = follow.error_output();
  const size_t said = err.find("(seq ");
  ASSERT_NE(said, std::string::npos) << err;
  unsigned long long first_missing = 0;
  unsigned long long last_missing = 0;
  ASSERT_EQ(std::sscanf(err.c_str() + said, "(seq %llu to %llu)", &first_missing, &last_missing),
            2)
      << err;
  EXPECT_LE(first_missing, last_missing);
  int64_t previous = 0;
  for (size_t at = 0; at < follow.output().size();) {
    size_t end = follow.output().find('\n', at);
    if (end == std::string::npos) end = follow.output().size();
    const int64_t seq = number_member(std::string_view(follow.output()).substr(at, end - at), "seq");
    EXPECT_GT(seq, previous) << "printed twice or out of order: seq " << seq;
    EXPECT_FALSE(seq >= static_cast<int64_t>(first_missing) &&
                 seq <= static_cast<int64_t>(last_missing))
        << "seq " << seq << " was said to be deleted";
    previous = seq;
    at = end + 1;
  }
}

}  // namespace
}  // namespace keygate::integration
