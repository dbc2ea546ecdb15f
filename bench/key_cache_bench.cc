// key_cache_bench: the worker's key lookup (SHA-256 of the presented value + KeyCache::find)
// over 1M cached keys, and read throughput while a writer keeps publishing.
//
// Baselines from the same run: SHA-256 alone (the floor of digest + lookup) and reader
// throughput with no writer. After the table, main() prints the lookup's share of the
// digest + lookup time and the with/without-writer throughput ratio (with the writer's CPU use:
// on a 2-core machine the writer thread takes its CPU from the two readers).
//
// Memory pattern: values are read in a random order over all 1M keys but laid out in that
// order, so the value streams in (as a request buffer is already in cache) while the table
// slot it leads to is random and cold, as in production. BM_DigestLookupAndRead also reads
// the record, one more cold line, as the handler does next. The 1M keys are built once
// (~1 GiB peak while building) and shared by every benchmark. Readers go through QSBR like
// workers: online, with a quiescent point every 256 lookups.
#include <benchmark/benchmark.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "bench/bench_report.h"
#include "core/api_key.h"
#include "core/http_request.h"
#include "core/key_extractor.h"
#include "storage/key_cache.h"
#include "storage/qsbr.h"

namespace {

using keygate::KeyDigest;
using keygate::KeyRecord;
using keygate::storage::KeyCache;
using keygate::storage::Qsbr;

constexpr size_t kKeys = 1'000'000;
constexpr size_t kReaders = 3;  // 0: the benchmark thread; 1, 2: the throughput readers
constexpr uint32_t kLookupsPerQuiescentPoint = 256;

struct Corpus {
  // The values as clients would present them, laid out in visiting order (a random order
  // over all keys) so that reading the next value streams from memory the way a request
  // buffer is already in cache, while the table slots it leads to are random and cold.
  std::string values;              // kKeys * kGeneratedKeyChars bytes
  std::vector<KeyDigest> digests;  // SHA-256 of each value, same order
  std::vector<KeyDigest> unknown;  // digests of values that are not keys
  std::unique_ptr<Qsbr> qsbr;
  std::unique_ptr<KeyCache> cache;

