"""Preprocessing, emoji folding and the vocabulary of the content model."""

from __future__ import annotations

import pytest

from embeddings.text import (
    EMPTY,
    MAX_TEXT_CHARS,
    UNK,
    build_vocabulary,
    extract_emojis,
    load_vocabulary,
    preprocess,
    save_vocabulary,
    stable_hash,
    strip_emojis,
    tokenize,
    wide_feature_ids,
)


def test_preprocess_normalises_urls_mentions_numbers_and_elongations():
    text = "Soooo HAPPY!!!! @Alice_1 see https://t.co/abc at 5pm, 12,000 fans"
    assert preprocess(text) == "soo happy!! <user> see <url> at <number> , <number> fans"


def test_tokenize_is_deterministic_and_drops_emojis_and_stray_selectors():
    text = "Love it \ufe0f \ufe0f 😂👍🏽 #Blessed :)"
    assert tokenize(text) == ["love", "it", "#blessed", ":)"]
    assert tokenize(text) == tokenize(text)


def test_extract_emojis_folds_skin_tones_and_variation_selectors():
    assert extract_emojis("so good 👍🏽👍 ❤️ ❤ 👍🏿") == ["👍", "❤"]
    assert extract_emojis("no emoji here") == []


def test_strip_emojis_removes_zwj_sequences_and_flags():
    assert strip_emojis("a👨‍👩‍👧b🇺🇸c❤️d").replace(" ", "") == "abcd"


@pytest.mark.parametrize("text", ["", "   ", "😂👍🏽❤️", "\ufe0f\ufe0f"])
def test_empty_and_emoji_only_posts_tokenise_to_nothing_and_encode_as_empty(text):
    assert tokenize(text) == []
    vocab = build_vocabulary(["a b c"], vocab_size=100, min_count=1, subword_buckets=16)
    assert vocab.encode(text, max_len=10) == [[vocab.words.index(EMPTY)]]


def test_non_utf8_bytes_are_decoded_with_replacement():
    assert tokenize(b"caf\xe9 ok \xff\xfe") == ["caf", "ok"]
    assert tokenize("café ok".encode()) == ["café", "ok"]


def test_long_posts_are_cut_and_truncated_to_max_len():
    text = "word " * 5000  # 25,000 characters
    assert len(tokenize(text)) == MAX_TEXT_CHARS // 5
    vocab = build_vocabulary(["word"], vocab_size=100, min_count=1, subword_buckets=16)
    assert len(vocab.encode(text, max_len=30)) == 30


def test_non_text_input_is_rejected():
    with pytest.raises(TypeError, match="expected str or bytes"):
        tokenize(123)  # type: ignore[arg-type]


def test_vocabulary_is_frequency_ranked_and_order_independent():
    corpus = ["b b a", "c b a", "d"]
    vocab = build_vocabulary(corpus, vocab_size=100, min_count=2, subword_buckets=16)
    assert [w for w in vocab.words if not w.startswith("<")] == ["b", "a"]
    assert build_vocabulary(corpus[::-1], 100, 2, 16) == vocab


def test_unseen_words_fall_back_to_hashed_char_ngrams(tmp_path):
    vocab = build_vocabulary(["hello world"], vocab_size=100, min_count=1, subword_buckets=64)
    known = vocab.token_bag("hello")
    assert known == [vocab.words.index("hello")]
    unseen = vocab.token_bag("helloo")
    assert len(unseen) > 1 and all(len(vocab) <= i < vocab.num_embeddings for i in unseen)
    # a near-spelling shares sub-word rows with another unseen near-spelling
    assert set(unseen) & set(vocab.token_bag("hellooo"))
    assert UNK in vocab.words

    path = tmp_path / "vocab.json"
    save_vocabulary(vocab, str(path))
    loaded = load_vocabulary(str(path))
    assert loaded == vocab
    assert loaded.encode("hello helloo", 10) == vocab.encode("hello helloo", 10)


def test_vocabulary_of_another_format_is_refused(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"format": "nearline-content-vocab", "format_version": 99, "words": []}')
    with pytest.raises(ValueError, match="format_version=99"):
        load_vocabulary(str(path))


def test_hashing_and_wide_features_are_stable():
    assert stable_hash("abc") == 891568578  # CRC32: identical in every process
    ids = wide_feature_ids(["good", "day"], 1024, 2, 3, 5)
    assert ids == wide_feature_ids(["good", "day"], 1024, 2, 3, 5)
    assert all(0 <= i < 1024 for i in ids)
    assert len(wide_feature_ids([], 1024, 2, 3, 5)) == 1
