"""Log lines for conditions that repeat per request, at most one per interval.

A full disk or a full backlog refuses thousands of requests a second; one
line each would flood the log (measured: 1,000 ERROR lines in 4 s) and hide
everything else. The metrics count every one; the log says it is happening
and how many were not reported.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """At most one line per `interval` seconds; the next line counts the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        self._log(logging.WARNING, msg, args)

    def error(self, msg: str, *args: Any) -> None:
        self._log(logging.ERROR, msg, args)

    def _log(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self.logger.log(level, msg + suffix, *args)
        self._last, self._suppressed = now, 0
