// InheritedSockets: the listening sockets a service manager passed keygate (systemd socket
// activation, sd_listen_fds(3)), without libsystemd: read from the environment, checked, and
// assigned to the data and admin listeners.
//
// Main thread only: from_environment() calls unsetenv, which is not thread-safe. The sockets
// themselves go to net::Server (ServerOptions::*_inherited_fd), which owns them from start().
#pragma once

#include <optional>
#include <string>

#include "core/config.h"
#include "core/socket_activation.h"

namespace keygate::tools {

class InheritedSockets {
 public:
  // Reads LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES and removes them from the environment (as
  // sd_listen_fds(3) with unset_environment does), so no process keygate might start takes
  // the sockets for its own. Call it once, early in main, before any thread starts and after
  // the huge-page re-execution (which keeps the pid and passes the variables and the
  // descriptors on). Reads nothing else: the values are checked by assign().
  static InheritedSockets from_environment();

  // Which inherited socket serves which listener of `config` (-1: none; that listener is
  // bound as without socket activation). Variables meant for another process (LISTEN_PID not
  // this one) are ignored with one line on stderr. False with one line in `error` for values
  // that cannot be read, a descriptor that is no listening TCP socket, and a socket that is no
  // configured listener's (core/socket_activation.h, assign_inherited_sockets): a mistake in
  // the socket unit or the config, which the next start would make again (exit 2).
  bool assign(const Config& config, ListenerSockets* out, std::string* error) const;

 private:
  std::optional<std::string> pid_;
  std::optional<std::string> fds_;
  std::optional<std::string> names_;
};

}  // namespace keygate::tools
