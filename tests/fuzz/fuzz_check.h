// FUZZ_CHECK for the fuzz targets: a violated invariant prints the target's file, the
// condition, its line and the target's current context (if it set one), then aborts, which is
// what stops libFuzzer and seed_runner.cc on the failing input.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace keygate::fuzz {

// What the target is doing, for the failure message (e.g. the split pattern being run).
inline const char* context = "";

[[noreturn]] inline void fail(const char* file, const char* what, int line) {
  std::fprintf(stderr, "%s: invariant violated: %s (line %d%s%s)\n", file, what, line,
               *context != '\0' ? ", " : "", context);
  std::abort();
}

}  // namespace keygate::fuzz

#define FUZZ_CHECK(cond)                                               \
  do {                                                                 \
    if (!(cond)) ::keygate::fuzz::fail(__FILE__, #cond, __LINE__);     \
  } while (0)

#define FUZZ_FAIL(what) ::keygate::fuzz::fail(__FILE__, what, __LINE__)
