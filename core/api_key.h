// API keys: the key record, key values (operator-set or generated), digests and encoding.
//
// Pure logic, no I/O. Randomness and time come in as arguments (core makes no syscalls): the
// caller passes bytes from getrandom and the current Unix time. The plaintext of a key is never
// stored: records hold the SHA-256 digest and a short display hint.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {

using KeyDigest = std::array<uint8_t, 32>;  // SHA-256 of the key value

// SHA-256 of a key value. Does not allocate.
KeyDigest digest_key(std::string_view key_value) noexcept;

// Constant-time comparison of two digests.
bool digests_equal(const KeyDigest& a, const KeyDigest& b) noexcept;

constexpr size_t kKeyValueBytesMax = 256;
constexpr std::string_view kGeneratedKeyPrefix = "kg_";
// Random bytes a generated key needs (>= 128 bits of entropy).
constexpr size_t kGeneratedKeyRandomBytes = 24;
// Random bytes a key id needs.
constexpr size_t kKeyIdRandomBytes = 9;

// Operator-set values: 1..256 printable ASCII characters (0x21..0x7e). Returns false with a
// static reason when invalid.
bool validate_key_value(std::string_view value, std::string_view* reason) noexcept;

// A generated value: "kg_" + base62(random) + base62 checksum (4 chars). `random` must hold
// kGeneratedKeyRandomBytes bytes.
std::string generate_key_value(std::span<const uint8_t> random);

// True when `value` looks generated (prefix and length) — such a value with a bad checksum is
// rejected before any lookup.
bool has_generated_shape(std::string_view value) noexcept;
// For a value with the generated shape: does its checksum match? Does not allocate.
bool generated_checksum_ok(std::string_view value) noexcept;

// A short, stable, public key id ("k" + 12 base62 chars) from kKeyIdRandomBytes random bytes.
std::string make_key_id(std::span<const uint8_t> random);

// The display hint: the first few characters of the value followed by "...".
std::string make_key_hint(std::string_view value);

struct KeyRecord {
  std::string id;
  KeyDigest digest{};
  std::string hint;
  std::string description;
  std::vector<std::string> apis;  // API names; "admin" means full control of the instance
  std::optional<std::string> user;
  bool log_request = false;
  bool log_response = false;
  bool enabled = true;
  int64_t created_at = 0;  // Unix seconds
  int64_t updated_at = 0;
  std::optional<int64_t> expires_at;

  bool has_api(std::string_view api) const noexcept;
  // Enabled and not expired at `now` (Unix seconds).
  bool usable_at(int64_t now) const noexcept;
};

// Stable binary encoding of a record for storage (versioned; see api_key.cc). decode returns
// false on malformed or unknown-version input, never crashes on arbitrary bytes.
std::string encode_key_record(const KeyRecord& record);
bool decode_key_record(std::string_view bytes, KeyRecord* out);

}  // namespace keygate
