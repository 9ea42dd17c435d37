"""sparse24-export: names and shapes of Hugging Face's GPT-2, 2:4 FFN weights, and a numpy
GPT-2 forward on the exported tensors that reproduces the JAX model's logits (and
transformers' GPT2LMHeadModel, where transformers is installed)."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("sparse24_train")
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the export needs safetensors")

from _tiny_runs import tiny_run
from sparse24_train.export import main
from sparse24_train.pretrained import load_pretrained


def gpt2_layout(c: dict) -> dict:
    C, V, P, I = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_inner"] or 4 * c["n_embd"]
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C),
              "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}"
        shapes |= {f"{p}.ln_1.weight": (C,), f"{p}.ln_1.bias": (C,), f"{p}.ln_2.weight": (C,), f"{p}.ln_2.bias": (C,),
                   f"{p}.attn.c_attn.weight": (C, 3 * C), f"{p}.attn.c_attn.bias": (3 * C,),
                   f"{p}.attn.c_proj.weight": (C, C), f"{p}.attn.c_proj.bias": (C,),
                   f"{p}.mlp.c_fc.weight": (C, I), f"{p}.mlp.c_fc.bias": (I,),
                   f"{p}.mlp.c_proj.weight": (I, C), f"{p}.mlp.c_proj.bias": (C,)}
    return shapes


def numpy_gpt2(t: dict, c: dict, ids: np.ndarray) -> np.ndarray:
    """GPT-2's forward as transformers computes it (Conv1D: x @ W + b), float64, one sequence."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps, H = c["layer_norm_epsilon"], c["n_head"]
    erf = np.vectorize(math.erf)
    gelu = {"gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
            "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
            }[c["activation_function"]]

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[p + ".weight"] + t[p + ".bias"]

    def conv1d(x, p):
        return x @ t[p + ".weight"] + t[p + ".bias"]

    T = len(ids)
    x = t["transformer.wte.weight"][ids] + t["transformer.wpe.weight"][:T]
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}"
        q, k, v = np.split(conv1d(ln(x, p + ".ln_1"), p + ".attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(T, H, -1).transpose(1, 0, 2) for a in (q, k, v))
        att = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(T, -1)
        x = x + conv1d(y, p + ".attn.c_proj")
        h = gelu(conv1d(ln(x, p + ".ln_2"), p + ".mlp.c_fc"))
        x = x + conv1d(h, p + ".mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ t["transformer.wte.weight"].T  # tied LM head


def max_nonzeros_per_4(w: np.ndarray, axis: int) -> int:
    w = np.moveaxis(w, axis, -1)
    return int((w.reshape(*w.shape[:-1], -1, 4) != 0).sum(-1).max())


@pytest.mark.parametrize("method", ["srste", "sste"])
def test_export_matches_jax_logits(tmp_path, method):
    run = tiny_run(method)
    main(["--checkpoint", str(run), "--out", str(tmp_path)])
    tensors = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu"  # SparseMLP: exact GELU
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"]) == (1, 2, 64, 64)
    assert {k: v.shape for k, v in tensors.items()} == gpt2_layout(cfg)
    assert all(v.dtype == np.float32 for v in tensors.values())

    # The FFN weights as the model computes: 2:4 along the input axis (axis 0 of Conv1D's (in, out)),
    # and for SR-STE's transposable mask along the output axis too.
    pre = load_pretrained(run, overrides={"dtype": "float32"})
    for name in ("c_fc", "c_proj"):
        w = tensors[f"transformer.h.0.mlp.{name}.weight"]
        assert max_nonzeros_per_4(w, 0) == 2 and np.count_nonzero(w) <= w.size // 2
        if method == "srste":
            assert max_nonzeros_per_4(w, 1) == 2
    layer = pre.model.h[0].mlp.fc
    if method == "sste":  # beta * soft threshold: scaled, not just masked, weights
        from sparse24_jax import soft_threshold_24
        want = float(layer.beta[...]) * np.asarray(soft_threshold_24(layer.weight[...])).T
    else:
        want = np.asarray(layer.weight[...] * layer.mask[...]).T
    np.testing.assert_allclose(tensors["transformer.h.0.mlp.c_fc.weight"], want, rtol=1e-6, atol=1e-7)

    ids = np.random.default_rng(0).integers(0, 256, size=(2, 24)).astype(np.int32)
    want = np.asarray(pre.model(ids))
    for b in range(2):
        np.testing.assert_allclose(numpy_gpt2(tensors, cfg, ids[b]), want[b], rtol=2e-4, atol=2e-4)


def test_export_dense_flag_writes_master_weights(tmp_path):
    main(["--checkpoint", str(tiny_run("srste")), "--out", str(tmp_path), "--dense"])
    tensors = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    w = tensors["transformer.h.0.mlp.c_fc.weight"]
    assert max_nonzeros_per_4(w, 0) == 4
    assert json.loads((tmp_path / "config.json").read_text())["sparse24"]["dense_weights"] is True


def test_transformers_loads_export(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed: the numpy GPT-2 "
                        "forward above checks the export instead")
    import torch
    from transformers import GPT2LMHeadModel

    run = tiny_run("srste")
    main(["--checkpoint", str(run), "--out", str(tmp_path)])
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    ids = np.random.default_rng(1).integers(0, 256, size=(2, 16))
    with torch.no_grad():
        got = hf(torch.tensor(ids)).logits.numpy()
    want = np.asarray(load_pretrained(run, overrides={"dtype": "float32"}).model(ids.astype(np.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
