// Host-side test of csrc/cuda/runtime.cu's bookkeeping, compiled against the stand-in
// <cuda_runtime.h> beside this file (no GPU, no CUDA toolkit): scratch buffers handed out during
// a capture are shared with the graph and freed when the stream and every such graph have let go
// of them, never before (a graph replay would read freed memory) and never never (a leak of a
// few MiB per model). Run by tests/test_cuda_runtime_host.py (ASan and UBSan when available).
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "cuda/check.cuh"

namespace fc = fastmlp::cuda;

namespace {
int failures = 0;

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

bool live(const void* p) { return mock::state().device_live.count(const_cast<void*>(p)) > 0; }
std::size_t live_count() { return mock::state().device_live.size(); }

// A stream joins (or leaves) the capture of another, as an event fork (join) does.
void join_capture(fc::Stream s, bool on) {
  s->capturing = on;
  mock::capturing += on ? 1 : -1;
}

void eager_scratch_is_freed_with_its_stream() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  EXPECT(live(p));
  EXPECT(fc::scratch(500, s, "test") == p);  // reused
  fc::stream_destroy(s);
  EXPECT(!live(p));
}

void captured_scratch_outlives_its_stream_until_the_graph_goes() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");  // allocated eagerly, as before every capture
  fc::capture_begin(s);
  EXPECT(fc::scratch(1000, s, "test") == p);
  fc::GraphExec* g = fc::capture_end(s);
  fc::stream_destroy(s);
  EXPECT(live(p));  // the graph may still replay kernels that use it
  fc::graph_destroy(g);
  EXPECT(!live(p));
}

void a_graph_destroyed_first_leaves_the_buffer_to_its_stream() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  fc::GraphExec* g = fc::capture_end(s);
  fc::graph_destroy(g);
  EXPECT(live(p));
  EXPECT(fc::scratch(1000, s, "test") == p);  // still the stream's
  fc::stream_destroy(s);
  EXPECT(!live(p));
}

void two_graphs_and_the_stream_all_let_go_before_the_free() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::GraphExec* g[2];
  for (auto& graph : g) {
    fc::capture_begin(s);
    fc::scratch(800, s, "test");
    graph = fc::capture_end(s);
  }
  fc::stream_destroy(s);
  EXPECT(live(p));
  fc::graph_destroy(g[1]);
  EXPECT(live(p));
  fc::graph_destroy(g[0]);
  EXPECT(!live(p));
}

void a_captured_buffer_replaced_by_a_larger_one_stays_for_its_graph() {
  fc::Stream s = fc::stream_create();
  void* small = fc::scratch(1000, s, "test");
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  fc::GraphExec* g = fc::capture_end(s);
  void* big = fc::scratch(std::size_t(8) << 20, s, "test");  // grows outside the capture
  EXPECT(big != small);
  EXPECT(live(small) && live(big));
  fc::graph_destroy(g);
  EXPECT(!live(small) && live(big));
  fc::stream_destroy(s);
  EXPECT(!live(big));
}

void growing_inside_a_capture_is_refused_and_frees_nothing() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::capture_begin(s);
  bool threw = false;
  try {
    fc::scratch(std::size_t(8) << 20, s, "test");
  } catch (const std::runtime_error&) {
    threw = true;
  }
  EXPECT(threw);
  fc::GraphExec* g = fc::capture_end(s);
  EXPECT(live(p));
  fc::stream_destroy(s);
  fc::graph_destroy(g);
  EXPECT(!live(p));
}

void a_failed_capture_leaves_the_buffer_to_its_stream() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  join_capture(s, false);  // invalidated: cudaStreamEndCapture reports an error
  bool threw = false;
  try {
    fc::capture_end(s);
  } catch (const std::runtime_error&) {
    threw = true;
  }
  EXPECT(threw);
  EXPECT(live(p));
  fc::stream_destroy(s);
  EXPECT(!live(p));
}

