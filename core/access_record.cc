#include "core/access_record.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/assert.h"
#include "core/utf8.h"
#include "core/http_request.h"
#include "core/key_extractor.h"

namespace keygate {

namespace detail {

// Where a record is written: a std::string that grows, or a fixed buffer. A fixed one that
// runs out of room stops taking bytes and says so (overflowed()); the caller then has nothing
// usable and formats the record again into a string.
class RecordOut {
public:
  explicit RecordOut(std::string &s) noexcept : string_(&s) {}
  RecordOut(char *data, size_t capacity) noexcept
      : data_(data), capacity_(capacity) {}

  size_t size() const noexcept { return string_ != nullptr ? string_->size() : size_; }
  bool overflowed() const noexcept { return overflowed_; }

  void reserve(size_t more) {
    if (string_ != nullptr)
      string_->reserve(string_->size() + more);
  }
  void append(std::string_view v) noexcept {
    if (string_ != nullptr) {
      string_->append(v);
    } else if (v.size() <= capacity_ - size_) {
      std::memcpy(data_ + size_, v.data(), v.size());
      size_ += v.size();
    } else {
      overflow();
    }
  }
  void append(const char *p, size_t n) noexcept { append(std::string_view(p, n)); }
  void push_back(char c) noexcept { append(std::string_view(&c, 1)); }

  // Makes up to `more` bytes writable after the end (all of them for a string; what is left
  // for a fixed buffer) and returns where they start; *granted says how many. They are not
  // part of the output until close().
  char *open(size_t more, size_t *granted) noexcept {
    if (string_ != nullptr) {
      const size_t used = string_->size();
      string_->resize(used + more);
      *granted = more;
      return string_->data() + used;
    }
    *granted = std::min(more, capacity_ - size_);
    return data_ + size_;
  }
  // The output does not fit: nothing more is taken.
  void overflow() noexcept {
    overflowed_ = true;
    capacity_ = size_;
  }
  // Ends the output at `end`, a position within what open() made writable.
  void close(const char *end) noexcept {
    if (string_ != nullptr) {
      string_->resize(static_cast<size_t>(end - string_->data()));
    } else {
      size_ = static_cast<size_t>(end - data_);
    }
  }

private:
  std::string *string_ = nullptr;
  char *data_ = nullptr;
  size_t capacity_ = 0;
  size_t size_ = 0;
  bool overflowed_ = false;
};

} // namespace detail

namespace {

using detail::RecordOut;

constexpr std::string_view kGenericMarker = "[redacted]";
constexpr std::string_view kFormMediaType = "application/x-www-form-urlencoded";
constexpr std::string_view kHeaderName = "X-ApiKey";
constexpr std::string_view kJsonMemberName = "API_Key";
constexpr std::string_view kAdminMemberName = "key";
// Each round can only be needed when a marker's neighbours spell a key value
// again; real keys never need a second round, so a small bound costs nothing
// and keeps the loop finite.
constexpr size_t kRescanRoundsMax = 4;
// Work bound of one by-value scan, in matcher steps: ordinary text costs about
// one step per byte, so only text crafted to nearly match a key all over (many
// long partial matches) can use it up; the rest of such a text is then redacted
// whole.
constexpr size_t kScanStepsPerByte = 4;
constexpr size_t kScanStepsBase = 1 << 16;

bool is_ows(char c) noexcept { return c == ' ' || c == '\t'; }
bool is_json_ws(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && is_ows(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back()))
    s.remove_suffix(1);
  return s;
}

std::string_view media_type(std::string_view content_type) noexcept {
  return trim_ows(content_type.substr(0, content_type.find(';')));
}

// Four hex digits at t[p..p+4) (the caller checked they exist), or -1.
int hex4(std::string_view t, size_t p) noexcept {
  int v = 0;
  for (size_t i = 0; i < 4; ++i) {
    const int h = hex_value(t[p + i]);
    if (h < 0)
      return -1;
    v = v * 16 + h;
  }
  return v;
}

// The JSON escape starting with the backslash at t[p]: its length (0 when
// malformed or cut off) and the code unit it stands for in *unit (a \uXXXX
// above 0xFF is kept as is, so it matches no byte).
size_t json_escape(std::string_view t, size_t p, int *unit) noexcept {
  if (t.size() - p < 2)
    return 0;
  switch (t[p + 1]) {
  case '"':
    *unit = '"';
    return 2;
  case '\\':
    *unit = '\\';
    return 2;
  case '/':
    *unit = '/';
    return 2;
  case 'b':
    *unit = '\b';
    return 2;
  case 'f':
    *unit = '\f';
    return 2;
  case 'n':
    *unit = '\n';
    return 2;
  case 'r':
    *unit = '\r';
    return 2;
  case 't':
    *unit = '\t';
    return 2;
  case 'u': {
    if (t.size() - p < 6)
      return 0;
    const int v = hex4(t, p + 2);
    if (v < 0)
      return 0;
    *unit = v;
    return 6;
  }
  default:
    return 0;
  }
}

// One way the text at some position can stand for one byte of a key.
struct Unit {
  int byte;
  uint32_t len;
};

// Every reading of the text at t[p] as one byte: raw, '+' as a space, %XX, or a
// JSON escape.
size_t units_at(std::string_view t, size_t p, Unit (&units)[2]) noexcept {
  size_t n = 0;
  const char c = t[p];
  units[n++] = {static_cast<unsigned char>(c), 1};
  if (c == '+') {
    units[n++] = {' ', 1};
  } else if (c == '%') {
    if (t.size() - p >= 3) {
      const int hi = hex_value(t[p + 1]);
      const int lo = hex_value(t[p + 2]);
      if (hi >= 0 && lo >= 0)
        units[n++] = {hi * 16 + lo, 3};
    }
  } else if (c == '\\') {
    int unit = 0;
    const size_t len = json_escape(t, p, &unit);
    if (len != 0)
      units[n++] = {unit, static_cast<uint32_t>(len)};
  }
  return n;
}

// Can byte c start a reading other than itself ('+', %XX, a JSON escape)?
bool may_start_encoding(char c) noexcept {
  return c == '%' || c == '\\' || c == '+';
}

void append_decimal(RecordOut &out, uint64_t n) noexcept {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), n);
  KEYGATE_ASSERT(ec == std::errc());
  out.append(digits, static_cast<size_t>(end - digits));
}

