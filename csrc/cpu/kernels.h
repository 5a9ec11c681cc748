// The CPU kernel table: one instance per ISA (portable, avx2, avx512), each filled by
// table.cpp compiled with that ISA's flags. Arguments arrive validated by the bindings: shapes
// agree, arrays are C-contiguous, pointers are non-null where the size is non-zero.
#pragma once
#include <cstdint>

#include "ops/activation.h"

namespace fastmlp {
namespace cpu {

using ops::Act;

// out (M,N) = act(alpha * op(a) (M,K) * op(b) (K,N) + beta * out + bias (N)).
// a is stored (M,K), or (K,M) when trans_a; b is (K,N), or (N,K) when trans_b.
template <class T>
struct GemmArgs {
  int64_t M, N, K;
  const T* a;
  const T* b;
  T* out;
  const T* bias;  // nullptr: no bias
  bool trans_a, trans_b;
  double alpha, beta;
  Act act;
  // With trans_a only: if not nullptr, a_sums[i] = sum over k of op(a)[i][k], i.e. the column sums
  // of a (K x M) exactly as bias_grad(a) gives them (a layer's bias gradient beside its dW).
  T* a_sums = nullptr;
  // If not nullptr (M x N, row stride N): after the epilogue, out = relu_mask > 0 ? out * s : 0
  // with s = T(1 / (1 - mask_p)). With relu_mask = y = dropout(relu(z)) this is the backward of
  // that dropout and ReLU fused into the GEMM that forms their incoming gradient: the arithmetic
  // of relu_dropout_backward on the stored product, so bitwise the same.
  const T* relu_mask = nullptr;
  double mask_p = 0.0;
};

// The per-segment optimizer table of DESIGN.md: bounds (n,2) int64 = (start, length),
// values (n,3) float64 = (lr_scale, weight_decay, l1). Sorted, non-overlapping, in range.
struct Segments {
  const int64_t* bounds = nullptr;
  const double* values = nullptr;
  int64_t count = 0;
};

struct SgdArgs {
  int64_t step;
  double lr, momentum, dampening, weight_decay, l1;
  bool nesterov;
};
struct AdagradArgs {
  int64_t step;
  double lr, lr_decay, weight_decay, l1, eps;
};
struct RmspropArgs {
  double lr, alpha, eps, weight_decay, momentum, l1;
  bool centered;
};
struct AdamArgs {
  int64_t step;
  double lr, beta1, beta2, eps, weight_decay, l1;
  bool decoupled;
};

enum class NoiseKind : int { gaussian = 0, mask = 1 };

template <class T>
struct KernelsT {
  void (*gemm)(const GemmArgs<T>& args);

  void (*activation)(const T* x, T* out, int64_t n, Act act);
  void (*activation_backward)(const T* grad_out, const T* y, T* out, int64_t n, Act act);
  void (*bias_grad)(const T* grad /*(rows,cols)*/, T* out /*(cols)*/, int64_t rows, int64_t cols);

  // out = x * keep / (1 - p); the same function serves forward and backward.
  void (*dropout)(const T* x, T* out, int64_t n, double p, uint64_t seed, uint64_t offset);
  // The backward of ReLU followed by dropout, from the dropout's output y alone:
  // out = y > 0 ? grad_out * (1 / (1 - p)) : 0. Bitwise what dropout's backward then ReLU's give.
  void (*relu_dropout_backward)(const T* grad_out, const T* y, T* out, int64_t n, double p);
  void (*add_noise)(const T* x, T* out, int64_t n, NoiseKind kind, double level, uint64_t seed, uint64_t offset);
  void (*random_uniform)(T* out, int64_t n, double low, double high, uint64_t seed, uint64_t offset);
  void (*random_normal)(T* out, int64_t n, double mean, double std, uint64_t seed, uint64_t offset);

  // Losses return the loss and write d loss / d logits (already divided by rows) into grad.
  double (*squared_error)(const T* pred, const T* target, T* grad, int64_t rows, int64_t cols);
  double (*softmax_cross_entropy)(const T* logits, const int64_t* labels, T* grad, int64_t rows, int64_t cols);
  double (*sigmoid_cross_entropy)(const T* logits, const T* targets, T* grad, int64_t rows, int64_t cols);

  // Training: batch statistics (rows >= 2), running stats updated in place. Inference: running stats.
  void (*batch_norm)(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* out,
                     T* save_mean, T* save_invstd, int64_t rows, int64_t cols, bool training, double momentum,
                     double eps, Act act);
  void (*batch_norm_backward)(const T* grad_out, const T* x, const T* gamma, const T* save_mean,
                              const T* save_invstd, const T* y, T* dx, T* dgamma, T* dbeta, int64_t rows,
                              int64_t cols, Act act);

  void (*sgd_step)(T* param, const T* grad, T* momentum_buffer, int64_t n, const SgdArgs& args, const Segments& seg);
  void (*adagrad_step)(T* param, const T* grad, T* state_sum, int64_t n, const AdagradArgs& args,
                       const Segments& seg);
  void (*rmsprop_step)(T* param, const T* grad, T* square_avg, T* momentum_buffer, T* grad_avg, int64_t n,
                       const RmspropArgs& args, const Segments& seg);
  void (*adam_step)(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamArgs& args,
                    const Segments& seg);

  // Global-norm clipping in place (ops::clip_factor); returns the norm before clipping.
  double (*clip_grad_norm)(T* grad, int64_t n, double max_norm, double eps);

  // STREAM triad a = b + s * c (benchmark probe).
  void (*triad)(T* a, const T* b, const T* c, T s, int64_t n);
};

struct Kernels {
  const char* isa;
  KernelsT<float> f32;
  KernelsT<double> f64;
  void (*dropout_mask)(uint8_t* out, int64_t n, double p, uint64_t seed, uint64_t offset);
  // Peak-FMA probe: runs `iterations` rounds of independent vector FMAs, returns the flops done.
  double (*fma_probe)(int64_t iterations, float* sink);
};

// Per-ISA tables (defined in table.cpp under each ISA namespace).
namespace portable { const Kernels& kernels(); }
namespace avx2 { const Kernels& kernels(); }
namespace avx512 { const Kernels& kernels(); }

// Dispatch (dispatch.cpp).
const Kernels& active();
const char* active_isa();
void set_isa(const char* name);  // throws std::invalid_argument for unknown names or paths the CPU lacks
bool isa_supported(const char* name);
bool isa_compiled(const char* name);

template <class T>
const KernelsT<T>& active_for();
template <>
inline const KernelsT<float>& active_for<float>() { return active().f32; }
template <>
inline const KernelsT<double>& active_for<double>() { return active().f64; }

// Block sizes shared by several files (one place for each fact).
constexpr int64_t kElementwiseChunk = 1 << 15;  // elements per task: 128 KiB of float32
constexpr int64_t kReduceRowBlock = 256;        // rows per partial sum in column reductions

}  // namespace cpu
}  // namespace fastmlp
