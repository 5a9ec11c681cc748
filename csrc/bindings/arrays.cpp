// Argument validation helpers (see arrays.h).
#include "bindings/arrays.h"

#include <unistd.h>

#include <cstdio>
#include <limits>
#include <sstream>

namespace fastmlp {
namespace bind {

void value_error(const std::string& msg) { throw py::value_error(msg); }
void type_error(const std::string& msg) { throw py::type_error(msg); }
void memory_error(const std::string& msg) {
  PyErr_SetString(PyExc_MemoryError, msg.c_str());
  throw py::error_already_set();
}

const char* dtype_name(DType d) { return d == DType::f64 ? "float64" : "float32"; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s << ", ";
    s << shape[i];
  }
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

namespace {
std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s(static_cast<size_t>(a.ndim()));
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<int64_t>(a.shape(static_cast<py::ssize_t>(i)));
  return s;
}
std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }
std::string prefix(const char* fn) { return std::string(fn) + ": "; }
}  // namespace

std::string describe(const py::array& a) { return "shape " + shape_str(shape_of(a)) + " and dtype " + dtype_str(a); }

py::array require_ndarray(py::handle h, const char* fn, const char* name) {
  if (h.is_none()) type_error(prefix(fn) + name + " must be a numpy.ndarray, got None");
  if (!py::isinstance<py::array>(h)) {
    const std::string type = py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>();
    if (py::hasattr(h, "__cuda_array_interface__"))
      type_error(prefix(fn) + name + " is a device array (" + type +
                 "); this build of fastmlp runs on the CPU only, pass a numpy.ndarray");
    type_error(prefix(fn) + name + " must be a numpy.ndarray, got " + type);
  }
  return py::reinterpret_borrow<py::array>(h);
}

namespace {
bool native_order(char byteorder) {
  if (byteorder == '=' || byteorder == '|') return true;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return byteorder == '>';
#else
  return byteorder == '<';
#endif
}
}  // namespace

FloatArray float_arg(py::handle h, const char* fn, const char* name, bool writeable) {
  py::array a = require_ndarray(h, fn, name);
  FloatArray f;
  const py::dtype dt = a.dtype();
  const int num = dt.num();
  if (num == py::detail::npy_api::NPY_FLOAT_) f.dtype = DType::f32;
  else if (num == py::detail::npy_api::NPY_DOUBLE_) f.dtype = DType::f64;
  else type_error(prefix(fn) + name + " has dtype " + dtype_str(a) + "; expected float32 or float64");
  if (!native_order(dt.byteorder()))
    type_error(prefix(fn) + name + " has non-native byte order (" + dtype_str(a) + "); use native float32 or float64");
  if (!(a.flags() & py::array::c_style))
    value_error(prefix(fn) + name + " with " + describe(a) +
                " is not C-contiguous; pass numpy.ascontiguousarray(" + name + ")");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))  // e.g. a view at an odd byte offset
    value_error(prefix(fn) + name + " with " + describe(a) + " is not aligned to its dtype; pass " + name + ".copy()");
  if (writeable && !a.writeable()) value_error(prefix(fn) + name + " is read-only; it is written in place");
  f.arr = a;
  f.shape = shape_of(a);
  f.size = static_cast<int64_t>(a.size());
  f.name = name;
  return f;
}

void require_same_dtype(const FloatArray& ref, const FloatArray& other, const char* fn) {
  if (ref.dtype != other.dtype)
    type_error(prefix(fn) + other.name + " has dtype " + dtype_name(other.dtype) + " but " + ref.name + " has dtype " +
               dtype_name(ref.dtype) + "; all float arguments must share one dtype");
}

void require_ndim(const FloatArray& a, size_t ndim, const char* fn) {
  if (a.ndim() != ndim)
    value_error(prefix(fn) + a.name + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a.shape));
}

void require_shape(const FloatArray& a, const std::vector<int64_t>& expected, const char* fn, const std::string& why) {
  if (a.shape != expected)
    value_error(prefix(fn) + a.name + " has shape " + shape_str(a.shape) + " but " + shape_str(expected) +
                " is required" + (why.empty() ? "" : " (" + why + ")"));
}

void require_no_overlap(const FloatArray& a, const FloatArray& b, const char* fn, bool allow_identical) {
  if (a.size == 0 || b.size == 0) return;
  const char* a0 = static_cast<const char*>(a.begin());
  const char* b0 = static_cast<const char*>(b.begin());
  const char* a1 = a0 + a.nbytes();
  const char* b1 = b0 + b.nbytes();
  if (a0 < b1 && b0 < a1) {
    if (allow_identical && a0 == b0 && a.nbytes() == b.nbytes()) return;
    value_error(prefix(fn) + a.name + " and " + b.name + " share memory; " + a.name +
                (allow_identical ? " must be either the same array as " + std::string(b.name) + " or not overlap it"
                                 : " must not overlap " + std::string(b.name)));
  }
}

