"""Fused-epilogue CUTLASS sparse GEMMs vs the unfused passes, GPT-2 GELU FFN shapes.

    python benchmarks/cutlass_epilogue.py                      # gpt2-774m gpt2-1558m, M = 16384
    python benchmarks/cutlass_epilogue.py --json out.json

Per model (d, h = 4d), bf16, one GPU, X (M, d) tokens:

* fwd of the first linear (W1_s: h x d), which writes A = gelu(Z1) and keeps
  what the backward needs (fused: G1 = gelu'(Z1); unfused: Z1):
    fused   ``epilogue_ops.spmm_fwd_gelu``  (one GEMM: D = gelu(acc), Aux = gelu'(acc))
    plain   CUTLASS fwd GEMM -> Z1, then XLA ``jax.nn.gelu(Z1, approximate=False)``
    XLA     ``jnp.dot(X, W1.T)`` -> Z1, then the same gelu
* input gradient of the second linear (W2_s: d x h) times gelu'(Z1), i.e. dZ1:
    fused   ``epilogue_ops.spmm_dx_dgelu``  (one GEMM: D = acc * Aux, Aux = G1 read)
    plain   CUTLASS dx GEMM -> dA, then ``sparse24_jax.ffn.activation_vjp("gelu", Z1, dA)``
    XLA     ``jnp.dot(dY, W2_s)`` -> dA, then the same activation_vjp
* the same with fc1's weight-gradient operand S_z(dZ1^T) (MVUE-pruned, compressed):
    fused   ``epilogue_ops.spmm_dx_dgelu_mvue``  (the MVUE in the same epilogue)
    plain   ``spmm_dx_dgelu`` then ``own_ops.mvue_compress`` (what the FFN runs today)
    ("GEMM alone" is spmm_dx_dgelu; "act pass alone" the MVUE pass; "err" 0 when the
    fused outputs are the two-pass path's bytes, inf when not)

"GEMM alone" is the plain CUTLASS GEMM without the elementwise pass (the floor
the fused epilogue approaches); a shaped-epilogue config (build.Config.epi_*,
e.g. ``t256x128x128_c1x1_coop_e128x16_sc3``) has no plain instance of its own
and shows its plain config's (the name without the ``_e...`` suffix). Each fused result is checked against its
float32 twin (max |err| / RMS) before timing. Timing: benchmarks/timing.py's
``time_jax`` (default: a jitted loop of R calls; the looped timer rewrites one
element of the first operand, X or dY, per call, the same for every variant).
"""

from __future__ import annotations

import argparse
import json
import sys

from config_tables import write_config_table
from shapes import SHAPES, tiled_mask
from timing import time_jax


def _err(out, ref):
    import jax.numpy as jnp

    out, ref = out.astype(jnp.float32), ref.astype(jnp.float32)
    rms = float(jnp.sqrt(jnp.mean(ref * ref))) + 1e-30
    return float(jnp.max(jnp.abs(out - ref))) / rms


