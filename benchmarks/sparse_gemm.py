"""Benchmark the three GEMMs of a 2:4 FFN linear layer: ours (cuSPARSELt via
XLA FFI, or ``--backend triton``) vs XLA dense (jnp.dot) vs PyTorch dense vs PyTorch 2:4
(torch.sparse.to_sparse_semi_structured), bf16, on one GPU.

    python benchmarks/sparse_gemm.py                     # all shapes, M = 16384
    python benchmarks/sparse_gemm.py --shapes gpt2-124m llama-7b --json out.json

Per FFN shape (d, 4d) both linears are timed: "up" (W: 4d x d) and "down"
(W: d x 4d); ``--gated`` makes "up" a gated FFN's (W: 2h x d, SwiGLU's [x, gate]).
GEMMs (X: M x K tokens, W: N x K):

    fwd  Z  = X  @ W_s.T      (M, N)
    dX   dX = dZ @ W_s        (M, K)   sparse W_s.T
    dW   dW = S(dZ.T) @ X     (N, K)   sparse MVUE-pruned dZ.T

JAX timing (benchmarks/timing.py, ``time_jax``): by default a jitted loop of
R calls (``looped``: a one-element update of each call's first float operand
keeps XLA from hoisting or dropping it), divided by R, median over rounds: no
dispatch overhead. ``--mode pipelined`` instead enqueues R jitted calls and
blocks once. PyTorch (``time_torch``): CUDA events around R back-to-back calls. Compression (ours: W and W.T; MVUE + compress of dZ.T) is
timed separately; "dW+prune" is the per-step cost of the weight gradient.

``--cutlass`` adds our CUTLASS 3.x sm90 sparse kernels (kernels/cutlass/), each
built config on each GEMM, the best beside cuSPARSELt ("ours") and XLA dense.
"""

from __future__ import annotations

import argparse
import json
import sys

from config_tables import write_config_table
from shapes import SHAPES, tiled_mask
from timing import time_jax, time_torch


# ---------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------


