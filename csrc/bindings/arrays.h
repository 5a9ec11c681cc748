// Argument validation shared by every binding: each check throws a Python TypeError or
// ValueError whose message names the function, the argument and the shapes/dtypes involved.
// Bindings validate everything first, then release the GIL and call the kernel.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace fastmlp {
namespace bind {

namespace py = pybind11;

enum class DType { f32, f64 };

const char* dtype_name(DType d);
std::string shape_str(const std::vector<int64_t>& shape);
std::string describe(const py::array& a);  // "shape (3, 4) and dtype float32"

// A validated, C-contiguous float32/float64 array.
struct FloatArray {
  // Null until set: py::array's default constructor allocates an empty NumPy array, which cost
  // each kernel call a few hundred nanoseconds per optional argument left out.
  py::array arr = py::reinterpret_steal<py::array>(py::handle());
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  int64_t size = 0;
  const char* name = "";

  int64_t dim(size_t i) const { return shape[i]; }
  size_t ndim() const { return shape.size(); }
  template <class T>
  T* data() const {
    return static_cast<T*>(const_cast<void*>(arr.data()));
  }
  const void* begin() const { return arr.data(); }
  std::size_t nbytes() const { return static_cast<std::size_t>(arr.nbytes()); }
};

py::array require_ndarray(py::handle h, const char* fn, const char* name);
// dtype float32/float64 (TypeError), C-contiguous (ValueError), writeable if asked (ValueError).
FloatArray float_arg(py::handle h, const char* fn, const char* name, bool writeable = false);
// `other` must have ref's dtype (TypeError).
void require_same_dtype(const FloatArray& ref, const FloatArray& other, const char* fn);
void require_shape(const FloatArray& a, const std::vector<int64_t>& expected, const char* fn, const std::string& why);
void require_ndim(const FloatArray& a, size_t ndim, const char* fn);
// Raises if the two arrays' memory overlaps; identical arrays are allowed when allow_identical.
void require_no_overlap(const FloatArray& a, const FloatArray& b, const char* fn, bool allow_identical);

// `out` if given (validated: writeable, dtype, shape), else a new array.
FloatArray out_arg(py::handle out, const char* fn, const char* name, DType dtype, const std::vector<int64_t>& shape);
// A new array; refused (require_allocatable) before anything is allocated when it cannot fit.
FloatArray new_float_array(DType dtype, const std::vector<int64_t>& shape, const char* name, const char* fn = nullptr);

// The element count of `shape`; ValueError naming fn when it does not fit in int64.
int64_t checked_size(const std::vector<int64_t>& shape, const char* fn, const char* name);
// MemoryError, raised before allocating, when an array of `shape` and `itemsize` would need more
// bytes than this machine's physical memory (an allocation that large could only succeed through
// overcommit and then kill the process when touched). ValueError when the byte count overflows.
void require_allocatable(const std::vector<int64_t>& shape, size_t itemsize, const char* fn, const char* name);
uint64_t physical_memory_bytes();

// Labels: int32 or int64, 1-D, C-contiguous; copied to int64 and range-checked against n_classes.
std::vector<int64_t> labels_arg(py::handle h, const char* fn, const char* name, int64_t rows, int64_t n_classes);

double finite_arg(double v, const char* fn, const char* name);
double nonneg_arg(double v, const char* fn, const char* name);
double prob_arg(double p, const char* fn, const char* name);  // 0 <= p < 1
uint64_t seed_arg(py::handle h, const char* fn, const char* name);  // a Python int in [0, 2**64)
// A shape: an int or a sequence of ints, each >= 0, whose element count fits in int64 (ValueError).
std::vector<int64_t> shape_arg(py::handle h, const char* fn, const char* name);
DType dtype_arg(py::handle h, const char* fn);

cpu::Act activation_arg(const std::string& kind, const char* fn, const char* name);

[[noreturn]] void value_error(const std::string& msg);
[[noreturn]] void type_error(const std::string& msg);
[[noreturn]] void memory_error(const std::string& msg);

// Calls f(float{}) or f(double{}).
template <class F>
auto dispatch(DType d, F&& f) {
  if (d == DType::f64) return f(double{});
  return f(float{});
}

}  // namespace bind
}  // namespace fastmlp
