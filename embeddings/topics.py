"""Post topic mixtures: NMF over TF-IDF of post text.

Why a second content representation: the content vectors are trained to predict emojis, and emojis
follow sentiment as much as subject, so posts on one subject scatter (on the generated world a
nearest-centroid rule finds a post's topic 51% of the time). Which subjects a user reads is what
decides most of their engagement, and a bag-of-words factorisation recovers subjects directly.
NMF rather than LDA: on the generated validation period its mixtures matched the planted topics
better (adjusted Rand index of the top topic 0.85 vs 0.74 for scikit-learn's LDA and 0.58 for Spark
ML's EM LDA) and it is deterministic for a seed.

Fitted once per refresh on a sample of posts, then applied to every post (the Spark export maps it
over partitions), so fitting cost does not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import NMF
from sklearn.feature_extraction.text import TfidfVectorizer

from embeddings.config import TopicModelConfig

TOKEN_PATTERN = r"\S+"  # whitespace tokens: hashtags, mentions and emoji runs stay whole


@dataclass(frozen=True)
class TopicHealth:
    """How the fitted posts spread over the topics.

    Attributes:
        effective_topics: exp of the entropy of the posts' main (largest) topics: num_topics when posts
            spread evenly, 1 when every post has the same main topic (a collapsed model).
        share_without_terms: posts with no term the model knows (their mixture is all zeros).
    """

    effective_topics: float
    share_without_terms: float


def topic_health(mixtures: np.ndarray) -> TopicHealth:
    """TopicHealth of float (N, K) mixtures (rows summing to 1, or 0 for posts without known terms)."""
    has_terms = mixtures.sum(axis=1) > 0
    if not has_terms.any():
        return TopicHealth(0.0, 1.0)
    counts = np.bincount(mixtures[has_terms].argmax(axis=1), minlength=mixtures.shape[1])
    p = counts[counts > 0] / counts.sum()
    return TopicHealth(float(np.exp(-(p * np.log(p)).sum())), float(1.0 - has_terms.mean()))


@dataclass
class PostTopicModel:
    """A fitted vectoriser and factorisation; ``transform`` gives each post's topic mixture."""

    vectorizer: TfidfVectorizer
    nmf: NMF
    health: TopicHealth

    @property
    def num_topics(self) -> int:
        return int(self.nmf.n_components_)

    def transform(self, texts: Sequence[str | None]) -> np.ndarray:
        """float32 (N, num_topics), rows summing to 1; all zeros for a post with no known term."""
        return _normalised(self.nmf.transform(self.vectorizer.transform([t or "" for t in texts])))


def fit_topic_model(texts: Sequence[str | None], config: TopicModelConfig) -> PostTopicModel:
    """Fit on these posts' texts, and check the fitted posts' spread over the topics.

    Raises:
        ValueError: no term occurs in min_doc_freq posts (nothing to factorise), or the model collapsed
            (effective topics below config.min_effective_topics), naming the values.
    """
    vectorizer = TfidfVectorizer(
        token_pattern=TOKEN_PATTERN, lowercase=True, min_df=min(config.min_doc_freq, max(len(texts), 1))
    )
    try:
        tfidf = vectorizer.fit_transform([t or "" for t in texts])
    except ValueError:
        raise ValueError(
            f"topic model: no term occurs in {config.min_doc_freq} of the {len(texts):,} posts' texts; "
            "expected post text with repeated words (topics.min_doc_freq sets the threshold)"
        ) from None
    # nndsvda initialisation needs no more components than posts or terms.
    num_topics = min(config.num_topics, *tfidf.shape)
    nmf = NMF(num_topics, init="nndsvda", max_iter=config.max_iter, random_state=config.seed)
    model = PostTopicModel(vectorizer, nmf, TopicHealth(0.0, 0.0))
    model.health = topic_health(_normalised(nmf.fit_transform(tfidf)))
    if model.health.effective_topics < config.min_effective_topics:
        raise ValueError(
            f"topic model collapsed: the {len(texts):,} fitted posts spread over "
            f"{model.health.effective_topics:.2f} effective topics of {num_topics}, expected at least "
            f"topics.min_effective_topics={config.min_effective_topics}"
        )
    return model


def _normalised(weights: np.ndarray) -> np.ndarray:
    totals = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0).astype(np.float32)
