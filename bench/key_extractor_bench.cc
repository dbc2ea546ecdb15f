// key_extractor_bench: keygate::KeyExtractor per source, against a baseline on the same bytes.
//
// Every shape is measured twice in one run: through KeyExtractor::extract(), and through a
// baseline that does the least any implementation must do with the same bytes:
//   Header      HttpRequest::header("X-ApiKey"): the same header walk, no rules
//   Query       query.find("key="): one substring search over the query
//   Form*       body.find("&key="): one substring search over the body
//   Json*       a bare simdjson On-Demand walk: index the body (stage 1) and step over every root
//               member without looking at it (the _Copy shapes first copy the body into a padded
//               buffer, as extract() must when the caller promises no readable padding)
// Two JSON bodies of ~4 KiB: "Dense" (4088 bytes, an order with 41 nested line objects of short
// strings, numbers, booleans, null and arrays: ~1400 structural tokens, a bad case for On-Demand,
// whose skipping costs per token) and "Text" (4003 bytes, a profile whose members are mostly
// longer strings: ~370 tokens).
// BM_Scan_* read every body byte once (memchr for an absent byte), for scale.
// After the usual table, main() prints one line per shape with the ratio extract / baseline in
// CPU time, so the figure to quote is the ratio, not an absolute that depends on the machine.
//
// The extractor is reused across iterations the way a worker reuses it. The allocs/op counter
// counts operator new calls inside the timed loop (global replacement below) and must be 0.
// Single-threaded; run with --benchmark_repetitions=N to get medians (the ratio table then uses
// the medians).
#include <benchmark/benchmark.h>

// The error-code API, as in core/key_extractor.cc (the two meet in one binary).
#define SIMDJSON_EXCEPTIONS 0
#include <simdjson.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bench/bench_report.h"
#include "bench/count_allocations.h"
#include "core/http_request.h"
#include "core/key_extractor.h"

namespace {

using keygate::ExtractResult;
using keygate::HttpHeader;
using keygate::HttpRequest;
using keygate::KeyExtractor;
using keygate::KeyOutcome;
using keygate::KeySource;

constexpr std::string_view kKey = "kg_live_3f9a1c7e5b2d4a6f8e0c1b3d5f7a9e2c";
constexpr size_t kBodyBytes = 4096;

// A request plus the storage its views point into. The body sits in a buffer with
// kJsonPaddingBytes readable after it, so the same request serves both padding modes.
struct Shape {
  std::string query;
  std::vector<std::pair<std::string, std::string>> fields;
  std::vector<HttpHeader> headers;
  std::vector<char> body_buffer;
  HttpRequest request;