def bench_model(name: str, d: int, h: int, m: int, opts) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from sparse24_jax.ffn import activation_vjp
    from sparse24_jax_kernels.cutlass import epilogue_ops as epi
    from sparse24_jax_kernels.cutlass import ops as cops
    from sparse24_jax_kernels.cutlass.build import CONFIGS

    kw = dict(reps=opts.reps, rounds=opts.rounds, warmup=opts.warmup, mode=opts.mode)
    tj = lambda f, *a: time_jax(f, a, **kw)  # noqa: E731
    gelu = lambda z: jax.nn.gelu(z, approximate=False)  # noqa: E731
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.fold_in(key, 1), (m, d), jnp.bfloat16)
    dy = jax.random.normal(jax.random.fold_in(key, 2), (m, d), jnp.bfloat16)
    z1 = (2.0 * jax.random.normal(jax.random.fold_in(key, 3), (m, h), jnp.float32)).astype(
        jnp.bfloat16)
    w1 = jax.random.normal(jax.random.fold_in(key, 4), (h, d), jnp.float32) / (d / 4) ** 0.5
    w2 = jax.random.normal(jax.random.fold_in(key, 5), (d, h), jnp.float32) / (h / 4) ** 0.5
    w1_s = jnp.where(jnp.asarray(tiled_mask(h, d)), w1, 0.0).astype(jnp.bfloat16)
    w2_s = jnp.where(jnp.asarray(tiled_mask(d, h)), w2, 0.0).astype(jnp.bfloat16)
    comp = jax.jit(cops.compress)
    v1, m1 = comp(w1_s)  # fwd of fc1: W1_s (h, d), 2:4 along d
    v2, m2 = comp(w2_s.T)  # dx of fc2: W2_s^T (h, d), 2:4 along d
    configs = opts.configs or epi.epilogue_configs()
    plain_cfgs = set(cops.configs())
    cache: dict = {}  # (pass, plain config) -> (GEMM alone, GEMM + XLA act): timed once

    def plain_of(cfg):
        """The plain config of the same GEMM: cfg itself, or for a shaped-epilogue config
        (build.Config.epi_*: its own name, no plain products) the one without the suffix."""
        c = CONFIGS.get(cfg)
        base = c.plain_config if c is not None else cfg
        return base if base in plain_cfgs else None

    def plain_times(r, cfg, gemm, gemm_args, with_act, act_args):
        """r's GEMM alone and GEMM + XLA act for cfg: its plain config's, timed once per pass."""
        base = plain_of(cfg)
        if base is None:
            return
        if (r["pass"], base) not in cache:
            g = gemm(base)
            cache[r["pass"], base] = (tj(g, *gemm_args), tj(with_act(g), *act_args))
        r["gemm_all"][cfg], r["plain_all"][cfg] = cache[r["pass"], base]

    rows = []

    # ---- (i) fc1 forward: A = gelu(Z1), Z1 kept
    ref_h, _ = jax.jit(epi.reference_fwd_gelu)(w1_s, x)
    r = {"model": name, "pass": f"fwd+gelu ({h}x{d})", "M": m, "N": h, "K": d,
         "xla": tj(lambda x, w: (lambda z: (gelu(z), z))(jnp.dot(x, w.T)), x, w1_s),
         "act_alone": tj(lambda z: gelu(z), z1),
         "fused_all": {}, "plain_all": {}, "gemm_all": {}, "err": {}}
    for cfg in configs:
        try:
            fused = lambda x, v, mt, cfg=cfg: epi.spmm_fwd_gelu(v, mt, x, config=cfg)  # noqa: E731
            r["err"][cfg] = _err(jax.jit(fused)(x, v1, m1)[0], ref_h)
            r["fused_all"][cfg] = tj(fused, x, v1, m1)
            plain_times(
                r, cfg, lambda base: lambda x, v, mt: cops.spmm("fwd", v, mt, x, config=base),
                (x, v1, m1), lambda g: lambda x, v, mt: (lambda z: (gelu(z), z))(g(x, v, mt)),
                (x, v1, m1))
        except Exception as err:  # noqa: BLE001 - one config failing keeps the others
            print(f"  {cfg} fwd_gelu failed: {type(err).__name__}: {str(err)[:300]}",
                  file=sys.stderr, flush=True)
    rows.append(r)

    # ---- (ii) fc2 input gradient times gelu'(Z1): dZ1
    g1 = jax.jit(lambda z: epi.reference_gelu_grad(z).astype(jnp.bfloat16))(z1)
    ref_d = jax.jit(epi.reference_dx_dgelu)(w2_s.T, dy, g1)
    r = {"model": name, "pass": f"dx*gelu' ({h}x{d})", "M": m, "N": d, "K": h,
         "xla": tj(lambda dy, w, z: activation_vjp("gelu", z, jnp.dot(dy, w)), dy, w2_s, z1),
         "act_alone": tj(lambda a, z: activation_vjp("gelu", z, a), z1, z1),
         "fused_all": {}, "plain_all": {}, "gemm_all": {}, "err": {}}
    for cfg in configs:
        try:
            fused = lambda dy, v, mt, z, cfg=cfg: epi.spmm_dx_dgelu(v, mt, dy, z, config=cfg)  # noqa: E731
            r["err"][cfg] = _err(jax.jit(fused)(dy, v2, m2, g1), ref_d)
            r["fused_all"][cfg] = tj(fused, dy, v2, m2, g1)
            plain_times(
                r, cfg, lambda base: lambda dy, v, mt: cops.spmm("dx", v, mt, dy, config=base),
                (dy, v2, m2),
                lambda g: lambda dy, v, mt, z: activation_vjp("gelu", z, g(dy, v, mt)),
                (dy, v2, m2, z1))
        except Exception as err:  # noqa: BLE001
            print(f"  {cfg} dx_dgelu failed: {type(err).__name__}: {str(err)[:300]}",
                  file=sys.stderr, flush=True)
    rows.append(r)

    # ---- (iii) the same and S_z(dZ1^T) (fc1's weight-gradient operand): MVUE in the epilogue
    # vs dx_dgelu then own_mvue (the two passes the FFN runs today); no XLA counterpart
    # (dense training prunes nothing): "XLA" is row (ii)'s
    if opts.mvue:
        from sparse24_jax_kernels.cutlass import own_ops

        seed = own_ops.seed_from_key(jax.random.fold_in(key, 6))
        mvue = lambda d: own_ops.mvue_compress(seed, d)  # noqa: E731
        r = {"model": name, "pass": f"dx*gelu'+MVUE ({h}x{d})", "M": m, "N": d, "K": h,
             "xla": rows[-1]["xla"], "act_alone": tj(mvue, ref_d),
             "fused_all": {}, "plain_all": {}, "gemm_all": {}, "err": {}}
        have = {i["config"] for i in epi.epilogue_instances() if i["epilogue"] == "dx_dgelu_mvue"}
        for cfg in (c for c in configs if c in have):  # build.MVUE_EPILOGUE_CONFIGS
            try:
                fused = lambda dy, v, mt, g, cfg=cfg: epi.spmm_dx_dgelu_mvue(v, mt, dy, g, seed, config=cfg)  # noqa: E731
                two = lambda dy, v, mt, g, cfg=cfg: (lambda d: (d, mvue(d)))(  # noqa: E731
                    epi.spmm_dx_dgelu(v, mt, dy, g, config=cfg))
                d_f, pruned = jax.jit(fused)(dy, v2, m2, g1)
                d_t, pruned_t = jax.jit(two)(dy, v2, m2, g1)
                same = all(bool(jnp.array_equal(a, b)) for a, b in
                           zip(jax.tree.leaves((d_f, pruned)), jax.tree.leaves((d_t, pruned_t))))
                r["err"][cfg] = 0.0 if same else float("inf")  # bytes: the two-pass path's or not
                if not same:
                    print(f"  {cfg} dx_dgelu_mvue: NOT the bytes of dx_dgelu + own_mvue",
                          file=sys.stderr, flush=True)
                r["fused_all"][cfg] = tj(fused, dy, v2, m2, g1)
                r["plain_all"][cfg] = tj(two, dy, v2, m2, g1)
                r["gemm_all"][cfg] = tj(lambda dy, v, mt, g, cfg=cfg: epi.spmm_dx_dgelu(
                    v, mt, dy, g, config=cfg), dy, v2, m2, g1)
            except Exception as err:  # noqa: BLE001
                print(f"  {cfg} dx_dgelu_mvue failed: {type(err).__name__}: {str(err)[:300]}",
                      file=sys.stderr, flush=True)
        rows.append(r)
    for r in rows:
        for k in ("fused", "plain", "gemm"):
            a = r[f"{k}_all"]
            r[k] = min(a.values()) if a else None
            r[f"{k}_config"] = min(a, key=a.get) if a else None
    return rows