void append_signed(RecordOut &out, int64_t n) noexcept {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), n);
  KEYGATE_ASSERT(ec == std::errc());
  out.append(digits, static_cast<size_t>(end - digits));
}

// --- Scans ---
// The scalar tests first; the block scans that skip text in 16 or 32 byte blocks and stop only
// where these tests hold are in access_record_blocks.inc, included below once per width.
using Mask = uint64_t; // bit i for byte i of a block

// The bytes JSON escaping must look at: control bytes, '"', '\\', and bytes >= 0x80 (UTF-8).
constexpr bool needs_escape(unsigned char u) noexcept {
  return u < 0x20 || u >= 0x80 || u == '"' || u == '\\';
}

// A quote that can open a member name starting with `next`: followed by `next` or '\\'.
bool is_name_start(std::string_view t, size_t i, char next) noexcept {
  return t[i] == '"' && i + 1 < t.size() && (t[i + 1] == next || t[i + 1] == '\\');
}

// When the string whose opening quote is t[p] JSON-unescapes to exactly `name`: the position
// of its closing quote; else npos. Stops after at most name.size() + 1 characters.
size_t member_name_end(std::string_view t, size_t p, std::string_view name) noexcept {
  const size_t n = t.size();
  size_t q = p + 1;
  size_t k = 0;
  while (q < n) {
    const char c = t[q];
    if (c == '"')
      return k == name.size() ? q : std::string_view::npos;
    int unit = static_cast<unsigned char>(c);
    size_t len = 1;
    if (c == '\\') {
      len = json_escape(t, q, &unit);
      if (len == 0)
        break;
    }
    if (k == name.size() || unit != static_cast<unsigned char>(name[k]))
      break;
    ++k;
    q += len;
  }
  return std::string_view::npos;
}

// Where a run that decodes to a key can start: the key's first byte raw, followed by its
// second byte or by a byte that can start an encoding of it; '%'; a backslash followed by 'u'
// (or by anything when the first byte has a two-character JSON escape); '+' when the key
// starts with a space. Every position match_length could accept passes, so a scan skips the
// rest in blocks and tries only these.
struct KeyStarts {
  explicit KeyStarts(std::string_view key) noexcept
      : first(key[0]), second(key.size() > 1 ? key[1] : key[0]),
        plus(key[0] == ' ' ? '+' : '%'),
        any_second(key.size() == 1 || may_start_encoding(key[0])),
        any_after_backslash(has_short_escape(key[0])) {}

