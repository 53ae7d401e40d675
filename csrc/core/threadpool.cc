#include "core/threadpool.h"

#include <dlfcn.h>
#include <link.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
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
  static const int n = [] {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return n;
}

namespace {

std::mutex g_pool_mutex;
// Created on first use, and only while no OpenMP runtime is attached; a caller keeps the pool it
// runs on alive while set_num_threads or attach_host_openmp replaces it.
std::shared_ptr<ThreadPool> g_pool;
std::atomic<int> g_threads{0};       // 0: not set yet (default_num_threads)

std::shared_ptr<ThreadPool> pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  const int n = get_num_threads();
  if (!g_pool || g_pool->size() != n) {
    g_pool.reset();
    g_pool = std::make_shared<ThreadPool>(n);
  }
  return g_pool;
}

// The host runtime's GOMP_parallel(fn, data, num_threads, flags): fn(data) on a team of num_threads
// threads, the caller one of them, with a barrier at the end. libgomp's own ABI, which Intel's and
// LLVM's runtimes also export.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
struct HostOmp {
  GompParallel parallel = nullptr;
  std::string path;
};
std::mutex g_omp_mutex;
std::atomic<const HostOmp*> g_omp{nullptr};
std::atomic<bool> g_omp_on{true};
std::atomic<unsigned long long> g_libs_seen{0};  // dlpi_adds at the last search for a runtime

using Clock = std::chrono::steady_clock;

// GOMP_parallel ends in a barrier that every thread of the team must reach, while sparsecpu's pool
// lets the caller finish the tasks alone. When another process holds a core, a team thread descheduled
// for a time slice holds the barrier that long after the last task is done (a BERT-base forward
// measured 2.2x slower than on the pool with one core busy). So a region whose barrier waited longer
// than kBarrierStall after its last task sends the calls of the next kPoolBackoff to the pool; then the
// runtime is tried again. Unloaded, the barrier costs microseconds and every call stays on the runtime.
constexpr auto kBarrierStall = std::chrono::microseconds(200);
constexpr auto kPoolBackoff = std::chrono::milliseconds(250);
std::atomic<int64_t> g_pool_until{0};  // Clock ticks: before then, parallel_run uses the pool

struct OmpJob {
  const std::function<void(int)>* fn;
  int n;
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::atomic<int64_t> last_done{0};  // Clock ticks when the last task finished
};

void omp_body(void* data) {
  OmpJob& job = *static_cast<OmpJob*>(data);
  for (int t = job.next.fetch_add(1); t < job.n; t = job.next.fetch_add(1)) {
    (*job.fn)(t);
    if (job.done.fetch_add(1) + 1 == job.n) job.last_done.store(Clock::now().time_since_epoch().count());
  }
}

int find_openmp(dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (!name || !*name) return 0;
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  for (const char* lib : {"libgomp", "libiomp5", "libomp."}) {
    if (std::strncmp(base, lib, std::strlen(lib)) == 0) {
      *static_cast<std::string*>(out) = name;
      return 1;
    }
  }
  return 0;
}

int loads_so_far(dl_phdr_info* info, size_t, void* out) {
  *static_cast<unsigned long long*>(out) = info->dlpi_adds;
  return 1;  // the first object carries the count
}

// The runtime to run on: attached once found, searched for again only when libraries were loaded.
const HostOmp* host_runtime() {
  if (const HostOmp* omp = g_omp.load(std::memory_order_acquire)) return omp;
  if (!g_omp_on.load(std::memory_order_relaxed)) return nullptr;
  unsigned long long adds = 0;
  dl_iterate_phdr(&loads_so_far, &adds);
  if (adds == g_libs_seen.load(std::memory_order_relaxed)) return nullptr;
  std::lock_guard<std::mutex> lock(g_omp_mutex);
  g_libs_seen.store(adds, std::memory_order_relaxed);
  if (!g_omp_on.load()) return nullptr;
  std::string path;
  dl_iterate_phdr(&find_openmp, &path);
  if (path.empty()) return nullptr;
  // RTLD_NOLOAD: only a runtime already in the process; the handle is kept (the runtime stays loaded).
  void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  const auto fn = handle ? reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel")) : nullptr;
  if (!fn) return nullptr;
  static HostOmp found;  // written once: never freed, a region may still run on it on another thread
  if (!found.parallel) found = {fn, path};
  g_omp.store(&found, std::memory_order_release);
  std::lock_guard<std::mutex> pool_lock(g_pool_mutex);
  g_pool.reset();  // sparsecpu's own workers are no longer needed
  return &found;
}

}  // namespace

void parallel_run(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  const int threads = get_num_threads();
  const HostOmp* omp = n > 1 && threads > 1 ? host_runtime() : nullptr;
  if (n == 1 || threads == 1) {
    for (int t = 0; t < n; ++t) fn(t);
  } else if (omp && Clock::now().time_since_epoch().count() >= g_pool_until.load(std::memory_order_relaxed)) {
    OmpJob job{&fn, n};
    omp->parallel(&omp_body, &job, static_cast<unsigned>(std::min(threads, n)), 0);
    const Clock::time_point end = Clock::now();
    if (end - Clock::time_point(Clock::duration(job.last_done.load())) > kBarrierStall)
      g_pool_until.store((end + kPoolBackoff).time_since_epoch().count(), std::memory_order_relaxed);
  } else {
    pool()->run(n, fn);
  }
}

void set_host_openmp(bool on) {
  std::lock_guard<std::mutex> lock(g_omp_mutex);
  g_omp_on.store(on);
  g_libs_seen.store(0);
  if (!on) g_omp.store(nullptr, std::memory_order_release);
}

std::string host_openmp() {
  const HostOmp* omp = host_runtime();
  return omp ? omp->path : "";
}

void set_num_threads(int n) {
  if (n < 1 || n > 1024) throw std::invalid_argument("num_threads must be in [1, 1024], got " + std::to_string(n));
  g_threads.store(n);
}

int get_num_threads() {
  const int n = g_threads.load();
  return n > 0 ? n : default_num_threads();
}

}  // namespace sparsecpu
