#include "storage/access_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "storage/data_dir.h"
#include "storage/log_line.h"

namespace keygate::storage {
namespace {

constexpr std::string_view kSegmentPrefix = "access-";
constexpr std::string_view kSegmentSuffix = ".jsonl";
constexpr size_t kSeqDigits = 20;
// Reads of segment files (recovery and queries) go in chunks of this size.
constexpr size_t kReadChunkBytes = 1 << 20;
// Writeback is started on whole pages: the partial last page would be written twice.
constexpr uint64_t kPageBytes = 4096;

struct SegmentName {
  uint64_t first_seq = 0;
  std::string name;
};

std::string segment_name(uint64_t first_seq) {
  char digits[kSeqDigits + 1];
  std::snprintf(digits, sizeof(digits), "%020llu", static_cast<unsigned long long>(first_seq));
  return std::string(kSegmentPrefix) + digits + std::string(kSegmentSuffix);
}

bool parse_segment_name(std::string_view name, uint64_t* first_seq) {
  if (name.size() != kSegmentPrefix.size() + kSeqDigits + kSegmentSuffix.size() ||
      !name.starts_with(kSegmentPrefix) || !name.ends_with(kSegmentSuffix)) {
    return false;
  }
  const std::string_view digits = name.substr(kSegmentPrefix.size(), kSeqDigits);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *first_seq);
  return ec == std::errc() && end == digits.data() + digits.size();
}

std::string errno_text(std::string_view what, const std::string& path, int err) {
  return "access log: " + std::string(what) + " " + path + ": " + std::strerror(err);
}

// Segments in `dir`, oldest first.
bool list_segments(const std::string& dir, std::vector<SegmentName>* out, std::string* error) {
  out->clear();
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    *error = errno_text("cannot list", dir, errno);
    return false;
  }
  while (const dirent* entry = ::readdir(d)) {
    SegmentName segment;
    if (parse_segment_name(entry->d_name, &segment.first_seq)) {
      segment.name = entry->d_name;
      out->push_back(std::move(segment));
    }
  }
  ::closedir(d);
  std::sort(out->begin(), out->end(),
            [](const SegmentName& a, const SegmentName& b) { return a.first_seq < b.first_seq; });
  return true;
}

bool pread_full(int fd, char* out, size_t bytes, uint64_t offset) {
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, out, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;  // the file shrank under us
      return false;
    }
    out += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

// Reads a file's lines from its end backwards, in chunks; the bytes after the last '\n' (a
// line still being written, or torn) are never returned. Bytes read are added to
// *bytes_read when given.
class BackwardLines {
 public:
  BackwardLines(int fd, uint64_t size, uint64_t* bytes_read = nullptr)
      : fd_(fd), buf_start_(size), end_(size), bytes_read_(bytes_read) {}

  // The previous complete line (without '\n') and its offset, or false at the start of the
  // file (then *ok says whether reading failed).
  bool next(std::string_view* line, uint64_t* offset, bool* ok) {
    *ok = true;
    if (!started_) {
      started_ = true;
      int64_t last_newline;
      if (!find_newline_before(end_, &last_newline)) return *ok = false;
      if (last_newline < 0) return false;
      end_ = static_cast<uint64_t>(last_newline);
    }
    if (done_) return false;
    int64_t newline;
    if (!find_newline_before(end_, &newline)) return *ok = false;
    const uint64_t start = static_cast<uint64_t>(newline + 1);
    *line = std::string_view(buf_).substr(start - buf_start_, end_ - start);
    *offset = start;
    if (newline < 0) {
      done_ = true;
    } else {
      end_ = static_cast<uint64_t>(newline);
    }
    return true;
  }

 private:
  // The offset of the last '\n' before `end` (-1 if none). buf_ keeps [buf_start_, end).
  bool find_newline_before(uint64_t end, int64_t* out) {
    uint64_t search_end = end;
    for (;;) {
      const size_t p = std::string_view(buf_.data(), search_end - buf_start_).rfind('\n');
      if (p != std::string_view::npos) {
        *out = static_cast<int64_t>(buf_start_ + p);
        return true;
      }
      if (buf_start_ == 0) {
        *out = -1;
        return true;
      }
      const uint64_t new_start = buf_start_ - std::min<uint64_t>(kReadChunkBytes, buf_start_);
      std::string more(buf_start_ - new_start, '\0');
      if (!pread_full(fd_, more.data(), more.size(), new_start)) return false;
      if (bytes_read_ != nullptr) *bytes_read_ += more.size();
      more.append(buf_, 0, end - buf_start_);
      buf_.swap(more);
      search_end = buf_start_;
      buf_start_ = new_start;
    }
  }

  const int fd_;
  std::string buf_;  // file bytes from buf_start_
  uint64_t buf_start_;
  uint64_t end_;  // the unread region is [0, end_)
  uint64_t* bytes_read_;
  bool started_ = false;
  bool done_ = false;
};

// Calls on_line(line, offset) for each complete line of [from, size) in order until it
// returns false; `from` is the start of a line. Reads `chunk_bytes` at a time; bytes read are
// added to *bytes_read.
template <typename F>
bool for_each_line_forward(int fd, uint64_t from, uint64_t size, uint64_t* bytes_read,
                           F&& on_line, size_t chunk_bytes = kReadChunkBytes) {
  std::string buf;
  uint64_t pos = from;
  uint64_t buf_offset = from;  // the file offset of buf[0]
  while (pos < size) {
    const size_t carried = buf.size();
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(chunk_bytes, size - pos));
    buf.resize(carried + chunk);
    if (!pread_full(fd, buf.data() + carried, chunk, pos)) return false;
    *bytes_read += chunk;
    pos += chunk;
    size_t start = 0;
    for (;;) {
      const size_t newline = buf.find('\n', start);
      if (newline == std::string::npos) break;
      if (!on_line(std::string_view(buf).substr(start, newline - start), buf_offset + start)) {
        return true;
      }
      start = newline + 1;
    }
    buf.erase(0, start);
    buf_offset += start;
  }
  return true;
}

// A seek reads lines in order once bisection has narrowed the range to this many bytes; the
// probes in between read this much at a time.
constexpr uint64_t kSeekScanBytes = 64 << 10;
constexpr size_t kProbeBytes = 4096;

// The first '\n' in [from, end) (*found false when there is none). Reads kProbeBytes first,
// then larger chunks (a long line).
bool find_newline(int fd, uint64_t from, uint64_t end, uint64_t* bytes_read, uint64_t* at,
                  bool* found) {
  *found = false;
  std::string buf;
  size_t chunk = kProbeBytes;
  for (uint64_t pos = from; pos < end; pos += buf.size()) {
    buf.resize(static_cast<size_t>(std::min<uint64_t>(chunk, end - pos)));
    if (!pread_full(fd, buf.data(), buf.size(), pos)) return false;
    *bytes_read += buf.size();
    const size_t newline = buf.find('\n');
    if (newline != std::string::npos) {
      *at = pos + newline;
      *found = true;
      return true;
    }
    chunk = kReadChunkBytes;
  }
  return true;
}

// The first line starting in [from, end) that begins with a seq: its offset and seq (*found
// false when there is none). `size` is the file's: a line's seq may be read past `end`.
bool next_seq_line(int fd, uint64_t from, uint64_t end, uint64_t size, uint64_t* bytes_read,
                   uint64_t* offset, uint64_t* seq, bool* found) {
  *found = false;
  uint64_t line = 0;
  if (from > 0) {
    // A line starts after each '\n'; one at from - 1 starts a line at `from`.
    uint64_t newline = 0;
    if (!find_newline(fd, from - 1, end, bytes_read, &newline, found)) return false;
    if (!*found) return true;
    line = newline + 1;
  }
  std::string prefix;
  while (line < end) {
    // Enough of the line for its {"seq":N, prefix (20 digits at most).
    constexpr size_t kSeqPrefixBytes = 32;
    prefix.resize(static_cast<size_t>(std::min<uint64_t>(kSeqPrefixBytes, size - line)));
    if (!pread_full(fd, prefix.data(), prefix.size(), line)) return false;
    *bytes_read += prefix.size();
    if (line_seq(prefix, seq)) {
      *offset = line;
      *found = true;
      return true;
    }
    uint64_t newline = 0;
    if (!find_newline(fd, line, end, bytes_read, &newline, found)) return false;
    if (!*found) return true;
    line = newline + 1;
  }
  *found = false;
  return true;
}

