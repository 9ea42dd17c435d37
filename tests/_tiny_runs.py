"""Tiny pre-trained checkpoints for the fine-tuning and export tests: 2 steps of the
trainer's own loop, one per method, made once per test session (in a temp dir)."""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

SMALL = {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 4,
         "tokenizer": "byte", "eval_batches": 1, "log_interval": 1, "warmup_steps": 1,
         "max_steps": 2, "eval_interval": 1000, "ckpt_interval": 2, "mask_interval": 1,
         "dtype": "float32"}  # float32: compiles twice as fast on CPU, and exact comparisons

FIXTURES = Path(__file__).parent / "fixtures"


@functools.lru_cache(maxsize=None)
def tiny_run(method: str) -> Path:
    from sparse24_train.config import load_config
    from sparse24_train.train import train

    out = Path(tempfile.mkdtemp(prefix=f"sparse24_tiny_{method}_"))
    atexit.register(shutil.rmtree, out, True)
    train(load_config("tiny", SMALL | {"method": method}), out, progress=False)
    return out
