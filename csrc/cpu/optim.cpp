// STUB: replaced by the optimizer kernels.
#include "cpu/isa.h"
namespace fastmlp { namespace cpu { namespace FASTMLP_ISA_NS {
template <class T> void sgd_step(T*, const T*, T*, int64_t, const SgdArgs&, const Segments&) {}
template <class T> void adagrad_step(T*, const T*, T*, int64_t, const AdagradArgs&, const Segments&) {}
template <class T> void rmsprop_step(T*, const T*, T*, T*, T*, int64_t, const RmspropArgs&, const Segments&) {}
template <class T> void adam_step(T*, const T*, T*, T*, int64_t, const AdamArgs&, const Segments&) {}
#define INST(T) template void sgd_step<T>(T*, const T*, T*, int64_t, const SgdArgs&, const Segments&); \
 template void adagrad_step<T>(T*, const T*, T*, int64_t, const AdagradArgs&, const Segments&); \
 template void rmsprop_step<T>(T*, const T*, T*, T*, T*, int64_t, const RmspropArgs&, const Segments&); \
 template void adam_step<T>(T*, const T*, T*, T*, int64_t, const AdamArgs&, const Segments&);
INST(float) INST(double)
}}}
