"""One refresh: rebuild embeddings, ranker and indexes from the configured snapshot, then publish.

Reads:  config.data.path (the contract tables); the store's serving versions (warm start)
Writes: new versions in the store; CURRENT pointers switch only at the very end,
        after every stage and every validation gate passed; a run record in store/runs/

Chain: validate input -> content model (bootstrap when none is serving) -> content
embeddings -> user interests -> ranking features -> serving tables (post features and
user lists as of the snapshot) -> ranker (warm-started from the serving one) -> user and
user-author embeddings -> content and user indexes (each gated on recall, counts, NaN
and dimension) -> publish.

Each stage has a key: a hash of its config section, its upstream versions and the
input files' fingerprint. When a previous successful run produced a version under
the same key and that version still exists, the stage is skipped and the version
reused, so re-running an unchanged refresh is cheap and publishes nothing new.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.io import input_fingerprint
from nearline.config import NearlineConfig
from storage.store import Store, config_hash, new_version

# Artifacts a refresh publishes, in publish order: the indexes go last because
# serving follows the index pointers and must find everything they name already there.
PUBLISH_ORDER = (
    ("features", "post"),
    ("features", "user_lists"),
    ("models", "content"),
    ("embeddings", "content"),
    ("embeddings", "user_interest"),
    ("models", "ranker"),
    ("embeddings", "user"),
    ("embeddings", "user_author"),
    ("indexes", "content"),
    ("indexes", "user"),
)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage {stage} failed: {reason}")
        self.stage, self.reason = stage, reason


def stage_key(stage: str, *parts: Any) -> str:
    payload = json.dumps([stage, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass
class StageRecord:
    name: str
    status: str = "pending"  # ran | skipped | failed
    key: str | None = None
    version: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class RefreshRun:
    config: NearlineConfig
    store: Store
    run_id: str = field(default_factory=new_version)
    stages: list[StageRecord] = field(default_factory=list)
    staged: dict[tuple[str, str], str] = field(default_factory=dict)

    def previous_versions(self) -> dict[str, str]:
        """stage key -> version made by a completed stage of an earlier run (a failed run's finished
        stages count too: that is how the next refresh resumes where a failure stopped)."""
        found: dict[str, str] = {}
        for record in self.store.runs(limit=50):
            for stage in record.get("stages", []):
                if stage.get("key") and stage.get("version") and stage.get("status") in ("ran", "skipped"):
                    found[stage["key"]] = stage["version"]
        return found

    def stage(self, name: str, artifact: tuple[str, str] | None, key: str | None,
              action: Callable[[], tuple[str | None, dict[str, Any]]]) -> str | None:
        """Run one stage (or reuse the version an earlier run made under the same key)."""
        record = StageRecord(name, key=key)
        self.stages.append(record)
        started = time.perf_counter()
        reusable = self.previous_versions().get(key) if key else None
        if reusable and artifact and reusable in self.store.versions(*artifact):
            record.status, record.version = "skipped", reusable
            print(f"[{name}] unchanged inputs: reusing {artifact[0]}/{artifact[1]} {reusable}", flush=True)
        else:
            print(f"[{name}] running", flush=True)
            try:
                record.version, record.details = action()
            except Exception as exc:  # the refresh boundary: record which stage and why, then re-raise
                record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
                record.seconds = round(time.perf_counter() - started, 2)
                record.details["traceback"] = traceback.format_exc(limit=8)
                raise StageFailed(name, record.reason) from exc
            record.status = "ran"
        record.seconds = round(time.perf_counter() - started, 2)
        if artifact and record.version:
            self.staged[artifact] = record.version
        print(f"[{name}] {record.status} in {record.seconds:.1f} s"
              + (f" -> {record.version}" if record.version else ""), flush=True)
        return record.version


def _validate_input(config: NearlineConfig) -> tuple[None, dict[str, Any]]:
    from inputs.contract import read_tables, validate_tables

    report = validate_tables(read_tables(config.data.path))
    if not report.ok:
        raise ValueError("input breaks the data contract: " + "; ".join(str(p) for p in report.problems[:5]))
    return None, {"row_counts": report.row_counts}


def run_refresh(config: NearlineConfig, spark=None) -> dict[str, Any]:  # spark: a SparkSession, imported lazily
    """Run the whole chain once; returns the run record (also written to store/runs/)."""
    from jobs import (
        build_index,
        build_ranking_features,
        export_content_embeddings,
        export_serving_tables,
        export_user_embeddings,
        train_content_model,
        train_ranker,
    )
    from jobs.spark import build_spark_session

    store = Store(config.store.root)
    store.ensure_writable()
    run = RefreshRun(config, store)
    started_at = dt.datetime.now(dt.timezone.utc)
    record: dict[str, Any] = {"run_id": run.run_id, "started_at": started_at.isoformat(), "outcome": "running",
                              "data_path": config.data.path, "config_hash": config_hash(config)}
    store.record_run(record)
    try:
        fingerprint = input_fingerprint(config.data.path)
        record["input_fingerprint"] = fingerprint
        run.stage("validate_input", None, None, lambda: _validate_input(config))
        spark = spark or build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="refresh")

        content_model = store.current("models", "content")
        if content_model is None:
            content_model = run.stage(
                "content_model", ("models", "content"),
                stage_key("content_model", fingerprint, config_hash(config.content)),
                lambda: train_content_model.train_from_dataset(spark, config, store, publish=False),
            )
        # Both exports gate their vectors' health (content.gate) before anything can publish them: a
        # collapsed version fails its stage and stays staged for inspection; the record keeps the report.
        content = run.stage(
            "content_embeddings", ("embeddings", "content"),
            stage_key("content_embeddings", fingerprint, content_model, config_hash(config.content.gate.content)),
            lambda: export_content_embeddings.with_health(store, "content", export_content_embeddings.run_content(
                spark, config, store, content_model, False)),
        )
        run.stage(
            "user_interest", ("embeddings", "user_interest"),
            stage_key("user_interest", fingerprint, content, config_hash(config.user_interest),
                      config_hash(config.content.gate.user_interest)),
            lambda: export_content_embeddings.with_health(store, "user_interest",
                                                          export_content_embeddings.run_user_interest(
                                                              spark, config, store, content, False)),
        )
        features = run.stage(
            "features", ("features", "ranking"),
            stage_key("features", fingerprint, content, config_hash(config.ranker.features)),
            lambda: _versioned(build_ranking_features.run(spark, config, content_version=content)),
        )
        # Serving reads these instead of the raw dataset; built from the same input, they publish
        # with the ranker and indexes below, so one refresh (and one rollback) moves them together.
        run.stage(
            "post_features", ("features", "post"), stage_key("post_features", fingerprint, config_hash(config.topics)),
            lambda: _manifest(export_serving_tables.run_post_features(spark, config, False, fingerprint)),
        )
        run.stage(
            "user_lists", ("features", "user_lists"),
            stage_key("user_lists", fingerprint, config_hash(export_serving_tables.list_caps(config.serve))),
            lambda: _manifest(export_serving_tables.run_user_lists(spark, config, False, fingerprint)),
        )
        parent = store.current("models", "ranker")
        # The parent is not part of the key: re-running on the same features must not warm-start
        # a new ranker from the one the previous run produced from those very features.
        ranker = run.stage(
            "ranker", ("models", "ranker"),
            stage_key("ranker", features, config_hash(config.ranker)),
            lambda: _manifest(train_ranker.run(config, parent or "none", config.refresh.ranker_sample_fraction,
                                               publish=False, features_version=features)),
        )
        user = run.stage(
            "user_embeddings", ("embeddings", "user"), stage_key("user_embeddings", fingerprint, ranker),
            lambda: _manifest(export_user_embeddings.run(spark, config, "user", model_version=ranker, publish=False)),
        )
        run.stage(
            "user_author_embeddings", ("embeddings", "user_author"),
            stage_key("user_author_embeddings", fingerprint, ranker),
            lambda: _manifest(export_user_embeddings.run(spark, config, "user-author", model_version=ranker,
                                                      publish=False)),
        )
        for name, embedding_version in (("content", content), ("user", user)):
            # The loop values bound as defaults (ruff B023), although run.stage calls build at once.
            def build(name: str = name, embedding_version: str | None = embedding_version) -> tuple[str, dict[str, Any]]:
                return _manifest(build_index.run(config, name, embedding_version=embedding_version, publish=False))

            run.stage(
                f"index_{name}", ("indexes", name),
                stage_key(f"index_{name}", embedding_version, config_hash(config.indexes[name])), build,
            )
        run.stage("publish", None, None, lambda: (None, _publish(store, run.staged, config.store.keep_versions)))
        published = run.stages[-1].details["published"]
        record["outcome"] = "success" if published else "unchanged"
        record["published"] = published
    except StageFailed as failure:
        record.update(outcome="failed", failed_stage=failure.stage, reason=failure.reason)
    except Exception as exc:  # noqa: BLE001 - before any stage ran (bad paths, store not writable)
        record.update(outcome="failed", failed_stage="setup", reason=f"{type(exc).__name__}: {exc}")
    finished_at = dt.datetime.now(dt.timezone.utc)
    record.update(
        finished_at=finished_at.isoformat(), seconds=round((finished_at - started_at).total_seconds(), 2),
        stages=[vars(stage) for stage in run.stages],
        serving={f"{k}/{n}": store.current(k, n) for k, n in PUBLISH_ORDER},
    )
    record["record_path"] = store.record_run(record)
    return record


def _versioned(result: tuple[str, Any]) -> tuple[str, dict[str, Any]]:
    version, details = result
    return version, details if isinstance(details, dict) else {"rows": details}


def _manifest(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    details = {k: v for k, v in result.items() if k in ("row_counts", "metrics", "gate", "warm_start", "rows_per_s")}
    return result["version"], details


def _publish(store: Store, staged: dict[tuple[str, str], str], keep_versions: int) -> dict[str, Any]:
    published = {}
    for kind, name in PUBLISH_ORDER:
        version = staged.get((kind, name))
        if version and store.current(kind, name) != version:
            store.publish(kind, name, version)
            published[f"{kind}/{name}"] = version
    for kind, name in (*PUBLISH_ORDER, ("features", "ranking")):
        store.retain(kind, name, keep_versions)
    return {"published": published}


def render_record(record: dict[str, Any]) -> str:
    lines = [f"refresh {record['run_id']}: {record['outcome'].upper()} in {record.get('seconds', 0):.1f} s"]
    for stage in record.get("stages", []):
        line = f"  {stage['name']:<24} {stage['status']:<8} {stage['seconds']:>7.1f} s"
        if stage.get("version"):
            line += f"  {stage['version']}"
        if stage.get("reason"):
            line += f"  ({stage['reason']})"
        lines.append(line)
    if record["outcome"] == "failed":
        lines.append(f"  failed at {record['failed_stage']}: {record['reason']}; serving versions unchanged")
    lines.append(f"  record: {record.get('record_path')}")
    return "\n".join(lines)
