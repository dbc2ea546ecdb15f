#include "storage/log_line.h"

#include <charconv>
#include <cstddef>

namespace keygate::storage {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

// Past the string starting at s[i] == '"', or npos when it is not closed.
size_t skip_string(std::string_view s, size_t i) {
  for (++i; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// Past the value starting at s[i], or npos when it is unterminated or its brackets do not
// match. The stack of expected closers is a std::string: no allocation up to 15 levels.
size_t skip_value(std::string_view s, size_t i) {
  if (i >= s.size()) return std::string_view::npos;
  const char c = s[i];
  if (c == '"') return skip_string(s, i);
  if (c == '{' || c == '[') {
    std::string closers;
    closers.push_back(c == '{' ? '}' : ']');
    for (++i; i < s.size(); ++i) {
      const char d = s[i];
      if (d == '"') {
        i = skip_string(s, i);
        if (i == std::string_view::npos) return i;
        --i;
      } else if (d == '{' || d == '[') {
        closers.push_back(d == '{' ? '}' : ']');
      } else if (d == '}' || d == ']') {
        if (d != closers.back()) return std::string_view::npos;
        closers.pop_back();
        if (closers.empty()) return i + 1;
      }
    }
    return std::string_view::npos;
  }
  const size_t start = i;
  while (i < s.size() && !is_space(s[i]) && s[i] != ',' && s[i] != '}' && s[i] != ']') ++i;
  return i == start ? std::string_view::npos : i;
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool hex4(std::string_view s, size_t i, uint32_t* value) {
  if (i + 4 > s.size()) return false;
  uint32_t v = 0;
  for (size_t k = i; k < i + 4; ++k) {
    const char c = s[k];
    uint32_t d;
    if (c >= '0' && c <= '9') {
      d = static_cast<uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<uint32_t>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<uint32_t>(c - 'A' + 10);
    } else {
      return false;
    }
    v = v * 16 + d;
  }
  *value = v;
  return true;
}

// Decodes the JSON string body (between the quotes). False on a bad escape.
bool unescape(std::string_view body, std::string* out) {
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\') {
      out->push_back(body[i]);
      continue;
    }
    if (++i >= body.size()) return false;
    switch (body[i]) {
      case '"':
        out->push_back('"');
        break;
      case '\\':
        out->push_back('\\');
        break;
      case '/':
        out->push_back('/');
        break;
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'n':
        out->push_back('\n');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'u': {
        uint32_t cp;
        if (!hex4(body, i + 1, &cp)) return false;
        i += 4;
        if (cp >= 0xD800 && cp < 0xDC00) {
          uint32_t low;
          if (i + 2 >= body.size() || body[i + 1] != '\\' || body[i + 2] != 'u' ||
              !hex4(body, i + 3, &low) || low < 0xDC00 || low >= 0xE000) {
            return false;
          }
          i += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        append_utf8(cp, out);
        break;
      }
      default:
        return false;
    }
  }
  return true;
}

}  // namespace

std::optional<std::string_view> find_root_member(std::string_view object, std::string_view name) {
  size_t i = skip_space(object, 0);
  if (i >= object.size() || object[i] != '{') return std::nullopt;
  i = skip_space(object, i + 1);
  if (i < object.size() && object[i] == '}') return std::nullopt;
  while (i < object.size()) {
    if (object[i] != '"') return std::nullopt;
    const size_t key_end = skip_string(object, i);
    if (key_end == std::string_view::npos) return std::nullopt;
    const std::string_view key = object.substr(i + 1, key_end - i - 2);
    i = skip_space(object, key_end);
    if (i >= object.size() || object[i] != ':') return std::nullopt;
    i = skip_space(object, i + 1);
    const size_t value_end = skip_value(object, i);
    if (value_end == std::string_view::npos) return std::nullopt;
    if (key == name) return object.substr(i, value_end - i);
    i = skip_space(object, value_end);
    if (i >= object.size() || object[i] != ',') return std::nullopt;
    i = skip_space(object, i + 1);
  }
  return std::nullopt;
}

bool is_complete_object(std::string_view line) {
  const size_t start = skip_space(line, 0);
  if (start >= line.size() || line[start] != '{') return false;
  const size_t end = skip_value(line, start);
  return end != std::string_view::npos && skip_space(line, end) == line.size();
}

bool line_seq(std::string_view line, uint64_t* seq) {
  constexpr std::string_view kPrefix = "{\"seq\":";
  if (!line.starts_with(kPrefix)) return false;
  const char* first = line.data() + kPrefix.size();
  const char* last = line.data() + line.size();
  const auto [end, ec] = std::from_chars(first, last, *seq);
  return ec == std::errc() && end != first && end < last && (*end == ',' || *end == '}');
}

bool parse_json_int(std::string_view raw, int64_t* value) {
  if (raw.empty()) return false;
  const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), *value);
  return ec == std::errc() && end == raw.data() + raw.size();
}

bool json_string_equals(std::string_view raw, std::string_view text) {
  if (raw.size() < 2 || raw.front() != '"' || raw.back() != '"') return false;
  const std::string_view body = raw.substr(1, raw.size() - 2);
  if (body.find('\\') == std::string_view::npos) return body == text;
  std::string decoded;
  return unescape(body, &decoded) && decoded == text;
}

}  // namespace keygate::storage
