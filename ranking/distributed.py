"""Data-parallel ranker training (torch DDP over gloo): what each worker process runs around the epoch
loop it shares with single-process training (``ranking.training.run_epochs``).

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

from collections.abc import Mapping
from typing import Any

import torch

from ranking.config import RankerConfig
from ranking.examples import RankingExamples
from ranking.model import build_ranker
from ranking.training import Collective, Epochs, TrainResult, result_from_epochs, run_epochs, start_model
from ranking.warm_start import WarmStartReport


class _ProcessGroup(Collective):
    """The workers of an initialised torch.distributed process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def sum_(self, tensor: torch.Tensor) -> None:
        self._dist.all_reduce(tensor)

    def from_rank0(self, flag: bool) -> bool:
        value = torch.tensor([float(flag)])
        self._dist.broadcast(value, src=0)
        return bool(value.item())


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
        group = _ProcessGroup()
        model, report = start_model(config, parent_state)
        epochs = run_epochs(config, model, train, val, stepped=DistributedDataParallel(model), collective=group,
                            progress=group.rank == 0)
        # CPU time of all workers together, comparable with a single process's train_cpu_s.
        cpu_s = torch.tensor([epochs.train_cpu_s], dtype=torch.float64)
        group.sum_(cpu_s)
        if group.rank != 0:
            return None
        return {
            "state": epochs.best_state, "history": epochs.history, "best_epoch": epochs.best_epoch,
            "train_time_s": epochs.train_time_s, "train_cpu_s": float(cpu_s[0]), "world_size": group.world_size,
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
    epochs = Epochs(outcome["history"], outcome["best_epoch"], outcome["state"], outcome["train_time_s"],
                    outcome["train_cpu_s"])
    report = outcome["warm_start_report"]
    return result_from_epochs(
        config, build_ranker(config), val, epochs, WarmStartReport(**report) if report is not None else None,
        curves_path, world_size=outcome["world_size"],
    )
