// The table of the plain GEMM instances: each gemm_instance.cu object
// registers itself here from its static initialiser. Host-only C++.

#include "instance_table.h"
#include "products.h"

namespace s24c {

template struct Registry<GemmCall>;

}  // namespace s24c
