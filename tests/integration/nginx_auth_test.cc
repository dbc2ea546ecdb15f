// Integration test of keygate as nginx's auth_request service (docs/proxies.md): nginx in
// front, keygate (the real binary) answering /_keygate/auth, keygate-upstream behind nginx as
// the application. Checks what the client gets and what the upstream sees.
//
// nginx runs as a child process in a temp dir (daemon off, master_process off, every path
// inside the dir) on a probed free port; every process is killed at the end, also when a test
// fails (ChildProcess, TestServer). Skipped when nginx or its auth_request module is missing.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/api_key.h"
#include "core/permissions.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"
#include "tests/integration/process_helper.h"
#include "tests/integration/orders_billing_keys.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";

// The nginx configuration of docs/proxies.md, with ports and paths filled in.
// `keepalive_to_keygate`: with the optional settings docs/proxies.md gives for reusing
// connections to keygate (keepalive in the upstream, HTTP/1.1 without Connection, and HEAD).
std::string nginx_config(const std::string& dir, uint16_t listen_port, uint16_t keygate_port,
                         uint16_t upstream_port, bool keepalive_to_keygate) {
  const std::string p = std::to_string(listen_port);
  std::string c;
  if (::geteuid() == 0) c += "user root;\n";
  c += "worker_processes 1;\n";
  c += "error_log " + dir + "/error.log info;\n";
  c += "pid " + dir + "/nginx.pid;\n";
  c += "events { worker_connections 256; }\n";
  c += "http {\n";
  c += "  access_log off;\n";
  for (const char* t : {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}) {
    c += "  " + std::string(t) + "_temp_path " + dir + "/" + t + ";\n";
  }
  c += "  upstream app { server 127.0.0.1:" + std::to_string(upstream_port) + "; }\n";
  c += "  upstream keygate { server 127.0.0.1:" + std::to_string(keygate_port) + ";" +
       (keepalive_to_keygate ? " keepalive 16;" : "") + " }\n";
  c += R"(  server {
    listen 127.0.0.1:)" +
       p + R"(;
    location / {
      auth_request /_auth;
      auth_request_set $keygate_key_id $upstream_http_x_keygate_key_id;
      auth_request_set $keygate_api $upstream_http_x_keygate_api;
      auth_request_set $keygate_user $upstream_http_x_keygate_user;
      proxy_set_header X-Keygate-Key-Id $keygate_key_id;
      proxy_set_header X-Keygate-Api $keygate_api;
      proxy_set_header X-Keygate-User $keygate_user;
      proxy_pass http://app;
    }
    location = /_auth {
      internal;
      proxy_pass http://keygate/_keygate/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
)";
  if (keepalive_to_keygate) {
    c += R"(      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_method HEAD;
)";
  }
  c += R"(    }
  }
}
)";
  return c;
}

