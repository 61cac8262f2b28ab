"""`nearline submit JOB [ARGS...]`: the spark-submit command that runs a nearline job on a cluster.

The packages are zipped and shipped with --py-files so executors import the
same code as the driver; the config file travels with --files. Spark settings
come from the config's spark section, so local and cluster runs differ only in
configuration. Prints the command; `--run` executes it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from nearline.config import NearlineConfig, SparkConfig

# Every package a job may import on the driver or in an executor (serving: the Ray-free serving tables and eval code).
PACKAGES = ("cli", "jobs", "evaluation", "inputs", "nearline", "embeddings", "retrieval", "ranking", "serving", "storage")


def build_code_zip(repo_root: Path, out_dir: Path) -> Path:
    """Zip the project packages (sources only) for --py-files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "nearline-code.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for path in sorted((repo_root / package).rglob("*.py")):
                zf.write(path, path.relative_to(repo_root).as_posix())
    return archive


def spark_submit_executable() -> str:
    """spark-submit from PATH, else the one pyspark installed beside this interpreter."""
    beside = Path(sys.executable).parent / "spark-submit"
    return shutil.which("spark-submit") or (str(beside) if beside.exists() else "spark-submit")


def spark_submit_command(
    spark: SparkConfig, code_zip: Path, entry_point: Path, config_path: str | None, job_args: list[str],
    deploy_mode: str = "client", overrides: list[str] | None = None,
) -> list[str]:
    command = [spark_submit_executable(), "--master", spark.master, "--deploy-mode", deploy_mode,
               "--name", f"{spark.app_name}-{job_args[0] if job_args else 'job'}",
               "--py-files", str(code_zip), "--conf", f"spark.driver.memory={spark.driver_memory}",
               "--conf", "spark.sql.execution.arrow.pyspark.enabled=true",
               "--conf", "spark.sql.session.timeZone=UTC",
               "--conf", f"spark.ui.enabled={str(spark.ui_enabled).lower()}"]
    if spark.executor_memory:
        command += ["--executor-memory", spark.executor_memory]
    if spark.executor_cores:
        command += ["--executor-cores", str(spark.executor_cores)]
    if spark.num_executors:
        command += ["--num-executors", str(spark.num_executors)]
    if spark.python:
        command += ["--conf", f"spark.pyspark.python={spark.python}"]
    for key, value in sorted(spark.extra_conf.items()):
        command += ["--conf", f"{key}={value}"]
    nearline_args = []
    if config_path:
        # In cluster mode the driver runs remotely and finds the shipped file in its working directory.
        command += ["--files", config_path]
        nearline_args += ["--config", config_path if deploy_mode == "client" else Path(config_path).name]
    for assignment in overrides or []:
        nearline_args += ["--set", assignment]
    return command + [str(entry_point)] + nearline_args + job_args


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    if not args.job_args:
        raise ValueError("submit needs a job, e.g. `nearline submit generate`")
    if config.spark.master.startswith("sc://"):
        # spark-submit launches a driver JVM; a Connect client has none, its driver is the server.
        raise ValueError(
            f"spark.master={config.spark.master} is a Spark Connect server, which takes no spark-submit: "
            f"run the job itself, e.g. `nearline --set spark.master={config.spark.master} "
            f"{shlex.join(args.job_args)}`; submit expects a classic master (spark://, yarn, k8s://, local[*])"
        )
    repo_root = Path(__file__).resolve().parent.parent
    code_zip = build_code_zip(repo_root, Path(args.build_dir))
    config_path = args.config_file or args.config_path
    command = spark_submit_command(config.spark, code_zip, repo_root / "cli" / "main.py", config_path,
                                   args.job_args, args.deploy_mode, args.config_overrides)
    print(shlex.join(command))
    if args.run:
        import pyspark

        from jobs.spark import check_master_reachable

        check_master_reachable(config.spark.master, config.spark.master_connect_timeout_s)

        spark_python = config.spark.python

        # pip's spark-submit finds its Spark through `python3` on PATH unless told; point it at ours.
        env = {"SPARK_HOME": str(Path(pyspark.__file__).parent), "PYSPARK_DRIVER_PYTHON": sys.executable,
               "PYSPARK_PYTHON": spark_python or sys.executable,
               **os.environ}
        return subprocess.run(command, check=False, env=env).returncode
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit")
    parser.add_argument("--run", action="store_true", help="execute the command instead of printing it only")
    parser.add_argument("--deploy-mode", choices=["client", "cluster"], default="client")
    parser.add_argument("--build-dir", default="build", help="where the code zip is written")
    parser.add_argument("--config-file", help="config file shipped to the cluster (default: the one in use)")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="the nearline command and its arguments")
    parser.set_defaults(handler=_handle)
