"""GPT-2 as nanoGPT builds it, in Flax NNX, with 2:4 sparse FFN weights.

Pre-LayerNorm blocks, learned position embeddings, causal self-attention, tied
input/output embeddings, no biases, no dropout (the papers' recipe, docs/algorithms.md).
Only the two FFN linears are sparse (SparseMLP / SparseGatedMLP from sparse24_jax):
attention, embeddings and the LM head stay dense, as in the papers.

Precision: parameters are float32 (the master weights the optimizer updates);
matmuls run in `cfg.dtype` (bfloat16); LayerNorm statistics, softmax and the
loss are computed in float32, as torch.autocast would do for nanoGPT.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sparse24_jax import nnx as s24nnx


def padded_vocab(cfg, tokenizer_vocab: int) -> int:
    """vocab_size = 0 means: the tokenizer's, padded up to a multiple of 64 (fast matmuls)."""
    return cfg.vocab_size or (tokenizer_vocab + 63) // 64 * 64


def ffn_hidden(cfg) -> int:
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    if cfg.ffn == "swiglu":  # LLaMA's 2/3 * 4d keeps the parameter count of a 4d GELU FFN
        return (8 * cfg.n_embd // 3 + 63) // 64 * 64
    return 4 * cfg.n_embd


def attention_implementation(choice: str, dtype) -> str:
    """The `implementation` of jax.nn.dot_product_attention for config field `attention`.

    "auto" picks cuDNN's fused (flash) attention on an NVIDIA GPU for 16-bit inputs: XLA's
    own attention writes the (B, heads, T, T) scores and probabilities to memory (its
    softmax was the largest kernel of an early 774M profile, docs/RESULTS.md). Elsewhere
    (CPU, float32) it is XLA's. "cudnn" insists, with a clear error off the GPU.
    """
    on_gpu = jax.default_backend() == "gpu"
    if choice == "cudnn" and not on_gpu:
        raise ValueError(f"attention = 'cudnn' needs an NVIDIA GPU, and JAX's backend here is "
                         f"{jax.default_backend()!r}: use attention = 'auto' or 'xla'")
    if choice == "auto":
        return "cudnn" if on_gpu and jnp.dtype(dtype).itemsize == 2 else "xla"
    return choice


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg, dtype, init, proj_init, rngs):
        self.n_head = cfg.n_head
        self.implementation = attention_implementation(cfg.attention, dtype)
        self.c_attn = nnx.Linear(cfg.n_embd, 3 * cfg.n_embd, use_bias=False, dtype=dtype,
                                 kernel_init=init, rngs=rngs)
        self.c_proj = nnx.Linear(cfg.n_embd, cfg.n_embd, use_bias=False, dtype=dtype,
                                 kernel_init=proj_init, rngs=rngs)

    def __call__(self, x):
        B, T, C = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (t.reshape(B, T, self.n_head, C // self.n_head) for t in (q, k, v))
        # Softmax in float32 internally (XLA and cuDNN alike), causal mask, no dropout.
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=self.implementation)
        return self.c_proj(y.reshape(B, T, C))


class Block(nnx.Module):
    def __init__(self, cfg, dtype, rngs, shard=None, search_masks=True):
        init = nnx.initializers.normal(0.02)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), since every layer adds
        # two of them to the residual stream (nanoGPT's c_proj init).
        proj_init = nnx.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer))
        self.dtype = dtype
        self.ln_1 = nnx.LayerNorm(cfg.n_embd, use_bias=False, rngs=rngs)
        self.attn = CausalSelfAttention(cfg, dtype, init, proj_init, rngs)
        self.ln_2 = nnx.LayerNorm(cfg.n_embd, use_bias=False, rngs=rngs)
        common = dict(method=cfg.method, backend=cfg.backend, mask_interval=cfg.mask_interval,
                      mvue=cfg.mvue, precision=cfg.precision, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=init, out_kernel_init=proj_init, search_mask=search_masks, rngs=rngs)
        if shard is not None:  # several devices: the 2:4 linears run per shard (train/sharding.py)
            common["shard"] = shard
        common["mvue"] = (cfg.mvue and cfg.mvue_fc, cfg.mvue)  # (fc's, proj's)
        if cfg.ffn == "swiglu":
            self.mlp = s24nnx.SparseGatedMLP(cfg.n_embd, ffn_hidden(cfg), activation="swiglu", **common)
        else:
            self.mlp = s24nnx.SparseMLP(cfg.n_embd, ffn_hidden(cfg), **common)

    def __call__(self, x):
        # The residual stream stays float32; each branch computes in `dtype`.
        x = x + self.attn(self.ln_1(x).astype(self.dtype)).astype(x.dtype)
        x = x + self.mlp(self.ln_2(x).astype(self.dtype)).astype(x.dtype)
        return x


