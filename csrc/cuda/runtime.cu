// Device, memory, stream and graph helpers, and the scratch buffers the kernels borrow. Nothing
// here may fail just because there is no GPU: device_count() and pointer_device() swallow the
// "no driver / no device" errors so that a CUDA build imports and runs its CPU path anywhere.
#include <cstdint>
#include <algorithm>
#include <initializer_list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/check.cuh"

namespace fastmlp {
namespace cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call) {
  cudaGetLastError();  // clear a non-sticky error so it is not reported again by the next call
  throw std::runtime_error(std::string("fastmlp.cuda: ") + call + ": " + cudaGetErrorString(err));
}

namespace {

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) {
      check(cudaSetDevice(device), "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// ---- scratch ----------------------------------------------------------------------------------
constexpr std::size_t kScratchGranule = std::size_t(1) << 20;  // grow in whole MiB, at least doubling

struct ScratchBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  bool captured = false;  // handed out during a capture: shared with graphs (see SharedScratch)
};

// A scratch buffer handed out while its stream is captured may be used by the graph: it is then
// shared, by count, between its stream's table (until the stream lets it go: it grows, the
// stream is destroyed or the thread exits) and every graph captured while it was in use, and the
// last of them frees it. (Never freeing such buffers leaked each model's scratch: a few MiB per
// model trained on the device with graphs.) A capture this thread began with capture_begin takes
// its reference when it is handed the buffer (so nothing frees it before the graph exists) and
// passes it on to the graph at capture_end. A capture begun elsewhere (torch.cuda.graph around
// fastmlp's kernels, or another thread's capture) ends where fastmlp cannot see it: its buffers
// are pinned, kept for good. Graphs may be destroyed on any thread, so the counts are
// process-wide; the table is never destroyed, as thread-exit frees may run after static
// destructors.
struct SharedScratch {
  int device;
  int refs;
  bool pinned;  // handed to a capture fastmlp did not begin: one reference never dropped
};
std::mutex& shared_scratch_mutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}
std::map<void*, SharedScratch>& shared_scratch() {
  static auto* table = new std::map<void*, SharedScratch>;
  return *table;
}
thread_local int t_capturing = 0;  // captures begun by capture_begin on this thread and not yet ended
// The shared buffers this thread's open captures were handed, each holding one reference for
// them until the outermost one ends.
thread_local std::vector<void*> t_capture_scratch;

// buf (on `device`) is being handed out to a stream being captured.
void share_with_capture(ScratchBuffer& buf, int device) {
  const bool ours = t_capturing > 0;
  if (ours) {
    if (std::find(t_capture_scratch.begin(), t_capture_scratch.end(), buf.ptr) != t_capture_scratch.end()) return;
    t_capture_scratch.reserve(t_capture_scratch.size() + 1);  // may throw: before any count changes
  }
  std::lock_guard<std::mutex> lock(shared_scratch_mutex());
  if (!buf.captured) {
    shared_scratch()[buf.ptr] = SharedScratch{device, 1, false};  // the stream's table's reference
    buf.captured = true;
  }
  SharedScratch& shared = shared_scratch().at(buf.ptr);  // present while the table holds its reference
  if (ours) {
    ++shared.refs;
    t_capture_scratch.push_back(buf.ptr);  // reserved above: does not throw
  } else if (!shared.pinned) {
    shared.pinned = true;
    ++shared.refs;
  }
}

// Drops one reference to a shared buffer; the last one frees it.
void release_shared(void* ptr) noexcept {
  int device = 0;
  {
    std::lock_guard<std::mutex> lock(shared_scratch_mutex());
    auto it = shared_scratch().find(ptr);
    if (it == shared_scratch().end() || --it->second.refs > 0) return;
    device = it->second.device;
    shared_scratch().erase(it);
  }
  device_free(ptr, device);
}

// The table's buffer let go: freed, or its reference dropped when graphs share it.
void drop_buffer(const ScratchBuffer& buf) noexcept {
  if (!buf.ptr) return;
  if (buf.captured)
    release_shared(buf.ptr);
  else
    cudaFree(buf.ptr);  // errors (at exit, or a sticky one) cannot be reported here
}

struct ScratchTable {
  std::map<std::pair<int, std::uintptr_t>, ScratchBuffer> buffers;  // (device, stream) -> buffer
  std::map<std::pair<int, std::uintptr_t>, ScratchBuffer> tickets;  // (device, stream) -> kTickets ints
  ~ScratchTable() {
    // A thread that exits inside a capture frees at once: the deferral lists may be gone already
    // (what an unfinished capture held is lost with it).
    t_capturing = 0;
    for (auto* table : {&buffers, &tickets})
      for (auto& entry : *table) drop_buffer(entry.second);
  }
};

