#include "core/worker_watch.h"

#include <gtest/gtest.h>

#include <vector>

namespace keygate {
namespace {

using Transitions = std::vector<WorkerWatch::Transition>;

WorkerWatch::Options options(uint32_t stall_timeout_ms, uint64_t watchdog_interval_ms = 0) {
  WorkerWatch::Options o;
  o.stall_timeout_ms = stall_timeout_ms;
  o.watchdog_interval_ms = watchdog_interval_ms;
  return o;
}

TEST(WorkerWatch, LoopsYoungerThanTheTimeoutAreNotStalled) {
  WorkerWatch watch(2, options(1000));
  Transitions t;
  const std::vector<WorkerLoop> loops = {{100, false}, {1000, false}};  // at the timeout: fine
  EXPECT_FALSE(watch.poll(0, loops, false, &t));
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(watch.stalled(), 0u);
  EXPECT_EQ(watch.stalls_total(), 0u);
}

// A reload's worker_stall_timeout_ms: the next poll judges by it, and polls come at its pace.
TEST(WorkerWatch, AStallTimeoutSetLaterJudgesTheNextPoll) {
  WorkerWatch watch(1, options(1000));
  Transitions t;
  watch.poll(5000, std::vector<WorkerLoop>{{600, false}}, false, &t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(watch.next_poll_ms(), 5000 + 250);
  watch.set_stall_timeout_ms(500);
  watch.poll(5250, std::vector<WorkerLoop>{{850, false}}, false, &t);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_TRUE(t[0].stalled);
  EXPECT_EQ(watch.next_poll_ms(), 5250 + 125);
  // Raised past the stall's age: it ends at the next poll.
  t.clear();
  watch.set_stall_timeout_ms(10000);
  watch.poll(5375, std::vector<WorkerLoop>{{975, false}}, false, &t);
  EXPECT_EQ(watch.stalled(), 0u);
}

TEST(WorkerWatch, AWorkerPastTheTimeoutStallsOnceAndIsCountedOnce) {
  WorkerWatch watch(3, options(1000));
  Transitions t;
  ASSERT_FALSE(watch.poll(5000, std::vector<WorkerLoop>{{10, false}, {1001, false}, {0, false}},
                          false, &t));
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].worker, 1u);
  EXPECT_TRUE(t[0].stalled);
  EXPECT_FALSE(t[0].exited);
  EXPECT_EQ(t[0].ms, 1001u);
  EXPECT_EQ(watch.stalled(), 1u);
  EXPECT_TRUE(watch.stalled(1));
  EXPECT_FALSE(watch.stalled(0));
  // Still stalled a poll later: no new transition, not counted again.
  t.clear();
  watch.poll(5250, std::vector<WorkerLoop>{{20, false}, {1251, false}, {5, false}}, false, &t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(watch.stalled(), 1u);
  EXPECT_EQ(watch.stalls_total(), 1u);
}

TEST(WorkerWatch, AStalledWorkerThatPassesAgainEndsItsStallWithItsLength) {
  WorkerWatch watch(1, options(1000));
  Transitions t;
  // Last pass at 3000 (age 2000 at 5000) ...
  watch.poll(5000, std::vector<WorkerLoop>{{2000, false}}, false, &t);
  ASSERT_EQ(t.size(), 1u);
  t.clear();
  // ... first pass after it at 8000 (age 50 at 8050): it did not pass for 5000 ms.
  watch.poll(8050, std::vector<WorkerLoop>{{50, false}}, false, &t);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].worker, 0u);
  EXPECT_FALSE(t[0].stalled);
  EXPECT_EQ(t[0].ms, 5000u);
  EXPECT_EQ(watch.stalled(), 0u);
  EXPECT_EQ(watch.stalls_total(), 1u);
  // A second stall counts again.
  t.clear();
  watch.poll(10000, std::vector<WorkerLoop>{{1500, false}}, false, &t);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_TRUE(t[0].stalled);
  EXPECT_EQ(watch.stalls_total(), 2u);
}

