"""`nearline ranker train`: read the training rows (Spark), fit the discretizer, train (warm-started),
calibrate, publish.

Reads:  store features/ranking/<current>/data/{train,validation,test} (Parquet written by `nearline features`);
        store models/ranker/<parent> when warm starting.
Writes: store models/ranker/<version>/ (weights.pt, ranker.json, discretizer.json, calibration.json,
        splits/{user,user_author}/, curves.png, metrics.json) + manifest.json naming the data snapshot,
        the discretizer version and the parent model; then publishes it (CURRENT).

Warm start (``--warm-start-from latest|VERSION|none``, default ``ranker.warm_start_from``): the
parent's discretizer is recalibrated in bin-preserving mode on the new data (old ids stay, new
ranges and features get new ids), and its weights are mapped by name and shape.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import pandas as pd

from nearline.config import NearlineConfig
from ranking.config import RankerConfig
from ranking.discretizer import Discretizer, fit_discretizer, quantile_probabilities, recalibrate
from ranking.examples import RankingExamples, build_examples
from ranking.training import TrainResult, evaluate, load_parent_state, load_ranker, save_ranker, train_ranker
from storage.store import Store

CONTENT_VECTOR_COLUMN = "post_content_vector"
ROW_KEY = ("ts_us", "user_id", "post_id")  # one training row per impression
SAMPLE_BUCKETS = 1_000_000


def column_quantiles(
    frame: pd.DataFrame, names: Sequence[str], probabilities: Sequence[float]
) -> dict[str, Sequence[float]]:
    """Exact quantiles of each column over its values that are not NaN ([] for a column with none).

    Exact, on rows the driver already holds: Spark's approxQuantile merges per-partition summaries,
    so its answer moves with how the input is split into partitions.
    """
    quantiles: dict[str, Sequence[float]] = {}
    for name in names:
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        values = values[~np.isnan(values)]
        quantiles[name] = np.quantile(values, probabilities, method="inverted_cdf").tolist() if len(values) else []
    return quantiles


def frame_columns(frame: pd.DataFrame, config: RankerConfig) -> dict[str, np.ndarray]:
    """Feature columns of a features frame as numpy arrays (missing values as NaN / None)."""
    names = [
        n
        for g in config.groups.values()
        for n in (*g.continuous_features, *g.categorical_features, *g.dense_features)
    ]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(f"features table lacks columns {missing} that the ranker config uses")
    columns: dict[str, np.ndarray] = {}
    for group in config.groups.values():
        for name in (*group.continuous_features, *group.dense_features):
            columns[name] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        for name in group.categorical_features:
            columns[name] = frame[name].astype(object).where(frame[name].notna(), None).to_numpy()
    return columns


def frame_vectors(frame: pd.DataFrame, config: RankerConfig) -> dict[str, np.ndarray]:
    """The post group's content vectors (zeros where a post has none), when the config uses them."""
    dim = config.groups["post"].dense_vector_dim
    if dim == 0:
        return {}
    if CONTENT_VECTOR_COLUMN not in frame.columns:
        raise ValueError(
            f"ranker.groups.post.dense_vector_dim is {dim} but the features have no {CONTENT_VECTOR_COLUMN!r}: "
            "export content embeddings and rebuild the features, or set dense_vector_dim to 0"
        )
    vectors = np.zeros((len(frame), dim), dtype=np.float32)
    for i, vector in enumerate(frame[CONTENT_VECTOR_COLUMN]):
        if vector is not None and len(vector):
            if len(vector) != dim:
                raise ValueError(f"content vectors have {len(vector)} dims, the config expects {dim}")
            vectors[i] = vector
    return {"post": vectors}


def frame_to_examples(frame: pd.DataFrame, config: RankerConfig, discretizer: Discretizer) -> RankingExamples:
    """Encode a features frame (one row per impression) into RankingExamples."""
    missing = [t for t in config.tasks if t not in frame.columns]
    if missing:
        raise ValueError(f"features table lacks label columns {missing}")
    return build_examples(
        config,
        discretizer,
        frame_columns(frame, config),
        frame[list(config.tasks)].to_numpy(dtype=np.float32),
        frame["ts_us"].to_numpy(dtype=np.int64),
        frame_vectors(frame, config),
    )


def fit_or_recalibrate(
    quantiles: dict[str, Sequence[float]], config: RankerConfig, parent: Discretizer | None, version: str
) -> Discretizer:
    """A discretizer from per-feature quantiles: fresh, or bin-preserving from the parent's."""
    arrays = {name: np.asarray(q, dtype=np.float64) for name, q in quantiles.items()}
    d = config.discretizer
    if parent is None:
        return fit_discretizer(
            arrays,
            d.num_bins,
            d.hash_space_size,
            config.categorical_features,
            are_quantiles=True,
            version=version,
        )
    return recalibrate(
        parent,
        arrays,
        d.num_bins,
        d.hash_space_size,
        config.categorical_features,
        are_quantiles=True,
        version=version,
    )


def resolve_parent(store: Store, warm_start_from: str) -> str | None:
    """'none' -> None; 'latest' -> the current ranker (None if there is none yet); else that version."""
    if warm_start_from == "none":
        return None
    if warm_start_from == "latest":
        return store.current("models", "ranker") or store.latest("models", "ranker")
    if warm_start_from not in store.versions("models", "ranker"):
        raise ValueError(
            f"--warm-start-from {warm_start_from!r}: no such ranker version (have {store.versions('models', 'ranker')})"
        )
    return warm_start_from