  bool is_start(std::string_view t, size_t i) const noexcept {
    const char c = t[i];
    const bool has_next = i + 1 < t.size();
    const char next = has_next ? t[i + 1] : '\0';
    if (c == '%' || c == plus)
      return true;
    if (c == first && (any_second || (has_next && (next == second ||
                                                   may_start_encoding(next)))))
      return true;
    return c == '\\' && has_next && (any_after_backslash || next == 'u');
  }

  static bool has_short_escape(char c) noexcept {
    return c == '"' || c == '\\' || c == '/' || c == '\b' || c == '\f' ||
           c == '\n' || c == '\r' || c == '\t';
  }

  char first;
  char second;
  char plus; // '+' when the key starts with a space, else '%' again
  bool any_second;
  bool any_after_backslash;
};

constexpr char kHex[] = "0123456789abcdef";

// The bytes with a two-character JSON escape, each with the character after the backslash (0:
// none): '"' and '\\' as themselves, and the control bytes \b \t \n \f \r as letters, so CR LF
// in every captured head and the newlines of text bodies take 2 bytes in the log instead of 6.
constexpr std::array<char, 256> kTwoCharEscape = [] {
  std::array<char, 256> t{};
  t['"'] = '"';
  t['\\'] = '\\';
  t['\b'] = 'b';
  t['\t'] = 't';
  t['\n'] = 'n';
  t['\f'] = 'f';
  t['\r'] = 'r';
  return t;
}();

// Writes the escape of the byte at p (one that needs_escape) to o, or copies the valid UTF-8
// sequence it starts; returns the position after what it took (up to 6 bytes written).
const char *escape_one(std::string_view s, const char *p, char *&o) noexcept {
  const auto u = static_cast<unsigned char>(*p);
  if (const char second = kTwoCharEscape[u]; second != 0) {
    o[0] = '\\';
    o[1] = second;
    o += 2;
    return p + 1;
  }
  if (u >= 0x80) {
    if (const size_t len = utf8_passing_length(s, static_cast<size_t>(p - s.data())); len != 0) {
      std::memcpy(o, p, len);
      o += len;
      return p + len;
    }
  }
  std::memcpy(o, "\\u00", 4);
  o[4] = kHex[u >> 4];
  o[5] = kHex[u & 0xf];
  o += 6;
  return p + 1;
}

namespace blocks16 {
#define KEYGATE_BLOCK_BYTES 16
#define KEYGATE_BLOCK_TARGET
#include "core/access_record_blocks.inc"
#undef KEYGATE_BLOCK_TARGET
#undef KEYGATE_BLOCK_BYTES
} // namespace blocks16

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KEYGATE_HAVE_BLOCKS32 1
namespace blocks32 {
#define KEYGATE_BLOCK_BYTES 32
#define KEYGATE_BLOCK_TARGET __attribute__((target("avx2")))
#include "core/access_record_blocks.inc"
#undef KEYGATE_BLOCK_TARGET
#undef KEYGATE_BLOCK_BYTES
} // namespace blocks32

// The 32-byte scans where the CPU has AVX2, unless KEYGATE_NO_AVX2 is set in the environment
// (it forces the 16-byte ones: for tests, and to rule them out when debugging). Decided once.
bool use_blocks32() noexcept {
  static const bool use =
      __builtin_cpu_supports("avx2") != 0 && std::getenv("KEYGATE_NO_AVX2") == nullptr;
  return use;
}
#endif

// The bytes of every text field of `r`, captures included: what its record escapes.
size_t text_bytes(const AccessRecord &r) noexcept {
  size_t n = r.client.size() + r.key_id.size() + r.user.size() + r.api.size() +
             r.method.size() + r.target.size() + r.reason.size() + r.listener.size();
  for (const CapturedMessage *m : {r.request, r.response}) {
    if (m != nullptr)
      n += m->head.size() + m->body.size();
  }
  return n;
}

// Form bodies get the `key` field rule on top of the JSON member rule every body gets.
bool is_form_body(std::string_view content_type) noexcept {
  return equals_ignore_case(media_type(content_type), kFormMediaType);
}

