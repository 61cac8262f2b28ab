"""Training, evaluation, macro-F1 calibration, linear probe and chain-thaw fine-tuning of the content model.

``train_content_model`` writes into its run directory: ``metrics.json`` (per-epoch history, best epoch,
final validation metrics, timings) and ``training_curve.png``. Uses the GPU when present, else CPU.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from embeddings.config import ContentModelConfig
from embeddings.content_encoder import (
    HEADS,
    ContentModel,
    TextFeatures,
    autocast_for,
    build_content_model,
    featurize,
    iterate_batches,
    refresh_norm_statistics,
    resolve_device,
    run_model,
)
from embeddings.text import Vocabulary, build_vocabulary


# ---------------------------------------------------------------- metrics
def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Macro-averaged F1 over the labels present in ``y_true`` or ``y_pred`` (as scikit-learn)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    tp = np.bincount(y_true[y_true == y_pred], minlength=num_labels).astype(np.float64)
    true_count = np.bincount(y_true, minlength=num_labels)
    pred_count = np.bincount(y_pred, minlength=num_labels)
    present = (true_count + pred_count) > 0
    denominator = true_count + pred_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros(num_labels), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``macro_f1``, ``accuracy`` and ``top5_accuracy`` of score rows (N, L) against labels (N,)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) != len(scores):
        raise ValueError(f"{len(y_true)} labels but {len(scores)} score rows")
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    num_labels = scores.shape[1]
    pred = scores.argmax(axis=1)
    k = min(5, num_labels)
    top_k = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return {"macro_f1": macro_f1(y_true, pred, num_labels), "accuracy": float((pred == y_true).mean()),
            "top5_accuracy": float((top_k == y_true[:, None]).any(axis=1).mean())}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def tune_logit_bias(scores: np.ndarray, y_true: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Per-class additive bias maximising macro-F1 of ``argmax(scores + bias)`` (coordinate ascent).

    Macro-F1 rewards recall on rare classes more than a likelihood-trained model does; shifting each
    class's score is the prior correction that recovers it.

    Returns:
        float32 (L,) bias.
    """
    num_labels = scores.shape[1]
    bias = np.zeros(num_labels)
    best = macro_f1(y_true, scores.argmax(1), num_labels)
    for r in range(rounds):
        step = 0.5 * 0.5**r
        for k in range(num_labels):
            for delta in np.arange(-4, 5) * step:
                if delta == 0:
                    continue
                trial = bias.copy()
                trial[k] += delta
                f1 = macro_f1(y_true, (scores + trial).argmax(1), num_labels)
                if f1 > best + 1e-9:
                    best, bias = f1, trial
    return bias.astype(np.float32)


def _simplex_grid(present: Sequence[bool], step: float = 0.1) -> list[tuple[float, ...]]:
    """Weight vectors over the heads (zero for absent ones) summing to 1, on a grid of ``step``."""
    units = round(1 / step)
    grid = []
    for a in range(units + 1):
        for b in range(units + 1 - a):
            w = (a * step, b * step, (units - a - b) * step)
            if all(p or x == 0 for p, x in zip(present, w, strict=True)):
                grid.append(tuple(round(x, 4) for x in w))
    return grid


