// ReasonCounters (net/worker.h): the per-worker table of answers by reason code that
// GET /admin/stats reads from another thread.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <thread>

#include "net/worker.h"

namespace keygate::net {
namespace {

std::map<std::string, uint64_t> snapshot(const ReasonCounters& counters) {
  std::map<std::string, uint64_t> out;
  counters.for_each([&](std::string_view name, uint64_t count) {
    EXPECT_TRUE(out.emplace(std::string(name), count).second) << "listed twice: " << name;
  });
  return out;
}

TEST(ReasonCounters, CountsEachCodeAndIgnoresTheEmptyOne) {
  ReasonCounters counters;
  EXPECT_TRUE(snapshot(counters).empty());
  counters.bump("invalid_api_key");
  counters.bump("");
  counters.bump("no_route");
  counters.bump("invalid_api_key");
  const std::map<std::string, uint64_t> want = {{"invalid_api_key", 2}, {"no_route", 1}};
  EXPECT_EQ(snapshot(counters), want);
}

TEST(ReasonCounters, CodesBeyondTheTableOrTooLongCountAsOther) {
  ReasonCounters counters;
  for (size_t i = 0; i < ReasonCounters::kSlots + 3; ++i) counters.bump("code_" + std::to_string(i));
  counters.bump(std::string(ReasonCounters::kNameMax + 1, 'x'));
  counters.bump(std::string(ReasonCounters::kNameMax, 'y'));  // fits, but the table is full
  counters.bump("code_0");                                     // still has its slot
  counters.bump("other");                                      // never a slot of its own
  const std::map<std::string, uint64_t> got = snapshot(counters);
  EXPECT_EQ(got.size(), ReasonCounters::kSlots + 1);
  EXPECT_EQ(got.at("code_0"), 2u);
  EXPECT_EQ(got.at("code_63"), 1u);
  EXPECT_EQ(got.count("code_64"), 0u);
  EXPECT_EQ(got.at("other"), 3u + 1 + 1 + 1);
}

TEST(ReasonCounters, ANameOfTheLongestLengthKeepsItsSlot) {
  ReasonCounters counters;
  const std::string longest(ReasonCounters::kNameMax, 'z');
  counters.bump(longest);
  counters.bump(longest);
  const std::map<std::string, uint64_t> want = {{longest, 2}};
  EXPECT_EQ(snapshot(counters), want);
}

// A reader on another thread sees every name whole and counts that never go down (run under
// TSan/ASan this also checks the publication order).
TEST(ReasonCounters, AReaderOnAnotherThreadSeesWholeNamesAndGrowingCounts) {
  ReasonCounters counters;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    std::map<std::string, uint64_t> last;
    while (!done.load()) {
      counters.for_each([&](std::string_view name, uint64_t count) {
        ASSERT_TRUE(name == "other" || name.starts_with("reason_")) << name;
        uint64_t& seen = last[std::string(name)];
        ASSERT_GE(count, seen) << name;
        seen = count;
      });
    }
  });
  for (int round = 0; round < 2000; ++round) counters.bump("reason_" + std::to_string(round % 80));
  done.store(true);
  reader.join();
  const std::map<std::string, uint64_t> got = snapshot(counters);
  EXPECT_EQ(got.at("reason_0"), 25u);
  EXPECT_EQ(got.at("other"), 16u * 25);
}

}  // namespace
}  // namespace keygate::net
