// access_log_bench: what AccessLog::append() costs a worker, with the writer thread running and
// writing segments to a temp dir ($TMPDIR or /tmp).
//
// One producer appends a 600-byte record (a typical access record: key id, route, peer,
// status, timings, a few headers) or a 9600-byte one (a record with a 4 KiB request and a
// 4 KiB response captured, as in bench/e2e_log.sh). BM_Append/<size> measures the accepted
// path: every 2 MiB of appends (half the 4 MiB ring) the timer pauses while flush() empties
// the ring, so no append is dropped (the "dropped" counter shows it) and the writer's periodic
// drains still run concurrently with the timed appends. The baseline, BM_Memcpy/<size>, copies
// the same record into a 4 MiB buffer at advancing offsets: the floor for any design that
// copies the record. BM_AppendUnpaced_600B appends as fast as it can for a while: the
// producer outruns the disk, and the "dropped_pct" counter shows how much of the stream the
// drop path took.
// After the table, main() prints the append / memcpy ratio.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_report.h"
#include "storage/access_log.h"

namespace {

using keygate::storage::AccessLog;
using keygate::storage::AccessLogOptions;

constexpr size_t kFlushEveryBytes = 2 << 20;

std::string make_record(size_t record_bytes) {
  std::string record =
      R"({"time_us":1700000000123456,"key_id":"k100042","api":"orders","user":"alice",)"
      R"("method":"POST","path":"/orders/v1/items","query":"page=2","status":200,)"
      R"("peer":"203.0.113.7:53122","bytes_in":512,"bytes_out":2048,"duration_us":1834,)"
      R"("upstream_us":1700,"worker":0,"headers":{"user-agent":"bench/1.0","x-request-id":")";
  while (record.size() < record_bytes - 3)
    record.push_back(static_cast<char>('a' + record.size() % 26));
  record += "\"}}";
  return record;
}

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                          "/keygate-access-log-bench-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::unique_ptr<AccessLog> open_log(const std::string& dir) {
  AccessLogOptions options;
  options.dir = dir;
  std::string error;
  auto log = AccessLog::open(options, 1, &error);
  if (log == nullptr) {
    std::fprintf(stderr, "access_log_bench: %s\n", error.c_str());
    std::abort();
  }
  return log;
}

void BM_Append(benchmark::State& state, size_t record_bytes) {
  TempDir dir;
  auto log = open_log(dir.path());
  const std::string record = make_record(record_bytes);
  const uint64_t appends_per_flush = kFlushEveryBytes / record.size();
  uint64_t since_flush = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(log->append(0, record));
    if (++since_flush == appends_per_flush) {
      state.PauseTiming();
      log->flush();
      since_flush = 0;
      state.ResumeTiming();
    }
  }
  log->flush();
  state.counters["dropped"] = static_cast<double>(log->stats().dropped);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * record.size()));
}
BENCHMARK_CAPTURE(BM_Append, 600B, 600);
BENCHMARK_CAPTURE(BM_Append, 9600B, 9600);

void BM_Memcpy(benchmark::State& state, size_t record_bytes) {
  const std::string record = make_record(record_bytes);
  std::vector<char> ring(4 << 20);
  size_t at = 0;
  for (auto _ : state) {
    if (at + record.size() > ring.size()) at = 0;
    std::memcpy(ring.data() + at, record.data(), record.size());
    benchmark::DoNotOptimize(ring.data() + at);
    benchmark::ClobberMemory();
    at += (record.size() + 15) & ~size_t{7};
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * record.size()));
}
BENCHMARK_CAPTURE(BM_Memcpy, 600B, 600);
BENCHMARK_CAPTURE(BM_Memcpy, 9600B, 9600);

void BM_AppendUnpaced_600B(benchmark::State& state) {
  TempDir dir;
  auto log = open_log(dir.path());
  const std::string record = make_record(600);
  for (auto _ : state) benchmark::DoNotOptimize(log->append(0, record));
  log->flush();
  const auto stats = log->stats();
  state.counters["dropped_pct"] =
      100.0 * static_cast<double>(stats.dropped) / static_cast<double>(stats.enqueued);
}
BENCHMARK(BM_AppendUnpaced_600B)->MinTime(0.5);

}  // namespace

// Our own main so the ratio table can follow the usual one.
int main(int argc, char** argv) {
  keygate::bench::RatioReporter reporter({.title = "append() vs a memcpy of the record (CPU ns)",
                                          .subject_prefix = "BM_Append/",
                                          .baseline_prefix = "BM_Memcpy/",
                                          .subject_column = "append",
                                          .baseline_column = "memcpy",
                                          .shape_width = 5});
  return keygate::bench::run_benchmarks(argc, argv, reporter);
}
