"""prove and check-proof: offline proofs (c2sp tlog-proof) and their check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.cli.base import EXIT_OK, Subparsers, typed
from extproc.cli.readers import (
    add_bundle_bound,
    add_key_options,
    add_witness_options,
    keyring,
    optional_keyring,
    reader_store,
    witness_policy,
)
from extproc.errors import ConfigError, VerificationError
from extproc.options import int_at_least

if TYPE_CHECKING:
    from extproc.audit.prove import Prover


def add_prove(sub: Subparsers) -> None:
    p = sub.add_parser("prove", help="write an offline inclusion proof (c2sp tlog-proof)")
    p.add_argument("url", type=reader_store, help="s3://bucket/prefix or a directory")
    p.add_argument("--log", required=True, metavar="ID", help="log id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=typed(int_at_least(0)), metavar="N", help="entry index (seq)")
    which.add_argument(
        "--request-id",
        metavar="R",
        help="the request (or exchange) entry with this request id (rid); refused if several "
        "carry it (see --all)",
    )
    which.add_argument(
        "--consistency-from",
        type=typed(int_at_least(1)),
        metavar="SIZE",
        help="instead of an inclusion proof, a consistency proof from the checkpoint of this "
        "tree size to the one of --tree-size (default: the newest), for check-proof "
        "--consistency",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="proof file to write ('-': stdout); with --all, a directory",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="with --request-id: one proof per entry carrying it, written to the --out "
        "directory as <log id>-<seq>.tlog-proof",
    )
    p.add_argument(
        "--tree-size",
        type=typed(int_at_least(1)),
        default=None,
        metavar="N",
        help="prove under the checkpoint of this tree size (default: the newest)",
    )
    add_key_options(p, required=False, what="only use checkpoints signed by a key given")
    add_bundle_bound(p)


def add_check_proof(sub: Subparsers) -> None:
    p = sub.add_parser("check-proof", help="verify a proof file offline")
    p.add_argument("file", type=Path, help="tlog-proof file ('-': stdin)")
    add_key_options(p, required=True, what="trusted key")
    add_witness_options(p)
    p.add_argument(
        "--entry", type=Path, default=None, metavar="FILE", help="entry bytes, if not in the proof"
    )
    p.add_argument("--origin", default=None, help="require this checkpoint origin")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="verify's state file (read only): its checkpoints are trusted, so a checkpoint "
        "consistent with one of them counts even if its key has retired since",
    )
    p.add_argument(
        "--consistency",
        type=Path,
        default=None,
        metavar="FILE",
        help="a consistency proof from the proof's checkpoint to a newer one (`prove "
        "--consistency-from`): the newer one, if trusted, vouches for the older",
    )


def run_prove(args: argparse.Namespace) -> int:
    from extproc.audit.prove import EntryNotFoundError, Prover
    from extproc.core.display import escape
    from extproc.core.tlogproof import FILE_SUFFIX
    from extproc.store import open_store

    if args.all and args.request_id is None:
        raise ConfigError("--all needs --request-id (a seq names one entry)")
    if args.all and str(args.out) == "-":
        raise ConfigError("--all writes one proof file per entry: --out must be a directory")
    verifier = optional_keyring(args)
    prover = Prover(
        open_store(args.url), args.log, verifier, max_bundle_bytes=args.max_bundle_bytes
    )
    if args.consistency_from is not None:
        return _write_consistency(prover, args)
    seq, expected = args.seq, None
    if args.request_id is not None:
        # Clients choose request ids, so several entries can carry one: never
        # pick one of them silently (docs/PROOFS.md).
        matches = prover.matches_by_request_id(args.request_id)
        rid = escape(args.request_id)
        if len(matches) > 1 and not args.all:
            for match in matches:
                print(match.describe(args.log), file=sys.stderr)
            raise ConfigError(
                f"{len(matches)} entries carry request id {rid}; prove one with --seq"
            )
        if args.all:
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create directory {args.out}: {e.strerror}") from e
            unproven = 0
            for match in matches:
                try:
                    inc = prover.inclusion(seq=match.seq, tree_size=args.tree_size)
                except EntryNotFoundError as e:  # not under a (valid) signed checkpoint
                    print(f"not proven: {match.describe(args.log)}: {e}", file=sys.stderr)
                    unproven += 1
                    continue
                if inc.entry != match.entry:
                    raise VerificationError(f"entry {match.seq} changed while it was read")
                path = args.out / f"{args.log}-{match.seq}{FILE_SUFFIX}"
                try:
                    path.write_text(inc.to_proof().to_text())
                except OSError as e:
                    raise ConfigError(f"cannot write {path}: {e.strerror}") from e
                reporter = match.reporter.describe() if match.reporter is not None else "-"
                print(
                    f"{escape(str(path))}: entry {inc.index} ({escape(match.kind)}, reporter "
                    f"{reporter}) of log {args.log} proven under signed tree size "
                    f"{inc.checkpoint.size} ({len(inc.hashes)} hashes)",
                    file=sys.stderr,
                )
            if unproven:
                raise EntryNotFoundError(
                    f"{unproven} of {len(matches)} entries with request id {rid} not proven"
                )
            return EXIT_OK
        seq, expected = matches[0].seq, matches[0].entry
    inclusion = prover.inclusion(seq=seq, tree_size=args.tree_size)
    if expected is not None and inclusion.entry != expected:
        raise VerificationError(f"entry {seq} changed while it was read")
    _write_out(args.out, inclusion.to_proof().to_text())
    print(
        f"entry {inclusion.index} of log {args.log} proven under signed tree size "
        f"{inclusion.checkpoint.size} ({len(inclusion.hashes)} hashes)",
        file=sys.stderr,
    )
    return EXIT_OK


def _write_consistency(prover: Prover, args: argparse.Namespace) -> int:
    """prove --consistency-from: a tlog-witness style body, old size to newer checkpoint."""
    from extproc.audit.prove import EntryNotFoundError
    from extproc.core.tlogproof import ConsistencyProof

    if args.all:
        raise ConfigError("--all goes with --request-id")
    proof = prover.consistency(args.consistency_from, args.tree_size)
    if proof.first_note is None or proof.second_note is None:
        missing = proof.first if proof.first_note is None else proof.second
        raise EntryNotFoundError(f"log {args.log} has no signed checkpoint of tree size {missing}")
    text = ConsistencyProof(proof.first, proof.hashes, proof.second_note).to_text()
    _write_out(args.out, text)
    print(
        f"log {args.log}: tree size {proof.first} proven consistent with signed tree size "
        f"{proof.second} ({len(proof.hashes)} hashes)",
        file=sys.stderr,
    )
    return EXIT_OK


def _write_out(out: Path, text: str) -> None:
    """Write a proof to a file, or to stdout for '-'."""
    if str(out) == "-":
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror}") from e


def _read_text(path: Path, what: str) -> str:
    """A small text file the user named ('-': stdin), read with a size bound."""
    limit = 1 << 20
    try:
        if str(path) == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with path.open("rb") as f:
                raw = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) > limit:
        raise ConfigError(f"{path}: {what} is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from e


def run_check_proof(args: argparse.Namespace) -> int:
    import time

    from extproc.core.state import AuditState
    from extproc.core.tlogproof import ConsistencyProof, TlogProof, verify_proof

    verifier = keyring(args)
    proof = TlogProof.from_text(_read_text(args.file, "proof"))
    try:
        entry = args.entry.read_bytes() if args.entry else None
    except OSError as e:
        raise ConfigError(f"cannot read {args.entry}: {e.strerror}") from e
    state = None
    if args.state is not None:
        # Read only, and never trust on first use: a missing state file is an error.
        try:
            state = AuditState.from_bytes(args.state.read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read state file {args.state}: {e.strerror}") from e
    consistency = None
    if args.consistency is not None:
        consistency = ConsistencyProof.from_text(_read_text(args.consistency, "consistency proof"))
    checkpoint = verify_proof(
        proof,
        verifier,
        entry,
        origin=args.origin,
        now_ms=int(time.time() * 1000),
        state=state,
        consistency=consistency,
        witnesses=witness_policy(args),
    )
    print(
        f"OK: entry {proof.index} is in log {checkpoint.origin} "
        f"at signed tree size {checkpoint.size}"
    )
    return EXIT_OK
