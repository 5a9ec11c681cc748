// fastmlp's own thread pool: N-1 pthread workers plus the calling thread, tasks handed out by an
// atomic counter. Own pool rather than OpenMP so that fork() is safe: a child process starts with a
// fresh, empty pool (pthread_atfork), and the prepare handler waits for any running job, so no
// lock is ever inherited in a held state.
//
// A job is open to workers until the caller has run out of tasks; then the caller closes it and
// waits only for the workers that joined. A worker that wakes late (a descheduled vCPU can take
// milliseconds) finds the job closed and goes back to waiting, so it never delays the caller.
// Workers spin briefly after a job before sleeping, so the many short kernels of a training step do
// not each pay a futex wake-up.
#include "core/parallel.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastmlp {
namespace {

int default_thread_count() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

thread_local bool t_inside_task = false;

// Roughly 50-100 microseconds of polling before a worker (or the waiting caller) sleeps.
constexpr int kSpinIterations = 8000;

// The job word: generation in the high 32 bits, the "closed" bit, and the joined-worker count.
constexpr uint64_t kClosed = uint64_t{1} << 31;
constexpr uint64_t kJoinedMask = kClosed - 1;
inline uint32_t generation_of(uint64_t word) { return static_cast<uint32_t>(word >> 32); }

struct Pool {
  std::mutex busy;  // held by the thread that owns the workers for the duration of one job
  std::mutex m;
  std::condition_variable cv_work, cv_done;
  std::vector<pthread_t> workers;
  int n_threads = 1;
  bool stop = false;
  std::atomic<bool> stopping{false};
  uint32_t generation = 0;
  std::atomic<uint64_t> job{0};
  std::atomic<int> finished{0};
  int sleepers = 0;  // workers blocked on cv_work (guarded by m)
  bool caller_sleeping = false;

  TaskFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n_tasks = 0;
  std::atomic<int64_t> next{0};
  std::exception_ptr error;

  void run_tasks() {
    t_inside_task = true;
    for (;;) {
      const int64_t task = next.fetch_add(1, std::memory_order_relaxed);
      if (task >= n_tasks) break;
      try {
        fn(ctx, task);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m);
        if (!error) error = std::current_exception();
      }
    }
    t_inside_task = false;
  }
};

Pool* g_pool = nullptr;
std::once_flag g_pool_once;

struct WorkerStart {
  Pool* pool;
  uint32_t generation;
};

void* worker_main(void* arg) {
  WorkerStart start = *static_cast<WorkerStart*>(arg);
  delete static_cast<WorkerStart*>(arg);
  Pool& p = *start.pool;
  uint32_t seen = start.generation;
  for (;;) {
    bool ready = false;
    for (int i = 0; i < kSpinIterations; ++i) {
      if (generation_of(p.job.load(std::memory_order_acquire)) != seen ||
          p.stopping.load(std::memory_order_relaxed)) {
        ready = true;
        break;
      }
      cpu_relax();
    }
    if (!ready) {
      std::unique_lock<std::mutex> lk(p.m);
      ++p.sleepers;
      p.cv_work.wait(lk, [&] { return p.stop || generation_of(p.job.load(std::memory_order_acquire)) != seen; });
      --p.sleepers;
    }
    if (p.stopping.load(std::memory_order_acquire)) return nullptr;
    uint64_t word = p.job.load(std::memory_order_acquire);
    seen = generation_of(word);
    bool joined = false;
    while (!(word & kClosed) && generation_of(word) == seen) {
      if (p.job.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel)) {
        joined = true;
        break;
      }
    }
    if (!joined) continue;  // the caller already finished this job without us
    p.run_tasks();
    p.finished.fetch_add(1, std::memory_order_acq_rel);
    std::lock_guard<std::mutex> lk(p.m);
    if (p.caller_sleeping) p.cv_done.notify_all();
  }
}

// Caller holds p.busy.
void stop_workers(Pool& p) {
  {
    std::lock_guard<std::mutex> lk(p.m);
    p.stop = true;
    p.stopping.store(true, std::memory_order_release);
  }
  p.cv_work.notify_all();
  for (pthread_t t : p.workers) pthread_join(t, nullptr);
  p.workers.clear();
  std::lock_guard<std::mutex> lk(p.m);
  p.stop = false;
  p.stopping.store(false, std::memory_order_release);
}

// Caller holds p.busy.
void ensure_workers(Pool& p) {
  const size_t wanted = static_cast<size_t>(p.n_threads - 1);
  while (p.workers.size() < wanted) {
    auto* start = new WorkerStart{&p, p.generation};
    pthread_t t;
    if (pthread_create(&t, nullptr, worker_main, start) != 0) {
      delete start;
      break;  // run with the workers we have; results do not depend on the count
    }
    p.workers.push_back(t);
  }
}

void atfork_prepare() {
  if (g_pool) g_pool->busy.lock();
}
void atfork_parent() {
  if (g_pool) g_pool->busy.unlock();
}
void atfork_child() {
  if (g_pool) {
    // The workers do not exist in the child. Leak the old pool (its pthread handles and sync
    // objects belong to the parent) and start an empty one with the same setting.
    const int n = g_pool->n_threads;
    g_pool = new Pool();
    g_pool->n_threads = n;
  }
}

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool();
    g_pool->n_threads = default_thread_count();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  });
  return *g_pool;
}

// Create the pool (and register the fork handlers) when the library is loaded, not on the first
// kernel call: a fork() while another thread was inside the call_once above would leave the
// child's once-flag "in progress" forever, and the child's first kernel would deadlock.
[[maybe_unused]] const bool g_pool_at_load = (pool(), true);

}  // namespace

void parallel_run(int64_t n_tasks, TaskFn fn, void* ctx) {
  Pool& p = pool();
  if (n_tasks <= 0) return;
  if (t_inside_task || p.n_threads <= 1 || n_tasks == 1 || !p.busy.try_lock()) {
    for (int64_t i = 0; i < n_tasks; ++i) fn(ctx, i);
    return;
  }
  std::lock_guard<std::mutex> own(p.busy, std::adopt_lock);
  ensure_workers(p);
  bool wake = false;
  {
    std::lock_guard<std::mutex> lk(p.m);
    p.fn = fn;
    p.ctx = ctx;
    p.n_tasks = n_tasks;
    p.next.store(0, std::memory_order_relaxed);
    p.finished.store(0, std::memory_order_relaxed);
    p.error = nullptr;
    ++p.generation;
    p.job.store(static_cast<uint64_t>(p.generation) << 32, std::memory_order_release);
    wake = p.sleepers > 0;
  }
  if (wake) p.cv_work.notify_all();
  p.run_tasks();
  // No tasks left: close the job and wait for the workers that joined it.
  const int joined = static_cast<int>(p.job.fetch_or(kClosed, std::memory_order_acq_rel) & kJoinedMask);
  bool done = false;
  for (int i = 0; i < kSpinIterations && !done; ++i) {
    done = p.finished.load(std::memory_order_acquire) == joined;
    if (!done) cpu_relax();
  }
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lk(p.m);
    if (!done) {
      p.caller_sleeping = true;
      p.cv_done.wait(lk, [&] { return p.finished.load(std::memory_order_acquire) == joined; });
      p.caller_sleeping = false;
    }
    error = p.error;
    p.error = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

int get_num_threads() { return pool().n_threads; }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  Pool& p = pool();
  std::lock_guard<std::mutex> own(p.busy);
  if (n == p.n_threads) return;
  stop_workers(p);
  p.n_threads = n;
}

}  // namespace fastmlp
