import datetime as dt
import subprocess
import sys
import threading

import pytest

from jobs.schedule import Scheduler, missed_slots, next_fire_time
from nearline.config import RefreshConfig

T0 = dt.datetime(2026, 11, 22, 12, 0, 30, tzinfo=dt.timezone.utc)


def _config(tmp_path, **overrides):
    values = {"schedule": "*/5 * * * *", "retry_backoff_s": 0.0, "max_retries": 2,
              "lock_path": str(tmp_path / "refresh.lock")}
    return RefreshConfig(**{**values, **overrides})


def test_bad_cron_expression_names_it(tmp_path):
    with pytest.raises(ValueError, match="invalid cron expression 'every hour'"):
        Scheduler(_config(tmp_path, schedule="every hour"), lambda: {})


def test_next_fire_and_missed_slots():
    assert next_fire_time("*/5 * * * *", T0) == T0.replace(minute=5, second=0)
    due = T0.replace(minute=5, second=0)
    assert missed_slots("*/5 * * * *", due, due + dt.timedelta(minutes=12)) == 3


def test_failed_refresh_is_retried_then_succeeds(tmp_path):
    outcomes = iter(["failed", "failed", "success"])
    calls = []

    def refresh():
        calls.append(1)
        return {"run_id": str(len(calls)), "outcome": next(outcomes)}

    scheduler = Scheduler(_config(tmp_path), refresh)
    assert scheduler.run_with_retries() == "success"
    assert len(calls) == 3


def test_retries_stop_at_the_limit(tmp_path):
    calls = []
    scheduler = Scheduler(_config(tmp_path, max_retries=1), lambda: calls.append(1) or {"outcome": "failed"})
    assert scheduler.run_with_retries() == "failed"
    assert len(calls) == 2


def test_a_held_lock_skips_the_slot_and_dies_with_its_holder(tmp_path):
    lock_path = tmp_path / "refresh.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; "
        f"lock = FileLock({str(lock_path)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        calls = []
        scheduler = Scheduler(_config(tmp_path), lambda: calls.append(1) or {"outcome": "success"})
        assert scheduler.run_with_retries() == "locked"
        assert calls == []
    finally:
        holder.kill()
        holder.wait()
    # The holder crashed without releasing: the kernel freed the lock, the next run proceeds.
    assert scheduler.run_with_retries() == "success"


class FakeClock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.mark.parametrize("policy, expected_runs", [("skip", 0), ("run_once", 1)])
def test_missed_run_policy(tmp_path, policy, expected_runs):
    clock = FakeClock(T0)
    calls = []
    stop = threading.Event()

    def refresh():
        calls.append(1)
        return {"outcome": "success"}

    scheduler = Scheduler(_config(tmp_path, missed_run_policy=policy), refresh, stop=stop, clock=clock)

    # The process "sleeps" through three slots: waiting returns immediately, time has jumped.
    def jump_then_stop(timeout=None):
        if clock.now == T0:
            clock.now = T0 + dt.timedelta(minutes=17)
            return False
        return True

    stop.wait = jump_then_stop  # type: ignore[method-assign]
    scheduler.loop(max_runs=1)
    assert len(calls) == expected_runs


class WatchedEvent(threading.Event):
    """A stop event that says when the scheduler starts waiting on it, and how each wait ended."""

    def __init__(self):
        super().__init__()
        self.waiting = threading.Event()
        self.waits = []

    def wait(self, timeout=None):
        self.waiting.set()
        woken = super().wait(timeout)
        self.waits.append((timeout, woken))
        return woken


def test_stop_event_ends_the_wait(tmp_path):
    stop = WatchedEvent()
    scheduler = Scheduler(_config(tmp_path, schedule="0 0 1 1 *"), lambda: {"outcome": "success"}, stop=stop)
    outcomes = []
    loop = threading.Thread(target=lambda: outcomes.append(scheduler.loop()))
    loop.start()
    # The timeouts here are only safety nets for a broken scheduler; nothing is timed.
    assert stop.waiting.wait(timeout=60), "the scheduler never waited for its next slot"
    stop.set()
    loop.join(timeout=60)
    assert not loop.is_alive() and outcomes == [[]]
    # One wait, for the next 1 January, and the event ended it (Event.wait is True only when set), not its timeout.
    ((timeout, woken),) = stop.waits
    assert timeout > 0 and woken
