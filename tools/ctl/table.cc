#include "tools/ctl/table.h"

#include <algorithm>

#include "core/assert.h"
#include "core/utf8.h"

namespace keygate::ctl {

namespace {

constexpr std::string_view kColumnGap = "  ";

void pad_to(std::string* out, size_t width, size_t target) {
  if (target > width) out->append(target - width, ' ');
}

void append_hex_escape(std::string* out, std::string_view prefix, unsigned char u) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->append(prefix);
  out->push_back(kHex[u >> 4]);
  out->push_back(kHex[u & 0xf]);
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (u >= 0x80) {
      if (const size_t len = utf8_passing_length(text, i); len != 0) {
        out.append(text.substr(i, len));
        i += len;
        continue;
      }
      append_hex_escape(&out, "\\x", u);
    } else if (u < 0x20 || u == 0x7f) {
      append_hex_escape(&out, "\\x", u);
    } else {
      out += c;
    }
    ++i;
  }
  return out;
}

std::string terminal_safe_json(std::string_view text, RawBytes convention) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto u = static_cast<unsigned char>(text[i]);
    if (u >= 0x80) {
      if (const size_t len = utf8_passing_length(text, i); len != 0) {
        out.append(text.substr(i, len));
        i += len;
        continue;
      }
      const bool c1 = u == 0xC2 && i + 1 < text.size() &&
                      static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
                      static_cast<unsigned char>(text[i + 1]) <= 0x9F;
      if (c1 && convention == RawBytes::kCodePoints) {
        append_hex_escape(&out, "\\u00", static_cast<unsigned char>(text[i + 1]));
        i += 2;
        continue;
      }
      append_hex_escape(&out, "\\u00", u);
    } else if ((u < 0x20 && u != '\n' && u != '\r' && u != '\t') || u == 0x7f) {
      append_hex_escape(&out, "\\u00", u);
    } else {
      out.push_back(text[i]);
    }
    ++i;
  }
  return out;
}

size_t display_width(std::string_view text) {
  size_t width = 0;
  for (char c : text) {
    if ((static_cast<unsigned char>(c) & 0xc0) != 0x80) ++width;
  }
  return width;
}

Table::Table(std::vector<std::string> headings) : headings_(std::move(headings)) {}

void Table::add_row(std::vector<std::string> cells) {
  KEYGATE_ASSERT(cells.size() == headings_.size());
  for (std::string& cell : cells) cell = printable(cell);
  rows_.push_back(std::move(cells));
}

void Table::render(std::string* out) const {
  std::vector<size_t> widths(headings_.size());
  for (size_t c = 0; c < headings_.size(); ++c) widths[c] = display_width(headings_[c]);
  for (const std::vector<std::string>& row : rows_) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], display_width(row[c]));
  }
  const auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) {
      if (c > 0) out->append(kColumnGap);
      out->append(cells[c]);
      if (c + 1 < cells.size()) pad_to(out, display_width(cells[c]), widths[c]);
    }
    // Empty trailing cells would leave the padding of the cells before them.
    while (!out->empty() && out->back() == ' ') out->pop_back();
    out->push_back('\n');
  };
  line(headings_);
  for (const std::vector<std::string>& row : rows_) line(row);
}

void render_fields(const std::vector<std::pair<std::string, std::vector<std::string>>>& fields,
                   std::string* out) {
  size_t label_width = 0;
  for (const auto& [label, values] : fields) {
    label_width = std::max(label_width, display_width(label) + 1);  // + ':'
  }
  for (const auto& [label, values] : fields) {
    out->append(label).push_back(':');
    if (values.empty()) {
      out->push_back('\n');
      continue;
    }
    for (size_t i = 0; i < values.size(); ++i) {
      if (i == 0) {
        pad_to(out, display_width(label) + 1, label_width);
      } else {
        out->append(label_width, ' ');
      }
      out->append(kColumnGap).append(printable(values[i])).push_back('\n');
    }
  }
}

}  // namespace keygate::ctl