class GPT(nnx.Module):
    """search_masks=False: the 2:4 layers start with placeholder masks, for
    sparse24_jax.nnx.search_masks to fill after the (jitted) init."""

    def __init__(self, cfg, vocab_size: int, *, rngs: nnx.Rngs, shard=None, search_masks: bool = True):
        dtype = jnp.dtype(cfg.dtype)
        self.dtype = dtype
        init = nnx.initializers.normal(0.02)
        self.wte = nnx.Embed(vocab_size, cfg.n_embd, embedding_init=init, rngs=rngs)
        self.wpe = nnx.Embed(cfg.block_size, cfg.n_embd, embedding_init=init, rngs=rngs)
        self.h = nnx.List([Block(cfg, dtype, rngs, shard, search_masks) for _ in range(cfg.n_layer)])
        self.ln_f = nnx.LayerNorm(cfg.n_embd, use_bias=False, rngs=rngs)
        self.block_size = cfg.block_size

    def __call__(self, idx):
        """Token ids (B, T) -> float32 logits (B, T, vocab)."""
        B, T = idx.shape
        assert T <= self.block_size, f"sequence length {T} > block_size {self.block_size}"
        x = self.wte(idx) + self.wpe(jnp.arange(T))[None]
        for block in self.h:
            x = block(x)
        x = self.ln_f(x).astype(self.dtype)
        # Tied LM head: the token embedding matrix, transposed. Logits in float32 for the loss.
        return lm_head(x, self.wte.embedding[...].astype(self.dtype))


@jax.custom_vjp
def lm_head(x, w):
    """Logits ``x @ w.T`` accumulated and returned in float32, with a backward
    in ``x.dtype``: the float32 cotangent of the logits is rounded to x.dtype
    before the two gradient GEMMs, as torch.autocast's bf16 LM head does.

    Why: autodiff of ``einsum(..., preferred_element_type=float32)`` multiplies
    the float32 cotangent with the bf16 operands, so XLA runs both gradient
    GEMMs in float32 (TF32 on a GPU), about 7% of a GPT-2 774M step
    (docs/RESULTS.md). With float32 x and w this is the plain einsum's VJP.
    """
    return jnp.einsum("btc,vc->btv", x, w, preferred_element_type=jnp.float32)


def _lm_head_fwd(x, w):
    return lm_head(x, w), (x, w)


def _lm_head_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = jnp.einsum("btv,vc->btc", g, w, preferred_element_type=jnp.float32)
    dw = jnp.einsum("btv,btc->vc", g, x, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


lm_head.defvjp(_lm_head_fwd, _lm_head_bwd)


def cross_entropy(logits, targets):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()


def num_params(model, non_embedding: bool = True) -> int:
    """Trainable parameters (masks and S-STE scales are not); like nanoGPT, the position
    embeddings are left out by default (the token embeddings are shared with the head)."""
    n = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return n - (model.wpe.embedding.size if non_embedding else 0)


def flops_per_token(cfg, n_params: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B as nanoGPT uses it."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
