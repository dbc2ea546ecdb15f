#include "core/socket_activation.h"

#include "core/decimal.h"
#include "core/json_text.h"

namespace keygate {
namespace {

// The values are the environment's, which may hold any bytes: quoted on one line. (Appended
// in place: GCC 12's -O3 warns -Wrestrict, wrongly, on "'" + std::string&&.)
std::string quoted(std::string_view value) {
  std::string out = "'";
  out += one_line(value);
  out += '\'';
  return out;
}

// "socket 3 (data)" or "socket 3": how an error names the socket it is about.
std::string describe(const InheritedSocket& s) {
  std::string text = "LISTEN_FDS socket " + std::to_string(s.fd);
  if (!s.name.empty()) text += " (" + quoted(s.name) + ")";
  return text + " bound to " + s.address.to_string();
}

}  // namespace

bool parse_listen_fds(const char* listen_pid, const char* listen_fds, const char* listen_fdnames,
                      uint64_t self_pid, ListenFds* out, std::string* error) {
  *out = ListenFds{};
  if (listen_pid == nullptr) {
    // sd_listen_fds(3) checks LISTEN_PID first and finds no sockets without it; a LISTEN_FDS
    // alone is most likely left from a wrapper that forgot half of the protocol: said, not used.
    if (listen_fds != nullptr) {
      out->outcome = ListenFds::Outcome::kIgnored;
      out->note = "LISTEN_FDS ignored: LISTEN_PID is not set";
    }
    return true;
  }
  uint64_t pid = 0;
  if (!parse_decimal(listen_pid, UINT64_MAX, &pid) || pid == 0) {
    *error = "LISTEN_PID " + quoted(listen_pid) + " is not a process id";
    return false;
  }
  if (pid != self_pid) {
    // Inherited from a parent that was socket-activated itself: the sockets are its, not ours
    // (and may well be closed here). Ignored, as sd_listen_fds(3) does.
    out->outcome = ListenFds::Outcome::kIgnored;
    out->note = "LISTEN_FDS ignored: LISTEN_PID " + std::to_string(pid) +
                " is another process (keygate is " + std::to_string(self_pid) + ")";
    return true;
  }
  if (listen_fds == nullptr) return true;
  uint64_t count = 0;
  if (!parse_decimal(listen_fds, UINT64_MAX, &count)) {
    *error = "LISTEN_FDS " + quoted(listen_fds) + " is not a number of descriptors";
    return false;
  }
  if (count == 0) return true;
  if (count > kInheritedSocketsMax) {
    *error = "LISTEN_FDS=" + std::to_string(count) + ": keygate takes at most " +
             std::to_string(kInheritedSocketsMax) +
             " sockets (one for listen, one for admin_listen)";
    return false;
  }
  out->count = static_cast<size_t>(count);
  if (listen_fdnames != nullptr) {
    std::string_view rest = listen_fdnames;
    for (;;) {
      const size_t colon = rest.find(':');
      out->names.emplace_back(rest.substr(0, colon));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
    if (out->names.size() != out->count) {
      *error = "LISTEN_FDNAMES " + quoted(listen_fdnames) + " names " +
               std::to_string(out->names.size()) + " sockets, LISTEN_FDS passes " +
               std::to_string(out->count);
      return false;
    }
  }
  out->outcome = ListenFds::Outcome::kSockets;
  return true;
}

bool listen_address_matches(const ListenAddress& configured, const ListenAddress& actual) {
  if (configured.port != 0 && configured.port != actual.port) return false;
  return same_host(configured, actual);
}

bool unnamed_socket(std::string_view name) {
  return name.empty() || name == "unknown" ||
         (name.size() > 7 && name.substr(name.size() - 7) == ".socket");
}

bool assign_inherited_sockets(const std::vector<InheritedSocket>& sockets,
                              const ListenAddress& data, const ListenAddress& admin,
                              ListenerSockets* out, std::string* error) {
  *out = ListenerSockets{};
  for (const InheritedSocket& s : sockets) {
    bool for_data;
    if (s.name == "data" || s.name == "admin") {
      for_data = s.name == "data";
      const ListenAddress& want = for_data ? data : admin;
      if (!listen_address_matches(want, s.address)) {
        *error = describe(s) + " is not " + (for_data ? "listen " : "admin_listen ") +
                 want.to_string();
        return false;
      }
    } else if (unnamed_socket(s.name)) {
      const bool is_data = listen_address_matches(data, s.address);
      const bool is_admin = listen_address_matches(admin, s.address);
      if (!is_data && !is_admin) {
        *error = describe(s) + " is neither listen " + data.to_string() + " nor admin_listen " +
                 admin.to_string();
        return false;
      }
      // Both match only where one (or both) is configured with port 0, which takes any port:
      // a listener configured with the socket's very port is the one it is for; else the data
      // port, what socket activation is mostly for (name the socket to have it otherwise).
      for_data = is_data && (!is_admin || admin.port == 0);
    } else {
      *error = describe(s) + " has an unknown name (FileDescriptorName= is data or admin)";
      return false;
    }
    int& slot = for_data ? out->data_fd : out->admin_fd;
    if (slot >= 0) {
      *error = describe(s) + " is a second socket for " + (for_data ? "listen" : "admin_listen") +
               " (the first is socket " + std::to_string(slot) + ")";
      return false;
    }
    slot = s.fd;
  }
  return true;
}

}  // namespace keygate
