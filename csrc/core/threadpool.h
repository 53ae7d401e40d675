// Where sparsecpu's parallel work runs: its own persistent pool of worker threads, or, once attached,
// the OpenMP runtime another library (torch) has already loaded into the process. sparsecpu does not
// link OpenMP itself: a second runtime's threads spinning beside torch's on the same cores is what
// made a sparsified model several times slower between torch ops; on torch's runtime, the threads
// that spin after a torch op are the ones that pick up sparsecpu's next layer.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sparsecpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(t) for every task t in [0, n) and returns when all are done. Tasks are claimed from a
  // shared counter by the caller and the workers alike, so a worker that is asleep or descheduled
  // (shared VMs steal whole time slices) delays nothing: the caller runs the tasks it has not
  // claimed. Calls from several threads at once are serialized.
  void run(int n, const std::function<void(int)>& fn);

 private:
  struct Job {
    const std::function<void(int)>* fn = nullptr;
    int n = 0;
    std::atomic<int> next{0};
    std::atomic<int> done{0};
  };
  static void work(Job& job);
  void worker_loop();

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;      // guards job_ and generation_ changes, and sleeping
  std::condition_variable wake_;
  std::shared_ptr<Job> job_;  // a late worker keeps its job alive; it finds no task left in it
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  bool stop_ = false;
};

// Runs fn(t) for every t in [0, n) on get_num_threads() threads (the caller among them) and returns
// when all are done: on the host OpenMP runtime when attached, else on sparsecpu's pool.
void parallel_run(int n, const std::function<void(int)>& fn);
void set_num_threads(int n);
// sparsecpu's thread count: set_num_threads, else the CPUs this process may run on.
int get_num_threads();
int default_num_threads();

// With host_openmp on (the default), parallel_run uses an OpenMP runtime as soon as one is loaded into
// the process (libgomp, libiomp5 or libomp, through their GOMP_parallel entry point): a new library
// in the process is noticed at the next call, at the cost of one dl_iterate_phdr step per call until
// then. Off: sparsecpu's own pool.
void set_host_openmp(bool on);
// The runtime parallel_run uses, or "" (sparsecpu's own pool).
std::string host_openmp();

}  // namespace sparsecpu