TEST(WorkerWatch, AnExitedWorkerIsStalledOutsideADrainAndDoneAtOne) {
  WorkerWatch watch(2, options(1000));
  Transitions t;
  // Its ring failed: it serves nothing, and its age grows past the timeout.
  watch.poll(0, std::vector<WorkerLoop>{{1200, true}, {0, false}}, false, &t);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_TRUE(t[0].stalled);
  EXPECT_TRUE(t[0].exited);
  // At a drain an exited worker has finished: its stall ends, and none begins for another.
  t.clear();
  watch.poll(500, std::vector<WorkerLoop>{{1700, true}, {5000, true}}, true, &t);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].worker, 0u);
  EXPECT_FALSE(t[0].stalled);
  EXPECT_TRUE(t[0].exited);
  EXPECT_EQ(t[0].ms, 1700u);  // from its last pass until now
  EXPECT_EQ(watch.stalled(), 0u);
}

TEST(WorkerWatch, AWorkerStillRunningAtADrainCanStall) {
  WorkerWatch watch(2, options(1000));
  Transitions t;
  watch.poll(0, std::vector<WorkerLoop>{{3000, false}, {0, true}}, true, &t);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].worker, 0u);
  EXPECT_TRUE(t[0].stalled);
}

TEST(WorkerWatch, WithoutAWatchdogNothingIsEverSent) {
  WorkerWatch watch(1, options(1000, 0));
  Transitions t;
  for (int64_t now = 0; now < 10000; now += 100) {
    EXPECT_FALSE(watch.poll(now, std::vector<WorkerLoop>{{0, false}}, false, &t));
  }
}

TEST(WorkerWatch, SendsAtOnceThenEveryIntervalWhileNoWorkerIsStalled) {
  WorkerWatch watch(1, options(1000, 100));
  Transitions t;
  const std::vector<WorkerLoop> fine = {{10, false}};
  EXPECT_TRUE(watch.poll(1000, fine, false, &t));
  EXPECT_EQ(watch.next_poll_ms(), 1100);
  EXPECT_FALSE(watch.poll(1050, fine, false, &t));  // early (a signal woke the caller)
  EXPECT_EQ(watch.next_poll_ms(), 1100);
  EXPECT_TRUE(watch.poll(1100, fine, false, &t));
  EXPECT_TRUE(watch.poll(1230, fine, false, &t));  // late: sent, and counted from now
  EXPECT_EQ(watch.next_poll_ms(), 1330);
}

TEST(WorkerWatch, SendsNothingWhileAWorkerIsStalledAndAtOnceWhenItPassesAgain) {
  WorkerWatch watch(2, options(1000, 100));
  Transitions t;
  EXPECT_TRUE(watch.poll(0, std::vector<WorkerLoop>{{0, false}, {0, false}}, false, &t));
  const std::vector<WorkerLoop> wedged = {{0, false}, {1100, false}};
  for (int64_t now = 100; now <= 3000; now += 100) {
    EXPECT_FALSE(watch.poll(now, wedged, false, &t)) << now;
    // Polled at the check interval meanwhile, to notice the end of the stall.
    EXPECT_EQ(watch.next_poll_ms(), now + WorkerWatch::check_interval_ms(1000)) << now;
  }
  EXPECT_TRUE(watch.poll(3050, std::vector<WorkerLoop>{{0, false}, {20, false}}, false, &t));
  EXPECT_EQ(watch.next_poll_ms(), 3150);
}

TEST(WorkerWatch, PollsOftenEnoughForTheTimeoutAndTheWatchdog) {
  EXPECT_EQ(WorkerWatch::check_interval_ms(5000), 1000u);
  EXPECT_EQ(WorkerWatch::check_interval_ms(2000), 500u);
  EXPECT_EQ(WorkerWatch::check_interval_ms(kWorkerStallTimeoutMsMin), 62u);
  EXPECT_EQ(WorkerWatch::check_interval_ms(kWorkerStallTimeoutMsMax), 1000u);
  EXPECT_EQ(WorkerWatch::check_interval_ms(20), 10u);
  WorkerWatch watch(1, options(5000, 15000));
  Transitions t;
  EXPECT_TRUE(watch.poll(0, std::vector<WorkerLoop>{{0, false}}, false, &t));
  EXPECT_EQ(watch.next_poll_ms(), 1000);  // the check comes before the next WATCHDOG=1
  WorkerWatch quick(1, options(5000, 100));
  EXPECT_TRUE(quick.poll(0, std::vector<WorkerLoop>{{0, false}}, false, &t));
  EXPECT_EQ(quick.next_poll_ms(), 100);  // the WATCHDOG=1 comes before the check
}

}  // namespace
}  // namespace keygate
