// Bindings of the elementwise kernels: activations, bias gradient, dropout, noise, random fills;
// and the Trainer's batch gather.
#include <cstring>
#include <utility>

#include "bindings/arrays.h"
#include "core/parallel.h"

namespace fastmlp {
namespace bind {

namespace {

// out for an elementwise op on x: same shape and dtype; may be x itself, never a partial overlap.
FloatArray elementwise_out(py::handle out_obj, const char* fn, const FloatArray& x) {
  FloatArray out = out_arg(out_obj, fn, "out", x.dtype, x.shape);
  require_no_overlap(out, x, fn, /*allow_identical=*/true);
  return out;
}

py::object activation(py::handle x_obj, const std::string& kind, py::handle out_obj) {
  const char* fn = "activation";
  FloatArray x = float_arg(x_obj, fn, "x");
  const cpu::Act act = activation_arg(kind, fn, "kind");
  FloatArray out = elementwise_out(out_obj, fn, x);
  dispatch(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().activation(x.data<T>(), out.data<T>(), x.size, act);
    return 0;
  });
  return out.arr;
}

// grad_out and the forward output y of a backward op: float arrays of one dtype and shape.
std::pair<FloatArray, FloatArray> grad_and_output(py::handle g_obj, py::handle y_obj, const char* fn) {
  FloatArray g = float_arg(g_obj, fn, "grad_out");
  FloatArray y = float_arg(y_obj, fn, "y");
  require_same_dtype(g, y, fn);
  require_shape(y, g.shape, fn, "the shape of grad_out");
  return {std::move(g), std::move(y)};
}

py::object activation_backward(py::handle g_obj, py::handle y_obj, const std::string& kind, py::handle out_obj) {
  const char* fn = "activation_backward";
  auto [g, y] = grad_and_output(g_obj, y_obj, fn);
  const cpu::Act act = activation_arg(kind, fn, "kind");
  FloatArray out = elementwise_out(out_obj, fn, g);
  require_no_overlap(out, y, fn, true);
  dispatch(g.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().activation_backward(g.data<T>(), y.data<T>(), out.data<T>(), g.size, act);
    return 0;
  });
  return out.arr;
}

py::object bias_grad(py::handle g_obj, py::handle out_obj) {
  const char* fn = "bias_grad";
  FloatArray g = float_arg(g_obj, fn, "grad");
  require_ndim(g, 2, fn);
  FloatArray out = out_arg(out_obj, fn, "out", g.dtype, {g.dim(1)});
  require_no_overlap(out, g, fn, false);
  dispatch(g.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().bias_grad(g.data<T>(), out.data<T>(), g.dim(0), g.dim(1));
    return 0;
  });
  return out.arr;
}

py::object dropout_impl(const char* fn, const char* x_name, py::handle x_obj, double p, py::handle seed_obj,
                        py::handle offset_obj, py::handle out_obj) {
  FloatArray x = float_arg(x_obj, fn, x_name);
  prob_arg(p, fn, "p");
  const uint64_t seed = seed_arg(seed_obj, fn, "seed");
  const uint64_t offset = seed_arg(offset_obj, fn, "offset");
  FloatArray out = elementwise_out(out_obj, fn, x);
  dispatch(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().dropout(x.data<T>(), out.data<T>(), x.size, p, seed, offset);
    return 0;
  });
  return out.arr;
}

// Private to fastmlp.nn (CPU models): the backward of Dense+ReLU -> Dropout without regenerating the
// mask. out may be grad_out.
py::object relu_dropout_backward(py::handle g_obj, py::handle y_obj, double p, py::handle out_obj) {
  const char* fn = "relu_dropout_backward";
  auto [g, y] = grad_and_output(g_obj, y_obj, fn);
  prob_arg(p, fn, "p");
  FloatArray out = elementwise_out(out_obj, fn, g);
  require_no_overlap(out, y, fn, true);
  dispatch(g.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().relu_dropout_backward(g.data<T>(), y.data<T>(), out.data<T>(), g.size, p);
    return 0;
  });
  return out.arr;
}

