// Bindings of the fused optimizer steps: validate every array (one float dtype, C-contiguous,
// state writeable, the shape of param, no shared memory), every hyper-parameter and the segment
// table, then update in place without the GIL. Returns param.
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "bindings/arrays.h"

namespace fastmlp {
namespace bind {

namespace {

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>(); }

// The 1-based step count: a Python int (or anything with __index__, not bool) >= 1.
int64_t step_arg(py::handle h, const char* fn) {
  const std::string pre = std::string(fn) + ": step";
  if (h.is_none() || py::isinstance<py::bool_>(h) || !py::hasattr(h, "__index__"))
    type_error(pre + " must be an int >= 1 (the 1-based step count), got " + type_name(h));
  py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
  if (!v) throw py::error_already_set();
  if (v < py::int_(1))
    value_error(pre + " must be >= 1 (the 1-based step count), got " + py::str(v).cast<std::string>());
  if (v > py::int_(std::numeric_limits<int64_t>::max()))
    value_error(pre + " = " + py::str(v).cast<std::string>() + " does not fit in int64");
  return v.cast<int64_t>();
}

double unit_closed_arg(double v, const char* fn, const char* name) {  // 0 <= v <= 1
  if (!(v >= 0.0 && v <= 1.0))
    value_error(std::string(fn) + ": " + name + " must satisfy 0 <= " + name + " <= 1, got " + std::to_string(v));
  return v;
}

// param plus the arrays that travel with it: same dtype and shape, state writeable, no two
// sharing memory.
struct OptimArrays {
  const char* fn;
  FloatArray param;
  std::vector<FloatArray> others;

  OptimArrays(const char* fn_, py::handle param_obj) : fn(fn_), param(float_arg(param_obj, fn_, "param", true)) {}

