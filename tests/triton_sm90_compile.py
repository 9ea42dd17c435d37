"""Compile every Triton kernel for sm_90 (Hopper) offline: no GPU needed.

Used by tests/test_triton_interpreter.py in a fresh process (that one runs the
interpreter). Catches what the interpreter lets through: tl.dot's block and
dtype rules, layouts, constexpr handling. Signatures are built the way
jax_triton 0.3.1 builds them: 16-byte-aligned pointers, int scalars i32, int
scalars equal to 1 constexpr. Run by hand: ``python tests/triton_sm90_compile.py``
(``-v``: also print the global load/store forms of the 2:4 per-step kernels
at GPT-2 FFN shapes). Checks the access widths of the bandwidth-bound
kernels (gated, mask search, compress, MVUE, soft threshold) at FFN shapes.
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
        # 2:4 per-step kernels: sizes and strides are constexpr. GPT-2 124M FFN
        # shapes (W 3072x768 and 768x3072, dZ 16384x768 and 16384x3072; vectorised
        # accesses expected) and an odd one (compiles; narrow accesses allowed)
        for (n, k), vec in (((3072, 768), True), ((768, 3072), True), ((20, 36), False)):
            cases.append((mask_search.transposable_mask_kernel, {"w_ptr": f"*{dt}", "out_ptr": "*u8"},
                          {"N_ROWS": n, "N_COLS": k, "BLOCKS_R": mask_search.BLOCKS_R,
                           "BLOCKS_C": mask_search.BLOCKS_C}, 4, 3, vec))
            for has_mask in (True, False):
                # W (2:4 along its rows) and W.T read in place
                for n_rows, n_q, s_row, s_q in ((n, k, k, 1), (k, n, 1, k)):
                    sig = {"x_ptr": f"*{dt}", "keep_ptr": "*u8", "val_ptr": "*bf16", "meta_ptr": "*u8"}
                    c = {"N_ROWS": n_rows, "N_Q": n_q, "STRIDE_ROW": s_row, "STRIDE_Q": s_q,
                         "HAS_MASK": has_mask, "BLOCK_ROWS": compress.BLOCK_ROWS,
                         "BLOCK_CHUNKS": compress.BLOCK_CHUNKS}
                    cases.append((compress.compress24_kernel, sig, c, 4, 3, vec))
            for has_mask in (True, False):
                # W and W.T from one read of W
                sig = {"x_ptr": f"*{dt}", "keep_ptr": "*u8", "val_ptr": "*bf16", "meta_ptr": "*u8",
                       "tval_ptr": "*bf16", "tmeta_ptr": "*u8"}
                c = {"N": n, "K": k, "HAS_MASK": has_mask, "BLOCK_N": compress.BOTH_BLOCK_N,
                     "BLOCK_CHUNKS": compress.BOTH_BLOCK_CHUNKS}
                cases.append((compress.compress24_both_kernel, sig, c, 4, 3, vec))
            cases.append((soft_threshold.soft_threshold24_kernel,
                          {"w_ptr": "*fp32", "beta_ptr": "*fp32", "val_ptr": f"*{dt}", "meta_ptr": "*u8"},
                          {"N_ROWS": n, "N_Q": k, "BLOCK_ROWS": soft_threshold.BLOCK_ROWS,
                           "BLOCK_CHUNKS": soft_threshold.BLOCK_CHUNKS}, 4, 3, vec))
        for (m, n), vec in (((16384, 768), True), ((16384, 3072), True), ((36, 20), False)):
            cases.append((mvue.mvue24_kernel,
                          {"x_ptr": f"*{dt}", "seed_ptr": "*u32", "val_ptr": f"*{dt}", "meta_ptr": "*u8"},
                          {"N_ROWS": n, "N_Q": m, "STRIDE_ROW": 1, "STRIDE_Q": n,
                           "BLOCK_ROWS": mvue.BLOCK_ROWS, "BLOCK_CHUNKS": mvue.BLOCK_CHUNKS}, 4, 3, vec))
        for b_t in (True, False):
            # odd sizes (masked edges) in the default config of the dtype
            n_i, n_j, n_r = 200, 72, 100
            bi, bj, br, warps, stages, _ = matmul.split_config(matmul.config_for(
                {"fp32": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}[dt], n_i, n_j, n_r,
                b_transposed=b_t, out_transposed=b_t, out_dtype=jnp.float32 if not b_t else None))
            sig = {"a_val_ptr": f"*{dt}", "a_meta_ptr": "*u8", "b_ptr": f"*{dt}",
                   "c_ptr": f"*{dt}" if b_t else "*fp32"}
            # every decompression variant (float32 values take the element path whatever WORDS says)
            for words in (0, 2) if dt == "fp32" else matmul.WORDS_VARIANTS:
                c = dict(N_I=n_i, N_J=n_j, N_R=n_r, **_gemm_strides(n_i, n_j, n_r, b_t, b_t),
                         BLOCK_I=bi, BLOCK_J=bj, BLOCK_R=br, GROUP_I=matmul.GROUP_I, PRECISION="ieee", WORDS=words)
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


# The 2:4 per-step kernels (README.md, "Access widths"). At an FFN shape every
# global load and store is vectorised: 16 bytes (v4.b32) for the dense inputs
# and the packed values, 8 bytes (v2.b32) where a thread's share of a uint8
# tile is 8 bytes (kept flags read along W.T's rows, meta bytes, the mask
# search's output rows: narrower by tile size, not by alignment). The one
# scalar load allowed is the per-call seed (MVUE) / beta (S-STE).
_PACK_KERNELS = ("transposable_mask_kernel", "compress24_kernel", "compress24_both_kernel", "mvue24_kernel",
                 "soft_threshold24_kernel")


# compress24_both_kernel's meta tiles are 8 bytes per row in both outputs (8
# chunks of W along K, 64 rows = 8 chunks of W.T along N), stored 4 bytes per
# thread; meta is 1/17 of the bytes it writes.
_MIN_STORE_BYTES = {"compress24_both_kernel": 4}


def global_accesses(ptx: str) -> dict[str, int]:
    """Count of each global load/store instruction form in ``ptx``."""
    import re
    from collections import Counter

    return dict(Counter(re.findall(r"(?:ld|st)\.global[\w.]*", ptx)))


def _access_bytes(op: str) -> int:
    vec = 4 if ".v4." in op else 2 if ".v2." in op else 1
    return vec * int(op.rsplit(".b", 1)[1]) // 8


def _pack_ptx_problems(name, sig, consts, ptx, vec) -> list[str]:
    where = f"{name} {list(sig.values())[0]} {consts}"
    out = []
    if ".f64" in ptx:
        out.append(f"{where}: float64 arithmetic in the PTX")
    if not vec:
        return out
    acc = global_accesses(ptx)
    loads = {a: c for a, c in acc.items() if a.startswith("ld.")}
    stores = {a: c for a, c in acc.items() if a.startswith("st.")}
    scalar_ok = 1 if name in ("mvue24_kernel", "soft_threshold24_kernel") else 0
    narrow_ld = {a: c for a, c in loads.items() if _access_bytes(a) < 8}
    if sum(narrow_ld.values()) > scalar_ok or any(_access_bytes(a) < 4 for a in narrow_ld):
        out.append(f"{where}: global loads narrower than 8 bytes: {loads}")
    if max(map(_access_bytes, loads), default=0) < 16:
        out.append(f"{where}: no 16-byte global load: {loads}")
    min_store = _MIN_STORE_BYTES.get(name, 8)
    if any(_access_bytes(a) < min_store for a in stores):
        out.append(f"{where}: global stores narrower than {min_store} bytes: {stores}")
    if name != "transposable_mask_kernel" and max(map(_access_bytes, stores), default=0) < 16:
        out.append(f"{where}: packed values not stored 16 bytes wide: {stores}")
    return out


def _gemm_strides(n_i, n_j, n_r, b_transposed, out_transposed) -> dict:
    """The GEMM's constexpr strides, as ``matmul.sparse24_matmul`` passes them."""
    sb = dict(STRIDE_BR=1, STRIDE_BJ=n_r) if b_transposed else dict(STRIDE_BR=n_j, STRIDE_BJ=1)
    sc = dict(STRIDE_CI=1, STRIDE_CJ=n_i) if out_transposed else dict(STRIDE_CI=n_j, STRIDE_CJ=1)
    return {**sb, **sc}


