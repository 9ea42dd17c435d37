"""Time our CUTLASS-format compressors beside the cuSPARSELt backend's, at the FFN shapes.

    python benchmarks/cutlass_compress.py --shapes gpt2-774m gpt2-1558m llama-7b [--json out.json]

Per training step and FFN layer the 2:4 path builds, besides its GEMMs:

* the projection of both FFN weights (the float32 master W (N, K) and the mask ->
  W_s and W_s^T compressed): ``cutlass.own_ops.project_compress`` beside
  ``cusparselt.ops.project_compress(..., transpose_too=True)``;
* the MVUE of dZ^T for both FFN weight gradients (dZ (M, N) bf16 -> S(dZ^T)
  compressed): ``cutlass.own_ops.mvue_compress`` beside
  ``cusparselt.ops.mvue_compress(..., transpose=True)``.

Both libraries' kernels move the same bytes (their formats differ only in the
metadata order and the codes of degenerate groups), so each row is a like-for-
like comparison. An XLA copy of the input is the bandwidth yardstick.

Our MVUE runs in blocks of 32 (the default) or 64 token groups (the same
bytes): ``--mvue-blocks``
also times each block size by itself, as ``timing.per_call`` (the slope between a
program of 8 calls on distinct copies and a program of one, so no dispatch cost
is in it), and names the faster. Times are
back-to-back jitted calls, median (timing.time_jax's "pipelined" mode); GB/s
counts the bytes a kernel must move (inputs read once, outputs written once).
The last lines sum the per-step cost over a model's FFN layers.
"""

from __future__ import annotations

import argparse
import json

from shapes import LAYERS, SHAPES
from timing import per_call, time_jax


def bench(fn, *args, calls: int) -> float:
    return time_jax(fn, args, reps=calls, rounds=5, warmup=1, mode="pipelined")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["gpt2-774m", "gpt2-1558m", "llama-7b"],
                   choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=16384, help="M, the tokens of dZ")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--mvue-blocks", action="store_true",
                   help="also time our MVUE in blocks of 32 and of 64 token groups (timing.per_call)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from shapes import tiled_mask
    from sparse24_jax_kernels.cusparselt import layout as cl
    from sparse24_jax_kernels.cusparselt import ops as cs
    from sparse24_jax_kernels.cutlass import own_ops
    from sparse24_jax_kernels.cutlass.ops import meta_nbytes

    cs.load()
    bf = jnp.bfloat16
    seed = jnp.array([1, 2], jnp.uint32)
    copy = jax.jit(lambda x: x * 2)
    own_project = jax.jit(own_ops.project_compress)
    cs_project = jax.jit(lambda w, m: cs.project_compress(w, m, dtype=bf, transpose_too=True))
    own_mvue = jax.jit(own_ops.mvue_compress)
    cs_mvue = jax.jit(lambda s, d: cs.mvue_compress(s, d, transpose=True))
    print(f"{jax.devices()[0].device_kind}: M = {args.tokens} tokens, bf16; ms per call, GB/s")
    print(f"{'shape':<11} {'kernel':<8} {'operand':<16} {'copy':>14} {'cuSPARSELt lib':>16} "
          f"{'ours (CUTLASS)':>16} {'ours / cuSPARSELt':>18}")
    rows, per_step = [], {}
    for name in args.shapes:
        d, h = SHAPES[name]
        for what, (n, k) in (("up", (h, d)), ("down", (d, h))):
            w = jax.random.normal(jax.random.key(n), (n, k), jnp.float32)
            mask = jnp.asarray(tiled_mask(n, k))
            # one read of W (4 B) and the mask (1 B); each compressed matrix 1 + 1/8 B per element
            nbytes = n * k * 5 + 2 * (n * k + meta_nbytes(n, k))
            t_copy = bench(copy, w, calls=args.calls)
            t_cs = bench(cs_project, w, mask, calls=args.calls)
            t_own = bench(own_project, w, mask, calls=args.calls)
            rows.append(dict(shape=name, kernel="project", operand=f"W {what} {n}x{k}", n=n, k=k,
                             copy_ms=t_copy * 1e3, cusparselt_ms=t_cs * 1e3, ours_ms=t_own * 1e3,
                             nbytes=nbytes))
        for n in (h, d):
            dz = jax.random.normal(jax.random.key(n + 1), (args.tokens, n), bf)
            nbytes = args.tokens * n * 2 + cl.compressed_nbytes(n, args.tokens, jnp.dtype(bf))
            t_copy = bench(copy, dz, calls=args.calls)
            t_cs = bench(cs_mvue, seed, dz, calls=args.calls)
            t_own = bench(own_mvue, seed, dz, calls=args.calls)
            rows.append(dict(shape=name, kernel="mvue", operand=f"dZ {args.tokens}x{n}", n=n,
                             k=args.tokens, copy_ms=t_copy * 1e3, cusparselt_ms=t_cs * 1e3,
                             ours_ms=t_own * 1e3, nbytes=nbytes))
            if args.mvue_blocks:
                blocks = {g: per_call(lambda s, d, g=g: own_ops.mvue_compress(s, d, block_groups=g),
                                      seed, dz) * 1e3 for g in (32, 64)}
                pick = min(blocks, key=blocks.get)
                rows[-1].update(block32_ms=blocks[32], block64_ms=blocks[64], copy_per_call_ms=
                                per_call(lambda d: d * 2, dz) * 1e3)
                print(f"  {name} MVUE dZ {args.tokens}x{n}, per call: blocks of 32 {blocks[32]:.4f} ms, "
                      f"of 64 {blocks[64]:.4f} ms (faster: {pick}), XLA copy "
                      f"{rows[-1]['copy_per_call_ms']:.4f} ms")
        for r in rows:
            if r["shape"] != name:
                continue
            gbs = lambda ms: r["nbytes"] / (ms * 1e-3) / 1e9  # noqa: E731
            print(f"{name:<11} {r['kernel']:<8} {r['operand']:<16} {r['copy_ms']:7.3f} ms    "
                  f"{r['cusparselt_ms']:.3f} ({gbs(r['cusparselt_ms']):4.0f})  "
                  f"{r['ours_ms']:.3f} ({gbs(r['ours_ms']):4.0f})  "
                  f"{r['cusparselt_ms'] / r['ours_ms']:17.2f}x")
        mine = [r for r in rows if r["shape"] == name]
        per_step[name] = {key: LAYERS[name] * sum(r[key] for r in mine)
                          for key in ("cusparselt_ms", "ours_ms")}
    for name, s in per_step.items():
        print(f"{name}: per step over {LAYERS[name]} FFN layers (2 projections + 2 MVUEs each): "
              f"cuSPARSELt library {s['cusparselt_ms']:.1f} ms, ours {s['ours_ms']:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, tokens=args.tokens, rows=rows,
                           per_step=per_step), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
