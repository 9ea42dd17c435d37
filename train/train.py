"""The training loop: one jit-compiled step, data parallel over all local devices.

Read top to bottom: build (model, optimizer, data), the step function, then the loop
with evaluation, logging, mask refresh, dense fine-tuning and checkpoints.

One optimizer step, inside a single jit:
  compress the 2:4 weights once (sparse24_jax.nnx.prepare_weights)
  -> for each of grad_accum micro-batches (lax.scan): forward in bf16, backward (the 2:4
  layers MVUE-prune their output gradient), sum the fp32 gradients
  -> clip to global norm 1 -> SR-STE masked decay g += alpha*W*(1-mask) -> AdamW.
Every mask_interval steps the loop then recomputes the 2:4 masks from the new weights, in a
jitted program of its own: decided on the host, so the step itself has no conditional (on a
GPU every lax.cond copies its predicate to the host and waits).
Dense fine-tuning switches every sparse layer to dense at `dense_step`; that changes the
model's static structure, so the step is re-jitted once then.

Devices (train/sharding.py): a ("data", "fsdp", "tensor") mesh. The batch is split over
data x fsdp; with fsdp > 1 every parameter and optimizer-state array is stored split over
"fsdp". Without a tensor axis the loss and gradients run per device inside one shard_map
(sharded_loss_and_grads: parameters gathered once per step, one reduction per gradient);
with tensor > 1 the 2:4 FFNs run tensor parallel in their own shard_maps and XLA inserts
the rest of the gathers and reductions. The optimizer update runs under XLA's sharding on
the stored shardings. With one device the mesh has one entry and the code is the same.
Several hosts: each process feeds the rows of the global batch its devices hold.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import json
import logging
import math
import shutil
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import sparse24_jax
from sparse24_jax import nnx as s24nnx

from .checkpoint import Checkpointer, dense_finetuning_meta, dense_finetuning_of
from .config import ConfigError
from .data import make_source
from .errors import CheckpointError, Diverged, Interrupted
from .model import GPT, cross_entropy, ffn_hidden, flops_per_token, num_params, padded_vocab
from sparse24_jax.parallel import match_varying

from .sharding import (batch_sharding, compute_dtype_params, expand_param, ffn_shard, fsdp_dim, gather_fsdp,
                       global_batch, is_primary, make_mesh, manual_axes, param_keys, shard_specs, state_shardings,
                       step_shard_map, tensor_parallel_dims)

log = logging.getLogger("sparse24_train")


# ----------------------------------------------------------------------------- setup

def lr_schedule(cfg):
    """nanoGPT's: linear warm-up to learning_rate, then cosine down to min_lr at max_steps.
    `count` is the number of updates already applied (optax's convention); nanoGPT's `it` is
    count + 1.

    Written out rather than composed from optax's schedules: optax's linear warm-up (its
    polynomial form, lr - lr * (1 - it / (warmup + 1))) cancels in float32 at the first steps
    (1e-4 relative error at 3000 warm-up steps), and its cosine rounds differently in the last
    bits (194 of the tiny config's 300 rates), which moved the README main job's final losses
    by up to 0.3%: a bf16 run amplifies last-bit differences of the rate."""
    def lr(count):
        it = count + 1
        warm = cfg.learning_rate * it / (cfg.warmup_steps + 1)
        ratio = jnp.clip((it - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 0.0, 1.0)
        cosine = cfg.min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)
        return jnp.where(it <= cfg.warmup_steps, warm, cosine)
    return lr


def dense_step_of(cfg) -> int | None:
    """First step of dense fine-tuning, for the hard-mask methods; None: never."""
    if cfg.method not in ("srste", "ste") or cfg.dense_fraction >= 1.0:
        return None
    return sparse24_jax.dense_finetune_step(cfg.max_steps, fraction=cfg.dense_fraction)


@functools.lru_cache(maxsize=8)  # one optimizer object per config: equal graphdefs, see make_train_step
def make_optimizer(cfg):
    """The papers' recipe from sparse24_jax: SR-STE's clip -> masked decay -> AdamW, or the
    clip -> AdamW of S-STE (and of the dense and plain-STE baselines); weight decay skips 1-D
    parameters (LayerNorm scales), as nanoGPT does."""
    common = dict(weight_decay=cfg.weight_decay, b1=cfg.beta1, b2=cfg.beta2, clip_norm=cfg.grad_clip,
                  weight_decay_mask=sparse24_jax.decay_matrices_only)
    if cfg.method == "srste":
        return sparse24_jax.srste_optimizer(lr_schedule(cfg), alpha=cfg.alpha, dense_step=dense_step_of(cfg),
                                            **common)
    return sparse24_jax.sste_optimizer(lr_schedule(cfg), **common)


def build(cfg, vocab_size: int, mesh=None, search_masks: bool = True):
    """A fresh (model, optimizer). Params are initialised from cfg.seed; the MVUE keys of
    the 2:4 layers come from their own stream, so changing the method leaves init alone.
    `mesh` (of more than one device): the FFNs run per shard on it (train/sharding.py).
    search_masks=False: placeholder masks, for s24nnx.search_masks after a jitted init."""
    rngs = nnx.Rngs(cfg.seed, sparse24=cfg.seed + 1)
    model = GPT(cfg, vocab_size, rngs=rngs, shard=ffn_shard(mesh, cfg), search_masks=search_masks)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param)
    return model, optimizer


def train_shardings(graphdef, state, mesh):
    """NamedShardings of the (model, optimizer) state on `mesh` (train/sharding.py's rule)."""
    model, _ = nnx.merge(graphdef, state)
    return state_shardings(state, mesh, tensor_parallel_dims(model))


def init_state(cfg, vocab_size: int, mesh, dense_finetuning: bool = False, like=None):
    """(graphdef, state) of a fresh (model, optimizer), each array created directly in its
    sharding on `mesh` (a jit with out_shardings): no whole copy on one device, and the same
    on every process of a multi-host run. dense_finetuning: switched on in the model.

    like: a state of the same config built on another mesh, to be resharded onto this one
    instead (the init program of a big model is slow to compile, docs/RESULTS.md; benchmarks
    that try several meshes pay it once)."""
    def make():
        # masks searched after the jit, one compiled search per weight shape: inlined into
        # it, the searches of every layer made that compile much slower still (docs/RESULTS.md)
        model, optimizer = build(cfg, vocab_size, mesh, search_masks=False)
        if dense_finetuning:
            s24nnx.set_dense_finetuning(model)
        return model, optimizer

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = train_shardings(graphdef, abstract, mesh)
    if like is not None:
        if jax.tree.structure(like) != jax.tree.structure(abstract):
            raise ValueError("init_state(like=...): that state is not of this config's model and "
                             "optimizer (its tree differs); build it with the same config")
        return graphdef, jax.device_put(like, shardings)
    state = _run_init(jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings))
    model, optimizer = nnx.merge(graphdef, state)
    s24nnx.search_masks(model)
    return graphdef, nnx.state((model, optimizer))


def _run_init(init):
    """Run the jitted init program; on a GPU with JAX's threefry kernel lowering.

    XLA inlines one copy of the threefry random-bit generator per parameter, and on a GPU
    those copies compile slowly (a big model's init compiled for several times longer than
    its training step, docs/RESULTS.md). jax_threefry_gpu_kernel_lowering (a JAX switch, off
    by default) calls one CUDA kernel instead, with the same bits. Should a JAX build lack
    that kernel, the init compiles the usual way, with a warning."""
    flag = "jax_threefry_gpu_kernel_lowering"
    if jax.default_backend() != "gpu" or not hasattr(jax.config, flag):
        return init()
    before = getattr(jax.config, flag)
    try:
        jax.config.update(flag, True)
        return init()
    except Exception as err:  # noqa: BLE001 - any failure of the kernel path: the plain one still works
        log.warning("init: the threefry GPU kernel lowering failed (%s: %s); compiling XLA's own "
                    "threefry instead, which is slower to compile", type(err).__name__, err)
    finally:
        jax.config.update(flag, before)
    return init()


def _jit_on_first_call(fn, in_shardings_of, **jit_kwargs):
    """jax.jit(fn) with shardings that depend on the state's shapes: built at the first call."""
    jitted = None

    def jitted_for(state):
        nonlocal jitted
        if jitted is None:
            jitted = jax.jit(fn, **in_shardings_of(state), **jit_kwargs)
        return jitted

    def call(state, *args):
        return jitted_for(state)(state, *args)

    # the compiled program's text, for benchmarks/step_profile.py --hlo-fusions
    call.lower = lambda state, *args: jitted_for(state).lower(state, *args)
    return call


# ----------------------------------------------------------------------------- step functions

def mean_loss_and_grads(model, xs, ys, grad_acc_in_gemm: bool = True):
    """(mean loss, mean gradients, `rest`) of `model` over the micro-batches xs, ys
    ((grad_accum, batch, block_size)): the forward and backward of each in a lax.scan, the fp32
    gradients summed. `rest` is the model's non-Param state with the MVUE streams advanced.

    grad_acc_in_gemm (with more than one micro-batch): the running sums go into each
    micro-batch's value_and_grad (grad_acc=), where the 2:4 layers add them in their
    weight-gradient GEMMs on a backend that can; else the sums are added after it. One
    micro-batch: no sum to add to.

    The same code runs on one device, under XLA's sharding (tensor parallel) and per device
    inside the step's shard_map (`sharded_loss_and_grads`), where every value's type also says
    over which mesh axes it varies and the scan's carry must keep its types: the initial loss
    (a constant, invariant) is cast to vary like the batch, as the per-shard losses added to
    it do (jax raises "scan body function carry input and carry output must have equal types"
    otherwise); zeros_like keeps its argument's axes, the cast is there to say so. Both casts
    are no-ops outside shard_map."""
    # the 2:4 weights compressed once per step, not once per micro-batch
    s24nnx.prepare_weights(model)
    gdef, params, rest = nnx.split(model, nnx.Param, ...)
    in_gemm = grad_acc_in_gemm and xs.shape[0] > 1

    def loss_fn(m, x, y):
        return cross_entropy(m(x), y)

    def micro(carry, xy):
        grads, loss_sum, rest = carry
        # `rest` comes back with the layers' MVUE key streams advanced
        if in_gemm:  # the running sum goes in; what comes back is the new one
            loss, grads, rest = s24nnx.value_and_grad(loss_fn, gdef, params, rest, *xy, grad_acc=grads)
        else:
            loss, g, rest = s24nnx.value_and_grad(loss_fn, gdef, params, rest, *xy)
            grads = jax.tree.map(jnp.add, grads, g)
        return (grads, loss_sum + loss, rest), None

    zeros = jax.tree.map(lambda p: match_varying(jnp.zeros_like(p), p), params)
    loss0 = match_varying(jnp.zeros((), jnp.float32), xs)
    (grads, loss_sum, rest), _ = jax.lax.scan(micro, (zeros, loss0, rest), (xs, ys))
    nnx.update(model, rest)
    s24nnx.clear_prepared(model)  # derived from this step's weights: not state to return
    n = xs.shape[0]
    return loss_sum / n, jax.tree.map(lambda g: g / n, grads), nnx.split(model, nnx.Param, ...)[2]


def _per_shard(mesh, model, fn, out_specs, *batch, gather_in_compute=False, reduce_in_compute=False):
    """fn(model, pull, *batch) run per device inside one shard_map over the batch axes, with
    the model as on one device: the step's own shard_map, for sharded_loss_and_grads and the
    eval step (train/sharding.py's step_shard_map says when). Returns (fn's result, the
    model's new non-Param state, the tree of the model's Params). out_specs(p_specs) gives the
    PartitionSpecs of fn's result from those of the Params (a list, in jax.tree.leaves order).

    fn's model is whole: every array split over "fsdp" is all-gathered first (once, here,
    however many micro-batches fn runs), the others are used as stored (replicated), and the
    Params are cast to vary over the batch axes. pull maps cotangents of the whole Params (a
    flat list, in jax.tree.leaves order) to the stored shards': the transposes of those casts
    and gathers (jax.vjp), i.e. the gradient reductions. Each device folds its batch index into
    the layers' MVUE keys (RngKey), so shards draw independent samples; the stored keys stay
    the same on every device (only the streams' counts advance, identically).

    gather_in_compute / reduce_in_compute: gather / reduce the weights that the model only
    uses in its compute dtype (sharding.compute_dtype_params) in that dtype, half the bytes;
    the gathered values are the same, the reduced ones are rounded per shard.
    """
    axes = manual_axes(mesh)
    low = compute_dtype_params(model) if gather_in_compute or reduce_in_compute else {}
    gdef, params, keys, rest = nnx.split(model, nnx.Param, nnx.RngKey, ...)
    # flat lists of arrays through shard_map: specs by position, nothing flax-specific crosses it
    p_leaves, p_def = jax.tree.flatten(params)
    r_leaves, r_def = jax.tree.flatten(rest)
    k_leaves, k_def = jax.tree.flatten(keys)
    p_specs, r_specs = shard_specs(p_leaves, mesh), shard_specs(r_leaves, mesh)
    batch_specs = [P(*([None] * (x.ndim - 2)), axes, None) for x in batch]
    p_low = [low.get(k) for k in param_keys(params)]
    p_gather = [d if gather_in_compute else None for d in p_low]
    p_reduce = [d if reduce_in_compute else None for d in p_low]

    def local(p_leaves, k_leaves, r_leaves, *batch):
        idx = jax.lax.axis_index(axes)
        keys = jax.tree.unflatten(k_def, [jax.random.fold_in(k, idx) for k in k_leaves])
        rest_whole = jax.tree.unflatten(r_def, [gather_fsdp(x, s) for x, s in zip(r_leaves, r_specs)])
        whole, pull = jax.vjp(lambda leaves: [expand_param(*a, axes, g, r) for *a, g, r in
                                              zip(leaves, p_specs, p_gather, p_reduce)], list(p_leaves))
        m = nnx.merge(gdef, jax.tree.unflatten(p_def, whole), keys, rest_whole)
        out = fn(m, pull, *batch)
        new_rest = jax.tree.leaves(nnx.split(m, nnx.Param, nnx.RngKey, ...)[3])
        # gathered arrays go back as the shards that came in (the model does not change them:
        # masks and S-STE scales change only outside, in refresh_masks)
        return out, [new if fsdp_dim(s) is None else old for new, old, s in zip(new_rest, r_leaves, r_specs)]

    f = jax.shard_map(local, mesh=mesh, in_specs=(p_specs, [P()] * len(k_leaves), r_specs, *batch_specs),
                      out_specs=(out_specs(p_specs), r_specs))
    out, new_rest = f(p_leaves, k_leaves, r_leaves, *batch)
    return out, jax.tree.unflatten(r_def, new_rest), p_def


def sharded_loss_and_grads(mesh, model, xs, ys, grad_acc_in_gemm: bool = True, **dtypes):
    """mean_loss_and_grads per device inside one shard_map over the batch axes ("data" and
    "fsdp" where larger than one; the model as on one device, so the 2:4 layers compress their
    gathered weights once per step). Returns what mean_loss_and_grads does, for the whole batch:
    the loss averaged over the shards (pmean), the gradients in the parameters' stored
    shardings, and the advanced non-Param state.

    The gradient reductions are the transposes of what made each device's whole parameter
    (`_per_shard`'s expand): a psum over the axes a parameter is replicated on, a reduce-scatter
    (psum_scatter) over "fsdp" for one stored split; one per parameter, where autodiff puts
    them: after the micro-batch scan, each depending on its own gradient only, so XLA may
    start each as soon as its gradient is complete (with grad_accum = 1 the scan is inlined)
    and combine small ones. grad_acc_in_gemm: as mean_loss_and_grads'. dtypes: _per_shard's
    gather_in_compute, reduce_in_compute."""
    axes = manual_axes(mesh)
    shards = int(np.prod([mesh.shape[a] for a in axes]))

    def fn(m, pull, xs, ys):
        loss, grads, rest = mean_loss_and_grads(m, xs, ys, grad_acc_in_gemm)
        nnx.update(m, rest)
        (g_leaves,) = pull(jax.tree.leaves(grads))
        # each device's gradient is of its shard's mean loss: the mean over shards
        return jax.lax.pmean(loss, axes), [g / shards for g in g_leaves]

    (loss, g_leaves), rest, p_def = _per_shard(mesh, model, fn, lambda p_specs: (P(), p_specs), xs, ys, **dtypes)
    return loss, jax.tree.unflatten(p_def, g_leaves), rest


def _dtypes(cfg) -> dict:
    """The step's shard_map's dtype policy from the config (see _per_shard)."""
    return dict(gather_in_compute=cfg.shard_gather_dtype == "compute",
                reduce_in_compute=cfg.grad_reduce_dtype == "compute")


@functools.lru_cache(maxsize=8)
def make_train_step(graphdef, mesh, cfg):
    """The jitted optimizer step for this graphdef (a new one after set_dense_finetuning).

    Cached: runs of the same config in one process (resumed runs, --compare, tests)
    reuse the compiled step instead of compiling it again.

    state: nnx.State of (model, optimizer), sharded as train_shardings says (replicated
    without fsdp/tensor axes); donated, so it is updated in place.
    xs, ys: (grad_accum, batch, block_size) int32, batch split over data x fsdp.

    Several devices without a tensor axis (sharding.step_shard_map): the loss and gradients
    run per device inside one shard_map (sharded_loss_and_grads); otherwise under XLA's
    sharding, the 2:4 FFNs in their own shard_maps. The optimizer update and the mask refresh
    run under XLA's sharding either way.
    """
    replicated = NamedSharding(mesh, P())
    batch = batch_sharding(mesh, 3)
    per_shard = step_shard_map(cfg, mesh)

    def step(state, xs, ys):
        model, optimizer = nnx.merge(graphdef, state)
        if per_shard:
            loss, grads, rest = sharded_loss_and_grads(mesh, model, xs, ys, cfg.grad_acc_in_gemm, **_dtypes(cfg))
        else:
            loss, grads, rest = mean_loss_and_grads(model, xs, ys, cfg.grad_acc_in_gemm)
        nnx.update(model, rest)
        grad_norm = optax.tree.norm(grads)
        lr = lr_schedule(cfg)(optimizer.step[...])  # the rate this update uses, for the log
        optimizer.update(model, grads, masks=s24nnx.decay_masks(model))
        metrics = dict(loss=loss, grad_norm=grad_norm, lr=lr)
        return nnx.state((model, optimizer)), metrics

    def shardings(state):
        sh = train_shardings(graphdef, state, mesh)
        return dict(in_shardings=(sh, batch, batch), out_shardings=(sh, replicated))

    return _jit_on_first_call(step, shardings, donate_argnums=0)


@functools.lru_cache(maxsize=8)
def make_refresh_step(graphdef, mesh):
    """The jitted mask refresh, run by the loop after the steps where it is due: every
    sparse layer's mask searched again from its current weights (under XLA's sharding: the
    search is plain XLA code). Returns (state, flip rate)."""
    replicated = NamedSharding(mesh, P())

    def refresh(state):
        model, optimizer = nnx.merge(graphdef, state)
        flip_rate, _ = s24nnx.refresh_masks(model)  # every layer, now
        return nnx.state((model, optimizer)), flip_rate

    def shardings(state):
        sh = train_shardings(graphdef, state, mesh)
        return dict(in_shardings=(sh,), out_shardings=(sh, replicated))

    return _jit_on_first_call(refresh, shardings, donate_argnums=0)


@functools.lru_cache(maxsize=8)
def make_eval_step(graphdef, mesh, cfg=None):
    """The jitted validation loss. With cfg and sharding.step_shard_map, per device inside the
    step's shard_map (as the train step), so that a GPU backend's custom calls run on each
    device's shard of the batch; otherwise under XLA's sharding."""
    replicated = NamedSharding(mesh, P())
    batch = batch_sharding(mesh, 2)
    per_shard = cfg is not None and step_shard_map(cfg, mesh)

    def evaluate(state, x, y):
        model, _ = nnx.merge(graphdef, state)
        if not per_shard:
            return cross_entropy(model(x), y)  # the advanced MVUE stream is dropped: eval has no effect
        axes = manual_axes(mesh)
        loss = lambda m, pull, x, y: jax.lax.pmean(cross_entropy(m(x), y), axes)
        return _per_shard(mesh, model, loss, lambda _: P(), x, y, **_dtypes(cfg))[0]

    return _jit_on_first_call(evaluate, lambda state: dict(
        in_shardings=(train_shardings(graphdef, state, mesh), batch, batch), out_shardings=replicated))


# ----------------------------------------------------------------------------- logging

CSV_FIELDS = ["step", "train_loss", "val_loss", "val_ppl", "flip_rate", "lr", "grad_norm",
              "tok_per_s", "mfu", "elapsed_s"]


class MetricsLog:
    """metrics.csv in the run directory (one row per logged step; blank = not measured at that
    step), mirrored to TensorBoard when torch or tensorboardX provides a SummaryWriter."""

    def __init__(self, out: Path, start_step: int):
        self.path = out / "metrics.csv"
        rows = []
        if start_step and self.path.exists():  # resumed: drop rows the killed run wrote past the checkpoint
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, CSV_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.tb = None
        for module in ("torch.utils.tensorboard", "tensorboardX"):
            try:
                self.tb = __import__(module, fromlist=["SummaryWriter"]).SummaryWriter(str(out / "tb"))
                break
            except Exception:  # not installed (or broken): the CSV is the record
                pass

    def write(self, row: dict):
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v != "":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class _NoLog:
    """MetricsLog's stand-in on processes other than 0."""

    def write(self, row: dict):
        pass

    def close(self):
        pass


# ----------------------------------------------------------------------------- the run

def check_backend(cfg) -> None:
    """The configured backend must exist and run here: checked before anything is built, so
    the user sees sparse24_jax's one-line reason and fix rather than a trace through jit."""
    try:
        sparse24_jax.get_backend(cfg.backend)
    except ValueError as err:  # BackendUnavailableError is a ValueError; so is an unknown name
        raise ConfigError(f"backend = {cfg.backend!r}: {str(err).splitlines()[0]}") from None


@jax.jit
def _all_finite(state):
    """One bool: every floating array of `state` is finite (checked before each save)."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


@contextlib.contextmanager
def _ctrl_c_deferred(reraise: bool = True):
    """Ctrl-C held back until the block is done (then raised, if `reraise`): a save cut off
    inside orbax leaves its background thread writing into a closed manager, which prints a
    traceback after our one line. Only where Python's own handler is on (the main thread, and
    not a process started with SIGINT ignored)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught and reraise:
        raise KeyboardInterrupt


def _finished(out: Path, cfg, step: int) -> dict:
    """A resumed run already at its end: nothing to train, so nothing is written; the summary
    is the one the run wrote (NaN where it has none)."""
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else dict(
        method=cfg.method, steps=step, params_m=float("nan"), train_loss=float("nan"),
        val_loss=float("nan"), val_ppl=float("nan"), tok_per_s=0.0, mfu=0.0, wall_s=0.0)
    return summary | {"already_finished": True}


def train(cfg, out_dir, *, resume: bool = False, step: int | None = None, overwrite: bool = False,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train `cfg` into `out_dir` (metrics.csv, config.json, checkpoints/); returns a summary.

    resume: continue from the latest checkpoint in out_dir (exactly: same batches, same PRNG),
      or from checkpoint `step`: the later ones are then moved to checkpoints.superseded/.
      A run already at its end is left as it is (its summary is returned, "already_finished").
    overwrite: start afresh, deleting out_dir's old checkpoints.
    stop_after: stop after this step (the schedule still runs to max_steps), e.g. to split a run.

    Nothing in out_dir changes until the config, data, devices and checkpoint have been checked
    (ConfigError, DataError, CheckpointError). Raises Diverged when the loss or gradients become
    non-finite (checked at each log row and before each save: no non-finite state is saved) and
    Interrupted on Ctrl-C; both say which checkpoint to continue from.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    primary = is_primary()  # several processes: process 0 writes the run's files, all checkpoint
    t_start = time.time()
    if step is not None and not resume:
        raise ConfigError(f"--step {step} chooses the checkpoint to resume from: add --resume")
    check_backend(cfg)

    source, tokenizer = make_source(cfg)
    vocab = padded_vocab(cfg, tokenizer.vocab_size if tokenizer else 50257)
    if source.max_token() >= vocab:
        raise ConfigError(f"the data holds token id {source.max_token()} but vocab_size is {vocab}: "
                         f"--set vocab_size=N with N larger (50304 for GPT-2 tokens)")
    mesh = make_mesh(cfg, ffn_hidden(cfg))  # checks the layout's divisibility (ConfigError)
    micro_sharding, eval_sharding = batch_sharding(mesh, 3), batch_sharding(mesh, 2)

    dense_step = dense_step_of(cfg)
    end = min(cfg.max_steps, stop_after or cfg.max_steps)
    ckpt = Checkpointer(out, cfg.keep_last)
    start = None
    if resume:
        steps = ckpt.all_steps()
        if step is not None and step not in steps:
            raise CheckpointError(f"--step {step}: {ckpt.directory} holds no checkpoint of that step "
                                  f"(it has: {', '.join(map(str, steps)) or 'none'})")
        start = step if step is not None else (steps[-1] if steps else None)
        if start is None:
            log.info("resume: no checkpoint in %s, starting from step 0", out)
        elif start >= end:
            log.info("%s: the run is at step %d already, and this command trains to step %d: nothing to "
                     "do (to train longer: --resume --steps N, N > %d)", out, start, end, start)
            return _finished(out, cfg, start)
    if start is None:
        start, elapsed_before, meta = 0, 0.0, dense_finetuning_meta(False)
        graphdef, state = init_state(cfg, vocab, mesh)
    else:
        templates = {}  # fresh states to restore into, by dense fine-tuning (older checkpoints may differ)

        def template_of(dense_finetuning):
            if dense_finetuning not in templates:
                templates[dense_finetuning] = init_state(cfg, vocab, mesh, dense_finetuning=dense_finetuning)
            return templates[dense_finetuning]

        # the checkpoint's structure (dense fine-tuning already on?), restored straight into this
        # run's shardings: a checkpoint of any mesh loads on any other
        meta, graphdef, state = ckpt.restore_checked(start, template_of)
        del templates
        source.restore(meta["data"])
        elapsed_before = meta.get("elapsed_s", 0.0)
        log.info("resumed from %s at step %d", ckpt.directory, start)

    # Everything checked: from here on the run directory changes.
    if primary:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            shutil.rmtree(ckpt.directory, ignore_errors=True)
            (out / "summary.json").unlink(missing_ok=True)  # the old run's, not this one's
        aside = ckpt.set_aside_after(start)
        if aside is not None:
            log.info("checkpoints after step %d moved to %s (this run writes its own)", start, aside)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    n_params = num_params(nnx.merge(graphdef, state)[0])
    # Dense fine-tuning is on if the checkpoint had it on; the loop switches it on at dense_step
    # (or at once, when a resumed run's new max_steps puts dense_step behind it). Never back off.
    dense_finetuning = dense_finetuning_of(meta)

    log.info("model: %.2fM parameters (non-embedding), %s FFN, method %s; %d device(s) (mesh data x "
             "fsdp x tensor = %s, %d process(es)); %d tokens/step; steps %d..%d of %d%s", n_params / 1e6,
             cfg.ffn, cfg.method, mesh.size, "x".join(str(mesh.shape[a]) for a in mesh.axis_names),
             jax.process_count(),
             cfg.tokens_per_step, start, end, cfg.max_steps,
             f"; dense fine-tuning from step {dense_step}" if dense_step is not None else "")
    flops_token = flops_per_token(cfg, n_params)
    metrics_log = MetricsLog(out, start) if primary else _NoLog()
    train_step, eval_step = make_train_step(graphdef, mesh, cfg), make_eval_step(graphdef, mesh, cfg)
    refresh_step, refresh_compiled = make_refresh_step(graphdef, mesh), False

    def evaluate(state):
        losses = [eval_step(state, global_batch(x, eval_sharding), global_batch(y, eval_sharding))
                  for x, y in source.val_batches(cfg.batch_size, cfg.eval_batches)]
        return float(np.mean(jax.device_get(losses)))

    def save(step, state):
        # A copy of the data position: the save is asynchronous and serialises `meta` later,
        # when the loader has already drawn the next batches (the live dict would say so).
        ckpt.save(step, state, dict(step=step, data=copy.deepcopy(source.position),
                                    **dense_finetuning_meta(dense_finetuning),
                                    elapsed_s=elapsed_before + time.time() - t_start,
                                    config=dataclasses.asdict(cfg)))

    pbar = tqdm(total=end, initial=start, disable=not (progress and primary), desc=cfg.method,
                dynamic_ncols=True)
    say = pbar.write if primary else (lambda text: None)  # one copy of each message, not one per host
    pending, losses_since_row = [], []
    # Throughput: steps are timed between log rows, leaving out steps that compiled and the time
    # spent evaluating or checkpointing (the clock restarts after those).
    timed_steps, t_timer, tok_per_s, mfu, run_tokens, run_time = 0, None, 0.0, 0.0, 0, 0.0
    last = dict(train_loss=float("nan"), val_loss=float("nan"))

    def stop(kind, at: int, what: str):
        """kind(message) once the saves in flight are done: the last good checkpoint is known."""
        with _ctrl_c_deferred(reraise=False):
            ckpt.wait()
        good = ckpt.latest_step()
        where = (f"the last {'good ' if kind is Diverged else ''}checkpoint is step {good} in {ckpt.directory}"
                 if good is not None else
                 f"no checkpoint was saved before it (ckpt_interval = {cfg.ckpt_interval})")
        return kind(f"{what} at step {at}: training stopped; {where}", at, good)

    def check_finite(fetched):
        """Raise Diverged at the first step whose loss or gradient norm is NaN or infinite. The
        values are the ones fetched for the log anyway: the check costs no device time."""
        for ps, pm in fetched:
            bad = [f"{name} is {v:g}" for name, v in (("the loss", float(pm["loss"])),
                                                       ("the gradient norm", float(pm["grad_norm"])))
                   if not math.isfinite(v)]
            if bad:
                raise stop(Diverged, ps, " and ".join(bad))

    s = start
    try:
        for step in range(start, end):
            if dense_step is not None and step >= dense_step and not dense_finetuning:
                # Dense fine-tuning: masks off from here on (the optimizer's masked decay stops by
                # itself at the same step). New static structure, so the step functions are traced again.
                model, optimizer = nnx.merge(graphdef, state)
                s24nnx.set_dense_finetuning(model)
                graphdef, state = nnx.split((model, optimizer))
                train_step, eval_step = make_train_step(graphdef, mesh, cfg), make_eval_step(graphdef, mesh, cfg)
                dense_finetuning, t_timer = True, None
                say(f"step {step}: dense fine-tuning starts")

            batches = [source.next_batch(cfg.batch_size) for _ in range(cfg.grad_accum)]
            # every process draws the same global batch and hands over the rows its devices hold
            xs = global_batch(np.stack([b[0] for b in batches]), micro_sharding)
            ys = global_batch(np.stack([b[1] for b in batches]), micro_sharding)
            state, m = train_step(state, xs, ys)
            compiled = t_timer is None
            if cfg.method != "dense" and not dense_finetuning and (step + 1) % cfg.mask_interval == 0:
                state, flip_rate = refresh_step(state)  # masks searched again from the updated weights
                m = dict(m, flip_rate=flip_rate)
                if not refresh_compiled:  # its first call compiled: time from after it
                    compiled, refresh_compiled = True, True
            pending.append((step + 1, m))
            if compiled:  # the first step compiled: time from after it
                jax.block_until_ready(state)
                t_timer, timed_steps = time.time(), 0
            else:
                timed_steps += 1

            s = step + 1
            do_eval = s % cfg.eval_interval == 0 or s == end
            do_save = s % cfg.ckpt_interval == 0 or s == end
            if s % cfg.log_interval == 0 or do_eval or compiled:
                fetched = jax.device_get(pending)
                check_finite(fetched)
                for ps, pm in fetched:
                    losses_since_row.append(float(pm["loss"]))
                    row = {}
                    if "flip_rate" in pm:
                        row["flip_rate"] = float(pm["flip_rate"])
                    if ps % cfg.log_interval == 0 or ps == s:
                        row.update(train_loss=float(np.mean(losses_since_row)), lr=float(pm["lr"]),
                                   grad_norm=float(pm["grad_norm"]))
                        last["train_loss"] = row["train_loss"]
                        losses_since_row = []
                    if row:
                        row["step"] = ps
                        row["elapsed_s"] = round(elapsed_before + time.time() - t_start, 2)
                        if ps == s and timed_steps:  # device_get above waited for the step to finish
                            dt = time.time() - t_timer
                            tok_per_s = timed_steps * cfg.tokens_per_step / dt
                            run_tokens, run_time = run_tokens + timed_steps * cfg.tokens_per_step, run_time + dt
                            mfu = flops_token * tok_per_s / (cfg.peak_tflops * 1e12 * mesh.size)
                            row.update(tok_per_s=tok_per_s, mfu=mfu)
                        if ps == s and do_eval:
                            last["val_loss"] = row["val_loss"] = evaluate(state)
                            row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
                            say(f"step {s}: train loss {last['train_loss']:.4f}, val loss "
                                f"{row['val_loss']:.4f}, val perplexity {row['val_ppl']:.2f}")
                        metrics_log.write(row)
                pbar.update(len(pending))
                pbar.set_postfix(loss=f"{last['train_loss']:.3f}", tok_s=f"{tok_per_s:,.0f}")
                pending = []
                t_timer, timed_steps = time.time(), 0
            if do_save:
                # Never a non-finite state on disk (it would rotate good checkpoints out): the steps
                # not yet logged are checked (a sync the save makes anyway), then the state itself.
                check_finite(jax.device_get([(ps, {k: pm[k] for k in ("loss", "grad_norm")})
                                             for ps, pm in pending]))
                if not bool(_all_finite(state)):
                    raise stop(Diverged, s, "the model or optimizer state holds NaN or infinite values")
                with _ctrl_c_deferred():
                    save(s, state)
                t_timer, timed_steps = time.time(), 0
    except KeyboardInterrupt:
        raise stop(Interrupted, s, "interrupted (Ctrl-C)") from None
    finally:
        with _ctrl_c_deferred(reraise=False):  # stopping already, or done: finish the cleanup
            pbar.close()
            ckpt.wait()  # the last save must be complete before the process may exit
            ckpt.close()
            metrics_log.close()

    tok_per_s = run_tokens / run_time if run_time else tok_per_s  # the run's average
    mfu = flops_token * tok_per_s / (cfg.peak_tflops * 1e12 * mesh.size)
    summary = dict(method=cfg.method, steps=end, params_m=round(n_params / 1e6, 3),
                   train_loss=last["train_loss"], val_loss=last["val_loss"],
                   val_ppl=math.exp(min(last["val_loss"], 50.0)), tok_per_s=tok_per_s, mfu=mfu,
                   wall_s=time.time() - t_start)
    if primary:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
