// Limits: every bound the HTTP engine enforces, with its default, in one place.
//
// The server builds one Limits from config and flags; each worker keeps its own copy, which a
// reload replaces on the worker's own thread at a loop pass (all but connections_per_worker_max,
// which sizes the worker's registered file table at start: docs/architecture.md, "Reloading
// the APIs"). Each field has a config knob of the same name in the [limits] table (see
// docs/configuration.md) and is checked where docs/architecture.md says.
#pragma once

#include <cstdint>

namespace keygate {

struct Limits {
  // Request line (method, target, version) longer than this: 414.
  uint32_t request_line_bytes_max = 8 * 1024;
  // All header field lines together (after the request line): 431.
  uint32_t header_bytes_max = 16 * 1024;
  // Number of header fields: 431.
  uint32_t header_count_max = 100;
  // Decoded request body: 413 (before reading it when Content-Length says so).
  uint64_t body_bytes_max = 1024 * 1024;
  // Open data-port connections per worker; beyond it new ones are closed at accept. The admin
  // port has its own budget (Config::admin_connections_max): neither takes the other's places.
  uint32_t connections_per_worker_max = 10000;
  // Requests parsed on one connection whose responses are not yet fully sent. At the cap the
  // connection stops reading until responses drain.
  uint32_t pipeline_depth_max = 32;
  // From the first byte of a request until its headers are complete (absolute, not reset by
  // progress, so a slowloris client cannot extend it): 408 and close.
  uint32_t header_timeout_ms = 10000;
  // From the end of the headers until the whole body is in (absolute): 408 and close.
  uint32_t body_timeout_ms = 30000;
  // Keep-alive connection with no request in progress, or a send that makes no progress:
  // closed silently.
  uint32_t idle_timeout_ms = 60000;
  // A client must take its response bytes at least this fast while keygate waits for it (a
  // send in flight that the socket buffer has no room for): it may fall behind by at most
  // idle_timeout_ms of waiting (core/send_rate.h), else the connection is closed (access-log
  // reason send_too_slow). Without it idle_timeout_ms is the only bound, and it ends only a
  // send that makes no progress at all: a client taking a few bytes at a time would hold its
  // connection, its response buffers and the upstream feeding them for as long as it likes.
  // 240 (1.9 kbit/s, as Kestrel's MinResponseDataRate and IIS's minBytesPerSecond) is a fifth
  // of one GPRS timeslot, the slowest mobile data link in use, so no working client is cut;
  // 0: no minimum.
  uint32_t send_rate_min_bytes_per_s = 240;
  // SO_SNDBUF of every accepted connection on both ports (the kernel doubles it for its
  // bookkeeping and caps it at net.core.wmem_max): the response bytes the kernel holds for one
  // client that does not read, and so how soon send_rate_min_bytes_per_s can judge one
  // (it sees only the waits of a full buffer). 0: the kernel's autotuning (tcp_wmem, up to
  // 4 MiB), because any fixed size caps a connection's throughput at about size / RTT: 64 KiB
  // would hold a large proxied response to 5 Mbit/s at 100 ms. Set it where responses are
  // small and clients many and untrusted (docs/configuration.md).
  uint32_t send_buffer_bytes = 0;
  // After the last response on a closing connection: how long unread input is drained before
  // the socket is closed (so the client sees the response rather than a reset).
  uint32_t linger_timeout_ms = 2000;
  // Request body forwarded (streamed) to an upstream: 413 above it (before reading the body
  // when Content-Length says so).
  uint64_t proxy_body_bytes_max = 1024ull * 1024 * 1024;
  // Upstream response header section: 502 above it.
  uint32_t upstream_header_bytes_max = 64 * 1024;
  // Idle keep-alive connections kept per upstream server per worker; more are closed.
  uint32_t upstream_idle_connections_max = 64;
  // An idle upstream keep-alive connection older than this is closed.
  uint32_t upstream_idle_timeout_ms = 30000;
  // After a connect failure an upstream server is skipped for this long (503 when all are).
  uint32_t upstream_fail_timeout_ms = 10000;
  // Bytes of request bodies one worker holds in memory on the data port at once (bodies kept
  // to search them for a key, their captures for the access log): a request whose body would
  // pass it is answered 503 body_memory_exhausted at its head (and the connection closed).
  // Bodies that cannot carry the key are read and dropped, never held, and count nothing.
  uint64_t body_memory_per_worker_max = 64ull * 1024 * 1024;
  // On SIGTERM/SIGINT: how long in-flight requests may take before the process exits anyway.
  uint32_t drain_timeout_ms = 10000;
};

}  // namespace keygate
