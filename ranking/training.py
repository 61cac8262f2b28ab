"""Train, evaluate, save and load the ranker from numpy arrays (no Spark here).

Metrics per task: log loss, ROC-AUC and relative cross entropy (RCE) against the base rate:
``RCE = 100 * (1 - logloss / logloss_of_predicting_the_eval_set_positive_rate)``; higher is better,
0 means no better than the base rate. The best epoch (lowest mean validation log loss) is kept.

A saved ranker directory holds ``weights.pt`` (state dict, loaded with ``weights_only=True``),
``ranker.json`` (config + metadata), ``discretizer.json``, ``calibration.json`` (optional) and,
for a split ranker, ``splits/<group>/`` standalone user and user-author split artefacts.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm import tqdm

from ranking.calibration import Calibration, fit_calibration, load_calibration, save_calibration
from ranking.config import GROUP_NAMES, FeatureGroupConfig, RankerConfig
from ranking.discretizer import Discretizer, load_discretizer, save_discretizer
from ranking.examples import RankingExamples
from ranking.model import GroupSplit, SplitRanker, build_ranker, export_split
from ranking.warm_start import WarmStartReport, warm_start

WEIGHTS_FILE = "weights.pt"
RANKER_FILE = "ranker.json"
SPLIT_FILE = "split.json"
EXPORTED_SPLITS = ("user", "user_author")


def task_metrics(probabilities: np.ndarray, labels: np.ndarray, tasks: tuple[str, ...]) -> dict:
    """Log loss, AUC and RCE per task plus their means.

    Args:
        probabilities: (N, T) predicted probabilities.
        labels: (N, T) in {0, 1}.
        tasks: task names.

    Returns:
        {"tasks": {task: {"log_loss", "auc", "rce", "positive_rate"}}, "log_loss", "auc", "rce"}
        (AUC and RCE are None for a task with a single class in ``labels``; means skip None).
    """
    per_task: dict[str, dict[str, float | None]] = {}
    for t, task in enumerate(tasks):
        p, y = probabilities[:, t].astype(np.float64), labels[:, t].astype(np.float64)
        rate = float(y.mean())
        # labels=[0, 1]: a task whose labels are all one class still has a log loss.
        loss = float(log_loss(y, p, labels=[0, 1]))
        one_class = rate in (0.0, 1.0)
        auc = None if one_class else float(roc_auc_score(y, p))
        # With one class the base rate predicts it perfectly: a zero base loss, so no RCE.
        rce = None if one_class else 100.0 * (1.0 - loss / float(log_loss(y, np.full_like(y, rate), labels=[0, 1])))
        per_task[task] = {"log_loss": loss, "auc": auc, "rce": rce, "positive_rate": rate}

    def mean(key: str) -> float | None:
        values = [value for m in per_task.values() if (value := m[key]) is not None]
        return float(np.mean(values)) if values else None

    return {"tasks": per_task, "log_loss": mean("log_loss"), "auc": mean("auc"), "rce": mean("rce")}


def _to_tensors(examples: RankingExamples, index: np.ndarray | slice) -> tuple[dict, dict]:
    ids = {g: torch.from_numpy(examples.feature_ids[g][index]) for g in GROUP_NAMES}
    dense = {g: torch.from_numpy(examples.dense[g][index]) for g in GROUP_NAMES}
    return ids, dense


@torch.no_grad()
def predict_probabilities(model: nn.Module, examples: RankingExamples, batch_size: int = 4096) -> np.ndarray:
    """Sigmoid of the model's logits.

    Returns:
        float32 array (N, T).
    """
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        ids, dense = _to_tensors(examples, slice(start, start + batch_size))
        out.append(torch.sigmoid(model(ids, dense)).numpy())
    num_tasks = examples.labels.shape[1]
    return np.concatenate(out) if out else np.zeros((0, num_tasks), dtype=np.float32)


def evaluate(
    model: nn.Module,
    examples: RankingExamples,
    tasks: tuple[str, ...],
    calibration: Calibration | None = None,
) -> dict:
    """Metrics of ``model`` on ``examples``; with a calibration also ``"calibrated"`` metrics."""
    probabilities = predict_probabilities(model, examples)
    metrics = task_metrics(probabilities, examples.labels, tasks)
    if calibration is not None:
        metrics["calibrated"] = task_metrics(calibration.apply(probabilities), examples.labels, tasks)
    return metrics


@dataclass
class TrainResult:
    """Outcome of ``train_ranker``."""

    model: nn.Module
    history: list[dict]
    best_epoch: int
    train_time_s: float
    train_cpu_s: float
    calibration: Calibration | None = None
    warm_start_report: WarmStartReport | None = None
    metrics: dict = field(default_factory=dict)


def _check_examples(examples: RankingExamples, config: RankerConfig, what: str) -> None:
    if len(examples) == 0:
        raise ValueError(f"{what} set is empty: no examples in the window")
    if examples.labels.shape[1] != len(config.tasks):
        raise ValueError(
            f"{what} labels have {examples.labels.shape[1]} columns, tasks are {list(config.tasks)}"
        )
    for group in GROUP_NAMES:
        width = len(config.groups[group].sparse_features)
        if examples.feature_ids[group].shape[1] != width:
            raise ValueError(
                f"{what} {group} ids have {examples.feature_ids[group].shape[1]} columns, config has {width} features"
            )
        ids = examples.feature_ids[group]
        if ids.size and (ids.min() < 0 or ids.max() >= config.discretizer.hash_space_size):
            raise ValueError(f"{what} {group} ids fall outside [0, {config.discretizer.hash_space_size})")


def start_model(
    config: RankerConfig, parent_state: Mapping[str, torch.Tensor] | None
) -> tuple[nn.Module, WarmStartReport | None]:
    """Seeded, thread-limited model for training, warm-started from parent_state when given.

    Shared by single-process and distributed training so both start from the same weights.
    """
    torch.manual_seed(config.training.seed)
    torch.set_num_threads(config.training.num_threads)
    model = build_ranker(config)
    report = warm_start(model, parent_state) if parent_state is not None else None
    return model, report


def epoch_record(epoch: int, train_log_loss: float, val_metrics: Mapping[str, Any]) -> dict:
    """One entry of the training history (epoch is 0-based here, 1-based in the record)."""
    return {
        "epoch": epoch + 1,
        "train_log_loss": train_log_loss,
        "val_log_loss": val_metrics["log_loss"],
        "val_auc": val_metrics["auc"],
        "val_rce": val_metrics["rce"],
    }


def worker_shares(num_rows: int, batch_size: int, world_size: int, rank: int, order: np.ndarray) -> list[np.ndarray]:
    """This worker's row indices for each global batch of one epoch.

    Args:
        num_rows: training rows N.
        batch_size: global batch size (rows per optimiser step over all workers).
        world_size: number of workers (1: a single process takes whole batches).
        rank: this worker, in [0, world_size).
        order: int (N,) the epoch's permutation, identical on every worker.

    Returns:
        One int array per optimiser step; every worker gets the same number of steps. A final batch
        too small to give every worker a row is dropped (fewer than world_size rows).
    """
    shares = []
    for start in range(0, num_rows, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) < world_size:
            break
        shares.append(np.array_split(batch, world_size)[rank])
    return shares


class Collective:
    """How the workers of one training run agree. A single process has nothing to agree on;
    ``ranking.distributed`` overrides both methods with torch.distributed collectives."""

    rank = 0
    world_size = 1

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` in place over all workers."""

    def from_rank0(self, flag: bool) -> bool:
        """Rank 0's value of ``flag``, on every worker."""
        return flag


