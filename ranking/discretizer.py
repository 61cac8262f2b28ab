"""Quantile discretizer with stable hashed feature ids.

A continuous feature's value falls into one of the bins cut by its sorted boundaries
``b_0 < ... < b_{k-1}``: bin 0 is ``(-inf, b_0)``, bin i is ``[b_{i-1}, b_i)``, bin k is
``[b_{k-1}, +inf)``. Each bin carries a feature id in ``[0, hash_space_size)``, derived from
``blake2b(feature name, bin serial)`` with linear probing so that ids of different bins never
collide while the hash space has room. The ids are *stored*, not recomputed, which is what lets a
warm-started model keep its meaning:

* ``recalibrate`` (bin-preserving mode) keeps every existing boundary and id. New data only adds
  boundaries outside the old range (they split the two open-ended outer bins; the part adjacent to
  the old range keeps the old id and the new outer parts get new ids), and features not seen before
  get fresh bins. The hash space may grow; old ids stay where they are.
* Missing values: NaN, +inf and -inf (and ``None`` for categorical features) map to a dedicated
  per-feature "missing" id, never to an edge bin, so an absent value is not mistaken for an extreme one.

Categorical features (strings, bools) are hashed from (name, value) without a stored vocabulary;
the hash is stable across processes and versions by construction.

Boundaries are fitted from numpy arrays: either a sample (``fit_discretizer``) or precomputed
quantiles such as Spark's ``approxQuantile`` at ``quantile_probabilities(num_bins)``
(``fit_discretizer(..., are_quantiles=True)``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1
DISCRETIZER_FILE = "discretizer.json"


def stable_hash(key: str, hash_space_size: int) -> int:
    """Deterministic hash of a string into ``[0, hash_space_size)`` (blake2b, not Python's hash())."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % hash_space_size


def quantile_probabilities(num_bins: int) -> list[float]:
    """Interior quantile probabilities that cut a feature into ``num_bins`` equal-mass bins."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    return [i / num_bins for i in range(1, num_bins)]


@dataclass
class FeatureBins:
    """Boundaries and ids of one continuous feature.

    Attributes:
        boundaries: float64 array (k,), strictly increasing.
        bin_ids: int64 array (k + 1,), the id of each bin.
        missing_id: id of NaN/inf values.
        next_serial: serial for the next bin created (part of the hash key of new bins).
    """

    boundaries: np.ndarray
    bin_ids: np.ndarray
    missing_id: int
    next_serial: int


@dataclass
class Discretizer:
    """Fitted discretizer: per-feature bins plus categorical hashing.

    Use ``fit_discretizer`` / ``recalibrate`` to build one and ``save_discretizer`` /
    ``load_discretizer`` to persist it.
    """

    hash_space_size: int
    features: dict[str, FeatureBins] = field(default_factory=dict)
    categorical: tuple[str, ...] = ()
    version: str = ""
    parent_version: str | None = None

    def used_ids(self) -> set[int]:
        """Ids taken by stored bins (categorical ids are open-ended and not tracked)."""
        used: set[int] = set()
        for bins in self.features.values():
            used.update(int(i) for i in bins.bin_ids)
            used.add(bins.missing_id)
        return used

    def _allocate(self, key: str, used: set[int]) -> int:
        # Linear probing keeps ids collision-free while there is room; once the space is
        # (nearly) full, sharing a row is the normal behaviour of a hashed embedding.
        start = stable_hash(key, self.hash_space_size)
        if len(used) >= self.hash_space_size:
            return start
        candidate = start
        while candidate in used:
            candidate = (candidate + 1) % self.hash_space_size
        used.add(candidate)
        return candidate

    def _new_feature(self, name: str, boundaries: np.ndarray, used: set[int]) -> FeatureBins:
        missing_id = self._allocate(f"{name}\x1fmissing", used)
        ids = [self._allocate(f"{name}\x1fbin\x1f{serial}", used) for serial in range(len(boundaries) + 1)]
        return FeatureBins(
            boundaries=boundaries.astype(np.float64),
            bin_ids=np.asarray(ids, dtype=np.int64),
            missing_id=missing_id,
            next_serial=len(ids),
        )

    def transform_continuous(self, name: str, values: np.ndarray) -> np.ndarray:
        """Ids of one continuous feature.

        Args:
            name: feature name.
            values: numeric array (N,); NaN/inf are missing.

        Returns:
            int64 array (N,).
        """
        if name not in self.features:
            raise ValueError(f"feature {name!r} is not in the discretizer (known: {sorted(self.features)})")
        bins = self.features[name]
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        positions = np.searchsorted(bins.boundaries, np.where(finite, values, 0.0), side="right")
        return np.where(finite, bins.bin_ids[positions], bins.missing_id).astype(np.int64)

    def transform_categorical(self, name: str, values: Sequence[object] | np.ndarray) -> np.ndarray:
        """Ids of one categorical feature: hash of (name, str(value)); None/NaN share a missing id.

        Args:
            name: feature name.
            values: array-like (N,) of strings, bools or ints.

        Returns:
            int64 array (N,).
        """
        if name not in self.categorical:
            raise ValueError(
                f"categorical feature {name!r} is not in the discretizer ({list(self.categorical)})"
            )
        cache: dict[object, int] = {}
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            is_missing = value is None or (isinstance(value, float) and not np.isfinite(value))
            key = "\x00missing" if is_missing else str(value)
            if key not in cache:
                cache[key] = stable_hash(f"{name}\x1fcat\x1f{key}", self.hash_space_size)
            out[i] = cache[key]
        return out

    def transform(self, columns: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
        """Ids of several features side by side.

        Args:
            columns: feature name -> array (N,).
            names: features to take, in column order (continuous or categorical).

        Returns:
            int64 array (N, len(names)).
        """
        missing = [n for n in names if n not in columns]
        if missing:
            raise ValueError(f"input is missing features {missing}")
        if not names:
            n = len(next(iter(columns.values()))) if columns else 0
            return np.zeros((n, 0), dtype=np.int64)
        out = [
            self.transform_continuous(n, columns[n])
            if n in self.features
            else self.transform_categorical(n, columns[n])
            for n in names
        ]
        return np.stack(out, axis=1)


def _boundaries_from_sample(values: np.ndarray, num_bins: int, are_quantiles: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros(0, dtype=np.float64)
    if are_quantiles:
        return np.unique(values)
    # Quantile cuts of a discrete feature repeat; unique() merges them into one boundary.
    return np.unique(np.quantile(values, quantile_probabilities(num_bins)))


def fit_discretizer(
    samples: Mapping[str, np.ndarray],
    num_bins: int,
    hash_space_size: int,
    categorical: Sequence[str] = (),
    *,
    are_quantiles: bool = False,
    version: str = "",
) -> Discretizer:
    """Fit bin boundaries from a sample (or from precomputed quantiles).

    Args:
        samples: continuous feature name -> float array (n,) of sampled values, or of quantiles at
            ``quantile_probabilities(num_bins)`` when ``are_quantiles`` (Spark ``approxQuantile``).
        num_bins: bins per feature; repeated quantiles collapse so discrete features get fewer.
        hash_space_size: number of ids.
        categorical: names of categorical features (hashed, nothing to fit).
        are_quantiles: the arrays already are the boundaries.
        version: version label stored in the file.

    Returns:
        The fitted Discretizer.
    """
    if hash_space_size < 1:
        raise ValueError(f"hash_space_size must be >= 1, got {hash_space_size}")
    discretizer = Discretizer(
        hash_space_size=hash_space_size, categorical=tuple(categorical), version=version
    )
    used: set[int] = set()
    for name in sorted(samples):
        boundaries = _boundaries_from_sample(samples[name], num_bins, are_quantiles)
        discretizer.features[name] = discretizer._new_feature(name, boundaries, used)
    return discretizer


def recalibrate(
    parent: Discretizer,
    samples: Mapping[str, np.ndarray],
    num_bins: int,
    hash_space_size: int | None = None,
    categorical: Sequence[str] | None = None,
    *,
    are_quantiles: bool = False,
    version: str = "",
) -> Discretizer:
    """Bin-preserving recalibration for warm start: old boundaries and ids never move.

    Args:
        parent: the discretizer the parent model was trained with.
        samples: as in ``fit_discretizer``, from the new data.
        num_bins: bins per feature for new features, and the resolution of new outer bins.
        hash_space_size: new hash space, >= the parent's (default: the parent's).
        categorical: categorical feature names (default: the parent's).
        are_quantiles: as in ``fit_discretizer``.
        version: version label of the result.

    Returns:
        A new Discretizer whose ids agree with the parent's on every old bin.
    """
    size = parent.hash_space_size if hash_space_size is None else hash_space_size
    if size < parent.hash_space_size:
        raise ValueError(
            f"hash_space_size {size} is smaller than the parent's {parent.hash_space_size}: old ids would not fit"
        )
    child = Discretizer(
        hash_space_size=size,
        categorical=tuple(parent.categorical if categorical is None else categorical),
        version=version,
        parent_version=parent.version or None,
    )
    used = parent.used_ids()
    for name, bins in parent.features.items():
        child.features[name] = FeatureBins(
            bins.boundaries.copy(), bins.bin_ids.copy(), bins.missing_id, bins.next_serial
        )
    for name in sorted(samples):
        new_cuts = _boundaries_from_sample(samples[name], num_bins, are_quantiles)
        if name not in child.features:
            child.features[name] = child._new_feature(name, new_cuts, used)
            continue
        bins = child.features[name]
        if bins.boundaries.size == 0:
            # A feature fitted on all-missing data has one bin; its id stays on the lower side.
            lower, upper = new_cuts[:0], new_cuts
        else:
            lower = new_cuts[new_cuts < bins.boundaries[0]]
            upper = new_cuts[new_cuts > bins.boundaries[-1]]
        serial = bins.next_serial
        # Bins below the old range: the one adjacent to b_0 keeps the old lowest id.
        lower_ids = []
        for _ in lower:
            lower_ids.append(child._allocate(f"{name}\x1fbin\x1f{serial}", used))
            serial += 1
        upper_ids = []
        for _ in upper:
            upper_ids.append(child._allocate(f"{name}\x1fbin\x1f{serial}", used))
            serial += 1
        bins.boundaries = np.concatenate([lower, bins.boundaries, upper])
        bins.bin_ids = np.concatenate(
            [np.asarray(lower_ids, dtype=np.int64), bins.bin_ids, np.asarray(upper_ids, dtype=np.int64)]
        )
        bins.next_serial = serial
    return child


def discretizer_to_dict(discretizer: Discretizer) -> dict:
    """JSON-ready dict of a discretizer (format version included)."""
    return {
        "format_version": FORMAT_VERSION,
        "version": discretizer.version,
        "parent_version": discretizer.parent_version,
        "hash_space_size": discretizer.hash_space_size,
        "categorical": list(discretizer.categorical),
        "features": {
            name: {
                "boundaries": bins.boundaries.tolist(),
                "bin_ids": bins.bin_ids.tolist(),
                "missing_id": bins.missing_id,
                "next_serial": bins.next_serial,
            }
            for name, bins in sorted(discretizer.features.items())
        },
    }


def discretizer_from_dict(data: Mapping) -> Discretizer:
    """Inverse of ``discretizer_to_dict``; rejects unknown format versions."""
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"discretizer format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return Discretizer(
        hash_space_size=int(data["hash_space_size"]),
        categorical=tuple(data["categorical"]),
        version=data.get("version", ""),
        parent_version=data.get("parent_version"),
        features={
            name: FeatureBins(
                boundaries=np.asarray(f["boundaries"], dtype=np.float64),
                bin_ids=np.asarray(f["bin_ids"], dtype=np.int64),
                missing_id=int(f["missing_id"]),
                next_serial=int(f["next_serial"]),
            )
            for name, f in data["features"].items()
        },
    )


def save_discretizer(discretizer: Discretizer, directory: str) -> str:
    """Write ``discretizer.json`` into ``directory``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, DISCRETIZER_FILE)
    with open(path, "w") as f:
        json.dump(discretizer_to_dict(discretizer), f)
    return path


def load_discretizer(directory: str) -> Discretizer:
    """Read ``discretizer.json`` from ``directory``."""
    with open(os.path.join(directory, DISCRETIZER_FILE)) as f:
        return discretizer_from_dict(json.load(f))
