"""The DeepMoji-shaped content model, its artifact format and batch encoding.

Deep path (DeepMoji, arXiv 1708.00524): token embedding (words, or hashed char n-grams for words outside
the vocabulary) -> tanh -> two BiLSTM layers -> attention over the concatenation of the embedding and both
LSTM outputs -> (optional projection) -> softmax head.

Wide path (optional): hashed word 1-2-grams and char 3-5-grams, pooled (fastText-like) -> softmax head.

Content embedding (``embedding_source``): 'joint' (default) is a linear projection of the deep vector and
the wide n-gram vector with a softmax head of its own, trained with the other two, so the embedding holds
whatever either path learned (on small corpora the deep path learns little and the wide one carries the
signal); 'deep' is the deep path's vector, as DeepMoji. Optionally L2-normalised.

The heads are trained side by side; their log-probabilities are mixed (``head_weights`` over deep, wide,
joint) with a per-class ``logit_bias``, both fitted on validation data for macro-F1.

Artifact directory (:func:`save_content_model`): ``model.pt`` (state dict + format version, read with
``weights_only=True``), ``vocab.json``, ``labels.json``, ``config.json``.
"""

from __future__ import annotations

import json
import os
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from embeddings.config import ContentModelConfig
from embeddings.text import (
    EMPTY,
    UNK,
    Vocabulary,
    concat_ranges,
    hash_char_ngrams,
    load_vocabulary,
    save_vocabulary,
    tokenize,
)

MODEL_FORMAT = "nearline-content-model"
MODEL_FORMAT_VERSION = 2
HEADS = ("deep", "wide", "joint")


@dataclass
class TextFeatures:
    """Pre-computed model inputs of N texts, as flat arrays.

    Attributes:
        token_rows: int64 (R,) embedding rows of all token bags, text after text.
        bag_sizes: int64 (K,) rows per token bag.
        tokens_per_text: int64 (N,) token bags per text (>= 1).
        wide_ids: int64 (W,) hashed n-gram buckets, text after text (empty when the wide path is off).
        wide_per_text: int64 (N,) buckets per text.
    """

    token_rows: np.ndarray
    bag_sizes: np.ndarray
    tokens_per_text: np.ndarray
    wide_ids: np.ndarray
    wide_per_text: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens_per_text)


@dataclass
class Batch:
    """Tensors for one forward pass over B texts (T = longest text in tokens)."""

    token_rows: torch.Tensor  # int64 (R,)
    token_offsets: torch.Tensor  # int64 (B*T,) start of each position's bag; padding bags hold row 0
    lengths: torch.Tensor  # int64 (B,) on CPU, for packing
    wide_ids: torch.Tensor  # int64 (W,)
    wide_offsets: torch.Tensor  # int64 (B,)
    wide_weights: torch.Tensor  # float32 (W,) 1/sqrt(n) per text

    def to(self, device: torch.device) -> Batch:
        return Batch(self.token_rows.to(device), self.token_offsets.to(device), self.lengths,
                     self.wide_ids.to(device), self.wide_offsets.to(device), self.wide_weights.to(device))


