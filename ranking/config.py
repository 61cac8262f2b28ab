"""Configuration of the split-network ranker: feature groups, discretizer, sizes, training.

Serving knobs live with the serving app (`serving/app.py`), not here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

GROUP_NAMES: tuple[str, ...] = ("user", "user_author", "post")
"""The feature groups, in the order their splits are concatenated before the head."""


class FeatureGroupConfig(BaseModel):
    """One feature group and the split network that turns it into a group embedding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    continuous_features: tuple[str, ...] = Field(
        (), description="Numeric columns discretized into quantile bins, one hashed id each."
    )
    categorical_features: tuple[str, ...] = Field(
        (), description="String/bool columns hashed from (name, value), one id each."
    )
    dense_features: tuple[str, ...] = Field(
        (), description="Numeric columns fed raw (signed log1p) beside the embedding bag."
    )
    dense_vector_dim: int = Field(
        0, ge=0, description="Width of an extra dense vector input (the post's content embedding); 0 = none."
    )
    embedding_bag_dim: PositiveInt = Field(16, description="Width of the summed embedding of hashed ids.")
    mlp_sizes: tuple[PositiveInt, ...] = Field((64,), description="Hidden layer sizes of the split MLP.")
    group_embedding_dim: PositiveInt = Field(16, description="Width of the split's output vector.")
    empty_row_values: dict[str, float | str] = Field(
        default_factory=dict,
        description="Feature values of an entity with no history (e.g. counts 0 for an unseen "
        "user-author pair); features not listed are treated as missing. Used for serving defaults.",
    )

    @property
    def sparse_features(self) -> tuple[str, ...]:
        """Continuous then categorical feature names: the columns of the group's id array."""
        return self.continuous_features + self.categorical_features

    @property
    def dense_width(self) -> int:
        """Number of dense input columns (scalars plus the dense vector)."""
        return len(self.dense_features) + self.dense_vector_dim


POST_FEATURE_COLUMNS = (
    "post_has_media",
    "post_text_length",
    "post_age_hours",
    "post_impressions_so_far",
    "post_engagements_so_far",
    "post_likes_so_far",
    "post_replies_so_far",
    "post_reposts_so_far",
    "author_follower_count",
)


def _default_groups() -> dict[str, FeatureGroupConfig]:
    windows = (1, 7, 28)
    user = FeatureGroupConfig(
        continuous_features=(
            "user_account_age_days",
            "user_follower_count",
            "user_followee_count",
            *(f"user_impressions_{w}d" for w in windows),
            *(f"user_engagements_{w}d" for w in windows),
        ),
        categorical_features=("user_country", "user_language", "user_is_verified"),
        empty_row_values={
            **{f"user_impressions_{w}d": 0.0 for w in windows},
            **{f"user_engagements_{w}d": 0.0 for w in windows},
            "user_follower_count": 0.0,
            "user_followee_count": 0.0,
        },
    )
    user_author = FeatureGroupConfig(
        continuous_features=(
            "ua_follows",
            "ua_follow_age_days",
            *(f"ua_impressions_{w}d" for w in windows),
            *(f"ua_engagements_{w}d" for w in windows),
            "ua_days_since_last_engagement",
        ),
        empty_row_values={
            "ua_follows": 0.0,
            **{f"ua_impressions_{w}d": 0.0 for w in windows},
            **{f"ua_engagements_{w}d": 0.0 for w in windows},
        },
    )
    post = FeatureGroupConfig(
        continuous_features=POST_FEATURE_COLUMNS,
        dense_vector_dim=0,
    )
    return {"user": user, "user_author": user_author, "post": post}


class DiscretizerConfig(BaseModel):
    """Quantile binning and id hashing of continuous features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_bins: PositiveInt = Field(16, description="Quantile bins per continuous feature (before dedup).")
    hash_space_size: PositiveInt = Field(2**15, description="Number of feature ids (embedding rows).")
    sample_size: PositiveInt = Field(200_000, description="Rows sampled to fit the bin boundaries.")


class TrainingConfig(BaseModel):
    """Optimisation of the ranker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: PositiveInt = 5
    batch_size: PositiveInt = 512
    learning_rate: PositiveFloat = 2e-3
    weight_decay: float = Field(0.0, ge=0.0)
    early_stopping_patience_epochs: PositiveInt = Field(
        2, description="Stop after this many epochs without a better validation log loss."
    )
    seed: int = 0
    num_threads: PositiveInt = Field(
        1, description="torch intra-op threads; more than 1 on a shared, oversubscribed CPU is far slower."
    )


class RankingFeaturesConfig(BaseModel):
    """Training rows built by `nearline features`: the time-based split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Latest-but-one share of impressions."
    )
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Latest share of impressions.")
    use_content_embeddings: bool = Field(
        True, description="Join the current content embedding version (when the store has one)."
    )
    negatives_per_positive: int = Field(
        0,
        ge=0,
        description="Only for logs without impression events (positives-only, e.g. Twitter15/16): derive "
        "impressions from each engaged (user, post) plus this many sampled negatives per positive. "
        "0 = such logs are rejected.",
    )
    negative_neighbourhood_rows: int = Field(
        1000, ge=1, description="Negatives are posts engaged by others within this many log rows in time."
    )


class RankerConfig(BaseModel):
    """The ranker: feature groups, discretizer, architecture, tasks and training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: dict[str, FeatureGroupConfig] = Field(default_factory=_default_groups)
    discretizer: DiscretizerConfig = DiscretizerConfig()
    head_sizes: tuple[PositiveInt, ...] = Field((64, 32), description="PReLU head layer sizes.")
    fully_connected_sizes: tuple[PositiveInt, ...] = Field(
        (256, 128, 64), description="PReLU layer sizes of the fully-connected baseline."
    )
    tasks: tuple[str, ...] = ("engage", "like", "reply", "repost")
    architecture: Literal["split", "fully_connected"] = "split"
    training: TrainingConfig = TrainingConfig()
    features: RankingFeaturesConfig = RankingFeaturesConfig()
    calibration: bool = Field(True, description="Fit isotonic calibration on validation after training.")
    warm_start_from: str = Field(
        "latest", description="'latest' (current published ranker), a version id, or 'none' (cold start)."
    )
    sample_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Fraction of training rows used.")

    @model_validator(mode="after")
    def _check(self) -> RankerConfig:
        if set(self.groups) != set(GROUP_NAMES):
            raise ValueError(f"ranker groups must be exactly {list(GROUP_NAMES)}, got {sorted(self.groups)}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"ranker tasks must be non-empty and unique, got {list(self.tasks)}")
        seen: dict[str, str] = {}
        for group_name, group in self.groups.items():
            names = group.sparse_features + group.dense_features
            if not names and group.dense_vector_dim == 0:
                raise ValueError(f"feature group {group_name!r} has no inputs")
            for name in names:
                if name in seen:
                    raise ValueError(f"feature {name!r} is in groups {seen[name]!r} and {group_name!r}")
                seen[name] = group_name
            unknown = set(group.empty_row_values) - set(names)
            if unknown:
                raise ValueError(
                    f"empty_row_values of {group_name!r} name unknown features {sorted(unknown)}"
                )
        return self

    @property
    def continuous_features(self) -> tuple[str, ...]:
        """All continuous features across groups, in group order."""
        return tuple(f for g in GROUP_NAMES for f in self.groups[g].continuous_features)

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """All categorical features across groups, in group order."""
        return tuple(f for g in GROUP_NAMES for f in self.groups[g].categorical_features)
