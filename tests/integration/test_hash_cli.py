"""The hash key commands an operator and an auditor use (real command line).

`hash-keygen` makes the key serve --hash-key stores values under; `hash-value`
prints the stored form of a candidate value, so an auditor can tell whether a
token was used without the log holding it; serve's redaction options refuse
what they cannot mean.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from extproc.core.redact import RedactionPolicy, hash_key_id
from extproc.hashkey import load_hash_key
from tests.conftest import run_cli


def test_hash_keygen_writes_a_0600_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "hash.key"
    made = run_cli("hash-keygen", "--out", str(key))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert made.stdout.strip() == hash_key_id(load_hash_key(key))
    assert key.read_text().strip() not in made.stdout + made.stderr  # the key is never shown
    again = run_cli("hash-keygen", "--out", str(key))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    kept = run_cli("hash-keygen", "--out", str(key), "--if-missing")
    assert kept.returncode == 0 and kept.stdout == made.stdout


def test_hash_value_prints_what_serve_stores(tmp_path: Path) -> None:
    key = tmp_path / "hash.key"
    assert run_cli("hash-keygen", "--out", str(key)).returncode == 0
    policy = RedactionPolicy(hmac_key=load_hash_key(key))
    stored = policy.header("x-session-token", "tok-1")
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{8}:[0-9a-f]{32}", stored)
    as_argument = run_cli("hash-value", "--hash-key", str(key), "tok-1")
    assert as_argument.stdout.splitlines() == [stored]
    from_stdin = run_cli_stdin(["hash-value", "--hash-key", str(key)], "tok-1\ntok-2\n")
    assert from_stdin.splitlines() == [stored, policy.header("x-session-token", "tok-2")]


def run_cli_stdin(args: list[str], text: str) -> str:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "extproc", *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=True,
    )
    return done.stdout


def test_short_or_missing_hash_key_is_a_usage_error(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("tooshort\n")
    short.chmod(0o600)  # a key file others can read is refused before its length is looked at
    for path, message in ((short, "at least 16 bytes"), (tmp_path / "none", "not found")):
        done = run_cli("hash-value", "--hash-key", str(path), "x")
        assert done.returncode == 2 and message in done.stderr
        assert "tooshort" not in done.stderr


SERVE_ERRORS = {
    "header-name": (["--clear-header", "bad name"], "--clear-header 'bad name'"),
    "template": (["--hash-path-template", "reset/{t}"], "--hash-path-template"),
    "two-keys": (["--hash-key", "a.key", "--hmac-key-file", "b.key"], "name different files"),
}


@pytest.mark.parametrize(("args", "message"), SERVE_ERRORS.values(), ids=SERVE_ERRORS.keys())
def test_serve_refuses_redaction_options_it_cannot_mean(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli("serve", "--store", str(tmp_path / "store"), "--key", str(tmp_path / "k"), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "store").exists()
