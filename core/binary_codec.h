// BinaryWriter/BinaryReader: the compact codec of records stored on disk (keys, users).
//
// Pure logic, no I/O. varint = unsigned LEB128 (minimal encodings only), svarint = zigzag
// varint, str = varint length + bytes. The reader bounds-checks every read and never trusts a
// length or count from the input: these bytes come from disk.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/assert.h"

namespace keygate {

// Longest string a record field may hold.
constexpr size_t kCodecStringBytesMax = 64 * 1024;

class BinaryWriter {
 public:
  explicit BinaryWriter(std::string* out) : out_(out) {}
  void byte(uint8_t b) { out_->push_back(static_cast<char>(b)); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      byte(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    byte(static_cast<uint8_t>(v));
  }
  void svarint(int64_t v) {
    varint((static_cast<uint64_t>(v) << 1) ^ (v < 0 ? ~uint64_t{0} : uint64_t{0}));
  }
  void str(std::string_view s) {
    KEYGATE_ASSERT(s.size() <= kCodecStringBytesMax);
    varint(s.size());
    out_->append(s);
  }

 private:
  std::string* out_;
};

class BinaryReader {
 public:
  explicit BinaryReader(std::string_view in) : in_(in) {}
  bool at_end() const noexcept { return pos_ == in_.size(); }
  bool byte(uint8_t* b) noexcept {
    if (pos_ >= in_.size()) return false;
    *b = static_cast<uint8_t>(in_[pos_++]);
    return true;
  }
  bool bytes(std::span<uint8_t> out) noexcept {
    if (in_.size() - pos_ < out.size()) return false;
    std::copy_n(in_.data() + pos_, out.size(), reinterpret_cast<char*>(out.data()));
    pos_ += out.size();
    return true;
  }
  // Rejects overlong (non-minimal) encodings and values beyond 64 bits, so every value has one
  // encoding.
  bool varint(uint64_t* v) noexcept {
    uint64_t value = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
      uint8_t b = 0;
      if (!byte(&b)) return false;
      if (shift == 63 && b > 1) return false;
      value |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        if (b == 0 && shift != 0) return false;
        *v = value;
        return true;
      }
    }
    return false;
  }
  bool svarint(int64_t* v) noexcept {
    uint64_t u = 0;
    if (!varint(&u)) return false;
    *v = static_cast<int64_t>((u >> 1) ^ (0 - (u & 1)));
    return true;
  }
  // A list length: at most `max`, and no more than the bytes left (every element takes at
  // least one), so a forged count cannot make the caller reserve or loop for nothing.
  bool count(size_t max, size_t* n) noexcept {
    uint64_t v = 0;
    if (!varint(&v) || v > max || v > in_.size() - pos_) return false;
    *n = static_cast<size_t>(v);
    return true;
  }
  bool str(std::string* s) {
    uint64_t len = 0;
    if (!varint(&len) || len > kCodecStringBytesMax || len > in_.size() - pos_) return false;
    s->assign(in_.data() + pos_, static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return true;
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace keygate
