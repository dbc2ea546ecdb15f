#include "core/admin_handler.h"

#include <algorithm>

#include "core/assert.h"
#include "core/console_assets.h"

namespace keygate {
namespace {

// A pooled state keeps its response body's capacity for the next request, but not that of a
// large answer (an import's id list), so idle workers do not hold megabytes.
constexpr size_t kKeptBodyCapacityMax = 64 * 1024;

}  // namespace

// Admin keys are few: a small table is plenty (32 bytes a slot).
constexpr size_t kKeyUseSlots = 64;

bool admin_host_allowed(std::string_view host, std::span<const std::string> names) noexcept {
  if (host.empty()) return true;
  if (host.front() == '[') return true;  // an IPv6 literal (the parser checked host[:port])
  // The host without its port and a final dot ("localhost." is localhost).
  if (const size_t colon = host.rfind(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty()) return false;
  // Digits and dots: an IPv4 literal to a browser (it would not look such a name up in DNS).
  if (std::all_of(host.begin(), host.end(), [](char c) { return c == '.' || (c >= '0' && c <= '9'); })) {
    return true;
  }
  if (equals_ignore_case(host, "localhost")) return true;
  return std::any_of(names.begin(), names.end(),
                     [host](const std::string& name) { return equals_ignore_case(host, name); });
}

AdminHandler::AdminHandler(KeyDirectory& directory, AdminBackend& backend,
                           size_t body_inspect_bytes_max, KeyUseSink* uses, unsigned worker,
                           std::vector<std::string> hosts)
    : authenticator_(directory, body_inspect_bytes_max),
      uses_(uses, worker, kKeyUseSlots),
      body_inspect_bytes_max_(body_inspect_bytes_max),
      hosts_(std::move(hosts)),
      backend_(backend) {}

bool AdminHandler::answered_without_key(const HttpRequest& request, ResponseWriter& response,
                                        RequestContext& ctx) noexcept {
  if (request.path == "/healthz") {
    // /healthz needs no key (and no body: at the head it is answered with the body unread, the
    // connection then closes, so no client can make the port buffer one).
    builtin_.handle(request, response, ctx);
  } else if (!admin_host_allowed(request.header("host"), hosts_)) {
    // No key work and no console for a page that reached the port under a name of its own.
    write_error(response, 421, "host_not_allowed",
                "the Host header names no address of this admin port: add the name to [admin] "
                "hosts, or use an IP address or localhost",
                false);
  } else if (is_console_path(request.path)) {
    // The console's files need no key either: the page asks the operator for one.
    write_console(request, response);
  } else if (!is_admin_route(request.path)) {
    write_error(response, 404, "not_found", "no such route", false);
  } else {
    return false;
  }
  // Answered without looking at the key, but the request may carry one anyway (and also in its
  // path or another parameter): noted, so the access log scrubs it from the record by value.
  ctx.access.key_value = authenticator_.extracted_key(request);
  return true;
}

void AdminHandler::write_console(const HttpRequest& request, ResponseWriter& response) noexcept {
  const ConsoleAsset* asset = find_console_asset(request.path);
  if (asset == nullptr) {
    write_error(response, 404, "not_found", "no such route", false);
    return;
  }
  if (request.method != "GET" && request.method != "HEAD") {
    response.start(405);
    response.header("Cache-Control", "no-store");
    response.header("X-Content-Type-Options", "nosniff");
    response.header("Allow", "GET, HEAD");
    response.finish_error("method_not_allowed", "use GET or HEAD", /*field_null=*/true);
    return;
  }
  response.start(200);
  // no-store as for every admin answer: an old console must not outlive an upgrade of the API
  // it calls.
  response.header("Cache-Control", "no-store");
  response.header("Content-Security-Policy", kConsoleContentSecurityPolicy);
  response.header("X-Content-Type-Options", "nosniff");
  response.header("Referrer-Policy", "no-referrer");
  response.finish(asset->content_type, asset->body);
}

Handler::Result AdminHandler::fetch_key(const KeyDigest& digest, State::Phase phase,
                                        RequestContext& ctx) noexcept {
  State* state = take_state();
  state->phase = phase;
  ctx.state = state;
  authenticator_.fetch(digest, &state->lookup, ctx);
  return Result::kPending;
}

Handler::Result AdminHandler::handle(const HttpRequest& request, ResponseWriter& response,
                                     RequestContext& ctx) noexcept {
  if (answered_without_key(request, response, ctx)) return Result::kDone;
  KeyDigest digest{};
  const Authenticator::Result resolved = authenticator_.resolve(request, ctx.now_unix(), &digest);
  if (resolved.outcome == Authenticator::Outcome::kFetch) {
    return fetch_key(digest, State::Phase::kLookup, ctx);
  }
  const Result r = admit(resolved, response, ctx, nullptr);
  note_key_value(request, resolved, ctx);
  return r;
}

Handler::Result AdminHandler::handle_head(const HttpRequest& request, ResponseWriter& response,
                                          RequestContext& ctx) noexcept {
  if (answered_without_key(request, response, ctx)) return Result::kDone;
  KeyDigest digest{};
  Authenticator::Result resolved;
  if (!authenticator_.resolve_head(request, ctx.now_unix(), &digest, &resolved)) {
    // Only the body can carry the key: read no more of it than the extractor searches (none:
    // the extractor's 413 at once, since a body is coming).
    if (body_inspect_bytes_max_ == 0) {
      write_error(response, 413, "body_too_large", "request body too large", false);
      return Result::kDone;
    }
    ctx.body_bytes_max = body_inspect_bytes_max_;
    return Result::kNeedBody;
  }
  if (resolved.outcome == Authenticator::Outcome::kFetch) {
    return fetch_key(digest, State::Phase::kHeadLookup, ctx);
  }
  if (refused(resolved, response, ctx)) {
    note_key_value(request, resolved, ctx);
    return Result::kDone;
  }
  // Admitted: handle() notes the key once the body is read (a note now would capture the
  // request for the access log without its body).
  ctx.access = AccessNote{};
  return Result::kNeedBody;
}

Handler::Result AdminHandler::resume_head(const HttpRequest& request, ResponseWriter& response,
                                          RequestContext& ctx) noexcept {
  auto* state = static_cast<State*>(ctx.state);
  KEYGATE_ASSERT(state != nullptr && state->phase == State::Phase::kHeadLookup);
  const Authenticator::Result resolved =
      authenticator_.finish_fetch(state->lookup, ctx.now_unix());
  if (resolved.outcome == Authenticator::Outcome::kFetch) {
    // A key changed while the record was being read: read it again (bounded).
    authenticator_.fetch(state->lookup.digest, &state->lookup, ctx);
    return Result::kPending;
  }
  const bool no = refused(resolved, response, ctx);
  if (no) {
    note_key_value(request, resolved, ctx);
  } else {
    ctx.access = AccessNote{};  // as in handle_head()
  }
  // The access note may point into the fetched record: kept in the pooled state's strings
  // (give_back leaves them), which nothing reuses before the worker copies the note.
  state->key_id.assign(ctx.access.key_id);
  state->user.assign(ctx.access.user);
  ctx.access.key_id = state->key_id;
  ctx.access.user = state->user;
  ctx.state = nullptr;
  give_back(state);
  // Admitted: the body is read and handle() authenticates the whole request as usual (the
  // fetch filled the cache, so that is a cache hit).
  return no ? Result::kDone : Result::kNeedBody;
}

void AdminHandler::note_key_value(const HttpRequest& request,
                                  const Authenticator::Result& resolved,
                                  RequestContext& ctx) noexcept {
  // The access log scrubs the value from the record's path and captures, whatever the decision:
  // the value resolve() saw, or (a fetch's result carries none) the request's, extracted again.
  ctx.access.key_value =
      !resolved.presented.empty() ? resolved.presented : authenticator_.extracted_key(request);
}

Handler::Result AdminHandler::resume(const HttpRequest& request, ResponseWriter& response,
                                     RequestContext& ctx) noexcept {
  auto* state = static_cast<State*>(ctx.state);
  KEYGATE_ASSERT(state != nullptr);
  switch (state->phase) {
    case State::Phase::kLookup: {
      const Authenticator::Result resolved =
          authenticator_.finish_fetch(state->lookup, ctx.now_unix());
      if (resolved.outcome == Authenticator::Outcome::kFetch) {
        // A key changed while the record was being read: read it again (bounded).
        authenticator_.fetch(state->lookup.digest, &state->lookup, ctx);
        return Result::kPending;
      }
      // The record may live in state->lookup: decide before the state is reused or given back.
      const Result r = admit(resolved, response, ctx, state);
      note_key_value(request, resolved, ctx);
      if (r == Result::kDone) {
        ctx.state = nullptr;
        give_back(state);
      }
      return r;
    }
    case State::Phase::kStabilize:
      // These views stay valid until the request completes: now the backend may read them.
      submit(request, ctx, state);
      return Result::kPending;
    case State::Phase::kExecute:
      ctx.state = nullptr;
      write_result(state->response, response);
      give_back(state);
      return Result::kDone;
    case State::Phase::kHeadLookup:
      break;  // resume_head()'s
  }
  KEYGATE_ASSERT(false && "admin request in an unknown phase");
  return Result::kDone;
}

int AdminHandler::abandon(RequestContext& ctx) noexcept {
  // The worker calls this only after the ticket was posted, so neither the fetching thread nor
  // the backend still writes into the state.
  auto* state = static_cast<State*>(ctx.state);
  if (state == nullptr) return 0;
  ctx.state = nullptr;
  int done = 0;
  if (state->phase == State::Phase::kExecute) {
    // The backend ran it: the change happened (or failed) whether or not the client hears it,
    // and the access log must say which. Out of range: what write_result() would answer.
    const int status = state->response.status;
    done = status < 200 || status > 599 ? 500 : status;
  }
  give_back(state);
  return done;
}

bool AdminHandler::refused(const Authenticator::Result& resolved, ResponseWriter& response,
                           RequestContext& ctx) noexcept {
  if (resolved.outcome != Authenticator::Outcome::kFound) {
    const Authenticator::Rejection& r = resolved.rejection;
    write_error(response, r.status, r.code, r.message, r.challenge);
    return true;
  }
  ctx.access.key_id = resolved.key->id;
  ctx.access.user = resolved.key->user ? std::string_view(*resolved.key->user) : std::string_view();
  ctx.access.api = kAdminApi;
  ctx.access.log_request = resolved.key->log_request;
  ctx.access.log_response = resolved.key->log_response;
  if (!resolved.key->usable_at(ctx.now_unix())) {
    write_error(response, 401, "invalid_api_key", "the API key is not valid", true);
    return true;
  }
  // Valid: a use of the key, allowed or not (as on the data port).
  uses_.note(resolved.key->id, ctx.now_unix());
  if (!resolved.key->has_api(kAdminApi)) {
    write_error(response, 403, "api_not_permitted", "the API key may not call this API", false);
    return true;
  }
  return false;
}

Handler::Result AdminHandler::admit(const Authenticator::Result& resolved, ResponseWriter& response,
                                    RequestContext& ctx, State* state) noexcept {
  if (refused(resolved, response, ctx)) return Result::kDone;
  if (state == nullptr) {
    state = take_state();
    ctx.state = state;
  }
  // Copied before the reset: resolved.key may be the record fetched into state->lookup.
  state->key_id.assign(ctx.access.key_id);
  state->user.assign(ctx.access.user);
  state->key_digest = resolved.digest;
  ctx.access.key_id = state->key_id;
  ctx.access.user = state->user;
  state->lookup.reset();
  state->phase = State::Phase::kStabilize;
  ctx.defer().post();
  return Result::kPending;
}

void AdminHandler::submit(const HttpRequest& request, RequestContext& ctx, State* state) noexcept {
  state->phase = State::Phase::kExecute;
  state->response.status = 0;
  state->response.body.clear();
  state->response.allow = {};
  state->response.challenge = false;
  // Views into the stabilized request, valid until it completes; the backend copies the struct.
  const AdminRequest admin_request{request.method,
                                   request.path,
                                   request.query,
                                   request.body,
                                   request.body_readable_padding,
                                   state->key_id,
                                   state->key_digest,
                                   request.header("Content-Type")};
  backend_.submit(admin_request, &state->response, ctx.defer());
}

void AdminHandler::write_result(const AdminResponse& out, ResponseWriter& response) noexcept {
  if (out.status < 200 || out.status > 599) {
    // A backend bug must not become a malformed response.
    write_error(response, 500, "internal_error", "the admin backend gave no answer", false);
    return;
  }
  response.start(out.status);
  response.set_error_code(out.error_code);
  // Nothing the admin API answers may be kept by a browser or an intermediary: create and rotate
  // answers carry a plaintext key, the rest key records and access-log contents.
  response.header("Cache-Control", "no-store");
  // Their bodies hold text others wrote (descriptions, logged paths and captured bodies): a
  // browser shown one must take it for the type it is labelled, never sniff HTML in it.
  response.header("X-Content-Type-Options", "nosniff");
  if (out.challenge) response.header("WWW-Authenticate", Authenticator::kChallenge);
  if (!out.allow.empty()) response.header("Allow", out.allow);
  if (out.status == 204) {
    response.finish({}, {});
  } else {
    response.finish(out.content_type.empty() ? "application/json" : out.content_type, out.body);
  }
}

void AdminHandler::write_error(ResponseWriter& response, int status, std::string_view code,
                               std::string_view message, bool challenge) noexcept {
  response.start(status);
  response.header("Cache-Control", "no-store");
  response.header("X-Content-Type-Options", "nosniff");  // as write_result()'s
  if (challenge) response.header("WWW-Authenticate", Authenticator::kChallenge);
  response.finish_error(code, message, /*field_null=*/true);
}

AdminHandler::State* AdminHandler::take_state() {
  if (pool_.empty()) return new State();
  State* state = pool_.back().release();
  pool_.pop_back();
  return state;
}

void AdminHandler::give_back(State* state) noexcept {
  state->lookup.reset();
  if (state->response.body.capacity() > kKeptBodyCapacityMax) {
    std::string().swap(state->response.body);
  } else {
    state->response.body.clear();
  }
  pool_.emplace_back(state);
}

}  // namespace keygate
