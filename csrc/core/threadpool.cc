#include "core/threadpool.h"

#include <sched.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

namespace sparsecpu {

namespace {

inline void cpu_relax() { __builtin_ia32_pause(); }

// After a job, a worker polls for the next one before it sleeps: a futex wake-up costs tens of
// microseconds on a VM, as much as a whole sparse layer. It spins with `pause` briefly, then polls
// with sched_yield(), which hands the core to any other runnable thread (torch's or ONNX
// Runtime's own pool between our layers) and returns at once when there is none.
// SPARSECPU_SPIN_US sets how long it polls (default 2000; 0 sleeps at once).
std::chrono::microseconds poll_time() {
  static const std::chrono::microseconds t = [] {
    const char* env = std::getenv("SPARSECPU_SPIN_US");
    long us = 2000;
    if (env && *env) {
      char* end = nullptr;
      const long v = std::strtol(env, &end, 10);
      if (end && *end == '\0' && v >= 0 && v <= 1000000) us = v;
    }
    return std::chrono::microseconds(us);
  }();
  return t;
}
constexpr auto kPureSpin = std::chrono::microseconds(20);

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads < 1) throw std::invalid_argument("thread count must be >= 1");
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::work(Job& job) {
  for (int t = job.next.fetch_add(1); t < job.n; t = job.next.fetch_add(1)) {
    (*job.fn)(t);
    job.done.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    const auto start = std::chrono::steady_clock::now();
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      if (++spins % 64 != 0) {
        cpu_relax();
        continue;
      }
      const auto waited = std::chrono::steady_clock::now() - start;
      if (waited < kPureSpin) continue;
      if (waited < poll_time()) {
        sched_yield();
        continue;
      }
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
      break;
    }
    std::shared_ptr<Job> job;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      job = job_;
    }
    if (job) work(*job);
  }
}

void ThreadPool::run(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (n == 1 || workers_.empty()) {
    for (int t = 0; t < n; ++t) fn(t);
    return;
  }
  std::lock_guard<std::mutex> serial(run_mutex_);
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = job;
    generation_.fetch_add(1, std::memory_order_release);
  }
  if (sleepers_.load() > 0) wake_.notify_all();
  work(*job);
  // Tasks still running belong to workers; wait for them without holding the core.
  for (int spins = 0; job->done.load(std::memory_order_acquire) < n; ++spins) {
    if (spins < 2048) cpu_relax();
    else sched_yield();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  job_.reset();
}

int default_num_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

namespace {
std::mutex g_pool_mutex;
std::unique_ptr<ThreadPool> g_pool;
}  // namespace

ThreadPool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = std::make_unique<ThreadPool>(default_num_threads());
  return *g_pool;
}

void set_num_threads(int n) {
  if (n < 1 || n > 1024) throw std::invalid_argument("num_threads must be in [1, 1024], got " + std::to_string(n));
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool && g_pool->size() == n) return;
  g_pool.reset();
  g_pool = std::make_unique<ThreadPool>(n);
}

int get_num_threads() { return pool().size(); }

}  // namespace sparsecpu
