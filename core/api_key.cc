#include "core/api_key.h"

// SHA256_Init/Update/Final are deprecated in OpenSSL 3 but are its only SHA-256 entry points
// that do not allocate: the one-shot SHA256() and EVP_Digest() fetch the algorithm and allocate
// a context on every call (3 allocations, ~6x slower on a 40-byte key, measured on 3.0).
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include <algorithm>

#include "core/assert.h"
#include "core/binary_codec.h"

namespace keygate {
namespace {

constexpr std::string_view kBase62Digits =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr size_t kGeneratedDigits = 33;  // ceil(192 / log2(62))
constexpr size_t kChecksumDigits = 4;
constexpr size_t kChecksummedChars = kGeneratedKeyChars - kChecksumDigits;
constexpr size_t kKeyIdDigits = 12;
static_assert(kGeneratedKeyPrefix.size() + kGeneratedDigits + kChecksumDigits ==
              kGeneratedKeyChars);

bool is_base62(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// Writes the big-endian number in `bytes` as exactly `width` base62 digits, most significant
// first: zero-padded, and reduced mod 62^width when it does not fit.
void encode_base62(std::span<const uint8_t> bytes, size_t width, char* out) noexcept {
  std::array<uint8_t, 32> n{};
  KEYGATE_ASSERT(bytes.size() <= n.size());
  std::copy(bytes.begin(), bytes.end(), n.begin());
  for (size_t d = width; d-- > 0;) {
    uint32_t remainder = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
      uint32_t acc = (remainder << 8) | n[i];
      n[i] = static_cast<uint8_t>(acc / 62);
      remainder = acc % 62;
    }
    out[d] = kBase62Digits[remainder];
  }
}

// CRC-32 as in zlib/IEEE 802.3 (reflected 0xEDB88320, init and final xor 0xFFFFFFFF). Bitwise:
// it runs once per generated-key check over 36 bytes, so a table is not worth its cache lines.
uint32_t crc32(std::string_view data) noexcept {
  uint32_t crc = 0xFFFFFFFFu;
  for (char c : data) {
    crc ^= static_cast<uint8_t>(c);
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::array<char, kChecksumDigits> checksum_digits(std::string_view checksummed) noexcept {
  uint32_t value = crc32(checksummed) % (62u * 62u * 62u * 62u);
  std::array<char, kChecksumDigits> out{};
  for (size_t d = kChecksumDigits; d-- > 0;) {
    out[d] = kBase62Digits[value % 62];
    value /= 62;
  }
  return out;
}

// Record layout, version 1 (varint = unsigned LEB128, minimal; svarint = zigzag varint;
// str = varint length + bytes):
//   u8 version | str id | 32 bytes digest | str hint | str description |
//   varint apis count | str api... | u8 flags | [str user] | svarint created_at |
//   svarint updated_at | [svarint expires_at] | [32 bytes previous digest |
//   svarint previous_valid_until]
// Nothing may follow. Optional fields are present exactly when their flag bit is set; the
// previous-digest bit came later, so records written before it decode unchanged.
constexpr uint8_t kRecordVersion = 1;
constexpr uint8_t kFlagHasUser = 1u << 0;
constexpr uint8_t kFlagLogRequest = 1u << 1;
constexpr uint8_t kFlagLogResponse = 1u << 2;
constexpr uint8_t kFlagEnabled = 1u << 3;
constexpr uint8_t kFlagHasExpiry = 1u << 4;
constexpr uint8_t kFlagHasPrevious = 1u << 5;
constexpr uint8_t kFlagsKnown = kFlagHasUser | kFlagLogRequest | kFlagLogResponse | kFlagEnabled |
                                kFlagHasExpiry | kFlagHasPrevious;


}  // namespace

KeyDigest digest_key(std::string_view key_value) noexcept {
  KeyDigest digest{};
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, key_value.data(), key_value.size());
  SHA256_Final(digest.data(), &ctx);
  return digest;
}

bool validate_key_value(std::string_view value, std::string_view* reason) noexcept {
  std::string_view why;
  if (value.empty()) {
    why = "is empty";
  } else if (value.size() > kKeyValueBytesMax) {
    why = "is longer than 256 characters";
  } else if (!std::all_of(value.begin(), value.end(),
                          [](char c) { return c >= 0x21 && c <= 0x7e; })) {
    why = "contains a character outside printable ASCII without space (0x21..0x7e)";
  } else if (has_generated_shape(value) && !generated_checksum_ok(value)) {
    why = "looks like a generated key but its checksum is wrong";
  }
  if (why.empty()) return true;
  if (reason != nullptr) *reason = why;
  return false;
}

std::string generate_key_value(std::span<const uint8_t> random) {
  KEYGATE_ASSERT(random.size() == kGeneratedKeyRandomBytes);
  std::string value(kGeneratedKeyChars, '\0');
  std::copy(kGeneratedKeyPrefix.begin(), kGeneratedKeyPrefix.end(), value.begin());
  encode_base62(random, kGeneratedDigits, value.data() + kGeneratedKeyPrefix.size());
  std::array<char, kChecksumDigits> sum =
      checksum_digits(std::string_view(value).substr(0, kChecksummedChars));
  std::copy(sum.begin(), sum.end(), value.begin() + kChecksummedChars);
  return value;
}

bool has_generated_shape(std::string_view value) noexcept {
  return value.size() == kGeneratedKeyChars && value.starts_with(kGeneratedKeyPrefix) &&
         std::all_of(value.begin() + kGeneratedKeyPrefix.size(), value.end(), is_base62);
}

bool generated_checksum_ok(std::string_view value) noexcept {
  if (!has_generated_shape(value)) return false;
  std::array<char, kChecksumDigits> sum = checksum_digits(value.substr(0, kChecksummedChars));
  return value.substr(kChecksummedChars) == std::string_view(sum.data(), sum.size());
}

std::string make_key_id(std::span<const uint8_t> random) {
  KEYGATE_ASSERT(random.size() == kKeyIdRandomBytes);
  std::string id(1 + kKeyIdDigits, 'k');
  encode_base62(random, kKeyIdDigits, id.data() + 1);
  return id;
}

std::string make_key_hint(std::string_view value) {
  const size_t shown = std::min<size_t>(6, value.size() / 4);
  std::string hint(value.substr(0, shown));
  hint += "...";
  return hint;
}

bool KeyRecord::has_api(std::string_view api) const noexcept {
  return std::find(apis.begin(), apis.end(), api) != apis.end();
}

bool KeyRecord::usable_at(int64_t now) const noexcept {
  return enabled && (!expires_at || now < *expires_at);
}

std::string encode_key_record(const KeyRecord& record) {
  KEYGATE_ASSERT(record.apis.size() <= kKeyApisMax);
  std::string out;
  BinaryWriter w(&out);
  w.byte(kRecordVersion);
  w.str(record.id);
  out.append(reinterpret_cast<const char*>(record.digest.data()), record.digest.size());
  w.str(record.hint);
  w.str(record.description);
  w.varint(record.apis.size());
  for (const std::string& api : record.apis) w.str(api);
  uint8_t flags = 0;
  if (record.user) flags |= kFlagHasUser;
  if (record.log_request) flags |= kFlagLogRequest;
  if (record.log_response) flags |= kFlagLogResponse;
  if (record.enabled) flags |= kFlagEnabled;
  if (record.expires_at) flags |= kFlagHasExpiry;
  if (record.previous_digest) flags |= kFlagHasPrevious;
  w.byte(flags);
  if (record.user) w.str(*record.user);
  w.svarint(record.created_at);
  w.svarint(record.updated_at);
  if (record.expires_at) w.svarint(*record.expires_at);
  if (record.previous_digest) {
    out.append(reinterpret_cast<const char*>(record.previous_digest->data()),
               record.previous_digest->size());
    w.svarint(record.previous_valid_until);
  }
  return out;
}

bool decode_key_record(std::string_view bytes, KeyRecord* out) {
  BinaryReader r(bytes);
  KeyRecord record;
  uint8_t version = 0;
  if (!r.byte(&version) || version != kRecordVersion) return false;
  if (!r.str(&record.id) || !r.bytes(record.digest) || !r.str(&record.hint) ||
      !r.str(&record.description)) {
    return false;
  }
  size_t api_count = 0;
  if (!r.count(kKeyApisMax, &api_count)) return false;
  record.apis.resize(api_count);
  for (std::string& api : record.apis) {
    if (!r.str(&api)) return false;
  }
  uint8_t flags = 0;
  if (!r.byte(&flags) || (flags & ~kFlagsKnown) != 0) return false;
  if (flags & kFlagHasUser) {
    record.user.emplace();
    if (!r.str(&*record.user)) return false;
  }
  record.log_request = (flags & kFlagLogRequest) != 0;
  record.log_response = (flags & kFlagLogResponse) != 0;
  record.enabled = (flags & kFlagEnabled) != 0;
  if (!r.svarint(&record.created_at) || !r.svarint(&record.updated_at)) return false;
  if (flags & kFlagHasExpiry) {
    record.expires_at.emplace();
    if (!r.svarint(&*record.expires_at)) return false;
  }
  if (flags & kFlagHasPrevious) {
    record.previous_digest.emplace();
    if (!r.bytes(*record.previous_digest) || !r.svarint(&record.previous_valid_until)) {
      return false;
    }
  }
  if (!r.at_end()) return false;
  *out = std::move(record);
  return true;
}

}  // namespace keygate
