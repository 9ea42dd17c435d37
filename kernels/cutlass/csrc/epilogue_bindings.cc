// XLA FFI handler and C exports of the fused-epilogue GEMMs (epilogue.h,
// gemm_epilogue.cuh), and the table their instances register into; the
// plumbing (operand checks, running an instance, the exports' table view) is
// gemm_ffi.h's, shared with bindings.cc.
//   * s24c_gemm_epi  attribute `epilogue` (0 fwd_gelu, 1 dx_dgelu), `config`:
//       fwd_gelu: values (N, K/2), meta, X (M, K), bias (N,) or (0,) bf16
//                 -> H (M, N) = gelu(Z), G (M, N) = gelu'(Z), Z = X @ W_s^T + bias,
//                    workspace
//       dx_dgelu: values (K, N/2), meta, dY (M, N), G1 (M, K) bf16 (fwd_gelu's G)
//                 -> dZ1 (M, K) = (dY @ W_s) * G1, workspace
//   * s24c_gemm_epi_mvue  attribute `config` (epilogue 2, dx_dgelu_mvue):
//       values (K, N/2), meta, dY (M, N), G1 (M, K) bf16, seed uint32 (2,)
//                 -> dZ1 (M, K) as dx_dgelu, S_z(dZ1^T) values (K, M/2) bf16 and
//                    metadata (own_mvue's, for the same seed), workspace

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "epilogue.h"
#include "ffi_util.h"
#include "gemm_ffi.h"
#include "instance_table.h"

namespace s24c {

template struct Registry<EpiCall>;  // the fused instances' table

namespace {

// The operands of each fused epilogue in CUTLASS's terms: fwd's and dx's
// (README "The three products").
const ProblemForm kEpiForms[kNumEpilogues] = {
    {"fwd_gelu", "fwd_gelu: X", "output", false, ffi::DataType::BF16, "use the unfused path"},
    {"dx_dgelu", "dx_dgelu: dY", "output", false, ffi::DataType::BF16, "use the unfused path"},
    {"dx_dgelu_mvue", "dx_dgelu_mvue: dY", "output", false, ffi::DataType::BF16,
     "use dx_dgelu and own_mvue"},
};

// Runs the (config, epilogue) instance on the checked call (gemm_ffi.h's
// RunInstance), or names the listing when this build has no such instance.
ffi::Error RunEpilogue(int epilogue, std::string_view config, EpiCall& call, cudaStream_t stream,
                       int32_t device, const ffi::AnyBuffer& values, const ffi::AnyBuffer& meta,
                       const ffi::AnyBuffer& b, ffi::Result<ffi::AnyBuffer>& d,
                       ffi::Result<ffi::AnyBuffer>& workspace) {
  const ProblemForm& form = kEpiForms[epilogue];
  const std::string name(config);
  const EpiInstance* inst = EpiRegistry::Find(name.c_str(), epilogue);
  if (inst == nullptr) {
    return InvalidArg("no fused " + std::string(form.what) + " instance '" + name +
                      "' in this build (epilogue_ops.epilogue_configs() lists them)");
  }
  return RunInstance(*inst, call, stream, device, values, meta, b, d, workspace,
                     name + " " + form.what);
}

ffi::Error EpiImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values, ffi::AnyBuffer meta,
                   ffi::AnyBuffer b, ffi::AnyBuffer extra, ffi::Result<ffi::AnyBuffer> d,
                   ffi::Result<ffi::AnyBuffer> aux_out, ffi::Result<ffi::AnyBuffer> workspace,
                   int64_t epilogue, std::string_view config) {
  if (epilogue != kFwdGelu && epilogue != kDxDgelu) {
    return InvalidArg("epilogue must be 0 (fwd_gelu) or 1 (dx_dgelu) (dx_dgelu_mvue has its own "
                      "handler, s24c_gemm_epi_mvue), got " + std::to_string(epilogue));
  }
  const ProblemForm& form = kEpiForms[epilogue];
  EpiCall call;
  S24_RETURN_IF_ERROR(CheckProblem(form, values, meta, b, *d, &call));
  const int64_t mc = call.m, nc = call.n;
  if (epilogue == kFwdGelu) {
    S24_RETURN_IF_ERROR(
        Expect2D("fwd_gelu: gelu'(Z) output", *aux_out, ffi::DataType::BF16, nc, mc));
    call.aux = aux_out->untyped_data();
    auto ed = extra.dimensions();
    if (extra.element_type() != ffi::DataType::BF16 || ed.size() != 1 ||
        (ed[0] != 0 && ed[0] != mc)) {
      return InvalidArg("fwd_gelu: bias must be bfloat16 (" + std::to_string(mc) +
                        ",) or (0,) for none, got " + DtypeName(extra.element_type()) + " " +
                        DimsText(extra));
    }
    if (ed[0] == mc) {
      if (!Aligned16(extra.untyped_data())) return InvalidArg("fwd_gelu: bias must be 16-byte aligned");
      call.bias = extra.untyped_data();
    }
  } else {
    S24_RETURN_IF_ERROR(Expect2D("dx_dgelu: G1 (gelu'(Z1), fwd_gelu's second output)", extra,
                                 ffi::DataType::BF16, nc, mc));
    call.aux = const_cast<void*>(extra.untyped_data());
  }
  return RunEpilogue(static_cast<int>(epilogue), config, call, stream, device, values, meta, b, d,
                     workspace);
}

ffi::Error EpiMvueImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values,
                       ffi::AnyBuffer meta, ffi::AnyBuffer dy, ffi::AnyBuffer g1,
                       ffi::AnyBuffer seed, ffi::Result<ffi::AnyBuffer> d,
                       ffi::Result<ffi::AnyBuffer> mvue_values, ffi::Result<ffi::AnyBuffer> mvue_meta,
                       ffi::Result<ffi::AnyBuffer> workspace, std::string_view config) {
  const ProblemForm& form = kEpiForms[kDxDgeluMvue];
  EpiCall call;
  S24_RETURN_IF_ERROR(CheckProblem(form, values, meta, dy, *d, &call));
  const int64_t mc = call.m, nc = call.n;  // features (K of the layer), tokens
  S24_RETURN_IF_ERROR(Expect2D("dx_dgelu_mvue: G1 (gelu'(Z1), fwd_gelu's second output)", g1,
                               ffi::DataType::BF16, nc, mc));
  S24_RETURN_IF_ERROR(Expect2D("dx_dgelu_mvue: S_z(dZ1^T) values", *mvue_values,
                               ffi::DataType::BF16, mc, nc / 2));
  const CompressSizes sz = CompressedSizes(static_cast<int>(mc), static_cast<int>(nc));
  if (mvue_meta->element_type() != ffi::DataType::U8 ||
      static_cast<int64_t>(mvue_meta->element_count()) != sz.meta_bytes) {
    return InvalidArg("dx_dgelu_mvue: S_z(dZ1^T) metadata must be uint8 (" +
                      std::to_string(sz.meta_bytes) + ",), got " +
                      DtypeName(mvue_meta->element_type()) + " " + DimsText(*mvue_meta));
  }
  // the epilogue indexes value words and metadata bytes in 32 bits (epilogue_mvue.cuh)
  if (mc * (nc / 4) > UINT32_MAX || sz.meta_bytes > UINT32_MAX) {
    return InvalidArg("dx_dgelu_mvue: S_z(dZ1^T) of " + std::to_string(mc) + " x " +
                      std::to_string(nc) + " passes 2^32 words; use dx_dgelu and own_mvue");
  }
  if (seed.element_type() != ffi::DataType::U32 || seed.element_count() != 2) {
    return InvalidArg("dx_dgelu_mvue: seed must be uint32 (2,) (own_ops.seed_from_key), got " +
                      DtypeName(seed.element_type()) + " " + DimsText(seed));
  }
  call.aux = const_cast<void*>(g1.untyped_data());
  call.mvue_values = mvue_values->untyped_data();
  call.mvue_meta = mvue_meta->untyped_data();
  call.seed = seed.untyped_data();
  return RunEpilogue(kDxDgeluMvue, config, call, stream, device, values, meta, dy, d, workspace);
}

}  // namespace
}  // namespace s24c

