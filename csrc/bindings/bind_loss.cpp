// Bindings of the fused losses (squared_error, softmax_cross_entropy, sigmoid_cross_entropy):
// validate logits, targets/labels and the gradient buffer `out` (which may be the logits
// themselves, but no other overlap), then run the kernel without the GIL. Each returns
// (loss as a Python float, grad).
#include "bindings/arrays.h"

namespace fastmlp {
namespace bind {

namespace {

// The logits (2-D) and the gradient buffer: `out` if given, else new; `out` may be the logits
// array itself (in place) but must not partly overlap it.
struct LogitsAndGrad {
  FloatArray logits, grad;
};

LogitsAndGrad logits_and_grad(py::handle logits_obj, py::handle out_obj, const char* fn, const char* name) {
  LogitsAndGrad r;
  r.logits = float_arg(logits_obj, fn, name);
  require_ndim(r.logits, 2, fn);
  r.grad = out_arg(out_obj, fn, "out", r.logits.dtype, r.logits.shape);
  require_no_overlap(r.grad, r.logits, fn, /*allow_identical=*/true);
  return r;
}

// A float target of the logits' dtype and shape that the gradient buffer does not overlap.
FloatArray target_arg(py::handle obj, const LogitsAndGrad& lg, const char* fn, const char* name) {
  FloatArray t = float_arg(obj, fn, name);
  require_same_dtype(lg.logits, t, fn);
  require_shape(t, lg.logits.shape, fn, std::string("the shape of ") + lg.logits.name);
  require_no_overlap(lg.grad, t, fn, /*allow_identical=*/false);
  return t;
}

py::tuple squared_error(py::handle pred_obj, py::handle target_obj, py::handle out_obj) {
  const char* fn = "squared_error";
  LogitsAndGrad lg = logits_and_grad(pred_obj, out_obj, fn, "pred");
  FloatArray target = target_arg(target_obj, lg, fn, "target");
  const int64_t rows = lg.logits.dim(0), cols = lg.logits.dim(1);
  const double loss = dispatch(lg.logits.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* pred = lg.logits.data<T>();
    const T* tgt = target.data<T>();
    T* grad = lg.grad.data<T>();
    py::gil_scoped_release release;
    return cpu::active_for<T>().squared_error(pred, tgt, grad, rows, cols);
  });
  return py::make_tuple(loss, lg.grad.arr);
}

py::tuple softmax_cross_entropy(py::handle logits_obj, py::handle labels_obj, py::handle out_obj) {
  const char* fn = "softmax_cross_entropy";
  LogitsAndGrad lg = logits_and_grad(logits_obj, out_obj, fn, "logits");
  const int64_t rows = lg.logits.dim(0), cols = lg.logits.dim(1);
  const std::vector<int64_t> labels = labels_arg(labels_obj, fn, "labels", rows, cols);
  const double loss = dispatch(lg.logits.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* logits = lg.logits.data<T>();
    T* grad = lg.grad.data<T>();
    py::gil_scoped_release release;
    return cpu::active_for<T>().softmax_cross_entropy(logits, labels.data(), grad, rows, cols);
  });
  return py::make_tuple(loss, lg.grad.arr);
}

py::tuple sigmoid_cross_entropy(py::handle logits_obj, py::handle targets_obj, py::handle out_obj) {
  const char* fn = "sigmoid_cross_entropy";
  LogitsAndGrad lg = logits_and_grad(logits_obj, out_obj, fn, "logits");
  FloatArray targets = target_arg(targets_obj, lg, fn, "targets");
  const int64_t rows = lg.logits.dim(0), cols = lg.logits.dim(1);
  const double loss = dispatch(lg.logits.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* logits = lg.logits.data<T>();
    const T* tgt = targets.data<T>();
    T* grad = lg.grad.data<T>();
    py::gil_scoped_release release;
    return cpu::active_for<T>().sigmoid_cross_entropy(logits, tgt, grad, rows, cols);
  });
  return py::make_tuple(loss, lg.grad.arr);
}

// (min, max) of 1-D C-contiguous int32/int64 class labels in one pass (None when empty): the
// trainer's range check without two NumPy reductions per step.
py::object label_range(py::handle labels_obj) {
  py::array a = require_ndarray(labels_obj, "_label_range", "labels");
  const char kind = a.dtype().kind();
  const auto itemsize = a.dtype().itemsize();
  const char order = a.dtype().byteorder();
  if (kind != 'i' || (itemsize != 4 && itemsize != 8) || !(order == '=' || order == '|') ||
      !(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || a.ndim() != 1)
    type_error("_label_range: labels must be a 1-D C-contiguous aligned native int32 or int64 array");
  const int64_t n = a.shape(0);
  if (n == 0) return py::none();
  int64_t lo = 0, hi = 0;
  auto scan = [&](const auto* v) {
    lo = hi = static_cast<int64_t>(v[0]);
    for (int64_t i = 1; i < n; ++i) {
      const int64_t x = static_cast<int64_t>(v[i]);
      lo = x < lo ? x : lo;
      hi = x > hi ? x : hi;
    }
  };
  if (itemsize == 4) scan(static_cast<const int32_t*>(a.data()));
  else scan(static_cast<const int64_t*>(a.data()));
  return py::make_tuple(lo, hi);
}

}  // namespace

void register_loss(py::module_& m) {
  m.def("_label_range", &label_range, py::arg("labels"));
  m.def("squared_error", &squared_error, py::arg("pred"), py::arg("target"), py::kw_only(),
        py::arg("out") = py::none());
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"), py::kw_only(),
        py::arg("out") = py::none());
  m.def("sigmoid_cross_entropy", &sigmoid_cross_entropy, py::arg("logits"), py::arg("targets"), py::kw_only(),
        py::arg("out") = py::none());
}

}  // namespace bind
}  // namespace fastmlp
