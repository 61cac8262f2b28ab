"""Metrics, calibration, training and transfer of the content model on tiny synthetic tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from embeddings.config import ContentModelConfig
from embeddings.content_encoder import encode_texts
from embeddings.training import (
    chain_thaw,
    class_weights,
    classification_metrics,
    macro_f1,
    train_content_model,
    tune_logit_bias,
)


def test_metrics_on_a_hand_example():
    y_true = np.array([0, 0, 1, 2])
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.7, 0.2], [0.0, 0.4, 0.6]])
    metrics = classification_metrics(y_true, scores)
    # predictions 0,1,1,2: F1 class0 = 2/3, class1 = 2/3, class2 = 1
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["top5_accuracy"] == 1.0
    with pytest.raises(ValueError, match="3 labels but 4"):
        classification_metrics(y_true[:3], scores)


def test_macro_f1_matches_sklearn(rng):
    y_true, y_pred = rng.integers(0, 7, 500), rng.integers(0, 6, 500)
    assert macro_f1(y_true, y_pred, 7) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_logit_bias_recovers_a_suppressed_class(rng):
    y = rng.integers(0, 3, 600)
    scores = np.eye(3)[y] + rng.normal(0, 0.3, (600, 3))
    scores[:, 2] -= 2.0  # class 2 is never predicted without a correction
    before = macro_f1(y, scores.argmax(1), 3)
    bias = tune_logit_bias(scores, y)
    assert bias[2] - bias[:2].mean() > 1.0
    assert macro_f1(y, (scores + bias).argmax(1), 3) > before + 0.2


def test_class_weights_schemes():
    labels = np.array([0] * 90 + [1] * 10)
    sqrt = class_weights(labels, 2, "sqrt").numpy()
    balanced = class_weights(labels, 2, "balanced").numpy()
    assert sqrt[1] / sqrt[0] == pytest.approx(3.0)
    assert balanced[1] / balanced[0] == pytest.approx(9.0)
    assert class_weights(labels, 2, "none").numpy().tolist() == [1.0, 1.0]


WORDS = {0: ["sun", "beach", "summer"], 1: ["rain", "cold", "grey"], 2: ["cake", "party", "birthday"]}


def synthetic_task(rng: np.random.Generator, n: int):
    labels = rng.integers(0, 3, n)
    filler = ["the", "a", "today", "so", "very", "we", "it"]
    texts = [" ".join(rng.choice(WORDS[int(y)], 2).tolist() + rng.choice(filler, 4).tolist()) for y in labels]
    return texts, labels


def tiny_train_config(**overrides) -> ContentModelConfig:
    base = dict(vocab_size=100, min_count=1, max_len_tokens=10, subword_buckets=64, embedding_dim=16,
                lstm_hidden=12, content_embedding_dim=8, wide_buckets=512, wide_dim=8, epochs=6, batch_size=32,
                learning_rate=1e-2, wide_learning_rate=2e-2, early_stopping_patience=6, num_threads=1, seed=1)
    return ContentModelConfig(**{**base, **overrides})


def test_training_reduces_loss_and_learns_a_synthetic_task(rng, tmp_path):
    train_texts, train_y = synthetic_task(rng, 300)
    val_texts, val_y = synthetic_task(rng, 90)
    result = train_content_model(tiny_train_config(), train_texts, train_y, val_texts, val_y,
                                 ["sun", "rain", "cake"], str(tmp_path), device="cpu")
    history = result.metrics["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert result.metrics["val"]["macro_f1"] > 0.9
    assert max(h["val_deep_macro_f1"] for h in history) > 0.9  # the deep path learns on its own
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["best_epoch"] == result.metrics["best_epoch"]
    assert (tmp_path / "training_curve.png").stat().st_size > 0
    vectors = encode_texts(result.model, ["sun beach", "rain cold"])
    assert vectors.shape == (2, 8)


def test_unknown_labels_are_rejected(rng, tmp_path):
    texts, y = synthetic_task(rng, 20)
    with pytest.raises(ValueError, match="label 5 outside"):
        train_content_model(tiny_train_config(epochs=1), texts, np.full(20, 5), texts, y, ["a", "b", "c"],
                            str(tmp_path))


def test_chain_thaw_adapts_to_a_new_task(rng, tmp_path):
    train_texts, train_y = synthetic_task(rng, 200)
    val_texts, val_y = synthetic_task(rng, 60)
    pretrained = train_content_model(tiny_train_config(wide_enabled=False), train_texts, train_y, val_texts, val_y,
                                     ["sun", "rain", "cake"], str(tmp_path), device="cpu").model
    # new binary task: is it about weather (sun/rain) or not
    new_train, new_val = (train_y < 2).astype(np.int64), (val_y < 2).astype(np.int64)
    tuned, report = chain_thaw(pretrained, train_texts, new_train, val_texts, new_val, ["other", "weather"],
                               max_epochs_per_stage=8, patience=3, head_lr=1e-2, layer_lr=1e-3, batch_size=16, device="cpu")
    assert tuned.num_labels == 2 and pretrained.num_labels == 3
    stages = report["val_accuracy_by_stage"]
    # layer4: the joint projection (and its input norm) that makes the content embedding
    assert list(stages) == ["head", "layer0", "layer1", "layer2", "layer3", "layer4", "head_again", "all"]
    assert stages["all"] >= stages["head"] and stages["all"] > 0.9


def test_training_resumes_from_its_checkpoint_exactly(rng, tmp_path, monkeypatch):
    import embeddings.training as training

    train_texts, train_y = synthetic_task(rng, 120)
    val_texts, val_y = synthetic_task(rng, 30)
    config = tiny_train_config(epochs=3, batch_size=16, early_stopping_patience=3)
    args = (config, train_texts, train_y, val_texts, val_y, ["sun", "rain", "cake"])
    straight = train_content_model(*args, str(tmp_path / "straight"), device="cpu").model

    # A "kill" in the middle of epoch 2 (step 12 of 8 per epoch): the last checkpoint (step 10) survives.
    real_lr_factor = training._lr_factor

    def dies_at_step_12(schedule: str, step: int, total: int) -> float:
        if step == 12:  # steps count from 0: 12 steps are done
            raise KeyboardInterrupt("killed")
        return real_lr_factor(schedule, step, total)

    monkeypatch.setattr(training, "_lr_factor", dies_at_step_12)
    with pytest.raises(KeyboardInterrupt):
        train_content_model(*args, str(tmp_path / "resumed"), device="cpu", checkpoint_every_steps=5)
    monkeypatch.setattr(training, "_lr_factor", real_lr_factor)
    saved = training.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert (saved["epoch"], saved["step"]) == (2, 10)

    resumed = train_content_model(*args, str(tmp_path / "resumed"), device="cpu", checkpoint_every_steps=5).model
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_resuming_refuses_corrupt_or_foreign_checkpoints(rng, tmp_path):
    texts, y = synthetic_task(rng, 40)
    args = (tiny_train_config(epochs=1), texts, y, texts, y, ["sun", "rain", "cake"])
    (tmp_path / "checkpoint.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match="corrupt or unreadable.*delete it"):
        train_content_model(*args, str(tmp_path), device="cpu", checkpoint_every_steps=1)
    (tmp_path / "checkpoint.pt").unlink()
    train_content_model(*args, str(tmp_path), device="cpu", checkpoint_every_steps=1)
    other = (tiny_train_config(epochs=1, seed=2), *args[1:])
    with pytest.raises(ValueError, match="another training run.*config"):
        train_content_model(*other, str(tmp_path), device="cpu", checkpoint_every_steps=1)


def test_training_starts_from_a_pretrained_model_and_refuses_a_mismatch(rng, tmp_path):
    from embeddings.text import build_vocabulary

    texts, y = synthetic_task(rng, 150)
    pretrained = train_content_model(tiny_train_config(epochs=2), texts, y, texts, y, ["sun", "rain", "cake"],
                                     str(tmp_path / "pre"), device="cpu").model
    binary = (y < 2).astype(np.int64)
    result = train_content_model(tiny_train_config(epochs=1), texts, binary, texts, binary, ["other", "weather"],
                                 str(tmp_path / "fine"), device="cpu", init_model=pretrained)
    assert result.model.vocab == pretrained.vocab
    copied = result.metrics["initialised_from"]["copied"]
    assert "lstm1.weight_ih_l0" in copied and not any(k.startswith(("deep_head", "joint_head")) for k in copied)
    with pytest.raises(ValueError, match="lstm_hidden=16 in the config but 12 in the model"):
        train_content_model(tiny_train_config(lstm_hidden=16), texts, y, texts, y, ["a", "b", "c"],
                            str(tmp_path / "x"), device="cpu", init_model=pretrained)
    with pytest.raises(ValueError, match="vocabulary mismatch.*vocab_size=50"):
        train_content_model(tiny_train_config(vocab_size=50), texts, y, texts, y, ["a", "b", "c"],
                            str(tmp_path / "x"), device="cpu", init_model=pretrained)
    other_vocab = build_vocabulary(["entirely different words"], 100, 1, 64)
    with pytest.raises(ValueError, match="vocabulary mismatch.*not the pre-trained model's"):
        train_content_model(tiny_train_config(), texts, y, texts, y, ["a", "b", "c"], str(tmp_path / "x"),
                            device="cpu", init_model=pretrained, vocab=other_vocab)


def multilabel_task(rng: np.random.Generator, n: int):
    """Texts holding words of one to three of the WORDS classes; the label row marks which."""
    labels = (rng.random((n, 3)) < 0.4).astype(np.int64)
    labels[labels.sum(axis=1) == 0, rng.integers(0, 3)] = 1
    filler = ["the", "a", "today", "so", "we"]
    texts = [" ".join([w for k in np.flatnonzero(row) for w in rng.choice(WORDS[int(k)], 2).tolist()]
                      + rng.choice(filler, 3).tolist()) for row in labels]
    return texts, labels


def test_class_average_f1_and_thresholds_on_a_hand_example():
    from embeddings.training import class_average_f1, tune_thresholds

    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = np.array([[2.0, -1.0], [0.5, 0.2], [-1.0, 0.1], [-2.0, -0.5]])
    assert class_average_f1(truth, scores) == pytest.approx(1.0)
    assert class_average_f1(truth, scores, 1.0) == pytest.approx((2 / 3 + 0) / 2)
    thresholds = tune_thresholds(truth, scores - 1.0)  # shifted scores: tuning recovers a perfect cut
    assert class_average_f1(truth, scores - 1.0, thresholds) == pytest.approx(1.0)


def test_multi_label_probe_and_chain_thaw_use_one_sigmoid_per_label(rng, tmp_path):
    from embeddings.training import class_average_f1, linear_probe, tune_thresholds

    texts, y = synthetic_task(rng, 200)
    pretrained = train_content_model(tiny_train_config(epochs=3), texts, y, texts, y, ["sun", "rain", "cake"],
                                     str(tmp_path), device="cpu").model
    train_texts, train_y = multilabel_task(rng, 200)
    val_texts, val_y = multilabel_task(rng, 60)
    test_texts, test_y = multilabel_task(rng, 60)
    probe = linear_probe(encode_texts(pretrained, train_texts), train_y, encode_texts(pretrained, val_texts), val_y,
                         encode_texts(pretrained, test_texts), test_y)
    assert probe["class_average_f1"] > 0.8
    tuned, report = chain_thaw(pretrained, train_texts, train_y, val_texts, val_y, ["sun", "rain", "cake"],
                               max_epochs_per_stage=4, patience=2, head_lr=1e-2, layer_lr=1e-3, batch_size=16,
                               device="cpu")
    from embeddings.content_encoder import featurize, run_model

    def logits(texts):
        return run_model(tuned, featurize(texts, tuned.vocab, tuned.config))["embedding_logits"]

    assert report["val_class_average_f1_by_stage"]["all"] > 0.8
    thresholds = tune_thresholds(val_y, logits(val_texts))
    assert class_average_f1(test_y, logits(test_texts), thresholds) > 0.8
    with pytest.raises(ValueError, match="multi-label targets must be 0/1"):
        chain_thaw(pretrained, train_texts, train_y * 2, val_texts, val_y, ["a", "b", "c"], device="cpu")


def test_multi_label_jsonl_labels_as_names_or_as_deepmoji_vectors():
    from inputs.labelled_text import encode_labels

    names, encoded = encode_labels({"train": (["a", "b"], [["joy", "fear"], ["joy"]]),
                                    "test": (["c"], [["fear"]])})
    assert names == ["fear", "joy"]
    assert encoded["train"][1].tolist() == [[1, 1], [0, 1]] and encoded["test"][1].tolist() == [[1, 0]]
    names, encoded = encode_labels({"train": (["a", "b"], [[0, 1, 1], [1, 0, 0]]), "test": (["c"], [[0, 0, 1]])})
    assert names == ["0", "1", "2"] and encoded["test"][1].tolist() == [[0, 0, 1]]
    with pytest.raises(ValueError, match="mix single values and lists"):
        encode_labels({"train": (["a", "b"], [1, [0, 1]]), "test": (["c"], [1])})
    with pytest.raises(ValueError, match="not in the train split"):
        encode_labels({"train": (["a"], [["joy"]]), "test": (["c"], [["anger"]])})
