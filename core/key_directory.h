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

  // The answer of fetch(), written by the fetching thread before it posts the ticket. Owned by
  // the caller (e.g. in RequestContext::state) and left alone by the caller until the post.
  struct FetchResult {
    bool found = false;
    bool failed = false;  // the store could not answer (I/O error): answer 503, not 401
    KeyRecord record;
    bool has_user = false;
    User user;  // the record's user, when it has one and the user exists
  };

  // Worker thread, non-blocking: looks the digest up in the store off the event loop, fills
  // `*out`, caches the answer (positively or negatively, bounded), then posts `ticket`. Always
  // posts exactly once, also on errors (then out->failed is set).
  virtual void fetch(const KeyDigest& digest, FetchResult* out, ResumeTicket ticket) noexcept = 0;
};

}  // namespace keygate
