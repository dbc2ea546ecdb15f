// AccessRecord: one access-log line as JSON, with every trace of the request's
// API key redacted.
//
// Pure logic, no I/O. An AccessRecordWriter is worker-local (not thread-safe)
// and owns reusable scratch, so after warm-up a record costs no allocation
// beyond the growth of the caller's output string. The record's views are
// borrowed for the duration of the append call only.
//
// Redaction: the key must never reach the log in any form. Every captured text
// (method, target, request/response head and body) is redacted BEFORE it is
// JSON-escaped into the record; a redacted run is replaced by the marker
// "[redacted:<key_id>]", or "[redacted]" when the record has no key id. The
// rules:
//   - target (the record's "path" and the request line of a captured request
//   head): the value
//     of every query parameter whose name percent-decodes to `key` ("k%65y"
//     counts);
//   - heads: the value of every X-ApiKey header (name in any case);
//   - bodies of media type application/x-www-form-urlencoded (parameters
//   allowed): the value of
//     every field whose name percent-decodes to `key`;
//   - every body, whatever its type (so JSON sent as text/plain, and malformed
//   or truncated JSON,
//     are covered): every value of a member whose name JSON-unescapes (\uXXXX
//     included) to `API_Key`, at any depth, every occurrence. A tolerant
//     hand-written scan tries every '"' as the start of a member name, so it
//     needs no well-formed document; a string value that is cut off by
//     truncation is redacted to the end of the text. Scalar non-string values
//     (numbers, literals) are redacted too; objects and arrays are walked, not
//     replaced;
//   - the admin listener (AccessRecord::listener == "admin", the caller's job
//   to set): in request
//     and response bodies, every value of a member named `key` too (the
//     plaintext a create or rotate response shows once, or an import/create
//     request sends), with "[redacted]";
//   - by value: every run of text that decodes to one of
//   AccessRecord::key_values, where each
//     character may appear raw, percent-encoded (%XX, either hex case; '+' for
//     a space) or JSON-escaped (\", \\, \/, \b \f \n \r \t, \uXXXX), in any
//     mix. Cost: about one step per text byte for ordinary input (a position is
//     examined only when its byte can start the key, and a literal mismatch
//     ends it at once). Each scan has a budget of 4 steps per text byte (plus
//     64 Ki); text crafted to nearly match the key everywhere (which could
//     otherwise cost text bytes x key bytes) exhausts it, and the rest of that
//     text is then redacted whole.
// Redacting can join a marker's neighbours into a new occurrence of a key
// value; the result is re-scanned (markers themselves excluded) a bounded
// number of times, and a text that still holds one is replaced by a lone
// marker.
//
// JSON escaping: '"' and '\\' are backslash-escaped, the control bytes with a
// two-character escape become it (\b \t \n \f \r), the other control bytes
// (< 0x20) \u00XX, valid UTF-8 passes through except the C1 controls
// U+0080..U+009F, and each byte of an invalid UTF-8 sequence or of a C1
// control becomes \u00XX of that byte (so "\u00e9" in a record means the raw
// byte 0xE9 was sent, never "é"; U+009B, CSI, is "\u00c2\u009b", so a record
// printed to a terminal cannot drive it). Every record is therefore valid JSON,
// one line.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {

namespace detail {
class RecordOut; // access_record.cc: where append() writes
} // namespace detail

// A request or response as captured for a key with log_request / log_response.
struct CapturedMessage {
  std::string_view
      head; // start line + header lines as raw text, CRLFs included
  std::string_view
      body; // possibly cut at the capture limit (see body_truncated)
  bool body_truncated = false;
  std::string_view
      content_type; // the message's Content-Type value, empty when none
};

struct AccessRecord {
  int64_t time_us = 0;
  uint64_t request_id = 0;
  uint32_t worker = 0;
  std::string_view
      listener; // "data" or "admin" ("admin" enables the `key` member rule)
  std::string_view client; // "ip:port"
  std::string_view key_id; // empty: no key identified (written as null)
  std::string_view user;   // empty: null
  std::string_view api;    // empty: null
  std::string_view method;
  std::string_view
      target; // raw as sent; logged as "path" with key values redacted
  std::string_view reason; // rejection code; empty when allowed (null)
  int status = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t duration_us = 0;
  const CapturedMessage *request = nullptr; // set when the key has log_request
  const CapturedMessage *response =
      nullptr; // set when the key has log_response
  // Plaintext key values seen in this request (0..2: e.g. the one extracted and
  // a conflicting one), scrubbed by value from every captured text. Empty views
  // are ignored.
  std::span<const std::string_view> key_values;
};

