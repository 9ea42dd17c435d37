"""Where the training step runs: the device mesh, the state's and the batch's shardings,
multi-host start-up and per-host batches.

The mesh has three axes, sizes from the config (`mesh_data`, `mesh_fsdp`, `mesh_tensor`):

  data    data parallel: the batch is split, the state is replicated
  fsdp    fully sharded data parallel: the batch is split too, and every parameter and
          optimizer-state array is stored split along its largest axis divisible by the
          axis size (replicated if none is); XLA all-gathers it where it is used and
          reduce-scatters its gradient
  tensor  tensor parallel for the 2:4 FFNs only (Megatron style: the first linear split by
          output features, the second by input features, one all-reduce per FFN); their
          weights, masks and optimizer moments are stored split the same way. Attention,
          embeddings and the head stay data/FSDP parallel (replicated over this axis).

The GPU backends of the 2:4 linears are opaque custom calls that XLA would run whole on
all-gathered inputs, so on several devices the model runs inside `shard_map`, in one of two
scopes (config `shard_map_scope`):

  step    (data/FSDP, tensor = 1; the default) one shard_map around the whole loss and
          gradient computation of a step (train.py): the model runs per device exactly as on
          one device, its parameters all-gathered once per step; the gradient reductions are
          those gathers' transposes (a psum, or a reduce-scatter for FSDP), one per parameter.
  layer   (always with tensor > 1) the FFN modules get a `sparse24_jax.ShardConfig` and each
          2:4 linear runs in its own shard_map (sparse24_jax/parallel.py); the rest of the
          model runs under XLA's sharding.

Multi-host: `maybe_initialize_distributed` calls `jax.distributed.initialize()` when
`JAX_COORDINATOR_ADDRESS` is set or `--distributed` is given (docs/training.md has the
launch commands). Every process then draws the same global batch (the data sources are
pure functions of seed and position) and hands over only the rows its own devices hold
(`global_batch`, built with `jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from sparse24_jax.parallel import match_varying, to_varying, varying_axes
from sparse24_jax.nnx import path_keys

from .config import ConfigError

log = logging.getLogger("sparse24_train")

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


# ----------------------------------------------------------------------------- multi-host

def maybe_initialize_distributed(force: bool = False) -> bool:
    """Start JAX's multi-process runtime when asked: `force` (the CLI's --distributed) or
    JAX_COORDINATOR_ADDRESS set. By hand: JAX_COORDINATOR_ADDRESS=host:port plus
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here); on a cluster JAX detects what is
    missing (SLURM, Open MPI, Kubernetes). Must run before anything touches the devices.
    Returns whether it initialised."""
    if not (force or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return False
    if jax.distributed.is_initialized():
        return True
    num, pid = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(num) if num else None, process_id=int(pid) if pid else None)
    log.info("distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """Process 0 writes the run's files (metrics, config, summary); all processes checkpoint."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- the mesh

def mesh_shape(cfg, n_devices: int | None = None) -> tuple[int, int, int]:
    """(data, fsdp, tensor); mesh_data = -1 takes all devices left over."""
    n = jax.device_count() if n_devices is None else n_devices
    f, t = cfg.mesh_fsdp, cfg.mesh_tensor
    if cfg.mesh_data == -1:
        if n % (f * t):
            raise ConfigError(f"{n} devices cannot be split into mesh_fsdp={f} x mesh_tensor={t} "
                              f"groups: choose sizes whose product divides {n}")
        d = n // (f * t)
    else:
        d = cfg.mesh_data
    if d * f * t > n:
        raise ConfigError(f"mesh {d}x{f}x{t} (data x fsdp x tensor) needs {d * f * t} devices, "
                          f"{n} found: make mesh_data*mesh_fsdp*mesh_tensor at most {n} "
                          f"(mesh_data=-1 takes what is left)")
    return d, f, t


def check_layout(cfg, shape: tuple[int, int, int], hidden: int) -> None:
    """The divisibility a layout needs, as ConfigErrors that say what to change."""
    d, f, t = shape
    if cfg.batch_size % (d * f):
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of mesh data x fsdp = "
                          f"{d}x{f} = {d * f} (each data/FSDP shard takes the same number of sequences)")
    if t > 1:
        from sparse24_jax.parallel import check_tensor_parallel

        n_out = 2 * hidden if cfg.ffn == "swiglu" else hidden
        for name, (n, k, mode) in {"FFN first linear": (n_out, cfg.n_embd, "column"),
                                   "FFN second linear": (cfg.n_embd, hidden, "row")}.items():
            try:
                check_tensor_parallel(n, k, t, mode, multiple=4)
            except ValueError as e:
                raise ConfigError(f"mesh_tensor={t}: {name}: {e} (ffn_hidden={hidden}, "
                                  f"n_embd={cfg.n_embd})") from None
        if cfg.ffn == "swiglu" and hidden % t:
            raise ConfigError(f"mesh_tensor={t} must divide ffn_hidden={hidden}")


