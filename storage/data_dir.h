// DataDir: the server's data directory, created if missing and locked for one process.
//
// Owned by the main thread for the life of the process. The lock (flock on <dir>/LOCK) stops a
// second keygate from opening the same directory; it is released when the process exits, even
// by SIGKILL, so a crash never leaves a stale lock behind.
#pragma once

#include <string>

namespace keygate::storage {

class DataDir {
 public:
  DataDir() = default;
  ~DataDir();
  DataDir(const DataDir&) = delete;
  DataDir& operator=(const DataDir&) = delete;

  // Creates `path` (and parents) if needed, checks it is a writable directory and takes the
  // lock. Blocks on the filesystem; call at start-up only. Fails with one line in `error`.
  bool open(const std::string& path, std::string* error);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int lock_fd_ = -1;
};

// Creates `path` and its parents (like mkdir -p). Fails with one line in `error`.
bool make_directories(const std::string& path, std::string* error);

}  // namespace keygate::storage
