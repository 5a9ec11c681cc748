// The CUDA backend as plain C++ declarations: no CUDA header is needed to include this, so the
// bindings (bind_cuda.cpp) compile with the host compiler alone. Every kernel function launches
// asynchronously on `stream`, checks the launch and throws std::runtime_error
// ("fastmlp.cuda: <call>: <error>") on a CUDA error. Arguments arrive validated by the bindings.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "cpu/kernels.h"  // Act, NoiseKind and the optimizer hyper-parameter structs

struct CUstream_st;  // cudaStream_t is CUstream_st*
struct CUevent_st;   // cudaEvent_t is CUevent_st*

namespace fastmlp {
namespace cuda {

using Stream = CUstream_st*;
using cpu::Act;
using cpu::NoiseKind;

// ---- runtime (runtime.cu) ---------------------------------------------------------------------
int device_count() noexcept;  // 0 when there is no driver or no device
int runtime_version();
int driver_version() noexcept;  // 0 when there is no driver
int get_device();
void set_device(int device);
struct DeviceProperties {
  std::string name;
  int major, minor, multiprocessors;
  std::size_t total_memory;
  int memory_clock_khz, memory_bus_width;
};
DeviceProperties device_properties(int device);
void synchronize(int device);
int pointer_device(const void* ptr) noexcept;  // -1 for host or unknown memory

void* device_alloc(std::size_t nbytes, int device);  // nbytes == 0 gives nullptr
void device_free(void* ptr, int device) noexcept;
void* pinned_alloc(std::size_t nbytes);
void pinned_free(void* ptr) noexcept;
void memcpy_sync(void* dst, const void* src, std::size_t nbytes, Stream stream);  // then syncs stream
void memcpy_async(void* dst, const void* src, std::size_t nbytes, Stream stream);
void memset_async(void* ptr, int byte, std::size_t nbytes, Stream stream);

Stream stream_create();  // non-blocking
void stream_destroy(Stream stream);
void stream_synchronize(Stream stream);
bool stream_is_capturing(Stream stream);

// Events order work across streams (and, recorded on a stream being captured, fork and join the
// captured graph): event_record marks the point reached on `stream`, stream_wait_event makes later
// work on `stream` wait for it. No timing.
using Event = CUevent_st*;
Event event_create();
void event_destroy(Event event);
void event_record(Event event, Stream stream);
void stream_wait_event(Stream stream, Event event);

struct GraphExec;  // an instantiated captured graph
void capture_begin(Stream stream);
GraphExec* capture_end(Stream stream);  // ends the capture even when it fails, then throws
void graph_replay(GraphExec* graph, Stream stream);
void graph_destroy(GraphExec* graph) noexcept;

// ---- kernels ----------------------------------------------------------------------------------
// out (M,N) = act(alpha * op(a) (M,K) * op(b) (K,N) + beta * out + bias (N)); a is (M,K), or
// (K,M) when trans_a; b is (K,N), or (N,K) when trans_b; beta == 0 never reads out.
// The Philox stream of a random kernel: `offset`, or step_ptr[0] * n_streams + offset read on the
// device when step_ptr is set (DESIGN.md, "Randomness").
struct RandomStream {
  uint64_t seed, offset;
  const int64_t* step_ptr;
  uint64_t n_streams;
};

// `fusion` adds what a layer needs beside its GEMM, without a pass of its own:
//   a_sums (trans_a only): the column sums of a, M values (a layer's bias gradient beside its
//     dW = dz^T x), summed in double;
//   relu_mask (M,N): out becomes relu_dropout_backward(out, relu_mask, mask_p), bitwise (the input
//     gradient through the dropout and ReLU of the layer before);
//   dropout: out becomes dropout(out, drop_p, drop_rs), bitwise the dropout kernel on the stored
//     product (a ReLU layer's forward with the dropout after it).
struct GemmFusion {
  float* a_sums = nullptr;
  const float* relu_mask = nullptr;
  double mask_p = 0.0;
  bool dropout = false;
  double drop_p = 0.0;
  RandomStream drop_rs{0, 0, nullptr, 0};
};
void gemm(const float* a, const float* b, float* out, const float* bias, int64_t M, int64_t N, int64_t K,
          bool trans_a, bool trans_b, float alpha, float beta, Act act, Stream stream, const GemmFusion& fusion = {});

void activation(const float* x, float* out, int64_t n, Act act, Stream stream);
void activation_backward(const float* grad_out, const float* y, float* out, int64_t n, Act act, Stream stream);
// The backward of Dense+ReLU -> Dropout from the dropout's output y (no mask): y > 0 ? grad / (1 - p) : 0.
void relu_dropout_backward(const float* grad_out, const float* y, float* out, int64_t n, double p, Stream stream);
void bias_grad(const float* grad /*(rows,cols)*/, float* out /*(cols)*/, int64_t rows, int64_t cols, Stream stream);

void dropout(const float* x, float* out, int64_t n, double p, const RandomStream& rs, Stream stream);
void dropout_mask(uint8_t* out, int64_t n, double p, const RandomStream& rs, Stream stream);
void add_noise(const float* x, float* out, int64_t n, NoiseKind kind, double level, const RandomStream& rs,
               Stream stream);
void random_uniform(float* out, int64_t n, double low, double high, uint64_t seed, uint64_t offset, Stream stream);
void random_normal(float* out, int64_t n, double mean, double std, uint64_t seed, uint64_t offset, Stream stream);

// Losses: the mean loss goes to the device scalar `loss`, d loss / d logits (divided by rows) to grad.
void squared_error(const float* pred, const float* target, float* grad, float* loss, int64_t rows, int64_t cols,
                   Stream stream);
void softmax_cross_entropy(const float* logits, const void* labels /*(rows) int32 or int64*/, int labels_itemsize,
                           float* grad, float* loss, int64_t rows, int64_t cols, Stream stream);
void sigmoid_cross_entropy(const float* logits, const float* targets, float* grad, float* loss, int64_t rows,
                           int64_t cols, Stream stream);
// The same losses with per-row sample weights (float64, rows of them): the weighted mean
// sum(w_r l_r) / W, and row r's gradient times float(w_r * rows / W), where W = sum(w) goes to the
// device double `total` (scratch the caller owns). `target` is the float targets, or the labels
// (labels_itemsize 4 or 8) for the softmax cross-entropy.
enum class LossKind { squared, softmax_cross_entropy, sigmoid_cross_entropy };
void weighted_loss(LossKind kind, const float* logits, const void* target, int labels_itemsize, const double* weights,
                   double* total, float* grad, float* loss, int64_t rows, int64_t cols, Stream stream);

void batch_norm(const float* x /*(rows,cols)*/, const float* gamma, const float* beta, float* running_mean,
                float* running_var, float* out, float* save_mean, float* save_invstd, int64_t rows, int64_t cols,
                bool training, double momentum, double eps, Act act, Stream stream);
void batch_norm_backward(const float* grad_out, const float* x, const float* gamma, const float* save_mean,
                         const float* save_invstd, const float* y, float* dx, float* dgamma, float* dbeta,
                         int64_t rows, int64_t cols, Act act, Stream stream);

// Optimizers. seg: the device segment table; step_ptr (device int64, steps taken so far) and
// lr_ptr (device float32) replace args.step and args.lr when set, and step_ptr is advanced by one
// after the update, in the same stream.
struct DeviceSegments {
  const int64_t* bounds;  // (count, 2) of (start, length)
  const double* values;   // (count, 3) of (lr_scale, weight_decay, l1)
  int64_t count;
};
struct DeviceSchedule {
  int64_t* step_ptr;
  const float* lr_ptr;
};
void sgd_step(float* param, const float* grad, float* momentum_buffer, int64_t n, const cpu::SgdArgs& args,
              const DeviceSegments& seg, const DeviceSchedule& sched, Stream stream);
void adagrad_step(float* param, const float* grad, float* state_sum, int64_t n, const cpu::AdagradArgs& args,
                  const DeviceSegments& seg, const DeviceSchedule& sched, Stream stream);
void rmsprop_step(float* param, const float* grad, float* square_avg, float* momentum_buffer, float* grad_avg,
                  int64_t n, const cpu::RmspropArgs& args, const DeviceSegments& seg, const DeviceSchedule& sched,
                  Stream stream);
void adam_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
               const cpu::AdamArgs& args, const DeviceSegments& seg, const DeviceSchedule& sched, Stream stream);

// Global-norm clipping in place (ops::clip_factor): the norm of grad's n floats, summed in double in
// a fixed order, stored in norm_out (a device float; may be null); grad scaled when it exceeds max_norm.
void clip_grad_norm(float* grad, int64_t n, double max_norm, double eps, float* norm_out, Stream stream);

// out[r] = src[idx[r]] for rows of row_bytes bytes; idx is a device int64 array (trusted).
void gather_rows(const void* src, const int64_t* idx, void* out, int64_t rows, int64_t row_bytes, Stream stream);
void triad(float* a, const float* b, const float* c, float s, int64_t n, Stream stream);  // a = b + s*c
void copy(float* dst, const float* src, int64_t n, Stream stream);                       // n floats
void scale(float* x, float s, int64_t n, Stream stream);                                 // x *= s, in place
void is_finite(const float* x, int64_t n, int32_t* flag, Stream stream);  // flag = 1 if any is not finite

}  // namespace cuda
}  // namespace fastmlp
