"""How the benchmarks time things: every timing harness, once.

The benchmark scripts (sparse_gemm.py, ffn_block.py, mvue_kernel.py, kernels.py,
train_scaling.py, step_profile.py) import these instead of each keeping a loop of its own,
so two tables that say "pipelined" or "per call" were measured by the same code.

* ``time_jax(mode="pipelined")`` and ``bench_stream``: jitted calls issued back to back,
  blocking once on the last. The host's dispatch overlaps the device's work, as in a
  training step, and the operands are left alone. The two differ only in warm-up.
* ``time_jax(mode="loop")`` (``looped``): one jitted ``fori_loop`` of R calls, so there is
  no dispatch per call at all; the price is a one-element write into the first operand per
  call, which costs our custom calls a copy of that operand (docs/BENCHMARKS.md, 2b).
* ``per_call``: the device time of a kernel shorter than dispatching a program, as the
  slope between a program of several calls and a program of one.
* ``time_torch``: PyTorch, with CUDA events around R back-to-back calls.
* ``run_steps`` / ``time_steps``: N training steps back to back, blocked on the last.

Times are seconds; the per-call ones are the median over rounds of (round time / calls).
JAX and PyTorch are imported inside the functions: the scripts parse their arguments (and
answer --help) without them, and PyTorch is optional.
"""

from __future__ import annotations

import statistics
import time


def _median_per_call(run_round, calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the wall seconds of ``run_round()`` divided by ``calls``.
    run_round must block until its work is done: the clock stops when it returns."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run_round()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def _issue(fn, args, calls: int) -> None:
    """``calls`` calls of fn(*args) back to back, then block on the last: they run on one
    stream, so the last ends after all the others."""
    import jax

    out = None  # calls == 0: nothing to wait for
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)


def looped(fn, reps: int):
    """jit(args -> run fn(*args) reps times in a fori_loop).

    Every iteration's output is carried (so none is dead) and one element of
    it, times zero, is added into one element of the first floating-point
    array operand of the next call (so the call is not loop-invariant and
    cannot be hoisted). The extra work is a one-element update.
    """
    import jax
    import jax.numpy as jnp

    def first_float(tree):
        leaves = jax.tree_util.tree_leaves(tree)
        for i, leaf in enumerate(leaves):
            if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim >= 1:
                return i
        raise ValueError("looped timing needs a floating-point array operand")

    @jax.jit
    def run(args):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        i = first_float(args)
        out0 = jax.eval_shape(lambda a: fn(*a), args)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out0)

        def body(_, carry):
            leaves, _out = carry
            out = fn(*jax.tree_util.tree_unflatten(treedef, leaves))
            o = jax.tree_util.tree_leaves(out)[0]
            tie = o.reshape(-1)[0].astype(jnp.float32) * 0.0
            x = leaves[i]
            idx = (0,) * x.ndim
            x = x.at[idx].add(tie.astype(x.dtype))
            return leaves[:i] + [x] + leaves[i + 1:], out

        return jax.lax.fori_loop(0, reps, body, (leaves, zeros))

    return run


def time_jax(fn, args, *, reps: int, rounds: int, warmup: int, mode: str) -> float:
    """Median seconds per call of fn(*args) (fn not yet jitted; args a tuple).

    mode "loop": a jitted loop of ``reps`` calls (``looped``), divided by reps: no dispatch
    overhead, but each call's first float operand is rewritten in between, which around a
    custom call costs about a copy of that operand. mode "pipelined": ``reps`` jitted calls
    enqueued back to back and blocked once, operands untouched; dispatch overlaps the
    device's work, so a call much shorter than a dispatch (tens of us) is not resolved
    (``per_call`` is for those). Warm-up: the first call (compiles), then ``warmup`` more
    rounds' worth of calls."""
    import jax

    if mode == "loop":
        run = looped(fn, reps)
        jax.block_until_ready(run(args))
        for _ in range(warmup):
            jax.block_until_ready(run(args))
        return _median_per_call(lambda: jax.block_until_ready(run(args)), reps, rounds)
    jf = jax.jit(fn)
    jax.block_until_ready(jf(*args))
    _issue(jf, args, warmup * reps)
    return _median_per_call(lambda: _issue(jf, args, reps), reps, rounds)


def bench_stream(fn, *args, warmup=3, reps=20, rounds=5):
    """Seconds per call of ``fn(*args)`` issued back to back (the host's
    dispatch overlaps the device's work, as in a training step), median of
    ``rounds`` rounds of ``reps`` calls. fn is called as given (jit it first);
    ``warmup`` calls before, each waited for. The timed rounds are
    ``time_jax(mode="pipelined")``'s."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    return _median_per_call(lambda: _issue(fn, args, reps), reps, rounds)


def per_call(fn, *args, copies=8):
    """Device seconds of one ``fn(*args)``: the slope between one jitted program
    that calls fn on ``copies`` distinct copies of the inputs and one that calls
    it once (both timed with bench_stream), so the fixed cost of dispatching a
    program (tens of us, more than these kernels take) cancels out. Copies, not
    the same arrays, so XLA cannot merge the calls."""
    import jax
    import jax.numpy as jnp

    many = [tuple(jnp.array(a, copy=True) for a in args) for _ in range(copies)]
    jax.block_until_ready(many)
    run_many = jax.jit(lambda *flat: [fn(*flat[i:i + len(args)]) for i in range(0, len(flat), len(args))])
    flat = [a for group in many for a in group]
    t_many = bench_stream(run_many, *flat)
    t_one = bench_stream(run_many, *flat[: len(args)])
    return max(t_many - t_one, 0.0) / (copies - 1)


def time_torch(fn, *, reps: int, rounds: int, warmup: int) -> float:
    """Median seconds per call of the PyTorch callable fn(): CUDA events recorded around
    ``reps`` back-to-back calls (the device's time between them, no host sync inside the
    round), after ``warmup * reps`` untimed calls and a synchronize."""
    import torch

    for _ in range(warmup * reps):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(times)


def run_steps(step, state, xs, ys, n: int, metrics=None):
    """``n`` training steps ``state, metrics = step(state, xs, ys)`` issued back to back on
    the same batch (already on the devices: no host input in the loop), then block until the
    last one's state and metrics are ready. Returns (state, metrics); ``metrics`` is what to
    return when n is 0 (the previous step's)."""
    import jax

    for _ in range(n):
        state, metrics = step(state, xs, ys)
    jax.block_until_ready((state, metrics))
    return state, metrics


def time_steps(step, state, xs, ys, n: int, metrics=None):
    """Wall seconds of ``run_steps`` (n steps, blocked on the last), with its (state, metrics):
    returns (seconds, state, metrics). Throughput is n * tokens per step / seconds."""
    t0 = time.perf_counter()
    state, metrics = run_steps(step, state, xs, ys, n, metrics)
    return time.perf_counter() - t0, state, metrics
