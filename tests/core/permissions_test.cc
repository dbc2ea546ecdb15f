#include "core/permissions.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {
namespace {

constexpr int64_t kNow = 1700000000;

TEST(RouteMatches, RouteMatchesItselfAndPathsBelowIt) {
  EXPECT_TRUE(route_matches("/orders", "/orders"));
  EXPECT_TRUE(route_matches("/orders", "/orders/"));
  EXPECT_TRUE(route_matches("/orders", "/orders/7"));
  EXPECT_TRUE(route_matches("/orders", "/orders/7/items"));
}

TEST(RouteMatches, RouteDoesNotMatchALongerSegmentOrOtherPaths) {
  EXPECT_FALSE(route_matches("/orders", "/ordersX"));
  EXPECT_FALSE(route_matches("/orders", "/orders-old/1"));
  EXPECT_FALSE(route_matches("/orders", "/order"));
  EXPECT_FALSE(route_matches("/orders", "/"));
  EXPECT_FALSE(route_matches("/orders", "/Orders"));
  EXPECT_FALSE(route_matches("/orders", "/v1/orders"));
}

TEST(RouteMatches, RouteEndingInSlashMatchesEverythingUnderIt) {
  EXPECT_TRUE(route_matches("/", "/"));
  EXPECT_TRUE(route_matches("/", "/anything/at/all"));
  EXPECT_TRUE(route_matches("/a/", "/a/"));
  EXPECT_TRUE(route_matches("/a/", "/a/b"));
  EXPECT_FALSE(route_matches("/a/", "/a"));
  EXPECT_FALSE(route_matches("/a/", "/ab"));
}

// Upstreams that strip ";params" from segments (servlet containers, Spring) route
// "/v1;x/admin/users" and "/v1/admin;x/users" as "/v1/admin/users": so must keygate, or such a
// path would fall back to a shorter route (another API) and reach the longer one's resources.
TEST(RouteMatches, SegmentParamsAreIgnoredLikeUpstreamsDo) {
  EXPECT_TRUE(route_matches("/v1/admin", "/v1/admin;x/users"));
  EXPECT_TRUE(route_matches("/v1/admin", "/v1;x/admin/users"));
  EXPECT_TRUE(route_matches("/v1/admin", "/v1;x;y=2/admin;z"));
  EXPECT_TRUE(route_matches("/v1/admin", "/v1/admin;jsessionid=42"));
  EXPECT_TRUE(route_matches("/v1/", "/v1;x/anything"));
  EXPECT_TRUE(route_matches("/v1", "/v1;x"));
  EXPECT_FALSE(route_matches("/v1/admin", "/v1/adm;x/in"));  // "/v1/adm/in" upstream
  EXPECT_FALSE(route_matches("/v1/admin", "/v1/admin2;x"));
  EXPECT_FALSE(route_matches("/v1/admin", "/v1;x"));
}

// An upstream decodes "%c3" and "%C3" to the same byte, so they route alike: were the case
// compared, "/caf%c3%a9" would fall back to a shorter route (another API) and reach "/caf%C3%A9".
TEST(RouteMatches, EscapeHexDigitsMatchInEitherCase) {
  EXPECT_TRUE(route_matches("/caf%C3%A9", "/caf%c3%a9"));
  EXPECT_TRUE(route_matches("/caf%C3%A9", "/caf%C3%a9/menu"));
  EXPECT_TRUE(route_matches("/caf%c3%a9", "/caf%C3%A9;x/menu"));
  EXPECT_FALSE(route_matches("/caf%C3%A9", "/caf%C3%A8"));
  EXPECT_FALSE(route_matches("/CAFE", "/cafe"));  // only the escape's digits, not the path
}

TEST(RouteMatches, EmptyRouteMatchesNothing) {
  EXPECT_FALSE(route_matches("", "/"));
  EXPECT_FALSE(route_matches("", ""));
}

TEST(PathIsNormalized, AcceptsOrdinaryPaths) {
  for (std::string_view path : {"/", "/orders/7", "/a.b/c..d", "/orders/", "/.well-known/x", "/...",
                                "/a/b;v=1", "/q%3Fx/%25/%20", "/caf%C3%A9", "/~u/a_b-c"}) {
    EXPECT_TRUE(path_is_normalized(path)) << path;
  }
}

TEST(PathIsNormalized, RejectsDotSegments) {
  for (std::string_view path :
       {"/a/../b", "/a/./b", "/..", "/.", "/a/..", "/a/.", "/../a", "/..;/admin", "/a/.;x/b"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
}

TEST(PathIsNormalized, RejectsEncodedDotsSlashesAndBackslashes) {
  for (std::string_view path :
       {"/a/%2e%2e/b", "/a/%2E%2E/b", "/a/.%2e/b", "/a%2Fb", "/a%2fb", "/a%5cb", "/a%5Cb"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
}

TEST(PathIsNormalized, RejectsEncodedUnreservedCharactersAnUpstreamWouldDecode) {
  for (std::string_view path : {"/%61dmin", "/a%41", "/%30", "/%2D", "/%5F", "/%7e", "/%7E"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
}

TEST(PathIsNormalized, RejectsMalformedEscapesAndControlBytes) {
  for (std::string_view path :
       {"/%", "/%2", "/%zz", "/%g0", "/a%0", "/%00", "/%1f", "/%7F", "/a\tb", "/a\x7f"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
  EXPECT_FALSE(path_is_normalized(std::string_view("/a\0b", 4)));
}

// A fragment is not part of a request target; upstreams cut the path at '#', so
// "/v1/admin#/users" would be routed by keygate as one path and by them as "/v1/admin".
TEST(PathIsNormalized, RejectsAFragment) {
  for (std::string_view path : {"/v1/admin#/users", "/#", "/a#b"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
}

TEST(PathIsNormalized, RejectsBackslashEmptyRelativeAndDoubleSlash) {
  for (std::string_view path : {"\\", "/a\\b", "", "orders", "*", "//", "/a//b", "//admin"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
}

// A segment that is only ";params" is an empty segment once an upstream strips the params:
// "/;x/billing" is "//billing", merged to "/billing" there, while here it would be routed by
// its first segment (to "/", another API).
TEST(PathIsNormalized, RejectsASegmentThatIsOnlyParams) {
  for (std::string_view path : {"/;x/billing", "/;/billing", "/v1/;x/admin", "/a/;/b"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
  }
  EXPECT_TRUE(path_is_normalized("/a/;x"));  // a trailing one is a trailing '/' upstream
}

// The data port's parser (llhttp, strict) refuses a space and every byte above 0x7e in a request
// target ("Invalid char in url path"), so no path it routes holds one: a route or grant prefix
// "/café" would never match (clients send "/caf%C3%A9"), and a path described by X-Original-URI
// holding one would be routed apart from its encoded form, which upstreams read as the same.
TEST(PathIsNormalized, RejectsASpaceAndBytesAboveAsciiThatNoRequestTargetHolds) {
  for (std::string_view path : {"/caf\xc3\xa9", "/orders/\x80", "/a\xff", "/a b", "/ ", "/a/b c/"}) {
    EXPECT_FALSE(path_is_normalized(path)) << path;
    EXPECT_FALSE(prefix_is_valid(path)) << path;
  }
  EXPECT_TRUE(path_is_normalized("/caf%C3%A9/a%20b"));
  EXPECT_TRUE(prefix_is_valid("/caf%C3%A9/a%20b"));
}

TEST(PrefixIsValid, RejectsParamsAndQueriesThatCouldNeverMatch) {
  EXPECT_TRUE(prefix_is_valid("/orders"));
  EXPECT_TRUE(prefix_is_valid("/caf%C3%A9/"));
  for (std::string_view prefix : {"/v1;x", "/orders?x=1", "/a;b/c", "/a/../b", "orders"}) {
    EXPECT_FALSE(prefix_is_valid(prefix)) << prefix;
  }
}

std::vector<ApiConfig> two_apis() {
  return {{"orders", {"/orders", "/v1/orders"}}, {"catalog", {"/catalog/", "/"}}};
}

std::string init_error(std::vector<ApiConfig> apis) {
  ApiRegistry registry;
  std::string error;
  EXPECT_FALSE(registry.init(std::move(apis), &error));
  EXPECT_EQ(error.find('\n'), std::string::npos);
  return error;
}

TEST(ApiRegistry, MatchesTheLongestRoute) {
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init({{"root", {"/"}},
                             {"orders", {"/orders"}},
                             {"order-items", {"/orders/7/items"}},
                             {"v1", {"/v1/"}}},
                            &error))
      << error;
  auto name_of = [&](std::string_view path) -> std::string {
    const ApiConfig* api = registry.match(path);
    return api == nullptr ? "none" : api->name;
  };
  EXPECT_EQ(name_of("/"), "root");
  EXPECT_EQ(name_of("/ordersX"), "root");
  EXPECT_EQ(name_of("/orders"), "orders");
  EXPECT_EQ(name_of("/orders/7"), "orders");
  EXPECT_EQ(name_of("/orders/7/items"), "order-items");
  EXPECT_EQ(name_of("/orders/7/items/3"), "order-items");
  EXPECT_EQ(name_of("/orders/7/itemsX"), "orders");
  EXPECT_EQ(name_of("/v1/x"), "v1");
  EXPECT_EQ(name_of("/v1"), "root");
}

TEST(RouteMatches, DecodedMatchingReadsEscapesAsTheirBytesOnBothSides) {
  EXPECT_TRUE(route_matches_decoded("/v1/a:b", "/v1/a%3Ab"));
  EXPECT_TRUE(route_matches_decoded("/v1/a:b", "/v1/a%3ab/7"));
  EXPECT_TRUE(route_matches_decoded("/v1/a%3Ab", "/v1/a:b;x"));
  EXPECT_TRUE(route_matches_decoded("/caf%C3%A9", "/caf%c3%a9"));
  EXPECT_FALSE(route_matches_decoded("/v1/a:b", "/v1/a%3Abc"));
  EXPECT_FALSE(route_matches_decoded("/v1/a:b", "/v1/a;%3Ab"));
  EXPECT_FALSE(route_matches_decoded("", "/"));
}

TEST(ApiRegistry, MatchDecodedFindsTheLongestRouteOnceDecoded) {
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init({{"v1", {"/v1"}}, {"purge", {"/v1/things:purge"}}}, &error)) << error;
  auto name_of = [&](const ApiConfig* api) { return api == nullptr ? "none" : api->name; };
  EXPECT_EQ(name_of(registry.match("/v1/things%3Apurge")), "v1");
  EXPECT_EQ(name_of(registry.match_decoded("/v1/things%3Apurge")), "purge");
  EXPECT_EQ(name_of(registry.match_decoded("/v1/things%20x")), "v1");
  EXPECT_EQ(name_of(registry.match_decoded("/v1/things:purge")), "purge");
  EXPECT_EQ(name_of(registry.match_decoded("/v2%3A")), "none");
}

TEST(ApiRegistry, MatchReturnsNullWhenNoRouteMatches) {
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init({{"orders", {"/orders"}}}, &error)) << error;
  EXPECT_EQ(registry.match("/catalog"), nullptr);
  EXPECT_EQ(registry.match(""), nullptr);
  ApiRegistry empty;
  EXPECT_EQ(empty.match("/"), nullptr);
}

TEST(ApiRegistry, FindsApisByExactName) {
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init(two_apis(), &error)) << error;
  ASSERT_NE(registry.find("orders"), nullptr);
  EXPECT_EQ(registry.find("orders")->routes.size(), 2u);
  EXPECT_EQ(registry.find("catalog"), registry.match("/catalog/x"));
  EXPECT_EQ(registry.find("Orders"), nullptr);
  EXPECT_EQ(registry.find("admin"), nullptr);
  EXPECT_EQ(registry.apis().size(), 2u);
}

TEST(ApiRegistry, CopiesMatchLikeTheOriginal) {
  ApiRegistry original;
  std::string error;
  ASSERT_TRUE(original.init(two_apis(), &error)) << error;
  ApiRegistry copy = original;
  ASSERT_NE(copy.match("/v1/orders/1"), nullptr);
  EXPECT_EQ(copy.match("/v1/orders/1"), copy.find("orders"));
}

// The ';' params of a segment run to its '/': each route that reached them scanned them again,
// so a path of one long run of ';' cost a scan of it per route (1,024 routes: 60 MiB scanned for
// a 60 KiB path, before any key). They are scanned once per path now.
TEST(ApiRegistry, MatchScansASegmentsParamsOncePerPathNotOncePerRoute) {
  std::vector<ApiConfig> apis;
  for (int a = 0; a < 256; ++a) {
    std::vector<std::string> routes;
    for (int r = 0; r < 4; ++r) {
      routes.push_back("/svc" + std::to_string(a) + "/r" + std::to_string(r));
    }
    apis.emplace_back("api" + std::to_string(a), std::move(routes));
  }
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init(std::move(apis), &error)) << error;
  const std::string path = "/" + std::string(1 << 20, ';');
  // The fastest of a few runs, so a preempted run does not decide.
  const auto fastest = [](auto&& f) {
    auto best = std::chrono::steady_clock::duration::max();
    for (int i = 0; i < 5; ++i) {
      const auto start = std::chrono::steady_clock::now();
      f();
      best = std::min(best, std::chrono::steady_clock::now() - start);
    }
    return best;
  };
  bool matched = true;
  const auto one_route = fastest([&] { matched = route_matches("/svc0/r0", path); });
  EXPECT_FALSE(matched);
  const ApiConfig* api = &registry.apis().front();
  const auto every_route = fastest([&] { api = registry.match(path); });
  EXPECT_EQ(api, nullptr);
  const std::string escaped = path + "%20";  // match_decoded() decodes only a path with '%'
  const auto decoded = fastest([&] { api = registry.match_decoded(escaped); });
  EXPECT_EQ(api, nullptr);
  // Once per route, 1,024 scans of the megabyte; once per path, one (plus a cheap pass over
  // the routes).
  EXPECT_LT(every_route, 16 * one_route)
      << std::chrono::duration_cast<std::chrono::microseconds>(every_route).count() << " us vs "
      << std::chrono::duration_cast<std::chrono::microseconds>(one_route).count() << " us";
  EXPECT_LT(decoded, 16 * one_route)
      << std::chrono::duration_cast<std::chrono::microseconds>(decoded).count() << " us vs "
      << std::chrono::duration_cast<std::chrono::microseconds>(one_route).count() << " us";
}

// The scan kept for a path gives every route what its own scan would: paths of segments with
// and without params, matched against routes that end at, run past and stop inside them.
TEST(ApiRegistry, MatchWithParamsAgreesWithEachRouteMatchedAlone) {
  const std::vector<ApiConfig> apis = {{"a", {"/a", "/a/b/c"}},
                                       {"ab", {"/a/b"}},
                                       {"b", {"/b/", "/b/a"}},
                                       {"c", {"/c%3A", "/c"}}};
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init(apis, &error)) << error;
  std::mt19937 rng(7);
  const std::string_view alphabet = "/;abc%3A";
  for (int n = 0; n < 20000; ++n) {
    std::string path = "/";
    const size_t length = rng() % 12;
    for (size_t i = 0; i < length; ++i) path += alphabet[rng() % alphabet.size()];
    const ApiConfig* expected = nullptr;
    size_t expected_length = 0;
    const ApiConfig* expected_decoded = nullptr;
    size_t expected_decoded_length = 0;
    for (const ApiConfig& api : registry.apis()) {
      for (const std::string& route : api.routes) {
        if (route_matches(route, path) && route.size() > expected_length) {
          expected = &api;
          expected_length = route.size();
        }
        if (route_matches_decoded(route, path) && route.size() > expected_decoded_length) {
          expected_decoded = &api;
          expected_decoded_length = route.size();
        }
      }
    }
    EXPECT_EQ(registry.match(path), expected) << path;
    if (path.find('%') != std::string::npos) {
      EXPECT_EQ(registry.match_decoded(path), expected_decoded) << path;
    }
  }
}

TEST(ApiRegistry, RejectsDuplicateNames) {
  EXPECT_EQ(init_error({{"orders", {"/a"}}, {"orders", {"/b"}}}), "api \"orders\": duplicate name");
}

TEST(ApiRegistry, RejectsTheReservedAdminName) {
  EXPECT_EQ(init_error({{"admin", {"/admin"}}}),
            "api \"admin\": the name is reserved for the built-in admin API");
}

TEST(ApiRegistry, RejectsBadNames) {
  EXPECT_EQ(init_error({{"", {"/a"}}}), "api #1: name is empty");
  for (std::string name :
       std::vector<std::string>{"has space", "slash/", "ümlaut", std::string(65, 'n')}) {
    EXPECT_NE(init_error({{name, {"/a"}}}).find("name must be 1 to 64"), std::string::npos) << name;
  }
  ApiRegistry registry;
  std::string error;
  EXPECT_TRUE(registry.init({{std::string(64, 'n'), {"/a"}}, {"a-Z_0.9", {"/b"}}}, &error))
      << error;
}

TEST(ApiRegistry, RejectsApisWithoutRoutesOrWithTooMany) {
  EXPECT_EQ(init_error({{"orders", {}}}), "api \"orders\": has no routes");
  std::vector<std::string> routes;
  for (size_t i = 0; i <= kApiRoutesMax; ++i) routes.push_back("/r" + std::to_string(i));
  EXPECT_EQ(init_error({{"orders", routes}}), "api \"orders\": more than 64 routes");
}

TEST(ApiRegistry, RejectsRoutesThatAreNotNormalizedPaths) {
  for (std::string route :
       std::vector<std::string>{"orders", "", "/a/../b", "/a//b", "/a\\b", "/%2e", "/v1;x",
                                "/orders?x"}) {
    EXPECT_NE(init_error({{"orders", {route}}}).find("must be a normalized path"),
              std::string::npos)
        << route;
  }
}

TEST(ApiRegistry, RejectsTheSameRouteTwice) {
  EXPECT_EQ(init_error({{"orders", {"/orders"}}, {"legacy", {"/x", "/orders"}}}),
            "api \"legacy\": route \"/orders\" is already used by api \"orders\"");
  EXPECT_EQ(init_error({{"orders", {"/orders", "/orders"}}}),
            "api \"orders\": route \"/orders\" is already used by api \"orders\"");
  // The same route in another case of its escapes (they match the same paths).
  EXPECT_EQ(init_error({{"cafe", {"/caf%C3%A9"}}, {"cafe2", {"/caf%c3%a9"}}}),
            "api \"cafe2\": route \"/caf%C3%A9\" is already used by api \"cafe\"");
  // The same route once percent-decoded: one path to an upstream that decodes before routing,
  // so a key for either API would reach the other's handler there.
  EXPECT_EQ(init_error({{"purge", {"/v1/x:purge"}}, {"other", {"/v1/x%3Apurge"}}}),
            "api \"other\": route \"/v1/x%3Apurge\" is route \"/v1/x:purge\" of api \"purge\" "
            "once percent-decoded");
  EXPECT_EQ(init_error({{"a", {"/v1/%40me", "/v1/@me"}}}),
            "api \"a\": route \"/v1/@me\" is route \"/v1/%40me\" of api \"a\" once "
            "percent-decoded");
}

TEST(ApiRegistry, EscapesInAnyCaseReachTheLongerRoute) {
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init({{"root", {"/"}}, {"cafe", {"/caf%c3%a9"}}}, &error)) << error;
  for (std::string_view path : {"/caf%C3%A9", "/caf%c3%a9", "/caf%c3%A9/x"}) {
    const ApiConfig* api = registry.match(path);
    ASSERT_NE(api, nullptr) << path;
    EXPECT_EQ(api->name, "cafe") << path;
  }
}

TEST(ApiRegistry, AcceptsAtMost256Apis) {
  std::vector<ApiConfig> apis;
  for (size_t i = 0; i < kApisMax; ++i) {
    apis.push_back({"api" + std::to_string(i), {"/r" + std::to_string(i)}});
  }
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init(apis, &error)) << error;
  ASSERT_NE(registry.match("/r255/x"), nullptr);
  EXPECT_EQ(registry.match("/r255/x")->name, "api255");
  apis.push_back({"one-more", {"/one-more"}});
  EXPECT_EQ(init_error(apis), "too many apis: 257 (at most 256)");
}

TEST(ApiRegistry, FailedInitKeepsThePreviousApis) {
  ApiRegistry registry;
  std::string error;
  ASSERT_TRUE(registry.init(two_apis(), &error)) << error;
  EXPECT_FALSE(registry.init({{"admin", {"/"}}}, &error));
  EXPECT_NE(registry.find("orders"), nullptr);
  EXPECT_NE(registry.match("/orders"), nullptr);
}

class Authorize : public ::testing::Test {
 protected:
  Authorize() {
    orders_.name = "orders";
    orders_.routes = {"/orders"};
    billing_.name = "billing";
    billing_.routes = {"/billing"};
    admin_.name = std::string(kAdminApi);
    admin_.routes = {"/"};
    key_.apis = {"orders", "billing"};
    key_.user = "kharnagy@domain.corp";
    user_.name = "kharnagy@domain.corp";
  }

  Decision decide(const ApiConfig& api, std::string_view method, std::string_view path,
                  int64_t now = kNow) const {
    return authorize(key_, key_.user ? &user_ : nullptr, api, method, path, now);
  }

  ApiConfig orders_;
  ApiConfig billing_;
  ApiConfig admin_;
  KeyRecord key_;
  User user_;
};

TEST_F(Authorize, UserGrantForTheApiAllowsAnyMethodAndPath) {
  user_.grants = {{"orders", {}, ""}};
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "DELETE", "/orders/7/items"), Decision::kAllowed);
  user_.grants = {{"orders", {}, "/"}};
  EXPECT_EQ(decide(orders_, "PATCH", "/orders/7"), Decision::kAllowed);
}

TEST_F(Authorize, UserGrantForAnotherApiIsNotPermitted) {
  user_.grants = {{"billing", {}, ""}};
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(billing_, "GET", "/billing"), Decision::kAllowed);
}

TEST_F(Authorize, GrantMethodsMatchExactlyAndCaseSensitively) {
  user_.grants = {{"orders", {"GET", "HEAD"}, ""}};
  EXPECT_EQ(decide(orders_, "GET", "/orders/7"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "HEAD", "/orders/7"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "POST", "/orders/7"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(orders_, "get", "/orders/7"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(orders_, "GETX", "/orders/7"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(orders_, "", "/orders/7"), Decision::kUserNotPermitted);
}

TEST_F(Authorize, GrantPathPrefixIsSegmentAware) {
  user_.grants = {{"orders", {}, "/orders/7"}};
  EXPECT_EQ(decide(orders_, "GET", "/orders/7"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "GET", "/orders/7/items"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "GET", "/orders/70"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(orders_, "GET", "/orders/8"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kUserNotPermitted);
}

TEST_F(Authorize, AnyMatchingGrantAllows) {
  user_.grants = {
      {"orders", {"GET"}, "/orders/1"}, {"billing", {}, ""}, {"orders", {"POST"}, "/orders/2"}};
  EXPECT_EQ(decide(orders_, "POST", "/orders/2"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "GET", "/orders/1"), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "POST", "/orders/1"), Decision::kUserNotPermitted);
  EXPECT_EQ(decide(orders_, "GET", "/orders/2"), Decision::kUserNotPermitted);
}

TEST_F(Authorize, UserWithoutGrantsIsNotPermitted) {
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kUserNotPermitted);
}

TEST_F(Authorize, KeyWhoseUserIsMissingIsNotPermitted) {
  user_.grants = {{"orders", {}, ""}};
  EXPECT_EQ(authorize(key_, nullptr, orders_, "GET", "/orders", kNow), Decision::kUserNotPermitted);
}

TEST_F(Authorize, KeyWithoutUserActsAsAdministratorWithinItsApis) {
  key_.user.reset();
  EXPECT_EQ(decide(orders_, "DELETE", "/orders/7"), Decision::kAllowed);
  EXPECT_EQ(decide(billing_, "GET", "/billing"), Decision::kAllowed);
  key_.apis = {"billing"};
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kApiNotPermitted);
}

TEST_F(Authorize, ApiMissingFromTheKeyIsNotPermittedEvenWithAGrant) {
  key_.apis = {"billing"};
  user_.grants = {{"orders", {}, ""}};
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kApiNotPermitted);
}

TEST_F(Authorize, AdminOnlyKeyIsNotPermittedOnADataApi) {
  key_.user.reset();
  key_.apis = {"admin"};
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kApiNotPermitted);
  EXPECT_EQ(decide(admin_, "GET", "/keys"), Decision::kAllowed);
}

TEST_F(Authorize, KeyIsInvalidAtAndAfterExpiry) {
  user_.grants = {{"orders", {}, ""}};
  key_.expires_at = kNow;
  EXPECT_EQ(decide(orders_, "GET", "/orders", kNow - 1), Decision::kAllowed);
  EXPECT_EQ(decide(orders_, "GET", "/orders", kNow), Decision::kInvalidKey);
  EXPECT_EQ(decide(orders_, "GET", "/orders", kNow + 1), Decision::kInvalidKey);
}

TEST_F(Authorize, DisabledKeyIsInvalidBeforeAnyOtherCheck) {
  key_.enabled = false;
  key_.apis.clear();
  EXPECT_EQ(decide(orders_, "GET", "/orders"), Decision::kInvalidKey);
  EXPECT_EQ(authorize(key_, nullptr, orders_, "GET", "/orders", kNow), Decision::kInvalidKey);
}

User user_with_grants() {
  return {"kharnagy@domain.corp",
          {{"orders", {"GET", "POST"}, "/orders/7"}, {"billing", {}, ""}, {"x", {""}, "/"}}};
}

void expect_same(const User& a, const User& b) {
  EXPECT_EQ(a.name, b.name);
  ASSERT_EQ(a.grants.size(), b.grants.size());
  for (size_t i = 0; i < a.grants.size(); ++i) {
    EXPECT_EQ(a.grants[i].api, b.grants[i].api);
    EXPECT_EQ(a.grants[i].methods, b.grants[i].methods);
    EXPECT_EQ(a.grants[i].path_prefix, b.grants[i].path_prefix);
  }
}

TEST(Permissions, UserRoundTripsWithGrants) {
  User in = user_with_grants();
  User out;
  ASSERT_TRUE(decode_user(encode_user(in), &out));
  expect_same(in, out);
}

TEST(Permissions, UserRoundTripsWithoutGrants) {
  User in{"u", {}};
  User out = user_with_grants();
  ASSERT_TRUE(decode_user(encode_user(in), &out));
  expect_same(in, out);
}

TEST(Permissions, UserRoundTripsAtTheBounds) {
  User in{std::string(kRecordStringBytesMax, 'n'), {}};
  in.grants.assign(kUserGrantsMax,
                   Grant{"orders", std::vector<std::string>(kGrantMethodsMax, "GET"), "/"});
  User out;
  ASSERT_TRUE(decode_user(encode_user(in), &out));
  expect_same(in, out);
}

TEST(Permissions, DecodeUserRejectsEveryTruncation) {
  const std::string bytes = encode_user(user_with_grants());
  User out;
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(decode_user(std::string_view(bytes).substr(0, n), &out)) << n;
  }
}

TEST(Permissions, DecodeUserRejectsTrailingBytesUnknownVersionAndOversizedCounts) {
  const std::string bytes = encode_user(User{"u", {}});
  User out;
  ASSERT_TRUE(decode_user(bytes, &out));
  EXPECT_FALSE(decode_user(bytes + 'x', &out));
  EXPECT_FALSE(decode_user(std::string("\x02\x01u\x00", 4), &out));
  // 1025 grants, and a grant with 33 methods, each with enough bytes behind it.
  EXPECT_FALSE(decode_user(std::string("\x01\x01u\x81\x08", 5) + std::string(8000, '\0'), &out));
  EXPECT_FALSE(decode_user(std::string("\x01\x01u\x01\x00\x21", 6) + std::string(100, '\0'), &out));
  // Forged counts larger than the input are rejected before anything is reserved.
  EXPECT_FALSE(decode_user(std::string("\x01\x01u\x80\x08", 5), &out));
}

TEST(Permissions, DecodeUserLeavesTheOutputAloneOnFailure) {
  User out = user_with_grants();
  EXPECT_FALSE(decode_user("\x01\x05short", &out));
  expect_same(out, user_with_grants());
}

TEST(Permissions, DecodeUserOfRandomBytesNeverCrashes) {
  std::mt19937_64 rng(11);
  const std::string valid = encode_user(user_with_grants());
  User out;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes;
    if (i % 2 == 0) {
      bytes.resize(rng() % 200);
      for (char& c : bytes) c = static_cast<char>(rng());
      if (!bytes.empty()) bytes[0] = 1;
    } else {
      bytes = valid;
      for (int k = 0; k < 3; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    (void)decode_user(bytes, &out);
  }
}



// authorize_request: what an upstream may take from the headers instead of the request line.
class AuthorizeRequest : public Authorize {
 protected:
  Decision decide_request(std::string_view method, std::vector<HttpHeader> headers) {
    headers_ = std::move(headers);
    HttpRequest request;
    request.method = method;
    request.target = "/orders/7";
    request.path = "/orders/7";
    request.headers = headers_;
    return authorize_request(key_, key_.user ? &user_ : nullptr, orders_, request, kNow);
  }
  std::vector<HttpHeader> headers_;
};

TEST_F(AuthorizeRequest, MethodOverrideMustBeGrantedToo) {
  user_.grants = {{"orders", {"POST"}, "/orders"}};
  EXPECT_EQ(decide_request("POST", {}), Decision::kAllowed);
  for (const char* name : {"X-HTTP-Method-Override", "x-http-method", "X-Method-Override",
                           "X_HTTP_Method_Override", "x_method_override"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(decide_request("POST", {{name, "DELETE"}}), Decision::kUserNotPermitted);
    // Upstreams upper-case the value: "delete" is DELETE to them.
    EXPECT_EQ(decide_request("POST", {{name, "delete"}}), Decision::kUserNotPermitted);
    EXPECT_EQ(decide_request("POST", {{name, "post"}}), Decision::kAllowed);
    EXPECT_EQ(decide_request("POST", {{name, " POST "}}), Decision::kAllowed);
    // Empty: ignored by those frameworks, so by keygate.
    EXPECT_EQ(decide_request("POST", {{name, ""}}), Decision::kAllowed);
  }
  // Every override counts, not only the first.
  EXPECT_EQ(decide_request("POST", {{"X-HTTP-Method-Override", "POST"}, {"X-HTTP-Method", "PUT"}}),
            Decision::kUserNotPermitted);
  // Longer than any method: matches no grant.
  EXPECT_EQ(decide_request("POST", {{"X-HTTP-Method-Override", std::string(33, 'P')}}),
            Decision::kUserNotPermitted);
  user_.grants = {{"orders", {}, "/orders"}};  // any method: still no overlong override
  EXPECT_EQ(decide_request("POST", {{"X-HTTP-Method-Override", std::string(33, 'P')}}),
            Decision::kUserNotPermitted);
  EXPECT_EQ(decide_request("POST", {{"X-HTTP-Method-Override", "DELETE"}}), Decision::kAllowed);
}

TEST_F(AuthorizeRequest, MethodOverrideIsCheckedOnlyAfterTheRequestLine) {
  user_.grants = {{"orders", {"DELETE"}, "/orders"}};
  // The request line decides first: an override cannot make a refused method allowed.
  EXPECT_EQ(decide_request("POST", {{"X-HTTP-Method-Override", "DELETE"}}),
            Decision::kUserNotPermitted);
  key_.apis = {"billing"};
  EXPECT_EQ(decide_request("DELETE", {{"X-HTTP-Method-Override", "DELETE"}}),
            Decision::kApiNotPermitted);
}

TEST_F(AuthorizeRequest, KeyWithoutUserMayOverrideTheMethod) {
  key_.user.reset();
  EXPECT_EQ(decide_request("POST", {{"X-HTTP-Method-Override", "DELETE"}}), Decision::kAllowed);
}

TEST_F(AuthorizeRequest, UrlOverrideIsRefusedForEveryKey) {
  user_.grants = {{"orders", {}, ""}};
  for (const char* name : {"X-Original-URL", "x-rewrite-url", "X_Original_URL"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(decide_request("GET", {{name, "/billing/1"}}), Decision::kUrlOverride);
    key_.user.reset();
    EXPECT_EQ(decide_request("GET", {{name, "/orders/8"}}), Decision::kUrlOverride);
    key_.user = "kharnagy@domain.corp";
  }
  // Look-alikes are ordinary headers; nginx's X-Original-URI is the auth endpoint's own.
  EXPECT_EQ(decide_request("GET", {{"X-Original-URI", "/x"}, {"X-Original-URLs", "/x"}}),
            Decision::kAllowed);
  // A refused request line is reported as such, not as the override.
  key_.apis = {"billing"};
  EXPECT_EQ(decide_request("GET", {{"X-Original-URL", "/billing/1"}}), Decision::kApiNotPermitted);
}

}  // namespace
}  // namespace keygate
