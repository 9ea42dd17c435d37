// One CUTLASS 3.x sm90 structured-sparse GEMM (warp-specialised, TMA, sparse
// wgmma), as a template over the tile / cluster / schedule and the product of
// a 2:4 linear it computes. Included by gemm_instance.cu only, which the build
// compiles once per (config, product) with -D flags (so instances compile in
// parallel and cache separately).
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
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "products.h"

namespace s24c {

using namespace cute;

template <int Product>
struct ProductTraits;

// fwd: B K-major (ColumnMajor Kc x Nc), D column-major bf16
template <>
struct ProductTraits<kFwd> {
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::ColumnMajor;
  using ElementD = cutlass::bfloat16_t;
};
template <>
struct ProductTraits<kDx> {
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::ColumnMajor;
  using ElementD = cutlass::bfloat16_t;
};
// dw: B MN-major (RowMajor Kc x Nc), D row-major float32
template <>
struct ProductTraits<kDw> {
  using LayoutB = cutlass::layout::RowMajor;
  using LayoutD = cutlass::layout::RowMajor;
  using ElementD = float;
};

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

// StreamK: CUTLASS's stream-K tile scheduler instead of the persistent one (the
// last wave's K loops split across CTAs, partial sums reduced through the
// workspace, which GemmUniversalAdapter::initialize clears): for the weight
// gradient, whose long K (the tokens) spans few output tiles (200 at GPT-2 774M:
// 1.5 waves on 132 SMs).
template <int Product, int TM, int TN, int TK, int CM, int CN, int Schedule, bool StreamK = false>
struct SparseGemm {
  using PT = ProductTraits<Product>;
  using ElementA = cutlass::bfloat16_t;
  using ElementB = cutlass::bfloat16_t;
  using ElementD = typename PT::ElementD;
  using ElementAcc = float;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = typename PT::LayoutB;
  using LayoutD = typename PT::LayoutD;
  static constexpr int kAlignA = 128 / cutlass::sizeof_bits<ElementA>::value;
  static constexpr int kAlignB = 128 / cutlass::sizeof_bits<ElementB>::value;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using TileShape = Shape<Int<TM>, Int<TN>, Int<TK>>;
  using ClusterShape = Shape<Int<CM>, Int<CN>, _1>;
  using ProblemShape = Shape<int, int, int, int>;

  // No source C (void): D = acc, nothing read.
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, void, LayoutD,
      kAlignD, ElementD, LayoutD, kAlignD,
      typename ScheduleTraits<Schedule>::Epilogue>::CollectiveOp;

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
  using StrideD = typename Kernel::StrideD;

  static typename Gemm::Arguments Args(const GemmCall& c) {
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
        {{ElementAcc(1), ElementAcc(0)}, nullptr, stride_d, static_cast<ElementD*>(c.d),
         stride_d},
        hw};
    return args;
  }

  static int CanImplement(const GemmCall& c) {
    auto args = Args(c);
    return Gemm::can_implement(args) == cutlass::Status::kSuccess ? 0 : 1;
  }

  static size_t WorkspaceBytes(const GemmCall& c) {
    auto args = Args(c);
    return Gemm::get_workspace_size(args);
  }

  static int Run(const GemmCall& c) {
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

// The compressed-A format every instance and compress.cu share (it depends on
// A's type and majorness and min(tile K, 128) only).
using CompressorConfig = SparseGemm<kFwd, 128, 128, 128, 1, 1, kCooperative>::SparseConfig;

}  // namespace s24c