void append_escaped(std::string_view s, RecordOut &out) noexcept {
  if (s.size() < 64) {
    // Short fields (most of a record's): a stack buffer, no resize of `out` to fill and trim.
    char buf[2 + 6 * 64];
    char *o = buf;
    *o++ = '"';
    const char *p = s.data();
    const char *const e = p + s.size();
    while (p < e) {
      if (!needs_escape(static_cast<unsigned char>(*p))) {
        *o++ = *p++;
      } else {
        p = escape_one(s, p, o);
      }
    }
    *o++ = '"';
    out.append(buf, static_cast<size_t>(o - buf));
    return;
  }
  out.push_back('"');
#if KEYGATE_HAVE_BLOCKS32
  if (use_blocks32()) {
    blocks32::escape_long(s, out);
    out.push_back('"');
    return;
  }
#endif
  blocks16::escape_long(s, out);
  out.push_back('"');
}

} // namespace

void append_json_escaped(std::string_view s, std::string &out) noexcept {
  RecordOut o(out);
  append_escaped(s, o);
}

void AccessRecordWriter::add_query_values(std::string_view params,
                                          size_t base) noexcept {
  size_t pos = 0;
  while (true) {
    const size_t amp = params.find('&', pos);
    const size_t end = amp == std::string_view::npos ? params.size() : amp;
    const std::string_view pair = params.substr(pos, end - pos);
    const size_t eq = pair.find('=');
    if (eq != std::string_view::npos && eq + 1 < pair.size() &&
        is_key_param_name(pair.substr(0, eq))) {
      ranges_.push_back({base + pos + eq + 1, base + end, false});
    }
    if (amp == std::string_view::npos)
      break;
    pos = amp + 1;
  }
}

void AccessRecordWriter::add_head(std::string_view head,
                                  bool request) noexcept {
  size_t pos = 0;
  bool first = true;
  while (pos < head.size()) {
    const size_t nl = head.find('\n', pos);
    size_t end = nl == std::string_view::npos ? head.size() : nl;
    if (end > pos && head[end - 1] == '\r')
      --end;
    const std::string_view line = head.substr(pos, end - pos);
    if (first) {
      first = false;
      const size_t sp1 = line.find(' ');
      if (request && sp1 != std::string_view::npos) {
        const size_t sp2 = line.rfind(' ');
        const size_t target_end = sp2 > sp1 ? sp2 : line.size();
        const std::string_view target =
            line.substr(sp1 + 1, target_end - sp1 - 1);
        const size_t question = target.find('?');
        if (question != std::string_view::npos) {
          add_query_values(target.substr(question + 1),
                           pos + sp1 + 1 + question + 1);
        }
      }
    } else if (const size_t colon = line.find(':');
               colon != std::string_view::npos) {
      if (equals_ignore_case(trim_ows(line.substr(0, colon)), kHeaderName)) {
        size_t b = colon + 1;
        size_t e = line.size();
        while (b < e && is_ows(line[b]))
          ++b;
        while (e > b && is_ows(line[e - 1]))
          --e;
        if (e > b)
          ranges_.push_back({pos + b, pos + e, false});
      }
    }
    if (nl == std::string_view::npos)
      break;
    pos = nl + 1;
  }
}

void AccessRecordWriter::add_json_members(std::string_view text,
                                          std::string_view name,
                                          bool generic) noexcept {
  const size_t n = text.size();
  // Only a '"' followed by the name's first character or a backslash can open the name, so
  // the others are skipped in blocks (the same set of tries as trying every '"').
  const auto next_quote = [&](size_t from) noexcept {
    return blocks16::find_name_start(text, from, name.front());
  };
  size_t p = next_quote(0);
  // Every '"' is tried as the opening quote of a member name, so a broken or
  // cut-off document (or a quote paired wrongly by an earlier guess) cannot
  // hide a later member. Each try stops after at most name.size() + 1
  // characters, so the scan stays linear.
  while (p != std::string_view::npos) {
    const size_t q = member_name_end(text, p, name);
    if (q == std::string_view::npos) {
      p = next_quote(p + 1);
      continue;
    }
    size_t r = q + 1;
    while (r < n && is_json_ws(text[r]))
      ++r;
    if (r >= n || text[r] != ':') {
      p = q; // the name's closing quote may open the next string
      continue;
    }
    ++r;
    while (r < n && is_json_ws(text[r]))
      ++r;
    if (r >= n)
      break;
    if (text[r] == '"') {
      const size_t b = r + 1;
      size_t e = b;
      while (e < n && text[e] != '"')
        e += text[e] == '\\' ? 2 : 1;
      e = std::min(e, n); // cut off inside the value (or its last escape):
                          // redact to the end
      if (e > b)
        ranges_.push_back({b, e, generic});
      if (e >= n)
        break;
      p = next_quote(e + 1);
    } else if (text[r] == '{' || text[r] == '[') {
      p = next_quote(r);
    } else {
      size_t e = r;
      while (e < n && !is_json_ws(text[e]) && text[e] != ',' &&
             text[e] != '}' && text[e] != ']' && text[e] != '"') {
        ++e;
      }
      if (e > r)
        ranges_.push_back({r, e, generic});
      p = next_quote(e);
    }
  }
}

