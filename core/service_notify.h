// The text of keygate's readiness protocol with a service manager (sd_notify(3), as systemd
// speaks it): the messages and the NOTIFY_SOCKET address, without any I/O.
//
// Stateless and thread-safe: pure functions over their arguments. The main thread sends what
// they build (tools/service_notifier.h); nothing here opens a socket or reads the environment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace keygate {

// A STATUS= text longer than this is cut (and ends in "..."). systemd reads one notification
// into a PIPE_BUF (4096-byte) buffer and drops a longer datagram whole, READY=1 and all: a
// reload refusal quoting a long path must never cost the READY=1 it travels with.
inline constexpr size_t kNotifyStatusBytesMax = 1024;

// sizeof(sockaddr_un::sun_path) on Linux (tools/service_notifier.cc checks it against the
// system header): the longest NOTIFY_SOCKET a datagram can be addressed to.
inline constexpr size_t kNotifySocketPathBytesMax = 108;

// `text` as one STATUS= value: control characters (a newline would end the assignment and
// start another) become spaces, and a text over kNotifyStatusBytesMax is cut at a UTF-8
// character boundary and ends in "...".
std::string notify_status_text(std::string_view text);

// "READY=1", MAINPID= and STATUS=: keygate accepts connections now (at start-up, once both
// listeners are bound and the workers run). MAINPID names the process to supervise, which a
// service manager that started keygate through a wrapper would not know otherwise.
std::string notify_ready_message(uint64_t main_pid, std::string_view status);

// "RELOADING=1" with MONOTONIC_USEC= (CLOCK_MONOTONIC when the reload began, in microseconds:
// systemd 253's Type=notify-reload matches it against when it sent SIGHUP) and STATUS=.
std::string notify_reloading_message(uint64_t monotonic_usec, std::string_view status);

// "READY=1" and STATUS=: a reload is over, whether it was applied or refused (the service
// serves either way; STATUS says which).
std::string notify_reloaded_message(std::string_view status);

// "STOPPING=1" and STATUS=: the drain began; no READY=1 follows.
std::string notify_stopping_message(std::string_view status);

// "WATCHDOG=1": keygate is alive. Sent only while every worker's event loop turns
// (core/worker_watch.h), so that a service manager with a watchdog (systemd's WatchdogSec=)
// kills a keygate with a wedged worker.
std::string notify_watchdog_message();

// The watchdog's timeout in microseconds from the values of WATCHDOG_USEC and WATCHDOG_PID
// (null: the variable is unset), read as sd_watchdog_enabled(3) reads them: 0 when
// WATCHDOG_USEC is unset (no watchdog) or when WATCHDOG_PID names another process than
// `self_pid` (the variables were meant for it). False with the reason in `error` when a value
// is not a positive decimal number (WATCHDOG_USEC of microseconds, WATCHDOG_PID a pid).
bool notify_watchdog_usec(const char* usec, const char* pid, uint64_t self_pid, uint64_t* out,
                          std::string* error);

// Where a NOTIFY_SOCKET value sends to, as the bytes of sockaddr_un::sun_path: a path
// ("/run/systemd/notify": the bytes as given; the address length then counts a terminating
// NUL) or an abstract name ("@name": a NUL byte, then the name, and no terminating NUL, as
// sd_notify(3) addresses it). False with the reason in `error` for anything else (empty, a
// relative path, the "vsock:" form of newer systemd, a value too long for sun_path, a NUL byte
// inside a path).
bool notify_socket_address(std::string_view value, std::string* sun_path, std::string* error);

}  // namespace keygate
