# FASTMLP_CUDA: the CUDA backend (filled in by the CUDA work).
target_compile_definitions(_core PRIVATE FASTMLP_HAVE_CUDA=0)
