"""Foreign objects: what the publisher knows of objects it did not write at
the keys of its log (docs/FORMAT.md, "Epochs"; extproc/log/publisher.py).

Bookkeeping only, bounded: the keys known to be taken (each costs the attacker
an object, so at most MAX_KNOWN_FOREIGN), the highest claim epoch among them
(the next epoch goes above it), when the writer last listed what is ahead of
it, and how a `writer foreign` entry names what was found.
"""

from __future__ import annotations

from typing import Any

from extproc import metrics
from extproc.core import layout
from extproc.core.fields import COUNT, EPOCH, OBJECT, OBJECTS

# After a collision the writer lists what is ahead of it at most this often;
# in between, a new plant costs one collision (a put and a read).
RELIST_AFTER = 30.0
# Keys of foreign objects kept in memory (each costs the attacker an object):
# beyond, a plant is met when the writer gets to it, at O(1) each still.
MAX_KNOWN_FOREIGN = 100_000
# What one `writer foreign` entry names: a sample, each name cut to a bound
# (the count says how many there were): an entry stays far under 64 KiB.
MAX_RECORDED_NAMES = 16
MAX_RECORDED_NAME_CHARS = 256


def recorded_name(relative_key: str) -> str:
    """An object name as a `writer foreign` entry holds it: any character JSON can
    carry (a byte that is not UTF-8 in a local name stays as a `\\udcXX` escape), cut to
    MAX_RECORDED_NAME_CHARS with the original length said."""
    name = relative_key.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(name) > MAX_RECORDED_NAME_CHARS:
        name = f"{name[:MAX_RECORDED_NAME_CHARS]}...[{len(name)} chars]"
    return name


class ForeignKeys:
    """The keys of one log known to hold foreign objects."""

    def __init__(self, prefix: str, log_id: str) -> None:
        self._prefix = prefix
        self._log_id = log_id
        self._keys: set[str] = set()
        self._claim_epoch = 0  # the highest claim epoch among them
        self._listed_at: float | None = None  # monotonic time of the last listing ahead

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __bool__(self) -> bool:
        return bool(self._keys)

    def know(self, keys: list[str]) -> None:
        """Remember keys that hold foreign objects (up to MAX_KNOWN_FOREIGN)."""
        for key in keys:
            if len(self._keys) >= MAX_KNOWN_FOREIGN:
                break
            self._keys.add(key)
            name = layout.parse_key(self._prefix, key)
            if name is not None and name.kind == "claim":
                self._claim_epoch = max(self._claim_epoch, name.epoch)

    def relist_due(self, now: float) -> bool:
        """Whether to list what is ahead now (at most every RELIST_AFTER seconds);
        if so, the listing counts as done at `now`."""
        if self._listed_at is not None and now - self._listed_at < RELIST_AFTER:
            return False
        self._listed_at = now
        return True

    def next_epoch(self, epoch: int, position: int) -> int:
        """An epoch above `epoch` and every claim epoch known to be taken (then no
        planted claim is where this writer claims next, and its claims are the
        highest at their positions); if that would pass the layout's largest
        epoch, the next one whose claim key at `position` is free."""
        above = max(epoch, self._claim_epoch) + 1
        if above <= layout.MAX_EPOCH:
            return above
        above = epoch + 1
        while layout.claim_key(self._prefix, self._log_id, position, above) in self._keys:
            above += 1
        return above

    def entry_fields(self, keys: list[str], epoch: int) -> tuple[dict[str, Any], list[str]]:
        """The `writer foreign` entry's fields for newly found keys: the object
        (`object`), or, for several, how many (`count`) and a bounded sample of their
        names (`objects`); and the names. Counts them in the metrics, by kind."""
        for key in keys:
            name = layout.parse_key(self._prefix, key)
            metrics.FOREIGN_OBJECTS.labels(name.kind if name else "unknown").inc()
        names = [recorded_name(layout.relative(self._prefix, k)) for k in keys]
        details: dict[str, Any] = {EPOCH: epoch}
        if len(names) == 1:
            details[OBJECT] = names[0]
        else:
            details.update({COUNT: len(names), OBJECTS: names[:MAX_RECORDED_NAMES]})
        return details, names
