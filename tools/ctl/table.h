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

// `text` with control characters written as escapes: \n, \r, \t, \\ and \xHH (also DEL). Other
// bytes, UTF-8 included, pass through.
std::string printable(std::string_view text);

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
