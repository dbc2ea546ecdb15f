// KEYGATE_ASSERT: invariant checks that stay on in every build (Release included).
//
// Use only for programmer errors. Bytes from the network or disk are validated and rejected,
// never asserted on.
#pragma once

#include <cstdio>
#include <cstdlib>

#define KEYGATE_ASSERT(cond)                                                              \
  do {                                                                                    \
    if (__builtin_expect(!(cond), 0)) {                                                   \
      std::fprintf(stderr, "keygate: assertion failed: %s (%s:%d)\n", #cond, __FILE__,    \
                   __LINE__);                                                             \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
