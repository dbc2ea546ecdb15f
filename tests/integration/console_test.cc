// The web console against the real keygate binary: its page and files on the admin port,
// without a key and under their security headers, the admin API still behind the admin key,
// and nothing of it on the data port. (The console's admin calls against docs/openapi.yaml:
// openapi_test.cc.)
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/console_assets.h"
#include "tests/integration/running_server.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

struct ConsoleFile {
  const char* path;
  const char* source;  // in the repository
  const char* content_type;
};
constexpr ConsoleFile kFiles[] = {
    {"/console", "core/console/index.html", "text/html; charset=utf-8"},
    {"/console/app.js", "core/console/app.js", "text/javascript; charset=utf-8"},
    {"/console/app.css", "core/console/app.css", "text/css; charset=utf-8"},
};

std::string read_source(const char* relative) {
  std::ifstream in(std::string(KEYGATE_SOURCE_DIR) + "/" + relative, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

::testing::AssertionResult security_headers(const std::optional<Response>& r) {
  if (!r) return ::testing::AssertionFailure() << "no response";
  const std::pair<const char*, std::string_view> want[] = {
      {"Content-Security-Policy", kCsp},
      {"X-Content-Type-Options", "nosniff"},
      {"Referrer-Policy", "no-referrer"},
      {"Cache-Control", "no-store"},
  };
  for (const auto& [name, value] : want) {
    if (r->header(name) != std::string(value)) {
      return ::testing::AssertionFailure() << name << " should be " << value << "; " << show(r);
    }
  }
  return ::testing::AssertionSuccess();
}

class Console : public RunningServer {
 protected:
  ServerOptions server_options() override {
    return admin_server_options(admin_value_);
  }

  std::optional<Response> admin_port(std::string_view method, std::string_view target,
                                     const std::vector<std::string>& headers = {},
                                     std::string_view body = {}) {
    return request(server_->admin_port(), method, target, headers, body);
  }
  // One request on a fresh connection; a HEAD's response is read without a body.
  std::optional<Response> request(uint16_t port, std::string_view method, std::string_view target,
                                  const std::vector<std::string>& headers = {},
                                  std::string_view body = {}) {
    RawClient client;
    std::string error;
    if (!client.connect(port, &error)) {
      ADD_FAILURE() << "connect: " << error;
      return std::nullopt;
    }
    if (!client.send(http_request(method, target, headers, body))) return std::nullopt;
    return client.read_response(Millis(3000), /*head=*/method == "HEAD");
  }

  const std::string admin_value_ = "console-test-admin-key-0123456789";
};

TEST_F(Console, TheAdminPortServesThePageAndItsFilesWithoutAKey) {
  for (const ConsoleFile& file : kFiles) {
    SCOPED_TRACE(file.path);
    const std::optional<Response> r = admin_port("GET", file.path);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200) << show(r);
    EXPECT_EQ(r->header("Content-Type"), std::string(file.content_type));
    EXPECT_TRUE(security_headers(r));
    // The build embedded the repository's file, byte for byte.
    const std::string source = read_source(file.source);
    ASSERT_FALSE(source.empty()) << "cannot read " << file.source;
    EXPECT_EQ(r->body, source);
  }
}

TEST_F(Console, HeadGivesTheHeadersWithoutTheBody) {
  for (const ConsoleFile& file : kFiles) {
    SCOPED_TRACE(file.path);
    const std::optional<Response> r = admin_port("HEAD", file.path);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200) << show(r);
    EXPECT_TRUE(r->body.empty());
    EXPECT_EQ(r->header("Content-Length"),
              std::to_string(find_console_asset(file.path)->body.size()));
    EXPECT_EQ(r->header("Content-Type"), std::string(file.content_type));
    EXPECT_TRUE(security_headers(r));
  }
}

TEST_F(Console, OtherMethodsAre405AndUnknownFiles404InTheAdminErrorShape) {
  std::optional<Response> r =
      admin_port("POST", "/console", {"Content-Type: application/json"}, "{}");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 405) << show(r);
  EXPECT_EQ(r->header("Allow"), "GET, HEAD");
  EXPECT_EQ(r->body,
            "{\"error\":\"method_not_allowed\",\"field\":null,\"message\":\"use GET or HEAD\"}\n");
  r = admin_port("DELETE", "/console/app.js", {"X-ApiKey: " + admin_value_});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 405) << show(r);

  for (const char* path : {"/console/nope", "/console/", "/console/index.html"}) {
    r = admin_port("GET", path);
    ASSERT_TRUE(r.has_value()) << path;
    EXPECT_EQ(r->status, 404) << show(r);
    EXPECT_EQ(r->body, "{\"error\":\"not_found\",\"field\":null,\"message\":\"no such route\"}\n");
    EXPECT_EQ(r->header("Content-Type"), "application/json");
  }
}

TEST_F(Console, TheAdminApiStillNeedsTheAdminKey) {
  std::optional<Response> r = admin_port("GET", "/admin/keys");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 401) << show(r);
  EXPECT_EQ(string_member(r->body, "error"), "missing_api_key");
  EXPECT_FALSE(r->header("Content-Security-Policy").has_value());
  // The page's own origin changes nothing: the key is what counts.
  r = admin_port("GET", "/admin/stats",
                 {"Referer: http://127.0.0.1/console", "Origin: http://127.0.0.1"});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 401) << show(r);
  r = admin_port("GET", "/admin/keys", {"X-ApiKey: " + admin_value_});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << show(r);
}

// The admin API's answers carry text other people wrote (key descriptions, user names, logged
// paths, captured bodies): like the console's files, every answer of the admin port's handler
// (success, error, refusal) tells a browser not to sniff another type than the one it names.
TEST_F(Console, EveryAdminAnswerForbidsMimeSniffing) {
  const std::string key = "X-ApiKey: " + admin_value_;
  struct Case {
    const char* method;
    const char* target;
    bool with_key;
    int status;
  };
  const Case cases[] = {
      {"GET", "/admin/keys", true, 200},     {"GET", "/admin/logs?limit=1", true, 200},
      {"GET", "/admin/keys", false, 401},    {"GET", "/admin/nope", true, 404},
      {"GET", "/nope", false, 404},          {"PUT", "/admin/keys", true, 405},
      {"GET", "/console/nope", false, 404},  {"POST", "/console", false, 405},
      {"GET", "/admin/keys/kAAAAAAAAAAAA", true, 404},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.method) + " " + c.target);
    const std::optional<Response> r =
        admin_port(c.method, c.target, c.with_key ? std::vector<std::string>{key}
                                                  : std::vector<std::string>{});
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, c.status) << show(r);
    EXPECT_EQ(r->header("X-Content-Type-Options"), "nosniff") << show(r);
    EXPECT_EQ(r->header("Cache-Control"), "no-store") << show(r);
  }
}

TEST_F(Console, TheDataPortDoesNotServeTheConsole) {
  for (const ConsoleFile& file : kFiles) {
    for (const char* method : {"GET", "HEAD"}) {
      const std::optional<Response> r = request(server_->data_port(), method, file.path);
      ASSERT_TRUE(r.has_value()) << method << " " << file.path;
      EXPECT_EQ(r->status, 404) << show(r);
      EXPECT_FALSE(r->header("Content-Security-Policy").has_value()) << show(r);
      EXPECT_EQ(r->body.find("keygate console"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace keygate::integration
