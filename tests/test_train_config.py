"""sparse24_train: configs, parameter counts, data sources and the errors users see.

Fast: nothing here trains; GPT-2 sizes are built abstractly (nnx.eval_shape)."""

import json
import re

import numpy as np
import pytest

pytest.importorskip("sparse24_train")
from flax import nnx

from sparse24_train import cli
from sparse24_train.config import ConfigError, load_config
from sparse24_train.data import ArraySource, DataError, get_tokenizer, make_source
from sparse24_train.model import GPT, num_params

SIZES = {  # config: ((n_layer, n_head, n_embd), parameters in millions, nanoGPT's count)
    "gpt2-124m": ((12, 12, 768), 124.4),
    "gpt2-350m": ((24, 16, 1024), 354.9),
    "gpt2-774m": ((36, 20, 1280), 773.9),
    "gpt2-1558m": ((48, 25, 1600), 1557.7),
}


@pytest.mark.parametrize("name", SIZES)
def test_gpt2_configs_shapes_and_counts(name):
    cfg = load_config(name)
    shape, millions = SIZES[name]
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == shape
    assert (cfg.block_size, cfg.vocab_size, cfg.method) == (1024, 50304, "srste")
    assert (cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_steps) == (1.5e-4, 1e-5, 3000, 300000)
    assert cfg.batch_size * cfg.grad_accum == 512 and cfg.tokens_per_step == 512 * 1024
    assert round(cfg.max_steps * cfg.dense_fraction) == 250000
    if name == "gpt2-124m":  # the others cost seconds each to trace; their shapes are checked above
        model = nnx.eval_shape(lambda: GPT(cfg, cfg.vocab_size, rngs=nnx.Rngs(0, sparse24=1)))
        total = num_params(model, non_embedding=False)
        assert abs(total / 1e6 - millions) / millions < 0.01, total
        fc = model.h[0].mlp.fc.weight
        assert fc.shape == (4 * 768, 768)  # (out, in): the 2:4 groups run along the input axis


def test_swiglu_option_builds():
    cfg = load_config("tiny", {"ffn": "swiglu", "n_layer": 1, "method": "sste"})
    model = nnx.eval_shape(lambda: GPT(cfg, 256, rngs=nnx.Rngs(0, sparse24=1)))
    assert model.h[0].mlp.gate_up.weight.shape == (2 * 384, 128)


@pytest.mark.parametrize("ffn, first", [("gelu", "fc"), ("swiglu", "gate_up")])
@pytest.mark.parametrize("overrides, want", [([], (True, True)), (["mvue_fc=false"], (False, True)),
                                             (["mvue=false"], (False, False)),
                                             (["mvue=false", "mvue_fc=true"], (False, False))])
def test_mvue_per_ffn_linear(ffn, first, overrides, want):
    """mvue_fc=false takes the MVUE off the FFN's first linear only (its weight gradient a
    dense GEMM of the exact dZ1); mvue=false takes it off both."""
    cfg = load_config("tiny", [f"ffn={ffn}", "n_layer=1", *overrides])
    mlp = nnx.eval_shape(lambda: GPT(cfg, 256, rngs=nnx.Rngs(0, sparse24=1))).h[0].mlp
    assert (getattr(mlp, first).mvue, mlp.proj.mvue) == want


