// Fills this ISA's kernel table (compiled once per ISA).
#include "cpu/isa.h"

namespace fastmlp {
namespace cpu {
namespace FASTMLP_ISA_NS {
namespace {

template <class T>
KernelsT<T> make_table() {
  KernelsT<T> k{};
  k.gemm = &gemm<T>;
  k.activation = &activation<T>;
  k.activation_backward = &activation_backward<T>;
  k.bias_grad = &bias_grad<T>;
  k.dropout = &dropout<T>;
  k.relu_dropout_backward = &relu_dropout_backward<T>;
  k.add_noise = &add_noise<T>;
  k.random_uniform = &random_uniform<T>;
  k.random_normal = &random_normal<T>;
  k.squared_error = &squared_error<T>;
  k.softmax_cross_entropy = &softmax_cross_entropy<T>;
  k.sigmoid_cross_entropy = &sigmoid_cross_entropy<T>;
  k.batch_norm = &batch_norm<T>;
  k.batch_norm_backward = &batch_norm_backward<T>;
  k.sgd_step = &sgd_step<T>;
  k.adagrad_step = &adagrad_step<T>;
  k.rmsprop_step = &rmsprop_step<T>;
  k.adam_step = &adam_step<T>;
  k.clip_grad_norm = &clip_grad_norm<T>;
  k.triad = &triad<T>;
  return k;
}

}  // namespace

const Kernels& kernels() {
  static const Kernels table{FASTMLP_ISA_NAME, make_table<float>(), make_table<double>(), &dropout_mask, &fma_probe};
  return table;
}

}  // namespace FASTMLP_ISA_NS
}  // namespace cpu
}  // namespace fastmlp
