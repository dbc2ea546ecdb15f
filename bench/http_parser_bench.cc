// http_parser_bench: keygate::net::HttpParser against bare llhttp on the same bytes.
//
// Every request shape is measured twice in one run: through HttpParser, and through
// llhttp_execute with empty callbacks (the floor any llhttp-based parser pays). After the usual
// table, main() prints one line per shape with the ratio wrapper / bare llhttp in CPU time, so
// the figure to quote is the ratio, not an absolute that depends on the machine.
//
// The parser is reused the way a keep-alive connection reuses it: a parse() that follows a
// complete request starts the next one, so the loop needs no reset() and, once warm, allocates
// nothing. Single-threaded. On a shared machine run
//   http_parser_bench --benchmark_repetitions=7 --benchmark_enable_random_interleaving=true
// and read the medians; the ratio table then uses the medians too.
#include <benchmark/benchmark.h>
#include <llhttp.h>

#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "bench/bench_report.h"
#include "core/limits.h"
#include "net/http_parser.h"

namespace {

using keygate::Limits;
using keygate::net::HttpParser;

// ~300 bytes, 8 header fields: what a typical API client sends through the gateway.
std::string typical_get() {
  return "GET /v1/accounts/48213/orders?limit=50&cursor=eyJpZCI6MTIzfQ HTTP/1.1\r\n"
         "Host: api.example.com\r\n"
         "User-Agent: keygate-bench/1.0 (linux; x86_64)\r\n"
         "Accept: application/json\r\n"
         "Accept-Encoding: gzip, br\r\n"
         "X-Api-Key: kg_live_3f9a1c7e5b2d4a6f8e0c1b3d5f7a9e2c\r\n"
         "X-Request-Id: 7f3c2a10-5b8e-4d21-9c6f-0e1a2b3c4d5e\r\n"
         "Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
         "Connection: keep-alive\r\n"
         "\r\n";
}

constexpr size_t kBodyBytes = 4096;
constexpr size_t kChunkCount = 16;

std::string post_headers() {
  return "POST /v1/accounts/48213/orders HTTP/1.1\r\n"
         "Host: api.example.com\r\n"
         "User-Agent: keygate-bench/1.0 (linux; x86_64)\r\n"
         "Accept: application/json\r\n"
         "Content-Type: application/json\r\n"
         "X-Api-Key: kg_live_3f9a1c7e5b2d4a6f8e0c1b3d5f7a9e2c\r\n";
}

std::string body_bytes(size_t n) {
  std::string body;
  body.reserve(n);
  for (size_t i = 0; i < n; ++i) body.push_back(static_cast<char>('a' + i % 26));
  return body;
}

std::string post_content_length() {
  return post_headers() + "Content-Length: " + std::to_string(kBodyBytes) + "\r\n\r\n" +
         body_bytes(kBodyBytes);
}

std::string post_chunked() {
  const std::string body = body_bytes(kBodyBytes);
  const size_t chunk = kBodyBytes / kChunkCount;
  char size_line[32];
  std::snprintf(size_line, sizeof(size_line), "%zx\r\n", chunk);
  std::string out = post_headers() + "Transfer-Encoding: chunked\r\n\r\n";
  for (size_t i = 0; i < kChunkCount; ++i) {
    out += size_line;
    out.append(body, i * chunk, chunk);
    out += "\r\n";
  }
  out += "0\r\n\r\n";
  return out;
}

// --- keygate::net::HttpParser ------------------------------------------------------------------

// Parses one complete request from `input`; false (with the benchmark marked failed) otherwise.
bool parse_one(benchmark::State& state, HttpParser& parser, std::span<char> input) {
  const HttpParser::Result r = parser.parse(input);
  if (r.status != HttpParser::Status::kRequest || r.consumed != input.size()) {
    state.SkipWithError("HttpParser did not return exactly one complete request");
    return false;
  }
  benchmark::DoNotOptimize(parser.request().headers.data());
  return true;
}

void set_throughput(benchmark::State& state, size_t request_bytes) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * request_bytes));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

