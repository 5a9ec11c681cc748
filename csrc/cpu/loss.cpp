// STUB
#include "cpu/isa.h"
namespace fastmlp { namespace cpu { namespace FASTMLP_ISA_NS {
template <class T> double squared_error(const T*, const T*, T*, int64_t, int64_t) { return 0; }
template <class T> double softmax_cross_entropy(const T*, const int64_t*, T*, int64_t, int64_t) { return 0; }
template <class T> double sigmoid_cross_entropy(const T*, const T*, T*, int64_t, int64_t) { return 0; }
#define INST(T) template double squared_error<T>(const T*, const T*, T*, int64_t, int64_t); \
 template double softmax_cross_entropy<T>(const T*, const int64_t*, T*, int64_t, int64_t); \
 template double sigmoid_cross_entropy<T>(const T*, const T*, T*, int64_t, int64_t);
INST(float) INST(double)
}}}
