// SendRate: the minimum send rate's account ([limits] send_rate_min_bytes_per_s).
#include "core/send_rate.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace keygate {
namespace {

constexpr uint32_t kRate = 1000;   // bytes per second
constexpr uint32_t kSlackMs = 2000;

// Feeds `sends` completions of `waited_ms` each, at `bytes_per_s` for the time each waited;
// returns how many were judged keeping up before the first that was not (`sends` if none).
int sends_kept_up(SendRate* rate, int sends, uint64_t waited_ms, uint64_t bytes_per_s) {
  for (int i = 0; i < sends; ++i) {
    if (!rate->keeps_up(kRate, kSlackMs, waited_ms, bytes_per_s * waited_ms / 1000)) return i;
  }
  return sends;
}

TEST(SendRate, AClientAtTheMinimumRateIsNeverTooSlow) {
  SendRate rate;
  rate.start(kRate, kSlackMs);
  EXPECT_EQ(sends_kept_up(&rate, 100000, 100, kRate), 100000);
  EXPECT_EQ(rate.credit(), int64_t{kRate} * kSlackMs);
}

TEST(SendRate, AClientAtHalfTheRateIsCutAfterTwiceTheSlackOfWaiting) {
  SendRate rate;
  rate.start(kRate, kSlackMs);
  // Each 100 ms send falls 50 ms behind: the 2 s of slack last 40 sends, the 41st is judged.
  EXPECT_EQ(sends_kept_up(&rate, 1000, 100, kRate / 2), 40);
}

TEST(SendRate, AClientThatTakesNothingIsCutOnceItsWaitingPassesTheSlack) {
  SendRate rate;
  rate.start(kRate, kSlackMs);
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, kSlackMs, 0));  // exactly the slack: still in
  EXPECT_FALSE(rate.keeps_up(kRate, kSlackMs, 1, 0));
}

TEST(SendRate, AStallWithinTheSlackIsForgivenOnceTheClientReadsOn) {
  SendRate rate;
  rate.start(kRate, kSlackMs);
  // 1.5 s with nothing taken (0.5 s of the slack left), then a send that waited 1.5 s more
  // for 3 KB (3 s earned at the minimum): the slack is whole again.
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 1500, 0));
  EXPECT_EQ(rate.credit(), int64_t{kRate} * 500);
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 1500, 3000));
  EXPECT_EQ(rate.credit(), int64_t{kRate} * kSlackMs);
  EXPECT_EQ(sends_kept_up(&rate, 1000, 100, kRate), 1000);
}

TEST(SendRate, AFastStartBuysNoMoreThanTheSlack) {
  SendRate rate;
  rate.start(kRate, kSlackMs);
  // 100 MB taken at once (the socket buffer had room) are worth 100,000 s at the minimum,
  // but the credit stops at the slack: a client that then stops reading is cut after it.
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 0, 100'000'000));
  EXPECT_EQ(rate.credit(), int64_t{kRate} * kSlackMs);
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 1000, 0));
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 1000, 0));
  EXPECT_FALSE(rate.keeps_up(kRate, kSlackMs, 1, 0));
}

TEST(SendRate, SendsThatDoNotWaitAreNeverTooSlow) {
  SendRate rate;
  rate.start(kRate, kSlackMs);
  EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 1900, 0));
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(rate.keeps_up(kRate, kSlackMs, 0, 0));
}

TEST(SendRate, ZeroMeansNoMinimum) {
  SendRate rate;
  rate.start(0, kSlackMs);
  EXPECT_TRUE(rate.keeps_up(0, kSlackMs, UINT64_MAX, 0));
  EXPECT_TRUE(rate.keeps_up(0, kSlackMs, 1'000'000, 1));
}

TEST(SendRate, ExtremeValuesDoNotOverflow) {
  SendRate rate;
  rate.start(UINT32_MAX, UINT32_MAX);
  EXPECT_TRUE(rate.keeps_up(UINT32_MAX, UINT32_MAX, 0, UINT64_MAX));
  EXPECT_GT(rate.credit(), 0);
  // The longest wait the account takes, at the highest rate: far behind, not wrapped around.
  EXPECT_TRUE(rate.keeps_up(UINT32_MAX, UINT32_MAX, UINT32_MAX, 0));
  EXPECT_FALSE(rate.keeps_up(UINT32_MAX, UINT32_MAX, UINT64_MAX, 0));
  EXPECT_LT(rate.credit(), 0);
  rate.start(1, 0);  // no slack at all: the first send that waits longer than its bytes earn
  EXPECT_TRUE(rate.keeps_up(1, 0, 1000, 1));
  EXPECT_FALSE(rate.keeps_up(1, 0, 1001, 1));
}

}  // namespace
}  // namespace keygate
