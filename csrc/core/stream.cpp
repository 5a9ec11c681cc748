// The streaming-store threshold (see stream.h): one value for all threads, read by every call.
#include "core/stream.h"

#include <atomic>
#include <stdexcept>
#include <string>

namespace fastmlp {
namespace {
std::atomic<int64_t> g_stream_min_bytes{kDefaultStreamMinBytes};
}  // namespace

int64_t stream_min_bytes() { return g_stream_min_bytes.load(std::memory_order_relaxed); }

void set_stream_min_bytes(int64_t bytes) {
  if (bytes < 0) throw std::invalid_argument("stream_min_bytes must be >= 0, got " + std::to_string(bytes));
  g_stream_min_bytes.store(bytes, std::memory_order_relaxed);
}

}  // namespace fastmlp
