// KeyDirectory: how request handling finds keys and users, without knowing where they live.
//
// Owned by core, implemented by storage (the sharded cache in front of RocksDB) and by test
// doubles. Threading: find_key()/find_user() are called on worker threads concurrently and must
// not block or take a lock a writer can hold. A pointer they return stays valid until the
// calling worker's next LoopObserver::before_wait() (quiescent-state-based reclamation), so a
// handler must not keep one across a deferral.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/api_key.h"
#include "core/handler.h"
#include "core/permissions.h"

namespace keygate {

class KeyDirectory {
 public:
  enum class Lookup : uint8_t {
    kFound,     // *record is set
    kUnknown,   // no key has this digest (known for sure, or cached negatively)
    kNotCached, // the cache is partial and does not know: call fetch() and defer
  };

  virtual ~KeyDirectory() = default;

  // Worker thread, non-blocking, no allocation.
  virtual Lookup find_key(const KeyDigest& digest, const KeyRecord** record) noexcept = 0;
  // Worker thread, non-blocking. nullptr when no such user.
  virtual const User* find_user(std::string_view name) noexcept = 0;

  // Worker thread, non-blocking: looks the digest up in the store off the event loop, caches
  // the answer (positively or negatively), then posts `ticket`. After the post, find_key() on
  // the worker answers kFound or kUnknown for this digest. Must always post, even on errors
  // (then find_key() may answer kUnknown).
  virtual void fetch(const KeyDigest& digest, ResumeTicket ticket) noexcept = 0;
};

}  // namespace keygate
