"""One refresh: rebuild embeddings, ranker and indexes from the configured snapshot, then publish.

Reads:  config.data.path (the contract tables); the store's serving versions (warm start)
Writes: new versions in the store; CURRENT pointers switch only at the very end,
        after every stage and every validation gate passed; a run record in store/runs/

Chain (the STAGES table): validate input -> content model (bootstrap when none is serving)
-> content embeddings -> user interests -> ranking features -> serving tables (post features
and user lists as of the snapshot) -> ranker (warm-started from the serving one) -> user and
user-author embeddings -> content and user indexes (each gated on recall, counts, NaN and
dimension) -> publish.

Each stage declares its inputs (the dataset, earlier stages) and the config settings it
depends on; its key, computed in one place (Stage.key), hashes their versions and values. When a previous successful run produced a version under
the same key and that version still exists, the stage is skipped and the version
reused, so re-running an unchanged refresh is cheap and publishes nothing new.
"""

from __future__ import annotations

import datetime as dt
import functools
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


@dataclass
class StageContext:
    """What a stage's job reads: the config, the store, the Spark session, the input fingerprint, and the
    versions the stages before it made (or reused), by stage name."""

    config: NearlineConfig
    store: Store
    spark: Any  # a SparkSession; pyspark is imported only when a refresh starts one
    fingerprint: str
    versions: dict[str, str | None] = field(default_factory=dict)


INPUT = "input"  # in Stage.inputs: the dataset itself, by its files' fingerprint


@dataclass(frozen=True)
class Stage:
    """One row of the refresh.

    Attributes:
        name: the stage (run records and `nearline runs` name it).
        artifact: the store artifact it makes, (kind, name); published together at the end.
        inputs: what it is built from: INPUT (the dataset) and earlier stages by name. Their
            versions and the settings below make its key: a key an earlier run already produced is
            not rebuilt.
        settings: dotted config paths whose values change what it makes.
        job: makes the artifact (staged, unpublished); returns (version, details for the record).
        reuse_serving: when a version is serving, use it instead of building one.
    """

    name: str
    artifact: tuple[str, str]
    inputs: tuple[str, ...]
    settings: tuple[str, ...]
    job: Callable[[StageContext], tuple[str, dict[str, Any]]]
    reuse_serving: bool = False

    def key(self, context: StageContext) -> str:
        """The one place a stage key is computed."""
        upstream = [context.fingerprint if name == INPUT else context.versions[name] for name in self.inputs]
        values = [config_hash(_setting(context.config, path)) for path in self.settings]
        return stage_key(self.name, *upstream, *values)


def _setting(config: NearlineConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _content_model(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import train_content_model

    return train_content_model.train_from_dataset(c.spark, c.config, c.store, publish=False)


def _content_embeddings(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import export_content_embeddings as export

    # The export gates its vectors' health (content.gate) before anything can publish them: a collapsed
    # version fails its stage and stays staged for inspection; the record keeps the report.
    return export.with_health(c.store, "content", export.run_content(
        c.spark, c.config, c.store, c.versions["content_model"], False))


def _user_interest(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import export_content_embeddings as export

    return export.with_health(c.store, "user_interest", export.run_user_interest(
        c.spark, c.config, c.store, c.versions["content_embeddings"], False))


def _features(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import build_ranking_features

    return _versioned(build_ranking_features.run(c.spark, c.config, content_version=c.versions["content_embeddings"]))


def _post_features(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import export_serving_tables

    return _manifest(export_serving_tables.run_post_features(c.spark, c.config, False, c.fingerprint))


def _user_lists(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import export_serving_tables

    return _manifest(export_serving_tables.run_user_lists(c.spark, c.config, False, c.fingerprint))


def _ranker(c: StageContext) -> tuple[str, dict[str, Any]]:
    from jobs import train_ranker

    # Warm-started from the serving ranker. The parent is not part of the key: re-running on the same
    # features must not warm-start a new ranker from the one the previous run produced from them.
    parent = c.store.current("models", "ranker") or "none"
    return _manifest(train_ranker.run(c.config, parent, c.config.refresh.ranker_sample_fraction, publish=False,
                                      features_version=c.versions["features"]))


def _user_vectors(kind: str) -> Callable[[StageContext], tuple[str, dict[str, Any]]]:
    def job(c: StageContext) -> tuple[str, dict[str, Any]]:
        from jobs import export_user_embeddings

        return _manifest(export_user_embeddings.run(c.spark, c.config, kind, model_version=c.versions["ranker"],
                                                    publish=False))

    return job


def _index(name: str, embeddings_stage: str) -> Callable[[StageContext], tuple[str, dict[str, Any]]]:
    def job(c: StageContext) -> tuple[str, dict[str, Any]]:
        from jobs import build_index

        return _manifest(build_index.run(c.config, name, embedding_version=c.versions[embeddings_stage],
                                         publish=False))

    return job


# The refresh, in run order. Serving reads features/post and features/user_lists instead of the raw
# dataset; built from the same input, they publish with the ranker and indexes, so one refresh (and one
# rollback) moves them together.
STAGES: tuple[Stage, ...] = (
    Stage("content_model", ("models", "content"), (INPUT,), ("content",), _content_model, reuse_serving=True),
    Stage("content_embeddings", ("embeddings", "content"), (INPUT, "content_model"), ("content.gate.content",),
          _content_embeddings),
    Stage("user_interest", ("embeddings", "user_interest"), (INPUT, "content_embeddings"),
          ("user_interest", "content.gate.user_interest"), _user_interest),
    Stage("features", ("features", "ranking"), (INPUT, "content_embeddings"), ("ranker.features",), _features),
    Stage("post_features", ("features", "post"), (INPUT,), ("topics",), _post_features),
    Stage("user_lists", ("features", "user_lists"), (INPUT,),
          ("serve.recent_posts_per_user", "serve.seen_posts_per_user", "serve.followees_per_user"), _user_lists),
    Stage("ranker", ("models", "ranker"), ("features",), ("ranker",), _ranker),
    Stage("user_embeddings", ("embeddings", "user"), (INPUT, "ranker"), (), _user_vectors("user")),
    Stage("user_author_embeddings", ("embeddings", "user_author"), (INPUT, "ranker"), (),
          _user_vectors("user-author")),
    Stage("index_content", ("indexes", "content"), ("content_embeddings",), ("indexes.content",),
          _index("content", "content_embeddings")),
    Stage("index_user", ("indexes", "user"), ("user_embeddings",), ("indexes.user",), _index("user", "user_embeddings")),
)


def run_refresh(config: NearlineConfig, spark=None) -> dict[str, Any]:  # spark: a SparkSession, imported lazily
    """Run the whole chain once; returns the run record (also written to store/runs/)."""
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
        context = StageContext(config, store, spark, fingerprint)
        for stage in STAGES:
            serving = store.current(*stage.artifact) if stage.reuse_serving else None
            context.versions[stage.name] = serving or run.stage(
                stage.name, stage.artifact, stage.key(context),
                functools.partial(stage.job, context),
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