size_t AccessRecordWriter::match_length(std::string_view text, size_t at,
                                        std::string_view key,
                                        size_t *budget) noexcept {
  const auto charge = [budget](size_t steps) noexcept {
    *budget = steps >= *budget ? 0 : *budget - steps;
  };
  // Literal prefix first: only '%', '\\' and '+' can start another reading, so
  // until one of them the run can only be the key's own bytes.
  const size_t avail = text.size() - at;
  size_t j = 0;
  while (j < key.size() && j < avail) {
    const char c = text[at + j];
    if (c == '%' || c == '\\' || c == '+')
      break;
    if (c != key[j]) {
      charge(j + 1);
      return 0;
    }
    ++j;
  }
  charge(j + 1);
  if (j == key.size())
    return j;
  if (j == avail)
    return cut_prefix_counts(j, key.size()) ? j : 0;

  // The text offsets (from `at`) reachable after decoding each further key
  // byte: an NFA run, since a byte like '%' or '\\' can be read raw or as the
  // start of an escape. seen_ marks the offsets already in next_states_ (a unit
  // is at most 6 bytes, so offsets stay below 6 * key.size() + 1); it is all
  // zero between calls.
  if (seen_.size() < 6 * key.size() + 1)
    seen_.resize(6 * key.size() + 1, 0);
  states_.clear();
  states_.push_back(static_cast<uint32_t>(j));
  for (size_t k = j; k < key.size(); ++k) {
    const char kc = key[k];
    if (cut_prefix_counts(k, key.size()) &&
        std::find(states_.begin(), states_.end(), static_cast<uint32_t>(avail)) !=
            states_.end()) {
      return avail;  // the text was cut right after k of the key's bytes
    }
    next_states_.clear();
    charge(states_.size());
    if (*budget == 0)
      return 0;
    for (const uint32_t off : states_) {
      const size_t p = at + off;
      if (p >= text.size())
        continue;
      Unit units[2];
      const size_t count = units_at(text, p, units);
      for (size_t i = 0; i < count; ++i) {
        if (units[i].byte != static_cast<unsigned char>(kc))
          continue;
        const uint32_t reached = off + units[i].len;
        if (seen_[reached] == 0) {
          seen_[reached] = 1;
          next_states_.push_back(reached);
        }
      }
    }
    for (const uint32_t off : next_states_)
      seen_[off] = 0;
    if (next_states_.empty())
      return 0;
    states_.swap(next_states_);
  }
  // The longest reading covers every shorter one.
  return *std::max_element(states_.begin(), states_.end());
}

void AccessRecordWriter::add_value_matches(std::string_view text) noexcept {
  for (const std::string_view key : record_->key_values) {
    if (key.empty())
      continue;
    const KeyStarts starts(key);
    size_t budget = kScanStepsPerByte * text.size() + kScanStepsBase;
    size_t i = 0;
    while (true) {
      i = blocks16::next_start(starts, text, i);
      if (i >= text.size())
        break;
      const size_t len = match_length(text, i, key, &budget);
      if (budget == 0) {
        // Only text built to resemble the key gets here; losing its tail beats
        // a slow worker.
        ranges_.push_back({i, text.size(), false});
        break;
      }
      if (len == 0) {
        ++i;
        continue;
      }
      ranges_.push_back({i, i + len, false});
      i += len;
    }
  }
}

void AccessRecordWriter::add_structural(
    std::string_view text, Text kind, std::string_view content_type) noexcept {
  switch (kind) {
  case Text::kPlain:
    return;
  case Text::kTarget: {
    const size_t question = text.find('?');
    if (question != std::string_view::npos) {
      add_query_values(text.substr(question + 1), question + 1);
    }
    return;
  }
  case Text::kRequestHead:
    add_head(text, true);
    return;
  case Text::kResponseHead:
    add_head(text, false);
    return;
  case Text::kBody:
    if (is_form_body(content_type))
      add_query_values(text, 0);
    add_json_members(text, kJsonMemberName, false);
    if (admin_listener())
      add_json_members(text, kAdminMemberName, true);
    return;
  }
}