class NginxAuth : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string nginx = KEYGATE_NGINX_BINARY;
    if (nginx.empty() || ::access(nginx.c_str(), X_OK) != 0) {
      GTEST_SKIP() << "nginx is not installed (Debian: apt-get install nginx); the nginx "
                      "auth_request test needs it";
    }
    const ProcessResult version = run_process(nginx, {"-V"});
    if ((version.out + version.err).find("--with-http_auth_request_module") == std::string::npos) {
      GTEST_SKIP() << "this nginx was built without ngx_http_auth_request_module";
    }

    OrdersBillingKeys keys;
    ASSERT_NO_FATAL_FAILURE(seed_orders_billing_keys(dir_.path() + "/data", "it-nginx-", &keys));
    orders_key_ = keys.orders;
    billing_key_ = keys.billing;
    alice_key_ = keys.alice;
    ServerOptions options;
    options.data_dir = dir_.path() + "/data";
    options.extra_config = std::string(kOrdersAndBillingApis);
    options.capture_stderr = true;
    keygate_ = std::make_unique<TestServer>(std::move(options));
    std::string error;
    ASSERT_TRUE(keygate_->start(&error)) << error << "\nstderr: " << keygate_->error_output();

    std::string line;
    upstream_ = start_process_with_ready_line(KEYGATE_UPSTREAM_BINARY, {"--listen", "127.0.0.1:0"},
                                              "listening on ", &line, &error);
    ASSERT_NE(upstream_, nullptr) << error;
    uint16_t upstream_port = 0;
    std::from_chars(line.data() + line.rfind(':') + 1, line.data() + line.size(), upstream_port);
    ASSERT_NE(upstream_port, 0) << line;

    // The probed port can be taken before nginx binds it: try a few.
    for (int attempt = 0; attempt < 3 && port_ == 0; ++attempt) {
      const uint16_t port = probe_free_port();
      ASSERT_NE(port, 0);
      const std::string conf = dir_.write_file(
          "nginx.conf", nginx_config(dir_.path(), port, keygate_->data_port(), upstream_port,
                                     keepalive_to_keygate_));
      nginx_ = std::make_unique<ChildProcess>();
      ASSERT_TRUE(nginx_->spawn(nginx,
                                {"-p", dir_.path(), "-c", conf, "-e", dir_.path() + "/error.log",
                                 "-g", "daemon off; master_process off;"},
                                &error))
          << error;
      if (wait_for_port(port, Millis(10000))) {
        ExitStatus status;
        if (!nginx_->exited(&status)) port_ = port;
      }
      if (port_ == 0) {
        nginx_->stop(SIGKILL, Millis(2000));
        ADD_FAILURE() << "nginx did not start (attempt " << attempt + 1
                      << "): " << nginx_->error_output() << "\nerror.log: " << error_log();
      }
    }
    ASSERT_NE(port_, 0);
  }

  void TearDown() override {
    if (nginx_ != nullptr && nginx_->running()) nginx_->stop(SIGTERM, Millis(5000));
    if (upstream_ != nullptr) {
      const ExitStatus s = upstream_->stop(SIGTERM);
      EXPECT_TRUE(s.clean()) << "keygate-upstream " << s.describe();
    }
    if (keygate_ != nullptr && keygate_->running()) {
      const ExitStatus s = keygate_->stop(SIGTERM);
      EXPECT_TRUE(s.clean()) << "keygate " << s.describe() << "\n" << keygate_->error_output();
    }
  }

  std::string error_log() const {
    const ProcessResult r = run_process("/bin/cat", {dir_.path() + "/error.log"});
    return r.out;
  }

  std::optional<Response> through_nginx(std::string_view method, std::string_view target,
                                        const std::vector<std::string>& headers,
                                        std::string_view body = {}) {
    return round_trip(port_, http_request(method, target, headers, body), Millis(5000));
  }

  // The upstream's description of the request it got, as a JSON text; fails on no 200.
  ::testing::AssertionResult reached_upstream(const std::optional<Response>& r,
                                              std::string_view key_id,
                                              std::optional<std::string_view> user) {
    if (!r || r->status != 200 || string_member(r->body, "method").empty()) {
      return ::testing::AssertionFailure()
             << "want the upstream's 200; " << show(r) << "\nnginx error.log: " << error_log();
    }
    const std::string& j = r->body;
    if (j.find("[\"X-Keygate-Key-Id\",\"" + std::string(key_id) + "\"]") == std::string::npos ||
        j.find("[\"X-Keygate-Api\",\"orders\"]") == std::string::npos) {
      return ::testing::AssertionFailure() << "identity headers missing upstream: " << j;
    }
    const bool has_user = j.find("[\"X-Keygate-User\",") != std::string::npos;
    if (user ? j.find("[\"X-Keygate-User\",\"" + std::string(*user) + "\"]") == std::string::npos
             : has_user) {
      return ::testing::AssertionFailure() << "wrong X-Keygate-User upstream: " << j;
    }
    return ::testing::AssertionSuccess();
  }

  // nginx's own error page with this status (the auth answer's status, or 500).
  ::testing::AssertionResult refused(const std::optional<Response>& r, int status) {
    if (!r || r->status != status) {
      return ::testing::AssertionFailure()
             << "want " << status << "; " << show(r) << "\nnginx error.log: " << error_log();
    }
    if ((status == 401) != (r->header("WWW-Authenticate") == std::string(kChallenge))) {
      return ::testing::AssertionFailure() << "challenge on 401 only; " << show(r);
    }
    if (r->body.find("\"method\"") != std::string::npos) {
      return ::testing::AssertionFailure() << "the upstream answered a refused request";
    }
    return ::testing::AssertionSuccess();
  }

  // keygate's access-log records of /_keygate/auth: their "client" members (nginx's address
  // and port, one port per connection), once there are `count` of them (the log is written
  // within its flush interval), or what there is after 5 s.
  std::vector<std::string> auth_clients(size_t count) const {
    std::vector<std::string> clients;
    const auto deadline = std::chrono::steady_clock::now() + Millis(5000);
    do {
      clients.clear();
      const ProcessResult r = run_process(
          "/bin/sh", {"-c", "cat \"$0\"/access-*.jsonl", keygate_->log_dir()});
      size_t at = 0;
      while (at < r.out.size()) {
        size_t end = r.out.find('\n', at);
        if (end == std::string::npos) end = r.out.size();
        const std::string_view line(r.out.data() + at, end - at);
        if (string_member(line, "path") == "/_keygate/auth") {
          clients.push_back(string_member(line, "client"));
        }
        at = end + 1;
      }
      if (clients.size() >= count) break;
      ::usleep(20'000);
    } while (std::chrono::steady_clock::now() < deadline);
    return clients;
  }

  bool keepalive_to_keygate_ = false;
  TempDir dir_;
  std::unique_ptr<TestServer> keygate_;
  std::unique_ptr<ChildProcess> upstream_;
  std::unique_ptr<ChildProcess> nginx_;
  uint16_t port_ = 0;
  std::string orders_key_;
  std::string billing_key_;
  std::string alice_key_;
};