@dataclass
class Epochs:
    """What ``run_epochs`` hands back; history and best_state are rank 0's (empty elsewhere)."""

    history: list[dict]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    train_time_s: float
    train_cpu_s: float


def run_epochs(
    config: RankerConfig,
    model: nn.Module,
    train: RankingExamples,
    val: RankingExamples,
    *,
    stepped: nn.Module | None = None,
    collective: Collective | None = None,
    progress: bool = True,
) -> Epochs:
    """The epoch loop of single-process and data-parallel training: one seeded permutation per epoch cut
    into global batches of ``training.batch_size`` rows (this worker takes its share of each), then rank 0
    scores ``val``, keeps the best state and decides early stopping for everyone.

    Args:
        config: ranker config (training section: epochs, batch size, optimiser, patience, seed).
        model: the model; its state is what is kept, rank 0 evaluates it.
        train: all training examples; val: validation examples.
        stepped: the module the optimiser steps through (a DistributedDataParallel wrapper of model);
            default: model itself.
        collective: how workers sum the train loss and share the stop decision (default: one process).
        progress: one summary line per epoch, and a tqdm bar per epoch in a single process (workers'
            bars would only interleave in the executors' logs).
    """
    tc = config.training
    collective = collective or Collective()
    stepped = stepped or model
    optimizer = torch.optim.Adam(stepped.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(tc.seed)
    labels = torch.from_numpy(train.labels)
    history: list[dict] = []
    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(model.state_dict())
    started, started_cpu = time.perf_counter(), time.process_time()
    for epoch in range(tc.epochs):
        stepped.train()
        shares = worker_shares(len(train), tc.batch_size, collective.world_size, collective.rank,
                               rng.permutation(len(train)))
        # (sum of loss x rows, rows) in float64, summed over workers: the epoch's mean train loss.
        totals = torch.zeros(2, dtype=torch.float64)
        for index in tqdm(
            shares, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not progress or collective.world_size > 1,
            leave=False, mininterval=2.0,
        ):
            ids, dense = _to_tensors(train, index)
            loss = loss_fn(stepped(ids, dense), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals += torch.tensor([float(loss.detach()) * len(index), len(index)], dtype=torch.float64)
        collective.sum_(totals)
        stop = False
        if collective.rank == 0:
            val_metrics = task_metrics(predict_probabilities(model, val), val.labels, config.tasks)
            history.append(epoch_record(epoch, float(totals[0] / totals[1]), val_metrics))
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1} ({collective.world_size} worker(s)): train log loss "
                    f"{history[-1]['train_log_loss']:.4f}, val log loss {val_metrics['log_loss']:.4f}, "
                    f"AUC {val_metrics['auc'] or float('nan'):.4f}, RCE {val_metrics['rce'] or float('nan'):.2f}"
                )
            if val_metrics["log_loss"] < best_loss - 1e-6:
                best_loss, best_epoch, best_state = val_metrics["log_loss"], epoch + 1, copy.deepcopy(
                    model.state_dict()
                )
            else:
                stop = epoch + 1 - best_epoch >= tc.early_stopping_patience_epochs
        if collective.from_rank0(stop):
            break
    # CPU time of this process is the fairer cost on a shared machine, where wall time swings with load.
    return Epochs(history, best_epoch, best_state, time.perf_counter() - started, time.process_time() - started_cpu)


