"""Proofs and verification from C2SP tlog-tiles on a large log (docs/PERFORMANCE.md).

Builds a synthetic, valid, signed log of N entries (default 10,000,000) in
tlog-tiles layout in a local directory: chained entries of the writer's
encoding (~230 bytes each), every hash tile and entry bundle, the signed
checkpoint as `checkpoints/<N>` and `checkpoint`. (No JSONL bundles: the
tiles are what these paths read.) Building it hashes every entry once
(minutes for 10M). Then measures, each in a fresh process:

- `extproc-audit prove DIR --log bench --seq S` for a few seqs: wall time and
  peak RSS of the whole command (interpreter start included);
- verify from the tiles (extproc.audit.tilecheck.verify_tiles) with 1 and
  with 2 worker processes: entries/s.

    .venv/bin/python scripts/bench_tiles.py [--entries 10000000] [--dir DIR]
    .venv/bin/python scripts/bench_tiles.py --costs

`--costs` instead publishes with the real writer into an in-memory store, one
checkpoint per round as `serve` does every --bundle-max-age (0.5 s), at 1,000
and at 20,000 entries/s (500 and 10,000 entries a round, ~700 bytes each):
PUTs per entry and bytes stored per entry, by kind of object, both layouts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extproc.core import entry, layout
from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
from extproc.core.merkle import leaf_hash
from extproc.core.note import Signer
from extproc.core.tiles import TileBuilder
from extproc.keys import load_signer, write_signer

LOG = "bench"
ORIGIN = f"extproc-audit/{LOG}"


def _write(root: Path, key: str, data: bytes) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build(root: Path, entries: int) -> None:
    """The log, unless `root` already holds one of this size."""
    done = root / f"built-{entries}"
    if done.exists():
        return
    signer = Signer.generate("bench")
    write_signer(root / "signing.key", signer)
    builder = TileBuilder()
    prev = ""
    started = time.perf_counter()
    batch: list[tuple[bytes, bytes]] = []
    for seq in range(entries):
        line = entry.encode(
            {
                "kind": "request",
                "prev": prev,
                "req": {"authority": "api.example", "method": "GET", "path": f"/items/{seq}"},
                "rid": f"{seq:032x}",
                "seq": seq,
                "ts": "2026-12-06T12:00:00.000000Z",
                "v": 1,
            }
        )
        leaf = leaf_hash(line)
        prev = leaf.hex()
        batch.append((line, leaf))
        if len(batch) == 1 << 16 or seq == entries - 1:
            for tile, data in builder.extend(batch):
                _write(root, layout.tile_key("", LOG, tile), data)
            batch = []
    for tile, data in builder.partials():
        _write(root, layout.tile_key("", LOG, tile), data)
    cp = Checkpoint(ORIGIN, entries, builder.compact_range().root(),
                    make_extensions(int(time.time() * 1000), "be7c4"))  # fmt: skip
    note = sign_checkpoint(cp, signer)
    _write(root, layout.checkpoint_key("", LOG, entries), note)
    _write(root, layout.latest_checkpoint_key("", LOG), note)
    done.touch()
    print(f"built {entries} entries in {time.perf_counter() - started:.0f} s", file=sys.stderr)


# The command line in a fresh interpreter, reporting its own peak RSS: VmHWM of
# its own memory map (getrusage's ru_maxrss would count the forked copy of this
# process before the exec).
COMMAND = """
import re, sys
from pathlib import Path
from extproc.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status").read_text()
print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
sys.exit(code)
"""


def _command(args: list[str]) -> tuple[float, int]:
    """Wall seconds (interpreter start included) and peak RSS (MiB) of a command."""
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", COMMAND, *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {run.stderr}")
    return wall, int(run.stderr.split()[-1]) // 1024


VERIFY = """
import os, sys, time
from pathlib import Path
from extproc.audit.tilecheck import verify_tiles
from extproc.core.keyring import Keyring
from extproc.keys import load_signer
from extproc.store.local import LocalStore
keyring = Keyring.of(load_signer(Path(sys.argv[1]) / "signing.key").verifier())
before, started = os.times(), time.perf_counter()
report = verify_tiles(LocalStore(Path(sys.argv[1])), "bench", keyring, processes=int(sys.argv[2]))
took, after = time.perf_counter() - started, os.times()
assert report.ok, [str(f) for f in report.findings]
cpu = sum(after[:4]) - sum(before[:4])  # user and system, this process and its workers
print(f"{report.entries} {took:.3f} {cpu:.3f}")
"""


def _kind(key: str) -> str:
    name = layout.parse_key("", key)
    if name is None or name.kind != "tile" or name.tile is None:
        return name.kind if name is not None else "?"
    what = "entry bundle" if name.tile.level == layout.ENTRIES_LEVEL else "hash tile"
    return f"{what}{' (partial)' if name.tile.partial else ''}"


def costs(rounds: int = 40) -> None:
    """PUTs and bytes per entry of each layout, from the real writer (docs/SEARCH.md)."""
    from collections import Counter

    from extproc.store.base import Retention
    from extproc.store.memory import MemoryStore
    from tests.helpers import write_log

    class Counting(MemoryStore):
        def __init__(self) -> None:
            super().__init__("")
            self.puts: Counter[str] = Counter()
            self.bytes: Counter[str] = Counter()

        def _count(self, key: str, data: bytes) -> None:
            self.puts[_kind(key)] += 1
            self.bytes[_kind(key)] += len(data)

        def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
            self._count(key, data)
            super().put_once(key, data, retention)

        def put_replace(self, key: str, data: bytes, retention: Retention | None) -> None:
            self._count(key, data)
            super().put_replace(key, data, retention)

    headers = {f"x-header-{i}": "v" * 24 for i in range(12)}
    print("| entries/s | object | PUTs per entry | bytes per entry |\n|---|---|---|---|")
    for rate, per_round in ((1_000, 500), (20_000, 10_000)):
        store = Counting()
        batches = [
            [{"kind": "request", "rid": f"{r}-{i}", "req": {"headers": headers}}
             for i in range(per_round)]
            for r in range(rounds)
        ]  # fmt: skip
        with tempfile.TemporaryDirectory() as wal:
            write_log(store, Signer.generate("bench"), Path(wal), LOG, *batches, tiles=True,
                      bundle_max_entries=per_round)  # fmt: skip
        n = rounds * per_round
        for kind in sorted(store.puts):
            print(f"| {rate:,} | {kind} | {store.puts[kind] / n:.5f} | "
                  f"{store.bytes[kind] / n:.1f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    default_dir = Path(tempfile.gettempdir()) / "extproc-bench-tiles"
    parser.add_argument("--dir", type=Path, default=default_dir)
    parser.add_argument("--seqs", type=int, nargs="*", default=None)
    parser.add_argument("--costs", action="store_true", help="PUTs and bytes per entry")
    args = parser.parse_args()
    if args.costs:
        costs()
        return 0
    root: Path = args.dir
    root.mkdir(parents=True, exist_ok=True)
    build(root, args.entries)
    n = args.entries
    vkey = load_signer(root / "signing.key").verifier().to_text()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    os.environ.update(env)
    print(f"| what | {n:,} entries |\n|---|---|")
    for seq in args.seqs or [0, n // 3, n - 1]:
        cmd = ["prove", str(root), "--log", LOG, "--seq", str(seq), "--vkey", vkey,
               "--out", os.devnull]  # fmt: skip
        wall, rss = _command(cmd)
        print(f"| `prove --seq {seq}` (whole command) | {wall:.2f} s, peak RSS {rss} MiB |")
    for processes in (1, 2):
        run = subprocess.run([sys.executable, "-c", VERIFY, str(root), str(processes)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        entries, took, cpu = run.stdout.split()
        rate = int(entries) / float(took)
        idle = int(entries) / (float(cpu) / processes)  # if each process had a core
        print(f"| verify from tiles, {processes} process(es) | {float(took):.1f} s wall, "
              f"{rate:,.0f} entries/s; {float(cpu):.1f} s CPU: {idle:,.0f} entries/s "
              "on idle cores |")  # fmt: skip
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