def tune_mixture(head_logits: Mapping[str, np.ndarray | None], y_true: np.ndarray,
                 tune_bias: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Head mixing weights (deep, wide, joint) and per-class bias for macro-F1 on validation.

    Args:
        head_logits: ``{deep,wide,joint}_logits`` float (N, L), or None for a head the model lacks.

    Returns:
        (head_weights (3,), bias (L,), report) where report holds the val macro-F1 before/after and a
        2-fold cross-fitted estimate (bias fitted on one half, scored on the other) that is not
        optimistic about the bias.
    """
    log_probs: list[np.ndarray | None] = []
    for head in HEADS:
        logits = head_logits.get(f"{head}_logits")
        log_probs.append(None if logits is None else _log_softmax(logits))
    num_labels = next(lp for lp in log_probs if lp is not None).shape[1]

    def mix(w: tuple[float, ...]) -> np.ndarray:
        mixed = np.zeros_like(next(lp for lp in log_probs if lp is not None))
        for x, lp in zip(w, log_probs, strict=True):
            if lp is not None and x > 0:
                mixed += x * lp
        return mixed

    grid = _simplex_grid([lp is not None for lp in log_probs])
    weights = max(grid, key=lambda w: macro_f1(y_true, mix(w).argmax(1), num_labels))
    scores = mix(weights)
    report: dict[str, Any] = {"head_weights": dict(zip(HEADS, weights, strict=True)),
                              "val_macro_f1_unbiased": macro_f1(y_true, scores.argmax(1), num_labels)}
    bias = np.zeros(num_labels, dtype=np.float32)
    if tune_bias:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(y_true))
        halves = (order[: len(order) // 2], order[len(order) // 2:])
        cross = []
        for fit, held in (halves, halves[::-1]):
            b = tune_logit_bias(scores[fit], y_true[fit])
            cross.append(macro_f1(y_true[held], (scores[held] + b).argmax(1), num_labels))
        report["val_macro_f1_bias_crossfit"] = float(np.mean(cross))
        # Keep the bias only when it also helps examples it was not fitted on; otherwise it is noise.
        report["bias_applied"] = report["val_macro_f1_bias_crossfit"] > report["val_macro_f1_unbiased"]
        if report["bias_applied"]:
            bias = tune_logit_bias(scores, y_true)
    report["val_macro_f1_tuned"] = macro_f1(y_true, (scores + bias).argmax(1), num_labels)
    return np.array(weights, dtype=np.float32), bias, report


# ---------------------------------------------------------------- training
@dataclass
class TrainResult:
    """Trained model (best epoch, calibrated) and its metrics (as written to metrics.json)."""

    model: ContentModel
    metrics: dict


def class_weights(labels: np.ndarray, num_labels: int, scheme: str) -> torch.Tensor:
    """Loss weight per class, mean 1 over the training examples."""
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    if scheme == "none":
        w = np.ones(num_labels)
    else:
        power = 0.5 if scheme == "sqrt" else 1.0
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    w = w / max((w * counts).sum() / max(counts.sum(), 1), 1e-12)
    return torch.tensor(w, dtype=torch.float32)


def _lr_factor(schedule: str, step: int, total: int) -> float:
    progress = step / max(total, 1)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    # one-cycle: linear warm-up over the first 10% then cosine decay to ~0
    warm = 0.1
    if progress < warm:
        return 0.04 + 0.96 * progress / warm
    return 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm))) + 1e-3


def _optimizers(model: nn.Module, lr: float, wide_lr: float, weight_decay: float, params=None):
    params = [p for p in (params or model.parameters()) if p.requires_grad]
    wide_weight = getattr(getattr(model, "wide_embedding", None), "weight", None)
    sparse_ids = {id(model.get_submodule("token_embedding").get_parameter("weight"))}
    if wide_weight is not None:
        sparse_ids.add(id(wide_weight))
    sparse = [p for p in params if id(p) in sparse_ids]
    dense = [p for p in params if id(p) not in sparse_ids]
    opts: list[tuple[torch.optim.Optimizer, float]] = []
    if dense:
        opts.append((torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay), lr))
    for p in sparse:
        p_lr = wide_lr if p is wide_weight else lr
        opts.append((torch.optim.SparseAdam([p], lr=p_lr), p_lr))
    return opts


def _save_curve(history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    for key in ("val_macro_f1", "val_deep_macro_f1", "val_wide_macro_f1", "val_joint_macro_f1"):
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("macro-F1")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


CHECKPOINT_FORMAT = "nearline-content-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def _save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a kill leaves the previous checkpoint or the new one."""
    partial = path + ".partial"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, **state}, partial)
    os.replace(partial, path)


