"""The auditor's trusted keys: several verifier keys, each scoped to log ids and a time window.

A keyring file holds one key per line (docs/AUDITING.md, "Keys and rotation"):

    # comment (a word starting with "#" starts one)
    <verifier key> [logs=<glob>[,<glob>...]] [from=<RFC 3339 or date>] [until=<RFC 3339 or date>]

`logs` globs (fnmatch, case-sensitive) say which logs the key may sign
(default: all); `from`/`until` bound when it may sign. Time comes from
outside the signer (docs/AUDITING.md, "Keys and rotation"): a checkpoint's
own `time` line is written by whoever holds the key, so it can only convict
(a key that says it signed outside its window did), never acquit. A key
past its `until` is trusted for a checkpoint only when something the signer
does not control shows the signature is older than that date (`SignedBy`:
the auditor's clock, the store's write time on S3, a witness cosignature
once logs are witnessed), or when the checkpoint is consistent with one the
auditor already trusts (`vouched_by`). So a retired key that leaks cannot
extend a log, or sign a made-up one, by backdating. Pure code: the clock
and the times are passed in.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from extproc.core import entry
from extproc.core.display import escape
from extproc.core.note import Verifier, parse_note
from extproc.errors import ConfigError, VerificationError


@dataclass(frozen=True)
class SignedBy:
    """Evidence from outside the signer that a signature existed by `ms` at the latest.

    Sources: the auditor's clock (what exists now was signed before now),
    the store's write time of an S3 object version (set by S3, not by the
    writer; verify reads it), and a quorum of witness cosignatures
    (c2sp.org/tlog-cosignature: core/cosignature.py, `WitnessPolicy.quorum_evidence`:
    the k-th earliest cosignature time of the witnesses the auditor trusts).
    """

    ms: int
    source: str  # says where the time comes from, in findings: "the store's write time"


def clock(now_ms: int | None) -> list[SignedBy]:
    """The auditor's clock as evidence (none if the caller has no clock)."""
    return [] if now_ms is None else [SignedBy(now_ms, "the auditor's clock")]


@dataclass(frozen=True)
class TrustedKey:
    verifier: Verifier
    logs: tuple[str, ...] = ("*",)
    not_before_ms: int | None = None
    not_after_ms: int | None = None

    @property
    def label(self) -> str:
        """`<name>+<key id>`: how findings name a key."""
        return f"{self.verifier.name}+{self.verifier.key_id.hex()}"

    def covers(self, log_id: str) -> bool:
        return any(fnmatch.fnmatchcase(log_id, glob) for glob in self.logs)

    def window_problem(
        self,
        claimed_ms: int | None,
        outside: Iterable[SignedBy] = (),
        *,
        vouched_by: str | None = None,
    ) -> str | None:
        """Why this key's signature cannot be trusted at the time it was made (None: it can).

        `claimed_ms`: the time the signed text states (a checkpoint's `time`
        line), written by the signer: outside the window it convicts the key,
        inside it proves nothing. `outside`: upper bounds on when the signature
        existed, from sources the signer does not control. `vouched_by`: the
        trusted checkpoint this one is consistent with, if any (its content is
        then vouched for, whoever signed it and whenever).
        """
        bounds = list(outside)
        if problem := self.signed_outside_window(claimed_ms, bounds):
            return problem
        return None if vouched_by is not None else self.retired_without_evidence(bounds)

    def signed_outside_window(
        self, claimed_ms: int | None, outside: Iterable[SignedBy] = ()
    ) -> str | None:
        """Evidence that the key signed outside its window: its own time line says
        so, or an outside time shows the signature existed before the key's start."""
        start, end = self.not_before_ms, self.not_after_ms
        if claimed_ms is not None:
            if end is not None and claimed_ms > end:
                return f"signed by key {self.label} after its end date {_iso(end)} (its time line)"
            if start is not None and claimed_ms < start:
                return f"signed by key {self.label} before its start {_iso(start)} (its time line)"
        for bound in outside:
            if start is not None and bound.ms < start:
                return (
                    f"signed by key {self.label} before its start {_iso(start)} "
                    f"({bound.source} says {_iso(bound.ms)})"
                )
        return None

    def retired_without_evidence(self, outside: Iterable[SignedBy] = ()) -> str | None:
        """The key has an end date and no outside time shows it signed by then."""
        end = self.not_after_ms
        bounds = list(outside)
        if end is None or any(b.ms <= end for b in bounds):
            return None
        said = "; ".join(f"{b.source} says {_iso(b.ms)}" for b in bounds) or "no outside time"
        return (
            f"signed by key {self.label}, retired {_iso(end)}, and nothing outside the signer "
            f"shows it signed before then ({said}; its own time line is no evidence), nor is "
            "it consistent with a checkpoint the auditor trusts"
        )

    def cosigned_after_end(self, quorum: SignedBy) -> str | None:
        """With witnesses required, a key's checkpoint counts only if a quorum
        cosigned it by the key's end date (`quorum`: when they had); else why not."""
        end = self.not_after_ms
        if end is None or quorum.ms <= end:
            return None
        return (
            f"signed by key {self.label}, retired {_iso(end)}, and cosigned by "
            f"{quorum.source} only at {_iso(quorum.ms)}, after that (backdated)"
        )

    def to_text(self) -> str:
        """One keyring line (parse_keyring_lines reads it back)."""
        if self.verifier.name.startswith("#"):
            raise ConfigError(f"key {self.label}: a keyring line cannot start with '#'")
        if any(not g or "," in g or g.startswith("#") or not g.isprintable() or " " in g
               for g in self.logs):  # fmt: skip
            raise ConfigError(f"key {self.label}: logs {self.logs!r} cannot be written")
        parts = [self.verifier.to_text()]
        if self.logs != ("*",):
            parts.append("logs=" + ",".join(self.logs))
        if self.not_before_ms is not None:
            parts.append("from=" + _iso(self.not_before_ms))
        if self.not_after_ms is not None:
            parts.append("until=" + _iso(self.not_after_ms))
        return " ".join(parts)


