"""Sweep the Triton 2:4 GEMM's block configs at FFN shapes, beside XLA dense, and write the best.

    python benchmarks/triton_gemm_tune.py --shapes gpt2-774m gpt2-1558m llama-7b --out cfg.json

For each shape's linears (up: W is (4d, d); down: (d, 4d)) and each of the three
products the ``triton`` backend runs (sparse24_jax_kernels/triton/backend.py):

    fwd  Z.T  = W_s @ X.T            A = W_s packed   (N, K), B = X.T, C written as Z
    dX   dX.T = W_s.T @ dZ.T         A = W_s.T packed (K, N), B = dZ.T, C written as dX
    dW   dW   = S(dZ.T) @ X          A = dZ.T packed  (N, M), B = X,   C float32

it times every candidate config (``matmul.CANDIDATES``, or ``--configs``) with
``timing.time_jax`` and the XLA dense dot of the same product, prints a table
(ms, TFLOP/s, vs XLA) and writes ``--out``: ``{"configs": {key: [BLOCK_I,
BLOCK_J, BLOCK_R, warps, stages(, WORDS)]}, "rows": [...]}`` with the fastest config per
product (a product two linears share, e.g. up's fwd and down's dX, is timed
once). Point ``$SPARSE24_TRITON_GEMM_CONFIGS`` at that file and the backend
uses it (``matmul.config_for``); commit it as
``kernels/triton/matmul_configs.json`` to make it the default. The file is
rewritten after every product, so a run cut off keeps what it measured. A
config that fails to compile or launch (shared memory), or whose result is
not the pure-JAX twin's (``decompress_24(v, m) @ B``, float32 accumulation) to
1e-2 of max |C|, is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys

from shapes import SHAPES, tiled_mask
from timing import time_jax


def products(n: int, k: int, m: int, key):
    """The three products of one (N, K) linear: (name, a_vals, a_meta, b, kwargs, xla fn, xla args)."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax import compress_24, mask_24

    x = jax.random.normal(jax.random.fold_in(key, 1), (m, k), jnp.bfloat16)
    dz = jax.random.normal(jax.random.fold_in(key, 2), (m, n), jnp.bfloat16)
    w = jax.random.normal(jax.random.fold_in(key, 3), (n, k), jnp.bfloat16)
    w_s = jnp.where(jnp.asarray(tiled_mask(n, k)), w, jnp.zeros((), w.dtype))
    wv, wm = compress_24(w_s, w_s != 0)
    wtv, wtm = compress_24(w_s.T, w_s.T != 0)
    g = dz.T
    gv, gm = compress_24(g, mask_24(g))
    t = dict(b_transposed=True, out_transposed=True)
    return [
        ("fwd", wv, wm, x, t, lambda x, w: jnp.dot(x, w.T), (x, w)),
        ("dX", wtv, wtm, dz, t, lambda dz, w: jnp.dot(dz, w), (dz, w)),
        ("dW", gv, gm, x, dict(out_dtype=jnp.float32),
         lambda dz, x: jnp.dot(dz.T, x, preferred_element_type=jnp.float32), (dz, x)),
    ]


#: --dense: Triton's own dense GEMM in these configs (the ceiling of a tl.dot kernel
#: with this tile, layout and pipelining on the shape: what is left when the 2:4
#: decompression costs nothing)
DENSE_CONFIGS = ((128, 256, 64, 8, 3),)


