#include "tools/inherited_sockets.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/json_text.h"
#include "net/server.h"

namespace keygate::tools {
namespace {

std::optional<std::string> take_variable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  std::string copy = value;
  unsetenv(name);
  return copy;
}

const char* c_str_or_null(const std::optional<std::string>& value) {
  return value ? value->c_str() : nullptr;
}

}  // namespace

InheritedSockets InheritedSockets::from_environment() {
  InheritedSockets sockets;
  sockets.pid_ = take_variable("LISTEN_PID");
  sockets.fds_ = take_variable("LISTEN_FDS");
  sockets.names_ = take_variable("LISTEN_FDNAMES");
  return sockets;
}

bool InheritedSockets::assign(const Config& config, ListenerSockets* out,
                              std::string* error) const {
  *out = ListenerSockets{};
  ListenFds parsed;
  if (!parse_listen_fds(c_str_or_null(pid_), c_str_or_null(fds_), c_str_or_null(names_),
                        static_cast<uint64_t>(getpid()), &parsed, error)) {
    return false;
  }
  if (parsed.outcome == ListenFds::Outcome::kIgnored) {
    std::fprintf(stderr, "keygate: %s\n", one_line(parsed.note).c_str());
  }
  if (parsed.outcome != ListenFds::Outcome::kSockets) return true;
  std::vector<InheritedSocket> found;
  for (size_t i = 0; i < parsed.count; ++i) {
    InheritedSocket s;
    s.fd = kListenFdsStart + static_cast<int>(i);
    if (!parsed.names.empty()) s.name = parsed.names[i];
    if (!net::check_inherited_socket(s.fd, &s.address, error)) return false;
    found.push_back(std::move(s));
  }
  return assign_inherited_sockets(found, config.listen, config.admin_listen, out, error);
}

}  // namespace keygate::tools
