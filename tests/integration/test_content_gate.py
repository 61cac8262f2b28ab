"""The embedding health gate on local Spark: a trained model's vectors pass and report topic agreement;
a collapsed version is refused by `nearline refresh`, kept staged, and the previous version keeps serving."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from storage.store import Store

pytestmark = [pytest.mark.spark, pytest.mark.slow]

FAST_CONTENT = ["content.epochs=2", "content.embedding_dim=32", "content.lstm_hidden=32",
                "content.content_embedding_dim=32", "content.wide_buckets=16384", "content.num_labels=16"]


@pytest.fixture(scope="module")
def gated_store(spark, tiny_dataset, tmp_path_factory):
    """A store serving a trained content model and its (healthy) content embeddings."""
    from jobs import export_content_embeddings, train_content_model
    from nearline.config import load_config

    root = tmp_path_factory.mktemp("gate")
    config = load_config(None, [f"data.path={tiny_dataset.data.path}", f"store.root={root / 'store'}",
                                f"refresh.lock_path={root / 'refresh.lock'}", "spark.master=local[2]",
                                *FAST_CONTENT])
    store = Store(config.store.root)
    train_content_model.train_from_dataset(spark, config, store, publish=True)
    version, _ = export_content_embeddings.run_content(spark, config, store, None, publish=True)
    return config, store, version


def test_trained_content_embeddings_pass_and_report_topic_agreement(gated_store):
    config, store, version = gated_store
    health = store.manifest("embeddings", "content", version)["health"]
    assert health["gate"]["passed"], health
    assert health["truth"] == "truth/posts topic"
    # The generator's latent topics: posts' nearest neighbours share them far more often than chance.
    assert health["nn_lift"] >= 3.0 and health["mean_cosine"] <= 0.5, health
    assert store.current("embeddings", "content") == version


def test_refresh_refuses_collapsed_content_embeddings(spark, gated_store):
    from embeddings.content_encoder import build_content_model, save_content_model
    from embeddings.text import build_vocabulary
    from jobs.refresh import run_refresh

    config, store, healthy = gated_store
    # An untrained DeepMoji-only model: every post's vector points the same way (mean cosine ~0.99),
    # as the issue saw from a deep path that had not learned.
    collapsed = config.content.model_copy(update={"embedding_source": "deep"})
    texts = ds.dataset(f"{config.data.path}/posts").to_table(columns=["text"]).column("text").to_pylist()
    vocab = build_vocabulary(texts, collapsed.vocab_size, 1, collapsed.subword_buckets)
    with store.stage("models", "content") as staged:
        save_content_model(build_content_model(collapsed, len(vocab), 4), vocab, list("abcd"), collapsed,
                           staged.path)
    store.publish("models", "content", staged.version)

    record = run_refresh(config, spark)
    assert record["outcome"] == "failed"
    assert record["failed_stage"] == "content_embeddings"
    assert "health gate" in record["reason"] and "mean_cosine" in record["reason"], record["reason"]
    # The refused version is complete in the store (for inspection), never published.
    refused = [v for v in store.versions("embeddings", "content") if v != healthy]
    assert len(refused) == 1 and refused[0] in record["reason"]
    assert store.manifest("embeddings", "content", refused[0])["health"]["gate"]["passed"] is False
    assert store.current("embeddings", "content") == healthy
    assert record["serving"]["embeddings/content"] == healthy
    assert store.current("embeddings", "user_interest") is None  # nothing after the failed stage ran
