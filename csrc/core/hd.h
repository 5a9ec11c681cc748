// FASTMLP_HD marks element math that CPU and CUDA kernels share. Everything declared with it
// lives in an anonymous namespace: each translation unit (one per ISA) gets its own copy
// compiled with its own flags, so the linker can never hand an AVX-512 copy to the portable path.
#pragma once
#if defined(__CUDACC__)
#define FASTMLP_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTMLP_HD inline __attribute__((always_inline))
#else
#define FASTMLP_HD inline
#endif