  std::string_view value(size_t i) const {
    return std::string_view(values).substr(i * keygate::kGeneratedKeyChars,
                                           keygate::kGeneratedKeyChars);
  }
};

KeyRecord record_for(size_t i, const KeyDigest& digest, uint64_t version) {
  KeyRecord record;
  // Appended rather than `"k" + std::to_string(...)`, which trips GCC 12's -Wrestrict false
  // positive.
  record.id = "k";
  record.id += std::to_string(100000000 + i);
  record.digest = digest;
  record.hint = "kg_123...";
  record.description = "bench key v";
  record.description += std::to_string(version);
  record.apis = {"orders"};
  record.created_at = 1700000000;
  record.updated_at = 1700000000;
  return record;
}

Corpus& corpus() {
  static Corpus* const built = [] {
    auto* c = new Corpus();
    std::mt19937_64 rng(42);
    std::array<uint8_t, keygate::kGeneratedKeyRandomBytes> bytes;
    auto fill = [&] {
      for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    };
    std::vector<std::string> values;
    values.reserve(kKeys);
    std::vector<KeyRecord> records;
    records.reserve(kKeys);
    for (size_t i = 0; i < kKeys; ++i) {
      fill();
      values.push_back(keygate::generate_key_value(bytes));
      records.push_back(record_for(i, keygate::digest_key(values.back()), 0));
    }
    for (size_t i = 0; i < 4096; ++i) {
      fill();
      c->unknown.push_back(keygate::digest_key(keygate::generate_key_value(bytes)));
    }
    std::vector<uint32_t> order(kKeys);
    for (uint32_t i = 0; i < kKeys; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    c->values.reserve(kKeys * keygate::kGeneratedKeyChars);
    c->digests.reserve(kKeys);
    for (uint32_t i : order) {
      c->values += values[i];
      c->digests.push_back(records[i].digest);
    }
    c->qsbr = std::make_unique<Qsbr>(kReaders);
    c->cache = std::make_unique<KeyCache>(c->qsbr.get(), KeyCache::Options{});
    c->cache->apply({}, std::move(records));
    c->cache->set_complete(true);
    return c;
  }();
  return *built;
}

// A worker digests and looks up one key per request, with a whole request's work in between,
// so what it pays is a lookup's latency: the slot's cache miss cannot overlap the next
// request's. Back-to-back independent lookups would let the CPU run several misses at once and
// report a fraction of that. So each benchmark below makes its next input depend on this
// iteration's result: opaque_zero() is 0 at run time (a byte, a bool, a user-space pointer:
// bit 63 clear) but the compiler cannot know it, and the CPU must wait for the result.
template <typename T>
size_t opaque_zero(T result) {
  uint64_t v;
  if constexpr (std::is_pointer_v<T>) {
    v = reinterpret_cast<uintptr_t>(result);
  } else {
    v = static_cast<uint64_t>(result);
  }
  __asm__("" : "+r"(v));
  return static_cast<size_t>(v >> 63);
}

size_t next_index(size_t i, size_t zero) {
  i += 1 + zero;
  return i >= kKeys ? 0 : i;
}

// SHA-256 of a ~40-char value: the floor of any digest-keyed lookup.
void BM_Sha256Only(benchmark::State& state) {
  Corpus& c = corpus();
  size_t i = 0;
  for (auto _ : state) {
    KeyDigest digest = keygate::digest_key(c.value(i));
    benchmark::DoNotOptimize(digest);
    i = next_index(i, opaque_zero(digest[0]));
  }
}
BENCHMARK(BM_Sha256Only);

// Runs `lookup(i)` once per iteration the way a worker reads the cache: as an online QSBR
// reader with a quiescent point every kLookupsPerQuiescentPoint lookups. The next index
// depends on the result (next_index, opaque_zero), so lookups do not overlap.
template <typename Lookup>
void run_reader(benchmark::State& state, Corpus& c, Lookup lookup) {
  size_t i = 0;
  uint32_t since_quiescent = 0;
  c.qsbr->online(0);
  for (auto _ : state) {
    const auto result = lookup(i);
    benchmark::DoNotOptimize(result);
    i = next_index(i, opaque_zero(result));
    if (++since_quiescent == kLookupsPerQuiescentPoint) {
      c.qsbr->online(0);
      since_quiescent = 0;
    }
  }
  c.qsbr->offline(0);
}

// What a worker pays per request: digest the presented value, then find it.
void BM_DigestAndLookup(benchmark::State& state) {
  Corpus& c = corpus();
  run_reader(state, c, [&](size_t i) { return c.cache->find(keygate::digest_key(c.value(i))); });
}
BENCHMARK(BM_DigestAndLookup);

// The same, plus reading the record found (as the handler does next): one more cold line.
void BM_DigestLookupAndRead(benchmark::State& state) {
  Corpus& c = corpus();
  run_reader(state, c, [&](size_t i) {
    return c.cache->find(keygate::digest_key(c.value(i)))->usable_at(1700000000);
  });
}
BENCHMARK(BM_DigestLookupAndRead);

// The whole "header key resolved and looked up" step of a request: the extractor finds the key
// in the X-ApiKey header among eight typical fields (a view, as over a receive buffer), then
// digest + lookup. The header value is re-pointed at the next key each iteration.
void BM_HeaderKeyResolveAndLookup(benchmark::State& state) {
  Corpus& c = corpus();
  std::vector<keygate::HttpHeader> headers = {
      {"Host", "api.example.com"},
      {"User-Agent", "keygate-bench/1.0 (linux; x86_64)"},
      {"Accept", "application/json"},
      {"Accept-Encoding", "gzip, br"},
      {"X-ApiKey", c.value(0)},
      {"X-Request-Id", "7f3c2a10-5b8e-4d21-9c6f-0e1a2b3c4d5e"},
      {"Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
      {"Connection", "keep-alive"},
  };
  keygate::HttpRequest request;
  request.method = "GET";
  request.target = "/orders/48213";
  request.path = "/orders/48213";
  request.headers = headers;
  keygate::KeyExtractor extractor;
  size_t misses = 0;
  run_reader(state, c, [&](size_t i) {
    headers[4].value = c.value(i);
    const keygate::ExtractResult r = extractor.extract(request, 0);
    const KeyRecord* record = c.cache->find(keygate::digest_key(r.key));
    misses += record == nullptr;
    return record;
  });
  if (misses != 0) state.SkipWithError("a presented key was not found");
}
BENCHMARK(BM_HeaderKeyResolveAndLookup);

// The lookup alone, hits in random order (mostly cache-missing memory at 1M keys).
void BM_LookupHit(benchmark::State& state) {
  Corpus& c = corpus();
  run_reader(state, c, [&](size_t i) { return c.cache->find(c.digests[i]); });
}
BENCHMARK(BM_LookupHit);

// Unknown digests (a power-of-two count): probe to an empty slot.
void BM_LookupMiss(benchmark::State& state) {
  Corpus& c = corpus();
  run_reader(state, c,
             [&](size_t i) { return c.cache->find(c.unknown[i & (c.unknown.size() - 1)]); });
}
BENCHMARK(BM_LookupMiss);

// Lookups per second from 2 reader threads over `duration`, optionally while a writer thread
// replaces records back to back (each put copies one shard and waits for a grace period).
struct Throughput {
  double lookups_per_s = 0;
  double writes_per_s = 0;
  double writer_cpu_fraction = 0;  // of one core; on a 2-core machine it is taken from readers
};

double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

Throughput measure_readers(Corpus& c, bool with_writer, std::chrono::milliseconds duration) {
  std::atomic<bool> start{false};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> lookups{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<double> writer_cpu_s{0};
  std::vector<std::thread> threads;
  for (size_t r = 1; r <= 2; ++r) {
    threads.emplace_back([&, r] {
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      uint64_t local = 0;
      size_t i = r * 7919;
      c.qsbr->online(r);
      while (!stop.load(std::memory_order_relaxed)) {
        for (uint32_t n = 0; n < kLookupsPerQuiescentPoint; ++n) {
          benchmark::DoNotOptimize(c.cache->find(c.digests[i]));
          if (++i == kKeys) i = 0;
        }
        local += kLookupsPerQuiescentPoint;
        c.qsbr->online(r);  // quiescent point
      }
      c.qsbr->offline(r);
      lookups += local;
    });
  }
  if (with_writer) {
    threads.emplace_back([&] {
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      const double cpu_start = thread_cpu_seconds();
      uint64_t version = 1;
      size_t i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const size_t k = kKeys - 1 - i;
        c.cache->put(record_for(k, c.digests[k], version++));
        if (++i == kKeys) i = 0;
        writes.fetch_add(1, std::memory_order_relaxed);
      }
      writer_cpu_s = thread_cpu_seconds() - cpu_start;
    });
  }
  const auto begin = std::chrono::steady_clock::now();
  start.store(true, std::memory_order_release);
  std::this_thread::sleep_for(duration);
  stop.store(true);
  for (std::thread& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return Throughput{static_cast<double>(lookups.load()) / seconds,
                    static_cast<double>(writes.load()) / seconds, writer_cpu_s.load() / seconds};
}

// Baseline (no writer) and loaded (a writer publishing continuously) in one run; the counters
// carry both and their ratio.
void BM_ReadThroughputUnderWrites(benchmark::State& state) {
  Corpus& c = corpus();
  const auto duration = std::chrono::milliseconds(state.range(0));
  Throughput idle;
  Throughput loaded;
  for (auto _ : state) {
    idle = measure_readers(c, false, duration);
    loaded = measure_readers(c, true, duration);
  }
  state.counters["lookups_per_s_no_writer"] = idle.lookups_per_s;
  state.counters["lookups_per_s_writer"] = loaded.lookups_per_s;
  state.counters["ratio"] = loaded.lookups_per_s / idle.lookups_per_s;
  state.counters["writes_per_s"] = loaded.writes_per_s;
  state.counters["writer_cpu"] = loaded.writer_cpu_fraction;
}
BENCHMARK(BM_ReadThroughputUnderWrites)
    ->Arg(2000)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Prints, after the table, the ratios the header promises.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;

  void ReportRuns(const std::vector<Run>& reports) override {
    ConsoleReporter::ReportRuns(reports);
    for (const Run& run : reports) {
      if (run.error_occurred || run.run_type == Run::RT_Aggregate) continue;
      const std::string name = run.run_name.function_name;
      cpu_ns_[name] = run.GetAdjustedCPUTime();  // benchmarks here report in ns
      auto ratio = run.counters.find("ratio");
      if (ratio != run.counters.end()) throughput_ratio_ = ratio->second.value;
      auto writer_cpu = run.counters.find("writer_cpu");
      if (writer_cpu != run.counters.end()) writer_cpu_ = writer_cpu->second.value;
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    std::ostream& out = GetOutputStream();
    char line[160];
    if (cpu_ns_.contains("BM_DigestAndLookup") && cpu_ns_.contains("BM_Sha256Only")) {
      const double total = cpu_ns_["BM_DigestAndLookup"];
      const double sha = cpu_ns_["BM_Sha256Only"];
      std::snprintf(line, sizeof(line),
                    "\ndigest + lookup: %.1f ns/op (target < 300); SHA-256 alone %.1f ns "
                    "(%.0f%% of it); lookup share %.1f ns\n",
                    total, sha, 100.0 * sha / total, total - sha);
      out << line;
    }
    if (throughput_ratio_ > 0) {
      std::snprintf(line, sizeof(line),
                    "2-reader lookup throughput with a writer / without: %.2fx (the writer "
                    "used %.0f%% of a core)\n",
                    throughput_ratio_, 100.0 * writer_cpu_);
      out << line;
    }
  }

 private:
  std::map<std::string, double> cpu_ns_;
  double throughput_ratio_ = 0;
  double writer_cpu_ = 0;
};

}  // namespace

// Our own main so RatioReporter's lines can follow the table.
int main(int argc, char** argv) {
  RatioReporter reporter(benchmark::ConsoleReporter::OO_Tabular);
  return keygate::bench::run_benchmarks(argc, argv, reporter);
}
