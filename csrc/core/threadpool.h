// One persistent pool of worker threads (no OpenMP: torch and ONNX Runtime each bring their own
// runtime, and two of them spinning on 2 cores is slower than one).
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
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

// The process-wide pool; sized to the CPUs this process may run on until set_num_threads.
ThreadPool& pool();
void set_num_threads(int n);
int get_num_threads();
int default_num_threads();

}  // namespace sparsecpu
