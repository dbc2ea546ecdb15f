// log_line: tolerant readers for access-log lines (one JSON object per line, written by
// AccessLog from records our own code produced).
//
// Pure functions over the bytes given; no allocation except unescaping into `out`. They never
// trust the input: bytes read back from disk may be torn or damaged, and every function
// reports "not found / not valid" instead of asserting.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keygate::storage {

// The raw text of the root object's member `name` (a string value keeps its quotes; an object
// or array value is returned whole), or nullopt when `object` is not an object, has no such
// member, or is malformed before it. Member names are compared byte for byte (our names have
// no escapes). Only the root object's members are considered, never nested ones.
std::optional<std::string_view> find_root_member(std::string_view object, std::string_view name);

// True when `line` is one complete JSON object (strings closed, brackets balanced) with
// nothing but whitespace after it. Structural only: scalars are not validated.
bool is_complete_object(std::string_view line);

// The leading `{"seq":N` of a line the writer produced; false if the line does not start so.
bool line_seq(std::string_view line, uint64_t* seq);

// A raw JSON integer (optional '-', digits). False on anything else, or overflow.
bool parse_json_int(std::string_view raw, int64_t* value);

// Whether raw JSON string `raw` (with quotes) decodes to exactly `text`. Handles the standard
// escapes, including \u (BMP and surrogate pairs, as UTF-8). False when `raw` is not a string.
bool json_string_equals(std::string_view raw, std::string_view text);

}  // namespace keygate::storage
