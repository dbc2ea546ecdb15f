// ApiSet and ApiVersions: one version of the configured APIs (with the worker settings a
// reload brought), and the one that is current.
//
// An ApiSet is immutable once built (by the main thread, at start and on each reload) and shared
// by reference count between the main thread, the admin executor and every worker; a worker
// holds it from the reload that brought it until no request of its own uses it any more (see
// docs/architecture.md, "Reloading the APIs"). ApiVersions is thread-safe (a mutex): it is read
// by the admin executor once per admin request and written by the main thread on reload, never
// on the data plane, which reaches its version through its worker (net/).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "core/limits.h"
#include "core/permissions.h"

namespace keygate {

// The settings a reload applies on the workers besides the APIs (core/config.h,
// reload_changes): published with the version they came with, so a worker adopts both at the
// same loop pass, on its own thread (no request reads them while they change).
struct WorkerSettings {
  // The worker's limits; connections_per_worker_max is not taken (it sized the worker's
  // registered file table at start).
  Limits limits;
  uint64_t admin_body_bytes_max = 64 * 1024 * 1024;  // [admin] body_bytes_max
  uint64_t capture_bytes_max = 64 * 1024;            // [log] capture_bytes_max
};

struct ApiSet {
  ApiRegistry registry;     // initialized (ApiRegistry::init succeeded)
  uint64_t generation = 1;  // 1 at start, +1 per applied reload
  // Set by every reload: the workers adopt it with the APIs. Unset (the first version, tests
  // that reload the APIs only): the workers keep the settings they have.
  std::optional<WorkerSettings> settings;
};

class ApiVersions {
 public:
  ApiVersions() = default;
  explicit ApiVersions(std::shared_ptr<const ApiSet> set) : current_(std::move(set)) {}
  ApiVersions(const ApiVersions&) = delete;
  ApiVersions& operator=(const ApiVersions&) = delete;

  // The current version (null before the first publish). The caller keeps it alive as long as
  // it uses it, so a reload meanwhile never frees it under the caller.
  std::shared_ptr<const ApiSet> current() const {
    std::lock_guard lock(mu_);
    return current_;
  }
  // Makes `set` current; the previous one lives on while anyone still holds it.
  void publish(std::shared_ptr<const ApiSet> set) {
    std::lock_guard lock(mu_);
    current_.swap(set);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const ApiSet> current_;
};

}  // namespace keygate
