"""Real Spark clusters on loopback, both from the pyspark package: a standalone master + worker, and a
Spark Connect server.

Every Spark job goes to the standalone cluster through `nearline submit --run`, so the code reaches the
executors as the shipped zip, exactly as on a remote cluster, and to the Connect server through
`spark.master=sc://...` from a separate client process. Each must write the same tables, row for row,
and train the same weights as local mode on the same inputs and seed. Parquet bytes differ between
JVM processes (see jobs/generate_dataset.py), so tables are compared file by file with pyarrow.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest

from cli.main import main as nearline
from nearline.config import config_to_yaml, load_config
from storage.store import Store

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SPARK_BIN = Path(sys.executable).parent
# Small models: the point is equality of what the jobs write, not model quality.
FAST_MODELS = [
    "content.epochs=1", "content.embedding_dim=16", "content.lstm_hidden=16", "content.content_embedding_dim=16",
    "content.wide_buckets=4096", "content.num_labels=8", "ranker.training.epochs=1",
    "ranker.discretizer.hash_space_size=4096",
]
# Every Spark job that writes to the store, in dependency order (each reads the CURRENT version of the last).
STORE_JOBS = [
    ["content", "train"],
    ["export", "content"],
    ["export", "user-interest"],
    ["features"],
    ["ranker", "train", "--warm-start-from", "none"],
    ["export", "user"],
    ["export", "user-author"],
]
TABLE_OUTPUTS = [("models", "content"), ("embeddings", "content"), ("embeddings", "user_interest"),
                 ("features", "ranking"), ("embeddings", "user"), ("embeddings", "user_author")]
WEIGHT_OUTPUTS = [("models", "content", "model.pt"), ("models", "ranker", "weights.pt")]


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


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spark_env() -> dict[str, str]:
    # pip's launch scripts find their Spark through `python3` on PATH unless SPARK_HOME says otherwise.
    return {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent), "PYSPARK_PYTHON": sys.executable}


@dataclass(frozen=True)
class StandaloneCluster:
    url: str
    work_dir: Path  # the worker's: <app id>/<executor id>/stderr is each executor's log


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    spark_class = str(SPARK_BIN / "spark-class")
    logs = tmp_path_factory.mktemp("spark-cluster")
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    processes = []
    try:
        master_log = logs / "master.log"
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(_free_port())], stdout=master_log.open("w"), stderr=subprocess.STDOUT,
            env=_spark_env()))
        _wait_for(master_log, "I have been elected leader", processes[0])
        worker_log = logs / "worker.log"
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2",
             "--memory", "2g", "--webui-port", str(_free_port()), "--work-dir", str(logs / "work")],
            stdout=worker_log.open("w"), stderr=subprocess.STDOUT, env=_spark_env()))
        _wait_for(worker_log, "Successfully registered with master", processes[1])
        yield StandaloneCluster(url, logs / "work")
    finally:
        _stop(processes)


@pytest.fixture(scope="module")
def tiny_config_file(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset's config as a file, so that local, cluster and Connect runs read one config."""
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(config_to_yaml(tiny_dataset))
    return path


@pytest.fixture(scope="module")
def local_chain(spark, tiny_config_file, tmp_path_factory):
    """Every store-writing Spark job of STORE_JOBS run in local mode; (its config file, its store)."""
    from jobs import (
        build_ranking_features,
        export_content_embeddings,
        export_user_embeddings,
        train_content_model,
        train_ranker,
    )

    root = tmp_path_factory.mktemp("local-chain")
    config = load_config(str(tiny_config_file), [f"store.root={root / 'store'}", *FAST_MODELS])
    config_file = root / "nearline.yaml"
    config_file.write_text(config_to_yaml(config))
    store = Store(config.store.root)
    train_content_model.train_from_dataset(spark, config, store, publish=True)
    export_content_embeddings.run_content(spark, config, store, None, publish=True)
    export_content_embeddings.run_user_interest(spark, config, store, None, publish=True)
    build_ranking_features.run(spark, config)
    train_ranker.run(config, "none", 1.0)
    export_user_embeddings.run(spark, config, "user")
    export_user_embeddings.run(spark, config, "user-author")
    return config_file, store


