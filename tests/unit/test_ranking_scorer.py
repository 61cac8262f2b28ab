"""Serving-side scorer equals the full model (tolerance 1e-5), with defaults for unseen users/pairs."""

import numpy as np
import torch
from test_ranking_model import toy_config
from test_ranking_training import toy_examples, toy_rows

from ranking.calibration import fit_calibration
from ranking.config import TrainingConfig
from ranking.examples import empty_row_columns, encode_group
from ranking.model import export_split
from ranking.scorer import RankerScorer, compute_split_vectors
from ranking.training import predict_probabilities, train_ranker


def _config():
    config = toy_config(training=TrainingConfig(epochs=1, batch_size=256))
    groups = dict(config.groups)
    groups["user_author"] = groups["user_author"].model_copy(
        update={"empty_row_values": {"ua_engagements": 0.0}}
    )
    return config.model_copy(update={"groups": groups})


def test_scorer_matches_full_model_for_exported_and_default_vectors():
    config = _config()
    examples, discretizer = toy_examples(config, 600, seed=1)
    model = train_ranker(config, examples, examples, progress=False).model
    columns, vectors, labels, _ = toy_rows(600, 1)
    n = 40
    rng = np.random.default_rng(5)
    user_ids = rng.integers(0, 5, n)
    author_ids = rng.integers(100, 104, n)
    rows = rng.choice(600, n, replace=False)
    sub = examples.select(rows)
    # Each (user, author) row's exported vector is computed from that row's features, as the export job
    # does for the latest snapshot; users 0-3 and some pairs are exported, the rest fall back to defaults.
    user_vec = compute_split_vectors(export_split(model, "user"), sub.feature_ids["user"], sub.dense["user"])
    pair_vec = compute_split_vectors(
        export_split(model, "user_author"), sub.feature_ids["user_author"], sub.dense["user_author"]
    )
    first_for_user = {}
    for i, u in enumerate(user_ids):
        first_for_user.setdefault(int(u), i)
    exported_users = [u for u in first_for_user if u < 4]
    pair_keys = {}
    for i, (u, a) in enumerate(zip(user_ids, author_ids, strict=True)):
        pair_keys.setdefault((int(u), int(a)), i)
    exported_pairs = list(pair_keys)[: len(pair_keys) // 2]
    calibration = fit_calibration(predict_probabilities(model, examples), examples.labels, config.tasks)
    scorer = RankerScorer(
        model,
        config,
        discretizer,
        calibration,
        np.array(exported_users),
        user_vec[[first_for_user[u] for u in exported_users]],
        np.array([p[0] for p in exported_pairs]),
        np.array([p[1] for p in exported_pairs]),
        pair_vec[[pair_keys[p] for p in exported_pairs]],
    )
    # The full model sees, per row, the exported user's / pair's features, or the empty row.
    full_ids = {g: sub.feature_ids[g].copy() for g in sub.feature_ids}
    full_dense = {g: sub.dense[g].copy() for g in sub.dense}
    empty = {
        g: encode_group(config, discretizer, g, empty_row_columns(config, g)) for g in ("user", "user_author")
    }
    for i, (u, a) in enumerate(zip(user_ids, author_ids, strict=True)):
        src = first_for_user[int(u)]
        if int(u) in exported_users:
            full_ids["user"][i], full_dense["user"][i] = sub.feature_ids["user"][src], sub.dense["user"][src]
        else:
            full_ids["user"][i], full_dense["user"][i] = empty["user"][0][0], empty["user"][1][0]
        if (int(u), int(a)) in exported_pairs:
            src = pair_keys[(int(u), int(a))]
            full_ids["user_author"][i], full_dense["user_author"][i] = (
                sub.feature_ids["user_author"][src],
                sub.dense["user_author"][src],
            )
        else:
            full_ids["user_author"][i], full_dense["user_author"][i] = (
                empty["user_author"][0][0],
                empty["user_author"][1][0],
            )
    with torch.no_grad():
        logits = model(
            {g: torch.from_numpy(a) for g, a in full_ids.items()},
            {g: torch.from_numpy(a) for g, a in full_dense.items()},
        )
    expected = calibration.apply(torch.sigmoid(logits).numpy())
    post_columns = {
        name: columns[name][rows]
        for name in config.groups["post"].sparse_features + config.groups["post"].dense_features
    }
    got = scorer.score_pairs(user_ids, author_ids, post_columns, vectors[rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(scorer.default_user_vector, user_vec[0])
    # score() for one user is score_pairs with that user repeated.
    one = user_ids == user_ids[0]
    single = scorer.score(
        int(user_ids[0]),
        rows[one],
        author_ids[one],
        {k: v[one] for k, v in post_columns.items()},
        vectors[rows][one],
    )
    np.testing.assert_allclose(single, got[one], atol=1e-7)
