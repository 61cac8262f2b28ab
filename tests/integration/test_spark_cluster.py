"""A real Spark standalone cluster on loopback (master + one worker from the pyspark package).

Jobs go through `nearline submit --run`, so the code reaches executors as the shipped zip,
exactly as on a remote cluster, and must produce the same files and rows as local mode.
"""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.cli import main as nearline

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{log.name} exited: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{text!r} not in {log} after {timeout_s} s")


@pytest.fixture(scope="module")
def standalone_master(tmp_path_factory):
    spark_class = str(Path(sys.executable).parent / "spark-class")
    logs = tmp_path_factory.mktemp("spark-cluster")
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    processes = []
    try:
        master_log = logs / "master.log"
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(_free_port())], stdout=master_log.open("w"), stderr=subprocess.STDOUT))
        _wait_for(master_log, "I have been elected leader", processes[0])
        worker_log = logs / "worker.log"
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2",
             "--memory", "2g", "--webui-port", str(_free_port()), "--work-dir", str(logs / "work")],
            stdout=worker_log.open("w"), stderr=subprocess.STDOUT))
        _wait_for(worker_log, "Successfully registered with master", processes[1])
        yield url
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_generate_on_the_cluster_matches_local_mode(standalone_master, tiny_dataset, tmp_path, assert_same_files):
    out = tmp_path / "cluster-data"
    code = nearline([
        "--set", f"spark.master={standalone_master}", "--set", f"spark.python={sys.executable}",
        "--set", f"data.path={out}", "--set", "generate.num_users=1000",
        "--set", "generate.users_per_block=500", "--set", "generate.num_days=6",
        "submit", "--run", "--build-dir", str(tmp_path / "build"), "generate",
    ])
    assert code == 0
    assert_same_files(Path(tiny_dataset.data.path), out)


def _closed_port() -> int:
    return _free_port()  # nothing listens once the probe socket is closed


@pytest.mark.parametrize("via_submit", [False, True], ids=["direct", "submit"])
def test_unreachable_master_fails_fast_and_writes_nothing(tmp_path, capsys, via_submit):
    master = f"spark://127.0.0.1:{_closed_port()}"
    out = tmp_path / "data"
    command = ["generate"] if not via_submit else ["submit", "--run", "--build-dir", str(tmp_path / "b"), "generate"]
    code = nearline(["--set", f"spark.master={master}", "--set", "spark.master_connect_timeout_s=2",
                     "--set", f"data.path={out}", "--set", "generate.num_users=1000", *command])
    error = capsys.readouterr().err
    assert code == 2
    assert f"Spark master {master} is unreachable within spark.master_connect_timeout_s=2 s" in error
    assert not out.exists() and not list(tmp_path.glob(".data*"))


def _synthetic_examples(config, num_rows: int, seed: int):
    """Examples whose labels follow a fixed logistic model of the ids: learnable, with a known signal."""
    import numpy as np

    from ranking.config import GROUP_NAMES
    from ranking.examples import RankingExamples

    rng = np.random.default_rng(seed)
    hash_space = config.discretizer.hash_space_size
    effect = np.random.default_rng(99).normal(0.0, 1.0, hash_space)
    ids, dense, logit = {}, {}, np.full(num_rows, -1.5)
    for group in GROUP_NAMES:
        ids[group] = rng.integers(0, hash_space, (num_rows, len(config.groups[group].sparse_features)))
        dense[group] = rng.normal(size=(num_rows, config.groups[group].dense_width)).astype(np.float32)
        logit += 0.5 * effect[ids[group]].sum(axis=1)
    offsets = -0.5 * np.arange(len(config.tasks))
    labels = rng.random((num_rows, len(config.tasks))) < 1 / (1 + np.exp(-(logit[:, None] + offsets)))
    return RankingExamples(ids, dense, labels.astype(np.float32), np.arange(num_rows, dtype=np.int64))


def test_distributed_training_matches_single_process_and_warm_starts(spark):
    """TorchDistributor, 2 barrier tasks on local[2] (the code path a cluster runs) vs one process."""
    from jobs.train_ranker_distributed import distributed_trainer
    from ranking.config import RankerConfig
    from ranking.training import evaluate, train_ranker

    config = RankerConfig.model_validate({"discretizer": {"num_bins": 8, "hash_space_size": 512},
                                          "training": {"epochs": 2, "batch_size": 256}})
    train, val, test = (_synthetic_examples(config, n, seed) for n, seed in ((6000, 1), (1500, 2), (3000, 3)))
    single = train_ranker(config, train, val, progress=False)
    parallel = distributed_trainer(num_workers=2)(config, train, val, progress=False)
    assert parallel.metrics["world_size"] == 2
    quality = {name: evaluate(result.model, test, config.tasks) for name, result in
               (("single", single), ("distributed", parallel))}
    print({name: (round(m["log_loss"], 4), round(m["auc"], 4)) for name, m in quality.items()})
    assert quality["distributed"]["auc"] > 0.7  # learnt the signal, not the base rate
    assert abs(quality["distributed"]["log_loss"] - quality["single"]["log_loss"]) < 0.02
    assert abs(quality["distributed"]["auc"] - quality["single"]["auc"]) < 0.02

    # Warm start: the same name-and-shape mapping as single-process training, and it starts ahead.
    warm = distributed_trainer(num_workers=2)(config, train, val, parent_state=parallel.model.state_dict(),
                                              progress=False)
    reference = train_ranker(config, train, val, parent_state=parallel.model.state_dict(), progress=False)
    assert warm.warm_start_report == reference.warm_start_report and warm.warm_start_report.kept
    assert warm.history[0]["val_log_loss"] < parallel.history[0]["val_log_loss"]
