"""SparkSession factory: one place that turns SparkConfig into a session.

The same code runs on local[*] and under spark-submit on a cluster: when launched
by spark-submit the master and resources come from the submit command, and the
builder only fills in what is not already set.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys

from pyspark.sql import SparkSession

from nearline.config import SparkConfig


class JavaMissingError(RuntimeError):
    pass


def check_java() -> str:
    """Return the `java -version` line, or raise with how to install Java 17."""
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(
            "Java was not found on PATH: Spark needs Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    return output.splitlines()[0] if output else "java (unknown version)"


class MasterUnreachableError(RuntimeError):
    pass


def check_master_reachable(master: str, timeout_s: float) -> None:
    """Raise unless a spark:// or sc:// master accepts a TCP connection within timeout_s (others: no check).

    Spark's own client retries registration for about a minute before giving up, and a Connect client
    retries longer; a job must fail fast and clearly instead, before it stages any output.
    """
    scheme, sep, rest = master.partition("://")
    if not sep or scheme not in ("spark", "sc"):
        return
    # spark://h1:7077,h2:7077 lists standby masters; one that answers is enough. sc:// may carry /;params.
    addresses = rest.split("/", 1)[0].split(";", 1)[0].split(",")
    problems = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port or (7077 if scheme == "spark" else 15002))), timeout_s):
                return
        except (OSError, ValueError) as exc:
            problems.append(f"{address}: {exc}")
    raise MasterUnreachableError(
        f"Spark master {master} is unreachable within spark.master_connect_timeout_s={timeout_s:g} s "
        f"({'; '.join(problems)}); nothing was run or written"
    )


def shuffle_partitions(config: SparkConfig, expected_rows: int) -> int:
    """Enough partitions for ~rows_per_shuffle_partition rows each, at least 2, capped."""
    wanted = math.ceil(max(expected_rows, 1) / config.rows_per_shuffle_partition)
    return int(min(max(wanted, 2), config.max_shuffle_partitions))


def build_spark_session(config: SparkConfig, expected_rows: int = 0, app_suffix: str = "") -> SparkSession:
    """Build (or reuse) the session for a job.

    Args:
        config: the spark section of the nearline config.
        expected_rows: rough size of the job's largest table, to size shuffle partitions.
        app_suffix: job name appended to the app name, so cluster UIs show which job runs.
    """
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        check_master_reachable(config.master, config.master_connect_timeout_s)
    if config.master.startswith("sc://"):
        builder = SparkSession.builder.remote(config.master)
    elif os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Launched by spark-submit: the JVM is already up with the master and resources of the
        # submit command, which must win over the config file's defaults.
        builder = SparkSession.builder
    else:
        check_java()
        builder = SparkSession.builder.master(config.master).config("spark.driver.memory", config.driver_memory)
        builder = builder.config("spark.ui.enabled", str(config.ui_enabled).lower())
        if config.master.startswith("local"):
            # Workers must run the driver's interpreter (the project venv), not whatever python3 is on
            # PATH; pyspark reads only the environment for this, so set it for the worker processes.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if config.executor_memory:
            builder = builder.config("spark.executor.memory", config.executor_memory)
        if config.executor_cores:
            builder = builder.config("spark.executor.cores", str(config.executor_cores))
        if config.num_executors:
            builder = builder.config("spark.executor.instances", str(config.num_executors))
        if config.python:
            builder = builder.config("spark.pyspark.python", config.python)
    app_name = f"{config.app_name}-{app_suffix}" if app_suffix else config.app_name
    builder = (
        builder.appName(app_name)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions(config, expected_rows)))
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    )
    for key, value in config.extra_conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not config.master.startswith("sc://"):
        spark.sparkContext.setLogLevel("ERROR")
    return spark
