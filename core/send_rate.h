// SendRate: whether a client takes its response bytes fast enough ([limits]
// send_rate_min_bytes_per_s), judged from the sends the worker makes to it.
//
// Pure logic, one value per connection, worker-local (not thread-safe): the worker tells it,
// at each send completion, how long that send waited for the client and how many bytes the
// kernel took; the times come from the worker's cached loop clock. No clock, no I/O here.
//
// The model is Apache mod_reqtimeout's MinRate turned around (a deadline that each byte
// extends), with the extension capped: the connection holds a credit of waiting time. Every
// byte the client takes earns 1/rate_min seconds of it; every millisecond a send waits for the
// client spends one; the credit never exceeds `slack_ms` (the connection starts with that
// much), so a fast start cannot buy a slow finish. When a completion leaves it below zero the
// client has fallen more than `slack_ms` of waiting behind the minimum rate: too slow.
//
// Why waiting time and not elapsed time: a send completes at once while the socket buffer has
// room, so only the time keygate waits for the client to take bytes counts; waiting for an
// upstream's next bytes, for the next request or for a handler never does. Consequences:
//   - a client reading at rate r < rate_min is cut after about slack_ms / (1 - r / rate_min)
//     of waiting; at or above rate_min, never;
//   - a stall (no byte taken) of up to slack_ms is forgiven once the client reads on;
//   - judged at completions only: a send that never completes is not judged here (the
//     worker's write timeout ends it).
#pragma once

#include <algorithm>
#include <cstdint>

namespace keygate {

class SendRate {
 public:
  // The credit a connection starts with (and the most it holds): `slack_ms` of waiting.
  void start(uint32_t rate_min_bytes_per_s, uint32_t slack_ms) {
    credit_ = cap(rate_min_bytes_per_s, slack_ms);
  }

  // A send completed after waiting `waited_ms` for the client (about 0 when the socket buffer
  // had room), the kernel having taken `bytes`. False when the client is now too slow
  // (the credit is spent); the account is then no longer meaningful (the connection is to
  // close). Always true with rate_min_bytes_per_s 0 (no minimum). No allocation, no division.
  bool keeps_up(uint32_t rate_min_bytes_per_s, uint32_t slack_ms, uint64_t waited_ms,
                uint64_t bytes) {
    if (rate_min_bytes_per_s == 0) return true;
    // Clamped so the products below stay within int64 (a send in flight is ended by the write
    // timeout long before 2^32 ms: idle_timeout_ms fits 32 bits). Units: milli-bytes.
    const int64_t rate = clamp_rate(rate_min_bytes_per_s);
    const int64_t waited = static_cast<int64_t>(std::min<uint64_t>(waited_ms, kWaitedMsMax));
    const int64_t earned = static_cast<int64_t>(std::min<uint64_t>(bytes, kBytesMax)) * 1000;
    credit_ = std::min(credit_ + earned - waited * rate, cap(rate_min_bytes_per_s, slack_ms));
    return credit_ >= 0;
  }

  // The minimum changed (a reload) from `old_rate_min_bytes_per_s`: the credit keeps the
  // waiting time it stood for, within the new slack. An account kept with no minimum has no
  // credit to keep: it starts full, as a new connection's does. No allocation.
  void rebase(uint32_t old_rate_min_bytes_per_s, uint32_t rate_min_bytes_per_s,
              uint32_t slack_ms) {
    if (old_rate_min_bytes_per_s == 0) {
      start(rate_min_bytes_per_s, slack_ms);
      return;
    }
    // credit / old rate: milliseconds of waiting (<= 2^32), times the new rate (<= 2^30).
    credit_ = std::min(credit_ / clamp_rate(old_rate_min_bytes_per_s) *
                           clamp_rate(rate_min_bytes_per_s),
                       cap(rate_min_bytes_per_s, slack_ms));
  }

  // What is left, in milli-bytes (bytes the client may be behind the minimum rate, times
  // 1000): for tests.
  int64_t credit() const { return credit_; }

 private:
  // rate <= 2^30 (the config's range), waited and slack <= 2^32: their products stay at or
  // below 2^62, bytes * 1000 below 2^50, so the credit never overflows int64.
  static constexpr uint64_t kRateMax = uint64_t{1} << 30;
  static constexpr uint64_t kWaitedMsMax = uint64_t{1} << 32;
  static constexpr uint64_t kBytesMax = uint64_t{1} << 40;
  static int64_t clamp_rate(uint32_t rate_min_bytes_per_s) {
    return static_cast<int64_t>(std::min<uint64_t>(rate_min_bytes_per_s, kRateMax));
  }
  static int64_t cap(uint32_t rate_min_bytes_per_s, uint32_t slack_ms) {
    return clamp_rate(rate_min_bytes_per_s) * static_cast<int64_t>(slack_ms);
  }

  int64_t credit_ = 0;
};

}  // namespace keygate
