"""sparse24-jax: 2:4 sparse pre-training of transformers in JAX.

Operators (pure JAX, jit-able, any leading dims), the ``sparse24_linear``
custom-VJP operation, the backend registry, and the optax transforms live
here; the Flax modules are in :mod:`sparse24_jax.nnx` and
:mod:`sparse24_jax.linen` (imported on demand). GPU backends load lazily.
"""

from .activations import gated_activation
from .backend import (Backend, BackendUnavailableError, Capabilities, available_backends, capabilities, get_backend,
                      register_backend)
from .linear import METHODS, PRECISIONS, prepare_sparse24_weight, project_weight, sparse24_linear
from .masks import TRANSPOSABLE_PATTERNS, flip_rate, mask_24, transposable_mask_24
from .mvue import mvue_24, mvue_inclusion_probs
from .parallel import ShardConfig, check_tensor_parallel, sharded_sparse24_linear
from .optim import decay_matrices_only, dense_finetune_step, masked_decay, srste_optimizer, sste_optimizer
from .packing import compress_24, decompress_24
from .sste import soft_threshold_24, sste_scale

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "ShardConfig",
    "check_tensor_parallel",
    "sharded_sparse24_linear",
    "BackendUnavailableError",
    "Capabilities",
    "capabilities",
    "METHODS",
    "PRECISIONS",
    "TRANSPOSABLE_PATTERNS",
    "available_backends",
    "compress_24",
    "decay_matrices_only",
    "decompress_24",
    "dense_finetune_step",
    "flip_rate",
    "gated_activation",
    "get_backend",
    "mask_24",
    "masked_decay",
    "mvue_24",
    "mvue_inclusion_probs",
    "prepare_sparse24_weight",
    "project_weight",
    "register_backend",
    "soft_threshold_24",
    "sparse24_linear",
    "srste_optimizer",
    "sste_optimizer",
    "sste_scale",
    "transposable_mask_24",
]
