"""Run configuration: one flat dataclass, filled from a TOML file in configs/
and then from `--set field=value` overrides.

Flat on purpose: every field can be overridden on the command line by its bare
name, and a typo is caught here (with the list of valid names) rather than
silently ignored deep inside the training loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


#: Values of a field accepted under an earlier name, mapped to the current one whenever a Config
#: is made: config files and run directories saved before hold them. precision "bf16" was
#: "compute" (the GEMMs in `dtype`, float32 too); the library maps it the same way
#: (sparse24_jax.fp8.PRECISION_ALIASES, not imported here: the CLI starts without jax).
ALIASES = {"precision": {"bf16": "compute"}}


@dataclass(frozen=True)  # hashable: compiled steps are cached per config (train.py)
class Config:
    # --- model (GPT-2 as nanoGPT builds it) ---
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int = 0          # 0: the tokenizer's vocabulary, padded up to a multiple of 64
    ffn: str = "gelu"            # "gelu" (GPT-2) or "swiglu" (LLaMA-style gated FFN)
    ffn_hidden: int = 0          # 0: 4*n_embd for gelu, 8/3*n_embd rounded up to 64 for swiglu
    method: str = "srste"        # FFN weights: "dense", "srste", "sste" or "ste"
    backend: str = "xla"         # sparse24_jax backend running the 2:4 GEMMs
    mask_interval: int = 40      # SR-STE: recompute the transposable mask every this many steps
    mvue: bool = True            # MVUE-prune the output gradient of the weight-gradient GEMM
    mvue_fc: bool = True         # false: the FFN's first linear (fc, gate_up) keeps no MVUE: its weight
                                 # gradient is a dense GEMM of the exact dZ1 (no pruning pass over the
                                 # 4x-wide tensor); proj follows `mvue`. docs/BENCHMARKS.md section 16,
                                 # convergence: docs/RESULTS.md (session 18)
    dtype: str = "bfloat16"      # compute dtype; master weights and optimizer state stay float32
    precision: str = "compute"   # FFN 2:4 GEMMs: "compute" (in `dtype`) or "fp8" (S-STE's FP8 recipe, simulated)
    attention: str = "auto"      # "auto" (cuDNN flash attention on NVIDIA GPUs in 16-bit, else XLA), "xla", "cudnn"

    # --- optimizer (AdamW, warm-up + cosine) ---
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    max_steps: int = 500
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    alpha: float = 6e-5          # SR-STE masked decay on gradients (paper 1)
    dense_fraction: float = 5 / 6  # SR-STE: the last (1 - this) of training is dense; >= 1 never

    # --- batch ---
    batch_size: int = 16         # sequences per micro-batch, over all devices
    grad_accum: int = 1          # micro-batches per optimizer step
    grad_acc_in_gemm: bool = True  # grad_accum > 1: each 2:4 weight's gradient is added to the running
                                 # sum in its weight-gradient GEMM (backend "cutlass"; elsewhere an add,
                                 # as with false: a separate pass over the float32 sums)

    # --- devices: a ("data", "fsdp", "tensor") mesh, see train/sharding.py ---
    mesh_data: int = -1          # data-parallel size; -1: all devices left after fsdp x tensor
    mesh_fsdp: int = 1           # FSDP size: batch split, parameters and optimizer state sharded
    mesh_tensor: int = 1         # tensor-parallel size of the 2:4 FFNs (attention stays data/FSDP)
    shard_map_scope: str = "auto"  # data/FSDP without tensor: "step" (one shard_map around the loss and
                                 # gradients, model as on one device), "layer" (one per 2:4 linear; XLA's
                                 # own sharding elsewhere) or "auto": step for the 2:4 methods, layer
                                 # (no shard_map at all) for method dense, the faster for each on 2 H200s
    shard_gather_dtype: str = "compute"  # step scope, FSDP: all-gather the weights that the model uses only
                                 # in `dtype` in it ("compute": same values, half the bytes) or "float32"
    grad_reduce_dtype: str = "float32"  # step scope: reduce those weights' gradients in "float32" or
                                 # "compute" (half the bytes, rounded per shard, as XLA does for dense)

    # --- data ---
    data: str = "embedded"       # "embedded", a directory with train.bin/val.bin, or "tfds:NAME"
    tfds_data_dir: str = ""      # TFDS data_dir ("" = TFDS's default, ~/tensorflow_datasets)
    tfds_text_key: str = "text"  # which feature of a TFDS example holds the text
    tokenizer: str = "auto"      # "auto" (GPT-2 BPE if its files are found, else bytes), "gpt2", "byte"
    val_fraction: float = 0.1    # embedded corpus: the last this fraction is the validation split

    # --- evaluation, logging, checkpoints ---
    eval_interval: int = 100
    eval_batches: int = 8
    log_interval: int = 10
    ckpt_interval: int = 100
    keep_last: int = 3
    peak_tflops: float = 989.0   # for MFU: bf16 dense peak of one device (H100 SXM by default)
    seed: int = 1337

    def __post_init__(self):
        for name, earlier in ALIASES.items():
            value = getattr(self, name)
            if isinstance(value, str) and value in earlier:
                object.__setattr__(self, name, earlier[value])  # frozen: set once, here

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.block_size

    def validate(self) -> "Config":
        choices = {
            "method": ("dense", "srste", "sste", "ste"),
            "ffn": ("gelu", "swiglu"),
            "dtype": ("bfloat16", "float32"),
            "precision": ("compute", "fp8"),
            "attention": ("auto", "xla", "cudnn"),
            "shard_map_scope": ("auto", "step", "layer"),
            "shard_gather_dtype": ("compute", "float32"),
            "grad_reduce_dtype": ("float32", "compute"),
            "tokenizer": ("auto", "gpt2", "byte"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} = {getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.method != "dense" and (self.n_embd % 4 or self.ffn_hidden % 4):
            raise ConfigError("2:4 sparsity needs n_embd and ffn_hidden to be multiples of 4")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
                     "max_steps", "mask_interval", "log_interval", "eval_interval", "ckpt_interval",
                     "keep_last", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be >= 1")
        if self.mesh_data == 0 or self.mesh_data < -1 or self.mesh_fsdp < 1 or self.mesh_tensor < 1:
            raise ConfigError(f"mesh {self.mesh_data}x{self.mesh_fsdp}x{self.mesh_tensor} (data x fsdp x tensor): "
                              f"sizes must be >= 1 (mesh_data = -1: all devices left over)")
        if self.mesh_data > 0 and self.batch_size % (self.mesh_data * self.mesh_fsdp):
            raise ConfigError(f"batch_size {self.batch_size} must be a multiple of mesh_data x mesh_fsdp = "
                              f"{self.mesh_data * self.mesh_fsdp}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction = {self.val_fraction} must be in (0, 1)")
        # Numbers the optimizer takes at face value: a negative learning rate trains uphill and
        # NaN poisons every weight, neither with an error, so they are refused here.
        ranges = {  # field: (low, high, low allowed, what to say)
            "learning_rate": (0.0, math.inf, False, "> 0"),
            "min_lr": (0.0, math.inf, True, ">= 0"),
            "weight_decay": (0.0, math.inf, True, ">= 0"),
            "grad_clip": (0.0, math.inf, False, "> 0"),
            "alpha": (0.0, math.inf, True, ">= 0"),
            "beta1": (0.0, 1.0, True, "in [0, 1)"),
            "beta2": (0.0, 1.0, True, "in [0, 1)"),
            "dense_fraction": (0.0, math.inf, False, "> 0 (>= 1: never dense)"),
            "peak_tflops": (0.0, math.inf, False, "> 0"),
        }
        for name, (low, high, closed, say) in ranges.items():
            v = getattr(self, name)
            if not (math.isfinite(v) and (v >= low if closed else v > low) and v < high):
                raise ConfigError(f"{name} = {v} must be {say}")
        for name in ("warmup_steps", "vocab_size", "ffn_hidden", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} = {getattr(self, name)} must be >= 0")
        return self


FIELDS = {f.name: f for f in fields(Config)}


def _coerce(name: str, value):
    """Check a value's type against the field's; accept strings from --set."""
    want = type(getattr(Config(), name))
    if isinstance(value, str) and want is not str:
        text = value.strip()
        try:
            if want is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            return want(float(text)) if want is int and "e" in text.lower() else want(text)
        except ValueError:
            raise ConfigError(f"{name} = {value!r}: expected a {want.__name__}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{name} = {value!r}: expected a {want.__name__}")
    return value


def _unknown(name: str, where: str) -> ConfigError:
    import difflib
    close = difflib.get_close_matches(name, FIELDS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config field {name!r} in {where}.{hint} "
                       f"Valid fields: {', '.join(FIELDS)}")


def config_dirs() -> list[Path]:
    """Where `--config NAME` looks: $SPARSE24_CONFIG_DIR, ./configs, then the shipped configs/."""
    dirs = []
    if os.environ.get("SPARSE24_CONFIG_DIR"):
        dirs.append(Path(os.environ["SPARSE24_CONFIG_DIR"]))
    dirs.append(Path.cwd() / "configs")
    here = Path(__file__).resolve().parent
    dirs.append(here / "configs")  # pip install: the repo's configs/ is package data (pyproject.toml)
    dirs.append(here.parent / "configs")  # editable install / repo checkout
    return [d for i, d in enumerate(dirs) if d not in dirs[:i]]


def find_config(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path
    for d in config_dirs():
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
    searched = ", ".join(str(d) for d in config_dirs())
    raise ConfigError(f"config {name!r} not found: give a path to a .toml file, or put {name}.toml "
                      f"in one of: {searched} (or set SPARSE24_CONFIG_DIR)")


def parse_overrides(items) -> dict:
    """["field=value", ...] (the CLI's --set) -> {field: "value"}."""
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected field=value, e.g. --set n_layer=4")
        k, v = item.split("=", 1)
        pairs[k.strip()] = v
    return pairs


def load_config(name: str = "tiny", overrides: dict | list[str] | None = None) -> Config:
    """Config from configs/NAME.toml, then overrides ({field: value} or ["field=value", ...])."""
    path = find_config(name)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    # Tables in the TOML file only group fields for the reader; the config itself is flat.
    flat = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if k not in FIELDS:
                raise _unknown(k, str(path))
            flat[k] = _coerce(k, v)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        if k not in FIELDS:
            raise _unknown(k, "--set")
        flat[k] = _coerce(k, v)
    return dataclasses.replace(Config(), **flat).validate()
