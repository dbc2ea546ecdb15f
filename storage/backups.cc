#include "storage/backups.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <system_error>
#include <thread>

#include "storage/data_dir.h"

namespace keygate::storage {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kNamePrefix = "keygate-";
constexpr std::string_view kTempPrefix = ".tmp-";
// In each backup: what its checkpoint holds, so a listing need not open the store (a RocksDB
// open per backup would make a listing slow). Small, written once, read whole.
constexpr std::string_view kContentsFile = "backup.json";
constexpr size_t kContentsBytesMax = 128;
// "YYYYMMDDTHHMMSSZ"
constexpr size_t kStampChars = 16;

std::string errno_text(const std::string& what, int err) {
  return what + ": " + std::strerror(err);
}

// fsyncs `path` (a file or a directory). The backup's files must be on disk before the rename
// makes it look complete; hard-linked SST files already are, copies and the manifest are not.
bool sync_path(const std::string& path, bool directory, std::string* error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) {
    *error = errno_text("cannot open " + path + " to sync it", errno);
    return false;
  }
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) *error = errno_text("cannot sync " + path, err);
  return ok;
}

// Syncs every file under `dir`, then every directory bottom-up (a directory's entries after
// the files they name).
bool sync_tree(const std::string& dir, std::string* error) {
  std::error_code ec;
  std::vector<std::string> dirs{dir};
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(st)) {
      dirs.push_back(it->path().string());
    } else if (fs::is_regular_file(st) && !sync_path(it->path().string(), false, error)) {
      return false;
    }
  }
  if (ec) {
    *error = "cannot list " + dir + ": " + ec.message();
    return false;
  }
  for (auto d = dirs.rbegin(); d != dirs.rend(); ++d) {
    if (!sync_path(*d, true, error)) return false;
  }
  return true;
}

// The sizes of the regular files under `dir`, summed (a file linked twice counts twice: this
// is what a copy of the backup needs, not what it takes on this disk).
bool tree_bytes(const std::string& dir, uint64_t* out, std::string* error) {
  std::error_code ec;
  uint64_t bytes = 0;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    struct stat st;
    if (::lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      bytes += static_cast<uint64_t>(st.st_size);
    }
  }
  if (ec) {
    *error = "cannot list " + dir + ": " + ec.message();
    return false;
  }
  *out = bytes;
  return true;
}

// Writes <dir>/backup.json for a checkpoint holding `keys` and `users`. Synced with the rest of
// the backup (sync_tree), before the rename.
bool write_contents(const std::string& dir, uint64_t keys, uint64_t users, std::string* error) {
  const std::string path = dir + "/" + std::string(kContentsFile);
  char text[kContentsBytesMax];
  const int n =
      std::snprintf(text, sizeof text, "{\"keys\":%llu,\"users\":%llu}\n",
                    static_cast<unsigned long long>(keys), static_cast<unsigned long long>(users));
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    *error = errno_text("cannot create " + path, errno);
    return false;
  }
  const ssize_t written = ::write(fd, text, static_cast<size_t>(n));
  const int err = errno;
  ::close(fd);
  if (written != n) {
    *error = written < 0 ? errno_text("cannot write " + path, err) : "short write to " + path;
    return false;
  }
  return true;
}

// Parses the decimal digits at the start of `text` (at most 19, so no overflow) into `out` and
// drops them; false when there are none.
bool take_uint(std::string_view* text, uint64_t* out) {
  size_t n = 0;
  uint64_t v = 0;
  while (n < text->size() && n < 19 && (*text)[n] >= '0' && (*text)[n] <= '9') {
    v = v * 10 + static_cast<uint64_t>((*text)[n] - '0');
    ++n;
  }
  if (n == 0) return false;
  text->remove_prefix(n);
  *out = v;
  return true;
}

bool take(std::string_view* text, std::string_view literal) {
  if (!text->starts_with(literal)) return false;
  text->remove_prefix(literal.size());
  return true;
}

