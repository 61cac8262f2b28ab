"""How far can re-ordering the served candidates go on the generated data? A ceiling for recommend.

    python -m bench.recommend_ceiling --validation-store store/gen5 --validation-data data/gen6 \
        --store store/gen6 --data data/gen7 --fusion reports/fusion_generated.json

The generated world plants P(engage | impression) (``inputs.synthetic.engagement_probabilities``: the
user's interest in the post's topic, following the author, post quality), and its truth tables say what
each user's interests and each post's topic and quality really are. So a ranker can be replaced by the
planted probability itself: the best any impression-trained ranker could learn. Each ordering of the
same 500 fused candidates per user is fitted (where it has weights) on the validation period and
scored on the test period, exactly as ``nearline eval recommend`` does:

- candidates: the fused order; ranker: the served ranker's score alone;
- blend: the served blend (``serve.recommend_blend`` from --fusion);
- planted blend: the blend refitted with log P_planted in place of the ranker's score;
- planted blend + ranker: both.

It also reports, over the test candidates, how well the ranker's score, the content-side interest
cosine and the blend's topic affinities track the planted interest match (AUC for "match above 0.2").

Writes reports/recommend_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from sklearn.metrics import roc_auc_score

from evaluation.blend import fit_blend
from evaluation.metrics import ranking_metrics
from evaluation.recommend import (
    BATCH_USERS,
    evaluation_period,
    known_users,
    load_bundles,
    sample_users,
    with_fusion_file,
)
from inputs.synthetic import engagement_probabilities
from nearline.config import load_config
from serving.api import CandidateQuery
from serving.blend import RecommendBlend, blend_features
from serving.config import BLEND_FEATURES
from serving.recommend import rank_queries_for

K = 50
MATCH_THRESHOLD = 0.2


@dataclass
class UserCandidates:
    """One user's fused candidates with everything an ordering may read."""

    post_ids: np.ndarray
    truth: np.ndarray
    rank_score: np.ndarray
    features: np.ndarray
    planted: np.ndarray
    match: np.ndarray
    interest_cosine: np.ndarray


def collect(config_path: str, store_root: str, data_path: str, fusion: str, max_users: int) -> list[UserCandidates]:
    """Every evaluated user's candidates, ranked by the served ranker, with the planted truth beside."""
    config = with_fusion_file(load_config(config_path, [f"store.root={store_root}"]), fusion)
    index, ranker = load_bundles(config)
    period = evaluation_period(data_path, index.posts.snapshot_us, None)
    users = sample_users(known_users(index, period, store_root), max_users, np.random.default_rng(0))
    interests = ds.dataset(f"{data_path}/truth/user_topics").to_table(columns=["user_id", "topic_weights"])
    interest_of = dict(zip(interests.column("user_id").to_pylist(), interests.column("topic_weights").to_pylist(), strict=True))
    posts = ds.dataset(f"{data_path}/truth/posts").to_table(columns=["post_id", "topic", "quality"]).sort_by("post_id")
    truth_post_ids = posts.column("post_id").to_numpy()
    topic, quality = posts.column("topic").to_numpy(), posts.column("quality").to_numpy()
    out = []
    for start in range(0, len(users), BATCH_USERS):
        batch = users[start : start + BATCH_USERS]
        fused = index.candidates([CandidateQuery(u, 500) for u in batch])
        to_rank, queries = rank_queries_for(batch, fused)
        for i, scored in zip(to_rank, ranker.rank(queries), strict=True):
            user = batch[i]
            ids = scored["post_ids"]  # type: ignore[index]
            rows = np.searchsorted(truth_post_ids, ids)
            weights = np.asarray(interest_of[user], dtype=np.float64)
            match = weights[topic[rows]] / weights.sum()
            authors = index.posts.author_ids[np.searchsorted(index.posts.post_ids, ids)]
            follows = np.isin(authors, index.lists.followees.get(user)).astype(np.float64)
            found_user, user_row = index.interest.rows(np.asarray([user]))
            found_posts, post_rows = index.post_vectors.rows(ids)
            cosine = np.zeros(len(ids))
            if found_user[0]:
                cosine = np.where(found_posts, index.post_vectors.vectors[post_rows] @ index.interest.vectors[user_row[0]], 0.0)
            out.append(
                UserCandidates(
                    post_ids=ids,
                    truth=period.truth[user],
                    rank_score=scored["rank_score"],  # type: ignore[index]
                    features=blend_features(
                        fused[i], scored["rank_score"], index.posts, index.lists, user  # type: ignore[arg-type, index]
                    ),
                    planted=engagement_probabilities(match, follows, quality[rows].astype(np.float64)),
                    match=match,
                    interest_cosine=cosine,
                )
            )
    return out


def with_planted(user: UserCandidates, keep_ranker: bool) -> np.ndarray:
    planted = np.log(user.planted)[:, None]
    return np.hstack([user.features, planted]) if keep_ranker else np.hstack([planted, user.features[:, 1:]])


