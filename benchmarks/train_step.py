"""The training step that train_scaling.py and step_profile.py time, built as sparse24_train
builds it. Both import it from here, so neither benchmark script imports the other.

sparse24_train is the installed name of the repo's train/ package (pyproject's package-dir).
In a bare checkout (no ``pip install -e .``) only ``train`` exists, on the repo root, which
this module puts on sys.path: the scripts run either way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

try:
    from sparse24_train.config import load_config
    from sparse24_train.model import ffn_hidden, flops_per_token, num_params, padded_vocab
    from sparse24_train.sharding import batch_sharding, global_batch, make_mesh
    from sparse24_train.train import init_state, make_train_step
except ImportError:  # a checkout without `pip install -e .`: train/ is the package
    from train.config import load_config
    from train.model import ffn_hidden, flops_per_token, num_params, padded_vocab
    from train.sharding import batch_sharding, global_batch, make_mesh
    from train.train import init_state, make_train_step

# what the scripts use besides prepare, from whichever package was found
__all__ = ["flops_per_token", "load_config", "num_params", "prepare"]


def prepare(cfg, seed: int = 0, like=None):
    """What one timed step needs, built as sparse24_train builds it: (mesh, graphdef, state,
    step, xs, ys), with a fresh state on cfg's mesh (or `like`, a state of the same method
    from another layout, resharded: init_state's like=) and one batch of random tokens (vocab
    padded from 256 when cfg.vocab_size is 0) already on the devices."""
    mesh = make_mesh(cfg, ffn_hidden(cfg))
    vocab = padded_vocab(cfg, 256)
    graphdef, state = init_state(cfg, vocab, mesh, like=like)
    step = make_train_step(graphdef, mesh, cfg)
    rng = np.random.default_rng(seed)
    shape = (cfg.grad_accum, cfg.batch_size, cfg.block_size)
    sh = batch_sharding(mesh, 3)
    xs = global_batch(rng.integers(0, vocab, shape, dtype=np.int32), sh)
    ys = global_batch(rng.integers(0, vocab, shape, dtype=np.int32), sh)
    return mesh, graphdef, state, step, xs, ys
