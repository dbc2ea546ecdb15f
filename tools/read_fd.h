// read_fd: the whole content of a descriptor with plain read(2), for the command-line tools
// (iostreams throw from istreambuf_iterator on a read error and read a directory as empty).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>

namespace keygate::tools {

// Reads `fd` to its end into *out, stopping once it holds more than `bytes_max` bytes (the
// caller checks the size). False with the read's errno in *err on a read error (EINTR retried).
inline bool read_fd(int fd, size_t bytes_max, std::string* out, int* err) {
  constexpr size_t kChunkBytes = 64 * 1024;
  out->clear();
  while (out->size() <= bytes_max) {
    const size_t size = out->size();
    out->resize(size + kChunkBytes);
    const ssize_t n = ::read(fd, out->data() + size, kChunkBytes);
    const int read_errno = errno;
    out->resize(size + (n > 0 ? static_cast<size_t>(n) : 0));
    if (n == 0) return true;
    if (n < 0 && read_errno != EINTR) {
      *err = read_errno;
      return false;
    }
  }
  return true;
}

}  // namespace keygate::tools
