// The thread pool seen from a kernel: run task indices 0..n-1, each exactly once, on the pool
// or inline. A task's result may depend only on its index, never on which thread ran it, so
// every kernel is bitwise the same on 1 and N threads. The pool itself is in thread_pool.cpp.
#pragma once
#include <cstdint>

namespace fastmlp {

using TaskFn = void (*)(void* ctx, int64_t task);

// Runs fn(ctx, i) for i in [0, n_tasks). Falls back to the calling thread when the pool is busy
// (another Python thread is using it) or when called from inside a task.
void parallel_run(int64_t n_tasks, TaskFn fn, void* ctx);

int get_num_threads();
void set_num_threads(int n);  // n >= 1; throws std::invalid_argument otherwise

namespace {
template <class F>
void parallel_for(int64_t n_tasks, const F& f) {
  if (n_tasks <= 0) return;
  if (n_tasks == 1) {
    f(int64_t{0});
    return;
  }
  parallel_run(
      n_tasks, [](void* ctx, int64_t task) { (*static_cast<const F*>(ctx))(task); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// parallel_for when `parallel`, else the same tasks in order on the calling thread (for work too
// small to pay for waking the pool).
template <class F>
void parallel_for_if(bool parallel, int64_t n_tasks, const F& f) {
  if (parallel) {
    parallel_for(n_tasks, f);
  } else {
    for (int64_t i = 0; i < n_tasks; ++i) f(i);
  }
}

// A spin-wait's pause (lets a sibling hyperthread run, saves power); nothing elsewhere.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements of T from p to the next 64-byte line boundary: 0 when p is on one, or when it is not
// aligned to its element size (no whole element ends on the boundary).
template <class T>
inline int64_t elements_to_line(const T* p) {
  const uintptr_t past = reinterpret_cast<uintptr_t>(p) % 64;
  return past == 0 || past % sizeof(T) ? 0 : static_cast<int64_t>((64 - past) / sizeof(T));
}
inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
}  // namespace

}  // namespace fastmlp
