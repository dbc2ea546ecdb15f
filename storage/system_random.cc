#include "storage/system_random.h"

#include <sys/random.h>

#include <cerrno>

namespace keygate::storage {

bool system_random(std::span<uint8_t> out) noexcept {
  size_t filled = 0;
  // Bounded: getrandom returns at least 256 bytes per call once initialized; EINTR retries
  // are bounded by the signal rate.
  while (filled < out.size()) {
    const ssize_t n = ::getrandom(out.data() + filled, out.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    filled += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace keygate::storage
