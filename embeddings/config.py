"""Configuration of the DeepMoji-style content model (the ``content`` section of NearlineConfig).

Defaults are small enough to train on 2 CPU cores in minutes; the DeepMoji paper's sizes
(arXiv 1708.00524) are given in the field descriptions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class EmbeddingHealthConfig(BaseModel):
    """Thresholds of the embedding health gate (embeddings.health) for one kind of embeddings.

    A version failing any check is kept in the store for inspection and never published.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Gate this kind of embeddings before it publishes.")
    sample_size: PositiveInt = Field(4000, description="Vectors sampled for the checks (cost grows with its square).")
    num_neighbors: PositiveInt = Field(10, description="k of the nearest-neighbour agreement check.")
    max_mean_cosine: float = Field(
        0.7, ge=-1.0, le=1.0, description="Largest mean pairwise cosine; collapsed vectors sit near 1."
    )
    min_effective_rank: float = Field(
        8.0, ge=1.0, description="Least effective rank (exp entropy of normalised singular values)."
    )
    min_nn_lift: float = Field(
        3.0, ge=0.0, description="Least nearest-neighbour label agreement over chance, where truth labels exist."
    )
    seed: int = Field(0, description="Seed of the sample.")


class EmbeddingGateConfig(BaseModel):
    """Health gates of the embeddings derived from the content model, checked before a version publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content: EmbeddingHealthConfig = Field(
        EmbeddingHealthConfig(), description="Content embeddings of posts (truth: the latent topic of a post)."
    )
    user_interest: EmbeddingHealthConfig = Field(
        EmbeddingHealthConfig(max_mean_cosine=0.8, min_nn_lift=2.0),
        description="Users' pooled interest vectors (truth: a user's strongest latent topic); pooling "
        "averages content vectors, so they sit closer together than the posts they come from.",
    )


class PretrainConfig(BaseModel):
    """Self-supervised emoji pre-training over a raw text corpus (`nearline content pretrain`).

    The emojis of a post become its labels (one example per distinct emoji of the label set, as DeepMoji)
    and are removed from the text the model reads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_column: str = Field("text", description="Column of the input Parquet that holds the posts.")
    num_labels: PositiveInt = Field(64, description="Label set: the N most frequent emojis (DeepMoji: 64).")
    exclude_emojis: tuple[str, ...] = Field(
        (), description="Emojis never used as labels (e.g. ones that mark promotions rather than a feeling)."
    )
    max_examples_per_label: PositiveInt = Field(
        6000, description="Cap per emoji label, taken in a hash order (balances head and tail classes)."
    )
    min_text_tokens: PositiveInt = Field(3, description="Posts with fewer tokens once emojis are removed are dropped.")
    max_emojis_per_post: PositiveInt = Field(
        4, description="Posts with more distinct emojis are dropped: their emojis say little about the text."
    )
    max_mentions: int = Field(3, ge=0, description="Spam filter: posts with more @mentions are dropped.")
    max_hashtags: int = Field(3, ge=0, description="Spam filter: posts with more #hashtags are dropped.")
    max_urls: int = Field(1, ge=0, description="Spam filter: posts with more links are dropped.")
    deduplicate: bool = Field(
        True, description="Keep one post per normalised text (lower case, links/mentions/numbers masked, emoji "
        "removed): templated promotions differ only in those."
    )
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of posts held out for validation.")
    checkpoint_every_steps: PositiveInt = Field(200, description="Steps between training checkpoints (resume).")


