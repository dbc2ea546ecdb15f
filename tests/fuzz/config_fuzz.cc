// libFuzzer target for keygate::parse_config, validate_config and ApiRegistry::init
// (core/config.h, core/permissions.h): whatever the configuration file holds, keygate either
// starts with a sound configuration or refuses it with one clear line.
//
// Input: the TOML text itself.
//
// Checked:
//   - a refusal's message is one line that names the source ("<source>:<line>:<col>: <what>" or
//     "<source>: <what>"), without control characters: it is printed to a terminal or a journal
//     as the one line explaining why keygate did not start;
//   - an accepted Config passes validate_config unless its two listeners overlap (parse_config
//     leaves that rule to validate_config), and its addresses and upstreams are what the file
//     said: numeric literals that parse again to the same address, without hidden bytes;
//   - ApiRegistry::init accepts the Config's APIs, and then every route of every API matches
//     its own API (the longest match for the route itself), find(name) finds every API, and
//     every route is a valid prefix;
//   - parsing the same text twice gives the same verdict and message.
// The same function runs the seed corpus as a plain test (seed_runner.cc) under any compiler.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/config.h"
#include "core/permissions.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

constexpr std::string_view kSource = "fuzz.toml";

bool one_clean_line(std::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return false;
  }
  return true;
}

void check_address(const keygate::ListenAddress& a) {
  FUZZ_CHECK(!a.host.empty());
  FUZZ_CHECK(one_clean_line(a.host));
  keygate::ListenAddress again;
  std::string error;
  FUZZ_CHECK(keygate::parse_listen_address(a.to_string(), &again, &error));
  FUZZ_CHECK(again.host == a.host && again.port == a.port && again.ipv6 == a.ipv6);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  keygate::Config config;
  std::string error;
  const bool ok = keygate::parse_config(text, kSource, &config, &error);

  keygate::Config again;
  std::string error_again;
  FUZZ_CHECK(keygate::parse_config(text, kSource, &again, &error_again) == ok);

  if (!ok) {
    FUZZ_CHECK(!error.empty());
    FUZZ_CHECK(error == error_again);
    FUZZ_CHECK(error.starts_with(std::string(kSource) + ":"));
    FUZZ_CHECK(one_clean_line(error));
    return 0;
  }

  check_address(config.listen);
  check_address(config.admin_listen);
  std::string why;
  if (!keygate::addresses_overlap(config.listen, config.admin_listen)) {
    FUZZ_CHECK(keygate::validate_config(config, &why));
  } else {
    FUZZ_CHECK(!keygate::validate_config(config, &why));
    FUZZ_CHECK(one_clean_line(why));
  }

  keygate::ApiRegistry registry;
  FUZZ_CHECK(registry.init(config.apis, &why));
  for (const keygate::ApiConfig& api : registry.apis()) {
    FUZZ_CHECK(registry.find(api.name) == &api);
    FUZZ_CHECK(!api.routes.empty());
    for (const std::string& route : api.routes) {
      FUZZ_CHECK(keygate::prefix_is_valid(route));
      FUZZ_CHECK(registry.match(route) == &api);
    }
    for (const std::string& upstream : api.upstreams) {
      keygate::ListenAddress address;
      FUZZ_CHECK(keygate::parse_listen_address(upstream, &address, &why));
      FUZZ_CHECK(address.port != 0);
      check_address(address);
    }
  }
  return 0;
}
