"""Ranker benchmark: split vs fully connected, warm vs cold start, export throughput.

Reads:  store features/ranking/<current> (built with `nearline features` first if missing) and,
        for the export measurement, the current ranker (trained here if missing).
Writes: reports/ranker.json, reports/ranker.md (README-ready tables), reports/ranker_<dataset>.png.

Comparisons, all on the same rows and the same test periods:
1. split vs fully-connected architecture: test log loss (mean and per task), AUC, training CPU time
   per epoch, parameter counts, over ``--arch-seeds`` seeds paired by seed; with two controls (the FC
   net at the split head's widths; the split with cross terms in its head) and the cost of one
   training step by part.
2. warm start on 20% of a new period vs cold start on 100% of it (tested on the next period).
3. repeated warm start over consecutive periods vs a cold start each period.
4. tuned warm start (learning rate picked on validation) vs cold start: relative log loss.
5. export throughput of `nearline export user` / `user-author` (Spark) vs a plain torch loop.

Periods are whole days of impressions: the first ``--base-days`` train the initial model, each
later day is one retraining period, evaluated on the day after it.

Usage: .venv/bin/python -P bench/ranker.py [--config conf/local.yaml] [--set key=value ...]
(-P keeps bench/ off sys.path, where bench/retrieval.py would shadow the retrieval package.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from unittest import mock

import numpy as np
import pandas as pd
import torch
from torch import nn

from jobs.train_ranker import frame_to_examples
from nearline.config import NearlineConfig, load_config
from ranking.config import GROUP_NAMES, RankerConfig, TrainingConfig
from ranking.discretizer import Discretizer, fit_discretizer, recalibrate
from ranking.examples import RankingExamples
from ranking.model import SplitRanker, build_ranker
from ranking.training import TrainResult, evaluate, train_ranker
from storage.store import Store

MICROS_PER_DAY = 86_400_000_000


def load_rows(config: NearlineConfig) -> tuple[pd.DataFrame, str]:
    """All feature rows (train, validation and test splits together), sorted by time, and their version."""
    store = Store(config.store.root)
    version = store.current("features", "ranking")
    if version is None:
        from jobs import build_ranking_features
        from jobs.spark import build_spark_session

        spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="bench-features")
        version, _ = build_ranking_features.run(spark, config)
    root = store.data_path("features", "ranking", version)
    frames = [pd.read_parquet(f"{root}/{split}") for split in ("train", "validation", "test")]
    return pd.concat(frames, ignore_index=True).sort_values("ts_us", kind="stable").reset_index(
        drop=True
    ), version


def fit(
    frame: pd.DataFrame, config: RankerConfig, parent: Discretizer | None, rng: np.random.Generator
) -> Discretizer:
    """Discretizer from a row sample: fresh, or bin-preserving from ``parent``."""
    sample = frame.iloc[rng.permutation(len(frame))[: config.discretizer.sample_size]]
    samples = {n: sample[n].to_numpy(dtype=np.float64, na_value=np.nan) for n in config.continuous_features}
    d = config.discretizer
    if parent is None:
        return fit_discretizer(samples, d.num_bins, d.hash_space_size, config.categorical_features)
    return recalibrate(parent, samples, d.num_bins, d.hash_space_size)


def holdout(frame: pd.DataFrame, fraction: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-ordered (train, validation) split of one period's rows."""
    cut = int(len(frame) * (1 - fraction))
    return frame.iloc[:cut], frame.iloc[cut:]


def summarize(metrics: dict) -> dict:
    """Engage-task and mean-over-tasks log loss / AUC / RCE."""
    engage = metrics["tasks"]["engage"]
    return {
        "log_loss": metrics["log_loss"],
        "auc": metrics["auc"],
        "rce": metrics["rce"],
        "engage_log_loss": engage["log_loss"],
        "engage_auc": engage["auc"],
        "engage_rce": engage["rce"],
    }


