// API keys: the key record, key values (operator-set or generated), digests and encoding.
//
// Pure logic, no I/O. Randomness and time come in as arguments (core makes no syscalls): the
// caller passes bytes from getrandom and the current Unix time. The plaintext of a key is never
// stored: records hold the SHA-256 digest and a short display hint. All functions are
// thread-safe (no shared state).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/binary_codec.h"

namespace keygate {

using KeyDigest = std::array<uint8_t, 32>;  // SHA-256 of the key value

// SHA-256 of a key value. Does not allocate.
KeyDigest digest_key(std::string_view key_value) noexcept;

// Constant-time comparison of two digests: the XOR of each 8-byte word is ORed into one
// accumulator with no branch on the data; the empty asm makes the accumulator opaque after each
// word, so the compiler cannot turn the loop into an early-exit comparison. Inline and
// straight-line on purpose: the key cache calls it on a slot that has just missed every cache
// level, and a call into a byte loop (OpenSSL's CRYPTO_memcmp) there kept the CPU from
// overlapping that miss with other work (bench/key_cache_bench; docs/benchmarks.md).
inline bool digests_equal(const KeyDigest& a, const KeyDigest& b) noexcept {
  uint64_t diff = 0;
  for (size_t i = 0; i < a.size(); i += sizeof(uint64_t)) {
    uint64_t x;
    uint64_t y;
    std::memcpy(&x, a.data() + i, sizeof x);
    std::memcpy(&y, b.data() + i, sizeof y);
    diff |= x ^ y;
    __asm__("" : "+r"(diff));
  }
  return diff == 0;
}

constexpr size_t kKeyValueBytesMax = 256;
constexpr std::string_view kGeneratedKeyPrefix = "kg_";
// Random bytes a generated key needs (>= 128 bits of entropy).
constexpr size_t kGeneratedKeyRandomBytes = 24;
// Length of a generated value: prefix + 33 base62 digits (24 bytes) + 4 checksum digits.
constexpr size_t kGeneratedKeyChars = 40;
// Random bytes a key id needs.
constexpr size_t kKeyIdRandomBytes = 9;

// Operator-set values: 1..256 printable ASCII characters (0x21..0x7e). A value with the
// generated shape must also carry a valid checksum, so an operator value can never be mistaken
// for a mistyped generated key. Returns false with a static reason in `*reason` (when not
// null) when invalid. Does not allocate.
bool validate_key_value(std::string_view value, std::string_view* reason) noexcept;

// A generated value: "kg_" + 33 base62 digits of `random` (big-endian, zero-padded) + 4 base62
// digits of CRC-32(the first 36 characters) mod 62^4. The checksum catches typos, it is not a
// secret. `random` must hold kGeneratedKeyRandomBytes bytes.
std::string generate_key_value(std::span<const uint8_t> random);

// True when `value` looks generated: the "kg_" prefix, kGeneratedKeyChars long, base62 after
// the prefix. Such a value with a bad checksum is rejected before any lookup.
bool has_generated_shape(std::string_view value) noexcept;
// Has the generated shape and its checksum matches. Does not allocate.
bool generated_checksum_ok(std::string_view value) noexcept;

// A short, stable, public key id ("k" + 12 base62 chars) from kKeyIdRandomBytes random bytes.
// 12 base62 digits hold ~71.4 of the 72 bits (the value is taken mod 62^12): ids must be unique,
// not secret, and the store rejects a colliding id.
std::string make_key_id(std::span<const uint8_t> random);

// The display hint: the first 6 characters followed by "..." (for a generated key, "kg_" and
// three digits). Values shorter than 24 characters show a quarter of their length (rounded
// down: 12 characters show 3, fewer than 4 none), so a hint never gives away more than a
// quarter of a key. At most 9 characters.
std::string make_key_hint(std::string_view value);

// Bounds a record must respect to be encoded (and that decode enforces on bytes from disk).
// The admin API validates against them; encoding a record beyond them is a programmer error.
constexpr size_t kKeyApisMax = 1024;
constexpr size_t kRecordStringBytesMax = kCodecStringBytesMax;  // each string field and list element

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
  // Rotation with a grace period: the digest the key had before its last rotation, accepted
  // (by the same record) until previous_valid_until (Unix seconds, exclusive). The store also
  // indexes the record under it. previous_valid_until means nothing without previous_digest.
  std::optional<KeyDigest> previous_digest;
  int64_t previous_valid_until = 0;

  // Exact, case-sensitive membership of `api` in `apis`.
  bool has_api(std::string_view api) const noexcept;
  // Enabled and not expired at `now` (Unix seconds); a key is expired from expires_at on.
  bool usable_at(int64_t now) const noexcept;
};

// Stable binary encoding of a record for storage (versioned; see api_key.cc). decode returns
// false on malformed, truncated, trailing or unknown-version input and never crashes on
// arbitrary bytes; `*out` is only written on success.
std::string encode_key_record(const KeyRecord& record);
bool decode_key_record(std::string_view bytes, KeyRecord* out);

}  // namespace keygate
