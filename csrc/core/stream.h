// The output size from which the elementwise kernels that are bound by memory traffic (activation,
// activation_backward, relu_dropout_backward, the float squared_error and sigmoid_cross_entropy
// (rows of 64 columns or more) gradients; on AVX-512 also softmax_cross_entropy's gradient, rows of
// 1024-16384 columns) write with non-temporal ("streaming") stores. A plain
// store first reads its line from memory (read for ownership), so out = f(x) moves 12 bytes per
// float where it needs 8 (in-place calls keep plain stores: their lines are read anyway). Outputs
// this large do not stay in cache for their reader anyway; below it, plain stores keep them there
// (the activations of a training step at batch 256 are far smaller). The kernels
// bound by their arithmetic (the Philox ones; softmax on AVX2) measured no gain and keep plain
// stores.
// Set from FASTMLP_STREAM_MIN_BYTES or _core._set_stream_min_bytes.
#pragma once
#include <cstdint>

namespace fastmlp {

constexpr int64_t kDefaultStreamMinBytes = int64_t{32} << 20;

int64_t stream_min_bytes();
void set_stream_min_bytes(int64_t bytes);  // bytes >= 0; throws std::invalid_argument otherwise

}  // namespace fastmlp