def make_mesh(cfg, hidden: int | None = None) -> jax.sharding.Mesh:
    """The ("data", "fsdp", "tensor") mesh of the config, over the first d*f*t devices
    (all of them with the default mesh_data = -1)."""
    shape = mesh_shape(cfg)
    n = int(np.prod(shape))
    if n < jax.device_count():
        if jax.process_count() > 1:
            raise ConfigError(f"mesh {'x'.join(map(str, shape))} uses {n} of {jax.device_count()} devices: "
                              f"with several processes the mesh must use them all (mesh_data=-1)")
        log.warning("mesh %s uses %d of %d devices", "x".join(map(str, shape)), n, jax.device_count())
    if hidden is not None:
        check_layout(cfg, shape, hidden)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=jax.devices()[:n])


def ffn_shard(mesh, cfg=None):
    """What the FFN modules get: None on one device (plain jit) or when the whole step runs in
    one shard_map (`step_shard_map`: the model then runs as on one device), else a ShardConfig
    that runs the 2:4 linears per shard, tensor parallel when the mesh has a tensor axis of more
    than one."""
    if mesh is None or mesh.size == 1 or (cfg is not None and step_shard_map(cfg, mesh)):
        return None
    from sparse24_jax.parallel import ShardConfig

    return ShardConfig(mesh, batch_axes=BATCH_AXES, tensor_axis="tensor" if mesh.shape["tensor"] > 1 else None)


# ----------------------------------------------------------------------------- one shard_map per step

def step_shard_map(cfg, mesh) -> bool:
    """Whether the train and eval steps run the model inside one shard_map over the batch axes
    (train.py): several devices, no tensor axis, and cfg.shard_map_scope "step" ("auto": for the
    2:4 methods). Otherwise (one device, tensor > 1, scope "layer", or a dense model under
    "auto") the FFN layers get a ShardConfig and run one shard_map each
    (sparse24_jax/parallel.py), the rest under XLA's sharding.

    Why "auto" splits by method (2 x H200, 2026-11-30, docs/RESULTS.md): a dense GPT-2 774M
    step ran 10% slower in the step's shard_map than under XLA's own sharding (data parallel),
    while SR-STE under FSDP ran 1.45x faster in it than with a shard_map per 2:4 linear."""
    scope = getattr(cfg, "shard_map_scope", "auto")
    if scope == "auto":
        scope = "layer" if cfg.method == "dense" else "step"
    return mesh is not None and mesh.size > 1 and mesh.shape["tensor"] == 1 and scope == "step"


def manual_axes(mesh) -> tuple[str, ...]:
    """The batch axes of more than one device: those the step's shard_map splits the batch
    over. Axes of size one are left out, so no collective runs over a single device."""
    return tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)


def shard_specs(leaves, mesh) -> list[P]:
    """PartitionSpecs of a list of arrays: state_shardings's rule (for tensor == 1), so that
    a shard_map's in/out specs say exactly how the state is stored."""
    return [leaf_spec(getattr(x, "shape", ()), mesh.shape["fsdp"]) for x in leaves]


def fsdp_dim(spec: P) -> int | None:
    """The array axis that `spec` splits over "fsdp", if any."""
    for dim, name in enumerate(spec):
        if name == "fsdp" or (isinstance(name, tuple) and "fsdp" in name):
            return dim
    return None


def gather_fsdp(x, spec: P):
    """Inside the step's shard_map: the whole array from this device's FSDP shard (a tiled
    all_gather along the split axis; autodiff transposes it into a reduce-scatter of the
    gradient), or x itself if `spec` does not split it."""
    dim = fsdp_dim(spec)
    return x if dim is None else jax.lax.all_gather(x, "fsdp", axis=dim, tiled=True)


def compute_dtype_params(model) -> dict[tuple, object]:
    """{path of a Param: dtype} for the weights that every use in `model` casts to the
    compute dtype first: nnx.Linear kernels with a `dtype`, and the 2:4 layers' weights
    for SR-STE / STE / dense in precision "compute" (masked, then cast; S-STE's soft threshold and
    the FP8 recipe's scales read the float32 values, so not those). A gather in that dtype
    gives the model the same bits at half the bytes (`expand_param`). Embeddings stay out:
    the token embedding is looked up in float32 (only the tied head casts it)."""
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Linear) and node.dtype is not None:
            out[tuple(path) + ("kernel",)] = node.dtype
        elif (isinstance(node, s24nnx.SparseLinear) and node.dtype is not None and node.precision == "compute"
              and node.method in ("srste", "ste", "dense")):
            out[tuple(path) + ("weight",)] = node.dtype
    return out


