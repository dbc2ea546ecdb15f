// README.md's "Quick start" against the real binary: the lines a newcomer copies must work.
//
// The test takes from README.md the environment the `<!-- quickstart:server -->` block sets
// before `make run`, starts keygate on examples/keygate.toml (the file `make run` uses) with
// that environment, ephemeral ports and a fresh data directory, then runs the
// `<!-- quickstart:begin -->` ... `<!-- quickstart:end -->` block verbatim with
// `bash -euo pipefail -c`, 127.0.0.1:8080 and 127.0.0.1:8081 replaced by the actual data and
// admin ports, and checks what it prints: the new key, 200 with the key's identity with it,
// 401 without it. curl comes from scripts/install-deps.sh.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

constexpr std::string_view kDefaultDataAddress = "127.0.0.1:8080";
constexpr std::string_view kDefaultAdminAddress = "127.0.0.1:8081";
constexpr Millis kScriptTimeout(30000);

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The body of the ```sh fence that follows `marker` in `markdown` (the lines between the fence
// lines, each with its newline); nullopt when the marker or the fence is missing, or when the
// fence does not follow the marker directly.
std::optional<std::string> fenced_block_after(std::string_view markdown, std::string_view marker) {
  const size_t at = markdown.find(marker);
  if (at == std::string_view::npos) return std::nullopt;
  constexpr std::string_view kOpen = "\n```sh\n";
  const size_t open = markdown.find(kOpen, at);
  if (open != at + marker.size()) return std::nullopt;
  const size_t begin = open + kOpen.size();
  // From the newline ending the opening fence, so an empty block is found too.
  const size_t close = markdown.find("\n```\n", begin - 1);
  if (close == std::string_view::npos) return std::nullopt;
  return std::string(markdown.substr(begin, close + 1 - begin));
}

// A bare Debian 12 has no make: the README's commands install the dependencies (make among
// them) first.
constexpr std::string_view kInstallDeps = "./scripts/install-deps.sh && ";

// The NAME=VALUE assignments in front of `make run` on the server block's one command line,
// "./scripts/install-deps.sh && NAME=VALUE ... make run".
std::optional<std::vector<std::pair<std::string, std::string>>> make_run_environment(
    std::string_view block, std::string* error) {
  while (!block.empty() && block.back() == '\n') block.remove_suffix(1);
  if (block.find('\n') != std::string_view::npos || !block.starts_with(kInstallDeps) ||
      !block.ends_with("make run")) {
    *error = "the server block is not one '" + std::string(kInstallDeps) +
             "NAME=VALUE ... make run' line: '" + std::string(block) + "'";
    return std::nullopt;
  }
  block.remove_prefix(kInstallDeps.size());
  block.remove_suffix(std::string_view("make run").size());
  std::vector<std::pair<std::string, std::string>> env;
  while (!block.empty()) {
    const size_t space = block.find(' ');
    const std::string_view word = block.substr(0, space);
    block = space == std::string_view::npos ? std::string_view() : block.substr(space + 1);
    if (word.empty()) continue;
    const size_t eq = word.find('=');
    if (eq == std::string_view::npos || eq == 0 ||
        word.find_first_of("'\"$`\\") != std::string_view::npos) {
      *error = "not a plain NAME=VALUE assignment: '" + std::string(word) + "'";
      return std::nullopt;
    }
    env.emplace_back(word.substr(0, eq), word.substr(eq + 1));
  }
  return env;
}

// examples/keygate.toml as TestServer's extra_config. TestServer writes its own config file,
// which opens a [limits] table (TOML forbids defining a table twice), so the example's [limits]
// entries are moved to the front, under that header; every other line keeps its order. The
// example's [server] addresses, workers and directories are overridden by TestServer's flags
// (ephemeral ports, a temp data directory).
bool example_as_extra_config(std::string_view toml, std::string* out, std::string* error) {
  std::string limits;
  std::string rest;
  bool in_limits = false;
  bool seen_limits = false;
  size_t pos = 0;
  while (pos < toml.size()) {
    const size_t eol = toml.find('\n', pos);
    const std::string_view line =
        toml.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    pos = eol == std::string_view::npos ? toml.size() : eol + 1;
    if (line.starts_with("[")) {
      in_limits = line.starts_with("[limits]");
      if (in_limits) {
        if (seen_limits) {
          *error = "examples/keygate.toml defines [limits] twice";
          return false;
        }
        seen_limits = true;
        continue;
      }
    }
    (in_limits ? limits : rest) += std::string(line) + "\n";
  }
  *out = limits + "\n" + rest;
  return true;
}

