"""Versioned artifact store: models, embeddings, indexes, run records.

Layout (design.md):
    <root>/<kind>/<name>/<version>/        files + manifest.json (written last);
                                           Parquet payloads in its data/ subdirectory
    <root>/<kind>/<name>/CURRENT           the serving version, switched atomically
    <root>/<kind>/<name>/HISTORY           published versions, oldest first (rollback)
    <root>/<kind>/<name>/_staging/<version>/  work in progress, never read by consumers
    <root>/runs/<run_id>.json              one record per job/refresh run

A version is complete if and only if its manifest.json exists: the manifest is
the last file written, so a crash at any point before leaves either a staging
directory (ignored, swept later) or nothing. The root may be a local directory or
any URI pyarrow's filesystem layer can write; local paths use os.replace, which
is atomic on POSIX, for both the version rename and the CURRENT switch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("models", "embeddings", "indexes", "features", "training")
MANIFEST = "manifest.json"
TABLE_DIR = "data"
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(RuntimeError):
    """A store operation could not be carried out; the store is unchanged."""


def check_version_name(version: str) -> str:
    """Reject names that could escape the store (path separators, '..', empty)."""
    if not isinstance(version, str) or not _VERSION_NAME.match(version) or version in {".", ".."}:
        raise ValueError(
            f"invalid version name {version!r}: expected letters, digits, '.', '_' or '-' "
            "(no path separators, at most 128 characters)"
        )
    return version


def _check_name(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}: expected one of {', '.join(KINDS)}")
    check_version_name(name)


def new_version(now: dt.datetime | None = None) -> str:
    """A version id that sorts by creation time: 20261122T180102Z-3fa9c1."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def code_version() -> str:
    """The git commit of the running code, with '+dirty' when the tree has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def config_hash(config: Any) -> str:
    """Stable short hash of a JSON-able config (pydantic models are dumped first)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    payload = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def file_checksums(directory: str) -> dict[str, str]:
    """sha256 of every file under directory (relative posix paths), manifest excluded."""
    checksums = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            checksums[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return checksums


def verify_checksums(directory: str, manifest: dict[str, Any]) -> None:
    """Raise StoreError naming the first file that is missing or differs from the manifest."""
    expected = manifest.get("checksums", {})
    actual = file_checksums(directory)
    for relpath, digest in expected.items():
        if relpath not in actual:
            raise StoreError(f"{directory}: file {relpath!r} listed in the manifest is missing")
        if actual[relpath] != digest:
            raise StoreError(f"{directory}: file {relpath!r} is corrupt (checksum mismatch)")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class StagedArtifact:
    """A version being written. Consumers never see it until the stage block exits cleanly."""

    kind: str
    name: str
    version: str
    path: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def data_path(self) -> str:
        """Where to write a Parquet payload (see Store.data_path)."""
        return str(Path(self.path) / TABLE_DIR)


class Store:
    """A store root holding versioned artifacts (see module docstring for the layout)."""

    def __init__(self, root: str) -> None:
        if "://" in root and not root.startswith("file://"):
            raise ValueError(
                f"store root {root!r}: only local or mounted paths are supported by the store "
                "itself; mount object storage (s3fs, gcsfuse) or write Spark outputs directly"
            )
        self.root = Path(root.removeprefix("file://")).absolute()

    # -- paths -----------------------------------------------------------------------------------
    def _artifact_dir(self, kind: str, name: str) -> Path:
        _check_name(kind, name)
        return self.root / kind / name

    def path(self, kind: str, name: str, version: str) -> str:
        return str(self._artifact_dir(kind, name) / check_version_name(version))

    def data_path(self, kind: str, name: str, version: str) -> str:
        """Where a version's Parquet payload lives: a subdirectory, so table readers never meet manifest.json."""
        return str(Path(self.path(kind, name, version)) / TABLE_DIR)

    def ensure_writable(self) -> None:
        """Fail early, with the path, when the store root cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{secrets.token_hex(4)}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"store root {self.root} is not writable: {exc.strerror or exc}") from exc

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(
        self, kind: str, name: str, manifest: dict[str, Any] | None = None, version: str | None = None
    ) -> Iterator[StagedArtifact]:
        """Write a new version; it appears only if the block exits without an exception."""
        artifact_dir = self._artifact_dir(kind, name)
        version = check_version_name(version or new_version())
        final = artifact_dir / version
        if final.exists():
            raise StoreError(f"{kind}/{name} version {version} already exists")
        staging = artifact_dir / "_staging" / version
        try:
            staging.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise StoreError(f"cannot create {staging}: {exc.strerror or exc}") from exc
        staged = StagedArtifact(kind, name, version, str(staging), dict(manifest or {}))
        started = dt.datetime.now(dt.timezone.utc)
        try:
            yield staged
            finished = dt.datetime.now(dt.timezone.utc)
            record = {
                "kind": kind,
                "name": name,
                "version": version,
                "created_at": finished.isoformat(),
                "code_version": code_version(),
                "timings_s": {"write": round((finished - started).total_seconds(), 3)},
                **staged.manifest,
                "checksums": file_checksums(str(staging)),
            }
            _atomic_write_text(staging / MANIFEST, json.dumps(record, indent=2, sort_keys=True, default=str))
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def publish(self, kind: str, name: str, version: str) -> None:
        """Atomically make version the serving one; the previous one is remembered for rollback."""
        if version not in self.versions(kind, name):
            raise StoreError(f"cannot publish {kind}/{name} version {version!r}: no complete version by that name")
        artifact_dir = self._artifact_dir(kind, name)
        history = self.history(kind, name)
        if not history or history[-1] != version:
            history.append(version)
        _atomic_write_text(artifact_dir / "HISTORY", "\n".join(history) + "\n")
        _atomic_write_text(artifact_dir / "CURRENT", version + "\n")

    def rollback(self, kind: str, name: str) -> str:
        """Switch CURRENT back to the version published before it, and return that version."""
        history = self.history(kind, name)
        current = self.current(kind, name)
        available = set(self.versions(kind, name))
        while history and history[-1] == current:
            history.pop()
        candidates = [v for v in history if v in available]
        if not candidates:
            raise StoreError(f"cannot roll back {kind}/{name}: no earlier published version is available")
        previous = candidates[-1]
        artifact_dir = self._artifact_dir(kind, name)
        _atomic_write_text(artifact_dir / "HISTORY", "\n".join(history) + "\n")
        _atomic_write_text(artifact_dir / "CURRENT", previous + "\n")
        return previous

    def retain(self, kind: str, name: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions; CURRENT and the rollback target always stay."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        versions = self.versions(kind, name)
        protected = {self.current(kind, name)} | set(self.history(kind, name)[-2:])
        removed = [v for v in versions[:-keep] if v not in protected]
        for version in removed:
            # Remove the manifest first so a crash mid-delete leaves an incomplete (ignored) version.
            directory = Path(self.path(kind, name, version))
            (directory / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(self._artifact_dir(kind, name) / "_staging", ignore_errors=True)
        return removed

    def record_run(self, record: dict[str, Any]) -> str:
        runs = self.root / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        run_id = check_version_name(str(record.setdefault("run_id", new_version())))
        path = runs / f"{run_id}.json"
        _atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str))
        return str(path)

    # -- reading ---------------------------------------------------------------------------------
    def versions(self, kind: str, name: str) -> list[str]:
        artifact_dir = self._artifact_dir(kind, name)
        if not artifact_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in artifact_dir.iterdir()
            if entry.is_dir() and not entry.name.startswith("_") and (entry / MANIFEST).is_file()
        )

    def latest(self, kind: str, name: str) -> str | None:
        versions = self.versions(kind, name)
        return versions[-1] if versions else None

    def current(self, kind: str, name: str) -> str | None:
        pointer = self._artifact_dir(kind, name) / "CURRENT"
        try:
            version = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def history(self, kind: str, name: str) -> list[str]:
        try:
            text = (self._artifact_dir(kind, name) / "HISTORY").read_text()
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def resolve(self, kind: str, name: str, version: str | None = "current") -> str:
        """Turn 'current', 'latest' or an explicit version into a version that exists."""
        if version in (None, "current"):
            resolved = self.current(kind, name) or self.latest(kind, name)
        elif version == "latest":
            resolved = self.latest(kind, name)
        else:
            resolved = check_version_name(version)
            if resolved not in self.versions(kind, name):
                raise StoreError(f"{kind}/{name} has no complete version {resolved!r}")
        if resolved is None:
            raise StoreError(f"{kind}/{name} has no versions yet in store {self.root}")
        return resolved

    def manifest(self, kind: str, name: str, version: str) -> dict[str, Any]:
        path = Path(self.path(kind, name, version)) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise StoreError(f"{kind}/{name} version {version!r} has no manifest at {path}") from exc

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        runs = self.root / "runs"
        if not runs.is_dir():
            return []
        records = []
        for path in sorted(runs.glob("*.json"))[-limit:]:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(path.read_text()))
        return records
