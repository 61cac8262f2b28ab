import datetime as dt

import pyarrow as pa
import pytest

from inputs.contract import validate_tables

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _tables(**replace):
    ts = pa.timestamp("us", tz="UTC")
    tables = {
        "users": pa.table({"user_id": pa.array([1, 2, 3], pa.int64()),
                           "created_at": pa.array([T0] * 3, ts), "country": ["us", "gb", "in"],
                           "language": ["en"] * 3, "is_verified": [False, True, False]}),
        "follows": pa.table({"follower_id": pa.array([1, 2], pa.int64()), "followee_id": pa.array([2, 3], pa.int64()),
                             "created_at": pa.array([T0, T0], ts)}),
        "posts": pa.table({"post_id": pa.array([10, 11], pa.int64()), "author_id": pa.array([2, 3], pa.int64()),
                           "text": ["hi", "yo"], "created_at": pa.array([T0 + dt.timedelta(days=1)] * 2, ts),
                           "has_media": [False, True], "text_length": pa.array([2, 2], pa.int32())}),
        "engagements": pa.table({"user_id": pa.array([1, 1], pa.int64()), "post_id": pa.array([10, 11], pa.int64()),
                                 "event": ["impression", "like"],
                                 "ts": pa.array([T0 + dt.timedelta(days=2)] * 2, ts)}),
    }
    tables.update(replace)
    return tables


def test_valid_tables_pass():
    report = validate_tables(_tables())
    assert report.ok, report.render()
    assert report.row_counts["engagements"] == 2


def test_missing_column_and_wrong_type_are_named():
    good = _tables()
    posts = good["posts"].drop_columns(["text"])
    users = good["users"].set_column(0, "user_id", pa.array(["1", "2", "3"]))
    report = validate_tables(_tables(posts=posts, users=users))
    rendered = report.render()
    assert "posts.text: missing column" in rendered
    assert "users.user_id: wrong type string, expected int64" in rendered


def test_null_duplicate_and_dangling_keys_are_counted_with_an_example():
    good = _tables()
    users = pa.concat_tables([good["users"], good["users"].slice(0, 1)])
    engagements = good["engagements"].set_column(1, "post_id", pa.array([10, 99], pa.int64()))
    follows = good["follows"].set_column(1, "followee_id", pa.array([None, 3], pa.int64()))
    report = validate_tables(_tables(users=users, engagements=engagements, follows=follows))
    by_check = {(p.table, p.column, p.check.split(" (")[0]): p for p in report.problems}
    assert by_check[("users", "user_id", "duplicate key")].count == 1
    dangling = by_check[("engagements", "post_id", "dangling reference to posts.post_id")]
    assert dangling.count == 1 and dangling.example["post_id"] == 99
    assert by_check[("follows", "followee_id", "null values")].count == 1


def test_events_out_of_order_and_unknown_event():
    good = _tables()
    engagements = good["engagements"].set_column(
        3, "ts", pa.array([T0, T0 + dt.timedelta(days=3)], pa.timestamp("us", tz="UTC")))
    engagements = engagements.set_column(2, "event", pa.array(["impression", "poke"]))
    report = validate_tables(_tables(engagements=engagements))
    checks = [str(p) for p in report.problems]
    assert any("engagement before the post was created" in c and "(1 rows)" in c for c in checks)
    assert any("unknown event" in c and "poke" in c for c in checks)


def test_missing_table_is_reported():
    tables = _tables()
    del tables["follows"]
    report = validate_tables(tables)
    assert not report.ok
    assert "follows.*: missing table" in report.render()


@pytest.mark.parametrize(("table", "expected"), [
    # An empty table is not itself a problem; what referenced its rows is, each reference counted once.
    ("users", {("follows", "follower_id", "dangling reference to users.user_id", 2),
               ("follows", "followee_id", "dangling reference to users.user_id", 2),
               ("posts", "author_id", "dangling reference to users.user_id", 2),
               ("engagements", "user_id", "dangling reference to users.user_id", 2)}),
    ("posts", {("engagements", "post_id", "dangling reference to posts.post_id", 2)}),
    ("engagements", set()),
    ("follows", set()),
])
def test_empty_tables_are_counted_and_only_their_dangling_references_reported(table, expected):
    tables = _tables()
    tables[table] = tables[table].slice(0, 0)
    report = validate_tables(tables)
    assert report.row_counts == {name: 0 if name == table else tables[name].num_rows for name in tables}
    assert {(p.table, p.column, p.check, p.count) for p in report.problems} == expected
    assert report.ok == (not expected)
