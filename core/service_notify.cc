#include "core/service_notify.h"

#include <cstdint>

#include "core/decimal.h"

namespace keygate {

std::string notify_status_text(std::string_view text) {
  std::string out;
  out.reserve(text.size() < kNotifyStatusBytesMax ? text.size() : kNotifyStatusBytesMax);
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    out.push_back(byte < 0x20 || byte == 0x7f ? ' ' : c);
  }
  if (out.size() <= kNotifyStatusBytesMax) return out;
  constexpr std::string_view kEllipsis = "...";
  size_t cut = kNotifyStatusBytesMax - kEllipsis.size();
  // Back to the first byte of the character the cut falls in (continuation bytes are
  // 10xxxxxx), so the text stays valid UTF-8 when it was.
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xc0) == 0x80) --cut;
  out.resize(cut);
  out += kEllipsis;
  return out;
}

std::string notify_ready_message(uint64_t main_pid, std::string_view status) {
  return "READY=1\nMAINPID=" + std::to_string(main_pid) + "\nSTATUS=" + notify_status_text(status);
}

std::string notify_reloading_message(uint64_t monotonic_usec, std::string_view status) {
  return "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec) +
         "\nSTATUS=" + notify_status_text(status);
}

std::string notify_reloaded_message(std::string_view status) {
  return "READY=1\nSTATUS=" + notify_status_text(status);
}

std::string notify_stopping_message(std::string_view status) {
  return "STOPPING=1\nSTATUS=" + notify_status_text(status);
}

std::string notify_watchdog_message() { return "WATCHDOG=1"; }

namespace {

// A positive decimal number that fits in 64 bits, digits only (no sign, space or suffix).
bool positive_decimal(std::string_view text, uint64_t* out) {
  uint64_t value = 0;
  if (!parse_decimal(text, UINT64_MAX, &value) || value == 0) return false;
  *out = value;
  return true;
}

}  // namespace

bool notify_watchdog_usec(const char* usec, const char* pid, uint64_t self_pid, uint64_t* out,
                          std::string* error) {
  *out = 0;
  if (usec == nullptr) return true;
  uint64_t timeout = 0;
  if (!positive_decimal(usec, &timeout)) {
    *error = "WATCHDOG_USEC is not a positive number of microseconds";
    return false;
  }
  if (pid != nullptr) {
    uint64_t owner = 0;
    if (!positive_decimal(pid, &owner)) {
      *error = "WATCHDOG_PID is not a process id";
      return false;
    }
    if (owner != self_pid) return true;
  }
  *out = timeout;
  return true;
}

bool notify_socket_address(std::string_view value, std::string* sun_path, std::string* error) {
  if (value.empty()) {
    *error = "empty";
    return false;
  }
  if (value.front() == '@') {
    // An abstract name may hold any byte, NUL included; its length is the address length.
    if (value.size() > kNotifySocketPathBytesMax) {
      *error = "longer than the " + std::to_string(kNotifySocketPathBytesMax) +
               " bytes of a socket address";
      return false;
    }
    sun_path->assign(1, '\0');
    sun_path->append(value.substr(1));
    return true;
  }
  if (value.front() != '/') {
    *error = "neither an absolute path nor an abstract @name";
    return false;
  }
  if (value.find('\0') != std::string_view::npos) {
    *error = "a path with a NUL byte";
    return false;
  }
  if (value.size() >= kNotifySocketPathBytesMax) {  // room for the terminating NUL
    *error = "longer than the " + std::to_string(kNotifySocketPathBytesMax - 1) +
             " bytes of a socket path";
    return false;
  }
  sun_path->assign(value);
  return true;
}

}  // namespace keygate
