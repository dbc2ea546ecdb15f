// AccessLog: the access log's storage side. Workers hand over finished records without ever
// touching a file; one writer thread appends them to size-rotated JSON Lines segment files,
// and queries read those files back.
//
// Threading: append(worker, ...) is called only by the thread that owns `worker` (each worker
// has its own LogRing, a bounded lock-free single-producer single-consumer buffer; see
// storage/log_ring.h). It is wait-free: no lock, no allocation, no syscall, and it never
// notifies the writer. The writer thread wakes every flush_interval_ms (or on flush() or
// shutdown; sooner under load: when the fullest ring would be a quarter full at the rate it
// filled since the last pass, but not more often than every flush_interval_ms / 8, at least
// 1 ms), drains every ring into one buffer, assigns sequence numbers and writes the
// buffer with as few write calls as possible (see Writing). A second, sync thread does
// the slow filesystem work the writer must never wait for: fdatasync+close of finished
// segments, directory fsyncs and retention deletes. stats(), flush() and query() are
// thread-safe and may block; call them off the event loop.
//
// Full buffer: append() drops the record and counts it (stats().dropped). The writer reserves
// sequence numbers for the dropped records and writes a marker line in their place in that
// worker's stream:
//   {"seq":M,"type":"dropped","worker":W,"count":C,"dropped_from_seq":A,"dropped_to_seq":B,
//    "time_us":T}
// with B - A + 1 == C and M == B + 1, so every gap in the written seqs is explained. A ring
// must hold one full interval's worth of a worker's records when traffic starts after an idle
// spell (4 MiB / 10 ms = 400 MB/s), and under steady load a pass interval's worth (4 MiB /
// 1.25 ms = 3 GB/s), plus the longest write stall and the writer's scheduling delay; segment
// rotation adds no stall (the writer only open()s the next file and hands the finished one to
// the sync thread).
//
// Backlog: a write the disk is slow to finish (a device stall of tens of milliseconds is
// ordinary on shared or networked storage) or a pass that comes late would fill the rings
// (4 MiB holds 20 ms at 200 MB/s) and drop records. So another thread, the relief thread,
// looks at the rings every flush_interval_ms / 4 (at least 1 ms) while records flow, and moves
// the records of every ring at least half full into that worker's backlog in memory (up to
// backlog_bytes_max in all; 0 turns the backlog and the thread off). The writer's next pass
// takes a worker's backlog before its ring, so each worker's records keep their order, and
// frees the backlog's memory. Records in the backlog count as queued. Only when the backlog is
// full too are records dropped. When all rings are nearly empty the relief thread looks only
// every flush_interval_ms.
//
// Writing: with direct_io (the default) the writer writes the whole 4 KiB blocks of each pass
// with one O_DIRECT pwrite() from its own aligned buffer, so the kernel copies nothing into the
// page cache (that copy is most of a buffered write's CPU: about 10x less CPU per byte here).
// A pass's partial last block is held in the buffer for the next pass, which rewrites that
// block whole; it is written through the page cache (a second, buffered descriptor) when a
// pass has no whole block (light traffic), on flush() and at shutdown. A filesystem that
// refuses O_DIRECT (EINVAL) turns it off for good (one line on stderr); everything is then
// written with buffered pwrite(). The files' bytes are the same either way.
//
// On disk: <dir>/access-<first seq, 20 digits>.jsonl; each line is the producer's record with
// `"seq":N` inserted as its first member. Seqs increase by one across records, markers and
// reserved ranges, and continue after a restart (a seq whose line never reached the file, e.g.
// lost to kill -9, may be handed out again; a written one never is). A segment is rotated
// before it would exceed segment_bytes_max (a record larger than that gets a segment of its
// own). At open() the oldest segments are deleted while the total exceeds retention_bytes;
// at each rotation the writer picks the oldest closed segments to delete the same way and
// the sync thread unlinks them before its next sync, so the total stays below
// retention_bytes + segment_bytes_max except for that short lag (and always after shutdown).
//
// Durability: direct writes reach the device before pwrite() returns. For buffered writes, the
// writer starts writeback of the active segment every writeback_bytes written
// (sync_file_range(SYNC_FILE_RANGE_WRITE): it queues the I/O and does not wait for it), so
// little is dirty when a segment is finished. A finished segment is fdatasync'ed by
// the sync thread after the syncs queued before it, normally within one fdatasync of the
// rotation; the directory is then fsync'ed so its name is durable too. The sync queue holds
// kSyncQueueMax segments; a segment finished while it is full is closed at once without a
// sync and recorded in one overflow range, which the sync thread covers next by reopening
// those segments by name and fdatasync'ing each (stats().segments_finished -
// segments_synced is the backlog). At shutdown everything queued is written, the active
// segment is fdatasync'ed and every pending sync is done before the destructor returns.
// Records are otherwise not synced. A kill -9 loses what was still in the rings, the backlog
// or the writer's buffer (up to one flush interval of traffic, including a held partial block,
// plus at most backlog_bytes_max while the writer was behind); a
// power loss may lose the unsynced part of the active segment and of finished segments still
// awaiting their sync. A torn last line is cut off at the next open(). Write errors (disk
// full) are retried each pass without draining more, so the rings (and the backlog) fill and
// further records are dropped and counted (with markers once writing works again). Records that still cannot
// be written at shutdown are counted as dropped (no marker). Failed syncs and deletes are
// counted in write_errors and not retried (a failed delete is retried at the next rotation and
// open()). The writer says on stderr when writing starts failing (what, which file, errno) and
// when it works again, at most one failure line a minute (write_errors counts every one).
//
// File size limit: the process must ignore SIGXFSZ (keygate does), so that a write past
// RLIMIT_FSIZE fails with EFBIG instead of killing the process. open() caps segments at the
// limit (one stderr line when it is below segment_bytes_max). Should a write still meet EFBIG
// (the limit lowered while running), the segment is cut back to its last complete line and
// that line starts the next segment; a line that is the first of its segment and still does
// not fit can never be written: it is dropped and counted (stats().dropped; its seq is then
// missing from the log), with a stderr line.
//
// One AccessLog per directory: open() takes an flock on the directory.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/assert.h"
#include "storage/log_ring.h"