def result_from_epochs(
    config: RankerConfig,
    model: nn.Module,
    val: RankingExamples,
    epochs: Epochs,
    report: WarmStartReport | None,
    curves_path: str | None = None,
    **extra_metrics: Any,
) -> TrainResult:
    """Load the best epoch's state into model, calibrate it on ``val`` and evaluate it: the TrainResult of
    single-process and data-parallel training alike. ``extra_metrics`` join ``metrics``."""
    model.load_state_dict(epochs.best_state)
    model.eval()
    calibration = None
    if config.calibration:
        calibration = fit_calibration(predict_probabilities(model, val), val.labels, config.tasks)
    metrics = {"val": evaluate(model, val, config.tasks, calibration), "best_epoch": epochs.best_epoch,
               **extra_metrics}
    if curves_path:
        plot_curves(epochs.history, curves_path)
    return TrainResult(model, epochs.history, epochs.best_epoch, epochs.train_time_s, epochs.train_cpu_s,
                       calibration, report, metrics)


def train_ranker(
    config: RankerConfig,
    train: RankingExamples,
    val: RankingExamples,
    *,
    parent_state: Mapping[str, torch.Tensor] | None = None,
    curves_path: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a ranker, evaluating on ``val`` after each epoch and keeping the best epoch.

    Args:
        config: ranker config (architecture, sizes, training, calibration).
        train: training examples.
        val: validation examples (also used to fit the calibration).
        parent_state: a parent checkpoint's state dict to warm start from.
        curves_path: where to write a PNG of train/validation log loss per epoch.
        progress: show a tqdm bar per epoch.

    Returns:
        TrainResult with the best-epoch model (eval mode), per-epoch history, calibration.
    """
    _check_examples(train, config, "training")
    _check_examples(val, config, "validation")
    model, report = start_model(config, parent_state)
    epochs = run_epochs(config, model, train, val, progress=progress)
    return result_from_epochs(config, model, val, epochs, report, curves_path)


def plot_curves(history: list[dict], path: str) -> None:
    """Write a PNG of train and validation log loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["train_log_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_log_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean log loss over tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class LoadedRanker:
    """A ranker read back from a directory."""

    model: nn.Module
    config: RankerConfig
    discretizer: Discretizer
    calibration: Calibration | None
    metadata: dict


def save_ranker(
    directory: str,
    model: nn.Module,
    config: RankerConfig,
    discretizer: Discretizer,
    calibration: Calibration | None = None,
    metadata: Mapping | None = None,
) -> None:
    """Write a ranker directory (see the module docstring for its files).

    Args:
        directory: target directory (created).
        model: trained model.
        config: the config it was built from.
        discretizer: the discretizer its ids come from.
        calibration: optional isotonic calibration.
        metadata: JSON-ready extras (metrics, parent model) stored in ranker.json.
    """
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, RANKER_FILE), "w") as f:
        json.dump({"config": config.model_dump(mode="json"), "metadata": dict(metadata or {})}, f, indent=1)
    save_discretizer(discretizer, directory)
    if calibration is not None:
        save_calibration(calibration, directory)
    if isinstance(model, SplitRanker):
        for group in EXPORTED_SPLITS:
            save_split(
                os.path.join(directory, "splits", group),
                export_split(model, group),
                config,
                group,
                discretizer,
            )


