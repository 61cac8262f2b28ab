"""Shared fixtures: seeded data, tiny configs, and one local Spark / Ray per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = _gpu_available()
    has_java = shutil.which("java") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))
        if "spark" in item.keywords and not has_java:
            item.add_marker(pytest.mark.skip(reason="Java 17 not found: Spark tests need a JVM"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def assert_same_files():
    """Asserts two Parquet directories hold the same files with equal rows, schema and metadata."""
    import pyarrow.parquet as pq

    def contents(root: Path) -> dict:
        return {p.relative_to(root).as_posix(): pq.read_table(p) for p in sorted(root.rglob("*.parquet"))}

    def check(first: Path, second: Path) -> None:
        left, right = contents(first), contents(second)
        assert left and list(left) == list(right)
        for name, table in left.items():
            assert table.equals(right[name], check_metadata=True), name

    return check


@pytest.fixture(scope="session")
def spark():
    """One local[2] session for the whole test run (JVM start costs seconds)."""
    from jobs.spark import build_spark_session
    from nearline.config import SparkConfig

    session = build_spark_session(SparkConfig(master="local[2]", driver_memory="2g", app_name="nearline-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tiny_dataset(spark, tmp_path_factory: pytest.TempPathFactory):
    """A generated 1,000-user dataset and the config that made it, shared by integration tests."""
    from jobs.generate_dataset import run
    from nearline.config import load_config

    root = tmp_path_factory.mktemp("nearline")
    config = load_config(None, [
        f"data.path={root / 'data'}", f"store.root={root / 'store'}", "spark.master=local[2]",
        "generate.num_users=1000", "generate.users_per_block=500", "generate.num_days=6",
    ])
    run(spark, config)
    return config
