// Per-thread scratch memory that persists between calls, so a GEMM does not pay malloc and
// page faults for its packing buffers on every call. Each slot is 64-byte aligned.
#pragma once
#include <cstddef>

namespace fastmlp {

enum ScratchSlot : int { kScratchPackA = 0, kScratchAcc = 1, kScratchPackB = 2, kScratchReduce = 3, kScratchSlots = 4 };

// At least `bytes` bytes for this thread's slot; contents are not preserved across calls.
void* thread_scratch(int slot, std::size_t bytes);

}  // namespace fastmlp
