// Batch norm forward and backward with torch.nn.BatchNorm1d semantics (DESIGN.md). Column
// statistics are two-pass (mean, then squared deviations) in double over tiles of
// kReduceRowBlock rows x kColChunk columns; the per-block partials are added in block order, so
// every result is bitwise the same on any thread count. Normalisation and activation are one pass.
#include <cmath>

#include "core/parallel.h"
#include "core/scratch.h"
#include "cpu/isa.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {
namespace {

// Columns per task: a 256-row tile of them is 128 KiB of float32, and its double partials
// (1 KiB) stay in L1 while the rows stream past.
constexpr int64_t kColChunk = 128;

double* scratch_doubles(int64_t n) {
  return static_cast<double*>(thread_scratch(kScratchReduce, sizeof(double) * static_cast<size_t>(n)));
}

// f(row_block, r0, r1, c0, c1) for every tile, in parallel.
template <class F>
void for_tiles(int64_t rows, int64_t cols, const F& f) {
  const int64_t col_chunks = ceil_div(cols, kColChunk);
  parallel_for(ceil_div(rows, kReduceRowBlock) * col_chunks, [&](int64_t task) {
    const int64_t rb = task / col_chunks, cc = task % col_chunks;
    const int64_t r0 = rb * kReduceRowBlock, c0 = cc * kColChunk;
    f(rb, r0, min_i64(rows, r0 + kReduceRowBlock), c0, min_i64(cols, c0 + kColChunk));
  });
}

// f(c0, c1) for every column chunk, in parallel.
template <class F>
void for_col_chunks(int64_t cols, const F& f) {
  parallel_for(ceil_div(cols, kColChunk), [&](int64_t cc) {
    const int64_t c0 = cc * kColChunk;
    f(c0, min_i64(cols, c0 + kColChunk));
  });
}

// partial holds row_blocks arrays of `stride` doubles; sums column c over the blocks in order.
inline double sum_blocks(const double* partial, int64_t row_blocks, int64_t stride, int64_t c) {
  double s = partial[c];
  for (int64_t rb = 1; rb < row_blocks; ++rb) s += partial[rb * stride + c];
  return s;
}

template <Act A, class T>
void batch_norm_act(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* out, T* save_mean,
                    T* save_invstd, int64_t rows, int64_t cols, bool training, double momentum, double eps) {
  if (cols == 0) return;
  const int64_t row_blocks = training ? ceil_div(rows, kReduceRowBlock) : 0;
  // Per column, in double: the mean and gamma·invstd used by the output pass; then the partials.
  double* mean = scratch_doubles((2 + row_blocks) * cols);
  double* scale = mean + cols;
  double* partial = scale + cols;

  if (training) {
    const double n = static_cast<double>(rows);
    for_tiles(rows, cols, [&](int64_t rb, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      double* p = partial + rb * cols;
      for (int64_t c = c0; c < c1; ++c) p[c] = 0.0;
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = x + r * cols;
        for (int64_t c = c0; c < c1; ++c) p[c] += static_cast<double>(xr[c]);
      }
    });
    for_col_chunks(cols, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) mean[c] = sum_blocks(partial, row_blocks, cols, c) / n;
    });
    for_tiles(rows, cols, [&](int64_t rb, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      double* p = partial + rb * cols;
      for (int64_t c = c0; c < c1; ++c) p[c] = 0.0;
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = x + r * cols;
        for (int64_t c = c0; c < c1; ++c) {
          const double d = static_cast<double>(xr[c]) - mean[c];
          p[c] += d * d;
        }
      }
    });
    for_col_chunks(cols, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const double ssd = sum_blocks(partial, row_blocks, cols, c);
        const double invstd = 1.0 / std::sqrt(ssd / n + eps);
        save_mean[c] = static_cast<T>(mean[c]);
        save_invstd[c] = static_cast<T>(invstd);
        running_mean[c] =
            static_cast<T>((1.0 - momentum) * static_cast<double>(running_mean[c]) + momentum * mean[c]);
        running_var[c] =
            static_cast<T>((1.0 - momentum) * static_cast<double>(running_var[c]) + momentum * (ssd / (n - 1.0)));
        scale[c] = static_cast<double>(gamma[c]) * invstd;
      }
    });
  } else {
    for (int64_t c = 0; c < cols; ++c) {
      const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps);
      mean[c] = static_cast<double>(running_mean[c]);
      save_mean[c] = running_mean[c];
      save_invstd[c] = static_cast<T>(invstd);
      scale[c] = static_cast<double>(gamma[c]) * invstd;
    }
  }

  // out may be x itself: each element is read before it is written.
  for_tiles(rows, cols, [&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* o = out + r * cols;
      for (int64_t c = c0; c < c1; ++c) {
        const double z = (static_cast<double>(xr[c]) - mean[c]) * scale[c] + static_cast<double>(beta[c]);
        o[c] = ops::activate<A>(static_cast<T>(z));
      }
    }
  });
}