def metrics_at_k(users: list[UserCandidates], order_score: Callable[[UserCandidates], np.ndarray]) -> dict[str, float]:
    sums = np.zeros(3)
    for user in users:
        order = np.lexsort((np.arange(len(user.post_ids)), -order_score(user)))
        sums += ranking_metrics(user.post_ids[order], user.truth, [K])[K]
    recall, ndcg, mrr = sums / len(users)
    return {f"recall@{K}": round(float(recall), 4), f"ndcg@{K}": round(float(ndcg), 4), f"mrr@{K}": round(float(mrr), 4)}


def labels_of(users: list[UserCandidates]) -> np.ndarray:
    return np.concatenate([np.isin(u.post_ids, u.truth) for u in users])


def planted_order(validation: list[UserCandidates], keep_ranker: bool) -> Callable[[UserCandidates], np.ndarray]:
    """The blend's fit (evaluation.blend.fit_blend) with the planted probability as a feature, on validation."""
    blend = fit_blend(np.concatenate([with_planted(u, keep_ranker) for u in validation]), labels_of(validation))
    return lambda u: blend.score(with_planted(u, keep_ranker))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation-store", required=True)
    parser.add_argument("--validation-data", required=True, help="the later snapshot the validation period comes from")
    parser.add_argument("--store", required=True)
    parser.add_argument("--data", required=True, help="the later snapshot the test period comes from")
    parser.add_argument("--fusion", required=True, help="the --fit-fusion file the test store is served with")
    parser.add_argument("--config", default="conf/local.yaml", help="the config the stores were built and served with")
    parser.add_argument("--max-users", type=int, default=2000)
    parser.add_argument("--out", default="reports/recommend_ceiling.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    validation = collect(args.config, args.validation_store, args.validation_data, args.fusion, args.max_users)
    test = collect(args.config, args.store, args.data, args.fusion, args.max_users)
    served = RecommendBlend.from_config(with_fusion_file(load_config(args.config), args.fusion).serve.recommend_blend)
    if served is None:
        parser.error(f"{args.fusion} holds no recommend_blend: fit one with `nearline eval recommend --fit-fusion`")
    orders: dict[str, Callable[[UserCandidates], np.ndarray]] = {
        "candidates": lambda u: -np.arange(len(u.post_ids), dtype=np.float64),
        "ranker": lambda u: u.rank_score,
        "blend (served)": lambda u: served.score(u.features),
        "blend refitted here": (lambda b: lambda u: b.score(u.features))(
            fit_blend(np.concatenate([u.features for u in validation]), labels_of(validation))
        ),
        "planted blend (planted probability instead of the ranker)": planted_order(validation, keep_ranker=False),
        "planted blend + ranker": planted_order(validation, keep_ranker=True),
        "planted probability alone": lambda u: u.planted,
    }
    results = {name: metrics_at_k(test, order) for name, order in orders.items()}
    base = results["candidates"]
    for values in results.values():
        values["vs_candidates"] = {m: round(values[m] / base[m], 3) for m in (f"recall@{K}", f"ndcg@{K}")}
    high_match = np.concatenate([u.match for u in test]) > MATCH_THRESHOLD
    engaged = labels_of(test)
    finite_rank = np.concatenate([np.where(np.isfinite(u.rank_score), u.rank_score, -1.0) for u in test])
    diagnostics = {
        f"auc_for_match_above_{MATCH_THRESHOLD}": {
            "ranker": round(float(roc_auc_score(high_match, finite_rank)), 3),
            "interest_cosine": round(float(roc_auc_score(high_match, np.concatenate([u.interest_cosine for u in test]))), 3),
            **{
                name: round(float(roc_auc_score(high_match, np.concatenate([u.features[:, column] for u in test]))), 3)
                for column, name in enumerate(BLEND_FEATURES)
                if name.startswith("topic_affinity_")
            },
        },
        "auc_for_engaged": {
            "ranker": round(float(roc_auc_score(engaged, finite_rank)), 3),
            "planted_probability": round(float(roc_auc_score(engaged, np.concatenate([u.planted for u in test]))), 3),
            "planted_match": round(float(roc_auc_score(engaged, np.concatenate([u.match for u in test]))), 3),
        },
    }
    report = {
        "validation": {"store": args.validation_store, "data": args.validation_data, "users": len(validation)},
        "test": {"store": args.store, "data": args.data, "users": len(test)},
        "k": K,
        "orders": results,
        "diagnostics": diagnostics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'order of the same candidates (test period)':<62}{'recall@50':>10}{'ndcg@50':>9}{'mrr@50':>8}  vs candidates")
    for name, values in results.items():
        ratio = values["vs_candidates"]
        print(f"{name:<62}{values['recall@50']:>10.4f}{values['ndcg@50']:>9.4f}{values['mrr@50']:>8.4f}  "
              f"{ratio['recall@50']:.3f}x / {ratio['ndcg@50']:.3f}x")
    print(json.dumps(diagnostics))
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
