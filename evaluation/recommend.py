"""Offline end-to-end evaluation of recommend (candidates -> rank -> top k) against its baselines.

Reads:  the serving set CURRENT in config.store.root (built from a training snapshot; its features/post
        manifest holds the snapshot time) and --holdout-data (a later snapshot of the same world)
Writes: --out JSON (default reports/recommend.json); with --fit-fusion FILE also the per-source hit
        rates measured on this period, the serve.fusion_hit_rates for a serving set built later

Time split: the serving set was built from the past; the evaluation period holds the positive
engagements (like, reply, repost) of the holdout data at or after the serving set's snapshot (and
within --period-hours of it when given). Every user with one whom the store knows is evaluated (at
most --max-users, drawn with a fixed seed); an id the store has never seen would be a 404 in serving
and is counted, not scored. An empty period is an error, never a NaN.

Lists compared per user, each without the posts the user had already seen:
- recommend: IndexBundle.candidates (--num-candidates, every enabled source, fused) ranked by
  RankerBundle.rank and, when serve.recommend_blend is set, ordered by the blend, top k: the functions
  /v1/recommend runs (``serving.recommend``);
- ranker (only with a blend): the same candidates ordered by the ranker's score alone;
- candidates: those fused candidates in their own order (what recommend would be without a ranker);
- each enabled source alone (IndexBundle.candidates with that source only);
- popularity: the posts with the most positive engagements up to the snapshot;
- random: posts drawn uniformly from those that existed at the snapshot.

Metrics at each k, averaged over users: recall@k (share of the user's held-out posts in the top k),
NDCG@k (binary gains, ideal DCG over min(held-out posts, k) places) and MRR@k (reciprocal rank of the
first held-out post in the top k, 0 if none). "eligible" recall counts only held-out posts that existed
at the snapshot: a post created later is in no index built before it. The contribution table says,
for recommend's top k, how many items and hits each source was the main contributor of, and how many
hits no other source found.

--fit-fusion fits what a serving set needs from a validation period: the per-source hit rates, then
the recommend blend (serving/blend.py) on the candidates fused with those new rates, every candidate of
every evaluated user a row, labelled by engagement in the period.

``nearline eval split`` writes the part of a dataset before a time (a training snapshot) for data
that, like Twitter15, comes as one file rather than as daily snapshots.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from evaluation.blend import fit_blend
from evaluation.metrics import MetricTable, fit_hit_rates
from inputs.contract import POSITIVE_EVENTS
from nearline.config import NearlineConfig
from serving.api import CandidateQuery
from serving.blend import RecommendBlend, blend_features
from serving.candidates import top_unseen
from serving.errors import RequestError
from serving.index_side import IndexBundle, load_index_bundle
from serving.lineage import INDEX_POINTERS, RANKER_POINTERS, read_pointers
from serving.ranker_side import RankerBundle, load_ranker_bundle
from serving.recommend import Blending, rank_queries_for, recommendations
from storage.store import Store

DEFAULT_KS = (50, 100, 500)
BASELINES = ("popularity", "random")
MICROS_PER_HOUR = 3_600_000_000
BATCH_USERS = 64


def iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class EvaluationPeriod:
    """The held-out positives of one period: user -> the posts they engaged with, sorted, unique.

    Attributes:
        start_us: the serving set's snapshot (inclusive); end_us: exclusive end, or None for open.
        truth: user id -> int64 (n,) post ids.
        num_engagements: positive events in the period (a user may engage with a post twice).
    """

    start_us: int
    end_us: int | None
    truth: dict[int, np.ndarray]
    num_engagements: int


def evaluation_period(holdout_path: str, start_us: int, period_hours: float | None) -> EvaluationPeriod:
    """The positive engagements of ``holdout_path`` at or after start_us (and within period_hours).

    Raises:
        ValueError: naming the data and the times, when the period holds no positive engagement.
    """
    if period_hours is not None and not period_hours > 0:
        raise ValueError(f"--period-hours must be positive, got {period_hours}")
    end_us = None if period_hours is None else start_us + int(period_hours * MICROS_PER_HOUR)
    ts = pc.field("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    where = pc.field("event").isin(list(POSITIVE_EVENTS)) & (ts >= start_us)
    if end_us is not None:
        where = where & (ts < end_us)
    table = ds.dataset(f"{holdout_path}/engagements").to_table(columns=["user_id", "post_id"], filter=where)
    if table.num_rows == 0:
        until = "" if end_us is None else f" and before {iso(end_us)}"
        raise ValueError(
            f"the evaluation period is empty: {holdout_path} has no positive engagement ({', '.join(POSITIVE_EVENTS)}) "
            f"at or after the serving set's snapshot {iso(start_us)}{until}; give a later snapshot of the same "
            "world as --holdout-data"
        )
    users = table.column("user_id").to_numpy().astype(np.int64)
    posts = table.column("post_id").to_numpy().astype(np.int64)
    pairs = np.unique(np.stack([users, posts], axis=1), axis=0)
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    truth = {int(u): p for u, p in zip(pairs[starts, 0], np.split(pairs[:, 1], starts[1:]), strict=True)}
    return EvaluationPeriod(start_us, end_us, truth, int(table.num_rows))


def _ids(items: list[dict[str, Any]] | RequestError) -> np.ndarray:
    if isinstance(items, RequestError):
        raise items  # the users were checked to be known: an error here is a bug, not bad input
    return np.fromiter((item["post_id"] for item in items), dtype=np.int64, count=len(items))


def sample_users(users: Sequence[int], max_users: int, rng: np.random.Generator) -> list[int]:
    if len(users) <= max_users:
        return list(users)
    return sorted(rng.choice(np.asarray(users), size=max_users, replace=False).tolist())


def popularity_order(index: IndexBundle) -> np.ndarray:
    """Posts that existed at the snapshot, most positive engagements up to it first: int64 (P,)."""
    posts = index.posts
    existing = posts.created_at_us <= posts.snapshot_us
    order = np.lexsort((posts.post_ids[existing], -posts.engagements_so_far[existing]))
    return posts.post_ids[existing][order]


def known_users(index: IndexBundle, period: EvaluationPeriod, store_root: str) -> list[int]:
    """The period's users whom the store knows (the others would be 404s), or a ValueError if none."""
    known = [u for u in sorted(period.truth) if index.is_known_user(u)]
    if not known:
        raise ValueError(
            f"none of the {len(period.truth):,} users with engagements in the evaluation period is known to the "
            f"store {store_root}: is --holdout-data a later snapshot of the data the store was built from?"
        )
    return known


