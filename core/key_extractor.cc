#include "core/key_extractor.h"

// The error-code API only: nothing on the request path may throw.
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <cstring>
#include <limits>

#include "core/api_key.h"
#include "core/assert.h"
#include "core/http_request.h"

namespace keygate {

namespace ondemand = simdjson::ondemand;

static_assert(KeyExtractor::kJsonPaddingBytes == simdjson::SIMDJSON_PADDING,
              "kJsonPaddingBytes must match the simdjson the build links");
// A longer value could never match a stored key, so it is rejected before any lookup.
static_assert(kExtractedKeyBytesMax == kKeyValueBytesMax);

namespace {

constexpr std::string_view kHeaderName = "X-ApiKey";
constexpr std::string_view kParamName = kKeyParamName;
constexpr std::string_view kMemberName = kKeyJsonMemberName;
constexpr std::string_view kFormMediaType = "application/x-www-form-urlencoded";
constexpr std::string_view kJsonMediaType = "application/json";

bool is_ows(char c) noexcept { return c == ' ' || c == '\t'; }

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

// The media type of a Content-Type value: everything before the first ';', without OWS.
std::string_view media_type(std::string_view content_type) noexcept {
  const size_t semicolon = content_type.find(';');
  if (semicolon != std::string_view::npos) content_type = content_type.substr(0, semicolon);
  return trim_ows(content_type);
}

bool needs_form_decoding(std::string_view s) noexcept {
  for (char c : s) {
    if (c == '%' || c == '+') return true;
  }
  return false;
}

enum class DecodeStatus : uint8_t { kOk, kMalformed, kTooLong };

// application/x-www-form-urlencoded decoding ('+' is a space, %XX a byte) into `out`.
DecodeStatus form_decode(std::string_view in, std::array<char, kExtractedKeyBytesMax>& out,
                         size_t* out_bytes) noexcept {
  size_t n = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (in.size() - i < 3) return DecodeStatus::kMalformed;
      const int hi = hex_value(in[i + 1]);
      const int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return DecodeStatus::kMalformed;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (n == out.size()) return DecodeStatus::kTooLong;
    out[n++] = c;
  }
  *out_bytes = n;
  return DecodeStatus::kOk;
}

enum class MemberName : uint8_t { kOther, kKey, kEscaped };

// Compares a raw member name (the bytes after its opening quote) with "API_Key" without
// unescaping it: most names differ in their first byte, and only a name with a backslash
// before the first difference could still unescape to "API_Key". Stage 1 guarantees the name
// is closed by an unescaped quote, so the walk stays inside it.
// True when the rest of a raw JSON string (up to its closing quote) holds an escape. The
// first backslash answers, so an escaped quote never needs telling from the closing one.
bool raw_string_has_escape(const char* raw) noexcept {
  for (size_t i = 0;; ++i) {
    if (raw[i] == '\\') return true;
    if (raw[i] == '"') return false;
  }
}

// kEscaped for every name with an escape, also one that is plainly not API_Key: its escapes
// must be checked (a body with an invalid escape anywhere does not parse).
MemberName classify_member_name(const char* raw) noexcept {
  for (size_t i = 0;; ++i) {
    const char c = raw[i];
    if (c == '\\') return MemberName::kEscaped;
    if (i == kMemberName.size()) {
      if (c == '"') return MemberName::kKey;
      return raw_string_has_escape(raw + i) ? MemberName::kEscaped : MemberName::kOther;
    }
    if (c != kMemberName[i]) {
      return raw_string_has_escape(raw + i) ? MemberName::kEscaped : MemberName::kOther;
    }
  }
}

// The JSON number grammar (RFC 8259 section 6) over a raw token, trailing whitespace allowed:
// checked by hand because converting may fail on a well-formed number (1e999, or an integer
// beyond 64 bits) that is an invalid key, not an unparsable body.
bool is_json_number(std::string_view token) noexcept {
  size_t i = 0;
  const auto digits = [&]() noexcept {
    const size_t start = i;
    while (i < token.size() && token[i] >= '0' && token[i] <= '9') ++i;
    return i > start;
  };
  if (i < token.size() && token[i] == '-') ++i;
  if (i < token.size() && token[i] == '0') {
    ++i;
  } else if (!digits()) {
    return false;
  }
  if (i < token.size() && token[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < token.size() && (token[i] == 'e' || token[i] == 'E')) {
    ++i;
    if (i < token.size() && (token[i] == '+' || token[i] == '-')) ++i;
    if (!digits()) return false;
  }
  for (; i < token.size(); ++i) {
    if (token[i] != ' ' && token[i] != '\t' && token[i] != '\n' && token[i] != '\r') return false;
  }
  return true;
}

}  // namespace

// Decodes on the fly without a buffer; a malformed name is simply some other name.
bool is_key_param_name(std::string_view name) noexcept {
  if (name == kParamName) return true;
  if (name.size() > kParamName.size() * 3) return false;
  size_t n = 0;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (name.size() - i < 3) return false;
      const int hi = hex_value(name[i + 1]);
      const int lo = hex_value(name[i + 2]);
      if (hi < 0 || lo < 0) return false;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (n == kParamName.size() || kParamName[n] != c) return false;
    ++n;
  }
  return n == kParamName.size();
}

