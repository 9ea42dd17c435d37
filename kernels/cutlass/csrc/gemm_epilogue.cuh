// CUTLASS sm90 structured-sparse GEMMs with fused epilogues (epilogue.h says
// what each computes). Same mainloop as gemm_kernel.cuh's fwd / dx products
// (A = the compressed 2:4 weight, K-major; B K-major; D column-major bf16),
// with the epilogue built from CUTLASS's fusion operations:
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

#include <cstddef>
#include <cstdint>

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

template <int Epi>
struct EpilogueTraits;

template <>
struct EpilogueTraits<kFwdGelu> {
  using Layout = cutlass::layout::ColumnMajor;  // D and Aux: (M, N) row-major = col-major Mc x Nc
  using FusionOp = cutlass::epilogue::fusion::LinCombPerRowBiasEltActAux<
      Layout, GeluErfFast, cutlass::bfloat16_t, float,
      /*ElementAux=*/cutlass::bfloat16_t, /*ElementBias=*/cutlass::bfloat16_t,
      /*ElementSource=*/void, /*ElementScalar=*/float>;
};

template <>
struct EpilogueTraits<kDxDgelu> {
  using Layout = cutlass::layout::ColumnMajor;
  using FusionOp = cutlass::epilogue::fusion::LinCombDeEltAct<
      Layout, DGeluErf, cutlass::bfloat16_t, float,
      /*ElementAux=*/cutlass::bfloat16_t, /*ElementSource=*/void, /*ElementScalar=*/float>;
};

template <int Epi, int TM, int TN, int TK, int CM, int CN, int Schedule>
struct SparseEpiGemm {
  using ET = EpilogueTraits<Epi>;
  using ElementA = cutlass::bfloat16_t;
  using ElementB = cutlass::bfloat16_t;
  using ElementD = cutlass::bfloat16_t;
  using ElementAux = cutlass::bfloat16_t;
  using ElementAcc = float;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = typename ET::Layout;
  static constexpr int kAlignA = 128 / cutlass::sizeof_bits<ElementA>::value;
  static constexpr int kAlignB = 128 / cutlass::sizeof_bits<ElementB>::value;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using TileShape = Shape<Int<TM>, Int<TN>, Int<TK>>;
  using ClusterShape = Shape<Int<CM>, Int<CN>, _1>;
  using ProblemShape = Shape<int, int, int, int>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, void, LayoutD,
      kAlignD, ElementD, LayoutD, kAlignD, typename ScheduleTraits<Schedule>::Epilogue,
      typename ET::FusionOp>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, ElementA, LayoutA, kAlignA,
      ElementB, LayoutB, kAlignB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename ScheduleTraits<Schedule>::Kernel>::CollectiveOp;

  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  using ElementE = typename CollectiveMainloop::ElementE;
  using StrideB = typename Kernel::StrideB;
  using StrideD = typename Kernel::StrideD;

  static typename Gemm::Arguments Args(const EpiCall& c) {
    ProblemShape ps = make_tuple(c.m, c.n, c.k, 1);
    auto layout_a = SparseConfig::fill_layoutA(ps);
    auto layout_e = SparseConfig::fill_layoutE(ps);
    auto stride_b = cutlass::make_cute_packed_stride(StrideB{}, make_shape(c.n, c.k, 1));
    auto stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(c.m, c.n, 1));
    cutlass::KernelHardwareInfo hw;
    hw.device_id = c.device;
    hw.sm_count = c.sm_count;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        ps,
        {static_cast<const ElementA*>(c.a_values), layout_a, static_cast<const ElementB*>(c.b),
         stride_b, static_cast<const ElementE*>(c.a_meta), layout_e},
        {{}, nullptr, stride_d, static_cast<ElementD*>(c.d), stride_d},
        hw};
    auto& fusion = args.epilogue.thread;
    fusion.alpha = 1.0f;
    fusion.beta = 0.0f;
    using StrideAux = typename std::remove_reference_t<decltype(fusion)>::StrideAux;
    fusion.dAux = cutlass::make_cute_packed_stride(StrideAux{}, make_shape(c.m, c.n, 1));
    if constexpr (Epi == kFwdGelu) {
      fusion.aux_ptr = static_cast<ElementAux*>(c.aux);
      fusion.bias_ptr = static_cast<const cutlass::bfloat16_t*>(c.bias);
    } else {
      fusion.aux_ptr = static_cast<const ElementAux*>(c.aux);
    }
    return args;
  }

  static int CanImplement(const EpiCall& c) {
    auto args = Args(c);
    return Gemm::can_implement(args) == cutlass::Status::kSuccess ? 0 : 1;
  }

  static size_t WorkspaceBytes(const EpiCall& c) {
    auto args = Args(c);
    return Gemm::get_workspace_size(args);
  }

  static int Run(const EpiCall& c) {
    auto args = Args(c);
    if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return kErrCannotImplement;
    if (Gemm::get_workspace_size(args) > c.workspace_bytes) return kErrWorkspace;
    Gemm gemm;
    if (gemm.initialize(args, c.workspace, c.stream) != cutlass::Status::kSuccess) {
      return kErrInitialize;
    }
    if (gemm.run(c.stream) != cutlass::Status::kSuccess) return kErrLaunch;
    return cudaGetLastError() == cudaSuccess ? 0 : kErrLaunch;
  }
};

}  // namespace s24c