def _iso(ms: int) -> str:
    """RFC 3339 UTC, to the millisecond where the time has one (to_text keeps it)."""
    from datetime import UTC, datetime, timedelta

    m = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    # Not strftime: "%Y" drops the zeros of years before 1000 on glibc.
    text = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def _time_ms(value: str, option: str) -> int:
    """Milliseconds since the epoch, exactly (a float timestamp would round some down)."""
    from datetime import UTC, datetime, timedelta

    try:
        moment = entry.parse_time(value)
    except ConfigError as e:
        raise ConfigError(f"{option}: {e}") from None
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class Keyring:
    """Keys by (name, key id); at most one entry per key."""

    def __init__(self, keys: Iterable[TrustedKey]) -> None:
        self._keys: dict[tuple[str, bytes], TrustedKey] = {}
        for key in keys:
            ident = (key.verifier.name, key.verifier.key_id)
            if ident in self._keys:
                raise ConfigError(f"key {key.label} is listed twice")
            self._keys[ident] = key
        if not self._keys:
            raise ConfigError("no verifier key given")

    @classmethod
    def of(cls, *verifiers: Verifier) -> Keyring:
        """Keys trusted for every log at any time (a plain --vkey)."""
        return cls(TrustedKey(v) for v in verifiers)

    @classmethod
    def from_text(cls, text: str, source: str = "keyring") -> Keyring:
        return cls(parse_keyring_lines(text, source))

    def to_text(self) -> str:
        return "".join(k.to_text() + "\n" for k in self)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, name: str, key_id: bytes) -> TrustedKey | None:
        return self._keys.get((name, key_id))

    def describe(self) -> str:
        return ", ".join(k.label for k in self)

    def verify_note(self, note: str | bytes) -> tuple[str, TrustedKey]:
        """The note text and the trusted key that signed it.

        Signatures by keys not on the keyring are skipped (c2sp.org/signed-note);
        a signature claiming a key on the keyring that fails is an error.
        """
        text, signatures = parse_note(note)
        signed_by: TrustedKey | None = None
        for sig in signatures:
            key = self.get(sig.name, sig.key_id)
            if key is None:
                continue
            if not key.verifier.verify(text.encode(), sig.signature):
                raise VerificationError(f"invalid signature by key {key.label}")
            signed_by = signed_by or key
        if signed_by is None:
            names = ", ".join(sorted({escape(f"{s.name}+{s.key_id.hex()}") for s in signatures}))
            raise VerificationError(
                f"no signature by a trusted key (signed by: {names or 'none'}; "
                f"trusted: {self.describe()})"
            )
        return text, signed_by

    def verify_signature(self, name: str, key_id: bytes, message: bytes, sig: bytes) -> TrustedKey:
        """The trusted key that made `sig` over `message`; raises VerificationError."""
        key = self.get(name, key_id)
        if key is None:
            raise VerificationError(f"signed by key {name}+{key_id.hex()}, which is not trusted")
        if not key.verifier.verify(message, sig):
            raise VerificationError(f"invalid signature by key {key.label}")
        return key


def parse_keyring_lines(text: str, source: str) -> list[TrustedKey]:
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        # A comment starts at a word beginning with '#': a key name may hold '#'.
        words = raw.split()
        words = list(itertools.takewhile(lambda w: not w.startswith("#"), words))
        if not words:
            continue
        where = f"{source} line {number}"
        vkey, *options = words
        try:
            verifier = Verifier.from_text(vkey)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        logs: tuple[str, ...] = ("*",)
        not_before = not_after = None
        for option in options:
            name, sep, value = option.partition("=")
            if not sep or not value:
                raise ConfigError(f"{where}: {option!r} is not NAME=VALUE")
            if name == "logs":
                logs = tuple(g for g in value.split(",") if g)
                if not logs:
                    raise ConfigError(f"{where}: logs= names no log")
            elif name == "from":
                not_before = _time_ms(value, f"{where}: from")
            elif name == "until":
                not_after = _time_ms(value, f"{where}: until")
            else:
                raise ConfigError(f"{where}: unknown option {name!r} (logs, from, until)")
        if not_before is not None and not_after is not None and not_after <= not_before:
            raise ConfigError(f"{where}: until must be after from")
        keys.append(TrustedKey(verifier, logs, not_before, not_after))
    return keys