void AccessRecordWriter::apply_ranges(std::string_view text,
                                      std::string &out) noexcept {
  std::sort(ranges_.begin(), ranges_.end(),
            [](const Range &a, const Range &b) { return a.begin < b.begin; });
  // Merge overlapping ranges in place (touching ones stay apart: two markers).
  size_t merged = 0;
  for (const Range &r : ranges_) {
    if (merged > 0 && r.begin < ranges_[merged - 1].end) {
      ranges_[merged - 1].end = std::max(ranges_[merged - 1].end, r.end);
    } else {
      ranges_[merged++] = r;
    }
  }
  ranges_.resize(merged);

  out.clear();
  marker_spans_.clear();
  size_t pos = 0;
  for (const Range &r : ranges_) {
    out.append(text.substr(pos, r.begin - pos));
    const std::string_view marker =
        r.generic ? kGenericMarker : std::string_view(key_marker_);
    marker_spans_.push_back(
        {out.size(), out.size() + marker.size(), r.generic});
    out.append(marker);
    pos = r.end;
  }
  out.append(text.substr(pos));
}

bool AccessRecordWriter::body_is_clean(std::string_view text) noexcept {
  std::string_view keys[2];
  size_t count = 0;
  for (const std::string_view key : record_->key_values) {
    if (key.empty())
      continue;
    if (count == std::size(keys))
      return false;
    keys[count++] = key;
  }
  // (An unused one is built on a stand-in key and never consulted.)
  const KeyStarts starts[2] = {KeyStarts(count > 0 ? keys[0] : kJsonMemberName),
                               KeyStarts(count > 1 ? keys[1] : kJsonMemberName)};
  const size_t n = text.size();
  // Per key, as add_value_matches: the same starts tried in the same order with the same
  // budget, so a start that would give a range (or exhaust the budget) is found here too.
  size_t budgets[2] = {kScanStepsPerByte * n + kScanStepsBase,
                       kScanStepsPerByte * n + kScanStepsBase};
  const char name_first = kJsonMemberName.front();
  const auto clean_at = [&](size_t j) noexcept {
    // A quote that opens the member name: add_json_members may redact its value (no need to
    // know whether it would).
    if (is_name_start(text, j, name_first) &&
        member_name_end(text, j, kJsonMemberName) != std::string_view::npos)
      return false;
    for (size_t k = 0; k < count; ++k) {
      if (!starts[k].is_start(text, j))
        continue;
      if (match_length(text, j, keys[k], &budgets[k]) != 0 || budgets[k] == 0)
        return false;
    }
    return true;
  };
  // The key count as a constant, so the block loop holds every key's bytes in registers.
  const auto scan = [&]<size_t kKeys>() noexcept {
#if KEYGATE_HAVE_BLOCKS32
    if (use_blocks32())
      return blocks32::all_candidates<kKeys>(text, starts, name_first, clean_at);
#endif
    return blocks16::all_candidates<kKeys>(text, starts, name_first, clean_at);
  };
  switch (count) {
  case 0:
    return scan.template operator()<0>();
  case 1:
    return scan.template operator()<1>();
  default:
    return scan.template operator()<2>();
  }
}

