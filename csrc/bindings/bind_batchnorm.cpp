// Bindings of batch_norm and batch_norm_backward (torch.nn.BatchNorm1d semantics, DESIGN.md):
// validate shapes, dtypes, the arrays written in place and the hyper-parameters, then run the
// kernel without the GIL.
#include "bindings/arrays.h"

namespace fastmlp {
namespace bind {

namespace {

// A per-feature vector of shape (features of x,), with the dtype of dtype_ref (the call's first
// array, which mixed-dtype messages name).
FloatArray feature_arg(py::handle obj, const FloatArray& dtype_ref, const FloatArray& x, const char* fn,
                       const char* name, bool writeable = false) {
  FloatArray a = float_arg(obj, fn, name, writeable);
  require_same_dtype(dtype_ref, a, fn);
  require_shape(a, {x.dim(1)}, fn, std::string("one value per feature of ") + x.name + " with shape " +
                                       shape_str(x.shape));
  return a;
}

py::tuple batch_norm(py::handle x_obj, py::handle gamma_obj, py::handle beta_obj, py::handle running_mean_obj,
                     py::handle running_var_obj, bool training, double momentum, double eps,
                     const std::string& activation, py::handle out_obj) {
  const char* fn = "batch_norm";
  FloatArray x = float_arg(x_obj, fn, "x");
  require_ndim(x, 2, fn);
  FloatArray gamma = feature_arg(gamma_obj, x, x, fn, "gamma");
  FloatArray beta = feature_arg(beta_obj, x, x, fn, "beta");
  FloatArray running_mean = feature_arg(running_mean_obj, x, x, fn, "running_mean", /*writeable=*/training);
  FloatArray running_var = feature_arg(running_var_obj, x, x, fn, "running_var", /*writeable=*/training);
  if (!(momentum >= 0.0 && momentum <= 1.0))
    value_error("batch_norm: momentum must satisfy 0 <= momentum <= 1, got " + std::to_string(momentum));
  if (!(std::isfinite(eps) && eps > 0.0))
    value_error("batch_norm: eps must be a finite number > 0, got " + std::to_string(eps));
  const cpu::Act act = activation_arg(activation, fn, "activation");
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (training && rows < 2)
    value_error("batch_norm: training needs at least 2 rows to estimate the batch variance, as in torch; x has shape " +
                shape_str(x.shape) + " (use training=False for single samples)");
  FloatArray out = out_arg(out_obj, fn, "out", x.dtype, x.shape);
  require_no_overlap(out, x, fn, /*allow_identical=*/true);
  for (const FloatArray* a : {&gamma, &beta, &running_mean, &running_var}) require_no_overlap(out, *a, fn, false);
  if (training) {
    // The running statistics are written in place: nothing else may share their memory.
    require_no_overlap(running_mean, running_var, fn, false);
    for (const FloatArray* a : {&x, &gamma, &beta}) {
      require_no_overlap(running_mean, *a, fn, false);
      require_no_overlap(running_var, *a, fn, false);
    }
  }
  FloatArray save_mean = new_float_array(x.dtype, {cols}, "save_mean");
  FloatArray save_invstd = new_float_array(x.dtype, {cols}, "save_invstd");
  dispatch(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* g = gamma.data<T>();
    const T* b = beta.data<T>();
    T* rm = running_mean.data<T>();
    T* rv = running_var.data<T>();
    T* o = out.data<T>();
    T* sm = save_mean.data<T>();
    T* si = save_invstd.data<T>();
    py::gil_scoped_release release;
    cpu::active_for<T>().batch_norm(xp, g, b, rm, rv, o, sm, si, rows, cols, training, momentum, eps, act);
    return 0;
  });
  return py::make_tuple(out.arr, save_mean.arr, save_invstd.arr);
}

py::tuple batch_norm_backward(py::handle grad_out_obj, py::handle x_obj, py::handle gamma_obj,
                              py::handle save_mean_obj, py::handle save_invstd_obj, const std::string& activation,
                              py::handle y_obj) {
  const char* fn = "batch_norm_backward";
  FloatArray grad_out = float_arg(grad_out_obj, fn, "grad_out");
  require_ndim(grad_out, 2, fn);
  FloatArray x = float_arg(x_obj, fn, "x");
  require_same_dtype(grad_out, x, fn);
  require_shape(x, grad_out.shape, fn, "the shape of grad_out");
  FloatArray gamma = feature_arg(gamma_obj, grad_out, x, fn, "gamma");
  FloatArray save_mean = feature_arg(save_mean_obj, grad_out, x, fn, "save_mean");
  FloatArray save_invstd = feature_arg(save_invstd_obj, grad_out, x, fn, "save_invstd");
  const cpu::Act act = activation_arg(activation, fn, "activation");
  FloatArray y;
  const bool has_y = !y_obj.is_none();
  if (act != cpu::Act::identity && !has_y)
    value_error("batch_norm_backward: activation='" + activation +
                "' needs y, the forward output of batch_norm, to differentiate the activation");
  if (has_y) {
    y = float_arg(y_obj, fn, "y");
    require_same_dtype(grad_out, y, fn);
    require_shape(y, grad_out.shape, fn, "the shape of grad_out");
  }
  const int64_t rows = x.dim(0), cols = x.dim(1);
  FloatArray dx = new_float_array(x.dtype, x.shape, "dx");
  FloatArray dgamma = new_float_array(x.dtype, {cols}, "dgamma");
  FloatArray dbeta = new_float_array(x.dtype, {cols}, "dbeta");
  dispatch(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* go = grad_out.data<T>();
    const T* xp = x.data<T>();
    const T* g = gamma.data<T>();
    const T* sm = save_mean.data<T>();
    const T* si = save_invstd.data<T>();
    const T* yp = act != cpu::Act::identity ? y.data<T>() : nullptr;
    T* dxp = dx.data<T>();
    T* dg = dgamma.data<T>();
    T* db = dbeta.data<T>();
    py::gil_scoped_release release;
    cpu::active_for<T>().batch_norm_backward(go, xp, g, sm, si, yp, dxp, dg, db, rows, cols, act);
    return 0;
  });
  return py::make_tuple(dx.arr, dgamma.arr, dbeta.arr);
}

}  // namespace

void register_batchnorm(py::module_& m) {
  m.def("batch_norm", &batch_norm, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"),
        py::arg("running_var"), py::kw_only(), py::arg("training"), py::arg("momentum") = 0.1, py::arg("eps") = 1e-5,
        py::arg("activation") = "identity", py::arg("out") = py::none());
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("grad_out"), py::arg("x"), py::arg("gamma"),
        py::arg("save_mean"), py::arg("save_invstd"), py::kw_only(), py::arg("activation") = "identity",
        py::arg("y") = py::none());
}

}  // namespace bind
}  // namespace fastmlp
