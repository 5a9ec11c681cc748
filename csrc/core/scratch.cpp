// Thread-local scratch buffers (see scratch.h). Freed when the thread exits.
#include "core/scratch.h"

#include <cstdlib>
#include <new>

namespace fastmlp {
namespace {

struct ScratchSet {
  void* ptr[kScratchSlots] = {};
  std::size_t size[kScratchSlots] = {};
  ~ScratchSet() {
    for (void* p : ptr) std::free(p);
  }
};

thread_local ScratchSet t_scratch;

}  // namespace

void* thread_scratch(int slot, std::size_t bytes) {
  ScratchSet& s = t_scratch;
  if (bytes == 0) bytes = 64;
  if (s.size[slot] < bytes) {
    std::free(s.ptr[slot]);
    s.ptr[slot] = nullptr;
    s.size[slot] = 0;
    const std::size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
    s.ptr[slot] = p;
    s.size[slot] = rounded;
  }
  return s.ptr[slot];
}

}  // namespace fastmlp
