// CUTLASS sm90 structured-sparse GEMMs with fused epilogues (epilogue.h says
// what each computes): gemm_kernel.cuh's SparseGemmOf with traits that are its
// fwd / dx products' (A = the compressed 2:4 weight, K-major; B K-major; D
// column-major bf16) but for the epilogue, built from CUTLASS's fusion operations:
//   kFwdGelu : fusion::LinCombPerRowBiasEltActAux with GeluErfFast (erf form):
//              Aux = bf16(acc + bias_row), D = bf16(gelu(acc + bias_row)), both
//              computed from the float32 accumulator; bias null = no bias.
//   kDxDgelu : fusion::LinCombDeEltAct with DGeluErf (below, the exact GELU's
//              derivative; CUTLASS's thread::dGELU is the tanh form's; both
//              on gelu_math.h):
//              D = bf16(acc * gelu'(Aux)), Aux (bf16, D's layout) read by TMA.
// Included by epilogue_instance.cu only (compiled once per (config, epilogue)).

#pragma once

#include <cuda_runtime.h>

#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "epilogue.h"
#include "gelu_math.h"
#include "gemm_kernel.cuh"

namespace s24c {

using namespace cute;

// The exact GELU (erf form) and its derivative times the incoming gradient, as
// CUTLASS epilogue activations (scalar and fragment forms), on gelu_math.h's
// one-exponential Phi / phi: CUTLASS's thread::GELU calls erff, and erff +
// expf made the fused epilogues compute-bound (gelu_math.h says by how much).
template <class T>
struct GeluErfFast {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE
  T operator()(T const& z) const { return T(GeluErf(static_cast<float>(z))); }
};

template <class T, int N>
struct GeluErfFast<cutlass::Array<T, N>> {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE
  cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& z) const {
    cutlass::Array<T, N> y;
    GeluErfFast<T> op;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = op(z[i]);
    return y;
  }
};

// dgelu(dy, z) = dy * gelu'(z)
template <class T>
struct DGeluErf {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE
  T operator()(T const& dy, T const& z) const {
    return T(static_cast<float>(dy) * GeluErfGrad(static_cast<float>(z)));
  }
};

template <class T, int N>
struct DGeluErf<cutlass::Array<T, N>> {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE
  cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& dy,
                                  cutlass::Array<T, N> const& z) const {
    cutlass::Array<T, N> y;
    DGeluErf<T> op;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = op(dy[i], z[i]);
    return y;
  }
};

// What both fused epilogues are: their product's layouts and D type, EpiCall,
// and an Aux tensor (Z) of D's shape and layout, written (fwd_gelu) or read
// (dx_dgelu) through the fusion op's aux_ptr.
template <int Product>
struct FusedProductTraits : ProductTraits<Product> {
  using Call = EpiCall;
  template <class FusionArgs>
  static void SetFusion(FusionArgs& fusion, const EpiCall& c) {
    using StrideAux = typename FusionArgs::StrideAux;
    fusion.dAux = cutlass::make_cute_packed_stride(StrideAux{}, make_shape(c.m, c.n, 1));
    fusion.aux_ptr = static_cast<decltype(fusion.aux_ptr)>(c.aux);
  }
};

template <int Epi>
struct EpilogueTraits;

template <>
struct EpilogueTraits<kFwdGelu> : FusedProductTraits<kFwd> {
  using FusionOp = cutlass::epilogue::fusion::LinCombPerRowBiasEltActAux<
      LayoutD, GeluErfFast, cutlass::bfloat16_t, float,
      /*ElementAux=*/cutlass::bfloat16_t, /*ElementBias=*/cutlass::bfloat16_t,
      /*ElementSource=*/void, /*ElementScalar=*/float>;
  template <class FusionArgs>
  static void SetFusion(FusionArgs& fusion, const EpiCall& c) {
    FusedProductTraits<kFwd>::SetFusion(fusion, c);
    fusion.bias_ptr = static_cast<const cutlass::bfloat16_t*>(c.bias);
  }
};

template <>
struct EpilogueTraits<kDxDgelu> : FusedProductTraits<kDx> {
  using FusionOp = cutlass::epilogue::fusion::LinCombDeEltAct<
      LayoutD, DGeluErf, cutlass::bfloat16_t, float,
      /*ElementAux=*/cutlass::bfloat16_t, /*ElementSource=*/void, /*ElementScalar=*/float>;
};

template <int Epi, int TM, int TN, int TK, int CM, int CN, int Schedule>
using SparseEpiGemm = SparseGemmOf<EpilogueTraits<Epi>, TM, TN, TK, CM, CN, Schedule>;

}  // namespace s24c