namespace keygate::storage {

struct AccessLogOptions {
  std::string dir;                         // created (with parents) if missing
  size_t ring_bytes_per_worker = 4 << 20;  // per-worker buffer, rounded down to a power of two
  uint64_t segment_bytes_max = 64 << 20;   // rotate before a segment would exceed this
  uint64_t retention_bytes = 1ull << 30;   // delete the oldest closed segments beyond this
  uint32_t flush_interval_ms = 10;         // the writer wakes at least this often
  // Start (not wait for) writeback of the active segment every this many bytes; 0 = never.
  uint64_t writeback_bytes = 4 << 20;
  // Write whole blocks with O_DIRECT (see Writing); false, or a filesystem that refuses
  // O_DIRECT, writes everything through the page cache.
  bool direct_io = true;
  // Memory for records moved out of filling rings while the writer is behind (see Backlog),
  // allocated only while needed; 0 = no backlog (full rings drop at once).
  size_t backlog_bytes_max = 64 << 20;
};

// A snapshot; exact whenever no append() is in progress and the writer is idle (e.g. after
// flush() with producers stopped), and always enqueued == written + dropped + queued.
struct AccessLogStats {
  uint64_t enqueued = 0;         // append() calls
  uint64_t written = 0;  // producer records written (markers excluded; the held block counts)
  uint64_t dropped = 0;          // refused by a full buffer (+ lost to write errors at close)
  uint64_t queued = 0;           // accepted, not yet written
  uint64_t markers_written = 0;  // "dropped" marker lines written
  uint64_t write_errors = 0;     // failed open/write (retried), sync and delete calls
  uint64_t next_seq = 0;         // the seq the next line will get
  uint64_t torn_bytes_cut = 0;   // cut from the newest segment's tail by open()
  // Segments a query passed over because they could not be opened or read (not a regular
  // file, no permission, a read error), once per query that met one.
  uint64_t query_segments_skipped = 0;
  uint64_t segments_finished = 0;  // rotated away from since open()
  uint64_t segments_synced = 0;    // of those, fdatasync'ed (or deleted by retention first)
  uint64_t sync_queue_full = 0;    // of those, closed unsynced into the overflow range
  uint64_t direct_bytes = 0;       // written with O_DIRECT (the rest went through the page cache)
  uint64_t backlog_records = 0;    // moved into the backlog by the relief thread, in all
  uint64_t backlog_bytes_peak = 0;  // the most memory the backlog held at once
};

class AccessLog {
 public:
  static constexpr uint32_t kQueryLimitMax = 10000;
  // Finished segments waiting for the sync thread, each holding its open fd; see Durability.
  static constexpr size_t kSyncQueueMax = 4;

