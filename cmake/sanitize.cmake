# FASTMLP_SANITIZE: sanitizer instrumentation for the CPU build (issue 8), e.g.
#   -DFASTMLP_SANITIZE=address,undefined -DFASTMLP_CUDA=OFF
# Every target (all ISA object libraries and _core) is compiled and linked with the same
# -fsanitize list; errors are fatal (-fno-sanitize-recover=all) so a UBSan report fails the run.
# The runtimes must be preloaded into Python, ASan first, then libstdc++ (python does not link it,
# and ASan's __cxa_throw interceptor needs it at start-up):
#   LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)"
# GCC's UBSan runtime is linked into _core itself. .ci/sanitize.sh does all this.
if(FASTMLP_SANITIZE)
  string(REPLACE "," ";" _fastmlp_sanitizers "${FASTMLP_SANITIZE}")
  foreach(_s IN LISTS _fastmlp_sanitizers)
    if(NOT _s MATCHES "^(address|undefined|leak|float-divide-by-zero|bounds|alignment|null|integer|vptr|thread)$")
      message(FATAL_ERROR "FASTMLP_SANITIZE: unknown sanitizer '${_s}' (use e.g. address,undefined)")
    endif()
  endforeach()
  if("thread" IN_LIST _fastmlp_sanitizers AND "address" IN_LIST _fastmlp_sanitizers)
    message(FATAL_ERROR "FASTMLP_SANITIZE: thread and address cannot be combined")
  endif()
  # The sanitizers instrument the CPU code only; nvcc objects would be uninstrumented and the
  # CUDA runtime trips ASan's checks, so a sanitized build is CPU-only.
  string(TOUPPER "${FASTMLP_CUDA}" _fastmlp_cuda_upper)
  if(_fastmlp_cuda_upper STREQUAL "ON")
    message(FATAL_ERROR "FASTMLP_SANITIZE=${FASTMLP_SANITIZE} builds the CPU code only; "
                        "pass -DFASTMLP_CUDA=OFF together with it")
  elseif(NOT _fastmlp_cuda_upper STREQUAL "OFF")
    # A normal variable shadows the cache entry for this configure only (cmake/cuda.cmake reads it),
    # so the build directory returns to AUTO once FASTMLP_SANITIZE is cleared.
    message(STATUS "FASTMLP_SANITIZE=${FASTMLP_SANITIZE}: building without CUDA (FASTMLP_CUDA=${FASTMLP_CUDA} -> OFF)")
    set(FASTMLP_CUDA OFF)
  endif()
  set(_fastmlp_sanitize_flags -fsanitize=${FASTMLP_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all -g)
  # FASTMLP_COMMON_FLAGS goes to every target of ours; the link flags go to the module.
  list(APPEND FASTMLP_COMMON_FLAGS ${_fastmlp_sanitize_flags})
  add_link_options(-fsanitize=${FASTMLP_SANITIZE})
  string(REPLACE ";" " " _fastmlp_sanitize_text "${_fastmlp_sanitize_flags}")
  message(STATUS "FASTMLP_SANITIZE: ${_fastmlp_sanitize_text}")
endif()
