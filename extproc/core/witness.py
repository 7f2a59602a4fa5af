"""What a witness decides for one add-checkpoint request (c2sp.org/tlog-witness): pure.

    POST <prefix>/add-checkpoint
    old <size>\\n  [<base64 consistency proof hash>\\n]*  \\n  <signed checkpoint note>

The body is the one tlogproof.ConsistencyProof reads (the tlog-proof
companion file uses the same format). Answers, in the spec's order:

    400  malformed body, or old size larger than the checkpoint's
    404  origin not witnessed here
    403  no signature by a key the witness trusts for the origin
    409  old size is not the size last cosigned (body: that size, text/x.tlog.size),
         or the same size with another root (a fork)
    422  the consistency proof does not verify (a fork, or a bad proof)
    200  one cosignature line; the caller persists the new latest tree
         atomically with the check (extproc/witness/)

The witness's own record of each log (`Latest`) is passed in and the new
one passed back; the time is passed in. No I/O, no clock.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from extproc.core.checkpoint import Checkpoint
from extproc.core.cosignature import Cosigner, WitnessKey
from extproc.core.display import escape
from extproc.core.keyring import Keyring
from extproc.core.merkle import verify_consistency
from extproc.core.note import parse_note
from extproc.core.tlogproof import ConsistencyProof
from extproc.errors import ConfigError, VerificationError

MAX_BODY_BYTES = 64 * 1024  # 63 proof lines and a note with its signatures: a few KiB
DEFAULT_PORT = 7380  # `extproc-audit witness --listen 127.0.0.1:7380`
MAX_CONNECTIONS = 64  # served at once; more are closed unanswered
DEFAULT_MAX_LOGS = 100_000  # records a witness keeps (one per origin it cosigned)
SIZE_CONTENT_TYPE = "text/x.tlog.size"  # c2sp.org/tlog-witness: the 409 body's type
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
OK, BAD_REQUEST, FORBIDDEN, NOT_FOUND, CONFLICT, UNPROCESSABLE, TOO_LARGE = (
    200,
    400,
    403,
    404,
    409,
    422,
    413,
)


@dataclass(frozen=True)
class Latest:
    """The latest tree a witness cosigned for one origin."""

    size: int
    root_hash: bytes


@dataclass(frozen=True)
class Answer:
    """The HTTP answer; `latest` is the record to persist before it is sent (200 only)."""

    status: int
    body: str
    content_type: str = TEXT_CONTENT_TYPE
    origin: str = ""
    latest: Latest | None = None


class WitnessedLogs:
    """The logs a witness takes checkpoints of: origin (or an origin glob such as
    `audit.example/*`, one signing key serving many logs) -> trusted keys."""

    def __init__(self, logs: Iterable[tuple[str, Keyring]]) -> None:
        self._exact: dict[str, Keyring] = {}
        self._globs: list[tuple[str, Keyring]] = []
        for origin, keys in logs:
            if not origin or "\n" in origin:
                raise ConfigError(f"witnessed origin {escape(origin)!r} must be one line")
            if origin in self._exact or any(origin == g for g, _ in self._globs):
                raise ConfigError(f"witnessed origin {escape(origin)!r} is listed twice")
            if any(c in origin for c in "*?["):
                self._globs.append((origin, keys))
            else:
                self._exact[origin] = keys
        if not self._exact and not self._globs:
            raise ConfigError("a witness needs at least one log (--log ORIGIN VKEY)")

    def keys_for(self, origin: str) -> Keyring | None:
        found = self._exact.get(origin)
        if found is not None:
            return found
        for glob, keys in self._globs:
            if fnmatch.fnmatchcase(origin, glob):
                return keys
        return None


def _refuse(status: int, why: str, origin: str = "") -> Answer:
    return Answer(status, why + "\n", origin=origin)


def parse_request(body: bytes) -> tuple[ConsistencyProof, Checkpoint, str]:
    """The request, its checkpoint and the note's text; ConfigError if malformed."""
    if len(body) > MAX_BODY_BYTES:
        raise ConfigError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        request = ConsistencyProof.from_text(body.decode("utf-8"))
        text, _ = parse_note(request.checkpoint)
        checkpoint = Checkpoint.from_text(text)
    except UnicodeDecodeError as e:
        raise ConfigError("body is not UTF-8") from e
    except VerificationError as e:
        raise ConfigError(f"checkpoint: {e}") from e
    return request, checkpoint, text


def add_checkpoint(
    body: bytes,
    logs: WitnessedLogs,
    latest_of: Callable[[str], Latest | None],
    cosigner: Cosigner,
    now_s: int,
) -> Answer:
    """The witness's answer to one request. `latest_of(origin)`: its record of a
    log; the caller holds a lock from this call until the answer's `latest` is
    persisted (the spec's race: a check and its update are one step)."""
    try:
        request, checkpoint, text = parse_request(body)
    except ConfigError as e:
        return _refuse(BAD_REQUEST, f"malformed add-checkpoint request: {e}")
    origin = checkpoint.origin
    keys = logs.keys_for(origin)
    if keys is None:
        return _refuse(NOT_FOUND, "unknown log origin", origin)
    try:
        keys.verify_note(request.checkpoint)
    except VerificationError as e:
        return _refuse(FORBIDDEN, f"checkpoint not signed by the log's key: {e}", origin)
    if request.old_size > checkpoint.size:
        return _refuse(BAD_REQUEST, "old size larger than the checkpoint's size", origin)
    latest = latest_of(origin)
    known = latest.size if latest is not None else 0
    if request.old_size != known:
        return Answer(CONFLICT, f"{known}\n", SIZE_CONTENT_TYPE, origin)
    if latest is not None and (
        latest.size == checkpoint.size and latest.root_hash != checkpoint.root_hash
    ):
        return _refuse(CONFLICT, f"fork: another root for tree size {latest.size}", origin)
    try:
        old_root = latest.root_hash if latest is not None else b""
        if request.old_size == 0 and request.hashes:
            raise VerificationError("consistency proof from size 0 must be empty")
        if request.old_size:
            verify_consistency(
                request.old_size, checkpoint.size, old_root, checkpoint.root_hash, request.hashes
            )
    except VerificationError as e:
        return _refuse(UNPROCESSABLE, f"consistency proof does not verify: {e}", origin)
    line = cosigner.cosign(text, now_s)
    return Answer(OK, line, origin=origin, latest=Latest(checkpoint.size, checkpoint.root_hash))


_URL_SCHEMES = ("http://", "https://")
MAX_URL_CHARS = 2048


def parse_witness(text: str) -> tuple[WitnessKey, str]:
    """`<witness verifier key>+<submission URL>` (serve --witness): the key and the URL
    (without a trailing '/'; add-checkpoint is posted to <URL>/add-checkpoint)."""
    at = max(text.rfind("+" + scheme) for scheme in _URL_SCHEMES)
    if at < 0:
        raise ConfigError(
            f"{escape(text[:100])!r} must be NAME+KEYID+BASE64KEY+URL (an http:// or https:// URL)"
        )
    url = text[at + 1 :].rstrip("/")
    if len(url) > MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url):
        raise ConfigError(f"witness URL {escape(url[:100])!r} is not a URL")
    if not url.removeprefix("http://").removeprefix("https://"):
        raise ConfigError("witness URL names no host")
    return WitnessKey.from_text(text[:at]), url
