// KeyExtractor: finds the API key a request carries and says where it came from, or why the
// request has none.
//
// Worker-local: one extractor per worker, reused for every request; not thread-safe. It owns its
// scratch (two percent-decoding buffers, a simdjson parser and a padded copy buffer for JSON
// bodies), all sized in the constructor, so extract() does not allocate, never throws and makes
// no syscalls. A found key is a view that may point into that scratch: it stays valid until the
// next extract() call on the same extractor (or as long as the request, whichever ends first).
//
// The rules, in order of sources:
//   1. the `X-ApiKey` header (name case-insensitive, value trimmed of SP/HTAB), any content type;
//   2. the `key` query parameter (name and value percent-decoded once, '+' is a space), any
//      content type;
//   3. the `key` field of an `application/x-www-form-urlencoded` body (decoded like the query);
//   4. the `API_Key` member of the root object of an `application/json` body (names compared
//      after JSON unescaping, so "API\u005fKey" counts; members of nested objects do not).
// Media types are compared case-insensitively and may carry parameters ("; charset=UTF-8");
// parameter, field and member names are case-sensitive ("KEY", "API_KEY" are not carriers).
// Any other body (multipart, text/plain, ...) is not a source. Header and query are always both
// examined; the body only when they carried no key, and only when it is non-empty.
//
// An empty value counts as absent (so "" next to "abc" is not ambiguous). Two different
// non-empty values among the examined sources are ambiguous; identical repeats are fine.
// Precedence when several problems meet: kInvalidBody > kInvalidKey > kAmbiguous > kFound.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "core/http_request.h"

namespace keygate {

enum class KeyOutcome : uint8_t {
  kFound,         // result.key and result.source are set
  kMissing,       // 401 missing_api_key: no source carried a non-empty key
  kInvalidKey,    // 401 invalid_api_key: malformed percent-escape ("%G1", "%4"), a value longer
                  // than kExtractedKeyBytesMax after decoding, or a non-string JSON API_Key
  kAmbiguous,     // 401 ambiguous_api_key: two different keys (repeats, header vs query, ...)
  kInvalidBody,   // 400 invalid_body: a JSON body that had to be inspected does not parse, or
                  // its root is not an object
  kBodyTooLarge,  // 413 body_too_large: a form/JSON body that had to be inspected is over the
                  // extractor's body_inspect_bytes_max, or was read only in part
                  // (HttpRequest::body_bytes_dropped)
};

enum class KeySource : uint8_t { kNone, kHeader, kQuery, kForm, kJson };

// Longest key accepted from any source (after decoding); longer is kInvalidKey. The same bound
// as kKeyValueBytesMax for stored key values, so a longer value could never match.
constexpr size_t kExtractedKeyBytesMax = 256;

struct ExtractResult {
  KeyOutcome outcome = KeyOutcome::kMissing;
  KeySource source = KeySource::kNone;  // with kFound only; kHeader when header and query agree
  // With kFound only: 1..kExtractedKeyBytesMax bytes. A view into the request (header value,
  // query or body) when no decoding was needed, else into the extractor's scratch.
  std::string_view key;
  // A key value the request carried, whatever the outcome: `key` with kFound; with a rejection,
  // the first non-empty value a source offered before it (the header's, when a query value
  // conflicts with it or is malformed), or empty. For the access log, which scrubs it from the
  // record by value: a refused request may carry its key elsewhere too. Never looked up.
  std::string_view seen;
};

// What to send for a rejection: the status and the static code/message for the JSON error body
// (ResponseWriter::error). kFound has no rejection: status 0 and empty strings.
struct KeyRejection {
  int status = 0;
  std::string_view code;
  std::string_view message;
};
KeyRejection key_rejection(KeyOutcome outcome) noexcept;

// "header", "query", "form", "json" or "none"; static, for logs.
std::string_view key_source_name(KeySource source) noexcept;

// The carriers' names: the query parameter / form field (after percent-decoding) and the root
// JSON member (after unescaping). Routes that read a query or a JSON body of their own (the admin
// API) skip them: they carry the key the request was authenticated with.
inline constexpr std::string_view kKeyParamName = "key";
inline constexpr std::string_view kKeyJsonMemberName = "API_Key";

// True when a raw (still percent-encoded) query or form parameter name decodes to "key" ("%XX"
// is a byte, '+' a space; a malformed escape makes it some other name): "key", "k%65y" and
// "%6B%65%79" are; "keys", "akey", "KEY" are not. The extractor's rule, shared with forwarding
// (key parameters stripped) and the access-log redaction.
bool is_key_param_name(std::string_view raw_name) noexcept;

class KeyExtractor {
 public:
  static constexpr size_t kBodyInspectBytesMaxDefault = size_t{1} << 20;
  // Bytes simdjson reads past the end of its input (simdjson::SIMDJSON_PADDING).
  static constexpr size_t kJsonPaddingBytes = 64;

  // Allocates the JSON parser and the padded copy buffer for bodies of up to
  // `body_inspect_bytes_max` bytes (about 7 bytes of address space per body byte; pages are
  // touched only as bodies use them). Must be below 4 GiB (simdjson's bound).
  explicit KeyExtractor(size_t body_inspect_bytes_max = kBodyInspectBytesMaxDefault);
  ~KeyExtractor();
  KeyExtractor(const KeyExtractor&) = delete;
  KeyExtractor& operator=(const KeyExtractor&) = delete;

  // Resolves the key of `request` by the rules above. `readable_padding` is how many bytes the
  // caller guarantees readable after request.body's end: with at least kJsonPaddingBytes a JSON
  // body is parsed in place, otherwise it is first copied into the extractor's padded buffer.
  // The result is the same either way. Does not allocate.
  //
  // JSON bodies are walked with simdjson On-Demand over the root object's members only: the
  // non-string values of other members (and an API_Key that is an object or an array) are
  // skipped, not parsed, so a malformed scalar or a mismatched bracket kind inside them
  // ({"x":[1}, ...}) goes unnoticed. Everything else (UTF-8, every root member's name and
  // string value with its escapes, the root object's structure, trailing content, the API_Key
  // values, numbers by their grammar) is checked: a failure is kInvalidBody.
  ExtractResult extract(const HttpRequest& request, size_t readable_padding = 0) noexcept;

  // True when request's body would be searched for a key (rule 3 or 4) if the header and the
  // query carried none: its Content-Type is form or JSON. Looks at the headers only, so it can
  // answer before the body is read. Does not allocate.
  static bool body_may_carry_key(const HttpRequest& request) noexcept;

  size_t body_inspect_bytes_max() const noexcept { return body_inspect_bytes_max_; }

 private:
  struct Json;  // simdjson parser + padded copy buffer; keeps simdjson out of this header
  class Collector;

  ExtractResult extract_json(std::string_view body, size_t readable_padding) noexcept;

  size_t body_inspect_bytes_max_;
  std::unique_ptr<Json> json_;
  // Percent-decoding targets: one may hold the key found so far while the other decodes the
  // next candidate for comparison.
  std::array<std::array<char, kExtractedKeyBytesMax>, 2> scratch_{};
};

}  // namespace keygate