class _Csr:
    """A growing list of int sequences stored flat (``array('q')``, cheap to extend and to view)."""

    def __init__(self) -> None:
        self.flat, self.starts, self.lengths = array("q"), array("q"), array("q")

    def extend(self, values: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``len(lengths)`` sequences, stored back to back in ``values`` (int64)."""
        starts = len(self.flat) + np.cumsum(lengths) - lengths
        self.starts.frombytes(starts.astype(np.int64).tobytes())
        self.lengths.frombytes(lengths.astype(np.int64).tobytes())
        self.flat.frombytes(values.astype(np.int64).tobytes())

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the sequences of ``rows`` concatenated, their lengths), int64."""
        starts = np.frombuffer(self.starts, dtype=np.int64)[rows]
        lengths = np.frombuffer(self.lengths, dtype=np.int64)[rows]
        return np.frombuffer(self.flat, dtype=np.int64)[concat_ranges(starts, lengths)], lengths


class TextFeaturizer:
    """Tokenises and hashes texts into :class:`TextFeatures` for one vocabulary and config.

    Gives exactly the rows of ``Vocabulary.token_bag`` and the ids of ``embeddings.text.wide_feature_ids``
    (tested equal), faster: words repeat (on TweetEval 10k texts hold ~25k distinct tokens among ~150k),
    so each distinct token's embedding-row bag, word-unigram bucket, char n-gram buckets and the CRC32 of
    "w{n}:token " are computed once and remembered; a word n-gram then costs one CRC32 continuation per
    further word instead of building and hashing its string, and the per-token parts are gathered into
    the flat arrays with numpy. Keep one featuriser per model to reuse the memo across batches; its size
    is bounded by ``max_cached_tokens`` (it restarts when full).
    """

    def __init__(self, vocab: Vocabulary, config: ContentModelConfig, max_cached_tokens: int = 500_000) -> None:
        self.vocab, self.config, self.max_cached_tokens = vocab, config, max_cached_tokens
        self._starts = [zlib.crc32(f"w{n}:".encode()) for n in range(1, config.wide_word_ngrams + 1)]
        self._reset()

    def _reset(self) -> None:
        self._index: dict[str, int] = {}
        self._bags, self._chars = _Csr(), _Csr()
        self._unigram = array("q")
        self._prefixes: list[tuple[int, ...]] = []  # CRC32 of "w{n}:token " for n = 2..
        self._bytes: list[bytes] = []
        self._pending: list[str] = []  # new tokens whose bags and char n-grams are not hashed yet

    def _add(self, token: str) -> int:
        data = token.encode()
        self._unigram.append(zlib.crc32(data, self._starts[0]) % self.config.wide_buckets)
        self._prefixes.append(tuple(zlib.crc32(data + b" ", start) for start in self._starts[1:]))
        self._bytes.append(data)
        self._pending.append(token)
        self._index[token] = len(self._bytes) - 1
        return len(self._bytes) - 1

    def _hash_pending(self) -> None:
        """Embedding-row bags and wide char n-gram buckets of the new tokens, hashed in one vectorised pass."""
        tokens, self._pending = self._pending, []
        if not tokens:
            return
        config, vocab = self.config, self.vocab
        word_ids = [vocab.word_id(t) for t in tokens]
        unseen = np.array([w is None for w in word_ids], dtype=bool)
        subword_ids, subword_counts = hash_char_ngrams([t for t, u in zip(tokens, unseen, strict=True) if u],
                                                       vocab.subword_min, vocab.subword_max, vocab.subword_buckets)
        # A word's bag is its row; an unseen word's, the rows of its hashed char n-grams (the <unk> row
        # if it has none), as Vocabulary.token_bag.
        bag_lengths = np.ones(len(tokens), dtype=np.int64)
        bag_lengths[unseen] = np.maximum(subword_counts, 1)
        bags = np.empty(int(bag_lengths.sum()), dtype=np.int64)
        bag_at = np.cumsum(bag_lengths) - bag_lengths
        bags[bag_at[~unseen]] = [w for w in word_ids if w is not None]
        unseen_at = bag_at[unseen]
        bags[concat_ranges(unseen_at, subword_counts)] = subword_ids + len(vocab)
        bags[unseen_at[subword_counts == 0]] = vocab.token_bag(UNK)[0]
        self._bags.extend(bags, bag_lengths)
        special = np.array([t.startswith("<") for t in tokens], dtype=bool)
        char_ids, char_counts = hash_char_ngrams(tokens, config.wide_char_ngram_min, config.wide_char_ngram_max,
                                                 config.wide_buckets, "c:")
        self._chars.extend(char_ids[~np.repeat(special, char_counts)], np.where(special, 0, char_counts))

    def __call__(self, texts: Sequence[str | bytes]) -> TextFeatures:
        if len(self._index) > self.max_cached_tokens:
            self._reset()
        config, index, add, crc32 = self.config, self._index, self._add, zlib.crc32
        prefixes, encoded, buckets = self._prefixes, self._bytes, config.wide_buckets
        empty = index.get(EMPTY)
        empty = add(EMPTY) if empty is None else empty
        words, ngrams, distinct = array("q"), array("q"), array("q")
        lengths: list[int] = []
        distinct_counts: list[int] = []
        for text in texts:
            tokens = tokenize(text)
            ids = [index.get(t, -1) for t in tokens]
            if -1 in ids:
                ids = [j if j >= 0 else (index[t] if t in index else add(t)) for j, t in zip(ids, tokens, strict=True)]
            ids = ids or [empty]
            words.extend(ids)
            lengths.append(len(ids))
            if not config.wide_enabled:
                continue
            if config.wide_word_ngrams >= 2:
                ngrams.extend([crc32(encoded[b], prefixes[a][0]) % buckets for a, b in zip(ids, ids[1:], strict=False)])
            for n in range(3, config.wide_word_ngrams + 1):
                for j in range(len(ids) - n + 1):
                    crc = prefixes[ids[j]][n - 2]
                    for middle in ids[j + 1: j + n - 1]:
                        crc = crc32(b" ", crc32(encoded[middle], crc))
                    ngrams.append(crc32(encoded[ids[j + n - 1]], crc) % buckets)
            unique = dict.fromkeys(ids)
            distinct.extend(unique)
            distinct_counts.append(len(unique))
        self._hash_pending()
        word_counts = np.array(lengths, dtype=np.int64)
        tokens_per_text = np.minimum(word_counts, config.max_len_tokens)
        all_words = np.frombuffer(words, dtype=np.int64)
        read = all_words[concat_ranges(np.cumsum(word_counts) - word_counts, tokens_per_text)]
        token_rows, bag_sizes = self._bags.gather(read)
        if not config.wide_enabled:
            return TextFeatures(token_rows, bag_sizes, tokens_per_text, np.zeros(0, dtype=np.int64),
                                np.zeros(len(texts), dtype=np.int64))
        # Each text's wide ids: its word unigrams, then its longer word n-grams, then the char n-grams of
        # its distinct tokens (the order of wide_feature_ids), laid out with one scatter per part.
        char_ids, char_lengths = self._chars.gather(np.frombuffer(distinct, dtype=np.int64))
        unique_counts = np.array(distinct_counts, dtype=np.int64)
        per_text_chars = (np.add.reduceat(char_lengths, np.cumsum(unique_counts) - unique_counts)
                          if len(texts) else unique_counts)
        ngram_counts = sum((np.maximum(word_counts - n + 1, 0) for n in range(2, config.wide_word_ngrams + 1)),
                           np.zeros(len(texts), dtype=np.int64))
        parts = [(np.frombuffer(self._unigram, dtype=np.int64)[all_words], word_counts),
                 (np.frombuffer(ngrams, dtype=np.int64), ngram_counts), (char_ids, per_text_chars)]
        wide_per_text = word_counts + ngram_counts + per_text_chars
        wide_ids = np.empty(int(wide_per_text.sum()), dtype=np.int64)
        offset = np.cumsum(wide_per_text) - wide_per_text
        for values, part_counts in parts:
            wide_ids[concat_ranges(offset, part_counts)] = values
            offset = offset + part_counts
        return TextFeatures(token_rows, bag_sizes, tokens_per_text, wide_ids, wide_per_text)


def featurize(texts: Sequence[str | bytes], vocab: Vocabulary, config: ContentModelConfig) -> TextFeatures:
    """Tokenise and hash ``texts`` once, so epochs only gather arrays (see :class:`TextFeaturizer`)."""
    return TextFeaturizer(vocab, config)(texts)


class _FeatureIndex:
    """Start offsets into the flat arrays of a :class:`TextFeatures`, for gathering batches."""

    def __init__(self, features: TextFeatures) -> None:
        self.features = features
        self.bag_start = np.concatenate([[0], np.cumsum(features.tokens_per_text)])
        self.row_start = np.concatenate([[0], np.cumsum(features.bag_sizes)])
        self.wide_start = np.concatenate([[0], np.cumsum(features.wide_per_text)])

    def batch(self, indices: np.ndarray) -> Batch:
        f = self.features
        lengths = f.tokens_per_text[indices]
        max_len = int(lengths.max())
        # Positions past a text's end are one-row bags of row 0 (the <pad> word), which EmbeddingBag
        # zeroes: lay out max_len bags per text, real bags first.
        bag_first = self.bag_start[indices]
        real_sizes = f.bag_sizes[concat_ranges(bag_first, lengths)]
        sizes = np.ones((len(indices), max_len), dtype=np.int64)
        sizes[np.arange(max_len)[None, :] < lengths[:, None]] = real_sizes
        bag_sizes = sizes.ravel()
        rows = np.zeros(int(bag_sizes.sum()), dtype=np.int64)
        text_rows = self.row_start[bag_first + lengths] - self.row_start[bag_first]
        row_offsets = np.cumsum(bag_sizes) - bag_sizes
        rows[concat_ranges(row_offsets[np.arange(len(indices)) * max_len], text_rows)] = \
            f.token_rows[concat_ranges(self.row_start[bag_first], text_rows)]
        wide_counts = f.wide_per_text[indices]
        wide_ids = f.wide_ids[concat_ranges(self.wide_start[indices], wide_counts)]
        wide_offsets = np.cumsum(wide_counts) - wide_counts
        wide_weights = np.repeat(1.0 / np.sqrt(np.maximum(wide_counts, 1)), wide_counts).astype(np.float32)
        return Batch(torch.from_numpy(rows), torch.from_numpy(row_offsets),
                     torch.from_numpy(lengths.copy()), torch.from_numpy(wide_ids),
                     torch.from_numpy(wide_offsets), torch.from_numpy(wide_weights))


def iterate_batches(features: TextFeatures, batch_size: int, order: np.ndarray | None = None
                    ) -> Iterator[tuple[np.ndarray, Batch]]:
    """Yield ``(indices, batch)`` over ``features`` in ``order`` (default: input order)."""
    index = _FeatureIndex(features)
    order = np.arange(len(features)) if order is None else order
    for start in range(0, len(order), batch_size):
        indices = order[start: start + batch_size]
        yield indices, index.batch(indices)


class ContentModel(nn.Module):
    """DeepMoji-shaped classifier with a wide n-gram path; see the module docstring for the embedding.

    ``vocab``, ``labels`` (label index -> emoji or class name) and ``config`` travel with the model so
    :func:`encode_texts` needs nothing else.
    """

    def __init__(self, config: ContentModelConfig, vocab_size: int, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.vocab: Vocabulary | None = None
        self.labels: list[str] = [str(i) for i in range(num_labels)]
        e, h = config.embedding_dim, config.lstm_hidden
        self.token_embedding = nn.EmbeddingBag(vocab_size + config.subword_buckets, e, mode="mean",
                                               padding_idx=0, sparse=True)
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.lstm1 = nn.LSTM(e, h, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * h, h, batch_first=True, bidirectional=True)
        self.attention = nn.Linear(config.pooled_dim, 1, bias=False)
        self.projection = (nn.Linear(config.pooled_dim, config.content_embedding_dim)
                           if config.project_embedding else None)
        self.final_dropout = nn.Dropout(config.final_dropout)
        self.deep_head = nn.Linear(config.content_embedding_dim, num_labels)
        if config.wide_enabled:
            self.wide_embedding = nn.EmbeddingBag(config.wide_buckets, config.wide_dim, mode="sum", sparse=True)
            self.wide_head = nn.Linear(config.wide_dim, num_labels)
            nn.init.normal_(self.wide_embedding.weight, std=0.01)
        self.joint_norm: nn.BatchNorm1d | None = None
        self.joint_projection: nn.Linear | None = None
        self.joint_head: nn.Linear | None = None
        if config.embedding_source == "joint":
            joint_in = config.content_embedding_dim + (config.wide_dim if config.wide_enabled else 0)
            # Standardise the projection's input by its training statistics: the deep vector carries a
            # large component common to every post (LSTM and projection biases) which would otherwise
            # point every embedding the same way until training has removed it. momentum=None keeps an
            # exact running average, so short trainings centre as well as long ones.
            self.joint_norm = nn.BatchNorm1d(joint_in, affine=False, momentum=None)
            self.joint_projection = nn.Linear(joint_in, config.content_embedding_dim)
            self.joint_head = nn.Linear(config.content_embedding_dim, num_labels)
        # Post-hoc calibration for macro-F1, fitted on validation (see embeddings.training.tune_mixture);
        # until then the heads that exist count equally.
        present = torch.tensor([1.0, float(config.wide_enabled), float(self.joint_head is not None)])
        self.head_weights: torch.Tensor
        self.register_buffer("head_weights", present / present.sum())
        self.logit_bias: torch.Tensor
        self.register_buffer("logit_bias", torch.zeros(num_labels))
        nn.init.uniform_(self.token_embedding.weight, -0.1, 0.1)

    @property
    def device(self) -> torch.device:
        return self.deep_head.weight.device

    def pooled(self, batch: Batch) -> torch.Tensor:
        """Attention-pooled vector, float32 (B, pooled_dim)."""
        bsz, max_len = len(batch.lengths), int(batch.lengths.max())
        x = self.token_embedding(batch.token_rows, batch.token_offsets).view(bsz, max_len, -1)
        x = self.embed_dropout(torch.tanh(x))
        packed = pack_padded_sequence(x, batch.lengths, batch_first=True, enforce_sorted=False)
        out1, _ = self.lstm1(packed)
        out2, _ = self.lstm2(out1)
        h1, _ = pad_packed_sequence(out1, batch_first=True, total_length=max_len)
        h2, _ = pad_packed_sequence(out2, batch_first=True, total_length=max_len)
        states = torch.cat([x, h1, h2], dim=-1) if self.config.attention_over == "all_layers" else h2
        scores = self.attention(states).squeeze(-1)
        mask = torch.arange(max_len, device=scores.device)[None, :] < batch.lengths.to(scores.device)[:, None]
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), states).squeeze(1)

    def featurizer(self) -> TextFeaturizer:
        """This model's featuriser (its token memo is kept between calls)."""
        vocab = self.vocab
        if vocab is None:
            raise ValueError("model has no vocabulary attached: load it with load_content_model or set model.vocab")
        cached = getattr(self, "_featurizer", None)
        if cached is None or cached.vocab is not vocab:
            cached = self._featurizer = TextFeaturizer(vocab, self.config)
        return cached

    @property
    def embedding_head(self) -> nn.Linear:
        """The head that reads the content embedding (what transfer learning replaces)."""
        return self.joint_head if self.joint_head is not None else self.deep_head

    def forward(self, batch: Batch, deep_learns_from_joint: bool = False) -> dict[str, torch.Tensor]:
        """Logits of every head and the content embedding.

        Args:
            deep_learns_from_joint: let the joint head's gradient reach the deep path. Off while
                pre-training (the deep path learns from its own head, see below); on for fine-tuning,
                where the joint head is the only one trained.

        Returns:
            ``deep_logits`` (B, L), ``wide_logits`` (B, L) or None, ``joint_logits`` (B, L) or None,
            ``embedding_logits`` (B, L) (the head on the embedding: joint or deep),
            ``embedding`` float32 (B, content_embedding_dim).
        """
        pooled = self.pooled(batch)
        hidden = self.projection(pooled) if self.projection is not None else pooled
        deep_logits = self.deep_head(self.final_dropout(hidden))
        wide_logits = wide = None
        if self.config.wide_enabled:
            wide = self.wide_embedding(batch.wide_ids, batch.wide_offsets, per_sample_weights=batch.wide_weights)
            wide_logits = self.wide_head(self.final_dropout(wide))
        joint_logits = None
        if self.joint_norm is not None and self.joint_projection is not None and self.joint_head is not None:
            # By default the deep vector enters detached: it learns from its own head only, so the joint
            # head's gradient (large early on, while the wide features are the informative ones) does
            # not take the deep path's share of the clipped gradient norm and stall it.
            deep_in = hidden if deep_learns_from_joint else hidden.detach()
            joint_in = deep_in if wide is None else torch.cat([deep_in, wide], dim=-1)
            hidden = self.joint_projection(self.joint_norm(joint_in))
            # The head reads the direction of the embedding only (RMS-normalised: unit vector * sqrt(D)),
            # so training shapes exactly the cosine geometry that the exported, L2-normalised vectors
            # are searched by; the sqrt(D) scale keeps inputs O(1) per coordinate for a Linear head.
            direction = F.normalize(hidden, dim=-1) * hidden.shape[-1] ** 0.5
            joint_logits = self.joint_head(self.final_dropout(direction))
        embedding = F.normalize(hidden, dim=-1) if self.config.l2_normalize_embedding else hidden
        return {"deep_logits": deep_logits, "wide_logits": wide_logits, "joint_logits": joint_logits,
                "embedding_logits": deep_logits if joint_logits is None else joint_logits, "embedding": embedding}

    def combine(self, logits: Mapping[str, torch.Tensor | None], weights: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """Mixed log-probabilities of the heads plus the per-class bias: the scores predictions are made from.

        Args:
            logits: ``{deep,wide,joint}_logits`` (B, L) or None for a head the model lacks.
            weights: (3,) weights of deep, wide, joint (default: the fitted ``head_weights``).
            bias: (L,) (default: the fitted ``logit_bias``).
        """
        weights = self.head_weights if weights is None else weights
        scores: torch.Tensor | None = None
        for i, head in enumerate(HEADS):
            head_logits = logits.get(f"{head}_logits")
            if head_logits is not None:
                part = weights[i] * F.log_softmax(head_logits, dim=-1)
                scores = part if scores is None else scores + part
        assert scores is not None, "the deep head always exists"
        return scores + (self.logit_bias if bias is None else bias)


def build_content_model(config: ContentModelConfig, vocab_size: int, num_labels: int) -> ContentModel:
    """Randomly initialised model (seeded by ``config.seed``) for ``vocab_size`` words and ``num_labels``."""
    if num_labels < 2:
        raise ValueError(f"num_labels={num_labels}: a classifier needs at least 2 labels")
    torch.manual_seed(config.seed)
    return ContentModel(config, vocab_size, num_labels)


def save_content_model(model: ContentModel, vocab: Vocabulary, label_map: Sequence[str],
                       config: ContentModelConfig, directory: str) -> None:
    """Write the model artifact (weights, vocabulary, labels, config) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "vocab_size": len(vocab),
                "num_labels": model.num_labels, "state_dict": state}, os.path.join(directory, "model.pt"))
    save_vocabulary(vocab, os.path.join(directory, "vocab.json"))
    with open(os.path.join(directory, "labels.json"), "w", encoding="utf-8") as f:
        json.dump(list(label_map), f, ensure_ascii=False)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.model_dump_json(indent=2))


def load_content_model(directory: str, device: str | torch.device | None = None) -> ContentModel:
    """Load a model written by :func:`save_content_model`, in eval mode on ``device`` (default: auto).

    Raises:
        ValueError: if the files are missing or were written in another format version.
    """
    path = os.path.join(directory, "model.pt")
    if not os.path.isfile(path):
        raise ValueError(f"no content model at {directory!r}: expected {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a {MODEL_FORMAT} file")
    if blob.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path} has format_version={blob.get('format_version')!r}; this code reads "
                         f"version {MODEL_FORMAT_VERSION}: retrain the model or use a matching nearline version")
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        config = ContentModelConfig.model_validate_json(f.read())
    with open(os.path.join(directory, "labels.json"), encoding="utf-8") as f:
        labels = json.load(f)
    vocab = load_vocabulary(os.path.join(directory, "vocab.json"))
    # Built on the meta device: randomly initialising tables of millions of rows only to overwrite them
    # took longer than encoding a batch; the loaded tensors are assigned instead.
    with torch.device("meta"):
        model = ContentModel(config, int(blob["vocab_size"]), int(blob["num_labels"]))
    model.load_state_dict(blob["state_dict"], assign=True)
    model.vocab, model.labels = vocab, list(labels)
    return model.to(resolve_device(device)).eval()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` or, when None, cuda if available else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_for(config: ContentModelConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA when ``config.gpu_bf16_autocast`` (see there); a disabled no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda" and config.gpu_bf16_autocast)


@torch.no_grad()
def run_model(model: ContentModel, features: TextFeatures, batch_size: int = 512
              ) -> dict[str, np.ndarray]:
    """Forward ``features`` in length-sorted batches; outputs come back in input order.

    Returns:
        ``embedding`` float32 (N, D), ``scores`` float32 (N, L) (mixed log-probs + bias),
        ``deep_logits``, ``embedding_logits`` (N, L), and ``wide_logits`` / ``joint_logits`` (N, L)
        or None for a head the model lacks.
    """
    was_training = model.training
    model.eval()
    n = len(features)
    keys = ("deep_logits", "wide_logits", "joint_logits", "embedding_logits")
    out: dict[str, np.ndarray | None] = {
        "embedding": np.zeros((n, model.config.content_embedding_dim), dtype=np.float32),
        **{k: np.zeros((n, model.num_labels), dtype=np.float32) for k in keys}}
    # Sorting by length keeps padding (wasted LSTM steps) low; packing makes results batch-independent.
    order = np.argsort(features.tokens_per_text, kind="stable")
    for indices, batch in iterate_batches(features, batch_size, order):
        with autocast_for(model.config, model.device):
            result = model(batch.to(model.device))
        for key in ("embedding", *keys):
            if result[key] is None:
                out[key] = None
            else:
                out[key][indices] = result[key].float().cpu().numpy()  # type: ignore[index]
    logits = {k: torch.from_numpy(v) for k, v in out.items() if k in keys and v is not None}
    out["scores"] = model.combine(logits, model.head_weights.cpu(), model.logit_bias.cpu()).numpy()
    model.train(was_training)
    return out  # type: ignore[return-value]


@torch.no_grad()
def refresh_norm_statistics(model: ContentModel, features: TextFeatures, batch_size: int = 512,
                            max_texts: int = 50_000, seed: int = 0) -> None:
    """Recompute the joint projection's input statistics with the final weights (in place; no-op without it).

    During training the statistics average over batches seen with ever-changing weights, so at the end
    they no longer centre what the final model computes, and a common direction returns to every
    embedding. Call after training, on (a sample of up to ``max_texts`` of) the training texts.
    """
    if model.joint_norm is None or len(features) == 0:
        return
    was_training = model.training
    model.eval()
    model.joint_norm.reset_running_stats()
    # Only the norm layer in training mode: it then accumulates (momentum=None: an exact average over
    # the batches) while dropout elsewhere stays off, as at export time.
    model.joint_norm.train()
    order = np.random.default_rng(seed).permutation(len(features))[:max_texts]
    for _, batch in iterate_batches(features, batch_size, np.sort(order)):
        model(batch.to(model.device))
    model.train(was_training)


def encode_texts(model: ContentModel, texts: Sequence[str | bytes], batch_size: int = 512) -> np.ndarray:
    """Content embeddings of ``texts`` (str, or UTF-8 bytes decoded with replacement).

    Returns:
        float32 array of shape (N, content_embedding_dim); rows are unit-norm when configured.
    """
    if len(texts) == 0:
        return np.zeros((0, model.config.content_embedding_dim), dtype=np.float32)
    features = model.featurizer()(texts)
    return run_model(model, features, batch_size)["embedding"]


def predict_proba(model: ContentModel, texts: Sequence[str | bytes], batch_size: int = 512) -> np.ndarray:
    """Label probabilities (softmax of the mixed, bias-corrected scores), float32 (N, num_labels)."""
    if len(texts) == 0:
        return np.zeros((0, model.num_labels), dtype=np.float32)
    scores = run_model(model, model.featurizer()(texts), batch_size)["scores"]
    return torch.softmax(torch.from_numpy(scores), dim=-1).numpy()


def encode_batches(model_dir: str, batches: Iterator[pd.DataFrame], batch_size: int = 512,
                   device: str | torch.device | None = None) -> Iterator[pd.DataFrame]:
    """Per-partition export function (for mapInPandas): loads the model once, encodes every batch.

    Args:
        model_dir: a directory written by :func:`save_content_model`.
        batches: pandas DataFrames with ``post_id`` (int64) and ``text`` (str; null -> empty post).

    Yields:
        DataFrames with ``post_id`` int64 and ``vector`` (one float32 array of content_embedding_dim per row).
    """
    model = load_content_model(model_dir, device)
    # A Spark task owns one core; torch's default (all cores) would oversubscribe the executor.
    torch.set_num_threads(model.config.num_threads)
    for batch in batches:
        missing = {"post_id", "text"} - set(batch.columns)
        if missing:
            raise ValueError(f"encode_batches: batch lacks column(s) {sorted(missing)}; expected post_id, text")
        vectors = encode_texts(model, batch["text"].fillna("").tolist(), batch_size=batch_size)
        yield pd.DataFrame({"post_id": batch["post_id"].to_numpy(dtype=np.int64), "vector": list(vectors)})
