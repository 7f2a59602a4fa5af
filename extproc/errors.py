"""One root error, two branches: tampering found vs. infrastructure trouble.

The CLI catches `AuditError` once and maps the branch to an exit code:
VerificationError (the data is not what an honest writer produced) -> 1;
everything else (usage, configuration, the store, the WAL, a writer that
stops rather than fork) -> 2.
"""

from __future__ import annotations


class AuditError(Exception):
    """Root of every error this package raises on purpose."""


# --- Tampering: the data is not what an honest writer produced. ---------------


class VerificationError(AuditError):
    """Something published or presented does not verify."""


class ForeignObjectError(VerificationError):
    """An object this log's writer did not write is at a key it must write.

    Not signed by the log's key, so not another writer of this log (that is a
    ForkError): the writer records it and continues in a new epoch.
    """

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: foreign object ({why})")
        self.key = key
        self.why = why


class ObjectTooLargeError(VerificationError):
    """An object holds more bytes than a reader takes for its kind (the listed
    size, or what came back while reading): more than an honest writer writes."""

    def __init__(self, key: str, limit: int, size: int | None = None) -> None:
        got = f"{size} bytes" if size is not None else "more"
        super().__init__(f"{key}: object holds {got}, over the bound of {limit} bytes: not read")
        self.key = key
        self.limit = limit


# --- Infrastructure and configuration. ------------------------------------------


class ConfigError(AuditError):
    """Bad configuration or command-line usage."""


class NotFoundError(AuditError):
    """What was asked for (a log, an entry, a checkpoint) is not in the store."""


class ForkError(AuditError):
    """Another writer (signed by this log's key) put different bytes where this
    writer must write: the writer stops publishing rather than fork the log."""


class StorageError(AuditError):
    """An object store or the WAL failed; names bucket/key or path."""


class ObjectExistsError(StorageError):
    """A write-once put found an object already at that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object already exists: {key}")
        self.key = key


class ObjectNotFoundError(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class OverBudgetError(AuditError):
    """An input is over one of its budgets (docs/THREATS.md): refused before any
    work on it, with gRPC RESOURCE_EXHAUSTED on a stream."""


class LogUnavailableError(AuditError):
    """The log cannot take an entry now: its request is denied (503), its
    access-log entry counted as dropped. The subclasses say why."""


class BackpressureError(LogUnavailableError):
    """The backlog of unpublished entries is over its bound (the store is behind)."""


class DurabilityError(LogUnavailableError):
    """The WAL write or fsync of the entry's batch failed (a full or failing disk)."""


class LogRefusedError(LogUnavailableError):
    """The log refuses entries for good (a fork, a WAL that cannot be cut back)."""


class LogClosedError(LogUnavailableError):
    """The log was closed before the entry became durable."""


class WALCorruptionError(StorageError):
    """The WAL holds data that does not chain; refusing to guess."""
