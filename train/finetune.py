"""sparse24-finetune: fine-tune a pre-trained checkpoint on a GLUE task or SQuAD v1.1.

    sparse24-finetune --task glue/mrpc --checkpoint runs/124m/srste --data-dir ~/tensorflow_datasets
    sparse24-finetune --task squad --checkpoint runs/124m/sste --out runs/124m/sste/squad
    sparse24-finetune --task glue/sst2 --checkpoint runs/tiny --data-dir tests/fixtures --max-steps 2

The recipe (docs/algorithms.md, section 8): AdamW, lr 5e-6, linear warm-up over the first 10% of the steps,
then cosine to 0; batch 32; 3 epochs (5 for MRPC and WNLI); GLUE sequences of at most
128 tokens, SQuAD windows of 384 tokens with a stride of 128 (both capped at the model's
block_size). The head: GLUE a linear layer on the hidden state of the last non-pad token
(as GPT-2 sequence classifiers do; one output, trained with MSE, for STS-B), SQuAD a
linear layer giving start and end logits per token.

Sparsity: SR-STE/STE checkpoints are fine-tuned and evaluated with dense weights (their
masks are switched off, as after the pre-training's dense fine-tuning); S-STE checkpoints
keep their 2:4 weights (beta * soft threshold) throughout. --weights dense|sparse overrides.

Writes OUT/results.json (metrics, settings, steps, time) and prints the metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparse24_jax as s24
from sparse24_jax import nnx as s24nnx

from . import metrics as M
from .checkpoint import dense_finetuning_of
from .config import ConfigError
from .data import DataError, get_tokenizer
from .pretrained import add_checkpoint_args, hidden_states, load_pretrained
from .tasks import (SQUAD_EPOCHS, Encoded, best_spans, encode_glue, encode_squad, load_split, parse_task,
                    task_path)

log = logging.getLogger("sparse24_train")

GLUE_MAX_LEN, SQUAD_MAX_LEN, SQUAD_STRIDE = 128, 384, 128


class TaskModel(nnx.Module):
    """The pre-trained GPT plus a task head: "classify" / "regress" read the last non-pad
    token's hidden state, "span" gives (start, end) logits at every token."""

    def __init__(self, gpt, kind: str, n_out: int, *, rngs: nnx.Rngs):
        self.gpt, self.kind = gpt, kind
        c = gpt.wte.embedding.shape[1]
        # Hugging Face's GPT2ForSequenceClassification has no bias on its score layer;
        # GPT2ForQuestionAnswering's qa_outputs has one.
        self.head = nnx.Linear(c, n_out, use_bias=kind == "span",
                               kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def __call__(self, ids, lengths):
        h = hidden_states(self.gpt, ids)  # (B, T, C) float32
        if self.kind == "span":
            return self.head(h)  # (B, T, 2)
        last = h[jnp.arange(ids.shape[0]), jnp.maximum(lengths - 1, 0)]
        return self.head(last)  # (B, n_out)


def loss_fn_of(kind):
    def loss(out, lengths, labels, weights):
        if kind == "classify":
            per = optax.softmax_cross_entropy_with_integer_labels(out, labels)
        elif kind == "regress":
            per = (out[:, 0] - labels) ** 2
        else:  # span: positions past the sequence cannot be predicted
            valid = jnp.arange(out.shape[1])[None, :] < lengths[:, None]
            logits = jnp.where(valid[..., None], out, -1e9)
            per = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits[..., 0], labels[:, 0])
                         + optax.softmax_cross_entropy_with_integer_labels(logits[..., 1], labels[:, 1]))
        return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss


def make_optimizer(lr: float, total_steps: int, warmup: float, weight_decay: float, clip: float = 1.0):
    """Hugging Face's get_cosine_schedule_with_warmup: 0 -> lr linearly over warmup*total
    steps, then cosine to 0 at total; AdamW (decay on matrices only), gradients clipped at 1."""
    warm = int(math.ceil(warmup * total_steps))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(total_steps, warm + 1), end_value=0.0)
    # clip -> AdamW with optax's default betas (Hugging Face's Trainer), decay on matrices only
    return s24.sste_optimizer(sched, weight_decay=weight_decay, b1=0.9, b2=0.999, clip_norm=clip,
                              weight_decay_mask=s24.decay_matrices_only)


def make_steps(graphdef, kind):
    loss_of = loss_fn_of(kind)

    @jax.jit
    def train_step(state, ids, lengths, labels, weights):
        model, optimizer = nnx.merge(graphdef, state)
        gdef, params, rest = nnx.split(model, nnx.Param, ...)
        # `rest` comes back with the layers' MVUE key streams advanced
        loss, grads, rest = s24nnx.value_and_grad(
            lambda m: loss_of(m(ids, lengths), lengths, labels, weights), gdef, params, rest)
        nnx.update(model, rest)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def predict(state, ids, lengths):
        model, _ = nnx.merge(graphdef, state)
        return model(ids, lengths)

    return train_step, predict