def param_keys(tree) -> list[tuple]:
    """The path of every leaf of a pytree of Params, as compute_dtype_params's keys."""
    return [path_keys(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def expand_param(x, spec: P, axes: tuple[str, ...], gather_dtype=None, reduce_dtype=None):
    """Inside the step's shard_map: this device's stored piece of a parameter made whole and
    cast to vary over the batch `axes`, such that its gradient's reductions are the transposes:
    a reduce-scatter over "fsdp" if `spec` splits it there, then a psum over the axes it is
    replicated on (the shards summed, not whole arrays).

    gather_dtype: all-gather in this dtype (the result is cast back to x's dtype: exact only
    for a weight the model casts to it anyway, see compute_dtype_params); reduce_dtype: reduce
    the gradient in this dtype. None: x's dtype, plain autodiff of the cast and the gather;
    otherwise a custom_vjp with the same collectives."""
    gather_dtype = jnp.dtype(gather_dtype or x.dtype) if fsdp_dim(spec) is not None else jnp.dtype(x.dtype)
    reduce_dtype = jnp.dtype(reduce_dtype or x.dtype)
    if gather_dtype == x.dtype and reduce_dtype == x.dtype:
        return _expand(x, spec, axes)
    return _expand_cast(x, spec, axes, gather_dtype, reduce_dtype)


def _expand(x, spec, axes, dtype=None):
    # one cast and one gather per array: their transposes are separate collectives, which XLA
    # may schedule as soon as each gradient is complete and combine as it sees fit
    x = to_varying(x, [a for a in axes if a not in varying_axes(x)])
    y = x if dtype is None else x.astype(dtype)
    return gather_fsdp(y, spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _expand_cast(x, spec, axes, gather_dtype, reduce_dtype):
    return _expand(x, spec, axes, gather_dtype).astype(x.dtype)


def _expand_cast_fwd(x, spec, axes, gather_dtype, reduce_dtype):
    # x's dtype and mesh axes, for the cotangent (custom_vjp checks both)
    return _expand_cast(x, spec, axes, gather_dtype, reduce_dtype), match_varying(jnp.zeros((), x.dtype), x)


def _expand_cast_bwd(spec, axes, gather_dtype, reduce_dtype, proto, ct):
    ct = ct.astype(reduce_dtype)
    dim = fsdp_dim(spec)
    if dim is not None:
        ct = jax.lax.psum_scatter(ct, "fsdp", scatter_dimension=dim, tiled=True)
    replicated = tuple(a for a in axes if a not in varying_axes(proto))
    if replicated:
        ct = jax.lax.psum(ct, replicated)
    return (ct.astype(proto.dtype),)


_expand_cast.defvjp(_expand_cast_fwd, _expand_cast_bwd)


# ----------------------------------------------------------------------------- shardings

def tensor_parallel_dims(model) -> dict[tuple, int]:
    """{path of a sparse layer in the model: the weight axis its tensor-parallel mode splits}."""
    from sparse24_jax import nnx as s24nnx

    return {path: (0 if layer.tp_mode == "column" else 1)
            for path, layer in s24nnx.sparse_layers(model) if getattr(layer, "tp_mode", None)}


def leaf_spec(shape, fsdp: int, tp_dim: int | None = None, tensor: int = 1) -> P:
    """One array's PartitionSpec: "tensor" on tp_dim (a tensor-parallel FFN weight, its mask
    and its optimizer moments), then "fsdp" on the largest other axis divisible by fsdp."""
    spec = [None] * len(shape)
    if tp_dim is not None and tensor > 1 and len(shape) == 2 and shape[tp_dim] % tensor == 0:
        spec[tp_dim] = "tensor"
    if fsdp > 1:
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    return P(*spec)


def state_shardings(state, mesh, tp_dims: dict[tuple, int] | None = None):
    """NamedShardings for every array of `state` (a pytree such as the nnx.State of (model,
    optimizer); only shapes and paths are read). A leaf whose path ends with a tensor-parallel
    layer's path + weight/mask (the model's variables and the optimizer's moments alike) is
    split over "tensor" along that layer's split axis."""
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    tp_dims = tp_dims or {}

    def tp_dim(keys):
        if tensor == 1 or len(keys) < 2 or keys[-1] not in ("weight", "mask"):
            return None
        for path, dim in tp_dims.items():
            n = len(path)
            if keys[-1 - n:-1] == path:
                return dim
        return None

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, leaf_spec(shape, fsdp, tp_dim(path_keys(path)), tensor))

    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh, ndim: int) -> NamedSharding:
    """Token batches: (grad_accum, batch, T) for ndim 3, (batch, T) for 2; batch over data x fsdp."""
    return NamedSharding(mesh, P(*([None] * (ndim - 2)), BATCH_AXES, None))


def local_rows(sharding: NamedSharding, global_shape, axis: int) -> slice:
    """The contiguous range of `axis` that this process's devices hold."""
    idx = sharding.addressable_devices_indices_map(tuple(global_shape)).values()
    ranges = sorted({(s[axis].start or 0, global_shape[axis] if s[axis].stop is None else s[axis].stop)
                     for s in idx})
    lo, hi = ranges[0][0], ranges[0][0]
    for a, b in ranges:  # overlapping ranges (rows replicated over devices) are fine, holes are not
        if a > hi:
            raise ValueError(f"this process's devices hold batch rows {ranges}: not one contiguous range")
        hi = max(hi, b)
    return slice(lo, hi)


def global_batch(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global batch `x` (identical on every process) as one jax.Array: each process
    contributes only the rows its devices hold."""
    axis = x.ndim - 2
    rows = local_rows(sharding, x.shape, axis)
    local = x[(slice(None),) * axis + (rows,)]
    return jax.make_array_from_process_local_data(sharding, np.ascontiguousarray(local), x.shape)