// grad_out through the activation, from its output y (y is not read for identity).
template <Act A, class T>
inline T grad_through(const T* grad_out, const T* y, int64_t i) {
  if constexpr (A == Act::identity) return grad_out[i];
  else return ops::activate_backward<A>(grad_out[i], y[i]);
}

// g = grad_out through the activation, xhat = (x - mean)·invstd:
// dbeta = Σ_rows g, dgamma = Σ_rows g·xhat, dx = gamma·invstd/rows · (rows·g - dbeta - xhat·dgamma).
template <Act A, class T>
void batch_norm_backward_act(const T* grad_out, const T* x, const T* gamma, const T* save_mean, const T* save_invstd,
                             const T* y, T* dx, T* dgamma, T* dbeta, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  if (rows == 0) {
    for (int64_t c = 0; c < cols; ++c) dgamma[c] = dbeta[c] = T(0);
    return;
  }
  const int64_t row_blocks = ceil_div(rows, kReduceRowBlock);
  // Per column, in double: dbeta, dgamma, gamma·invstd/rows; then per block the partials of
  // dbeta and dgamma (2·cols doubles each).
  double* dbeta_d = scratch_doubles((3 + 2 * row_blocks) * cols);
  double* dgamma_d = dbeta_d + cols;
  double* coef = dgamma_d + cols;
  double* partial = coef + cols;
  const int64_t stride = 2 * cols;
  const double n = static_cast<double>(rows);

  for_tiles(rows, cols, [&](int64_t rb, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    double* pb = partial + rb * stride;
    double* pg = pb + cols;
    for (int64_t c = c0; c < c1; ++c) pb[c] = pg[c] = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i = r * cols + c;
        const double g = static_cast<double>(grad_through<A>(grad_out, y, i));
        const double xhat =
            (static_cast<double>(x[i]) - static_cast<double>(save_mean[c])) * static_cast<double>(save_invstd[c]);
        pb[c] += g;
        pg[c] += g * xhat;
      }
    }
  });
  for_col_chunks(cols, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      dbeta_d[c] = sum_blocks(partial, row_blocks, stride, c);
      dgamma_d[c] = sum_blocks(partial + cols, row_blocks, stride, c);
      dbeta[c] = static_cast<T>(dbeta_d[c]);
      dgamma[c] = static_cast<T>(dgamma_d[c]);
      coef[c] = static_cast<double>(gamma[c]) * static_cast<double>(save_invstd[c]) / n;
    }
  });
  for_tiles(rows, cols, [&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i = r * cols + c;
        const double g = static_cast<double>(grad_through<A>(grad_out, y, i));
        const double xhat =
            (static_cast<double>(x[i]) - static_cast<double>(save_mean[c])) * static_cast<double>(save_invstd[c]);
        dx[i] = static_cast<T>(coef[c] * ((n * g - dbeta_d[c]) - xhat * dgamma_d[c]));
      }
    }
  });
}

}  // namespace

template <class T>
void batch_norm(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* out, T* save_mean,
                T* save_invstd, int64_t rows, int64_t cols, bool training, double momentum, double eps, Act act) {
  switch (act) {
    case Act::relu:
      batch_norm_act<Act::relu>(x, gamma, beta, running_mean, running_var, out, save_mean, save_invstd, rows, cols,
                                training, momentum, eps);
      break;
    case Act::sigmoid:
      batch_norm_act<Act::sigmoid>(x, gamma, beta, running_mean, running_var, out, save_mean, save_invstd, rows,
                                   cols, training, momentum, eps);
      break;
    case Act::tanh:
      batch_norm_act<Act::tanh>(x, gamma, beta, running_mean, running_var, out, save_mean, save_invstd, rows, cols,
                                training, momentum, eps);
      break;
    default:
      batch_norm_act<Act::identity>(x, gamma, beta, running_mean, running_var, out, save_mean, save_invstd, rows,
                                    cols, training, momentum, eps);
      break;
  }
}

template <class T>
void batch_norm_backward(const T* grad_out, const T* x, const T* gamma, const T* save_mean, const T* save_invstd,
                         const T* y, T* dx, T* dgamma, T* dbeta, int64_t rows, int64_t cols, Act act) {
  switch (act) {
    case Act::relu:
      batch_norm_backward_act<Act::relu>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows, cols);
      break;
    case Act::sigmoid:
      batch_norm_backward_act<Act::sigmoid>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows,
                                            cols);
      break;
    case Act::tanh:
      batch_norm_backward_act<Act::tanh>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows, cols);
      break;
    default:
      batch_norm_backward_act<Act::identity>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows,
                                             cols);
      break;
  }
}

#define FASTMLP_INSTANTIATE(T)                                                                                   \
  template void batch_norm<T>(const T*, const T*, const T*, T*, T*, T*, T*, T*, int64_t, int64_t, bool, double,   \
                              double, Act);                                                                       \
  template void batch_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*,     \
                                       int64_t, int64_t, Act);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
