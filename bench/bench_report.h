// bench_report.h: what the micro-benchmarks print after Google Benchmark's console table.
//
// RatioReporter appends a "subject vs baseline" table: one line per shape with both CPU times
// from the same run and their ratio, so the figure to quote does not depend on the machine.
// run_benchmarks() is the main() that installs such a reporter. Header-only; used from the
// benchmark runner's thread only.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace keygate::bench {

// A ratio table: benchmark `subject_prefix + shape` against `baseline_prefix + shape`.
struct RatioTable {
  std::string_view title;            // the line above the table
  std::string_view subject_prefix;   // e.g. "BM_HttpParser_"
  std::string_view baseline_prefix;  // e.g. "BM_Llhttp_"
  std::string_view subject_column;   // column headings
  std::string_view baseline_column;
  int shape_width;  // of the shape column: the longest shape name
};

// The console table as usual, then subject / baseline per shape, sorted by name (so the table
// reads the same under --benchmark_enable_random_interleaving). Uses each benchmark's median
// when repetitions produced one, else its (last) measurement; shapes without a baseline are
// left out.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(RatioTable table)
      : benchmark::ConsoleReporter(benchmark::ConsoleReporter::OO_Tabular), table_(table) {}

  void ReportRuns(const std::vector<Run>& reports) override {
    ConsoleReporter::ReportRuns(reports);
    for (const Run& run : reports) {
      if (run.error_occurred) continue;
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type == Run::RT_Aggregate && !median) continue;
      Sample& s = cpu_ns_[run.run_name.str()];
      if (median || !s.from_median) {
        s = Sample{run.GetAdjustedCPUTime() * to_ns(run.time_unit), median};
      }
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    std::ostream& out = GetOutputStream();
    bool header = false;
    for (const auto& [name, subject] : cpu_ns_) {
      if (!name.starts_with(table_.subject_prefix)) continue;
      const std::string shape = name.substr(table_.subject_prefix.size());
      const auto base = cpu_ns_.find(std::string(table_.baseline_prefix) + shape);
      if (base == cpu_ns_.end() || base->second.ns <= 0) continue;
      char line[160];
      if (!header) {
        out << "\n" << table_.title << "\n";
        std::snprintf(line, sizeof(line), "%-*s %12s %12s %8s\n", table_.shape_width, "shape",
                      std::string(table_.subject_column).c_str(),
                      std::string(table_.baseline_column).c_str(), "ratio");
        out << line;
        header = true;
      }
      std::snprintf(line, sizeof(line), "%-*s %12.1f %12.1f %7.2fx\n", table_.shape_width,
                    shape.c_str(), subject.ns, base->second.ns, subject.ns / base->second.ns);
      out << line;
    }
  }

 private:
  struct Sample {
    double ns = 0;
    bool from_median = false;
  };

  static double to_ns(benchmark::TimeUnit unit) {
    switch (unit) {
      case benchmark::kNanosecond:
        return 1;
      case benchmark::kMicrosecond:
        return 1e3;
      case benchmark::kMillisecond:
        return 1e6;
      case benchmark::kSecond:
        return 1e9;
    }
    return 1;
  }

  RatioTable table_;
  std::map<std::string, Sample> cpu_ns_;  // by run name
};

// The body of a benchmark binary's main(): runs the registered benchmarks through
// `console_reporter`, so what it appends follows the usual table. A non-console
// --benchmark_format keeps the library's own reporter (and so has no appended lines). Returns
// main()'s exit code. A binary with its own main() links benchmark::benchmark, or
// benchmark_main's archive member is simply not linked.
inline int run_benchmarks(int argc, char** argv, benchmark::BenchmarkReporter& console_reporter) {
  bool console = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg(argv[i]);
    if (arg.starts_with("--benchmark_format=") && arg != "--benchmark_format=console") {
      console = false;
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (console) {
    benchmark::RunSpecifiedBenchmarks(&console_reporter);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}

}  // namespace keygate::bench
