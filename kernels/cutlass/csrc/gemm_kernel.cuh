// One CUTLASS 3.x sm90 structured-sparse GEMM (warp-specialised, TMA, sparse
// wgmma), as a template over the tile / cluster / schedule and what it
// computes: SparseGemmOf<Traits, ...>, whose Traits name B's and D's layouts,
// D's type, the epilogue's fusion op and the call it takes. Here the plain
// products of a 2:4 linear (SparseGemm<product, ...>: D = acc); the fused
// epilogues are gemm_epilogue.cuh's traits over the same template. Included by
// gemm_instance.cu, which the build compiles once per (config, product) with -D
// flags (so instances compile in parallel and cache separately), and by
// gemm_epilogue.cuh.
//
// CUTLASS's convention: D (Mc x Nc) = A (Mc x Kc, 2:4 along Kc, K-major,
// given compressed: values + metadata) @ B (Kc x Nc). Our three products
// (products.h) map onto it as
//   fwd : Z^T  (N x M) = W_s (N x K)      @ X^T   ; B = X  (M,K) row-major   = K-major
//                                                    D = Z  (M,N) row-major   = Z^T col-major
//   dx  : dX^T (K x M) = W_s^T (K x N)    @ dZ^T  ; B = dZ (M,N) row-major   = K-major
//                                                    D = dX (M,K) row-major   = dX^T col-major
//   dw  : dW   (N x K) = S(dZ^T) (N x M)  @ X     ; B = X  (M,K) row-major   = MN-major
//                                                    D = dW (N,K) row-major, float32
//   dw_acc: dW = C + S(dZ^T) @ X, dw with a float32 source C of D's shape and layout
//           (a gradient accumulation's running sum, beta 1)
// A (the sparse operand) is always K-major (row-major Mc x Kc), which is what
// the sparse collective takes.

#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "products.h"

namespace s24c {

using namespace cute;

template <int Schedule>
struct ScheduleTraits;
template <>
struct ScheduleTraits<kCooperative> {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};
template <>
struct ScheduleTraits<kPingpong> {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};

// The plain products' epilogue: D = acc, CUTLASS's default fusion op
// (LinearCombination, alpha 1, beta 0; no source C: ElementC void).
template <class ElementD_>
struct PlainEpilogue {
  using ElementD = ElementD_;
  using ElementC = void;
  using FusionOp = cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>;
  using Call = GemmCall;
  template <class FusionArgs>
  static void SetFusion(FusionArgs&, const GemmCall&) {}
};

template <int Product>
struct ProductTraits;

// fwd: B K-major (ColumnMajor Kc x Nc), D column-major bf16
template <>
struct ProductTraits<kFwd> : PlainEpilogue<cutlass::bfloat16_t> {
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::ColumnMajor;
};
// dx: as fwd (the operands differ, not their layouts)
template <>
struct ProductTraits<kDx> : ProductTraits<kFwd> {};
// dw: B MN-major (RowMajor Kc x Nc), D row-major float32
template <>
struct ProductTraits<kDw> : PlainEpilogue<float> {
  using LayoutB = cutlass::layout::RowMajor;
  using LayoutD = cutlass::layout::RowMajor;
};
// dw_acc: dw plus a float32 source C read by the epilogue, D = acc + 1 * C. C may be
// D's own buffer (XLA aliases the running sum to the output): each output tile's C
// is loaded and its D stored by the one CTA that runs that tile's epilogue (under
// stream-K too: the partial sums meet in the workspace first), C before D.
template <>
struct ProductTraits<kDwAcc> : ProductTraits<kDw> {
  using ElementC = float;
  using FusionOp = cutlass::epilogue::fusion::LinearCombination<float, float, float, float>;
  template <class FusionArgs>
  static void SetFusion(FusionArgs& fusion, const GemmCall&) {
    fusion.beta = 1.0f;
  }
};

// Traits: LayoutB, LayoutD, ElementD, ElementC (void: no source C; else C has
// D's layout and alignment, at call.c), FusionOp, Call (GemmCall or a struct
// derived from it) and SetFusion(fusion arguments, call), which fills what the
// fusion op reads beyond alpha (1) and beta (0).
// StreamK: CUTLASS's stream-K tile scheduler instead of the persistent one (the
// last wave's K loops split across CTAs, partial sums reduced through the
// workspace, which GemmUniversalAdapter::initialize clears): for the weight
// gradient, whose long K (the tokens) spans few output tiles (200 at GPT-2 774M:
// 1.5 waves on 132 SMs). The decomposition is forced to stream-K: CUTLASS's
// heuristic runs a problem data parallel when its last wave is at least half
// full, which is GPT-2 774M's weight gradients (200 = 132 + 68 tiles), the very
// case stream-K is for (the persistent configs cover data parallel anyway).
template <class Traits, int TM, int TN, int TK, int CM, int CN, int Schedule,
          bool StreamK = false>
struct SparseGemmOf {
  using Call = typename Traits::Call;
  using ElementA = cutlass::bfloat16_t;
  using ElementB = cutlass::bfloat16_t;
  using ElementD = typename Traits::ElementD;
  using ElementC = typename Traits::ElementC;
  using ElementAcc = float;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = typename Traits::LayoutB;
  using LayoutD = typename Traits::LayoutD;
  static constexpr int kAlignA = 128 / cutlass::sizeof_bits<ElementA>::value;
  static constexpr int kAlignB = 128 / cutlass::sizeof_bits<ElementB>::value;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using TileShape = Shape<Int<TM>, Int<TN>, Int<TK>>;
  using ClusterShape = Shape<Int<CM>, Int<CN>, _1>;
  using ProblemShape = Shape<int, int, int, int>;