// The offset of the first line of [0, size) whose seq is at least `target`, or `size` when
// there is none. Lines without a seq (damage) are passed over. Seqs increase along a segment,
// so this bisects on byte offsets down to kSeekScanBytes, then reads those lines in order: a
// few dozen KiB read wherever the target is, instead of everything before it.
bool seek_seq(int fd, uint64_t size, uint64_t target, uint64_t* out, uint64_t* bytes_read) {
  uint64_t lo = 0;     // a line start; every line before it has a seq below target
  uint64_t hi = size;  // every line with a seq starting at or after hi has one >= target
  while (hi - lo > kSeekScanBytes) {
    const uint64_t mid = lo + (hi - lo) / 2;
    uint64_t offset = 0;
    uint64_t seq = 0;
    bool found = false;
    if (!next_seq_line(fd, mid, hi, size, bytes_read, &offset, &seq, &found)) return false;
    if (!found) {
      hi = mid;  // no line with a seq starts in [mid, hi)
    } else if (seq >= target) {
      hi = offset;
    } else {
      lo = offset;
    }
  }
  *out = size;
  return for_each_line_forward(
      fd, lo, size, bytes_read,
      [&](std::string_view line, uint64_t offset) {
        uint64_t seq = 0;
        if (offset >= hi || (line_seq(line, &seq) && seq >= target)) {
          *out = offset;
          return false;
        }
        return true;
      },
      kSeekScanBytes);
}

// RLIMIT_FSIZE's soft limit in bytes (UINT64_MAX when unlimited).
uint64_t file_size_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_FSIZE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return UINT64_MAX;
  }
  return static_cast<uint64_t>(limit.rlim_cur);
}

// Proves that files can be created in the directory: a directory the writer cannot create
// segments in would otherwise be accepted at start and the whole log lost, silently (the
// write errors are only counted). An unnamed O_TMPFILE leaves nothing behind; where the
// filesystem has none, a named probe is created and removed at once.
bool probe_writable(int dir_fd, const std::string& dir, std::string* error) {
  int fd = ::openat(dir_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    constexpr const char* kProbeName = ".access-log-probe";
    fd = ::openat(dir_fd, kProbeName, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) ::unlinkat(dir_fd, kProbeName, 0);
  }
  if (fd < 0) {
    *error = "access log: cannot create files in " + dir + ": " + std::strerror(errno);
    return false;
  }
  ::close(fd);
  return true;
}

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// O_DIRECT transfers start and end on this boundary (file offset, length and memory address);
// 4096 satisfies every logical block size in use (512 and 4096).
constexpr size_t kDirectAlign = 4096;

// The writer's line buffer: a growable byte buffer whose storage starts on a kDirectAlign
// boundary, so that its blocks can be handed to O_DIRECT writes as they are.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  char* data() noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  std::string_view view() const noexcept { return {data_, size_}; }
  char& operator[](size_t i) noexcept { return data_[i]; }

  void reserve(size_t bytes) {
    if (bytes <= capacity_) return;
    const size_t rounded = (bytes + kDirectAlign - 1) & ~(kDirectAlign - 1);
    char* const grown = allocate_log_buffer(rounded, kDirectAlign);
    if (size_ > 0) std::memcpy(grown, data_, size_);
    std::free(data_);
    data_ = grown;
    capacity_ = rounded;
  }
  void append(std::string_view bytes) {
    if (size_ + bytes.size() > capacity_) reserve(std::max(size_ + bytes.size(), capacity_ * 2));
    if (!bytes.empty()) std::memcpy(data_ + size_, bytes.data(), bytes.size());
    size_ += bytes.size();
  }
  void push_back(char c) { append(std::string_view(&c, 1)); }
  // Drops the first `bytes` (moving the rest to the aligned start).
  void erase_front(size_t bytes) noexcept { erase(0, bytes); }
  // Drops `bytes` at `at`.
  void erase(size_t at, size_t bytes) noexcept {
    std::memmove(data_ + at, data_ + at + bytes, size_ - at - bytes);
    size_ -= bytes;
  }
  // Inserts `bytes` at `at`.
  void insert(size_t at, std::string_view bytes) {
    const size_t tail = size_ - at;
    append(bytes);  // grows; the bytes are moved into place below
    std::memmove(data_ + at + bytes.size(), data_ + at, tail);
    std::memcpy(data_ + at, bytes.data(), bytes.size());
  }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// Asks the scheduler to run the calling thread (the writer) in short slices: on kernels with
// EEVDF custom slices (6.12+), a thread with a short slice gets an early deadline when it
// wakes, so a writer pass starts promptly on a CPU a worker keeps busy (the rings fill
// meanwhile) and is cut into pieces instead of stalling that worker for the whole pass. Same
// CPU share either way (nice is unchanged). Older kernels ignore the runtime of a normal
// thread; errors are ignored too (it is a hint).
void ask_for_short_slices() {
  struct {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
  } attr{};
  static_assert(sizeof(attr) == 48);  // SCHED_ATTR_SIZE_VER0
  attr.size = sizeof(attr);
  attr.sched_policy = SCHED_OTHER;
  attr.sched_nice = ::getpriority(PRIO_PROCESS, 0);
  attr.sched_runtime = 100'000;  // ns; the kernel's minimum custom slice
  (void)::syscall(SYS_sched_setattr, 0, &attr, 0);
}

// The errors with which a filesystem refuses O_DIRECT (at open or at the first write).
bool direct_refused(int err) { return err == EINVAL || err == EOPNOTSUPP; }