def bench_shape(be, n: int, k: int, m: int, opts, torch_ok: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    kw = dict(reps=opts.reps, rounds=opts.rounds, warmup=opts.warmup)
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.fold_in(key, 1), (m, k), jnp.bfloat16)
    dz = jax.random.normal(jax.random.fold_in(key, 2), (m, n), jnp.bfloat16)
    w = jax.random.normal(jax.random.fold_in(key, 3), (n, k), jnp.bfloat16)
    w_s = jnp.where(jnp.asarray(tiled_mask(n, k)), w, jnp.zeros((), w.dtype))
    w_op = jax.jit(lambda w: be.prepare_weight(w, transposable=True))(w_s)
    gkey = jax.random.fold_in(key, 4)
    g = jax.jit(be.prune_grad)(gkey, dz)

    tj = lambda f, *a: time_jax(f, a, mode=opts.mode, **kw)  # noqa: E731
    res = {
        "fwd": {
            "xla": tj(lambda x, w: jnp.dot(x, w.T), x, w),
            "ours": tj(be.matmul_fwd, x, w_op),
            "flops": 2 * m * n * k,
        },
        "dX": {
            "xla": tj(lambda dz, w: jnp.dot(dz, w), dz, w),
            "ours": tj(be.matmul_dx, dz, w_op),
            "flops": 2 * m * n * k,
        },
        "dW": {
            "xla": tj(lambda dz, x: jnp.dot(dz.T, x), dz, x),
            "ours": tj(be.matmul_dw, g, x),
            "flops": 2 * m * n * k,
        },
    }
    t_prep = tj(lambda w: be.prepare_weight(w, transposable=True), w_s)
    if be.name == "cusparselt":
        from sparse24_jax_kernels.cusparselt import layout, ops

        seed = jax.random.bits(gkey, (2,), jnp.uint32)  # prune_grad = these bits + this kernel
        t_prune = tj(lambda s, dz: ops.mvue_compress(s, dz, transpose=True), seed, dz)
        # the same product with D written column-major (cuSPARSELt picks other
        # kernels for it), transposed back while casting to float32 as matmul_dw does
        mp = g.mp
        xp = x if mp == m else jnp.pad(x, ((0, mp - m), (0, 0)))
        res["dW"]["ours_dcol"] = tj(
            lambda b, x: ops.spmm(b, x, m=n, k=mp, transpose_b=False, d_col_major=True,
                                  out_dtype=x.dtype).T.astype(jnp.float32), g.buf, xp)

        def size(r: int, c: int) -> int:  # the compressed buffer of an r x c bf16 matrix
            return layout.compressed_nbytes(r, c, jnp.bfloat16)
    else:  # the backend's own prune_grad (triton: the fused MVUE + pack kernel)
        t_prune = tj(be.prune_grad, gkey, dz)

        def size(r: int, c: int) -> int:  # the row-major packed format: values + meta bytes
            return r * (c // 2) * 2 + r * -(-c // 8)
    res["dW"]["ours+prune"] = res["dW"]["ours"] + t_prune

    if opts.cutlass:
        try:
            _cutlass_times(res, n, k, m, x, dz, w_s, opts, tj)
        except Exception as err:  # noqa: BLE001 - report, keep the other numbers
            print(f"  CUTLASS failed at N={n} K={k}: {type(err).__name__}: {str(err)[:400]}",
                  file=sys.stderr, flush=True)

    if torch_ok:
        try:
            _torch_times(res, n, k, m, kw)
        except Exception as err:  # noqa: BLE001 - report, keep the JAX numbers
            print(f"  torch failed at N={n} K={k}: {type(err).__name__}: {err}", file=sys.stderr)

    rows = []
    for gemm, r in res.items():
        rows.append({"N": n, "K": k, "M": m, "gemm": gemm, **r})

    # bytes moved: the dense input read, the compressed buffer written
    rows.append({"N": n, "K": k, "M": m, "gemm": "compress W,W.T", "ours": t_prep,
                 "bytes": 2 * n * k * 2 + size(n, k) + size(k, n)})
    rows.append({"N": n, "K": k, "M": m, "gemm": "MVUE+compress dZ.T", "ours": t_prune,
                 "bytes": m * n * 2 + size(n, m)})
    return rows


def _cutlass_times(res, n, k, m, x, dz, w_s, opts, tj):
    """Each CUTLASS config on each product (sparse24_jax_kernels.cutlass); the best per
    product as res[gemm]["cutlass"], all in res[gemm]["cutlass_all"]. The operands are
    the ones cuSPARSELt gets: W_s, W_s^T, and S(dZ^T) = dZ^T under the fixed 2:4
    pattern (its MVUE is not CUTLASS's work here). Each config's result is checked
    against the float32 XLA reference (max error relative to its RMS) before timing."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax_kernels.cutlass import ops as cops

    g_s = jnp.where(jnp.asarray(tiled_mask(n, m)), dz.T, jnp.zeros((), dz.dtype))
    comp = jax.jit(cops.compress)
    operands = {
        "fwd": (comp(w_s), x, w_s),
        "dX": (comp(w_s.T), dz, w_s.T),
        "dW": (comp(g_s), x, g_s),
    }
    product = {"fwd": "fwd", "dX": "dx", "dW": "dw"}
    for gemm, ((vals, meta), b, a_dense) in operands.items():
        p = product[gemm]
        built = cops.configs(p)
        configs = [c for c in (opts.cutlass_configs or built) if c in built]
        ref = jax.jit(lambda a, b: cops.reference(p, a, b))(a_dense, b).astype(jnp.float32)
        rms = float(jnp.sqrt(jnp.mean(ref * ref))) + 1e-30
        times, errs = {}, {}
        for cfg in configs:
            f = lambda v, mt, b, cfg=cfg: cops.spmm(p, v, mt, b, config=cfg)  # noqa: E731
            try:
                out = jax.jit(f)(vals, meta, b).astype(jnp.float32)
                errs[cfg] = float(jnp.max(jnp.abs(out - ref))) / rms
                # b first: the looped timer rewrites the first float operand, not the sparse one
                times[cfg] = tj(lambda b, v, mt, f=f: f(v, mt, b), b, vals, meta)
            except Exception as err:  # noqa: BLE001 - one config failing keeps the others
                print(f"  CUTLASS {cfg} {gemm} failed: {type(err).__name__}: {str(err)[:300]}",
                      file=sys.stderr, flush=True)
        if not times:
            continue
        best = min(times, key=times.get)
        res[gemm]["cutlass"] = times[best]
        res[gemm]["cutlass_config"] = best
        res[gemm]["cutlass_all"] = times
        res[gemm]["cutlass_err"] = errs


def _torch_times(res, n, k, m, kw):
    import torch
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = False  # cuSPARSELt
    dev = "cuda"
    torch.manual_seed(0)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    dz = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    mask = torch.from_numpy(tiled_mask(n, k)).to(dev)
    w_s = w * mask
    # the MVUE output has the 2:4 pattern of a top-2 prune along M
    gt = dz.t().contiguous()
    gm = torch.from_numpy(tiled_mask(n, m)).to(dev)
    g_s = gt * gm
    ws = to_sparse_semi_structured(w_s)
    wts = to_sparse_semi_structured(w_s.t().contiguous())
    gs = to_sparse_semi_structured(g_s)
    F = torch.nn.functional
    with torch.no_grad():
        res["fwd"]["torch"] = time_torch(lambda: torch.mm(x, w.t()), **kw)
        res["fwd"]["torch24"] = time_torch(lambda: F.linear(x, ws), **kw)
        res["dX"]["torch"] = time_torch(lambda: torch.mm(dz, w), **kw)
        res["dX"]["torch24"] = time_torch(lambda: F.linear(dz, wts), **kw)
        res["dW"]["torch"] = time_torch(lambda: torch.mm(dz.t(), x), **kw)
        res["dW"]["torch24"] = time_torch(lambda: torch.mm(gs, x), **kw)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _ms(t):
    return "n/a" if t is None else f"{t * 1e3:.3f}"


def _x(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def markdown(rows: list[dict]) -> str:
    out = [
        "| shape (N x K) | GEMM | XLA dense ms | ours ms | ours vs XLA | torch dense ms "
        "| torch 2:4 ms | torch 2:4 vs dense | ours TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    extra = ["", "| shape (N x K) | compression | ours ms | GB/s |", "|---|---|---|---|"]
    for r in rows:
        shape = f"{r['N']} x {r['K']}"
        if "flops" in r:
            ours = r.get("ours")
            tflops = "n/a" if not ours else f"{r['flops'] / ours / 1e12:.0f}"
            out.append(
                f"| {shape} | {r['gemm']} | {_ms(r.get('xla'))} | {_ms(ours)} | "
                f"{_x(r.get('xla'), ours)} | {_ms(r.get('torch'))} | {_ms(r.get('torch24'))} | "
                f"{_x(r.get('torch'), r.get('torch24'))} | {tflops} |"
            )
            if "ours_dcol" in r:
                out.append(
                    f"| {shape} | dW, D col-major | {_ms(r.get('xla'))} | {_ms(r['ours_dcol'])} | "
                    f"{_x(r.get('xla'), r['ours_dcol'])} | | | | |"
                )
            if "ours+prune" in r:
                out.append(
                    f"| {shape} | dW+prune | {_ms(r.get('xla'))} | {_ms(r['ours+prune'])} | "
                    f"{_x(r.get('xla'), r['ours+prune'])} | | | | |"
                )
        else:
            gbs = r["bytes"] / r["ours"] / 1e9
            extra.append(f"| {shape} | {r['gemm']} | {_ms(r['ours'])} | {gbs:.0f} |")
    if any("cutlass" in r for r in rows):
        out += ["", "| shape (N x K) | GEMM | XLA dense ms | cuSPARSELt ms | CUTLASS best ms "
                "| best config | CUTLASS vs cuSPARSELt | CUTLASS vs XLA | CUTLASS TFLOP/s "
                "| max err / RMS |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "cutlass" not in r:
                continue
            best = r["cutlass_config"]
            out.append(
                f"| {r['N']} x {r['K']} | {r['gemm']} | {_ms(r.get('xla'))} | {_ms(r.get('ours'))} "
                f"| {_ms(r['cutlass'])} | {best} | {_x(r.get('ours'), r['cutlass'])} "
                f"| {_x(r.get('xla'), r['cutlass'])} | {r['flops'] / r['cutlass'] / 1e12:.0f} "
                f"| {r['cutlass_err'].get(best, float('nan')):.1e} |"
            )
        out += ["", "| shape (N x K) | GEMM | " + " | ".join(
            sorted({c for r in rows for c in r.get("cutlass_all", {})})) + " |"]
        cfgs = sorted({c for r in rows for c in r.get("cutlass_all", {})})
        out.append("|---|---|" + "---|" * len(cfgs))
        for r in rows:
            if "cutlass_all" in r:
                out.append(f"| {r['N']} x {r['K']} | {r['gemm']} | " + " | ".join(
                    _ms(r["cutlass_all"].get(c)) for c in cfgs) + " |")
    return "\n".join(out + extra)


def layer_shapes(d: int, f: int, which: str, gated: bool = False) -> list[tuple[int, int]]:
    """The weights' (N, K) of an FFN of width d and hidden size f that ``which`` ("up",
    "down", "both") asks for: up (f, d), or (2f, d) when ``gated`` ([x, gate] in one GEMM);
    down (d, f)."""
    shapes = []
    if which in ("up", "both"):
        shapes.append((2 * f if gated else f, d))
    if which in ("down", "both"):
        shapes.append((d, f))
    return shapes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--which", choices=["up", "down", "both"], default="both",
                   help="up: W is (4d, d); down: W is (d, 4d)")
    p.add_argument("--gated", action="store_true",
                   help="the up linear of a gated FFN (SwiGLU): W is (2h, d), [x, gate] in one GEMM, "
                        "as sparse24_ffn's fc with a gated activation (LLaMA-7B: 22016 x 4096)")
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mode", choices=["loop", "pipelined"], default="loop")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--cutlass", action="store_true",
                   help="also time the CUTLASS sm90 sparse GEMMs (sparse24_jax_kernels.cutlass), "
                        "every built config, the best reported beside cuSPARSELt and XLA")
    p.add_argument("--cutlass-configs", nargs="*", default=None,
                   help="only these CUTLASS configs (default: every one the build has)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--table-out", help="with --cutlass: write the fastest CUTLASS config per layer "
                   "shape and product here, in the format of kernels/cutlass/gemm_configs.json (the "
                   "backend reads it from $SPARSE24_CUTLASS_GEMM_TABLE, or copy it over the shipped file)")
    p.add_argument("--backend", choices=["cusparselt", "triton"], default="cusparselt",
                   help="whose 2:4 GEMMs are 'ours' (triton: the decompress-in-registers kernel, "
                        "block configs from the tuned table / $SPARSE24_TRITON_GEMM_CONFIGS)")
    opts = p.parse_args(argv)
    if opts.table_out and not opts.cutlass:
        p.error("--table-out writes the CUTLASS configs' table: add --cutlass")
    if opts.gated and opts.which == "down":
        p.error("--gated changes the up linear only: use --which up or both")

    import jax

    from sparse24_jax import get_backend

    be = get_backend(opts.backend)
    torch_ok = False
    if not opts.no_torch:
        try:
            import torch

            torch_ok = torch.cuda.is_available()
        except ImportError:
            pass
    dev = jax.devices()[0]
    print(f"# device: {dev.device_kind}; jax {jax.__version__}; backend {opts.backend}; M = {opts.m}; "
          f"mode {opts.mode}; "
          f"reps {opts.reps} x rounds {opts.rounds}; torch: {'yes' if torch_ok else 'no'}",
          flush=True)
    rows = []
    for name in opts.shapes:
        for n, k in layer_shapes(*SHAPES[name], opts.which, opts.gated):
            print(f"## {name}: N={n} K={k}", flush=True)
            try:
                rs = bench_shape(be, n, k, opts.m, opts, torch_ok)
            except Exception as err:  # noqa: BLE001 - report it, keep the other shapes
                print(f"   FAILED: {type(err).__name__}: {str(err)[:300]}", flush=True)
                continue
            for r in rs:
                r["model"] = name
            rows += rs
            # print (and save) as we go: a run cut off by its time limit keeps what it measured
            print(markdown(rs), flush=True)
            if opts.json:
                with open(opts.json, "w") as fh:
                    json.dump({"device": dev.device_kind, "backend": opts.backend, "M": opts.m, "mode": opts.mode,
                               "rows": rows},
                              fh, indent=1)
    print("\n## all shapes\n" + markdown(rows))
    try:
        from sparse24_jax_kernels.cusparselt import ops

        print(f"\ncuSPARSELt {ops.version()}; library counters {ops.stats()}")
    except Exception:  # noqa: BLE001
        pass
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump({"device": dev.device_kind, "backend": opts.backend, "M": opts.m, "mode": opts.mode,
                               "rows": rows},
                      fh, indent=1)
    if opts.table_out:
        write_table(opts.table_out, rows, dev.device_kind, argv)
    return 0


#: sparse_gemm's GEMM names -> the CUTLASS products (gemm_configs.json's keys)
_PRODUCTS = {"fwd": "fwd", "dX": "dx", "dW": "dw"}


def write_table(path: str, rows: list[dict], device: str, argv) -> None:
    """The fastest CUTLASS config of each (layer, product), keyed as the backend looks it
    up: by the weight's N x K (the dW product's output has the weight's shape too)."""
    table: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["gemm"] in _PRODUCTS and r.get("cutlass_config"):
            table.setdefault(f"{r['N']}x{r['K']}", {})[_PRODUCTS[r["gemm"]]] = r["cutlass_config"]
    write_config_table(path, table, device=device, m=rows[0]["M"] if rows else None,
                       script="sparse_gemm.py", argv=argv, what="CUTLASS configs")


if __name__ == "__main__":
    sys.exit(main())
