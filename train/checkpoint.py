"""Checkpoints with orbax-checkpoint: everything a run needs to continue exactly.

One checkpoint = one orbax step directory holding two items:
  state   the model's variables (fp32 master weights, 2:4 masks, S-STE scales, the MVUE
          PRNG stream) and the optimizer's (AdamW moments, masked-decay and step counters)
  meta    JSON: step, data position, whether dense fine-tuning is on, the config

Saves are asynchronous (training goes on while the files are written) and atomic:
orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves only a temporary directory, which is ignored (and cleaned
up) next time; the previous finished checkpoint stays the latest.

Nothing is written before the first save: reading (steps, meta, state) goes through a
read-only manager, so a command that fails before training leaves the run as it was.
A checkpoint that cannot be read (a damaged file) raises CheckpointError naming it;
train.py then looks for the newest intact one to offer (--resume --step N).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from .errors import CheckpointError


def dense_finetuning_meta(on: bool) -> dict:
    """A checkpoint's meta entries saying whether dense fine-tuning is on: "dense_finetuning",
    and "dense" too, the name checkpoints were written with before (versions that read only
    that one can still resume the run)."""
    return {"dense_finetuning": bool(on), "dense": bool(on)}


def dense_finetuning_of(meta: dict) -> bool:
    """Whether a checkpoint's meta says dense fine-tuning is on: "dense_finetuning", or "dense" in
    checkpoints written before that name. KeyError if it has neither (not a checkpoint's meta)."""
    return bool(meta["dense_finetuning"] if "dense_finetuning" in meta else meta["dense"])


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


class _Unreadable(Exception):
    """A checkpoint whose files cannot be read (message: why)."""


@contextlib.contextmanager
def _quiet_orbax():
    """orbax logs a warning per read-only open ("setting create=False", ...): not news to the user."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


class _AbandonedReadLogs(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" records about orbax's reads (their
    future's exception names the OCDBT database or TensorStore); passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "exception was never retrieved" not in text.split("\n", 1)[0]:
            return True
        return not any(s in text for s in ("OCDBT", "TensorStore", "orbax"))


_ABANDONED_READ_LOGS = _AbandonedReadLogs()
_keep_quiet = False  # a restore failed in this process: its abandoned reads may still be collected


def _quiet_unraisable(unraisable, previous) -> None:
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    previous(unraisable)


@contextlib.contextmanager
def abandoned_reads_quiet():
    """Around an orbax restore that may fail on a damaged file. When it fails, orbax abandons the
    file's other array reads, and as their futures finish (in TensorStore's threads, some before
    the exception reaches the caller) and are collected (at once, later, or at exit) Python
    reports each: asyncio logs "Future exception was never retrieved" with a traceback (logging's
    last-resort handler prints it to stderr) and the callbacks to the closed event loop raise
    "Event loop is closed" (sys.unraisablehook). That is hundreds of lines around the one that
    says what is wrong: in one CLI run of four on a damaged checkpoint (2026-12-01), when these
    filters went in only after the failure reached us. So they go in before the restore: exactly
    those kinds of record are dropped, everything else passes to the previous hook and handlers.
    A restore that succeeds takes them out again; after a failure they stay for the process."""
    global _keep_quiet
    hook = None
    if not getattr(sys.unraisablehook, "sparse24_quiet", False):  # not installed (or replaced since)
        previous = sys.unraisablehook

        def hook(unraisable):
            _quiet_unraisable(unraisable, previous)

        hook.sparse24_quiet = True
        hook.previous = previous
        sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(_ABANDONED_READ_LOGS)  # a no-op when it is there already
    try:
        yield
    except BaseException:
        _keep_quiet = True
        raise
    if not _keep_quiet:
        asyncio_log.removeFilter(_ABANDONED_READ_LOGS)
        if hook is not None and sys.unraisablehook is hook:
            sys.unraisablehook = hook.previous


def reason(err: BaseException) -> str:
    """One line for an exception from orbax/TensorStore: the innermost cause says what is wrong
    (the outer ones wrap it in "error while reading array index ... See full details"). Only
    explicit causes (raise ... from): an implicit context is often an unrelated StopIteration."""
    while err.__cause__ is not None:
        err = err.__cause__
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:300]}"


class Checkpointer:
    def __init__(self, directory, keep_last: int):
        self.directory = Path(directory).absolute() / "checkpoints"
        self.keep_last = keep_last
        self._writer = None  # the writing manager, made at the first save (it creates the folder)
        self._reader = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The writing manager; creating it makes the folder and removes what killed saves left."""
        if self._writer is None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep_last,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,  # what a killed save left behind
            )
            self._writer = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        return self._writer

    def _read(self) -> ocp.CheckpointManager:
        if self._writer is not None:
            return self._writer
        if self._reader is None:
            with _quiet_orbax():
                options = ocp.CheckpointManagerOptions(read_only=True, cleanup_tmp_directories=False,
                                                       enable_async_checkpointing=False)
                self._reader = ocp.CheckpointManager(self.directory, options=options,
                                                     item_names=("state", "meta"))
        return self._reader

    def all_steps(self) -> list[int]:
        """The finished checkpoints' steps, oldest first (none if the folder does not exist)."""
        if self._writer is None and not self.directory.is_dir():
            return []
        return sorted(self._read().all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: nnx.State, meta: dict) -> None:
        """Starts an async save and returns; the previous save is finished first. `meta` is
        copied now: it is serialised later, when the caller may have changed it."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(to_savable(state)), meta=ocp.args.JsonSave(copy.deepcopy(meta))),
            force=True)

    def restore_meta(self, step: int) -> dict:
        with _quiet_orbax():
            return self._read().restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, template: nnx.State) -> nnx.State:
        """Loads `step` into arrays shaped and sharded like `template` (and returns it)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_savable(template))
        with _quiet_orbax(), abandoned_reads_quiet():
            got = self._read().restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return from_savable(template, got["state"])

    def restore_checked(self, step: int, template_of) -> tuple[dict, object, nnx.State]:
        """(meta, graphdef, state) of checkpoint `step`; template_of(dense_finetuning) gives the run's
        fresh (graphdef, state) to restore into. A checkpoint that cannot be read raises CheckpointError
        naming it and the newest older one that can (restored in full to be sure), to continue
        from with --resume --step; one of another model raises CheckpointError saying so."""
        try:
            return self._restore_one(step, template_of)
        except _Unreadable as err:
            why = str(err)
        for older in reversed([s for s in self.all_steps() if s < step]):
            try:
                self._restore_one(older, template_of)
            except _Unreadable:
                continue
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} cannot be read ({why}). The newest intact one "
                f"is step {older}: continue from it with --resume --step {older} (the checkpoints after "
                f"it are then moved to {self.directory.parent / 'checkpoints.superseded'})")
        raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read ({why}), and no older "
                              f"one can either: start afresh with --overwrite, or choose another --out")

    def _restore_one(self, step: int, template_of):
        try:
            meta = self.restore_meta(step)
            dense_finetuning, _ = dense_finetuning_of(meta), meta["data"]
        except Exception as err:  # noqa: BLE001 - whatever orbax raises for a damaged file
            raise _Unreadable(reason(err)) from None
        graphdef, template = template_of(dense_finetuning)
        mismatch = self.shape_mismatch(step, template)
        if mismatch:
            raise CheckpointError(f"checkpoint {step} in {self.directory} holds another model than this "
                                  f"config's: {mismatch}. Resume with the run's own config (leave out "
                                  f"--config; --set only fields that keep the shapes)")
        try:
            return meta, graphdef, self.restore(step, template)
        except Exception as err:  # noqa: BLE001
            raise _Unreadable(reason(err)) from None

    def shape_mismatch(self, step: int, template: nnx.State) -> str | None:
        """How checkpoint `step`'s arrays differ from `template`'s (another model: a changed
        config), or None. A checkpoint whose metadata cannot be read is left to restore()."""
        try:
            with _quiet_orbax(), ocp.StandardCheckpointer() as reader:
                md = reader.metadata(self.directory / str(step) / "state")
            saved = getattr(md, "item_metadata", md)
            saved = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                     jax.tree_util.tree_flatten_with_path(dict(saved))[0]}
        except Exception:  # noqa: BLE001 - unreadable metadata: restore() says what is wrong
            return None
        want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                jax.tree_util.tree_flatten_with_path(to_savable(template))[0]}
        if saved.keys() != want.keys():
            extra = sorted(saved.keys() - want.keys()) or sorted(want.keys() - saved.keys())
            return f"its arrays differ from this config's model (e.g. {extra[0]})"
        for k in want:
            if saved[k] != want[k]:
                return f"{k} has shape {saved[k]} there but {want[k]} in this config's model"
        return None

    def set_aside_after(self, step: int) -> Path | None:
        """Move the checkpoints after `step` to checkpoints.superseded/ (a run continuing from
        `step` writes its own; orbax would keep the old ones as the latest). Returns the folder."""
        later = [s for s in self.all_steps() if s > step]
        if not later:
            return None
        aside = self.directory.parent / "checkpoints.superseded"
        aside.mkdir(exist_ok=True)
        for s in later:
            dest, n = aside / str(s), 1
            while dest.exists():
                dest, n = aside / f"{s}.{n}", n + 1
            shutil.move(str(self.directory / str(s)), str(dest))
        if self._reader is not None:  # it caches the step list
            self._reader.close()
            self._reader = None
        return aside

    def wait(self) -> None:
        if self._writer is not None:
            self._writer.wait_until_finished()

    def close(self) -> None:
        for m in (self._writer, self._reader):
            if m is not None:
                m.close()
        self._writer = self._reader = None