def comparison_lists(
    index: IndexBundle,
    users: Sequence[int],
    fused: Sequence[list[dict[str, Any]] | RequestError],
    depth: int,
    popular: np.ndarray,
    rng: np.random.Generator,
) -> list[dict[str, np.ndarray]]:
    """Per user, the lists recommend is compared with, each at most depth long, seen posts left out.

    Args:
        index: the index side.
        users: the batch's user ids.
        fused: IndexBundle.candidates for them with every enabled source.
        depth: the largest k.
        popular: popularity_order(index).
        rng: draws the random baseline.

    Returns:
        Per user {"candidates": fused order, <each enabled source alone>, "popularity", "random"}.
    """
    alone = {s: index.candidates([CandidateQuery(u, depth, (s,)) for u in users]) for s in index.sources.enabled}
    out = []
    for i, user in enumerate(users):
        seen = index.lists.seen.get(user)
        drawn = rng.choice(popular, size=min(len(popular), depth + len(seen)), replace=False)
        out.append(
            {
                "candidates": _ids(fused[i])[:depth],
                **{s: _ids(lists[i]) for s, lists in alone.items()},
                "popularity": top_unseen(popular, np.zeros(len(popular)), seen, depth)[0],
                "random": drawn[~np.isin(drawn, seen)][:depth],
            }
        )
    return out


