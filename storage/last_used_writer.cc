#include "storage/last_used_writer.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <unordered_map>
#include <utility>

#include "core/assert.h"

namespace keygate::storage {

LastUsedWriter::LastUsedWriter(const Options& options, WriteFn write)
    : write_(std::move(write)), flush_interval_ms_(options.flush_interval_ms) {
  KEYGATE_ASSERT(options.workers > 0 && options.flush_interval_ms > 0);
  queues_.reserve(options.workers);
  for (size_t i = 0; i < options.workers; ++i) {
    queues_.push_back(std::make_unique<KeyUseQueue>(options.queue_capacity));
  }
  thread_ = std::thread([this] { run(); });
}

LastUsedWriter::~LastUsedWriter() { stop(); }

bool LastUsedWriter::report(unsigned worker, const KeyUse& use) noexcept {
  KEYGATE_ASSERT(worker < queues_.size());
  return queues_[worker]->push(use);
}

void LastUsedWriter::set_flush_interval_ms(uint32_t flush_interval_ms) noexcept {
  KEYGATE_ASSERT(flush_interval_ms > 0);
  flush_interval_ms_.store(flush_interval_ms, std::memory_order_relaxed);
}

void LastUsedWriter::run() {
  // Read at every pass: a reload may change it (set_flush_interval_ms).
  const auto interval = [&] {
    return std::chrono::milliseconds(flush_interval_ms_.load(std::memory_order_relaxed));
  };
  auto last_write = std::chrono::steady_clock::now();
  std::unique_lock lock(wake_mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, std::min(interval(), std::chrono::milliseconds(kDrainIntervalMs)));
    if (stopping_) break;
    lock.unlock();
    drain();
    if (const auto now = std::chrono::steady_clock::now(); now >= last_write + interval()) {
      write_pending();
      last_write = now;
    }
    lock.lock();
  }
}

void LastUsedWriter::drain() {
  std::lock_guard guard(drain_mutex_);
  // Aggregated here, off the workers: many reports of one key (one per worker per granularity)
  // become one entry with the latest time.
  uint64_t taken = 0;
  KeyUse use;
  for (const auto& q : queues_) {
    // Bounded by the capacity: reports pushed meanwhile wait for the next pass, so a busy
    // worker cannot keep this loop going.
    for (size_t n = q->capacity(); n > 0 && q->pop(&use); --n) {
      ++taken;
      auto [it, inserted] = pending_.try_emplace(std::string(use.key_id()), use.at);
      if (!inserted && use.at > it->second) it->second = use.at;
    }
  }
  reports_total_.fetch_add(taken, std::memory_order_relaxed);
}

void LastUsedWriter::write_pending() {
  std::lock_guard guard(write_mutex_);
  std::unordered_map<std::string, int64_t> latest;
  {
    std::lock_guard drained(drain_mutex_);
    latest.swap(pending_);
  }
  if (latest.empty()) return;
  std::vector<KeyStore::LastUsed> batch;
  batch.reserve(std::min(latest.size(), kWriteBatchMax));
  auto write = [&] {
    size_t written = 0;
    if (write_(batch, &written).is_ok()) {
      writes_total_.fetch_add(written, std::memory_order_relaxed);
    } else {
      write_errors_.fetch_add(1, std::memory_order_relaxed);
    }
    batch.clear();
  };
  for (auto& [id, at] : latest) {
    batch.push_back({id, at});
    if (batch.size() == kWriteBatchMax) write();
  }
  if (!batch.empty()) write();
}

void LastUsedWriter::flush() {
  drain();
  write_pending();
}

void LastUsedWriter::stop() {
  {
    std::lock_guard lock(wake_mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  flush();
}

LastUsedWriter::Stats LastUsedWriter::stats() const noexcept {
  Stats s;
  s.reports_total = reports_total_.load(std::memory_order_relaxed);
  for (const auto& q : queues_) s.reports_dropped += q->dropped();
  s.writes_total = writes_total_.load(std::memory_order_relaxed);
  s.write_errors = write_errors_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keygate::storage
