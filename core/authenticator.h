// Authenticator: finds the key record a request's API key names — the part of request handling
// the data plane (AuthHandler) and the admin API (AdminHandler) share.
//
// Worker-local: one per handler (so one per worker and listener), owning its KeyExtractor. The
// KeyDirectory it reads is shared and thread-safe. Nothing here allocates per request or
// blocks; a key the directory's cache does not hold is fetched off the event loop into
// caller-owned memory (the handler's per-request state), and the handler defers.
//
// Steps, each ending the resolution with a rejection when it fails:
//   extract the key (key_extractor.h)      -> 401 missing/invalid/ambiguous_api_key (with the
//                                             challenge), 400 invalid_body, 413 body_too_large;
//   a generated-shape value, bad checksum  -> 401 invalid_api_key, no lookup;
//   digest, KeyDirectory::find_key         -> unknown: 401 invalid_api_key;
//                                             not cached: fetch and defer (kFetch), then
//                                             finish_fetch(): 503 store_unavailable when the
//                                             store cannot answer, else as above — unless a
//                                             key changed while the fetch was out (the copy
//                                             may be stale): then the lookup is made again,
//                                             and may fetch again (kFetch), at most
//                                             kFetchesMax fetches, then 503 store_unavailable;
//   the value matched the record's previous digest (a rotation's grace period) and the grace
//   is over (now >= previous_valid_until)  -> 401 invalid_api_key.
// A found record is not yet authorized: whether it is enabled, unexpired and may call what the
// request asks is the caller's decision (authorize() in permissions.h). The key's user is
// always the directory's current one, also for a fetched record. Rejection messages never say
// anything about the key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/api_key.h"
#include "core/handler.h"
#include "core/http_request.h"
#include "core/key_directory.h"
#include "core/key_extractor.h"
#include "core/permissions.h"

namespace keygate {

class Authenticator {
 public:
  // What to answer when resolution fails: status, static code and message for the error body,
  // and whether the response must carry `WWW-Authenticate: ApiKey realm="keygate"` (401s).
  struct Rejection {
    int status = 0;
    std::string_view code;
    std::string_view message;
    bool challenge = false;
  };

  enum class Outcome : uint8_t {
    kFound,     // key (and user) are set
    kRejected,  // rejection is set
    kFetch,     // the directory's cache does not know the digest: call fetch() and defer
                // (from finish_fetch(): fetch(lookup.digest, &lookup, ctx) again)
  };

  struct Result {
    Outcome outcome = Outcome::kRejected;
    // kFound: the record, valid until the worker's next wait (from find_key) or as long as the
    // PendingLookup it came from; do not keep it across a deferral.
    const KeyRecord* key = nullptr;
    // kFound: the key's user when it has one and the user exists, else nullptr.
    const User* user = nullptr;
    // kFound: the digest of the value presented (the record's current or, during a rotation's
    // grace, previous digest).
    KeyDigest digest{};
    Rejection rejection;
    // The key value the request presented, whenever extraction saw one (kFound, kFetch, and
    // kRejected for an unknown or mistyped key, or for an ambiguous or malformed pair: then
    // the first value, ExtractResult::seen): the access log scrubs it from the record's path
    // and captures. A view into the request or the extractor's scratch, valid until the next
    // extraction. Empty from finish_fetch() (see extracted_key()).
    std::string_view presented;
  };

  // A lookup in flight: lives in the handler's per-request state (RequestContext::state). The
  // fetching thread writes `fetch` before it posts; the handler leaves it alone until then.
  struct PendingLookup {
    KeyDigest digest{};
    KeyDirectory::FetchResult fetch;
    uint8_t fetches = 0;  // fetch() calls for this request, bounded by kFetchesMax
    // Empties it for reuse (keeps the strings' capacity where it can).
    void reset() noexcept;
  };

  // The WWW-Authenticate value every 401 carries.
  static constexpr std::string_view kChallenge = "ApiKey realm=\"keygate\"";
  // Store reads one request may make: the first, and more only when a key change voided the
  // previous one before the request resumed. Beyond it: 503 store_unavailable, so steady key
  // churn cannot keep a request deferred for ever.
  static constexpr uint8_t kFetchesMax = 3;

  // `directory` must outlive the authenticator. Allocates the extractor's scratch for bodies of
  // up to `body_inspect_bytes_max` bytes (see KeyExtractor).
  Authenticator(KeyDirectory& directory, size_t body_inspect_bytes_max);

  // Resolves the key `request` carries at `now` (Unix seconds). With kFetch, `*pending_digest`
  // is the digest to hand to fetch(). Does not allocate.
  Result resolve(const HttpRequest& request, int64_t now, KeyDigest* pending_digest) noexcept;

  // resolve() before the body is read: from the X-ApiKey header and the query only. Returns
  // false (and leaves `*result` alone) when only the body can decide, i.e. neither carried a
  // key and the body may (KeyExtractor::body_may_carry_key); otherwise true with `*result` as
  // resolve() would give it for the whole request. Does not allocate.
  bool resolve_head(const HttpRequest& request, int64_t now, KeyDigest* pending_digest,
                    Result* result) noexcept;

  // Starts fetching `digest` into `*lookup` and defers the request (ctx.defer()); the caller
  // returns Handler::Result::kPending, and on resume calls finish_fetch(*lookup, ...). Counts
  // the fetch in lookup->fetches (reset() zeroes it).
  void fetch(const KeyDigest& digest, PendingLookup* lookup, RequestContext& ctx) noexcept;

  // The key value `request` carries (extracted again: for the access log after a fetch, or for
  // an answer given before the key was looked at, which scrubs it from the record's path and
  // captures): ExtractResult::seen, so the first of an ambiguous pair too; empty when it
  // carries none. A view into the request or the extractor's scratch, valid until the next
  // extraction. Does not allocate.
  std::string_view extracted_key(const HttpRequest& request) noexcept;

  // The answer of a fetch, after its ticket was posted (worker thread, at resume). When no key
  // changed since the fetch read the store (the directory's key_generation() is the one the
  // fetch noted), the fetched record decides and kFound points into `lookup`. Otherwise the
  // copy may predate a revocation that has returned since, so the digest is looked up again:
  // kFound then points into the directory's cache (valid until the worker's next wait, like
  // resolve()'s), and a digest the cache does not hold gives kFetch — call
  // fetch(lookup.digest, &lookup, ctx) and defer again — or, after kFetchesMax fetches, 503
  // store_unavailable. The user is the directory's current one. Does not allocate.
  Result finish_fetch(const PendingLookup& lookup, int64_t now) const noexcept;

  // The most of a body the extractor searches for a key (larger: 413 body_too_large).
  size_t body_inspect_bytes_max() const noexcept { return extractor_.body_inspect_bytes_max(); }

 private:
  // The steps after extraction (checksum, lookup, grace), shared by resolve() and
  // resolve_head().
  Result resolve_extracted(const ExtractResult& extracted, int64_t now,
                           KeyDigest* pending_digest) noexcept;
  // The directory's current user of `record`; nullptr when it has none or the user is gone.
  const User* user_of(const KeyRecord& record) const noexcept;
  // The decision the cache can make for `digest`: found (authorized), unknown (401), or
  // Outcome::kFetch when it does not hold the digest.
  Result from_cache(const KeyDigest& digest, int64_t now) const noexcept;
  // kFound for `record` looked up by `digest`, unless it matched a previous digest whose grace
  // is over.
  static Result found(const KeyRecord& record, const User* user, const KeyDigest& digest,
                      int64_t now) noexcept;

  KeyDirectory& directory_;
  KeyExtractor extractor_;
};

}  // namespace keygate