class Trainer:
    """Trains one model on a period's rows, optionally warm-started, and scores it on a test frame."""

    def __init__(self, config: RankerConfig, seed: int) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)

    def run(
        self,
        frame: pd.DataFrame,
        test: pd.DataFrame,
        parent: tuple | None = None,
        fraction: float = 1.0,
        learning_rate: float | None = None,
        architecture: str | None = None,
    ) -> dict:
        config = self.config
        updates: dict[str, object] = {}
        if learning_rate is not None:
            updates["training"] = config.training.model_copy(update={"learning_rate": learning_rate})
        if architecture is not None:
            updates["architecture"] = architecture
        config = config.model_copy(update=updates) if updates else config
        if fraction < 1.0:
            keep = np.sort(self.rng.permutation(len(frame))[: max(1, int(len(frame) * fraction))])
            frame = frame.iloc[keep]
        train_frame, val_frame = holdout(frame)
        discretizer = fit(train_frame, config, parent[1] if parent else None, self.rng)
        train, val, test_examples = (
            frame_to_examples(f, config, discretizer) for f in (train_frame, val_frame, test)
        )
        result = train_ranker(
            config, train, val, parent_state=parent[0].state_dict() if parent else None, progress=False
        )
        test_metrics = evaluate(result.model, test_examples, config.tasks)
        return {
            "model": (result.model, discretizer),
            "val_log_loss": result.metrics["val"]["log_loss"],
            "test": summarize(test_metrics),
            "train_time_s": result.train_time_s,
            "train_cpu_s": result.train_cpu_s,
            "epochs": len(result.history),
            "rows": len(train),
        }


def strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "model"}


def relative(a: float, b: float) -> float:
    """(a - b) / b in percent: negative means a is lower (better, for a loss)."""
    return 100.0 * (a - b) / b


