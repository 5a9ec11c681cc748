// STUB
#include "bindings/arrays.h"
namespace fastmlp { namespace bind { void register_optim(py::module_&) {} } }
