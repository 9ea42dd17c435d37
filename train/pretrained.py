"""Load a model the trainer wrote: its run config, the latest (or a chosen) checkpoint.

Used by sparse24-finetune and sparse24-export. A checkpoint can be named by
  the run directory        runs/124m            (holds config.json and checkpoints/)
  its checkpoints folder   runs/124m/checkpoints
  one step of it           runs/124m/checkpoints/3000
The model config comes from the run's config.json (or, failing that, from the
checkpoint's own meta item). The checkpoint is opened read-only: nothing in the
run directory is changed, so this is safe while the run is still training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from .checkpoint import abandoned_reads_quiet, dense_finetuning_of, from_savable, reason, to_savable
from .config import FIELDS, Config, ConfigError, _coerce, parse_overrides

log = logging.getLogger("sparse24_train")


@dataclass
class Pretrained:
    model: nnx.Module          # the GPT, with the checkpoint's weights (dense fine-tuning applied if it was on)
    cfg: Config
    meta: dict                 # the checkpoint's meta item (step, dense_finetuning, ...)
    step: int
    run_dir: Path
    vocab_size: int


def add_checkpoint_args(parser) -> None:
    """The --checkpoint / --step options of the CLIs that load a pretrained run
    (``load_pretrained(args.checkpoint, step=args.step)``)."""
    parser.add_argument("--checkpoint", required=True,
                        help="a sparse24-train run directory (or its checkpoints/[STEP])")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")


def locate(path) -> tuple[Path, Path, int | None]:
    """(run directory, checkpoints folder, step or None for the latest) of a --checkpoint argument."""
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise ConfigError(f"checkpoint {str(path)!r}: no such directory (give a run directory of "
                          f"sparse24-train, its checkpoints/ folder or one checkpoints/STEP folder)")
    if (p / "checkpoints").is_dir():
        return p, p / "checkpoints", None
    if p.name == "checkpoints":
        return p.parent, p, None
    if p.name.isdigit() and (p / "state").is_dir():
        return p.parent.parent, p.parent, int(p.name)
    raise ConfigError(f"checkpoint {str(path)!r}: not a run directory of sparse24-train (no checkpoints/ "
                      f"folder in it), nor a checkpoints/ or checkpoints/STEP folder")


def config_from_dict(saved: dict, overrides: dict | list[str] | None = None) -> Config:
    """The run's Config from its saved fields (fields this version does not know are dropped),
    then `overrides` ({field: value} or ["field=value"]) on top."""
    base = {}
    for k, v in saved.items():
        if k in FIELDS:
            base[k] = _coerce(k, v)
        else:
            log.info("config field %r of the run is unknown here: ignored", k)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        if k not in FIELDS:
            raise ConfigError(f"unknown config field {k!r} in --set; valid fields: {', '.join(FIELDS)}")
        base[k] = _coerce(k, v)
    return dataclasses.replace(Config(), **base).validate()


def _manager(root: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=True, cleanup_tmp_directories=False,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(root, options=options, item_names=("state", "meta"))


def _saved_vocab(step_dir: Path) -> int | None:
    """Rows of the token embedding as stored (the exact vocab the model was built with)."""
    try:
        with ocp.StandardCheckpointer() as reader:
            md = reader.metadata(step_dir / "state")
        tree = getattr(md, "item_metadata", md)
        return int(tree["0"]["wte"]["embedding"].shape[0])
    except Exception:  # older/newer layouts: fall back to the config
        return None


def usable_backend(cfg: Config) -> Config:
    """The checkpoint's backend if it runs here, else "xla" (same numbers, any platform)."""
    from sparse24_jax import BackendUnavailableError, get_backend
    try:
        get_backend(cfg.backend)
        return cfg
    except (BackendUnavailableError, ValueError, ImportError) as e:
        log.warning("backend %r is not usable here (%s): using 'xla'", cfg.backend, str(e).splitlines()[0])
        return dataclasses.replace(cfg, backend="xla")


def load_pretrained(path, *, step: int | None = None, overrides=None) -> Pretrained:
    """The GPT of a sparse24-train checkpoint (the optimizer state is read but dropped)."""
    from .model import padded_vocab
    from .train import build

    run_dir, root, named_step = locate(path)
    manager = _manager(root)
    step = step if step is not None else named_step
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise ConfigError(f"{root}: holds no finished checkpoint")
    elif step not in manager.all_steps():
        raise ConfigError(f"{root}: no checkpoint of step {step} (there are: "
                          f"{', '.join(map(str, manager.all_steps())) or 'none'})")
    def unreadable(err):  # a damaged checkpoint: one line, and the others to try
        others = [s for s in manager.all_steps() if s != step]
        return ConfigError(f"checkpoint {step} in {root} cannot be read ({reason(err)}): choose another "
                           f"with --step N (there are: {', '.join(map(str, sorted(others))) or 'none'})")

    try:
        with abandoned_reads_quiet():
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        dense_finetuning = dense_finetuning_of(meta)
    except Exception as err:  # noqa: BLE001 - whatever orbax raises for a damaged file
        raise unreadable(err) from None
    if (run_dir / "config.json").is_file():
        saved = json.loads((run_dir / "config.json").read_text())
    elif "config" in meta:
        saved = meta["config"]
    else:
        raise ConfigError(f"{run_dir}: no config.json, and the checkpoint's meta has no config")
    cfg = usable_backend(config_from_dict(saved, overrides))
    vocab = _saved_vocab(root / str(step)) or padded_vocab(cfg, 50257)
    model, optimizer = build(cfg, vocab)
    if dense_finetuning:
        from sparse24_jax import nnx as s24nnx
        s24nnx.set_dense_finetuning(model)
    template = nnx.state((model, optimizer))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_savable(template))
    try:
        with abandoned_reads_quiet():
            got = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as err:  # noqa: BLE001
        raise unreadable(err) from None
    nnx.update((model, optimizer), from_savable(template, got["state"]))
    manager.close()
    log.info("loaded %s step %d: %d layers, d=%d, method %s%s", root, step, cfg.n_layer, cfg.n_embd,
             cfg.method, " (dense fine-tuning on)" if dense_finetuning else "")
    del optimizer
    return Pretrained(model=model, cfg=cfg, meta=meta, step=step, run_dir=run_dir, vocab_size=vocab)


def hidden_states(gpt, idx):
    """The GPT's final hidden states (B, T, C), after ln_f, in float32: its __call__
    without the LM head (what task heads read)."""
    B, T = idx.shape
    x = gpt.wte(idx) + gpt.wpe(jax.numpy.arange(T))[None]
    for block in gpt.h:
        x = block(x)
    return gpt.ln_f(x).astype(jax.numpy.float32)


def materialised_ffn(layer) -> np.ndarray:
    """A SparseLinear's weight as its forward uses it, (out, in) float32: W*mask for
    SR-STE/STE, beta*soft_threshold(W) for S-STE, W when dense (method or fine-tuning)."""
    from sparse24_jax import project_weight
    from sparse24_jax.nnx import _get
    w = _get(layer.weight)
    if layer.dense_finetuning or layer.method == "dense":
        return np.asarray(w, np.float32)
    w_s, _ = project_weight(w, _get(layer.mask), _get(layer.beta), method=layer.method)
    return np.asarray(w_s, np.float32)
