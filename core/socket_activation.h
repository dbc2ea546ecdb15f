// The sd_listen_fds(3) protocol (systemd socket activation) as pure logic: the LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES values in, which descriptors keygate was given out; and, once
// the caller has looked at those sockets, which listener each one serves.
//
// Stateless and thread-safe: pure functions over their arguments. Nothing here reads the
// environment or touches a descriptor: tools/inherited_sockets.h reads and unsets the
// variables, and net::check_inherited_socket (net/server.h) checks the sockets (type,
// listening, bound address).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.h"

namespace keygate {

// The first descriptor a service manager passes (SD_LISTEN_FDS_START): LISTEN_FDS=n means
// descriptors 3 .. 3+n-1.
inline constexpr int kListenFdsStart = 3;

// The most sockets keygate takes: one per listener (data, admin). More is a mistake in the
// socket unit(s) (a socket keygate would hold open and never accept on), refused at start-up.
inline constexpr size_t kInheritedSocketsMax = 2;

// What the environment says about inherited sockets.
struct ListenFds {
  enum class Outcome {
    kNone,     // no socket activation (LISTEN_PID or LISTEN_FDS unset, or LISTEN_FDS=0)
    kIgnored,  // meant for another process (LISTEN_PID is not ours): `note` says so
    kSockets,  // `count` sockets from kListenFdsStart, named by `names`
  };
  Outcome outcome = Outcome::kNone;
  std::string note;  // kIgnored: one line on why
  size_t count = 0;
  // One per socket (index = fd - kListenFdsStart) when LISTEN_FDNAMES is set; empty when not.
  std::vector<std::string> names;
};

// Parses the three variables (nullptr: unset) as sd_listen_fds_with_names(3) does, for a
// process whose pid is `self_pid`. LISTEN_PID of another process (a variable inherited from a
// parent that was socket-activated itself) is ignored, as sd_listen_fds(3) does. False with
// one line in `error` for values that cannot be read: LISTEN_PID or LISTEN_FDS not a decimal
// number, more than kInheritedSocketsMax sockets, LISTEN_FDNAMES with a count of names other
// than LISTEN_FDS.
bool parse_listen_fds(const char* listen_pid, const char* listen_fds, const char* listen_fdnames,
                      uint64_t self_pid, ListenFds* out, std::string* error);

// One inherited socket as the caller found it: its descriptor, its name (LISTEN_FDNAMES; empty
// when unset) and the address it is bound to (getsockname).
struct InheritedSocket {
  int fd = -1;
  std::string name;
  ListenAddress address;
};

// Which inherited descriptor serves which listener; -1: none (that listener is bound by
// keygate itself, as without socket activation).
struct ListenerSockets {
  int data_fd = -1;
  int admin_fd = -1;
};

// Whether a socket bound to `actual` is what `configured` asks for: the same address (as bytes:
// any spelling of it) and the same port, where a configured port 0 (ephemeral) takes any port.
bool listen_address_matches(const ListenAddress& configured, const ListenAddress& actual);

// Whether `name` is one systemd gives a socket nobody named: empty, "unknown" (what
// sd_listen_fds_with_names reports without LISTEN_FDNAMES) or a socket unit's name (the default
// of FileDescriptorName=, e.g. "keygate.socket"). Such sockets are matched by address.
bool unnamed_socket(std::string_view name);

// Assigns each inherited socket to the listener it serves. A socket named "data" or "admin"
// (FileDescriptorName=) serves that listener; an unnamed one (unnamed_socket) serves the
// listener whose configured address it is bound to. Either way the bound address must match
// the configured one (listen_address_matches). An unnamed socket both listeners' addresses
// match (one of them, or both, configured with port 0) serves the one configured with its very
// port, else the data listener. False with one line in `error` naming the socket, for: an
// unknown name, two sockets for one listener, a socket whose address is not its listener's (or,
// unnamed, neither listener's). A listener no socket serves is left at -1.
bool assign_inherited_sockets(const std::vector<InheritedSocket>& sockets,
                              const ListenAddress& data, const ListenAddress& admin,
                              ListenerSockets* out, std::string* error);

}  // namespace keygate
