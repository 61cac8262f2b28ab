"""Shapes, dtypes, norms and the artifact round trip of the content model (tiny random models)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from embeddings.config import ContentModelConfig
from embeddings.content_encoder import (
    build_content_model,
    encode_texts,
    load_content_model,
    predict_proba,
    save_content_model,
)
from embeddings.text import build_vocabulary

TEXTS = ["i love this so much", "worst day ever", "sun and sea #summer", "", "😂😂", b"caf\xe9 \xff", "x " * 3000]


def tiny_config(**overrides) -> ContentModelConfig:
    base = dict(vocab_size=50, min_count=1, max_len_tokens=12, subword_buckets=64, embedding_dim=8, lstm_hidden=6,
                content_embedding_dim=5, wide_buckets=256, wide_dim=4, seed=3)
    return ContentModelConfig(**{**base, **overrides})


def tiny_model(**overrides):
    config = tiny_config(**overrides)
    vocab = build_vocabulary([t for t in TEXTS if isinstance(t, str)], config.vocab_size, 1, config.subword_buckets)
    model = build_content_model(config, len(vocab), num_labels=4)
    model.vocab = vocab
    return model.eval(), vocab, config


def test_config_rejects_unknown_keys_and_inconsistent_sizes():
    with pytest.raises(ValueError, match="lstm_hiden"):
        ContentModelConfig(lstm_hiden=3)
    with pytest.raises(ValueError, match="project_embedding"):
        ContentModelConfig(project_embedding=False, content_embedding_dim=7)
    config = ContentModelConfig(project_embedding=False, content_embedding_dim=64 + 4 * 96)
    assert config.pooled_dim == config.content_embedding_dim


def test_encode_shapes_dtypes_and_unit_norm():
    model, _, config = tiny_model()
    vectors = encode_texts(model, TEXTS, batch_size=3)
    assert vectors.shape == (len(TEXTS), config.content_embedding_dim)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encode_texts(model, []).shape == (0, config.content_embedding_dim)


def test_encoding_does_not_depend_on_batching_or_neighbours():
    model, _, _ = tiny_model()
    together = encode_texts(model, TEXTS, batch_size=64)
    alone = np.stack([encode_texts(model, [t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_unnormalised_unprojected_embedding_is_the_pooled_vector():
    model, _, config = tiny_model(project_embedding=False, l2_normalize_embedding=False,
                                  content_embedding_dim=8 + 4 * 6)
    vectors = encode_texts(model, TEXTS[:3])
    assert vectors.shape == (3, config.pooled_dim)
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_predict_proba_rows_are_distributions():
    model, _, _ = tiny_model()
    proba = predict_proba(model, TEXTS)
    assert proba.shape == (len(TEXTS), 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    no_wide, _, _ = tiny_model(wide_enabled=False)
    assert predict_proba(no_wide, TEXTS).shape == (len(TEXTS), 4)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model, vocab, config = tiny_model()
    with torch.no_grad():
        model.logit_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        model.head_weights.copy_(torch.tensor([0.5, 0.3, 0.2]))
    save_content_model(model, vocab, ["a", "b", "c", "d"], config, str(tmp_path))
    loaded = load_content_model(str(tmp_path), device="cpu")
    assert loaded.labels == ["a", "b", "c", "d"] and loaded.config == config
    np.testing.assert_array_equal(encode_texts(loaded, TEXTS), encode_texts(model, TEXTS))
    np.testing.assert_array_equal(predict_proba(loaded, TEXTS), predict_proba(model, TEXTS))


def test_model_file_of_another_version_is_refused(tmp_path):
    model, vocab, config = tiny_model()
    save_content_model(model, vocab, ["a", "b", "c", "d"], config, str(tmp_path))
    blob = torch.load(os.path.join(tmp_path, "model.pt"), weights_only=True)
    blob["format_version"] = 0
    torch.save(blob, os.path.join(tmp_path, "model.pt"))
    with pytest.raises(ValueError, match="format_version=0"):
        load_content_model(str(tmp_path))
    with pytest.raises(ValueError, match="no content model"):
        load_content_model(str(tmp_path / "missing"))


def test_saved_config_and_labels_are_readable_json(tmp_path):
    model, vocab, config = tiny_model()
    save_content_model(model, vocab, ["❤", "😂", "c", "d"], config, str(tmp_path))
    assert json.loads((tmp_path / "labels.json").read_text(encoding="utf-8"))[:2] == ["❤", "😂"]
    assert ContentModelConfig.model_validate_json((tmp_path / "config.json").read_text()) == config


def test_build_rejects_fewer_than_two_labels():
    with pytest.raises(ValueError, match="num_labels=1"):
        build_content_model(tiny_config(), 10, 1)


def test_encode_batches_matches_encode_texts_and_keeps_ids(tmp_path):
    import pandas as pd

    from embeddings.content_encoder import encode_batches

    model, vocab, config = tiny_model()
    save_content_model(model, vocab, ["a", "b", "c", "d"], config, str(tmp_path))
    texts = [t for t in TEXTS if isinstance(t, str)]
    frames = [pd.DataFrame({"post_id": [10, 11], "text": texts[:2]}),
              pd.DataFrame({"post_id": [12, 13, 14], "text": [*texts[2:4], None]})]
    out = pd.concat(list(encode_batches(str(tmp_path), iter(frames), device="cpu")))
    assert out["post_id"].tolist() == [10, 11, 12, 13, 14]
    expected = encode_texts(model, [*texts[:4], ""])
    np.testing.assert_allclose(np.stack(out["vector"].to_list()), expected, atol=1e-6)
    with pytest.raises(ValueError, match="lacks column"):
        list(encode_batches(str(tmp_path), iter([pd.DataFrame({"id": [1]})]), device="cpu"))