thread_local ScratchTable t_scratch;

std::uintptr_t stream_key(Stream stream) { return reinterpret_cast<std::uintptr_t>(stream); }

}  // namespace

void* scratch(std::size_t bytes, Stream stream, const char* who) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  ScratchBuffer& buf = t_scratch.buffers[{device, stream_key(stream)}];
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  const bool capturing = status != cudaStreamCaptureStatusNone;
  if (bytes == 0) bytes = 1;
  if (buf.bytes >= bytes) {
    if (capturing) share_with_capture(buf, device);
    return buf.ptr;
  }
  if (capturing)
    throw std::runtime_error(std::string("fastmlp.cuda: ") + who + " needs " + std::to_string(bytes) +
                             " bytes of scratch memory while the stream is being captured (this thread has " +
                             std::to_string(buf.bytes) +
                             "); run the step once eagerly before capturing it so the buffer is allocated");
  std::size_t grown = bytes > 2 * buf.bytes ? bytes : 2 * buf.bytes;
  grown = (grown + kScratchGranule - 1) / kScratchGranule * kScratchGranule;
  if (buf.ptr) {
    // Earlier kernels on this stream may still read the old buffer.
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const ScratchBuffer old = std::exchange(buf, ScratchBuffer{});
    if (old.captured) release_shared(old.ptr);  // its graphs keep it until they go
    else check(cudaFree(old.ptr), "cudaFree");
  }
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, grown);
  if (err != cudaSuccess) {
    const std::string call = "cudaMalloc of " + std::to_string(grown) + " bytes of scratch for " + who;
    throw_cuda_error(err, call.c_str());
  }
  buf.ptr = ptr;
  buf.bytes = grown;
  return ptr;
}

unsigned* tickets(Stream stream, const char* who, bool optional) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  ScratchBuffer& buf = t_scratch.tickets[{device, stream_key(stream)}];
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  const bool capturing = status != cudaStreamCaptureStatusNone;
  if (!buf.ptr) {
    if (capturing && optional) return nullptr;
    if (capturing)
      throw std::runtime_error(std::string("fastmlp.cuda: ") + who +
                               " needs its arrival counters allocated while the stream is being captured; run the "
                               "step once eagerly before capturing it");
    const std::size_t bytes = sizeof(unsigned) * kTickets;
    void* ptr = nullptr;
    const cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err != cudaSuccess) {
      const std::string call = "cudaMalloc of the arrival counters for " + std::string(who);
      throw_cuda_error(err, call.c_str());
    }
    const cudaError_t zero = cudaMemsetAsync(ptr, 0, bytes, stream);  // ordered before the kernels that use them
    if (zero != cudaSuccess) {
      cudaFree(ptr);
      throw_cuda_error(zero, "cudaMemsetAsync of the arrival counters");
    }
    buf.ptr = ptr;
    buf.bytes = bytes;
  }
  if (capturing) share_with_capture(buf, device);
  return static_cast<unsigned*>(buf.ptr);
}

int multiprocessors() {
  thread_local std::map<int, int> count;  // device -> multiprocessors, looked up once per thread
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int& n = count[device];
  if (n == 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    if (n <= 0) n = 1;
  }
  return n;
}

unsigned resident_blocks(const void* kernel, int64_t items, int threads) {
  // (device, kernel, block size) -> blocks resident on the whole device; looked up once per thread.
  thread_local std::map<std::tuple<int, const void*, int>, int64_t> resident;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int64_t& cap = resident[{device, kernel, threads}];
  if (cap == 0) {
    int sms = 0, per_sm = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    cap = static_cast<int64_t>(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1);
  }
  const int64_t blocks = grid_blocks(items, threads);
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

// ---- devices ----------------------------------------------------------------------------------

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

int driver_version() noexcept {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

int get_device() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

DeviceProperties device_properties(int device) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  DeviceProperties p;
  p.name = prop.name;
  p.major = prop.major;
  p.minor = prop.minor;
  p.multiprocessors = prop.multiProcessorCount;
  p.total_memory = prop.totalGlobalMem;
  // Attributes rather than cudaDeviceProp fields: CUDA 13 dropped the clock fields from the struct.
  check(cudaDeviceGetAttribute(&p.memory_clock_khz, cudaDevAttrMemoryClockRate, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&p.memory_bus_width, cudaDevAttrGlobalMemoryBusWidth, device),
        "cudaDeviceGetAttribute");
  return p;
}

void synchronize(int device) {
  DeviceGuard guard(device);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

int pointer_device(const void* ptr) noexcept {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) ? attr.device : -1;
}

// ---- memory -----------------------------------------------------------------------------------

void* device_alloc(std::size_t nbytes, int device) {
  if (nbytes == 0) return nullptr;
  DeviceGuard guard(device);
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, nbytes);
  if (err != cudaSuccess) {
    const std::string call = "cudaMalloc of " + std::to_string(nbytes) + " bytes on device " + std::to_string(device);
    throw_cuda_error(err, call.c_str());
  }
  return ptr;
}