// Reads <dir>/backup.json as write_contents() wrote it. False when it is missing (a backup made
// before keygate recorded its contents), unreadable or not exactly that shape: the listing then
// says it does not know, which is no error.
bool read_contents(const std::string& dir, uint64_t* keys, uint64_t* users) {
  const std::string path = dir + "/" + std::string(kContentsFile);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st;
  char buffer[kContentsBytesMax];
  ssize_t n = -1;
  // A regular file only: a FIFO or a device planted there must not stall the listing.
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) n = ::read(fd, buffer, sizeof buffer);
  ::close(fd);
  if (n <= 0 || static_cast<size_t>(n) == sizeof buffer) return false;
  std::string_view text(buffer, static_cast<size_t>(n));
  return take(&text, "{\"keys\":") && take_uint(&text, keys) && take(&text, ",\"users\":") &&
         take_uint(&text, users) && take(&text, "}\n") && text.empty();
}

// Resolves `path` (which exists) to an absolute path without symlinks.
bool real_path(const std::string& path, std::string* out, std::string* error) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) {
    *error = errno_text("cannot resolve " + path, errno);
    return false;
  }
  *out = resolved;
  std::free(resolved);
  return true;
}

// real_path() of a path that may not exist yet: its nearest existing ancestor resolved, the
// rest appended. Lets open() refuse a bad directory before creating it.
bool real_path_to_be(const std::string& path, std::string* out, std::string* error) {
  std::string missing;
  std::string at = path;
  while (::access(at.c_str(), F_OK) != 0) {
    const size_t slash = at.find_last_of('/');
    if (slash == std::string::npos) {
      missing = at + (missing.empty() ? "" : "/" + missing);
      at = std::string(".");  // not = ".": GCC 12 at -O3 warns -Wrestrict on it, wrongly
      break;
    }
    const std::string last = at.substr(slash + 1);
    if (!last.empty()) missing = last + (missing.empty() ? "" : "/" + missing);
    at = slash == 0 ? "/" : at.substr(0, slash);
  }
  if (!real_path(at, out, error)) return false;
  if (!missing.empty()) *out += (out->back() == '/' ? "" : "/") + missing;
  return true;
}

bool inside(const std::string& outer, const std::string& inner) {
  return inner.size() > outer.size() && inner.starts_with(outer) &&
         (outer.back() == '/' || inner[outer.size()] == '/');
}

}  // namespace

Backups::~Backups() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::string Backups::make_name(int64_t created, uint64_t seq) {
  const time_t t = static_cast<time_t>(created);
  struct tm tm {};
  ::gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  char name[64];
  std::snprintf(name, sizeof name, "keygate-%s-%06llu", stamp,
                static_cast<unsigned long long>(seq));
  return name;
}

bool Backups::parse_name(std::string_view name, int64_t* created, uint64_t* seq) {
  if (!name.starts_with(kNamePrefix)) return false;
  name.remove_prefix(kNamePrefix.size());
  if (name.size() < kStampChars + 2 || name[8] != 'T' || name[15] != 'Z' || name[16] != '-') {
    return false;
  }
  auto digits = [&](size_t from, size_t n, int* v) {
    *v = 0;
    for (size_t i = from; i < from + n; ++i) {
      if (name[i] < '0' || name[i] > '9') return false;
      *v = *v * 10 + (name[i] - '0');
    }
    return true;
  };
  struct tm tm {};
  int year = 0, month = 0;
  if (!digits(0, 4, &year) || !digits(4, 2, &month) || !digits(6, 2, &tm.tm_mday) ||
      !digits(9, 2, &tm.tm_hour) || !digits(11, 2, &tm.tm_min) || !digits(13, 2, &tm.tm_sec)) {
    return false;
  }
  const std::string_view seq_text = name.substr(kStampChars + 1);
  if (seq_text.empty() || seq_text.size() > 18) return false;
  uint64_t n = 0;
  for (const char c : seq_text) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  *created = static_cast<int64_t>(::timegm(&tm));
  *seq = n;
  return true;
}