def _datasets(root: Path) -> dict[str, pa.Table]:
    """Each directory of Parquet parts under root as one table, parts in name order: what a reader sees.

    Globally sorted outputs (orderBy) split into parts at bounds Spark samples with a seed taken from
    internal RDD ids, which differ between driver processes; rows and their order do not.
    """
    parts: dict[str, list[pa.Table]] = {}
    for path in sorted(root.rglob("*.parquet")):
        parts.setdefault(path.parent.relative_to(root).as_posix(), []).append(pq.read_table(path))
    return {directory: pa.concat_tables(tables) for directory, tables in parts.items()}


def _spark_metadata(table: pa.Table) -> dict[bytes, bytes]:
    # A Connect server spells the default collation out ("string collate UTF8_BINARY") in the schema
    # JSON that Spark keeps in the footer; classic Spark writes "string". Both read back as one type.
    return {key: value.replace(b" collate UTF8_BINARY", b"") for key, value in (table.schema.metadata or {}).items()}


def _assert_same_tables(expected: Path, actual: Path) -> None:
    """Equal rows, order, schema and Spark metadata in every directory of Parquet parts under both roots."""
    left, right = _datasets(expected), _datasets(actual)
    assert left and list(left) == list(right), f"{actual}: {list(right)}, expected {list(left)}"
    for directory, table in left.items():
        assert table.equals(right[directory]), f"{actual}/{directory} differs"
        assert _spark_metadata(table) == _spark_metadata(right[directory]), f"{actual}/{directory}: metadata"


def _assert_same_outputs(expected: Store, actual: Store) -> None:
    """The CURRENT versions of both stores hold equal tables and equal trained weights."""
    import torch

    for kind, name in TABLE_OUTPUTS:
        _assert_same_tables(*(Path(store.data_path(kind, name, store.current(kind, name)))
                              for store in (expected, actual)))
    for kind, name, weights in WEIGHT_OUTPUTS:
        left, right = (torch.load(Path(store.path(kind, name, store.current(kind, name))) / weights,
                                  weights_only=True) for store in (expected, actual))
        left, right = (blob.get("state_dict", blob) for blob in (left, right))
        assert list(left) == list(right), f"{kind}/{name}: different parameters"
        # Not torch.equal: the content model's wide EmbeddingBag sums its sparse gradients in an order
        # that varies between processes (seen: 1e-7 apart), whatever ran the Spark part.
        unequal = [key for key in left if not torch.allclose(left[key], right[key], rtol=0.0, atol=1e-6)]
        assert not unequal, f"{kind}/{name}: weights differ in {unequal}"


DISTRIBUTED_RANKER = ["ranker-distributed", "--num-workers", "2", "--warm-start-from", "none", "--no-publish"]


def _assert_distributed_ranker_matches(store: Store) -> None:
    """The newest ranker (distributed, unpublished) tests as well as the CURRENT one (single process)."""
    versions = (store.current("models", "ranker"), store.versions("models", "ranker")[-1])
    assert versions[0] != versions[1]
    single, distributed = (store.manifest("models", "ranker", version)["metrics"]["test"] for version in versions)
    print({"single": (single["log_loss"], single["auc"]), "distributed": (distributed["log_loss"], distributed["auc"])})
    assert abs(distributed["auc"] - single["auc"]) < 0.02
    assert abs(distributed["log_loss"] - single["log_loss"]) < 0.02


def _submit(cluster: StandaloneCluster, build_dir: Path, config_args: list[str], job: list[str]) -> int:
    return nearline([*config_args, "--set", f"spark.master={cluster.url}", "--set", f"spark.python={sys.executable}",
                     "submit", "--run", "--build-dir", str(build_dir), *job])


