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

import json
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import emoji

MAX_TEXT_CHARS = 2_000
VOCAB_FORMAT = "nearline-content-vocab"
VOCAB_FORMAT_VERSION = 1

PAD, UNK, EMPTY = "<pad>", "<unk>", "<empty>"
SPECIAL_TOKENS = (PAD, UNK, EMPTY, "<url>", "<user>", "<number>")

_SKIN_TONES = "".join(chr(c) for c in range(0x1F3FB, 0x1F400))
_FOLD_TABLE = {ord(c): None for c in _SKIN_TONES + "\ufe0e\ufe0f\ufffd"}
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
    return to_text(text)[:MAX_TEXT_CHARS].translate(_FOLD_TABLE)


def extract_emojis(text: str | bytes) -> list[str]:
    """Distinct emojis of ``text`` (folded: no skin tones or variation selectors), in order of first use.

    Example: ``extract_emojis("so good 👍🏽👍 ❤️")`` returns ``["👍", "❤"]``.
    """
    seen: dict[str, None] = {}
    for match in emoji.emoji_list(fold_emoji_variants(text)):
        seen.setdefault(match["emoji"], None)
    return list(seen)


def strip_emojis(text: str | bytes) -> str:
    """``text`` without any emoji (including skin tones, variation selectors and ZWJ sequences)."""
    return emoji.replace_emoji(fold_emoji_variants(text), replace=" ")


def preprocess(text: str | bytes) -> str:
    """Normalise a post: NFKC, lower case, ``<url>``/``<user>``/``<number>`` tokens, elongations squeezed.

    Emojis are kept (folded); the model input drops them with :func:`strip_emojis` first.
    Elongated runs of three or more of a character become two ("soooo" -> "soo", "!!!!" -> "!!").
    """
    folded = fold_emoji_variants(text)
    normalised = unicodedata.normalize("NFKC", folded).lower()
    cleaned = "".join(
        " " if (unicodedata.category(ch) in _CONTROL_CATEGORIES and ch not in _KEEP_FORMAT) else ch
        for ch in normalised
    )
    cleaned = _URL.sub(" <url> ", cleaned)
    cleaned = _MENTION.sub(" <user> ", cleaned)
    cleaned = _NUMBER.sub(" <number> ", cleaned)
    cleaned = _ELONGATION.sub(r"\1\1", cleaned)
    return " ".join(cleaned.split())


def tokenize(text: str | bytes) -> list[str]:
    """Tokens of the emoji-free, preprocessed post (words, ``#hashtags``, punctuation runs, specials)."""
    return _TOKEN.findall(preprocess(strip_emojis(text)))


def stable_hash(value: str) -> int:
    """Process-independent 32-bit hash of a string (CRC32 of its UTF-8 bytes)."""
    return zlib.crc32(value.encode("utf-8"))


def char_ngrams(token: str, n_min: int, n_max: int) -> list[str]:
    """Char n-grams of ``<token>`` (with boundary markers), as fastText."""
    marked = f"<{token}>"
    return [marked[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(marked) - n + 1)]


def wide_feature_ids(
    tokens: list[str], num_buckets: int, word_ngrams: int, char_min: int, char_max: int
) -> list[int]:
    """Hashed word 1..``word_ngrams``-grams and char ``char_min``..``char_max``-grams of a token list.

    Returns:
        Bucket ids in ``[0, num_buckets)``; never empty (an empty post hashes its ``<empty>`` marker).
    """
    if not tokens:
        tokens = [EMPTY]
    features = [f"w{n}:" + " ".join(tokens[i : i + n]) for n in range(1, word_ngrams + 1)
                for i in range(len(tokens) - n + 1)]
    for token in set(tokens):
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
