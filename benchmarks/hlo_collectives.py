"""The collectives (and conditionals) of sparse24_train's compiled training step: what one
optimizer step sends between devices, in which phase, and from which source line.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
      python benchmarks/hlo_collectives.py --config tiny --set n_layer=2 --set block_size=64 \\
        --methods dense,srste --layouts data,fsdp
    python benchmarks/hlo_collectives.py --hlo step.txt   # a step's HLO text saved elsewhere (a GPU)

Builds the step exactly as the trainer does (benchmarks/train_scaling.py's `prepare`: init_state
+ make_train_step on the config's mesh), lowers and compiles it, and reads the HLO text:

* every all-reduce / all-gather / reduce-scatter / collective-permute / all-to-all (and their
  async -start forms; -done halves are not counted), with its operands' dtypes and shapes
  (several for a combined collective), bytes, the computation it sits in (the entry, a loop
  body: runs once per micro-batch, a conditional branch), its phase (forward, backward, update,
  mask refresh: read from JAX's name stack), the innermost source line JAX recorded, how many
  backward ops XLA scheduled after it (0: after the whole backward, nothing left to overlap it
  with), and for an all-reduce whether its result is then dynamically sliced per device (an
  all-reduce + slice is a reduce-scatter done the expensive way; XLA's GPU pipeline turns the
  simplest such pairs into reduce-scatters, the CPU one never does);
* every `conditional` (lax.cond): on a GPU, XLA copies its predicate to the host and waits for
  the stream before it can launch either branch.

--stage: "compiled" (default) is the optimized HLO the device runs, *on this backend*. The CPU
pipeline differs from the GPU one in ways that matter here: it promotes bf16 all-reduces to
f32 (AllReducePromotion), combines collectives with its own thresholds, never creates
reduce-scatters from all-reduce + dynamic-slice and schedules for a CPU. "partitioned" is the
HLO right after the SPMD partitioner, before any backend pass: the same on every backend (the
dtypes a GPU reduces in, one collective per array before combining).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_scaling, beside this file

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "ragged-all-to-all", "collective-broadcast")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# ops that carry no work of their own: left out of "backward ops after"
_TRIVIAL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "partition-id", "replica-id"}


# ----------------------------------------------------------------------------- parsing

@dataclasses.dataclass
class Instr:
    name: str
    shape: str                 # the result shape text: "f32[4,8]{1,0}" or "(f32[], bf16[2])"
    opcode: str
    operands: list[str]
    attrs: str                 # everything after the operand list
    computation: str
    index: int                 # position in its computation (the schedule, in a scheduled module)

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m.group(1) if m else ""

    @property
    def stack_frame(self) -> int | None:
        m = re.search(r"stack_frame_id=(\d+)", self.attrs)
        return int(m.group(1)) if m else None

    def called(self, key: str) -> list[str]:
        """Computations named by attribute `key` (body=, branch_computations=, calls=, ...)."""
        m = re.search(key + r"=(\{[^}]*\}|%[\w.\-]+)", self.attrs)
        return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


def _split_shape(rest: str) -> tuple[str, str]:
    """"(f32[2], bf16[3]) all-reduce(...)" -> ("(f32[2], bf16[3])", "all-reduce(...)")."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1:].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _split_operands(tail: str) -> tuple[str, list[str], str]:
    """"all-reduce(%a, %b), attrs" -> ("all-reduce", ["a", "b"], "attrs")."""
    m = re.match(r"([a-z][\w\-]*)\(", tail)
    if not m:
        return tail.split("(")[0], [], ""
    depth, start = 0, m.end() - 1
    for i in range(start, len(tail)):
        depth += tail[i] == "("
        depth -= tail[i] == ")"
        if depth == 0:
            inner, attrs = tail[start + 1: i], tail[i + 1:]
            return m.group(1), re.findall(r"%([\w.\-]+)", inner), attrs.lstrip(", ")
    return m.group(1), [], ""


