"""The post topic model: fitted mixtures that find subjects, and clear errors on text it cannot use."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.config import TopicModelConfig
from embeddings.topics import fit_topic_model

SUBJECTS = [
    ["kitten", "purr", "whiskers", "meow", "tabby"],
    ["compiler", "borrow", "cargo", "crate", "rustc"],
    ["striker", "goal", "offside", "keeper", "derby"],
]


def _posts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    subject = rng.integers(0, len(SUBJECTS), n)
    filler = ["the", "a", "so", "today", "😂"]
    texts = [" ".join(rng.choice(SUBJECTS[s], 3).tolist() + rng.choice(filler, 2).tolist()) for s in subject]
    return texts, subject


def test_mixtures_sum_to_one_and_group_posts_by_subject():
    texts, subject = _posts(300)
    model = fit_topic_model(texts[:200], TopicModelConfig(num_topics=3))
    topics = model.transform(texts[200:])  # posts the model was not fitted on
    assert topics.shape == (100, 3) and topics.dtype == np.float32
    assert np.allclose(topics.sum(axis=1), 1.0, atol=1e-5)
    main = topics.argmax(axis=1)
    held_out = subject[200:]
    # Each subject maps to one topic, and different subjects to different topics.
    mapping = {s: np.bincount(main[held_out == s], minlength=3).argmax() for s in range(3)}
    assert len(set(mapping.values())) == 3
    agreement = np.mean([mapping[s] == m for s, m in zip(held_out, main, strict=True)])
    assert agreement > 0.95


def test_a_post_without_known_terms_gets_zeros_not_nan():
    texts, _ = _posts(60)
    model = fit_topic_model(texts, TopicModelConfig(num_topics=3))
    topics = model.transform(["zzz unseen words", "", None])
    assert np.array_equal(topics, np.zeros((3, 3), np.float32))


def test_fewer_topics_than_asked_when_the_corpus_is_smaller():
    texts, _ = _posts(8)
    model = fit_topic_model(texts, TopicModelConfig(num_topics=16))
    assert model.num_topics == 8  # eight posts: nndsvd cannot make more components than that


def test_health_counts_the_spread_of_main_topics_and_posts_without_terms():
    texts, _ = _posts(300)
    model = fit_topic_model([*texts, "", "", ""], TopicModelConfig(num_topics=3))
    assert 2.7 < model.health.effective_topics <= 3.0 + 1e-6  # three subjects in about even shares
    assert model.health.share_without_terms == pytest.approx(3 / 303)


def test_a_collapsed_model_fails_instead_of_publishing():
    # Every post says the same: one main topic for all, whatever the components.
    with pytest.raises(ValueError, match=r"topic model collapsed: the 51 fitted posts spread over 1.00 effective topics"):
        fit_topic_model(["same words here"] * 50 + ["other"], TopicModelConfig())


def test_text_without_repeated_terms_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no term occurs in 2 of the 3 posts' texts"):
        fit_topic_model(["alpha", "beta", "gamma"], TopicModelConfig())