S24C_DEFINE_HANDLER_SYMBOLS(s24c_gemm_epi_mvue, s24c::EpiMvueImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()   // values
                                .Arg<ffi::AnyBuffer>()   // meta
                                .Arg<ffi::AnyBuffer>()   // dY
                                .Arg<ffi::AnyBuffer>()   // G1
                                .Arg<ffi::AnyBuffer>()   // seed
                                .Ret<ffi::AnyBuffer>()   // dZ1
                                .Ret<ffi::AnyBuffer>()   // S_z(dZ1^T) values
                                .Ret<ffi::AnyBuffer>()   // ... metadata
                                .Ret<ffi::AnyBuffer>()   // workspace
                                .Attr<std::string_view>("config"));

S24C_DEFINE_HANDLER_SYMBOLS(s24c_gemm_epi, s24c::EpiImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()   // values
                                .Arg<ffi::AnyBuffer>()   // meta
                                .Arg<ffi::AnyBuffer>()   // X or dY
                                .Arg<ffi::AnyBuffer>()   // bias (fwd_gelu) or G1 (dx_dgelu)
                                .Ret<ffi::AnyBuffer>()   // H or dZ1
                                .Ret<ffi::AnyBuffer>()   // G (fwd_gelu) or a (16,) dummy
                                .Ret<ffi::AnyBuffer>()   // workspace
                                .Attr<int64_t>("epilogue")
                                .Attr<std::string_view>("config"));

extern "C" {

S24C_EXPORT int s24c_num_epis(void) { return s24c::EpiRegistry::Size(); }

// What the fused epilogues pass from the forward to the backward: 2 = gelu'(Z)
// (fwd_gelu writes it, dx_dgelu multiplies by it). Libraries without this symbol
// passed Z itself; epilogue_ops refuses them (same handler, other numbers).
S24C_EXPORT int s24c_epi_residual(void) { return 2; }

// Fused instance i: its config name and 7 ints, the first its epilogue
// (gemm_ffi.h's InstanceInfo). 0, or -1.
S24C_EXPORT int s24c_epi_info(int i, char* name, int buflen, int* info) {
  return s24c::InstanceInfo<s24c::EpiCall>(i, name, buflen, info);
}

// Workspace bytes of (config, epilogue) for CUTLASS's (m, n, k); -1 when no
// such instance, -2 when CUTLASS cannot implement the problem.
S24C_EXPORT int64_t s24c_epi_workspace_bytes(const char* config, int epilogue, int m, int n,
                                             int k, int sm_count) {
  return s24c::InstanceWorkspace<s24c::EpiCall>(config, epilogue, m, n, k, sm_count);
}

}  // extern "C"
