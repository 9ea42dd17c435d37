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

#include <type_traits>

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

// The epilogue's shared-memory layout, when CUTLASS's auto choice leaves the
// sparse mainloop too few stages: the mainloop takes StageCountAutoCarveout of
// the epilogue's SharedStorage, and one sparse stage (compressed A + metadata +
// B per 128-deep K slice) is 50-82 KB, so at 256x128 and 128x128 coop the auto
// epilogue (tile 128x32; StagesD 2 for D and a stored Aux; StagesC 4 for a
// loaded Aux) costs a stage (256x128: 3 -> 2; 128x128: 4 -> 3;
// tests/cutlass_src/epilogue_smem_probe.cu prints the numbers). FusionOp wrapped with an epilogue tile EpiM x EpiN
// (0: CUTLASS's auto tile; M must be 128 for cooperative, 64 for ping-pong;
// N a multiple of 16) and StagesC (TMA-load stages of a loaded Aux; the
// epilogue has no source C) / StagesD (stages of D and of a stored Aux); 0
// keeps the builder's count. The CollectiveBuilder specialisation below builds
// the collective from it exactly as CUTLASS's sm90 TMA builder does, but for
// the overridden tile and stage counts.
template <class FusionOp_, int EpiM, int EpiN, int StagesC, int StagesD>
struct EpilogueShape {
  using FusionOp = FusionOp_;
  static_assert((EpiM == 0 || EpiM == 64 || EpiM == 128) && EpiN % 16 == 0 &&
                    (EpiM == 0) == (EpiN == 0),
                "epilogue tile: M 64 (ping-pong) or 128 (cooperative), N a multiple of 16; "
                "or both 0 for CUTLASS's auto tile");
  static_assert(StagesC >= 0 && StagesD >= 0, "stage counts: positive, or 0 for CUTLASS's");
};

// Epilogue traits with that layout; the plain EpilogueTraits<Epi> when all four
// are 0, so the original configs stay the very same types.
template <int Epi, int EpiM, int EpiN, int StagesC, int StagesD>
struct ShapedEpilogueTraits : EpilogueTraits<Epi> {
  using FusionOp =
      EpilogueShape<typename EpilogueTraits<Epi>::FusionOp, EpiM, EpiN, StagesC, StagesD>;
};
template <int Epi, int EpiM, int EpiN, int StagesC, int StagesD>
using EpilogueTraitsOf =
    std::conditional_t<EpiM == 0 && EpiN == 0 && StagesC == 0 && StagesD == 0,
                       EpilogueTraits<Epi>, ShapedEpilogueTraits<Epi, EpiM, EpiN, StagesC, StagesD>>;

template <int Epi, int TM, int TN, int TK, int CM, int CN, int Schedule, int EpiM = 0,
          int EpiN = 0, int StagesC = 0, int StagesD = 0>
using SparseEpiGemm = SparseGemmOf<EpilogueTraitsOf<Epi, EpiM, EpiN, StagesC, StagesD>, TM, TN,
                                   TK, CM, CN, Schedule>;

}  // namespace s24c

namespace cutlass::epilogue::collective {

// CUTLASS's sm90 TMA warp-specialised epilogue builder (builders/sm90_builder.inl:
// sm90_compute_tile_shape_or_override, sm90_get_tma_dispatch_policy,
// Sm90TmaBuilderImpl) for an s24c::EpilogueShape fusion op: what SparseGemmOf
// asks for (auto tile) becomes the wrapped tile, and the dispatch policy's
// StagesC / StagesD the wrapped counts; FragmentSize, ReuseSmemC and
// DelayTmaStore are recomputed by CUTLASS for that tile. With all four 0 it is
// the type the builder itself gives (epilogue_smem_probe.cu asserts so).
template <class TileShape_MNK, class ElementC, class GmemLayoutTagC, int AlignmentC,
          class ElementD, class GmemLayoutTagD, int AlignmentD, class Schedule, class FusionOp,
          int EpiM, int EpiN, int StagesC, int StagesD>
struct S24cShapedEpilogueBuilder {
  using EpilogueTileType =
      cute::conditional_t<EpiM == 0, EpilogueTileAuto, cute::Shape<cute::Int<EpiM>, cute::Int<EpiN>>>;
  using EpilogueTile_MN = decltype(detail::sm90_compute_tile_shape_or_override<
                                   ElementD, EpilogueTileType, Schedule, TileShape_MNK>());
  using AutoPolicy = decltype(detail::sm90_get_tma_dispatch_policy<
                              TileShape_MNK, EpilogueTile_MN, ElementC, ElementD, Schedule>());
  using DispatchPolicy = Sm90TmaWarpSpecialized<
      StagesC == 0 ? AutoPolicy::StagesC : StagesC, StagesD == 0 ? AutoPolicy::StagesD : StagesD,
      AutoPolicy::FragmentSize, AutoPolicy::ReuseSmemC, AutoPolicy::DelayTmaStore>;
  using CollectiveOp = typename detail::Sm90TmaBuilderImpl<
      TileShape_MNK, EpilogueTile_MN, float, float, ElementC, GmemLayoutTagC, AlignmentC,
      ElementD, GmemLayoutTagD, AlignmentD, FusionOp, DispatchPolicy>::CollectiveOp;
};

// The builder for it, once per schedule (ping-pong: TmaWarpSpecialized;
// cooperative), with the schedule spelled out: then this specialisation is more
// specialised than CUTLASS's generic TMA one (whose schedule is a parameter
// under enable_if), which a schedule parameter here would make ambiguous.
#define S24C_SHAPED_EPILOGUE_BUILDER(SCHEDULE)                                                  \
  template <class TileShape_MNK, class ClusterShape_MNK, class ElementC, class GmemLayoutTagC,  \
            int AlignmentC, class ElementD, class GmemLayoutTagD, int AlignmentD,               \
            class FusionOp, int EpiM, int EpiN, int StagesC, int StagesD>                       \
  struct CollectiveBuilder<arch::Sm90, arch::OpClassSparseTensorOp, TileShape_MNK,              \
                           ClusterShape_MNK, EpilogueTileAuto, float, float, ElementC,          \
                           GmemLayoutTagC, AlignmentC, ElementD, GmemLayoutTagD, AlignmentD,    \
                           SCHEDULE, s24c::EpilogueShape<FusionOp, EpiM, EpiN, StagesC, StagesD>, \
                           void>                                                                \
      : S24cShapedEpilogueBuilder<TileShape_MNK, ElementC, GmemLayoutTagC, AlignmentC, ElementD, \
                                  GmemLayoutTagD, AlignmentD, SCHEDULE, FusionOp, EpiM, EpiN,   \
                                  StagesC, StagesD> {};
S24C_SHAPED_EPILOGUE_BUILDER(TmaWarpSpecialized)
S24C_SHAPED_EPILOGUE_BUILDER(TmaWarpSpecializedCooperative)
#undef S24C_SHAPED_EPILOGUE_BUILDER

}  // namespace cutlass::epilogue::collective
