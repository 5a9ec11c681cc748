// Benchmark probes (private; used by fastmlp.bench): the FMA peak on N threads and a STREAM triad.
#include <atomic>
#include <chrono>

#include "bindings/arrays.h"
#include "core/parallel.h"

namespace fastmlp {
namespace bind {

namespace {

// GFLOP/s of independent FMAs on `threads` threads at once (each thread one task; the tasks wait
// at a barrier so they really overlap).
double fma_probe(int64_t iterations, int threads) {
  if (iterations < 1) value_error("fma_probe: iterations must be >= 1");
  if (threads < 1 || threads > get_num_threads())
    value_error("fma_probe: threads must be in [1, get_num_threads()]");
  const auto probe = cpu::active().fma_probe;
  std::atomic<int> arrived{0};
  std::atomic<int64_t> elapsed_ns{0};
  double flops = 0;
  {
    py::gil_scoped_release release;
    float sinks[256] = {};
    double flops_per_task[256] = {};
    parallel_for(threads, [&](int64_t t) {
      arrived.fetch_add(1);
      while (arrived.load() < threads) {
      }
      const auto start = std::chrono::steady_clock::now();
      flops_per_task[t] = probe(iterations, &sinks[t]);
      const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
      int64_t prev = elapsed_ns.load();
      while (ns > prev && !elapsed_ns.compare_exchange_weak(prev, ns)) {
      }
    });
    for (int t = 0; t < threads; ++t) flops += flops_per_task[t];
  }
  return flops / static_cast<double>(elapsed_ns.load());
}

void triad(py::handle a_obj, py::handle b_obj, py::handle c_obj, double s) {
  const char* fn = "triad";
  FloatArray a = float_arg(a_obj, fn, "a", true);
  FloatArray b = float_arg(b_obj, fn, "b");
  FloatArray c = float_arg(c_obj, fn, "c");
  require_same_dtype(a, b, fn);
  require_same_dtype(a, c, fn);
  require_shape(b, a.shape, fn, "the shape of a");
  require_shape(c, a.shape, fn, "the shape of a");
  require_no_overlap(a, b, fn, false);
  require_no_overlap(a, c, fn, false);
  dispatch(a.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().triad(a.data<T>(), b.data<T>(), c.data<T>(), static_cast<T>(s), a.size);
    return 0;
  });
}

}  // namespace

void register_probe(py::module_& m) {
  m.def("fma_probe", &fma_probe, py::arg("iterations"), py::arg("threads"),
        "GFLOP/s of independent float32 FMAs on `threads` threads (benchmark probe).");
  m.def("triad", &triad, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("s"),
        "STREAM triad a = b + s * c (benchmark probe).");
}

}  // namespace bind
}  // namespace fastmlp
