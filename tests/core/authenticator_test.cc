#include "core/authenticator.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/api_key.h"
#include "tests/core/handler_test_support.h"

namespace keygate {
namespace {

using test::FakeContext;
using test::FakeDirectory;
using test::kNow;
using test::TestRequest;

constexpr std::string_view kOldValue = "orders-key-before-rotation";
constexpr std::string_view kNewValue = "orders-key-after-rotation";
constexpr int64_t kGraceEnd = kNow + 60;

KeyRecord rotated_record() {
  KeyRecord r;
  r.id = "krotated0001";
  r.apis = {"orders"};
  r.digest = digest_key(kNewValue);
  r.previous_digest = digest_key(kOldValue);
  r.previous_valid_until = kGraceEnd;
  return r;
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // As the store files a record in its grace: under both digests.
    directory_.file_under(digest_key(kNewValue), rotated_record());
    directory_.file_under(digest_key(kOldValue), rotated_record());
  }

  Authenticator::Result resolve(std::string_view value, int64_t now) {
    TestRequest request("GET", "/orders/1");
    if (!value.empty()) request.api_key(value);
    KeyDigest digest{};
    return authenticator_.resolve(request.view(), now, &digest);
  }

  FakeDirectory directory_;
  Authenticator authenticator_{directory_, 4096};
};

TEST_F(AuthenticatorTest, TheCurrentValueOfARotatedKeyIsFound) {
  for (int64_t now : {kNow, kGraceEnd, kGraceEnd + 1000000}) {
    const Authenticator::Result r = resolve(kNewValue, now);
    ASSERT_EQ(r.outcome, Authenticator::Outcome::kFound) << now;
    EXPECT_EQ(r.key->id, "krotated0001");
    EXPECT_EQ(r.user, nullptr);
  }
}

TEST_F(AuthenticatorTest, ThePreviousValueIsFoundOnlyBeforeTheGraceEnds) {
  const Authenticator::Result during = resolve(kOldValue, kGraceEnd - 1);
  ASSERT_EQ(during.outcome, Authenticator::Outcome::kFound);
  EXPECT_EQ(during.key->id, "krotated0001");

  for (int64_t now : {kGraceEnd, kGraceEnd + 1}) {
    const Authenticator::Result after = resolve(kOldValue, now);
    ASSERT_EQ(after.outcome, Authenticator::Outcome::kRejected) << now;
    EXPECT_EQ(after.rejection.status, 401);
    EXPECT_EQ(after.rejection.code, "invalid_api_key");
    EXPECT_TRUE(after.rejection.challenge);
  }
}

TEST_F(AuthenticatorTest, AFetchedRecordGetsTheSameGraceCheck) {
  directory_.not_cached = true;
  for (int64_t now : {kGraceEnd - 1, kGraceEnd}) {
    TestRequest request("GET", "/orders/1");
    request.api_key(kOldValue);
    KeyDigest digest{};
    const Authenticator::Result r = authenticator_.resolve(request.view(), now, &digest);
    ASSERT_EQ(r.outcome, Authenticator::Outcome::kFetch);
    EXPECT_EQ(digest, digest_key(kOldValue));

    FakeContext ctx;
    Authenticator::PendingLookup lookup;
    authenticator_.fetch(digest, &lookup, ctx);
    EXPECT_EQ(ctx.defer_calls, 1);
    ASSERT_EQ(directory_.fetches.size(), 1u);
    EXPECT_EQ(directory_.fetches[0].out, &lookup.fetch);
    *directory_.fetches[0].out = directory_.answer(digest);
    directory_.fetches.clear();

    const Authenticator::Result done = authenticator_.finish_fetch(lookup, now);
    if (now < kGraceEnd) {
      ASSERT_EQ(done.outcome, Authenticator::Outcome::kFound);
      EXPECT_EQ(done.key, &lookup.fetch.record);
    } else {
      ASSERT_EQ(done.outcome, Authenticator::Outcome::kRejected);
      EXPECT_EQ(done.rejection.status, 401);
    }
  }
}

TEST_F(AuthenticatorTest, AFetchTheStoreCouldNotAnswerIs503WithoutAChallenge) {
  Authenticator::PendingLookup lookup;
  lookup.digest = digest_key(kNewValue);
  lookup.fetch.failed = true;
  const Authenticator::Result r = authenticator_.finish_fetch(lookup, kNow);
  ASSERT_EQ(r.outcome, Authenticator::Outcome::kRejected);
  EXPECT_EQ(r.rejection.status, 503);
  EXPECT_EQ(r.rejection.code, "store_unavailable");
  EXPECT_FALSE(r.rejection.challenge);
}

TEST_F(AuthenticatorTest, ExtractionFailuresAreRejectedBeforeAnyLookup) {
  const Authenticator::Result missing = resolve("", kNow);
  ASSERT_EQ(missing.outcome, Authenticator::Outcome::kRejected);
  EXPECT_EQ(missing.rejection.status, 401);
  EXPECT_EQ(missing.rejection.code, "missing_api_key");
  EXPECT_TRUE(missing.rejection.challenge);

  TestRequest bad_json("POST", "/orders");
  bad_json.body("application/json", "{not json");
  KeyDigest digest{};
  const Authenticator::Result invalid = authenticator_.resolve(bad_json.view(), kNow, &digest);
  ASSERT_EQ(invalid.outcome, Authenticator::Outcome::kRejected);
  EXPECT_EQ(invalid.rejection.status, 400);
  EXPECT_FALSE(invalid.rejection.challenge);

  std::array<uint8_t, kGeneratedKeyRandomBytes> random{};
  std::string mistyped = generate_key_value(random);
  mistyped[10] = mistyped[10] == 'A' ? 'B' : 'A';
  const Authenticator::Result typo = resolve(mistyped, kNow);
  ASSERT_EQ(typo.outcome, Authenticator::Outcome::kRejected);
  EXPECT_EQ(typo.rejection.code, "invalid_api_key");
  EXPECT_EQ(directory_.find_key_calls, 0);
}

TEST_F(AuthenticatorTest, AnUnknownValueIsInvalid) {
  const Authenticator::Result r = resolve("never-issued-value", kNow);
  ASSERT_EQ(r.outcome, Authenticator::Outcome::kRejected);
  EXPECT_EQ(r.rejection.status, 401);
  EXPECT_EQ(r.rejection.code, "invalid_api_key");
  EXPECT_EQ(directory_.find_key_calls, 1);
}

}  // namespace
}  // namespace keygate
