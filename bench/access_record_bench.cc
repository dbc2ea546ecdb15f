// access_record_bench: keygate::AccessRecordWriter::append, against a copy of the same bytes.
//
// One record per iteration, as a worker writes it for a key with log_request and log_response:
// a request head of ~300 bytes carrying the key in X-ApiKey, a response head of ~150 bytes, and
// the bodies below; key_values holds the key, so every captured text is also scrubbed by value.
// Shapes:
//   Metadata       no captures: the record's fixed fields only
//   Json4KiB       4 KiB JSON request body (an order) and 4 KiB JSON response body (a profile
//                  with longer strings and some UTF-8): the case the product target is about
//   Json64KiB      the same bodies grown to 64 KiB each
//   Text4KiB       text/plain bodies with tabs, newlines and quotes (escape-heavy)
//   Prose4KiB      application/octet-stream bodies of one line of prose repeated (a newline
//                  every 56 bytes): what bench/e2e_log.sh sends and its upstream answers
//   Binary4KiB     4 KiB of random bytes each way (application/octet-stream): most bytes need
//                  an escape or a UTF-8 check
// Each shape is measured twice in one run: through append(), and through a baseline that does
// the least any implementation must do: copy the same texts into the output string (with the
// field names), no escaping, no redaction. main() prints the ratio append / baseline.
// Counters: ns/byte is CPU time per captured byte (heads + bodies; absent for Metadata; an
// inverted rate, so the console prints it with an "s" suffix: "0.58s" means 0.58 ns per byte);
// allocs/op counts operator new calls in the timed loop and must be 0 once the writer and
// output are warm. Before timing, each shape checks that the key did not reach the record.
// BM_InRing_<shape> formats the record straight into a 4 MiB LogRing as a worker does
// (reserve/append/commit); BM_InRingCopied_<shape> formats into a string and copies it in
// (try_push): their difference is the copy the in-place path saves.
// Single-threaded; use --benchmark_repetitions=N for medians.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <utility>

#include "bench/bench_report.h"
#include "bench/count_allocations.h"
#include "core/access_record.h"
#include "storage/log_ring.h"

