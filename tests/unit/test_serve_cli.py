"""`nearline query` and `nearline rollback` without a running app or Ray."""

from __future__ import annotations

import socket

import pytest

from cli.main import main
from storage.store import Store
from tests.support.serving_fixture import build_serving_set, write_tiny_dataset


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-cli")
    data = str(root / "data")
    write_tiny_dataset(data, num_users=120, num_posts=200, seed=9)
    store_root = str(root / "store")
    first = build_serving_set(store_root, data, seed=1, content_dim=8)
    second = build_serving_set(store_root, data, seed=2, content_dim=8)
    return store_root, first, second


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_query_without_a_server_is_one_clear_error(capsys):
    code = main(["query", "--url", f"http://127.0.0.1:{_closed_port()}", "health"])
    assert code == 1
    assert "cannot reach the serving app" in capsys.readouterr().err


def test_query_rank_rejects_non_integer_ids_before_calling(capsys):
    code = main(["query", "--url", f"http://127.0.0.1:{_closed_port()}", "rank", "5", "1", "two"])
    assert code == 2
    assert "argument post_ids: invalid int value: 'two'" in capsys.readouterr().err


def test_rollback_moves_the_coherent_set_back_then_refuses_past_the_first(two_sets, capsys):
    store_root, first, second = two_sets
    store = Store(store_root)
    assert store.current("models", "ranker") == second["models/ranker"]
    assert main(["--set", f"store.root={store_root}", "rollback"]) == 0
    out = capsys.readouterr().out
    for key in ("indexes/content", "indexes/user", "models/ranker", "embeddings/user", "embeddings/user_interest"):
        kind, name = key.split("/")
        assert store.current(kind, name) == first[key]
        assert f"{key}: CURRENT -> {first[key]}" in out
    assert main(["--set", f"store.root={store_root}", "rollback", "--side", "content"]) == 1
    assert "no earlier published version" in capsys.readouterr().err
