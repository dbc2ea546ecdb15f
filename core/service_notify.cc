#include "core/service_notify.h"

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