  FloatArray add(py::handle h, const char* name, bool writeable) {
    FloatArray a = float_arg(h, fn, name, writeable);
    require_same_dtype(param, a, fn);
    require_shape(a, param.shape, fn, "the shape of param");
    require_no_overlap(a, param, fn, false);
    for (const FloatArray& o : others) require_no_overlap(a, o, fn, false);
    others.push_back(a);
    return a;
  }
};

// segments=(bounds, values), copied into owned storage after validation (DESIGN.md,
// "Regularisation"). The kernel reads the copy without the GIL.
struct SegmentTable {
  std::vector<int64_t> bounds;
  std::vector<double> values;
  cpu::Segments view() const {
    cpu::Segments s;
    s.count = static_cast<int64_t>(values.size() / 3);
    s.bounds = bounds.data();
    s.values = values.data();
    return s;
  }
};

SegmentTable segments_arg(py::handle h, const char* fn, int64_t n) {
  SegmentTable t;
  if (h.is_none()) return t;
  const std::string pre = std::string(fn) + ": segments";
  if (!(py::isinstance<py::tuple>(h) || py::isinstance<py::list>(h)) || py::len(h) != 2)
    type_error(pre + " must be None or a pair (bounds, values), got " + type_name(h));
  py::sequence pair = py::reinterpret_borrow<py::sequence>(h);
  py::array bounds = require_ndarray(pair[0], fn, "segments bounds");
  py::array values = require_ndarray(pair[1], fn, "segments values");
  if (!bounds.dtype().is(py::dtype::of<int64_t>()))
    type_error(pre + " bounds has dtype " + py::str(bounds.dtype()).cast<std::string>() +
               "; expected int64 rows of (start, length)");
  if (!values.dtype().is(py::dtype::of<double>()))
    type_error(pre + " values has dtype " + py::str(values.dtype()).cast<std::string>() +
               "; expected float64 rows of (lr_scale, weight_decay, l1)");
  for (const auto& [array, what] : {std::pair<const py::array&, const char*>{bounds, "bounds"}, {values, "values"}})
    if (!(array.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
      value_error(pre + " " + what + " is not aligned to its dtype; pass a copy");
  if (bounds.ndim() != 2 || bounds.shape(1) != 2)
    value_error(pre + " bounds has " + describe(bounds) + "; expected shape (n, 2) of (start, length)");
  if (values.ndim() != 2 || values.shape(1) != 3)
    value_error(pre + " values has " + describe(values) + "; expected shape (n, 3) of (lr_scale, weight_decay, l1)");
  if (bounds.shape(0) != values.shape(0))
    value_error(pre + " bounds has " + std::to_string(bounds.shape(0)) + " rows but values has " +
                std::to_string(values.shape(0)) + "; one row of values per row of bounds");
  const auto b = bounds.unchecked<int64_t, 2>();
  const auto v = values.unchecked<double, 2>();
  const int64_t rows = static_cast<int64_t>(bounds.shape(0));
  t.bounds.resize(static_cast<size_t>(2 * rows));
  t.values.resize(static_cast<size_t>(3 * rows));
  int64_t prev_end = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = b(r, 0), length = b(r, 1);
    const std::string row = pre + " row " + std::to_string(r) + " (start=" + std::to_string(start) +
                            ", length=" + std::to_string(length) + ")";
    if (start < 0 || length < 0)
      value_error(row + " has a negative start or length");
    if (start > n || length > n - start)
      value_error(row + " ends at " + std::to_string(start + length) + ", past the end of param (size " +
                  std::to_string(n) + ")");
    if (start < prev_end)
      value_error(row + " overlaps or precedes row " + std::to_string(r - 1) + ", which ends at " +
                  std::to_string(prev_end) + "; rows must be sorted and non-overlapping");
    prev_end = start + length;
    const char* names[3] = {"lr_scale", "weight_decay", "l1"};
    for (int j = 0; j < 3; ++j) {
      const double x = v(r, j);
      if (!std::isfinite(x) || x < 0.0)
        value_error(pre + " values row " + std::to_string(r) + ": " + names[j] + " must be a finite number >= 0, got " +
                    std::to_string(x));
      t.values[static_cast<size_t>(3 * r + j)] = x;
    }
    t.bounds[static_cast<size_t>(2 * r)] = start;
    t.bounds[static_cast<size_t>(2 * r + 1)] = length;
  }
  return t;
}

py::object sgd_step(py::handle param_obj, py::handle grad_obj, py::handle buf_obj, py::handle step_obj, double lr,
                    double momentum, double dampening, bool nesterov, double weight_decay, double l1,
                    py::handle segments_obj) {
  const char* fn = "sgd_step";
  OptimArrays arrays(fn, param_obj);
  FloatArray grad = arrays.add(grad_obj, "grad", false);
  const int64_t step = step_arg(step_obj, fn);
  nonneg_arg(lr, fn, "lr");
  nonneg_arg(momentum, fn, "momentum");
  unit_closed_arg(dampening, fn, "dampening");
  nonneg_arg(weight_decay, fn, "weight_decay");
  nonneg_arg(l1, fn, "l1");
  if (nesterov && (momentum <= 0.0 || dampening != 0.0))
    value_error("sgd_step: nesterov=True requires momentum > 0 and dampening == 0, got momentum=" +
                std::to_string(momentum) + " and dampening=" + std::to_string(dampening));
  FloatArray buf;
  if (!buf_obj.is_none()) buf = arrays.add(buf_obj, "momentum_buffer", true);
  else if (momentum != 0.0)
    value_error("sgd_step: momentum_buffer is None but momentum=" + std::to_string(momentum) +
                "; pass an array of param's shape (its contents are ignored on step 1)");
  const SegmentTable seg = segments_arg(segments_obj, fn, arrays.param.size);
  const int64_t n = arrays.param.size;
  const bool has_buf = !buf_obj.is_none();
  dispatch(arrays.param.dtype, [&](auto zero) {
    using T = decltype(zero);
    const cpu::SgdArgs a{step, lr, momentum, dampening, weight_decay, l1, nesterov};
    const cpu::Segments s = seg.view();
    T* p = arrays.param.data<T>();
    const T* g = grad.data<T>();
    T* b = has_buf ? buf.data<T>() : nullptr;
    py::gil_scoped_release release;
    cpu::active_for<T>().sgd_step(p, g, b, n, a, s);
    return 0;
  });
  return arrays.param.arr;
}

py::object adagrad_step(py::handle param_obj, py::handle grad_obj, py::handle sum_obj, py::handle step_obj, double lr,
                        double lr_decay, double weight_decay, double eps, double l1, py::handle segments_obj) {
  const char* fn = "adagrad_step";
  OptimArrays arrays(fn, param_obj);
  FloatArray grad = arrays.add(grad_obj, "grad", false);
  FloatArray state_sum = arrays.add(sum_obj, "state_sum", true);
  const int64_t step = step_arg(step_obj, fn);
  nonneg_arg(lr, fn, "lr");
  nonneg_arg(lr_decay, fn, "lr_decay");
  nonneg_arg(weight_decay, fn, "weight_decay");
  nonneg_arg(eps, fn, "eps");
  nonneg_arg(l1, fn, "l1");
  const SegmentTable seg = segments_arg(segments_obj, fn, arrays.param.size);
  const int64_t n = arrays.param.size;
  dispatch(arrays.param.dtype, [&](auto zero) {
    using T = decltype(zero);
    const cpu::AdagradArgs a{step, lr, lr_decay, weight_decay, l1, eps};
    const cpu::Segments s = seg.view();
    T* p = arrays.param.data<T>();
    const T* g = grad.data<T>();
    T* ss = state_sum.data<T>();
    py::gil_scoped_release release;
    cpu::active_for<T>().adagrad_step(p, g, ss, n, a, s);
    return 0;
  });
  return arrays.param.arr;
}

py::object rmsprop_step(py::handle param_obj, py::handle grad_obj, py::handle sq_obj, double lr, double alpha,
                        double eps, double weight_decay, double momentum, bool centered, py::handle buf_obj,
                        py::handle grad_avg_obj, double l1, py::handle segments_obj) {
  const char* fn = "rmsprop_step";
  OptimArrays arrays(fn, param_obj);
  FloatArray grad = arrays.add(grad_obj, "grad", false);
  FloatArray square_avg = arrays.add(sq_obj, "square_avg", true);
  nonneg_arg(lr, fn, "lr");
  unit_closed_arg(alpha, fn, "alpha");
  nonneg_arg(eps, fn, "eps");
  nonneg_arg(weight_decay, fn, "weight_decay");
  nonneg_arg(momentum, fn, "momentum");
  nonneg_arg(l1, fn, "l1");
  FloatArray buf, grad_avg;
  const bool use_momentum = momentum > 0.0;
  if (!buf_obj.is_none()) buf = arrays.add(buf_obj, "momentum_buffer", true);
  else if (use_momentum)
    value_error("rmsprop_step: momentum_buffer is None but momentum=" + std::to_string(momentum) +
                "; pass a zero-initialised array of param's shape");
  if (!grad_avg_obj.is_none()) grad_avg = arrays.add(grad_avg_obj, "grad_avg", true);
  else if (centered)
    value_error("rmsprop_step: grad_avg is None but centered=True; pass a zero-initialised array of param's shape");
  const SegmentTable seg = segments_arg(segments_obj, fn, arrays.param.size);
  const int64_t n = arrays.param.size;
  dispatch(arrays.param.dtype, [&](auto zero) {
    using T = decltype(zero);
    const cpu::RmspropArgs a{lr, alpha, eps, weight_decay, momentum, l1, centered};
    const cpu::Segments s = seg.view();
    T* p = arrays.param.data<T>();
    const T* g = grad.data<T>();
    T* sq = square_avg.data<T>();
    T* b = use_momentum ? buf.data<T>() : nullptr;
    T* ga = centered ? grad_avg.data<T>() : nullptr;
    py::gil_scoped_release release;
    cpu::active_for<T>().rmsprop_step(p, g, sq, b, ga, n, a, s);
    return 0;
  });
  return arrays.param.arr;
}

py::object adam_step(py::handle param_obj, py::handle grad_obj, py::handle m_obj, py::handle v_obj,
                     py::handle step_obj, double lr, double beta1, double beta2, double eps, double weight_decay,
                     bool decoupled, double l1, py::handle segments_obj) {
  const char* fn = "adam_step";
  OptimArrays arrays(fn, param_obj);
  FloatArray grad = arrays.add(grad_obj, "grad", false);
  FloatArray exp_avg = arrays.add(m_obj, "exp_avg", true);
  FloatArray exp_avg_sq = arrays.add(v_obj, "exp_avg_sq", true);
  const int64_t step = step_arg(step_obj, fn);
  nonneg_arg(lr, fn, "lr");
  prob_arg(beta1, fn, "beta1");
  prob_arg(beta2, fn, "beta2");
  nonneg_arg(eps, fn, "eps");
  nonneg_arg(weight_decay, fn, "weight_decay");
  nonneg_arg(l1, fn, "l1");
  const SegmentTable seg = segments_arg(segments_obj, fn, arrays.param.size);
  const int64_t n = arrays.param.size;
  dispatch(arrays.param.dtype, [&](auto zero) {
    using T = decltype(zero);
    const cpu::AdamArgs a{step, lr, beta1, beta2, eps, weight_decay, l1, decoupled};
    const cpu::Segments s = seg.view();
    T* p = arrays.param.data<T>();
    const T* g = grad.data<T>();
    T* m = exp_avg.data<T>();
    T* v = exp_avg_sq.data<T>();
    py::gil_scoped_release release;
    cpu::active_for<T>().adam_step(p, g, m, v, n, a, s);
    return 0;
  });
  return arrays.param.arr;
}

// Global-norm clipping in place; returns the norm before clipping as a Python float.
double clip_grad_norm(py::handle grad_obj, double max_norm, double eps) {
  const char* fn = "clip_grad_norm";
  FloatArray grad = float_arg(grad_obj, fn, "grad", /*writeable=*/true);
  if (!(max_norm > 0.0) || !std::isfinite(max_norm))
    value_error(std::string(fn) + ": max_norm must be a finite number > 0, got " + py::str(py::float_(max_norm)).cast<std::string>());
  nonneg_arg(eps, fn, "eps");
  const int64_t n = grad.size;
  return dispatch(grad.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* g = grad.data<T>();
    py::gil_scoped_release release;
    return cpu::active_for<T>().clip_grad_norm(g, n, max_norm, eps);
  });
}

}  // namespace

// Every argument is required here: the defaults live in fastmlp.kernels (one place for each
// fact), which passes them all. Optional arrays are passed as None.
void register_optim(py::module_& m) {
  m.def("sgd_step", &sgd_step, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer").none(true),
        py::kw_only(), py::arg("step"), py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
        py::arg("nesterov"), py::arg("weight_decay"), py::arg("l1"), py::arg("segments").none(true));
  m.def("adagrad_step", &adagrad_step, py::arg("param"), py::arg("grad"), py::arg("state_sum"), py::kw_only(),
        py::arg("step"), py::arg("lr"), py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("l1"),
        py::arg("segments").none(true));
  m.def("rmsprop_step", &rmsprop_step, py::arg("param"), py::arg("grad"), py::arg("square_avg"), py::kw_only(),
        py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
        py::arg("centered"), py::arg("momentum_buffer").none(true), py::arg("grad_avg").none(true), py::arg("l1"),
        py::arg("segments").none(true));
  m.def("adam_step", &adam_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::kw_only(), py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("l1"), py::arg("segments").none(true));
  m.def("clip_grad_norm", &clip_grad_norm, py::arg("grad"), py::arg("max_norm"), py::kw_only(), py::arg("eps"));
}

}  // namespace bind
}  // namespace fastmlp
