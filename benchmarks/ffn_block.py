"""Benchmark a whole FFN block, forward + backward, on one GPU (bf16):
ours (sparse24_linear with a 2:4 backend, every per-step compression and the
MVUE pruning of dZ.T included) vs XLA dense vs PyTorch dense vs PyTorch 2:4.

    python benchmarks/ffn_block.py                               # GELU and SwiGLU, all shapes
    python benchmarks/ffn_block.py --act gelu --shapes gpt2-774m --json out.json

Block: ``y = proj(act(fc(x)))`` with x (M, d), fc (h, d), proj (d, h); GELU
with h = 4d (GPT-2), SwiGLU with fc producing [x, gate] of 2h (LLaMA; h = 4d,
or 11008 for LLaMA-7B). One timed call = value and gradients of
``sum(y * g)`` with respect to x and both weights. The mask search (every 40
optimizer steps in the recipe) is not in the loop; compressing W and W.T is,
as in a training step.

PyTorch 2:4 is the way PyTorch users train with ``to_sparse_semi_structured``:
a custom autograd function whose forward uses the compressed W, input
gradient the compressed W.T (both compressed every step), weight gradient
dense (PyTorch has no MVUE-sparse weight gradient).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np

from shapes import SHAPES, tiled_mask
from timing import time_jax, time_torch

HIDDEN = {"llama-7b": 11008}


def custom_call_targets(text: str) -> list[str]:
    """The custom-call targets named in a lowered program: StableHLO text (what
    ``jax.jit(f).lower(...).as_text()`` gives: ``stablehlo.custom_call @name``) or
    HLO text (``custom_call_target="name"``)."""
    found = re.findall(r'custom_call_target="([^"]+)"|custom_call\s*@([\w.$-]+)', text)
    return sorted({a or b for a, b in found})


def block_dims(name: str, act: str) -> tuple[int, int, int]:
    """(d, h, rows of fc): fc maps d -> rows (h for GELU, 2h for SwiGLU)."""
    d, h = SHAPES[name]
    h = HIDDEN.get(name, h)
    return d, h, (2 * h if act == "swiglu" else h)


def dense_fp8_linear():
    """``x @ w.T`` in S-STE's FP8 recipe with XLA's own FP8 dots (dense): the
    operands quantized per tensor (fwd e4m3, gradients e5m2), float8 arrays
    straight into ``lax.dot_general`` with float32 results, which XLA on
    Hopper rewrites to cuBLASLt FP8 GEMMs where it can (``fp8_native`` in the
    results says whether the compiled step has one)."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax import fp8

    def dot(a, b, contract):
        return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)

    @jax.custom_vjp
    def lin(x, w):
        return fwd(x, w)[0]

    def fwd(x, w):
        qx, sx = fp8.quantize(x, fp8.E4M3)
        qw, sw = fp8.quantize(w.astype(x.dtype), fp8.E4M3)
        z = dot(qx, qw, ((1,), (1,))) * (sx * sw)
        return z.astype(x.dtype), (qx, sx, qw, sw, jnp.zeros((), w.dtype))

    def bwd(res, dz):
        qx, sx, qw, sw, w_proto = res
        qdz, sdz = fp8.quantize(dz, fp8.E5M2)
        dx = dot(qdz, qw, ((1,), (0,))) * (sdz * sw)
        dw = dot(qdz, qx, ((0,), (0,))) * (sdz * sx)
        return dx.astype(dz.dtype), dw.astype(w_proto.dtype)

    lin.defvjp(fwd, bwd)
    return lin


def jax_block(act: str, backend: str | None, precision: str = "compute"):
    import jax
    import jax.numpy as jnp

    import sparse24_jax as s24

    dense8 = dense_fp8_linear() if backend is None and precision == "fp8" else None

    def lin(x, w, mask, key):
        if dense8 is not None:
            return dense8(x, w)
        if backend is None:  # plain bf16 dots, as a JAX user writes them
            return jnp.dot(x, w.T.astype(x.dtype))
        return s24.sparse24_linear(x, w, mask, key=key, backend=backend, precision=precision)

    def activation(h):
        if act == "gelu":
            return jax.nn.gelu(h, approximate=True)
        return s24.gated_activation(h, "swiglu")

    def loss(x, w1, w2, m1, m2, g, key):
        k1, k2 = jax.random.split(key)
        y = lin(activation(lin(x, w1, m1, k1)), w2, m2, k2)
        return jnp.sum(y.astype(jnp.float32) * g.astype(jnp.float32))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    return lambda x, w1, w2, m1, m2, g, key: grad(x, w1, w2, m1, m2, g, key)


