import json
from pathlib import Path

import pytest

from storage.store import Store, StoreError, check_version_name


def _write_version(store: Store, payload: str, **manifest) -> str:
    with store.stage("indexes", "content", manifest=manifest) as staged:
        Path(staged.path, "index.bin").write_text(payload)
    return staged.version


def test_stage_then_publish_and_rollback(tmp_path):
    store = Store(str(tmp_path))
    first = _write_version(store, "one", rows=1)
    second = _write_version(store, "two", rows=2)
    assert store.versions("indexes", "content") == [first, second]
    assert store.current("indexes", "content") is None
    store.publish("indexes", "content", first)
    store.publish("indexes", "content", second)
    assert store.current("indexes", "content") == second
    manifest = store.manifest("indexes", "content", second)
    assert manifest["rows"] == 2 and "index.bin" in manifest["checksums"]
    assert store.rollback("indexes", "content") == first
    assert store.current("indexes", "content") == first


def test_crash_mid_write_leaves_previous_version_serving(tmp_path):
    store = Store(str(tmp_path))
    good = _write_version(store, "good")
    store.publish("indexes", "content", good)
    with pytest.raises(RuntimeError, match="boom"):
        with store.stage("indexes", "content") as staged:
            Path(staged.path, "index.bin").write_text("half")
            raise RuntimeError("boom")
    assert store.versions("indexes", "content") == [good]
    assert store.current("indexes", "content") == good
    assert not any((tmp_path / "indexes" / "content" / "_staging").iterdir())


def test_version_without_manifest_is_invisible(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "indexes" / "content" / "20990101T000000000Z-abcdef").mkdir(parents=True)
    assert store.versions("indexes", "content") == []
    with pytest.raises(StoreError, match="no complete version"):
        store.publish("indexes", "content", "20990101T000000000Z-abcdef")


def test_retain_keeps_current_and_rollback_target(tmp_path):
    store = Store(str(tmp_path))
    versions = [_write_version(store, str(i)) for i in range(5)]
    store.publish("indexes", "content", versions[0])
    store.publish("indexes", "content", versions[1])
    removed = store.retain("indexes", "content", keep=2)
    assert set(removed) == {versions[2]}
    assert store.versions("indexes", "content") == [versions[0], versions[1], versions[3], versions[4]]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "..", "x" * 200, "a\\b"])
def test_bad_version_names_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid version name"):
        check_version_name(bad)


def test_unwritable_root_names_the_path(tmp_path):
    # A regular file where a directory should be: unwritable even for root, which ignores modes.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    store = Store(str(blocker / "store"))
    with pytest.raises(StoreError, match="not writable"):
        store.ensure_writable()


def test_run_records_are_listed(tmp_path):
    store = Store(str(tmp_path))
    store.record_run({"run_id": "r1", "outcome": "success"})
    store.record_run({"run_id": "r2", "outcome": "failed"})
    assert [r["outcome"] for r in store.runs()] == ["success", "failed"]
    assert json.loads((tmp_path / "runs" / "r1.json").read_text())["run_id"] == "r1"