#: FFN shapes (d, 4d) of the issue-23 targets, 16384 tokens
GEMM_SHAPES = {"gpt2-774m": (1280, 5120), "gpt2-1558m": (1600, 6400), "llama-7b": (4096, 11008)}


def gemm_cases(shapes=GEMM_SHAPES, m=16384, which=("up",), words=(0, 2)):
    """The triton backend's three bf16 products per FFN linear, in the backend's
    layouts and the config ``matmul.config_for`` picks, with its decompression
    variant and each of ``words`` (WORDS 2: the prmt one): (label, sig,
    constexprs, warps, stages)."""
    from sparse24_jax_kernels.triton import matmul

    out = []
    for name, (d, f) in shapes.items():
        for lin in which:
            n, k = (f, d) if lin == "up" else (d, f)
            # (product, I, J, R, B transposed, C transposed, C dtype)
            for prod, n_i, n_j, n_r, b_t, c_t, c_dt in (("fwd", n, m, k, True, True, "bf16"),
                                                        ("dX", k, m, n, True, True, "bf16"),
                                                        ("dW", n, k, m, False, False, "fp32")):
                bi, bj, br, warps, stages, w0 = matmul.split_config(matmul.config_for(
                    jnp.bfloat16, n_i, n_j, n_r, b_transposed=b_t, out_transposed=c_t,
                    out_dtype=jnp.float32 if c_dt == "fp32" else jnp.bfloat16))
                sig = {"a_val_ptr": "*bf16", "a_meta_ptr": "*u8", "b_ptr": "*bf16", "c_ptr": f"*{c_dt}"}
                for w in sorted({w0, *words}):
                    c = dict(N_I=n_i, N_J=n_j, N_R=n_r, **_gemm_strides(n_i, n_j, n_r, b_t, c_t),
                             BLOCK_I=bi, BLOCK_J=bj, BLOCK_R=br, GROUP_I=matmul.GROUP_I, PRECISION="ieee", WORDS=w)
                    out.append((f"{name} {lin} {prod} I={n_i} J={n_j} R={n_r} cfg={(bi, bj, br, warps, stages, w)}",
                                sig, c, warps, stages))
    return out


