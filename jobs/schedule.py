"""`nearline schedule`: run refresh on a cron schedule, one at a time, until SIGTERM.

- Never two at once: refreshes hold an OS file lock (flock) on config.refresh.lock_path.
  The kernel drops it when the holder dies, so a crashed scheduler never blocks the
  next one; the lock file only carries the holder's pid for the on-call.
- Missed runs (the process was down or a refresh overran the next slot): "skip"
  waits for the next slot; "run_once" runs one catch-up refresh, however many were missed.
- A failed refresh is retried with exponential backoff, up to max_retries.
- SIGTERM/SIGINT: a refresh in progress finishes its current run and the loop exits;
  while waiting, the loop exits at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from croniter import croniter
from filelock import FileLock, Timeout

from nearline.config import RefreshConfig


class RefreshLock:
    """An exclusive, crash-safe lock around one refresh."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = FileLock(path)

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        Path(f"{self.path}.holder").write_text(json.dumps({"pid": os.getpid(), "since": _now().isoformat()}))
        return True

    def release(self) -> None:
        Path(f"{self.path}.holder").unlink(missing_ok=True)
        self._lock.release()

    def holder(self) -> str:
        try:
            return Path(f"{self.path}.holder").read_text()
        except FileNotFoundError:
            return "unknown"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def next_fire_time(expression: str, after: dt.datetime) -> dt.datetime:
    if not croniter.is_valid(expression):
        raise ValueError(f"invalid cron expression {expression!r}: expected e.g. '0 3 * * *' or '*/5 * * * *'")
    return croniter(expression, after).get_next(dt.datetime)


def missed_slots(expression: str, due: dt.datetime, now: dt.datetime) -> int:
    """How many scheduled times passed between `due` and `now` (due itself counted)."""
    count, slot = 0, due
    while slot <= now and count < 1_000:
        count += 1
        slot = croniter(expression, slot).get_next(dt.datetime)
    return count


class Scheduler:
    def __init__(self, refresh_config: RefreshConfig, run_refresh: Callable[[], dict[str, Any]],
                 stop: threading.Event | None = None, clock: Callable[[], dt.datetime] = _now) -> None:
        next_fire_time(refresh_config.schedule, clock())  # fail fast on a bad expression
        self.config = refresh_config
        self.run_refresh = run_refresh
        self.stop = stop or threading.Event()
        self.clock = clock
        self.lock = RefreshLock(refresh_config.lock_path)
        self.outcomes: list[str] = []

    def run_with_retries(self) -> str:
        """One scheduled refresh, retried with exponential backoff; returns the final outcome."""
        if not self.lock.try_acquire():
            print(f"another refresh holds {self.lock.path} ({self.lock.holder()}): skipping this slot", flush=True)
            return "locked"
        try:
            outcome = "failed"
            for attempt in range(self.config.max_retries + 1):
                record = self.run_refresh()
                outcome = record.get("outcome", "failed")
                print(f"refresh {record.get('run_id')} attempt {attempt + 1}: {outcome}", flush=True)
                if outcome != "failed" or attempt == self.config.max_retries:
                    break
                if self.stop.wait(self.config.retry_backoff_s * 2**attempt):
                    break
            return outcome
        finally:
            self.lock.release()

    def loop(self, max_runs: int | None = None) -> list[str]:
        due = next_fire_time(self.config.schedule, self.clock())
        while not self.stop.is_set() and (max_runs is None or len(self.outcomes) < max_runs):
            wait_s = (due - self.clock()).total_seconds()
            if wait_s > 0:
                print(f"next refresh at {due.isoformat()}", flush=True)
                if self.stop.wait(wait_s):
                    break
            now = self.clock()
            missed = missed_slots(self.config.schedule, due, now) - 1
            if missed > 0 and self.config.missed_run_policy == "skip":
                print(f"{missed} slot(s) missed: skipping to the next one (missed_run_policy=skip)", flush=True)
            else:
                if missed > 0:
                    print(f"{missed} slot(s) missed: one catch-up refresh (missed_run_policy=run_once)", flush=True)
                self.outcomes.append(self.run_with_retries())
            due = next_fire_time(self.config.schedule, self.clock())
        return self.outcomes
