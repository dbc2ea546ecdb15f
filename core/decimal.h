// parse_decimal: the one strict reader of unsigned decimal numbers in core/ (query strings of
// the admin API, systemd's LISTEN_* and WATCHDOG_* variables). Pure logic, no I/O.
#pragma once

#include <cstdint>
#include <string_view>

namespace keygate {

// A decimal number of 1 to 20 digits (no sign, space, '+' or suffix), at most `max`: stored in
// *out and true; false for anything else, *out untouched.
inline bool parse_decimal(std::string_view text, uint64_t max, uint64_t* out) noexcept {
  if (text.empty() || text.size() > 20) return false;
  uint64_t v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return false;
    const auto digit = static_cast<uint64_t>(c - '0');
    if (digit > max || v > (max - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *out = v;
  return true;
}

}  // namespace keygate
