"""Unattended soak of `nearline schedule`: a refresh every few minutes for an hour, new data arriving.

Starts `nearline schedule` (a separate process, as in production) on a shortened cron
interval over a generated world, and every --append-every-s seconds appends one more
day of data (a later snapshot of the same world, swapped in atomically). At the end it
stops the scheduler with SIGTERM and summarises every run record.

    python -m bench.schedule_soak [--minutes 60] [--cron "*/3 * * * *"] [--append-every-s 900]

Writes reports/schedule_soak.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.generate_dataset import run as generate
from jobs.schedule import RefreshLock
from jobs.spark import build_spark_session
from nearline.config import load_config
from storage.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--cron", default="*/3 * * * *")
    parser.add_argument("--append-every-s", type=float, default=900)
    parser.add_argument("--root", default=".soak")
    parser.add_argument("--out", default="reports/schedule_soak.json")
    args = parser.parse_args()

    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    overrides = [f"store.root={root / 'store'}", f"data.path={root / 'data'}", "spark.master=local[2]",
                 f"refresh.lock_path={root / 'store' / 'refresh.lock'}", f"refresh.schedule={args.cron}",
                 "generate.num_users=1000", "generate.num_days=10", "refresh.retry_backoff_s=20"]
    day = 5
    config = load_config("conf/local.yaml", [*overrides, f"generate.through_day={day}"])
    spark = build_spark_session(config.spark, app_suffix="soak-generate")
    generate(spark, config)

    log = (root / "schedule.log").open("w")
    command = [sys.executable, "-m", "cli.main", "--config", "conf/local.yaml",
               *[a for o in overrides for a in ("--set", o)], "schedule"]
    scheduler = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    lock = RefreshLock(config.refresh.lock_path)
    started = time.monotonic()
    appended_at = started
    try:
        while time.monotonic() - started < args.minutes * 60:
            if scheduler.poll() is not None:
                raise RuntimeError(f"the scheduler exited early with {scheduler.returncode}; see {root}/schedule.log")
            # A new snapshot lands under the refresh lock, so no refresh ever reads a half-swapped one.
            if time.monotonic() - appended_at >= args.append_every_s and day < 10 and lock.try_acquire():
                try:
                    day += 1
                    generate(spark, load_config("conf/local.yaml", [*overrides, f"generate.through_day={day}"]))
                finally:
                    lock.release()
                appended_at = time.monotonic()
                print(f"{(appended_at - started) / 60:5.1f} min: appended day {day}", flush=True)
            time.sleep(5)
    finally:
        scheduler.send_signal(signal.SIGTERM)
        try:
            scheduler.wait(timeout=900)
        except subprocess.TimeoutExpired:
            scheduler.kill()
        spark.stop()

    runs = [r for r in Store(str(root / "store")).runs(limit=1000) if "stages" in r and "outcome" in r
            and r.get("job") is None]
    outcomes: dict[str, int] = {}
    for record in runs:
        outcomes[record["outcome"]] = outcomes.get(record["outcome"], 0) + 1
    report = {
        "minutes": args.minutes, "cron": args.cron, "days_appended": day - 5,
        "scheduler_exit_code": scheduler.returncode, "runs": len(runs), "outcomes": outcomes,
        "records": [{k: r.get(k) for k in ("run_id", "outcome", "seconds", "failed_stage", "reason", "published")}
                    for r in runs],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{len(runs)} scheduled refreshes in {args.minutes:.0f} min: {outcomes}; "
          f"scheduler exit {scheduler.returncode}; wrote {args.out}")


if __name__ == "__main__":
    main()