def load_ranker(directory: str) -> LoadedRanker:
    """Read a ranker directory written by ``save_ranker`` (weights loaded with weights_only=True)."""
    path = os.path.join(directory, RANKER_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{directory!r} is not a ranker directory: {RANKER_FILE} is missing")
    with open(path) as f:
        data = json.load(f)
    config = RankerConfig.model_validate(data["config"])
    model = build_ranker(config)
    model.load_state_dict(
        torch.load(os.path.join(directory, WEIGHTS_FILE), weights_only=True, map_location="cpu")
    )
    model.eval()
    return LoadedRanker(
        model, config, load_discretizer(directory), load_calibration(directory), data["metadata"]
    )


def save_split(
    directory: str, split: GroupSplit, config: RankerConfig, group: str, discretizer: Discretizer
) -> None:
    """Write a standalone split artefact: weights, its group config and the discretizer."""
    os.makedirs(directory, exist_ok=True)
    torch.save(split.state_dict(), os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, SPLIT_FILE), "w") as f:
        json.dump(
            {
                "group": group,
                "group_config": config.groups[group].model_dump(mode="json"),
                "hash_space_size": config.discretizer.hash_space_size,
            },
            f,
            indent=1,
        )
    save_discretizer(discretizer, directory)


def load_split(directory: str) -> tuple[GroupSplit, FeatureGroupConfig, Discretizer, str]:
    """Read a split artefact written by ``save_split``.

    Returns:
        (split in eval mode, its group config, discretizer, group name).
    """
    with open(os.path.join(directory, SPLIT_FILE)) as f:
        data = json.load(f)
    group_config = FeatureGroupConfig.model_validate(data["group_config"])
    split = GroupSplit(group_config, int(data["hash_space_size"]))
    split.load_state_dict(
        torch.load(os.path.join(directory, WEIGHTS_FILE), weights_only=True, map_location="cpu")
    )
    return split.eval(), group_config, load_discretizer(directory), data["group"]


def load_parent_state(directory: str) -> dict[str, torch.Tensor]:
    """The state dict of a saved ranker, for warm start (weights_only=True)."""
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise ValueError(f"warm-start checkpoint {path!r} does not exist")
    return torch.load(path, weights_only=True, map_location="cpu")
