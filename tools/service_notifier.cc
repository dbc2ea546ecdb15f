#include "tools/service_notifier.h"

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <utility>

#include "core/json_text.h"
#include "core/service_notify.h"

namespace keygate::tools {

static_assert(sizeof(sockaddr_un::sun_path) == keygate::kNotifySocketPathBytesMax);

ServiceNotifier ServiceNotifier::from_environment() {
  ServiceNotifier notifier;
  // Read (and taken out of the environment, as sd_watchdog_enabled's unset_environment does)
  // whether or not there is a socket: a child keygate might start must not take them for its
  // own.
  const char* watchdog_usec = std::getenv("WATCHDOG_USEC");
  const char* watchdog_pid = std::getenv("WATCHDOG_PID");
  std::string watchdog_error;
  const bool watchdog_ok =
      keygate::notify_watchdog_usec(watchdog_usec, watchdog_pid, static_cast<uint64_t>(getpid()),
                                    &notifier.watchdog_usec_, &watchdog_error);
  // The error quotes neither value: no line of stderr carries what the environment held.
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  const char* value = std::getenv("NOTIFY_SOCKET");
  if (!watchdog_ok) {
    notifier.say_once(watchdog_error + ": no watchdog notifications (WATCHDOG=1) are sent");
  } else if (value == nullptr && notifier.watchdog_usec_ != 0) {
    notifier.say_once("WATCHDOG_USEC is set but NOTIFY_SOCKET is not: no watchdog "
                      "notifications (WATCHDOG=1) can be sent");
  }
  if (value == nullptr) return notifier;
  notifier.name_ = value;
  unsetenv("NOTIFY_SOCKET");
  std::string sun_path;
  std::string error;
  if (!keygate::notify_socket_address(notifier.name_, &sun_path, &error)) {
    notifier.say_once("NOTIFY_SOCKET " + notifier.name_ + ": " + error);
    return notifier;
  }
  notifier.address_.sun_family = AF_UNIX;
  std::memcpy(notifier.address_.sun_path, sun_path.data(), sun_path.size());
  // A path's address counts its terminating NUL (address_ is zeroed); an abstract name's is
  // exactly its bytes, or it would name another socket.
  const bool abstract = sun_path.front() == '\0';
  notifier.address_bytes_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) +
                                                   sun_path.size() + (abstract ? 0 : 1));
  // One socket for the whole run, made now: a drain under descriptor exhaustion (EMFILE)
  // still has it for STOPPING=1. Non-blocking: a service manager that does not read its
  // socket fills the queue, and then a send fails (EAGAIN) instead of stopping keygate.
  notifier.fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (notifier.fd_ < 0) {
    notifier.say_once("cannot notify NOTIFY_SOCKET " + notifier.name_ + ": socket: " +
                      std::strerror(errno));
  }
  return notifier;
}

ServiceNotifier::~ServiceNotifier() {
  if (fd_ >= 0) close(fd_);
}

ServiceNotifier::ServiceNotifier(ServiceNotifier&& other) noexcept
    : fd_(other.fd_),
      address_(other.address_),
      address_bytes_(other.address_bytes_),
      name_(std::move(other.name_)),
      watchdog_usec_(other.watchdog_usec_),
      said_(other.said_) {
  other.fd_ = -1;
}

void ServiceNotifier::ready(std::string_view status) {
  if (!enabled()) return;
  send(keygate::notify_ready_message(static_cast<uint64_t>(getpid()), status));
}

void ServiceNotifier::reloading(std::string_view status) {
  if (!enabled()) return;
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t usec =
      static_cast<uint64_t>(now.tv_sec) * 1000000u + static_cast<uint64_t>(now.tv_nsec) / 1000u;
  send(keygate::notify_reloading_message(usec, status));
}

void ServiceNotifier::reloaded(std::string_view status) {
  if (!enabled()) return;
  send(keygate::notify_reloaded_message(status));
}

void ServiceNotifier::stopping(std::string_view status) {
  if (!enabled()) return;
  send(keygate::notify_stopping_message(status));
}

void ServiceNotifier::watchdog() {
  if (!enabled() || watchdog_usec_ == 0) return;
  send(keygate::notify_watchdog_message());
}

void ServiceNotifier::send(const std::string& message) {
  // Addressed on every send, not connected once: a service manager that re-executes itself
  // (systemctl daemon-reexec) binds its socket anew, and the next message still reaches it.
  const ssize_t sent =
      sendto(fd_, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
             reinterpret_cast<const sockaddr*>(&address_), address_bytes_);
  if (sent < 0) {
    say_once("cannot notify NOTIFY_SOCKET " + name_ + ": " + std::strerror(errno) +
             " (keygate runs on; further notifications may be lost too, and are not said)");
  }
}

void ServiceNotifier::say_once(const std::string& what) {
  if (said_) return;
  said_ = true;
  // `what` quotes NOTIFY_SOCKET, which may hold any bytes: one line whatever it holds.
  std::fprintf(stderr, "keygate: %s\n", keygate::one_line(what).c_str());
}

}  // namespace keygate::tools
