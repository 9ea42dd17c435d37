"""Compile every Triton kernel for sm_90 (Hopper) offline: no GPU needed.

Used by tests/test_triton_interpreter.py in a fresh process (that one runs the
interpreter). Catches what the interpreter lets through: tl.dot's block and
dtype rules, layouts, constexpr handling. Signatures are built the way
jax_triton 0.3.1 builds them: 16-byte-aligned pointers, int scalars i32, int
scalars equal to 1 constexpr. Run by hand: ``python tests/triton_sm90_compile.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import triton

from _kernels_path import ensure_kernels_package

REPO = Path(__file__).resolve().parents[1]


def _sm90_compile(fn, sig, consts, num_warps=4, num_stages=3):
    from triton.backends.compiler import GPUTarget

    sig = dict(sig)
    for name in consts:
        sig[name] = "constexpr"
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values()) if t.startswith("*")}
    src = triton.compiler.ASTSource(fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def _compile_cases():
    from sparse24_jax_kernels.triton import compress, gated, mask_search, matmul, mvue, soft_threshold

    cases = []
    for dt in ("fp32", "fp16", "bf16"):
        cases.append((mask_search.transposable_mask_kernel,
                      {"w_ptr": f"*{dt}", "n_rows": "i32", "n_cols": "i32", "out_ptr": "*u8"},
                      {"BLOCKS_R": mask_search.BLOCKS_R, "BLOCKS_C": mask_search.BLOCKS_C}, 4, 3))
        for has_mask in (True, False):
            for s_row_is_1 in (True, False):
                sig = {"x_ptr": f"*{dt}", "keep_ptr": "*u8", "n_rows": "i32", "n_q": "i32",
                       "stride_row": "i32", "stride_q": "i32", "val_ptr": "*bf16", "meta_ptr": "*u8"}
                c = {"stride_row" if s_row_is_1 else "stride_q": 1, "HAS_MASK": has_mask,
                     "BLOCK_ROWS": compress.BLOCK_ROWS, "BLOCK_CHUNKS": compress.BLOCK_CHUNKS}
                cases.append((compress.compress24_kernel, sig, c, 4, 3))
        cases.append((mvue.mvue24_kernel,
                      {"x_ptr": f"*{dt}", "seed_ptr": "*u32", "n_rows": "i32", "n_q": "i32", "stride_row": "i32",
                       "stride_q": "i32", "val_ptr": f"*{dt}", "meta_ptr": "*u8"},
                      {"stride_row": 1, "BLOCK_ROWS": mvue.BLOCK_ROWS, "BLOCK_CHUNKS": mvue.BLOCK_CHUNKS}, 4, 3))
        cases.append((soft_threshold.soft_threshold24_kernel,
                      {"w_ptr": "*fp32", "beta_ptr": "*fp32", "n_rows": "i32", "n_q": "i32",
                       "val_ptr": f"*{dt}", "meta_ptr": "*u8"},
                      {"BLOCK_ROWS": soft_threshold.BLOCK_ROWS, "BLOCK_CHUNKS": soft_threshold.BLOCK_CHUNKS}, 4, 3))
        bi, bj, br, warps, stages = matmul.config_for({"fp32": jnp.float32, "fp16": jnp.float16,
                                                       "bf16": jnp.bfloat16}[dt])
        for b_t in (True, False):
            sig = {"a_val_ptr": f"*{dt}", "a_meta_ptr": "*u8", "b_ptr": f"*{dt}", "n_i": "i32", "n_j": "i32",
                   "n_r": "i32", "stride_br": "i32", "stride_bj": "i32", "stride_ci": "i32",
                   "stride_cj": "i32", "c_ptr": f"*{dt}" if b_t else "*fp32"}
            c = {"stride_br" if b_t else "stride_bj": 1, "stride_ci" if b_t else "stride_cj": 1,
                 "BLOCK_I": bi, "BLOCK_J": bj, "BLOCK_R": br, "GROUP_I": matmul.GROUP_I, "PRECISION": "ieee"}
            cases.append((matmul.sparse24_matmul_kernel, sig, c, warps, stages))
        for act in gated.ACTS:
            # sizes are constexpr: an FFN shape (16-byte accesses expected) and an odd one
            for (m, f), vec, wide in (((4096, 3072), True, False), ((37, 45), False, False),
                                      ((4096, 3072), True, True)):
                for tr in (False, True):
                    cfg = gated.launch_config(m, f, tr)
                    cfg["WIDE"] = cfg["WIDE"] or wide  # int64 offsets (2**31 elements) compiled small
                    warps = cfg.pop("num_warps")
                    cfg.pop("grid")
                    meta = {"ACT": act, **cfg}
                    cases.append((gated.gated_fwd_kernel, {"h_ptr": f"*{dt}", "y_ptr": f"*{dt}"}, meta, warps, 1,
                                  vec))
                    cases.append((gated.gated_bwd_kernel,
                                  {"h_ptr": f"*{dt}", "dy_ptr": f"*{dt}", "dh_ptr": f"*{dt}"}, meta, warps, 1, vec))
    return cases



def _gated_ptx_problems(name, sig, consts, ptx, vec) -> list[str]:
    """The gated kernels are pure bandwidth: at an FFN shape every global
    access must be 16 bytes wide (ld/st.global.v4.b32), and nothing may be
    float64 (a Python float passed at run time would be)."""
    import re

    where = (f"{name} {list(sig.values())[0]} M={consts['N_TOK']} F={consts['N_FEAT']} "
             f"T={consts['TRANSPOSED']} WIDE={consts['WIDE']}")
    out = []
    if ".f64" in ptx:
        out.append(f"{where}: float64 arithmetic in the PTX")
    if vec:
        narrow = sorted({a for a in re.findall(r"(?:ld|st)\.global[\w.]*", ptx) if not a.endswith(".v4.b32")})
        if narrow:
            out.append(f"{where}: global accesses narrower than 16 bytes: {narrow}")
    return out


def compile_all() -> list[str]:
    """Compile every case; return one line per failure."""
    assert os.environ.get("TRITON_INTERPRET") != "1", "unset TRITON_INTERPRET to compile"
    ensure_kernels_package()
    failures = []
    for fn, sig, consts, warps, stages, *vec in _compile_cases():
        try:
            k = _sm90_compile(fn, sig, consts, warps, stages)
        except Exception as err:  # noqa: BLE001  (report them all)
            failures.append(f"{fn.__name__} {sig} {consts}: {type(err).__name__}: {str(err)[:500]}")
            continue
        if fn.__name__ == "sparse24_matmul_kernel" and "fp32" not in sig["b_ptr"] and "wgmma" not in k.asm["ptx"]:
            failures.append(f"{fn.__name__} {sig}: the 16-bit GEMM should use Hopper's wgmma")
        if fn.__name__.startswith("gated_"):
            failures += _gated_ptx_problems(fn.__name__, sig, consts, k.asm["ptx"], vec[0])
    return failures


if __name__ == "__main__":
    fails = compile_all()
    print("\n".join(fails) or "all kernels compile for sm_90")
    raise SystemExit(1 if fails else 0)
