// Host twin of the fused epilogues' GELU math (kernels/cutlass/csrc/gelu_math.h):
// reads float32 z values from stdin, writes gelu(z) then gelu'(z) (float32) to stdout.
#include <cstdio>
#include <vector>

#include "gelu_math.h"

int main() {
  std::vector<float> z;
  float v;
  while (std::fread(&v, sizeof v, 1, stdin) == 1) z.push_back(v);
  std::vector<float> out(2 * z.size());
  for (size_t i = 0; i < z.size(); ++i) {
    out[i] = s24c::GeluErf(z[i]);
    out[z.size() + i] = s24c::GeluErfGrad(z[i]);
  }
  std::fwrite(out.data(), sizeof(float), out.size(), stdout);
  return 0;
}