TEST_F(NginxAuth, AllowedRequestReachesTheUpstreamWithTheKeysIdentity) {
  // A forged identity header from the client is replaced (here: removed, the key has no user).
  const std::optional<Response> r = through_nginx(
      "GET", "/orders/7?x=1", {"X-ApiKey: " + orders_key_, "X-Keygate-User: mallory"});
  ASSERT_TRUE(reached_upstream(r, "korders00001", std::nullopt));
  EXPECT_EQ(string_member(r->body, "target"), "/orders/7?x=1");

  ASSERT_TRUE(reached_upstream(through_nginx("GET", "/orders/8?key=" + orders_key_, {}),
                               "korders00001", std::nullopt));
  const std::string body = "{\"item\":7}";
  const std::optional<Response> post = through_nginx(
      "POST", "/orders", {"X-ApiKey: " + orders_key_, "Content-Type: application/json"}, body);
  ASSERT_TRUE(reached_upstream(post, "korders00001", std::nullopt));
  EXPECT_EQ(number_member(post->body, "body_bytes"), static_cast<int64_t>(body.size()));
  ASSERT_TRUE(
      reached_upstream(through_nginx("GET", "/orders/public/1", {"X-ApiKey: " + alice_key_}),
                       "kalice000001", "alice"));
}

TEST_F(NginxAuth, MissingOrInvalidKeyIsUnauthorizedWithTheChallenge) {
  const std::optional<Response> before =
      through_nginx("GET", "/orders/1", {"X-ApiKey: " + orders_key_});
  ASSERT_TRUE(reached_upstream(before, "korders00001", std::nullopt));
  EXPECT_TRUE(refused(through_nginx("GET", "/orders/1", {}), 401));
  EXPECT_TRUE(refused(through_nginx("GET", "/orders/1", {"X-ApiKey: it-no-such-key"}), 401));
  EXPECT_TRUE(refused(through_nginx("GET", "/orders/1?key=it-no-such-key", {}), 401));
  // The refused requests never reached the upstream: nginx opens one upstream connection per
  // forwarded request (no keepalive configured), and the next one is the very next.
  const std::optional<Response> after =
      through_nginx("GET", "/orders/2", {"X-ApiKey: " + orders_key_});
  ASSERT_TRUE(reached_upstream(after, "korders00001", std::nullopt));
  EXPECT_EQ(number_member(after->body, "connection"),
            number_member(before->body, "connection") + 1);
}

TEST_F(NginxAuth, ForbiddenKeyIsForbidden) {
  EXPECT_TRUE(refused(through_nginx("GET", "/orders/1", {"X-ApiKey: " + billing_key_}), 403));
  // A user grant for GET only: nginx's X-Original-Method carries the POST.
  EXPECT_TRUE(
      refused(through_nginx("POST", "/orders/public/1", {"X-ApiKey: " + alice_key_}, "{}"), 403));
}

TEST_F(NginxAuth, PathsNoApiServesBecomeServerErrorsInNginx) {
  // auth_request knows 2xx, 401 and 403 only; keygate's 404 no_route is a 500 to the client.
  // docs/proxies.md says to put auth_request on the API prefixes only.
  EXPECT_TRUE(refused(through_nginx("GET", "/inventory", {"X-ApiKey: " + orders_key_}), 500));
}

// docs/proxies.md's optional settings for connections to keygate. nginx keeps an upstream
// connection after a subrequest that only wants the head (auth_request's) only when the
// response has no body; keygate's answers to GET have one (its JSON), so without
// `proxy_method HEAD` every auth request opened a connection of its own.
class NginxAuthKeepalive : public NginxAuth {
 protected:
  NginxAuthKeepalive() { keepalive_to_keygate_ = true; }
};

TEST_F(NginxAuthKeepalive, AuthRequestsReuseOneConnectionToKeygateAcrossRefusals) {
  ASSERT_TRUE(reached_upstream(through_nginx("GET", "/orders/1", {"X-ApiKey: " + orders_key_}),
                               "korders00001", std::nullopt));
  EXPECT_TRUE(refused(through_nginx("GET", "/orders/1", {}), 401));
  EXPECT_TRUE(refused(through_nginx("GET", "/orders/1", {"X-ApiKey: " + billing_key_}), 403));
  EXPECT_TRUE(
      refused(through_nginx("POST", "/orders/public/1", {"X-ApiKey: " + alice_key_}, "{}"), 403));
  ASSERT_TRUE(
      reached_upstream(through_nginx("GET", "/orders/public/1", {"X-ApiKey: " + alice_key_}),
                       "kalice000001", "alice"));
  const std::vector<std::string> clients = auth_clients(5);
  ASSERT_EQ(clients.size(), 5u);
  for (const std::string& client : clients) EXPECT_EQ(client, clients.front());
}

}  // namespace
}  // namespace keygate::integration
