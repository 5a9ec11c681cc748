// A host-only stand-in for <cuda_runtime.h>, enough to compile csrc/cuda/runtime.cu as plain C++
// and test its bookkeeping (scratch buffers, captures, graphs, deferred frees) without a GPU:
// "device" allocations are malloc'd and tracked, so a test can see what is live, and a free of
// memory that is not live (a double free) is counted. Streams, events and graphs are tokens;
// capture is a per-stream flag. Nothing here runs a kernel. Used by runtime_test.cpp only.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <set>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline

struct CUstream_st {
  bool capturing = false;
};
struct CUevent_st {};
struct CUgraph_st {};
struct CUgraphExec_st {};
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
using cudaGraph_t = CUgraph_st*;
using cudaGraphExec_t = CUgraphExec_st*;

struct MockIndex {
  unsigned x = 0, y = 0, z = 0;
};
inline MockIndex blockIdx, blockDim, gridDim, threadIdx;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
};
using cudaError = cudaError_t;
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1 };
enum cudaMemcpyKind { cudaMemcpyDefault = 4 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMemoryClockRate = 36,
  cudaDevAttrGlobalMemoryBusWidth = 37,
};
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2,
                      cudaMemoryTypeManaged = 3 };
constexpr unsigned cudaStreamNonBlocking = 1, cudaHostAllocPortable = 1, cudaEventDisableTiming = 2;

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  std::size_t totalGlobalMem;
};
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
};

namespace mock {
struct State {
  std::set<void*> device_live, host_live;
  int bad_frees = 0;                   // frees of memory that is not live
  bool allow_unsafe_in_capture = false;  // let the next unsafe calls through (a laxer driver)
  bool fail_instantiate = false;         // the next cudaGraphInstantiate fails
};
inline State& state() {
  static State s;
  return s;
}
// Captures in thread-local mode: the unsafe calls (malloc, free, synchronize) are refused on the
// thread that captures, and allowed on the others.
inline thread_local int capturing = 0;
inline cudaError_t unsafe_call() {
  if (capturing > 0 && !state().allow_unsafe_in_capture) return cudaErrorStreamCaptureUnsupported;
  return cudaSuccess;
}
}  // namespace mock

inline const char* cudaGetErrorString(cudaError_t) { return "mock error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return mock::unsafe_call(); }
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 132;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "mock");
  p->major = 9;
  p->multiProcessorCount = 132;
  return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int, std::size_t) {
  *n = 4;
  return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  a->type = mock::state().device_live.count(const_cast<void*>(p)) ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
  a->device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** p, std::size_t n) {
  if (const cudaError_t e = mock::unsafe_call()) return e;
  *p = std::malloc(n ? n : 1);
  mock::state().device_live.insert(*p);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (const cudaError_t e = mock::unsafe_call()) return e;
  if (!mock::state().device_live.erase(p)) {
    ++mock::state().bad_frees;
    return cudaErrorInvalidValue;
  }
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, std::size_t n, unsigned) {
  if (const cudaError_t e = mock::unsafe_call()) return e;
  *p = std::malloc(n ? n : 1);
  mock::state().host_live.insert(*p);
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  if (const cudaError_t e = mock::unsafe_call()) return e;
  if (!mock::state().host_live.erase(p)) {
    ++mock::state().bad_frees;
    return cudaErrorInvalidValue;
  }
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, std::size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, std::size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new CUstream_st;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s->capturing) return cudaErrorStreamCaptureUnsupported;
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return mock::unsafe_call(); }
inline cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st) {
  *st = s && s->capturing ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  s->capturing = true;
  ++mock::capturing;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  if (!s->capturing) return cudaErrorInvalidValue;
  s->capturing = false;
  --mock::capturing;
  *g = new CUgraph_st;
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t, unsigned long long) {
  if (mock::state().fail_instantiate) {
    mock::state().fail_instantiate = false;
    return cudaErrorInvalidValue;
  }
  *e = new CUgraphExec_st;
  return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t) { return cudaSuccess; }

inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = new CUevent_st;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
