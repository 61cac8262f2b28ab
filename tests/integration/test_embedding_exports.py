"""Content and user-interest exports on local Spark, against a tiny random content model."""

import numpy as np
import pyarrow.dataset as ds
import pytest

from storage.store import Store

pytestmark = [pytest.mark.spark, pytest.mark.slow]

# An untrained model's vectors are collapsed: these tests check the export mechanics, so the health gate
# (tested in test_content_gate.py) is off.
TINY_CONTENT = {"vocab_size": 500, "subword_buckets": 1024, "embedding_dim": 16, "lstm_hidden": 16,
                "content_embedding_dim": 8, "wide_buckets": 1024, "num_labels": 8,
                "gate": {"content": {"enabled": False}, "user_interest": {"enabled": False}}}


@pytest.fixture(scope="module")
def content_store(tiny_dataset):
    from embeddings.config import ContentModelConfig
    from embeddings.content_encoder import build_content_model, save_content_model
    from embeddings.text import build_vocabulary

    config = ContentModelConfig.model_validate(TINY_CONTENT)
    posts = ds.dataset(f"{tiny_dataset.data.path}/posts").to_table(columns=["text"]).column("text").to_pylist()
    vocab = build_vocabulary(posts, config.vocab_size, 1, config.subword_buckets)
    model = build_content_model(config, len(vocab), config.num_labels)
    store = Store(tiny_dataset.store.root)
    with store.stage("models", "content") as staged:
        save_content_model(model, vocab, [str(i) for i in range(config.num_labels)], config, staged.path)
    store.publish("models", "content", staged.version)
    return tiny_dataset.model_copy(update={"content": config}), store


def test_content_export_covers_every_post_with_unit_vectors(spark, content_store):
    from jobs.export_content_embeddings import run_content

    config, store = content_store
    version, rows = run_content(spark, config, store, None, publish=True)
    posts = ds.dataset(f"{config.data.path}/posts").count_rows()
    assert rows == posts
    table = ds.dataset(store.data_path("embeddings", "content", version)).to_table()
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert vectors.shape == (posts, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert store.manifest("embeddings", "content", version)["model_version"] == store.current("models", "content")
    assert store.current("embeddings", "content") == version


def test_user_interest_is_the_recency_weighted_mean(spark, content_store):
    from jobs.export_content_embeddings import run_user_interest

    config, store = content_store
    content_version = store.current("embeddings", "content")
    version, rows = run_user_interest(spark, config, store, content_version, publish=False)
    assert rows > 0.9 * config.generate.num_users
    interests = ds.dataset(store.data_path("embeddings", "user_interest", version)).to_table().to_pandas()
    content = ds.dataset(store.data_path("embeddings", "content", content_version)).to_table().to_pandas()
    vectors = dict(zip(content.post_id, content.vector, strict=True))
    engagements = ds.dataset(f"{config.data.path}/engagements").to_table().to_pandas()
    positives = engagements[engagements.event != "impression"]
    newest = positives.ts.max()
    user = interests.iloc[0]
    mine = positives[positives.user_id == user.user_id].sort_values("ts").drop_duplicates("post_id", keep="first")
    age = (newest - mine.ts).dt.total_seconds() / 86_400
    weights = 0.5 ** (age / config.user_interest.half_life_days)
    expected = sum(w * vectors[p] for w, p in zip(weights, mine.post_id, strict=True))
    expected = expected / np.linalg.norm(expected)
    np.testing.assert_allclose(np.asarray(user.vector), expected, atol=1e-4)
    assert set(user.recent_post_ids) <= set(mine.post_id)
    assert store.current("embeddings", "user_interest") is None
