import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import main


def test_config_typo_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark:\n  mastr: local[2]\n")
    assert main(["--config", str(bad), "validate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: invalid config {bad}: unknown key 'spark.mastr'"]


def test_validate_exits_nonzero_on_broken_dataset(tmp_path, capsys):
    ts = pa.timestamp("us", tz="UTC")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    tables = {
        "users": pa.table({"user_id": pa.array([1], pa.int64()), "created_at": pa.array([now], ts),
                           "country": ["us"], "language": ["en"], "is_verified": [False]}),
        "follows": pa.table({"follower_id": pa.array([1], pa.int64()), "followee_id": pa.array([7], pa.int64()),
                             "created_at": pa.array([now], ts)}),
        "posts": pa.table({"post_id": pa.array([1], pa.int64()), "author_id": pa.array([1], pa.int64()),
                           "text": ["x"], "created_at": pa.array([now], ts), "has_media": [False],
                           "text_length": pa.array([1], pa.int32())}),
        "engagements": pa.table({"user_id": pa.array([1], pa.int64()), "post_id": pa.array([1], pa.int64()),
                                 "event": ["like"], "ts": pa.array([now], ts)}),
    }
    for name, table in tables.items():
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "part-0.parquet")
    assert main(["validate", "--path", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "follows.followee_id: dangling reference to users.user_id (1 rows)" in out


def test_validate_missing_path_exits_2(tmp_path, capsys):
    assert main(["validate", "--path", str(tmp_path / "nope")]) == 2
    assert "dataset directory not found" in capsys.readouterr().err


def test_submit_prints_spark_submit_with_shipped_code(tmp_path, capsys):
    assert main(["--set", "spark.master=spark://127.0.0.1:7077", "submit", "--build-dir", str(tmp_path),
                 "generate"]) == 0
    command = capsys.readouterr().out.strip()
    assert "spark-submit --master spark://127.0.0.1:7077" in command
    assert f"--py-files {tmp_path}/nearline-code.zip" in command
    assert command.endswith("generate")
    assert (tmp_path / "nearline-code.zip").stat().st_size > 0


def test_submit_to_a_connect_server_says_to_run_the_job_directly(tmp_path, capsys):
    code = main(["--set", "spark.master=sc://127.0.0.1:15002", "submit", "--run", "--build-dir", str(tmp_path),
                 "features"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: spark.master=sc://127.0.0.1:15002 is a Spark Connect server, which takes no spark-submit: run the "
        "job itself, e.g. `nearline --set spark.master=sc://127.0.0.1:15002 features`; submit expects a classic "
        "master (spark://, yarn, k8s://, local[*])"
    )
    assert not list(tmp_path.iterdir())
