"""The nearline configuration: one strict, typed tree loaded from conf/*.yaml.

Each package owns its section's model (embeddings.config, retrieval.config,
ranking.config); this module composes them and adds the job-level sections.
Unknown keys fail at load time with the key's full path, and `--set a.b=value`
overrides are applied to the YAML before validation so they are checked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from embeddings.config import ContentModelConfig, TopicModelConfig
from ranking.config import RankerConfig
from retrieval.config import IndexConfig, default_index_configs
from serving.config import ServeConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Strict):
    root: str = Field("store", description="Store root: a local or mounted directory.")
    keep_versions: PositiveInt = Field(5, description="Versions kept per artifact; older ones are deleted.")


class SparkConfig(_Strict):
    app_name: str = "nearline"
    master: str = Field(
        "local[*]", description="local[*], spark://host:7077, yarn, k8s://..., or sc://host:port."
    )
    driver_memory: str = "2g"
    executor_memory: str | None = Field(None, description="Cluster only, e.g. 8g.")
    executor_cores: PositiveInt | None = None
    num_executors: PositiveInt | None = None
    rows_per_shuffle_partition: PositiveInt = Field(
        2_000_000, description="Shuffle partitions are sized to the data: ceil(rows / this), min 2."
    )
    max_shuffle_partitions: PositiveInt = 2000
    python: str | None = Field(
        None, description="Interpreter executors run (spark.pyspark.python); None: the cluster's default."
    )
    ui_enabled: bool = Field(False, description="Spark UI; off locally so ports are not taken.")
    master_connect_timeout_s: PositiveFloat = Field(
        10.0, description="spark:// and sc:// masters must accept a TCP connection within this, or the job stops."
    )
    extra_conf: dict[str, str] = Field(default_factory=dict, description="Any further spark.* settings.")


class DataConfig(_Strict):
    path: str = Field("data/synthetic", description="Directory holding the contract tables (Parquet).")
    format: Literal["parquet"] = "parquet"


class GenerateConfig(_Strict):
    seed: int = 7
    num_users: int = Field(2_000, ge=1_000, le=10_000_000)
    num_topics: PositiveInt = 16
    posts_per_author_mean: float = Field(3.0, gt=0)
    author_fraction: float = Field(0.3, gt=0, le=1, description="Share of users who post.")
    follows_per_user_mean: float = Field(20.0, gt=0)
    impressions_per_user_per_day: float = Field(12.0, gt=0)
    num_days: PositiveInt = 7
    start_date: str = "2026-11-01"
    through_day: PositiveInt | None = Field(
        None,
        description="Write only what happened before the end of this day (1-based): a snapshot of the "
        "same world, so day d+1's snapshot is day d's plus one more day. None: all num_days.",
    )
    users_per_block: PositiveInt = Field(
        2_000, description="Users generated per Spark task; fixed so output does not depend on parallelism."
    )


class UserInterestConfig(_Strict):
    window_days: float = Field(30.0, gt=0, description="Engagements older than this are ignored.")
    half_life_days: float = Field(7.0, gt=0, description="An engagement's weight halves every half-life.")
    max_recent_posts: PositiveInt = Field(
        100, description="Recent engaged post ids kept per user (seen filter)."
    )


class RefreshConfig(_Strict):
    schedule: str = Field("0 3 * * *", description="Cron expression for `nearline schedule`.")
    missed_run_policy: Literal["skip", "run_once"] = "run_once"
    max_retries: int = Field(2, ge=0)
    retry_backoff_s: float = Field(30.0, ge=0)
    lock_path: str = Field("store/refresh.lock", description="Held for the duration of a refresh.")
    ranker_sample_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of the new period's rows a warm-started retrain uses."
    )


class NearlineConfig(_Strict):
    store: StoreConfig = StoreConfig()
    spark: SparkConfig = SparkConfig()
    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    content: ContentModelConfig = ContentModelConfig()
    user_interest: UserInterestConfig = UserInterestConfig()
    topics: TopicModelConfig = TopicModelConfig()
    ranker: RankerConfig = RankerConfig()
    indexes: dict[str, IndexConfig] = Field(default_factory=default_index_configs)
    serve: ServeConfig = ServeConfig()
    refresh: RefreshConfig = RefreshConfig()

    @field_validator("indexes", mode="before")
    @classmethod
    def _indexes_over_their_defaults(cls, indexes: Any) -> Any:
        # Each index has its own defaults (content and user differ in metric); a file or an override
        # that sets one key of one index must change that key only, not reset the rest to IndexConfig's.
        if not isinstance(indexes, dict):
            return indexes
        merged = {name: config.model_dump() for name, config in default_index_configs().items()}
        for name, values in indexes.items():
            merged[name] = _deep_merge(merged.get(name, {}), values) if isinstance(values, dict) else values
        return merged

    @field_validator("indexes")
    @classmethod
    def _known_indexes(cls, indexes: dict[str, IndexConfig]) -> dict[str, IndexConfig]:
        unknown = set(indexes) - {"content", "user"}
        if unknown:
            raise ValueError(f"unknown index name(s) {sorted(unknown)}: expected 'content' and/or 'user'")
        return indexes


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says where."""


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, lists, ...)."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. generate.num_users=5000")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is a value, not a section")
        node = child
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        # Not YAML on its own (a cron line "*/5 * * * *" starts like an alias): take the text as is.
        value = raw_value
    node[parts[-1]] = value


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key {location!r}")
        else:
            problems.append(f"{location}: {item['msg']} (got {item.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(problems)


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> NearlineConfig:
    """Load a YAML config (or the built-in defaults when path is None) and apply overrides."""
    tree: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        source = path
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path}: expected a mapping at the top, got {type(loaded).__name__}"
            )
        tree = loaded or {}
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return NearlineConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def config_to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
