// UTF-8 checks for text that is shown raw: the access log's JSON escaping and keygatectl's
// output.
//
// Pure, header-only, no state: thread-safe.
#pragma once

#include <cstddef>
#include <string_view>

namespace keygate {

// Length of the UTF-8 sequence starting at s[i] (a lead byte >= 0x80) when it is valid and may
// pass raw, or 0. Valid: RFC 3629 (no overlongs, no surrogates, nothing above U+10FFFF). Not
// passing: the C1 controls U+0080..U+009F (C2 80..C2 9F), which a terminal acts on (C2 9B is
// CSI, C2 9D OSC). Always inlined: the access log's AVX2 block loop calls it, and a call would
// spill its vector registers.
[[gnu::always_inline]] inline size_t utf8_passing_length(std::string_view s, size_t i) noexcept {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  size_t len = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    if (c == 0xC2) lo = 0xA0;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < len || b(1) < lo || b(1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (b(k) < 0x80 || b(k) > 0xBF) return 0;
  }
  return len;
}

}  // namespace keygate