def dense_triton(a, b, config, *, b_transposed=False, out_transposed=False, out_dtype=None):
    """``a @ B`` (``a`` dense row-major ``(I, R)``) by a plain Triton ``tl.dot`` kernel with
    the 2:4 kernel's grid order, strides and block config: the same loop without the
    packed loads and the decompression."""
    import jax
    import jax.numpy as jnp
    import triton
    import triton.language as tl

    from sparse24_jax_kernels.triton import matmul
    from sparse24_jax_kernels.triton._runtime import cdiv, jt

    global _dense_kernel
    if "_dense_kernel" not in globals():
        @triton.jit
        def _dense_kernel(a_ptr, b_ptr, c_ptr, N_I: tl.constexpr, N_J: tl.constexpr, N_R: tl.constexpr,
                          STRIDE_BR: tl.constexpr, STRIDE_BJ: tl.constexpr, STRIDE_CI: tl.constexpr,
                          STRIDE_CJ: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                          BLOCK_R: tl.constexpr, GROUP_I: tl.constexpr):
            pid_i, pid_j = matmul.grouped_tile(tl.program_id(0), N_I, N_J, BLOCK_I, BLOCK_J, GROUP_I)
            offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
            offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
            offs_r = tl.arange(0, BLOCK_R)
            acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
            for r0 in range(0, N_R, BLOCK_R):
                a_t = tl.load(a_ptr + offs_i[:, None] * N_R + (r0 + offs_r)[None, :])
                b_t = tl.load(b_ptr + (r0 + offs_r)[:, None] * STRIDE_BR + offs_j[None, :] * STRIDE_BJ)
                acc = tl.dot(a_t, b_t, acc)
            tl.store(c_ptr + offs_i[:, None] * STRIDE_CI + offs_j[None, :] * STRIDE_CJ, acc.to(c_ptr.dtype.element_ty))

    n_i, n_r = a.shape
    n_j = b.shape[0] if b_transposed else b.shape[1]
    bi, bj, br, warps, stages = config
    if n_i % bi or n_j % bj or n_r % br:
        raise ValueError(f"dense_triton needs tiles that divide ({n_i}, {n_j}, {n_r})")
    sb = (1, n_r) if b_transposed else (n_j, 1)
    sc = (1, n_i) if out_transposed else (n_j, 1)
    out_dtype = jnp.dtype(out_dtype or b.dtype)
    out = jax.ShapeDtypeStruct((n_j, n_i) if out_transposed else (n_i, n_j), out_dtype)
    return jt().triton_call(a, b, kernel=_dense_kernel, out_shape=out, grid=(cdiv(n_i, bi) * cdiv(n_j, bj),),
                            N_I=n_i, N_J=n_j, N_R=n_r, STRIDE_BR=sb[0], STRIDE_BJ=sb[1], STRIDE_CI=sc[0],
                            STRIDE_CJ=sc[1], BLOCK_I=bi, BLOCK_J=bj, BLOCK_R=br, GROUP_I=8,
                            num_warps=warps, num_stages=stages)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="*", default=["gpt2-774m", "gpt2-1558m", "llama-7b"], choices=list(SHAPES))
    p.add_argument("--which", choices=["up", "down", "both"], default="both")
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--configs", nargs="*", default=None,
                   help="candidates as BI,BJ,BR,WARPS,STAGES[,WORDS] (default: matmul.CANDIDATES)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--mode", choices=["loop", "pipelined"], default="pipelined")
    p.add_argument("--out", help="write the best config per product here (JSON)")
    p.add_argument("--dense", action="store_true",
                   help="also time Triton's dense tl.dot GEMM in DENSE_CONFIGS (the ceiling without decompression)")
    opts = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from sparse24_jax import decompress_24
    from sparse24_jax_kernels.triton import matmul

    cands, seen_cfg = [], set()
    for c in ([tuple(int(v) for v in c.split(",")) for c in opts.configs] if opts.configs
              else list(matmul.CANDIDATES)):
        if matmul.split_config(c) not in seen_cfg:  # (..., 3) and (..., 3, 0) are one kernel
            seen_cfg.add(matmul.split_config(c))
            cands.append(c)
    kw = dict(reps=opts.reps, rounds=opts.rounds, warmup=opts.warmup, mode=opts.mode)
    dev = jax.devices()[0]
    print(f"# device: {dev.device_kind}; jax {jax.__version__}; M = {opts.m}; {len(cands)} configs; "
          f"mode {opts.mode}", flush=True)
    best, rows = {}, []
    key = jax.random.key(0)
    for name in opts.shapes:
        d, f = SHAPES[name]
        pairs = ([(f, d)] if opts.which in ("up", "both") else []) + ([(d, f)] if opts.which in ("down", "both") else [])
        for n, k in pairs:
            for gemm, av, am, b, mkw, xla_fn, xla_args in products(n, k, opts.m, key):
                n_i, n_r = av.shape[0], 2 * av.shape[1]
                n_j = b.shape[0] if mkw.get("b_transposed") else b.shape[1]
                out_dtype = mkw.get("out_dtype", b.dtype)
                ck = matmul.config_key(n_i, n_j, n_r, b.dtype, mkw.get("b_transposed", False),
                                       mkw.get("out_transposed", False), out_dtype)
                if ck in best:  # the same product of another linear (up fwd = down dX): measured
                    continue
                t_xla = time_jax(xla_fn, xla_args, **kw)
                flops = 2 * n_i * n_j * n_r
                print(f"## {name} N={n} K={k} {gemm} ({ck}): XLA dense {t_xla * 1e3:.3f} ms "
                      f"({flops / t_xla / 1e12:.0f} TFLOP/s)", flush=True)
                # the pure-JAX twin: a config whose result is off is reported and never picked
                ref = jnp.dot(decompress_24(av, am), b.T if mkw.get("b_transposed") else b,
                              preferred_element_type=jnp.float32)
                ref = ref.T if mkw.get("out_transposed") else ref
                scale = float(jnp.abs(ref).max()) + 1.0
                dense_ms = {}
                if opts.dense:
                    a_dense = decompress_24(av, am)
                    for cfg in DENSE_CONFIGS:
                        fn = lambda a, b, cfg=cfg: dense_triton(a, b, cfg, **mkw)  # noqa: E731
                        try:
                            err = float(jnp.abs(jax.jit(fn)(a_dense, b).astype(jnp.float32) - ref).max()) / scale
                            t = time_jax(fn, (a_dense, b), **kw)
                        except Exception as e:  # noqa: BLE001
                            print(f"   triton dense {cfg}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                            continue
                        dense_ms[",".join(map(str, cfg))] = t * 1e3
                        print(f"   triton dense {cfg}: {t * 1e3:.3f} ms  {flops / t / 1e12:.0f} TFLOP/s  "
                              f"{t_xla / t:.2f}x XLA{'' if err < 1e-2 else f'  (WRONG: max error {err:.3g})'}",
                              flush=True)
                times = {}
                for cfg in cands:
                    fn = lambda a, m_, b, cfg=cfg: matmul.sparse24_matmul(a, m_, b, config=cfg, **mkw)  # noqa: E731
                    try:
                        err = float(jnp.abs(jax.jit(fn)(av, am, b).astype(jnp.float32) - ref).max()) / scale
                        if not err < 1e-2:  # bf16 output rounding is 2**-9 relative
                            print(f"   {cfg}: WRONG (max error {err:.3g} of max |C|), skipped", flush=True)
                            continue
                        t = time_jax(fn, (av, am, b), **kw)
                    except Exception as err:  # noqa: BLE001 - a config the GPU cannot run
                        print(f"   {cfg}: FAILED {type(err).__name__}: {str(err)[:200]}", flush=True)
                        continue
                    times[cfg] = t
                    print(f"   {cfg}: {t * 1e3:.3f} ms  {flops / t / 1e12:.0f} TFLOP/s  "
                          f"{t_xla / t:.2f}x XLA", flush=True)
                if not times:
                    continue
                cfg = min(times, key=times.get)
                best[ck] = list(cfg)
                rows.append({"model": name, "N": n, "K": k, "M": opts.m, "gemm": gemm, "key": ck,
                             "xla_ms": t_xla * 1e3, "best": list(cfg), "best_ms": times[cfg] * 1e3,
                             "vs_xla": t_xla / times[cfg],
                             "all_ms": {",".join(map(str, c)): v * 1e3 for c, v in times.items()},
                             "triton_dense_ms": dense_ms})
                if opts.out:
                    with open(opts.out, "w") as fh:
                        json.dump({"device": dev.device_kind, "configs": best, "rows": rows}, fh, indent=1)
    print("\n| model | N x K | GEMM | XLA dense ms | triton ms | triton vs XLA | best config |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['N']} x {r['K']} | {r['gemm']} | {r['xla_ms']:.3f} | {r['best_ms']:.3f} | "
              f"{r['vs_xla']:.2f}x | {tuple(r['best'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