void BM_HttpParser_GetOneBuffer(benchmark::State& state) {
  const Limits limits;
  HttpParser parser(limits);
  std::string req = typical_get();
  if (parse_one(state, parser, std::span<char>(req)) && parser.request().headers.size() != 8) {
    state.SkipWithError("expected 8 header fields");
  }
  for (auto _ : state) {
    if (!parse_one(state, parser, std::span<char>(req))) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_HttpParser_GetOneBuffer);

// The request arrives in two receives, split inside the header section: the first parse copies
// the partial request into the assembly buffer, the second completes it there.
void BM_HttpParser_GetTwoReceives(benchmark::State& state) {
  const Limits limits;
  HttpParser parser(limits);
  std::string req = typical_get();
  const size_t split = req.size() / 2;
  const std::span<char> all(req);
  for (auto _ : state) {
    const HttpParser::Result first = parser.parse(all.first(split));
    if (first.status != HttpParser::Status::kNeedMore || first.consumed != split) {
      state.SkipWithError("first half did not leave a partial request");
      break;
    }
    if (!parse_one(state, parser, all.subspan(split))) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_HttpParser_GetTwoReceives);

void BM_HttpParser_PostContentLength4KiB(benchmark::State& state) {
  const Limits limits;
  HttpParser parser(limits);
  std::string req = post_content_length();
  if (parse_one(state, parser, std::span<char>(req)) &&
      parser.request().body.size() != kBodyBytes) {
    state.SkipWithError("wrong body size");
  }
  for (auto _ : state) {
    if (!parse_one(state, parser, std::span<char>(req))) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_HttpParser_PostContentLength4KiB);

// De-chunking rewrites the buffer in place, so each iteration first restores it from a pristine
// copy. The bare-llhttp twin pays the same copy, so the ratio compares parsing only.
void BM_HttpParser_PostChunked4KiB(benchmark::State& state) {
  const Limits limits;
  HttpParser parser(limits);
  const std::string pristine = post_chunked();
  std::string req = pristine;
  if (parse_one(state, parser, std::span<char>(req)) &&
      parser.request().body != body_bytes(kBodyBytes)) {
    state.SkipWithError("de-chunked body differs from the one sent");
  }
  for (auto _ : state) {
    std::memcpy(req.data(), pristine.data(), pristine.size());
    benchmark::ClobberMemory();
    if (!parse_one(state, parser, std::span<char>(req))) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_HttpParser_PostChunked4KiB);

// --- bare llhttp, empty callbacks --------------------------------------------------------------

int noop_cb(llhttp_t*) { return 0; }
int noop_data_cb(llhttp_t*, const char*, size_t) { return 0; }

// The same callbacks HttpParser registers, each doing nothing: llhttp's own cost including
// dispatch, which no wrapper can avoid.
class BareLlhttp {
 public:
  BareLlhttp() {
    llhttp_settings_init(&settings_);
    settings_.on_message_begin = &noop_cb;
    settings_.on_method = &noop_data_cb;
    settings_.on_url = &noop_data_cb;
    settings_.on_header_field = &noop_data_cb;
    settings_.on_header_value = &noop_data_cb;
    settings_.on_header_value_complete = &noop_cb;
    settings_.on_headers_complete = &noop_cb;
    settings_.on_body = &noop_data_cb;
    settings_.on_message_complete = &noop_cb;
    llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  }
  BareLlhttp(const BareLlhttp&) = delete;
  BareLlhttp& operator=(const BareLlhttp&) = delete;

  bool execute(benchmark::State& state, std::string_view bytes) {
    if (llhttp_execute(&parser_, bytes.data(), bytes.size()) != HPE_OK) {
      state.SkipWithError(llhttp_errno_name(llhttp_get_errno(&parser_)));
      return false;
    }
    return true;
  }

 private:
  llhttp_settings_t settings_;
  llhttp_t parser_;
};

void BM_Llhttp_GetOneBuffer(benchmark::State& state) {
  BareLlhttp parser;
  const std::string req = typical_get();
  for (auto _ : state) {
    if (!parser.execute(state, req)) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_Llhttp_GetOneBuffer);

void BM_Llhttp_GetTwoReceives(benchmark::State& state) {
  BareLlhttp parser;
  const std::string req = typical_get();
  const size_t split = req.size() / 2;
  const std::string_view all(req);
  for (auto _ : state) {
    if (!parser.execute(state, all.substr(0, split))) break;
    if (!parser.execute(state, all.substr(split))) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_Llhttp_GetTwoReceives);

void BM_Llhttp_PostContentLength4KiB(benchmark::State& state) {
  BareLlhttp parser;
  const std::string req = post_content_length();
  for (auto _ : state) {
    if (!parser.execute(state, req)) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_Llhttp_PostContentLength4KiB);

void BM_Llhttp_PostChunked4KiB(benchmark::State& state) {
  BareLlhttp parser;
  const std::string pristine = post_chunked();
  std::string req = pristine;
  for (auto _ : state) {
    std::memcpy(req.data(), pristine.data(), pristine.size());
    benchmark::ClobberMemory();
    if (!parser.execute(state, req)) break;
  }
  set_throughput(state, req.size());
}
BENCHMARK(BM_Llhttp_PostChunked4KiB);

// --- ratio report ------------------------------------------------------------------------------

constexpr keygate::bench::RatioTable kRatioTable = {
    .title = "HttpParser vs bare llhttp (CPU ns per request, same run)",
    .subject_prefix = "BM_HttpParser_",
    .baseline_prefix = "BM_Llhttp_",
    .subject_column = "HttpParser",
    .baseline_column = "llhttp",
    .shape_width = 24,
};

}  // namespace

// Our own main (benchmark_main's archive member is then not linked) so the ratio table can be
// appended.
int main(int argc, char** argv) {
  keygate::bench::RatioReporter reporter(kRatioTable);
  return keygate::bench::run_benchmarks(argc, argv, reporter);
}
