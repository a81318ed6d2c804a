// A small persistent thread pool: parallel_for hands out items [0, n) dynamically to the
// workers and the calling thread, and returns when all are done. Between jobs a worker, and the
// caller waiting for the last items, spin for up to kSpinMicros before they sleep: a decode step
// runs dozens of short jobs back to back (every layer's projections and attention), and waking a
// sleeping thread costs tens of microseconds on a VM.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace attnkit {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  static constexpr int kSpinMicros = 50;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // fn(item, thread) with thread in [0, size()); items are claimed one at a time.
  void parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn);

 private:
  void work(int thread);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t items_ = 0;
  int64_t next_ = 0;
  std::atomic<int> busy_ = 0;           // threads still in the job (written under mu_)
  std::atomic<uint64_t> generation_ = 0;  // jobs started (written under mu_)
  std::atomic<bool> stop_ = false;
};

// The process-wide pool the CPU kernels use (size from set_num_threads, default all cores).
ThreadPool& pool();

}  // namespace attnkit
