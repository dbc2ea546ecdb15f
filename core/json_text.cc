#include "core/json_text.h"

#include "core/http_request.h"
#include "core/utf8.h"

namespace keygate {

namespace {

// The code point a \uXXXX escape writes for the UTF-8 sequence at s[i], with its length in
// `*len`; 0 for a sequence that passes raw. Escaped: the C1 controls U+0080..U+009F (C2 80..C2
// 9F; a terminal takes U+009B as CSI, U+009D as OSC), the line and paragraph separators U+2028
// and U+2029 (E2 80 A8/A9: line breaks to some viewers, string terminators to pre-2019
// JavaScript), and the bidirectional embeddings, overrides and isolates U+202A..U+202E and
// U+2066..U+2069 (E2 80 AA..AE, E2 81 A6..A9: they reorder how the text around them is shown,
// as in Trojan Source). All are valid JSON either way; escaped, a parser reads the same string.
unsigned escaped_code_point(std::string_view s, size_t i, size_t* len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  if (b(0) == 0xC2 && i + 1 < s.size() && b(1) >= 0x80 && b(1) <= 0x9F) {
    *len = 2;
    return b(1);
  }
  if (b(0) == 0xE2 && i + 2 < s.size()) {
    const unsigned cp = 0x2000u + ((b(1) & 0x3fu) << 6) + (b(2) & 0x3fu);
    const bool valid = (b(1) == 0x80 || b(1) == 0x81) && b(2) >= 0x80 && b(2) <= 0xBF;
    if (valid && ((cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069))) {
      *len = 3;
      return cp;
    }
  }
  return 0;
}

}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  const auto append_escape = [&](unsigned cp) {
    out.append("\\u");
    for (int shift = 12; shift >= 0; shift -= 4) out.push_back(kHexDigits[(cp >> shift) & 0xf]);
  };
  out.push_back('"');
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      append_escape(u);
    } else if (u < 0x80) {
      out.push_back(c);
    } else if (size_t len = 0; const unsigned cp = escaped_code_point(s, i, &len)) {
      append_escape(cp);
      i += len - 1;
    } else if (const size_t valid = utf8_passing_length(s, i); valid > 0) {
      out.append(s.substr(i, valid));
      i += valid - 1;
    } else {
      // Not UTF-8 (a stray continuation byte, a cut or overlong sequence, a surrogate): a
      // parser would refuse the whole document over it, so each such byte becomes U+FFFD.
      append_escape(0xFFFD);
    }
  }
  out.push_back('"');
}

void append_json_string_or_null(std::string& out, const std::optional<std::string>& s) {
  if (s) {
    append_json_string(out, *s);
  } else {
    out.append("null");
  }
}

std::string one_line(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += "\\x";
      out += kHexDigits[u >> 4];
      out += kHexDigits[u & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

bool header_safe(std::string_view s) noexcept {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u > 0x7e) return false;
  }
  return true;
}

bool header_value_round_trips(std::string_view s) noexcept {
  return !s.empty() && s.front() != ' ' && s.back() != ' ' && header_safe(s);
}

}  // namespace keygate
