// libFuzzer target for keygate::AccessRecordWriter: whatever a client sends, the key it sent
// never reaches the access log in any form the redaction rules promise to cover.
//
// Input format (NUL-separated sections, missing ones empty, so seeds stay readable):
//   <key value> \0 <flags> \0 <target> \0 <request head> \0 <request body>
//               \0 <response head> \0 <response body>
// The key value must be 1..64 printable ASCII bytes (what a stored key can be), else the input
// is skipped. Flags, any of: 'a' the admin listener; 'f' / 'j' / 't' the request's Content-Type
// is application/x-www-form-urlencoded / application/json / text/plain; 'r' the response is
// captured too; 'T' the request body is marked truncated; 'n' the record has no key id.
//
// Checked, on the record written:
//   - it is one line of valid JSON (simdjson's DOM parser), starting '{' and ending '}';
//   - in each captured text as logged (path, request head and body, response head and body,
//     JSON-unescaped by the DOM parser), split at the redaction markers, no run decodes to the
//     key, where each character may be raw, %XX (either case), '+' for a space, or a JSON
//     escape (\" \\ \/ \b \f \n \r \t \uXXXX), in any mix — the by-value rule of
//     core/access_record.h, checked here by a slow dynamic-programming reference instead of
//     the writer's filtered scan;
//   - a second append of the same record gives the same bytes (scratch reuse).
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/access_record.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using keygate::AccessRecord;
using keygate::AccessRecordWriter;
using keygate::CapturedMessage;

constexpr size_t kKeyBytesMax = 64;
constexpr std::string_view kKeyId = "kid1";

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte a JSON short escape `\<c>` stands for, or -1.
int short_escape_value(char c) {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return -1;
  }
}

// Calls `next(end)` for every encoding of byte `c` that starts at text[p] and ends before
// text[end].
template <typename Next>
void encodings_at(std::string_view t, size_t p, char c, Next next) {
  const size_t n = t.size();
  if (p >= n) return;
  if (t[p] == c) next(p + 1);
  if (c == ' ' && t[p] == '+') next(p + 1);
  if (t[p] == '%' && p + 2 < n) {
    const int hi = hex_value(t[p + 1]);
    const int lo = hex_value(t[p + 2]);
    if (hi >= 0 && lo >= 0 && hi * 16 + lo == static_cast<unsigned char>(c)) next(p + 3);
  }
  if (t[p] == '\\' && p + 1 < n) {
    if (short_escape_value(t[p + 1]) == static_cast<unsigned char>(c)) next(p + 2);
    if (t[p + 1] == 'u' && p + 5 < n) {
      int v = 0;
      bool ok = true;
      for (size_t k = p + 2; k < p + 6; ++k) {
        const int h = hex_value(t[k]);
        ok = ok && h >= 0;
        v = v * 16 + (h < 0 ? 0 : h);
      }
      if (ok && v == static_cast<unsigned char>(c)) next(p + 6);
    }
  }
}

// True when some run of `t` decodes to `key` (the reference for the by-value rule): `live[p]`
// says a run that decodes to the key's first j bytes ends at p.
bool holds_encoded_key(std::string_view t, std::string_view key) {
  std::vector<char> live(t.size() + 1, 1);
  std::vector<char> next_live(t.size() + 1);
  for (char c : key) {
    std::fill(next_live.begin(), next_live.end(), 0);
    bool any = false;
    for (size_t p = 0; p < t.size(); ++p) {
      if (!live[p]) continue;
      encodings_at(t, p, c, [&](size_t end) {
        next_live[end] = 1;
        any = true;
      });
    }
    if (!any) return false;
    live.swap(next_live);
  }
  return true;
}

// Checks `logged` (a captured text as it reads in the record) piece by piece between markers:
// a marker's own characters are not the client's text.
void check_text(std::string_view logged, std::string_view key) {
  const std::string_view markers[] = {"[redacted:kid1]", "[redacted]"};
  size_t from = 0;
  while (from <= logged.size()) {
    size_t cut = logged.size();
    size_t cut_len = 0;
    for (std::string_view m : markers) {
      const size_t at = logged.find(m, from);
      if (at != std::string_view::npos && at < cut) {
        cut = at;
        cut_len = m.size();
      }
    }
    FUZZ_CHECK(!holds_encoded_key(logged.substr(from, cut - from), key));
    if (cut_len == 0) break;
    from = cut + cut_len;
  }
}

std::string_view string_member(simdjson::dom::object object, std::string_view name) {
  std::string_view value;
  if (object[name].get_string().get(value) != simdjson::SUCCESS) FUZZ_FAIL("missing string");
  return value;
}

void check_message(simdjson::dom::object record, std::string_view name, std::string_view key) {
  simdjson::dom::object message;
  FUZZ_CHECK(record[name].get_object().get(message) == simdjson::SUCCESS);
  check_text(string_member(message, "head"), key);
  check_text(string_member(message, "body"), key);
}

std::vector<std::string_view> split_sections(std::string_view input) {
  std::vector<std::string_view> sections;
  size_t from = 0;
  while (sections.size() < 6) {
    const size_t nul = input.find('\0', from);
    if (nul == std::string_view::npos) break;
    sections.push_back(input.substr(from, nul - from));
    from = nul + 1;
  }
  sections.push_back(input.substr(std::min(from, input.size())));
  sections.resize(7);
  return sections;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string_view> s = split_sections(input);
  const std::string_view key = s[0];
  if (key.empty() || key.size() > kKeyBytesMax) return 0;
  for (char c : key) {
    if (c < 0x20 || c > 0x7e) return 0;
  }
  const std::string_view flags = s[1];
  auto has = [&](char f) { return flags.find(f) != std::string_view::npos; };

  CapturedMessage request;
  request.head = s[3];
  request.body = s[4];
  request.body_truncated = has('T');
  if (has('f')) request.content_type = "application/x-www-form-urlencoded; charset=UTF-8";
  if (has('j')) request.content_type = "application/json";
  if (has('t')) request.content_type = "text/plain";
  CapturedMessage response;
  response.head = s[5];
  response.body = s[6];
  response.content_type = "application/json";

  const std::string_view key_values[] = {key};
  AccessRecord r;
  r.time_us = 1700000000000000;
  r.request_id = 7;
  r.listener = has('a') ? "admin" : "data";
  r.client = "127.0.0.1:5000";
  r.key_id = has('n') ? std::string_view() : kKeyId;
  r.method = "POST";
  r.target = s[2];
  r.status = 200;
  r.request = &request;
  r.response = has('r') ? &response : nullptr;
  r.key_values = key_values;

  static AccessRecordWriter writer;
  std::string line;
  writer.append(r, line);
  std::string again;
  writer.append(r, again);
  FUZZ_CHECK(line == again);
  FUZZ_CHECK(line.size() >= 2 && line.front() == '{' && line.back() == '}');
  FUZZ_CHECK(line.find('\n') == std::string::npos);

  static simdjson::dom::parser parser;
  simdjson::dom::object record;
  FUZZ_CHECK(parser.parse(line).get_object().get(record) == simdjson::SUCCESS);
  check_text(string_member(record, "path"), key);
  check_message(record, "request", key);
  if (r.response != nullptr) check_message(record, "response", key);
  return 0;
}
