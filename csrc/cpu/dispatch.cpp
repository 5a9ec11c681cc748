// Chooses the kernel table at run time: the best ISA the CPU supports, or the one named by
// set_isa (FASTMLP_ISA is read by the Python package and passed here).
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

#include "core/cpu_features.h"
#include "cpu/kernels.h"

namespace fastmlp {
namespace cpu {
namespace {

using TableFn = const Kernels& (*)();

// The table getter only: calling it runs that ISA's code, so only call it once the CPU is known
// to support the ISA.
TableFn table_for(const char* name) {
  if (std::strcmp(name, "portable") == 0) return &portable::kernels;
#if defined(FASTMLP_HAVE_X86_ISAS)
  if (std::strcmp(name, "avx2") == 0) return &avx2::kernels;
  if (std::strcmp(name, "avx512") == 0) return &avx512::kernels;
#endif
  return nullptr;
}

const Kernels* best_table() {
#if defined(FASTMLP_HAVE_X86_ISAS)
  if (cpu_has_avx512()) return &avx512::kernels();
  if (cpu_has_avx2_fma()) return &avx2::kernels();
#endif
  return &portable::kernels();
}

std::atomic<const Kernels*> g_active{nullptr};

}  // namespace

bool isa_compiled(const char* name) { return table_for(name) != nullptr; }

bool isa_supported(const char* name) {
  if (!isa_compiled(name)) return false;
  if (std::strcmp(name, "avx2") == 0) return cpu_has_avx2_fma();
  if (std::strcmp(name, "avx512") == 0) return cpu_has_avx512();
  return true;
}

const Kernels& active() {
  const Kernels* k = g_active.load(std::memory_order_acquire);
  if (!k) {
    k = best_table();
    const Kernels* expected = nullptr;
    if (!g_active.compare_exchange_strong(expected, k)) k = expected;
  }
  return *k;
}

const char* active_isa() { return active().isa; }

void set_isa(const char* name) {
  const std::string n = name;
  if (n != "portable" && n != "avx2" && n != "avx512" && n != "auto")
    throw std::invalid_argument("unknown ISA '" + n + "'; expected one of portable, avx2, avx512, auto");
  if (n == "auto") {
    g_active.store(best_table(), std::memory_order_release);
    return;
  }
  if (!isa_compiled(name))
    throw std::invalid_argument("ISA '" + n + "' is not compiled into this build of fastmlp (not an x86-64 build)");
  if (!isa_supported(name))
    throw std::invalid_argument("ISA '" + n + "' is not supported by this CPU (" + std::string(cpu_model_name()) +
                                "); available: " + std::string(isa_supported("avx2") ? "portable, avx2" : "portable"));
  g_active.store(&table_for(name)(), std::memory_order_release);
}

}  // namespace cpu
}  // namespace fastmlp