// Writes access records; owns the redaction scratch. Worker-local.
class AccessRecordWriter {
public:
  AccessRecordWriter() = default;
  AccessRecordWriter(const AccessRecordWriter &) = delete;
  AccessRecordWriter &operator=(const AccessRecordWriter &) = delete;

  // Appends one JSON object for `r` to `out`: starts with '{', ends with '}',
  // no newline:
  // {"time_us":..,"request_id":..,"worker":..,"listener":"..","client":"..","key_id":".."|null,
  //  "user":..|null,"api":..|null,"method":"..","path":"..","status":..,"bytes_in":..,
  //  "bytes_out":..,"duration_us":..,"reason":..|null
  //  [,"request":{"head":"..","body":"..","body_truncated":bool}][,"response":{...}]}
  // Never fails; allocates only while its scratch (about the size of the
  // largest captured text) and `out` grow.
  void append(const AccessRecord &r, std::string &out) noexcept;
  // The same record written to out[0, capacity): returns its length, or 0 when it does not
  // fit (out's contents are then unspecified). Never allocates once warm.
  size_t append(const AccessRecord &r, char *out, size_t capacity) noexcept;
  // A capacity that always holds r's record, except when redaction markers are longer
  // than what they replace (a very short key value) and add more than the escaping slack.
  static size_t capacity_hint(const AccessRecord &r) noexcept;

private:
  struct Range {
    size_t begin;
    size_t end;
    bool generic; // "[redacted]" even when the record has a key id
  };
  enum class Text : uint8_t {
    kPlain,
    kTarget,
    kRequestHead,
    kResponseHead,
    kBody
  };

  void append_to(const AccessRecord &r, detail::RecordOut &out) noexcept;
  // `cut`: the text was cut short (a captured body marked truncated), so a key may end past
  // it: a run at its end that decodes to the key's first kCutKeyBytesMin or more bytes is
  // redacted too (a 36-character prefix of a generated key holds all its randomness).
  void append_redacted(std::string_view text, Text kind,
                       std::string_view content_type, bool cut,
                       detail::RecordOut &out) noexcept;
  void add_structural(std::string_view text, Text kind,
                      std::string_view content_type) noexcept;
  void add_query_values(std::string_view params, size_t base) noexcept;
  void add_head(std::string_view head, bool request) noexcept;
  void add_json_members(std::string_view text, std::string_view name,
                        bool generic) noexcept;
  void add_value_matches(std::string_view text) noexcept;
  // True when add_structural (JSON member rule only) and add_value_matches would find nothing
  // to redact in body `text`; one pass over it. False also when it cannot tell cheaply.
  bool body_is_clean(std::string_view text) noexcept;
  bool admin_listener() const noexcept { return record_->listener == "admin"; }
  // Length of the longest run at text[at] that decodes to `key`, or 0. Spends
  // matcher steps from *budget; returns 0 with *budget == 0 when it runs out. While
  // text_cut_, a run that reaches the text's end after decoding at least
  // kCutKeyBytesMin of the key's first bytes counts too (its length is returned).
  size_t match_length(std::string_view text, size_t at, std::string_view key,
                      size_t *budget) noexcept;
  // Fewer of a key's first bytes than this at the end of a cut text are kept: no more
  // than its display hint shows, and a shorter rule would redact stray bytes.
  static constexpr size_t kCutKeyBytesMin = 4;
  bool cut_prefix_counts(size_t key_bytes, size_t key_size) const noexcept {
    return text_cut_ && key_bytes >= kCutKeyBytesMin && key_bytes < key_size;
  }
  // Replaces ranges_ (sorted and merged here) in `text` by markers into `out`,
  // noting each marker's span in marker_spans_.
  void apply_ranges(std::string_view text, std::string &out) noexcept;

  const AccessRecord *record_ = nullptr;
  bool text_cut_ = false; // the text being redacted was cut short (see append_redacted)
  std::string key_marker_; // "[redacted:<key_id>]" (or "[redacted]") for the
                           // current record
  std::vector<Range> ranges_;
  std::vector<Range> marker_spans_;
  std::vector<uint32_t> states_;
  std::vector<uint32_t> next_states_;
  std::vector<uint8_t> seen_;
  std::string scratch_[2];
};

// Appends one record like AccessRecordWriter::append, with a writer private to
// the calling thread (created on the thread's first call). Workers should own
// an AccessRecordWriter instead.
void append_access_record(const AccessRecord &r, std::string &out) noexcept;

// Appends `s` as a JSON string literal (with quotes), escaped as described at
// the top.
void append_json_escaped(std::string_view s, std::string &out) noexcept;

} // namespace keygate
