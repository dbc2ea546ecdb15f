// Test doubles for handler tests: a KeyDirectory over a map, a RequestContext with a recording
// ticket sink, requests built from owned strings, and responses parsed back into parts.
//
// Test-thread only. Everything a view points into is owned by these objects.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/api_key.h"
#include "core/handler.h"
#include "core/http_request.h"
#include "core/key_directory.h"
#include "core/permissions.h"
#include "core/response_writer.h"

namespace keygate::test {

inline constexpr int64_t kNow = 1700000000;
inline constexpr std::string_view kDate = "Sun, 06 Nov 1994 08:49:37 GMT";

// A KeyDirectory over a map of digest -> record; a record is filed under every digest it is
// added with. With not_cached set, find_key() answers kNotCached and fetch() only records its
// arguments, so the test plays the fetching thread. key_generation() is `generation`, which a
// test bumps to play a key change made while a fetch was out (results it builds by hand carry
// generation 0, the default).
class FakeDirectory final : public KeyDirectory {
 public:
  struct Fetch {
    KeyDigest digest;
    FetchResult* out;
    ResumeTicket ticket;
  };

  // Files `record` (with digest = digest_key(value)) under its digest.
  void add_key(std::string_view value, KeyRecord record) {
    record.digest = digest_key(value);
    keys_[record.digest] = std::move(record);
  }
  // Files `record` as is under `digest` (e.g. its previous digest).
  void file_under(const KeyDigest& digest, KeyRecord record) { keys_[digest] = std::move(record); }
  // Removes what is filed under `digest` (a key change: the test bumps `generation` too).
  void remove_key(const KeyDigest& digest) { keys_.erase(digest); }
  void remove_user(const std::string& name) { users_.erase(name); }
  void add_user(User user) {
    std::string name = user.name;
    users_[std::move(name)] = std::move(user);
  }
  // What the store would answer for `digest` (a fetch) now: found or not, at `generation`.
  KeyDirectory::FetchResult answer(const KeyDigest& digest) const {
    FetchResult r;
    r.generation = generation;
    auto it = keys_.find(digest);
    if (it == keys_.end()) return r;
    r.found = true;
    r.record = it->second;
    return r;
  }

  Lookup find_key(const KeyDigest& digest, const KeyRecord** record) noexcept override {
    ++find_key_calls;
    if (not_cached) return Lookup::kNotCached;
    auto it = keys_.find(digest);
    if (it == keys_.end()) return Lookup::kUnknown;
    *record = &it->second;
    return Lookup::kFound;
  }
  const User* find_user(std::string_view name) noexcept override {
    auto it = users_.find(name);
    return it == users_.end() ? nullptr : &it->second;
  }
  uint64_t key_generation() noexcept override { return generation; }
  void fetch(const KeyDigest& digest, FetchResult* out, ResumeTicket ticket) noexcept override {
    fetches.push_back({digest, out, ticket});
  }

  bool not_cached = false;
  uint64_t generation = 0;
  int find_key_calls = 0;
  std::vector<Fetch> fetches;

 private:
  std::map<KeyDigest, KeyRecord> keys_;
  std::map<std::string, User, std::less<>> users_;
};

class RecordingSink final : public ResumeTicket::Sink {
 public:
  void post(uint32_t slot, uint32_t gen) noexcept override { posts.emplace_back(slot, gen); }
  std::vector<std::pair<uint32_t, uint32_t>> posts;
};

// The worker's side of one connection: defer() hands out tickets to a recording sink, the
// clock is whatever the test sets.
class FakeContext final : public RequestContext {
 public:
  // `slot` is the connection slot the tickets name (what the sink's posts record).
  explicit FakeContext(uint32_t slot = 7) : slot_(slot) {}
  ResumeTicket defer() noexcept override {
    ++defer_calls;
    return ResumeTicket(&sink, slot_, ++gen_);
  }
  int64_t now_unix() const noexcept override { return now; }

  int64_t now = kNow;
  int defer_calls = 0;
  RecordingSink sink;

 private:
  uint32_t slot_;
  uint32_t gen_ = 0;
};

// A request under construction; owns the bytes the HttpRequest views point into. view() builds
// the views, which stay valid while this object lives unchanged.
class TestRequest {
 public:
  TestRequest(std::string method, std::string target)
      : method_(std::move(method)), target_(std::move(target)) {}

  TestRequest& header(std::string name, std::string value) {
    fields_.emplace_back(std::move(name), std::move(value));
    return *this;
  }
  TestRequest& api_key(std::string_view value) { return header("X-ApiKey", std::string(value)); }
  TestRequest& body(std::string_view content_type, std::string content) {
    header("Content-Type", std::string(content_type));
    body_ = std::move(content);
    return *this;
  }

  const HttpRequest& view() {
    views_.clear();
    for (const auto& [name, value] : fields_) views_.push_back({name, value});
    const std::string_view target = target_;
    const size_t q = target.find('?');
    request_.method = method_;
    request_.target = target;
    request_.path = target.substr(0, q);
    request_.query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
    request_.headers = views_;
    request_.body = body_;
    request_.body_readable_padding = 0;
    return request_;
  }

 private:
  std::string method_;
  std::string target_;
  std::vector<std::pair<std::string, std::string>> fields_;
  std::string body_;
  std::vector<HttpHeader> views_;
  HttpRequest request_;
};

// A response as written, split into its parts.
struct Response {
  std::string raw;
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  bool has_header(std::string_view name) const {
    for (const auto& h : headers) {
      if (equals_ignore_case(h.first, name)) return true;
    }
    return false;
  }
  // The first header with this name; "" when absent.
  std::string header(std::string_view name) const {
    for (const auto& h : headers) {
      if (equals_ignore_case(h.first, name)) return h.second;
    }
    return "";
  }
  // The "error" member of a JSON error body, or a marker that says there is none.
  std::string error_code() const {
    constexpr std::string_view kPrefix = "{\"error\":\"";
    if (!std::string_view(body).starts_with(kPrefix)) return "<no error body>";
    const size_t end = body.find('"', kPrefix.size());
    return body.substr(kPrefix.size(), end - kPrefix.size());
  }
};

inline Response parse_response(const std::string& raw) {
  Response r;
  r.raw = raw;
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos || !raw.starts_with("HTTP/1.1 ") || raw.size() < 12) {
    ADD_FAILURE() << "not an HTTP/1.1 response: " << raw;
    return r;
  }
  r.status = std::stoi(raw.substr(9, 3));
  size_t line_start = raw.find("\r\n") + 2;
  while (line_start < head_end + 2) {
    const size_t line_end = raw.find("\r\n", line_start);
    const std::string line = raw.substr(line_start, line_end - line_start);
    const size_t colon = line.find(": ");
    if (colon == std::string::npos) {
      ADD_FAILURE() << "malformed header line: " << line;
    } else {
      r.headers.emplace_back(line.substr(0, colon), line.substr(colon + 2));
    }
    line_start = line_end + 2;
  }
  r.body = raw.substr(head_end + 4);
  return r;
}

}  // namespace keygate::test