// Folds candidate values into one key, or into the first problem that rules one out.
class KeyExtractor::Collector {
 public:
  explicit Collector(KeyExtractor& owner) noexcept : owner_(owner) {}

  // A value that needs no decoding (header value, JSON string without escapes, or already
  // unescaped into the parser's buffer).
  void offer(std::string_view value, KeySource source) noexcept { offer(value, source, -1); }

  // A query or form value, still percent-encoded.
  void offer_encoded(std::string_view raw, KeySource source) noexcept {
    if (raw.empty() || invalid_) return;
    if (!needs_form_decoding(raw)) {
      offer(raw, source, -1);
      return;
    }
    // Decode into whichever slot does not hold the key found so far.
    const int slot = key_slot_ == 0 ? 1 : 0;
    std::array<char, kExtractedKeyBytesMax>& out = owner_.scratch_[static_cast<size_t>(slot)];
    size_t n = 0;
    if (form_decode(raw, out, &n) != DecodeStatus::kOk) {
      invalid_ = true;
      return;
    }
    offer(std::string_view(out.data(), n), source, slot);
  }

  // Every `key` parameter of a query string or form body.
  void offer_params(std::string_view params, KeySource source) noexcept {
    while (!params.empty() && !invalid_) {
      const size_t amp = params.find('&');
      const std::string_view pair = params.substr(0, amp);
      params = amp == std::string_view::npos ? std::string_view() : params.substr(amp + 1);
      const size_t eq = pair.find('=');
      // A parameter without '=' ("?key") has an empty value: absent.
      if (eq == std::string_view::npos) continue;
      if (is_key_param_name(pair.substr(0, eq))) offer_encoded(pair.substr(eq + 1), source);
    }
  }

  void mark_invalid() noexcept { invalid_ = true; }
  // The first value offered so far (ExtractResult::seen), for an outcome decided elsewhere.
  std::string_view first() const noexcept { return key_; }

  ExtractResult result() const noexcept {
    if (invalid_) return {KeyOutcome::kInvalidKey, KeySource::kNone, {}, key_};
    if (ambiguous_) return {KeyOutcome::kAmbiguous, KeySource::kNone, {}, key_};
    if (key_.empty()) return {KeyOutcome::kMissing, KeySource::kNone, {}, {}};
    return {KeyOutcome::kFound, source_, key_, key_};
  }

 private:
  void offer(std::string_view value, KeySource source, int slot) noexcept {
    if (value.empty()) return;
    if (value.size() > kExtractedKeyBytesMax) {
      invalid_ = true;
      return;
    }
    if (key_.empty()) {
      key_ = value;
      source_ = source;
      key_slot_ = slot;
    } else if (value != key_) {
      ambiguous_ = true;
    }
  }

  KeyExtractor& owner_;
  std::string_view key_;
  KeySource source_ = KeySource::kNone;
  int key_slot_ = -1;  // scratch slot key_ points into, -1 when it points into the request
  bool invalid_ = false;
  bool ambiguous_ = false;
};

struct KeyExtractor::Json {
  ondemand::parser parser;
  // Body copy plus kJsonPaddingBytes, for callers that cannot promise readable padding.
  std::unique_ptr<char[]> padded;
};

