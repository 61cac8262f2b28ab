"""Fitting the recommend blend (the model serving.blend applies) on a validation period's candidates."""

from __future__ import annotations

import numpy as np

from serving.blend import RecommendBlend


def fit_blend(features: np.ndarray, labels: np.ndarray) -> RecommendBlend:
    """Fit the blend on a validation period's candidates.

    Args:
        features: float64 (N, F) blend_features rows of every evaluated user's candidates (an experiment
            may add columns: nothing here depends on F).
        labels: bool (N,) whether the user engaged with the post in the period.

    Raises:
        ValueError: when the labels hold one class only (nothing to learn from).
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError(
            f"cannot fit the recommend blend: all {len(labels):,} candidates have the same label "
            f"({bool(labels[0]) if len(labels) else 'none'}); the validation period needs engaged and "
            "unengaged candidates"
        )
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature (a source switched off) gets weight 0
    model = LogisticRegression(C=1.0, max_iter=1000).fit((features - mean) / scale, labels)
    return RecommendBlend(model.coef_[0].astype(np.float64), mean, scale)
