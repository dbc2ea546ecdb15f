#include "core/service_notify.h"

#include <gtest/gtest.h>

#include <string>

namespace keygate {
namespace {

TEST(ServiceNotify, ReadyNamesTheMainPidAndTheStatus) {
  EXPECT_EQ(notify_ready_message(4242, "listening data=127.0.0.1:8080"),
            "READY=1\nMAINPID=4242\nSTATUS=listening data=127.0.0.1:8080");
}

TEST(ServiceNotify, ReloadingCarriesTheMonotonicTimeItBegan) {
  EXPECT_EQ(notify_reloading_message(123456789, "reloading /etc/keygate/keygate.toml"),
            "RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading /etc/keygate/keygate.toml");
  EXPECT_EQ(notify_reloaded_message("2 APIs (generation 2)"),
            "READY=1\nSTATUS=2 APIs (generation 2)");
  EXPECT_EQ(notify_stopping_message("draining"), "STOPPING=1\nSTATUS=draining");
}

// A newline in the status (a refusal's reason quoting a file name, say) would end STATUS= and
// start an assignment of its own, e.g. a READY=1 the reload never sent.
TEST(ServiceNotify, AStatusStaysOneAssignmentWhateverItsText) {
  EXPECT_EQ(notify_status_text("refused\nREADY=1\r\tx\x7f"), "refused READY=1  x ");
  EXPECT_EQ(notify_stopping_message("a\nSTOPPING=1"), "STOPPING=1\nSTATUS=a STOPPING=1");
}

// systemd drops a notification longer than its 4096-byte buffer whole: the status is cut well
// below that, on a UTF-8 character boundary, and says it was cut.
TEST(ServiceNotify, ALongStatusIsCutAtACharacterBoundary) {
  const std::string fits(kNotifyStatusBytesMax, 'a');
  EXPECT_EQ(notify_status_text(fits), fits);
  std::string text(kNotifyStatusBytesMax - 4, 'a');
  for (int i = 0; i < 100; ++i) text += "\xc3\xa9";  // é, two bytes
  const std::string cut = notify_status_text(text);
  EXPECT_LE(cut.size(), kNotifyStatusBytesMax);
  ASSERT_GE(cut.size(), 4u);
  EXPECT_EQ(cut.substr(cut.size() - 3), "...");
  const std::string kept = cut.substr(0, cut.size() - 3);
  EXPECT_EQ(kept, std::string(kNotifyStatusBytesMax - 4, 'a'));  // not half of an é
  EXPECT_LE(notify_ready_message(4242, std::string(100000, 'x')).size(), 4096u);
}

TEST(ServiceNotify, APathIsTakenAsItIs) {
  std::string sun_path;
  std::string error;
  ASSERT_TRUE(notify_socket_address("/run/systemd/notify", &sun_path, &error)) << error;
  EXPECT_EQ(sun_path, "/run/systemd/notify");
}

TEST(ServiceNotify, AnAbstractNameStartsWithANulByte) {
  std::string sun_path;
  std::string error;
  ASSERT_TRUE(notify_socket_address("@keygate/notify", &sun_path, &error)) << error;
  EXPECT_EQ(sun_path, std::string("\0keygate/notify", 15));
  // The longest abstract name fills sun_path (no terminating NUL): 107 bytes after the '@'.
  ASSERT_TRUE(notify_socket_address("@" + std::string(kNotifySocketPathBytesMax - 1, 'n'),
                                    &sun_path, &error))
      << error;
  EXPECT_EQ(sun_path.size(), kNotifySocketPathBytesMax);
}

TEST(ServiceNotify, AnythingButAnAbsolutePathOrAnAbstractNameIsRefused) {
  std::string sun_path;
  std::string error;
  for (const std::string& value :
       {std::string(), std::string("run/notify"), std::string("vsock:2:1234"),
        std::string("/run/a\0b", 8),
        // A path must leave room for its terminating NUL; a name must fit.
        "/" + std::string(kNotifySocketPathBytesMax - 1, 'p'),
        "@" + std::string(kNotifySocketPathBytesMax, 'n')}) {
    error.clear();
    EXPECT_FALSE(notify_socket_address(value, &sun_path, &error)) << value;
    EXPECT_FALSE(error.empty()) << value;
  }
  EXPECT_TRUE(notify_socket_address("/" + std::string(kNotifySocketPathBytesMax - 2, 'p'),
                                    &sun_path, &error));
}

TEST(ServiceNotify, WatchdogIsOneAssignment) { EXPECT_EQ(notify_watchdog_message(), "WATCHDOG=1"); }

// As sd_watchdog_enabled(3): WATCHDOG_USEC alone, or with WATCHDOG_PID naming this process.
TEST(ServiceNotify, TheWatchdogTimeoutComesFromWatchdogUsecForThisProcessOnly) {
  uint64_t usec = 1;
  std::string error;
  EXPECT_TRUE(notify_watchdog_usec(nullptr, nullptr, 42, &usec, &error));
  EXPECT_EQ(usec, 0u);  // unset: no watchdog
  EXPECT_TRUE(notify_watchdog_usec(nullptr, "42", 42, &usec, &error));
  EXPECT_EQ(usec, 0u);
  EXPECT_TRUE(notify_watchdog_usec("30000000", nullptr, 42, &usec, &error));
  EXPECT_EQ(usec, 30000000u);
  EXPECT_TRUE(notify_watchdog_usec("200000", "42", 42, &usec, &error));
  EXPECT_EQ(usec, 200000u);
  // Meant for another process (keygate started by a wrapper that kept them): not ours.
  EXPECT_TRUE(notify_watchdog_usec("200000", "43", 42, &usec, &error));
  EXPECT_EQ(usec, 0u);
  EXPECT_TRUE(error.empty()) << error;
}

TEST(ServiceNotify, AWatchdogValueThatIsNoPositiveNumberIsRefusedWithTheReason) {
  uint64_t usec = 0;
  for (const char* bad : {"", "0", "-1", "1s", " 5", "30000000 ", "99999999999999999999999"}) {
    std::string error;
    EXPECT_FALSE(notify_watchdog_usec(bad, nullptr, 42, &usec, &error)) << bad;
    EXPECT_NE(error.find("WATCHDOG_USEC"), std::string::npos) << bad;
  }
  for (const char* bad : {"", "0", "x42", "42 "}) {
    std::string error;
    EXPECT_FALSE(notify_watchdog_usec("200000", bad, 42, &usec, &error)) << bad;
    EXPECT_NE(error.find("WATCHDOG_PID"), std::string::npos) << bad;
  }
}

}  // namespace
}  // namespace keygate
