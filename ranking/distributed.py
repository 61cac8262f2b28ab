"""Data-parallel ranker training (torch DDP over gloo): the loop each worker process runs.

No launcher and no Spark here: ``jobs/train_ranker_distributed.py`` starts ``train_worker`` in N
processes with pyspark's TorchDistributor, which sets the torch.distributed environment
(MASTER_ADDR, RANK, WORLD_SIZE, ...). What keeps N workers equivalent to one process:

- every worker builds the model from the same seed (DDP also broadcasts rank 0's weights), and warm
  starts from the same parent state dict with the same name-and-shape mapping as ``train_ranker``;
- every epoch all workers draw the same seeded permutation and cut it into the same global batches of
  ``training.batch_size`` rows; worker r takes the r-th equal share of each, so one epoch is still one
  pass over the data, and DDP's gradient average over equal shares is the gradient of the global batch:
  same batch size, same learning rate, same number of steps as one process;
- rank 0 evaluates validation log loss after each epoch and broadcasts whether to stop, so early
  stopping is one decision. Rank 0 returns the best state; ``finish_training`` calibrates and evaluates
  it on the driver with the same functions ``train_ranker`` uses.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ranking.calibration import fit_calibration
from ranking.config import GROUP_NAMES, RankerConfig
from ranking.examples import RankingExamples
from ranking.model import build_ranker
from ranking.training import (
    TrainResult,
    epoch_record,
    evaluate,
    plot_curves,
    predict_probabilities,
    start_model,
    task_metrics,
)
from ranking.warm_start import WarmStartReport


def worker_shares(num_rows: int, batch_size: int, world_size: int, rank: int, order: np.ndarray) -> list[np.ndarray]:
    """This worker's row indices for each global batch of one epoch.

    Args:
        num_rows: training rows N.
        batch_size: global batch size (rows per optimiser step over all workers).
        world_size: number of workers.
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


def _tensors(examples: RankingExamples, index: np.ndarray) -> tuple[dict, dict]:
    ids = {g: torch.from_numpy(examples.feature_ids[g][index]) for g in GROUP_NAMES}
    dense = {g: torch.from_numpy(examples.dense[g][index]) for g in GROUP_NAMES}
    return ids, dense


def train_worker(
    config: RankerConfig,
    train: RankingExamples,
    val: RankingExamples,
    parent_state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any] | None:
    """One DDP worker's training run; call it in every process of an initialised torch.distributed job.

    Args:
        config: ranker config (same on every worker).
        train: all training examples (each worker takes its share of every batch).
        val: validation examples (rank 0 evaluates them).
        parent_state: parent checkpoint's state dict for warm start, or None.

    Returns:
        On rank 0: {"state": best state dict, "history", "best_epoch", "train_time_s",
        "train_cpu_s" (all workers), "warm_start_report" (dict), "world_size"}; None on the other ranks.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        tc = config.training
        model, report = start_model(config, parent_state)
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(tc.seed)
        labels = torch.from_numpy(train.labels)
        history: list[dict] = []
        best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(model.state_dict())
        started, started_cpu = time.perf_counter(), time.process_time()
        for epoch in range(tc.epochs):
            ddp.train()
            totals = torch.zeros(2, dtype=torch.float64)
            for index in worker_shares(len(train), tc.batch_size, world_size, rank, rng.permutation(len(train))):
                ids, dense = _tensors(train, index)
                loss = loss_fn(ddp(ids, dense), labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                totals += torch.tensor([float(loss.detach()) * len(index), len(index)], dtype=torch.float64)
            dist.all_reduce(totals)
            stop = torch.zeros(1)
            if rank == 0:
                val_metrics = task_metrics(predict_probabilities(model, val), val.labels, config.tasks)
                history.append(epoch_record(epoch, float(totals[0] / totals[1]), val_metrics))
                print(f"epoch {epoch + 1} ({world_size} workers): train log loss {history[-1]['train_log_loss']:.4f}, "
                      f"val log loss {val_metrics['log_loss']:.4f}", flush=True)
                if val_metrics["log_loss"] < best_loss - 1e-6:
                    best_loss, best_epoch, best_state = val_metrics["log_loss"], epoch + 1, copy.deepcopy(
                        model.state_dict()
                    )
                elif epoch + 1 - best_epoch >= tc.early_stopping_patience_epochs:
                    stop[0] = 1
            dist.broadcast(stop, src=0)
            if stop.item():
                break
        # CPU time of all workers together, comparable with a single process's train_cpu_s.
        cpu_s = torch.tensor([time.process_time() - started_cpu], dtype=torch.float64)
        dist.all_reduce(cpu_s)
        if rank != 0:
            return None
        return {
            "state": best_state, "history": history, "best_epoch": best_epoch,
            "train_time_s": time.perf_counter() - started, "train_cpu_s": float(cpu_s[0]), "world_size": world_size,
            # A plain dict: the result crosses process boundaries; finish_training rebuilds the report.
            "warm_start_report": report.to_dict() if report is not None else None,
        }
    finally:
        dist.destroy_process_group()


def finish_training(
    config: RankerConfig, outcome: Mapping[str, Any], val: RankingExamples, curves_path: str | None = None
) -> TrainResult:
    """Turn rank 0's outcome into the TrainResult ``train_ranker`` would return (calibrated, evaluated).

    Args:
        config: the ranker config the workers trained with.
        outcome: ``train_worker``'s rank-0 return value.
        val: validation examples (calibration is fitted on them, as in single-process training).
        curves_path: where to write the loss curves PNG.
    """
    model = build_ranker(config)
    model.load_state_dict(outcome["state"])
    model.eval()
    calibration = None
    if config.calibration:
        calibration = fit_calibration(predict_probabilities(model, val), val.labels, config.tasks)
    metrics = {
        "val": evaluate(model, val, config.tasks, calibration),
        "best_epoch": outcome["best_epoch"],
        "world_size": outcome["world_size"],
    }
    if curves_path:
        plot_curves(outcome["history"], curves_path)
    report = outcome["warm_start_report"]
    return TrainResult(
        model=model, history=outcome["history"], best_epoch=outcome["best_epoch"],
        train_time_s=outcome["train_time_s"], train_cpu_s=outcome["train_cpu_s"], calibration=calibration,
        warm_start_report=WarmStartReport(**report) if report is not None else None, metrics=metrics,
    )
