"""What the auditor's commands share: the store URL they read, the keys they
trust, the bundle bound and the origin prefix they check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.cli.base import typed
from extproc.errors import ConfigError
from extproc.options import int_at_least

if TYPE_CHECKING:
    from extproc.core.cosignature import WitnessPolicy
    from extproc.core.keyring import Keyring


def reader_store(text: str) -> str:
    """A store URL to read from: a local store path must exist (readers never
    create one; a mistyped path is not an empty log)."""
    from extproc.store import check_store_url

    return check_store_url(text, must_exist=True)


def add_bundle_bound(p: argparse.ArgumentParser) -> None:
    """--max-bundle-bytes of the commands that read bundles."""
    from extproc.core.bundle import MAX_BUNDLE_BYTES

    p.add_argument(
        "--max-bundle-bytes",
        type=typed(int_at_least(64 * 1024)),
        default=MAX_BUNDLE_BYTES,
        metavar="BYTES",
        help="refuse (as a finding) a bundle whose lines take more, stored or decompressed "
        f"(default {MAX_BUNDLE_BYTES}: the format's bound, serve's largest --bundle-max-bytes)",
    )


def add_key_options(p: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    """--vkey and --keyring: the keys a reader trusts."""
    p.add_argument(
        "--vkey",
        action="append",
        default=None,
        help=f"{what}: a verifier key string, or @FILE holding one or a keyring; repeatable",
    )
    p.add_argument(
        "--keyring",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="keyring file: one verifier key per line, each optionally scoped to "
        "logs=GLOB[,GLOB] and from=/until= times (docs/AUDITING.md, keys and rotation)"
        + ("" if required else "; repeatable"),
    )


def keyring(args: argparse.Namespace) -> Keyring:
    """The keys given with --vkey and --keyring (at least one)."""
    keys = optional_keyring(args)
    if keys is None:
        raise ConfigError("give the verifier key with --vkey or --keyring")
    return keys


def optional_keyring(args: argparse.Namespace) -> Keyring | None:
    """The keys given with --vkey and --keyring, None if none."""
    from extproc.core.keyring import Keyring, TrustedKey, parse_keyring_lines
    from extproc.core.note import Verifier

    keys: list[TrustedKey] = []
    files = [Path(v[1:]) for v in args.vkey or () if v.startswith("@")]
    files += args.keyring or []
    for path in files:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read keyring {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"keyring {path} is not UTF-8 text") from e
        if text.lstrip().startswith("PRIVATE+KEY+"):
            raise ConfigError(f"{path} holds a signing key, not the verifier key keygen prints")
        keys.extend(parse_keyring_lines(text, str(path)))
    for value in args.vkey or ():
        if value.startswith("@"):
            continue
        if value.startswith("PRIVATE+KEY+"):
            raise ConfigError("--vkey got a signing key: give the verifier key (keygen prints it)")
        keys.append(TrustedKey(Verifier.from_text(value)))
    return Keyring(keys) if keys else None


def add_witness_options(p: argparse.ArgumentParser) -> None:
    """--witness and --witness-quorum: the witnesses whose cosignatures a reader requires."""
    p.add_argument(
        "--witness",
        action="append",
        default=None,
        metavar="VKEY",
        help="a witness's verifier key (NAME+KEYID+BASE64 of type 0x04, c2sp.org/tlog-"
        "cosignature): checkpoints need its cosignature (see --witness-quorum); repeatable",
    )
    p.add_argument(
        "--witness-quorum",
        type=typed(int_at_least(1)),
        default=None,
        metavar="K",
        help="how many of the --witness keys must cosign (default: all of them)",
    )


def witness_policy(args: argparse.Namespace) -> WitnessPolicy | None:
    """The k-of-n policy of --witness/--witness-quorum; None without --witness."""
    from extproc.core.cosignature import WitnessKey, WitnessPolicy

    if not args.witness:
        if args.witness_quorum is not None:
            raise ConfigError("--witness-quorum needs --witness keys")
        return None
    return WitnessPolicy.of((WitnessKey.from_text(v) for v in args.witness), args.witness_quorum)
