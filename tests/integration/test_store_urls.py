"""No mistake looks like success (issue 16, attack 9a): store URLs.

`serve --store s3:/bucket/mesh` (one slash) used to create and publish to a
local folder `./s3:/bucket/mesh`: no warning, no Object Lock. Now a store is
`s3://bucket[/prefix]`, `file:///dir` or a directory path; anything that
looks like a mistyped URL is a one-line usage error (exit 2) in every
command that takes a store, and nothing is created. A local store in
`serve` says, at start and in metrics, that it has no WORM.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from extproc import cli, processes
from extproc.core.note import Signer
from extproc.errors import ConfigError
from extproc.store import StoreURL, parse_store_url
from tests.attacks import MISTYPED_STORE_URLS
from tests.conftest import MotoServer

MISTYPED = MISTYPED_STORE_URLS
VKEY = Signer.generate("urls").verifier().to_text()


def run(argv: list[str]) -> int:
    """The command line in-process: its exit status, whether argparse or the command ends it."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _commands(url: str, tmp: Path) -> dict[str, list[str]]:
    return {
        "serve": ["serve", "--store", url, "--key", str(tmp / "k"), "--wal-dir", str(tmp / "w")],
        "verify": ["verify", url, "--vkey", VKEY],
        "search": ["search", url, "--no-verify"],
        "prove": ["prove", url, "--log", "x", "--seq", "0", "--out", "-"],
        "demo": ["demo", "--store", url, "--workdir", str(tmp / "demo")],
        "init-bucket": ["init-bucket", url, "--yes"],
    }


@pytest.mark.parametrize("url", MISTYPED.values(), ids=MISTYPED.keys())
def test_mistyped_store_url_is_a_usage_error_in_every_command(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, argv in _commands(url, tmp_path).items():
        assert run(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err[:-1].isprintable(), (name, err)  # one clean line
        assert "store" in err.lower() or "s3://" in err, (name, err)
    assert list(tmp_path.iterdir()) == []  # no folder named after the typo, no WAL, no key


def test_mistyped_store_url_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXTPROC_AUDIT_STORE", "s3:/bucket/mesh")
    assert run(["serve", "--key", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "EXTPROC_AUDIT_STORE='s3:/bucket/mesh'" in err and "mistyped s3:// URL" in err
    assert list(tmp_path.iterdir()) == []


ACCEPTED = {
    "bucket": ("s3://audit-bucket", StoreURL("audit-bucket", "")),
    "bucket and prefix": ("s3://audit-bucket/mesh/", StoreURL("audit-bucket", "mesh")),
    "legacy bucket name": ("s3://Audit_Bucket/x", StoreURL("Audit_Bucket", "x")),
    "file URL": ("file:///var/audit", StoreURL(None, path=Path("/var/audit"))),
    "absolute path": ("/var/audit", StoreURL(None, path=Path("/var/audit"))),
    "relative path": ("audit-store", StoreURL(None, path=Path("audit-store"))),
    "a folder named like a URL, said so": ("./s3:/b", StoreURL(None, path=Path("s3:/b"))),
    "a folder named s3, said so": ("./s3/b", StoreURL(None, path=Path("s3/b"))),
}


@pytest.mark.parametrize(("url", "parsed"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_store_url_forms_accepted(url: str, parsed: StoreURL) -> None:
    assert parse_store_url(url) == parsed


@pytest.mark.parametrize("url", MISTYPED.values(), ids=MISTYPED.keys())
def test_mistyped_store_url_refused_by_the_parser(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_store_url(url)


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_local_store_says_it_has_no_worm(make_stack: Any) -> None:
    stack = make_stack()
    port = processes.free_port()
    stack.extra_args += ["--metrics-listen", f"127.0.0.1:{port}"]
    stack.start_server()
    assert _metric(port, "extproc_audit_store_worm") == 0
    assert stack.stop_server() == 0
    log = stack.server_log()
    assert "is a local directory: no WORM (no Object Lock)" in log, log


@pytest.mark.s3
def test_bucket_with_object_lock_is_worm(make_stack: Any, moto: MotoServer) -> None:
    stack = make_stack(f"s3://{moto.new_bucket()}/mesh")
    port = processes.free_port()
    stack.extra_args += ["--metrics-listen", f"127.0.0.1:{port}"]
    stack.start_server()
    assert _metric(port, "extproc_audit_store_worm") == 1
    assert stack.stop_server() == 0
    assert "no WORM" not in stack.server_log()
