"""The whole refresh chain on local Spark, and what happens when it breaks.

Tests in this module run in order on one store: a first refresh publishes, a re-run
is free, and each fault leaves the serving versions exactly as they were while
the next refresh recovers on its own.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading

import pytest

from jobs.refresh import PUBLISH_ORDER, run_refresh
from storage.store import Store

pytestmark = [pytest.mark.spark, pytest.mark.slow]

FAST_MODELS = [
    "content.epochs=2", "content.embedding_dim=32", "content.lstm_hidden=32", "content.content_embedding_dim=32",
    "content.wide_buckets=16384", "content.num_labels=16", "ranker.training.epochs=2",
]


def _serving(store: Store) -> dict[str, str | None]:
    return {f"{kind}/{name}": store.current(kind, name) for kind, name in PUBLISH_ORDER}


@pytest.fixture(scope="module")
def refresh_config(tiny_dataset, tmp_path_factory):
    from nearline.config import load_config

    root = tmp_path_factory.mktemp("refresh")
    overrides = [f"data.path={tiny_dataset.data.path}", f"store.root={root / 'store'}", "spark.master=local[2]",
                 f"refresh.lock_path={root / 'store' / 'refresh.lock'}", *FAST_MODELS]
    return load_config(None, overrides), overrides


@pytest.fixture(scope="module")
def first_run(spark, refresh_config):
    config, _ = refresh_config
    return run_refresh(config, spark)


def test_first_refresh_publishes_a_coherent_set(first_run, refresh_config):
    config, _ = refresh_config
    assert first_run["outcome"] == "success", first_run
    store = Store(config.store.root)
    serving = _serving(store)
    assert all(serving.values()), serving
    index = store.manifest("indexes", "content", serving["indexes/content"])
    assert index["embedding_version"] == serving["embeddings/content"]
    assert store.manifest("embeddings", "content", serving["embeddings/content"])["model_version"] == \
        serving["models/content"]
    assert store.manifest("indexes", "user", serving["indexes/user"])["model_version"] == serving["models/ranker"]
    assert {store.manifest("features", n, serving[f"features/{n}"])["input_fingerprint"]
            for n in ("post", "user_lists")} == {first_run["input_fingerprint"]}
    assert [s["status"] for s in first_run["stages"]].count("ran") == len(first_run["stages"])


def test_rerun_with_unchanged_inputs_skips_every_stage(spark, first_run, refresh_config):
    config, _ = refresh_config
    record = run_refresh(config, spark)
    assert record["outcome"] == "unchanged"
    assert {s["name"]: s["status"] for s in record["stages"]
            if s["name"] not in ("validate_input", "publish")} == {
        name: "skipped" for name in ("content_embeddings", "user_interest", "features", "post_features", "user_lists",
                                     "ranker", "user_embeddings", "user_author_embeddings", "index_content",
                                     "index_user")}
    assert record["serving"] == first_run["serving"]


def test_failing_stage_keeps_serving_and_names_the_stage(spark, first_run, refresh_config):
    config, _ = refresh_config
    broken = config.model_copy(update={"indexes": {
        **config.indexes, "user": config.indexes["user"].model_copy(update={"factory_string": "NotAnIndex,Flat"})}})
    record = run_refresh(broken, spark)
    assert record["outcome"] == "failed"
    assert record["failed_stage"] == "index_user"
    assert "NotAnIndex" in record["reason"]
    assert record["serving"] == first_run["serving"]
    refreshes = [r for r in Store(config.store.root).runs() if "stages" in r]
    assert refreshes[-1]["failed_stage"] == "index_user"


def test_corrupt_input_fails_before_any_work(spark, first_run, refresh_config, tmp_path):
    config, _ = refresh_config
    data = tmp_path / "data"
    shutil.copytree(config.data.path, data)
    victim = sorted((data / "engagements").glob("part-*.parquet"))[0]
    victim.write_bytes(b"not parquet at all" * 100)
    record = run_refresh(config.model_copy(update={"data": config.data.model_copy(update={"path": str(data)})}),
                         spark)
    assert record["outcome"] == "failed"
    assert record["failed_stage"] == "validate_input"
    assert "engagements" in record["reason"]
    assert record["serving"] == first_run["serving"]


def test_killed_refresh_publishes_nothing_half_and_the_next_one_recovers(first_run, refresh_config):
    config, overrides = refresh_config
    store = Store(config.store.root)
    # A new content index spec: every upstream stage is reused, so the child gets to the index build fast.
    # (Probing more lists than the default keeps the index well above the gate's recall floor.)
    changed = [*overrides, "indexes.content.search.nprobe=40"]
    args = [sys.executable, "-m", "cli.main", *[a for o in changed for a in ("--set", o)], "refresh"]
    before = _serving(store)
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Only a safety net: a child that hangs silently is killed, its output ends and the assert below fails.
    watchdog = threading.Timer(300, child.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        # Kill on the event, not after a delay: the child's own line saying the index build has begun.
        for line in child.stdout:
            lines.append(line)
            if "[index_content] running" in line:
                break
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        child.wait()
    output = "".join(lines[-40:])
    assert lines and "[index_content] running" in lines[-1], f"killed before the index build started:\n{output}"
    # Killed mid-build: nothing was published, and every pointer still names a complete version.
    assert _serving(store) == before
    for key, version in before.items():
        kind, name = key.split("/")
        assert version in store.versions(kind, name), (key, version)

    recovered = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert recovered.returncode == 0, recovered.stdout[-3000:] + recovered.stderr[-3000:]
    record = [r for r in store.runs() if "stages" in r][-1]
    assert record["outcome"] in ("success", "unchanged")
    statuses = {s["name"]: s["status"] for s in record["stages"]}
    assert statuses["features"] == "skipped" and statuses["ranker"] == "skipped"
    index = store.manifest("indexes", "content", store.current("indexes", "content"))
    assert index["spec"]["search"]["nprobe"] == 40


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs quota simulation needs Linux")
def test_full_store_disk_fails_cleanly(spark, first_run, refresh_config, tmp_path):
    config, _ = refresh_config
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    used_kb = int(subprocess.run(["du", "-sk", config.store.root], capture_output=True, text=True).stdout.split()[0])
    # Room for the run records, not for a new HNSW content index (its graph alone is ~350 kB here).
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used_kb + 48}k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    try:
        shutil.copytree(config.store.root, mount_point / "store")
        store = Store(str(mount_point / "store"))
        before = _serving(store)
        full = config.model_copy(update={
            "store": config.store.model_copy(update={"root": str(mount_point / "store")}),
            "indexes": {**config.indexes,
                        "content": config.indexes["content"].model_copy(update={"factory_string": "HNSW32"})},
        })
        record = run_refresh(full, spark)
        assert record["outcome"] == "failed"
        assert record["failed_stage"] == "index_content"
        assert "No space left" in record["reason"] or "Errno 28" in record["reason"], record["reason"]
        assert _serving(store) == before
        staging = mount_point / "store" / "indexes" / "content" / "_staging"
        assert not staging.exists() or not any(staging.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