def run(config: NearlineConfig, warm_start_from: str, sample_fraction: float, publish: bool = True,
        features_version: str | None = None, trainer: Callable[..., TrainResult] = train_ranker) -> dict:
    """Train and stage a ranker on features_version (default: the current features); returns its manifest fields.

    ``trainer`` has train_ranker's signature; jobs.train_ranker_distributed passes a data-parallel one.
    """
    from pyspark.sql import functions as F

    from jobs.spark import build_spark_session

    if not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"--sample-fraction must be in (0, 1], got {sample_fraction}")
    ranker = config.ranker
    store = Store(config.store.root)
    features_version = store.resolve("features", "ranking", features_version)
    features_dir = store.data_path("features", "ranking", features_version)
    parent_version = resolve_parent(store, warm_start_from)
    parent = load_ranker(store.path("models", "ranker", parent_version)) if parent_version else None
    if parent is not None and parent.config.architecture != ranker.architecture:
        raise ValueError(
            f"parent ranker {parent_version} is {parent.config.architecture!r}, the config asks for "
            f"{ranker.architecture!r}: warm start needs the same architecture (or --warm-start-from none)"
        )
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="ranker-train")
    train_frame = spark.read.parquet(f"{features_dir}/train")
    if sample_fraction < 1.0:
        # A hash of the row's key, not DataFrame.sample: that one draws per partition, and how the
        # features files split into partitions differs between runs of `nearline features`.
        bucket = F.pmod(F.xxhash64(*ROW_KEY, F.lit(ranker.training.seed)), F.lit(SAMPLE_BUCKETS))
        train_frame = train_frame.where(bucket < int(sample_fraction * SAMPLE_BUCKETS))
    # Sorted by key so that the model does not depend on the order the files were read in.
    train_pd = cast(pd.DataFrame, train_frame.toPandas()).sort_values(list(ROW_KEY), ignore_index=True)
    if len(train_pd) == 0:
        raise ValueError(
            f"features {features_version}: the training window is empty (sample fraction {sample_fraction})"
        )
    quantile_sample = train_pd
    if len(train_pd) > ranker.discretizer.sample_size:
        quantile_sample = train_pd.sample(n=ranker.discretizer.sample_size, random_state=1)
    quantiles = column_quantiles(
        quantile_sample, ranker.continuous_features, quantile_probabilities(ranker.discretizer.num_bins)
    )
    val_pd = pd.read_parquet(f"{features_dir}/validation")
    test_pd = pd.read_parquet(f"{features_dir}/test")
    if len(val_pd) == 0:
        raise ValueError(f"features {features_version}: the validation split is empty")

    features_manifest = store.manifest("features", "ranking", features_version)
    manifest: dict = {
        "producer": "nearline ranker train",
        "features_version": features_version,
        "data_snapshot": features_manifest.get("data_path"),
        # Serving feeds the post split the same content vectors the training rows carried.
        "content_embedding_version": features_manifest.get("content_embedding_version"),
        "parent_model": parent_version,
        "sample_fraction": sample_fraction,
        "architecture": ranker.architecture,
    }
    with store.stage("models", "ranker", manifest=manifest) as staged:
        discretizer = fit_or_recalibrate(
            quantiles, ranker, parent.discretizer if parent else None, staged.version
        )
        train, val, test = (frame_to_examples(f, ranker, discretizer) for f in (train_pd, val_pd, test_pd))
        print(f"training on {len(train):,} rows, validating on {len(val):,}, testing on {len(test):,}")
        parent_state = (
            load_parent_state(store.path("models", "ranker", parent_version)) if parent_version else None
        )
        result = trainer(
            ranker, train, val, parent_state=parent_state, curves_path=os.path.join(staged.path, "curves.png")
        )
        if result.warm_start_report is not None:
            print(result.warm_start_report.summary())
        metrics = {
            "validation": result.metrics["val"],
            "test": evaluate(result.model, test, ranker.tasks, result.calibration) if len(test) else None,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "train_time_s": result.train_time_s,
        }
        save_ranker(
            staged.path,
            result.model,
            ranker,
            discretizer,
            result.calibration,
            {"parent_model": parent_version, "features_version": features_version},
        )
        with open(os.path.join(staged.path, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        staged.manifest.update(
            {
                "discretizer_version": discretizer.version,
                "parent_discretizer_version": discretizer.parent_version,
                "warm_start": result.warm_start_report.to_dict() if result.warm_start_report else None,
                "row_counts": {"train": len(train), "validation": len(val), "test": len(test)},
                "metrics": {k: metrics[k] for k in ("validation", "test", "best_epoch", "train_time_s")},
            }
        )
    if publish:
        store.publish("models", "ranker", staged.version)
    test_metrics = metrics["test"] or metrics["validation"]
    calibrated = test_metrics.get("calibrated", {}).get("log_loss")
    print(
        f"ranker {staged.version} ({'warm from ' + parent_version if parent_version else 'cold start'}): "
        f"test log loss {test_metrics['log_loss']:.4f}"
        + (f" (calibrated {calibrated:.4f})" if calibrated is not None else "")
        + f", AUC {test_metrics['auc']:.4f}, RCE {test_metrics['rce']:.2f} in {time.perf_counter() - started:.1f} s"
    )
    return {"version": staged.version, **staged.manifest}