def batches(enc: Encoded, batch: int, rng=None):
    """Fixed-shape batches (the last one padded with weight-0 rows): one compilation."""
    n = len(enc.ids)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n, batch):
        idx = order[s:s + batch]
        w = np.ones(batch, np.float32)
        if len(idx) < batch:
            w[len(idx):] = 0.0
            idx = np.concatenate([idx, np.full(batch - len(idx), idx[0])])
        labels = enc.labels[idx] if enc.labels is not None else None
        yield idx, enc.ids[idx], enc.lengths[idx], labels, w


def evaluate_glue(task, predict, state, enc, batch):
    outs = []
    for idx, ids, lengths, _, w in batches(enc, batch):
        outs.append(np.asarray(predict(state, ids, lengths))[w > 0])
    out = np.concatenate(outs)
    preds = out[:, 0] if task.num_labels == 1 else out.argmax(-1)
    return M.glue_metrics(task.name, preds, enc.labels), preds


def evaluate_squad(predict, state, enc, examples, batch):
    starts, ends = [], []
    for idx, ids, lengths, _, w in batches(enc, batch):
        out = np.asarray(predict(state, ids, lengths))[w > 0]
        starts.append(out[..., 0])
        ends.append(out[..., 1])
    answers = best_spans(np.concatenate(starts), np.concatenate(ends), enc, examples)
    refs = {ex["id"]: list(ex["answers"]["text"]) for ex in examples}
    return M.squad_metrics(answers, refs), answers


