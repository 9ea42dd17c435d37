"""sparse24-export: a checkpoint as a Hugging Face GPT-2 model (safetensors + config.json).

    sparse24-export --checkpoint runs/124m/srste --out exports/124m-srste
    python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('exports/124m-srste')"

Tensor names and layouts are those of transformers' GPT2LMHeadModel: transformer.wte/wpe,
transformer.h.{i}.ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, transformer.ln_f.
GPT-2's Conv1D stores its weight (in, out): flax's kernels already are, the FFN's 2:4 weights
(stored (out, in)) are transposed. The model has no biases: they are written as zeros. The LM
head is tied to wte (not written; tie_word_embeddings is true).

The FFN weights are written as the model computes with them: W*mask for SR-STE/STE (dense W if
the checkpoint is in dense fine-tuning, or with --dense), beta*soft_threshold(W) for S-STE.
So an SR-STE or S-STE export keeps exactly 2 non-zeros in every 4 along the input axis.
Needs the `safetensors` package: pip install 'sparse24-jax[export]'.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .config import ConfigError
from .pretrained import add_checkpoint_args, load_pretrained, materialised_ffn

log = logging.getLogger("sparse24_train")


def _ln_eps(ln) -> float:
    return float(getattr(ln, "epsilon", 1e-6))


def gpt2_tensors(model) -> dict[str, np.ndarray]:
    """{Hugging Face name: float32 array} of a GPT (train/model.py) with a GELU FFN."""
    from sparse24_jax.nnx import SparseMLP

    def arr(x):
        return np.ascontiguousarray(np.asarray(x[...], np.float32))

    def ln(prefix, module, out):
        c = module.scale[...].shape[0]
        out[f"{prefix}.weight"] = arr(module.scale)
        out[f"{prefix}.bias"] = arr(module.bias) if getattr(module, "bias", None) is not None \
            else np.zeros(c, np.float32)

    def linear(prefix, module, out):  # nnx.Linear: kernel (in, out) = Conv1D's layout
        k = arr(module.kernel)
        out[f"{prefix}.weight"] = k
        out[f"{prefix}.bias"] = arr(module.bias) if getattr(module, "bias", None) is not None \
            else np.zeros(k.shape[1], np.float32)

    t = {"transformer.wte.weight": arr(model.wte.embedding), "transformer.wpe.weight": arr(model.wpe.embedding)}
    for i, block in enumerate(model.h):
        p = f"transformer.h.{i}"
        if not isinstance(block.mlp, SparseMLP):
            raise ConfigError(f"layer {i}'s FFN is {type(block.mlp).__name__}: only the GELU FFN (ffn = \"gelu\") "
                              f"has a GPT-2 layout; a gated FFN cannot be exported as GPT-2")
        ln(f"{p}.ln_1", block.ln_1, t)
        linear(f"{p}.attn.c_attn", block.attn.c_attn, t)
        linear(f"{p}.attn.c_proj", block.attn.c_proj, t)
        ln(f"{p}.ln_2", block.ln_2, t)
        for name, layer in (("c_fc", block.mlp.fc), ("c_proj", block.mlp.proj)):
            w = materialised_ffn(layer)  # (out, in)
            t[f"{p}.mlp.{name}.weight"] = np.ascontiguousarray(w.T)
            t[f"{p}.mlp.{name}.bias"] = np.zeros(w.shape[0], np.float32)
    ln("transformer.ln_f", model.ln_f, t)
    return t


def gpt2_config(cfg, model, vocab_size: int) -> dict:
    """transformers' GPT2Config fields for this model."""
    from .model import ffn_hidden
    mlp = model.h[0].mlp
    # sparse24_jax's SparseMLP applies the exact (erf) GELU: transformers' "gelu";
    # GPT-2's own tanh approximation is "gelu_new".
    act = "gelu_new" if getattr(mlp, "approximate", False) else "gelu"
    eot = 50256 if vocab_size > 50256 and cfg.tokenizer != "byte" else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": int(vocab_size),
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": ffn_hidden(cfg),
        "activation_function": act,
        "layer_norm_epsilon": _ln_eps(model.ln_f),
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
        "sparse24": {"method": cfg.method, "dense_weights": bool(model.h[0].mlp.fc.dense_finetuning),
                     "tokenizer": cfg.tokenizer, "precision": getattr(cfg, "precision", "compute")},
    }


def export(checkpoint, out, *, step=None, dense: bool = False, overrides=None) -> Path:
    """Write OUT/model.safetensors and OUT/config.json; returns OUT."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ConfigError("sparse24-export needs the safetensors package: pip install safetensors "
                          "(or pip install 'sparse24-jax[export]')") from None
    pre = load_pretrained(checkpoint, step=step, overrides=overrides)
    if dense:
        from sparse24_jax import nnx as s24nnx
        s24nnx.set_dense_finetuning(pre.model)
    if getattr(pre.cfg, "precision", "compute") == "fp8":
        log.warning("the model runs its FFN GEMMs in (simulated) FP8: the export holds the weights "
                    "before the per-tensor FP8 rounding, so its FFN outputs differ by that rounding")
    tensors = gpt2_tensors(pre.model)
    config = gpt2_config(pre.cfg, pre.model, pre.vocab_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    log.info("wrote %s: %d tensors, %.1fM parameters, %s FFN weights", out, len(tensors),
             sum(v.size for v in tensors.values()) / 1e6,
             "dense" if config["sparse24"]["dense_weights"] or pre.cfg.method == "dense" else "2:4")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="sparse24-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="output directory (model.safetensors, config.json)")
    p.add_argument("--dense", action="store_true", help="write the dense master FFN weights (no 2:4 projection)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field that keeps the shapes, e.g. backend=xla")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "jax"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        out = export(args.checkpoint, args.out, step=args.step, dense=args.dense, overrides=args.overrides)
    except ConfigError as e:
        print(f"sparse24-export: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