// pwrite() until `bytes` are written or an error (not EINTR); the bytes written in *done.
bool pwrite_full(int fd, const char* data, size_t bytes, uint64_t offset, size_t* done) {
  *done = 0;
  while (*done < bytes) {
    const ssize_t n = ::pwrite(fd, data + *done, bytes - *done, static_cast<off_t>(offset + *done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = EIO;
      return false;
    }
    *done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

struct AccessLog::Impl {
  struct Segment {
    uint64_t first_seq = 0;
    uint64_t bytes = 0;
  };
  // Where the buffer must switch to a new segment: before the line at `offset`.
  struct Cut {
    size_t offset = 0;
    uint64_t first_seq = 0;
  };

  AccessLogOptions options;
  std::vector<std::unique_ptr<LogRing>>* rings = nullptr;
  int dir_fd = -1;  // locked with flock for our lifetime

  // Writer thread only (and open() before it starts).
  int active_fd = -1;  // the active segment (buffered writes, syncs)
  // The same file opened with O_DIRECT, or -1 (direct writes are off or unavailable).
  int direct_fd = -1;
  // Descriptors held in reserve (dups of dir_fd) for the next segment's two: clients that take
  // every descriptor the process may have (RLIMIT_NOFILE) must not stop the log from starting
  // a segment. Given up for a segment open that failed for want of descriptors, taken again
  // as soon as one is free.
  std::array<int, 2> spare_fds{-1, -1};
  bool direct = false;  // options.direct_io, until the filesystem refuses O_DIRECT
  Segment active;       // bytes = the segment's size on disk
  uint64_t writeback_from = 0;  // of the active segment; writeback was started before it
  std::vector<Segment> closed;  // oldest first
  uint64_t next_seq = 1;
  // Lines drained and not yet written, after (in direct mode) the already written start of
  // the active segment's last, partial block: buffer[0] is at a block boundary of the file,
  // so the next direct write can rewrite that block whole. See write_region().
  AlignedBuffer buffer;
  std::vector<Cut> cuts;
  size_t next_cut = 0;
  size_t write_pos = 0;   // buffer[write_pos, size) is not on disk yet
  size_t segment_at = 0;  // where the active segment's bytes start in the buffer
  bool write_failed = false;  // the last write_buffer() failed; retried before draining more
  uint64_t buffer_records = 0;
  uint64_t buffer_markers = 0;
  bool planned_segment = false;  // a segment exists or is planned for the next line
  uint64_t planned_bytes = 0;    // of that segment, counting the unwritten buffer
  // Segments rotate before they would exceed this: segment_bytes_max, or the file size limit
  // (RLIMIT_FSIZE) when that is lower. Set by open(), lowered when a write meets EFBIG.
  uint64_t segment_bytes_cap = 0;
  int write_errno = 0;  // of the last failed segment open or write
  // Saying on stderr when writing starts failing and when it works again: at most one failure
  // line per kFailureReportInterval.
  bool writes_failing = false;
  bool failure_reported = false;  // the current failing spell was said on stderr
  uint64_t failed_attempts = 0;   // in the current failing spell
  std::chrono::steady_clock::time_point failing_since{};
  std::optional<std::chrono::steady_clock::time_point> last_failure_report;
  std::optional<std::chrono::steady_clock::time_point> last_oversize_report;

  std::mutex mutex;
  std::condition_variable wake;     // the writer waits here
  std::condition_variable flushed;  // flush() waits here
  bool stopping = false;            // mutex
  uint64_t flush_requested = 0;     // mutex
  uint64_t flush_done = 0;          // mutex
  bool last_write_ok = true;        // mutex
  // set_live_options(), not yet taken by the writer (mutex).
  struct LiveOptions {
    uint64_t segment_bytes_max;
    uint64_t retention_bytes;
    uint32_t flush_interval_ms;
  };
  std::optional<LiveOptions> live_posted;  // mutex
  // The relief thread's pace: options.flush_interval_ms, then a reload's (the writer owns
  // `options`; the relief thread reads this at each look).
  std::atomic<uint32_t> relief_interval_ms{0};

  std::atomic<uint64_t> written{0};
  std::atomic<uint64_t> lost{0};
  std::atomic<uint64_t> markers_written{0};
  std::atomic<uint64_t> write_errors{0};
  std::atomic<uint64_t> direct_bytes{0};
  std::atomic<int> direct_fault{0};  // testing: the next direct write fails with this errno
  std::atomic<uint64_t> next_seq_public{1};
  std::atomic<int64_t> delay_ms{0};
  uint64_t torn_bytes_cut = 0;  // set by open()

  // Queries (any thread): segments skipped as unreadable, and the ones already named on
  // stderr (at most kUnreadableReportsMax names are remembered).
  std::atomic<uint64_t> query_segments_skipped{0};
  std::mutex unreadable_mutex;
  std::set<uint64_t> unreadable_reported;  // unreadable_mutex; first_seqs

  // Handed from the writer to the sync thread. The writer only ever holds sync_mutex for a
  // few instructions, and the sync thread never holds it across a syscall, so the writer
  // cannot be made to wait for a sync.
  struct SyncJob {
    int fd = -1;  // a finished segment, owned by the queue until synced and closed
    uint64_t first_seq = 0;
  };
  std::mutex sync_mutex;
  std::condition_variable sync_wake;             // the sync thread waits here
  std::array<SyncJob, kSyncQueueMax> sync_jobs;  // sync_mutex; a ring of sync_count jobs
  size_t sync_head = 0;                          // sync_mutex
  size_t sync_count = 0;                         // sync_mutex
  // Finished segments that found the queue full: already closed, synced later by name.
  // Segments are finished in seq order, so one range holds them all.
  uint64_t overflow_segments = 0;  // sync_mutex
  uint64_t overflow_from_seq = 0;  // sync_mutex; first_seq of the oldest of them
  uint64_t overflow_to_seq = 0;    // sync_mutex; first_seq of the newest of them
  uint64_t delete_below_seq = 0;   // sync_mutex; retention: segments before this go
  uint64_t deleted_below_seq = 0;  // sync_mutex; done up to here
  bool sync_stopping = false;      // sync_mutex

  std::atomic<uint64_t> segments_finished{0};
  std::atomic<uint64_t> segments_synced{0};
  std::atomic<uint64_t> sync_queue_full{0};
  std::atomic<int64_t> sync_delay_ms{0};

  std::thread thread;
  std::thread sync_thread;

  // The backlog (see Backlog in the header). drain_mutex makes the writer and the relief
  // thread take turns as the rings' consumer and guards the backlogs; the writer holds it only
  // while it gathers, never across a write.
  std::mutex drain_mutex;
  // Per worker: records taken out of its ring, oldest first, in one chunk per move; each
  // record as a ring header (length | kBacklogOneLine, drops_before) and the payload, never
  // more bytes than the ring space it came from, so a chunk reserved at the ring's capacity
  // never reallocates.
  std::vector<std::vector<std::string>> backlogs;  // drain_mutex
  size_t backlog_bytes = 0;  // drain_mutex; the memory they hold (the chunks' capacities)
  std::atomic<uint64_t> backlog_records{0};
  std::atomic<uint64_t> backlog_bytes_peak{0};
  std::condition_variable relief_wake;  // the relief thread waits here, with `mutex`
  bool relief_stopping = false;         // mutex
  std::thread relief_thread;

  ~Impl() {
    for (size_t i = 0; i < sync_count; ++i) {
      ::close(sync_jobs[(sync_head + i) % kSyncQueueMax].fd);
    }
    if (active_fd >= 0) ::close(active_fd);
    if (direct_fd >= 0) ::close(direct_fd);
    for (const int fd : spare_fds) {
      if (fd >= 0) ::close(fd);
    }
    if (dir_fd >= 0) ::close(dir_fd);
  }

  // Takes the reserve back where descriptors allow (writer thread, and open()).
  void take_spare_fds() {
    for (int& fd : spare_fds) {
      if (fd < 0) fd = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
    }
  }
  // Gives the reserve up so that the opens that follow find free descriptors; false when there
  // was none to give.
  bool give_up_spare_fds() {
    bool any = false;
    for (int& fd : spare_fds) {
      if (fd < 0) continue;
      ::close(fd);
      fd = -1;
      any = true;
    }
    return any;
  }

  bool recover(std::string* error);
  uint64_t retain_from_seq();
  // The writer: forgets the closed segments beyond retention_bytes and has the sync thread
  // delete them.
  void retain();
  // The writer, at a pass: a reload's options (set_live_options) take effect.
  void adopt_live(const LiveOptions& live);
  bool list_segments_counted(std::vector<SegmentName>* segments);
  void delete_segments_before(uint64_t seq);
  void run();
  void run_sync();
  void run_relief();
  bool relieve();
  void take_backlog(unsigned worker);
  void sync_segments_by_name(uint64_t from_seq, uint64_t to_seq);
  void sync_dir();
  void start_writeback();
  void finish_active();
  bool pass(bool stopping_now, bool write_tail, double* fill);
  double gather();
  void plan_line(size_t line_bytes, uint64_t seq);
  void emit_record(std::string_view a, std::string_view b, bool one_line);
  void emit_marker(unsigned worker, uint64_t count);
  bool write_buffer(bool write_tail);
  bool write_region(size_t end, bool write_tail);
  bool rotate_at_size_limit();
  void note_write_failure(const char* what, uint64_t first_seq);
  void note_write_success();
  void skip_unreadable(const SegmentName& segment, int err);
  void open_direct(const char* name);
  void disable_direct();
  bool switch_segment(uint64_t first_seq);
  void close_active();
};

bool AccessLog::Impl::recover(std::string* error) {
  std::vector<SegmentName> segments;
  if (!list_segments(options.dir, &segments, error)) return false;
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    struct stat st;
    if (::fstatat(dir_fd, segments[i].name.c_str(), &st, 0) != 0) {
      *error = errno_text("cannot stat", segments[i].name, errno);
      return false;
    }
    closed.push_back({segments[i].first_seq, static_cast<uint64_t>(st.st_size)});
  }
  if (segments.empty()) {
    next_seq = 1;
    return true;
  }
  const SegmentName& newest = segments.back();
  const int fd = ::openat(dir_fd, newest.name.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *error = errno_text("cannot open", newest.name, errno);
    return false;
  }
  active_fd = fd;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *error = errno_text("cannot stat", newest.name, errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = "access log: " + newest.name + " in " + options.dir + " is not a regular file";
    return false;
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // The last line that is a complete record; everything after it is a torn write.
  uint64_t valid_end = 0;
  uint64_t last_seq = 0;
  bool found = false;
  BackwardLines lines(fd, size);
  std::string_view line;
  uint64_t offset = 0;
  bool ok = true;
  while (lines.next(&line, &offset, &ok)) {
    uint64_t seq;
    if (line_seq(line, &seq) && is_complete_object(line)) {
      valid_end = offset + line.size() + 1;
      last_seq = seq;
      found = true;
      break;
    }
  }
  if (!ok) {
    *error = errno_text("cannot read", newest.name, errno);
    return false;
  }
  if (valid_end < size) {
    if (::ftruncate(fd, static_cast<off_t>(valid_end)) != 0 || ::fdatasync(fd) != 0) {
      *error = errno_text("cannot cut the torn tail of", newest.name, errno);
      return false;
    }
    torn_bytes_cut = size - valid_end;
  }
  active = {newest.first_seq, valid_end};
  open_direct(newest.name.c_str());
  writeback_from = valid_end & ~(kPageBytes - 1);
  planned_segment = true;
  planned_bytes = valid_end;
  next_seq = found ? std::max(last_seq + 1, newest.first_seq) : newest.first_seq;
  if (next_seq == 0) next_seq = 1;
  const uint64_t keep_from = retain_from_seq();
  if (keep_from != 0) delete_segments_before(keep_from);
  return true;
}

// Forgets the oldest closed segments while the total exceeds retention_bytes; returns the
// first_seq of the oldest one kept (or of the active one), or 0 when nothing is to go.
uint64_t AccessLog::Impl::retain_from_seq() {
  uint64_t total = active.bytes;
  for (const Segment& s : closed) total += s.bytes;
  size_t removed = 0;
  while (removed < closed.size() && total > options.retention_bytes) {
    total -= closed[removed].bytes;
    ++removed;
  }
  if (removed == 0) return 0;
  closed.erase(closed.begin(), closed.begin() + static_cast<ptrdiff_t>(removed));
  return closed.empty() ? active.first_seq : closed.front().first_seq;
}

// The writer's and sync thread's listing: a failure is counted in write_errors.
bool AccessLog::Impl::list_segments_counted(std::vector<SegmentName>* segments) {
  std::string error;
  if (list_segments(options.dir, segments, &error)) return true;
  write_errors.fetch_add(1, std::memory_order_relaxed);
  return false;
}

// By listing the directory, so a segment whose unlink failed earlier is retried.
void AccessLog::Impl::delete_segments_before(uint64_t seq) {
  std::vector<SegmentName> segments;
  if (!list_segments_counted(&segments)) return;
  for (const SegmentName& segment : segments) {
    if (segment.first_seq >= seq) break;
    if (::unlinkat(dir_fd, segment.name.c_str(), 0) != 0 && errno != ENOENT) {
      write_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void AccessLog::Impl::run() {
  using Clock = std::chrono::steady_clock;
  Clock::duration interval = std::chrono::milliseconds(options.flush_interval_ms);
  Clock::duration interval_min =
      std::max<Clock::duration>(std::chrono::milliseconds(1), interval / 8);
  Clock::duration wait = interval;
  Clock::time_point last_pass = Clock::now();
  std::unique_lock lock(mutex);
  for (;;) {
    wake.wait_for(lock, wait, [&] {
      return stopping || flush_requested != flush_done || live_posted.has_value();
    });
    const bool stopping_now = stopping;
    const uint64_t flush_target = flush_requested;
    const bool flushing = flush_target != flush_done;
    std::optional<LiveOptions> live;
    live.swap(live_posted);
    lock.unlock();
    if (live) {
      // Before the pass: its lines rotate at the new size.
      adopt_live(*live);
      interval = std::chrono::milliseconds(options.flush_interval_ms);
      interval_min = std::max<Clock::duration>(std::chrono::milliseconds(1), interval / 8);
    }
    const int64_t delay = delay_ms.load(std::memory_order_relaxed);
    if (delay > 0 && !stopping_now) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    double fill = 0;
    const Clock::time_point start = Clock::now();
    const bool ok = pass(stopping_now, stopping_now || flushing, &fill);
    // The next pass comes when the fullest ring would be a quarter full at the rate it filled
    // since the last pass (but not sooner than interval / 8, at least 1 ms, and not later
    // than interval), so that heavy traffic does not fill the rings between two passes.
    const Clock::duration since = start - last_pass;
    last_pass = start;
    wait = interval;
    if (fill > 0) {
      const auto paced = std::chrono::duration_cast<Clock::duration>(since * (0.25 / fill));
      wait = std::clamp(paced, interval_min, interval);
    }
    lock.lock();
    last_write_ok = ok;
    flush_done = flush_target;
    flushed.notify_all();
    if (stopping_now) return;
  }
}

// One drain-and-write pass. While an earlier buffer could not be written, nothing more is
// drained (the rings fill and drop, which is counted) except at shutdown. `write_tail`: also
// write the partial last block that direct mode would hold for the next pass (flush(),
// shutdown). *fill: the largest share of a ring's capacity drained (0 when none).
bool AccessLog::Impl::pass(bool stopping_now, bool write_tail, double* fill) {
  *fill = 0;
  if (write_failed && !write_buffer(write_tail) && !stopping_now) return false;
  *fill = gather();
  bool ok = write_buffer(write_tail);
  if (stopping_now) {
    if (!ok) {
      std::fprintf(stderr, "keygate: access log: %llu %s not be written at shutdown\n",
                   static_cast<unsigned long long>(buffer_records),
                   buffer_records == 1 ? "record could" : "records could");
      lost.fetch_add(buffer_records, std::memory_order_relaxed);
    }
    close_active();
  }
  return ok;
}

double AccessLog::Impl::gather() {
  if (!write_failed) {
    // Everything up to write_pos is written and every cut is behind it. In direct mode the
    // written start of the segment's last partial block stays, so that buffer[0] is at a
    // block boundary of the file again (see write_region()).
    size_t keep_from = write_pos;
    const size_t in_block = active.bytes % kDirectAlign;
    if (direct_fd >= 0 && in_block <= write_pos - segment_at) keep_from = write_pos - in_block;
    buffer.erase_front(keep_from);
    write_pos -= keep_from;
    segment_at = 0;
    cuts.clear();
    next_cut = 0;
  }
  double fill = 0;
  std::lock_guard drain_lock(drain_mutex);
  for (size_t w = 0; w < rings->size(); ++w) {
    LogRing& ring = *(*rings)[w];
    const size_t before = buffer.size();
    take_backlog(static_cast<unsigned>(w));  // older than what the ring holds now
    // Producers keep appending meanwhile; at shutdown they have stopped, and one drain per
    // ring takes everything. Otherwise one drain bounds the pass by the ring's capacity.
    ring.drain([&](std::string_view a, std::string_view b, uint32_t drops_before,
                   bool one_line) {
      if (drops_before > 0) emit_marker(static_cast<unsigned>(w), drops_before);
      emit_record(a, b, one_line);
    });
    const uint64_t trailing = ring.take_pending_drops();
    if (trailing > 0) emit_marker(static_cast<unsigned>(w), trailing);
    fill = std::max(fill, static_cast<double>(buffer.size() - before) /
                              static_cast<double>(ring.capacity()));
  }
  next_seq_public.store(next_seq, std::memory_order_relaxed);
  return fill;
}

namespace {
constexpr uint32_t kBacklogOneLine = 0x80000000u;
}  // namespace

// Emits worker's backlog, as gather() would have emitted those records from its ring, and
// frees it. drain_mutex.
void AccessLog::Impl::take_backlog(unsigned worker) {
  std::vector<std::string>& chunks = backlogs[worker];
  if (chunks.empty()) return;
  for (std::string& chunk : chunks) {
    std::string_view rest = chunk;
    while (!rest.empty()) {
      uint32_t header[2];
      KEYGATE_ASSERT(rest.size() >= sizeof(header));
      std::memcpy(header, rest.data(), sizeof(header));
      const size_t length = header[0] & ~kBacklogOneLine;
      KEYGATE_ASSERT(rest.size() >= sizeof(header) + length);
      if (header[1] > 0) emit_marker(worker, header[1]);
      emit_record(rest.substr(sizeof(header), length), {}, (header[0] & kBacklogOneLine) != 0);
      rest.remove_prefix(sizeof(header) + length);
    }
    backlog_bytes -= chunk.capacity();
  }
  std::vector<std::string>().swap(chunks);  // its memory is only for stalls
}

// The relief thread; see Backlog in the header.
void AccessLog::Impl::run_relief() {
  // A quarter interval: a 4 MiB ring that fills at 200 MB/s is half full after 10 ms and full
  // after 20, so a look every 2.5 ms moves it in time. (Each look is a wake-up; an eighth
  // doubled the relief thread's share for no gain at that rate.)
  // Read at each look: a reload may change it (adopt_live).
  const auto idle_period = [&] {
    return std::chrono::milliseconds(relief_interval_ms.load(std::memory_order_relaxed));
  };
  std::chrono::milliseconds period = idle_period();
  std::unique_lock lock(mutex);
  for (;;) {
    relief_wake.wait_for(lock, period, [&] { return relief_stopping; });
    if (relief_stopping) return;
    lock.unlock();
    const std::chrono::milliseconds idle = idle_period();
    period = relieve() ? std::max(std::chrono::milliseconds(1), idle / 4) : idle;
    lock.lock();
  }
}

// Moves the records of every ring at least half full into its worker's backlog, while the
// backlog has room for a whole ring's worth. Returns whether records are flowing (a ring more than
// 1/16 full).
bool AccessLog::Impl::relieve() {
  bool busy = false;
  std::lock_guard drain_lock(drain_mutex);
  for (size_t w = 0; w < rings->size(); ++w) {
    LogRing& ring = *(*rings)[w];
    const size_t queued = ring.queued_bytes();
    busy = busy || queued > ring.capacity() / 16;
    // An entry takes no more bytes than the ring space it came from (the same 8-byte header,
    // no padding), so a drain adds at most the ring's capacity (more may arrive meanwhile
    // than `queued` says).
    if (queued < ring.capacity() / 2 ||
        backlog_bytes + ring.capacity() > options.backlog_bytes_max) {
      continue;
    }
    std::string chunk;
    chunk.reserve(ring.capacity());
    const size_t reserved = chunk.capacity();
    const uint64_t records = ring.drain([&](std::string_view a, std::string_view b,
                                            uint32_t drops_before, bool one_line) {
      const uint32_t header[2] = {
          static_cast<uint32_t>(a.size() + b.size()) | (one_line ? kBacklogOneLine : 0u),
          drops_before};
      chunk.append(reinterpret_cast<const char*>(header), sizeof(header));
      chunk.append(a);
      chunk.append(b);
    });
    KEYGATE_ASSERT(chunk.capacity() == reserved);  // a drain fits in the ring's capacity
    backlog_bytes += chunk.capacity();
    backlogs[w].push_back(std::move(chunk));
    backlog_records.fetch_add(records, std::memory_order_relaxed);
    if (backlog_bytes > backlog_bytes_peak.load(std::memory_order_relaxed)) {
      backlog_bytes_peak.store(backlog_bytes, std::memory_order_relaxed);
    }
  }
  return busy;
}

void AccessLog::Impl::plan_line(size_t line_bytes, uint64_t seq) {
  if (!planned_segment ||
      (planned_bytes > 0 && planned_bytes + line_bytes > segment_bytes_cap)) {
    cuts.push_back({buffer.size(), seq});
    planned_segment = true;
    planned_bytes = 0;
  }
  planned_bytes += line_bytes;
}

void AccessLog::Impl::emit_record(std::string_view a, std::string_view b, bool one_line) {
  // The payload is a + b and starts with '{' (checked by append()).
  a.remove_prefix(1);
  // "{}" becomes {"seq":N}; anything else gets a comma after the seq member.
  bool empty_object = false;
  for (std::string_view part : {a, b}) {
    const size_t p = part.find_first_not_of(" \t\r\n");
    if (p != std::string_view::npos) {
      empty_object = part[p] == '}';
      break;
    }
  }
  const uint64_t seq = next_seq++;
  char digits[24];
  const auto [digits_end, ec] = std::to_chars(digits, digits + sizeof(digits), seq);
  const std::string_view seq_text(digits, static_cast<size_t>(digits_end - digits));
  constexpr std::string_view kSeqMember = "{\"seq\":";
  const size_t line_bytes =
      kSeqMember.size() + seq_text.size() + (empty_object ? 0 : 1) + a.size() + b.size() + 1;
  plan_line(line_bytes, seq);
  buffer.append(kSeqMember);
  buffer.append(seq_text);
  if (!empty_object) buffer.push_back(',');
  const size_t body = buffer.size();
  buffer.append(a);
  buffer.append(b);
  // A raw newline can only be whitespace between tokens (strings must escape it); as a space
  // it keeps both the JSON and the one-record-per-line framing.
  for (size_t p = one_line ? std::string_view::npos : buffer.view().find('\n', body);
       p != std::string_view::npos; p = buffer.view().find('\n', p + 1)) {
    buffer[p] = ' ';
  }
  buffer.push_back('\n');
  ++buffer_records;
}

void AccessLog::Impl::emit_marker(unsigned worker, uint64_t count) {
  const uint64_t from = next_seq;
  const uint64_t to = from + count - 1;
  const uint64_t seq = to + 1;
  next_seq = seq + 1;
  char line[256];
  const int n =
      std::snprintf(line, sizeof(line),
                    "{\"seq\":%llu,\"type\":\"dropped\",\"worker\":%u,\"count\":%llu,"
                    "\"dropped_from_seq\":%llu,\"dropped_to_seq\":%llu,\"time_us\":%lld}\n",
                    static_cast<unsigned long long>(seq), worker,
                    static_cast<unsigned long long>(count), static_cast<unsigned long long>(from),
                    static_cast<unsigned long long>(to), static_cast<long long>(now_us()));
  KEYGATE_ASSERT(n > 0 && static_cast<size_t>(n) < sizeof(line));
  plan_line(static_cast<size_t>(n), seq);
  buffer.append(std::string_view(line, static_cast<size_t>(n)));
  ++buffer_markers;
}

// Writes the buffer's lines, switching segments at the cuts. Records are counted written
// when their lines are on disk or (direct mode) in the partial last block held for the next
// pass, which writes it at the latest one flush interval later.
bool AccessLog::Impl::write_buffer(bool write_tail) {
  for (;;) {
    if (next_cut < cuts.size() && cuts[next_cut].offset == write_pos) {
      if (!switch_segment(cuts[next_cut].first_seq)) {
        note_write_failure("create", cuts[next_cut].first_seq);
        write_failed = true;
        return false;
      }
      segment_at = write_pos;
      ++next_cut;
      continue;
    }
    if (write_pos == buffer.size()) break;
    const bool before_cut = next_cut < cuts.size();
    const size_t end = before_cut ? cuts[next_cut].offset : buffer.size();
    if (!write_region(end, write_tail || before_cut)) {
      if (write_errno == EFBIG && rotate_at_size_limit()) continue;
      note_write_failure("write", active.first_seq);
      write_failed = true;
      return false;
    }
    if (write_pos < end) break;  // the partial last block is held
  }
  write_failed = false;
  note_write_success();
  if (buffer_records > 0 || buffer_markers > 0) {
    written.fetch_add(buffer_records, std::memory_order_release);
    markers_written.fetch_add(buffer_markers, std::memory_order_relaxed);
    buffer_records = 0;
    buffer_markers = 0;
  }
  return true;
}

// Appends buffer[write_pos, end) to the active segment. Direct mode writes the whole blocks
// with one O_DIRECT write, starting at the block that holds the segment's current end (its
// written start is kept at the front of the buffer for this), so the kernel copies nothing
// into the page cache; that copy is most of a buffered write's CPU cost. The rest, less than a
// block, is written through the page cache when `write_tail` or when there was no whole
// block (light traffic); otherwise it is held for the next pass, so that under load a direct
// write never first has to write back a cached page of the same block.
bool AccessLog::Impl::write_region(size_t end, bool write_tail) {
  const size_t in_block = active.bytes % kDirectAlign;
  if (direct_fd >= 0 && in_block <= write_pos - segment_at) {
    const size_t from = write_pos - in_block;  // at a block boundary of the file
    const size_t whole = (end - from) & ~(kDirectAlign - 1);
    if (whole > 0 && reinterpret_cast<uintptr_t>(buffer.data() + from) % kDirectAlign == 0) {
      const uint64_t offset = active.bytes - in_block;
      size_t done = 0;
      bool ok = false;
      if (const int injected = direct_fault.exchange(0, std::memory_order_relaxed)) {
        errno = injected;
      } else {
        ok = pwrite_full(direct_fd, buffer.data() + from, whole, offset, &done);
      }
      const int err = errno;
      direct_bytes.fetch_add(done, std::memory_order_relaxed);
      if (offset + done > active.bytes) {
        write_pos += static_cast<size_t>(offset + done - active.bytes);
        active.bytes = offset + done;
      }
      if (!ok && direct_refused(err)) {
        disable_direct();  // this filesystem refuses these writes: the page cache from now on
      } else if (!ok) {
        write_errno = err;
        return false;
      } else if (!write_tail || write_pos == end) {
        return true;
      }
    }
  }
  size_t done = 0;
  const bool ok =
      pwrite_full(active_fd, buffer.data() + write_pos, end - write_pos, active.bytes, &done);
  write_errno = ok ? 0 : errno;
  write_pos += done;
  active.bytes += done;
  if (direct_fd < 0) start_writeback();
  return ok;
}

// A write failed with EFBIG: the active segment reached the file size limit (see "File size
// limit" in the header). The segment is cut back to its last complete line, and the line that
// did not fit becomes the start of a new segment (a cut at write_pos; write_buffer() opens
// it). The part of that line an earlier pass wrote is no longer in the buffer (direct mode
// keeps only the last partial block): it is read back from the file and put back in front.
// When the line was the segment's first, no segment can hold it: it is dropped and counted.
// Returns false when the file cannot be read or cut (a failed write, retried next pass).
bool AccessLog::Impl::rotate_at_size_limit() {
  const uint64_t limit = file_size_limit();
  if (limit < segment_bytes_cap) {
    segment_bytes_cap = std::max<uint64_t>(limit, 1);
    std::fprintf(stderr,
                 "keygate: access log: %s reached the file size limit (RLIMIT_FSIZE, %llu "
                 "bytes); segments rotate at that size from now on\n",
                 segment_name(active.first_seq).c_str(), static_cast<unsigned long long>(limit));
  }
  // The end of the segment's last complete line (0 when it has none).
  BackwardLines lines(active_fd, active.bytes);
  std::string_view last_line;
  uint64_t last_line_at = 0;
  bool read_ok = true;
  const uint64_t line_end =
      lines.next(&last_line, &last_line_at, &read_ok) ? last_line_at + last_line.size() + 1 : 0;
  if (!read_ok) {
    write_errno = errno;
    return false;
  }
  const uint64_t partial = active.bytes - line_end;  // of the line that did not fit
  const size_t in_buffer = write_pos - segment_at;    // the segment's bytes still in the buffer
  std::string head;  // the line's bytes on disk only
  if (partial > in_buffer) {
    head.resize(static_cast<size_t>(partial - in_buffer));
    if (!pread_full(active_fd, head.data(), head.size(), line_end)) {
      write_errno = errno;
      return false;
    }
  }
  if (::ftruncate(active_fd, static_cast<off_t>(line_end)) != 0) {
    write_errno = errno;
    return false;
  }
  active.bytes = line_end;
  const size_t line_at = head.empty() ? write_pos - static_cast<size_t>(partial) : segment_at;
  write_pos = line_at;
  if (!head.empty()) {
    buffer.insert(line_at, head);
    for (size_t i = next_cut; i < cuts.size(); ++i) cuts[i].offset += head.size();
  }
  // Every line in the buffer starts with the seq the writer gave it, and ends with '\n'.
  const size_t newline = buffer.view().find('\n', line_at);
  KEYGATE_ASSERT(newline != std::string_view::npos);
  const std::string_view line = buffer.view().substr(line_at, newline - line_at);
  // Its start may have been read back from the disk: checked, never assumed.
  uint64_t seq = 0;
  const bool has_seq = line_seq(line, &seq);
  if (line_end == 0 || !has_seq) {
    // A marker line is {"seq":M,"type":"dropped",...} (emit_marker()).
    const size_t comma = line.find(',');
    const bool marker = comma != std::string_view::npos &&
                        line.substr(comma).starts_with(",\"type\":\"dropped\",");
    const size_t line_bytes = line.size() + 1;
    const auto now = std::chrono::steady_clock::now();
    if (!last_oversize_report || now - *last_oversize_report >= std::chrono::minutes(1)) {
      last_oversize_report = now;
      if (has_seq) {
        std::fprintf(stderr,
                     "keygate: access log: the line of seq %llu (%zu bytes) is larger than the "
                     "file size limit (RLIMIT_FSIZE, %llu bytes): dropped\n",
                     static_cast<unsigned long long>(seq), line_bytes,
                     static_cast<unsigned long long>(limit));
      } else {
        std::fprintf(stderr,
                     "keygate: access log: a line cut by the file size limit read back damaged "
                     "from %s: dropped\n",
                     segment_name(active.first_seq).c_str());
      }
    }
    buffer.erase(line_at, line_bytes);
    for (size_t i = next_cut; i < cuts.size(); ++i) cuts[i].offset -= line_bytes;
    if (marker) {
      --buffer_markers;
    } else {
      --buffer_records;
      lost.fetch_add(1, std::memory_order_relaxed);
    }
  } else {
    cuts.insert(cuts.begin() + static_cast<ptrdiff_t>(next_cut), Cut{line_at, seq});
  }
  // The last planned segment, which the next pass's lines continue.
  if (next_cut < cuts.size()) {
    planned_bytes = buffer.size() - cuts.back().offset;
  } else {
    planned_bytes = active.bytes + (buffer.size() - write_pos);
  }
  return true;
}

// A segment could not be created or written (write_errno says why). Counted; said on stderr
// when writing was working until now (at most once per kFailureReportInterval: a disk that
// fails and recovers over and over would flood it).
void AccessLog::Impl::note_write_failure(const char* what, uint64_t first_seq) {
  write_errors.fetch_add(1, std::memory_order_relaxed);
  ++failed_attempts;
  if (writes_failing) return;
  constexpr auto kFailureReportInterval = std::chrono::minutes(1);
  const auto now = std::chrono::steady_clock::now();
  writes_failing = true;
  failing_since = now;
  failed_attempts = 1;
  failure_reported = !last_failure_report || now - *last_failure_report >= kFailureReportInterval;
  if (!failure_reported) return;
  last_failure_report = now;
  std::fprintf(stderr,
               "keygate: access log: cannot %s %s/%s: %s; records wait in memory, then are "
               "dropped and counted, until writing works again\n",
               what, options.dir.c_str(), segment_name(first_seq).c_str(),
               std::strerror(write_errno));
}

void AccessLog::Impl::note_write_success() {
  if (!writes_failing) return;
  writes_failing = false;
  if (!failure_reported) return;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - failing_since).count();
  std::fprintf(stderr,
               "keygate: access log: writing works again, after %.1f s and %llu failed "
               "attempts\n",
               seconds, static_cast<unsigned long long>(failed_attempts));
}

void AccessLog::Impl::open_direct(const char* name) {
  if (!direct) return;
  direct_fd = ::openat(dir_fd, name, O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (direct_fd < 0 && direct_refused(errno)) disable_direct();
}

void AccessLog::Impl::disable_direct() {
  if (direct) {
    std::fprintf(stderr,
                 "keygate: access log: %s does not take O_DIRECT writes; writing through the "
                 "page cache\n",
                 options.dir.c_str());
  }
  direct = false;
  if (direct_fd >= 0) ::close(direct_fd);
  direct_fd = -1;
}

// Spreads the segment's writeback over its lifetime, so that the fdatasync at its end has
// little left to do and write() does not run into the kernel's dirty-page throttling.
// SYNC_FILE_RANGE_WRITE only queues the I/O; it waits only if the device queue is full.
void AccessLog::Impl::start_writeback() {
  if (options.writeback_bytes == 0) return;
  const uint64_t end = active.bytes & ~(kPageBytes - 1);
  if (end < writeback_from + options.writeback_bytes) return;
  if (::sync_file_range(active_fd, static_cast<off_t>(writeback_from),
                        static_cast<off_t>(end - writeback_from), SYNC_FILE_RANGE_WRITE) != 0) {
    write_errors.fetch_add(1, std::memory_order_relaxed);
  }
  writeback_from = end;
}

// At shutdown only: the writer syncs the active segment itself.
void AccessLog::Impl::close_active() {
  if (direct_fd >= 0) ::close(direct_fd);
  direct_fd = -1;
  if (active_fd < 0) return;
  // fsync errors are not retried: after a failed fdatasync Linux may have dropped the dirty
  // pages, so a retry would report success for data that is gone. Counted instead.
  if (::fdatasync(active_fd) != 0) write_errors.fetch_add(1, std::memory_order_relaxed);
  ::close(active_fd);
  active_fd = -1;
  // Its name may be newer than the sync thread's last directory fsync.
  sync_dir();
}

// Hands the active segment to the sync thread without waiting for it.
void AccessLog::Impl::finish_active() {
  if (direct_fd >= 0) ::close(direct_fd);
  direct_fd = -1;
  const SyncJob job{active_fd, active.first_seq};
  // Before the job is published, so that segments_synced never passes it.
  segments_finished.fetch_add(1, std::memory_order_relaxed);
  bool queued = false;
  {
    std::lock_guard lock(sync_mutex);
    if (sync_count < kSyncQueueMax) {
      sync_jobs[(sync_head + sync_count) % kSyncQueueMax] = job;
      ++sync_count;
      queued = true;
    }
  }
  if (!queued) {
    // The sync thread is behind: keeping the fd would need an unbounded queue. The data stays
    // in the page cache, so reopening by name and fdatasync'ing later syncs the same pages.
    ::close(job.fd);
    sync_queue_full.fetch_add(1, std::memory_order_release);
    std::lock_guard lock(sync_mutex);
    if (overflow_segments == 0) overflow_from_seq = job.first_seq;
    overflow_to_seq = job.first_seq;
    ++overflow_segments;
  }
  sync_wake.notify_one();
  active_fd = -1;
  closed.push_back(active);
  active = {};
}

bool AccessLog::Impl::switch_segment(uint64_t first_seq) {
  if (active_fd >= 0) finish_active();
  const std::string name = segment_name(first_seq);
  // Read and write: a write that meets the file size limit reads the segment's tail back.
  const auto create = [&] {
    return ::openat(dir_fd, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  };
  int fd = create();
  if (fd < 0 && (errno == EMFILE || errno == ENFILE) && give_up_spare_fds()) fd = create();
  if (fd < 0) {
    write_errno = errno;
    take_spare_fds();
    return false;
  }
  active_fd = fd;
  open_direct(name.c_str());
  if (direct && direct_fd < 0 && (errno == EMFILE || errno == ENFILE) && give_up_spare_fds()) {
    open_direct(name.c_str());
  }
  take_spare_fds();
  active = {first_seq, 0};
  writeback_from = 0;
  // No directory fsync here: the new name is durable at the latest by the one that follows
  // this segment's own sync (in the sync thread, or in close_active() at shutdown).
  retain();
  return true;
}

void AccessLog::Impl::retain() {
  const uint64_t keep_from = retain_from_seq();
  if (keep_from != 0) {
    {
      std::lock_guard lock(sync_mutex);
      delete_below_seq = std::max(delete_below_seq, keep_from);
    }
    sync_wake.notify_one();
  }
}

void AccessLog::Impl::adopt_live(const LiveOptions& live) {
  options.segment_bytes_max = live.segment_bytes_max;
  options.retention_bytes = live.retention_bytes;
  options.flush_interval_ms = live.flush_interval_ms;
  // As open() does: the file size limit still bounds it (a write that met EFBIG lowered the
  // cap to that limit, which file_size_limit() says again).
  segment_bytes_cap =
      std::min(live.segment_bytes_max, std::max<uint64_t>(file_size_limit(), 1));
  relief_interval_ms.store(live.flush_interval_ms, std::memory_order_relaxed);
  retain();
}

void AccessLog::Impl::sync_dir() {
  if (::fsync(dir_fd) != 0) write_errors.fetch_add(1, std::memory_order_relaxed);
}

void AccessLog::Impl::sync_segments_by_name(uint64_t from_seq, uint64_t to_seq) {
  std::vector<SegmentName> segments;
  if (!list_segments_counted(&segments)) return;
  for (const SegmentName& segment : segments) {
    if (segment.first_seq < from_seq || segment.first_seq > to_seq) continue;
    const int fd = ::openat(dir_fd, segment.name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT) write_errors.fetch_add(1, std::memory_order_relaxed);
      continue;  // ENOENT: retention deleted it meanwhile
    }
    if (::fdatasync(fd) != 0) write_errors.fetch_add(1, std::memory_order_relaxed);
    ::close(fd);
  }
}

// Deletes first: they are cheap next to a sync and bound the disk use; a segment deleted
// before its sync needs none. Then queued segments oldest first, then the overflow range.
void AccessLog::Impl::run_sync() {
  std::unique_lock lock(sync_mutex);
  for (;;) {
    sync_wake.wait(lock, [&] {
      return sync_stopping || sync_count > 0 || overflow_segments > 0 ||
             delete_below_seq > deleted_below_seq;
    });
    const int64_t delay = sync_stopping ? 0 : sync_delay_ms.load(std::memory_order_relaxed);
    if (delete_below_seq > deleted_below_seq) {
      const uint64_t target = delete_below_seq;
      lock.unlock();
      delete_segments_before(target);
      lock.lock();
      deleted_below_seq = target;
    } else if (sync_count > 0) {
      const SyncJob job = sync_jobs[sync_head];
      lock.unlock();
      if (delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
      // Not retried, as in close_active().
      if (::fdatasync(job.fd) != 0) write_errors.fetch_add(1, std::memory_order_relaxed);
      ::close(job.fd);
      sync_dir();
      segments_synced.fetch_add(1, std::memory_order_release);
      lock.lock();
      // Popped only now, so that the queue bound also counts the segment being synced.
      sync_head = (sync_head + 1) % kSyncQueueMax;
      --sync_count;
    } else if (overflow_segments > 0) {
      const uint64_t count = overflow_segments;
      const uint64_t from_seq = overflow_from_seq;
      const uint64_t to_seq = overflow_to_seq;
      overflow_segments = 0;
      lock.unlock();
      if (delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
      sync_segments_by_name(from_seq, to_seq);
      sync_dir();
      segments_synced.fetch_add(count, std::memory_order_release);
      lock.lock();
    } else {
      return;  // stopping, and nothing is left
    }
  }
}

AccessLog::AccessLog(unsigned workers, size_t ring_bytes, std::unique_ptr<Impl> impl)
    : workers_(workers), impl_(std::move(impl)) {
  rings_.reserve(workers);
  for (unsigned w = 0; w < workers; ++w) rings_.push_back(std::make_unique<LogRing>(ring_bytes));
  impl_->rings = &rings_;
}

std::unique_ptr<AccessLog> AccessLog::open(const AccessLogOptions& options, unsigned workers,
                                           std::string* error) {
  if (workers == 0) {
    *error = "access log: at least one worker is needed";
    return nullptr;
  }
  if (options.ring_bytes_per_worker < LogRing::kCapacityBytesMin) {
    *error = "access log: ring_bytes_per_worker must be at least 64";
    return nullptr;
  }
  if (options.segment_bytes_max == 0 || options.flush_interval_ms == 0) {
    *error = "access log: segment_bytes_max and flush_interval_ms must be positive";
    return nullptr;
  }
  if (!make_directories(options.dir, error)) return nullptr;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->direct = options.direct_io;
  impl->dir_fd = ::open(options.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (impl->dir_fd < 0) {
    *error = errno_text("cannot open", options.dir, errno);
    return nullptr;
  }
  if (::flock(impl->dir_fd, LOCK_EX | LOCK_NB) != 0) {
    *error = errno == EWOULDBLOCK ? "access log: " + options.dir + " is in use by another log"
                                  : errno_text("cannot lock", options.dir, errno);
    return nullptr;
  }
  if (!probe_writable(impl->dir_fd, options.dir, error)) return nullptr;
  impl->take_spare_fds();
  impl->segment_bytes_cap = options.segment_bytes_max;
  impl->relief_interval_ms.store(options.flush_interval_ms, std::memory_order_relaxed);
  if (const uint64_t limit = file_size_limit(); limit < options.segment_bytes_max) {
    impl->segment_bytes_cap = std::max<uint64_t>(limit, 1);
    std::fprintf(stderr,
                 "keygate: access log: the file size limit (RLIMIT_FSIZE, %llu bytes) is below "
                 "segment_bytes_max (%llu): segments rotate at %llu bytes\n",
                 static_cast<unsigned long long>(limit),
                 static_cast<unsigned long long>(options.segment_bytes_max),
                 static_cast<unsigned long long>(impl->segment_bytes_cap));
  }
  if (!impl->recover(error)) return nullptr;
  impl->next_seq_public.store(impl->next_seq, std::memory_order_relaxed);
  size_t total_ring_bytes = 0;
  std::unique_ptr<AccessLog> log(
      new AccessLog(workers, options.ring_bytes_per_worker, std::move(impl)));
  for (const auto& ring : log->rings_) total_ring_bytes += ring->capacity();
  // Lines are a little longer than ring records (the seq member; markers): some slack.
  log->impl_->buffer.reserve(total_ring_bytes + total_ring_bytes / 4 + 4096);
  Impl* raw = log->impl_.get();
  raw->sync_thread = std::thread([raw] {
    pthread_setname_np(pthread_self(), "kg-log-sync");
    raw->run_sync();
  });
  raw->backlogs.resize(workers);
  raw->thread = std::thread([raw] {
    pthread_setname_np(pthread_self(), "kg-log");
    ask_for_short_slices();
    raw->run();
  });
  if (options.backlog_bytes_max > 0) {
    raw->relief_thread = std::thread([raw] {
      pthread_setname_np(pthread_self(), "kg-log-relief");
      ask_for_short_slices();
      raw->run_relief();
    });
  }
  return log;
}

AccessLog::~AccessLog() {
  // The relief thread first: whatever it moved into the backlog, the writer's last pass takes.
  if (impl_->relief_thread.joinable()) {
    {
      std::lock_guard lock(impl_->mutex);
      impl_->relief_stopping = true;
    }
    impl_->relief_wake.notify_all();
    impl_->relief_thread.join();
  }
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  impl_->thread.join();
  // After the writer: its last rotation may have queued work.
  {
    std::lock_guard lock(impl_->sync_mutex);
    impl_->sync_stopping = true;
  }
  impl_->sync_wake.notify_all();
  impl_->sync_thread.join();
}

void AccessLog::fail_next_direct_write_for_testing(int err) {
  impl_->direct_fault.store(err, std::memory_order_relaxed);
}

AccessLogStats AccessLog::stats() const {
  AccessLogStats s;
  // Writer counters first: a record is counted written only after it was pushed, so reading
  // the producers' counters afterwards never makes queued negative.
  s.written = impl_->written.load(std::memory_order_acquire);
  const uint64_t lost = impl_->lost.load(std::memory_order_acquire);
  s.markers_written = impl_->markers_written.load(std::memory_order_relaxed);
  s.write_errors = impl_->write_errors.load(std::memory_order_relaxed);
  s.next_seq = impl_->next_seq_public.load(std::memory_order_relaxed);
  s.torn_bytes_cut = impl_->torn_bytes_cut;
  s.query_segments_skipped = impl_->query_segments_skipped.load(std::memory_order_relaxed);
  s.direct_bytes = impl_->direct_bytes.load(std::memory_order_relaxed);
  s.backlog_records = impl_->backlog_records.load(std::memory_order_relaxed);
  s.backlog_bytes_peak = impl_->backlog_bytes_peak.load(std::memory_order_relaxed);
  // Synced first, so that a snapshot never shows more synced than finished.
  s.segments_synced = impl_->segments_synced.load(std::memory_order_acquire);
  s.sync_queue_full = impl_->sync_queue_full.load(std::memory_order_acquire);
  s.segments_finished = impl_->segments_finished.load(std::memory_order_relaxed);
  uint64_t pushed = 0;
  for (const auto& ring : rings_) {
    pushed += ring->pushed();
    s.dropped += ring->dropped();
  }
  s.enqueued = pushed + s.dropped;
  s.dropped += lost;
  s.queued = pushed - s.written - lost;
  return s;
}

void AccessLog::set_live_options(uint64_t segment_bytes_max, uint64_t retention_bytes,
                                 uint32_t flush_interval_ms) {
  KEYGATE_ASSERT(segment_bytes_max > 0 && flush_interval_ms > 0);
  {
    std::lock_guard lock(impl_->mutex);
    impl_->live_posted = Impl::LiveOptions{segment_bytes_max, retention_bytes, flush_interval_ms};
  }
  impl_->wake.notify_all();
}

void AccessLog::set_writer_delay_for_testing(std::chrono::milliseconds delay) {
  impl_->delay_ms.store(delay.count(), std::memory_order_relaxed);
}

void AccessLog::set_sync_delay_for_testing(std::chrono::milliseconds delay) {
  impl_->sync_delay_ms.store(delay.count(), std::memory_order_relaxed);
}

bool AccessLog::flush() {
  std::unique_lock lock(impl_->mutex);
  const uint64_t target = ++impl_->flush_requested;
  impl_->wake.notify_all();
  impl_->flushed.wait(lock, [&] { return impl_->flush_done >= target || impl_->stopping; });
  return impl_->last_write_ok;
}

bool AccessLog::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mutex);
  const uint64_t target = ++impl_->flush_requested;
  impl_->wake.notify_all();
  const bool done = impl_->flushed.wait_for(
      lock, timeout, [&] { return impl_->flush_done >= target || impl_->stopping; });
  return done && impl_->last_write_ok;
}

namespace {

struct Matcher {
  const AccessLog::Query& query;

  bool matches(std::string_view line) const {
    if (!query.key_id.empty()) {
      const auto raw = find_root_member(line, "key_id");
      if (!raw || !json_string_equals(*raw, query.key_id)) return false;
    }
    if (query.status != 0) {
      const auto raw = find_root_member(line, "status");
      int64_t status;
      if (!raw || !parse_json_int(*raw, &status) || status != query.status) return false;
    }
    if (query.since_us != 0 || query.until_us != 0) {
      const auto raw = find_root_member(line, "time_us");
      int64_t time_us;
      if (!raw || !parse_json_int(*raw, &time_us)) return false;
      if (query.since_us != 0 && time_us < query.since_us) return false;
      if (query.until_us != 0 && time_us >= query.until_us) return false;
    }
    return true;
  }
};

enum class SegmentOpen : uint8_t { kOk, kGone, kUnreadable };

// Opens a segment for reading. Non-blocking and only a regular file: a FIFO put in a
// segment's place would otherwise block the open (and the query) until a writer came. kGone:
// retention deleted it meanwhile. kUnreadable leaves the reason in errno.
SegmentOpen open_segment(int dir_fd, const std::string& name, int* fd, uint64_t* size) {
  *fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (*fd < 0) return errno == ENOENT ? SegmentOpen::kGone : SegmentOpen::kUnreadable;
  struct stat st;
  int err = 0;
  if (::fstat(*fd, &st) != 0) {
    err = errno;
  } else if (!S_ISREG(st.st_mode)) {
    err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;  // EINVAL: said as "not a regular file"
  }
  if (err != 0) {
    ::close(*fd);
    errno = err;
    return SegmentOpen::kUnreadable;
  }
  *size = static_cast<uint64_t>(st.st_size);
  return SegmentOpen::kOk;
}

// The first seq a follow line accounts for: a dropped marker (seq B + 1) stands for its range
// A..B as well.
uint64_t first_seq_covered(std::string_view line, uint64_t seq) {
  const auto type = find_root_member(line, "type");
  if (!type || !json_string_equals(*type, "dropped")) return seq;
  const auto raw = find_root_member(line, "dropped_from_seq");
  int64_t from = 0;
  if (!raw || !parse_json_int(*raw, &from) || from <= 0 || static_cast<uint64_t>(from) > seq) {
    return seq;
  }
  return static_cast<uint64_t>(from);
}

}  // namespace

// At most this many unreadable segments are named on stderr (each once); more are counted only.
constexpr size_t kUnreadableReportsMax = 1024;

void AccessLog::Impl::skip_unreadable(const SegmentName& segment, int err) {
  query_segments_skipped.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(unreadable_mutex);
  if (unreadable_reported.size() >= kUnreadableReportsMax ||
      !unreadable_reported.insert(segment.first_seq).second) {
    return;
  }
  std::fprintf(stderr,
               "keygate: access log: cannot read %s/%s (%s): queries skip it, as if retention "
               "had deleted it\n",
               options.dir.c_str(), segment.name.c_str(),
               err == EINVAL ? "not a regular file" : std::strerror(err));
}

bool AccessLog::query(const Query& q, QueryResult* result, std::string* error) const {
  result->records.clear();
  result->next_cursor = 0;
  result->missing_from = 0;
  result->missing_to = 0;
  result->bytes_read = 0;
  const uint32_t limit = q.limit == 0 || q.limit > kQueryLimitMax ? kQueryLimitMax : q.limit;
  std::vector<SegmentName> segments;
  if (!list_segments(impl_->options.dir, &segments, error)) return false;
  const Matcher matcher{q};
  // Every line read counts, also the ones outside the cursor's range and damaged ones; the scan
  // stops only at a line in range, so the cursor it returns always moves on.
  uint64_t scanned_bytes = 0;
  const auto budget_spent = [&] { return scanned_bytes >= q.scan_bytes_max; };
  // Opens segments[i] for reading; false when the scan passes over it: deleted by retention
  // meanwhile, or unreadable (counted, named once on stderr).
  const auto open_or_skip = [&](size_t i, int* fd, uint64_t* size) {
    const SegmentOpen opened = open_segment(impl_->dir_fd, segments[i].name, fd, size);
    if (opened == SegmentOpen::kUnreadable) impl_->skip_unreadable(segments[i], errno);
    return opened == SegmentOpen::kOk;
  };
  // Closes segments[i]; a read that failed in it (`read_ok` false, errno set) passes over the
  // rest of it, counted the same way.
  const auto close_segment = [&](size_t i, int fd, bool read_ok) {
    const int read_errno = errno;
    ::close(fd);
    if (!read_ok) impl_->skip_unreadable(segments[i], read_errno);
  };

  if (q.after_seq > 0) {
    // Follow: oldest first. Segment i holds [first_i, first_{i+1}); skip those entirely before
    // from_seq.
    result->next_cursor = q.after_seq;
    if (q.after_seq == UINT64_MAX) return true;  // no seq comes after it
    const uint64_t from_seq = q.after_seq + 1;
    size_t first = 0;
    while (first + 1 < segments.size() && segments[first + 1].first_seq <= from_seq) ++first;
    uint64_t expected = from_seq;  // the seq the next line should account for
    bool stop = false;
    for (size_t i = first; i < segments.size() && !stop; ++i) {
      int fd = -1;
      uint64_t size = 0;
      if (!open_or_skip(i, &fd, &size)) continue;
      uint64_t start = 0;
      bool ok = segments[i].first_seq >= from_seq ||
                seek_seq(fd, size, from_seq, &start, &result->bytes_read);
      ok = ok && for_each_line_forward(
                     fd, start, size, &result->bytes_read, [&](std::string_view line, uint64_t) {
                       scanned_bytes += line.size() + 1;
                       uint64_t seq;
                       if (!line_seq(line, &seq) || seq <= q.after_seq) return true;
                       if (seq > expected) {
                         const uint64_t covered = first_seq_covered(line, seq);
                         if (covered > expected) {
                           if (result->next_cursor != q.after_seq) {
                             // A second gap: this page ends before it, the next one reports it.
                             stop = true;
                             return false;
                           }
                           result->missing_from = expected;
                           result->missing_to = covered - 1;
                         }
                       }
                       expected = seq + 1;
                       result->next_cursor = std::max(result->next_cursor, seq);
                       if (matcher.matches(line)) result->records.emplace_back(line);
                       stop = result->records.size() >= limit || budget_spent();
                       return !stop;
                     });
      close_segment(i, fd, ok);
    }
    return true;
  }

  // Newest first. Once the page is full (or the budget spent) at `last_seq`, the scan goes on to
  // the next older line only to learn whether there is one: the cursor is `last_seq` then, and
  // stays 0 (the listing is complete) when `last_seq` was the oldest record.
  uint64_t last_seq = 0;
  bool stop = false;
  for (size_t i = segments.size(); i-- > 0 && !stop;) {
    if (q.before_seq != 0 && segments[i].first_seq >= q.before_seq) continue;
    int fd = -1;
    uint64_t size = 0;
    if (!open_or_skip(i, &fd, &size)) continue;
    // Only the segment holding the cursor has lines at or after it: they end where it starts.
    uint64_t end = size;
    bool ok = q.before_seq == 0 ||
              (i + 1 < segments.size() && segments[i + 1].first_seq <= q.before_seq) ||
              seek_seq(fd, size, q.before_seq, &end, &result->bytes_read);
    if (ok) {
      BackwardLines lines(fd, end, &result->bytes_read);
      std::string_view line;
      uint64_t offset;
      while (!stop && lines.next(&line, &offset, &ok)) {
        scanned_bytes += line.size() + 1;
        uint64_t seq;
        if (!line_seq(line, &seq) || (q.before_seq != 0 && seq >= q.before_seq)) continue;
        if (last_seq != 0) {
          result->next_cursor = last_seq;  // an older line exists
          stop = true;
          continue;
        }
        if (matcher.matches(line)) result->records.emplace_back(line);
        if (result->records.size() >= limit || budget_spent()) last_seq = seq;
      }
    }
    close_segment(i, fd, ok);
  }
  return true;
}

}  // namespace keygate::storage
