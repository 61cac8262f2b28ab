"""`content pretrain` on local Spark: emoji labels from any Parquet text column, training from its weights,
and clear errors for corpora that cannot teach the emoji objective."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.store import Store

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SMALL = ["content.epochs=1", "content.embedding_dim=16", "content.lstm_hidden=16", "content.content_embedding_dim=16",
         "content.wide_buckets=4096", "content.vocab_size=2000", "content.pretrain.num_labels=8",
         "content.pretrain.min_text_tokens=2", "content.pretrain.checkpoint_every_steps=2"]


@pytest.fixture(scope="module")
def pretrained(spark, tiny_dataset, tmp_path_factory):
    from jobs.pretrain_content_model import run
    from nearline.config import load_config

    root = tmp_path_factory.mktemp("pretrain")
    # Any Parquet with a text column: here the posts table under another column name.
    corpus = root / "corpus.parquet"
    texts = pq.read_table(f"{tiny_dataset.data.path}/posts", columns=["text"]).column("text")
    pq.write_table(pa.table({"body": texts}), corpus)
    config = load_config(None, [f"data.path={tiny_dataset.data.path}", f"store.root={root / 'store'}",
                                "spark.master=local[2]", "content.pretrain.text_column=body", *SMALL])
    summary = run(spark, config, str(corpus), str(root / "model"))
    return config, root, summary


def test_pretrain_learns_the_emoji_objective_from_a_text_column(pretrained):
    config, root, summary = pretrained
    assert len(summary["labels"]) == 8 and summary["counts"]["with_emoji"] > 0
    assert summary["num_train"] > 0 and summary["num_val"] > 0
    assert summary["val"]["macro_f1"] > 1 / 8  # above a uniform guess: the topics' emojis are predictable
    model_dir = root / "model"
    assert json.loads((model_dir / "labels.json").read_text(encoding="utf-8")) == summary["labels"]
    assert (model_dir / "checkpoint.pt").is_file()  # what a killed run would resume from


def test_content_train_starts_from_the_pretrained_weights(spark, pretrained):
    from jobs.train_content_model import train_from_dataset

    config, root, _ = pretrained
    warm = config.model_copy(update={"content": config.content.model_copy(update={"init_from": str(root / "model")})})
    store = Store(config.store.root)
    version, details = train_from_dataset(spark, warm, store, publish=False)
    metrics = json.loads((root / "store" / "models" / "content" / version / "metrics.json").read_text())
    assert "lstm1.weight_ih_l0" in metrics["initialised_from"]["copied"]
    mismatched = warm.model_copy(update={"content": warm.content.model_copy(update={"lstm_hidden": 32})})
    with pytest.raises(ValueError, match="lstm_hidden=32 in the config but 16 in the model"):
        train_from_dataset(spark, mismatched, store, publish=False)


@pytest.mark.parametrize(("texts", "message"), [
    ([None, "", "   "], "no posts in"),
    (["no emoji here", "nor here at all"], "none of the 2 posts .* contains an emoji"),
    (["😂😂", "🔥 🔥 🔥", "🙏"], "fewer than 2 tokens once the emojis are removed"),
])
def test_corpora_that_cannot_teach_the_objective_are_refused(spark, pretrained, tmp_path, texts, message):
    from jobs.pretrain_content_model import run

    config, _, _ = pretrained
    corpus = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": pa.array(texts, pa.string())}), corpus)
    with pytest.raises(ValueError, match=message):
        run(spark, config, str(corpus), str(tmp_path / "model"))
    with pytest.raises(ValueError, match="no column 'text'"):
        run(spark, config.model_copy(update={"content": config.content.model_copy(update={
            "pretrain": config.content.pretrain.model_copy(update={"text_column": "text"})})}),
            str(corpus), str(tmp_path / "model2"))
