// system_random: random bytes from the kernel (getrandom(2)) for key values and ids.
//
// Thread-safe, stateless. Lives in storage/ because core/ makes no syscalls: core takes its
// randomness as an argument, and the wiring passes this function.
#pragma once

#include <cstdint>
#include <span>

namespace keygate::storage {

// Fills `out` with bytes from getrandom(2); false when the kernel cannot deliver. Blocks only
// before the kernel's entropy pool is first initialized.
bool system_random(std::span<uint8_t> out) noexcept;

}  // namespace keygate::storage
