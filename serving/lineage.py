"""Which published versions belong together: checksum-verified artifacts, manifest lineage, pointers, rollback."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.errors import BundleLoadError
from storage.store import Store, StoreError, verify_checksums


@dataclass(frozen=True)
class Artifact:
    """One resolved, checksum-verified store artifact."""

    kind: str
    name: str
    version: str
    path: str
    manifest: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        out = {"version": self.version}
        for key in ("embedding_version", "model_version", "created_at", "code_version"):
            if key in self.manifest:
                out[key] = self.manifest[key]
        return out


def open_artifact(store: Store, kind: str, name: str, version: str | None) -> Artifact:
    """Resolve a version, read its manifest and verify its files; BundleLoadError when any step fails."""
    if version is None:
        raise BundleLoadError(f"{kind}/{name}: nothing is published (no CURRENT pointer)")
    try:
        path = store.path(kind, name, version)
        manifest = store.manifest(kind, name, version)
        verify_checksums(path, manifest)
    except (StoreError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise BundleLoadError(f"{kind}/{name} version {version}: {exc}") from None
    return Artifact(kind, name, version, path, manifest)


def require_same(what: str, expected: str | None, got: str | None, strict: bool) -> None:
    if expected is None or got is None:
        if strict:
            raise BundleLoadError(f"{what}: lineage unknown (model_version missing from a manifest)")
        return
    if expected != got:
        raise BundleLoadError(f"{what}: incoherent versions ({got!r} != {expected!r})")


def indexed_embeddings(store: Store, index: Artifact, strict: bool) -> Artifact:
    """The embeddings artifact an index was built from (its manifest's embedding_version)."""
    version = index.manifest.get("embedding_version")
    if version is None:
        if strict:
            raise BundleLoadError(
                f"indexes/{index.name} version {index.version}: manifest has no embedding_version, "
                "so its query vectors cannot be matched to it"
            )
        version = store.current("embeddings", index.name)
    embeddings = open_artifact(store, "embeddings", index.name, version)
    require_same(
        f"indexes/{index.name} {index.version} vs embeddings/{index.name} {embeddings.version}",
        index.manifest.get("model_version"),
        embeddings.manifest.get("model_version"),
        strict=False,
    )
    return embeddings


INDEX_POINTERS = (
    ("indexes", "content"),
    ("indexes", "user"),
    ("embeddings", "user_interest"),
    ("features", "post"),
    ("features", "user_lists"),
)
SNAPSHOT_FEATURES = ("post", "user_lists")
RANKER_POINTERS = (
    ("models", "ranker"),
    ("embeddings", "user"),
    ("embeddings", "user_author"),
    ("features", "post"),
)


def read_pointers(store: Store, which: Sequence[tuple[str, str]]) -> dict[str, str | None]:
    """The CURRENT versions of the given artifacts ('kind/name' -> version); cheap enough to poll."""
    return {f"{kind}/{name}": store.current(kind, name) for kind, name in which}


def rollback_serving_set(store: Store, sides: Sequence[str] = ("content", "user")) -> dict[str, str]:
    """Return the serving set to the previously published versions, keeping it coherent.

    The indexes are rolled back (their HISTORY), then the artifacts queried with them are pointed at
    matching versions: user_interest of the content index's content model; the ranker, user and
    user_author vectors of the user index's ranker; the post-feature and user-list snapshots taken at
    the instant those user vectors were exported. Serving deployments pick the change up on their
    next poll, load it beside the current bundle, and swap.

    Args:
        store: the store.
        sides: "content" and/or "user".

    Returns:
        'kind/name' -> version now CURRENT, for every pointer changed.

    Raises:
        StoreError: no earlier version, or no version of a dependent artifact matches.
    """
    unknown = set(sides) - {"content", "user"}
    if unknown or not sides:
        raise ValueError(f"rollback sides must be 'content' and/or 'user', got {list(sides)}")
    changed: dict[str, str] = {}

    def publish_matching(kind: str, name: str, model_version: str, key: str = "model_version") -> None:
        matches = [
            v for v in store.versions(kind, name) if store.manifest(kind, name, v).get(key) == model_version
        ]
        if not matches:
            raise StoreError(f"rollback: no {kind}/{name} version was made by {model_version!r}")
        if store.current(kind, name) != matches[-1]:
            store.publish(kind, name, matches[-1])
            changed[f"{kind}/{name}"] = matches[-1]

    def embedding_model(name: str, index_version: str) -> str:
        manifest = store.manifest("indexes", name, index_version)
        embedding_version = manifest.get("embedding_version")
        if embedding_version is None:
            raise StoreError(f"rollback: indexes/{name} {index_version} has no embedding_version")
        model = store.manifest("embeddings", name, embedding_version).get("model_version")
        if model is None:
            raise StoreError(f"rollback: embeddings/{name} {embedding_version} has no model_version")
        return model

    if "content" in sides:
        changed["indexes/content"] = store.rollback("indexes", "content")
        publish_matching(
            "embeddings", "user_interest", embedding_model("content", changed["indexes/content"])
        )
    if "user" in sides:
        changed["indexes/user"] = store.rollback("indexes", "user")
        ranker_version = embedding_model("user", changed["indexes/user"])
        if ranker_version not in store.versions("models", "ranker"):
            raise StoreError(f"rollback: models/ranker {ranker_version} is no longer in the store")
        if store.current("models", "ranker") != ranker_version:
            store.publish("models", "ranker", ranker_version)
            changed["models/ranker"] = ranker_version
        publish_matching("embeddings", "user", ranker_version)
        publish_matching("embeddings", "user_author", ranker_version)
    # The post features and user lists are snapshots of the data the user vectors were exported from:
    # serve the ones taken at the same instant (snapshot_us == the user vectors' as_of_us).
    user_vectors = store.current("embeddings", "user")
    as_of_us = store.manifest("embeddings", "user", user_vectors).get("as_of_us") if user_vectors else None
    for name in SNAPSHOT_FEATURES:
        if as_of_us is not None and store.current("features", name) is not None:
            matches = [
                v for v in store.versions("features", name)
                if store.manifest("features", name, v).get("snapshot_us") == as_of_us
            ]
            if matches and store.current("features", name) != matches[-1]:
                store.publish("features", name, matches[-1])
                changed[f"features/{name}"] = matches[-1]
    return changed