class CrossTermHead(nn.Module):
    """Bench-only head for comparison 1: the split's head fed the group embeddings plus their pairwise
    elementwise products (user*post, user_author*post, user*user_author), DLRM-style.

    The splits are unchanged (the user and user-author towers keep their shape and can still be
    exported); only the head sees explicit multiplicative cross terms. Not a product model: its
    first layer is wider than the shipped head's, so saved rankers would not load into it.
    """

    def __init__(self, group_dims: tuple[int, ...], sizes: tuple[int, ...], num_tasks: int) -> None:
        super().__init__()
        self.group_dims = group_dims
        width = sum(group_dims) + 3 * group_dims[0]
        layers: list[nn.Module] = []
        for size in sizes:
            layers += [nn.Linear(width, size), nn.PReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.logits = nn.Linear(width, num_tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x float32 (B, sum(group_dims)), groups in GROUP_NAMES order. Returns logits (B, T)."""
        user, pair, post = torch.split(x, list(self.group_dims), dim=1)
        return self.logits(self.mlp(torch.cat([x, user * post, pair * post, user * pair], dim=1)))


def cross_term_ranker(config: RankerConfig) -> SplitRanker:
    """A SplitRanker whose head is a CrossTermHead (same splits, same forward signature)."""
    model = SplitRanker(config)
    dims = tuple(config.groups[g].group_embedding_dim for g in GROUP_NAMES)
    # Same forward signature as Head (the concatenated group embeddings), a different class.
    model.head = CrossTermHead(dims, config.head_sizes, len(config.tasks))  # type: ignore[assignment]
    return model


def architecture_variants(config: RankerConfig) -> dict[str, RankerConfig]:
    """Comparison 1's models: the split, the FC baseline, and two controls.

    fully_connected_small is the FC net with the split head's layer widths (about the split's dense
    parameter count); split_cross is the split with CrossTermHead (only when the group embeddings
    have one width, which the elementwise products need).
    """
    variants = {
        "split": config.model_copy(update={"architecture": "split"}),
        "fully_connected": config.model_copy(update={"architecture": "fully_connected"}),
        "fully_connected_small": config.model_copy(
            update={"architecture": "fully_connected", "fully_connected_sizes": config.head_sizes}
        ),
    }
    if len({config.groups[g].group_embedding_dim for g in GROUP_NAMES}) == 1:
        variants["split_cross"] = config.model_copy(update={"architecture": "split"})
    return variants


def parameter_counts(model: nn.Module) -> dict:
    """Parameters in the embedding tables vs everything else (the dense layers)."""
    tables = sum(p.numel() for n, p in model.named_parameters() if ".bag." in n)
    return {"embedding_tables": tables, "dense": sum(p.numel() for p in model.parameters()) - tables}


def train_variant(
    name: str, config: RankerConfig, train: RankingExamples, val: RankingExamples
) -> TrainResult:
    if name != "split_cross":
        return train_ranker(config, train, val, progress=False)
    # train_ranker builds its model from the config; the bench-only variant is swapped in here.
    with mock.patch("ranking.training.build_ranker", cross_term_ranker):
        return train_ranker(config, train, val, progress=False)


def task_log_losses(metrics: dict) -> dict:
    return {task: m["log_loss"] for task, m in metrics["tasks"].items()}


def compare_architectures(config: RankerConfig, train: pd.DataFrame, test: pd.DataFrame, seeds: int) -> dict:
    """Comparison 1, paired by seed: per seed one discretizer sample, one encoding and one training
    seed shared by every model; the differences with the FC net are taken seed by seed.

    Training cost is CPU seconds of the training process (wall time swings with machine load).
    """
    variants = architecture_variants(config)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    profile_examples = None
    for seed in range(seeds):
        train_frame, val_frame = holdout(train)
        discretizer = fit(train_frame, config, None, np.random.default_rng(seed))
        examples = [frame_to_examples(f, config, discretizer) for f in (train_frame, val_frame, test)]
        if profile_examples is None:
            profile_examples = examples[0]
        for name, variant in variants.items():
            variant = variant.model_copy(
                update={"training": variant.training.model_copy(update={"seed": seed})}
            )
            result = train_variant(name, variant, examples[0], examples[1])
            metrics = evaluate(result.model, examples[2], variant.tasks)
            runs[name].append(
                {
                    "seed": seed,
                    "test": summarize(metrics),
                    "test_task_log_loss": task_log_losses(metrics),
                    "val_log_loss": result.metrics["val"]["log_loss"],
                    "epochs": len(result.history),
                    "best_epoch": result.best_epoch,
                    "train_cpu_s": result.train_cpu_s,
                    "train_time_s": result.train_time_s,
                    "train_cpu_s_per_epoch": result.train_cpu_s / len(result.history),
                    "params": parameter_counts(result.model),
                    "rows": len(examples[0]),
                }
            )
            r = runs[name][-1]
            print(
                f"seed {seed} {name}: test log loss {r['test']['log_loss']:.4f}, AUC {r['test']['auc']:.4f}, "
                f"{r['epochs']} epochs, {r['train_cpu_s']:.1f} CPU s",
                flush=True,
            )
    out: dict = {"seeds": seeds, "variants": {}}
    fc = runs["fully_connected"]
    for name, rs in runs.items():
        change = [relative(r["test"]["log_loss"], f["test"]["log_loss"]) for r, f in zip(rs, fc, strict=True)]
        auc_change = [r["test"]["auc"] - f["test"]["auc"] for r, f in zip(rs, fc, strict=True)]
        cpu_change = [
            relative(r["train_cpu_s_per_epoch"], f["train_cpu_s_per_epoch"])
            for r, f in zip(rs, fc, strict=True)
        ]
        out["variants"][name] = {
            "runs": rs,
            "params": rs[0]["params"],
            "median": {
                key: float(np.median([r[key] for r in rs]))
                for key in ("train_cpu_s", "train_cpu_s_per_epoch", "epochs")
            }
            | {key: float(np.median([r["test"][key] for r in rs])) for key in ("log_loss", "auc")},
            "median_task_log_loss": {
                t: float(np.median([r["test_task_log_loss"][t] for r in rs])) for t in config.tasks
            },
            "vs_fully_connected": {
                "log_loss_change_pct": change,
                "log_loss_change_pct_median": float(np.median(change)),
                "auc_change": auc_change,
                "auc_change_median": float(np.median(auc_change)),
                "lower_log_loss_seeds": int(sum(c < 0 for c in change)),
                "train_cpu_per_epoch_change_pct_median": float(np.median(cpu_change)),
            },
        }
    assert profile_examples is not None
    out["step_profile"] = step_profile(config, profile_examples)
    return out


def step_profile(
    config: RankerConfig, train: RankingExamples, steps: int = 150, warmup: int = 20, rounds: int = 3
) -> dict:
    """CPU ms per training step: forward+backward, the Adam step on the embedding tables, the Adam step
    on the rest; and how many rows of each table the encoded rows use at all.

    Adam's update of a table is dense (every row, every step), used or not, so its cost is set by
    hash_space_size and the same for both architectures.
    """
    torch.set_num_threads(config.training.num_threads)
    order = np.random.default_rng(0).permutation(len(train))
    labels = torch.from_numpy(train.labels)
    loss_fn = nn.BCEWithLogitsLoss()
    out: dict = {
        "rows_used": {g: int(len(np.unique(train.feature_ids[g]))) for g in GROUP_NAMES},
        "hash_space_size": config.discretizer.hash_space_size,
    }
    samples: dict[str, list[np.ndarray]] = {"split": [], "fully_connected": []}
    # Alternating rounds, median per part: on a shared machine one round can land on a busy moment.
    for _ in range(rounds):
        for architecture, spent in samples.items():
            torch.manual_seed(0)
            model = build_ranker(config.model_copy(update={"architecture": architecture}))
            named = list(model.named_parameters())
            lr = config.training.learning_rate
            tables = torch.optim.Adam([p for n, p in named if ".bag." in n], lr=lr)
            rest = torch.optim.Adam([p for n, p in named if ".bag." not in n], lr=lr)
            total = np.zeros(3)
            for step in range(warmup + steps):
                index = order[(step * 512) % len(order) :][:512]
                ids = {g: torch.from_numpy(train.feature_ids[g][index]) for g in GROUP_NAMES}
                dense = {g: torch.from_numpy(train.dense[g][index]) for g in GROUP_NAMES}
                t0 = time.process_time()
                loss = loss_fn(model(ids, dense), labels[index])
                model.zero_grad()
                loss.backward()
                t1 = time.process_time()
                tables.step()
                t2 = time.process_time()
                rest.step()
                t3 = time.process_time()
                if step >= warmup:
                    total += (t1 - t0, t2 - t1, t3 - t2)
            spent.append(1000 * total / steps)
    for architecture, spent in samples.items():
        ms = np.median(np.stack(spent), axis=0)
        out[architecture] = {
            "forward_backward_ms": float(ms[0]),
            "adam_tables_ms": float(ms[1]),
            "adam_rest_ms": float(ms[2]),
            "step_ms": float(ms.sum()),
            "rounds": rounds,
        }
    return out


def warm_vs_cold(
    trainer: Trainer, periods: list[pd.DataFrame], base: pd.DataFrame, lr_grid: list[float]
) -> dict:
    """Comparisons 2-4 over consecutive periods (each tested on the next one)."""
    parent = trainer.run(base, periods[0])
    chain = parent["model"]
    rows = []
    for k in range(len(periods) - 1):
        period, test = periods[k], periods[k + 1]
        cold = trainer.run(period, test)
        warm20 = trainer.run(period, test, parent=chain, fraction=0.2)
        warm = trainer.run(period, test, parent=chain)
        # Tuned warm start: the learning rate is picked on the period's validation rows, not on test.
        tuned = min(
            (trainer.run(period, test, parent=chain, learning_rate=lr) for lr in lr_grid),
            key=lambda r: r["val_log_loss"],
        )
        rows.append(
            {
                "period": k + 1,
                "train_rows": cold["rows"],
                "cold_100": strip(cold),
                "warm_20": strip(warm20),
                "warm_100": strip(warm),
                "warm_tuned": strip(tuned),
                "warm_20_vs_cold_log_loss_pct": relative(
                    warm20["test"]["log_loss"], cold["test"]["log_loss"]
                ),
                "warm_vs_cold_log_loss_pct": relative(warm["test"]["log_loss"], cold["test"]["log_loss"]),
                "tuned_warm_vs_cold_log_loss_pct": relative(
                    tuned["test"]["log_loss"], cold["test"]["log_loss"]
                ),
            }
        )
        print(
            f"period {k + 1}: log loss cold {cold['test']['log_loss']:.4f}, warm 20% {warm20['test']['log_loss']:.4f}, "
            f"warm {warm['test']['log_loss']:.4f}, tuned warm {tuned['test']['log_loss']:.4f}",
            flush=True,
        )
        chain = warm["model"]
    return {"base_rows": parent["rows"], "base_test": parent["test"], "periods": rows}


def export_throughput(config: NearlineConfig) -> dict:
    """Rows/s of the Spark export jobs vs a plain torch loop over the same number of feature rows."""
    import torch

    from jobs import export_user_embeddings, train_ranker
    from jobs.spark import build_spark_session
    from ranking.scorer import compute_split_vectors
    from ranking.training import load_split

    store = Store(config.store.root)
    if store.current("models", "ranker") is None:
        train_ranker.run(config, "none", 1.0)
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="bench-export")
    out = {}
    for kind, group in (("user", "user"), ("user-author", "user_author")):
        result = export_user_embeddings.run(spark, config, kind, publish=False)
        split, group_config, discretizer, _ = load_split(
            f"{store.path('models', 'ranker', result['model_version'])}/splits/{group}"
        )
        tables = export_user_embeddings.read_tables(spark, config.data.path)
        frame = export_user_embeddings.feature_rows(kind, tables, result["as_of_us"], 28).cache()
        frame.count()
        # Inference alone: the same mapInPandas stage over already computed (cached) feature rows.
        split_dir = f"{store.path('models', 'ranker', result['model_version'])}/splits/{group}"
        keys = export_user_embeddings.KEYS_OF_GROUP[group]
        schema = ", ".join(f"{k} long" for k in keys) + ", vector array<float>"
        started = time.perf_counter()
        frame.mapInPandas(export_user_embeddings.split_vectors_udf(split_dir, keys), schema).write.format(
            "noop"
        ).mode("overwrite").save()
        inference_s = time.perf_counter() - started
        rows = frame.toPandas()
        frame.unpersist()
        torch.set_num_threads(1)
        started = time.perf_counter()
        ids, dense = export_user_embeddings.encode_frame(rows, group_config, discretizer)
        with torch.no_grad():
            compute_split_vectors(split, ids, dense)
        loop_s = time.perf_counter() - started
        out[group] = {
            "rows": result["row_counts"][group],
            "spark_job_s": result["elapsed_s"],
            "spark_rows_per_s": result["rows_per_s"],
            "torch_loop_s": loop_s,
            "torch_loop_rows_per_s": len(rows) / loop_s,
            "spark_over_torch_ratio": result["rows_per_s"] / (len(rows) / loop_s),
            "spark_inference_rows_per_s": len(rows) / inference_s,
            "spark_inference_over_torch_ratio": (len(rows) / inference_s) / (len(rows) / loop_s),
        }
    return out


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periods = report["warm_vs_cold"]["periods"]
    x = [p["period"] for p in periods]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (
        ("cold_100", "cold, 100%"),
        ("warm_20", "warm, 20%"),
        ("warm_100", "warm, 100%"),
        ("warm_tuned", "warm, tuned lr"),
    ):
        axes[0].plot(x, [p[key]["test"]["log_loss"] for p in periods], marker="o", label=label)
    axes[0].set_xlabel("retraining period" + (" (day)" if report["period_mode"] == "day" else ""))
    axes[0].set_ylabel("next-period test log loss (mean over tasks)")
    axes[0].legend()
    arch = report["architectures"]
    if "variants" in arch:
        # Per-seed log loss change against the FC net trained on the same seed, and its median.
        names = [n for n in VARIANT_LABELS if n in arch["variants"] and n != "fully_connected"]
        for i, n in enumerate(names):
            v = arch["variants"][n]["vs_fully_connected"]
            axes[1].scatter(
                [i] * len(v["log_loss_change_pct"]), v["log_loss_change_pct"], color="tab:blue", s=14
            )
            axes[1].hlines(v["log_loss_change_pct_median"], i - 0.25, i + 0.25, color="black")
        axes[1].axhline(0.0, color="tab:gray", linewidth=0.8)
        axes[1].set_xticks(range(len(names)), [VARIANT_LABELS[n] for n in names], fontsize=8)
        axes[1].set_ylabel("test log loss vs FC, same seed (%)")
        axes[1].set_title(f"{arch['seeds']} seeds; bar = median", fontsize=9)
    else:  # a report written before the multi-seed comparison
        names = ["split", "fully_connected"]
        axes[1].bar(names, [arch[n]["train_cpu_s"] for n in names], color=["tab:blue", "tab:gray"])
        axes[1].set_ylabel("training CPU time (s)")
        for i, n in enumerate(names):
            axes[1].text(
                i,
                arch[n]["train_cpu_s"],
                f"LL {arch[n]['test']['log_loss']:.4f}\nAUC {arch[n]['test']['auc']:.3f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


VARIANT_LABELS = {
    "split": "split",
    "fully_connected": "fully connected",
    "fully_connected_small": "FC, split head widths",
    "split_cross": "split + cross terms",
}


def architecture_summary(arch: dict) -> str:
    """Comparison 1 in one table cell."""
    if "variants" not in arch:  # a report written before the multi-seed comparison
        s, f = arch["split"], arch["fully_connected"]
        return (
            f"log loss {s['test']['log_loss']:.4f} vs {f['test']['log_loss']:.4f} "
            f"({arch['log_loss_change_pct']:+.2f}%), AUC {s['test']['auc']:.4f} vs {f['test']['auc']:.4f}, "
            f"train CPU time {s['train_cpu_s']:.1f} s vs {f['train_cpu_s']:.1f} s "
            f"({arch['train_time_change_pct']:+.0f}%; {s['epochs']} vs {f['epochs']} epochs; one seed)"
        )
    s, f = arch["variants"]["split"], arch["variants"]["fully_connected"]
    v = s["vs_fully_connected"]
    change = v["log_loss_change_pct"]
    return (
        f"medians of {arch['seeds']} seeds: log loss {s['median']['log_loss']:.4f} vs {f['median']['log_loss']:.4f} "
        f"({v['log_loss_change_pct_median']:+.2f}%; per seed {min(change):+.2f}% to {max(change):+.2f}%, split lower "
        f"on {v['lower_log_loss_seeds']} of {len(change)}), AUC {s['median']['auc']:.4f} vs {f['median']['auc']:.4f}, "
        f"train CPU per epoch {s['median']['train_cpu_s_per_epoch']:.1f} s vs "
        f"{f['median']['train_cpu_s_per_epoch']:.1f} s ({v['train_cpu_per_epoch_change_pct_median']:+.0f}%)"
    )


def architecture_markdown(name: str, arch: dict) -> str:
    """Comparison 1 in detail: every model, per task, per seed spread, parameters, step cost."""
    tasks = list(arch["variants"]["split"]["median_task_log_loss"])
    lines = [
        f"Split vs fully connected on **{name}**, {arch['seeds']} seeds (each seed: its own discretizer sample "
        "and initialisation, shared by all models; differences taken seed by seed; test split never tuned on):",
        "",
        "| model | params: tables + dense | test log loss | vs FC, median [min, max] | lower than FC | AUC "
        "| AUC vs FC | " + " / ".join(tasks) + " log loss | epochs | CPU s / epoch |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for key, label in VARIANT_LABELS.items():
        if key not in arch["variants"]:
            continue
        m = arch["variants"][key]
        v, med, params = m["vs_fully_connected"], m["median"], m["params"]
        change = v["log_loss_change_pct"]
        versus = (
            "—"
            if key == "fully_connected"
            else f"{v['log_loss_change_pct_median']:+.2f}% [{min(change):+.2f}%, {max(change):+.2f}%]"
        )
        lower = "—" if key == "fully_connected" else f"{v['lower_log_loss_seeds']}/{len(change)}"
        auc_vs = "—" if key == "fully_connected" else f"{v['auc_change_median']:+.4f}"
        lines.append(
            f"| {label} | {params['embedding_tables']:,} + {params['dense']:,} | {med['log_loss']:.4f} | {versus} "
            f"| {lower} | {med['auc']:.4f} | {auc_vs} | "
            + " / ".join(f"{m['median_task_log_loss'][t]:.4f}" for t in tasks)
            + f" | {med['epochs']:g} | {med['train_cpu_s_per_epoch']:.2f} |"
        )
    p = arch["step_profile"]
    used = ", ".join(f"{g} {n}" for g, n in p["rows_used"].items())
    lines += [
        "",
        f"One training step (batch 512, 1 thread, CPU ms; rows of each {p['hash_space_size']:,}-row embedding "
        f"table the training rows use: {used}):",
        "",
        "| model | forward + backward | Adam on the embedding tables | Adam on the rest | step |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in ("split", "fully_connected"):
        a = p[key]
        lines.append(
            f"| {VARIANT_LABELS[key]} | {a['forward_backward_ms']:.2f} | {a['adam_tables_ms']:.2f} "
            f"| {a['adam_rest_ms']:.2f} | {a['step_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def dataset_markdown(name: str, report: dict) -> str:
    """README-ready table of comparisons 1-4 on one dataset."""
    arch = report["architectures"]
    lines = [
        f"**{name}** ({report['dataset']}, {report['rows']:,} rows, periods by {report['period_mode']}; "
        + (
            f"impressions derived with {report['negatives_per_positive']} sampled negatives per positive; "
            if report.get("negatives_per_positive")
            else ""
        )
        + "each model is tested on the period after its training period)",
        "",
        "| comparison | result | published |",
        "|---|---|---|",
    ]
    lines.append(
        f"| 1. split vs fully connected | {architecture_summary(arch)} | better quality, ~22% less training time |"
    )
    periods = report["warm_vs_cold"]["periods"]
    w20 = [p["warm_20_vs_cold_log_loss_pct"] for p in periods]
    lines.append(
        "| 2. warm start on 20% vs cold on 100% of a new period | log loss change per period "
        + ", ".join(f"{v:+.2f}%" for v in w20)
        + " | same or better |"
    )
    warm = [p["warm_100"]["test"]["log_loss"] for p in periods]
    cold = [p["cold_100"]["test"]["log_loss"] for p in periods]
    lines.append(
        "| 3. repeated warm start vs cold each period | warm "
        + " → ".join(f"{v:.4f}" for v in warm)
        + "; cold "
        + " → ".join(f"{v:.4f}" for v in cold)
        + "; warm vs cold "
        + ", ".join(f"{p['warm_vs_cold_log_loss_pct']:+.2f}%" for p in periods)
        + " (absolute values move with each test day's base rate) | continued improvement |"
    )
    tuned = [p["tuned_warm_vs_cold_log_loss_pct"] for p in periods]
    lines.append(
        "| 4. tuned warm vs cold, relative log loss | "
        + ", ".join(f"{v:+.2f}%" for v in tuned)
        + f" (mean {np.mean(tuned):+.2f}%) | 0.4% better |"
    )
    text = "\n".join(lines) + "\n"
    if "variants" in arch:
        text += "\n" + architecture_markdown(name, arch)
    return text


def markdown(report: dict) -> str:
    """All datasets' tables plus the export throughput table."""
    parts = [dataset_markdown(name, ds) for name, ds in report["datasets"].items()]
    if "export" in report:
        lines = [
            f"Export throughput ({report['export']['dataset']} dataset):",
            "",
            "| job | result |",
            "|---|---|",
        ]
        for group, e in report["export"].items():
            if group == "dataset":
                continue
            lines.append(
                f"| export {group} ({e['rows']:,} rows) | whole Spark job {e['spark_rows_per_s']:,.0f} rows/s "
                f"(incl. point-in-time features), its mapInPandas inference stage alone "
                f"{e['spark_inference_rows_per_s']:,.0f} rows/s, plain torch loop {e['torch_loop_rows_per_s']:,.0f} "
                f"rows/s: ratios {e['spark_over_torch_ratio']:.4f} (job) / {e['spark_inference_over_torch_ratio']:.3f} "
                "(inference) |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def periods_of(rows: pd.DataFrame, mode: str, base_days: int, num_periods: int) -> tuple[pd.DataFrame, list]:
    """(base rows, consecutive periods): whole days, or equal-count time chunks after the first 40%."""
    if mode == "day":
        day = (rows["ts_us"] - rows["ts_us"].min()) // MICROS_PER_DAY
        days = sorted(day.unique())
        if len(days) < base_days + 3:
            raise ValueError(f"need at least {base_days + 3} days of impressions, got {len(days)}")
        return rows[day < days[base_days]], [rows[day == d] for d in days[base_days:]]
    cut = int(len(rows) * 0.4)
    chunks = np.array_split(np.arange(cut, len(rows)), num_periods)
    return rows.iloc[:cut], [rows.iloc[c] for c in chunks]


def bench_dataset(config: NearlineConfig, args: argparse.Namespace, mode: str) -> dict:
    """Comparisons 1-4 on one dataset."""
    started = time.perf_counter()
    rows, features_version = load_rows(config)
    if args.max_rows and len(rows) > args.max_rows:
        keep = np.sort(np.random.default_rng(0).permutation(len(rows))[: args.max_rows])
        rows = rows.iloc[keep].reset_index(drop=True)
    ranker = config.ranker.model_copy(
        update={
            "training": TrainingConfig(epochs=args.epochs, early_stopping_patience_epochs=1),
            "calibration": False,
        }
    )
    trainer = Trainer(ranker, seed=0)
    base, periods = periods_of(rows, mode, args.base_days, args.num_periods)
    print(f"{config.data.path}: {len(rows):,} rows; base {len(base):,}, periods {[len(p) for p in periods]}")
    # 1. Same examples for every architecture: everything before the last period, tested on it.
    arch = compare_architectures(
        ranker, rows.iloc[: len(rows) - len(periods[-1])], periods[-1], args.arch_seeds
    )
    print(f"architectures: {architecture_summary(arch)}")
    lr = ranker.training.learning_rate
    return {
        "dataset": config.data.path,
        "features_version": features_version,
        "negatives_per_positive": Store(config.store.root)
        .manifest("features", "ranking", features_version)
        .get("negatives_per_positive"),
        "rows": len(rows),
        "period_mode": mode,
        "epochs": args.epochs,
        "early_stopping_patience_epochs": ranker.training.early_stopping_patience_epochs,
        "architectures": arch,
        "warm_vs_cold": warm_vs_cold(trainer, periods, base, [lr, lr / 4]),
        "elapsed_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="conf/local.yaml" if os.path.exists("conf/local.yaml") else None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=DATA_PATH,STORE_ROOT[,day|count]",
        help="dataset to bench (repeatable; default: the config's data.path and store.root, by day)",
    )
    parser.add_argument(
        "--base-days", type=int, default=3, help="day mode: days that train the initial model"
    )
    parser.add_argument("--num-periods", type=int, default=4, help="count mode: periods after the first 40%%")
    parser.add_argument(
        "--max-rows", type=int, default=200_000, help="uniform row sample per dataset (0 = all)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--arch-seeds", type=int, default=5, help="comparison 1: seeds per architecture (paired by seed)"
    )
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--merge", action="store_true", help="update datasets in an existing report")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    datasets = []
    for spec in args.dataset:
        name, _, rest = spec.partition("=")
        parts = rest.split(",")
        if not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("day", "count")):
            raise ValueError(f"--dataset {spec!r}: expected NAME=DATA_PATH,STORE_ROOT[,day|count]")
        overrides = [*args.overrides, f"data.path={parts[0]}", f"store.root={parts[1]}"]
        datasets.append((name, load_config(args.config, overrides), parts[2] if len(parts) == 3 else "day"))
    if not datasets:
        datasets.append(("generated", config, "day"))
    report: dict = {"datasets": {}}
    if args.merge and os.path.exists(os.path.join(args.out, "ranker.json")):
        with open(os.path.join(args.out, "ranker.json")) as f:
            report = json.load(f)
    for name, dataset_config, mode in datasets:
        report["datasets"][name] = bench_dataset(dataset_config, args, mode)
    # Written before the Spark export measurement, so that a failure there keeps the training results.
    _write(report, args.out)
    if not args.skip_export:
        report["export"] = export_throughput(datasets[0][1])
        report["export"]["dataset"] = datasets[0][0]
    return _write(report, args.out)


def _write(report: dict, out: str) -> int:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ranker.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    with open(os.path.join(out, "ranker.md"), "w") as f:
        f.write(table)
    for name, dataset in report["datasets"].items():
        plot(dataset, os.path.join(out, f"ranker_{name}.png"))
    print(table)
    print(f"bench finished -> {out}/ranker.json, ranker.md, ranker_<dataset>.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
