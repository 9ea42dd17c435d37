// The fused activation-backward + MVUE kernels' host interface: plain C++,
// for the units that launch them (bindings.cc) without compiling device
// code. The kernels are in act_grad_kernels.cuh, instantiated and dispatched
// by act_grad.cu.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace s24 {

// The activations whose backward the kernels fuse (emulation.py's ACT_KINDS
// and ops.py mirror them).
//   kActGelu:   z, dA (M, H);    dZ = dA * (Phi(z) + z phi(z))      (exact GELU)
//   kActSwiglu: z = [x | gate] (M, 2F), dA (M, F);
//               dZ = [dA * silu(gate), dA * x * silu'(gate)]        (M, 2F)
enum : int { kActGelu = 0, kActSwiglu = 1, kNumActKinds = 2 };

// The tokens M and the columns of z (H, or 2F) the kernels take: M a multiple
// of 64 (the backend pads the tokens), H a multiple of 64, F a multiple of 64
// (a block owns 64 matching features of both halves: two metadata row tiles).
inline bool ActGradTakes(int kind, int64_t tokens, int64_t z_cols) {
  if (tokens % 64 != 0) return false;
  if (kind == kActGelu) return z_cols % 64 == 0;
  if (kind == kActSwiglu) return z_cols % 128 == 0;
  return false;
}

// Reads dA and z once and writes dZ (z's shape, row-major, computed in
// float32 and rounded once) and `out`, the compressed MVUE 2:4 of dZ^T along
// the tokens (A = dZ^T: z_cols rows x `tokens`; CompressedBytes(z_cols,
// tokens, 2) bytes), byte-identical to LaunchCompress(kModeMvue, trans) of
// that dZ with the same seed (uint32[2]). dt: kBF16 or kF16 (dA, z and dZ
// share it). The caller has checked the shapes (ActGradTakes), dt and the
// counter bound (z_cols * tokens / 4 < 2^32). emulate = true runs the
// kernels' code on the host (host pointers, stream unused).
cudaError_t LaunchActGradMvue(int kind, cudaStream_t stream, int dt, const void* da,
                              const void* z, void* dz, const uint32_t* seed, uint8_t* out,
                              int64_t tokens, int64_t z_cols, bool emulate);

}  // namespace s24
