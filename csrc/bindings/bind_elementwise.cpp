// STUB
#include "bindings/arrays.h"
namespace fastmlp { namespace bind { void register_elementwise(py::module_&) {} } }