// Private to fastmlp.train: out[i] = src[idx[i]] over the first axis of C-contiguous arrays of one
// dtype (numpy.take(src, idx, axis=0, out=out)), rows copied in parallel without the GIL. A batch
// of random rows is bound by memory latency; two threads keep twice the misses in flight.
void gather_rows(py::handle src_obj, py::handle idx_obj, py::handle out_obj) {
  const char* fn = "gather_rows";
  py::array src = require_ndarray(src_obj, fn, "src");
  py::array idx = require_ndarray(idx_obj, fn, "idx");
  py::array out = require_ndarray(out_obj, fn, "out");
  if (src.ndim() < 1) value_error("gather_rows: src must have at least one axis");
  if (!(src.flags() & py::array::c_style) || !(out.flags() & py::array::c_style) ||
      !(idx.flags() & py::array::c_style))
    value_error("gather_rows: src, idx and out must be C-contiguous");
  if (idx.ndim() != 1 || idx.dtype().num() != py::dtype::of<int64_t>().num())
    type_error("gather_rows: idx must be a 1-D int64 array");
  if (!out.writeable()) value_error("gather_rows: out is read-only");
  if (!out.dtype().is(src.dtype())) type_error("gather_rows: out must have src's dtype");
  if (src.dtype().has_fields() || src.dtype().kind() == 'O' || src.dtype().kind() == 'V')
    type_error("gather_rows: src must hold plain numbers, not objects or records");
  const int64_t n = static_cast<int64_t>(idx.size()), rows = static_cast<int64_t>(src.shape(0));
  bool shape_ok = out.ndim() == src.ndim() && out.shape(0) == n;
  for (py::ssize_t d = 1; shape_ok && d < src.ndim(); ++d) shape_ok = out.shape(d) == src.shape(d);
  if (!shape_ok) value_error("gather_rows: out must have shape (len(idx),) + src.shape[1:]");
  const auto* src_b = static_cast<const char*>(src.data());
  auto* out_b = static_cast<char*>(out.mutable_data());
  const size_t row_bytes = rows > 0 ? static_cast<size_t>(src.nbytes()) / static_cast<size_t>(rows) : 0;
  if (n > 0 && out_b < src_b + src.nbytes() && src_b < out_b + out.nbytes())
    value_error("gather_rows: out overlaps src");
  const int64_t* ix = static_cast<const int64_t*>(idx.data());
  for (int64_t i = 0; i < n; ++i)
    if (ix[i] < 0 || ix[i] >= rows)
      throw py::index_error("gather_rows: index " + std::to_string(ix[i]) + " is out of bounds for " +
                            std::to_string(rows) + " rows");
  py::gil_scoped_release release;
  constexpr int64_t kRowsPerTask = 16;
  parallel_for_if(static_cast<size_t>(n) * row_bytes >= (size_t{1} << 16), ceil_div(n, kRowsPerTask), [&](int64_t t) {
    const int64_t end = min_i64(n, (t + 1) * kRowsPerTask);
    for (int64_t i = t * kRowsPerTask; i < end; ++i)
      std::memcpy(out_b + static_cast<size_t>(i) * row_bytes, src_b + static_cast<size_t>(ix[i]) * row_bytes, row_bytes);
  });
}

py::object dropout_mask(py::handle shape_obj, double p, py::handle seed_obj, py::handle offset_obj) {
  const char* fn = "dropout_mask";
  const std::vector<int64_t> shape = shape_arg(shape_obj, fn, "shape");
  prob_arg(p, fn, "p");
  const uint64_t seed = seed_arg(seed_obj, fn, "seed");
  const uint64_t offset = seed_arg(offset_obj, fn, "offset");
  require_allocatable(shape, sizeof(bool), fn, "mask");
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array_t<bool> mask(s);
  const int64_t n = static_cast<int64_t>(mask.size());
  uint8_t* data = reinterpret_cast<uint8_t*>(mask.mutable_data());
  {
    py::gil_scoped_release release;
    cpu::active().dropout_mask(data, n, p, seed, offset);
  }
  return std::move(mask);
}

py::object add_noise(py::handle x_obj, const std::string& kind, double level, py::handle seed_obj,
                     py::handle offset_obj, py::handle out_obj) {
  const char* fn = "add_noise";
  FloatArray x = float_arg(x_obj, fn, "x");
  cpu::NoiseKind k;
  if (kind == "gaussian") {
    k = cpu::NoiseKind::gaussian;
    nonneg_arg(level, fn, "level");
  } else if (kind == "mask") {
    k = cpu::NoiseKind::mask;
    prob_arg(level, fn, "level");
  } else {
    value_error("add_noise: kind must be 'gaussian' or 'mask', got '" + kind + "'");
  }
  const uint64_t seed = seed_arg(seed_obj, fn, "seed");
  const uint64_t offset = seed_arg(offset_obj, fn, "offset");
  FloatArray out = elementwise_out(out_obj, fn, x);
  dispatch(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().add_noise(x.data<T>(), out.data<T>(), x.size, k, level, seed, offset);
    return 0;
  });
  return out.arr;
}

// The array a random fill writes: `out` (its shape must equal `shape`) or a new one of `dtype`.
FloatArray fill_target(const char* fn, py::handle shape_obj, py::handle dtype_obj, py::handle out_obj) {
  const std::vector<int64_t> shape = shape_arg(shape_obj, fn, "shape");
  if (out_obj.is_none())
    return new_float_array(dtype_obj.is_none() ? DType::f32 : dtype_arg(dtype_obj, fn), shape, "out", fn);
  FloatArray out = float_arg(out_obj, fn, "out", true);
  if (!dtype_obj.is_none() && dtype_arg(dtype_obj, fn) != out.dtype)
    type_error(std::string(fn) + ": dtype is " + dtype_name(dtype_arg(dtype_obj, fn)) + " but out has dtype " +
               dtype_name(out.dtype));
  require_shape(out, shape, fn, "shape");
  return out;
}

