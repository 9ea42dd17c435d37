// Host-only probe of the sparse GEMMs' shared memory: for the plain GEMM, each
// fused epilogue (gemm_epilogue.cuh) at each tile config and epilogue shape, and the
// weight gradient with and without a source C (dw, dw_acc), the
// sparse mainloop's stage count and bytes per stage, the epilogue collective's
// SharedStorage, its tile and StagesC / StagesD, and the kernel's whole
// SharedStorage against the sm90 limit (227 KB = 232448 bytes). The types are
// instantiated, no kernel is (nothing runs on a GPU; nvcc for sm_90a, ~1 min):
//
//   nvcc -std=c++17 -O0 --expt-relaxed-constexpr -arch=sm_90a -DNDEBUG \
//     -diag-suppress 940,2473 -I kernels/cutlass/csrc -I $CUTLASS/include \
//     -I $CUTLASS/tools/util/include tests/cutlass_src/epilogue_smem_probe.cu \
//     -o /tmp/epilogue_smem_probe && /tmp/epilogue_smem_probe
//
// ($CUTLASS: the nvidia-cutlass wheel's cutlass_library/source, or
// SPARSE24_CUTLASS_DIR.) The table below: build.py's EPILOGUE_CONFIGS (CUTLASS's
// auto epilogue, "auto", and the shaped ones, e<M>x<N>[_sc<StagesC>][_sd<StagesD>]
// from Config.epi_*) and a few candidates that are not built ("cand."). With
// -DS24C_PROBE_CONFIGS='X(...) X(...)' it prints those rows instead
// (tests/test_cutlass_epilogue_smem.py: every shaped config gives its fused
// epilogues the plain GEMM's stage count). The compile-time asserts check that
// the EpilogueShape builder gives CUTLASS's own collective when given nothing or
// the auto tile and stage counts.

#include <cstdio>
#include <type_traits>

#include "gemm_epilogue.cuh"

namespace {

using namespace s24c;

constexpr int kSmemLimit = 232448;  // cutlass::gemm::collective::detail::sm90_smem_capacity_bytes

template <class G>
void Row(const char* config, const char* what, const char* shape) {
  using M = typename G::CollectiveMainloop;
  using E = typename G::CollectiveEpilogue;
  using Tile = typename E::EpilogueTile;
  constexpr int stages = M::DispatchPolicy::Stages;
  constexpr int stage_bytes = static_cast<int>(M::TmaTransactionBytes);
  constexpr int mainloop = static_cast<int>(sizeof(typename M::SharedStorage));
  constexpr int epilogue = static_cast<int>(sizeof(typename E::SharedStorage));
  constexpr int total = G::Kernel::SharedStorageSize;
  std::printf("| %-26s | %-8s | %-21s | %6d | %9d | %8d | %8d | %4dx%-3d | %7d | %7d | %7d | %6d |\n",
              config, what, shape, stages, stage_bytes, mainloop, epilogue,
              int(cute::size<0>(Tile{})), int(cute::size<1>(Tile{})), int(E::DispatchPolicy::StagesC),
              int(E::DispatchPolicy::StagesD), total, kSmemLimit - total);
}

template <int TM, int TN, int Schedule>
void Plain(const char* config) {
  Row<SparseGemm<kFwd, TM, TN, 128, 1, 1, Schedule>>(config, "plain", "auto");
}

// The weight gradient without and with the running sum read as source C (dw_acc): C's
// float32 epilogue stages cost the mainloop a stage at ping-pong 128x128 (4 -> 3) and leave
// 128x256 one (CUTLASS needs two: build.py builds no dw_acc there).
template <int TM, int TN, int Schedule, bool StreamK = false>
void WeightGrad(const char* config) {
  Row<SparseGemm<kDw, TM, TN, 128, 1, 1, Schedule, StreamK>>(config, "dw", "auto");
  Row<SparseGemm<kDwAcc, TM, TN, 128, 1, 1, Schedule, StreamK>>(config, "dw_acc", "auto");
}

template <int TM, int TN, int Schedule, int EM = 0, int EN = 0, int SC = 0, int SD = 0>
void Fused(const char* config, const char* shape) {
  Row<SparseEpiGemm<kFwdGelu, TM, TN, 128, 1, 1, Schedule, EM, EN, SC, SD>>(config, "fwd_gelu",
                                                                            shape);
  Row<SparseEpiGemm<kDxDgelu, TM, TN, 128, 1, 1, Schedule, EM, EN, SC, SD>>(config, "dx_dgelu",
                                                                            shape);
  // the MVUE node has no shared memory of its own: dx_dgelu's row again, checked
  Row<SparseEpiGemm<kDxDgeluMvue, TM, TN, 128, 1, 1, Schedule, EM, EN, SC, SD>>(
      config, "dx_dgelu_mvue", shape);
}

// EpilogueShape with nothing overridden, or with the auto tile and stage counts
// spelled out, is the collective CUTLASS's builder gives.
template <int Epi, int TM, int TN, int Schedule, int EM, int EN, int SC, int SD>
constexpr bool SameAsAuto() {
  using Auto = typename SparseEpiGemm<Epi, TM, TN, 128, 1, 1, Schedule>::CollectiveEpilogue;
  using Shaped = typename SparseGemmOf<ShapedEpilogueTraits<Epi, EM, EN, SC, SD>, TM, TN, 128, 1,
                                       1, Schedule>::CollectiveEpilogue;
  return std::is_same_v<Auto, Shaped>;
}
static_assert(SameAsAuto<kFwdGelu, 256, 128, kCooperative, 0, 0, 0, 0>());
static_assert(SameAsAuto<kDxDgelu, 256, 128, kCooperative, 0, 0, 0, 0>());
static_assert(SameAsAuto<kDxDgelu, 256, 128, kCooperative, 128, 32, 4, 2>());
static_assert(SameAsAuto<kFwdGelu, 128, 128, kPingpong, 64, 32, 0, 0>());
static_assert(SameAsAuto<kDxDgelu, 128, 128, kPingpong, 0, 0, 0, 0>());

}  // namespace