class ContentModelConfig(BaseModel):
    """Text preprocessing, model shape, training and label-extraction settings of the content model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- vocabulary and tokenisation
    vocab_size: PositiveInt = Field(30_000, description="Most frequent words kept (paper: 50,000).")
    min_count: PositiveInt = Field(2, description="A word needs this many corpus occurrences to enter the vocabulary.")
    max_len_tokens: PositiveInt = Field(40, description="Tokens per post read by the deep path (paper: 30).")
    subword_buckets: PositiveInt = Field(
        2**16, description="Hash buckets of the char 3-5-gram fallback that embeds words outside the vocabulary."
    )

    # --- deep (DeepMoji) path
    embedding_dim: PositiveInt = Field(64, description="Token embedding size (paper: 256).")
    lstm_hidden: PositiveInt = Field(96, description="Hidden units per direction of each BiLSTM layer (paper: 512).")
    attention_over: Literal["all_layers", "last_layer"] = Field(
        "all_layers",
        description="'all_layers' attends over [embedding, BiLSTM 1, BiLSTM 2] as DeepMoji (skip connections); "
        "'last_layer' over the second BiLSTM only.",
    )
    content_embedding_dim: PositiveInt = Field(
        128, description="Size of the content embedding; with project_embedding=False it must equal the pooled size."
    )
    project_embedding: bool = Field(True, description="Linear projection of the attention-pooled vector.")
    embedding_source: Literal["joint", "deep"] = Field(
        "joint",
        description="'joint': the content embedding is a linear projection of [deep vector, wide n-gram vector] "
        "with its own softmax head, so it carries whatever either path learned; 'deep': the deep path's "
        "(projected) attention-pooled vector, as DeepMoji (collapses when the deep path has not learned).",
    )
    l2_normalize_embedding: bool = Field(True, description="L2-normalise the content embedding (cosine = dot).")
    embed_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on token embeddings (paper: 0.25).")
    final_dropout: float = Field(0.4, ge=0.0, lt=1.0, description="Dropout before the softmax heads (paper: 0.5).")

    # --- wide path (hashed n-grams, logits ensembled with the deep path)
    wide_enabled: bool = Field(True, description="Add the hashed word/char n-gram linear path.")
    wide_buckets: PositiveInt = Field(2**19, description="Hash buckets shared by word 1-2-grams and char 3-5-grams.")
    wide_dim: PositiveInt = Field(
        64, description="Size of the pooled n-gram vector (fastText-like bottleneck) before the wide head."
    )
    wide_word_ngrams: PositiveInt = Field(2, description="Word n-grams 1..n in the wide path.")
    wide_char_ngram_min: PositiveInt = Field(3, description="Smallest char n-gram in the wide path.")
    wide_char_ngram_max: PositiveInt = Field(5, description="Largest char n-gram in the wide path.")

    # --- training
    epochs: PositiveInt = Field(6, description="Maximum epochs (early stopping may end sooner).")
    batch_size: PositiveInt = Field(256, description="Examples per optimiser step.")
    learning_rate: float = Field(2e-3, gt=0.0, description="Peak learning rate of the schedule (Adam).")
    wide_learning_rate: float = Field(
        5e-3, gt=0.0, description="Peak learning rate of the sparse wide-path embeddings (SparseAdam)."
    )
    lr_schedule: Literal["one_cycle", "constant", "cosine"] = Field("one_cycle", description="Per-step schedule.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay on dense weights.")
    grad_clip_norm: float = Field(1.0, gt=0.0, description="Gradient norm clip of dense weights (paper: 1).")
    early_stopping_patience: PositiveInt = Field(2, description="Epochs without val macro-F1 gain before stopping.")
    class_weighting: Literal["none", "sqrt", "balanced"] = Field(
        "sqrt", description="Loss weights per class: none, inverse square root of frequency, or inverse frequency."
    )
    tune_logit_bias: bool = Field(
        True, description="Fit a per-class logit bias and the wide/deep mix on validation to maximise macro-F1."
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Validation share held out when the training data has no val split."
    )
    gpu_bf16_autocast: bool = Field(
        True, description="On CUDA, train and encode under torch.autocast(bfloat16): the linear layers run in "
        "bf16, the LSTMs (not on autocast's list) and the embedding bags stay float32. No effect on CPU.",
    )
    num_threads: PositiveInt = Field(
        1,
        description="torch CPU threads for training and encoding. 1 by default: on a shared 2-core machine, "
        "2 intra-op threads made a BiLSTM step ~10x slower (threads spin at barriers); use more on idle cores.",
    )

    # --- labels (emoji label extraction)
    num_labels: PositiveInt = Field(64, description="Label set: the N most frequent emojis (DeepMoji: 64).")
    max_examples_per_label: PositiveInt = Field(
        20_000, description="Cap of training examples per emoji label (balances the head classes)."
    )
    min_text_tokens: PositiveInt = Field(1, description="Posts with fewer tokens after emoji removal are dropped.")

    seed: int = Field(0, description="Seed of initialisation, shuffling and splits.")

    init_from: str | None = Field(
        None, description="Directory of a (pre-)trained content model whose weights start training (all but "
        "the label heads); its vocabulary is used, and its layer sizes must equal these."
    )
    pretrain: PretrainConfig = Field(PretrainConfig(), description="Emoji pre-training over a raw corpus.")
    gate: EmbeddingGateConfig = Field(
        EmbeddingGateConfig(), description="Health gates of the exported content and user-interest embeddings."
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> ContentModelConfig:
        if not self.project_embedding and self.content_embedding_dim != self.pooled_dim:
            raise ValueError(
                f"content_embedding_dim={self.content_embedding_dim} but without projection the embedding is "
                f"the attention-pooled vector of size {self.pooled_dim}; set project_embedding=true or "
                f"content_embedding_dim={self.pooled_dim}"
            )
        if self.wide_char_ngram_min > self.wide_char_ngram_max:
            raise ValueError(
                f"wide_char_ngram_min={self.wide_char_ngram_min} > wide_char_ngram_max={self.wide_char_ngram_max}"
            )
        return self

    @property
    def pooled_dim(self) -> int:
        """Size of the attention-pooled vector."""
        if self.attention_over == "all_layers":
            return self.embedding_dim + 4 * self.lstm_hidden
        return 2 * self.lstm_hidden



class TopicModelConfig(BaseModel):
    """The post topic model (``topics`` section): NMF over TF-IDF of post text, fitted in the serving-table export.

    Its per-post topic mixtures let serving compare a candidate with the topics a user has read,
    engaged with and follows (serving/blend.py), which the emoji-trained content vectors separate poorly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_topics: PositiveInt = Field(16, description="NMF components; fewer when the corpus has fewer posts or terms.")
    min_doc_freq: PositiveInt = Field(2, description="Terms in fewer posts are dropped (typos, one-off ids).")
    max_fit_posts: PositiveInt = Field(
        200_000, description="Posts the model is fitted on (a deterministic sample); every post is transformed."
    )
    max_iter: PositiveInt = Field(300, description="NMF iterations.")
    min_effective_topics: float = Field(
        2.0, ge=1.0,
        description="Least exp-entropy of the fitted posts' main topics: below it nearly every post has the same "
        "main topic (a collapsed model), and the export fails rather than publish it.",
    )
    seed: int = 7
