"""benchmarks/timing.py and benchmarks/shapes.py on CPU: the harnesses call what they say, as
often as they say, and return seconds (the numbers themselves need a GPU to mean anything)."""

import math
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import timing  # noqa: E402
from shapes import tiled_mask  # noqa: E402


def test_bench_stream_calls_warmup_then_rounds_of_reps():
    calls = []

    def fn(x):
        calls.append(1)
        return x + 1

    t = timing.bench_stream(fn, jnp.ones(4), warmup=2, reps=3, rounds=4)
    assert len(calls) == 2 + 3 * 4 and t > 0 and math.isfinite(t)


@pytest.mark.parametrize("mode", ["loop", "pipelined"])
def test_time_jax_modes(mode):
    x = jnp.ones((16, 16), jnp.float32)
    t = timing.time_jax(lambda a, b: a @ b, (x, x), reps=3, rounds=3, warmup=1, mode=mode)
    assert t > 0 and math.isfinite(t)


def test_looped_leaves_the_result_unchanged():
    # the one-element tie adds 0 * (an output element): every call still computes fn(x)
    x = jnp.arange(8.0)
    _, out = timing.looped(lambda a: a * 2, 5)((x,))
    np.testing.assert_array_equal(out, x * 2)


def test_per_call_is_a_nonnegative_slope():
    assert timing.per_call(lambda a: a * 2, jnp.ones(64), copies=3) >= 0.0


def test_run_steps_and_time_steps():
    def step(state, xs, ys):
        return state + 1, {"loss": state * 0.5}

    state, m = timing.run_steps(step, jnp.int32(0), None, None, 0, metrics="before")
    assert int(state) == 0 and m == "before"  # no steps: the metrics passed in come back
    dt, state, m = timing.time_steps(step, jnp.int32(0), None, None, 3)
    assert int(state) == 3 and float(m["loss"]) == 1.0 and dt >= 0.0


def test_tiled_mask_is_transposable_24():
    m = tiled_mask(8, 12)
    assert m.shape == (8, 12)
    assert (m.reshape(8, 3, 4).sum(-1) == 2).all() and (m.T.reshape(12, 2, 4).sum(-1) == 2).all()


def test_sparse_gemm_layer_shapes_and_gated(capsys):
    """sparse_gemm.py's weights per FFN: up (4d, d) and down (d, 4d); --gated makes up a
    gated FFN's (2h, d) (LLaMA-7B's SwiGLU fc1, 22016 x 4096), the shape sparse24_ffn's fc
    has; --gated with only the down linear is refused, naming the fix."""
    import sparse_gemm

    assert sparse_gemm.layer_shapes(4096, 11008, "both") == [(11008, 4096), (4096, 11008)]
    assert sparse_gemm.layer_shapes(4096, 11008, "both", gated=True) == [(22016, 4096), (4096, 11008)]
    assert sparse_gemm.layer_shapes(4096, 11008, "up", gated=True) == [(22016, 4096)]
    assert sparse_gemm.layer_shapes(1280, 5120, "down") == [(1280, 5120)]
    with pytest.raises(SystemExit):
        sparse_gemm.main(["--gated", "--which", "down"])
    assert "--gated changes the up linear only: use --which up or both" in capsys.readouterr().err


def test_ffn_block_lists_custom_calls_of_a_lowered_program():
    """ffn_block --block reports which custom calls the block's program makes; jax's
    lowered text is StableHLO (`stablehlo.custom_call @name`), not HLO (the first
    version matched only HLO's `custom_call_target="name"` and listed nothing on the GPU)."""
    import jax

    import ffn_block

    def f(x):
        return jax.ffi.ffi_call("some_target", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

    text = jax.jit(f).lower(jnp.zeros((4,), jnp.float32)).as_text()
    assert ffn_block.custom_call_targets(text) == ["some_target"]
    assert ffn_block.custom_call_targets('custom_call_target="a.b"') == ["a.b"]


def test_train_scaling_variant_rows():
    """train_scaling.py --variant METHOD:FIELD=VALUE[:...]: one more row after --methods, with
    those overrides (an A/B timed in one process); a spec without an override is refused."""
    import train_scaling

    specs = train_scaling.row_specs(["dense", "srste"], ["srste:mvue_fc=false", "sste:mvue=false:mvue_fc=true"])
    assert specs == [("dense", "dense", []), ("srste", "srste", []),
                     ("srste (mvue_fc=false)", "srste", ["mvue_fc=false"]),
                     ("sste (mvue=false, mvue_fc=true)", "sste", ["mvue=false", "mvue_fc=true"])]
    for bad in ("srste", "srste:", ":mvue=false", "srste:mvue", "srste:=1"):
        with pytest.raises(ValueError, match="METHOD:FIELD=VALUE"):
            train_scaling.parse_variant(bad)


def test_train_scaling_block_sizes():
    """--blocks: consecutive blocks covering every timed step once, as even as they go."""
    import train_scaling

    assert train_scaling.block_sizes(10, 1) == [10]
    assert train_scaling.block_sizes(10, 3) == [4, 3, 3]
    assert train_scaling.block_sizes(5, 5) == [1] * 5