int main() {
  std::printf("| config | product | epilogue | stages | stage B | mainloop B | epilogue B | "
              "epi tile | StagesC | StagesD | total B | left B |\n"
              "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|\n");
#ifdef S24C_PROBE_CONFIGS
  // the rows tests/test_cutlass_epilogue_smem.py asks for (build.py's EPILOGUE_CONFIGS):
  // X(tile M, tile N, schedule, epi M, epi N, StagesC, StagesD, config name)
#define X(TM, TN, SCHED, EM, EN, SC, SD, NAME) \
  Plain<TM, TN, SCHED>(NAME);                  \
  Fused<TM, TN, SCHED, EM, EN, SC, SD>(NAME, "built");
  S24C_PROBE_CONFIGS
#undef X
#else
  // build.py's EPILOGUE_CONFIGS (shaped ones: epilogue e<M>x<N>_sc<StagesC>) and the plain GEMM
  // of each tile; "cand." rows are candidates that are not built
  Plain<128, 256, kCooperative>("t128x256x128_c1x1_coop");
  Fused<128, 256, kCooperative>("t128x256x128_c1x1_coop", "auto");
  Fused<128, 256, kCooperative, 128, 16, 2>("t128x256x128_c1x1_coop", "cand. e128x16_sc2");
  Plain<256, 128, kCooperative>("t256x128x128_c1x1_coop");
  Fused<256, 128, kCooperative>("t256x128x128_c1x1_coop", "auto");
  Fused<256, 128, kCooperative, 128, 16, 3>("t256x128x128_c1x1_coop", "e128x16_sc3");
  Fused<256, 128, kCooperative, 128, 16, 2>("t256x128x128_c1x1_coop", "cand. e128x16_sc2");
  Fused<256, 128, kCooperative, 128, 16>("t256x128x128_c1x1_coop", "cand. e128x16");
  Fused<256, 128, kCooperative, 128, 32, 2>("t256x128x128_c1x1_coop", "cand. e128x32_sc2");
  Fused<256, 128, kCooperative, 128, 32, 1, 1>("t256x128x128_c1x1_coop", "cand. e128x32_sc1_sd1");
  Plain<128, 128, kPingpong>("t128x128x128_c1x1_pingpong");
  Fused<128, 128, kPingpong>("t128x128x128_c1x1_pingpong", "auto");
  Fused<128, 128, kPingpong, 64, 16, 2>("t128x128x128_c1x1_pingpong", "cand. e64x16_sc2");
  Plain<128, 128, kCooperative>("t128x128x128_c1x1_coop");
  Fused<128, 128, kCooperative>("t128x128x128_c1x1_coop", "cand. auto");
  Fused<128, 128, kCooperative, 128, 16>("t128x128x128_c1x1_coop", "e128x16");
  WeightGrad<128, 128, kPingpong>("t128x128x128_c1x1_pingpong");
  WeightGrad<128, 128, kCooperative>("t128x128x128_c1x1_coop");
  WeightGrad<256, 128, kCooperative>("t256x128x128_c1x1_coop");
  WeightGrad<256, 128, kCooperative, true>("t256x128x128_c1x1_coop_sk");
  Row<SparseGemm<kDw, 128, 256, 128, 1, 1, kCooperative>>("t128x256x128_c1x1_coop", "dw", "auto");
#endif
  return 0;
}
