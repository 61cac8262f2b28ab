"""Discretizer: fit/apply round-trip, stable ids under recalibration, missing values, persistence."""

import json

import numpy as np
import pytest

from ranking.discretizer import (
    fit_discretizer,
    load_discretizer,
    quantile_probabilities,
    recalibrate,
    save_discretizer,
    stable_hash,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_fit_gives_equal_mass_bins_and_distinct_ids(rng):
    values = rng.normal(size=10_000)
    d = fit_discretizer({"x": values}, num_bins=8, hash_space_size=1000)
    ids = d.transform_continuous("x", values)
    _, counts = np.unique(ids, return_counts=True)
    assert len(counts) == 8
    assert counts.min() > 0.8 * len(values) / 8
    assert len(d.used_ids()) == 9  # 8 bins + the missing bin, no collisions


def test_quantiles_from_spark_give_the_same_bins_as_the_sample(rng):
    values = rng.exponential(size=5000)
    from_sample = fit_discretizer({"x": values}, 4, 1000)
    quantiles = np.quantile(values, quantile_probabilities(4))
    from_quantiles = fit_discretizer({"x": quantiles}, 4, 1000, are_quantiles=True)
    np.testing.assert_array_equal(
        from_sample.features["x"].boundaries, from_quantiles.features["x"].boundaries
    )
    np.testing.assert_array_equal(
        from_sample.transform_continuous("x", values), from_quantiles.transform_continuous("x", values)
    )


def test_discrete_feature_collapses_repeated_quantiles():
    values = np.array([0.0] * 90 + [1.0] * 10)
    d = fit_discretizer({"flag": values}, 16, 1000)
    assert d.features["flag"].boundaries.tolist() == [0.0, 1.0]  # 15 cut points collapse to 2
    ids = d.transform_continuous("flag", np.array([0.0, 1.0]))
    assert ids[0] != ids[1]


def test_nan_and_inf_map_to_missing_id_not_edge_bins(rng):
    d = fit_discretizer({"x": rng.normal(size=1000)}, 4, 1000)
    bins = d.features["x"]
    ids = d.transform_continuous("x", np.array([np.nan, np.inf, -np.inf, 1e9, -1e9]))
    assert ids[:3].tolist() == [bins.missing_id] * 3
    assert ids[3] == bins.bin_ids[-1] and ids[4] == bins.bin_ids[0]
    assert bins.missing_id not in bins.bin_ids


def test_ids_are_deterministic_across_fits(rng):
    values = rng.normal(size=1000)
    a = fit_discretizer({"x": values, "y": values * 2}, 8, 4096)
    b = fit_discretizer({"y": values * 2, "x": values}, 8, 4096)
    np.testing.assert_array_equal(a.features["x"].bin_ids, b.features["x"].bin_ids)
    assert stable_hash("x", 4096) == stable_hash("x", 4096)


def test_recalibration_keeps_old_ids_and_adds_new_ones(rng):
    old = rng.uniform(0, 1, size=5000)
    parent = fit_discretizer({"x": old}, 4, 1000, version="v1")
    new = rng.uniform(0, 3, size=5000)  # the range grows upward
    child = recalibrate(parent, {"x": new, "z": new}, 4, version="v2")
    assert child.parent_version == "v1"
    pb, cb = parent.features["x"], child.features["x"]
    # Every old boundary survives; old ids are unchanged; the missing id is unchanged.
    assert set(pb.boundaries) <= set(cb.boundaries)
    np.testing.assert_array_equal(cb.bin_ids[: len(pb.bin_ids)], pb.bin_ids)
    assert cb.missing_id == pb.missing_id
    # Values inside the old range keep their ids.
    inside = rng.uniform(0, pb.boundaries[-1], size=500)
    np.testing.assert_array_equal(
        parent.transform_continuous("x", inside), child.transform_continuous("x", inside)
    )
    # New bins above the old range have ids the parent never used; the new feature too.
    new_ids = set(cb.bin_ids[len(pb.bin_ids) :].tolist())
    assert new_ids and not new_ids & parent.used_ids()
    z_ids = set(child.features["z"].bin_ids.tolist()) | {child.features["z"].missing_id}
    assert not z_ids & parent.used_ids()
    assert not new_ids & z_ids


def test_recalibration_below_the_old_range(rng):
    parent = fit_discretizer({"x": rng.uniform(10, 20, size=2000)}, 4, 1000)
    child = recalibrate(parent, {"x": rng.uniform(0, 20, size=2000)}, 4)
    pb, cb = parent.features["x"], child.features["x"]
    k = len(cb.bin_ids) - len(pb.bin_ids)
    assert k > 0
    np.testing.assert_array_equal(cb.bin_ids[k:], pb.bin_ids)
    assert parent.transform_continuous("x", np.array([15.0])) == child.transform_continuous(
        "x", np.array([15.0])
    )


def test_recalibration_with_grown_hash_space_keeps_ids(rng):
    parent = fit_discretizer({"x": rng.normal(size=1000)}, 8, 100)
    child = recalibrate(parent, {"x": rng.normal(size=1000) * 3}, 8, hash_space_size=10_000)
    assert child.hash_space_size == 10_000
    np.testing.assert_array_equal(
        parent.transform_continuous("x", np.linspace(-1, 1, 50)),
        child.transform_continuous("x", np.linspace(-1, 1, 50)),
    )
    with pytest.raises(ValueError, match="smaller than the parent"):
        recalibrate(parent, {}, 8, hash_space_size=10)


def test_categorical_hashing_and_missing():
    from ranking.discretizer import Discretizer

    d = Discretizer(hash_space_size=1 << 20, categorical=("country",))
    ids = d.transform_categorical("country", ["us", "fr", "us", None, float("nan")])
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert ids[3] == ids[4]


def test_transform_rejects_missing_and_unknown_features(rng):
    d = fit_discretizer({"x": rng.normal(size=100)}, 4, 100)
    with pytest.raises(ValueError, match="missing features"):
        d.transform({"y": np.zeros(3)}, ["x"])
    with pytest.raises(ValueError, match="not in the discretizer"):
        d.transform({"y": np.zeros(3)}, ["y"])


def test_save_load_round_trip(tmp_path, rng):
    values = rng.normal(size=1000)
    d = recalibrate(
        fit_discretizer({"x": values}, 8, 500, ["c"], version="a"), {"x": values * 4}, 8, version="b"
    )
    save_discretizer(d, str(tmp_path))
    loaded = load_discretizer(str(tmp_path))
    probe = np.concatenate([values, [np.nan]])
    np.testing.assert_array_equal(d.transform_continuous("x", probe), loaded.transform_continuous("x", probe))
    assert loaded.version == "b" and loaded.parent_version == "a" and loaded.categorical == ("c",)
    data = json.loads((tmp_path / "discretizer.json").read_text())
    data["format_version"] = 99
    (tmp_path / "discretizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        load_discretizer(str(tmp_path))
