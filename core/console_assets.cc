#include "core/console_assets.h"

namespace keygate {

const ConsoleAsset* find_console_asset(std::string_view path) noexcept {
  for (const ConsoleAsset& asset : console_assets()) {
    if (asset.path == path) return &asset;
  }
  return nullptr;
}

bool is_console_path(std::string_view path) noexcept {
  static constexpr std::string_view kRoot = "/console";
  return path.starts_with(kRoot) && (path.size() == kRoot.size() || path[kRoot.size()] == '/');
}

}  // namespace keygate