def _ms(t):
    return "n/a" if t is None else f"{t * 1e3:.3f}"


def _x(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def markdown(rows: list[dict]) -> str:
    out = ["| model | pass | XLA dense + act ms | CUTLASS + XLA act ms | CUTLASS fused ms | "
           "fused config | fused vs unfused | fused vs XLA | GEMM alone ms | act pass alone ms | "
           "max err / RMS |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = max(r["err"].values()) if r["err"] else None
        out.append(f"| {r['model']} | {r['pass']} | {_ms(r['xla'])} | {_ms(r['plain'])} | "
                   f"{_ms(r['fused'])} | {r['fused_config']} | {_x(r['plain'], r['fused'])} | "
                   f"{_x(r['xla'], r['fused'])} | {_ms(r['gemm'])} | {_ms(r['act_alone'])} | "
                   f"{'n/a' if err is None else f'{err:.1e}'} |")
    out += ["", "| model | pass | config | fused ms | CUTLASS + XLA act ms | GEMM alone ms | "
            "fused - GEMM ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for cfg in r["fused_all"]:
            fused, gemm = r["fused_all"][cfg], r["gemm_all"].get(cfg)
            out.append(f"| {r['model']} | {r['pass']} | {cfg} | {_ms(fused)} | "
                       f"{_ms(r['plain_all'].get(cfg))} | {_ms(gemm)} | "
                       f"{_ms(None if gemm is None else fused - gemm)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="*", default=["gpt2-774m", "gpt2-1558m"],
                   choices=list(SHAPES))
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--mode", choices=["loop", "pipelined"], default="loop")
    p.add_argument("--configs", nargs="*", default=None,
                   help="only these fused configs (default: every one the build has)")
    p.add_argument("--no-mvue", dest="mvue", action="store_false",
                   help="skip the dx_dgelu_mvue row (MVUE of dZ1 in the epilogue vs own_mvue after)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--table-out", help="write the fastest fused config per layer shape here, in the "
                   "format of kernels/cutlass/epilogue_configs.json (the backend reads it from "
                   "$SPARSE24_CUTLASS_EPILOGUE_TABLE, or copy it over the shipped file)")
    opts = p.parse_args(argv)

    import jax

    dev = jax.devices()[0]
    print(f"# device: {dev.device_kind}; jax {jax.__version__}; M = {opts.m}; mode {opts.mode}; "
          f"reps {opts.reps} x rounds {opts.rounds}", flush=True)
    rows = []
    for name in opts.shapes:
        d, h = SHAPES[name]
        print(f"## {name}: d={d} h={h}", flush=True)
        try:
            rs = bench_model(name, d, h, opts.m, opts)
        except Exception as err:  # noqa: BLE001 - report it, keep the other shapes
            print(f"   FAILED: {type(err).__name__}: {str(err)[:300]}", flush=True)
            continue
        rows += rs
        print(markdown(rs), flush=True)  # as we go: a run cut off keeps what it measured
        if opts.json:
            with open(opts.json, "w") as fh:
                json.dump({"device": dev.device_kind, "M": opts.m, "mode": opts.mode,
                           "rows": rows}, fh, indent=1)
    print("\n## all shapes\n" + markdown(rows))
    if opts.table_out:
        write_table(opts.table_out, rows, dev.device_kind, argv)
    return 0


def write_table(path: str, rows: list[dict], device: str, argv) -> None:
    """The fastest fused config of each row, keyed by the layer whose weight the GEMM reads:
    fc1's forward by W1 (h x d), fc2's input gradient by W2 (d x h), as the backend looks
    them up (its weight operand's N x K)."""
    table: dict[str, dict[str, str]] = {}
    for r in rows:
        if not r["fused_config"] or "MVUE" in r["pass"]:
            continue  # the MVUE row times dx_dgelu_mvue, not the dx_dgelu the table picks for
        fwd = r["pass"].startswith("fwd")
        # the rows' N x K is the weight's: W1 (h, d) for fwd, W2 (d, h) for dx
        table.setdefault(f"{r['N']}x{r['K']}", {})["fwd" if fwd else "dx"] = r["fused_config"]
    write_config_table(path, table, device=device, m=rows[0]["M"] if rows else None,
                       script="cutlass_epilogue.py", argv=argv, what="fused configs")


if __name__ == "__main__":
    sys.exit(main())
