// CUTLASS sm90 structured-sparse GEMMs with fused epilogues (epilogue.h says
// what each computes): gemm_kernel.cuh's SparseGemmOf with traits that are its
// fwd / dx products' (A = the compressed 2:4 weight, K-major; B K-major; D
// column-major bf16) but for the epilogue, built from CUTLASS's fusion operations:
//   kFwdGelu : LinCombPerRowBiasGeluGradAux (below: CUTLASS's
//              LinCombPerRowBiasEltActAux tree with a mapped Aux store), z = acc + bias_row:
//              D = bf16(gelu(z)), Aux = bf16(gelu'(z)), both from the float32 z;
//              bias null = no bias.
//   kDxDgelu : fusion::LinCombDeEltAct with MulAux (below):
//              D = bf16(acc * Aux), Aux = gelu'(Z1) (bf16, D's layout) read by TMA.
// Why the forward saves gelu'(z) rather than z: the input-gradient epilogue runs
// after each tile's mainloop, and a multiply there costs less than gelu'(z)
// (one exponential, one reciprocal and about 15 more instructions per element);
// the forward epilogue already has Phi(z) and phi(z) for gelu(z) (gelu_math.h),
// so gelu'(z) = Phi(z) + z phi(z) costs it two instructions. Same bytes either way.
// Included by epilogue_instance.cu only (compiled once per (config, epilogue)).

#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "epilogue.h"
#include "epilogue_mvue.cuh"
#include "gelu_math.h"
#include "gemm_kernel.cuh"

namespace s24c {

using namespace cute;

// A scalar functor applied element by element: the fragment form CUTLASS's
// epilogue calls (Sm90Compute hands its activation a cutlass::Array).
template <template <class> class Fn, class T, int N>
CUTLASS_HOST_DEVICE cutlass::Array<T, N> Elementwise(cutlass::Array<T, N> const& z) {
  cutlass::Array<T, N> y;
  Fn<T> op;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < N; ++i) y[i] = op(z[i]);
  return y;
}

// The exact GELU (erf form) and its derivative, as CUTLASS epilogue activations
// (scalar and fragment forms), on gelu_math.h's one-exponential Phi / phi:
// CUTLASS's thread::GELU calls erff, and erff + expf made the fused epilogues
// compute-bound (gelu_math.h says by how much).
template <class T>
struct GeluErfFast {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE
  T operator()(T const& z) const { return T(GeluErf(static_cast<float>(z))); }
};

// (the qualified name: inside the specialisation, GeluErfFast alone is the class)
template <class T, int N>
struct GeluErfFast<cutlass::Array<T, N>> {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE
  cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& z) const {
    return Elementwise<::s24c::GeluErfFast>(z);
  }
};

// gelu'(z), for the forward's Aux. Inlined beside GeluErfFast on the same z, so
// the compiler computes NormalCdfPdf once for both.
template <class T>
struct GeluErfGradFast {
  CUTLASS_HOST_DEVICE
  T operator()(T const& z) const { return T(GeluErfGrad(static_cast<float>(z))); }
};

template <class T, int N>
struct GeluErfGradFast<cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE
  cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& z) const {
    return Elementwise<::s24c::GeluErfGradFast>(z);
  }
};

// The input-gradient epilogue's "activation backward": dy times the saved
// derivative g = gelu'(z) (LinCombDeEltAct hands it the Aux tensor as its
// second operand, in float32).
template <class T>
struct MulAux {
  static const bool kIsHeavy = false;
  CUTLASS_HOST_DEVICE
  T operator()(T const& dy, T const& g) const { return dy * g; }
};

template <class T, int N>
struct MulAux<cutlass::Array<T, N>> {
  static const bool kIsHeavy = false;
  CUTLASS_HOST_DEVICE
  cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& dy,
                                  cutlass::Array<T, N> const& g) const {
    cutlass::Array<T, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = dy[i] * g[i];
    return y;
  }
};

// An Aux store that writes Fn(input) and passes its input on unchanged (CUTLASS's
// Sm90AuxStore writes the input itself): everything but the consumer callbacks'
// visit is Store's.
template <template <class> class Fn, class Store>
struct Sm90MappedAuxStore : Store {
  using Store::Store;

