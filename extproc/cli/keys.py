"""keygen, hash-keygen and hash-value: the signing key and the hash key."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from extproc.cli.base import EXIT_OK, Subparsers
from extproc.errors import AuditError


def add_keygen(sub: Subparsers) -> None:
    p = sub.add_parser("keygen", help="create an Ed25519 signing key; print its verifier key")
    p.add_argument("--name", required=True, help="key name (no spaces or '+')")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="key file to create (mode 0600)"
    )
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="keep an existing key file (first start of a container); print its verifier key",
    )
    p.add_argument(
        "--vkey-out",
        type=Path,
        metavar="FILE",
        help="also write the (public) verifier key here; if it cannot be written, no new "
        "signing key is left behind",
    )


def run_keygen(args: argparse.Namespace) -> int:
    from extproc.core.note import Signer
    from extproc.keys import ensure_signer, write_signer, write_verifier_key

    missing_dirs = _missing_parents(args.out)  # to remove again if keygen fails
    if args.if_missing:
        signer, created = ensure_signer(args.out, args.name)
    else:
        signer, created = Signer.generate(args.name), True
        write_signer(args.out, signer)
    if args.vkey_out:
        try:
            write_verifier_key(args.vkey_out, signer)
        except AuditError:
            if created:  # nothing left behind: a key whose verifier key nobody has
                args.out.unlink(missing_ok=True)
                for directory in missing_dirs:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            raise
    print(signer.verifier().to_text())
    if created:
        print(f"signing key written to {args.out} (mode 0600); keep it secret", file=sys.stderr)
    else:
        print(f"signing key {args.out} exists; kept", file=sys.stderr)
    return EXIT_OK


def _missing_parents(path: Path) -> list[Path]:
    """The directories above `path` that do not exist yet, deepest first."""
    missing = []
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def add_hash_keygen(sub: Subparsers) -> None:
    p = sub.add_parser(
        "hash-keygen",
        help="create the hash key for values stored as keyed hashes (serve --hash-key)",
        description="Create a hash key file (32 random bytes as hex, mode 0600) and print its "
        "key id. serve --hash-key stores every value that is not on the allow-list as "
        "hmac-sha256:<key id>:<digest> under it; an auditor holding it answers 'was this "
        "token used?' with hash-value. Keep it secret: with it, guesses can be tested.",
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="key file to create (mode 0600)"
    )
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="keep an existing key file (first start of a container)",
    )


def run_hash_keygen(args: argparse.Namespace) -> int:
    from extproc.core.redact import hash_key_id
    from extproc.hashkey import load_hash_key, write_hash_key

    if args.if_missing and args.out.exists():
        key = load_hash_key(args.out)
        print(f"hash key {args.out} exists; kept (key id {hash_key_id(key)})", file=sys.stderr)
    else:
        key = write_hash_key(args.out)
        print(
            f"hash key written to {args.out} (mode 0600; key id {hash_key_id(key)}); keep it "
            "secret: whoever holds it can test guesses against the stored hashes",
            file=sys.stderr,
        )
    print(hash_key_id(key))
    return EXIT_OK


def add_hash_value(sub: Subparsers) -> None:
    p = sub.add_parser(
        "hash-value",
        help="print the stored form of a candidate value under a hash key",
        description="Print hmac-sha256:<key id>:<digest> for each value, as serve --hash-key "
        "stores it: search the log for it to tell whether a token was used. Values are "
        "read one a line from standard input unless given as arguments (an argument "
        "shows in ps and shell history). A value is hashed as it stood in the header or "
        "URL: percent-encoding included, without a credential's scheme (`Bearer `) or a "
        "cookie's name.",
    )
    p.add_argument(
        "--hash-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the deployment's hash key file (serve --hash-key)",
    )
    p.add_argument("value", nargs="*", help="values to hash (default: lines of standard input)")


def run_hash_value(args: argparse.Namespace) -> int:
    from extproc.core.redact import stored_hash
    from extproc.hashkey import load_hash_key

    key = load_hash_key(args.hash_key)
    if args.value:
        values = [v.encode("utf-8", "surrogateescape") for v in args.value]
    else:  # one value a line: a value on the command line shows in ps and shell history
        values = [line.rstrip(b"\r\n") for line in sys.stdin.buffer]
    for value in values:
        print(stored_hash(key, value))
    return EXIT_OK
