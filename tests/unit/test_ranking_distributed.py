"""Data-parallel training runs the single-process epoch loop: one gloo worker reproduces train_ranker."""

import socket

import numpy as np
import pytest
import torch
from test_ranking_model import toy_config
from test_ranking_training import FAST, toy_examples

from ranking.distributed import finish_training, train_worker
from ranking.training import train_ranker, worker_shares


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_worker_reproduces_single_process_training(monkeypatch):
    config = toy_config(training=FAST)
    train, discretizer = toy_examples(config, 3000, seed=1)
    val, _ = toy_examples(config, 1000, seed=2, discretizer=discretizer)
    single = train_ranker(config, train, val, progress=False)
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())), ("RANK", "0"),
                        ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    outcome = train_worker(config, train, val)
    parallel = finish_training(config, outcome, val)
    assert parallel.metrics["world_size"] == 1 and parallel.best_epoch == single.best_epoch
    assert [h["epoch"] for h in parallel.history] == [h["epoch"] for h in single.history]
    for got, expected in zip(parallel.history, single.history, strict=True):
        assert got["train_log_loss"] == pytest.approx(expected["train_log_loss"], rel=1e-5)
        assert got["val_log_loss"] == pytest.approx(expected["val_log_loss"], rel=1e-5)
    for key, tensor in single.model.state_dict().items():
        torch.testing.assert_close(parallel.model.state_dict()[key], tensor, rtol=1e-4, atol=1e-6)


def test_worker_shares_split_every_global_batch_and_drop_a_too_small_tail():
    order = np.random.default_rng(0).permutation(11)
    shares = [worker_shares(11, 4, 2, rank, order) for rank in (0, 1)]
    # Batches of 4, 4 and 3 rows; each split in two, rank 0 taking the larger half of the odd one.
    assert [len(s) for s in shares[0]] == [2, 2, 2] and [len(s) for s in shares[1]] == [2, 2, 1]
    assert sorted(np.concatenate(shares[0] + shares[1])) == list(range(11))
    assert [len(s) for s in worker_shares(9, 4, 2, 0, order[:9])] == [2, 2]  # the last row alone is dropped
    assert [list(s) for s in worker_shares(5, 2, 1, 0, order[:5])] == [list(order[:2]), list(order[2:4]),
                                                                       list(order[4:5])]