  Shape(std::string q, std::vector<std::pair<std::string, std::string>> f, std::string_view body)
      : query(std::move(q)), fields(std::move(f)) {
    for (const auto& [name, value] : fields) headers.push_back({name, value});
    body_buffer.assign(body.begin(), body.end());
    body_buffer.resize(body.size() + KeyExtractor::kJsonPaddingBytes, ' ');
    request.method = body.empty() ? "GET" : "POST";
    request.query = query;
    request.headers = headers;
    request.body = std::string_view(body_buffer.data(), body.size());
  }
  Shape(const Shape&) = delete;
  Shape& operator=(const Shape&) = delete;
};

// The eight header fields a typical API client sends (as in http_parser_bench), the key fifth.
std::vector<std::pair<std::string, std::string>> typical_fields(std::string_view content_type,
                                                                bool with_key) {
  std::vector<std::pair<std::string, std::string>> f = {
      {"Host", "api.example.com"},
      {"User-Agent", "keygate-bench/1.0 (linux; x86_64)"},
      {"Accept", "application/json"},
      {"Accept-Encoding", "gzip, br"},
  };
  if (with_key) f.emplace_back("X-ApiKey", std::string(kKey));
  f.emplace_back("X-Request-Id", "7f3c2a10-5b8e-4d21-9c6f-0e1a2b3c4d5e");
  f.emplace_back("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  f.emplace_back("Connection", "keep-alive");
  if (!content_type.empty()) f.emplace_back("Content-Type", std::string(content_type));
  return f;
}

std::string with_key_member(std::string_view head, std::string members, bool key_first) {
  const std::string key_member = "\"API_Key\":\"" + std::string(kKey) + "\"";
  std::string body(head);
  if (key_first) body += key_member + ",";
  body += members;
  if (!key_first) body += "," + key_member;
  return body + "}";
}

// ~4 KiB, dense: an order with nested line objects of every value kind.
std::string dense_json_body(bool key_first) {
  std::string members;
  for (int i = 0; members.size() < kBodyBytes - 200; ++i) {
    char item[256];
    std::snprintf(item, sizeof(item),
                  "\"line_%d\":{\"sku\":\"SKU-%06d\",\"qty\":%d,\"price\":%d.%02d,\"gift\":%s,"
                  "\"note\":null,\"tags\":[\"a\",\"b\",%d]},",
                  i, 100000 + i * 7, i % 9 + 1, 10 + i, i % 100, i % 2 == 0 ? "true" : "false", i);
    members += item;
  }
  members += "\"total\":12345.67";
  return with_key_member("{\"order_id\":\"ord_48213\",\"currency\":\"EUR\",", members, key_first);
}

// ~4 KiB, text: a profile whose members are mostly longer strings.
std::string text_json_body(bool key_first) {
  static constexpr std::string_view kSentence =
      "The quick brown fox jumps over the lazy dog while the gateway checks every key. ";
  std::string members =
      "\"user\":{\"id\":\"usr_2b9f41\",\"email\":\"ada@example.com\",\"name\":\"Ada L.\"},";
  for (int i = 0; members.size() < kBodyBytes - 300; ++i) {
    members += "\"section_" + std::to_string(i) + "\":{\"title\":\"Section " + std::to_string(i) +
               "\",\"text\":\"";
    members += kSentence;
    members += kSentence;
    members += "\",\"tags\":[\"docs\",\"v2\"]},";
  }
  members += "\"locale\":\"en-GB\"";
  return with_key_member("{\"kind\":\"profile_update\",", members, key_first);
}

std::string form_body(size_t bytes) {
  std::string body = "order_id=ord_48213&currency=EUR";
  for (int i = 0; body.size() < bytes - 60; ++i) {
    body += "&line_" + std::to_string(i) + "=SKU-" + std::to_string(100000 + i * 7) + "%2C" +
            std::to_string(i % 9 + 1);
  }
  return body + "&key=" + std::string(kKey);
}

void check_found(benchmark::State& state, const ExtractResult& r, KeySource source) {
  if (r.outcome != KeyOutcome::kFound || r.source != source || r.key != kKey) {
    state.SkipWithError("extract() did not find the expected key");
  }
}

void finish(benchmark::State& state, uint64_t allocations_before, size_t bytes) {
  const uint64_t allocations = g_allocations.load() - allocations_before;
  state.counters["allocs/op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
  if (bytes > 0) state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}

void run_extract(benchmark::State& state, const Shape& shape, KeySource source,
                 size_t readable_padding, size_t bytes) {
  KeyExtractor extractor;
  check_found(state, extractor.extract(shape.request, readable_padding), source);
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    const ExtractResult r = extractor.extract(shape.request, readable_padding);
    benchmark::DoNotOptimize(r.key.data());
  }
  finish(state, before, bytes);
}

// --- KeyExtractor --------------------------------------------------------------------------------

const Shape& header_shape() {
  static const Shape s("limit=50&cursor=eyJpZCI6MTIzfQ", typical_fields("", true), "");
  return s;
}
const Shape& query_shape() {
  static const Shape s("limit=50&cursor=eyJpZCI6MTIzfQ&key=" + std::string(kKey),
                       typical_fields("", false), "");
  return s;
}
const Shape& form_small_shape() {
  static const Shape s("", typical_fields("application/x-www-form-urlencoded", false),
                       "order_id=ord_48213&currency=EUR&key=" + std::string(kKey));
  return s;
}
const Shape& form_4kib_shape() {
  static const Shape s("", typical_fields("application/x-www-form-urlencoded", false),
                       form_body(kBodyBytes));
  return s;
}
const Shape& json_dense_last_shape() {
  static const Shape s("", typical_fields("application/json", false), dense_json_body(false));
  return s;
}
const Shape& json_dense_first_shape() {
  static const Shape s("", typical_fields("application/json", false), dense_json_body(true));
  return s;
}
const Shape& json_text_last_shape() {
  static const Shape s("", typical_fields("application/json", false), text_json_body(false));
  return s;
}

void BM_KeyExtractor_Header(benchmark::State& state) {
  run_extract(state, header_shape(), KeySource::kHeader, 0, 0);
}
BENCHMARK(BM_KeyExtractor_Header);

void BM_KeyExtractor_Query(benchmark::State& state) {
  run_extract(state, query_shape(), KeySource::kQuery, 0, query_shape().query.size());
}
BENCHMARK(BM_KeyExtractor_Query);

void BM_KeyExtractor_FormSmall(benchmark::State& state) {
  run_extract(state, form_small_shape(), KeySource::kForm, 0,
              form_small_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_FormSmall);

void BM_KeyExtractor_Form4KiBKeyLast(benchmark::State& state) {
  run_extract(state, form_4kib_shape(), KeySource::kForm, 0, form_4kib_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Form4KiBKeyLast);

void BM_KeyExtractor_Json4KiBDenseKeyLast_Copy(benchmark::State& state) {
  run_extract(state, json_dense_last_shape(), KeySource::kJson, 0,
              json_dense_last_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Json4KiBDenseKeyLast_Copy);

void BM_KeyExtractor_Json4KiBDenseKeyLast_InPlace(benchmark::State& state) {
  run_extract(state, json_dense_last_shape(), KeySource::kJson, KeyExtractor::kJsonPaddingBytes,
              json_dense_last_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Json4KiBDenseKeyLast_InPlace);

void BM_KeyExtractor_Json4KiBDenseKeyFirst_Copy(benchmark::State& state) {
  run_extract(state, json_dense_first_shape(), KeySource::kJson, 0,
              json_dense_first_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Json4KiBDenseKeyFirst_Copy);

void BM_KeyExtractor_Json4KiBDenseKeyFirst_InPlace(benchmark::State& state) {
  run_extract(state, json_dense_first_shape(), KeySource::kJson, KeyExtractor::kJsonPaddingBytes,
              json_dense_first_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Json4KiBDenseKeyFirst_InPlace);

void BM_KeyExtractor_Json4KiBTextKeyLast_Copy(benchmark::State& state) {
  run_extract(state, json_text_last_shape(), KeySource::kJson, 0,
              json_text_last_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Json4KiBTextKeyLast_Copy);

void BM_KeyExtractor_Json4KiBTextKeyLast_InPlace(benchmark::State& state) {
  run_extract(state, json_text_last_shape(), KeySource::kJson, KeyExtractor::kJsonPaddingBytes,
              json_text_last_shape().request.body.size());
}
BENCHMARK(BM_KeyExtractor_Json4KiBTextKeyLast_InPlace);

// --- baselines: look at the same bytes, apply no rules -------------------------------------------

void BM_Baseline_Header(benchmark::State& state) {
  const HttpRequest& r = header_shape().request;
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(r.header("X-ApiKey").data());
  }
  finish(state, before, 0);
}
BENCHMARK(BM_Baseline_Header);

void BM_Baseline_Query(benchmark::State& state) {
  const std::string_view query = query_shape().request.query;
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(query);
    benchmark::DoNotOptimize(query.find("key="));
  }
  finish(state, before, query.size());
}
BENCHMARK(BM_Baseline_Query);

void scan_for_param(benchmark::State& state, std::string_view body) {
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(body);
    benchmark::DoNotOptimize(body.find("&key="));
  }
  finish(state, before, body.size());
}

void BM_Baseline_FormSmall(benchmark::State& state) {
  scan_for_param(state, form_small_shape().request.body);
}
BENCHMARK(BM_Baseline_FormSmall);

void BM_Baseline_Form4KiBKeyLast(benchmark::State& state) {
  scan_for_param(state, form_4kib_shape().request.body);
}
BENCHMARK(BM_Baseline_Form4KiBKeyLast);

// Stage 1 plus a step over every root member, no rules; `copy` first copies the body into a
// padded buffer the way extract() does without readable padding.
void ondemand_walk(benchmark::State& state, std::string_view body, bool copy) {
  namespace ondemand = simdjson::ondemand;
  ondemand::parser parser;
  if (parser.allocate(KeyExtractor::kBodyInspectBytesMaxDefault) != simdjson::SUCCESS) {
    state.SkipWithError("simdjson allocate failed");
    return;
  }
  std::vector<char> padded(body.size() + KeyExtractor::kJsonPaddingBytes, ' ');
  // The shapes' bodies are followed by kJsonPaddingBytes readable bytes.
  const char* input = copy ? padded.data() : body.data();
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    if (copy) std::memcpy(padded.data(), body.data(), body.size());
    ondemand::document doc;
    ondemand::object root;
    if (parser.iterate(input, body.size(), body.size() + KeyExtractor::kJsonPaddingBytes)
                .get(doc) != simdjson::SUCCESS ||
        doc.get_object().get(root) != simdjson::SUCCESS) {
      state.SkipWithError("simdjson rejected the body");
      break;
    }
    size_t members = 0;
    for (auto member : root) {
      ondemand::field field;
      if (std::move(member).get(field) != simdjson::SUCCESS) break;
      ++members;
    }
    benchmark::DoNotOptimize(members);
  }
  finish(state, before, body.size());
}

void BM_Baseline_Json4KiBDenseKeyLast_Copy(benchmark::State& state) {
  ondemand_walk(state, json_dense_last_shape().request.body, true);
}
BENCHMARK(BM_Baseline_Json4KiBDenseKeyLast_Copy);

void BM_Baseline_Json4KiBDenseKeyLast_InPlace(benchmark::State& state) {
  ondemand_walk(state, json_dense_last_shape().request.body, false);
}
BENCHMARK(BM_Baseline_Json4KiBDenseKeyLast_InPlace);

void BM_Baseline_Json4KiBDenseKeyFirst_Copy(benchmark::State& state) {
  ondemand_walk(state, json_dense_first_shape().request.body, true);
}
BENCHMARK(BM_Baseline_Json4KiBDenseKeyFirst_Copy);

void BM_Baseline_Json4KiBDenseKeyFirst_InPlace(benchmark::State& state) {
  ondemand_walk(state, json_dense_first_shape().request.body, false);
}
BENCHMARK(BM_Baseline_Json4KiBDenseKeyFirst_InPlace);

void BM_Baseline_Json4KiBTextKeyLast_Copy(benchmark::State& state) {
  ondemand_walk(state, json_text_last_shape().request.body, true);
}
BENCHMARK(BM_Baseline_Json4KiBTextKeyLast_Copy);

void BM_Baseline_Json4KiBTextKeyLast_InPlace(benchmark::State& state) {
  ondemand_walk(state, json_text_last_shape().request.body, false);
}
BENCHMARK(BM_Baseline_Json4KiBTextKeyLast_InPlace);

// --- for scale: read every body byte once
// ---------------------------------------------------------

void scan_whole_body(benchmark::State& state, std::string_view body) {
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(body);
    benchmark::DoNotOptimize(std::memchr(body.data(), '\x01', body.size()));
  }
  finish(state, before, body.size());
}

void BM_Scan_Json4KiBDense(benchmark::State& state) {
  scan_whole_body(state, json_dense_last_shape().request.body);
}
BENCHMARK(BM_Scan_Json4KiBDense);

void BM_Scan_Json4KiBText(benchmark::State& state) {
  scan_whole_body(state, json_text_last_shape().request.body);
}
BENCHMARK(BM_Scan_Json4KiBText);

// --- ratio report --------------------------------------------------------------------------------

constexpr keygate::bench::RatioTable kRatioTable = {
    .title = "KeyExtractor vs baseline on the same bytes (CPU ns per request, same run)",
    .subject_prefix = "BM_KeyExtractor_",
    .baseline_prefix = "BM_Baseline_",
    .subject_column = "extract",
    .baseline_column = "baseline",
    .shape_width = 32,
};

}  // namespace

// Our own main (benchmark_main's archive member is then not linked) so the ratio table can be
// appended.
int main(int argc, char** argv) {
  keygate::bench::RatioReporter reporter(kRatioTable);
  return keygate::bench::run_benchmarks(argc, argv, reporter);
}
