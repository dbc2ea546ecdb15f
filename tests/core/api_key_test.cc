#include "core/api_key.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {
namespace {

std::string hex(const KeyDigest& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : digest) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

std::array<uint8_t, kGeneratedKeyRandomBytes> random_bytes(uint8_t first) {
  std::array<uint8_t, kGeneratedKeyRandomBytes> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(first + i);
  return bytes;
}

bool is_base62(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

std::string_view reason_for(std::string_view value) {
  std::string_view reason = "unset";
  EXPECT_FALSE(validate_key_value(value, &reason)) << value;
  return reason;
}

KeyRecord full_record() {
  KeyRecord r;
  r.id = "k0M9ODf6X0ft3";
  r.digest = digest_key("kg_secret");
  r.hint = "kg_000...";
  r.description = std::string("billing \0 service", 17);
  r.apis = {"orders", "billing", "admin"};
  r.user = "kharnagy@domain.corp";
  r.log_request = true;
  r.log_response = true;
  r.enabled = false;
  r.created_at = 1700000000;
  r.updated_at = -5;
  r.expires_at = INT64_MAX;
  return r;
}

void expect_same(const KeyRecord& a, const KeyRecord& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.digest, b.digest);
  EXPECT_EQ(a.hint, b.hint);
  EXPECT_EQ(a.description, b.description);
  EXPECT_EQ(a.apis, b.apis);
  EXPECT_EQ(a.user, b.user);
  EXPECT_EQ(a.log_request, b.log_request);
  EXPECT_EQ(a.log_response, b.log_response);
  EXPECT_EQ(a.enabled, b.enabled);
  EXPECT_EQ(a.created_at, b.created_at);
  EXPECT_EQ(a.updated_at, b.updated_at);
  EXPECT_EQ(a.expires_at, b.expires_at);
  EXPECT_EQ(a.previous_digest, b.previous_digest);
  EXPECT_EQ(a.previous_valid_until, b.previous_valid_until);
}

// full_record() in a rotation's grace period.
KeyRecord full_record_in_grace() {
  KeyRecord r = full_record();
  r.previous_digest = digest_key("kg_old_secret");
  r.previous_valid_until = 1700000300;
  return r;
}

TEST(ApiKey, DigestIsSha256OfTheValue) {
  EXPECT_EQ(hex(digest_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(digest_key("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(ApiKey, DigestsEqualComparesEveryByte) {
  KeyDigest a = digest_key("abc");
  KeyDigest b = a;
  EXPECT_TRUE(digests_equal(a, b));
  b[31] ^= 1;
  EXPECT_FALSE(digests_equal(a, b));
  b = a;
  b[0] ^= 0x80;
  EXPECT_FALSE(digests_equal(a, b));
  EXPECT_FALSE(digests_equal(digest_key("abc"), digest_key("abd")));
  // Every bit of every byte (each of the four 8-byte words the comparison folds).
  for (size_t byte = 0; byte < a.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      b = a;
      b[byte] ^= static_cast<uint8_t>(1u << bit);
      EXPECT_FALSE(digests_equal(a, b)) << "byte " << byte << " bit " << bit;
      EXPECT_FALSE(digests_equal(b, a)) << "byte " << byte << " bit " << bit;
    }
  }
}

TEST(ApiKey, ValidateAcceptsOneTo256PrintableCharacters) {
  std::string_view reason = "unset";
  EXPECT_TRUE(validate_key_value("x", &reason));
  EXPECT_TRUE(validate_key_value(std::string(256, '~'), &reason));
  EXPECT_TRUE(validate_key_value("!#$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~", &reason));
  EXPECT_EQ(reason, "unset");
  EXPECT_TRUE(validate_key_value("abc", nullptr));
}

TEST(ApiKey, ValidateRejectsEmptyAndTooLongValues) {
  EXPECT_EQ(reason_for(""), "is empty");
  EXPECT_EQ(reason_for(std::string(257, 'a')), "is longer than 256 characters");
  EXPECT_FALSE(validate_key_value("", nullptr));
}

TEST(ApiKey, ValidateRejectsSpaceControlDelAndNonAscii) {
  constexpr std::string_view kWhy =
      "contains a character outside printable ASCII without space (0x21..0x7e)";
  EXPECT_EQ(reason_for("has space"), kWhy);
  EXPECT_EQ(reason_for("tab\there"), kWhy);
  EXPECT_EQ(reason_for(std::string_view("nul\0x", 5)), kWhy);
  EXPECT_EQ(reason_for("del\x7f"), kWhy);
  EXPECT_EQ(reason_for("caf\xc3\xa9"), kWhy);
  EXPECT_EQ(reason_for("\xff"), kWhy);
}

TEST(ApiKey, ValidateRejectsGeneratedShapeWithWrongChecksum) {
  std::string value = generate_key_value(random_bytes(1));
  EXPECT_TRUE(validate_key_value(value, nullptr));
  value.back() = value.back() == 'a' ? 'b' : 'a';
  EXPECT_EQ(reason_for(value), "looks like a generated key but its checksum is wrong");
}

TEST(ApiKey, GeneratedValueHasPrefixFixedLengthAndBase62) {
  for (uint8_t first : std::initializer_list<uint8_t>{0, 1, 77, 200, 255}) {
    std::string value = generate_key_value(random_bytes(first));
    ASSERT_EQ(value.size(), kGeneratedKeyChars);
    EXPECT_TRUE(value.starts_with("kg_"));
    for (size_t i = 3; i < value.size(); ++i) EXPECT_TRUE(is_base62(value[i])) << value;
    EXPECT_TRUE(has_generated_shape(value));
    EXPECT_TRUE(generated_checksum_ok(value));
  }
}

// Golden values fix the format: keys already handed out must keep validating. Computed
// independently as "kg_" + base62(int.from_bytes(r, 'big'), 33 digits) +
// base62(zlib.crc32(first 36 chars) % 62**4, 4 digits).
TEST(ApiKey, GeneratedValueMatchesDocumentedEncoding) {
  std::array<uint8_t, kGeneratedKeyRandomBytes> zeros{};
  EXPECT_EQ(generate_key_value(zeros), "kg_0000000000000000000000000000000005fyq");
  EXPECT_EQ(generate_key_value(random_bytes(0)), "kg_000A7dl5PEW67zZCpFU9uKaHnGgOvQKARlQKr");
  std::array<uint8_t, kGeneratedKeyRandomBytes> ones{};
  ones.fill(0xff);
  EXPECT_EQ(generate_key_value(ones), "kg_2lFA6LboL2xx0ldQH2K1TdSrwuqMMiME3HmPF");
}

TEST(ApiKey, GeneratedValuesDifferForDifferentRandomInput) {
  std::mt19937_64 rng(42);
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::array<uint8_t, kGeneratedKeyRandomBytes> bytes{};
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    seen.insert(generate_key_value(bytes));
  }
  EXPECT_EQ(seen.size(), 1000u);
  // Inputs that differ in one bit only.
  std::array<uint8_t, kGeneratedKeyRandomBytes> a{};
  std::array<uint8_t, kGeneratedKeyRandomBytes> b{};
  b[23] = 1;
  EXPECT_NE(generate_key_value(a), generate_key_value(b));
}

TEST(ApiKey, ChecksumRejectsEveryOneCharacterChange) {
  const std::string value = generate_key_value(random_bytes(9));
  for (size_t i = kGeneratedKeyPrefix.size(); i < value.size(); ++i) {
    std::string changed = value;
    changed[i] = changed[i] == 'Z' ? 'Y' : 'Z';
    EXPECT_TRUE(has_generated_shape(changed));
    EXPECT_FALSE(generated_checksum_ok(changed)) << "position " << i;
  }
}

TEST(ApiKey, GeneratedShapeNeedsPrefixExactLengthAndBase62) {
  const std::string value = generate_key_value(random_bytes(3));
  EXPECT_FALSE(has_generated_shape(value.substr(0, value.size() - 1)));
  EXPECT_FALSE(has_generated_shape(value + "a"));
  EXPECT_FALSE(has_generated_shape("kx_" + value.substr(3)));
  EXPECT_FALSE(has_generated_shape("KG_" + value.substr(3)));
  std::string with_dash = value;
  with_dash[10] = '-';
  EXPECT_FALSE(has_generated_shape(with_dash));
  EXPECT_FALSE(generated_checksum_ok(with_dash));
  EXPECT_FALSE(generated_checksum_ok(""));
  // An operator value of another shape needs no checksum.
  EXPECT_TRUE(validate_key_value(value + "a", nullptr));
  EXPECT_TRUE(validate_key_value("kg_short", nullptr));
}

TEST(ApiKey, KeyIdIsKPlusTwelveBase62Characters) {
  std::array<uint8_t, kKeyIdRandomBytes> bytes{1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::string id = make_key_id(bytes);
  EXPECT_EQ(id, "k0M9ODf6X0ft3");
  std::array<uint8_t, kKeyIdRandomBytes> ones{};
  ones.fill(0xff);
  EXPECT_EQ(make_key_id(ones), "kSkYaaiXSSTS3");  // 2^72 - 1 taken mod 62^12
  std::array<uint8_t, kKeyIdRandomBytes> zeros{};
  EXPECT_EQ(make_key_id(zeros), "k000000000000");
  bytes[8] = 10;
  EXPECT_NE(make_key_id(bytes), id);
}

TEST(ApiKey, HintShowsSixCharactersOfLongValues) {
  EXPECT_EQ(make_key_hint("kg_0000000000000000000000000000000005fyq"), "kg_000...");
  EXPECT_EQ(make_key_hint("abcdefghijklmnopqrstuvwx"), "abcdef...");
}

TEST(ApiKey, HintShowsLittleOfShortValues) {
  // Never more than a quarter of the value: a 12-character secret keeps 9 characters hidden.
  EXPECT_EQ(make_key_hint("abcdefghijklmnopqrstuvw"), "abcde...");
  EXPECT_EQ(make_key_hint("abcdefghijkl"), "abc...");
  EXPECT_EQ(make_key_hint("abcdefghijk"), "ab...");
  EXPECT_EQ(make_key_hint("abcd"), "a...");
  EXPECT_EQ(make_key_hint("abc"), "...");
  EXPECT_EQ(make_key_hint("a"), "...");
  EXPECT_EQ(make_key_hint(""), "...");
}

TEST(ApiKey, HintIsNeverLongerThanNineCharactersNorAQuarterOfTheValue) {
  for (size_t n = 0; n <= kKeyValueBytesMax; ++n) {
    std::string value(n, 'v');
    std::string hint = make_key_hint(value);
    EXPECT_LE(hint.size(), 9u);
    ASSERT_TRUE(hint.ends_with("..."));
    EXPECT_LE((hint.size() - 3) * 4, n) << "length " << n;
  }
}

TEST(ApiKey, HasApiIsExactAndCaseSensitive) {
  KeyRecord r;
  r.apis = {"orders", "admin"};
  EXPECT_TRUE(r.has_api("orders"));
  EXPECT_TRUE(r.has_api("admin"));
  EXPECT_FALSE(r.has_api("Orders"));
  EXPECT_FALSE(r.has_api("order"));
  EXPECT_FALSE(r.has_api("orders2"));
  EXPECT_FALSE(r.has_api(""));
}

TEST(ApiKey, UsableWhenEnabledAndBeforeExpiry) {
  KeyRecord r;
  EXPECT_TRUE(r.usable_at(0));
  EXPECT_TRUE(r.usable_at(INT64_MAX));
  r.expires_at = 1000;
  EXPECT_TRUE(r.usable_at(999));
  EXPECT_FALSE(r.usable_at(1000));
  EXPECT_FALSE(r.usable_at(1001));
  r.expires_at.reset();
  r.enabled = false;
  EXPECT_FALSE(r.usable_at(0));
}

TEST(ApiKey, RecordRoundTripsWithAllFields) {
  KeyRecord in = full_record();
  KeyRecord out;
  ASSERT_TRUE(decode_key_record(encode_key_record(in), &out));
  expect_same(in, out);
}

TEST(ApiKey, RecordRoundTripsWithoutOptionalFields) {
  KeyRecord in;
  in.id = "k1";
  in.created_at = INT64_MIN;
  in.updated_at = 0;
  KeyRecord out = full_record();  // decode must overwrite every field
  ASSERT_TRUE(decode_key_record(encode_key_record(in), &out));
  expect_same(in, out);
  EXPECT_FALSE(out.user.has_value());
  EXPECT_FALSE(out.expires_at.has_value());
  EXPECT_TRUE(out.enabled);
}

TEST(ApiKey, RecordRoundTripsAtTheBounds) {
  KeyRecord in;
  in.description = std::string(kRecordStringBytesMax, 'd');
  in.apis.assign(kKeyApisMax, "api");
  in.user = "";
  in.expires_at = INT64_MIN;
  KeyRecord out;
  ASSERT_TRUE(decode_key_record(encode_key_record(in), &out));
  expect_same(in, out);
}

TEST(ApiKey, DecodeRejectsEveryTruncation) {
  const std::string bytes = encode_key_record(full_record());
  KeyRecord out;
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(decode_key_record(std::string_view(bytes).substr(0, n), &out)) << n;
  }
}

TEST(ApiKey, DecodeRejectsTrailingBytesUnknownVersionAndUnknownFlags) {
  const std::string bytes = encode_key_record(KeyRecord{});
  KeyRecord out;
  ASSERT_TRUE(decode_key_record(bytes, &out));
  EXPECT_FALSE(decode_key_record(bytes + '\0', &out));
  std::string other_version = bytes;
  other_version[0] = 2;
  EXPECT_FALSE(decode_key_record(other_version, &out));
  // Default record: version, id "", 32 digest bytes, hint "", description "", 0 apis, flags.
  std::string unknown_flag = bytes;
  ASSERT_EQ(unknown_flag[37], 0x08);  // only "enabled"
  unknown_flag[37] = static_cast<char>(0x08 | 0x80);
  EXPECT_FALSE(decode_key_record(unknown_flag, &out));
}

TEST(ApiKey, RecordRoundTripsWithPreviousDigest) {
  KeyRecord in = full_record_in_grace();
  KeyRecord out;
  ASSERT_TRUE(decode_key_record(encode_key_record(in), &out));
  expect_same(in, out);
  in.previous_valid_until = INT64_MIN;
  in.expires_at.reset();
  in.user.reset();
  ASSERT_TRUE(decode_key_record(encode_key_record(in), &out));
  expect_same(in, out);
}

TEST(ApiKey, RecordWithoutPreviousDigestDecodesWithoutOne) {
  KeyRecord out = full_record_in_grace();  // decode must clear the previous digest
  ASSERT_TRUE(decode_key_record(encode_key_record(full_record()), &out));
  EXPECT_FALSE(out.previous_digest.has_value());
  EXPECT_EQ(out.previous_valid_until, 0);
}

TEST(ApiKey, DecodeReadsRecordsWrittenBeforePreviousDigests) {
  // Bytes of a record as the codec wrote them before the previous-digest flag existed:
  // version 1, id "k1", digest of "v", hint "", description "", apis {"a"}, flags enabled |
  // expiry, created_at 1, updated_at 2, expires_at 3.
  std::string bytes("\x01\x02k1", 4);
  const KeyDigest digest = digest_key("v");
  bytes.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  bytes += std::string("\x00\x00\x01\x01" "a" "\x18\x02\x04\x06", 9);
  KeyRecord out;
  ASSERT_TRUE(decode_key_record(bytes, &out));
  EXPECT_EQ(out.id, "k1");
  EXPECT_EQ(out.digest, digest);
  EXPECT_EQ(out.apis, std::vector<std::string>{"a"});
  EXPECT_TRUE(out.enabled);
  EXPECT_EQ(out.created_at, 1);
  EXPECT_EQ(out.updated_at, 2);
  EXPECT_EQ(out.expires_at, 3);
  EXPECT_FALSE(out.previous_digest.has_value());
}

TEST(ApiKey, DecodeRejectsEveryTruncationOfARecordWithPreviousDigest) {
  const std::string bytes = encode_key_record(full_record_in_grace());
  KeyRecord out;
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(decode_key_record(std::string_view(bytes).substr(0, n), &out)) << n;
  }
}

TEST(ApiKey, DecodeLeavesTheOutputAloneOnFailure) {
  KeyRecord out = full_record();
  EXPECT_FALSE(decode_key_record("\x01garbage", &out));
  expect_same(out, full_record());
}

TEST(ApiKey, DecodeRejectsOversizedCountsAndLengths) {
  KeyRecord out;
  std::string prefix("\x01\x00", 2);     // version, empty id
  prefix += std::string(32, '\0');       // digest
  prefix += std::string("\x00\x00", 2);  // hint, description
  // 1025 apis (varint 0x81 0x08) with plenty of bytes behind it.
  EXPECT_FALSE(decode_key_record(prefix + "\x81\x08" + std::string(4000, '\0'), &out));
  // An id claiming 64 KiB + 1 bytes (varint 0x81 0x80 0x04).
  std::string long_id("\x01\x81\x80\x04", 4);
  EXPECT_FALSE(decode_key_record(long_id + std::string(70000, 'a'), &out));
  // A length beyond 64 bits and an overlong varint.
  EXPECT_FALSE(
      decode_key_record(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11), &out));
  EXPECT_FALSE(decode_key_record(std::string("\x01\x80\x00", 3) + std::string(40, '\0'), &out));
}

TEST(ApiKey, DecodeOfRandomBytesNeverCrashes) {
  std::mt19937_64 rng(7);
  const std::string valid = encode_key_record(full_record());
  KeyRecord out;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes;
    if (i % 2 == 0) {
      bytes.resize(rng() % 200);
      for (char& c : bytes) c = static_cast<char>(rng());
      if (!bytes.empty()) bytes[0] = 1;  // get past the version byte
    } else {
      bytes = valid;  // a few flipped bytes in a valid record
      for (int k = 0; k < 3; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    (void)decode_key_record(bytes, &out);
  }
}

TEST(ApiKeyDeathTest, EncodingBeyondTheBoundsIsAProgrammerError) {
  KeyRecord r;
  r.apis.assign(kKeyApisMax + 1, "api");
  EXPECT_DEATH(encode_key_record(r), "assertion failed");
}

}  // namespace
}  // namespace keygate
