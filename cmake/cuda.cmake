# FASTMLP_CUDA (AUTO|ON|OFF): the CUDA backend, csrc/cuda/*.cu, built into _core as the submodule
# _core.cuda. The .cu files are an object library of their own so that nvcc never sees the CPU
# flags of _core (-Wall etc. are host-compiler options), and the CUDA runtime is linked statically:
# a wheel built with it needs only the NVIDIA driver on the user's machine, not a toolkit.
string(TOUPPER "${FASTMLP_CUDA}" _fastmlp_cuda_mode)
if(NOT _fastmlp_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "FASTMLP_CUDA must be AUTO, ON or OFF, got '${FASTMLP_CUDA}'")
endif()

set(FASTMLP_CUDA_ARCHITECTURES "" CACHE STRING
    "CUDA architectures for the backend (e.g. 90); empty: CMAKE_CUDA_ARCHITECTURES, else 80-real;90-real;90-virtual")

set(_fastmlp_cuda_on OFF)
if(_fastmlp_cuda_mode STREQUAL "ON")
  set(_fastmlp_cuda_on ON)
elseif(_fastmlp_cuda_mode STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(_fastmlp_cuda_on ON)
  endif()
endif()

if(NOT _fastmlp_cuda_on)
  target_compile_definitions(_core PRIVATE FASTMLP_HAVE_CUDA=0)
  message(STATUS "fastmlp: CUDA backend OFF (FASTMLP_CUDA=${FASTMLP_CUDA})")
  return()
endif()

# Architectures must be settled before enable_language, which otherwise caches nvcc's default.
# Default: SASS for Ampere (sm_80) and Hopper (sm_90), plus compute_90 PTX that the driver
# compiles for newer GPUs.
if(FASTMLP_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "${FASTMLP_CUDA_ARCHITECTURES}")
elseif(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual" CACHE STRING "CUDA architectures")
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR "FASTMLP_CUDA=ON but no CUDA compiler was found (put nvcc on PATH or set "
                      "CMAKE_CUDA_COMPILER), or configure with -DFASTMLP_CUDA=OFF")
endif()
enable_language(CUDA)
# The kernels use sm_80 instructions (cp.async in the GEMM): an older target would fail deep in
# nvcc, so say so here.
foreach(_arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
  string(REGEX MATCH "^[0-9]+" _arch_number "${_arch}")
  if(_arch_number AND _arch_number LESS 80)
    message(FATAL_ERROR "fastmlp's CUDA kernels need sm_80 or newer (cp.async); the CUDA architectures "
                        "(FASTMLP_CUDA_ARCHITECTURES / CMAKE_CUDA_ARCHITECTURES / CUDAARCHS) include '${_arch}'")
  endif()
endforeach()
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

add_library(fastmlp_cuda OBJECT
  csrc/cuda/runtime.cu
  csrc/cuda/gemm.cu
  csrc/cuda/elementwise.cu
  csrc/cuda/loss.cu
  csrc/cuda/batchnorm.cu
  csrc/cuda/optim.cu
)
target_include_directories(fastmlp_cuda PRIVATE csrc)
set_target_properties(fastmlp_cuda PROPERTIES
  CUDA_VISIBILITY_PRESET hidden
  CUDA_RUNTIME_LIBRARY Static
  POSITION_INDEPENDENT_CODE ON)
# Host side as strict as the CPU code (and -ffp-contract=off, as there); -lineinfo for profilers.
set(_fastmlp_cuda_flags -lineinfo -Xcompiler=-Wall,-Wextra,-ffp-contract=off,-fno-math-errno)
if(FASTMLP_WERROR)
  list(APPEND _fastmlp_cuda_flags -Werror=all-warnings -Xcompiler=-Werror)
endif()
target_compile_options(fastmlp_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${_fastmlp_cuda_flags}>)
# Everything but the GEMM must round like the CPU (masks, uniforms, normals and optimizer updates
# are bit-identical there): no contraction of a*b+c into an FMA. The GEMM keeps FMAs.
set_source_files_properties(
  csrc/cuda/runtime.cu csrc/cuda/elementwise.cu csrc/cuda/loss.cu csrc/cuda/batchnorm.cu csrc/cuda/optim.cu
  PROPERTIES COMPILE_OPTIONS "--fmad=false")

target_sources(_core PRIVATE csrc/bindings/bind_cuda.cpp $<TARGET_OBJECTS:fastmlp_cuda>)
target_compile_definitions(_core PRIVATE FASTMLP_HAVE_CUDA=1)
set_target_properties(_core PROPERTIES CUDA_RUNTIME_LIBRARY Static)
target_link_libraries(_core PRIVATE CUDA::cudart_static)

get_property(_fastmlp_cuda_archs TARGET fastmlp_cuda PROPERTY CUDA_ARCHITECTURES)
message(STATUS "fastmlp: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures: ${_fastmlp_cuda_archs})")