namespace {
// Frees that arrive while this thread captures a stream (a Python object collected inside
// graph_capture) are held back: cudaFree/cudaFreeHost during a capture would invalidate it. The
// graph may use those buffers, so a successful capture hands them to its graph, which frees them
// when it is destroyed; a failed one frees them at once.
using DeferredFrees = std::vector<std::pair<void*, int>>;  // (ptr, device); device -1: pinned
thread_local DeferredFrees t_deferred_frees;
// Streams, events and executable graphs collected during a capture likewise: destroying a stream
// synchronises it and frees its scratch, either of which invalidates this thread's capture (then
// the next launch in it fails with "operation failed due to a previous error during capture";
// H100, a trainer's graph capture after tests that left graphs in reference cycles). They are
// destroyed when the capture ends, on the device that was current when they were dropped.
thread_local std::vector<std::pair<Stream, int>> t_deferred_streams;
thread_local std::vector<std::pair<Event, int>> t_deferred_events;
thread_local std::vector<GraphExec*> t_deferred_graphs;  // executable graphs likewise
}  // namespace

void device_free(void* ptr, int device) noexcept {
  if (!ptr) return;
  if (t_capturing > 0) {
    try {
      t_deferred_frees.emplace_back(ptr, device);
      return;
    } catch (...) {  // out of host memory: free now and lose the capture rather than leak
    }
  }
  int previous = 0;
  const bool have_previous = cudaGetDevice(&previous) == cudaSuccess;
  if (have_previous && previous != device) cudaSetDevice(device);
  cudaFree(ptr);  // errors (e.g. at interpreter exit) cannot be reported from a destructor
  if (have_previous && previous != device) cudaSetDevice(previous);
  cudaGetLastError();
}

void* pinned_alloc(std::size_t nbytes) {
  if (nbytes == 0) return nullptr;
  void* ptr = nullptr;
  const cudaError_t err = cudaHostAlloc(&ptr, nbytes, cudaHostAllocPortable);
  if (err != cudaSuccess) {
    const std::string call = "cudaHostAlloc of " + std::to_string(nbytes) + " bytes";
    throw_cuda_error(err, call.c_str());
  }
  return ptr;
}

void pinned_free(void* ptr) noexcept {
  if (!ptr) return;
  if (t_capturing > 0) {
    try {
      t_deferred_frees.emplace_back(ptr, -1);
      return;
    } catch (...) {
    }
  }
  cudaFreeHost(ptr);
  cudaGetLastError();
}

void memcpy_sync(void* dst, const void* src, std::size_t nbytes, Stream stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

void memcpy_async(void* dst, const void* src, std::size_t nbytes, Stream stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
}

void memset_async(void* ptr, int byte, std::size_t nbytes, Stream stream) {
  if (nbytes == 0) return;
  check(cudaMemsetAsync(ptr, byte, nbytes, stream), "cudaMemsetAsync");
}

// ---- streams and graphs -----------------------------------------------------------------------

Stream stream_create() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return s;
}