py::object random_uniform(py::handle shape_obj, py::handle seed_obj, py::handle offset_obj, double low, double high,
                          py::handle dtype_obj, py::handle out_obj) {
  const char* fn = "random_uniform";
  finite_arg(low, fn, "low");
  finite_arg(high, fn, "high");
  if (!(low <= high)) value_error("random_uniform: low must be <= high, got low=" + std::to_string(low) +
                                  ", high=" + std::to_string(high));
  if (!std::isfinite(high - low)) value_error("random_uniform: high - low overflows");
  const uint64_t seed = seed_arg(seed_obj, fn, "seed");
  const uint64_t offset = seed_arg(offset_obj, fn, "offset");
  FloatArray out = fill_target(fn, shape_obj, dtype_obj, out_obj);
  if (out.dtype == DType::f32) {
    const double fmax = 3.4028234663852886e38;
    if (std::fabs(low) > fmax || std::fabs(high) > fmax || high - low > fmax)
      value_error("random_uniform: low=" + std::to_string(low) + ", high=" + std::to_string(high) +
                  " span more than float32 can represent; use dtype=float64 or a narrower range");
  }
  dispatch(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().random_uniform(out.data<T>(), out.size, low, high, seed, offset);
    return 0;
  });
  return out.arr;
}

py::object random_normal(py::handle shape_obj, py::handle seed_obj, py::handle offset_obj, double mean, double std,
                         py::handle dtype_obj, py::handle out_obj) {
  const char* fn = "random_normal";
  finite_arg(mean, fn, "mean");
  nonneg_arg(std, fn, "std");
  const uint64_t seed = seed_arg(seed_obj, fn, "seed");
  const uint64_t offset = seed_arg(offset_obj, fn, "offset");
  FloatArray out = fill_target(fn, shape_obj, dtype_obj, out_obj);
  dispatch(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    cpu::active_for<T>().random_normal(out.data<T>(), out.size, mean, std, seed, offset);
    return 0;
  });
  return out.arr;
}

}  // namespace

void register_elementwise(py::module_& m) {
  m.def("activation", &activation, py::arg("x"), py::arg("kind"), py::arg("out") = py::none());
  m.def("activation_backward", &activation_backward, py::arg("grad_out"), py::arg("y"), py::arg("kind"),
        py::arg("out") = py::none());
  m.def("bias_grad", &bias_grad, py::arg("grad"), py::arg("out") = py::none());
  m.def(
      "dropout",
      [](py::handle x, double p, py::handle seed, py::handle offset, py::handle out) {
        return dropout_impl("dropout", "x", x, p, seed, offset, out);
      },
      py::arg("x"), py::arg("p"), py::kw_only(), py::arg("seed"), py::arg("offset"), py::arg("out") = py::none());
  m.def(
      "dropout_backward",
      [](py::handle g, double p, py::handle seed, py::handle offset, py::handle out) {
        return dropout_impl("dropout_backward", "grad_out", g, p, seed, offset, out);
      },
      py::arg("grad_out"), py::arg("p"), py::kw_only(), py::arg("seed"), py::arg("offset"),
      py::arg("out") = py::none());
  m.def("_gather_rows", &gather_rows, py::arg("src"), py::arg("idx"), py::arg("out"));
  m.def("_relu_dropout_backward", &relu_dropout_backward, py::arg("grad_out"), py::arg("y"), py::arg("p"),
        py::arg("out"));
  m.def("dropout_mask", &dropout_mask, py::arg("shape"), py::arg("p"), py::kw_only(), py::arg("seed"),
        py::arg("offset"));
  m.def("add_noise", &add_noise, py::arg("x"), py::arg("kind"), py::arg("level"), py::kw_only(), py::arg("seed"),
        py::arg("offset"), py::arg("out") = py::none());
  m.def("random_uniform", &random_uniform, py::arg("shape"), py::kw_only(), py::arg("seed"), py::arg("offset"),
        py::arg("low") = 0.0, py::arg("high") = 1.0, py::arg("dtype") = py::none(), py::arg("out") = py::none());
  m.def("random_normal", &random_normal, py::arg("shape"), py::kw_only(), py::arg("seed"), py::arg("offset"),
        py::arg("mean") = 0.0, py::arg("std") = 1.0, py::arg("dtype") = py::none(), py::arg("out") = py::none());
}

}  // namespace bind
}  // namespace fastmlp