  template <class Callbacks>
  struct MappedCallbacks : Callbacks {
    CUTLASS_DEVICE explicit MappedCallbacks(Callbacks&& cb) : Callbacks(cute::move(cb)) {}

    template <class ElementAccumulator, class ElementInput, int FragmentSize>
    CUTLASS_DEVICE auto visit(cutlass::Array<ElementAccumulator, FragmentSize> const& frg_acc,
                              int epi_v, int epi_m, int epi_n,
                              cutlass::Array<ElementInput, FragmentSize> const& frg_input) {
      Callbacks::visit(frg_acc, epi_v, epi_m, epi_n,
                       Fn<cutlass::Array<ElementInput, FragmentSize>>{}(frg_input));
      return frg_input;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(
      cutlass::epilogue::fusion::ConsumerStoreArgs<Args...> const& args) {
    auto cb = Store::template get_consumer_store_callbacks<ReferenceSrc>(args);
    return MappedCallbacks<decltype(cb)>(cute::move(cb));
  }
};

// D = gelu(z), Aux = gelu'(z), z = alpha acc + per-row bias: CUTLASS's
// LinCombPerRowBiasEltActAux (whose traits the builder reads) but for the Aux
// written, which the FusionCallbacks specialisation at the end of this file builds.
template <class GmemLayoutTagAux, class ElementOutput, class ElementCompute, class ElementAux,
          class ElementBias, class ElementScalar>
struct LinCombPerRowBiasGeluGradAux
    : cutlass::epilogue::fusion::LinCombPerRowBiasEltActAux<
          GmemLayoutTagAux, GeluErfFast, ElementOutput, ElementCompute, ElementAux, ElementBias,
          /*ElementSource=*/void, ElementScalar> {};

// dZ1 = acc * Aux as LinCombDeEltAct<MulAux>, and S_z(dZ1^T) from the stored
// bf16 dZ1 (epilogue_mvue.cuh): CUTLASS's operation (whose traits the builder
// reads) with the MVUE node on top, built by the FusionCallbacks
// specialisation at the end of this file.
template <class GmemLayoutTagAux, class ElementOutput, class ElementCompute, class ElementAux,
          class ElementScalar>
struct LinCombMulAuxMvue
    : cutlass::epilogue::fusion::LinCombDeEltAct<GmemLayoutTagAux, MulAux, ElementOutput,
                                                 ElementCompute, ElementAux,
                                                 /*ElementSource=*/void, ElementScalar> {};

// What the fused epilogues are: their product's layouts and D type, EpiCall,
// and an Aux tensor (gelu'(Z)) of D's shape and layout, written (fwd_gelu) or
// read (dx_dgelu) through the fusion op's aux_ptr.
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
  using FusionOp = LinCombPerRowBiasGeluGradAux<
      LayoutD, cutlass::bfloat16_t, float, /*ElementAux=*/cutlass::bfloat16_t,
      /*ElementBias=*/cutlass::bfloat16_t, /*ElementScalar=*/float>;
  template <class FusionArgs>
  static void SetFusion(FusionArgs& fusion, const EpiCall& c) {
    FusedProductTraits<kFwd>::SetFusion(fusion, c);
    fusion.bias_ptr = static_cast<const cutlass::bfloat16_t*>(c.bias);
  }
};

template <>
struct EpilogueTraits<kDxDgelu> : FusedProductTraits<kDx> {
  using FusionOp = cutlass::epilogue::fusion::LinCombDeEltAct<
      LayoutD, MulAux, cutlass::bfloat16_t, float,
      /*ElementAux=*/cutlass::bfloat16_t, /*ElementSource=*/void, /*ElementScalar=*/float>;
};

template <>
struct EpilogueTraits<kDxDgeluMvue> : FusedProductTraits<kDx> {
  using FusionOp = LinCombMulAuxMvue<LayoutD, cutlass::bfloat16_t, float,
                                     /*ElementAux=*/cutlass::bfloat16_t, /*ElementScalar=*/float>;
  template <class FusionArgs>
  static void SetFusion(FusionArgs& fusion, const EpiCall& c) {
    FusedProductTraits<kDx>::SetFusion(fusion, c);
    fusion.mvue_values = static_cast<uint32_t*>(c.mvue_values);
    fusion.mvue_meta = static_cast<uint8_t*>(c.mvue_meta);
    fusion.mvue_seed = static_cast<const uint32_t*>(c.seed);
  }
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

namespace cutlass::epilogue::fusion {

// The callbacks of s24c::LinCombPerRowBiasGeluGradAux: CUTLASS's tree for
// LinCombPerRowBiasEltActAux (sm90_callbacks_tma_warpspecialized.hpp) with the Aux
// store mapped through gelu':
//   D = gelu(store_{Aux = gelu'(z)}(z)),  z = alpha acc + bias_row.
template <int StagesC, int StagesD, int FragmentSize, bool ReuseSmemC, bool DelayTmaStore,
          class GmemLayoutTagAux, class ElementOutput, class ElementCompute, class ElementAux,
          class ElementBias, class ElementScalar, class CtaTileShapeMNK, class EpilogueTile,
          class SmemLayoutAtom, class CopyOpR2S>
struct FusionCallbacks<
    epilogue::Sm90TmaWarpSpecialized<StagesC, StagesD, FragmentSize, ReuseSmemC, DelayTmaStore>,
    s24c::LinCombPerRowBiasGeluGradAux<GmemLayoutTagAux, ElementOutput, ElementCompute,
                                       ElementAux, ElementBias, ElementScalar>,
    CtaTileShapeMNK, EpilogueTile, SmemLayoutAtom, CopyOpR2S>
    : Sm90EVT<Sm90Compute<s24c::GeluErfFast, ElementOutput, ElementCompute,
                          FloatRoundStyle::round_to_nearest>,
              Sm90EVT<s24c::Sm90MappedAuxStore<
                           s24c::GeluErfGradFast,
                           Sm90AuxStore<StagesD, EpilogueTile, ElementAux,
                                        FloatRoundStyle::round_to_nearest,
                                        cutlass::gemm::TagToStrideC_t<GmemLayoutTagAux>,
                                        SmemLayoutAtom, CopyOpR2S,
                                        128 / sizeof_bits_v<ElementAux>>>,
                      Sm90LinCombPerRowBias<CtaTileShapeMNK, ElementCompute, ElementCompute,
                                            ElementBias, /*ElementSource=*/void, ElementScalar,
                                            128 / sizeof_bits_v<ElementBias>,
                                            FloatRoundStyle::round_to_nearest>>> {
  using Impl = typename FusionCallbacks::Sm90TreeVisitor;  // the base above (Sm90EVT is its alias)
  using Operation = s24c::LinCombPerRowBiasGeluGradAux<GmemLayoutTagAux, ElementOutput,
                                                       ElementCompute, ElementAux, ElementBias,
                                                       ElementScalar>;

  // CUTLASS's LinCombPerRowBiasEltActAux arguments (gemm_epilogue.cuh's SetFusion
  // fills aux_ptr, dAux and bias_ptr), mapped onto the tree the same way.
  struct Arguments {
    ElementScalar alpha = ElementScalar(1);
    ElementScalar beta = ElementScalar(0);
    ElementScalar const* alpha_ptr = nullptr;
    ElementScalar const* beta_ptr = nullptr;

    using StrideAlpha = Stride<_0, _0, int64_t>;
    using StrideBeta = Stride<_0, _0, int64_t>;
    StrideAlpha dAlpha = {_0{}, _0{}, 0};
    StrideBeta dBeta = {_0{}, _0{}, 0};

    using StrideBias = Stride<_1, _0, int64_t>;
    ElementBias const* bias_ptr = nullptr;
    StrideBias dBias = {};

    using StrideAux = cutlass::gemm::TagToStrideC_t<GmemLayoutTagAux>;
    ElementAux* aux_ptr = nullptr;
    StrideAux dAux = {};

    operator typename Impl::Arguments() const {
      return {
          // unary op: gelu(store(beta * C + (alpha * acc + bias)))
          {
              // unary op: store_{gelu'}(beta * C + (alpha * acc + bias))
              {
                  // ternary op: beta * C + (alpha * acc + bias)
                  {{beta}, {beta_ptr}, {dBeta}},  // leaf: beta
                  {},                             // leaf: C
                  {
                      // ternary op: alpha * acc + bias
                      {{alpha}, {alpha_ptr}, {dAlpha}},    // leaf: alpha
                      {},                                  // leaf: acc
                      {bias_ptr, ElementBias(0), dBias},  // leaf: bias
                      {}                                   // multiply_add
                  },
                  {}  // multiply_add
              },
              {aux_ptr, dAux}  // store
          },
          {}  // gelu
      };
    }
  };

  using Impl::Impl;
};

// The callbacks of s24c::LinCombMulAuxMvue: CUTLASS's for LinCombDeEltAct<MulAux>
// (Unfused: its tree and its Arguments) under the MVUE node:
//   mvue_store(bf16(acc * aux)),  which passes dZ1 on to D unchanged.
template <class Policy, class GmemLayoutTagAux, class ElementOutput, class ElementCompute,
          class ElementAux, class ElementScalar, class CtaTileShapeMNK, class EpilogueTile,
          class SmemLayoutAtom, class CopyOpS2R>
using MulAuxCallbacks =
    FusionCallbacks<Policy,
                    LinCombDeEltAct<GmemLayoutTagAux, s24c::MulAux, ElementOutput, ElementCompute,
                                    ElementAux, /*ElementSource=*/void, ElementScalar>,
                    CtaTileShapeMNK, EpilogueTile, SmemLayoutAtom, CopyOpS2R>;

template <int StagesC, int StagesD, int FragmentSize, bool ReuseSmemC, bool DelayTmaStore,
          class GmemLayoutTagAux, class ElementOutput, class ElementCompute, class ElementAux,
          class ElementScalar, class CtaTileShapeMNK, class EpilogueTile, class SmemLayoutAtom,
          class CopyOpS2R>
struct FusionCallbacks<
    epilogue::Sm90TmaWarpSpecialized<StagesC, StagesD, FragmentSize, ReuseSmemC, DelayTmaStore>,
    s24c::LinCombMulAuxMvue<GmemLayoutTagAux, ElementOutput, ElementCompute, ElementAux,
                            ElementScalar>,
    CtaTileShapeMNK, EpilogueTile, SmemLayoutAtom, CopyOpS2R>
    : Sm90EVT<s24c::Sm90MvueStore,
              typename MulAuxCallbacks<
                  epilogue::Sm90TmaWarpSpecialized<StagesC, StagesD, FragmentSize, ReuseSmemC,
                                                   DelayTmaStore>,
                  GmemLayoutTagAux, ElementOutput, ElementCompute, ElementAux, ElementScalar,
                  CtaTileShapeMNK, EpilogueTile, SmemLayoutAtom, CopyOpS2R>::Impl> {
  using Impl = typename FusionCallbacks::Sm90TreeVisitor;  // the base above (Sm90EVT is its alias)
  using Operation = s24c::LinCombMulAuxMvue<GmemLayoutTagAux, ElementOutput, ElementCompute,
                                            ElementAux, ElementScalar>;
  using Unfused = MulAuxCallbacks<
      epilogue::Sm90TmaWarpSpecialized<StagesC, StagesD, FragmentSize, ReuseSmemC, DelayTmaStore>,
      GmemLayoutTagAux, ElementOutput, ElementCompute, ElementAux, ElementScalar, CtaTileShapeMNK,
      EpilogueTile, SmemLayoutAtom, CopyOpS2R>;

  // CUTLASS's LinCombDeEltAct arguments (SetFusion fills aux_ptr and dAux) and the MVUE's
  struct Arguments : Unfused::Arguments {
    uint32_t* mvue_values = nullptr;
    uint8_t* mvue_meta = nullptr;
    uint32_t const* mvue_seed = nullptr;

    operator typename Impl::Arguments() const {
      return {typename Unfused::Impl::Arguments(static_cast<typename Unfused::Arguments const&>(*this)),
              {mvue_values, mvue_meta, mvue_seed}};
    }
  };

  using Impl::Impl;
};

}  // namespace cutlass::epilogue::fusion
