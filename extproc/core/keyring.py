"""The auditor's trusted keys: several verifier keys, each scoped to log ids and a time window.

A keyring file holds one key per line (docs/AUDITING.md, "Keys and rotation"):

    # comment
    <verifier key> [logs=<glob>[,<glob>...]] [from=<RFC 3339 or date>] [until=<RFC 3339 or date>]

`logs` globs (fnmatch, case-sensitive) say which logs the key may sign
(default: all); `from`/`until` bound when it may sign: a checkpoint signed
outside the window (by its own `time` line, or the store's write time where
known) is a finding, so a retired key that leaks cannot extend a log
unnoticed. Pure code: the clock and the times are passed in.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from extproc.core import entry
from extproc.core.display import escape
from extproc.core.note import Verifier, parse_note
from extproc.errors import ConfigError, VerificationError


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

    def window_problem(self, times_ms: Iterable[int | None]) -> str | None:
        """Why a signature made at these times is outside the key's window (None: it is not)."""
        for t in times_ms:
            if t is None:
                continue
            if self.not_after_ms is not None and t > self.not_after_ms:
                return f"signed by key {self.label} after its end date {_iso(self.not_after_ms)}"
            if self.not_before_ms is not None and t < self.not_before_ms:
                return f"signed by key {self.label} before its start {_iso(self.not_before_ms)}"
        return None

    def to_text(self) -> str:
        parts = [self.verifier.to_text()]
        if self.logs != ("*",):
            parts.append("logs=" + ",".join(self.logs))
        if self.not_before_ms is not None:
            parts.append("from=" + _iso(self.not_before_ms))
        if self.not_after_ms is not None:
            parts.append("until=" + _iso(self.not_after_ms))
        return " ".join(parts)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_ms(value: str, option: str) -> int:
    try:
        return int(entry.parse_time(value).timestamp() * 1000)
    except ConfigError as e:
        raise ConfigError(f"{option}: {e}") from None


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
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        vkey, *options = line.split()
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