void stream_destroy(Stream stream) {
  int device = 0;
  if (t_capturing > 0 && cudaGetDevice(&device) == cudaSuccess) {
    try {
      t_deferred_streams.emplace_back(stream, device);
      return;
    } catch (...) {  // out of host memory: destroy now and lose the capture rather than leak
    }
  }
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  check(cudaGetDevice(&device), "cudaGetDevice");
  for (auto* table : {&t_scratch.buffers, &t_scratch.tickets}) {
    auto it = table->find({device, stream_key(stream)});
    if (it != table->end()) {
      const ScratchBuffer buf = it->second;
      table->erase(it);
      if (buf.captured) release_shared(buf.ptr);
      else if (buf.ptr) check(cudaFree(buf.ptr), "cudaFree");
    }
  }
  check(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

void stream_synchronize(Stream stream) { check(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }

bool stream_is_capturing(Stream stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

Event event_create() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  return e;
}

void event_destroy(Event event) {
  int device = 0;
  if (t_capturing > 0 && cudaGetDevice(&device) == cudaSuccess) {
    try {
      t_deferred_events.emplace_back(event, device);
      return;
    } catch (...) {
    }
  }
  check(cudaEventDestroy(event), "cudaEventDestroy");
}

void event_record(Event event, Stream stream) { check(cudaEventRecord(event, stream), "cudaEventRecord"); }

void stream_wait_event(Stream stream, Event event) {
  check(cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent");
}

struct GraphExec {
  cudaGraphExec_t exec;
  DeferredFrees owned;         // buffers freed by their owners during the capture (see t_deferred_frees)
  std::vector<void*> shared;  // scratch used during the capture: one reference each (SharedScratch)
};

namespace {
void release(DeferredFrees& frees) noexcept {
  for (const auto& [ptr, device] : frees) {
    if (device < 0)
      pinned_free(ptr);
    else
      device_free(ptr, device);
  }
  frees.clear();
}

// The streams and events dropped during the capture that just ended (errors cannot be reported:
// their owners are gone).
void destroy_deferred() noexcept {
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) current = -1;
  int active = current;
  const auto on = [&active](int device) {
    if (device != active && cudaSetDevice(device) == cudaSuccess) active = device;
  };
  for (const auto& [stream, device] : std::exchange(t_deferred_streams, {})) {
    on(device);
    try {
      stream_destroy(stream);
    } catch (...) {
    }
  }
  for (const auto& [event, device] : std::exchange(t_deferred_events, {})) {
    on(device);
    cudaEventDestroy(event);
  }
  for (GraphExec* graph : std::exchange(t_deferred_graphs, {})) graph_destroy(graph);
  if (current >= 0) on(current);
  cudaGetLastError();
}
}  // namespace

void capture_begin(Stream stream) {
  // Thread-local mode: unsafe calls (cudaMalloc...) are refused on this thread only, so other
  // Python threads may keep allocating while a training step is captured.
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  ++t_capturing;
}

GraphExec* capture_end(Stream stream) {
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(stream, &graph);
  // The graph's references to the scratch this thread's captures were handed (all of them, when
  // captures overlap: a graph may then hold a buffer it does not use, until it goes). Each is still
  // held by the captures, so none can have been freed.
  std::vector<void*> used;
  if (err == cudaSuccess) {
    try {
      used.reserve(t_capture_scratch.size());
      std::lock_guard<std::mutex> lock(shared_scratch_mutex());
      for (void* ptr : t_capture_scratch) {
        auto it = shared_scratch().find(ptr);
        if (it == shared_scratch().end()) continue;
        ++it->second.refs;
        used.push_back(ptr);
      }
    } catch (...) {  // out of host memory: fail the capture rather than let a graph outlive its buffers
      err = cudaErrorMemoryAllocation;
    }
  }
  DeferredFrees frees;
  std::vector<void*> capture_refs;
  if (t_capturing > 0 && --t_capturing == 0) {
    frees = std::exchange(t_deferred_frees, {});
    capture_refs = std::exchange(t_capture_scratch, {});
    destroy_deferred();
  }
  for (void* ptr : capture_refs) release_shared(ptr);  // the captures' references: the graph holds its own
  auto release_all = [&]() noexcept {
    release(frees);
    for (void* ptr : used) release_shared(ptr);
  };
  if (err != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    release_all();
    throw_cuda_error(err, "cudaStreamEndCapture");
  }
  cudaGraphExec_t exec = nullptr;
  err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph does not need it
  if (err != cudaSuccess) {
    release_all();
    throw_cuda_error(err, "cudaGraphInstantiate");
  }
  GraphExec* result = nullptr;
  try {
    result = new GraphExec{exec, std::move(frees), std::move(used)};
  } catch (...) {
    cudaGraphExecDestroy(exec);
    release_all();
    throw;
  }
  return result;
}

void graph_replay(GraphExec* graph, Stream stream) { check(cudaGraphLaunch(graph->exec, stream), "cudaGraphLaunch"); }

void graph_destroy(GraphExec* graph) noexcept {
  if (!graph) return;
  if (t_capturing > 0) {
    try {
      t_deferred_graphs.push_back(graph);
      return;
    } catch (...) {  // out of host memory: destroy now and lose the capture rather than leak
    }
  }
  cudaGraphExecDestroy(graph->exec);
  cudaGetLastError();
  release(graph->owned);
  for (void* ptr : graph->shared) release_shared(ptr);
  delete graph;
}

}  // namespace cuda
}  // namespace fastmlp
