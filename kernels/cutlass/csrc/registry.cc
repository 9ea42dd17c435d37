// The table of GEMM instances: each gemm_instance.cu object registers itself
// here from its static initialiser (registration order is link order, which
// nothing depends on). Host-only C++.

#include <cstring>
#include <vector>

#include "products.h"

namespace s24c {

static std::vector<GemmInstance>& Table() {
  static std::vector<GemmInstance> table;  // constructed on first use
  return table;
}

bool RegisterGemm(const GemmInstance& inst) {
  Table().push_back(inst);
  return true;
}

const GemmInstance* FindGemm(const char* config, int product) {
  for (const GemmInstance& g : Table()) {
    if (g.product == product && std::strcmp(g.config, config) == 0) return &g;
  }
  return nullptr;
}

int NumGemms() { return static_cast<int>(Table().size()); }

const GemmInstance* GemmAt(int i) {
  if (i < 0 || i >= NumGemms()) return nullptr;
  return &Table()[i];
}

}  // namespace s24c
