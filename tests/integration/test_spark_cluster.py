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
