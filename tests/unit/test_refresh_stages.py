"""The refresh's stage table: what each stage is built from, and the one place its key is computed."""

from __future__ import annotations

import pytest

from jobs.refresh import INPUT, PUBLISH_ORDER, STAGES, StageContext, _setting
from nearline.config import load_config
from storage.store import Store


@pytest.fixture
def context(tmp_path) -> StageContext:
    config = load_config(None, [])
    versions = {stage.name: f"v-{stage.name}" for stage in STAGES}
    return StageContext(config, Store(str(tmp_path)), spark=None, fingerprint="f1", versions=versions)


def _keys(context: StageContext) -> dict[str, str]:
    return {stage.name: stage.key(context) for stage in STAGES}


def test_each_stage_reads_the_input_or_earlier_stages_and_makes_its_own_artifact() -> None:
    seen: set[str] = set()
    for stage in STAGES:
        assert set(stage.inputs) <= seen | {INPUT}, stage.name
        seen.add(stage.name)
    artifacts = [stage.artifact for stage in STAGES]
    assert len(set(artifacts)) == len(artifacts)
    assert set(artifacts) <= set(PUBLISH_ORDER) | {("features", "ranking")}


def test_every_declared_setting_exists_in_the_config(context: StageContext) -> None:
    for stage in STAGES:
        for path in stage.settings:
            _setting(context.config, path)  # raises AttributeError / KeyError on a stale path


def test_a_key_moves_with_its_inputs_and_settings_only(context: StageContext) -> None:
    before = _keys(context)
    context.config = context.config.model_copy(update={"ranker": context.config.ranker.model_copy(
        update={"sample_fraction": 0.5})})
    after_setting = _keys(context)
    assert {name for name in before if before[name] != after_setting[name]} == {"ranker"}

    context.versions["ranker"] = "v-other"
    after_upstream = _keys(context)
    assert {name for name in before if after_setting[name] != after_upstream[name]} == {
        "user_embeddings", "user_author_embeddings"}

    context.fingerprint = "f2"
    after_input = _keys(context)
    changed = {name for name in before if after_upstream[name] != after_input[name]}
    assert changed == {stage.name for stage in STAGES if INPUT in stage.inputs}
    assert "ranker" not in changed and "index_content" not in changed
