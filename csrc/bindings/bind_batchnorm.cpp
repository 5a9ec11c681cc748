// STUB
#include "bindings/arrays.h"
namespace fastmlp { namespace bind { void register_batchnorm(py::module_&) {} } }
