"""`nearline ranker-distributed`: `nearline ranker train` with the training loop data-parallel over N workers.

Reads and writes exactly what `nearline ranker train` does (jobs/train_ranker.py: features from the
store, the parent ranker when warm starting; a new models/ranker version), and shares all of it: the
discretizer fit in Spark, the bin-preserving recalibration and the name-and-shape warm start. Only
the loop differs: pyspark's TorchDistributor runs ranking.distributed.train_worker in N processes
(barrier tasks on the executors, or torchrun on the driver with --local-mode) and DDP averages
their gradients; rank 0's best weights are calibrated and saved on the driver.

Why TorchDistributor rather than Ray Train: the training rows are already a Spark DataFrame on the
Spark cluster that runs every other batch job, so training needs no second cluster, no copy of the
rows into Ray's object store, and the Ray cluster stays dedicated to serving.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ranking.config import RankerConfig
from ranking.distributed import finish_training, train_worker
from ranking.examples import RankingExamples
from ranking.training import TrainResult


def distributed_trainer(num_workers: int, local_mode: bool = False) -> Callable[..., TrainResult]:
    """A drop-in for ranking.training.train_ranker that trains with TorchDistributor.

    Args:
        num_workers: processes (one Spark barrier task each unless local_mode).
        local_mode: run the processes on the driver with torchrun instead of as Spark tasks.
    """
    if num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {num_workers}")

    def trainer(
        config: RankerConfig,
        train: RankingExamples,
        val: RankingExamples,
        *,
        parent_state: Mapping[str, torch.Tensor] | None = None,
        curves_path: str | None = None,
        progress: bool = True,
    ) -> TrainResult:
        from pyspark.ml.torch.distributor import TorchDistributor

        # The examples travel pickled with the task (fine for rows that fit the driver, which
        # `ranker train` already requires); workers on other hosts need nothing from this one's disk.
        distributor = TorchDistributor(num_processes=num_workers, local_mode=local_mode, use_gpu=False)
        outcome = distributor.run(train_worker, config, train, val, dict(parent_state) if parent_state else None)
        if outcome is None:
            raise RuntimeError("distributed ranker training returned nothing from rank 0")
        return finish_training(config, outcome, val, curves_path)

    return trainer
