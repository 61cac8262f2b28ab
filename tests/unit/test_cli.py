import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from cli.main import COMMANDS, EXIT_CODES, build_parser, main


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


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_help_and_query_import_no_heavy_library():
    # A fresh interpreter: this test process has long imported torch and the rest.
    script = (
        "import json, sys; from cli.main import main; "
        "codes = [main(['--help']), main(['query', '--url', 'http://127.0.0.1:9', 'health'])]; "
        "print(json.dumps([codes, [m for m in ('torch', 'pyspark', 'faiss', 'sklearn', 'ray') if m in sys.modules]]))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    codes, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == [0, 1]  # the query ran (and failed: nothing listens on port 9), not just its parser
    assert heavy == []


def test_help_lists_every_command_and_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert EXIT_CODES in out
    listed = [line.split()[0] for line in out.split("  COMMAND\n", 1)[1].split("\n\n")[0].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(COMMANDS)


def test_every_parser_refuses_abbreviated_options():
    parsers = list(_all_parsers(build_parser(COMMANDS)))
    assert len(parsers) > len(COMMANDS)  # the commands' own subcommands are there too
    assert [p.prog for p in parsers if p.allow_abbrev] == []


def test_abbreviated_set_is_a_usage_error_not_set(tmp_path, capsys):
    # `--s` used to be taken for `--set`, so this listed the runs of the default store.
    assert main(["--s", f"store.root={tmp_path}", "runs"]) == 2
    assert main(["--set", f"store.root={tmp_path}", "runs", "--lim", "1"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --lim 1" in err and "no runs recorded" not in err


def test_version_comes_from_the_package_metadata(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"nearline {importlib.metadata.version('nearline')}\n"


def test_exit_0_when_the_command_succeeds(tmp_path, capsys):
    assert main(["--set", f"store.root={tmp_path}", "runs"]) == 0
    assert capsys.readouterr().out.strip() == f"no runs recorded in {tmp_path / 'runs'}"


def test_exit_1_when_the_store_refuses(tmp_path, capsys):
    assert main(["--set", f"store.root={tmp_path}", "index", "rollback", "content"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot roll back indexes/content")


def test_exit_2_on_usage_and_override_errors(tmp_path, capsys):
    assert main(["--set", f"store.root={tmp_path}", "runs", "--limit", "0"]) == 2
    assert "argument --limit: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["--set", "store.root", "runs"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: override 'store.root': expected KEY=VALUE, e.g. generate.num_users=5000"
    )
    assert main(["index", "build", "posts"]) == 2
    assert "invalid choice: 'posts'" in capsys.readouterr().err


def test_the_config_in_use_is_logged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="nearline")
    monkeypatch.chdir(tmp_path)
    store = ["--set", f"store.root={tmp_path / 'store'}"]
    assert main([*store, "runs"]) == 0
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "local.yaml").write_text("store:\n  root: elsewhere\n")
    assert main([*store, "runs"]) == 0
    assert main(["--config", "conf/local.yaml", *store, "runs"]) == 0
    override = f"overrides: store.root={tmp_path / 'store'}"
    assert [r.getMessage() for r in caplog.records if r.name == "nearline"] == [
        f"config: built-in defaults (no --config, and no conf/local.yaml in {tmp_path}); {override}",
        f"config: conf/local.yaml (the default, found in the working directory {tmp_path}); {override}",
        f"config: conf/local.yaml (--config); {override}",
    ]