def test_generate_on_the_cluster_matches_local_mode(standalone_cluster, tiny_dataset, tiny_config_file, tmp_path,
                                                    assert_same_files):
    out = tmp_path / "cluster-data"
    code = _submit(standalone_cluster, tmp_path / "build",
                   ["--config", str(tiny_config_file), "--set", f"data.path={out}"], ["generate"])
    assert code == 0
    assert_same_files(Path(tiny_dataset.data.path), out)


# The whole chain of store jobs, each its own spark-submit: 5 minutes on a quiet 2-core box, twice that when
# the cores are shared, which the suite-wide 600 s limit would cut short.
@pytest.mark.timeout(1500)
def test_every_store_job_on_the_cluster_matches_local_mode(standalone_cluster, local_chain, tmp_path):
    config_file, local_store = local_chain
    config_args = ["--config", str(config_file), "--set", f"store.root={tmp_path / 'store'}"]
    for job in STORE_JOBS:
        assert _submit(standalone_cluster, tmp_path / "build", config_args, job) == 0, job
    store = Store(str(tmp_path / "store"))
    _assert_same_outputs(local_store, store)
    # Barrier tasks on the cluster's executor: DDP does not reproduce single-process weights, only quality.
    assert _submit(standalone_cluster, tmp_path / "build", config_args, DISTRIBUTED_RANKER) == 0
    _assert_distributed_ranker_matches(store)


def test_imports_on_the_cluster_match_local_mode(standalone_cluster, spark, shared_data, tiny_config_file, tmp_path,
                                                 assert_same_files):
    import gzip

    from jobs import import_tweeteval, import_twitter1516

    # The first lines of each source keep the runs short; every code path of the adapters still runs.
    twitter = tmp_path / "twitter15"
    twitter.mkdir()
    with gzip.open(shared_data / "twitter15" / "engagements.csv.gz", "rt") as source:
        head = [next(source) for _ in range(5001)]
    with gzip.open(twitter / "engagements.csv.gz", "wt") as sample:
        sample.writelines(head)
    (twitter / "source_tweets.tsv").write_bytes((shared_data / "twitter15" / "source_tweets.tsv").read_bytes())
    tweeteval = tmp_path / "tweeteval"
    tweeteval.mkdir()
    (tweeteval / "mapping.txt").write_bytes((shared_data / "tweeteval_emoji" / "mapping.txt").read_bytes())
    for kind in ("text", "labels"):
        lines = (shared_data / "tweeteval_emoji" / f"val_{kind}.txt").read_bytes().splitlines(keepends=True)
        (tweeteval / f"val_{kind}.txt").write_bytes(b"".join(lines[:500]))
    for name, module, source in (("twitter1516", import_twitter1516, twitter),
                                 ("tweeteval", import_tweeteval, tweeteval)):
        module.run(spark, str(source), str(tmp_path / f"{name}-local"))
        job = ["import", name, str(source), "--out", str(tmp_path / f"{name}-cluster")]
        assert _submit(standalone_cluster, tmp_path / "build", ["--config", str(tiny_config_file)], job) == 0, name
        assert_same_files(tmp_path / f"{name}-local", tmp_path / f"{name}-cluster")


_TASK_LINE = re.compile(r"Running task (\d+)\.(\d+) in stage (\d+)\.(\d+) \(TID (\d+)\)")


