"""Generate -> validate -> adapters, on a real local Spark session."""

from pathlib import Path

import pyarrow.dataset as ds
import pytest

from inputs.contract import read_tables, validate_tables

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_generated_dataset_is_contract_valid(tiny_dataset):
    report = validate_tables(read_tables(tiny_dataset.data.path))
    assert report.ok, report.render()
    assert report.row_counts["users"] == 1000
    assert report.row_counts["engagements"] > 10 * report.row_counts["users"]


def test_same_seed_same_files(spark, tiny_dataset, tmp_path, assert_same_files):
    from jobs.generate_dataset import run

    again = tiny_dataset.model_copy(update={"data": tiny_dataset.data.model_copy(update={"path": str(tmp_path / "d")})})
    run(spark, again)
    assert_same_files(Path(tiny_dataset.data.path), tmp_path / "d")


def test_twitter15_import_is_contract_valid(spark, shared_data, tmp_path):
    from jobs.import_twitter1516 import run

    counts = run(spark, str(shared_data / "twitter15"), str(tmp_path / "t15"))
    assert counts["engagements"] == 622_379
    report = validate_tables(read_tables(str(tmp_path / "t15")))
    assert report.ok, report.render()
    posts = ds.dataset(str(tmp_path / "t15" / "posts")).to_table().to_pandas()
    assert (posts.text.str.len() > 0).mean() > 0.95


def test_tweeteval_import_keeps_labels_as_emojis(spark, shared_data, tmp_path):
    from jobs.import_tweeteval import run

    source = shared_data / "tweeteval_emoji"
    small = tmp_path / "te"
    small.mkdir()
    (small / "mapping.txt").write_text((source / "mapping.txt").read_text(encoding="utf-8"), encoding="utf-8")
    for kind in ("text", "labels"):
        lines = (source / f"val_{kind}.txt").read_text(encoding="utf-8").splitlines()[:200]
        (small / f"val_{kind}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts = run(spark, str(small), str(tmp_path / "out"))
    assert counts["posts"] == 200
    assert validate_tables(read_tables(str(tmp_path / "out"))).ok
    posts = ds.dataset(str(tmp_path / "out" / "posts")).to_table().to_pandas().sort_values("post_id")
    first_label = int((source / "val_labels.txt").read_text().splitlines()[0])
    emoji = (source / "mapping.txt").read_text(encoding="utf-8").splitlines()[first_label].split("\t")[1]
    assert posts.text.iloc[0].endswith(emoji)


def test_bad_inputs_fail_clearly_and_write_nothing(spark, tmp_path):
    from jobs.import_twitter1516 import run

    with pytest.raises(FileNotFoundError, match="engagements.csv.gz"):
        run(spark, str(tmp_path / "missing"), str(tmp_path / "out"))
    bad = tmp_path / "bad"
    bad.mkdir()
    import gzip

    with gzip.open(bad / "engagements.csv.gz", "wt") as f:
        f.write("a,b\n1,2\n")
    (bad / "source_tweets.tsv").write_text("1\thello\n")
    with pytest.raises(ValueError, match="missing columns"):
        run(spark, str(bad), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