void a_side_stream_dropped_during_the_capture_leaves_its_scratch_to_the_graph() {
  // The trainer's step forks onto a side stream inside the capture; the side stream's Python
  // object may be collected before the capture ends (its destruction is deferred to the end).
  fc::Stream main = fc::stream_create(), side = fc::stream_create();
  void* p = fc::scratch(1000, side, "test");
  unsigned* t = fc::tickets(side, "test");
  fc::capture_begin(main);
  join_capture(side, true);
  EXPECT(fc::scratch(1000, side, "test") == p);
  EXPECT(fc::tickets(side, "test") == t);
  fc::stream_destroy(side);  // deferred: the thread is capturing
  join_capture(side, false);
  fc::GraphExec* g = fc::capture_end(main);  // destroys `side`, after the graph took its references
  EXPECT(live(p) && live(t));
  fc::graph_destroy(g);
  EXPECT(!live(p) && !live(t));
  fc::stream_destroy(main);
}

void a_graph_dropped_during_another_capture_is_destroyed_after_it() {
  fc::Stream s = fc::stream_create(), other = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::scratch(1000, other, "test");
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  fc::GraphExec* first = fc::capture_end(s);
  fc::stream_destroy(s);
  fc::capture_begin(other);
  fc::scratch(1000, other, "test");
  fc::graph_destroy(first);  // deferred: freeing inside a capture would invalidate it
  EXPECT(live(p));
  fc::GraphExec* second = fc::capture_end(other);
  EXPECT(!live(p));
  fc::graph_destroy(second);
  fc::stream_destroy(other);
}

void a_graph_outlives_the_thread_that_captured_it() {
  fc::GraphExec* g = nullptr;
  fc::Stream s = nullptr;
  void* p = nullptr;
  std::thread worker([&] {
    s = fc::stream_create();
    p = fc::scratch(1000, s, "test");
    fc::capture_begin(s);
    fc::scratch(1000, s, "test");
    g = fc::capture_end(s);
    // The thread's exit lets go of its scratch table, and with it the stream's reference.
  });
  worker.join();
  EXPECT(live(p));
  fc::graph_destroy(g);
  EXPECT(!live(p));
  fc::stream_destroy(s);  // this thread never gave it scratch
}

void a_buffer_replaced_during_the_capture_stays_for_the_graph() {
  // A side stream that has left the capture may grow its scratch before the capture ends (where
  // the driver allows the allocation): the buffer the capture used must survive until the graph
  // holds it, and then until the graph goes.
  fc::Stream main = fc::stream_create(), side = fc::stream_create();
  void* p = fc::scratch(1000, side, "test");
  fc::capture_begin(main);
  join_capture(side, true);
  fc::scratch(1000, side, "test");
  join_capture(side, false);
  mock::state().allow_unsafe_in_capture = true;
  void* bigger = fc::scratch(std::size_t(8) << 20, side, "test");
  mock::state().allow_unsafe_in_capture = false;
  EXPECT(bigger != p && live(p));
  fc::GraphExec* g = fc::capture_end(main);
  EXPECT(live(p));
  fc::graph_destroy(g);
  EXPECT(!live(p) && live(bigger));
  fc::stream_destroy(side);
  fc::stream_destroy(main);
  EXPECT(!live(bigger));
}

void a_graph_destroyed_on_another_thread_during_a_capture_keeps_what_the_capture_uses() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  fc::GraphExec* first = fc::capture_end(s);
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  std::thread([first] { fc::graph_destroy(first); }).join();  // frees at once there if it can
  EXPECT(live(p));
  fc::GraphExec* second = fc::capture_end(s);
  fc::stream_destroy(s);
  EXPECT(live(p));
  fc::graph_destroy(second);
  EXPECT(!live(p));
}

void a_failed_instantiation_leaves_the_buffer_to_its_stream() {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  fc::capture_begin(s);
  fc::scratch(1000, s, "test");
  mock::state().fail_instantiate = true;
  bool threw = false;
  try {
    fc::capture_end(s);
  } catch (const std::runtime_error&) {
    threw = true;
  }
  EXPECT(threw && live(p));
  fc::stream_destroy(s);
  EXPECT(!live(p));
}