def test_overrides_and_bad_field():
    cfg = load_config("tiny", ["n_layer=3", "learning_rate=3e-4", "mvue=false", "method=dense"])
    assert (cfg.n_layer, cfg.learning_rate, cfg.mvue, cfg.method) == (3, 3e-4, False, "dense")
    with pytest.raises(ConfigError, match="unknown config field 'n_layr'.*Did you mean n_layer"):
        load_config("tiny", ["n_layr=3"])
    with pytest.raises(ConfigError, match="expected a int"):
        load_config("tiny", ["n_layer=three"])
    with pytest.raises(ConfigError, match="method.*must be one of"):
        load_config("tiny", ["method=magic"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-config")


def test_precision_bf16_is_read_as_compute(tmp_path):
    # "bf16", precision's earlier name, in config files, --set and run directories saved before
    # (tests/test_train_loop.py resumes such a run): mapped to "compute" when a Config is made.
    import dataclasses

    from sparse24_jax.fp8 import PRECISION_ALIASES
    from sparse24_train.config import ALIASES, Config
    from sparse24_train.pretrained import config_from_dict

    assert ALIASES["precision"] == PRECISION_ALIASES  # the library maps it the same way
    assert Config().precision == "compute" and Config(precision="bf16").precision == "compute"
    assert load_config("tiny", ["precision=bf16"]).precision == "compute"
    assert dataclasses.replace(Config(), precision="bf16") == Config()
    assert config_from_dict({"precision": "bf16"}).precision == "compute"
    old = tmp_path / "old.toml"
    old.write_text('[model]\nprecision = "bf16"\n')
    assert load_config(str(old)).precision == "compute"
    (tmp_path / "config.json").write_text(json.dumps({"precision": "bf16", "n_layer": 1}))
    args = cli.parse_args(["--out", str(tmp_path), "--resume"])
    assert cli.resolve_config(args, tmp_path).precision == "compute"
    with pytest.raises(ConfigError, match="^precision = 'fp16': must be one of compute, fp8$"):
        load_config("tiny", ["precision=fp16"])


def _cli_error(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_clear_errors(capsys, tmp_path, monkeypatch):
    err = _cli_error(capsys, "--set", "n_layr=2", "--out", str(tmp_path))
    assert "unknown config field 'n_layr'" in err
    err = _cli_error(capsys, "--set", f"data={tmp_path / 'nope'}", "--out", str(tmp_path))
    assert "no such directory" in err and "train.bin" in err
    (tmp_path / "owt").mkdir()
    err = _cli_error(capsys, "--set", f"data={tmp_path / 'owt'}", "--out", str(tmp_path))
    assert "train.bin, val.bin not found" in err and "uint16" in err
    err = _cli_error(capsys, "--set", "data=tfds:no_such_dataset_xyz", "--out", str(tmp_path))
    assert "no_such_dataset_xyz" in err or "tensorflow-datasets" in err
    monkeypatch.setenv("SPARSE24_TOKENIZER_DIR", str(tmp_path / "tok"))
    monkeypatch.setenv("HOME", str(tmp_path))
    err = _cli_error(capsys, "--set", "tokenizer=gpt2", "--out", str(tmp_path))
    assert "vocab.json and merges.txt" in err and str(tmp_path / "tok") in err


def test_byte_fallback_and_gpt2_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE24_TOKENIZER_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_tokenizer("auto").name == "byte"
    # A toy GPT-2-format vocabulary: bytes, then merges "h e" -> "he", "he llo"... (Ġ = space)
    from sparse24_train.data import _bytes_to_unicode
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "hello")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges))
    tok = get_tokenizer("gpt2")
    ids = tok.encode("hello hello!")
    assert ids == [vocab["hello"], vocab["Ġhello"], ord("!")]
    assert tok.decode(ids) == "hello hello!" and tok.eot == vocab["<|endoftext|>"]


def test_bin_source_deterministic_and_resumable(tmp_path):
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 5000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 50257, 1000, dtype=np.uint16).tofile(tmp_path / "val.bin")
    cfg = load_config("tiny", {"data": str(tmp_path), "block_size": 16})
    src, tok = make_source(cfg)
    assert tok is None and isinstance(src, ArraySource)
    batches = [src.next_batch(4) for _ in range(3)]
    x, y = batches[0]
    assert x.shape == (4, 16) and x.dtype == np.int32 and (x[:, 1:] == y[:, :-1]).all()
    again, _ = make_source(cfg)
    again.restore({"batches": 2})  # resume after two batches: the third is the same
    np.testing.assert_array_equal(again.next_batch(4)[0], batches[2][0])
    v1 = [b[0] for b in src.val_batches(4, 2)]
    v2 = [b[0] for b in again.val_batches(4, 2)]
    np.testing.assert_array_equal(v1, v2)


def test_embedded_corpus_is_english():
    cfg = load_config("tiny", {"tokenizer": "byte"})
    src, tok = make_source(cfg)
    text = tok.decode(src.train[:2000])
    assert len(src.train) > 400_000 and " the " in text


def test_tune_decay_rule():
    from sparse24_train.tune_decay import peaks_then_falls, recommend
    rising = [0.05, 0.08, 0.1, 0.12, 0.13, 0.14, 0.15, 0.16]
    flat_high = [0.1, 0.12, 0.12, 0.11, 0.12, 0.12, 0.11, 0.12]
    healthy = [0.1, 0.15, 0.13, 0.11, 0.09, 0.07, 0.05, 0.04]
    assert not peaks_then_falls(rising) and not peaks_then_falls(flat_high) and peaks_then_falls(healthy)
    assert recommend({0.0: rising, 6e-5: flat_high, 2e-4: healthy, 6e-4: healthy}) == (2e-4, True)
    assert recommend({0.0: rising, 6e-5: flat_high}) == (6e-5, False)


