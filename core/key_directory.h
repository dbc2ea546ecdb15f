// KeyDirectory: how request handling finds keys and users, without knowing where they live.
//
// Owned by core, implemented by storage (the sharded cache in front of RocksDB) and by test
// doubles. Threading: find_key()/find_user()/key_generation() are called on worker threads
// concurrently and must not block or take a lock a writer can hold. A pointer they return stays
// valid until the calling worker's next LoopObserver::before_wait() (quiescent-state-based
// reclamation), so a handler must not keep one across a deferral.
//
// Visibility: once a change to a key or user has been made (its call returned), find_key(),
// find_user() and key_generation() on every worker answer with it. A fetched record is a copy
// from the past: it may be used only while key_generation() still equals the value the fetch
// noted before reading (FetchResult::generation), and its user is looked up with find_user()
// when it is used (the directory holds every user).
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
  // Worker thread, non-blocking. nullptr when no such user. Every user is always known here
  // (users are few): no fetch is ever needed for one.
  virtual const User* find_user(std::string_view name) noexcept = 0;
  // Worker thread, wait-free: changes whenever a change to any key (create, update, delete,
  // import) is published, before that change's call returns. Users' changes leave it alone.
  virtual uint64_t key_generation() noexcept = 0;

  // The answer of fetch(), written by the fetching thread before it posts the ticket. Owned by
  // the caller (e.g. in RequestContext::state) and left alone by the caller until the post.
  struct FetchResult {
    bool found = false;
    bool failed = false;  // the store could not answer (I/O error): answer 503, not 401
    // key_generation() as the fetching thread saw it before reading the store. When it differs
    // at resume, a key changed since (perhaps this one, perhaps revoked): `found` and `record`
    // must not decide the request; look the digest up again.
    uint64_t generation = 0;
    KeyRecord record;  // found: the record as the store had it
  };

  // Worker thread, non-blocking: looks the digest up in the store off the event loop, fills
  // `*out` (the record only: its user is found at resume with find_user()), caches the answer
  // (positively or negatively, bounded, unless a key changed meanwhile), then posts `ticket`.
  // Always posts exactly once, also on errors (then out->failed is set).
  virtual void fetch(const KeyDigest& digest, FetchResult* out, ResumeTicket ticket) noexcept = 0;
};

}  // namespace keygate
