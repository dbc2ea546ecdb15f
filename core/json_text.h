// JSON text helpers for the small JSON documents keygate writes itself.
//
// Pure functions, no I/O. They append to a caller-owned std::string whose capacity the caller
// reuses, so steady-state use does not allocate.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace keygate {

// Appends `s` as a JSON string literal (with quotes): '"', '\\' and control characters are
// escaped; other bytes (UTF-8) pass through.
void append_json_string(std::string& out, std::string_view s);

// Appends `s` as a JSON string literal, or `null` when it is empty (absent).
void append_json_string_or_null(std::string& out, const std::optional<std::string>& s);

// True when `s` can go into an HTTP header value as is: visible ASCII and spaces only.
bool header_safe(std::string_view s) noexcept;

// True when `s` read back from a header value is `s` again: non-empty, header_safe, and no
// leading or trailing space (receivers strip those).
bool header_value_round_trips(std::string_view s) noexcept;

}  // namespace keygate
