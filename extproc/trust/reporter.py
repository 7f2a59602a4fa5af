"""The reporter of a stream, as every entry records it, and why a caller may be refused."""

from __future__ import annotations

from dataclasses import dataclass, field

# How the reporter was authenticated (`reporter.auth` in every entry): the values
# are the entry format's, defined with its field names.
from extproc.core.fields import AUTH, AUTH_MTLS, AUTH_NONE, AUTH_UNIX, AUTH_XFCC, ID, PEER

__all__ = ["AUTH_MTLS", "AUTH_NONE", "AUTH_UNIX", "AUTH_XFCC", "Reporter", "ReporterRefused"]

# Refusal reasons: the label of extproc_audit_reporters_refused_total.
REFUSED_NOT_ALLOWED = "not_allowed"
REFUSED_UNTRUSTED_PEER = "untrusted_peer"
REFUSED_NO_IDENTITY = "no_identity"
REFUSED_DESTINATION = "destination_mismatch"
REFUSED_XFCC_MALFORMED = "xfcc_malformed"  # not Envoy's grammar: no one reading
REFUSED_XFCC_FOREIGN = "xfcc_foreign"  # an element the server's own proxy did not write


class ReporterRefused(Exception):
    """A caller that may not write to the log; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Reporter:
    """The authenticated sender of a stream, as recorded in every entry."""

    auth: str
    id: str
    peer: str
    fields: dict[str, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per stream and shared by its entries (orjson encodes it each time).
        fields = {AUTH: self.auth, PEER: self.peer}
        if self.id:
            fields[ID] = self.id
        object.__setattr__(self, "fields", fields)

    @property
    def label(self) -> str:
        """The reporter in metric labels: its identity, else how it connected."""
        return self.id or self.auth
