// ServiceNotifier: tells the service manager that started keygate (systemd's Type=notify) when
// it is ready, reloading and stopping, and that it is alive (the watchdog's WATCHDOG=1), by
// sd_notify(3) datagrams to $NOTIFY_SOCKET, without libsystemd.
//
// Main thread only (not thread-safe): start-up, the signal loop and the drain send from there.
// Never blocks and never fails keygate: a send that cannot go (no such socket, nobody reading,
// a full queue) is said once on stderr, and keygate runs on; at most one line over the
// process's life. Without NOTIFY_SOCKET every call does nothing.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace keygate::tools {

class ServiceNotifier {
 public:
  // Reads NOTIFY_SOCKET and removes it from the environment (as sd_notify's unset_environment
  // does), so that no process keygate might start inherits an address meant for keygate
  // alone: a child that notified READY=1 or STOPPING=1 there would speak for keygate. Call it
  // once, early in main, before any thread starts (unsetenv is not thread-safe) and after the
  // huge-page re-execution (which needs the variable still set to pass it on). A value that is
  // no socket address (neither an absolute path nor an abstract @name, or too long) is said on
  // stderr and nothing is ever sent.
  // Likewise WATCHDOG_USEC and WATCHDOG_PID (systemd's WatchdogSec=), read as
  // sd_watchdog_enabled(3) reads them and removed: watchdog_usec() says what they ask for. A
  // value that does not parse, or a watchdog without NOTIFY_SOCKET, is said on stderr, and no
  // WATCHDOG=1 is sent.
  static ServiceNotifier from_environment();

  ServiceNotifier() = default;
  ~ServiceNotifier();
  ServiceNotifier(ServiceNotifier&& other) noexcept;
  ServiceNotifier& operator=(ServiceNotifier&&) = delete;
  ServiceNotifier(const ServiceNotifier&) = delete;
  ServiceNotifier& operator=(const ServiceNotifier&) = delete;

  // Whether there is a socket to notify.
  bool enabled() const { return fd_ >= 0; }

  // READY=1 with MAINPID= (this process) and STATUS=`status`: keygate accepts connections.
  void ready(std::string_view status);
  // RELOADING=1 with MONOTONIC_USEC= (read now) and STATUS=`status`: a reload begins.
  void reloading(std::string_view status);
  // READY=1 with STATUS=`status`: the reload is over (applied or refused).
  void reloaded(std::string_view status);
  // STOPPING=1 with STATUS=`status`: the drain begins.
  void stopping(std::string_view status);

  // The watchdog's timeout in microseconds (WATCHDOG_USEC, for this process), 0 when there is
  // none or nothing can be sent: then watchdog() need never be called.
  uint64_t watchdog_usec() const { return enabled() ? watchdog_usec_ : 0; }
  // WATCHDOG=1: keygate is alive. The caller sends it every watchdog_usec() / 2 while every
  // worker turns (core/worker_watch.h).
  void watchdog();

 private:
  void send(const std::string& message);
  // The one stderr line this notifier may write, then never again.
  void say_once(const std::string& what);

  int fd_ = -1;  // an unbound AF_UNIX datagram socket, non-blocking, close-on-exec
  sockaddr_un address_{};
  socklen_t address_bytes_ = 0;
  std::string name_;  // NOTIFY_SOCKET as given, for the stderr line
  uint64_t watchdog_usec_ = 0;
  bool said_ = false;
};

}  // namespace keygate::tools
