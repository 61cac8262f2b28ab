"""Build the ranker's training rows: one row per impression, labels and point-in-time features.

Reads:  config.data.path/{users,follows,posts,engagements} (the data contract, Parquet) and, when
        the store has one and ``ranker.features.use_content_embeddings``, the current
        embeddings/content version (post_id, vector).
Writes: store features/ranking/<version>/data/{train,validation,test}/ (Parquet) + manifest.json.

Labels: for an impression of post p by user u at time t, ``like``/``reply``/``repost`` is 1 when u
has that event on p at or after t, and ``engage`` is their union. A positives-only log (no
impression events, e.g. Twitter15/16) is rejected unless ``ranker.features.negatives_per_positive``
> 0, in which case impressions are derived with sampled negatives (``derive_impressions``).

No leakage: every feature of an impression at time t uses only events strictly before t (Spark
range windows ending at ``t - 1 µs`` over the time-ordered union of the query rows and the events).
The same functions compute features "as of now" for the export jobs, by querying at one timestamp.

Split: by impression time: the latest ``test_fraction`` of impressions is the test set, the
``validation_fraction`` before it is the validation set, the rest is training.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from inputs.contract import POSITIVE_EVENTS
from jobs.io import write_parquet_deterministic
from nearline.config import NearlineConfig
from storage.store import Store

WINDOWS_DAYS = (1, 7, 28)
MICROS_PER_DAY = 86_400_000_000
MICROS_PER_HOUR = 3_600_000_000
TASK_COLUMNS = ("engage", "like", "reply", "repost")
SPLITS = ("train", "validation", "test")
CONTENT_VECTOR_COLUMN = "post_content_vector"


def read_tables(spark: SparkSession, data_path: str) -> dict[str, DataFrame]:
    """The four contract tables, with event times as int64 microseconds (``ts_us``)."""
    tables = {
        name: spark.read.parquet(f"{data_path}/{name}")
        for name in ("users", "follows", "posts", "engagements")
    }
    tables["engagements"] = tables["engagements"].select(
        "user_id", "post_id", "event", F.unix_micros("ts").alias("ts_us")
    )
    return tables


def label_impressions(engagements: DataFrame) -> DataFrame:
    """One row per impression with its labels.

    Returns:
        (user_id, post_id, ts_us, engage, like, reply, repost) with int labels.
    """
    impressions = engagements.where(F.col("event") == "impression").select("user_id", "post_id", "ts_us")
    last_event = (
        engagements.where(F.col("event").isin(*POSITIVE_EVENTS))
        .groupBy("user_id", "post_id")
        .agg(
            *[F.max(F.when(F.col("event") == e, F.col("ts_us"))).alias(f"_{e}_ts") for e in POSITIVE_EVENTS]
        )
    )
    rows = impressions.join(last_event, on=["user_id", "post_id"], how="left")
    labels = [
        F.coalesce((F.col(f"_{e}_ts") >= F.col("ts_us")).cast("int"), F.lit(0)).alias(e)
        for e in POSITIVE_EVENTS
    ]
    rows = rows.select("user_id", "post_id", "ts_us", *labels)
    return rows.withColumn("engage", F.greatest(*[F.col(e) for e in POSITIVE_EVENTS])).select(
        "user_id", "post_id", "ts_us", *TASK_COLUMNS
    )


def derive_impressions(
    engagements: DataFrame,
    posts: DataFrame,
    negatives_per_positive: int,
    neighbourhood_rows: int,
    seed: int = 0,
) -> DataFrame:
    """Impression events for a positives-only log (no impressions recorded).

    Each engaged (user, post) is taken as seen 1 µs before its first engagement. For each such
    positive, ``negatives_per_positive`` posts engaged by someone else within ``neighbourhood_rows``
    rows of the time-ordered positives are taken as seen (and not engaged) by the user at the same
    time: posts that were circulating then, rather than arbitrary old posts, so that post age and
    popularity do not give the label away. Negatives created after that time are dropped.

    Returns:
        (user_id, post_id, event="impression", ts_us) rows, one per (user, post).
    """
    positives = (
        engagements.where(F.col("event").isin(*POSITIVE_EVENTS))
        .groupBy("user_id", "post_id")
        .agg((F.min("ts_us") - 1).alias("ts_us"))
    )
    # One global time order; fine for the millions of rows of public positives-only logs.
    indexed = positives.withColumn(
        "_row", F.row_number().over(Window.orderBy("ts_us", "user_id", "post_id")) - 1
    )
    indexed = indexed.cache()
    count = indexed.count()
    span = 2 * neighbourhood_rows + 1
    offset = F.pmod(F.xxhash64("user_id", "_row", "_i", F.lit(seed)), F.lit(span)) - neighbourhood_rows
    candidates = indexed.select(
        "user_id", "ts_us", "_row", F.explode(F.sequence(F.lit(1), F.lit(negatives_per_positive))).alias("_i")
    ).select(
        "user_id",
        "ts_us",
        F.least(F.greatest(F.col("_row") + offset, F.lit(0)), F.lit(count - 1)).alias("_src"),
    )
    negatives = (
        candidates.join(indexed.select(F.col("_row").alias("_src"), "post_id"), on="_src", how="inner")
        .join(
            posts.select("post_id", F.unix_micros("created_at").alias("_created_us")),
            on="post_id",
            how="inner",
        )
        .where(F.col("_created_us") < F.col("ts_us"))
        .select("user_id", "post_id", "ts_us")
    )
    shown = positives.unionByName(negatives).groupBy("user_id", "post_id").agg(F.min("ts_us").alias("ts_us"))
    return shown.select("user_id", "post_id", F.lit("impression").alias("event"), "ts_us")


def with_prior_aggregates(
    queries: DataFrame,
    events: DataFrame,
    keys: list[str],
    counts: Mapping[str, tuple[str, int | None]],
    last_seen: dict[str, str] | None = None,
) -> DataFrame:
    """Add, to each query row, aggregates of events with the same keys strictly before its ts_us.

    Args:
        queries: rows with ``keys`` and ``ts_us`` (other columns are carried through).
        events: rows with ``keys``, ``ts_us`` and 0/1 indicator columns.
        keys: partition keys, e.g. ["user_id"].
        counts: output name -> (indicator column, window length in µs or None for all history).
        last_seen: output name -> indicator column; the ts_us of its latest prior event (null if none).

    Returns:
        ``queries`` with one double column per ``counts`` entry and one long per ``last_seen`` entry.
    """
    last_seen = last_seen or {}
    indicators = sorted({c for c, _ in counts.values()} | set(last_seen.values()))
    tagged_queries = queries.withColumn("_is_query", F.lit(True))
    for column in indicators:
        tagged_queries = tagged_queries.withColumn(column, F.lit(0))
    tagged_events = events.select(*keys, "ts_us", *indicators).withColumn("_is_query", F.lit(False))
    both = tagged_queries.unionByName(tagged_events, allowMissingColumns=True)
    ordered = Window.partitionBy(*keys).orderBy("ts_us")
    # Frames end at -1 µs: an event at the query's own timestamp is not "before" it.
    for name, (column, window_us) in counts.items():
        frame = ordered.rangeBetween(Window.unboundedPreceding if window_us is None else -window_us, -1)
        both = both.withColumn(name, F.coalesce(F.sum(column).over(frame), F.lit(0)).cast("double"))
    for name, column in last_seen.items():
        frame = ordered.rangeBetween(Window.unboundedPreceding, -1)
        both = both.withColumn(name, F.max(F.when(F.col(column) == 1, F.col("ts_us"))).over(frame))
    return both.where(F.col("_is_query")).drop("_is_query", *indicators)


def _event_indicators(engagements: DataFrame) -> DataFrame:
    return engagements.select(
        "*",
        (F.col("event") == "impression").cast("int").alias("_imp"),
        F.col("event").isin(*POSITIVE_EVENTS).cast("int").alias("_eng"),
        *[(F.col("event") == e).cast("int").alias(f"_{e}") for e in POSITIVE_EVENTS],
    )


def _windowed(prefix: str, indicator: str) -> dict[str, tuple[str, int | None]]:
    return {f"{prefix}_{w}d": (indicator, w * MICROS_PER_DAY) for w in WINDOWS_DAYS}


def user_features(
    queries: DataFrame, users: DataFrame, follows: DataFrame, engagements: DataFrame
) -> DataFrame:
    """User group features of (user_id, ts_us) query rows, from events before ts_us."""
    follow_events = follows.select(
        F.col("followee_id").alias("user_id"),
        F.unix_micros("created_at").alias("ts_us"),
        F.lit(1).alias("_follower"),
        F.lit(0).alias("_followee"),
    ).unionByName(
        follows.select(
            F.col("follower_id").alias("user_id"),
            F.unix_micros("created_at").alias("ts_us"),
            F.lit(0).alias("_follower"),
            F.lit(1).alias("_followee"),
        )
    )
    activity = _event_indicators(engagements).select("user_id", "ts_us", "_imp", "_eng")
    activity = activity.withColumn("_follower", F.lit(0)).withColumn("_followee", F.lit(0))
    events = follow_events.unionByName(
        activity.select("user_id", "ts_us", "_follower", "_followee", "_imp", "_eng"),
        allowMissingColumns=True,
    ).fillna(0)
    counts = {
        "user_follower_count": ("_follower", None),
        "user_followee_count": ("_followee", None),
        **_windowed("user_impressions", "_imp"),
        **_windowed("user_engagements", "_eng"),
    }
    rows = with_prior_aggregates(queries, events, ["user_id"], counts)
    profile = users.select(
        "user_id",
        F.unix_micros("created_at").alias("_created_us"),
        F.col("country").cast("string").alias("user_country"),
        F.col("language").cast("string").alias("user_language"),
        F.col("is_verified").cast("string").alias("user_is_verified"),
    )
    rows = rows.join(profile, on="user_id", how="left")
    return rows.withColumn(
        "user_account_age_days", ((F.col("ts_us") - F.col("_created_us")) / MICROS_PER_DAY).cast("double")
    ).drop("_created_us")


def user_author_features(
    queries: DataFrame, follows: DataFrame, engagements: DataFrame, posts: DataFrame
) -> DataFrame:
    """User-author group features of (user_id, author_id, ts_us) query rows."""
    authored = (
        _event_indicators(engagements)
        .join(posts.select("post_id", "author_id"), on="post_id", how="inner")
        .select("user_id", "author_id", "ts_us", "_imp", "_eng")
    )
    counts = {**_windowed("ua_impressions", "_imp"), **_windowed("ua_engagements", "_eng")}
    rows = with_prior_aggregates(
        queries, authored, ["user_id", "author_id"], counts, {"_last_eng_us": "_eng"}
    )
    edges = (
        follows.select(
            F.col("follower_id").alias("user_id"),
            F.col("followee_id").alias("author_id"),
            F.unix_micros("created_at").alias("_follow_us"),
        )
        .groupBy("user_id", "author_id")
        .agg(F.min("_follow_us").alias("_follow_us"))
    )
    rows = rows.join(edges, on=["user_id", "author_id"], how="left")
    follows_before = F.col("_follow_us").isNotNull() & (F.col("_follow_us") < F.col("ts_us"))
    return rows.select(
        "*",
        follows_before.cast("double").alias("ua_follows"),
        F.when(follows_before, (F.col("ts_us") - F.col("_follow_us")) / MICROS_PER_DAY)
        .cast("double")
        .alias("ua_follow_age_days"),
        ((F.col("ts_us") - F.col("_last_eng_us")) / MICROS_PER_DAY)
        .cast("double")
        .alias("ua_days_since_last_engagement"),
    ).drop("_follow_us", "_last_eng_us")


def post_features(
    queries: DataFrame,
    posts: DataFrame,
    follows: DataFrame,
    engagements: DataFrame,
    content: DataFrame | None = None,
) -> DataFrame:
    """Post group features of (post_id, ts_us) query rows (plus the content vector when given)."""
    flagged = _event_indicators(engagements).select(
        "post_id", "ts_us", "_imp", "_eng", "_like", "_reply", "_repost"
    )
    counts = {
        "post_impressions_so_far": ("_imp", None),
        "post_engagements_so_far": ("_eng", None),
        "post_likes_so_far": ("_like", None),
        "post_replies_so_far": ("_reply", None),
        "post_reposts_so_far": ("_repost", None),
    }
    rows = with_prior_aggregates(queries, flagged, ["post_id"], counts)
    meta = posts.select(
        "post_id",
        "author_id",
        F.unix_micros("created_at").alias("_created_us"),
        F.col("has_media").cast("double").alias("post_has_media"),
        F.col("text_length").cast("double").alias("post_text_length"),
    )
    rows = (
        rows.join(meta, on="post_id", how="left")
        .withColumn(
            "post_age_hours", ((F.col("ts_us") - F.col("_created_us")) / MICROS_PER_HOUR).cast("double")
        )
        .drop("_created_us")
    )
    follower_events = follows.select(
        F.col("followee_id").alias("author_id"),
        F.unix_micros("created_at").alias("ts_us"),
        F.lit(1).alias("_f"),
    )
    rows = with_prior_aggregates(
        rows, follower_events, ["author_id"], {"author_follower_count": ("_f", None)}
    )
    if content is not None:
        rows = rows.join(
            content.select("post_id", F.col("vector").alias(CONTENT_VECTOR_COLUMN)), on="post_id", how="left"
        )
    return rows


def build_training_rows(tables: dict[str, DataFrame], content: DataFrame | None = None) -> DataFrame:
    """Impressions with labels and the three feature groups (see the module docstring)."""
    engagements = tables["engagements"]
    impressions = label_impressions(engagements).join(
        tables["posts"].select("post_id", "author_id"), on="post_id", how="inner"
    )
    rows = user_features(impressions, tables["users"], tables["follows"], engagements)
    rows = user_author_features(rows, tables["follows"], engagements, tables["posts"])
    post_queries = impressions.select("post_id", "ts_us").distinct()
    post_rows = post_features(post_queries, tables["posts"], tables["follows"], engagements, content).drop(
        "author_id"
    )
    return rows.join(post_rows, on=["post_id", "ts_us"], how="left")


def split_boundaries(
    impressions: DataFrame, validation_fraction: float, test_fraction: float
) -> tuple[int, int]:
    """Timestamps (µs) where validation and test begin."""
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"validation_fraction + test_fraction must be < 1, got {validation_fraction + test_fraction}"
        )
    cuts = impressions.approxQuantile(
        "ts_us", [1 - validation_fraction - test_fraction, 1 - test_fraction], 1e-4
    )
    if len(cuts) != 2:
        raise ValueError("no impressions in the engagements table: cannot build ranking rows")
    return int(cuts[0]), int(cuts[1])


def assign_split(rows: DataFrame, validation_start_us: int, test_start_us: int) -> DataFrame:
    """Add the ``split`` column (train / validation / test) by impression time."""
    return rows.withColumn(
        "split",
        F.when(F.col("ts_us") >= test_start_us, "test")
        .when(F.col("ts_us") >= validation_start_us, "validation")
        .otherwise("train"),
    )


def read_content_embeddings(
    spark: SparkSession, store: Store, version: str | None = None
) -> tuple[DataFrame | None, str | None]:
    """Content embeddings as (post_id, vector): the given version, else the current one, else (None, None)."""
    version = version or store.current("embeddings", "content") or store.latest("embeddings", "content")
    if version is None:
        return None, None
    frame = spark.read.parquet(store.data_path("embeddings", "content", version))
    missing = {"post_id", "vector"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"content embeddings {version} lack columns {sorted(missing)}; expected post_id, vector"
        )
    return frame, version


def run(spark: SparkSession, config: NearlineConfig, content_version: str | None = None) -> tuple[str, dict]:
    """Build and stage features/ranking/<version>; returns (version, manifest fields).

    content_version pins the content embeddings (a refresh passes the ones it just staged).
    """
    features_config = config.ranker.features
    tables = read_tables(spark, config.data.path)
    store = Store(config.store.root)
    content, content_version = (None, None)
    if features_config.use_content_embeddings:
        content, content_version = read_content_embeddings(spark, store, content_version)
    impressions = tables["engagements"].where(F.col("event") == "impression")
    derived_impressions = impressions.limit(1).count() == 0
    if derived_impressions:
        if features_config.negatives_per_positive == 0:
            raise ValueError(
                f"{config.data.path}/engagements has no impression events (a positives-only log): set "
                "ranker.features.negatives_per_positive > 0 to derive impressions with sampled negatives"
            )
        derived = derive_impressions(
            tables["engagements"],
            tables["posts"],
            features_config.negatives_per_positive,
            features_config.negative_neighbourhood_rows,
        )
        tables["engagements"] = tables["engagements"].unionByName(derived).cache()
        impressions = tables["engagements"].where(F.col("event") == "impression")
    validation_start, test_start = split_boundaries(
        impressions, features_config.validation_fraction, features_config.test_fraction
    )
    rows = assign_split(build_training_rows(tables, content), validation_start, test_start).cache()
    manifest: dict = {
        "data_path": config.data.path,
        "content_embedding_version": content_version,
        "validation_start_us": validation_start,
        "test_start_us": test_start,
        "windows_days": list(WINDOWS_DAYS),
        "tasks": list(TASK_COLUMNS),
        "derived_impressions": derived_impressions,
        "negatives_per_positive": features_config.negatives_per_positive if derived_impressions else None,
    }
    try:
        with store.stage("features", "ranking", manifest=manifest) as staged:
            counts, rates = {}, {}
            for split in SPLITS:
                part = (
                    rows.where(F.col("split") == split).drop("split").orderBy("ts_us", "user_id", "post_id")
                )
                counts[split] = write_parquet_deterministic(part, f"{staged.data_path}/{split}")
                if counts[split] == 0:
                    raise ValueError(f"the {split} split is empty: the data covers too short a time window")
            for task in TASK_COLUMNS:
                # A global aggregate has exactly one row (collect, unlike first, is typed as never None).
                rates[task] = rows.where(F.col("split") == "train").agg(F.avg(task)).collect()[0][0]
            staged.manifest["row_counts"] = counts
            staged.manifest["train_positive_rates"] = rates
            staged.manifest["columns"] = [c for c in rows.columns if c != "split"]
            if content is not None:
                first = (
                    rows.where(F.col(CONTENT_VECTOR_COLUMN).isNotNull()).select(CONTENT_VECTOR_COLUMN).first()
                )
                staged.manifest["content_embedding_dim"] = len(first[0]) if first else 0
        store.publish("features", "ranking", staged.version)
    finally:
        rows.unpersist()
    return staged.version, staged.manifest
