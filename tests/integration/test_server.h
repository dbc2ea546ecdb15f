// TestServer and RawClient: the integration-test harness that runs the real keygate binary.
//
// Test-thread only, nothing here is thread-safe. TestServer owns one keygate child process and
// the temp directory holding its config, data and logs. RawClient is a blocking loopback TCP
// client that sends exact bytes and parses responses just far enough to check framing.
// run_process() runs any other program (keygatectl, a shell script) to its end. Every wait has
// a deadline: nothing in this file can hang a test, and a test that fails mid-way still kills
// its server and removes its files (destructors). The helpers at the end build requests and
// read the JSON members the tests look at.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keygate::integration {

using Millis = std::chrono::milliseconds;

// Path of the keygate binary under test (KEYGATE_BINARY, set by CMake; the environment
// variable KEYGATE_TEST_BINARY, when set, names another one).
const char* keygate_binary();

// Tests that run keygate out of descriptors need it unsanitized: a sanitizer runtime out of
// descriptors misreports (UBSan's vptr check probes memory through a pipe(), fails with EMFILE
// and calls a valid object invalid). An unsanitized build runs them against its own keygate;
// an ASan build only against the unsanitized keygate the CMake variable
// KEYGATE_UNSANITIZED_BINARY names (`make test` names the Release build of `make build`), and
// leaves them out without one (not registered, so ctest's summary lists no skip).
#if !defined(__SANITIZE_ADDRESS__) || defined(KEYGATE_UNSANITIZED_BINARY)
#define KEYGATE_DESCRIPTOR_TESTS 1
#endif

// In the ThreadSanitizer build (KEYGATE_TSAN; docs/architecture.md) a test skips itself with
// this when what it measures is not meaningful there, saying why: keygate's resident memory
// (TSan's allocator replaces glibc's, freed blocks stay resident, every heap byte touched gets
// shadow memory in the RSS), or work that must fit in a deadline keygate at TSan's speed (several
// times slower) misses. Nothing in either says anything about a data race. Needs gtest.
#if defined(__SANITIZE_THREAD__)
#define KEYGATE_SKIP_UNDER_TSAN(why) GTEST_SKIP() << "not under ThreadSanitizer: " << (why)
#else
#define KEYGATE_SKIP_UNDER_TSAN(why) static_cast<void>(0)
#endif
// That keygate (KEYGATE_TEST_BINARY, when set, names another one, as for keygate_binary()).
const char* unsanitized_keygate_binary();

// A fresh directory from mkdtemp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // Writes `contents` to path()/name and returns the full path.
  std::string write_file(std::string_view name, std::string_view contents) const;

 private:
  std::string path_;
};

// How a child process ended.
struct ExitStatus {
  bool timed_out = false;  // still running at the deadline (then killed)
  bool exited = false;     // exited normally; `code` is valid
  int code = -1;
  int signal = 0;  // killed by this signal

  bool clean() const { return exited && code == 0; }
  std::string describe() const;
};

// A child started by spawn_child(): its pid and the read ends of the pipes on its stdout and
// stderr (err_fd -1 when stderr is inherited).
struct SpawnedChild {
  pid_t pid = -1;
  int out_fd = -1;
  int err_fd = -1;
};

// Listening sockets handed to a child as a service manager does (systemd socket activation,
// sd_listen_fds(3)): `fds` become the child's descriptors 3, 4, ... (the test keeps its own),
// and with `listen_pid_of_child` LISTEN_PID=<the child's pid> is added to its environment, set
// in the child after fork (only it knows its pid before exec). LISTEN_FDS and LISTEN_FDNAMES
// are the caller's to put in the environment.
struct PassedSockets {
  std::vector<int> fds;
  bool listen_pid_of_child = true;
};

// fork/exec `program` with `args`, stdout (and with `capture_stderr` stderr) on pipes, stdin on
// /dev/null. The child gets SIGKILL when the test process dies, so a crashed test leaves no
// process behind. `env`, when given, is the child's whole environment ("NAME=VALUE");
// otherwise it inherits ours. `sockets`, when given, are passed as above (then `env` must be
// given too). On failure returns false with *error set and nothing to clean up.
bool spawn_child(const std::string& program, const std::vector<std::string>& args,
                 bool capture_stderr, SpawnedChild* child, std::string* error,
                 const std::vector<std::string>* env = nullptr,
                 const PassedSockets* sockets = nullptr);

