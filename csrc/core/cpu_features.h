// What the CPU can run, read once with cpuid (and the OS's xgetbv support) at first use.
#pragma once

namespace fastmlp {

bool cpu_has_avx2_fma();
bool cpu_has_avx512();  // F, BW, DQ and VL, with OS support for the ZMM state
const char* cpu_model_name();

}  // namespace fastmlp