  // Creates `options.dir` if needed, locks it, proves that files can be created in it (an
  // unnamed O_TMPFILE, or a named probe file removed at once where the filesystem has no
  // O_TMPFILE), recovers the newest segment (cuts a torn last line; the next seq follows the
  // last complete line, or the segment's name when it is empty), applies retention, allocates
  // one ring per worker and starts the writer thread. Blocks on the filesystem; call at
  // start-up. Returns null with one line in `error`, starting "access log: ", on bad options or
  // an unusable directory (one the writer could not create segments in, too).
  static std::unique_ptr<AccessLog> open(const AccessLogOptions& options, unsigned workers,
                                         std::string* error);
  // Stops the relief thread, then the writer after it has drained and written everything queued, fdatasync'ed the
  // active segment and closed it, then stops the sync thread after every pending sync and
  // delete is done. Blocks on the filesystem. Every append() must have returned before.
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Worker `worker`'s thread only. `record` is one JSON object text, starting with '{' (a raw
  // newline in it, only possible as whitespace between tokens, is written as a space; with
  // `one_line` the caller vouches there is none and the writer does not look). Copies it into
  // the worker's buffer and returns true, or returns false and counts it dropped when the
  // buffer is full (or the record can never fit). Wait-free; no lock, allocation or syscall;
  // never blocks.
  bool append(unsigned worker, std::string_view record, bool one_line = false) noexcept {
    KEYGATE_ASSERT(worker < workers_);
    KEYGATE_ASSERT(!record.empty() && record.front() == '{');
    return rings_[worker]->try_push(record, one_line);
  }

  // Worker `worker`'s thread only: append() without the copy. Room for a record of up to
  // `max_bytes` in the worker's buffer, or null when there is none now (nothing is counted;
  // use append(), which counts a drop when it cannot take the record either). Write the
  // record there (a JSON object, as for append()), then call commit() before any other
  // append(), reserve() or commit() for this worker — or abandon the reservation by not
  // committing it. Wait-free.
  char* reserve(unsigned worker, size_t max_bytes) noexcept {
    KEYGATE_ASSERT(worker < workers_);
    return rings_[worker]->reserve(max_bytes);
  }
  // The longest record append() or reserve() can ever take: a worker buffer's capacity less
  // its framing (every worker's buffer has the same size).
  size_t record_bytes_max() const noexcept {
    return rings_.empty() ? 0 : rings_[0]->capacity() - LogRing::kHeaderBytes;
  }
  void commit(unsigned worker, size_t bytes, bool one_line) noexcept {
    KEYGATE_ASSERT(worker < workers_);
    KEYGATE_ASSERT(bytes > 0);  // at least the '{' (the writer relies on it)
    rings_[worker]->commit(bytes, one_line);
  }

  AccessLogStats stats() const;

  // A reload's segment_bytes_max, retention_bytes and flush_interval_ms (AccessLogOptions),
  // handed to the writer thread, which is woken and takes them at its next pass: the next line
  // that would take the active segment past the new size starts a new one, the closed segments
  // beyond the new retention are deleted at once (by the sync thread, as after a rotation), and
  // the passes come at the new interval (the relief thread's looks too). Any thread; under the
  // writer's mutex, which appends never take.
  void set_live_options(uint64_t segment_bytes_max, uint64_t retention_bytes,
                        uint32_t flush_interval_ms);

  // Testing/ops: the writer sleeps this long before each drain pass (not at shutdown).
  void set_writer_delay_for_testing(std::chrono::milliseconds delay);
  // Testing: the next O_DIRECT write fails with `err` without writing (EINVAL: as on a
  // filesystem that refuses O_DIRECT; EIO: a failed write, retried by the next pass).
  void fail_next_direct_write_for_testing(int err);
  // Testing: the sync thread sleeps this long before each finished-segment sync (one per
  // queued segment, one per overflow range), as if fdatasync were that slow; not at shutdown.
  void set_sync_delay_for_testing(std::chrono::milliseconds delay);

  // Blocks until everything appended before the call (that happens-before it) is written to
  // its segment (write() returned; not fdatasync'ed). False when writing failed (the records
  // stay queued and are retried).
  bool flush();
  // flush(), waiting at most `timeout` (a write stalled on the disk); false also on timeout
  // (the writer still writes those records when it can).
  bool flush(std::chrono::milliseconds timeout);

  struct Query {
    std::string key_id;    // "" = any; else the record's "key_id" must be this string
    int status = 0;        // 0 = any; else the record's "status" must equal it
    int64_t since_us = 0;  // 0 = unbounded; else "time_us" >= since_us
    int64_t until_us = 0;  // 0 = unbounded; else "time_us" < until_us
    uint32_t limit = 100;  // records returned at most; 0 or above kQueryLimitMax = kQueryLimitMax
    // Newest-first mode (after_seq == 0): only seq < before_seq (0 = from the newest).
    uint64_t before_seq = 0;
    // Follow mode (after_seq > 0): only seq > after_seq, oldest first. before_seq is ignored.
    uint64_t after_seq = 0;
    // Bytes of lines read at most (lines outside the cursor's range and damaged lines count
    // too); the scan stops at the next line in range and returns a cursor to resume.
    uint64_t scan_bytes_max = 256ull << 20;
  };
  struct QueryResult {
    std::vector<std::string> records;  // full lines without the newline, in scan order
    // Newest-first: pass as before_seq to continue (seq of the last line examined); 0 when the
    // scan reached the oldest record. Follow: pass as after_seq next time (the newest seq
    // examined, or the request's after_seq when nothing newer exists yet); never 0 in follow.
    uint64_t next_cursor = 0;
    // Follow only: seqs missing_from..missing_to (both included, 0 = none) come after the
    // request's after_seq, before the first line of this page, and are in no readable segment:
    // deleted by retention, in a segment that could not be read, or a line dropped at the file
    // size limit. (A range lost to a full buffer is no gap: its marker stands for it.) A page
    // ends before a second such gap, so each page reports at most one, at its start.
    uint64_t missing_from = 0;
    uint64_t missing_to = 0;
    // Bytes read from segment files for this query (seeking included).
    uint64_t bytes_read = 0;
  };
  // Scans the segment files (not the records still queued: flush() first for fresh data).
  // Marker lines match only queries without key_id and status filters. A cursor (before_seq,
  // after_seq) is found by bisecting the segment that holds it, so a page costs about the
  // same wherever it starts. Thread-safe w.r.t. the writer: a line still being written is
  // ignored, a segment deleted by retention mid-query is skipped. So is a segment that cannot
  // be opened or read (not a regular file — segments are opened non-blocking, so a FIFO never
  // hangs a query —, no permission, a read error): counted in stats().query_segments_skipped
  // and named once on stderr. Blocks on file reads; allocates. False with `error` only when
  // the directory cannot be listed.
  bool query(const Query& query, QueryResult* result, std::string* error) const;

 private:
  struct Impl;
  AccessLog(unsigned workers, size_t ring_bytes, std::unique_ptr<Impl> impl);

  const unsigned workers_;
  std::vector<std::unique_ptr<LogRing>> rings_;  // one per worker; fixed after open()
  std::unique_ptr<Impl> impl_;
};

}  // namespace keygate::storage