namespace {

using keygate::AccessRecord;
using keygate::AccessRecordWriter;
using keygate::CapturedMessage;

constexpr std::string_view kKey = "kg_live_3f9a1c7e5b2d4a6f8e0c1b3d5f7a9e2c";
constexpr std::string_view kJson = "application/json";

std::string request_head(std::string_view content_type, size_t body_bytes) {
  return "POST /v2/orders?expand=lines&limit=50 HTTP/1.1\r\n"
         "Host: api.example.com\r\n"
         "User-Agent: keygate-bench/1.0 (linux; x86_64)\r\n"
         "Accept: application/json\r\n"
         "Accept-Encoding: gzip, br\r\n"
         "X-ApiKey: " +
         std::string(kKey) +
         "\r\n"
         "X-Request-Id: 7f3c2a10-5b8e-4d21-9c6f-0e1a2b3c4d5e\r\n"
         "Content-Type: " +
         std::string(content_type) + "\r\nContent-Length: " + std::to_string(body_bytes) +
         "\r\n\r\n";
}

std::string response_head(std::string_view content_type, size_t body_bytes) {
  return "HTTP/1.1 200 OK\r\n"
         "Date: Thu, 26 Nov 2026 14:07:29 GMT\r\n"
         "Content-Type: " +
         std::string(content_type) + "\r\nContent-Length: " + std::to_string(body_bytes) +
         "\r\nX-Upstream-Time: 12ms\r\n\r\n";
}

// An order with nested line objects of every value kind (dense: short strings, many tokens).
std::string order_json(size_t bytes) {
  std::string body = "{\"order_id\":\"ord_48213\",\"currency\":\"EUR\",\"lines\":{";
  for (int i = 0; body.size() < bytes - 100; ++i) {
    char item[256];
    std::snprintf(item, sizeof(item),
                  "\"line_%d\":{\"sku\":\"SKU-%06d\",\"qty\":%d,\"price\":%d.%02d,\"gift\":%s,"
                  "\"note\":null,\"tags\":[\"a\",\"b\",%d]},",
                  i, 100000 + i * 7, i % 9 + 1, 10 + i, i % 100, i % 2 == 0 ? "true" : "false", i);
    body += item;
  }
  body += "\"end\":0},\"total\":12345.67}";
  return body;
}

// A profile whose members are mostly longer strings, a few with non-ASCII UTF-8 and escapes.
std::string profile_json(size_t bytes) {
  static constexpr std::string_view kSentence =
      "The quick brown fox jumps over the lazy dog while the gateway checks every key. ";
  std::string body =
      "{\"kind\":\"profile\",\"user\":{\"id\":\"usr_2b9f41\",\"email\":\"ada@example.com\","
      "\"name\":\"Ad\xc3\xa9la L\xc3\xb8vland\"},\"sections\":[";
  for (int i = 0; body.size() < bytes - 100; ++i) {
    body += "{\"title\":\"Section " + std::to_string(i) + " \xe2\x80\x94 notes\",\"text\":\"";
    body += kSentence;
    body += "He said \\\"fine\\\".\\n";
    body += kSentence;
    body += "\",\"url\":\"https:\\/\\/docs.example.com\\/v2\\/s" + std::to_string(i) +
            "\",\"tags\":[\"docs\",\"v2\"]},";
  }
  body += "{}],\"locale\":\"en-GB\"}";
  return body;
}

// Plain text with tabs, newlines and quotes: an escape every few dozen bytes.
std::string plain_text(size_t bytes) {
  std::string body;
  for (int i = 0; body.size() < bytes; ++i) {
    body += "2026-11-26T14:07:" + std::to_string(10 + i % 50) + "Z\tINFO\tworker " +
            std::to_string(i % 4) + " handled \"GET /v2/items/" + std::to_string(i) +
            "\" in 3ms\n";
  }
  body.resize(bytes);
  return body;
}

// The body bench/e2e_body.lua sends: one line of prose repeated (a newline every 56 bytes).
std::string prose_text(size_t bytes) {
  constexpr std::string_view kLine = "The quick brown fox jumps over the lazy dog 0123456789.\n";
  std::string body;
  while (body.size() < bytes) body += kLine;
  body.resize(bytes);
  return body;
}

std::string random_bytes(size_t bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string body(bytes, '\0');
  for (char& c : body) c = static_cast<char>(rng() & 0xff);
  return body;
}

// A record plus the storage its views point into.
struct Shape {
  std::string req_head, req_body, resp_head, resp_body;
  std::string req_type, resp_type;
  CapturedMessage request, response;
  std::string_view key_values[1] = {kKey};
  AccessRecord record;

  Shape(bool capture, std::string rq_type, std::string rq_body, std::string rs_type,
        std::string rs_body)
      : req_body(std::move(rq_body)),
        resp_body(std::move(rs_body)),
        req_type(std::move(rq_type)),
        resp_type(std::move(rs_type)) {
    req_head = request_head(req_type, req_body.size());
    resp_head = response_head(resp_type, resp_body.size());
    request = {req_head, req_body, false, req_type};
    response = {resp_head, resp_body, false, resp_type};
    record.time_us = 1764166049123456;
    record.request_id = 918273;
    record.worker = 1;
    record.listener = "data";
    record.client = "203.0.113.7:51234";
    record.key_id = "k_8f3a2c";
    record.user = "alice";
    record.api = "orders";
    record.method = "POST";
    record.target = "/v2/orders?expand=lines&limit=50";
    record.status = 200;
    record.bytes_in = req_head.size() + req_body.size();
    record.bytes_out = resp_head.size() + resp_body.size();
    record.duration_us = 1234;
    record.key_values = key_values;
    if (capture) {
      record.request = &request;
      record.response = &response;
    }
  }
  Shape(const Shape&) = delete;
  Shape& operator=(const Shape&) = delete;

