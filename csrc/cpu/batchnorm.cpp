// STUB
#include "cpu/isa.h"
namespace fastmlp { namespace cpu { namespace FASTMLP_ISA_NS {
template <class T>
void batch_norm(const T*, const T*, const T*, T*, T*, T*, T*, T*, int64_t, int64_t, bool, double, double, Act) {}
template <class T>
void batch_norm_backward(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, Act) {}
#define INST(T) template void batch_norm<T>(const T*, const T*, const T*, T*, T*, T*, T*, T*, int64_t, int64_t, bool, double, double, Act); \
 template void batch_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, Act);
INST(float) INST(double)
}}}
