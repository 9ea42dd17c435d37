// The MVUE of dZ1 inside fc2's input-gradient epilogue (epilogue.h kDxDgeluMvue):
// a CUTLASS sm90 epilogue visitor node that takes the bf16 dZ1 fragments the
// epilogue is about to store and also writes S_z(dZ1^T), MVUE-pruned 2:4 along
// the tokens and compressed in CUTLASS's format, for fc1's weight-gradient GEMM.
// The bytes are OwnMvueBlock's (own_compress.cuh) on the stored dZ1: the same group
// code (OwnMvueGroup), the same draw (counter = feature * tokens/4 + group), the
// same value pairs and metadata bytes; the separate pass over dZ1 (read 2 bytes,
// write 1.1 per element) is gone.
//
// Where the groups are. The GEMM is D (Mc = features, Nc = tokens), column-major
// (dZ1 row-major); a group is 4 consecutive tokens of one feature row, i.e. 4
// consecutive columns of D. The sm90 GMMA accumulator gives lane l of a warp
// columns 2 (l % 4) and 2 (l % 4) + 1 of each 8-column block (rows l / 4 and
// l / 4 + 8 of its warp's 16): a group is two lanes' column pairs, lanes l and
// l ^ 1 at the same fragment index, and a metadata byte (groups 2B, 2B + 1: 8
// columns) is the quad 4 (l / 4) .. + 3. Each visit holds the thread's column
// pairs as consecutive fragment elements (checked: a fragment whose coordinates
// say otherwise traps, and the GPU test compares bytes with OwnMvueBlock).
//
// Per two column pairs p0, p1 of a fragment (elements 4k .. 4k + 3): one 32-bit
// shuffle with lane ^ 1 gives the even lane the whole group of p0 and the odd
// lane that of p1, so each lane prunes one group (the same instructions on both,
// no divergence); a shuffle with lane ^ 2 brings the next group's code, and the
// lanes with l % 4 < 2 store the metadata byte. Value pairs go straight to
// global memory (4 bytes per group; a warp's stores cover 8-byte pieces of 16
// rows, which L2 merges with the neighbouring tiles' columns).
//
// Tokens past the problem (a partial last tile) store nothing but write code 0
// where CUTLASS's metadata pads the token axis to a multiple of 128 (as OwnMvueBlock
// and CUTLASS's compressor do); rows past it store nothing.

#pragma once

#include <cstdint>

#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "own_compress.cuh"
#include "sm90_layout.cuh"

namespace s24c {

using namespace cute;

struct Sm90MvueStore {
  struct SharedStorage {};

