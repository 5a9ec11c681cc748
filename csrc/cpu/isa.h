// Declarations of the kernels that each ISA translation unit defines in namespace
// fastmlp::cpu::FASTMLP_ISA_NS (set by CMake: portable, avx2 or avx512). Only files compiled
// once per ISA include this.
#pragma once
#ifndef FASTMLP_ISA_NS
#error "cpu/isa.h is only for the per-ISA kernel sources (FASTMLP_ISA_NS is set by CMake)"
#endif
#include "cpu/kernels.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {

template <class T> void gemm(const GemmArgs<T>& args);

template <class T> void activation(const T* x, T* out, int64_t n, Act act);
template <class T> void activation_backward(const T* grad_out, const T* y, T* out, int64_t n, Act act);
template <class T> void bias_grad(const T* grad, T* out, int64_t rows, int64_t cols);
template <class T> void dropout(const T* x, T* out, int64_t n, double p, uint64_t seed, uint64_t offset);
template <class T> void relu_dropout_backward(const T* grad_out, const T* y, T* out, int64_t n, double p);
template <class T>
void add_noise(const T* x, T* out, int64_t n, NoiseKind kind, double level, uint64_t seed, uint64_t offset);
template <class T> void random_uniform(T* out, int64_t n, double low, double high, uint64_t seed, uint64_t offset);
template <class T> void random_normal(T* out, int64_t n, double mean, double std, uint64_t seed, uint64_t offset);
void dropout_mask(uint8_t* out, int64_t n, double p, uint64_t seed, uint64_t offset);

template <class T> double squared_error(const T* pred, const T* target, T* grad, int64_t rows, int64_t cols);
template <class T>
double softmax_cross_entropy(const T* logits, const int64_t* labels, T* grad, int64_t rows, int64_t cols);
template <class T> double sigmoid_cross_entropy(const T* logits, const T* targets, T* grad, int64_t rows, int64_t cols);

template <class T>
void batch_norm(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* out, T* save_mean,
                T* save_invstd, int64_t rows, int64_t cols, bool training, double momentum, double eps, Act act);
template <class T>
void batch_norm_backward(const T* grad_out, const T* x, const T* gamma, const T* save_mean, const T* save_invstd,
                         const T* y, T* dx, T* dgamma, T* dbeta, int64_t rows, int64_t cols, Act act);

template <class T>
void sgd_step(T* param, const T* grad, T* momentum_buffer, int64_t n, const SgdArgs& args, const Segments& seg);
template <class T>
void adagrad_step(T* param, const T* grad, T* state_sum, int64_t n, const AdagradArgs& args, const Segments& seg);
template <class T>
void rmsprop_step(T* param, const T* grad, T* square_avg, T* momentum_buffer, T* grad_avg, int64_t n,
                  const RmspropArgs& args, const Segments& seg);
template <class T>
void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamArgs& args,
               const Segments& seg);

template <class T> double clip_grad_norm(T* grad, int64_t n, double max_norm, double eps);

double fma_probe(int64_t iterations, float* sink);
template <class T> void triad(T* a, const T* b, const T* c, T s, int64_t n);

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