// A waitpid() status as an ExitStatus.
ExitStatus decode_wait_status(int st);
// Waits for child `pid` until `deadline`, then SIGKILLs it (waiting a bounded time more).
// Never returns with the child unreaped.
ExitStatus reap_child(pid_t pid, std::chrono::steady_clock::time_point deadline);

// Output and status of a run that is expected to end by itself (CLI checks, scripts).
struct ProcessResult {
  ExitStatus status;
  std::string out;
  std::string err;
};

// Runs keygate with `args` (argv[0] is added), stdin closed, capturing stdout and stderr.
// Kills it at `timeout`.
ProcessResult run_keygate(const std::vector<std::string>& args, Millis timeout = Millis(10000));

// Runs `program` (a path: no PATH search) with `args` (argv[0] is added), stdin on /dev/null,
// capturing stdout and stderr. `env`, when given, is its whole environment ("NAME=VALUE");
// otherwise it inherits ours. SIGKILLed at `timeout` (then status.timed_out). A fork or pipe
// failure leaves status not exited, with the reason in `err`.
ProcessResult run_process(const std::string& program, const std::vector<std::string>& args,
                          const std::vector<std::string>* env = nullptr,
                          Millis timeout = Millis(10000),
                          const PassedSockets* sockets = nullptr);

// This process's environment with `set` entries set (or replaced) and `unset` ones removed.
std::vector<std::string> child_environment(
    const std::vector<std::pair<std::string, std::string>>& set,
    const std::vector<std::string>& unset);

// `config` with the names the tests' raw requests give as Host ("it", "a", ...) allowed on
// the admin port, which answers any other Host than an IP
// literal or localhost with 421 ([admin] hosts): into config's [admin] table when it has one.
// TestServer::start applies it; a test that rewrites the config file for a reload must too, or
// the reload names admin.hosts as changed.
std::string with_harness_admin_hosts(std::string config);

struct ServerOptions {
  unsigned workers = 2;
  // The admin listener's port on 127.0.0.1; 0 = ephemeral. Fixed, a restarted server answers
  // where its clients were talking to the one before.
  uint16_t admin_port = 0;
  // The harness allows the Host names its requests give ("it", "a", ...) on the admin port
  // ([admin] hosts); true: extra_config's [admin] table is written as it is.
  bool admin_hosts_as_written = false;
  // Written to the config file's [limits] table, e.g. {"pipeline_depth_max", 4}.
  std::vector<std::pair<std::string, uint64_t>> limits;
  // Data directory; empty: <temp dir>/data. A directory given here belongs to the caller: it
  // is not removed with the server, so a test can restart a server on the same data.
  std::string data_dir;
  // Access-log directory (--log-dir); empty: <temp dir>/logs. Like data_dir, a directory given
  // here belongs to the caller, so a restarted server can continue the same log.
  std::string log_dir;
  // false: no --log-dir at all, so keygate's own default applies (<data_dir>/logs, which
  // log_dir() then reports; log_dir above must stay empty).
  bool log_dir_flag = true;
  // Appended verbatim to the config file after the [limits] table, e.g. "[[apis]]\n...".
  std::string extra_config;
  // false: no --config at all (the file is still written; limits and extra_config then do
  // not apply).
  bool config_flag = true;
  // Non-empty: --config names this file instead of the one the harness writes (a FIFO, ...).
  std::string config_path;
  // Environment variables set (or replaced) in the server's environment.
  std::vector<std::pair<std::string, std::string>> env;
  // Environment variables removed from the server's environment.
  std::vector<std::string> env_unset;
  // Pipe the server's stderr into error_output() instead of sharing the test's stderr.
  bool capture_stderr = false;
  // A command keygate runs under, which must exec it in its own process (so pid() stays
  // keygate's), e.g. {"/usr/bin/prlimit", "--nofile=64:64", "--"}; keygate's path and
  // arguments follow it. Empty: keygate itself.
  std::vector<std::string> wrapper;
  // The keygate to run; empty: keygate_binary().
  std::string binary;
  // A listening socket passed to keygate as descriptor 3 the way systemd's socket activation
  // does (LISTEN_FDS=1, LISTEN_PID=<keygate's pid>; see PassedSockets); -1: none. The test
  // keeps (and closes) its own descriptor, so the socket outlives the server, as systemd's
  // does. --listen stays 127.0.0.1:0, which takes a socket on any port.
  int inherited_socket = -1;
  // LISTEN_FDNAMES for it; empty: not set.
  std::string inherited_socket_name;
  // LISTEN_PID names the test process instead of keygate (a variable left for another process).
  bool listen_pid_other = false;
};

