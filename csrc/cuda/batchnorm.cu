// Batch norm forward and backward (torch.nn.BatchNorm1d semantics, DESIGN.md) as the CPU does it:
// two-pass column statistics in double through the deterministic column reduction
// (cuda/reduce.cuh), per-column coefficients in double, then one pass that normalises and applies
// the activation (or, backward, forms dx). Per-column doubles live in the scratch buffer.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/check.cuh"
#include "cuda/reduce.cuh"
#include "ops/activation.h"

namespace fastmlp {
namespace cuda {
namespace {

constexpr int kApplyRows = 8;  // rows per block in the normalise passes; blockDim = (kColTile, kApplyRows)

// ---- forward ----------------------------------------------------------------------------------

struct ValueTerm {
  const float* x;
  int64_t cols;
  __device__ Sums<1> operator()(int64_t r, int64_t c) const { return Sums<1>{{static_cast<double>(x[r * cols + c])}}; }
};

struct MeanFinish {
  double* mean;
  double rows;
  __device__ void operator()(int64_t c, const Sums<1>& t) const { mean[c] = t.v[0] / rows; }
};

struct SquaredDeviationTerm {
  const float* x;
  const double* mean;
  int64_t cols;
  __device__ Sums<1> operator()(int64_t r, int64_t c) const {
    const double d = static_cast<double>(x[r * cols + c]) - mean[c];
    return Sums<1>{{d * d}};
  }
};

// Batch statistics: save_mean/save_invstd, the running averages (unbiased variance) and
// scale = gamma * invstd for the normalise pass.
struct TrainingStatsFinish {
  const double* mean;
  double* scale;
  const float* gamma;
  float* running_mean;
  float* running_var;
  float* save_mean;
  float* save_invstd;
  double rows, momentum, eps;
  __device__ void operator()(int64_t c, const Sums<1>& t) const {
    const double ssd = t.v[0];
    const double invstd = 1.0 / sqrt(ssd / rows + eps);
    save_mean[c] = static_cast<float>(mean[c]);
    save_invstd[c] = static_cast<float>(invstd);
    running_mean[c] =
        static_cast<float>((1.0 - momentum) * static_cast<double>(running_mean[c]) + momentum * mean[c]);
    running_var[c] =
        static_cast<float>((1.0 - momentum) * static_cast<double>(running_var[c]) + momentum * (ssd / (rows - 1.0)));
    scale[c] = static_cast<double>(gamma[c]) * invstd;
  }
};

__global__ void inference_stats_kernel(const float* gamma, const float* running_mean, const float* running_var,
                                       float* save_mean, float* save_invstd, double* mean, double* scale,
                                       int64_t cols, double eps) {
  for (int64_t c = grid_start(); c < cols; c += grid_stride()) {
    const double invstd = 1.0 / sqrt(static_cast<double>(running_var[c]) + eps);
    mean[c] = static_cast<double>(running_mean[c]);
    save_mean[c] = running_mean[c];
    save_invstd[c] = static_cast<float>(invstd);
    scale[c] = static_cast<double>(gamma[c]) * invstd;
  }
}

// out = act((x - mean) * scale + beta); out may be x (each element is read, then written).
template <Act A>
__global__ void __launch_bounds__(kColTile* kApplyRows)
    normalize_kernel(const float* x, const double* mean, const double* scale, const float* beta, float* out,
                     int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  if (c >= cols) return;
  const double mc = mean[c], sc = scale[c], bc = static_cast<double>(beta[c]);
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kApplyRows + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kApplyRows) {
    const int64_t i = r * cols + c;
    const double z = (static_cast<double>(x[i]) - mc) * sc + bc;
    out[i] = ops::activate<A>(static_cast<float>(z));
  }
}

dim3 apply_grid(int64_t rows, int64_t cols) {
  const int64_t row_groups = ceil_div(rows, kApplyRows);
  return dim3(static_cast<unsigned>(ceil_div(cols, kColTile)),
              static_cast<unsigned>(row_groups < 65535 ? row_groups : 65535));
}

// ---- backward ---------------------------------------------------------------------------------

// grad_out through the activation, from its output y (y is not read for identity).
template <Act A>
__device__ __forceinline__ float grad_through(const float* grad_out, const float* y, int64_t i) {
  if constexpr (A == Act::identity) return grad_out[i];
  else return ops::activate_backward<A>(grad_out[i], y[i]);
}

template <Act A>
struct BackwardTerm {
  const float* grad_out;
  const float* y;
  const float* x;
  const float* save_mean;
  const float* save_invstd;
  int64_t cols;
  __device__ Sums<2> operator()(int64_t r, int64_t c) const {
    const int64_t i = r * cols + c;
    const double g = static_cast<double>(grad_through<A>(grad_out, y, i));
    const double xhat =
        (static_cast<double>(x[i]) - static_cast<double>(save_mean[c])) * static_cast<double>(save_invstd[c]);
    return Sums<2>{{g, g * xhat}};
  }
};

// dbeta = sum g, dgamma = sum g*xhat; coef = gamma * invstd / rows for the dx pass.
struct BackwardFinish {
  double* dbeta_d;
  double* dgamma_d;
  double* coef;
  float* dbeta;
  float* dgamma;
  const float* gamma;
  const float* save_invstd;
  double rows;
  __device__ void operator()(int64_t c, const Sums<2>& t) const {
    dbeta_d[c] = t.v[0];
    dgamma_d[c] = t.v[1];
    dbeta[c] = static_cast<float>(t.v[0]);
    dgamma[c] = static_cast<float>(t.v[1]);
    coef[c] = static_cast<double>(gamma[c]) * static_cast<double>(save_invstd[c]) / rows;
  }
};

// dx = coef * ((rows * g - dbeta) - xhat * dgamma); dx may be grad_out (read, then written).
template <Act A>
__global__ void __launch_bounds__(kColTile* kApplyRows)
    batch_norm_dx_kernel(const float* grad_out, const float* y, const float* x, const float* save_mean,
                         const float* save_invstd, const double* dbeta_d, const double* dgamma_d,
                         const double* coef, float* dx, int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  if (c >= cols) return;
  const double mean = static_cast<double>(save_mean[c]), invstd = static_cast<double>(save_invstd[c]);
  const double db = dbeta_d[c], dg = dgamma_d[c], k = coef[c], n = static_cast<double>(rows);
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kApplyRows + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kApplyRows) {
    const int64_t i = r * cols + c;
    const double g = static_cast<double>(grad_through<A>(grad_out, y, i));
    const double xhat = (static_cast<double>(x[i]) - mean) * invstd;
    dx[i] = static_cast<float>(k * ((n * g - db) - xhat * dg));
  }
}

template <Act A>
void launch_backward(const float* grad_out, const float* x, const float* gamma, const float* save_mean,
                     const float* save_invstd, const float* y, float* dx, float* dgamma, float* dbeta, int64_t rows,
                     int64_t cols, cudaStream_t stream) {
  const int64_t row_blocks = column_row_blocks(rows, cols);
  double* dbeta_d = static_cast<double*>(
      scratch(sizeof(double) * static_cast<size_t>((3 + 2 * row_blocks) * cols), stream, "batch_norm_backward"));
  double* dgamma_d = dbeta_d + cols;
  double* coef = dgamma_d + cols;
  double* partial = coef + cols;
  const double n = static_cast<double>(rows);
  column_reduce<2>(BackwardTerm<A>{grad_out, y, x, save_mean, save_invstd, cols},
                   BackwardFinish{dbeta_d, dgamma_d, coef, dbeta, dgamma, gamma, save_invstd, n}, rows, cols, partial,
                   stream, "batch_norm_backward");
  batch_norm_dx_kernel<A><<<apply_grid(rows, cols), dim3(kColTile, kApplyRows), 0, stream>>>(
      grad_out, y, x, save_mean, save_invstd, dbeta_d, dgamma_d, coef, dx, rows, cols);
  check_launch("batch_norm_backward");
}

}  // namespace