def test_tfds_source_packs_and_resumes(monkeypatch):
    # A stand-in for tensorflow_datasets (not installed here): the source's packing and resume logic.
    import sys
    import types

    texts = {"train": [f"example {i} " * (i % 7 + 1) for i in range(200)], "validation": ["held out text"] * 50}

    class Dataset:
        def __init__(self, items):
            self.items = items

        def skip(self, n):
            return Dataset(self.items[n:])

    class Builder:
        def __init__(self, name, data_dir=None):
            if name != "toy":
                raise ValueError(f"Dataset {name} not found.")
            self.info = types.SimpleNamespace(splits={"train": None, "validation": None})

        def is_prepared(self):
            return True

        def as_dataset(self, split, shuffle_files):
            return Dataset([{"text": t.encode()} for t in texts[split]])

    fake = types.SimpleNamespace(builder=Builder, as_numpy=lambda ds: iter(ds.items))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    cfg = load_config("tiny", {"data": "tfds:toy", "tokenizer": "byte", "block_size": 16})
    src, tok = make_source(cfg)
    batches, positions = [], []
    for _ in range(5):
        positions.append(dict(src.position))
        batches.append(src.next_batch(3))
    stream = "".join(t + "\n\n" for t in texts["train"])  # byte tokens: examples joined by "\n\n"
    assert tok.decode(np.concatenate([batches[0][0][0], batches[0][1][0][-1:]])) == stream[:17]
    again, _ = make_source(cfg)
    again.restore(positions[3])  # resume mid-example
    np.testing.assert_array_equal(again.next_batch(3)[0], batches[3][0])
    assert next(iter(src.val_batches(2, 1)))[0].shape == (2, 16)
    with pytest.raises(DataError, match="unknown TFDS dataset 'nope'"):
        make_source(load_config("tiny", {"data": "tfds:nope", "tokenizer": "byte"}))


def test_attention_choice(monkeypatch):
    """'auto' is cuDNN's fused attention only on a GPU in 16-bit; 'cudnn' off the GPU is a clear error."""
    import jax
    import jax.numpy as jnp

    from sparse24_train.model import attention_implementation

    assert load_config("tiny").attention == "auto"
    with pytest.raises(ConfigError, match="attention"):
        load_config("tiny", ["attention=flash"])
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert attention_implementation("auto", jnp.bfloat16) == "xla"
    assert attention_implementation("xla", jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match="needs an NVIDIA GPU.*'auto' or 'xla'"):
        attention_implementation("cudnn", jnp.bfloat16)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_implementation("auto", jnp.bfloat16) == "cudnn"
    assert attention_implementation("auto", jnp.float32) == "xla"  # cuDNN's flash kernels are 16-bit
    assert attention_implementation("cudnn", jnp.float16) == "cudnn"


def test_bad_numbers_are_refused():
    for bad, says in (("learning_rate=-1", "learning_rate = -1.0 must be > 0"),
                      ("learning_rate=nan", "learning_rate = nan must be > 0"),
                      ("beta2=1", "beta2 = 1.0 must be in [0, 1)"), ("seed=-3", "seed = -3 must be >= 0"),
                      ("grad_clip=0", "grad_clip = 0.0 must be > 0")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            load_config("tiny", [bad])


def test_cli_one_line_errors_before_anything_is_built(capsys, tmp_path, monkeypatch):
    """Each bad input: exit 2 and one line, before a model is built or a run trains."""
    from sparse24_train import train as train_mod

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached the model build / the training loop")

    monkeypatch.setattr(train_mod, "init_state", must_not_run)
    for size in (0, 3, 1001):  # empty, 3 bytes, an odd size: not uint16 tokens
        d = tmp_path / f"bin{size}"
        d.mkdir()
        (d / "train.bin").write_bytes(b"\x01" * size)
        np.zeros(100, np.uint16).tofile(d / "val.bin")
        err = _cli_error(capsys, "--set", f"data={d}", "--out", str(tmp_path / "o"))
        assert "uint16" in err and str(d / "train.bin") in err and len(err.strip().splitlines()) == 1, err
    for backend, says in (("cusparselt", "unavailable here"), ("triton", "unavailable here"),
                          ("foo", "unknown backend 'foo'")):
        err = _cli_error(capsys, "--set", f"backend={backend}", "--out", str(tmp_path / "o"))
        assert err.startswith(f"sparse24-train: error: backend = '{backend}'") and says in err
        assert len(err.strip().splitlines()) == 1 and "xla" in err, err
    monkeypatch.setattr(train_mod, "train", must_not_run)  # not even the first (dense) run
    err = _cli_error(capsys, "--compare", "dense,foo", "--out", str(tmp_path / "o"))
    assert "method = 'foo'" in err and len(err.strip().splitlines()) == 1
    err = _cli_error(capsys, "--set", "learning_rate=-1", "--out", str(tmp_path / "o"))
    assert "learning_rate = -1.0 must be > 0" in err
    assert not (tmp_path / "o").exists()


def test_tune_decay_bad_alphas(capsys, monkeypatch):
    from sparse24_train import train as train_mod
    from sparse24_train import tune_decay

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    for alphas in ("abc", "-1", "0,nan", ","):
        with pytest.raises(SystemExit) as e:
            tune_decay.main(["--alphas", alphas, "--steps", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("sparse24-tune-decay: error: --alphas"), err
        assert len(err.strip().splitlines()) == 1
