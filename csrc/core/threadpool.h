// One persistent pool of worker threads (no OpenMP: torch and ONNX Runtime each bring their own
// runtime, and two of them spinning on 2 cores is slower than one).
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
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

  // Runs fn(t) for t in [0, n) with n <= size(); the caller runs t = 0 and returns when all are done.
  // Calls from several threads at once are serialized.
  void run(int n, const std::function<void(int)>& fn);

 private:
  void worker_loop(int id);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  const std::function<void(int)>* job_ = nullptr;
  int job_threads_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  bool stop_ = false;
};

// The process-wide pool; sized to the CPUs this process may run on until set_num_threads.
ThreadPool& pool();
void set_num_threads(int n);
int get_num_threads();
int default_num_threads();

}  // namespace sparsecpu