def _cuobjdump(cubin: bytes, *args) -> str:
    import subprocess
    import tempfile

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), *args, f.name], capture_output=True, text=True, check=True).stdout


def gemm_stats(k) -> dict:
    """What decides the 2:4 GEMM's speed, from one compiled kernel: wgmma
    instructions, cp.async copies (the pipelined loads into shared memory),
    register-path global loads and their widths, global store widths,
    registers per thread and local memory (spills), and the TTGIR's
    convert_layouts / software-pipelined loop."""
    import re

    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    res = _cuobjdump(k.asm["cubin"], "--dump-resource-usage")
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", res)
    acc = global_accesses(ptx)
    return {
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "cp_async": len(re.findall(r"cp\.async\.(?:ca|cg)", ptx)),
        "ld_global": {a: c for a, c in acc.items() if a.startswith("ld.")},
        "st_global": {a: c for a, c in acc.items() if a.startswith("st.")},
        "regs": int(m.group(1)) if m else None,
        "local_bytes": int(m.group(2)) if m else None,
        "convert_layout": ttgir.count("ttg.convert_layout"),
        "async_copy": ttgir.count("ttg.async_copy_global_to_local"),
    }


def gemm_problems(label, st) -> list[str]:
    """At an FFN shape the bf16 GEMM must: run on wgmma, stream A's packed
    tiles and B through shared memory with cp.async (software pipelined: no
    global load through registers left), store 16 bytes wide, not spill."""
    out = []
    if not st["wgmma"]:
        out.append(f"{label}: no wgmma")
    if not st["cp_async"]:
        out.append(f"{label}: no cp.async (loads not pipelined through shared memory)")
    if st["ld_global"]:
        out.append(f"{label}: global loads through registers: {st['ld_global']}")
    if any(_access_bytes(a) < 16 for a in st["st_global"]):
        out.append(f"{label}: global stores narrower than 16 bytes: {st['st_global']}")
    if st["local_bytes"]:
        out.append(f"{label}: {st['local_bytes']} bytes of local memory (register spills)")
    return out


def gemm_report(shapes=GEMM_SHAPES, which=("up",)) -> tuple[list[str], list[str]]:
    """(one line of ``gemm_stats`` per product, the problems found)."""
    ensure_kernels_package()
    from sparse24_jax_kernels.triton import matmul

    lines, fails = [], []
    for label, sig, consts, warps, stages in gemm_cases(shapes, which=which):
        st = gemm_stats(_sm90_compile(matmul.sparse24_matmul_kernel, sig, consts, warps, stages))
        lines.append(f"{label}: {st}")
        fails += gemm_problems(label, st)
    return lines, fails


def access_report() -> list[str]:
    """One line per 2:4 per-step kernel case: its global access forms (the
    before/after table in README.md). ``python tests/triton_sm90_compile.py -v``."""
    ensure_kernels_package()
    lines = []
    for fn, sig, consts, warps, stages, *vec in _compile_cases():
        if fn.__name__ in _PACK_KERNELS and vec[0]:
            k = _sm90_compile(fn, sig, consts, warps, stages)
            sizes = {a: b for a, b in consts.items() if a[0] in "NS" or a == "HAS_MASK"}
            lines.append(f"{fn.__name__} {list(sig.values())[0]} {sizes}: {global_accesses(k.asm['ptx'])}")
    return lines


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
        if fn.__name__ in _PACK_KERNELS:
            failures += _pack_ptx_problems(fn.__name__, sig, consts, k.asm["ptx"], vec[0])
    return failures


if __name__ == "__main__":
    import sys

    if "-v" in sys.argv:
        print("\n".join(access_report()))
    if "--gemm" in sys.argv:  # the 2:4 GEMM at the FFN shapes, both linears
        lines, gemm_fails = gemm_report(which=("up", "down"))
        print("\n".join(lines + gemm_fails))
    fails = compile_all()
    print("\n".join(fails) or "all kernels compile for sm_90")
    raise SystemExit(1 if fails else 0)
