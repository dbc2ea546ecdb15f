// keygate-seed: bulk-creates API keys directly in a data directory, for benchmarks and tests.
//
// Offline tool: the data directory must not be in use by a running keygate (it takes the same
// lock). Keys get predictable values "<prefix><index, 8 digits>" so a load generator can send
// them; never use it for production keys.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "core/api_key.h"
#include "storage/data_dir.h"
#include "storage/key_service.h"

namespace {

int usage(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "keygate-seed: %s\n", why);
  std::fprintf(stderr,
               "Usage: keygate-seed --data-dir DIR --count N --api NAME [--prefix P]\n"
               "Creates N keys with values P00000000.. (default prefix 'seed-key-') allowed to\n"
               "call API NAME, in batches of 10000 synced writes.\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir;
  std::string api;
  std::string prefix = "seed-key-";
  long count = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return usage(("missing value for " + arg).c_str());
    const std::string value = argv[++i];
    if (arg == "--data-dir") data_dir = value;
    else if (arg == "--api") api = value;
    else if (arg == "--prefix") prefix = value;
    else if (arg == "--count") count = std::strtol(value.c_str(), nullptr, 10);
    else return usage(("unknown flag " + arg).c_str());
  }
  if (data_dir.empty() || api.empty() || count < 0 || count > 100'000'000) return usage(nullptr);

  std::string error;
  keygate::storage::DataDir dir;
  keygate::storage::KeyService keys;
  if (!dir.open(data_dir, &error) || !keys.open(data_dir, {}, &error)) {
    std::fprintf(stderr, "keygate-seed: %s\n", error.c_str());
    return 1;
  }
  const auto now = static_cast<int64_t>(std::time(nullptr));
  constexpr long kBatch = 10000;
  std::vector<keygate::KeyRecord> batch;
  for (long start = 0; start < count; start += kBatch) {
    batch.clear();
    for (long i = start; i < count && i < start + kBatch; ++i) {
      char value[300];
      std::snprintf(value, sizeof(value), "%s%08ld", prefix.c_str(), i);
      uint8_t random[keygate::kKeyIdRandomBytes];
      if (!keygate::storage::system_random(random)) {
        std::fprintf(stderr, "keygate-seed: getrandom failed\n");
        return 1;
      }
      keygate::KeyRecord r;
      r.id = keygate::make_key_id(random);
      r.digest = keygate::digest_key(value);
      r.hint = keygate::make_key_hint(value);
      r.description = "seeded";
      r.apis = {api};
      r.created_at = r.updated_at = now;
      batch.push_back(std::move(r));
    }
    size_t failed = 0;
    const auto status = keys.import_keys(std::move(batch), &failed);
    if (!status.is_ok()) {
      std::fprintf(stderr, "keygate-seed: batch at %ld failed at +%zu: %s\n", start, failed,
                   status.message());
      return 1;
    }
    batch = {};
  }
  std::printf("keygate-seed: created %ld keys for API %s\n", count, api.c_str());
  return 0;
}
