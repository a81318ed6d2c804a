#include "core/thread_pool.h"

#include <chrono>
#include <memory>

#include "attnkit/attention.h"
#include "attnkit/error.h"

namespace attnkit {

ThreadPool::ThreadPool(int threads) {
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { work(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (auto& w : workers_) w.join();
}

namespace {
// Spins until done() or kSpinMicros have passed; true if done() became true.
template <class Done>
bool spin_until(const Done& done) {
  using std::chrono::steady_clock;
  const auto until = steady_clock::now() + std::chrono::microseconds(ThreadPool::kSpinMicros);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (steady_clock::now() >= until) return done();
  }
}
}  // namespace

void ThreadPool::work(int thread) {
  uint64_t seen = 0;
  for (;;) {
    spin_until([&] {
      return stop_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_acquire) != seen;
    });
    std::unique_lock lock(mu_);
    start_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    while (next_ < items_) {
      const int64_t item = next_++;
      lock.unlock();
      (*job_)(item, thread);
      lock.lock();
    }
    if (--busy_ == 0) done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::unique_lock lock(mu_);
  job_ = &fn;
  items_ = n;
  next_ = 0;
  busy_ = static_cast<int>(workers_.size()) + 1;
  ++generation_;
  start_.notify_all();
  while (next_ < items_) {
    const int64_t item = next_++;
    lock.unlock();
    fn(item, 0);
    lock.lock();
  }
  if (--busy_ > 0) {
    lock.unlock();
    spin_until([&] { return busy_.load(std::memory_order_acquire) == 0; });
    lock.lock();
    done_.wait(lock, [&] { return busy_ == 0; });
  }
  job_ = nullptr;
}

namespace {
int g_threads = 0;
std::unique_ptr<ThreadPool> g_pool;
std::mutex g_pool_mu;
int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}
}  // namespace

ThreadPool& pool() {
  std::lock_guard lock(g_pool_mu);
  const int want = g_threads ? g_threads : default_threads();
  if (!g_pool || g_pool->size() != want) g_pool = std::make_unique<ThreadPool>(want);
  return *g_pool;
}

void set_num_threads(int n) {
  if (n < 0 || n > 4096) throw Error("set_num_threads: expected 0 (all cores) .. 4096 threads, given " + std::to_string(n));
  std::lock_guard lock(g_pool_mu);
  g_threads = n;
}

int num_threads() {
  std::lock_guard lock(g_pool_mu);
  return g_threads ? g_threads : default_threads();
}

}  // namespace attnkit
