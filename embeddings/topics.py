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


@dataclass
class PostTopicModel:
    """A fitted vectoriser and factorisation; ``transform`` gives each post's topic mixture."""

    vectorizer: TfidfVectorizer
    nmf: NMF

    @property
    def num_topics(self) -> int:
        return int(self.nmf.n_components_)

    def transform(self, texts: Sequence[str | None]) -> np.ndarray:
        """float32 (N, num_topics), rows summing to 1; all zeros for a post with no known term."""
        weights = self.nmf.transform(self.vectorizer.transform([t or "" for t in texts]))
        totals = weights.sum(axis=1, keepdims=True)
        return np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0).astype(np.float32)


def fit_topic_model(texts: Sequence[str | None], config: TopicModelConfig) -> PostTopicModel:
    """Fit on these posts' texts.

    Raises:
        ValueError: no term occurs in min_doc_freq posts (nothing to factorise), naming the counts.
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
    nmf.fit(tfidf)
    return PostTopicModel(vectorizer, nmf)