// One running keygate on 127.0.0.1 with ephemeral data and admin ports.
class TestServer {
 public:
  explicit TestServer(ServerOptions options = {});
  // SIGKILLs the process if it still runs, reaps it and removes the temp dir.
  ~TestServer();
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  // Spawns keygate and waits (up to `timeout`) for its ready line. On failure returns false
  // with what went wrong (including the exit status if it died) in `error`.
  bool start(std::string* error, Millis timeout = Millis(10000));

  uint16_t data_port() const { return data_port_; }
  uint16_t admin_port() const { return admin_port_; }
  pid_t pid() const { return pid_; }
  const TempDir& dir() const { return dir_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_dir() const { return log_dir_; }
  bool running() const { return pid_ > 0; }

  // Sends `sig` to the server; false if it is not running.
  bool send_signal(int sig);
  // Waits up to `timeout` for the server to exit, collecting its stdout meanwhile. On timeout
  // the process is SIGKILLed (reported as timed_out).
  ExitStatus wait_exit(Millis timeout);
  // send_signal() then wait_exit().
  ExitStatus stop(int sig, Millis timeout = Millis(10000));
  // Reads stdout until it contains `needle` or `timeout` passes.
  bool wait_for_output(std::string_view needle, Millis timeout);
  // Everything the server printed to stdout so far (the ready line included).
  const std::string& output() const { return stdout_; }
  // With capture_stderr: reads stderr until it contains `needle` or `timeout` passes.
  bool wait_for_error_output(std::string_view needle, Millis timeout);
  // With capture_stderr: everything the server printed to stderr so far (all of it once
  // wait_exit() returned).
  const std::string& error_output() const { return stderr_; }

 private:
  // Appends available stdout to stdout_, waiting at most until `deadline`. Returns false at EOF.
  // With capture_stderr also appends whatever stderr has to stderr_ (so neither pipe fills).
  bool read_stdout_until(std::chrono::steady_clock::time_point deadline);
  // One poll over the open output pipes until `deadline`; appends what arrived, closes a pipe
  // at EOF.
  void read_outputs_until(std::chrono::steady_clock::time_point deadline);
  void kill_and_reap();

  ServerOptions options_;
  TempDir dir_;
  std::string data_dir_;
  std::string log_dir_;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string stdout_;
  int stderr_fd_ = -1;  // with capture_stderr only
  std::string stderr_;
  uint16_t data_port_ = 0;
  uint16_t admin_port_ = 0;
};

// A parsed HTTP response (status line, headers, body framed by Content-Length).
struct Response {
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string raw;  // exact bytes of the whole response

  // First header with this name (case-insensitive).
  std::optional<std::string> header(std::string_view name) const;
  bool connection_close() const;
  // Body looks like the server's error JSON: {"error":"...","message":"..."}.
  bool json_error_body() const;
};

// How a read that waits for the peer ended.
enum class ReadEnd {
  kOk,       // got what was asked for
  kEof,      // the server closed (FIN)
  kReset,    // the server reset the connection
  kTimeout,  // deadline passed with the connection still open
  kError,    // something else (bad response framing, socket error)
};
std::string_view to_string(ReadEnd end);
// Lets gtest print a ReadEnd in assertion messages.
inline void PrintTo(ReadEnd end, std::ostream* os) { *os << to_string(end); }

// A blocking TCP client on 127.0.0.1. Move-only; closes its socket on destruction.
class RawClient {
 public:
  RawClient() = default;
  ~RawClient();
  RawClient(RawClient&& other) noexcept;
  RawClient& operator=(RawClient&& other) noexcept;
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // Connects (TCP_NODELAY, SO_RCVTIMEO/SO_SNDTIMEO as a safety net). False with errno-text in
  // `error` if the connection is refused or times out.
  bool connect(uint16_t port, std::string* error = nullptr, Millis timeout = Millis(3000));
  bool connected() const { return fd_ >= 0; }

  // Sends all of `bytes` in one write() call (looping only on a short write). False once the
  // peer refuses more (EPIPE/ECONNRESET).
  bool send(std::string_view bytes);
  // Sends `bytes` one byte per write(), no pauses. Stops at the first failed write.
  bool send_bytewise(std::string_view bytes);
  // Half-closes our side (the server sees EOF).
  void shutdown_write();
  void close();
  // Closes with SO_LINGER {1, 0}: the server sees a reset (ECONNRESET), not a FIN.
  void reset();