bool Backups::open(const Options& options, const std::string& data_dir, std::string* error) {
  // Checked before anything is created: a refused start leaves no directory behind.
  std::string real_backups;
  std::string real_data;
  if (!real_path_to_be(options.dir, &real_backups, error) ||
      !real_path(data_dir, &real_data, error)) {
    *error = "backup directory: " + *error;
    return false;
  }
  if (real_backups == real_data || inside(real_data, real_backups) ||
      inside(real_backups, real_data)) {
    *error = "backup directory " + options.dir + " must be outside the data directory " +
             data_dir + " and not hold it (a backup must survive the loss of the data " +
             "directory, and pruning must never reach a running store)";
    return false;
  }
  if (!make_directories(options.dir, error)) {
    *error = "backup directory: " + *error;
    return false;
  }
  const std::string lock_path = options.dir + "/LOCK";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    *error = errno_text("backup directory " + options.dir + " is not writable", errno);
    return false;
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    *error = errno == EWOULDBLOCK
                 ? "backup directory " + options.dir + " is in use by another keygate process"
                 : errno_text("cannot lock " + lock_path, errno);
    ::close(fd);
    return false;
  }
  // A backup makes a directory: check now that it can, rather than at the first backup.
  const std::string probe = options.dir + "/" + std::string(kTempPrefix) + "probe";
  if (::mkdir(probe.c_str(), 0700) != 0 && errno != EEXIST) {
    *error = errno_text("cannot create directories in backup directory " + options.dir, errno);
    ::close(fd);
    return false;
  }
  ::rmdir(probe.c_str());
  lock_fd_ = fd;
  options_ = options;
  retention_count_.store(options.retention_count, std::memory_order_relaxed);
  return remove_temporaries(error);
}

bool Backups::remove_temporaries(std::string* error) const {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(options_.dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().starts_with(kTempPrefix)) stale.push_back(it->path());
  }
  if (ec) {
    *error = "cannot list backup directory " + options_.dir + ": " + ec.message();
    return false;
  }
  for (const fs::path& p : stale) {
    fs::remove_all(p, ec);
    if (ec) {
      *error = "cannot remove " + p.string() + ": " + ec.message();
      return false;
    }
  }
  return true;
}

Status Backups::list(BackupListing* out, std::string* error) const {
  // Read before the directory: a create() clears it only after its rename, so a listing that
  // finds none in progress finds every backup completed before it (the other order could show
  // a backup neither in progress nor listed, which a client polling for it would take for a
  // failure).
  std::optional<int64_t> started;
  {
    std::lock_guard lock(progress_mutex_);
    started = in_progress_started_;
  }
  std::vector<BackupInfo> backups;
  const Status status = list_complete(&backups, error);
  if (!status.is_ok()) return status;
  out->backups = std::move(backups);
  out->in_progress_started = started;
  return Status::ok();
}

Status Backups::list_complete(std::vector<BackupInfo>* out, std::string* error) const {
  std::error_code ec;
  std::vector<BackupInfo> found;
  for (fs::directory_iterator it(options_.dir, ec), end; !ec && it != end; it.increment(ec)) {
    BackupInfo b;
    const std::string name = it->path().filename().string();
    // Temporaries (a backup being made, one being pruned) never parse.
    if (!parse_name(name, &b.created, &b.seq)) continue;
    std::error_code type_ec;
    if (!it->is_directory(type_ec)) continue;
    b.name = name;
    b.path = options_.dir + "/" + name;
    uint64_t keys = 0;
    uint64_t users = 0;
    if (read_contents(b.path, &keys, &users)) {
      b.keys = keys;
      b.users = users;
    }
    // A backup pruned meanwhile (a create() beside this list renamed it to a temporary, then
    // removes it) is no longer there: skip it, whether the walk failed on it or finished on
    // what was left of it (a file removed under the walk is not counted).
    if (!tree_bytes(b.path, &b.bytes, error)) {
      if (::access(b.path.c_str(), F_OK) != 0) continue;
      return Status::io_error("backup directory cannot be read");
    }
    if (::access(b.path.c_str(), F_OK) != 0) continue;
    found.push_back(std::move(b));
  }
  if (ec) {
    *error = "cannot list backup directory " + options_.dir + ": " + ec.message();
    return Status::io_error("backup directory cannot be read");
  }
  std::sort(found.begin(), found.end(),
            [](const BackupInfo& a, const BackupInfo& b) { return a.seq > b.seq; });
  *out = std::move(found);
  return Status::ok();
}