// The test's environment without proxy settings (curl would send 127.0.0.1 through a proxy).
std::vector<std::string> script_environment() {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    if (name == "http_proxy" || name == "HTTP_PROXY" || name == "https_proxy" ||
        name == "HTTPS_PROXY" || name == "all_proxy" || name == "ALL_PROXY") {
      continue;
    }
    out.emplace_back(entry);
  }
  return out;
}

void replace_all(std::string* s, std::string_view from, std::string_view to, int* count) {
  for (size_t at = s->find(from); at != std::string::npos; at = s->find(from, at + to.size())) {
    s->replace(at, from.size(), to);
    ++*count;
  }
}

bool is_generated_key(std::string_view line) {
  if (line.size() != 40 || !line.starts_with("kg_")) return false;
  for (char c : line.substr(3)) {
    const bool base62 = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    if (!base62) return false;
  }
  return true;
}

TEST(Quickstart, TheReadmeLinesCreateAKeyAndCallTheDemoApiWithAndWithoutIt) {
  const std::string readme = read_text_file(KEYGATE_SOURCE_DIR "/README.md");
  ASSERT_FALSE(readme.empty()) << "cannot read README.md";
  const std::optional<std::string> server_block =
      fenced_block_after(readme, "<!-- quickstart:server -->");
  ASSERT_TRUE(server_block.has_value())
      << "README.md: no ```sh block right after <!-- quickstart:server -->";
  std::optional<std::string> client_block = fenced_block_after(readme, "<!-- quickstart:begin -->");
  ASSERT_TRUE(client_block.has_value())
      << "README.md: no ```sh block right after <!-- quickstart:begin -->";
  const size_t block_at = readme.find(*client_block);
  ASSERT_NE(readme.find("```\n<!-- quickstart:end -->", block_at), std::string::npos)
      << "README.md: the quickstart block must close right before <!-- quickstart:end -->";

  std::string error;
  const auto env = make_run_environment(*server_block, &error);
  ASSERT_TRUE(env.has_value()) << error;
  // `make run` must start keygate on the example configuration this test uses.
  const std::string makefile = read_text_file(KEYGATE_SOURCE_DIR "/Makefile");
  ASSERT_NE(makefile.find("tools/keygate --config examples/keygate.toml"), std::string::npos)
      << "Makefile: 'make run' no longer runs keygate on examples/keygate.toml";

  std::string extra_config;
  ASSERT_TRUE(example_as_extra_config(read_text_file(KEYGATE_SOURCE_DIR "/examples/keygate.toml"),
                                      &extra_config, &error))
      << error;
  ServerOptions options;
  options.extra_config = extra_config;
  options.env = *env;
  options.capture_stderr = true;
  TestServer server(std::move(options));
  ASSERT_TRUE(server.start(&error)) << error << "\nstderr: " << server.error_output();

  int data_uses = 0;
  int admin_uses = 0;
  std::string script = *client_block;
  replace_all(&script, kDefaultDataAddress, "127.0.0.1:" + std::to_string(server.data_port()),
              &data_uses);
  replace_all(&script, kDefaultAdminAddress, "127.0.0.1:" + std::to_string(server.admin_port()),
              &admin_uses);
  ASSERT_GT(data_uses, 0) << "the quickstart block no longer calls " << kDefaultDataAddress;
  ASSERT_GT(admin_uses, 0) << "the quickstart block no longer calls " << kDefaultAdminAddress;

  const std::vector<std::string> script_env = script_environment();
  const ProcessResult run =
      run_process("/bin/bash", {"-euo", "pipefail", "-c", script}, &script_env, kScriptTimeout);
  const std::string shown = "script:\n" + script + "\nstdout:\n" + run.out + "\nstderr:\n" +
                            run.err + "\nserver stderr:\n" + server.error_output();
  ASSERT_FALSE(run.status.timed_out) << "still running after " << kScriptTimeout.count() << " ms\n"
                                     << shown;
  ASSERT_TRUE(run.status.clean()) << run.status.describe() << "\n" << shown;

  // The echoed key, then the 200 (with the key) and the 401 (without), in that order.
  std::vector<std::string> lines;
  std::istringstream in(run.out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  size_t i = 0;
  while (i < lines.size() && !is_generated_key(lines[i])) ++i;
  ASSERT_LT(i, lines.size()) << "no generated key echoed\n" << shown;
  const std::string key = lines[i];
  const size_t ok_at = run.out.find("HTTP/1.1 200 ");
  const size_t unauthorized_at = run.out.find("HTTP/1.1 401 ");
  ASSERT_NE(ok_at, std::string::npos) << shown;
  ASSERT_NE(unauthorized_at, std::string::npos) << shown;
  ASSERT_LT(ok_at, unauthorized_at) << shown;
  const std::string ok_part = run.out.substr(ok_at, unauthorized_at - ok_at);
  const std::string unauthorized_part = run.out.substr(unauthorized_at);
  EXPECT_NE(ok_part.find("\"api\":\"demo\""), std::string::npos) << shown;
  const std::string key_id = string_member(ok_part, "key_id");
  EXPECT_EQ(key_id.size(), 13u) << shown;
  EXPECT_NE(unauthorized_part.find("\"error\":\"missing_api_key\""), std::string::npos) << shown;
  EXPECT_NE(unauthorized_part.find("WWW-Authenticate: ApiKey realm=\"keygate\""), std::string::npos)
      << shown;

  // The key the README made is the one that answered, and it is what the README says it is.
  const auto admin = std::find_if(env->begin(), env->end(), [](const auto& kv) {
    return kv.first == "KEYGATE_BOOTSTRAP_ADMIN_KEY";
  });
  ASSERT_NE(admin, env->end()) << "the README no longer sets KEYGATE_BOOTSTRAP_ADMIN_KEY";
  const std::optional<Response> record = round_trip(
      server.admin_port(), "GET /admin/keys/" + key_id +
                               " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ApiKey: " + admin->second + "\r\n\r\n");
  ASSERT_TRUE(record.has_value());
  ASSERT_EQ(record->status, 200) << record->raw;
  EXPECT_NE(record->body.find("\"apis\":[\"demo\"]"), std::string::npos) << record->body;
  EXPECT_EQ(string_member(record->body, "hint"), key.substr(0, 6) + "...");

  const ExitStatus status = server.stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
}

// README's "Tests" command is the one CI runs, word for word, and it installs the dependencies
// before it needs make.
TEST(Quickstart, CiRunsExactlyTheReadmesTestCommand) {
  const std::string readme = read_text_file(KEYGATE_SOURCE_DIR "/README.md");
  const size_t tests = readme.find("\n## Tests\n");
  ASSERT_NE(tests, std::string::npos) << "README.md has no '## Tests' section";
  const size_t fence = readme.find("\n```sh\n", tests);
  ASSERT_NE(fence, std::string::npos) << "README.md: no ```sh block under '## Tests'";
  const std::optional<std::string> block =
      fenced_block_after(std::string_view(readme).substr(fence), "");
  ASSERT_TRUE(block.has_value());
  EXPECT_EQ(*block, std::string(kInstallDeps) + "make test\n");
  const std::string ci = read_text_file(KEYGATE_SOURCE_DIR "/.ci/run");
  ASSERT_FALSE(ci.empty()) << "cannot read .ci/run";
  EXPECT_TRUE(ci.ends_with("\n" + *block)) << ".ci/run does not end with README's test command:\n"
                                           << ci;
}

// `make -n TARGET` (what make would run, nothing run), each recipe line joined across its "\"
// continuations; nullopt when make fails.
std::optional<std::string> make_dry_run(std::string_view target) {
  const ProcessResult r =
      run_process("/usr/bin/make", {"-n", "-C", KEYGATE_SOURCE_DIR, std::string(target)});
  if (!r.status.clean()) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < r.out.size(); ++i) {
    if (r.out[i] == '\\' && i + 1 < r.out.size() && r.out[i + 1] == '\n') {
      i += 1;
      while (i + 1 < r.out.size() && r.out[i + 1] == ' ') ++i;
      continue;
    }
    out += r.out[i];
  }
  return out;
}