KeyExtractor::KeyExtractor(size_t body_inspect_bytes_max)
    : body_inspect_bytes_max_(body_inspect_bytes_max), json_(std::make_unique<Json>()) {
  KEYGATE_ASSERT(body_inspect_bytes_max < std::numeric_limits<uint32_t>::max());
  // Sized once for the largest body we inspect so extract() never allocates. The buffers are
  // not initialized, so their pages cost memory only once a body of that size arrives.
  json_->padded.reset(new char[body_inspect_bytes_max + kJsonPaddingBytes]);
  if (body_inspect_bytes_max > 0) {
    const simdjson::error_code error = json_->parser.allocate(body_inspect_bytes_max);
    KEYGATE_ASSERT(error == simdjson::SUCCESS);
  }
}

KeyExtractor::~KeyExtractor() = default;

ExtractResult KeyExtractor::extract(const HttpRequest& request, size_t readable_padding) noexcept {
  Collector collector(*this);
  for (const HttpHeader& h : request.headers) {
    if (equals_ignore_case(h.name, kHeaderName)) {
      collector.offer(trim_ows(h.value), KeySource::kHeader);
    }
  }
  collector.offer_params(request.query, KeySource::kQuery);
  const ExtractResult from_head = collector.result();
  if (from_head.outcome != KeyOutcome::kMissing ||
      (request.body.empty() && request.body_bytes_dropped == 0)) {
    return from_head;
  }

  const std::string_view type = media_type(request.header("Content-Type"));
  const bool form = equals_ignore_case(type, kFormMediaType);
  const bool json = !form && equals_ignore_case(type, kJsonMediaType);
  if (!form && !json) return from_head;
  // A body read only in part (the rest dropped) is judged by its whole length.
  if (request.body.size() + request.body_bytes_dropped > body_inspect_bytes_max_ ||
      request.body_bytes_dropped != 0) {
    return {KeyOutcome::kBodyTooLarge, KeySource::kNone, {}, {}};
  }
  if (json) return extract_json(request.body, readable_padding);
  collector.offer_params(request.body, KeySource::kForm);
  return collector.result();
}

bool KeyExtractor::body_may_carry_key(const HttpRequest& request) noexcept {
  const std::string_view type = media_type(request.header("Content-Type"));
  return equals_ignore_case(type, kFormMediaType) || equals_ignore_case(type, kJsonMediaType);
}

