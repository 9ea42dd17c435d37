// Registry<Call>'s table (products.h declares it): included by the host unit
// that owns a table, which instantiates it (`template struct Registry<X>;`).
// Host-only C++.

#pragma once

#include <cstring>
#include <vector>

#include "products.h"

namespace s24c {
namespace {

// Internal linkage on purpose: a static local of an inline (template)
// function with external linkage is one object per process (STB_GNU_UNIQUE),
// so two copies of the library loaded side by side (an old and a new build)
// would fill one table. This way each library has its own, as one per unit.
template <class Call>
std::vector<Instance<Call>>& Table() {
  static std::vector<Instance<Call>> table;  // constructed on first use
  return table;
}

}  // namespace

template <class Call>
bool Registry<Call>::Add(const Instance<Call>& inst) {
  Table<Call>().push_back(inst);
  return true;
}

template <class Call>
const Instance<Call>* Registry<Call>::Find(const char* config, int kind) {
  for (const Instance<Call>& g : Table<Call>()) {
    if (g.kind == kind && std::strcmp(g.config, config) == 0) return &g;
  }
  return nullptr;
}

template <class Call>
int Registry<Call>::Size() {
  return static_cast<int>(Table<Call>().size());
}

template <class Call>
const Instance<Call>* Registry<Call>::At(int i) {
  if (i < 0 || i >= Size()) return nullptr;
  return &Table<Call>()[i];
}

}  // namespace s24c
