// ChildProcess: a helper program (keygate-upstream, nginx, ...) run beside the server under
// test, owned by the test and always killed at the end.
//
// Test-thread only. The child's stdout and stderr are pipes that are read (so neither fills
// up) whenever the test waits on it; stdin is /dev/null. The child gets SIGKILL when the test
// process dies (PR_SET_PDEATHSIG), and the destructor SIGKILLs and reaps it if it still runs,
// so a failing test leaves no process behind. Every wait has a deadline.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tests/integration/test_server.h"

namespace keygate::integration {

class ChildProcess {
 public:
  ChildProcess() = default;
  // SIGKILLs the child if it still runs and reaps it.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Runs `program` (a path, no PATH search) with `args` (argv[0] is added), in `env`
  // ("NAME=value" entries) when given, else in this process's environment. False with the
  // reason in `error` when it cannot be started (exec failures show up as an early exit).
  bool spawn(const std::string& program, const std::vector<std::string>& args, std::string* error,
             const std::vector<std::string>* env = nullptr);

  // Reads output until stdout has a complete line starting with `prefix` (returned in `line`,
  // without the newline) or `timeout` passes or the child closes stdout.
  bool wait_for_line(std::string_view prefix, Millis timeout, std::string* line);
  // Reads output until stdout holds at least `lines` complete lines, or `timeout` passes or
  // the child closes stdout; whether it got there.
  bool wait_for_lines(size_t lines, Millis timeout);
  // Reads whatever output arrives within `timeout`.
  void drain_output(Millis timeout);

  // Sends `sig` and waits up to `timeout` for the exit (then SIGKILL, reported as timed_out).
  ExitStatus stop(int sig, Millis timeout = Millis(10000));
  // Whether the child has exited already (reaps it if so); its status in `status`.
  bool exited(ExitStatus* status);

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  const std::string& output() const { return stdout_; }
  const std::string& error_output() const { return stderr_; }

 private:
  void read_until(std::chrono::steady_clock::time_point deadline);

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string stdout_;
  std::string stderr_;
};

// Spawns `program` and waits for its ready line (a stdout line starting with `prefix`, stored
// in `line`). nullptr with the reason (exit status and output included) in `error` when it
// does not come within `timeout`.
std::unique_ptr<ChildProcess> start_process_with_ready_line(const std::string& program,
                                                            const std::vector<std::string>& args,
                                                            std::string_view prefix,
                                                            std::string* line, std::string* error,
                                                            Millis timeout = Millis(10000));

// A port that was free on 127.0.0.1 a moment ago (bound to 0, read back, closed), for programs
// that cannot report an ephemeral port themselves. 0 on failure.
uint16_t probe_free_port();

// Polls until a TCP connection to 127.0.0.1:`port` succeeds or `timeout` passes.
bool wait_for_port(uint16_t port, Millis timeout);

}  // namespace keygate::integration
