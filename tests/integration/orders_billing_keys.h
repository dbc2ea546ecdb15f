// The store both auth-endpoint suites (auth_endpoint_test, nginx_auth_test) start keygate on:
// user "alice" may GET /orders/public..., and three keys for kOrdersAndBillingApis.
//
// Test-only; call before keygate opens the data directory.
#pragma once

#include <gtest/gtest.h>

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/api_key.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {

struct OrdersBillingKeys {
  std::string orders;   // korders00001: API orders
  std::string billing;  // kbilling0001: API billing
  std::string alice;    // kalice000001: API orders, user alice
};

inline void create_key_in_store(storage::KeyService& keys, const std::string& value,
                                std::string id, std::vector<std::string> apis,
                                std::optional<std::string> user) {
  KeyRecord r;
  r.id = std::move(id);
  r.digest = digest_key(value);
  r.hint = make_key_hint(value);
  r.apis = std::move(apis);
  r.user = std::move(user);
  r.created_at = static_cast<int64_t>(std::time(nullptr));
  r.updated_at = r.created_at;
  const storage::Status s = keys.create_key(r);
  ASSERT_TRUE(s.is_ok()) << s.message();
}

// Writes the user and the keys (values `prefix` + "orders-"/"billing-"/"alice-" + random hex)
// into the store at `data_dir`, and their values into `*out`. Wrap in ASSERT_NO_FATAL_FAILURE.
inline void seed_orders_billing_keys(const std::string& data_dir, const std::string& prefix,
                                     OrdersBillingKeys* out) {
  out->orders = prefix + "orders-" + random_hex(16);
  out->billing = prefix + "billing-" + random_hex(16);
  out->alice = prefix + "alice-" + random_hex(16);
  storage::DataDir dir;
  std::string error;
  ASSERT_TRUE(dir.open(data_dir, &error)) << error;
  auto keys = std::make_unique<storage::KeyService>();
  ASSERT_TRUE(keys->open(data_dir, storage::KeyService::Options{}, &error)) << error;
  ASSERT_TRUE(keys->put_user({"alice", {{"orders", {"GET"}, "/orders/public"}}}).is_ok());
  create_key_in_store(*keys, out->orders, "korders00001", {"orders"}, std::nullopt);
  create_key_in_store(*keys, out->billing, "kbilling0001", {"billing"}, std::nullopt);
  create_key_in_store(*keys, out->alice, "kalice000001", {"orders"}, "alice");
}

}  // namespace keygate::integration
