// The submodule fastmlp._core.cuda (csrc/cuda/INTERFACE.md): device pointers and streams arrive as
// Python ints, shapes and dtypes are the Python side's to validate; here only the cheap checks
// (sizes, null pointers, probabilities, names), then the launch without the GIL. Compiled by the
// host compiler: it sees the CUDA backend only through cuda/api.h.
#include <Python.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "cuda/api.h"
#include "cuda/dlpack.h"

namespace fastmlp {
namespace bind {

namespace {

namespace cu = fastmlp::cuda;
using cu::Act;
using cu::NoiseKind;
using Ptr = std::uintptr_t;

cu::Stream stream_arg(Ptr s) { return reinterpret_cast<cu::Stream>(s); }
template <class T>
T* ptr(Ptr p) {
  return reinterpret_cast<T*>(p);
}

std::string pre(const char* fn) { return std::string(fn) + ": "; }

int64_t size_arg(int64_t n, const char* fn, const char* name) {
  if (n < 0) value_error(pre(fn) + name + " must be >= 0, got " + std::to_string(n));
  return n;
}

// A pointer that is read or written for `count` elements must not be 0.
void require_ptr(Ptr p, int64_t count, const char* fn, const char* name) {
  if (p == 0 && count > 0)
    value_error(pre(fn) + name + " is a null pointer but " + std::to_string(count) + " elements are accessed");
}

int64_t checked_product(int64_t a, int64_t b, const char* fn) {
  if (a > 0 && b > INT64_MAX / a) value_error(pre(fn) + "the element count overflows int64");
  return a * b;
}

cu::RandomStream random_stream(py::handle seed, py::handle offset, Ptr step_ptr, py::handle n_streams,
                               const char* fn) {
  return cu::RandomStream{seed_arg(seed, fn, "seed"), seed_arg(offset, fn, "offset"),
                          ptr<const int64_t>(step_ptr), seed_arg(n_streams, fn, "n_streams")};
}

cu::DeviceSegments segments_arg(Ptr bounds, Ptr values, int64_t count, const char* fn) {
  size_arg(count, fn, "seg_count");
  require_ptr(bounds, count, fn, "seg_bounds");
  require_ptr(values, count, fn, "seg_values");
  return cu::DeviceSegments{ptr<const int64_t>(bounds), ptr<const double>(values), count};
}

// The 1-based host step, used only when step_ptr is 0.
void step_arg(int64_t step, Ptr step_ptr, const char* fn) {
  if (step_ptr == 0 && step < 1)
    value_error(pre(fn) + "step must be >= 1 (the 1-based step count), got " + std::to_string(step));
}

// ---- owning handles ---------------------------------------------------------------------------

struct DeviceBuffer {
  void* data = nullptr;
  int64_t nbytes = 0;
  int device = 0;
  ~DeviceBuffer() { cu::device_free(data, device); }
};

struct PinnedBuffer {
  void* data = nullptr;
  int64_t nbytes = 0;
  ~PinnedBuffer() { cu::pinned_free(data); }
};

struct Graph {
  cu::GraphExec* exec = nullptr;
  ~Graph() { cu::graph_destroy(exec); }
};

// ---- DLPack -----------------------------------------------------------------------------------

constexpr const char* kDltensorName = "dltensor";

struct DlpackContext {
  PyObject* owner;  // a strong reference, released by the deleter
  std::vector<int64_t> shape;
  DLManagedTensor tensor;
};

void dlpack_deleter(DLManagedTensor* self) {
  auto* ctx = static_cast<DlpackContext*>(self->manager_ctx);
  // The consumer may free its tensor from any thread, with or without the GIL.
  if (Py_IsInitialized()) {
    const PyGILState_STATE state = PyGILState_Ensure();
    Py_XDECREF(ctx->owner);
    PyGILState_Release(state);
  }
  delete ctx;
}

// Runs when the capsule dies. A consumer renames the capsule ("used_dltensor") when it takes the
// tensor and then owns the deleter call; only a capsule still named "dltensor" is ours to delete.
void dlpack_capsule_destructor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, kDltensorName)) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);  // a destructor may run while an exception is set
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kDltensorName));
  if (managed && managed->deleter) managed->deleter(managed);
  PyErr_Restore(type, value, traceback);
}

DLDataType dlpack_dtype(const std::string& name) {
  if (name == "float32") return DLDataType{kDLFloat, 32, 1};
  if (name == "int64") return DLDataType{kDLInt, 64, 1};
  if (name == "int32") return DLDataType{kDLInt, 32, 1};
  if (name == "uint8") return DLDataType{kDLUInt, 8, 1};
  value_error("to_dlpack: dtype must be one of 'float32', 'int64', 'int32', 'uint8'; got '" + name + "'");
}

