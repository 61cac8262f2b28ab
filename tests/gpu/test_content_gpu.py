"""The content model on CUDA: encode and train there, bf16 autocast close to float32.

The export path's GPU throughput against the model-only rate is measured by bench/content.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings.config import ContentModelConfig
from embeddings.content_encoder import build_content_model, encode_texts
from embeddings.text import build_vocabulary

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

WORDS = "sun beach summer rain cold grey cake party birthday the a today so very we it".split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(4, 30))) for _ in range(n)]


def model_on(device: str, bf16: bool, **overrides):
    config = ContentModelConfig(gpu_bf16_autocast=bf16, **overrides)
    texts = corpus(2000)
    vocab = build_vocabulary(texts, config.vocab_size, 1, config.subword_buckets)
    model = build_content_model(config, len(vocab), 8).to(device).eval()
    model.vocab = vocab
    return model, texts


def test_cuda_encoding_matches_cpu_in_float32():
    cpu, texts = model_on("cpu", bf16=False)
    gpu, _ = model_on("cuda", bf16=False)
    np.testing.assert_allclose(encode_texts(gpu, texts[:500]), encode_texts(cpu, texts[:500]), atol=1e-4)


def test_bf16_autocast_embeddings_stay_close_to_float32():
    fp32, texts = model_on("cuda", bf16=False)
    bf16, _ = model_on("cuda", bf16=True)
    a, b = encode_texts(fp32, texts[:500]), encode_texts(bf16, texts[:500])
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99


def test_training_runs_on_cuda_with_autocast(tmp_path):
    from embeddings.training import train_content_model

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    texts = [" ".join(rng.choice(WORDS[3 * y: 3 * y + 3], 3).tolist() + ["the", "we"]) for y in labels]
    config = ContentModelConfig(vocab_size=100, min_count=1, embedding_dim=16, lstm_hidden=16,
                                content_embedding_dim=16, wide_buckets=4096, epochs=4, batch_size=32)
    result = train_content_model(config, texts, labels, texts, labels, ["a", "b", "c"], str(tmp_path), device="cuda")
    assert result.metrics["device"].startswith("cuda")
    assert result.metrics["val"]["macro_f1"] > 0.9