  // A source C only where Traits has one (dw_acc); otherwise (void) nothing is read but
  // what the fusion op reads itself.
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, ElementC, LayoutD,
      kAlignD, ElementD, LayoutD, kAlignD, typename ScheduleTraits<Schedule>::Epilogue,
      typename Traits::FusionOp>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, ElementA, LayoutA, kAlignA,
      ElementB, LayoutB, kAlignB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename ScheduleTraits<Schedule>::Kernel>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<
      ProblemShape, CollectiveMainloop, CollectiveEpilogue,
      std::conditional_t<StreamK, cutlass::gemm::StreamKScheduler, void>>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  using ElementE = typename CollectiveMainloop::ElementE;
  using StrideB = typename Kernel::StrideB;
  using StrideC = typename Kernel::StrideC;
  using StrideD = typename Kernel::StrideD;

  static typename Gemm::Arguments Args(const Call& c) {
    ProblemShape ps = make_tuple(c.m, c.n, c.k, 1);
    auto layout_a = SparseConfig::fill_layoutA(ps);
    auto layout_e = SparseConfig::fill_layoutE(ps);
    auto stride_b = cutlass::make_cute_packed_stride(StrideB{}, make_shape(c.n, c.k, 1));
    auto stride_c = cutlass::make_cute_packed_stride(StrideC{}, make_shape(c.m, c.n, 1));
    auto stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(c.m, c.n, 1));
    cutlass::KernelHardwareInfo hw;
    hw.device_id = c.device;
    hw.sm_count = c.sm_count;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        ps,
        {static_cast<const ElementA*>(c.a_values), layout_a, static_cast<const ElementB*>(c.b),
         stride_b, static_cast<const ElementE*>(c.a_meta), layout_e},
        {{}, static_cast<const ElementC*>(c.c), stride_c, static_cast<ElementD*>(c.d), stride_d},
        hw};
    if constexpr (StreamK) {
      using Decomposition = decltype(args.scheduler.decomposition_mode);
      args.scheduler.decomposition_mode = Decomposition::StreamK;
    }
    auto& fusion = args.epilogue.thread;
    fusion.alpha = ElementAcc(1);
    fusion.beta = ElementAcc(0);
    Traits::SetFusion(fusion, c);
    return args;
  }

  static int CanImplement(const Call& c) {
    auto args = Args(c);
    return Gemm::can_implement(args) == cutlass::Status::kSuccess ? 0 : 1;
  }

  static size_t WorkspaceBytes(const Call& c) {
    auto args = Args(c);
    return Gemm::get_workspace_size(args);
  }

  static int Run(const Call& c) {
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

  // This instance's row of its table (kind: the product or the epilogue).
  static Instance<Call> Describe(const char* config, int kind) {
    return Instance<Call>{config, kind, TM, TN, TK, CM, CN, Schedule,
                          &Run, &CanImplement, &WorkspaceBytes};
  }
};

template <int Product, int TM, int TN, int TK, int CM, int CN, int Schedule, bool StreamK = false>
using SparseGemm = SparseGemmOf<ProductTraits<Product>, TM, TN, TK, CM, CN, Schedule, StreamK>;

// The compressed-A format every instance and compress.cu share (it depends on
// A's type and majorness and min(tile K, 128) only).
using CompressorConfig = SparseGemm<kFwd, 128, 128, 128, 1, 1, kCooperative>::SparseConfig;

}  // namespace s24c