  struct Arguments {
    uint32_t* values = nullptr;      // (Mc features, Nc/2 tokens) bf16 pairs: Mc x Nc/4 words
    uint8_t* meta = nullptr;         // CUTLASS's metadata of an (Mc, Nc) operand
    const uint32_t* seed = nullptr;  // uint32[2], own_ops.seed_from_key
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const&) {
    return true;  // the handler checks the buffers (and sizes workspaces with none)
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*,
                                              cudaStream_t, cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  CUTLASS_HOST_DEVICE Sm90MvueStore() {}
  CUTLASS_HOST_DEVICE Sm90MvueStore(Params const& params, SharedStorage const&) : params_ptr(&params) {}

  Params const* params_ptr = nullptr;

  CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_C_load_needed() const { return false; }

  template <class... Args>
  CUTLASS_DEVICE auto get_producer_load_callbacks(
      cutlass::epilogue::fusion::ProducerLoadArgs<Args...> const&) {
    return cutlass::epilogue::fusion::EmptyProducerLoadCallbacks{};
  }

  template <class CTensor>
  struct ConsumerStoreCallbacks : cutlass::epilogue::fusion::EmptyConsumerStoreCallbacks {
    CUTLASS_DEVICE ConsumerStoreCallbacks(CTensor&& tC_c, Params const* params, int rows,
                                          int tokens)
        : tC_c(cute::forward<CTensor>(tC_c)),
          params(params),
          keys(s24::MakeMvueKeys(params->seed)),
          rows(static_cast<uint32_t>(rows)),
          groups(static_cast<uint32_t>(tokens) / 4u),
          meta_groups(static_cast<uint32_t>(s24cutlass::MetaCols(tokens, s24cutlass::kDefaultTileK) / 4)),
          meta_rows(static_cast<uint32_t>(s24cutlass::MetaRows(rows))) {}

    CTensor tC_c;  // (m, n, l) of each fragment element, in visit's order
    Params const* params;
    s24::MvueKeys keys;
    // 32-bit: the handler refuses operands whose values or metadata pass 2^32 elements / bytes
    uint32_t rows, groups, meta_groups, meta_rows;

    template <class ElementAccumulator, class ElementInput, int FragmentSize>
    CUTLASS_DEVICE auto visit(cutlass::Array<ElementAccumulator, FragmentSize> const&, int epi_v,
                              int epi_m, int epi_n,
                              cutlass::Array<ElementInput, FragmentSize> const& frg_input) {
      static_assert(cute::is_same_v<ElementInput, cutlass::bfloat16_t>,
                    "the MVUE prunes dZ1 as stored: put it above a bf16 output node");
      static_assert(FragmentSize % 4 == 0, "two column pairs per step");
      const int lane = static_cast<int>(threadIdx.x % 32);
      const bool odd = lane & 1;
      // in registers for the visit (the callbacks object may live in local memory)
      const s24::MvueKeys k_ = keys;
      const uint32_t rows_ = rows, groups_ = groups, meta_groups_ = meta_groups, meta_rows_ = meta_rows;
      uint32_t* const values = params->values;
      uint8_t* const meta = params->meta;
      Tensor c = tC_c(_, _, _, epi_m, epi_n);
      uint16_t bits[FragmentSize];
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; ++i) {
        const cutlass::bfloat16_t v = frg_input[i];
        bits[i] = v.raw();
      }
      CUTLASS_PRAGMA_UNROLL
      for (int q = 0; q < FragmentSize / 4; ++q) {
        const int j0 = epi_v * FragmentSize + 4 * q;  // pair p0: elements j0, j0 + 1; p1: j0 + 2, + 3
        const auto c0 = c(j0), c1 = c(j0 + 2);
        // the layout this relies on (see the top): each pair two consecutive columns of a row
        if (get<1>(c(j0 + 1)) != get<1>(c0) + 1 || get<0>(c(j0 + 1)) != get<0>(c0) ||
            get<1>(c(j0 + 3)) != get<1>(c1) + 1 || get<0>(c(j0 + 3)) != get<0>(c1) ||
            (get<1>(c0) & 1) != 0) {
          __trap();
        }
        const uint32_t own0 = bits[4 * q] | (static_cast<uint32_t>(bits[4 * q + 1]) << 16);
        const uint32_t own1 = bits[4 * q + 2] | (static_cast<uint32_t>(bits[4 * q + 3]) << 16);
        // even lane: group of p0 (its columns first); odd lane: group of p1 (its columns last)
        const uint32_t recv = __shfl_xor_sync(0xFFFFFFFFu, odd ? own0 : own1, 1);
        const uint32_t w01 = odd ? recv : own0, w23 = odd ? own1 : recv;
        const uint32_t m = static_cast<uint32_t>(odd ? get<0>(c1) : get<0>(c0));
        const uint32_t g = static_cast<uint32_t>(odd ? get<1>(c1) : get<1>(c0)) >> 2;
        const uint32_t counter = m * groups_ + g;  // the draw's counter and the pair's word
        const uint32_t x[4] = {w01 & 0xFFFFu, w01 >> 16, w23 & 0xFFFFu, w23 >> 16};
        uint32_t pair, code;
        OwnMvueGroup(k_, counter, x, 0, &pair, &code);
        const bool row_in = m < rows_, in = row_in && g < groups_;
        if (!in) code = 0;  // padding of the token axis: CUTLASS's code 0
        if (in) values[counter] = pair;
        const uint32_t hi = __shfl_xor_sync(0xFFFFFFFFu, code, 2);
        // lanes 4q, 4q + 1 hold the even group of the byte (columns 0..3 of the 8)
        if ((lane & 2) == 0 && row_in && g < meta_groups_) {
          meta[OwnMetaByte(m, g, meta_rows_)] = static_cast<uint8_t>(code | (hi << 4));
        }
      }
      return frg_input;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(
      cutlass::epilogue::fusion::ConsumerStoreArgs<Args...> const& args) {
    auto [M, N, K, L] = args.problem_shape_mnkl;
    Tensor coord = make_identity_tensor(make_shape(M, N, L));
    Tensor tC_c = cutlass::epilogue::fusion::sm90_partition_for_epilogue<ReferenceSrc>(
        coord, args.tile_shape_mnk, args.tile_coord_mnkl, args.epi_tile, args.tiled_copy,
        args.thread_idx);
    return ConsumerStoreCallbacks<decltype(tC_c)>(cute::move(tC_c), params_ptr, static_cast<int>(M),
                                                  static_cast<int>(N));
  }
};

}  // namespace s24c
