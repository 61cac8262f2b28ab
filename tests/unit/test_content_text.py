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


AWKWARD = ["Good MORNING!!! sooo happy 😂😂 #blessed @bob http://x.co/1 at 10:30pm",
           "a 👨‍👩‍👧 b \u200d c 👍\u200d👍 #\u20e3 1\ufe0f\u20e3 x", "café naïve 東京 ©® 2023 #1 *ok*",
           "🇫🇷🇩🇪 flags and 👍🏽 tones", "\x00\x1fctl\u2028x", "", "🔥", "unseen zzqqxx words xyzzy",
           b"bytes \xff\xfe bad utf8", "ab " * 50]


def test_emoji_stripping_matches_the_emoji_package_on_whole_texts():
    import emoji

    from embeddings.text import fold_emoji_variants

    for text in AWKWARD:
        assert strip_emojis(text) == emoji.replace_emoji(fold_emoji_variants(text), replace=" "), text


@pytest.mark.parametrize("word_ngrams", [1, 2, 3])
def test_featurizer_gives_the_ids_of_the_reference_definitions(word_ngrams):
    import numpy as np

    from embeddings.config import ContentModelConfig
    from embeddings.content_encoder import TextFeaturizer

    config = ContentModelConfig(vocab_size=20, min_count=1, max_len_tokens=6, subword_buckets=97,
                                wide_buckets=1009, wide_word_ngrams=word_ngrams)
    vocab = build_vocabulary(AWKWARD[:3], config.vocab_size, 1, config.subword_buckets)
    featurizer = TextFeaturizer(vocab, config)
    for texts in (AWKWARD, AWKWARD[::-1]):  # the second call reuses the memo
        features = featurizer(texts)
        bags = [[vocab.token_bag(t) for t in tokenize(x)[:6]] or [vocab.token_bag(EMPTY)] for x in texts]
        assert features.tokens_per_text.tolist() == [len(b) for b in bags]
        assert features.bag_sizes.tolist() == [len(bag) for text_bags in bags for bag in text_bags]
        assert features.token_rows.tolist() == [row for text_bags in bags for bag in text_bags for row in bag]
        wide = [wide_feature_ids(tokenize(x), 1009, word_ngrams, 3, 5) for x in texts]
        assert features.wide_per_text.tolist() == [len(w) for w in wide]
        assert features.wide_ids.tolist() == [i for w in wide for i in w]
    no_wide = TextFeaturizer(vocab, config.model_copy(update={"wide_enabled": False}))(AWKWARD)
    assert len(no_wide.wide_ids) == 0 and no_wide.wide_per_text.tolist() == [0] * len(AWKWARD)
    assert np.array_equal(no_wide.token_rows, featurizer(AWKWARD).token_rows)
