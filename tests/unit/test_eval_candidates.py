import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.eval_candidates import held_out_engagements, recall

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _write(root, rows):
    (root / "engagements").mkdir(parents=True)
    users, posts, events, hours = zip(*rows, strict=True)
    pq.write_table(pa.table({
        "user_id": pa.array(users, pa.int64()), "post_id": pa.array(posts, pa.int64()), "event": list(events),
        "ts": pa.array([T0 + dt.timedelta(hours=h) for h in hours], pa.timestamp("us", tz="UTC")),
    }), root / "engagements" / "part-0.parquet")


def test_held_out_engagements_are_the_later_positives_only(tmp_path):
    train_rows = [(1, 10, "like", 1), (2, 11, "repost", 5)]
    _write(tmp_path / "train", train_rows)
    _write(tmp_path / "later", [*train_rows, (1, 12, "like", 6), (1, 13, "impression", 7), (2, 14, "reply", 8),
                                (2, 14, "like", 9)])
    assert held_out_engagements(str(tmp_path / "train"), str(tmp_path / "later")) == {1: {12}, 2: {14}}
    with pytest.raises(ValueError, match="no engagements after"):
        held_out_engagements(str(tmp_path / "train"), str(tmp_path / "train"))


def test_recall_is_the_share_of_held_out_posts_retrieved():
    assert recall([5, 6, 7], {6, 8}) == 0.5
    assert recall([], {1}) == 0.0
