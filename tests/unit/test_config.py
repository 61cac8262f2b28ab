from pathlib import Path

import pytest
from pydantic import ValidationError

from nearline.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    config = load_config(str(REPO_ROOT / "conf" / "local.yaml"))
    assert config.spark.master == "local[*]"
    cluster = load_config(str(REPO_ROOT / "conf" / "cluster.example.yaml"))
    assert cluster.spark.master != "local[*]"


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("generate:\n  num_user: 5000\n")
    with pytest.raises(ConfigError, match="unknown key 'generate.num_user'"):
        load_config(str(path))


def test_override_is_parsed_and_validated():
    config = load_config(None, ["generate.num_users=5000", "spark.extra_conf={spark.foo: bar}"])
    assert config.generate.num_users == 5000
    assert config.spark.extra_conf == {"spark.foo": "bar"}
    with pytest.raises(ConfigError, match="generate.num_users"):
        load_config(None, ["generate.num_users=10"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["generate.num_users"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(path))


def test_config_is_frozen():
    config = load_config(None)
    with pytest.raises(ValidationError, match="frozen"):
        config.generate.seed = 3  # type: ignore[misc]


def test_overriding_one_index_key_keeps_that_index_defaults_and_the_other_index():
    defaults = load_config(None)
    config = load_config(None, ["indexes.content.search.nprobe=7"])
    assert config.indexes["content"].search.nprobe == 7
    assert config.indexes["content"].metric == defaults.indexes["content"].metric
    assert config.indexes["user"] == defaults.indexes["user"]
    with pytest.raises(ConfigError, match="unknown index name"):
        load_config(None, ["indexes.posts.metric=ip"])


def test_override_value_that_is_not_yaml_is_taken_as_text():
    assert load_config(None, ["refresh.schedule=*/4 * * * *"]).refresh.schedule == "*/4 * * * *"