def evaluate(
    config: NearlineConfig,
    holdout_path: str,
    ks: Sequence[int] = DEFAULT_KS,
    num_candidates: int = 500,
    max_users: int = 2000,
    period_hours: float | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run the evaluation (see the module docstring).

    Returns:
        The report, and the per-source hit rates measured on this period (fit_hit_rates).

    Raises:
        ValueError: an empty period, no evaluable user, or k / num_candidates out of range.
    """
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1 or ks[-1] > config.serve.max_k:
        raise ValueError(f"every k must be between 1 and serve.max_k={config.serve.max_k}, got {list(ks)}")
    if not 1 <= num_candidates <= config.serve.max_recommend_candidates:
        raise ValueError(
            f"--num-candidates must be between 1 and serve.max_recommend_candidates="
            f"{config.serve.max_recommend_candidates}, got {num_candidates}"
        )
    index, ranker = load_bundles(config)
    blend = RecommendBlend.from_config(config.serve.recommend_blend)
    blending = Blending.of(blend, index)
    period = evaluation_period(holdout_path, index.posts.snapshot_us, period_hours)
    known = known_users(index, period, config.store.root)
    rng = np.random.default_rng(seed)
    users = sample_users(known, max_users, rng)
    sources = index.sources.enabled
    names = ("recommend", *(("ranker",) if blending else ()), "candidates", *sources, *BASELINES)
    depth = ks[-1]
    table = MetricTable(names, ks)
    segments = {"with_history": MetricTable(names, ks), "without_history": MetricTable(names, ks)}
    contribution = {k: {s: np.zeros(3, np.int64) for s in sources} for k in ks}  # items, hits, only-source hits
    per_source_lists: dict[str, list[np.ndarray]] = {s: [] for s in sources}
    truths: list[np.ndarray] = []
    popular = popularity_order(index)
    started = time.perf_counter()
    for start in range(0, len(users), BATCH_USERS):
        batch = users[start : start + BATCH_USERS]
        fused = index.candidates([CandidateQuery(u, num_candidates) for u in batch])
        # rank_candidates' two steps, so the ranker scores once for both the blended and the ranker order.
        to_rank, queries = rank_queries_for(batch, fused)
        ranked = ranker.rank(queries) if queries else []
        recommended = recommendations(batch, fused, to_rank, ranked, [depth] * len(batch), blending)
        by_ranker = recommendations(batch, fused, to_rank, ranked, [depth] * len(batch)) if blending else None
        compared = comparison_lists(index, batch, fused, depth, popular, rng)
        for i, user in enumerate(batch):
            truth = period.truth[user]
            eligible = truth[np.isin(truth, index.posts.post_ids)]
            lists = {"recommend": _ids(recommended[i]), **compared[i]}
            if by_ranker is not None:
                lists["ranker"] = _ids(by_ranker[i])
            table.add(lists, truth, eligible)
            segments["with_history" if len(index.lists.seen.get(user)) else "without_history"].add(
                lists, truth, eligible
            )
            for s in sources:
                per_source_lists[s].append(lists[s])
            truths.append(truth)
            found_by = {c["post_id"]: c["scores"] for c in fused[i]}  # type: ignore[union-attr]
            for k in ks:
                for item in recommended[i][:k]:  # type: ignore[index]
                    counts = contribution[k][item["source"]]
                    counts[0] += 1
                    if item["post_id"] in truth:
                        counts[1] += 1
                        counts[2] += len(found_by[item["post_id"]]) == 1
    seconds = time.perf_counter() - started
    metrics = table.report()
    first_k = ks[0]
    best_single = {k: max(metrics[s][f"recall@{k}"] for s in sources) for k in ks}
    best_source = {k: max(sources, key=lambda s: metrics[s][f"recall@{k}"]) for k in ks}
    differences = {
        f"recommend - candidates, {metric}@{first_k}": table.compare("recommend", "candidates", metric, first_k)
        for metric in ("recall", "ndcg")
    } | {
        f"candidates - {best_source[k]} (best single source), recall@{k}": table.compare(
            "candidates", best_source[k], "recall", k
        )
        for k in ks
    }
    report = {
        "holdout_data": holdout_path,
        "period": {
            "start": iso(period.start_us),
            "end": None if period.end_us is None else iso(period.end_us),
            "positive_engagements": period.num_engagements,
            "users_with_engagements": len(period.truth),
            "users_unknown_to_the_store": len(period.truth) - len(known),
        },
        "users": len(users),
        "users_with_eligible_posts": table.eligible_users,
        "held_out_posts_per_user": round(float(np.mean([len(t) for t in truths])), 2),
        "ks": list(ks),
        "num_candidates": num_candidates,
        "sources": list(sources),
        "fusion": "learned hit rates" if index.sources.hit_rates is not None else "reciprocal-rank (k=60)",
        "recommend_order": "blend" if blending else "ranker",
        "recommend_blend": None if blend is None else blend.to_config().model_dump(),
        "fusion_hit_rates": None
        if index.sources.hit_rates is None
        else {s: list(r) for s, r in index.sources.hit_rates.items()},
        "trending_window_hours": index.sources.trending_window_hours,
        "followed_window_hours": index.sources.followed_window_hours,
        "metrics": metrics,
        "segments": {
            name: {"users": seg.users, "metrics": seg.report()} for name, seg in segments.items() if seg.users
        },
        "contribution": {
            str(k): {
                s: {"items": int(c[0]), "hits": int(c[1]), "hits_no_other_source_found": int(c[2])}
                for s, c in per_k.items()
            }
            for k, per_k in contribution.items()
        },
        "targets": {
            f"recommend_vs_candidates_recall@{first_k}": _ratio(metrics, "recommend", "candidates", f"recall@{first_k}"),
            f"recommend_vs_candidates_ndcg@{first_k}": _ratio(metrics, "recommend", "candidates", f"ndcg@{first_k}"),
            f"recommend_vs_popularity_recall@{first_k}": _ratio(metrics, "recommend", "popularity", f"recall@{first_k}"),
            f"recommend_vs_popularity_ndcg@{first_k}": _ratio(metrics, "recommend", "popularity", f"ndcg@{first_k}"),
            **{
                f"candidates_vs_best_single_source_recall@{k}": round(metrics["candidates"][f"recall@{k}"] / best_single[k], 3)
                if best_single[k]
                else None
                for k in ks
            },
        },
        "differences": differences,
        "seconds": round(seconds, 1),
        "versions": {"index": index.versions, "ranker": ranker.versions},
    }
    hit_rates = {s: fit_hit_rates(per_source_lists[s], truths) for s in sources}
    return report, hit_rates


def load_bundles(config: NearlineConfig) -> tuple[IndexBundle, RankerBundle]:
    """The serving set CURRENT in config.store.root, as serving loads it."""
    store = Store(config.store.root)
    index = load_index_bundle(store, read_pointers(store, INDEX_POINTERS), config.serve, config.indexes)
    ranker = load_ranker_bundle(store, read_pointers(store, RANKER_POINTERS), config.serve)
    return index, ranker


def blend_rows(
    index: IndexBundle,
    ranker: RankerBundle,
    users: Sequence[int],
    period: EvaluationPeriod,
    num_candidates: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate of every user as a blend row: (features float64 (N, F), engaged in the period bool (N,))."""
    features, labels = [], []
    for start in range(0, len(users), BATCH_USERS):
        batch = users[start : start + BATCH_USERS]
        fused = index.candidates([CandidateQuery(u, num_candidates) for u in batch])
        to_rank, queries = rank_queries_for(batch, fused)
        for i, scored in zip(to_rank, ranker.rank(queries) if queries else [], strict=True):
            if isinstance(scored, RequestError):
                raise scored  # the users were checked to be known: an error here is a bug, not bad input
            features.append(
                blend_features(fused[i], scored["rank_score"], index.posts, index.lists, batch[i])  # type: ignore[arg-type]
            )
            labels.append(np.isin(scored["post_ids"], period.truth[batch[i]]))
    if not features:
        raise ValueError("no evaluated user has a candidate: nothing to fit the recommend blend on")
    return np.concatenate(features), np.concatenate(labels)


def fit_recommend_blend(
    config: NearlineConfig,
    holdout_path: str,
    hit_rates: Mapping[str, Sequence[float]],
    num_candidates: int = 500,
    max_users: int = 2000,
    period_hours: float | None = None,
    seed: int = 0,
) -> tuple[RecommendBlend, dict[str, int]]:
    """Fit the recommend blend on this period, with candidates fused by ``hit_rates`` (the ones it will serve with).

    Returns:
        The blend, and its training rows' counts {"rows", "positives"}.
    """
    config = with_hit_rates(config, hit_rates)
    index, ranker = load_bundles(config)
    period = evaluation_period(holdout_path, index.posts.snapshot_us, period_hours)
    users = sample_users(known_users(index, period, config.store.root), max_users, np.random.default_rng(seed))
    features, labels = blend_rows(index, ranker, users, period, num_candidates)
    return fit_blend(features, labels), {"rows": len(labels), "positives": int(labels.sum())}


def _ratio(metrics: Mapping[str, Mapping[str, float]], a: str, b: str, metric: str) -> float | None:
    return round(metrics[a][metric] / metrics[b][metric], 3) if metrics[b][metric] else None


def render(report: Mapping[str, Any]) -> str:
    """The report's tables as text: metrics per list and k, then each source's contribution at the first k."""
    ks = report["ks"]
    period = report["period"]
    lines = [
        f"evaluation period {period['start']} .. {period['end'] or 'end of holdout'}: {report['users']:,} users "
        f"({period['users_unknown_to_the_store']:,} unknown to the store skipped), "
        f"{report['held_out_posts_per_user']} held-out posts per user; fusion: {report['fusion']}",
        f"{'list':<14}" + "".join(f"{f'recall@{k}':>11}{f'ndcg@{k}':>10}{f'mrr@{k}':>9}" for k in ks),
    ]
    for name, values in report["metrics"].items():
        lines.append(
            f"{name:<14}"
            + "".join(f"{values[f'recall@{k}']:>11.4f}{values[f'ndcg@{k}']:>10.4f}{values[f'mrr@{k}']:>9.4f}" for k in ks)
        )
    k = ks[0]
    lines.append(f"contribution to recommend@{k}: source, items, hits, hits no other source found")
    for source, counts in report["contribution"][str(k)].items():
        lines.append(f"  {source:<14}{counts['items']:>8,}{counts['hits']:>7,}{counts['hits_no_other_source_found']:>7,}")
    lines.append("targets: " + ", ".join(f"{name} {value}" for name, value in report["targets"].items()))
    lines.append("paired differences over users, mean [95% bootstrap interval]:")
    for name, value in report["differences"].items():
        lines.append(f"  {name:<58}{value['difference']:>+9.4f} [{value['ci95'][0]:+.4f}, {value['ci95'][1]:+.4f}]")
    return "\n".join(lines)


def write_time_split(data_path: str, until: str, out: str) -> dict[str, int]:
    """Write the part of a contract dataset before ``until``: a training snapshot for a time split.

    Keeps posts created, engagements and follows made before the time, and the users (created before
    it) that appear in those: an account the data has not shown yet is not in the snapshot.

    Args:
        data_path: a contract dataset (users, posts, follows, engagements).
        until: an ISO-8601 time (UTC when it has no offset).
        out: directory to write the four tables into (replaced if present).

    Returns:
        Row counts by table.
    """
    cut = dt.datetime.fromisoformat(until)
    if cut.tzinfo is None:
        cut = cut.replace(tzinfo=dt.timezone.utc)
    cut_us = int(cut.timestamp() * 1e6)

    def before(column: str) -> pc.Expression:
        return pc.field(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()) < cut_us

    root = Path(data_path)
    posts = ds.dataset(root / "posts").to_table(filter=before("created_at"))
    engagements = ds.dataset(root / "engagements").to_table(filter=before("ts"))
    engagements = engagements.filter(pc.is_in(engagements.column("post_id"), posts.column("post_id")))
    follows = ds.dataset(root / "follows").to_table(filter=before("created_at"))
    active = pa.chunked_array(
        [*posts.column("author_id").chunks, *engagements.column("user_id").chunks,
         *follows.column("follower_id").chunks, *follows.column("followee_id").chunks],
        type=pa.int64(),
    ).unique()
    users = ds.dataset(root / "users").to_table(filter=before("created_at") & pc.field("user_id").isin(active))
    if engagements.num_rows == 0:
        raise ValueError(f"{data_path} has no engagement before {cut.isoformat()}: nothing to train on")
    counts = {}
    for name, table in (("users", users), ("posts", posts), ("follows", follows), ("engagements", engagements)):
        directory = Path(out) / name
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.parquet"):
            old.unlink()
        pq.write_table(table, directory / "part-00000.parquet")
        counts[name] = table.num_rows
    return counts


def with_serve_settings(config: NearlineConfig, settings: Mapping[str, Any]) -> NearlineConfig:
    """The config with these serve settings replaced (validated as serve config)."""
    serve = type(config.serve).model_validate({**config.serve.model_dump(), **settings})
    return config.model_copy(update={"serve": serve})


def with_hit_rates(config: NearlineConfig, hit_rates: Mapping[str, Sequence[float]]) -> NearlineConfig:
    return with_serve_settings(config, {"fusion_hit_rates": {s: list(r) for s, r in hit_rates.items()}})


def with_fusion_file(config: NearlineConfig, path: str | None) -> NearlineConfig:
    """The config with serve.fusion_hit_rates and serve.recommend_blend from a --fit-fusion file.

    Unchanged when path is None; a file without a blend (written before there was one) leaves
    recommend ordered by the ranker.
    """
    if path is None:
        return config
    fitted = json.loads(Path(path).read_text())
    return with_serve_settings(
        config, {"fusion_hit_rates": fitted["fusion_hit_rates"], "recommend_blend": fitted.get("recommend_blend")}
    )
