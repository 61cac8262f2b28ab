"""Deterministic text preprocessing, emoji handling and the vocabulary of the content model.

Behaviour on awkward input (documented, tested):

* ``bytes`` are decoded as UTF-8 with ``errors="replace"``; the resulting U+FFFD characters, control
  characters and stray variation selectors (U+FE0E/U+FE0F, left behind when emojis were removed
  upstream, as in TweetEval) are dropped.
* Texts longer than :data:`MAX_TEXT_CHARS` characters are cut to that length before preprocessing;
  the deep path then reads the first ``max_len_tokens`` tokens.
* Empty and emoji-only posts tokenise to ``[]``; :meth:`Vocabulary.encode` turns that into the single
  ``<empty>`` token so every post gets a finite, deterministic embedding.

Nothing here depends on global state: the same text always gives the same tokens and ids, across
processes and machines (hashing uses CRC32, not Python's salted ``hash``).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import emoji
import numpy as np

MAX_TEXT_CHARS = 2_000
VOCAB_FORMAT = "nearline-content-vocab"
VOCAB_FORMAT_VERSION = 1

PAD, UNK, EMPTY = "<pad>", "<unk>", "<empty>"
SPECIAL_TOKENS = (PAD, UNK, EMPTY, "<url>", "<user>", "<number>")

# Skin-tone modifiers U+1F3FB-U+1F3FF, variation selectors, U+FFFD. A regex: str.translate with a
# dict looks every character up, which cost more than the rest of preprocessing together.
_FOLD = re.compile("[\U0001F3FB-\U0001F3FF\ufe0e\ufe0f\ufffd]+")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_MENTION = re.compile(r"@\w+")
_NUMBER = re.compile(r"(?<![\w])\d+(?:[.,:/]\d+)*(?:st|nd|rd|th|am|pm|k|s)?(?![\w])")
_ELONGATION = re.compile(r"(.)\1{2,}")
_TOKEN = re.compile(r"<(?:url|user|number)>|#?\w+(?:'\w+)?|[^\w\s]+")
_CONTROL_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
# ZWJ (U+200D) is category Cf but joins emoji sequences; keep it until emojis are handled.
_KEEP_FORMAT = {"\u200d"}


def to_text(text: str | bytes) -> str:
    """Return ``text`` as ``str``; bytes are decoded as UTF-8 with invalid sequences replaced.

    Raises:
        TypeError: if ``text`` is neither ``str`` nor ``bytes``.
    """
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    if isinstance(text, str):
        return text
    raise TypeError(f"expected str or bytes text, got {type(text).__name__}: {text!r:.80}")


def fold_emoji_variants(text: str | bytes) -> str:
    """Remove skin-tone modifiers, variation selectors and U+FFFD so emoji variants compare equal."""
    text = to_text(text)[:MAX_TEXT_CHARS]
    return text if text.isascii() else _FOLD.sub("", text)


def extract_emojis(text: str | bytes) -> list[str]:
    """Distinct emojis of ``text`` (folded: no skin tones or variation selectors), in order of first use.

    Example: ``extract_emojis("so good 👍🏽👍 ❤️")`` returns ``["👍", "❤"]``.
    """
    seen: dict[str, None] = {}
    for match in emoji.emoji_list(fold_emoji_variants(text)):
        seen.setdefault(match["emoji"], None)
    return list(seen)


# Runs that may hold an emoji: every character of every emoji sequence is '#', '*', a digit or at
# or above U+00A9, and a sequence needs one of the latter (a keycap needs U+20E3). A superset with
# few ranges keeps the scan fast; runs without an actual emoji character are left as they are.
_EMOJI_CANDIDATES = re.compile("[#*0-9\u00a9-\U0010ffff]*[\u00a9-\U0010ffff][#*0-9\u00a9-\U0010ffff]*")


@functools.lru_cache(maxsize=1)
def _emoji_chars() -> frozenset[str]:
    """Every character that occurs in some emoji sequence (built once, on first use)."""
    return frozenset(ch for sequence in emoji.EMOJI_DATA for ch in sequence)


def _replace_run(run: re.Match[str]) -> str:
    text = run.group()
    return emoji.replace_emoji(text, replace=" ") if not _emoji_chars().isdisjoint(text) else text


def _replace_emoji_runs(folded: str) -> str:
    # No emoji match can span a character that belongs to no emoji, so running the emoji package's
    # matcher on runs that end at such characters gives exactly its result on the whole text, while
    # its per-character Python loop only sees the (short) runs that hold emoji.
    return folded if folded.isascii() else _EMOJI_CANDIDATES.sub(_replace_run, folded)


def strip_emojis(text: str | bytes) -> str:
    """``text`` without any emoji (including skin tones, variation selectors and ZWJ sequences)."""
    return _replace_emoji_runs(fold_emoji_variants(text))


def preprocess(text: str | bytes) -> str:
    """Normalise a post: NFKC, lower case, ``<url>``/``<user>``/``<number>`` tokens, elongations squeezed.

    Emojis are kept (folded); the model input drops them with :func:`strip_emojis` first.
    Elongated runs of three or more of a character become two ("soooo" -> "soo", "!!!!" -> "!!").
    """
    return _normalise(fold_emoji_variants(text))


class _ControlToSpace(dict):
    """str.translate table: control/format/unassigned characters -> space, others unchanged.

    Filled on demand, so translate runs in C and each distinct character is classified once.
    """

    def __missing__(self, codepoint: int) -> str:
        ch = chr(codepoint)
        value = " " if (unicodedata.category(ch) in _CONTROL_CATEGORIES and ch not in _KEEP_FORMAT) else ch
        self[codepoint] = value
        return value


_CONTROL_TO_SPACE = _ControlToSpace()


def _normalise(folded: str) -> str:
    """:func:`preprocess` of a text already passed through :func:`fold_emoji_variants`."""
    normalised = unicodedata.normalize("NFKC", folded).lower()
    cleaned = normalised.translate(_CONTROL_TO_SPACE)
    cleaned = _URL.sub(" <url> ", cleaned)
    cleaned = _MENTION.sub(" <user> ", cleaned)
    cleaned = _NUMBER.sub(" <number> ", cleaned)
    cleaned = _ELONGATION.sub(r"\1\1", cleaned)
    return " ".join(cleaned.split())


def tokenize(text: str | bytes) -> list[str]:
    """Tokens of the emoji-free, preprocessed post (words, ``#hashtags``, punctuation runs, specials)."""
    # strip_emojis output is already folded and no longer than MAX_TEXT_CHARS: folding again is a no-op.
    return _TOKEN.findall(_normalise(strip_emojis(text)))


def stable_hash(value: str) -> int:
    """Process-independent 32-bit hash of a string (CRC32 of its UTF-8 bytes)."""
    return zlib.crc32(value.encode("utf-8"))


def char_ngrams(token: str, n_min: int, n_max: int) -> list[str]:
    """Char n-grams of ``<token>`` (with boundary markers), as fastText."""
    marked = f"<{token}>"
    return [marked[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(marked) - n + 1)]


@functools.lru_cache(maxsize=1)
def _crc32_table() -> np.ndarray:
    """The byte table of CRC-32 (reflected polynomial 0xEDB88320, as zlib), uint32 (256,)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


def _crc32_rows(data: np.ndarray, value: int) -> np.ndarray:
    """``zlib.crc32(row, value)`` of every row of ``data`` (uint8 (M, n)), vectorised: uint32 (M,)."""
    table = _crc32_table()
    crc = np.full(len(data), value ^ 0xFFFFFFFF, dtype=np.uint32)
    for k in range(data.shape[1]):
        crc = table[(crc ^ data[:, k]) & 0xFF] ^ (crc >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` of each pair: int64 (sum(lengths),)."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(int(ends[-1]) if len(ends) else 0)


def hash_char_ngrams(tokens: list[str], n_min: int, n_max: int, num_buckets: int, prefix: str = ""
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``[stable_hash(prefix + g) % num_buckets for g in char_ngrams(token, n_min, n_max)]`` of every token.

    Vectorised: the CRC32 of all n-grams of ASCII tokens (where a char is a byte) runs as numpy over
    byte windows, one pass per n; other tokens are hashed one n-gram at a time.

    Returns:
        (int64 (sum of counts,) the ids token after token, int64 (len(tokens),) the count per token).
    """
    start = zlib.crc32(prefix.encode())
    marked = [f"<{t}>" for t in tokens]
    lengths = np.array([len(m) for m in marked], dtype=np.int64)
    ascii_rows = np.array([m.isascii() for m in marked], dtype=bool)
    sizes = range(n_min, n_max + 1)
    windows = np.stack([np.maximum(lengths - n + 1, 0) for n in sizes]) if len(tokens) else np.zeros((len(sizes), 0), np.int64)
    counts = windows.sum(axis=0)
    out = np.empty(int(counts.sum()), dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    if ascii_rows.any():
        flat = np.frombuffer("".join(m for m, a in zip(marked, ascii_rows, strict=True) if a).encode(), dtype=np.uint8)
        token_starts = np.cumsum(lengths[ascii_rows]) - lengths[ascii_rows]
        block = offsets[ascii_rows].copy()
        for n, per_token in zip(sizes, windows[:, ascii_rows], strict=True):
            first = concat_ranges(token_starts, per_token)
            crc = _crc32_rows(flat[first[:, None] + np.arange(n)], start)
            out[concat_ranges(block, per_token)] = crc % num_buckets
            block += per_token
    for i in np.flatnonzero(~ascii_rows):
        out[offsets[i]: offsets[i] + counts[i]] = [
            zlib.crc32(g.encode(), start) % num_buckets for g in char_ngrams(tokens[i], n_min, n_max)]
    return out, counts


def wide_feature_ids(
    tokens: list[str], num_buckets: int, word_ngrams: int, char_min: int, char_max: int
) -> list[int]:
    """Hashed word 1..``word_ngrams``-grams and char ``char_min``..``char_max``-grams of a token list.

    The definition of the wide path's features; ``embeddings.content_encoder.TextFeaturizer`` computes
    the same ids faster (tested equal).

    Returns:
        Bucket ids in ``[0, num_buckets)``: word n-grams in order (n = 1, 2, ...), then the char n-grams
        of each distinct non-special token in order of first use. Never empty (an empty post hashes
        its ``<empty>`` marker).
    """
    if not tokens:
        tokens = [EMPTY]
    features = [f"w{n}:" + " ".join(tokens[i : i + n]) for n in range(1, word_ngrams + 1)
                for i in range(len(tokens) - n + 1)]
    for token in dict.fromkeys(tokens):
        if not token.startswith("<"):
            features.extend("c:" + g for g in char_ngrams(token, char_min, char_max))
    return [stable_hash(f) % num_buckets for f in features]


@dataclass(frozen=True)
class Vocabulary:
    """Word list (specials first) plus the hashed char n-gram fallback for words outside it.

    Attributes:
        words: index -> word; ``words[0]`` is ``<pad>``, ``words[1]`` ``<unk>``.
        subword_buckets: number of hash buckets of the fallback.
    """

    words: tuple[str, ...]
    subword_buckets: int
    subword_min: int = 3
    subword_max: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    @property
    def num_embeddings(self) -> int:
        """Rows of the token embedding table: the words then the fallback buckets."""
        return len(self.words) + self.subword_buckets

    def word_id(self, token: str) -> int | None:
        """The row of ``token`` when it is in the word list, else None."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return index.get(token)

    def token_bag(self, token: str) -> list[int]:
        """Embedding rows whose mean embeds ``token``: its word id, or its hashed char n-grams if unseen."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        word_id = index.get(token)
        if word_id is not None:
            return [word_id]
        offset = len(self.words)
        return [offset + stable_hash(g) % self.subword_buckets
                for g in char_ngrams(token, self.subword_min, self.subword_max)] or [index[UNK]]

    def encode(self, text: str | bytes, max_len: int) -> list[list[int]]:
        """Embedding-row bags of the first ``max_len`` tokens of ``text`` (``[[id(<empty>)]]`` if none)."""
        tokens = tokenize(text)[:max_len] or [EMPTY]
        return [self.token_bag(t) for t in tokens]

    def to_json(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "format_version": VOCAB_FORMAT_VERSION,
            "subword_buckets": self.subword_buckets,
            "subword_min": self.subword_min,
            "subword_max": self.subword_max,
            "words": list(self.words),
        }

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        if data.get("format") != VOCAB_FORMAT or data.get("format_version") != VOCAB_FORMAT_VERSION:
            raise ValueError(
                f"not a {VOCAB_FORMAT} v{VOCAB_FORMAT_VERSION} vocabulary: format={data.get('format')!r} "
                f"format_version={data.get('format_version')!r}"
            )
        return cls(tuple(data["words"]), int(data["subword_buckets"]), int(data["subword_min"]),
                   int(data["subword_max"]))


def build_vocabulary(
    texts: Iterable[str | bytes], vocab_size: int, min_count: int, subword_buckets: int
) -> Vocabulary:
    """Vocabulary of the ``vocab_size`` most frequent tokens seen at least ``min_count`` times.

    Ties break alphabetically so the result does not depend on corpus order.
    """
    counts = Counter(t for text in texts for t in tokenize(text))
    ranked = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
                    key=lambda w: (-counts[w], w))
    return Vocabulary(SPECIAL_TOKENS + tuple(ranked[: max(0, vocab_size - len(SPECIAL_TOKENS))]),
                      subword_buckets)


def save_vocabulary(vocab: Vocabulary, path: str) -> None:
    """Write ``vocab`` as JSON to ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(vocab.to_json(), f, ensure_ascii=False)


def load_vocabulary(path: str) -> Vocabulary:
    """Read a vocabulary written by :func:`save_vocabulary`.

    Raises:
        ValueError: if the file is not a vocabulary of this format version.
    """
    with open(path, encoding="utf-8") as f:
        return Vocabulary.from_json(json.load(f))
