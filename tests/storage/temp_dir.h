// TempDir: a fresh directory for one test, removed with everything in it when destroyed.
//
// Test-only. Not thread-safe; one per test.
#pragma once

#include <string>
#include <vector>

namespace keygate::storage::testing {

class TempDir {
 public:
  // Creates a directory under $TMPDIR (or /tmp) with mkdtemp; aborts the test binary if it
  // cannot (nothing useful can run without it).
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Every regular file under `dir`, recursively.
std::vector<std::string> list_files(const std::string& dir);
// The whole content of a file ("" if it cannot be read).
std::string read_file(const std::string& path);

}  // namespace keygate::storage::testing