ExtractResult KeyExtractor::extract_json(std::string_view body, size_t readable_padding) noexcept {
  constexpr ExtractResult kInvalidBody{KeyOutcome::kInvalidBody, KeySource::kNone, {}, {}};
  const char* input = body.data();
  if (readable_padding < kJsonPaddingBytes) {
    char* copy = json_->padded.get();
    std::memcpy(copy, body.data(), body.size());
    // simdjson only reads the padding, but defined bytes keep memory checkers quiet.
    std::memset(copy + body.size(), ' ', kJsonPaddingBytes);
    input = copy;
  }
  // Views into the input are reported as views into the body, even when parsing a copy.
  const auto to_body = [&](std::string_view in_input) noexcept {
    return std::string_view(body.data() + (in_input.data() - input), in_input.size());
  };

  ondemand::document doc;
  if (json_->parser.iterate(input, body.size(), body.size() + kJsonPaddingBytes).get(doc) !=
      simdjson::SUCCESS) {
    return kInvalidBody;
  }
  ondemand::object root;
  if (doc.get_object().get(root) != simdjson::SUCCESS) return kInvalidBody;

  Collector collector(*this);
  // A body that stops parsing after an API_Key member still carried that value: it goes with
  // the answer for the access log to scrub (ExtractResult::seen), never to a lookup.
  const auto invalid_body = [&collector]() noexcept {
    return ExtractResult{KeyOutcome::kInvalidBody, KeySource::kNone, {}, collector.first()};
  };
  for (auto member : root) {
    ondemand::field field;
    if (std::move(member).get(field) != simdjson::SUCCESS) return invalid_body();

    const MemberName name = classify_member_name(field.key().raw());
    bool is_key = name == MemberName::kKey;
    if (name == MemberName::kEscaped) {
      std::string_view unescaped;
      if (field.unescaped_key().get(unescaped) != simdjson::SUCCESS) return invalid_body();
      is_key = unescaped == kMemberName;
    }
    // On-Demand's skip of an unread value takes a first token of ':' or ',', or a string
    // followed by ':', for an opened container and runs to the next closing bracket. That can
    // swallow the root's closing brace and let the outcome depend on the bytes past the body
    // ({"a"::1}}, {"a":"b":1]}). So the first byte of every value is checked, and strings are
    // consumed (without unescaping) rather than skipped.
    ondemand::value& value = field.value();
    ondemand::json_type type;
    if (value.type().get(type) != simdjson::SUCCESS) return invalid_body();
    if (!is_key) {
      if (type == ondemand::json_type::string) {
        // A string with escapes is unescaped (into the parser's reused buffer) only to check
        // them: an invalid one ("\q", "\uZZZZ", a lone surrogate) means the body does not parse.
        const std::string_view token = value.raw_json_token();
        if (std::memchr(token.data(), '\\', token.size()) != nullptr) {
          std::string_view ignored;
          if (value.get_string().get(ignored) != simdjson::SUCCESS) return invalid_body();
        } else {
          ondemand::raw_json_string ignored;
          if (value.get_raw_json_string().get(ignored) != simdjson::SUCCESS) return invalid_body();
        }
      }
      continue;
    }
    switch (type) {
      case ondemand::json_type::string:
        break;
      case ondemand::json_type::number:
        if (!is_json_number(value.raw_json_token())) return invalid_body();
        collector.mark_invalid();
        continue;
      case ondemand::json_type::boolean: {
        bool b = false;
        if (value.get_bool().get(b) != simdjson::SUCCESS) return invalid_body();
        collector.mark_invalid();
        continue;
      }
      case ondemand::json_type::null: {
        bool is_null = false;
        if (value.is_null().get(is_null) != simdjson::SUCCESS || !is_null) return invalid_body();
        collector.mark_invalid();
        continue;
      }
      case ondemand::json_type::object:
      case ondemand::json_type::array:
        collector.mark_invalid();
        continue;
    }

    // The raw token runs from the opening quote to the next token, whitespace included.
    std::string_view token = value.raw_json_token();
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t' || token.back() == '\n' ||
                              token.back() == '\r')) {
      token.remove_suffix(1);
    }
    if (token.size() < 2 || token.front() != '"' || token.back() != '"') return invalid_body();
    const std::string_view content = token.substr(1, token.size() - 2);
    if (std::memchr(content.data(), '\\', content.size()) == nullptr) {
      ondemand::raw_json_string consumed;
      if (value.get_raw_json_string().get(consumed) != simdjson::SUCCESS) return invalid_body();
      collector.offer(to_body(content), KeySource::kJson);
    } else {
      // Unescaped into the parser's string buffer, which the extractor owns and reuses.
      std::string_view unescaped;
      if (value.get_string().get(unescaped) != simdjson::SUCCESS) return invalid_body();
      collector.offer(unescaped, KeySource::kJson);
    }
  }
  // The walk ended at the root's closing brace; anything after it is not JSON.
  const char* trailing = nullptr;
  if (doc.current_location().get(trailing) == simdjson::SUCCESS) return invalid_body();
  return collector.result();
}

KeyRejection key_rejection(KeyOutcome outcome) noexcept {
  switch (outcome) {
    case KeyOutcome::kFound:
      return {};
    case KeyOutcome::kMissing:
      return {401, "missing_api_key", "an API key is required (X-ApiKey header)"};
    case KeyOutcome::kInvalidKey:
      return {401, "invalid_api_key", "the API key is not valid"};
    case KeyOutcome::kAmbiguous:
      return {401, "ambiguous_api_key", "the request carries more than one different API key"};
    case KeyOutcome::kInvalidBody:
      return {400, "invalid_body", "the JSON request body does not parse"};
    case KeyOutcome::kBodyTooLarge:
      return {413, "body_too_large", "request body too large to look for an API key in"};
  }
  return {500, "internal_error", "unknown key outcome"};
}

std::string_view key_source_name(KeySource source) noexcept {
  switch (source) {
    case KeySource::kNone:
      return "none";
    case KeySource::kHeader:
      return "header";
    case KeySource::kQuery:
      return "query";
    case KeySource::kForm:
      return "form";
    case KeySource::kJson:
      return "json";
  }
  return "none";
}

}  // namespace keygate
