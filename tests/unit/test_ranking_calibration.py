"""Isotonic calibration: monotone, improves log loss of a miscalibrated model, JSON round-trip."""

import numpy as np
import pytest

from ranking.calibration import fit_calibration, load_calibration, save_calibration
from ranking.training import task_metrics


def _miscalibrated(n, seed):
    rng = np.random.default_rng(seed)
    true_p = rng.uniform(0.01, 0.5, size=(n, 2))
    labels = (rng.random((n, 2)) < true_p).astype(float)
    # Overconfident and shifted: the ranking is right, the probabilities are not.
    raw = np.clip(true_p * 1.8 + 0.1, 0, 0.99)
    return raw, labels


def test_calibration_is_monotone_and_improves_log_loss(tmp_path):
    raw, labels = _miscalibrated(20_000, 0)
    calibration = fit_calibration(raw, labels, ("engage", "like"))
    test_raw, test_labels = _miscalibrated(20_000, 1)
    calibrated = calibration.apply(test_raw)
    before = task_metrics(test_raw, test_labels, ("engage", "like"))
    after = task_metrics(calibrated, test_labels, ("engage", "like"))
    assert after["log_loss"] < before["log_loss"] - 0.02
    grid = np.linspace(0, 1, 501)
    out = calibration.apply(np.stack([grid, grid], axis=1))
    assert (np.diff(out, axis=0) >= 0).all()
    assert out.min() > 0 and out.max() < 1
    save_calibration(calibration, str(tmp_path))
    np.testing.assert_array_equal(load_calibration(str(tmp_path)).apply(test_raw), calibrated)
    assert (tmp_path / "calibration.json").read_text().startswith("{")


def test_calibration_rejects_bad_shapes_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="must be"):
        fit_calibration(np.zeros((3, 2)), np.zeros((3, 1)), ("engage", "like"))
    with pytest.raises(ValueError, match="zero examples"):
        fit_calibration(np.zeros((0, 1)), np.zeros((0, 1)), ("engage",))
    assert load_calibration(str(tmp_path)) is None
