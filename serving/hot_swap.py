"""Hot swap: serve one bundle, load the next beside it when the store's pointers move, then swap."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from serving.errors import BundleLoadError

log = logging.getLogger(__name__)


B = TypeVar("B")


class BundleHolder(Generic[B]):
    """Serves one bundle and replaces it when the store's CURRENT pointers move.

    ``poll()`` loads the new versions beside the serving bundle (the loader verifies and warms up),
    then swaps the reference: a request that already holds the old bundle finishes on it, the next
    request gets the new one, and the old one is freed once the last holder lets go. A version that
    fails to load is remembered and not retried until the pointers change again.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[], dict[str, str | None]],
        load: Callable[[dict[str, str | None]], B],
        on_swap: Callable[[B | None, B], None] | None = None,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._read = read
        self._load = load
        self._on_swap = on_swap
        self._on_refuse = on_refuse
        self.current: B | None = None
        self.pointers: dict[str, str | None] | None = None
        self.loaded_at: str | None = None
        self.last_error: str | None = None
        self.refused: dict[str, str | None] | None = None
        self.swaps = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, force: bool = False) -> bool:
        """Check the pointers; load and swap when they changed. Returns True when a swap happened."""
        with self._lock:
            pointers = self._read()
            if not force and (pointers == self.pointers or pointers == self.refused):
                return False
            started = time.perf_counter()
            try:
                bundle = self._load(pointers)
            except BundleLoadError as exc:
                self.last_error = f"refused {pointers}: {exc}"
                self.refused = pointers
                log.error("%s: %s; still serving %s", self.name, self.last_error, self.pointers)
                if self._on_refuse is not None:
                    self._on_refuse(self.last_error)
                return False
            old, self.current = self.current, bundle
            self.pointers, self.refused, self.last_error = pointers, None, None
            self.loaded_at = dt.datetime.now(dt.timezone.utc).isoformat()
            self.swaps += 1
            if self._on_swap is not None:
                self._on_swap(old, bundle)
            log.info("%s: serving %s (loaded in %.2f s)", self.name, pointers, time.perf_counter() - started)
            del old
            gc.collect()
            return True

    def status(self) -> dict[str, Any]:
        return {
            "pointers": self.pointers,
            "loaded_at": self.loaded_at,
            "swaps": self.swaps,
            "last_error": self.last_error,
            "versions": getattr(self.current, "versions", None),
        }

    def start(self, interval_s: float) -> None:
        """Poll in a daemon thread every interval_s seconds until stop()."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # a poll failure must never stop future polls
                    log.exception("%s: poll failed", self.name)

        self._thread = threading.Thread(target=loop, name=f"{self.name}-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
