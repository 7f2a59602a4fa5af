"""witness and witness-keygen: a C2SP tlog-witness, for development and for
organisations that run their own (docs/FORMAT.md, "Witnesses")."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.cli.base import EXIT_OK, Subparsers, env_default, typed
from extproc.errors import ConfigError
from extproc.options import int_at_least

if TYPE_CHECKING:
    from extproc.core.keyring import Keyring
    from extproc.witness.server import WitnessHTTPServer


def add_witness_keygen(sub: Subparsers) -> None:
    p = sub.add_parser(
        "witness-keygen",
        help="create a witness's Ed25519 cosigning key; print its witness (0x04) verifier key",
    )
    p.add_argument("--name", required=True, help="witness name, e.g. witness.example.com/w1")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="key file to create (mode 0600)"
    )


def run_witness_keygen(args: argparse.Namespace) -> int:
    from extproc.core.cosignature import Cosigner
    from extproc.keys import write_secret_file

    cosigner = Cosigner.generate(args.name)
    write_secret_file(args.out, (cosigner.to_text() + "\n").encode(), "witness key")
    print(cosigner.witness_key().to_text())
    print(f"witness key written to {args.out} (mode 0600); keep it secret", file=sys.stderr)
    return EXIT_OK


def add_witness(sub: Subparsers) -> None:
    from extproc.core.witness import DEFAULT_MAX_LOGS, DEFAULT_PORT, MAX_CONNECTIONS

    p = sub.add_parser(
        "witness",
        help="run a C2SP tlog-witness: cosign the checkpoints of the logs it is given",
        description="Serve POST <prefix>/add-checkpoint (c2sp.org/tlog-witness): check each "
        "checkpoint's log signature and its consistency with the last one cosigned for its "
        "origin, persist the new tree, answer with a cosignature (c2sp.org/tlog-cosignature).",
    )
    p.add_argument(
        "--key",
        type=Path,
        required=env_default("witness_key") is None,
        default=env_default("witness_key"),
        metavar="FILE",
        help="the witness's cosigning key (witness-keygen)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        required=env_default("witness_state_dir") is None,
        default=env_default("witness_state_dir"),
        metavar="DIR",
        help="where the latest cosigned tree of each log is kept (one process per directory)",
    )
    p.add_argument(
        "--log",
        nargs=2,
        action="append",
        required=True,
        metavar=("ORIGIN", "VKEY"),
        help="a log to witness: its checkpoint origin (a glob such as audit.example/* covers "
        "every log id one key signs) and its verifier key (or @FILE with a keyring); repeatable",
    )
    p.add_argument(
        "--listen",
        default=env_default("witness_listen", f"127.0.0.1:{DEFAULT_PORT}"),
        metavar="HOST:PORT",
        help="address to serve on (port 0: any free port, printed at start)",
    )
    p.add_argument("--prefix", default="", help="URL path prefix of the endpoint")
    p.add_argument(
        "--max-logs",
        type=typed(int_at_least(1)),
        default=DEFAULT_MAX_LOGS,
        metavar="N",
        help="how many logs (origins) the state may hold",
    )
    p.add_argument(
        "--max-connections",
        type=typed(int_at_least(1)),
        default=MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once; more are closed unanswered",
    )


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {value!r} must be HOST:PORT (give the host: no default)")
    return host.strip("[]"), int(port)


def _keyring_of(vkey: str) -> Keyring:
    from extproc.core.keyring import Keyring, parse_keyring_lines
    from extproc.core.note import Verifier

    if vkey.startswith("PRIVATE+KEY+"):
        raise ConfigError("--log got a signing key: give the log's verifier key")
    if not vkey.startswith("@"):
        return Keyring.of(Verifier.from_text(vkey))
    path = Path(vkey[1:])
    try:
        return Keyring(parse_keyring_lines(path.read_text(), str(path)))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read keyring {path}") from e


def run_witness(args: argparse.Namespace) -> int:
    from extproc.core.cosignature import Cosigner
    from extproc.core.witness import WitnessedLogs
    from extproc.keys import read_secret_file
    from extproc.witness.server import Witness, bind
    from extproc.witness.state import WitnessState

    raw = read_secret_file(Path(args.key), "witness key", "extproc-audit witness-keygen")
    try:
        cosigner = Cosigner.from_text(raw.decode("ascii"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"witness key {args.key} is not a key string") from e
    witnessed = WitnessedLogs((origin, _keyring_of(vkey)) for origin, vkey in args.log)
    host, port = _host_port(args.listen)
    state = WitnessState(Path(args.state_dir), args.max_logs)
    try:
        server = bind(
            host,
            port,
            Witness(witnessed, cosigner, state),
            prefix=args.prefix,
            max_connections=args.max_connections,
        )
        # SIGTERM ends serve_forever from another thread (shutdown() waits for it).
        signal.signal(signal.SIGTERM, lambda *_: _stop(server))
        print(
            f"witness {cosigner.witness_key().to_text()} serving {server.url}/add-checkpoint",
            flush=True,
        )
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        state.close()
    return EXIT_OK


def _stop(server: WitnessHTTPServer) -> None:
    import threading

    threading.Thread(target=server.shutdown, daemon=True).start()