uint64_t physical_memory_bytes() {
  static const uint64_t bytes = [] {
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page_size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0) return std::numeric_limits<uint64_t>::max();  // unknown: no cap
    return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
  }();
  return bytes;
}

namespace {
std::string byte_str(long double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", static_cast<double>(bytes), units[u]);
  return buf;
}
}  // namespace

int64_t checked_size(const std::vector<int64_t>& shape, const char* fn, const char* name) {
  // Like NumPy, the product of the non-zero dimensions must fit even when another one is zero.
  int64_t nonzero = 1;
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) value_error(prefix(fn) + name + " " + shape_str(shape) + " has a negative dimension");
    if (d == 0) {
      empty = true;
      continue;
    }
    if (nonzero > std::numeric_limits<int64_t>::max() / d)
      value_error(prefix(fn) + name + " " + shape_str(shape) + " has more than 2**63 - 1 elements");
    nonzero *= d;
  }
  return empty ? 0 : nonzero;
}

void require_allocatable(const std::vector<int64_t>& shape, size_t itemsize, const char* fn, const char* name) {
  const char* where = fn ? fn : "fastmlp";
  const int64_t size = checked_size(shape, where, name);
  if (static_cast<uint64_t>(size) > std::numeric_limits<uint64_t>::max() / itemsize ||
      static_cast<uint64_t>(size) * itemsize > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    value_error(prefix(where) + name + " of shape " + shape_str(shape) + " would need more than 2**63 bytes");
  const uint64_t bytes = static_cast<uint64_t>(size) * itemsize;
  const uint64_t limit = physical_memory_bytes();
  if (bytes > limit)
    memory_error(prefix(where) + name + " of shape " + shape_str(shape) + " would need " + std::to_string(bytes) +
                 " bytes (" + byte_str(bytes) + "), more than this machine's physical memory (" +
                 std::to_string(limit) + " bytes, " + byte_str(limit) + "); nothing was allocated");
}

FloatArray new_float_array(DType dtype, const std::vector<int64_t>& shape, const char* name, const char* fn) {
  require_allocatable(shape, dtype == DType::f64 ? sizeof(double) : sizeof(float), fn, name);
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array a = dtype == DType::f64 ? py::array(py::array_t<double>(s)) : py::array(py::array_t<float>(s));
  FloatArray f;
  f.arr = a;
  f.dtype = dtype;
  f.shape = shape;
  f.size = static_cast<int64_t>(a.size());
  f.name = name;
  return f;
}

FloatArray out_arg(py::handle out, const char* fn, const char* name, DType dtype, const std::vector<int64_t>& shape) {
  if (out.is_none()) return new_float_array(dtype, shape, name, fn);
  FloatArray o = float_arg(out, fn, name, /*writeable=*/true);
  if (o.dtype != dtype)
    type_error(prefix(fn) + name + " has dtype " + dtype_name(o.dtype) + " but the result has dtype " +
               dtype_name(dtype));
  require_shape(o, shape, fn, "the shape of the result");
  return o;
}

std::vector<int64_t> labels_arg(py::handle h, const char* fn, const char* name, int64_t rows, int64_t n_classes) {
  py::array a = require_ndarray(h, fn, name);
  const char kind = a.dtype().kind();
  const auto itemsize = a.dtype().itemsize();
  if (!((kind == 'i') && (itemsize == 4 || itemsize == 8)))
    type_error(prefix(fn) + name + " has dtype " + dtype_str(a) + "; expected int32 or int64 class indices");
  if (!native_order(a.dtype().byteorder()))
    type_error(prefix(fn) + name + " has non-native byte order (" + dtype_str(a) + ")");
  if (!(a.flags() & py::array::c_style)) value_error(prefix(fn) + name + " is not C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    value_error(prefix(fn) + name + " is not aligned to its dtype; pass " + name + ".copy()");
  if (a.ndim() != 1 || a.shape(0) != rows)
    value_error(prefix(fn) + name + " has shape " + shape_str(shape_of(a)) + " but logits have " +
                std::to_string(rows) + " rows; expected shape (" + std::to_string(rows) + ",)");
  std::vector<int64_t> labels(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t v = itemsize == 4 ? static_cast<const int32_t*>(a.data())[i] : static_cast<const int64_t*>(a.data())[i];
    if (v < 0 || v >= n_classes)
      value_error(prefix(fn) + name + "[" + std::to_string(i) + "] = " + std::to_string(v) +
                  " is out of range for " + std::to_string(n_classes) + " classes (expected 0 <= label < " +
                  std::to_string(n_classes) + ")");
    labels[static_cast<size_t>(i)] = v;
  }
  return labels;
}

double finite_arg(double v, const char* fn, const char* name) {
  if (!std::isfinite(v)) value_error(prefix(fn) + name + " must be finite, got " + std::to_string(v));
  return v;
}

double nonneg_arg(double v, const char* fn, const char* name) {
  if (!std::isfinite(v) || v < 0.0)
    value_error(prefix(fn) + name + " must be a finite number >= 0, got " + std::to_string(v));
  return v;
}

double prob_arg(double p, const char* fn, const char* name) {
  if (!(p >= 0.0 && p < 1.0)) value_error(prefix(fn) + name + " must satisfy 0 <= " + name + " < 1, got " + std::to_string(p));
  return p;
}

uint64_t seed_arg(py::handle h, const char* fn, const char* name) {
  if (py::isinstance<py::bool_>(h) || !(PyLong_Check(h.ptr()) || py::hasattr(h, "__index__")))
    type_error(prefix(fn) + name + " must be an integer, got " +
               py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>());
  py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!v) throw py::error_already_set();
  int overflow = 0;
  const long long as_signed = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow < 0 || (overflow == 0 && as_signed < 0))
    value_error(prefix(fn) + name + " must be in [0, 2**64), got " + py::str(v).cast<std::string>());
  if (overflow == 0) return static_cast<uint64_t>(as_signed);
  const unsigned long long u = PyLong_AsUnsignedLongLong(v.ptr());
  if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    value_error(prefix(fn) + name + " must be in [0, 2**64), got " + py::str(v).cast<std::string>());
  }
  return static_cast<uint64_t>(u);
}