py::object to_dlpack(py::object owner, Ptr data, py::tuple shape, int device, const std::string& dtype) {
  const DLDataType dl_dtype = dlpack_dtype(dtype);
  if (device < 0) value_error("to_dlpack: device must be >= 0, got " + std::to_string(device));
  auto ctx = std::make_unique<DlpackContext>();
  for (py::handle dim : shape) {
    const int64_t d = py::cast<int64_t>(dim);
    if (d < 0) value_error("to_dlpack: shape must have dimensions >= 0, got " + py::str(shape).cast<std::string>());
    ctx->shape.push_back(d);
  }
  DLTensor& t = ctx->tensor.dl_tensor;
  t.data = ptr<void>(data);
  t.device = DLDevice{kDLCUDA, device};
  t.ndim = static_cast<int32_t>(ctx->shape.size());
  t.dtype = dl_dtype;
  t.shape = ctx->shape.empty() ? nullptr : ctx->shape.data();
  t.strides = nullptr;  // C-contiguous
  t.byte_offset = 0;
  ctx->tensor.manager_ctx = ctx.get();
  ctx->tensor.deleter = dlpack_deleter;
  ctx->owner = owner.release().ptr();  // the reference now belongs to ctx
  DLManagedTensor* managed = &ctx->tensor;
  PyObject* capsule = PyCapsule_New(managed, kDltensorName, dlpack_capsule_destructor);
  if (!capsule) {
    dlpack_deleter(&ctx.release()->tensor);
    throw py::error_already_set();
  }
  ctx.release();  // owned by the capsule (or its consumer) from here on
  return py::reinterpret_steal<py::object>(capsule);
}

// ---- registration helpers ---------------------------------------------------------------------

Act act_arg(const std::string& name, const char* fn) { return activation_arg(name, fn, "activation"); }

void register_runtime(py::module_& m) {
  m.def("device_count", [] { return cu::device_count(); });
  m.def("runtime_version", [] { return cu::runtime_version(); });
  m.def("driver_version", [] { return cu::driver_version(); });
  m.def("get_device", [] { return cu::get_device(); });
  m.def("set_device", [](int d) { cu::set_device(d); }, py::arg("d"));
  m.def("device_name", [](int d) { return cu::device_properties(d).name; }, py::arg("d"));
  m.def("device_properties", [](int d) {
    const cu::DeviceProperties p = cu::device_properties(d);
    py::dict out;
    out["name"] = p.name;
    out["major"] = p.major;
    out["minor"] = p.minor;
    out["multiprocessors"] = p.multiprocessors;
    out["total_memory"] = p.total_memory;
    out["memory_clock_khz"] = p.memory_clock_khz;
    out["memory_bus_width"] = p.memory_bus_width;
    return out;
  }, py::arg("d"));
  m.def("synchronize", [](int d) {
    py::gil_scoped_release release;
    cu::synchronize(d);
  }, py::arg("d"));
  m.def("pointer_device", [](Ptr p) { return cu::pointer_device(ptr<const void>(p)); }, py::arg("ptr"));

  py::class_<DeviceBuffer>(m, "Buffer", "Owning cudaMalloc allocation; freed when collected.")
      .def(py::init([](int64_t nbytes, int device) {
             size_arg(nbytes, "Buffer", "nbytes");
             auto b = std::make_unique<DeviceBuffer>();
             {
               py::gil_scoped_release release;
               b->data = cu::device_alloc(static_cast<std::size_t>(nbytes), device);
             }
             b->nbytes = nbytes;
             b->device = device;
             return b;
           }),
           py::arg("nbytes"), py::arg("device"))
      .def_property_readonly("ptr", [](const DeviceBuffer& b) { return reinterpret_cast<Ptr>(b.data); })
      .def_property_readonly("nbytes", [](const DeviceBuffer& b) { return b.nbytes; })
      .def_property_readonly("device", [](const DeviceBuffer& b) { return b.device; });

  py::class_<PinnedBuffer>(m, "PinnedBuffer", "Owning cudaHostAlloc (page-locked) allocation; freed when collected.")
      .def(py::init([](int64_t nbytes) {
             size_arg(nbytes, "PinnedBuffer", "nbytes");
             auto b = std::make_unique<PinnedBuffer>();
             {
               py::gil_scoped_release release;
               b->data = cu::pinned_alloc(static_cast<std::size_t>(nbytes));
             }
             b->nbytes = nbytes;
             return b;
           }),
           py::arg("nbytes"))
      .def_property_readonly("ptr", [](const PinnedBuffer& b) { return reinterpret_cast<Ptr>(b.data); })
      .def_property_readonly("nbytes", [](const PinnedBuffer& b) { return b.nbytes; });

  m.def("memcpy", [](Ptr dst, Ptr src, int64_t nbytes, Ptr stream) {
    size_arg(nbytes, "memcpy", "nbytes");
    require_ptr(dst, nbytes, "memcpy", "dst");
    require_ptr(src, nbytes, "memcpy", "src");
    py::gil_scoped_release release;
    cu::memcpy_sync(ptr<void>(dst), ptr<const void>(src), static_cast<std::size_t>(nbytes), stream_arg(stream));
  }, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("stream"));
  m.def("memcpy_async", [](Ptr dst, Ptr src, int64_t nbytes, Ptr stream) {
    size_arg(nbytes, "memcpy_async", "nbytes");
    require_ptr(dst, nbytes, "memcpy_async", "dst");
    require_ptr(src, nbytes, "memcpy_async", "src");
    py::gil_scoped_release release;
    cu::memcpy_async(ptr<void>(dst), ptr<const void>(src), static_cast<std::size_t>(nbytes), stream_arg(stream));
  }, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("stream"));
  m.def("memset", [](Ptr p, int byte, int64_t nbytes, Ptr stream) {
    size_arg(nbytes, "memset", "nbytes");
    require_ptr(p, nbytes, "memset", "ptr");
    if (byte < 0 || byte > 255) value_error("memset: byte must be in [0, 255], got " + std::to_string(byte));
    py::gil_scoped_release release;
    cu::memset_async(ptr<void>(p), byte, static_cast<std::size_t>(nbytes), stream_arg(stream));
  }, py::arg("ptr"), py::arg("byte"), py::arg("nbytes"), py::arg("stream"));

  m.def("stream_create", [] {
    py::gil_scoped_release release;  // the driver may wait for other threads' launches
    return reinterpret_cast<Ptr>(cu::stream_create());
  });
  m.def("stream_destroy", [](Ptr s) {
    py::gil_scoped_release release;
    cu::stream_destroy(stream_arg(s));
  }, py::arg("s"));
  m.def("stream_synchronize", [](Ptr s) {
    py::gil_scoped_release release;
    cu::stream_synchronize(stream_arg(s));
  }, py::arg("s"));
  m.def("stream_is_capturing", [](Ptr s) { return cu::stream_is_capturing(stream_arg(s)); }, py::arg("s"));
  m.def("event_create", [] { return reinterpret_cast<Ptr>(cu::event_create()); });
  m.def("event_destroy", [](Ptr e) {
    if (e == 0) value_error("event_destroy: the event handle is 0");
    cu::event_destroy(reinterpret_cast<cu::Event>(e));
  }, py::arg("event"));
  m.def("event_record", [](Ptr e, Ptr s) {
    if (e == 0) value_error("event_record: the event handle is 0");
    cu::event_record(reinterpret_cast<cu::Event>(e), stream_arg(s));
  }, py::arg("event"), py::arg("stream"));
  m.def("stream_wait_event", [](Ptr s, Ptr e) {
    if (e == 0) value_error("stream_wait_event: the event handle is 0");
    cu::stream_wait_event(stream_arg(s), reinterpret_cast<cu::Event>(e));
  }, py::arg("stream"), py::arg("event"));

  py::class_<Graph>(m, "Graph", "An instantiated CUDA graph from capture_begin/capture_end.")
      .def("replay", [](Graph& g, Ptr stream) {
        py::gil_scoped_release release;
        cu::graph_replay(g.exec, stream_arg(stream));
      }, py::arg("stream"));
  m.def("capture_begin", [](Ptr stream) {
    py::gil_scoped_release release;
    cu::capture_begin(stream_arg(stream));
  }, py::arg("stream"));
  m.def("capture_end", [](Ptr stream) {
    auto g = std::make_unique<Graph>();
    {
      py::gil_scoped_release release;
      g->exec = cu::capture_end(stream_arg(stream));
    }
    return g;
  }, py::arg("stream"));

  m.def("to_dlpack", &to_dlpack, py::arg("owner"), py::arg("ptr"), py::arg("shape"), py::arg("device"),
        py::arg("dtype"));
}