void overlapping_captures_each_keep_the_buffers_until_they_go() {
  fc::Stream a = fc::stream_create(), b = fc::stream_create();
  void* pa = fc::scratch(1000, a, "test");
  void* pb = fc::scratch(1000, b, "test");
  fc::capture_begin(a);
  fc::scratch(1000, a, "test");
  fc::capture_begin(b);
  fc::scratch(1000, b, "test");
  fc::GraphExec* gb = fc::capture_end(b);
  fc::GraphExec* ga = fc::capture_end(a);
  fc::stream_destroy(a);
  fc::stream_destroy(b);
  fc::graph_destroy(gb);
  EXPECT(live(pa) && live(pb));  // ga holds both (it was open while b's buffer was handed out)
  fc::graph_destroy(ga);
  EXPECT(!live(pa) && !live(pb));
}

// A capture fastmlp did not begin (torch.cuda.graph around its kernels): its end is invisible, so
// the buffers it was handed are kept for good rather than freed under a graph that may replay.
void buffers_of_a_capture_begun_elsewhere_are_kept(std::size_t& pinned) {
  fc::Stream s = fc::stream_create();
  void* p = fc::scratch(1000, s, "test");
  unsigned* t = fc::tickets(s, "test");
  join_capture(s, true);  // begun by another library
  EXPECT(fc::scratch(1000, s, "test") == p);
  EXPECT(fc::tickets(s, "test") == t);
  join_capture(s, false);
  void* bigger = fc::scratch(std::size_t(8) << 20, s, "test");
  EXPECT(live(p) && live(bigger));
  fc::stream_destroy(s);
  EXPECT(live(p) && live(t) && !live(bigger));
  pinned += 2;
}

void tickets_are_shared_like_scratch() {
  fc::Stream s = fc::stream_create();
  unsigned* t = fc::tickets(s, "test");
  fc::capture_begin(s);
  EXPECT(fc::tickets(s, "test") == t);
  fc::GraphExec* g = fc::capture_end(s);
  fc::stream_destroy(s);
  EXPECT(live(t));
  fc::graph_destroy(g);
  EXPECT(!live(t));
}

void optional_tickets_are_not_made_during_a_capture() {
  fc::Stream s = fc::stream_create();
  fc::capture_begin(s);
  EXPECT(fc::tickets(s, "test", true) == nullptr);
  fc::GraphExec* g = fc::capture_end(s);
  fc::graph_destroy(g);
  fc::stream_destroy(s);
}
}  // namespace

int main() {
  const std::size_t before = live_count();
  eager_scratch_is_freed_with_its_stream();
  captured_scratch_outlives_its_stream_until_the_graph_goes();
  a_graph_destroyed_first_leaves_the_buffer_to_its_stream();
  two_graphs_and_the_stream_all_let_go_before_the_free();
  a_captured_buffer_replaced_by_a_larger_one_stays_for_its_graph();
  growing_inside_a_capture_is_refused_and_frees_nothing();
  a_failed_capture_leaves_the_buffer_to_its_stream();
  a_side_stream_dropped_during_the_capture_leaves_its_scratch_to_the_graph();
  a_graph_dropped_during_another_capture_is_destroyed_after_it();
  a_graph_outlives_the_thread_that_captured_it();
  tickets_are_shared_like_scratch();
  optional_tickets_are_not_made_during_a_capture();
  a_buffer_replaced_during_the_capture_stays_for_the_graph();
  a_graph_destroyed_on_another_thread_during_a_capture_keeps_what_the_capture_uses();
  a_failed_instantiation_leaves_the_buffer_to_its_stream();
  overlapping_captures_each_keep_the_buffers_until_they_go();
  std::size_t pinned = 0;
  buffers_of_a_capture_begun_elsewhere_are_kept(pinned);
  EXPECT(live_count() == before + pinned);  // nothing leaked but the pinned buffers
  EXPECT(mock::state().bad_frees == 0);     // nothing freed twice
  EXPECT(mock::capturing == 0);
  if (failures) {
    std::fprintf(stderr, "%d expectation(s) failed\n", failures);
    return 1;
  }
  std::printf("runtime bookkeeping: all checks passed\n");
  return 0;
}
