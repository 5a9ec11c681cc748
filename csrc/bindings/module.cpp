// The private extension module fastmlp._core. The public, documented API is fastmlp.kernels;
// this file only wires the per-area binding files together and exposes threads and ISA control.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/arrays.h"
#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/stream.h"
#include "cpu/kernels.h"

namespace py = pybind11;

namespace fastmlp {
namespace bind {
void register_gemm(py::module_& m);
void register_elementwise(py::module_& m);
void register_loss(py::module_& m);
void register_batchnorm(py::module_& m);
void register_optim(py::module_& m);
void register_probe(py::module_& m);
#if FASTMLP_HAVE_CUDA
void register_cuda(py::module_& m);  // bind_cuda.cpp: the submodule _core.cuda
#endif
}  // namespace bind
}  // namespace fastmlp

PYBIND11_MODULE(_core, m) {
  using namespace fastmlp;
  m.doc() = "fastmlp's compiled kernels (private; use fastmlp.kernels)";

  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
    py::gil_scoped_release release;
    set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);

  // Outputs of at least this many bytes are written with streaming stores (core/stream.h).
  // (std::invalid_argument for a negative size reaches Python as ValueError.)
  m.def("_set_stream_min_bytes", &set_stream_min_bytes, py::arg("bytes"));
  m.def("_get_stream_min_bytes", &stream_min_bytes);

  m.def("get_isa", [] { return std::string(cpu::active_isa()); });
  m.def("set_isa", [](const std::string& name) {
    try {
      cpu::set_isa(name.c_str());
    } catch (const std::invalid_argument& e) {
      throw py::value_error(std::string("set_isa: ") + e.what());
    }
  }, py::arg("name"));
  m.def("isa_supported", [](const std::string& name) { return cpu::isa_supported(name.c_str()); }, py::arg("name"));
  m.def("isa_compiled", [](const std::string& name) { return cpu::isa_compiled(name.c_str()); }, py::arg("name"));
  m.def("cpu_model_name", [] { return std::string(cpu_model_name()); });

  bind::register_gemm(m);
  bind::register_elementwise(m);
  bind::register_loss(m);
  bind::register_batchnorm(m);
  bind::register_optim(m);
  bind::register_probe(m);

  // Whether this build has the CUDA backend; the submodule _core.cuda exists only when it does.
  m.attr("cuda_compiled") = bool(FASTMLP_HAVE_CUDA);
#if FASTMLP_HAVE_CUDA
  bind::register_cuda(m);
#endif
}