void register_kernels(py::module_& m) {
  m.def("gemm", [](Ptr a, Ptr b, Ptr out, Ptr bias, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
                   double alpha, double beta, const std::string& activation, Ptr a_sums, Ptr relu_mask,
                   double mask_p, bool dropout, double drop_p, py::handle seed, py::handle offset, Ptr step_ptr,
                   py::handle n_streams, Ptr stream) {
    const char* fn = "gemm";
    size_arg(M, fn, "M");
    size_arg(N, fn, "N");
    size_arg(K, fn, "K");
    require_ptr(a, checked_product(M, K, fn), fn, "a");
    require_ptr(b, checked_product(K, N, fn), fn, "b");
    require_ptr(out, checked_product(M, N, fn), fn, "out");
    finite_arg(alpha, fn, "alpha");
    finite_arg(beta, fn, "beta");
    const Act act = act_arg(activation, fn);
    if (a_sums && !trans_a) value_error(pre(fn) + "a_sums (the column sums of a) needs trans_a=True");
    prob_arg(mask_p, fn, "mask_p");
    cu::GemmFusion fusion;
    fusion.a_sums = ptr<float>(a_sums);
    fusion.relu_mask = ptr<const float>(relu_mask);
    fusion.mask_p = mask_p;
    if (dropout) {
      prob_arg(drop_p, fn, "drop_p");
      fusion.dropout = true;
      fusion.drop_p = drop_p;
      fusion.drop_rs = random_stream(seed, offset, step_ptr, n_streams, fn);
    }
    py::gil_scoped_release release;
    cu::gemm(ptr<const float>(a), ptr<const float>(b), ptr<float>(out), ptr<const float>(bias), M, N, K, trans_a,
             trans_b, static_cast<float>(alpha), static_cast<float>(beta), act, stream_arg(stream), fusion);
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("bias"), py::arg("M"), py::arg("N"), py::arg("K"),
     py::arg("trans_a"), py::arg("trans_b"), py::arg("alpha"), py::arg("beta"), py::arg("activation"),
     py::arg("a_sums"), py::arg("relu_mask"), py::arg("mask_p"), py::arg("dropout"), py::arg("drop_p"),
     py::arg("seed"), py::arg("offset"), py::arg("step_ptr"), py::arg("n_streams"), py::arg("stream"));

  m.def("activation", [](Ptr x, Ptr out, int64_t n, const std::string& activation, Ptr stream) {
    const char* fn = "activation";
    size_arg(n, fn, "n");
    require_ptr(x, n, fn, "x");
    require_ptr(out, n, fn, "out");
    const Act act = act_arg(activation, fn);
    py::gil_scoped_release release;
    cu::activation(ptr<const float>(x), ptr<float>(out), n, act, stream_arg(stream));
  }, py::arg("x"), py::arg("out"), py::arg("n"), py::arg("activation"), py::arg("stream"));
  m.def("activation_backward", [](Ptr grad_out, Ptr y, Ptr out, int64_t n, const std::string& activation,
                                  Ptr stream) {
    const char* fn = "activation_backward";
    size_arg(n, fn, "n");
    require_ptr(grad_out, n, fn, "grad_out");
    const Act act = act_arg(activation, fn);
    if (act != Act::identity) require_ptr(y, n, fn, "y");
    require_ptr(out, n, fn, "out");
    py::gil_scoped_release release;
    cu::activation_backward(ptr<const float>(grad_out), ptr<const float>(y), ptr<float>(out), n, act,
                            stream_arg(stream));
  }, py::arg("grad_out"), py::arg("y"), py::arg("out"), py::arg("n"), py::arg("activation"), py::arg("stream"));
  m.def("relu_dropout_backward", [](Ptr grad_out, Ptr y, Ptr out, int64_t n, double p, Ptr stream) {
    const char* fn = "relu_dropout_backward";
    size_arg(n, fn, "n");
    require_ptr(grad_out, n, fn, "grad_out");
    require_ptr(y, n, fn, "y");
    require_ptr(out, n, fn, "out");
    prob_arg(p, fn, "p");
    py::gil_scoped_release release;
    cu::relu_dropout_backward(ptr<const float>(grad_out), ptr<const float>(y), ptr<float>(out), n, p,
                              stream_arg(stream));
  }, py::arg("grad_out"), py::arg("y"), py::arg("out"), py::arg("n"), py::arg("p"), py::arg("stream"));
  m.def("bias_grad", [](Ptr grad, Ptr out, int64_t rows, int64_t cols, Ptr stream) {
    const char* fn = "bias_grad";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    require_ptr(grad, checked_product(rows, cols, fn), fn, "grad");
    require_ptr(out, cols, fn, "out");
    py::gil_scoped_release release;
    cu::bias_grad(ptr<const float>(grad), ptr<float>(out), rows, cols, stream_arg(stream));
  }, py::arg("grad"), py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("stream"));

  // ---- random streams ----
  m.def("dropout", [](Ptr x, Ptr out, int64_t n, double p, py::handle seed, py::handle offset, Ptr step_ptr,
                      py::handle n_streams, Ptr stream) {
    const char* fn = "dropout";
    size_arg(n, fn, "n");
    require_ptr(x, n, fn, "x");
    require_ptr(out, n, fn, "out");
    prob_arg(p, fn, "p");
    const cu::RandomStream rs = random_stream(seed, offset, step_ptr, n_streams, fn);
    py::gil_scoped_release release;
    cu::dropout(ptr<const float>(x), ptr<float>(out), n, p, rs, stream_arg(stream));
  }, py::arg("x"), py::arg("out"), py::arg("n"), py::arg("p"), py::arg("seed"), py::arg("offset"),
     py::arg("step_ptr"), py::arg("n_streams"), py::arg("stream"));
  m.def("dropout_mask", [](Ptr out, int64_t n, double p, py::handle seed, py::handle offset, Ptr step_ptr,
                           py::handle n_streams, Ptr stream) {
    const char* fn = "dropout_mask";
    size_arg(n, fn, "n");
    require_ptr(out, n, fn, "out_u8");
    prob_arg(p, fn, "p");
    const cu::RandomStream rs = random_stream(seed, offset, step_ptr, n_streams, fn);
    py::gil_scoped_release release;
    cu::dropout_mask(ptr<uint8_t>(out), n, p, rs, stream_arg(stream));
  }, py::arg("out_u8"), py::arg("n"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("step_ptr"),
     py::arg("n_streams"), py::arg("stream"));
  m.def("add_noise", [](Ptr x, Ptr out, int64_t n, const std::string& kind, double level, py::handle seed,
                        py::handle offset, Ptr step_ptr, py::handle n_streams, Ptr stream) {
    const char* fn = "add_noise";
    size_arg(n, fn, "n");
    require_ptr(x, n, fn, "x");
    require_ptr(out, n, fn, "out");
    NoiseKind noise;
    if (kind == "gaussian") {
      noise = NoiseKind::gaussian;
      nonneg_arg(level, fn, "level");
    } else if (kind == "mask") {
      noise = NoiseKind::mask;
      prob_arg(level, fn, "level");
    } else {
      value_error(pre(fn) + "kind must be 'gaussian' or 'mask', got '" + kind + "'");
    }
    const cu::RandomStream rs = random_stream(seed, offset, step_ptr, n_streams, fn);
    py::gil_scoped_release release;
    cu::add_noise(ptr<const float>(x), ptr<float>(out), n, noise, level, rs, stream_arg(stream));
  }, py::arg("x"), py::arg("out"), py::arg("n"), py::arg("kind"), py::arg("level"), py::arg("seed"),
     py::arg("offset"), py::arg("step_ptr"), py::arg("n_streams"), py::arg("stream"));
  m.def("random_uniform", [](Ptr out, int64_t n, double low, double high, py::handle seed, py::handle offset,
                             Ptr stream) {
    const char* fn = "random_uniform";
    size_arg(n, fn, "n");
    require_ptr(out, n, fn, "out");
    finite_arg(low, fn, "low");
    finite_arg(high, fn, "high");
    if (!(low <= high)) value_error(pre(fn) + "low must be <= high, got low=" + std::to_string(low) +
                                    " and high=" + std::to_string(high));
    const uint64_t s = seed_arg(seed, fn, "seed"), o = seed_arg(offset, fn, "offset");
    py::gil_scoped_release release;
    cu::random_uniform(ptr<float>(out), n, low, high, s, o, stream_arg(stream));
  }, py::arg("out"), py::arg("n"), py::arg("low"), py::arg("high"), py::arg("seed"), py::arg("offset"),
     py::arg("stream"));
  m.def("random_normal", [](Ptr out, int64_t n, double mean, double std, py::handle seed, py::handle offset,
                            Ptr stream) {
    const char* fn = "random_normal";
    size_arg(n, fn, "n");
    require_ptr(out, n, fn, "out");
    finite_arg(mean, fn, "mean");
    nonneg_arg(std, fn, "std");
    const uint64_t s = seed_arg(seed, fn, "seed"), o = seed_arg(offset, fn, "offset");
    py::gil_scoped_release release;
    cu::random_normal(ptr<float>(out), n, mean, std, s, o, stream_arg(stream));
  }, py::arg("out"), py::arg("n"), py::arg("mean"), py::arg("std"), py::arg("seed"), py::arg("offset"),
     py::arg("stream"));

  // ---- losses ----
  m.def("squared_error", [](Ptr pred, Ptr target, Ptr grad, Ptr loss, int64_t rows, int64_t cols, Ptr stream) {
    const char* fn = "squared_error";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    const int64_t n = checked_product(rows, cols, fn);
    require_ptr(pred, n, fn, "pred");
    require_ptr(target, n, fn, "target");
    require_ptr(grad, n, fn, "grad");
    require_ptr(loss, 1, fn, "loss");
    py::gil_scoped_release release;
    cu::squared_error(ptr<const float>(pred), ptr<const float>(target), ptr<float>(grad), ptr<float>(loss), rows,
                      cols, stream_arg(stream));
  }, py::arg("pred"), py::arg("target"), py::arg("grad"), py::arg("loss"), py::arg("rows"), py::arg("cols"),
     py::arg("stream"));
  m.def("softmax_cross_entropy", [](Ptr logits, Ptr labels, int labels_itemsize, Ptr grad, Ptr loss, int64_t rows,
                                    int64_t cols, Ptr stream) {
    const char* fn = "softmax_cross_entropy";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    if (labels_itemsize != 4 && labels_itemsize != 8)
      value_error(pre(fn) + "labels_itemsize must be 4 (int32) or 8 (int64), got " + std::to_string(labels_itemsize));
    if (rows > 0 && cols == 0) value_error(pre(fn) + "cols must be >= 1 when rows > 0 (no class to label)");
    const int64_t n = checked_product(rows, cols, fn);
    require_ptr(logits, n, fn, "logits");
    require_ptr(labels, rows, fn, "labels");
    require_ptr(grad, n, fn, "grad");
    require_ptr(loss, 1, fn, "loss");
    py::gil_scoped_release release;
    cu::softmax_cross_entropy(ptr<const float>(logits), ptr<const void>(labels), labels_itemsize, ptr<float>(grad),
                              ptr<float>(loss), rows, cols, stream_arg(stream));
  }, py::arg("logits"), py::arg("labels"), py::arg("labels_itemsize"), py::arg("grad"), py::arg("loss"),
     py::arg("rows"), py::arg("cols"), py::arg("stream"));
  m.def("sigmoid_cross_entropy", [](Ptr logits, Ptr targets, Ptr grad, Ptr loss, int64_t rows, int64_t cols,
                                    Ptr stream) {
    const char* fn = "sigmoid_cross_entropy";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    const int64_t n = checked_product(rows, cols, fn);
    require_ptr(logits, n, fn, "logits");
    require_ptr(targets, n, fn, "targets");
    require_ptr(grad, n, fn, "grad");
    require_ptr(loss, 1, fn, "loss");
    py::gil_scoped_release release;
    cu::sigmoid_cross_entropy(ptr<const float>(logits), ptr<const float>(targets), ptr<float>(grad),
                              ptr<float>(loss), rows, cols, stream_arg(stream));
  }, py::arg("logits"), py::arg("targets"), py::arg("grad"), py::arg("loss"), py::arg("rows"), py::arg("cols"),
     py::arg("stream"));

  m.def("weighted_loss", [](const std::string& kind, Ptr logits, Ptr target, int labels_itemsize, Ptr weights,
                            Ptr total, Ptr grad, Ptr loss, int64_t rows, int64_t cols, Ptr stream) {
    const char* fn = "weighted_loss";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    cu::LossKind k;
    if (kind == "squared") k = cu::LossKind::squared;
    else if (kind == "cross_entropy") k = cu::LossKind::softmax_cross_entropy;
    else if (kind == "binary_cross_entropy") k = cu::LossKind::sigmoid_cross_entropy;
    else value_error(pre(fn) + "kind must be 'squared', 'cross_entropy' or 'binary_cross_entropy', got '" + kind + "'");
    if (k == cu::LossKind::softmax_cross_entropy) {
      if (labels_itemsize != 4 && labels_itemsize != 8)
        value_error(pre(fn) + "labels_itemsize must be 4 (int32) or 8 (int64), got " + std::to_string(labels_itemsize));
      if (rows > 0 && cols == 0) value_error(pre(fn) + "cols must be >= 1 when rows > 0 (no class to label)");
    }
    const int64_t n = checked_product(rows, cols, fn);
    require_ptr(logits, n, fn, "logits");
    require_ptr(target, k == cu::LossKind::softmax_cross_entropy ? rows : n, fn, "target");
    require_ptr(weights, rows, fn, "weights");
    require_ptr(total, 1, fn, "total");
    require_ptr(grad, n, fn, "grad");
    require_ptr(loss, 1, fn, "loss");
    py::gil_scoped_release release;
    cu::weighted_loss(k, ptr<const float>(logits), ptr<const void>(target), labels_itemsize, ptr<const double>(weights),
                      ptr<double>(total), ptr<float>(grad), ptr<float>(loss), rows, cols, stream_arg(stream));
  }, py::arg("kind"), py::arg("logits"), py::arg("target"), py::arg("labels_itemsize"), py::arg("weights"),
     py::arg("total"), py::arg("grad"), py::arg("loss"), py::arg("rows"), py::arg("cols"), py::arg("stream"));

  // ---- batch norm ----
  m.def("batch_norm", [](Ptr x, Ptr gamma, Ptr beta, Ptr running_mean, Ptr running_var, Ptr out, Ptr save_mean,
                         Ptr save_invstd, int64_t rows, int64_t cols, bool training, double momentum, double eps,
                         const std::string& activation, Ptr stream) {
    const char* fn = "batch_norm";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    if (training && rows < 2)
      value_error(pre(fn) + "a training batch needs at least 2 rows (as torch.nn.BatchNorm1d), got " +
                  std::to_string(rows));
    if (!(momentum >= 0.0 && momentum <= 1.0))
      value_error(pre(fn) + "momentum must satisfy 0 <= momentum <= 1, got " + std::to_string(momentum));
    if (!(eps > 0.0) || !std::isfinite(eps)) value_error(pre(fn) + "eps must be > 0, got " + std::to_string(eps));
    const int64_t n = checked_product(rows, cols, fn);
    require_ptr(x, n, fn, "x");
    require_ptr(out, n, fn, "out");
    for (auto [p, name] : {std::pair<Ptr, const char*>{gamma, "gamma"}, {beta, "beta"}, {running_mean, "running_mean"},
                           {running_var, "running_var"}, {save_mean, "save_mean"}, {save_invstd, "save_invstd"}})
      require_ptr(p, cols, fn, name);
    const Act act = act_arg(activation, fn);
    py::gil_scoped_release release;
    cu::batch_norm(ptr<const float>(x), ptr<const float>(gamma), ptr<const float>(beta), ptr<float>(running_mean),
                   ptr<float>(running_var), ptr<float>(out), ptr<float>(save_mean), ptr<float>(save_invstd), rows,
                   cols, training, momentum, eps, act, stream_arg(stream));
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
     py::arg("out"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("rows"), py::arg("cols"),
     py::arg("training"), py::arg("momentum"), py::arg("eps"), py::arg("activation"), py::arg("stream"));
  m.def("batch_norm_backward", [](Ptr grad_out, Ptr x, Ptr gamma, Ptr save_mean, Ptr save_invstd, Ptr y, Ptr dx,
                                  Ptr dgamma, Ptr dbeta, int64_t rows, int64_t cols, const std::string& activation,
                                  Ptr stream) {
    const char* fn = "batch_norm_backward";
    size_arg(rows, fn, "rows");
    size_arg(cols, fn, "cols");
    const int64_t n = checked_product(rows, cols, fn);
    const Act act = act_arg(activation, fn);
    require_ptr(grad_out, n, fn, "grad_out");
    require_ptr(x, n, fn, "x");
    require_ptr(dx, n, fn, "dx");
    if (act != Act::identity && y == 0 && n > 0)
      value_error(pre(fn) + "activation='" + activation + "' needs y, the forward output (y is a null pointer)");
    for (auto [p, name] : {std::pair<Ptr, const char*>{gamma, "gamma"}, {save_mean, "save_mean"},
                           {save_invstd, "save_invstd"}, {dgamma, "dgamma"}, {dbeta, "dbeta"}})
      require_ptr(p, cols, fn, name);
    py::gil_scoped_release release;
    cu::batch_norm_backward(ptr<const float>(grad_out), ptr<const float>(x), ptr<const float>(gamma),
                            ptr<const float>(save_mean), ptr<const float>(save_invstd), ptr<const float>(y),
                            ptr<float>(dx), ptr<float>(dgamma), ptr<float>(dbeta), rows, cols, act,
                            stream_arg(stream));
  }, py::arg("grad_out"), py::arg("x"), py::arg("gamma"), py::arg("save_mean"), py::arg("save_invstd"),
     py::arg("y"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"), py::arg("rows"), py::arg("cols"),
     py::arg("activation"), py::arg("stream"));

  // ---- optimizers ----
  m.def("sgd_step", [](Ptr param, Ptr grad, Ptr momentum_buffer, int64_t n, int64_t step, double lr,
                       double momentum, double dampening, double weight_decay, double l1, bool nesterov,
                       Ptr seg_bounds, Ptr seg_values, int64_t seg_count, Ptr step_ptr, Ptr lr_ptr, Ptr stream) {
    const char* fn = "sgd_step";
    size_arg(n, fn, "n");
    require_ptr(param, n, fn, "param");
    require_ptr(grad, n, fn, "grad");
    if (momentum != 0.0) require_ptr(momentum_buffer, n, fn, "momentum_buffer");
    step_arg(step, step_ptr, fn);
    const cu::DeviceSegments seg = segments_arg(seg_bounds, seg_values, seg_count, fn);
    const cpu::SgdArgs args{step, lr, momentum, dampening, weight_decay, l1, nesterov};
    py::gil_scoped_release release;
    cu::sgd_step(ptr<float>(param), ptr<const float>(grad), ptr<float>(momentum_buffer), n, args, seg,
                 cu::DeviceSchedule{ptr<int64_t>(step_ptr), ptr<const float>(lr_ptr)}, stream_arg(stream));
  }, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("n"), py::arg("step"), py::arg("lr"),
     py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("l1"), py::arg("nesterov"),
     py::arg("seg_bounds"), py::arg("seg_values"), py::arg("seg_count"), py::arg("step_ptr"), py::arg("lr_ptr"),
     py::arg("stream"));
  m.def("adagrad_step", [](Ptr param, Ptr grad, Ptr state_sum, int64_t n, int64_t step, double lr, double lr_decay,
                           double weight_decay, double l1, double eps, Ptr seg_bounds, Ptr seg_values,
                           int64_t seg_count, Ptr step_ptr, Ptr lr_ptr, Ptr stream) {
    const char* fn = "adagrad_step";
    size_arg(n, fn, "n");
    require_ptr(param, n, fn, "param");
    require_ptr(grad, n, fn, "grad");
    require_ptr(state_sum, n, fn, "state_sum");
    step_arg(step, step_ptr, fn);
    const cu::DeviceSegments seg = segments_arg(seg_bounds, seg_values, seg_count, fn);
    const cpu::AdagradArgs args{step, lr, lr_decay, weight_decay, l1, eps};
    py::gil_scoped_release release;
    cu::adagrad_step(ptr<float>(param), ptr<const float>(grad), ptr<float>(state_sum), n, args, seg,
                     cu::DeviceSchedule{ptr<int64_t>(step_ptr), ptr<const float>(lr_ptr)}, stream_arg(stream));
  }, py::arg("param"), py::arg("grad"), py::arg("state_sum"), py::arg("n"), py::arg("step"), py::arg("lr"),
     py::arg("lr_decay"), py::arg("weight_decay"), py::arg("l1"), py::arg("eps"), py::arg("seg_bounds"),
     py::arg("seg_values"), py::arg("seg_count"), py::arg("step_ptr"), py::arg("lr_ptr"), py::arg("stream"));
  m.def("rmsprop_step", [](Ptr param, Ptr grad, Ptr square_avg, Ptr momentum_buffer, Ptr grad_avg, int64_t n,
                           double lr, double alpha, double eps, double weight_decay, double momentum, double l1,
                           bool centered, Ptr seg_bounds, Ptr seg_values, int64_t seg_count, Ptr step_ptr,
                           Ptr lr_ptr, Ptr stream) {
    const char* fn = "rmsprop_step";
    size_arg(n, fn, "n");
    require_ptr(param, n, fn, "param");
    require_ptr(grad, n, fn, "grad");
    require_ptr(square_avg, n, fn, "square_avg");
    if (momentum > 0.0) require_ptr(momentum_buffer, n, fn, "momentum_buffer");
    if (centered) require_ptr(grad_avg, n, fn, "grad_avg");
    const cu::DeviceSegments seg = segments_arg(seg_bounds, seg_values, seg_count, fn);
    const cpu::RmspropArgs args{lr, alpha, eps, weight_decay, momentum, l1, centered};
    py::gil_scoped_release release;
    cu::rmsprop_step(ptr<float>(param), ptr<const float>(grad), ptr<float>(square_avg), ptr<float>(momentum_buffer),
                     ptr<float>(grad_avg), n, args, seg,
                     cu::DeviceSchedule{ptr<int64_t>(step_ptr), ptr<const float>(lr_ptr)}, stream_arg(stream));
  }, py::arg("param"), py::arg("grad"), py::arg("square_avg"), py::arg("momentum_buffer"), py::arg("grad_avg"),
     py::arg("n"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
     py::arg("l1"), py::arg("centered"), py::arg("seg_bounds"), py::arg("seg_values"), py::arg("seg_count"),
     py::arg("step_ptr"), py::arg("lr_ptr"), py::arg("stream"));
  m.def("adam_step", [](Ptr param, Ptr grad, Ptr exp_avg, Ptr exp_avg_sq, int64_t n, int64_t step, double lr,
                        double beta1, double beta2, double eps, double weight_decay, double l1, bool decoupled,
                        Ptr seg_bounds, Ptr seg_values, int64_t seg_count, Ptr step_ptr, Ptr lr_ptr, Ptr stream) {
    const char* fn = "adam_step";
    size_arg(n, fn, "n");
    require_ptr(param, n, fn, "param");
    require_ptr(grad, n, fn, "grad");
    require_ptr(exp_avg, n, fn, "exp_avg");
    require_ptr(exp_avg_sq, n, fn, "exp_avg_sq");
    step_arg(step, step_ptr, fn);
    const cu::DeviceSegments seg = segments_arg(seg_bounds, seg_values, seg_count, fn);
    const cpu::AdamArgs args{step, lr, beta1, beta2, eps, weight_decay, l1, decoupled};
    py::gil_scoped_release release;
    cu::adam_step(ptr<float>(param), ptr<const float>(grad), ptr<float>(exp_avg), ptr<float>(exp_avg_sq), n, args,
                  seg, cu::DeviceSchedule{ptr<int64_t>(step_ptr), ptr<const float>(lr_ptr)}, stream_arg(stream));
  }, py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("n"), py::arg("step"),
     py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("l1"),
     py::arg("decoupled"), py::arg("seg_bounds"), py::arg("seg_values"), py::arg("seg_count"), py::arg("step_ptr"),
     py::arg("lr_ptr"), py::arg("stream"));

  m.def("clip_grad_norm", [](Ptr grad, int64_t n, double max_norm, double eps, Ptr norm_out, Ptr stream) {
    const char* fn = "clip_grad_norm";
    size_arg(n, fn, "n");
    require_ptr(grad, n, fn, "grad");
    if (!(max_norm > 0.0) || !std::isfinite(max_norm))
      value_error(pre(fn) + "max_norm must be a finite number > 0, got " + std::to_string(max_norm));
    if (!(eps >= 0.0) || !std::isfinite(eps))
      value_error(pre(fn) + "eps must be a finite number >= 0, got " + std::to_string(eps));
    py::gil_scoped_release release;
    cu::clip_grad_norm(ptr<float>(grad), n, max_norm, eps, ptr<float>(norm_out), stream_arg(stream));
  }, py::arg("grad"), py::arg("n"), py::arg("max_norm"), py::arg("eps"), py::arg("norm_out"), py::arg("stream"));

  // ---- data movement and probes ----
  m.def("gather_rows", [](Ptr src, Ptr idx, Ptr out, int64_t rows, int64_t row_bytes, Ptr stream) {
    const char* fn = "gather_rows";
    size_arg(rows, fn, "rows");
    size_arg(row_bytes, fn, "row_bytes");
    const int64_t n = row_bytes > 0 ? rows : 0;
    require_ptr(src, n, fn, "src");
    require_ptr(idx, n, fn, "idx");
    require_ptr(out, n, fn, "out");
    py::gil_scoped_release release;
    cu::gather_rows(ptr<const void>(src), ptr<const int64_t>(idx), ptr<void>(out), rows, row_bytes,
                    stream_arg(stream));
  }, py::arg("src"), py::arg("idx"), py::arg("out"), py::arg("rows"), py::arg("row_bytes"), py::arg("stream"));
  m.def("triad", [](Ptr a, Ptr b, Ptr c, double s, int64_t n, Ptr stream) {
    const char* fn = "triad";
    size_arg(n, fn, "n");
    require_ptr(a, n, fn, "a");
    require_ptr(b, n, fn, "b");
    require_ptr(c, n, fn, "c");
    py::gil_scoped_release release;
    cu::triad(ptr<float>(a), ptr<const float>(b), ptr<const float>(c), static_cast<float>(s), n, stream_arg(stream));
  }, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("s"), py::arg("n"), py::arg("stream"));
  m.def("copy", [](Ptr dst, Ptr src, int64_t n, Ptr stream) {
    const char* fn = "copy";
    size_arg(n, fn, "n");
    require_ptr(dst, n, fn, "dst");
    require_ptr(src, n, fn, "src");
    py::gil_scoped_release release;
    cu::copy(ptr<float>(dst), ptr<const float>(src), n, stream_arg(stream));
  }, py::arg("dst"), py::arg("src"), py::arg("n"), py::arg("stream"));
  m.def("scale", [](Ptr x, double s, int64_t n, Ptr stream) {
    const char* fn = "scale";
    size_arg(n, fn, "n");
    require_ptr(x, n, fn, "x");
    py::gil_scoped_release release;
    cu::scale(ptr<float>(x), static_cast<float>(s), n, stream_arg(stream));
  }, py::arg("x"), py::arg("s"), py::arg("n"), py::arg("stream"));
  m.def("is_finite", [](Ptr x, int64_t n, Ptr flag, Ptr stream) {
    const char* fn = "is_finite";
    size_arg(n, fn, "n");
    require_ptr(x, n, fn, "x");
    require_ptr(flag, n, fn, "flag");
    py::gil_scoped_release release;
    cu::is_finite(ptr<const float>(x), n, ptr<int32_t>(flag), stream_arg(stream));
  }, py::arg("x"), py::arg("n"), py::arg("flag"), py::arg("stream"));
}

}  // namespace

void register_cuda(py::module_& m) {
  py::module_ sub = m.def_submodule("cuda", "fastmlp's CUDA backend (private; see csrc/cuda/INTERFACE.md)");
  register_runtime(sub);
  register_kernels(sub);
}

}  // namespace bind
}  // namespace fastmlp
