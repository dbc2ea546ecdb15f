// libFuzzer target for keygate::KeyExtractor.
//
// Input format (so seeds stay readable and mutations stay meaningful):
//   <query string>\n
//   <Header-Name>:<value>\n      zero or more; the value is trimmed like the HTTP parser does
//   \n
//   <body>                       the rest, any bytes
// Each input runs through two extractors (the default 1 MiB inspect limit and a 128-byte one
// so 413 is reachable), each with no readable padding (the body is copied) and with the body in
// a buffer that has kJsonPaddingBytes readable after it (parsed in place), that padding filled
// with each of a few JSON-significant bytes in turn. Checked:
//   - the result against a slow reference implementation of the rules written from the issue:
//     std::string decoding for header/query/form, and simdjson's DOM parser (which validates
//     everything) for JSON bodies; when the DOM parser rejects the body, On-Demand may still
//     find a key (it skips other members' values unparsed), so only the shape is checked then;
//   - padded and unpadded runs agree, and a repeated run agrees (scratch reuse);
//   - kFound has a 1..256-byte key and a source; a header key is a view into a header value;
//   - every other outcome maps to a 4xx rejection.
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.

// The error-code API, as in core/key_extractor.cc (the two meet in one binary).
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/http_request.h"
#include "core/key_extractor.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using keygate::equals_ignore_case;
using keygate::ExtractResult;
using keygate::HttpHeader;
using keygate::HttpRequest;
using keygate::KeyExtractor;
using keygate::KeyOutcome;
using keygate::KeySource;

constexpr size_t kSmallLimitBytes = 128;
constexpr size_t kHeaderCountMax = 64;

struct Got {
  KeyOutcome outcome = KeyOutcome::kMissing;
  KeySource source = KeySource::kNone;
  std::string key;

  bool operator==(const Got&) const = default;
};

// --- reference implementation --------------------------------------------------------------------

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool ref_decode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out->push_back(' ');
    } else if (in[i] == '%') {
      if (in.size() - i < 3) return false;
      const std::string hex(in.substr(i + 1, 2));
      if (hex.size() != 2 || !std::isxdigit(static_cast<unsigned char>(hex[0])) ||
          !std::isxdigit(static_cast<unsigned char>(hex[1]))) {
        return false;
      }
      out->push_back(static_cast<char>(std::strtol(hex.c_str(), nullptr, 16)));
      i += 2;
    } else {
      out->push_back(in[i]);
    }
  }
  return true;
}

struct RefCollector {
  Got key;
  bool invalid = false;
  bool ambiguous = false;

  void offer(const std::string& value, KeySource source) {
    if (value.empty()) return;
    if (value.size() > keygate::kExtractedKeyBytesMax) {
      invalid = true;
    } else if (key.key.empty()) {
      key = Got{KeyOutcome::kFound, source, value};
    } else if (key.key != value) {
      ambiguous = true;
    }
  }

  void offer_params(std::string_view params, KeySource source) {
    size_t start = 0;
    while (start <= params.size()) {
      size_t end = params.find('&', start);
      if (end == std::string_view::npos) end = params.size();
      const std::string_view pair = params.substr(start, end - start);
      start = end + 1;
      const size_t eq = pair.find('=');
      if (eq == std::string_view::npos) continue;
      std::string name;
      if (!ref_decode(pair.substr(0, eq), &name) || name != "key") continue;
      std::string value;
      if (!ref_decode(pair.substr(eq + 1), &value)) {
        invalid = true;
        continue;
      }
      offer(value, source);
    }
  }

  Got result() const {
    if (invalid) return Got{KeyOutcome::kInvalidKey, KeySource::kNone, ""};
    if (ambiguous) return Got{KeyOutcome::kAmbiguous, KeySource::kNone, ""};
    return key;  // kMissing when nothing was offered
  }
};

std::string lower_media_type(std::string_view content_type) {
  std::string type(trim(content_type.substr(0, content_type.find(';'))));
  for (char& c : type) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return type;
}

// The expected result, or false when the reference cannot tell (JSON the DOM parser rejects).
bool reference(const HttpRequest& r, size_t limit, Got* expected) {
  RefCollector c;
  for (const HttpHeader& h : r.headers) {
    if (equals_ignore_case(h.name, "x-apikey"))
      c.offer(std::string(trim(h.value)), KeySource::kHeader);
  }
  c.offer_params(r.query, KeySource::kQuery);
  *expected = c.result();
  if (expected->outcome != KeyOutcome::kMissing || r.body.empty()) return true;

  const std::string type = lower_media_type(r.header("content-type"));
  const bool form = type == "application/x-www-form-urlencoded";
  const bool json = type == "application/json";
  if (!form && !json) return true;
  if (r.body.size() > limit) {
    *expected = Got{KeyOutcome::kBodyTooLarge, KeySource::kNone, ""};
    return true;
  }
  if (form) {
    c.offer_params(r.body, KeySource::kForm);
    *expected = c.result();
    return true;
  }
  static simdjson::dom::parser dom;
  simdjson::dom::element root;
  if (dom.parse(r.body.data(), r.body.size(), true).get(root) != simdjson::SUCCESS) return false;
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    *expected = Got{KeyOutcome::kInvalidBody, KeySource::kNone, ""};
    return true;
  }
  for (simdjson::dom::key_value_pair member : object) {
    if (member.key != "API_Key") continue;
    std::string_view value;
    if (member.value.get_string().get(value) == simdjson::SUCCESS) {
      c.offer(std::string(value), KeySource::kJson);
    } else {
      c.invalid = true;
    }
  }
  *expected = c.result();
  return true;
}

