"""FFN shapes and 2:4 operands shared by sparse_gemm.py and ffn_block.py.

(kernels.py keeps its own table: it also needs each model's layer count and parameters, and
its --shapes names are 124M, 350M, ...)
"""

from __future__ import annotations

import numpy as np

# model: (d_model, FFN hidden size); sparse_gemm.py and ffn_block.py take these names in --shapes
SHAPES = {
    "gpt2-124m": (768, 3072),
    "gpt2-350m": (1024, 4096),
    "gpt2-774m": (1280, 5120),
    "gpt2-1558m": (1600, 6400),
    "llama-7b": (4096, 11008),
}
# model: FFN layers (transformer blocks), for per-step sums of per-layer costs
LAYERS = {"gpt2-124m": 12, "gpt2-350m": 24, "gpt2-774m": 36, "gpt2-1558m": 48, "llama-7b": 32}

# a transposable 2:4 pattern (two ones in every row and column of each 4x4 block)
_BLOCK = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], bool)


def tiled_mask(n: int, k: int) -> np.ndarray:
    """An (n, k) boolean 2:4 mask, transposable (2:4 along rows and along columns), the
    same 4x4 block everywhere: a fixed pattern, so every backend and PyTorch multiply the
    same operands. n and k must be multiples of 4."""
    return np.tile(_BLOCK, (n // 4, k // 4))
