"""Isotonic calibration of the ranker's per-task probabilities.

Fitted on held-out (validation) predictions after training, stored as plain arrays in JSON
(no pickle): per task the increasing knot abscissae ``x`` and values ``y`` of the isotonic fit.
Applying it is a clipped linear interpolation (``np.interp``), the same at training and serving.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
# Calibrated probabilities are kept off 0 and 1 so a log loss never becomes infinite.
_PROBABILITY_FLOOR = 1e-6


@dataclass
class Calibration:
    """Per-task isotonic maps: ``knots[task] = (x (K,), y (K,))``, both float64 and increasing."""

    tasks: tuple[str, ...]
    knots: dict[str, tuple[np.ndarray, np.ndarray]]

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrate raw probabilities.

        Args:
            probabilities: float array (N, T), columns in ``tasks`` order.

        Returns:
            float64 array (N, T) of calibrated probabilities in [1e-6, 1 - 1e-6].
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.tasks):
            raise ValueError(
                f"expected probabilities of shape (N, {len(self.tasks)}), got {probabilities.shape}"
            )
        out = np.empty_like(probabilities)
        for t, task in enumerate(self.tasks):
            x, y = self.knots[task]
            out[:, t] = np.interp(probabilities[:, t], x, y)
        return np.clip(out, _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)


def fit_calibration(probabilities: np.ndarray, labels: np.ndarray, tasks: Sequence[str]) -> Calibration:
    """Fit one isotonic regression per task.

    Args:
        probabilities: float array (N, T) of model probabilities on held-out data.
        labels: {0, 1} array (N, T).
        tasks: task names, one per column.

    Returns:
        The Calibration.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if probabilities.shape != labels.shape or probabilities.shape[1:] != (len(tasks),):
        raise ValueError(
            f"probabilities {probabilities.shape} and labels {labels.shape} must be (N, {len(tasks)})"
        )
    if len(probabilities) == 0:
        raise ValueError("cannot fit calibration on zero examples")
    knots = {}
    for t, task in enumerate(tasks):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(probabilities[:, t], labels[:, t])
        knots[task] = (
            np.asarray(iso.X_thresholds_, dtype=np.float64),
            np.asarray(iso.y_thresholds_, dtype=np.float64),
        )
    return Calibration(tasks=tuple(tasks), knots=knots)


def save_calibration(calibration: Calibration, directory: str) -> str:
    """Write ``calibration.json`` into ``directory``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CALIBRATION_FILE)
    data = {
        "format_version": FORMAT_VERSION,
        "tasks": list(calibration.tasks),
        "knots": {task: {"x": x.tolist(), "y": y.tolist()} for task, (x, y) in calibration.knots.items()},
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def load_calibration(directory: str) -> Calibration | None:
    """Read ``calibration.json`` from ``directory``; None when the model was saved without one."""
    path = os.path.join(directory, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"calibration format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return Calibration(
        tasks=tuple(data["tasks"]),
        knots={
            task: (np.asarray(k["x"], dtype=np.float64), np.asarray(k["y"], dtype=np.float64))
            for task, k in data["knots"].items()
        },
    )