def finetune(task_name: str, checkpoint, *, data_dir=None, data_format="auto", out=None, step=None,
             lr=5e-6, warmup=0.1, epochs=None, batch_size=32, max_length=None, stride=SQUAD_STRIDE,
             max_steps=None, weight_decay=0.0, seed=0, weights="auto", overrides=None,
             limit_train=None, limit_eval=None, progress=True) -> dict:
    """Fine-tune and evaluate; returns (and writes to out/results.json) the metrics."""
    t0 = time.time()
    task = parse_task(task_name)
    for name, value, ok in (("--batch-size", batch_size, batch_size >= 1),
                            ("--lr", lr, math.isfinite(lr) and lr > 0),
                            ("--epochs", epochs, epochs is None or epochs >= 1),
                            ("--max-steps", max_steps, max_steps is None or max_steps >= 1)):
        if not ok:
            raise ConfigError(f"{name} {value}: must be a positive number")
    # The data first: a missing dataset is reported before any model is built.
    train_ex = load_split(task, "train", data_dir, data_format)[:limit_train]
    splits = ("validation",) if task == "squad" else task.eval_splits
    eval_sets = {s: load_split(task, s, data_dir, data_format)[:limit_eval] for s in splits}
    pre = load_pretrained(checkpoint, step=step, overrides=overrides)
    cfg, gpt = pre.cfg, pre.model
    tok = get_tokenizer(cfg.tokenizer)
    if tok.vocab_size > pre.vocab_size:
        raise ConfigError(f"the tokenizer ({tok.name}, {tok.vocab_size} tokens) does not fit the model's "
                          f"vocabulary ({pre.vocab_size}): use the tokenizer the model was trained with "
                          f"(--set tokenizer=...)")
    if tok.name == "byte" and cfg.tokenizer != "byte" and pre.vocab_size > 512:
        raise ConfigError(f"the model has a {pre.vocab_size}-token vocabulary (GPT-2 BPE) but no GPT-2 "
                          f"tokenizer files were found: put vocab.json and merges.txt in "
                          f"$SPARSE24_TOKENIZER_DIR or ~/.cache/sparse24_jax/gpt2/ (see sparse24_train/data.py)")

    if weights == "auto":
        weights = "sparse" if cfg.method == "sste" else "dense"
    if weights not in ("dense", "sparse"):
        raise ConfigError(f"--weights {weights!r}: use auto, dense or sparse")
    if weights == "dense":
        s24nnx.set_dense_finetuning(gpt)   # SR-STE: the dense weights, as in dense fine-tuning
    elif dense_finetuning_of(pre.meta) and cfg.method != "dense":
        log.warning("the checkpoint was already in dense fine-tuning; --weights sparse applies its last masks")
        s24nnx.set_dense_finetuning(gpt, on=False)

    default_len = SQUAD_MAX_LEN if task == "squad" else GLUE_MAX_LEN
    max_len = min(max_length or default_len, cfg.block_size)
    if max_len < (max_length or default_len):
        log.warning("sequences capped at the model's block_size %d (the recipe uses %d)",
                    cfg.block_size, max_length or default_len)

    if task == "squad":
        train_enc = encode_squad(train_ex, tok, max_len, stride, train=True)
        eval_enc = {k: encode_squad(v, tok, max_len, stride, train=False) for k, v in eval_sets.items()}
        kind, n_out, n_epochs = "span", 2, epochs or SQUAD_EPOCHS
    else:
        train_enc = encode_glue(task, train_ex, tok, max_len)
        eval_enc = {k: encode_glue(task, v, tok, max_len) for k, v in eval_sets.items()}
        kind = "regress" if task.num_labels == 1 else "classify"
        n_out, n_epochs = task.num_labels, epochs or task.epochs

    steps_per_epoch = math.ceil(len(train_enc.ids) / batch_size)
    total = n_epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    if total < 1:  # else the run "succeeds" with an untrained head and no loss to report
        raise ConfigError(f"nothing to train: {len(train_enc.ids)} training rows, {n_epochs} epochs, "
                          f"--max-steps {max_steps}; give at least one step and one example")
    model = TaskModel(gpt, kind, n_out, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, make_optimizer(lr, total, warmup, weight_decay), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    train_step, predict = make_steps(graphdef, kind)
    log.info("%s: %d training examples (%d rows of %d tokens), %d steps (%d epochs of %d, batch %d), "
             "lr %g, %s weights", task_path(task), len(train_ex), len(train_enc.ids), max_len, total,
             n_epochs, steps_per_epoch, batch_size, lr, weights)

    from tqdm.auto import tqdm
    rng = np.random.default_rng(seed)
    done, losses = 0, []
    pbar = tqdm(total=total, disable=not progress, desc=task_path(task), dynamic_ncols=True)
    while done < total:
        for _, ids, lengths, labels, w in batches(train_enc, batch_size, rng):
            state, loss = train_step(state, ids, lengths, labels, w)
            losses.append(loss)
            done += 1
            pbar.update(1)
            if done % 20 == 0:
                pbar.set_postfix(loss=f"{float(loss):.4f}")
            if done >= total:
                break
    pbar.close()
    losses = [float(x) for x in jax.device_get(losses)]
    t_train = time.time() - t0

    results = {}
    for split, enc in eval_enc.items():
        if task == "squad":
            results[split], _ = evaluate_squad(predict, state, enc, eval_sets[split], batch_size)
        else:
            results[split], _ = evaluate_glue(task, predict, state, enc, batch_size)
    summary = dict(task=task_path(task), checkpoint=str(pre.run_dir), step=pre.step, method=cfg.method,
                   weights=weights, metrics=results, train_steps=total, epochs=n_epochs,
                   batch_size=batch_size, lr=lr, warmup=warmup, max_length=max_len,
                   stride=stride if task == "squad" else None,
                   n_train=len(train_ex), n_eval={k: len(v) for k, v in eval_sets.items()},
                   first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                   train_s=round(t_train, 2), wall_s=round(time.time() - t0, 2))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_metrics(summary) -> str:
    """One line: GLUE metrics in [0, 1] with 4 decimals, SQuAD's (percent) with 2."""
    digits = 2 if summary["task"] == "squad" else 4
    parts = [f"{split}: " + ", ".join(f"{k} {v:.{digits}f}" for k, v in m.items())
             for split, m in summary["metrics"].items()]
    return f"{summary['task']} ({summary['method']}, {summary['weights']} weights): " + "; ".join(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="sparse24-finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="glue/NAME (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) or squad")
    add_checkpoint_args(p)
    p.add_argument("--data-dir", help="TFDS data_dir, or a folder of JSONL files TASK/SPLIT.jsonl")
    p.add_argument("--data-format", default="auto", choices=("auto", "tfds", "jsonl"))
    p.add_argument("--out", help="write results.json here")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    p.add_argument("--epochs", type=int, help="default 3 (5 for MRPC and WNLI)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="tokens per sequence: default 128 (GLUE), 384 (SQuAD)")
    p.add_argument("--stride", type=int, default=SQUAD_STRIDE, help="SQuAD: overlap of consecutive windows")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule spans them)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="auto", choices=("auto", "dense", "sparse"),
                   help="auto: dense for SR-STE/STE/dense checkpoints, 2:4 for S-STE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field that keeps the shapes, e.g. backend=xla, dtype=float32")
    p.add_argument("--limit-train", type=int, help="use only the first N training examples")
    p.add_argument("--limit-eval", type=int, help="use only the first N evaluation examples")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "jax"):  # orbax's notes on opening a checkpoint read-only
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        summary = finetune(args.task, args.checkpoint, data_dir=args.data_dir, data_format=args.data_format,
                           out=args.out, step=args.step, lr=args.lr, warmup=args.warmup, epochs=args.epochs,
                           batch_size=args.batch_size, max_length=args.max_length, stride=args.stride,
                           max_steps=args.max_steps, weight_decay=args.weight_decay, seed=args.seed,
                           weights=args.weights, overrides=args.overrides, limit_train=args.limit_train,
                           limit_eval=args.limit_eval, progress=not args.no_progress)
    except (ConfigError, DataError) as e:
        print(f"sparse24-finetune: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_metrics(summary))
    print(json.dumps(summary["metrics"]))


if __name__ == "__main__":
    main()
