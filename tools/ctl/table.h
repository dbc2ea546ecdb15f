// Plain-text output helpers for keygatectl: aligned tables and "label: value" listings.
//
// Pure formatting into a caller-owned string; no state, thread-safe. Every cell and value is
// passed through printable() first, so text that came from the server (descriptions, user names)
// cannot move the cursor or rewrite the operator's terminal.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keygate::ctl {

// `text` with control characters written as escapes: \n, \r, \t, \\ and \xHH (also DEL, each
// byte of a C1 control U+0080..U+009F, and each byte that is not part of valid UTF-8: a terminal
// may take a lone 0x9B as CSI). Other bytes, valid UTF-8, pass through.
std::string printable(std::string_view text);

// How terminal_safe_json() writes a raw byte that a terminal could act on.
enum class RawBytes {
  kRawByte,     // each byte as \u00XX of that byte: the access log's convention ("\u00XX" in a
                // record stands for the raw byte XX), so C2 9B becomes \u00c2\u009b
  kCodePoints,  // a C1 control as its code point (C2 9B: \u009b), as JSON means it; other
                // bytes as \u00XX of the byte
};

// JSON text from the server, made safe to print as is: the bytes that are never valid raw in
// JSON text (control bytes other than \t \n \r, invalid UTF-8), DEL, and the C1 controls
// (valid JSON, but a terminal takes U+009B as CSI and U+009D as OSC) are written as escapes per
// `convention`; everything else is unchanged, so a valid document stays valid and means the
// same (with kRawByte, the same under the log's convention). The output of `logs` and --json.
std::string terminal_safe_json(std::string_view text, RawBytes convention);

// Display width of `text` as a terminal shows it, approximately: one column per UTF-8 code point
// (continuation bytes do not count; wide characters are not special-cased).
size_t display_width(std::string_view text);

// Columns under upper-case headings, separated by two spaces, each padded to its widest cell; the
// last column is not padded, so lines carry no trailing blanks.
class Table {
 public:
  explicit Table(std::vector<std::string> headings);

  // `cells` must have one entry per heading.
  void add_row(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }

  // Appends the heading line and every row, each ending in '\n'.
  void render(std::string* out) const;

 private:
  std::vector<std::string> headings_;
  std::vector<std::vector<std::string>> rows_;
};

// "label:  value" lines with the values aligned; a value with several lines continues under the
// first one. Appends to `*out`.
void render_fields(const std::vector<std::pair<std::string, std::vector<std::string>>>& fields,
                   std::string* out);

}  // namespace keygate::ctl