// A first `make run` builds what it runs, not the test suite and the micro-benchmarks; `make
// bench` builds the benchmarks bench/e2e.sh needs (bench/keygate-bare-responder) in the same
// directory before it runs the script.
TEST(Quickstart, MakeRunLeavesTestsAndBenchmarksOutAndMakeBenchBuildsThem) {
  const std::optional<std::string> run = make_dry_run("run");
  ASSERT_TRUE(run.has_value()) << "make -n run failed";
  EXPECT_NE(run->find("cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release "
                      "-DKEYGATE_BUILD_TESTS=OFF -DKEYGATE_BUILD_BENCH=OFF\n"),
            std::string::npos)
      << *run;
  EXPECT_NE(run->find("tools/keygate --config examples/keygate.toml"), std::string::npos) << *run;
  const std::optional<std::string> bench = make_dry_run("bench");
  ASSERT_TRUE(bench.has_value()) << "make -n bench failed";
  const size_t configure = bench->find(
      "cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DKEYGATE_BUILD_TESTS=OFF "
      "-DKEYGATE_BUILD_BENCH=ON\n");
  const size_t script = bench->find("./bench/e2e.sh");
  ASSERT_NE(configure, std::string::npos) << *bench;
  ASSERT_NE(script, std::string::npos) << *bench;
  EXPECT_LT(configure, script) << *bench;
}

}  // namespace
}  // namespace keygate::integration