def shapes_of(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """[(dtype, dims)] of every array in a (possibly tuple) shape text."""
    out = []
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
        if dt in DTYPE_BYTES or dt.startswith("f8"):
            out.append((dt, tuple(int(d) for d in dims.split(",") if d)))
    return out


def nbytes(dt: str, dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n * DTYPE_BYTES.get(dt, 1)


def fmt_shape(dt: str, dims) -> str:
    return f"{dt}[{','.join(map(str, dims))}]"


class HloModule:
    """The computations and instructions of an HLO module's text, plus its source table."""

    def __init__(self, text: str):
        self.computations: dict[str, list[Instr]] = {}
        self.entry = None
        self._files, self._functions, self._locations, self._frames = {}, {}, {}, {}
        table = None
        current = None
        for line in text.splitlines():
            if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                table = line
                continue
            if table and re.match(r"^\d+ ", line):
                self._table_line(table, line)
                continue
            table = None
            head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
            if head and not line.startswith("HloModule"):
                current = head.group(2)
                self.computations[current] = []
                if head.group(1):
                    self.entry = current
                continue
            m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$", line)
            if m and current is not None:
                shape, tail = _split_shape(m.group(2))
                opcode, operands, attrs = _split_operands(tail)
                body = self.computations[current]
                body.append(Instr(m.group(1), shape, opcode, operands, attrs, current, len(body)))
        self.by_name = {i.name: i for body in self.computations.values() for i in body}
        self.role = self._roles()
        self._callers = None

    def _table_line(self, table: str, line: str) -> None:
        num, _, rest = line.partition(" ")
        num = int(num)
        if table == "FileNames":
            self._files[num] = rest.strip('"')
        elif table == "FunctionNames":
            self._functions[num] = rest.strip('"')
        else:
            fields = dict(re.findall(r"(\w+)=(\d+)", rest))
            (self._locations if table == "FileLocations" else self._frames)[num] = {k: int(v) for k, v in fields.items()}

    def source(self, frame: int | None) -> str:
        """'file.py:line (function)' of the innermost frame JAX recorded for an instruction."""
        if frame is None or frame not in self._frames:
            return ""
        loc = self._locations.get(self._frames[frame].get("file_location_id"), {})
        path = self._files.get(loc.get("file_name_id"), "?")
        for marker in ("/site-packages/", "/sparse24_jax/", "/train/", "/benchmarks/", "/kernels/"):
            if marker in path:
                path = (marker.strip("/") + "/" if marker != "/site-packages/" else "") + path.split(marker, 1)[1]
                break
        return f"{path}:{loc.get('line', '?')} ({self._functions.get(loc.get('function_name_id'), '?')})"

    def _roles(self) -> dict[str, str]:
        """computation -> "entry", "loop body", "cond branch", "fused" or "called" (the first
        caller found wins; a loop inside a branch stays a loop body)."""
        role = {self.entry: "entry"} if self.entry else {}
        for body in self.computations.values():
            for ins in body:
                for comp in ins.called("body"):
                    role.setdefault(comp, "loop body")
                for comp in ins.called("condition"):
                    role.setdefault(comp, "loop condition")
                for key in ("branch_computations", "true_computation", "false_computation"):
                    for comp in ins.called(key):
                        role.setdefault(comp, "cond branch")
                for comp in ins.called("calls") + (ins.called("to_apply") if ins.opcode == "call" else []):
                    role.setdefault(comp, "fused" if ins.opcode == "fusion" else "called")
        return role

    def caller(self, comp: str) -> Instr | None:
        """The instruction that calls `comp` as a plain call or an async wrapper (a shard_map
        body is such a call until XLA inlines it), if any."""
        if self._callers is None:
            self._callers = {}
            for body in self.computations.values():
                for i in body:
                    called = i.called("to_apply") if i.opcode == "call" else i.called("calls") if i.opcode != "fusion" else []
                    for c in called:
                        self._callers.setdefault(c, i)
        return self._callers.get(comp)

    def where(self, comp: str) -> str:
        """The role of `comp`, looking through async wrappers and plain calls to their caller."""
        for _ in range(len(self.computations)):
            r = self.role.get(comp, "called")
            caller = self.caller(comp) if r == "called" else None
            if caller is None:
                return r
            comp = caller.computation
        return "called"

    def full_op_name(self, ins: Instr) -> str:
        """The instruction's name stack, prefixed with its callers' (inside a called shard_map
        body JAX's names start afresh)."""
        name, comp = ins.op_name, ins.computation
        for _ in range(len(self.computations)):
            caller = self.caller(comp) if self.role.get(comp, "called") == "called" else None
            if caller is None:
                break
            name, comp = f"{caller.op_name}/{name}", caller.computation
        return name

    def users(self, name: str, comp: str) -> list[Instr]:
        return [i for i in self.computations[comp] if name in i.operands]


# ----------------------------------------------------------------------------- classification

def _phase1(op_name: str) -> str:
    if "/cond/" in op_name or op_name.startswith("cond/"):
        return "mask refresh"
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "update"


def phase(op_name: str, where: str) -> str:
    """Forward / backward / update / mask refresh, from JAX's name stack (transpose(...) marks
    autodiff's backward pass). A collective that XLA combined from several names them all as
    "prefix/(a:b:c)": its phases joined with "+"."""
    if where == "cond branch":
        return "mask refresh"
    m = re.match(r"^((?:.*?/)?)\((.*)\)$", op_name)
    if m and ":" in m.group(2):
        parts = [m.group(1) + part for part in re.split(r":(?![^()]*\))", m.group(2))]
        return "+".join(sorted({_phase1(p) for p in parts}, key=["forward", "backward", "update", "mask refresh"].index))
    return _phase1(op_name)


def _sliced(mod: HloModule, ins: Instr) -> int:
    """How many of an all-reduce's results are then dynamically sliced per device (through
    get-tuple-element, converts and elementwise ops; directly or inside a fusion)."""
    def is_slice(u: Instr) -> bool:
        if u.opcode == "dynamic-slice":
            return True
        return u.opcode == "fusion" and any(
            x.opcode == "dynamic-slice" for c in u.called("calls") for x in mod.computations.get(c, []))

    def reaches(name: str, depth: int) -> bool:
        for u in mod.users(name, ins.computation):
            if is_slice(u):
                return True
            if depth and u.opcode in ("convert", "multiply", "divide", "bitcast", "copy", "transpose", "reshape"):
                if reaches(u.name, depth - 1):
                    return True
        return False

    if ins.shape.startswith("("):
        return sum(reaches(u.name, 3) for u in mod.users(ins.name, ins.computation) if u.opcode == "get-tuple-element")
    return int(reaches(ins.name, 3))


def _source(mod: HloModule, ins: Instr) -> str:
    """The source line of a collective; for a combined one (a tuple), those of its parts (the
    get-tuple-elements that unpack it keep each part's own location)."""
    if not ins.shape.startswith("("):
        return mod.source(ins.stack_frame)
    parts = [mod.source(u.stack_frame) for u in mod.users(ins.name, ins.computation) if u.opcode == "get-tuple-element"]
    parts = list(dict.fromkeys(p for p in parts if p))
    return "; ".join(parts[:3]) + (f"; +{len(parts) - 3} more" if len(parts) > 3 else "")


def collectives(mod: HloModule) -> list[dict]:
    rows = []
    for comp, body in mod.computations.items():
        for ins in body:
            kind = ins.opcode.removesuffix("-start")
            if kind not in COLLECTIVES:
                continue
            where = mod.where(comp)
            arrays = shapes_of(ins.shape)
            if ins.opcode.endswith("-start") and len(arrays) > 1 and kind != "all-reduce":
                arrays = arrays[len(arrays) // 2:]  # (operands, results) of an async start: the results
            later = body[ins.index + 1:]
            op_name = mod.full_op_name(ins)
            ph = phase(op_name, where)
            if ph == "update" and kind == "all-gather" and "shard_map" in op_name:
                ph = "forward"  # the step's shard_map gathers state outside autodiff (2:4 masks)
            rows.append(dict(
                kind=kind, name=ins.name, computation=comp, where=where, phase=ph,
                arrays=[fmt_shape(dt, dims) for dt, dims in arrays],
                dtypes=sorted({dt for dt, _ in arrays}),
                bytes=sum(nbytes(dt, dims) for dt, dims in arrays),
                position=round(ins.index / max(len(body) - 1, 1), 3),
                bwd_after=sum("transpose(" in i.op_name and i.opcode not in _TRIVIAL for i in later),
                sliced=_sliced(mod, ins) if kind == "all-reduce" else 0,
                groups=(re.search(r"replica_groups=(.*?)(?:, [a-z_]+=|$)", ins.attrs) or [None, ""])[1],
                source=_source(mod, ins),
                op_name=op_name,
            ))
    return rows


def conditionals(mod: HloModule) -> list[dict]:
    rows = []
    for comp, body in mod.computations.items():
        for ins in body:
            if ins.opcode != "conditional":
                continue
            branches = ins.called("branch_computations") or ins.called("true_computation") + ins.called("false_computation")
            inside = Counter(i.opcode.removesuffix("-start") for b in branches for i in mod.computations.get(b, [])
                             if i.opcode.removesuffix("-start") in COLLECTIVES)
            rows.append(dict(name=ins.name, where=mod.where(comp), op_name=ins.op_name,
                             source=_source(mod, ins), collectives_inside=dict(inside)))
    return rows


def custom_calls(mod: HloModule) -> Counter:
    return Counter((re.search(r'custom_call_target="([^"]*)"', i.attrs) or [None, "?"])[1]
                   for b in mod.computations.values() for i in b if i.opcode == "custom-call")


def analyse(text: str) -> dict:
    """Everything this script reports about one HLO module's text."""
    mod = HloModule(text)
    rows = collectives(mod)
    return dict(collectives=rows, conditionals=conditionals(mod), custom_calls=dict(custom_calls(mod)),
                loops=sum(i.opcode == "while" for b in mod.computations.values() for i in b),
                totals=totals(rows))


def totals(rows) -> dict:
    """Per kind: collectives, arrays moved (a combined collective moves several) and bytes."""
    out = defaultdict(lambda: dict(ops=0, arrays=0, bytes=0))
    for r in rows:
        t = out[r["kind"]]
        t["ops"] += 1
        t["arrays"] += len(r["arrays"])
        t["bytes"] += r["bytes"]
    return dict(out)


# ----------------------------------------------------------------------------- tables

def summary_table(results: dict[str, dict]) -> str:
    """One markdown table, a count column per result: how many arrays of each shape each kind
    of collective moves, per phase and computation. A combined collective (XLA merges small
    ones) counts once per array it moves; the totals row gives collectives / arrays / MB."""
    names = list(results)
    counts = {n: Counter((r["kind"], r["phase"], r["where"], a) for r in res["collectives"] for a in r["arrays"])
              for n, res in results.items()}
    keys = sorted({k for c in counts.values() for k in c}, key=lambda k: (COLLECTIVES.index(k[0]), k[1], k[2], k[3]))
    lines = ["| kind | phase | in | array | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---:|" * len(names)]
    for k in keys:
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(str(counts[n].get(k, "")) for n in names) + " |")
    for kind in COLLECTIVES:
        if any(kind in res["totals"] for res in results.values()):
            cells = []
            for n in names:
                t = results[n]["totals"].get(kind)
                cells.append(f"{t['ops']} / {t['arrays']} / {t['bytes'] / 1e6:.2f}" if t else "")
            lines.append(f"| **{kind}: ops / arrays / MB** | | | | " + " | ".join(cells) + " |")
    lines.append("| **conditionals** | | | | " + " | ".join(str(len(results[n]["conditionals"])) for n in names) + " |")
    return "\n".join(lines) + "\n"


def detail_table(res: dict) -> str:
    """Every collective of one result, in schedule order within each computation."""
    lines = ["| kind | phase | in | arrays | MB | bwd ops after | sliced | source |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in sorted(res["collectives"], key=lambda r: (r["where"] != "entry", r["computation"], r["position"])):
        lines.append(f"| {r['kind']} | {r['phase']} | {r['where']} | {' + '.join(r['arrays'])} | "
                     f"{r['bytes'] / 1e6:.3f} | {r['bwd_after']} | {r['sliced'] or ''} | {r['source']} |")
    for c in res["conditionals"]:
        lines.append(f"| conditional | | {c['where']} | collectives inside: {c['collectives_inside'] or 'none'} | | | | "
                     f"{c['source']} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- building the step

def step_hlo(cfg, stage: str = "compiled") -> str:
    """The HLO text of sparse24_train's step for cfg, at `stage` ("compiled" or "partitioned")."""
    from train_scaling import prepare

    _, _, state, step, xs, ys = prepare(cfg)
    lowered = step.lower(state, xs, ys)
    if stage == "compiled":
        return lowered.compile().as_text()
    with tempfile.TemporaryDirectory() as tmp:
        # XLA dumps the module after each pass matching the regex; the partitioner's output is
        # backend-independent (the GPU runs the same partitioner)
        lowered.compile(compiler_options={"xla_dump_to": tmp, "xla_dump_hlo_pass_re": "spmd-partitioning"})
        files = sorted(glob.glob(f"{tmp}/*jit_step*after_spmd-partitioning*.txt"))
        if not files:
            raise RuntimeError("XLA wrote no module after spmd-partitioning (one device: nothing is partitioned)")
        return Path(files[-1]).read_text()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hlo", nargs="+", help="analyse these HLO text files instead of building steps")
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--methods", default="dense,srste")
    p.add_argument("--layouts", default="data,fsdp",
                   help="comma-separated: data, fsdp, tensor (over --devices) or DxFxT (data x fsdp x tensor)")
    p.add_argument("--devices", type=int, default=0, help="devices of each layout (0: all)")
    p.add_argument("--batch-per-device", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--stage", choices=("compiled", "partitioned"), default="compiled")
    p.add_argument("--detail", action="store_true", help="also list every collective and conditional")
    p.add_argument("--json", help="write every result here")
    p.add_argument("--save-hlo", metavar="DIR", help="also write each step's HLO text here (for --hlo later)")
    args = p.parse_args(argv)

    results = {}
    if args.hlo:
        for f in args.hlo:
            results[Path(f).name] = analyse(Path(f).read_text())
    else:
        import jax
        from train_scaling import LAYOUTS, load_config

        n = args.devices or jax.device_count()
        base = load_config(args.config, list(args.overrides))
        for layout in args.layouts.split(","):
            d, f, t = LAYOUTS[layout](n) if layout in LAYOUTS else map(int, layout.split("x"))
            for method in args.methods.split(","):
                cfg = dataclasses.replace(base, method=method, batch_size=args.batch_per_device * d * f * t,
                                          grad_accum=args.grad_accum, mesh_data=d, mesh_fsdp=f, mesh_tensor=t).validate()
                name = f"{method} {layout} {n}" if layout in LAYOUTS else f"{method} {layout}"
                text = step_hlo(cfg, args.stage)
                if args.save_hlo:
                    Path(args.save_hlo).mkdir(parents=True, exist_ok=True)
                    (Path(args.save_hlo) / f"{name.replace(' ', '_')}.{args.stage}.txt").write_text(text)
                results[name] = analyse(text)
    print(summary_table(results))
    for name, res in results.items():
        extra = f"{res['loops']} while loop(s), custom calls {res['custom_calls'] or 'none'}"
        print(f"{name}: {len(res['conditionals'])} conditional(s), {extra}")
        if args.detail:
            print(f"\n### {name}\n\n" + detail_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
