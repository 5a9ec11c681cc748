// CPU feature detection. __builtin_cpu_supports checks both cpuid and the OS-enabled register
// state (xgetbv), so a kernel that lacks AVX-512 context switching reports no AVX-512.
#include "core/cpu_features.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace fastmlp {

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

const char* cpu_model_name() {
  static const std::string name = [] {
    std::string result = "unknown";
    if (FILE* f = std::fopen("/proc/cpuinfo", "r")) {
      char line[512];
      while (std::fgets(line, sizeof line, f)) {
        if (std::strncmp(line, "model name", 10) == 0) {
          const char* colon = std::strchr(line, ':');
          if (colon) {
            result = colon + 1;
            while (!result.empty() && (result.front() == ' ' || result.front() == '\t')) result.erase(0, 1);
            while (!result.empty() && (result.back() == '\n' || result.back() == ' ')) result.pop_back();
          }
          break;
        }
      }
      std::fclose(f);
    }
    return result;
  }();
  return name.c_str();
}

}  // namespace fastmlp