// --- running the extractor -----------------------------------------------------------------------

bool points_into(std::string_view inner, std::string_view outer) {
  return !inner.empty() && inner.data() >= outer.data() &&
         inner.data() + inner.size() <= outer.data() + outer.size();
}

Got check(const HttpRequest& r, const ExtractResult& result) {
  const keygate::KeyRejection rejection = keygate::key_rejection(result.outcome);
  if (result.outcome == KeyOutcome::kFound) {
    FUZZ_CHECK(!result.key.empty());
    FUZZ_CHECK(result.key.size() <= keygate::kExtractedKeyBytesMax);
    FUZZ_CHECK(result.source != KeySource::kNone);
    FUZZ_CHECK(rejection.status == 0);
    if (result.source == KeySource::kHeader) {
      bool inside = false;
      for (const HttpHeader& h : r.headers) inside = inside || points_into(result.key, h.value);
      FUZZ_CHECK(inside);
    }
  } else {
    FUZZ_CHECK(result.key.empty());
    FUZZ_CHECK(result.source == KeySource::kNone);
    FUZZ_CHECK(rejection.status >= 400 && rejection.status < 500);
    FUZZ_CHECK(!rejection.code.empty());
  }
  return Got{result.outcome, result.source, std::string(result.key)};
}

void run(KeyExtractor& extractor, HttpRequest r, std::string_view body) {
  r.body = body;
  const Got unpadded = check(r, extractor.extract(r, 0));
  const Got again = check(r, extractor.extract(r, 0));
  FUZZ_CHECK(unpadded == again);

  // What lies past the body must not matter, even bytes that look like JSON: simdjson peeks
  // at the first padding byte when a malformed document makes it run past the end.
  std::vector<char> padded(body.size() + KeyExtractor::kJsonPaddingBytes);
  if (!body.empty()) std::memcpy(padded.data(), body.data(), body.size());
  r.body = std::string_view(padded.data(), body.size());
  for (const char fill : {'}', ']', ',', ':', '"', '{', '1', ' ', '\0'}) {
    std::memset(padded.data() + body.size(), fill, KeyExtractor::kJsonPaddingBytes);
    const Got in_place = check(r, extractor.extract(r, KeyExtractor::kJsonPaddingBytes));
    FUZZ_CHECK(unpadded == in_place);
  }

  r.body = body;
  Got expected;
  if (reference(r, extractor.body_inspect_bytes_max(), &expected)) {
    if (!(unpadded == expected)) {
      std::fprintf(stderr, "extractor: outcome %d source %d key [%s]\n",
                   static_cast<int>(unpadded.outcome), static_cast<int>(unpadded.source),
                   unpadded.key.c_str());
      std::fprintf(stderr, "reference: outcome %d source %d key [%s]\n",
                   static_cast<int>(expected.outcome), static_cast<int>(expected.source),
                   expected.key.c_str());
      FUZZ_FAIL("extractor disagrees with the reference");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static KeyExtractor default_extractor;
  static KeyExtractor small_extractor(kSmallLimitBytes);

  std::string_view rest(reinterpret_cast<const char*>(data), size);
  const auto next_line = [&rest]() {
    const size_t nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    return line;
  };

  HttpRequest request;
  request.method = "POST";
  request.query = next_line();
  std::vector<HttpHeader> headers;
  while (!rest.empty()) {
    const std::string_view line = next_line();
    if (line.empty()) break;
    if (headers.size() == kHeaderCountMax) continue;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      headers.push_back({line, {}});
    } else {
      headers.push_back({line.substr(0, colon), trim(line.substr(colon + 1))});
    }
  }
  request.headers = headers;
  // The body in its own exact-size heap block, so a read past its end is caught by ASan.
  const std::unique_ptr<char[]> body(new char[rest.size()]);
  if (!rest.empty()) std::memcpy(body.get(), rest.data(), rest.size());
  const std::string_view body_view(body.get(), rest.size());

  run(default_extractor, request, body_view);
  run(small_extractor, request, body_view);
  return 0;
}
