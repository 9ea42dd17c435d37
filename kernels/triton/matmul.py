"""2:4 GEMM on the packed operand: ``C = A_s @ B`` with ``A_s`` packed 2:4 along
the reduction axis (``compress_24`` format), ``B`` dense with any strides.

Reference twin: ``decompress_24(values, meta) @ b`` (float32 accumulation), i.e.
the XLA backend's dots. Each program decompresses its ``(BLOCK_I, BLOCK_R)``
tile of ``A_s`` in registers (contiguous loads of the packed values and meta
bytes, split into each group's two values, selects on the four candidate
positions, interleaved back) and feeds ``tl.dot`` on the tensor cores
(Hopper: ``wgmma`` with the decompressed tile as its register operand, ``B``
pipelined through shared memory with ``cp.async``). Triton 3.6 exposes no sparse MMA (``mma.sp``), so the tensor
cores do the dense amount of math: the saving is the halved reads of the sparse
operand, not FLOPs. The ``cusparselt`` backend runs the real 2:4 instructions;
this backend is the portable one (any NVIDIA GPU Triton supports).

All three products of a 2:4 linear layer are this one kernel with different
strides (no transposed copies): forward ``Z.T = W_s @ X.T``, input grad
``dX.T = W_s.T @ dZ.T``, weight grad ``dW = S_z(dZ.T) @ X``.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._runtime import cdiv, jt


@triton.jit
def _prmt_pair(w, sel, EMULATE: tl.constexpr):
    """``(prmt(w, 0, sel), prmt(w, 0, sel >> 16))``: PTX ``prmt.b32`` with a zero second
    operand (selector nibble k picks byte k of the result: 0-3 a byte of ``w``, 4-7
    zero). ``EMULATE``: the same with shifts and masks (the CPU interpreter, which has
    no inline asm)."""
    if EMULATE:
        lo = tl.zeros_like(w)
        hi = tl.zeros_like(w)
        for k in tl.static_range(4):
            b_lo = (sel >> (4 * k)) & 7
            b_hi = (sel >> (16 + 4 * k)) & 7
            lo |= tl.where(b_lo < 4, (w >> (8 * (b_lo & 3))) & 0xFF, 0) << (8 * k)
            hi |= tl.where(b_hi < 4, (w >> (8 * (b_hi & 3))) & 0xFF, 0) << (8 * k)
    else:
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b32 z, s; mov.b32 z, 0; prmt.b32 $0, $2, z, $3; shr.b32 s, $3, 16; prmt.b32 $1, $2, z, s; }",
            "=r,=r,r,r", [w, sel], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    return lo, hi


@triton.jit
def grouped_tile(pid, N_I: tl.constexpr, N_J: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                 GROUP_I: tl.constexpr):
    """The (row, column) tile of program ``pid`` in grouped order (Triton's matmul
    tutorial): GROUP_I row-tiles share their B column tiles while those are in L2."""
    num_i: tl.constexpr = (N_I + BLOCK_I - 1) // BLOCK_I
    num_j: tl.constexpr = (N_J + BLOCK_J - 1) // BLOCK_J
    per_group: tl.constexpr = GROUP_I * num_j
    first_i = (pid // per_group) * GROUP_I
    group_size = tl.minimum(num_i - first_i, GROUP_I)
    return first_i + (pid % per_group) % group_size, (pid % per_group) // group_size


@triton.jit
def sparse24_matmul_kernel(
    a_val_ptr, a_meta_ptr,  # packed A_s: (I, R/2) values, (I, ceil(R/8)) uint8 meta
    b_ptr,  # dense B, element (r, j) at r * STRIDE_BR + j * STRIDE_BJ
    c_ptr,  # output, element (i, j) at i * STRIDE_CI + j * STRIDE_CJ
    N_I: tl.constexpr, N_J: tl.constexpr, N_R: tl.constexpr,  # I, J, R (R a multiple of 4)
    STRIDE_BR: tl.constexpr, STRIDE_BJ: tl.constexpr,
    STRIDE_CI: tl.constexpr, STRIDE_CJ: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_R: tl.constexpr,
    GROUP_I: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision for float32 B ("ieee" or "tf32")
    WORDS: tl.constexpr = 0,  # 16-bit values: 0 element selects, 1 word selects, 2 word prmt (GPU), 3 prmt emulated
):
    """``C = decompress_24(A) @ B``, float32 accumulate, cast to ``C``'s dtype
    (the compute dtype is ``B``'s; ``A`` is cast to it in registers).

    Sizes and strides are ``tl.constexpr`` (README.md, "The GEMM: why it was
    slow"): with runtime ints no access is provably aligned, every load is one
    element wide and the loop cannot be pipelined with ``cp.async``. The
    packed tile is read as it lies in memory, a contiguous ``(BLOCK_I,
    BLOCK_R/2)`` values tile and a ``(BLOCK_I, BLOCK_R/8)`` meta tile, and
    expanded in registers: split into each group's first/second value,
    selects on the four candidate positions, interleaved back to
    ``(BLOCK_I, BLOCK_R)`` (no gathers)."""
    pid_i, pid_j = grouped_tile(tl.program_id(0), N_I, N_J, BLOCK_I, BLOCK_J, GROUP_I)

    half: tl.constexpr = N_R // 2
    meta_w: tl.constexpr = (N_R + 7) // 8
    HB: tl.constexpr = BLOCK_R // 2  # packed values per row of a tile
    MB: tl.constexpr = BLOCK_R // 8  # meta bytes per row of a tile
    GB: tl.constexpr = BLOCK_R // 4  # groups per row of a tile
    # no edge masks where the shape tiles evenly (the FFN shapes): plain loads
    EVEN_I: tl.constexpr = N_I % BLOCK_I == 0
    EVEN_J: tl.constexpr = N_J % BLOCK_J == 0
    EVEN_R: tl.constexpr = N_R % BLOCK_R == 0

    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_r = tl.arange(0, BLOCK_R)
    offs_h = tl.arange(0, HB)
    offs_m = tl.arange(0, MB)
    i_ok = (offs_i < N_I)[:, None]
    j_ok = (offs_j < N_J)[None, :]
    a_val_rows = a_val_ptr + offs_i[:, None] * half
    a_meta_rows = a_meta_ptr + offs_i[:, None] * meta_w
    # WORDS (16-bit values only): the values read as int32 words, one per group
    USE_WORDS: tl.constexpr = WORDS > 0 and a_val_ptr.dtype.element_ty.primitive_bitwidth == 16
    n_groups: tl.constexpr = N_R // 4
    offs_g = tl.arange(0, GB)
    a_word_rows = a_val_ptr.to(tl.pointer_type(tl.int32)) + offs_i[:, None] * n_groups
    b_cols = b_ptr + offs_j[None, :] * STRIDE_BJ

    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    for r0 in range(0, N_R, BLOCK_R):
        v_ptrs = a_val_rows + (r0 // 2 + offs_h)[None, :]
        m_ptrs = a_meta_rows + (r0 // 8 + offs_m)[None, :]
        b_ptrs = b_cols + (r0 + offs_r)[:, None] * STRIDE_BR
        if EVEN_I and EVEN_R:
            meta = tl.load(m_ptrs)
        else:
            meta = tl.load(m_ptrs, mask=i_ok & (r0 // 8 + offs_m < meta_w)[None, :], other=0)
        if EVEN_J and EVEN_R:
            b = tl.load(b_ptrs)
        else:
            b = tl.load(b_ptrs, mask=(r0 + offs_r < N_R)[:, None] & j_ok, other=0.0)
        # each group's 4-bit code: even group in the low nibble of a byte
        meta = meta.to(tl.int32)
        code = tl.interleave(meta & 0xF, meta >> 4)
        idx0 = code & 3
        idx1 = code >> 2
        if USE_WORDS:
            # each group's two kept 16-bit values as one 32-bit word w = v0 | v1 << 16,
            # expanded to the group's two dense words lo = (a0, a1), hi = (a2, a3).
            # idx0 < idx1 always (packing.py), so six cases: (0,1) lo=w; (0,2) lo=v0, hi=v1;
            # (0,3) lo=v0, hi=v1<<16; (1,2) lo=v0<<16, hi=v1; (1,3) lo=v0<<16, hi=v1<<16; (2,3) hi=w.
            w_ptrs = a_word_rows + (r0 // 4 + offs_g)[None, :]
            if EVEN_I and EVEN_R:
                w = tl.load(w_ptrs)
            else:
                w = tl.load(w_ptrs, mask=i_ok & (r0 // 4 + offs_g < n_groups)[None, :], other=0)
            if WORDS == 1:
                w_lo16 = w & 0xFFFF
                w_hi16 = w & -65536  # 0xFFFF0000
                lo = tl.where(idx0 == 0, tl.where(idx1 == 1, w, w_lo16), tl.where(idx0 == 1, w << 16, 0))
                hi = tl.where(idx1 == 3, tl.where(idx0 == 2, w, w_hi16),
                              tl.where(idx1 == 2, (w >> 16) & 0xFFFF, 0))
            else:
                # byte permutes: dense position p takes v0 (bytes 1,0 of w: selector 0x10) if
                # idx0 == p, v1 (0x32) if idx1 == p, else zero (0x44: a byte of the zero
                # operand); byte p of sel is position p's selector, so sel's low half
                # permutes lo and its high half hi (prmt reads the low 16 bits of its selector)
                sel = 0x44444444 ^ (0x54 << (idx0 * 8)) ^ (0x76 << (idx1 * 8))
                lo, hi = _prmt_pair(w, sel, EMULATE=WORDS == 3)
            words = tl.reshape(tl.join(lo, hi), (BLOCK_I, HB))  # dense order, two elements per word
            a = tl.reshape(tl.join(words.to(tl.int16), (words >> 16).to(tl.int16)), (BLOCK_I, BLOCK_R))
            a = a.to(a_val_ptr.dtype.element_ty, bitcast=True)
        else:
            if EVEN_I and EVEN_R:
                vals = tl.load(v_ptrs)
            else:
                vals = tl.load(v_ptrs, mask=i_ok & (r0 // 2 + offs_h < half)[None, :], other=0.0)
            # each group's two kept values (ascending position) ...
            v0, v1 = tl.split(tl.reshape(vals, (BLOCK_I, GB, 2)))
            zero = tl.zeros_like(v0)
            a0 = tl.where(idx0 == 0, v0, zero)
            a1 = tl.where(idx0 == 1, v0, tl.where(idx1 == 1, v1, zero))
            a2 = tl.where(idx0 == 2, v0, tl.where(idx1 == 2, v1, zero))
            a3 = tl.where(idx1 == 3, v1, zero)
            # back to dense order: [a0 a1 a2 a3] per group
            a = tl.interleave(tl.interleave(a0, a2), tl.interleave(a1, a3))
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)
    c_ptrs = c_ptr + offs_i[:, None] * STRIDE_CI + offs_j[None, :] * STRIDE_CJ
    if EVEN_I and EVEN_J:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty))
    else:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=i_ok & j_ok)


#: (BLOCK_I, BLOCK_J, BLOCK_R, num_warps, num_stages) per compute dtype, the
#: default where the tuned table has no entry. Block dims stay >= 16 (tl.dot)
#: and powers of two. 16-bit: 128x256x64, 8 warps (two warpgroups, each a
#: 64x256 wgmma accumulator), 3 stages: the decompression (ALU) costs per
#: element of the packed tile, the MMA per element times BLOCK_J, so a wide J
#: tile keeps the ALU work behind the tensor cores (README.md, "The GEMM: why it
#: was slow"); narrow outputs (J < 256) take 128x128. Float32 uses the
#: FMA-friendly smaller tiles (precise "ieee" dot).
CONFIGS = {
    "16bit": (128, 256, 64, 8, 3),
    "16bit_narrow": (128, 128, 64, 8, 3),
    "float32": (64, 64, 32, 4, 2),
}
GROUP_I = 8

#: Candidate configs the GPU sweep (benchmarks/triton_gemm_tune.py) times per shape.
#: A config is (BLOCK_I, BLOCK_J, BLOCK_R, warps, stages) or the same plus WORDS, the
#: decompression variant (5 entries: WORDS 0, the element selects): 2 = the packed
#: value pair read as one 32-bit word and expanded with two prmt.b32 per group (sm_90
#: compile, 774M forward at 128x256x64: 220 instructions per K step instead of 350);
#: 1 = the same words expanded with selects (280; not swept). The first GPU sweep (2026-11-30,
#: WORDS 0 only) found 128x256x64/8 warps best everywhere (0.51-0.67x XLA dense);
#: 128x256x32, 256x128, 128x128/8/4 and 64x256/4/4 (one CTA per SM: 146 KB of shared
#: memory) lost at every product and are dropped. New here: WORDS 1/2, a K tile of 128,
#: and four-warp configs that fit two CTAs per SM (<= 113 KB of shared memory, <= 255
#: registers), so one CTA's decompression can overlap the other's MMAs.
CANDIDATES = (
    (128, 256, 64, 8, 3),
    (128, 256, 64, 8, 4),
    (128, 256, 64, 8, 3, 2),
    (128, 256, 64, 8, 4, 2),
    (128, 256, 128, 8, 2, 2),
    (64, 256, 64, 4, 2, 2),
    (128, 128, 64, 8, 3, 2),
)
# Dropped after the second sweep (2026-11-30): (64, 256, 64, 4, 3[, 2]) and
# (128, 128, 64, 4, 3, 2) gave WRONG results on the H200 (see ``check_config``).
#: WORDS values a config may name (3, the prmt emulated with shifts, is the CPU
#: interpreter's stand-in for 2; slow on a GPU but correct)
WORDS_VARIANTS = (0, 1, 2, 3)


def split_config(cfg) -> tuple[int, int, int, int, int, int]:
    """``(BLOCK_I, BLOCK_J, BLOCK_R, warps, stages, WORDS)`` of a 5- or 6-entry config."""
    cfg = tuple(cfg)
    if len(cfg) not in (5, 6) or not all(isinstance(c, int) for c in cfg):
        raise ValueError(f"config {cfg!r} is not (BLOCK_I, BLOCK_J, BLOCK_R, warps, stages[, WORDS])")
    words = cfg[5] if len(cfg) == 6 else 0
    if words not in WORDS_VARIANTS:
        raise ValueError(f"config {cfg!r}: WORDS must be one of {WORDS_VARIANTS}")
    return cfg[:5] + (words,)


def check_config(cfg, dtype) -> None:
    """Refuse a config known to compute wrong results.

    On an H200 with Triton 3.6 (second sweep, 2026-11-30), every 16-bit config
    with 4 warps (one warpgroup) and 3 or more pipeline stages returned wrong
    products at the FFN shapes, with and without the prmt decompression (errors of
    10% to 6800% of max |C|), while the same tiles with 8 warps, and 4 warps
    with 2 stages, were exact. The compiled loop reuses registers that
    in-flight wgmma instructions may still read (README.md, "The GEMM"), so
    until that is understood such configs raise instead of returning wrong
    numbers.
    """
    _, _, _, warps, stages, _ = split_config(cfg)
    if jnp.dtype(dtype).itemsize == 2 and warps < 8 and stages >= 3:
        raise ValueError(
            f"Triton 2:4 GEMM config {tuple(cfg)!r}: {warps} warps with {stages} pipeline stages gave wrong "
            "results on an H200 (Triton 3.6); use 8 warps, or at most 2 stages"
        )


#: The tuned table: ``matmul_configs.json`` next to this module (the sweep's
#: output, committed), overridden entry by entry by the JSON file named in
#: ``$SPARSE24_TRITON_GEMM_CONFIGS`` (a sweep's output on this machine).
TUNED_ENV = "SPARSE24_TRITON_GEMM_CONFIGS"
_TUNED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "matmul_configs.json")


def config_key(n_i: int, n_j: int, n_r: int, dtype, b_transposed: bool, out_transposed: bool, out_dtype) -> str:
    """The tuned table's key of one product: sizes, compute and output dtypes, layouts."""
    return (f"{n_i}x{n_j}x{n_r}:{jnp.dtype(dtype).name}->{jnp.dtype(out_dtype).name}:"
            f"b{'T' if b_transposed else 'N'}c{'T' if out_transposed else 'N'}")


@functools.lru_cache(maxsize=None)
def _tuned_table(env_path: str | None) -> dict:
    table = {}
    for path in (_TUNED_FILE, env_path):
        if not path or not os.path.exists(path):
            if path and path == env_path:
                raise FileNotFoundError(f"${TUNED_ENV}={path} does not exist: run benchmarks/triton_gemm_tune.py "
                                        "--out PATH first, or unset the variable")
            continue
        with open(path) as f:
            raw = json.load(f)
        for key, cfg in raw.get("configs", raw).items():
            try:
                split_config(cfg)
                check_config(cfg, key.split(":")[1].split("->")[0])
            except ValueError as err:
                raise ValueError(f"{path}: entry {key!r}: {err}") from None
            table[key] = tuple(cfg)
    return table


def config_for(dtype, n_i: int | None = None, n_j: int | None = None, n_r: int | None = None, *,
               b_transposed: bool = False, out_transposed: bool = False, out_dtype=None):
    """The block config of one product: the tuned table's entry for this shape
    if it has one, else the per-dtype default (``CONFIGS``)."""
    if jnp.dtype(dtype) == jnp.float32:
        default = CONFIGS["float32"]
    else:
        default = CONFIGS["16bit" if n_j is None or n_j >= 256 else "16bit_narrow"]
    if n_i is None:
        return default
    key = config_key(n_i, n_j, n_r, dtype, b_transposed, out_transposed, dtype if out_dtype is None else out_dtype)
    return _tuned_table(os.environ.get(TUNED_ENV) or None).get(key, default)


def sparse24_matmul(
    a_vals: jax.Array,
    a_meta: jax.Array,
    b: jax.Array,
    *,
    b_transposed: bool = False,
    out_transposed: bool = False,
    out_dtype=None,
    precision: str = "ieee",
    config: tuple[int, ...] | None = None,
) -> jax.Array:
    """``decompress_24(a_vals, a_meta) @ B`` where ``A_s`` is ``(I, R)``.

    ``B`` is ``b`` (``(R, J)``) or, with ``b_transposed``, ``b.T`` for a
    ``(J, R)`` array ``b`` (read in place). The result ``C`` (``(I, J)``) is
    returned as is, or as ``C.T`` (``(J, I)``, written directly) with
    ``out_transposed``. ``out_dtype`` defaults to ``b.dtype``.
    """
    n_i, half = a_vals.shape
    n_r = 2 * half
    if a_meta.shape != (n_i, cdiv(n_r, 8)) or a_meta.dtype != jnp.uint8:
        raise ValueError(
            f"a_meta has shape {a_meta.shape} {a_meta.dtype}, values {a_vals.shape}: pass the "
            "(values, meta) pair the compress kernels return"
        )
    if b_transposed:
        n_j, rb = b.shape
        stride_br, stride_bj = 1, rb
    else:
        rb, n_j = b.shape
        stride_br, stride_bj = n_j, 1
    if rb != n_r:
        raise ValueError(f"A_s is ({n_i}, {n_r}) but B has reduction length {rb}")
    out_dtype = b.dtype if out_dtype is None else jnp.dtype(out_dtype)
    if out_transposed:
        out = jax.ShapeDtypeStruct((n_j, n_i), out_dtype)
        stride_ci, stride_cj = 1, n_i
    else:
        out = jax.ShapeDtypeStruct((n_i, n_j), out_dtype)
        stride_ci, stride_cj = n_j, 1
    config = config or config_for(
        b.dtype, n_i, n_j, n_r, b_transposed=b_transposed, out_transposed=out_transposed, out_dtype=out_dtype
    )
    check_config(config, b.dtype)
    bi, bj, br, warps, stages, words = split_config(config)
    return jt().triton_call(
        a_vals, a_meta, b,
        kernel=sparse24_matmul_kernel,
        out_shape=out,
        grid=(cdiv(n_i, bi) * cdiv(n_j, bj),),
        N_I=n_i, N_J=n_j, N_R=n_r,
        STRIDE_BR=stride_br, STRIDE_BJ=stride_bj, STRIDE_CI=stride_ci, STRIDE_CJ=stride_cj,
        BLOCK_I=bi,
        BLOCK_J=bj,
        BLOCK_R=br,
        GROUP_I=GROUP_I,
        PRECISION=precision,
        WORDS=words,
        num_warps=warps,
        num_stages=stages,
    )
