"""benchmarks/step_kernels.py: the groups it reads from real kernel names (mangled, as
step_profile.py's JSON holds them, and demangled, as Nsight Compute prints them), and its table."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAMES = json.loads((ROOT / "tests" / "fixtures" / "step_kernel_names.json").read_text())


def _load():
    spec = importlib.util.spec_from_file_location("step_kernels", ROOT / "benchmarks" / "step_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sk = _load()

# What each fixture kernel is, from the config tables those runs used (kernels/cutlass/
# gemm_configs.json and epilogue_configs.json; session 10's alt_b table: fwd / dx on 128x256
# with 2x1 clusters, dW on data-parallel 128x128 tiles; session 12's s12_sk_fwd.json; session
# 13's cluster tables) and the
# name's own template arguments.
MANGLED_EXPECTED = [
    "fwd/dx coop 256x128",           # 774M fc2 fwd and fc1 dx
    "fwd+gelu pingpong 128x128",     # 774M fc1 fwd, GELU epilogue
    "dx*gelu' pingpong 128x128",     # 774M fc2 dx times gelu'(Z1)
    "dW coop-streamK 128x256",       # 774M fc2 dW (1280 x 5120)
    "dW coop-streamK 256x128",       # 774M fc1 dW (5120 x 1280)
    "OwnMvueBlock<32>",
    "OwnProject",
    "dW pingpong 128x128",           # 1558M fc2 dW (1600 x 6400)
    "fwd/dx coop 128x256 c2x1",      # session 10 alt_b: fwd / dx on 2x1 clusters
    "dW coop 128x128",               # session 10 alt_b: dW without stream-K
    "fwd/dx coop-streamK 256x128",   # session 12: 1558M fc2 fwd / fc1 dx on stream-K
    "fwd+gelu pingpong 128x128 c2x1",  # session 13's cluster A/B (benchmarks/plans/s13_*.json)
    "fwd/dx coop 256x128 c2x1",
    "fwd+gelu pingpong 128x128 c1x2",
    "fwd+gelu pingpong 128x128 c2x2",
]
DEMANGLED_EXPECTED = [
    "OwnProject",
    "fwd+gelu pingpong 128x128",
    "fwd/dx coop 256x128",
    "dx*gelu' pingpong 128x128",
    "OwnMvueBlock<32>",
    "dW coop-streamK 256x128",
    "dW pingpong 128x128",
]


@pytest.mark.parametrize("i", range(len(MANGLED_EXPECTED)))
def test_mangled_names_are_grouped_by_product_scheduler_and_tile(i):
    assert sk.kernel_group(NAMES["mangled"][i]["name"]) == MANGLED_EXPECTED[i]


@pytest.mark.parametrize("i", range(len(DEMANGLED_EXPECTED)))
def test_demangled_names_group_as_their_mangled_twins(i):
    assert sk.kernel_group(NAMES["demangled"][i]) == DEMANGLED_EXPECTED[i]


def test_the_accumulating_weight_gradient_is_its_own_group():
    """dw_acc (a float32 source C: LinearCombination<float, float, float, float>) is told
    apart from dw (<float, float, void, float>), mangled and demangled."""
    mangled = NAMES["mangled"][7]["name"]
    demangled = NAMES["demangled"][6]
    assert "LinearCombinationIffvf" in mangled and "LinearCombination<float, float, void, float" in demangled
    acc_m = mangled.replace("LinearCombinationIffvf", "LinearCombinationIffff")
    acc_d = demangled.replace("LinearCombination<float, float, void, float", "LinearCombination<float, float, float, float")
    assert sk.kernel_group(acc_m) == sk.kernel_group(acc_d) == "dW+acc pingpong 128x128"


@pytest.mark.parametrize("name", [
    "nvjet_sm90_tst_320x64_64x4_1x2_h_bz_TNT",
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1_cga1x1x1_kernel0_0",
    "loop_convert_multiply_fusion_47",
    "void s24::MvueTransposedKernel<1>(s24::MvueArgs)",
])
def test_other_kernels_are_left_to_step_profile(name):
    assert sk.kernel_group(name) is None


def _run(rows, step_ms):
    return {"profile": {"top_kernels": rows}, "timing": {"step_ms": step_ms}}


def test_table_sums_a_groups_kernels_and_marks_a_group_missing_from_a_run():
    pingpong = NAMES["mangled"][7]["name"]
    coop = NAMES["mangled"][0]["name"]
    a = _run([{"name": pingpong, "ms_per_step": 2.0, "calls_per_step": 10.0},
              {"name": pingpong, "ms_per_step": 1.0, "calls_per_step": 5.0},
              {"name": "nvjet_x", "ms_per_step": 9.0, "calls_per_step": 1.0}], 100.0)
    b = _run([{"name": coop, "ms_per_step": 4.0, "calls_per_step": 20.0}], 99.0)
    assert sk.group_kernels(a["profile"]["top_kernels"]) == {"dW pingpong 128x128": (3.0, 15.0)}
    text = sk.table({"a": a, "b": b})
    assert "| dW pingpong 128x128 | 3.000 | 15 | 200.0 | - | - | - |" in text
    assert "| fwd/dx coop 256x128 | - | - | - | 4.000 | 20 | 200.0 |" in text
    assert "| **step (ms, timed)** | 100.00 | | | 99.00 | | |" in text


def test_cli_refuses_a_json_without_kernels(tmp_path, capsys):
    bad = tmp_path / "scaling.json"
    bad.write_text(json.dumps({"timing": {}}))
    with pytest.raises(SystemExit):
        sk.main([str(bad)])
    assert "no profile.top_kernels" in capsys.readouterr().err
