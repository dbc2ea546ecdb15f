#include "core/socket_activation.h"

#include <gtest/gtest.h>

namespace keygate {
namespace {

constexpr uint64_t kSelf = 4242;

ListenFds parse_ok(const char* pid, const char* fds, const char* names) {
  ListenFds out;
  std::string error;
  EXPECT_TRUE(parse_listen_fds(pid, fds, names, kSelf, &out, &error)) << error;
  return out;
}

std::string parse_error(const char* pid, const char* fds, const char* names) {
  ListenFds out;
  std::string error;
  EXPECT_FALSE(parse_listen_fds(pid, fds, names, kSelf, &out, &error));
  return error;
}

TEST(ListenFds, NothingSetIsNoSocketActivation) {
  const ListenFds got = parse_ok(nullptr, nullptr, nullptr);
  EXPECT_EQ(got.outcome, ListenFds::Outcome::kNone);
  EXPECT_EQ(got.count, 0u);
}

TEST(ListenFds, OwnPidWithTwoNamedSocketsGivesBoth) {
  const ListenFds got = parse_ok("4242", "2", "data:admin");
  ASSERT_EQ(got.outcome, ListenFds::Outcome::kSockets);
  EXPECT_EQ(got.count, 2u);
  EXPECT_EQ(got.names, (std::vector<std::string>{"data", "admin"}));
}

TEST(ListenFds, WithoutNamesTheNamesStayEmpty) {
  const ListenFds got = parse_ok("4242", "1", nullptr);
  ASSERT_EQ(got.outcome, ListenFds::Outcome::kSockets);
  EXPECT_EQ(got.count, 1u);
  EXPECT_TRUE(got.names.empty());
}

TEST(ListenFds, EmptyNamesAreKeptAsEmptyNames) {
  const ListenFds got = parse_ok("4242", "2", ":");
  ASSERT_EQ(got.outcome, ListenFds::Outcome::kSockets);
  EXPECT_EQ(got.names, (std::vector<std::string>{"", ""}));
}

TEST(ListenFds, AnotherProcessPidIsIgnoredWithANote) {
  const ListenFds got = parse_ok("17", "2", "data:admin");
  EXPECT_EQ(got.outcome, ListenFds::Outcome::kIgnored);
  EXPECT_EQ(got.count, 0u);
  EXPECT_NE(got.note.find("LISTEN_PID 17 is another process"), std::string::npos) << got.note;
}

TEST(ListenFds, AnotherProcessPidIsIgnoredEvenWithGarbageCounts) {
  // Not ours to read: sd_listen_fds(3) stops at the pid too.
  EXPECT_EQ(parse_ok("17", "lots", nullptr).outcome, ListenFds::Outcome::kIgnored);
}

TEST(ListenFds, FdsWithoutPidAreIgnoredWithANote) {
  const ListenFds got = parse_ok(nullptr, "1", nullptr);
  EXPECT_EQ(got.outcome, ListenFds::Outcome::kIgnored);
  EXPECT_NE(got.note.find("LISTEN_PID is not set"), std::string::npos);
}

TEST(ListenFds, OwnPidWithoutFdsOrZeroFdsIsNone) {
  EXPECT_EQ(parse_ok("4242", nullptr, nullptr).outcome, ListenFds::Outcome::kNone);
  EXPECT_EQ(parse_ok("4242", "0", nullptr).outcome, ListenFds::Outcome::kNone);
}

TEST(ListenFds, GarbagePidIsAnError) {
  for (const char* pid : {"", "abc", "-1", "+4242", " 4242", "4242 ", "0", "4242x",
                          "99999999999999999999999"}) {
    EXPECT_NE(parse_error(pid, "1", nullptr).find("LISTEN_PID"), std::string::npos) << pid;
  }
}

TEST(ListenFds, GarbageFdCountIsAnError) {
  for (const char* fds : {"", "one", "-1", "1.0", " 1", "18446744073709551616"}) {
    EXPECT_NE(parse_error("4242", fds, nullptr).find("LISTEN_FDS"), std::string::npos) << fds;
  }
}

TEST(ListenFds, MoreSocketsThanListenersAreAnError) {
  EXPECT_NE(parse_error("4242", "3", nullptr).find("at most 2"), std::string::npos);
  EXPECT_NE(parse_error("4242", "18446744073709551615", nullptr).find("at most 2"),
            std::string::npos);
}

TEST(ListenFds, NameCountOtherThanFdCountIsAnError) {
  EXPECT_NE(parse_error("4242", "2", "data").find("names 1 sockets, LISTEN_FDS passes 2"),
            std::string::npos);
  EXPECT_NE(parse_error("4242", "1", "data:admin").find("names 2 sockets"), std::string::npos);
  EXPECT_NE(parse_error("4242", "1", "data::").find("names 3 sockets"), std::string::npos);
}

TEST(ListenFds, ErrorsQuoteTheValueOnOneLine) {
  const std::string error = parse_error("12\n34", "1", nullptr);
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
}

const ListenAddress kData{"127.0.0.1", 8080, false};
const ListenAddress kAdmin{"127.0.0.1", 8081, false};

ListenerSockets assign_ok(const std::vector<InheritedSocket>& sockets,
                          const ListenAddress& data = kData, const ListenAddress& admin = kAdmin) {
  ListenerSockets out;
  std::string error;
  EXPECT_TRUE(assign_inherited_sockets(sockets, data, admin, &out, &error)) << error;
  return out;
}

std::string assign_error(const std::vector<InheritedSocket>& sockets,
                         const ListenAddress& data = kData, const ListenAddress& admin = kAdmin) {
  ListenerSockets out;
  std::string error;
  EXPECT_FALSE(assign_inherited_sockets(sockets, data, admin, &out, &error));
  return error;
}

TEST(InheritedSockets, NamedSocketsGoToTheirListeners) {
  const ListenerSockets got = assign_ok({{3, "admin", kAdmin}, {4, "data", kData}});
  EXPECT_EQ(got.data_fd, 4);
  EXPECT_EQ(got.admin_fd, 3);
}

TEST(InheritedSockets, UnnamedSocketsGoByAddress) {
  for (const char* name : {"", "unknown", "keygate.socket"}) {
    const ListenerSockets got = assign_ok({{3, name, kAdmin}, {4, name, kData}});
    EXPECT_EQ(got.data_fd, 4) << name;
    EXPECT_EQ(got.admin_fd, 3) << name;
  }
}

TEST(InheritedSockets, AListenerWithoutASocketStaysUnassigned) {
  const ListenerSockets got = assign_ok({{3, "data", kData}});
  EXPECT_EQ(got.data_fd, 3);
  EXPECT_EQ(got.admin_fd, -1);
}

TEST(InheritedSockets, AnyPortMatchesAConfiguredPortZero) {
  const ListenAddress any{"127.0.0.1", 0, false};
  const ListenerSockets got = assign_ok({{3, "", {"127.0.0.1", 41234, false}}}, any, kAdmin);
  EXPECT_EQ(got.data_fd, 3);
}

TEST(InheritedSockets, AddressesCompareInAnySpelling) {
  const ListenAddress six{"::1", 8080, true};
  EXPECT_EQ(assign_ok({{3, "data", {"0:0::1", 8080, true}}}, six, kAdmin).data_fd, 3);
  EXPECT_FALSE(listen_address_matches(six, {"::2", 8080, true}));
  EXPECT_FALSE(listen_address_matches(kData, {"::1", 8080, true}));
}

TEST(InheritedSockets, NamedSocketOnAnotherAddressIsAnError) {
  const std::string error = assign_error({{3, "data", {"127.0.0.1", 9090, false}}});
  EXPECT_NE(error.find("LISTEN_FDS socket 3 ('data') bound to 127.0.0.1:9090 is not listen "
                       "127.0.0.1:8080"),
            std::string::npos)
      << error;
  EXPECT_NE(assign_error({{3, "admin", kData}}).find("is not admin_listen 127.0.0.1:8081"),
            std::string::npos);
  EXPECT_NE(assign_error({{3, "data", {"0.0.0.0", 8080, false}}}).find("is not listen"),
            std::string::npos);
}

TEST(InheritedSockets, UnnamedSocketOnNeitherAddressIsAnError) {
  const std::string error = assign_error({{4, "", {"127.0.0.1", 9090, false}}});
  EXPECT_NE(error.find("LISTEN_FDS socket 4 bound to 127.0.0.1:9090 is neither listen "
                       "127.0.0.1:8080 nor admin_listen 127.0.0.1:8081"),
            std::string::npos)
      << error;
}

TEST(InheritedSockets, UnnamedSocketGoesToTheListenerWithItsPortRatherThanPortZero) {
  const ListenAddress any{"127.0.0.1", 0, false};
  EXPECT_EQ(assign_ok({{3, "", kData}}, kData, any).data_fd, 3);
  EXPECT_EQ(assign_ok({{3, "", kAdmin}}, any, kAdmin).admin_fd, 3);
}

TEST(InheritedSockets, UnnamedSocketMatchingBothPortZeroListenersServesTheDataPort) {
  const ListenAddress any{"127.0.0.1", 0, false};
  const ListenerSockets got = assign_ok({{3, "", {"127.0.0.1", 5000, false}}}, any, any);
  EXPECT_EQ(got.data_fd, 3);
  EXPECT_EQ(got.admin_fd, -1);
  // A second one then is a second socket for the data port: name them.
  EXPECT_NE(assign_error({{3, "", {"127.0.0.1", 5000, false}}, {4, "", {"127.0.0.1", 5001, false}}},
                         any, any)
                .find("second socket for listen"),
            std::string::npos);
}

TEST(InheritedSockets, UnknownNameIsAnError) {
  EXPECT_NE(assign_error({{3, "metrics", kData}}).find("unknown name"), std::string::npos);
  EXPECT_NE(assign_error({{3, "Data", kData}}).find("unknown name"), std::string::npos);
}

TEST(InheritedSockets, TwoSocketsForOneListenerAreAnError) {
  EXPECT_NE(assign_error({{3, "data", kData}, {4, "", kData}}).find("second socket for listen"),
            std::string::npos);
}

}  // namespace
}  // namespace keygate
