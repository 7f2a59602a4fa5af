"""C2SP tlog-checkpoint bodies (c2sp.org/tlog-checkpoint) and our extension lines.

    <origin>\\n<tree size>\\n<base64 root hash>\\n[extension lines]

Extension lines written by this project (documented in docs/FORMAT.md):

    time <unix milliseconds>     when the writer signed the checkpoint
    writer <hex id>              random id of the writer process run
    final                        the writer shut down cleanly at this size
    epoch <n>                    the writer's epoch, when n >= 2 (docs/FORMAT.md)
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from extproc.core import b64
from extproc.core.display import escape
from extproc.core.keyring import Keyring, TrustedKey
from extproc.core.merkle import HASH_SIZE
from extproc.core.note import Signer, Verifier, sign_note, verify_note
from extproc.errors import ConfigError, VerificationError

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
# c2sp.org/tlog-checkpoint: an origin is one non-empty line and SHOULD hold no
# spaces and no '+'. What this writer signs (and `serve --origin-prefix` takes)
# is stricter: printable ASCII without space or '+', bounded. Parsing stays
# lenient: other logs' checkpoints are read as they are.
_ORIGIN_RE = re.compile(r"[!-*,-~]+")
MAX_ORIGIN_PREFIX_CHARS = 255
MAX_ORIGIN_CHARS = MAX_ORIGIN_PREFIX_CHARS + 1 + 128  # prefix, '/', a log id
_MAX_TREE_SIZE = (1 << 64) - 1  # RFC 9162 tree_size is a uint64
_TIME_RE = re.compile(r"time ([0-9]{1,16})")
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last time a datetime holds
_WRITER_RE = re.compile(r"writer ([0-9a-f]{1,64})")
_EPOCH_RE = re.compile(r"epoch ([1-9][0-9]{0,8})")
MAX_EPOCH = 999_999_999  # what _EPOCH_RE reads back


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = field(default=())

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        lines.extend(self.extensions)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise VerificationError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise VerificationError("checkpoint needs origin, size and root hash lines")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise VerificationError("checkpoint origin is empty")
        if not _SIZE_RE.fullmatch(size_text):
            raise VerificationError(f"checkpoint tree size {size_text!r} is not a decimal number")
        if int(size_text) > _MAX_TREE_SIZE:
            raise VerificationError(f"checkpoint tree size {size_text} does not fit in 64 bits")
        try:
            root = b64.decode(root_text)
        except (binascii.Error, ValueError) as e:
            raise VerificationError("checkpoint root hash is not base64") from e
        if len(root) != HASH_SIZE:
            raise VerificationError("checkpoint root hash is not 32 bytes")
        if any(not line for line in extensions):
            raise VerificationError("checkpoint has an empty extension line")
        return cls(origin, int(size_text), root, tuple(extensions))

    # Our extension lines, read leniently: unknown ones are kept, not rejected.
    @property
    def timestamp_ms(self) -> int | None:
        for line in self.extensions:
            if (m := _TIME_RE.fullmatch(line)) and int(m.group(1)) <= _MAX_TIME_MS:
                return int(m.group(1))
        return None

    @property
    def writer(self) -> str | None:
        for line in self.extensions:
            if m := _WRITER_RE.fullmatch(line):
                return m.group(1)
        return None

    @property
    def final(self) -> bool:
        return "final" in self.extensions

    @property
    def epoch(self) -> int:
        for line in self.extensions:
            if m := _EPOCH_RE.fullmatch(line):
                return int(m.group(1))
        return 1


def make_extensions(
    timestamp_ms: int, writer: str, *, final: bool = False, epoch: int = 1
) -> tuple[str, ...]:
    """Our extension lines; ConfigError for a value their readers would not take back."""
    if not 0 <= timestamp_ms <= _MAX_TIME_MS:
        raise ConfigError(f"checkpoint time {timestamp_ms} out of range")
    if not _WRITER_RE.fullmatch(f"writer {writer}"):
        raise ConfigError(f"writer id {writer!r} is not 1 to 64 lower-case hex digits")
    if not 1 <= epoch <= MAX_EPOCH:
        raise ConfigError(f"epoch {epoch} out of range (1 to {MAX_EPOCH})")
    ext = [f"time {timestamp_ms}", f"writer {writer}"]
    if epoch > 1:
        ext.append(f"epoch {epoch}")
    if final:
        ext.append("final")
    return tuple(ext)


def validate_origin(origin: str, what: str = "checkpoint origin") -> str:
    """`origin` if this writer may sign it (see _ORIGIN_RE); ConfigError otherwise."""
    if len(origin) > MAX_ORIGIN_CHARS or not _ORIGIN_RE.fullmatch(origin):
        raise ConfigError(
            f"{what} {escape(origin[:100])!r} must be one line of printable ASCII without "
            f"spaces or '+', at most {MAX_ORIGIN_CHARS} characters (c2sp.org/tlog-checkpoint)"
        )
    return origin


def validate_origin_prefix(prefix: str, what: str = "--origin-prefix") -> str:
    """An origin prefix: with '/' and any log id (layout.validate_log_id) it makes
    an origin validate_origin accepts."""
    if len(prefix) > MAX_ORIGIN_PREFIX_CHARS:
        raise ConfigError(f"{what} is longer than {MAX_ORIGIN_PREFIX_CHARS} characters")
    return validate_origin(prefix, what)


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> bytes:
    """The signed note of `checkpoint`. Refuses (ConfigError) what would not read back
    as the same checkpoint: a malformed origin, an empty or multi-line extension."""
    validate_origin(checkpoint.origin)
    text = checkpoint.to_text()
    try:
        same = Checkpoint.from_text(text) == checkpoint
    except VerificationError:
        same = False
    if not same:
        raise ConfigError(f"refusing to sign a malformed checkpoint: {escape(text[:200])}")
    return sign_note(text, signer).encode()


def open_checkpoint(data: bytes, trusted: Verifier | Keyring) -> Checkpoint:
    """Verify the signature on a checkpoint note and parse its body."""
    if isinstance(trusted, Keyring):
        return open_signed_checkpoint(data, trusted)[0]
    return Checkpoint.from_text(verify_note(data, trusted))


def open_signed_checkpoint(data: bytes, keyring: Keyring) -> tuple[Checkpoint, TrustedKey]:
    """The checkpoint and the trusted key that signed it."""
    text, key = keyring.verify_note(data)
    return Checkpoint.from_text(text), key
