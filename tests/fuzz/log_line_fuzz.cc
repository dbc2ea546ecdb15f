// libFuzzer target for storage/log_line.h, the readers that recovery and GET /admin/logs run
// over access-log segment files: bytes read back from disk may be torn or damaged, and none of
// them may crash, hang or read outside the line.
//
// The input is one line. Checked, against simdjson's DOM parser (which validates everything)
// as the reference where the input is valid JSON:
//   - a valid JSON object is a complete object; without backslashes in it (names compare raw),
//     find_root_member finds each of its root members (the first, when a name repeats), a
//     string member's raw text decodes to the DOM's string (json_string_equals) and an integer
//     member's parses to the DOM's integer;
//   - whatever the input, a member found is a view inside the line that starts at a value;
//   - line_seq accepts exactly lines starting `{"seq":<digits>` and gives those digits' value;
//   - parse_json_int agrees with std::from_chars on `-?[0-9]+` and refuses anything else;
//   - a valid JSON string decodes (json_string_equals) to the DOM's string, and not to the
//     same string with one more byte.
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "storage/log_line.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using keygate::storage::find_root_member;
using keygate::storage::is_complete_object;
using keygate::storage::json_string_equals;
using keygate::storage::line_seq;
using keygate::storage::parse_json_int;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim_json_space(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  const size_t first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(kSpace) - first + 1);
}

// `-?[0-9]+`, and its value when it fits in int64.
std::optional<int64_t> reference_int(std::string_view s) {
  const size_t digits_at = !s.empty() && s[0] == '-' ? 1 : 0;
  if (s.size() == digits_at) return std::nullopt;
  for (size_t i = digits_at; i < s.size(); ++i) {
    if (!is_digit(s[i])) return std::nullopt;
  }
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

void check_found_member(std::string_view line, std::string_view name) {
  const std::optional<std::string_view> raw = find_root_member(line, name);
  if (!raw) return;
  FUZZ_CHECK(raw->data() >= line.data() && raw->data() + raw->size() <= line.data() + line.size());
  FUZZ_CHECK(!raw->empty());
}

void check_line_seq(std::string_view line) {
  uint64_t seq = 0;
  const bool ok = line_seq(line, &seq);
  constexpr std::string_view kPrefix = "{\"seq\":";
  if (!line.starts_with(kPrefix)) {
    FUZZ_CHECK(!ok);
    return;
  }
  size_t end = kPrefix.size();
  while (end < line.size() && is_digit(line[end])) ++end;
  if (!ok) return;  // e.g. no digits, or a value that does not fit
  uint64_t expected = 0;
  const auto [p, ec] = std::from_chars(line.data() + kPrefix.size(), line.data() + end, expected);
  FUZZ_CHECK(ec == std::errc() && p == line.data() + end);
  FUZZ_CHECK(seq == expected);
}

void check_against_dom(std::string_view line) {
  static simdjson::dom::parser parser;
  const simdjson::padded_string padded(line);
  simdjson::dom::element root;
  if (parser.parse(padded).get(root) != simdjson::SUCCESS) return;
  if (root.is_string()) {
    std::string_view text;
    FUZZ_CHECK(root.get_string().get(text) == simdjson::SUCCESS);
    const std::string_view raw = trim_json_space(line);
    FUZZ_CHECK(json_string_equals(raw, text));
    FUZZ_CHECK(!json_string_equals(raw, std::string(text) + "x"));
    return;
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) return;
  FUZZ_CHECK(is_complete_object(line));
  // find_root_member compares names byte for byte on the raw text, and the DOM gives decoded
  // names only: members are compared where no escape can make the two differ. (Escapes in
  // string values are covered by the root-string case above.)
  if (line.find('\\') != std::string_view::npos) return;
  std::vector<std::string_view> seen;
  for (const auto field : object) {
    const std::string_view key = field.key;
    bool repeated = false;
    for (std::string_view s : seen) repeated = repeated || s == key;
    seen.push_back(key);
    if (repeated) continue;
    const std::optional<std::string_view> raw = find_root_member(line, key);
    FUZZ_CHECK(raw.has_value());
    std::string_view text;
    int64_t number = 0;
    if (field.value.get_string().get(text) == simdjson::SUCCESS) {
      FUZZ_CHECK(json_string_equals(*raw, text));
    } else if (field.value.get_int64().get(number) == simdjson::SUCCESS &&
               reference_int(*raw).has_value()) {
      int64_t parsed = 0;
      FUZZ_CHECK(parse_json_int(*raw, &parsed));
      FUZZ_CHECK(parsed == number);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  (void)is_complete_object(line);
  for (std::string_view name : {"seq", "time_us", "key_id", "status", "type", "a", ""}) {
    check_found_member(line, name);
  }
  check_line_seq(line);
  int64_t value = 0;
  const std::optional<int64_t> expected = reference_int(line);
  const bool parsed = parse_json_int(line, &value);
  FUZZ_CHECK(parsed == expected.has_value());
  if (parsed) FUZZ_CHECK(value == *expected);
  check_against_dom(line);
  return 0;
}
