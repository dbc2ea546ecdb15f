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
// escaped, and so are (as \uXXXX) the C1 controls U+0080..U+009F, U+2028/U+2029 and the
// bidirectional overrides U+202A..U+202E, U+2066..U+2069, which would otherwise let stored text
// drive a terminal or reorder what a reader sees; other UTF-8 passes through. Each byte that is
// not part of valid UTF-8 (RFC 3629) is written as \ufffd, so the output is valid JSON whatever
// `s` holds (a percent-decoded query parameter name can be any bytes).
void append_json_string(std::string& out, std::string_view s);

// Appends `s` as a JSON string literal, or `null` when it is empty (absent).
void append_json_string_or_null(std::string& out, const std::optional<std::string>& s);

// `s` for quoting in a one-line message (a configuration error, say): every control byte and
// DEL is written as \xHH, everything else as is.
std::string one_line(std::string_view s);

// True when `s` can go into an HTTP header value as is: visible ASCII and spaces only.
bool header_safe(std::string_view s) noexcept;

// True when `s` read back from a header value is `s` again: non-empty, header_safe, and no
// leading or trailing space (receivers strip those).
bool header_value_round_trips(std::string_view s) noexcept;

}  // namespace keygate