Status Backups::create(const KeyStore& store, int64_t now, BackupInfo* out, std::string* error) {
  std::lock_guard lock(create_mutex_);
  // In progress for listings from here until it returned, made or not (cleared after the
  // rename and the pruning: see list()).
  struct InProgress {
    Backups& self;
    InProgress(Backups& b, int64_t started) : self(b) {
      std::lock_guard progress(self.progress_mutex_);
      self.in_progress_started_ = started;
    }
    ~InProgress() {
      std::lock_guard progress(self.progress_mutex_);
      self.in_progress_started_.reset();
    }
    InProgress(const InProgress&) = delete;
    InProgress& operator=(const InProgress&) = delete;
  } in_progress(*this, now);
  auto fail = [&](const std::string& why) {
    *error = why;
    failed_total_.fetch_add(1, std::memory_order_relaxed);
    return Status::io_error("backup failed");
  };
  std::string why;
  // A crash (or a failure that could not clean up) left temporaries: they take space the new
  // backup may need.
  if (!remove_temporaries(&why)) return fail(why);
  std::vector<BackupInfo> complete;
  if (!list_complete(&complete, &why).is_ok()) return fail(why);
  const uint64_t seq = complete.empty() ? 1 : complete.front().seq + 1;

  BackupInfo b;
  b.name = make_name(now, seq);
  b.path = options_.dir + "/" + b.name;
  b.seq = seq;
  b.created = now;  // what the name says (make_name formats `now`)
  const std::string temp = options_.dir + "/" + std::string(kTempPrefix) + b.name;
  const std::string temp_db = temp + "/db";
  // Whatever failed, the temporary goes: a half-made backup must not take the disk.
  auto fail_and_clean = [&](const std::string& reason) {
    std::error_code ec;
    fs::remove_all(temp, ec);
    return fail(reason);
  };
  if (::mkdir(temp.c_str(), 0700) != 0) {
    return fail(errno_text("cannot create " + temp, errno));
  }
  if (!store.checkpoint(temp_db, &why).is_ok()) {
    return fail_and_clean("checkpoint into " + temp_db + " failed: " + why);
  }
  if (options_.delay_ms != 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(options_.delay_ms));
  }
  KeyStore::Contents contents;
  if (!KeyStore::inspect(temp_db, &contents, &why)) {
    return fail_and_clean("the checkpoint does not open: " + why);
  }
  // Recorded before the sizes are summed, so the backup's bytes are the same here as in a
  // listing, and before the sync, which takes it along.
  if (!write_contents(temp, contents.keys, contents.users, &why) ||
      !tree_bytes(temp, &b.bytes, &why) || !sync_tree(temp, &why)) {
    return fail_and_clean(why);
  }
  if (::rename(temp.c_str(), b.path.c_str()) != 0) {
    return fail_and_clean(errno_text("cannot rename " + temp + " to " + b.path, errno));
  }
  // The rename is durable only once the directory holding it is synced.
  if (!sync_path(options_.dir, true, &why)) {
    // Not complete until synced: take it back out rather than report a backup a power cut
    // could lose.
    std::error_code ec;
    fs::remove_all(b.path, ec);
    return fail(why);
  }
  b.keys = contents.keys;
  b.users = contents.users;
  created_total_.fetch_add(1, std::memory_order_relaxed);
  complete.insert(complete.begin(), b);
  prune(std::move(complete));
  *out = std::move(b);
  return Status::ok();
}

void Backups::prune(std::vector<BackupInfo> complete) {
  // Once per prune: a reload meanwhile applies to the next one.
  const uint32_t keep = retention_count_.load(std::memory_order_relaxed);
  if (keep == 0 || complete.size() <= keep) return;
  // `complete` is newest first. Each pruned backup is first renamed to a temporary, so a crash
  // mid-removal leaves a temporary (cleaned later), never a complete-looking partial backup.
  for (size_t i = keep; i < complete.size(); ++i) {
    const std::string temp = options_.dir + "/" + std::string(kTempPrefix) + complete[i].name;
    std::error_code ec;
    if (::rename(complete[i].path.c_str(), temp.c_str()) != 0) {
      prune_failed_total_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    fs::remove_all(temp, ec);
    pruned_total_.fetch_add(1, std::memory_order_relaxed);
  }
}

Backups::Stats Backups::stats() const noexcept {
  Stats s;
  s.created_total = created_total_.load(std::memory_order_relaxed);
  s.failed_total = failed_total_.load(std::memory_order_relaxed);
  s.pruned_total = pruned_total_.load(std::memory_order_relaxed);
  s.prune_failed_total = prune_failed_total_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keygate::storage