void batch_norm(const float* x, const float* gamma, const float* beta, float* running_mean, float* running_var,
                float* out, float* save_mean, float* save_invstd, int64_t rows, int64_t cols, bool training,
                double momentum, double eps, Act act, Stream stream) {
  if (cols == 0) return;
  if (training && rows < 2)  // the unbiased variance needs two rows (the bindings say so first)
    throw std::invalid_argument("batch_norm: a training batch needs at least 2 rows, got " + std::to_string(rows));
  const int64_t row_blocks = training ? column_row_blocks(rows, cols) : 0;
  double* mean = static_cast<double*>(
      scratch(sizeof(double) * static_cast<size_t>((2 + row_blocks) * cols), stream, "batch_norm"));
  double* scale = mean + cols;
  double* partial = scale + cols;
  if (training) {
    const double n = static_cast<double>(rows);
    column_reduce<1>(ValueTerm{x, cols}, MeanFinish{mean, n}, rows, cols, partial, stream, "batch_norm");
    column_reduce<1>(SquaredDeviationTerm{x, mean, cols},
                     TrainingStatsFinish{mean, scale, gamma, running_mean, running_var, save_mean, save_invstd, n,
                                         momentum, eps},
                     rows, cols, partial, stream, "batch_norm");
  } else {
    inference_stats_kernel<<<grid_blocks(cols), kBlockThreads, 0, stream>>>(gamma, running_mean, running_var,
                                                                            save_mean, save_invstd, mean, scale, cols,
                                                                            eps);
    check_launch("batch_norm");
  }
  if (rows == 0) return;
  const dim3 grid = apply_grid(rows, cols), block(kColTile, kApplyRows);
  switch (act) {
    case Act::relu: normalize_kernel<Act::relu><<<grid, block, 0, stream>>>(x, mean, scale, beta, out, rows, cols); break;
    case Act::sigmoid: normalize_kernel<Act::sigmoid><<<grid, block, 0, stream>>>(x, mean, scale, beta, out, rows, cols); break;
    case Act::tanh: normalize_kernel<Act::tanh><<<grid, block, 0, stream>>>(x, mean, scale, beta, out, rows, cols); break;
    default: normalize_kernel<Act::identity><<<grid, block, 0, stream>>>(x, mean, scale, beta, out, rows, cols); break;
  }
  check_launch("batch_norm");
}

void batch_norm_backward(const float* grad_out, const float* x, const float* gamma, const float* save_mean,
                         const float* save_invstd, const float* y, float* dx, float* dgamma, float* dbeta,
                         int64_t rows, int64_t cols, Act act, Stream stream) {
  if (cols == 0) return;
  if (rows == 0) {
    check(cudaMemsetAsync(dgamma, 0, sizeof(float) * static_cast<size_t>(cols), stream), "cudaMemsetAsync");
    check(cudaMemsetAsync(dbeta, 0, sizeof(float) * static_cast<size_t>(cols), stream), "cudaMemsetAsync");
    return;
  }
  switch (act) {
    case Act::relu:
      launch_backward<Act::relu>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows, cols, stream);
      break;
    case Act::sigmoid:
      launch_backward<Act::sigmoid>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows, cols,
                                    stream);
      break;
    case Act::tanh:
      launch_backward<Act::tanh>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows, cols, stream);
      break;
    default:
      launch_backward<Act::identity>(grad_out, x, gamma, save_mean, save_invstd, y, dx, dgamma, dbeta, rows, cols,
                                     stream);
      break;
  }
}

}  // namespace cuda
}  // namespace fastmlp
