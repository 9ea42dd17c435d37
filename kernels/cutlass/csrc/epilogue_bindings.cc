// XLA FFI handler and C exports of the fused-epilogue GEMMs (epilogue.h,
// gemm_epilogue.cuh), and the table their instances register into; the
// plumbing (operand checks, running an instance, the exports' table view) is
// gemm_ffi.h's, shared with bindings.cc.
//   * s24c_gemm_epi  attribute `epilogue` (0 fwd_gelu, 1 dx_dgelu), `config`:
//       fwd_gelu: values (N, K/2), meta, X (M, K), bias (N,) or (0,) bf16
//                 -> H (M, N) = gelu(Z), Z (M, N) = X @ W_s^T + bias, workspace
//       dx_dgelu: values (K, N/2), meta, dY (M, N), Z1 (M, K) bf16
//                 -> dZ1 (M, K) = (dY @ W_s) * gelu'(Z1), workspace

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
};

ffi::Error EpiImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values, ffi::AnyBuffer meta,
                   ffi::AnyBuffer b, ffi::AnyBuffer extra, ffi::Result<ffi::AnyBuffer> d,
                   ffi::Result<ffi::AnyBuffer> aux_out, ffi::Result<ffi::AnyBuffer> workspace,
                   int64_t epilogue, std::string_view config) {
  if (epilogue != kFwdGelu && epilogue != kDxDgelu) {
    return InvalidArg("epilogue must be 0 (fwd_gelu) or 1 (dx_dgelu), got " +
                      std::to_string(epilogue));
  }
  const ProblemForm& form = kEpiForms[epilogue];
  EpiCall call;
  S24_RETURN_IF_ERROR(CheckProblem(form, values, meta, b, *d, &call));
  const int64_t mc = call.m, nc = call.n;
  if (epilogue == kFwdGelu) {
    S24_RETURN_IF_ERROR(
        Expect2D("fwd_gelu: pre-activation output", *aux_out, ffi::DataType::BF16, nc, mc));
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
    S24_RETURN_IF_ERROR(Expect2D("dx_dgelu: Z1 (the first linear's pre-activation)", extra,
                                 ffi::DataType::BF16, nc, mc));
    call.aux = const_cast<void*>(extra.untyped_data());
  }
  const std::string name(config);
  const EpiInstance* inst = EpiRegistry::Find(name.c_str(), static_cast<int>(epilogue));
  if (inst == nullptr) {
    return InvalidArg("no fused " + std::string(form.what) + " instance '" + name +
                      "' in this build (epilogue_ops.epilogue_configs() lists them)");
  }
  return RunInstance(*inst, call, stream, device, values, meta, b, d, workspace,
                     name + " " + form.what);
}

}  // namespace
}  // namespace s24c

S24C_DEFINE_HANDLER_SYMBOLS(s24c_gemm_epi, s24c::EpiImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()   // values
                                .Arg<ffi::AnyBuffer>()   // meta
                                .Arg<ffi::AnyBuffer>()   // X or dY
                                .Arg<ffi::AnyBuffer>()   // bias (fwd_gelu) or Z1 (dx_dgelu)
                                .Ret<ffi::AnyBuffer>()   // H or dZ1
                                .Ret<ffi::AnyBuffer>()   // Z (fwd_gelu) or a (16,) dummy
                                .Ret<ffi::AnyBuffer>()   // workspace
                                .Attr<int64_t>("epilogue")
                                .Attr<std::string_view>("config"));

extern "C" {

S24C_EXPORT int s24c_num_epis(void) { return s24c::EpiRegistry::Size(); }

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