def _executor_in_a_task(work_dir: Path, apps_before: set[Path], job: subprocess.Popen,
                        timeout_s: float = 120) -> tuple[Path, int]:
    """(executor log dir, JVM pid) of the job's executor once it logs a task it has not finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for app in set(work_dir.glob("app-*")) - apps_before:
            for stderr in app.glob("*/stderr"):
                text = stderr.read_text(errors="replace")
                started = {match[4] for match in _TASK_LINE.findall(text)}
                if not started - set(re.findall(r"Finished task \S+ in stage \S+ \(TID (\d+)\)", text)):
                    continue
                pids = subprocess.run(["pgrep", "-f", f"CoarseGrainedExecutorBackend.*--app-id {app.name}"],
                                      capture_output=True, text=True).stdout.split()
                if len(pids) == 1:
                    return stderr.parent, int(pids[0])
        if job.poll() is not None:
            raise AssertionError(f"the job ended (exit {job.returncode}) before an executor ran a task")
        time.sleep(0.1)
    raise TimeoutError(f"no executor of a new application in {work_dir} ran a task within {timeout_s} s")


def test_a_killed_executor_has_its_tasks_retried_and_loses_or_duplicates_no_row(
    standalone_cluster, tiny_dataset, tiny_config_file, tmp_path, assert_same_files
):
    out = tmp_path / "data"
    apps_before = set(standalone_cluster.work_dir.glob("app-*"))
    log = tmp_path / "submit.log"
    job = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--config", str(tiny_config_file), "--set", f"data.path={out}",
         "--set", f"spark.master={standalone_cluster.url}", "--set", f"spark.python={sys.executable}",
         "submit", "--run", "--build-dir", str(tmp_path / "build"), "generate"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
    )
    try:
        killed_dir, pid = _executor_in_a_task(standalone_cluster.work_dir, apps_before, job)
        os.kill(pid, signal.SIGKILL)
        assert job.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if job.poll() is None:  # its spark-submit child too: both are in the job's own session
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert f"Lost executor {killed_dir.name} on 127.0.0.1: Command exited with code 137" in log.read_text()
    # The worker launched a replacement executor, which ran the killed one's unfinished tasks again.
    replacements = [d for d in killed_dir.parent.iterdir() if d != killed_dir]
    assert replacements, f"no executor replaced {killed_dir}"
    retried = {(task, stage) for d in replacements for task, attempt, stage, stage_attempt, _ in
               _TASK_LINE.findall((d / "stderr").read_text(errors="replace")) if (attempt, stage_attempt) != ("0", "0")}
    print(f"killed executor {killed_dir.name} (pid {pid}); retried tasks (partition, stage): {sorted(retried)}")
    assert retried
    assert_same_files(Path(tiny_dataset.data.path), out)


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """A Spark Connect server (local[2] behind it) on a free loopback port; its sc:// URL."""
    log = tmp_path_factory.mktemp("spark-connect") / "server.log"
    port = _free_port()
    server = subprocess.Popen(
        [str(SPARK_BIN / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
         "--name", "nearline-connect-test", "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
         "--conf", f"spark.connect.grpc.binding.port={port}"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=_spark_env(),
    )
    try:
        _wait_for(log, "Spark Connect server started", server)
        yield f"sc://127.0.0.1:{port}"
    finally:
        _stop([server])


def _connect_client(url: str, args: list[str]) -> subprocess.CompletedProcess:
    # A process of its own: a Connect session switches pyspark into Connect mode for the whole
    # process (SPARK_CONNECT_MODE_ENABLED), which the local session of the other tests must not see.
    return subprocess.run([sys.executable, "-m", "cli.main", *args, "--set", f"spark.master={url}"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def test_every_spark_job_under_spark_connect_matches_local_mode(connect_server, local_chain, tiny_dataset, tmp_path):
    config_file, local_store = local_chain
    config_args = ["--config", str(config_file), "--set", f"store.root={tmp_path / 'store'}"]
    generated = _connect_client(connect_server, [*config_args, "--set", f"data.path={tmp_path / 'data'}", "generate"])
    assert generated.returncode == 0, generated.stderr[-3000:]
    _assert_same_tables(Path(tiny_dataset.data.path), tmp_path / "data")
    for job in STORE_JOBS:
        result = _connect_client(connect_server, [*config_args, *job])
        assert result.returncode == 0, (job, result.stderr[-3000:])
    store = Store(str(tmp_path / "store"))
    _assert_same_outputs(local_store, store)
    result = _connect_client(connect_server, [*config_args, *DISTRIBUTED_RANKER])
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_distributed_ranker_matches(store)


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
    assert code == 1  # the job could not run: retrying may help, unlike a usage error (2)
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
