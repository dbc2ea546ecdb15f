// FileSizeLimit: RLIMIT_FSIZE for the test process while it lives, SIGXFSZ ignored (as keygate
// does): every write to a regular file past `bytes` fails with EFBIG instead of killing the
// test, as every write that needs a new block fails on a full disk (ENOSPC), which a test cannot
// fill without a filesystem of its own.
//
// Test-only. One at a time: the limit is the process's.
#pragma once

#include <sys/resource.h>

#include <csignal>
#include <cstdint>

namespace keygate::storage::testing {

class FileSizeLimit {
 public:
  explicit FileSizeLimit(uint64_t bytes) {
    saved_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    if (::getrlimit(RLIMIT_FSIZE, &saved_) != 0) return;
    rlimit lowered = saved_;
    lowered.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &lowered) == 0;
  }
  ~FileSizeLimit() {
    if (ok_) ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, saved_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

  // The limit is in place (setrlimit succeeded).
  bool ok() const { return ok_; }

 private:
  rlimit saved_{};
  void (*saved_handler_)(int) = SIG_DFL;
  bool ok_ = false;
};

}  // namespace keygate::storage::testing