void AccessRecordWriter::append_redacted(std::string_view text, Text kind,
                                         std::string_view content_type, bool cut,
                                         RecordOut &out) noexcept {
  // The common body: nothing any rule would redact, found in one pass that tries the same
  // positions as the rules' own scans. Form bodies and the admin listener have further rules
  // (add_structural), which this pass does not cover.
  if (kind == Text::kBody && !cut && !admin_listener() && !is_form_body(content_type) &&
      body_is_clean(text)) {
    append_escaped(text, out);
    return;
  }
  // match_length reads it; cleared on every way out (by the guard).
  text_cut_ = cut;
  struct ClearCut {
    bool &flag;
    ~ClearCut() { flag = false; }
  } clear_cut{text_cut_};
  ranges_.clear();
  add_structural(text, kind, content_type);
  add_value_matches(text);
  if (ranges_.empty()) {
    append_escaped(text, out);
    return;
  }
  size_t cur = 0;
  apply_ranges(text, scratch_[cur]);
  for (size_t round = 0; round < kRescanRoundsMax; ++round) {
    ranges_.clear();
    add_value_matches(scratch_[cur]);
    // A match wholly inside a marker is the marker's own text (a key value like
    // "red"), not a leak; one that reaches outside it is redacted together with
    // the marker.
    std::erase_if(ranges_, [&](const Range &r) {
      auto it = std::upper_bound(
          marker_spans_.begin(), marker_spans_.end(), r.begin,
          [](size_t v, const Range &m) { return v < m.begin; });
      if (it == marker_spans_.begin())
        return false;
      --it;
      return r.begin >= it->begin && r.end <= it->end;
    });
    if (ranges_.empty()) {
      append_escaped(scratch_[cur], out);
      return;
    }
    apply_ranges(scratch_[cur], scratch_[1 - cur]);
    cur = 1 - cur;
  }
  append_escaped(key_marker_, out);
}

void AccessRecordWriter::append(const AccessRecord &r,
                                std::string &out) noexcept {
  RecordOut o(out);
  append_to(r, o);
}

size_t AccessRecordWriter::append(const AccessRecord &r, char *out,
                                  size_t capacity) noexcept {
  RecordOut o(out, capacity);
  append_to(r, o);
  return o.overflowed() ? 0 : o.size();
}

size_t AccessRecordWriter::capacity_hint(const AccessRecord &r) noexcept {
  // The field names and numbers take under 512 bytes; every text byte escapes to 6 at most.
  return 512 + 6 * text_bytes(r);
}

void AccessRecordWriter::append_to(const AccessRecord &r,
                                   RecordOut &out) noexcept {
  record_ = &r;
  key_marker_.clear();
  if (r.key_id.empty()) {
    key_marker_.append(kGenericMarker);
  } else {
    key_marker_.append("[redacted:");
    key_marker_.append(r.key_id);
    key_marker_.push_back(']');
  }
  const auto string_or_null = [&](std::string_view s) {
    if (s.empty()) {
      out.append("null");
    } else {
      append_escaped(s, out);
    }
  };
  const auto message = [&](const CapturedMessage &m, Text head_kind) {
    out.append("{\"head\":");
    append_redacted(m.head, head_kind, {}, false, out);
    out.append(",\"body\":");
    append_redacted(m.body, Text::kBody, m.content_type, m.body_truncated, out);
    out.append(",\"body_truncated\":");
    out.append(m.body_truncated ? "true" : "false");
    out.push_back('}');
  };

  // One reservation for the whole record (escaping rarely grows text by more than an eighth),
  // so the output is not regrown field by field.
  const size_t estimate = 768 + text_bytes(r);
  out.reserve(estimate + estimate / 8);

  out.append("{\"time_us\":");
  append_signed(out, r.time_us);
  out.append(",\"request_id\":");
  append_decimal(out, r.request_id);
  out.append(",\"worker\":");
  append_decimal(out, r.worker);
  out.append(",\"listener\":");
  append_escaped(r.listener, out);
  out.append(",\"client\":");
  append_escaped(r.client, out);
  out.append(",\"key_id\":");
  string_or_null(r.key_id);
  out.append(",\"user\":");
  string_or_null(r.user);
  out.append(",\"api\":");
  string_or_null(r.api);
  out.append(",\"method\":");
  append_redacted(r.method, Text::kPlain, {}, false, out);
  out.append(",\"path\":");
  append_redacted(r.target, Text::kTarget, {}, false, out);
  out.append(",\"status\":");
  append_signed(out, r.status);
  out.append(",\"bytes_in\":");
  append_decimal(out, r.bytes_in);
  out.append(",\"bytes_out\":");
  append_decimal(out, r.bytes_out);
  out.append(",\"duration_us\":");
  append_decimal(out, r.duration_us);
  out.append(",\"reason\":");
  string_or_null(r.reason);
  if (r.request != nullptr) {
    out.append(",\"request\":");
    message(*r.request, Text::kRequestHead);
  }
  if (r.response != nullptr) {
    out.append(",\"response\":");
    message(*r.response, Text::kResponseHead);
  }
  out.push_back('}');
  record_ = nullptr;
}

void append_access_record(const AccessRecord &r, std::string &out) noexcept {
  thread_local AccessRecordWriter writer;
  writer.append(r, out);
}

} // namespace keygate