def load_checkpoint(path: str) -> dict:
    """Read a training checkpoint written by :func:`train_content_model`.

    Raises:
        ValueError: if the file cannot be read or is not a checkpoint of this format version.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means the same thing here
        raise ValueError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                         "delete it to start the training over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} file; delete it to start the training over")
    if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version={state.get('format_version')!r}; this code "
                         f"resumes version {CHECKPOINT_FORMAT_VERSION}: delete it to start over")
    return state


def train_content_model(
    config: ContentModelConfig,
    train_texts: Sequence[str | bytes],
    train_labels: np.ndarray,
    val_texts: Sequence[str | bytes],
    val_labels: np.ndarray,
    label_names: Sequence[str],
    run_dir: str,
    device: str | None = None,
    vocab: Vocabulary | None = None,
    init_model: ContentModel | None = None,
    checkpoint_every_steps: int | None = None,
) -> TrainResult:
    """Train with early stopping on validation macro-F1 and calibrate on validation.

    Args:
        train_labels, val_labels: int64 (N,) in ``[0, len(label_names))``.
        run_dir: receives metrics.json and training_curve.png (and checkpoint.pt when checkpointing).
        vocab: the vocabulary (default: built from ``train_texts``; with ``init_model``, its own).
        init_model: a trained (e.g. pre-trained) content model whose weights start every layer but the
            label heads; its vocabulary and shape must match ``config`` (see :func:`check_compatible`).
        checkpoint_every_steps: write ``run_dir/checkpoint.pt`` every this many steps and at the end of
            each epoch; a later call with the same arguments resumes from it (exactly: same batches,
            optimiser state and schedule) instead of starting over.

    Returns:
        The best-epoch model (vocab and labels attached, in eval mode) and its metrics.

    Raises:
        ValueError: on bad labels, a model or vocabulary that does not match, or a corrupt checkpoint.
    """
    num_labels = len(label_names)
    train_labels = _check_labels(train_labels, len(train_texts), num_labels, "train")
    val_labels = _check_labels(val_labels, len(val_texts), num_labels, "val")
    torch.set_num_threads(config.num_threads)
    dev = resolve_device(device)
    os.makedirs(run_dir, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    if init_model is not None:
        vocab = check_compatible(init_model, config, vocab)
    vocab = vocab or build_vocabulary(train_texts, config.vocab_size, config.min_count, config.subword_buckets)
    train_features = featurize(train_texts, vocab, config)
    val_features = featurize(val_texts, vocab, config)
    prep_s = time.perf_counter() - started

    model = build_content_model(config, len(vocab), num_labels).to(dev)
    model.vocab, model.labels = vocab, list(label_names)
    init_report = None
    if init_model is not None:
        init_report = initialise_from(model, init_model)
    weights = class_weights(train_labels, num_labels, config.class_weighting).to(dev)
    opts = _optimizers(model, config.learning_rate, config.wide_learning_rate, config.weight_decay)
    steps_per_epoch = math.ceil(len(train_features) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    y_train = torch.from_numpy(train_labels)
    # What a checkpoint must agree with to be resumed: the same data, labels and settings.
    run_key = {"config": config.model_dump_json(), "num_train": len(train_texts), "num_val": len(val_texts),
               "labels": list(label_names), "vocab_words": len(vocab),
               "train_labels_crc": zlib.crc32(train_labels.tobytes())}
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    progress: dict[str, Any] = {"epoch": 1, "batch": 0, "step": 0, "total_loss": 0.0, "seen": 0, "history": [],
                "best_f1": -1.0, "best_epoch": 0, "bad_epochs": 0, "best_state": None, "done": False}
    if checkpoint_every_steps and os.path.isfile(checkpoint_path):
        progress = _resume(checkpoint_path, run_key, model, opts)
        tqdm.write(f"resuming from {checkpoint_path}: epoch {progress['epoch']}, step {progress['step']}")

    def save() -> None:
        if checkpoint_every_steps:
            _save_checkpoint(checkpoint_path, {"run_key": run_key, **progress, "model": model.state_dict(),
                                               "optimizers": [opt.state_dict() for opt, _ in opts],
                                               "torch_rng": torch.get_rng_state(),  # dropout masks
                                               "cuda_rng": torch.cuda.get_rng_state_all()
                                               if torch.cuda.is_available() else []})

    history: list[dict] = progress["history"]
    step = progress["step"]
    while not progress["done"] and progress["epoch"] <= config.epochs:
        epoch = progress["epoch"]
        model.train()
        epoch_started = time.perf_counter()
        # The order of an epoch depends on (seed, epoch) only, so a resumed epoch sees the same batches.
        order = _bucketed_order(train_features.tokens_per_text, config.batch_size,
                                np.random.default_rng([config.seed, epoch]))
        bar = tqdm(iterate_batches(train_features, config.batch_size, order[progress["batch"] * config.batch_size:]),
                   total=steps_per_epoch - progress["batch"], desc=f"epoch {epoch}/{config.epochs}",
                   leave=False, mininterval=5)
        for indices, batch in bar:
            for opt, base_lr in opts:
                for group in opt.param_groups:
                    group["lr"] = base_lr * _lr_factor(config.lr_schedule, step, total_steps)
            with autocast_for(config, dev):
                out = model(batch.to(dev))
            target = y_train[indices].to(dev)
            # Every head learns from the labels: the deep and wide heads keep each path learning on its
            # own (and feed the ensemble); the joint head trains the embedding.
            # float(): under bf16 autocast the logits are bf16; the loss is taken in float32.
            loss = torch.stack([F.cross_entropy(out[f"{head}_logits"].float(), target, weight=weights)
                                for head in HEADS if out[f"{head}_logits"] is not None]).sum()
            for opt, _ in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            dense = [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
            nn.utils.clip_grad_norm_(dense, config.grad_clip_norm)
            for opt, _ in opts:
                opt.step()
            step += 1
            progress.update(step=step, batch=progress["batch"] + 1,
                            total_loss=progress["total_loss"] + loss.detach().item() * len(indices),
                            seen=progress["seen"] + len(indices))
            if checkpoint_every_steps and step % checkpoint_every_steps == 0:
                save()
        epoch_s = time.perf_counter() - epoch_started
        val = _evaluate_heads(model, val_features, val_labels)
        record = {"epoch": epoch, "train_loss": progress["total_loss"] / max(progress["seen"], 1),
                  "epoch_s": round(epoch_s, 2), **val}
        history.append(record)
        tqdm.write(f"epoch {epoch}: loss {record['train_loss']:.4f}  val macro-F1 {val['val_macro_f1']:.4f} "
                   f"(deep {val['val_deep_macro_f1']:.4f}, wide {val.get('val_wide_macro_f1', 0):.4f}, "
                   f"joint {val.get('val_joint_macro_f1', 0):.4f})  "
                   f"{epoch_s:.0f}s")
        if val["val_macro_f1"] > progress["best_f1"]:
            progress.update(best_f1=val["val_macro_f1"], best_epoch=epoch, bad_epochs=0,
                            best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            progress["bad_epochs"] += 1
            progress["done"] = progress["bad_epochs"] >= config.early_stopping_patience
        progress.update(epoch=epoch + 1, batch=0, total_loss=0.0, seen=0)
        save()
    best_state, best_epoch = progress["best_state"], progress["best_epoch"]
    assert best_state is not None
    model.load_state_dict(best_state)
    refresh_norm_statistics(model, train_features, seed=config.seed)
    tuning = calibrate_content_model(model, val_features, val_labels)
    final = classification_metrics(val_labels, run_model(model, val_features)["scores"])
    train_s = time.perf_counter() - started
    # CPU seconds / threads estimates the wall time on an otherwise idle machine (the dev box is shared).
    cpu_s = time.process_time() - cpu_started
    metrics = {"best_epoch": best_epoch, "epochs_run": len(history), "history": history,
               "val": final, "calibration": tuning, "train_s": round(train_s, 1), "prep_s": round(prep_s, 1),
               "cpu_s": round(cpu_s, 1), "threads": config.num_threads,
               "device": str(dev), "num_train": len(train_texts), "num_val": len(val_texts),
               "vocab_words": len(vocab), "num_labels": num_labels, "initialised_from": init_report}
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    _save_curve(history, os.path.join(run_dir, "training_curve.png"))
    tqdm.write(f"trained {len(history)} epochs in {train_s:.0f}s; best epoch {best_epoch}; "
               f"val macro-F1 {final['macro_f1']:.4f} (cross-fitted {tuning.get('val_macro_f1_bias_crossfit', 0):.4f})")
    return TrainResult(model.eval(), metrics)


def _resume(path: str, run_key: dict, model: ContentModel, opts: list) -> dict:
    state = load_checkpoint(path)
    if state.get("run_key") != run_key:
        differs = sorted(k for k in run_key if state.get("run_key", {}).get(k) != run_key[k])
        raise ValueError(f"checkpoint {path} belongs to another training run (differs in {differs}); "
                         "delete it or use another output directory")
    model.load_state_dict(state["model"])
    for (opt, _), opt_state in zip(opts, state["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return {k: state[k] for k in ("epoch", "batch", "step", "total_loss", "seen", "history", "best_f1",
                                  "best_epoch", "bad_epochs", "best_state", "done")}


# Config fields that fix the shape and meaning of the layers a pre-trained model hands on.
_SHAPE_FIELDS = ("subword_buckets", "embedding_dim", "lstm_hidden", "attention_over", "content_embedding_dim",
                 "project_embedding", "embedding_source", "wide_enabled", "wide_buckets", "wide_dim",
                 "wide_word_ngrams", "wide_char_ngram_min", "wide_char_ngram_max")


def check_compatible(init_model: ContentModel, config: ContentModelConfig, vocab: Vocabulary | None) -> Vocabulary:
    """The vocabulary to train with when starting from ``init_model``: its own.

    Raises:
        ValueError: if ``config`` asks for another layer shape or vocabulary size, or ``vocab`` is given
            and differs from the model's (row i of the embedding table must mean the same word).
    """
    if init_model.vocab is None:
        raise ValueError("the pre-trained model has no vocabulary attached: load it with load_content_model")
    differs = {f: (getattr(init_model.config, f), getattr(config, f)) for f in _SHAPE_FIELDS
               if getattr(init_model.config, f) != getattr(config, f)}
    if differs:
        raise ValueError("the pre-trained model does not match the content config: "
                         + ", ".join(f"{f}={new!r} in the config but {old!r} in the model"
                                     for f, (old, new) in differs.items())
                         + "; set these to the model's values or train from scratch")
    if init_model.config.vocab_size != config.vocab_size:
        raise ValueError(f"vocabulary mismatch: the pre-trained model has a vocabulary of vocab_size="
                         f"{init_model.config.vocab_size} ({len(init_model.vocab)} words) but the config asks "
                         f"vocab_size={config.vocab_size}; set content.vocab_size={init_model.config.vocab_size} "
                         "or train from scratch")
    if vocab is not None and vocab != init_model.vocab:
        raise ValueError(f"vocabulary mismatch: the given vocabulary ({len(vocab)} words) is not the pre-trained "
                         f"model's ({len(init_model.vocab)} words); its embedding rows would mean other words")
    return init_model.vocab


def initialise_from(model: ContentModel, init_model: ContentModel) -> dict[str, list[str]]:
    """Copy every tensor of ``init_model`` into ``model`` except the label heads and calibration (in place).

    Returns:
        ``{"copied": [...], "kept": [...]}``: tensor names taken from ``init_model`` and those left as
        initialised (the heads, whose labels differ, and the mixing weights and bias fitted on val).
    """
    fresh = ("deep_head.", "wide_head.", "joint_head.", "head_weights", "logit_bias")
    source = init_model.state_dict()
    target = model.state_dict()
    copied = [k for k in target if k in source and not k.startswith(fresh) and source[k].shape == target[k].shape]
    model.load_state_dict({**target, **{k: source[k].to(target[k].device) for k in copied}})
    return {"copied": copied, "kept": [k for k in target if k not in copied]}


def calibrate_content_model(model: ContentModel, val_features: TextFeatures, val_labels: np.ndarray) -> dict:
    """Fit the head mixing weights and the per-class logit bias on validation (in place)."""
    out = run_model(model, val_features)
    weights, bias, report = tune_mixture(out, val_labels, model.config.tune_logit_bias)
    model.head_weights.copy_(torch.from_numpy(weights).to(model.head_weights.device))
    model.logit_bias.copy_(torch.from_numpy(bias).to(model.logit_bias.device))
    return report


def _bucketed_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled order whose batches hold texts of similar length (less LSTM padding)."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    parts = [c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(order, max(1, len(order) // chunk))]
    batches = [b for p in parts for b in np.array_split(p, max(1, math.ceil(len(p) / batch_size)))]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def _evaluate_heads(model: ContentModel, features: TextFeatures, labels: np.ndarray) -> dict[str, float]:
    out = run_model(model, features)
    n = model.num_labels
    result = {"val_macro_f1": classification_metrics(labels, out["scores"])["macro_f1"],
              "val_deep_macro_f1": macro_f1(labels, out["deep_logits"].argmax(1), n)}
    for head in ("wide", "joint"):
        if out[f"{head}_logits"] is not None:
            result[f"val_{head}_macro_f1"] = macro_f1(labels, out[f"{head}_logits"].argmax(1), n)
    return result


def _check_labels(labels: Sequence[int] | np.ndarray, n: int, num_labels: int, name: str,
                  multi_label: bool = False) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if multi_label:
        if labels.shape != (n, num_labels) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{name}: multi-label targets must be 0/1 of shape ({n}, {num_labels}), "
                             f"got shape {labels.shape}")
        return labels
    if labels.shape != (n,):
        raise ValueError(f"{name}: {labels.shape[0] if labels.ndim else 0} labels for {n} texts")
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if len(bad):
        raise ValueError(f"{name}: label {int(bad[0])} outside [0, {num_labels}) (unknown label)")
    return labels


def evaluate_content_model(model: ContentModel, texts: Sequence[str | bytes], labels: np.ndarray) -> dict[str, float]:
    """macro_f1, accuracy, top5_accuracy of the calibrated model on labelled texts."""
    labels = _check_labels(labels, len(texts), model.num_labels, "eval")
    assert model.vocab is not None
    scores = run_model(model, featurize(texts, model.vocab, model.config))["scores"]
    return classification_metrics(labels, scores)


# ---------------------------------------------------------------- transfer
def class_average_f1(y_true: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | float = 0.0) -> float:
    """Mean over labels of the binary F1 of ``scores > thresholds`` (multi-label; DeepMoji's metric).

    Args:
        y_true: 0/1 array (N, L); scores: float (N, L) (logits or decision values);
        thresholds: (L,) or one value.
    """
    pred = scores > thresholds
    truth = y_true.astype(bool)
    tp = (pred & truth).sum(axis=0)
    denominator = pred.sum(axis=0) + truth.sum(axis=0)
    return float(np.mean(np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)))


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label decision threshold maximising that label's F1 on these (validation) rows, as DeepMoji
    does for its multi-label sets. Returns float (L,)."""
    thresholds = np.zeros(scores.shape[1])
    for k in range(scores.shape[1]):
        candidates = np.unique(scores[:, k])
        f1 = [class_average_f1(y_true[:, k: k + 1], scores[:, k: k + 1], t - 1e-9) for t in candidates]
        thresholds[k] = candidates[int(np.argmax(f1))] - 1e-9 if len(candidates) else 0.0
    return thresholds


def linear_probe(train_embeddings: np.ndarray, train_labels: np.ndarray, val_embeddings: np.ndarray,
                 val_labels: np.ndarray, test_embeddings: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    """Logistic regression on frozen embeddings (N, D); C picked on val, scored on test.

    Labels int (N,) for one label per text: accuracy. 0/1 (N, L) for multi-label sets: one logistic
    regression (sigmoid) per label, thresholds tuned per label on val, class-average F1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    multi = np.asarray(train_labels).ndim == 2
    best = None
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        if multi:
            clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)).fit(train_embeddings, train_labels)
            val_scores = clf.decision_function(val_embeddings)
            thresholds = tune_thresholds(val_labels, val_scores)
            score = class_average_f1(val_labels, val_scores, thresholds)
        else:
            clf = LogisticRegression(C=c, max_iter=2000).fit(train_embeddings, train_labels)
            thresholds, score = None, float((clf.predict(val_embeddings) == val_labels).mean())
        if best is None or score > best[0]:
            best = (score, c, clf, thresholds)
    if best is None:
        raise ValueError("linear_probe needs at least one regularisation strength to try")
    val_score, c, clf, thresholds = best
    if multi:
        assert thresholds is not None
        return {"class_average_f1": class_average_f1(test_labels, clf.decision_function(test_embeddings), thresholds),
                "val_class_average_f1": val_score, "C": c}
    return {"accuracy": float((clf.predict(test_embeddings) == test_labels).mean()), "val_accuracy": val_score,
            "C": c}


def chain_thaw(model: ContentModel, train_texts: Sequence[str], train_labels: np.ndarray,
               val_texts: Sequence[str], val_labels: np.ndarray, label_names: Sequence[str],
               max_epochs_per_stage: int = 10, patience: int = 2, head_lr: float = 1e-3,
               layer_lr: float = 1e-4, batch_size: int = 64, device: str | None = None
               ) -> tuple[ContentModel, dict]:
    """Chain-thaw fine-tuning (DeepMoji): new head, then each layer alone, then all layers.

    The emoji heads are replaced by fresh heads over ``label_names``; only the head on the content
    embedding (joint, or deep for 'deep' models) is trained and predicts: transfer goes through the
    embedding. Each stage trains until
    the val score has not improved for ``patience`` epochs (at most ``max_epochs_per_stage``) and keeps
    the weights of its best epoch, as the paper's chain-thaw does.

    Labels int (N,): a softmax head, scored by accuracy. Labels 0/1 (N, L) (multi-label sets such as
    Olympic or SE0714): one sigmoid per label (binary cross-entropy), scored by class-average F1 at
    logit 0; tune per-label thresholds on val afterwards (:func:`tune_thresholds`).

    Returns:
        (fine-tuned model in eval mode, report with the per-stage val score).
    """
    num_labels = len(label_names)
    multi = np.asarray(train_labels).ndim == 2
    train_labels = _check_labels(train_labels, len(train_texts), num_labels, "train", multi)
    val_labels = _check_labels(val_labels, len(val_texts), num_labels, "val", multi)
    dev = resolve_device(device)
    tuned = copy.deepcopy(model).to(dev)
    tuned.num_labels = num_labels
    tuned.labels = list(label_names)
    tuned.deep_head = nn.Linear(tuned.config.content_embedding_dim, num_labels).to(dev)
    if tuned.config.wide_enabled:
        tuned.wide_head = nn.Linear(tuned.config.wide_dim, num_labels).to(dev)
    if tuned.joint_head is not None:
        tuned.joint_head = nn.Linear(tuned.config.content_embedding_dim, num_labels).to(dev)
    head = tuned.embedding_head
    # Start the new head at the class prior so early stages never do worse than the majority class.
    with torch.no_grad():
        head.weight.mul_(0.1)
        if multi:
            rate = (train_labels.sum(axis=0) + 1.0) / (len(train_labels) + 2.0)
            head.bias.copy_(torch.from_numpy(np.log(rate / (1 - rate))).float())
        else:
            prior = np.bincount(train_labels, minlength=num_labels) + 1.0
            head.bias.copy_(torch.from_numpy(np.log(prior / prior.sum())).float())
    only_embedding_head = torch.zeros(len(HEADS), device=dev)
    only_embedding_head[HEADS.index("joint" if tuned.joint_head is not None else "deep")] = 1.0
    tuned.head_weights = only_embedding_head
    tuned.logit_bias = torch.zeros(num_labels, device=dev)
    assert tuned.vocab is not None
    train_f = featurize(train_texts, tuned.vocab, tuned.config)
    val_f = featurize(val_texts, tuned.vocab, tuned.config)
    encoder_layers: list[list[nn.Module]] = [
        [tuned.token_embedding], [tuned.lstm1], [tuned.lstm2],
        [m for m in (tuned.attention, tuned.projection) if m is not None]]
    if tuned.joint_projection is not None:
        encoder_layers.append([m for m in (getattr(tuned, "wide_embedding", None), tuned.joint_norm,
                                           tuned.joint_projection) if m is not None])
    stages: list[tuple[str, list[list[nn.Module]], float]] = [("head", [[head]], head_lr)]
    stages += [(f"layer{i}", [layer], layer_lr) for i, layer in enumerate(encoder_layers)]
    stages += [("head_again", [[head]], layer_lr), ("all", encoder_layers + [[head]], layer_lr)]
    rng = np.random.default_rng(tuned.config.seed)
    y = torch.from_numpy(train_labels.astype(np.float32) if multi else train_labels)
    report = {}
    best_acc = _transfer_score(tuned, val_f, val_labels)
    for name, groups, lr in stages:
        params = [p for group in groups for module in group for p in module.parameters()]
        for p in tuned.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opts = _optimizers(tuned, lr, lr, 0.0, params)
        best_state = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
        bad_epochs = 0
        for _ in range(max_epochs_per_stage):
            tuned.train()
            for indices, batch in iterate_batches(train_f, batch_size, rng.permutation(len(train_f))):
                with autocast_for(tuned.config, dev):
                    logits = tuned(batch.to(dev), deep_learns_from_joint=True)["embedding_logits"].float()
                target = y[indices].to(dev)
                loss = (F.binary_cross_entropy_with_logits(logits, target) if multi
                        else F.cross_entropy(logits, target))
                for opt, _ in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                dense = [p for p in params if p.grad is not None and not p.grad.is_sparse]
                if dense:
                    nn.utils.clip_grad_norm_(dense, 1.0)
                for opt, _ in opts:
                    opt.step()
            acc = _transfer_score(tuned, val_f, val_labels)
            if acc > best_acc:
                best_acc, bad_epochs = acc, 0
                best_state = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= patience:
                    break
        tuned.load_state_dict(best_state)
        report[name] = best_acc
        tqdm.write(f"chain-thaw {name}: val {'class-average F1' if multi else 'accuracy'} {best_acc:.4f}")
    for p in tuned.parameters():
        p.requires_grad_(True)
    refresh_norm_statistics(tuned, train_f, seed=tuned.config.seed)
    key = "val_class_average_f1_by_stage" if multi else "val_accuracy_by_stage"
    return tuned.eval(), {key: report}


def _transfer_score(model: ContentModel, features: TextFeatures, labels: np.ndarray) -> float:
    """Accuracy (labels (N,)) or class-average F1 at logit 0 (labels 0/1 (N, L)) of the embedding head."""
    logits = run_model(model, features)["embedding_logits"]
    if labels.ndim == 2:
        return class_average_f1(labels, logits)
    return float((logits.argmax(1) == labels).mean())
