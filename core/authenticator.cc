#include "core/authenticator.h"

#include "core/assert.h"

namespace keygate {
namespace {

Authenticator::Result rejected(int status, std::string_view code, std::string_view message,
                               bool challenge) noexcept {
  Authenticator::Result r;
  r.outcome = Authenticator::Outcome::kRejected;
  r.rejection = {status, code, message, challenge};
  return r;
}

Authenticator::Result invalid_key() noexcept {
  return rejected(401, "invalid_api_key", "the API key is not valid", true);
}

Authenticator::Result store_unavailable() noexcept {
  return rejected(503, "store_unavailable", "the key store cannot answer right now", false);
}

}  // namespace

void Authenticator::PendingLookup::reset() noexcept {
  digest = KeyDigest{};
  fetch = KeyDirectory::FetchResult{};
  fetches = 0;
}

Authenticator::Authenticator(KeyDirectory& directory, size_t body_inspect_bytes_max)
    : directory_(directory), extractor_(body_inspect_bytes_max) {}

Authenticator::Result Authenticator::resolve(const HttpRequest& request, int64_t now,
                                             KeyDigest* pending_digest) noexcept {
  const ExtractResult extracted = extractor_.extract(request, request.body_readable_padding);
  return resolve_extracted(extracted, now, pending_digest);
}

bool Authenticator::resolve_head(const HttpRequest& request, int64_t now,
                                 KeyDigest* pending_digest, Result* result) noexcept {
  // The extractor reads the body only when header and query carried no key; without a body
  // it answers from those two alone.
  HttpRequest head = request;
  head.body = {};
  head.body_readable_padding = 0;
  const ExtractResult extracted = extractor_.extract(head);
  if (extracted.outcome == KeyOutcome::kMissing && KeyExtractor::body_may_carry_key(request)) {
    return false;
  }
  *result = resolve_extracted(extracted, now, pending_digest);
  return true;
}

Authenticator::Result Authenticator::resolve_extracted(const ExtractResult& extracted, int64_t now,
                                                       KeyDigest* pending_digest) noexcept {
  if (extracted.outcome != KeyOutcome::kFound) {
    const KeyRejection k = key_rejection(extracted.outcome);
    Result r = rejected(k.status, k.code, k.message, k.status == 401);
    // An ambiguous or malformed pair still carried a key (the header's, say): the access log
    // scrubs it from wherever else the request holds it.
    r.presented = extracted.seen;
    return r;
  }
  // A mistyped generated key is caught here, before it costs a lookup (or a store read).
  if (has_generated_shape(extracted.key) && !generated_checksum_ok(extracted.key)) {
    Result r = invalid_key();
    r.presented = extracted.key;
    return r;
  }
  const KeyDigest digest = digest_key(extracted.key);
  Result r = from_cache(digest, now);
  if (r.outcome == Outcome::kFetch) *pending_digest = digest;
  r.presented = extracted.key;
  return r;
}

Authenticator::Result Authenticator::from_cache(const KeyDigest& digest,
                                                int64_t now) const noexcept {
  const KeyRecord* key = nullptr;
  switch (directory_.find_key(digest, &key)) {
    case KeyDirectory::Lookup::kFound:
      return found(*key, user_of(*key), digest, now);
    case KeyDirectory::Lookup::kUnknown:
      return invalid_key();
    case KeyDirectory::Lookup::kNotCached: {
      Result r;
      r.outcome = Outcome::kFetch;
      return r;
    }
  }
  KEYGATE_ASSERT(false && "every KeyDirectory::Lookup value is handled above");
  return invalid_key();
}

std::string_view Authenticator::extracted_key(const HttpRequest& request) noexcept {
  return extractor_.extract(request, request.body_readable_padding).seen;
}

void Authenticator::fetch(const KeyDigest& digest, PendingLookup* lookup,
                          RequestContext& ctx) noexcept {
  KEYGATE_ASSERT(lookup->fetches < kFetchesMax);
  lookup->digest = digest;
  ++lookup->fetches;
  directory_.fetch(digest, &lookup->fetch, ctx.defer());
}

Authenticator::Result Authenticator::finish_fetch(const PendingLookup& lookup,
                                                  int64_t now) const noexcept {
  const KeyDirectory::FetchResult& f = lookup.fetch;
  if (f.failed) return store_unavailable();
  if (directory_.key_generation() == f.generation) {
    if (!f.found) return invalid_key();
    return found(f.record, user_of(f.record), lookup.digest, now);
  }
  // A key changed after the fetch read the store, and its call may have returned before this
  // resume: a DELETE, disable or rotation of this very key must win over the copy (the same
  // promise the cache keeps). The cache holds the change; if it does not hold the digest, the
  // store is asked again.
  Result r = from_cache(lookup.digest, now);
  if (r.outcome == Outcome::kFetch && lookup.fetches >= kFetchesMax) return store_unavailable();
  return r;
}

const User* Authenticator::user_of(const KeyRecord& record) const noexcept {
  // Never a copy from a fetch: users are all in the directory, and only its answer reflects a
  // user change (delete_user, a grant removed) that returned before this request is decided.
  return record.user ? directory_.find_user(*record.user) : nullptr;
}

Authenticator::Result Authenticator::found(const KeyRecord& record, const User* user,
                                           const KeyDigest& digest, int64_t now) noexcept {
  // The directory answers for the record's current digest and, during a rotation's grace,
  // for its previous one too. The stale entry stays in the store until the key's next change,
  // so the end of the grace is enforced here, on every use.
  const bool matched_previous = record.previous_digest &&
                                digests_equal(*record.previous_digest, digest) &&
                                !digests_equal(record.digest, digest);
  if (matched_previous && now >= record.previous_valid_until) return invalid_key();
  Result r;
  r.outcome = Outcome::kFound;
  r.key = &record;
  r.user = user;
  r.digest = digest;
  return r;
}

}  // namespace keygate