  size_t captured_bytes() const {
    if (record.request == nullptr) return 0;
    return req_head.size() + req_body.size() + resp_head.size() + resp_body.size();
  }
};

const Shape& metadata_shape() {
  static const Shape s(false, "", "", "", "");
  return s;
}
const Shape& json_shape(size_t bytes) {
  static const Shape s4(true, std::string(kJson), order_json(4096), std::string(kJson),
                        profile_json(4096));
  static const Shape s64(true, std::string(kJson), order_json(65536), std::string(kJson),
                         profile_json(65536));
  return bytes == 4096 ? s4 : s64;
}
const Shape& text_shape() {
  static const Shape s(true, "text/plain", plain_text(4096), "text/plain; charset=utf-8",
                       plain_text(4096));
  return s;
}
const Shape& prose_shape() {
  static const Shape s(true, "application/octet-stream", prose_text(4096),
                       "application/octet-stream", prose_text(4096));
  return s;
}
const Shape& binary_shape() {
  static const Shape s(true, "application/octet-stream", random_bytes(4096, 1),
                       "application/octet-stream", random_bytes(4096, 2));
  return s;
}

void finish(benchmark::State& state, uint64_t allocations_before, size_t bytes) {
  const uint64_t allocations = g_allocations.load() - allocations_before;
  state.counters["allocs/op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
  if (bytes > 0) {
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
    // Rate of giga-bytes, inverted: CPU seconds per giga-byte, i.e. ns per byte.
    state.counters["ns/byte"] = benchmark::Counter(
        static_cast<double>(state.iterations()) * static_cast<double>(bytes) * 1e-9,
        benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  }
}

void run_append(benchmark::State& state, const Shape& shape) {
  AccessRecordWriter writer;
  std::string out;
  writer.append(shape.record, out);  // warm the writer's scratch and the output's capacity
  if (shape.record.request != nullptr &&
      out.find(kKey) != std::string::npos) {
    state.SkipWithError("the key reached the record");
    return;
  }
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    out.clear();
    writer.append(shape.record, out);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, before, shape.captured_bytes());
}

// What a worker does per record with the access log on (net/request_log.cc): format it into its
// ring, in place (reserve, append into the reservation, commit) or (InRingCopied: the path
// when the ring lacks room for the worst case) into a string that try_push() copies. The ring
// is drained (timer paused) whenever it is half full, as the log writer would.
void run_to_ring(benchmark::State& state, const Shape& shape, bool in_place) {
  AccessRecordWriter writer;
  keygate::storage::LogRing ring(4 << 20);
  std::string out;
  writer.append(shape.record, out);  // warm the writer's scratch and the output's capacity
  const size_t hint = AccessRecordWriter::capacity_hint(shape.record);
  uint64_t bytes_since_drain = 0;
  uint64_t drained = 0;
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    bool ok = false;
    if (in_place) {
      if (char* const at = ring.reserve(hint); at != nullptr) {
        if (const size_t n = writer.append(shape.record, at, hint); n != 0) {
          ring.commit(n, true);
          ok = true;
        }
      }
    } else {
      out.clear();
      writer.append(shape.record, out);
      ok = ring.try_push(out, true);
    }
    if (!ok) {
      state.SkipWithError("the ring refused a record");
      break;
    }
    bytes_since_drain += out.size();
    if (bytes_since_drain + hint > ring.capacity() / 2) {
      state.PauseTiming();
      drained += ring.drain([](std::string_view, std::string_view, uint32_t, bool) {});
      bytes_since_drain = 0;
      state.ResumeTiming();
    }
  }
  benchmark::DoNotOptimize(drained);
  finish(state, before, shape.captured_bytes());
}

// The same texts (and field names) copied into the output, nothing else.
void run_copy(benchmark::State& state, const Shape& shape) {
  const AccessRecord& r = shape.record;
  std::string out;
  const auto copy = [&](std::string_view name, std::string_view value) {
    out.append(name);
    out.push_back('"');
    out.append(value);
    out.push_back('"');
  };
  const uint64_t before = g_allocations.load();
  for (auto _ : state) {
    out.clear();
    out.append("{\"time_us\":1764166049123456,\"request_id\":918273,\"worker\":1");
    copy(",\"listener\":", r.listener);
    copy(",\"client\":", r.client);
    copy(",\"key_id\":", r.key_id);
    copy(",\"user\":", r.user);
    copy(",\"api\":", r.api);
    copy(",\"method\":", r.method);
    copy(",\"path\":", r.target);
    out.append(",\"status\":200,\"bytes_in\":1,\"bytes_out\":2,\"duration_us\":3,\"reason\":null");
    for (const CapturedMessage* m : {r.request, r.response}) {
      if (m == nullptr) continue;
      copy(",{\"head\":", m->head);
      copy(",\"body\":", m->body);
      out.append(",\"body_truncated\":false}");
    }
    out.push_back('}');
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, before, shape.captured_bytes());
}

void BM_AccessRecord_Metadata(benchmark::State& state) { run_append(state, metadata_shape()); }
BENCHMARK(BM_AccessRecord_Metadata);
void BM_AccessRecord_Json4KiB(benchmark::State& state) { run_append(state, json_shape(4096)); }
BENCHMARK(BM_AccessRecord_Json4KiB);
void BM_AccessRecord_Json64KiB(benchmark::State& state) { run_append(state, json_shape(65536)); }
BENCHMARK(BM_AccessRecord_Json64KiB);
void BM_AccessRecord_Text4KiB(benchmark::State& state) { run_append(state, text_shape()); }
BENCHMARK(BM_AccessRecord_Text4KiB);
void BM_AccessRecord_Prose4KiB(benchmark::State& state) { run_append(state, prose_shape()); }
BENCHMARK(BM_AccessRecord_Prose4KiB);
void BM_AccessRecord_Binary4KiB(benchmark::State& state) { run_append(state, binary_shape()); }
BENCHMARK(BM_AccessRecord_Binary4KiB);

void BM_InRing_Metadata(benchmark::State& state) { run_to_ring(state, metadata_shape(), true); }
BENCHMARK(BM_InRing_Metadata);
void BM_InRingCopied_Metadata(benchmark::State& state) {
  run_to_ring(state, metadata_shape(), false);
}
BENCHMARK(BM_InRingCopied_Metadata);
void BM_InRing_Prose4KiB(benchmark::State& state) { run_to_ring(state, prose_shape(), true); }
BENCHMARK(BM_InRing_Prose4KiB);
void BM_InRingCopied_Prose4KiB(benchmark::State& state) {
  run_to_ring(state, prose_shape(), false);
}
BENCHMARK(BM_InRingCopied_Prose4KiB);

void BM_Copy_Metadata(benchmark::State& state) { run_copy(state, metadata_shape()); }
BENCHMARK(BM_Copy_Metadata);
void BM_Copy_Json4KiB(benchmark::State& state) { run_copy(state, json_shape(4096)); }
BENCHMARK(BM_Copy_Json4KiB);
void BM_Copy_Json64KiB(benchmark::State& state) { run_copy(state, json_shape(65536)); }
BENCHMARK(BM_Copy_Json64KiB);
void BM_Copy_Text4KiB(benchmark::State& state) { run_copy(state, text_shape()); }
BENCHMARK(BM_Copy_Text4KiB);
void BM_Copy_Prose4KiB(benchmark::State& state) { run_copy(state, prose_shape()); }
BENCHMARK(BM_Copy_Prose4KiB);
void BM_Copy_Binary4KiB(benchmark::State& state) { run_copy(state, binary_shape()); }
BENCHMARK(BM_Copy_Binary4KiB);

constexpr keygate::bench::RatioTable kRatioTable = {
    .title = "AccessRecordWriter::append vs copying the same texts (CPU ns per record, same run)",
    .subject_prefix = "BM_AccessRecord_",
    .baseline_prefix = "BM_Copy_",
    .subject_column = "append",
    .baseline_column = "copy",
    .shape_width = 12,
};

}  // namespace

// Our own main (benchmark_main's archive member is then not linked) so the ratio table can be
// appended.
int main(int argc, char** argv) {
  keygate::bench::RatioReporter reporter(kRatioTable);
  return keygate::bench::run_benchmarks(argc, argv, reporter);
}