namespace {
int64_t dimension_arg(py::handle item, const char* fn, const char* name) {
  py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(item.ptr()));
  if (!v) throw py::error_already_set();
  int overflow = 0;
  const long long d = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow > 0)
    value_error(prefix(fn) + name + " has a dimension " + py::str(v).cast<std::string>() + " beyond 2**63 - 1");
  if (overflow < 0) return std::numeric_limits<int64_t>::min();  // negative: checked_size names the shape
  return static_cast<int64_t>(d);
}
}  // namespace

std::vector<int64_t> shape_arg(py::handle h, const char* fn, const char* name) {
  std::vector<int64_t> shape;
  if (py::hasattr(h, "__index__") && !py::isinstance<py::bool_>(h)) {
    shape.push_back(dimension_arg(h, fn, name));
  } else if (py::isinstance<py::sequence>(h) && !py::isinstance<py::str>(h)) {
    for (py::handle item : py::reinterpret_borrow<py::sequence>(h)) {
      if (!py::hasattr(item, "__index__") || py::isinstance<py::bool_>(item))
        type_error(prefix(fn) + name + " must be an int or a sequence of ints, got an element of type " +
                   py::str(py::type::handle_of(item).attr("__name__")).cast<std::string>());
      shape.push_back(dimension_arg(item, fn, name));
    }
  } else {
    type_error(prefix(fn) + name + " must be an int or a sequence of ints");
  }
  checked_size(shape, fn, name);
  return shape;
}

DType dtype_arg(py::handle h, const char* fn) {
  py::dtype d;
  try {
    d = py::dtype::from_args(py::reinterpret_borrow<py::object>(h));
  } catch (py::error_already_set& e) {  // numpy's "data type 'x' not understood" does not name fn
    if (!e.matches(PyExc_TypeError) && !e.matches(PyExc_ValueError)) throw;
    type_error(prefix(fn) + "dtype must be float32 or float64, got " + py::repr(h).cast<std::string>());
  }
  if (d.kind() == 'f' && d.itemsize() == 4) return DType::f32;
  if (d.kind() == 'f' && d.itemsize() == 8) return DType::f64;
  type_error(prefix(fn) + "dtype must be float32 or float64, got " + py::str(d).cast<std::string>());
}

cpu::Act activation_arg(const std::string& kind, const char* fn, const char* name) {
  if (kind == "identity" || kind == "linear") return cpu::Act::identity;
  if (kind == "relu") return cpu::Act::relu;
  if (kind == "sigmoid" || kind == "logistic") return cpu::Act::sigmoid;
  if (kind == "tanh") return cpu::Act::tanh;
  value_error(prefix(fn) + name + " must be one of 'identity', 'relu', 'sigmoid' (or 'logistic'), 'tanh'; got '" +
              kind + "'");
}

}  // namespace bind
}  // namespace fastmlp
