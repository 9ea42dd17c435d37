"""Checkpoints with orbax-checkpoint: everything a run needs to continue exactly.

One checkpoint = one orbax step directory holding two items:
  state   the model's variables (fp32 master weights, 2:4 masks, S-STE scales, the MVUE
          PRNG stream) and the optimizer's (AdamW moments, masked-decay and step counters)
  meta    JSON: step, data position, whether dense fine-tuning is on, the config

Saves are asynchronous (training goes on while the files are written) and atomic:
orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves only a temporary directory, which is ignored (and cleaned
up) next time; the previous finished checkpoint stays the latest.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(state: nnx.State) -> dict:
    """nnx.State -> nested dict of plain arrays. Typed PRNG keys become their uint32
    key data (orbax stores arrays of numbers), string keys only (orbax's tree paths)."""
    pure = nnx.to_pure_dict(state)

    def fix(tree):
        if isinstance(tree, dict):
            return {str(k): fix(v) for k, v in tree.items()}
        return jax.random.key_data(tree) if _is_key(tree) else tree
    return fix(pure)


def from_savable(template: nnx.State, saved: dict) -> nnx.State:
    """Inverse of to_savable, shaped by `template` (the freshly built run's state)."""
    pure = nnx.to_pure_dict(template)

    def fix(tmpl, got):
        if isinstance(tmpl, dict):
            return {k: fix(v, got[str(k)]) for k, v in tmpl.items()}
        if _is_key(tmpl):
            return jax.random.wrap_key_data(got, impl=jax.random.key_impl(tmpl))
        return got
    nnx.replace_by_pure_dict(template, fix(pure, saved))
    return template


class Checkpointer:
    def __init__(self, directory, keep_last: int):
        self.directory = Path(directory).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # what a killed save left behind
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, meta: dict) -> None:
        """Starts an async save and returns; the previous save is finished first. `meta` is
        copied now: it is serialised later, when the caller may have changed it."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(to_savable(state)), meta=ocp.args.JsonSave(copy.deepcopy(meta))),
            force=True)

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, template: nnx.State) -> nnx.State:
        """Loads `step` into arrays shaped and sharded like `template` (and returns it)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_savable(template))
        got = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return from_savable(template, got["state"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
