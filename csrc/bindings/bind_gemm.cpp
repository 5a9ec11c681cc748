// Binding of gemm: validates shapes, dtypes, aliasing and the epilogue, then runs the kernel
// without the GIL.
#include <cmath>
#include <limits>
#include <new>
#include <string>
#include <utility>

#include "bindings/arrays.h"

namespace fastmlp {
namespace bind {

namespace {

py::object gemm(py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b, double alpha, double beta,
                py::handle out_obj, py::handle bias_obj, const std::string& activation, py::handle a_sums_obj,
                py::handle relu_mask_obj, double mask_p) {
  const char* fn = "gemm";
  FloatArray a = float_arg(a_obj, fn, "a");
  FloatArray b = float_arg(b_obj, fn, "b");
  require_same_dtype(a, b, fn);
  require_ndim(a, 2, fn);
  require_ndim(b, 2, fn);
  const int64_t M = trans_a ? a.dim(1) : a.dim(0);
  const int64_t K = trans_a ? a.dim(0) : a.dim(1);
  const int64_t Kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t N = trans_b ? b.dim(0) : b.dim(1);
  if (K != Kb)
    value_error(std::string("gemm: a has shape ") + shape_str(a.shape) + " but b has shape " + shape_str(b.shape) +
                "; with trans_a=" + (trans_a ? "True" : "False") + " and trans_b=" + (trans_b ? "True" : "False") +
                " the inner dimensions must match (" + std::to_string(K) + " != " + std::to_string(Kb) + ")");
  finite_arg(alpha, fn, "alpha");
  finite_arg(beta, fn, "beta");
  if (a.dtype == DType::f32) {
    // The epilogue scales in the array's dtype: a double beyond float32's range would become inf
    // (0 * inf = NaN for an empty or zero product), and the conversion itself is undefined.
    const double fmax = static_cast<double>(std::numeric_limits<float>::max());
    for (const auto& [name, v] : {std::pair<const char*, double>{"alpha", alpha}, {"beta", beta}})
      if (std::fabs(v) > fmax)
        value_error(std::string("gemm: ") + name + "=" + std::to_string(v) +
                    " is beyond float32's range (|" + name + "| <= 3.4028235e38) for float32 arrays");
  }
  const cpu::Act act = activation_arg(activation, fn, "activation");
  if (beta != 0.0 && out_obj.is_none())
    value_error("gemm: beta=" + std::to_string(beta) + " reads out, but out was not given");
  FloatArray out = out_arg(out_obj, fn, "out", a.dtype, {M, N});
  require_no_overlap(out, a, fn, false);
  require_no_overlap(out, b, fn, false);
  FloatArray bias;
  const bool has_bias = !bias_obj.is_none();
  if (has_bias) {
    bias = float_arg(bias_obj, fn, "bias");
    require_same_dtype(a, bias, fn);
    require_shape(bias, {N}, fn, "one value per output column");
    require_no_overlap(out, bias, fn, false);
  }
  // a_sums (a layer's bias gradient beside its dW = dz^T x): the column sums of a, bitwise what
  // bias_grad(a) gives, taken while the kernel packs a.
  FloatArray a_sums;
  const bool has_sums = !a_sums_obj.is_none();
  if (has_sums) {
    if (!trans_a) value_error("gemm: a_sums (the column sums of a) needs trans_a=True");
    a_sums = float_arg(a_sums_obj, fn, "a_sums", /*writeable=*/true);
    require_same_dtype(a, a_sums, fn);
    require_shape(a_sums, {M}, fn, "one value per column of a");
    require_no_overlap(a_sums, a, fn, false);
    require_no_overlap(a_sums, b, fn, false);
    require_no_overlap(a_sums, out, fn, false);
    if (has_bias) require_no_overlap(a_sums, bias, fn, false);
  }
  // relu_mask (y = dropout(relu(z)), shaped like out) and mask_p: out becomes the gradient through
  // that dropout and ReLU, as relu_dropout_backward(out, y, mask_p) would make it.
  FloatArray relu_mask;
  const bool has_mask = !relu_mask_obj.is_none();
  if (has_mask) {
    relu_mask = float_arg(relu_mask_obj, fn, "relu_mask");
    require_same_dtype(a, relu_mask, fn);
    require_shape(relu_mask, {M, N}, fn, "the shape of the result");
    require_no_overlap(out, relu_mask, fn, false);
    if (has_sums) require_no_overlap(a_sums, relu_mask, fn, false);  // a_sums is written while the mask is read
  }
  prob_arg(mask_p, fn, "mask_p");
  dispatch(a.dtype, [&](auto zero) {
    using T = decltype(zero);
    cpu::GemmArgs<T> g{M, N, K, a.data<T>(), b.data<T>(), out.data<T>(), has_bias ? bias.data<T>() : nullptr,
                       trans_a, trans_b, alpha, beta, act, has_sums ? a_sums.data<T>() : nullptr,
                       has_mask ? relu_mask.data<T>() : nullptr, mask_p};
    py::gil_scoped_release release;
    cpu::active_for<T>().gemm(g);
    return 0;
  });
  return out.arr;
}

// _gemm, by position, as a METH_FASTCALL function (fastmlp.kernels.gemm and the layers call it):
// pybind11's dispatcher (an argument vector on the heap, a caster per argument, its overload
// loop) took ~170 ns of the ~590 a 1x1x1 call costs. Separate processes on the Xeon, 3 runs:
// _core._gemm 1x1x1 589-597 -> 421-424 ns, kernels.gemm 32x64x64 2.35-2.39 -> 2.15-2.19 us
// (NumPy 2.6). The arguments convert as pybind11 converts them (a bool from anything with a truth
// value, a double from anything float() takes, a str), and C++ exceptions become the Python ones
// pybind11 raises.
PyObject* gemm_fastcall(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 9 || nargs > 12) {
    PyErr_Format(PyExc_TypeError, "_gemm() takes 9 to 12 positional arguments (%zd given)", nargs);
    return nullptr;
  }
  try {
    // A failed conversion is a TypeError naming the argument, as pybind11 raised (it swallowed the
    // conversion's own error: an int beyond double's range, an array's ambiguous truth value).
    auto refuse = [&](Py_ssize_t i, const char* name, const char* expected) {
      py::error_already_set cause;  // takes the conversion's error
      type_error(std::string("gemm: ") + name + " must be " + expected + ", not " + Py_TYPE(args[i])->tp_name + " (" +
                 cause.what() + ")");
    };
    auto flag = [&](Py_ssize_t i, const char* name) {
      if (args[i] == Py_True) return true;
      if (args[i] == Py_False) return false;
      const int v = PyObject_IsTrue(args[i]);
      if (v < 0) refuse(i, name, "a bool");
      return v > 0;
    };
    auto real = [&](Py_ssize_t i, const char* name) {
      const double v = PyFloat_AsDouble(args[i]);
      if (v == -1.0 && PyErr_Occurred()) refuse(i, name, "a real number");
      return v;
    };
    if (!PyUnicode_Check(args[8])) type_error("gemm: activation must be a str, not " + std::string(Py_TYPE(args[8])->tp_name));
    Py_ssize_t len = 0;
    const char* text = PyUnicode_AsUTF8AndSize(args[8], &len);
    if (!text) throw py::error_already_set();
    const py::handle none = py::none();
    const bool trans_a = flag(2, "trans_a"), trans_b = flag(3, "trans_b");
    const double alpha = real(4, "alpha"), beta = real(5, "beta"), mask_p = nargs > 11 ? real(11, "mask_p") : 0.0;
    return gemm(args[0], args[1], trans_a, trans_b, alpha, beta, args[6], args[7], std::string(text, static_cast<size_t>(len)),
                nargs > 9 ? py::handle(args[9]) : none, nargs > 10 ? py::handle(args[10]) : none, mask_p)
        .release()
        .ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "gemm: unknown C++ exception");
  }
  return nullptr;
}

PyMethodDef gemm_fastcall_def = {
    "_gemm", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&gemm_fastcall)), METH_FASTCALL,
    "_gemm(a, b, trans_a, trans_b, alpha, beta, out, bias, activation, a_sums=None, relu_mask=None, mask_p=0.0): "
    "gemm's arguments by position."};

}  // namespace

void register_gemm(py::module_& m) {
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::kw_only(), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("out") = py::none(),
        py::arg("bias") = py::none(), py::arg("activation") = "identity", py::arg("a_sums") = py::none(),
        py::arg("relu_mask") = py::none(), py::arg("mask_p") = 0.0);
  // All arguments by position, for fastmlp.kernels.gemm and the layers (see gemm_fastcall).
  PyObject* fast = PyCFunction_NewEx(&gemm_fastcall_def, nullptr, nullptr);
  if (!fast) throw py::error_already_set();
  m.attr("_gemm") = py::reinterpret_steal<py::object>(fast);
}

}  // namespace bind
}  // namespace fastmlp