def ffn_block(act: str, backend: str, fused: bool):
    """The same loss through :func:`sparse24_jax.sparse24_ffn` (one custom_vjp
    for the block, exact GELU): with ``fused`` the backend's fused activation
    capabilities run (e.g. "cutlass"'s GELU epilogues), without them the
    block composes the six products and XLA's activation passes."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax.ffn import Sparse24Weight, sparse24_ffn

    kind = "gelu" if act == "gelu" else "swiglu"

    def loss(x, w1, w2, m1, m2, g, key):
        keys = tuple(jax.random.split(key))
        y = sparse24_ffn(x, Sparse24Weight(w1, m1), Sparse24Weight(w2, m2), activation=kind, keys=keys,
                         backend=backend, fused=fused)
        return jnp.sum(y.astype(jnp.float32) * g.astype(jnp.float32))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def torch_block(act: str, sparse: bool, w1, w2):
    import torch
    import torch.nn.functional as F
    from torch.sparse import to_sparse_semi_structured

    class Sparse24Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ws = to_sparse_semi_structured(w)
            wt = to_sparse_semi_structured(w.t().contiguous())
            ctx.save_for_backward(x)
            ctx.wt = wt
            return F.linear(x, ws)

        @staticmethod
        def backward(ctx, dz):
            (x,) = ctx.saved_tensors
            dx = F.linear(dz, ctx.wt)
            dw = dz.t() @ x
            return dx, dw

    lin = Sparse24Linear.apply if sparse else F.linear

    def run(x, g):
        h = lin(x, w1)
        if act == "gelu":
            a = F.gelu(h, approximate="tanh")
        else:
            u, gate = h.chunk(2, dim=-1)
            a = u * F.silu(gate)
        y = lin(a, w2)
        (y.float() * g.float()).sum().backward()

    return run


def block_operands(name: str, act: str, m: int) -> tuple:
    """The arguments of jax_block's / ffn_block's loss for shape `name` and m tokens:
    (x, w1, w2, m1, m2, g, key), random but fixed (key 0), with the fixed 2:4 masks."""
    import jax
    import jax.numpy as jnp

    d, h, rows = block_dims(name, act)
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.fold_in(key, 1), (m, d), jnp.bfloat16)
    w1 = jax.random.normal(jax.random.fold_in(key, 2), (rows, d), jnp.float32) * 0.02
    w2 = jax.random.normal(jax.random.fold_in(key, 3), (d, h), jnp.float32) * 0.02
    m1 = jnp.asarray(tiled_mask(rows, d))
    m2 = jnp.asarray(tiled_mask(d, h))
    g = jax.random.normal(jax.random.fold_in(key, 4), (m, d), jnp.bfloat16)
    return (x, w1, w2, m1, m2, g, jax.random.fold_in(key, 5))


def bench(name: str, act: str, m: int, backend: str, opts) -> dict:
    import jax

    d, h, rows = block_dims(name, act)
    kw = dict(reps=opts.reps, rounds=opts.rounds, warmup=opts.warmup, mode=opts.mode)
    args = block_operands(name, act, m)
    row = {"model": name, "act": act, "M": m, "d": d, "h": h}
    row["ours_ms"] = 1e3 * time_jax(jax_block(act, backend), args, **kw)
    row["xla_dense_ms"] = 1e3 * time_jax(jax_block(act, None), args, **kw)
    if opts.block:
        for fused in (True, False):
            fn = ffn_block(act, backend, fused)
            tag = "ours_block_ms" if fused else "ours_block_unfused_ms"
            row[tag] = 1e3 * time_jax(fn, args, **kw)
            if fused:
                row["block_custom_calls"] = custom_call_targets(jax.jit(fn).lower(*args).as_text())
        row["block_fused_speedup"] = row["ours_block_unfused_ms"] / row["ours_block_ms"]
    if opts.fp8:
        row["ours_fp8_ms"] = 1e3 * time_jax(jax_block(act, backend, "fp8"), args, **kw)
        dense8 = jax_block(act, None, "fp8")
        hlo = jax.jit(dense8).lower(*args).compile().as_text()
        row["xla_fp8_native"] = "__cublas$lt$matmul$f8" in hlo  # XLA's cuBLASLt FP8 GEMM call
        row["xla_dense_fp8_ms"] = 1e3 * time_jax(dense8, args, **kw)
        try:
            from sparse24_jax_kernels.cusparselt import ops as _ops

            row["ours_fp8_native_fwd"], why = _ops.fp8_probe()
            if why:
                row["ours_fp8_note"] = why
        except Exception as err:  # noqa: BLE001 - another backend
            row["ours_fp8_note"] = f"{type(err).__name__}: {err}"
    if opts.torch:
        import torch

        dev = "cuda"
        tx = torch.randn(m, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        tg = torch.randn(m, d, device=dev, dtype=torch.bfloat16)
        tm1 = torch.as_tensor(tiled_mask(rows, d), device=dev)
        tm2 = torch.as_tensor(tiled_mask(d, h), device=dev)
        tw1 = (torch.randn(rows, d, device=dev, dtype=torch.bfloat16) * 0.02 * tm1).requires_grad_()
        tw2 = (torch.randn(d, h, device=dev, dtype=torch.bfloat16) * 0.02 * tm2).requires_grad_()
        tkw = dict(reps=opts.reps, rounds=opts.rounds, warmup=opts.warmup)
        row["torch_dense_ms"] = 1e3 * time_torch(lambda: torch_block(act, False, tw1, tw2)(tx, tg), **tkw)
        try:
            row["torch_24_ms"] = 1e3 * time_torch(lambda: torch_block(act, True, tw1, tw2)(tx, tg), **tkw)
        except Exception as err:  # noqa: BLE001 - report, keep going
            row["torch_24_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    row["speedup_vs_xla"] = row["xla_dense_ms"] / row["ours_ms"]
    if "torch_24_ms" in row:
        row["speedup_vs_torch_24"] = row["torch_24_ms"] / row["ours_ms"]
    return row


def markdown(rows) -> str:
    head = "| model | act | M | ours (ms) | XLA dense (ms) | torch dense (ms) | torch 2:4 (ms) | vs XLA | vs torch 2:4 |"
    out = [head, "|" + "---|" * 9]
    f = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    for r in rows:
        out.append(
            f"| {r['model']} | {r['act']} | {r['M']} | {f(r, 'ours_ms')} | {f(r, 'xla_dense_ms')} | "
            f"{f(r, 'torch_dense_ms')} | {f(r, 'torch_24_ms')} | {r['speedup_vs_xla']:.2f}x | "
            + (f"{r['speedup_vs_torch_24']:.2f}x |" if "speedup_vs_torch_24" in r else "- |")
        )
    return "\n".join(out)


def markdown_fp8(rows) -> str:
    head = ("| model | act | ours fp8 (ms) | ours bf16 (ms) | XLA dense bf16 (ms) | XLA dense fp8 (ms) | "
            "fp8 vs bf16 sparse | fp8 vs XLA bf16 | fp8 vs XLA fp8 |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        if "ours_fp8_ms" not in r:
            continue
        x8 = f"{r['xla_dense_fp8_ms']:.3f}" + ("" if r.get("xla_fp8_native") else " (no cuBLAS fp8)")
        out.append(
            f"| {r['model']} | {r['act']} | {r['ours_fp8_ms']:.3f} | {r['ours_ms']:.3f} | "
            f"{r['xla_dense_ms']:.3f} | {x8} | {r['ours_ms'] / r['ours_fp8_ms']:.2f}x | "
            f"{r['xla_dense_ms'] / r['ours_fp8_ms']:.2f}x | {r['xla_dense_fp8_ms'] / r['ours_fp8_ms']:.2f}x |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--act", choices=["gelu", "swiglu", "both"], default="both")
    p.add_argument("--backend", default="cusparselt")
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--mode", choices=["loop", "pipelined"], default="pipelined",
                   help="JAX timing (timing.time_jax): R calls enqueued back to back (pipelined), or "
                        "a jitted loop of R calls (loop; adds about a copy of the first operand per call "
                        "around our custom calls, docs/BENCHMARKS.md)")
    # a long window: with 1 + 3 rounds of 10 calls (~60 ms of timing at GPT-2 sizes) XLA's dense
    # block read 6-10% apart between runs; with 5 + 10 rounds of 50 two runs agree within 1%
    # (the GPU settles at its power cap; docs/BENCHMARKS.md section 18)
    p.add_argument("--reps", type=int, default=50, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (the median is reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--block", action="store_true",
                   help="also time the block as sparse24_ffn (exact GELU), with and without the "
                        "backend's fused activation kernels / epilogues (ours_block_ms, "
                        "ours_block_unfused_ms) and list its custom calls")
    p.add_argument("--fp8", action="store_true",
                   help="also time the FP8 recipe: ours (precision='fp8') and XLA dense FP8")
    opts = p.parse_args(argv)

    import jax

    dev = jax.devices()[0]
    print(f"# device: {dev.device_kind}; jax {jax.__version__}; backend {opts.backend}; M = {opts.m}; timing mode {opts.mode}", flush=True)
    acts = ["gelu", "swiglu"] if opts.act == "both" else [opts.act]
    rows = []
    for name in opts.shapes:
        for act in acts:
            try:
                rows.append(bench(name, act, opts.m, opts.backend, opts))
            except Exception as err:  # noqa: BLE001 - report, keep the other shapes
                print(f"{name} {act}: FAILED {type(err).__name__}: {str(err)[:300]}", flush=True)
                continue
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            if opts.json:
                with open(opts.json, "w") as fh:
                    json.dump({"device": dev.device_kind, "jax": jax.__version__, "mode": opts.mode, "rows": rows}, fh, indent=1)
    print("\n" + markdown(rows))
    for r in rows:
        if "ours_block_ms" in r:
            print(f"block {r['model']} {r['act']}: sparse24_ffn fused {r['ours_block_ms']:.3f} ms, unfused "
                  f"{r['ours_block_unfused_ms']:.3f} ms ({r['block_fused_speedup']:.2f}x); custom calls "
                  f"{r['block_custom_calls']}", flush=True)
    if opts.fp8:
        print("\nFP8 (S-STE recipe), forward + backward:\n" + markdown_fp8(rows))
    if rows:
        geo = float(np.exp(np.mean([np.log(r["speedup_vs_xla"]) for r in rows])))
        print(f"\ngeometric mean speed-up over XLA dense: {geo:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
