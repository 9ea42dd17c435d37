"""benchmarks/hlo_collectives.py: the HLO text parser on a hand-written module, and the script
end to end on 2 forced CPU devices (compile, tables, --save-hlo, then --hlo on the saved text)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import hlo_collectives as hc  # noqa: E402

# The shapes of what XLA prints: a combined (tuple) all-reduce inside a loop body followed by a
# per-device dynamic-slice, an async all-gather, a conditional whose branch gathers, and the
# source tables that stack_frame_id points into.
MODULE = """HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[8,4]{1,0})->f32[4,4]{1,0}}

FileNames
1 "/x/site-packages/flax/nnx/nn/linear.py"
2 "/x/sparse24_jax/nnx.py"

FunctionNames
1 "Linear.__call__"
2 "refresh_masks"

FileLocations
1 {file_name_id=1 function_name_id=1 line=422 end_line=422 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=365 end_line=365 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  %g = f32[8,4]{1,0} get-tuple-element(%p), index=1
  %dot.1 = f32[8,4]{1,0} multiply(%g, %g), metadata={op_name="jit(step)/while/body/transpose(jvp())/dot_general" stack_frame_id=1}
  %ar = (f32[8,4]{1,0}, f32[]) all-reduce(%dot.1, %c), channel_id=1, replica_groups=[1,2]<=[2], to_apply=%add, metadata={op_name="jit(step)/while/body/(transpose(jvp())/dot_general:reduce_sum)" stack_frame_id=1}
  %gte = f32[8,4]{1,0} get-tuple-element(%ar), index=0, metadata={op_name="x" stack_frame_id=1}
  %pid = u32[] partition-id()
  %ds = f32[4,4]{1,0} dynamic-slice(%gte, %pid, %pid), dynamic_slice_sizes={4,4}
  %dot.2 = f32[8,4]{1,0} multiply(%g, %g), metadata={op_name="jit(step)/while/body/transpose(jvp())/dot_general"}
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[8,4]{1,0}) tuple(%i, %dot.2)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(2)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%yes (x: f32[4,4]) -> f32[8,4] {
  %x = f32[4,4]{1,0} parameter(0)
  ROOT %ag = f32[8,4]{1,0} all-gather(%x), channel_id=3, replica_groups=[1,2]<=[2], dimensions={0}, metadata={op_name="jit(step)/cond/branch_1_fun/reshape"}
}

%no (x: f32[4,4]) -> f32[8,4] {
  %x = f32[4,4]{1,0} parameter(0)
  ROOT %z = f32[8,4]{1,0} concatenate(%x, %x), dimensions={0}
}

ENTRY %main (x: f32[8,4]) -> f32[4,4] {
  %x = f32[8,4]{1,0} parameter(0)
  %ags = (f32[4,4]{1,0}, bf16[8,4]{1,0}) all-gather-start(%x), channel_id=2, replica_groups=[1,2]<=[2], dimensions={0}, metadata={op_name="jit(step)/jvp()/dot_general"}
  %agd = bf16[8,4]{1,0} all-gather-done(%ags)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,4]{1,0}) tuple(%zero, %x)
  %w = (s32[], f32[8,4]{1,0}) while(%init), condition=%cond, body=%body
  %pred = pred[] constant(true)
  %sl = f32[4,4]{1,0} slice(%x), slice={[0:4], [0:4]}
  %c = f32[8,4]{1,0} conditional(%pred, %sl, %sl), true_computation=%yes, false_computation=%no, metadata={op_name="jit(step)/cond" stack_frame_id=2}
  ROOT %r = f32[4,4]{1,0} slice(%c), slice={[0:4], [0:4]}
}
"""


def test_parser_on_a_handwritten_module():
    res = hc.analyse(MODULE)
    rows = {r["name"]: r for r in res["collectives"]}
    assert set(rows) == {"ar", "ags", "ag"}  # the -done half is not a second collective
    ar, ags, ag = rows["ar"], rows["ags"], rows["ag"]
    assert ar["kind"] == "all-reduce" and ar["where"] == "loop body" and ar["arrays"] == ["f32[8,4]", "f32[]"]
    assert ar["bytes"] == 8 * 4 * 4 + 4 and ar["sliced"] == 1
    assert ar["phase"] == "backward+update" and ar["bwd_after"] == 1  # %dot.2 comes after it
    assert ar["source"] == "flax/nnx/nn/linear.py:422 (Linear.__call__)"
    assert ags["kind"] == "all-gather" and ags["arrays"] == ["bf16[8,4]"] and ags["phase"] == "forward"
    assert ag["where"] == "cond branch" and ag["phase"] == "mask refresh"
    (cond,) = res["conditionals"]
    assert cond["collectives_inside"] == {"all-gather": 1} and cond["source"] == "sparse24_jax/nnx.py:365 (refresh_masks)"
    assert res["loops"] == 1
    assert res["totals"]["all-reduce"] == dict(ops=1, arrays=2, bytes=132)
    table = hc.summary_table({"m": res})
    assert "| all-reduce | backward+update | loop body | f32[8,4] | 1 |" in table
    assert "| **conditionals** | | | | 1 |" in table


def test_script_compiles_a_step_and_reads_saved_text(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2 "
               "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    common = [sys.executable, "benchmarks/hlo_collectives.py"]
    r = subprocess.run(common + ["--set", "n_layer=1", "--set", "n_embd=64", "--set", "n_head=2", "--set",
                                 "block_size=16", "--set", "tokenizer=byte", "--set", "shard_map_scope=step",
                                 "--methods", "dense", "--layouts", "fsdp",
                                 "--batch-per-device", "2", "--detail", "--save-hlo", str(tmp_path / "hlo"),
                                 "--json", str(tmp_path / "a.json")],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "### dense fsdp 2" in r.stdout and "reduce-scatter" in r.stdout
    (saved,) = (tmp_path / "hlo").iterdir()
    r2 = subprocess.run(common + ["--hlo", str(saved), "--json", str(tmp_path / "b.json")], env=env,
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r2.returncode == 0, r2.stderr[-4000:]
    a = json.loads((tmp_path / "a.json").read_text())["dense fsdp 2"]
    b = json.loads((tmp_path / "b.json").read_text())[saved.name]
    assert a["totals"] == b["totals"] and a["totals"]["reduce-scatter"]["ops"] == 9