  // Reads one response (an interim 1xx included). `head`: the response has no body.
  // Returns nullopt on EOF/reset/timeout before a whole response; last_end() says which.
  std::optional<Response> read_response(Millis timeout = Millis(3000), bool head = false);
  // Reads `n` responses in order; stops early at the first failure.
  std::vector<Response> read_responses(size_t n, Millis timeout = Millis(5000));
  // Reads until the server closes or `timeout` passes. Returns the bytes that arrived after
  // whatever earlier reads consumed; last_end() says how it ended (kEof/kReset/kTimeout).
  std::string read_until_close(Millis timeout = Millis(3000));
  // Waits up to `timeout` for data or close without consuming anything: true if the socket is
  // readable (data, FIN or RST pending).
  bool readable(Millis timeout);

  ReadEnd last_end() const { return last_end_; }
  // Bytes received but not yet consumed by a read_* call.
  const std::string& buffered() const { return buffer_; }

 private:
  // One recv() into buffer_ waiting until `deadline`; returns kOk when bytes arrived.
  ReadEnd fill(std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  std::string buffer_;
  ReadEnd last_end_ = ReadEnd::kOk;
};

// Connects a RawClient to `port`, sends `request` and reads one response (nullopt on failure).
std::optional<Response> round_trip(uint16_t port, std::string_view request,
                                   Millis timeout = Millis(3000));

// The bytes of an HTTP/1.1 request with "Host: 127.0.0.1"; `headers` are complete lines without the
// CRLF. Content-Length is added whenever there is a body or the method usually has one (POST,
// PATCH, PUT).
std::string http_request(std::string_view method, std::string_view target,
                         const std::vector<std::string>& headers = {}, std::string_view body = {});

// A response for an assertion message: its raw bytes, or "no response".
std::string show(const std::optional<Response>& r);

// Up to `n` keep-alive connections to `port`, each answered once (GET /healthz 200), so each is
// held by one worker or another (those that fail are left out): opened before a worker is
// wedged, to find later which worker holds which.
std::vector<RawClient> answered_connections(uint16_t port, size_t n);

// The worker index after "keygate: worker " at the start of the first stderr line of `output`
// holding `needle`, or -1.
int worker_in_line(const std::string& output, std::string_view needle);

// --- Test data --------------------------------------------------------------------------------

// Two data APIs as config text: "orders" on /orders and "billing" on /billing.
inline constexpr std::string_view kOrdersAndBillingApis =
    "[[apis]]\n"
    "name = \"orders\"\n"
    "routes = [\"/orders\"]\n"
    "\n"
    "[[apis]]\n"
    "name = \"billing\"\n"
    "routes = [\"/billing\"]\n";

// A server for admin tests: two workers, kOrdersAndBillingApis, `admin_key` as the bootstrap
// admin key (KEYGATE_BOOTSTRAP_ADMIN_KEY) and stderr captured into error_output().
ServerOptions admin_server_options(const std::string& admin_key);

// `chars` random lowercase hex digits (not cryptographic: unique test values).
std::string random_hex(size_t chars);

// A listener whose backlog is full drops further SYNs: connecting to it hangs (a connect
// timeout, on loopback). Returns the listening socket (close it when done) and its port
// ({-1, 0} on failure); `fillers` hold the connections that fill the backlog.
std::pair<int, uint16_t> blackhole_listener(std::vector<RawClient>* fillers);

// The string value of the first `"name":"..."` member in `json` ("" when absent or not a
// string). No unescaping: for the values tests read (ids, hints, generated keys, cursors).
std::string string_member(std::string_view json, std::string_view name);

// How often `needle` occurs in `haystack`, without overlaps.
size_t count_of(std::string_view haystack, std::string_view needle);

// The integer after the first `"name":` in `json`; -1 when absent or not a number.
int64_t number_member(std::string_view json, std::string_view name);

// The value of counter `name` in group `group` of a GET /admin/stats body, or -1.
int64_t stats_counter(std::string_view body, std::string_view group, std::string_view name);

// n bytes of keygate-upstream's /bytes pattern: byte i is 'a' + i % 26.
std::string byte_pattern(size_t n);

// Lowercase hex SHA-256 of `data` (keygate-upstream's "body_sha256").
std::string hex_sha256(std::string_view data);

// A chunked body de-chunked (no extensions, no trailers); nullopt when it does not frame as
// chunks ending with the last-chunk and the final CRLF.
std::optional<std::string> dechunk(std::string_view body);

}  // namespace keygate::integration
