// Runs a libFuzzer target over a seed corpus without libFuzzer, so the corpus is an ordinary
// test under any compiler: `http_parser_fuzz_seeds DIR_OR_FILE...`.
//
// Every regular file (directories are walked, sorted for a stable order) is passed once to
// LLVMFuzzerTestOneInput. A violated invariant aborts inside the target; each file's name is
// printed before it runs so the failing seed is the last one named.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool read_file(const std::filesystem::path& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg = argv[i];
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(arg, ec)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
    } else if (std::filesystem::is_regular_file(arg, ec)) {
      files.push_back(arg);
    }
    if (ec) {
      std::fprintf(stderr, "%s: %s\n", argv[i], ec.message().c_str());
      return 2;
    }
  }
  // An empty or mistyped corpus path must not pass as "all seeds ran".
  if (files.empty()) {
    std::fprintf(stderr, "no seed files found\n");
    return 2;
  }
  std::sort(files.begin(), files.end());
  std::string data;
  for (const std::filesystem::path& file : files) {
    if (!read_file(file, &data)) {
      std::fprintf(stderr, "cannot read %s\n", file.c_str());
      return 2;
    }
    std::printf("seed %s (%zu bytes)\n", file.filename().c_str(), data.size());
    std::fflush(stdout);
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  std::printf("ran %zu seeds\n", files.size());
  return 0;
}
