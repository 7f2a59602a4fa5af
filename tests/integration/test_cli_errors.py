"""The CLI error matrix: every subcommand given bad input, in a real process.

Each bad input is one line on stderr, `extproc-audit: error: ...`, with exit 2
(usage, configuration, infrastructure) and never a traceback; a bad
EXTPROC_AUDIT_* value is named by serve and changes nothing for the other
commands. The new-user findings of the issue "One reader layer, one config,
one-line errors" are the rows of this table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from extproc import processes
from extproc.cli import build_parser
from extproc.core.note import Signer
from extproc.demo import command_name
from tests.conftest import MotoServer, run_cli

VKEY = Signer.generate("cli-errors").verifier().to_text()
GARBAGE_ENDPOINT = {"AWS_ENDPOINT_URL": "garbage"}
BAD_ENDPOINT = "AWS_ENDPOINT_URL='garbage' is not a valid endpoint URL"


@dataclass(frozen=True)
class Case:
    """A command line (with {tmp}, {file} and {vkey} filled in), the exit code and
    a piece of the one error line it must print."""

    args: tuple[str, ...]
    message: str
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)


def case(*args: str, message: str, env: dict[str, str] | None = None, id: str) -> object:
    return pytest.param(Case(args, message, env=env or {}), id=id)


def fill(texts: tuple[str, ...], tmp: Path) -> list[str]:
    """{tmp}: an empty directory; {file}: a regular file; {vkey}: a verifier key."""
    (tmp / "file").write_text("not a directory, a key or a proof\n")
    values = {"tmp": str(tmp), "file": str(tmp / "file"), "vkey": VKEY}
    return [t.format(**values) for t in texts]


def assert_one_error_line(
    result: subprocess.CompletedProcess[str], code: int, message: str
) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("extproc-audit: error: "), lines[0]
    assert message in lines[0], lines[0]


MATRIX = [
    # keygen
    case("keygen", "--out", "{tmp}/k", message="required: --name", id="keygen-no-name"),
    case("keygen", "--name", "a b", "--out", "{tmp}/k", message="invalid key name",
         id="keygen-bad-name"),
    case("keygen", "--name", "k", "--out", "{file}", message="refusing to overwrite",
         id="keygen-exists"),
    case(
        "keygen", "--name", "k", "--out", "{tmp}/k", "--vkey-out", "{file}/v",
        message="cannot write verifier key", id="keygen-bad-vkey-out",
    ),
    case(
        "keygen", "--name", "k", "--out", "{tmp}/k", "--vkey-out", "{tmp}",
        message="is a directory", id="keygen-vkey-out-directory",
    ),
    # health: a malformed address is a usage error, not "unhealthy"
    case("health", "--addr", "garbage", message="--addr 'garbage' must be HOST:PORT or unix:PATH",
         id="health-garbage-addr"),
    case("health", "--addr", "127.0.0.1:99999", message="must be HOST:PORT", id="health-bad-port"),
    case("health", "--addr", "unix:", message="unix: needs a socket path", id="health-empty-unix"),
    case("health", "--timeout", "0", message="'0' is not a number > 0", id="health-timeout-0"),
    case("health", "--timeout", "nan", message="'nan' is not a number > 0",
         id="health-timeout-nan"),
    # init-bucket: says what it applies, never a silent irreversible default
    case("init-bucket", message="required: s3://BUCKET", id="init-no-url"),
    case("init-bucket", "some/dir", "--yes", message="needs an s3://BUCKET URL", id="init-not-s3"),
    case("init-bucket", "s3://", "--yes", message="names no bucket", id="init-empty-bucket"),
    case("init-bucket", "s3://b/prefix", "--yes", message="without the prefix 'prefix'",
         id="init-prefix"),
    case("init-bucket", "s3://b", message="needs --retention-days and --mode",
         id="init-no-options"),
    case("init-bucket", "s3://b", "--retention-days", "30", message="needs --mode",
         id="init-no-mode"),
    case("init-bucket", "s3://b", "--mode", "COMPLIANCE", message="needs --retention-days",
         id="init-no-days"),
    case("init-bucket", "s3://b", "--retention-days", "0", "--mode", "COMPLIANCE",
         message="'0' is not an integer >= 1", id="init-days-0"),
    case("init-bucket", "s3://b", "--retention-days", "30", "--mode", "FOREVER",
         message="invalid choice", id="init-bad-mode"),
    case("init-bucket", "s3://b", "--yes", env=GARBAGE_ENDPOINT,
         message=BAD_ENDPOINT, id="init-bad-endpoint"),
    # serve: checked before anything is touched (a missing key file is the backstop)
    case("serve", "--key", "{tmp}/missing.key", message="--store is required", id="serve-no-store"),
    case("serve", "--store", "{tmp}/s", "--allow-unauthenticated",
         message="--key is required (or EXTPROC_AUDIT_KEY)", id="serve-no-key"),
    case("serve", "--store", "http://x", "--key", "{tmp}/missing.key",
         message="unsupported store URL 'http://x'", id="serve-bad-store"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--wal-dir", "{tmp}/wal",
         "--metrics-listen", "off", "--allow-unauthenticated", message="missing.key not found",
         id="serve-missing-key"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key",
         message="no authenticated reporters: give --tls-cert", id="serve-unauthenticated"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--trust-xfcc-from",
         "127.0.0.6/32", "--xfcc-mode", "FORWARD_ONLY", message="'FORWARD_ONLY' is not one of",
         id="serve-bad-xfcc-mode"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--drain-timeout", "-1",
         message="--drain-timeout must be at least 0", id="serve-drain-timeout"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--max-backlog-bytes", "0",
         message="--max-backlog-bytes must be at least 1024", id="serve-max-backlog"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key",
         "--max-access-log-entries", "0", message="--max-access-log-entries must be at least 1",
         id="serve-max-access-log-entries"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--bundle-max-bytes",
         "67108865", message="--bundle-max-bytes must be at most 67108864",
         id="serve-bundle-over-the-format-bound"),
    case("verify", "{tmp}", "--vkey", "x", "--max-bundle-bytes", "1",
         message="'1' is not an integer >= 65536", id="verify-bundle-bound-too-small"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--workers", "0",
         message="'0' is not an integer >= 1", id="serve-workers-0"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--workers", "2",
         "--listen", "127.0.0.1:0", "--allow-unauthenticated",
         message="--workers needs a fixed TCP --listen port", id="serve-workers-port-0"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--listen", "garbage",
         message="--listen 'garbage' must be", id="serve-bad-listen"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--log-id", "bad/id",
         message="invalid log id", id="serve-bad-log-id"),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--mode", "bogus",
         message="'bogus' is not one of enforce, observe", id="serve-bad-mode"),
    # serve: a bad environment value names its variable
    *(
        case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", env={name: value},
             message=message, id=f"serve-env-{name[len('EXTPROC_AUDIT_'):].lower()}")
        for name, value, message in [
            ("EXTPROC_AUDIT_GZIP", "maybe", "EXTPROC_AUDIT_GZIP='maybe' is not a boolean"),
            ("EXTPROC_AUDIT_WORKERS", "abc", "EXTPROC_AUDIT_WORKERS='abc' is not an integer"),
            ("EXTPROC_AUDIT_DRAIN_TIMEOUT", "-1",
             "--drain-timeout must be at least 0, not -1 "
             "(set by EXTPROC_AUDIT_DRAIN_TIMEOUT='-1')"),
            ("EXTPROC_AUDIT_MAX_BACKLOG_BYTES", "0",
             "(set by EXTPROC_AUDIT_MAX_BACKLOG_BYTES='0')"),
            ("EXTPROC_AUDIT_LISTEN", "garbage", "(set by EXTPROC_AUDIT_LISTEN='garbage')"),
            ("EXTPROC_AUDIT_MAX_ACCESS_LOG_RATE", "0",
             "--max-access-log-rate must be at least 1, not 0 "
             "(set by EXTPROC_AUDIT_MAX_ACCESS_LOG_RATE='0')"),
            ("EXTPROC_AUDIT_MAX_REPORTER_ACCESS_LOG_RATE", "nan",
             "--max-reporter-access-log-rate must be at least 1, not nan"),
            ("EXTPROC_AUDIT_MODE", "bogus", "EXTPROC_AUDIT_MODE='bogus' is not one of"),
            ("EXTPROC_AUDIT_LOG_ID", "bad/id", "EXTPROC_AUDIT_LOG_ID='bad/id': invalid log id"),
            ("EXTPROC_AUDIT_TRUST_XFCC_FROM", "garbage",
             "(set by EXTPROC_AUDIT_TRUST_XFCC_FROM='garbage')"),
        ]
    ),
    case("serve", "--store", "{tmp}/s", "--key", "{tmp}/missing.key", "--mode", "observe",
         env={"EXTPROC_AUDIT_RECEIPTS": "1"}, message="--receipts needs --mode enforce (envoy "
         "ignores replies in observe mode) (set by EXTPROC_AUDIT_RECEIPTS='1')",
         id="serve-env-receipts"),
    case("serve", "--key", "{tmp}/missing.key", env={"EXTPROC_AUDIT_STORE": "http://x"},
         message="EXTPROC_AUDIT_STORE='http://x': unsupported store URL", id="serve-env-store"),
    # verify: a missing store path is a usage error, not an invalid log
    case("verify", "{tmp}/nope", "--vkey", "{vkey}", message="store path {tmp}/nope does not exist",
         id="verify-missing-path"),
    case("verify", "{file}", "--vkey", "{vkey}", message="is not a directory", id="verify-file"),
    case("verify", "ftp://x", "--vkey", "{vkey}", message="unsupported store URL", id="verify-ftp"),
    case("verify", "s3://", "--vkey", "{vkey}", message="names no bucket", id="verify-no-bucket"),
    case("verify", "{tmp}", message="give the verifier key", id="verify-no-key"),
    case("verify", "{tmp}", "--vkey", "not-a-key", message="verifier key must look like",
         id="verify-bad-key"),
    case("verify", "{tmp}", "--vkey", "{vkey}", "--parallel", "-3",
         message="'-3' is not an integer >= 1", id="verify-parallel"),
    case("verify", "{tmp}", "--vkey", "{vkey}", "--min-retention-days", "-1",
         message="'-1' is not a number >= 0", id="verify-min-retention"),
    case("verify", "{tmp}", "--vkey", "{vkey}", "--gap-threshold", "-1",
         message="'-1' is not a number > 0", id="verify-gap-threshold"),
    case("verify", "s3://b/x", "--vkey", "{vkey}", env=GARBAGE_ENDPOINT,
         message=BAD_ENDPOINT, id="verify-bad-endpoint"),
    # search
    case("search", "{tmp}/nope", "--no-verify", message="does not exist", id="search-missing-path"),
    case("search", "{tmp}", message="or --no-verify", id="search-no-key"),
    case("search", "{tmp}", "--no-verify", "--prefetch", "-1",
         message="'-1' is not an integer >= 1", id="search-prefetch"),
    case("search", "{tmp}", "--no-verify", "--since", "yesterday", message="time 'yesterday'",
         id="search-bad-time"),
    case("search", "s3://b/x", "--no-verify", env=GARBAGE_ENDPOINT,
         message=BAD_ENDPOINT, id="search-bad-endpoint"),
    # prove
    case("prove", "{tmp}/nope", "--log", "x", "--seq", "0", "--out", "-", message="does not exist",
         id="prove-missing-path"),
    case("prove", "{tmp}", "--log", "x", "--seq", "-1", "--out", "-",
         message="'-1' is not an integer >= 0", id="prove-seq"),
    case("prove", "{tmp}", "--log", "x", "--seq", "0", "--tree-size", "0", "--out", "-",
         message="'0' is not an integer >= 1", id="prove-tree-size"),
    case("prove", "{tmp}", "--log", "x", "--out", "-", message="--seq --request-id",
         id="prove-no-entry"),
    case("prove", "{tmp}", "--log", "x", "--seq", "0", "--out", "-", message="log x not found",
         id="prove-no-log"),
    case("prove", "s3://b/x", "--log", "x", "--seq", "0", "--out", "-", env=GARBAGE_ENDPOINT,
         message=BAD_ENDPOINT, id="prove-bad-endpoint"),
    # check-proof
    case("check-proof", "{tmp}/nope", "--vkey", "{vkey}", message="cannot read",
         id="check-proof-missing"),
    case("check-proof", "{file}", message="give the verifier key", id="check-proof-no-key"),
    case("check-proof", "{file}", "--vkey", "{vkey}", message="not a tlog proof",
         id="check-proof-not-a-proof"),
    # demo: refused before anything starts
    case("demo", "--requests", "0", message="'0' is not an integer >= 1", id="demo-requests-0"),
    case("demo", "--requests", "-1", message="'-1' is not an integer >= 1", id="demo-requests-neg"),
    case("demo", "--concurrency", "0", message="'0' is not an integer >= 1", id="demo-concurrency"),
    case("demo", "--mode", "bogus", message="invalid choice", id="demo-bad-mode"),
    case("demo", "--store", "http://x", message="unsupported store URL", id="demo-http-store"),
    case("demo", "--store", "memory://", message="must outlive its server", id="demo-memory-store"),
    case("demo", "--workdir", "{file}", message="exists and is not a directory",
         id="demo-workdir-file"),
    case("demo", "--workdir", "{file}/sub", message="cannot create the demo work directory",
         id="demo-workdir-under-file"),
    case("demo", "--workdir", "/proc/extproc-demo", message="cannot create the demo work directory",
         id="demo-workdir-read-only"),
    case("demo", "--workdir", "{tmp}/w", "--store", "s3://b/demo", env=GARBAGE_ENDPOINT,
         message=BAD_ENDPOINT, id="demo-bad-endpoint"),
]  # fmt: skip


@pytest.mark.parametrize("c", MATRIX)
def test_bad_input_is_one_error_line(c: Case, tmp_path: Path) -> None:
    result = run_cli(*fill(c.args, tmp_path), env=c.env)
    assert_one_error_line(result, c.code, fill((c.message,), tmp_path)[0])


def test_keygen_leaves_nothing_behind_when_the_verifier_key_cannot_be_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("x")
    key = tmp_path / "new" / "dir" / "signing.key"
    result = run_cli("keygen", "--name", "k", "--out", str(key), "--vkey-out", f"{tmp_path}/file/v")
    assert_one_error_line(result, 2, "cannot write verifier key")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_health_unix_address_is_valid_and_unreachable_is_unhealthy(tmp_path: Path) -> None:
    result = run_cli("health", "--addr", f"unix:{tmp_path}/none.sock", "--timeout", "0.5")
    assert result.returncode == 1, result.stderr
    assert "UNREACHABLE" in result.stdout
    assert result.stderr == ""


# --- the environment ----------------------------------------------------------------------

BAD_ENV = {
    "EXTPROC_AUDIT_WORKERS": "abc",
    "EXTPROC_AUDIT_GZIP": "maybe",
    "EXTPROC_AUDIT_MODE": "bogus",
    "EXTPROC_AUDIT_LISTEN": "garbage",
    "EXTPROC_AUDIT_STORE": "ftp://x",
    "EXTPROC_AUDIT_DRAIN_TIMEOUT": "-1",
    "EXTPROC_AUDIT_LOG_ID": "bad/id",
}

UNAFFECTED = [
    pytest.param(("--help",), id="help"),
    pytest.param(("--version",), id="version"),
    pytest.param(("health", "--addr", "127.0.0.1:{port}", "--timeout", "0.5"), id="health"),
    pytest.param(("verify", "{tmp}", "--vkey", "{vkey}"), id="verify"),
    pytest.param(("search", "{tmp}", "--no-verify"), id="search"),
    pytest.param(("prove", "{tmp}", "--log", "x", "--seq", "0", "--out", "-"), id="prove"),
    pytest.param(("check-proof", "{file}", "--vkey", "{vkey}"), id="check-proof"),
    pytest.param(("init-bucket", "s3://b"), id="init-bucket"),
    pytest.param(("demo", "--requests", "0"), id="demo"),
    *(
        pytest.param((command, "--help"), id=f"{command}-help")
        for command in ("keygen", "health", "init-bucket", "verify", "demo", "prove",
                        "check-proof", "search")
    ),
]  # fmt: skip


@pytest.mark.parametrize("args", UNAFFECTED)
def test_bad_environment_leaves_other_commands_alone(args: tuple[str, ...], tmp_path: Path) -> None:
    port = processes.free_port()
    (tmp_path / "file").write_text("x\n")
    filled = [a.format(tmp=tmp_path, file=tmp_path / "file", vkey=VKEY, port=port) for a in args]
    clean = run_cli(*filled)
    bad = run_cli(*filled, env=BAD_ENV)
    assert "Traceback" not in bad.stdout + bad.stderr
    assert (bad.returncode, bad.stdout, bad.stderr) == (
        clean.returncode,
        clean.stdout,
        clean.stderr,
    )
    assert len(bad.stderr.splitlines()) <= 2  # a summary line, or one error line


def test_bad_environment_leaves_keygen_alone(tmp_path: Path) -> None:
    result = run_cli("keygen", "--name", "k", "--out", str(tmp_path / "k"), env=BAD_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("k+")
    assert result.stderr.startswith("signing key written to")


def test_serve_help_shows_defaults_and_where_they_came_from() -> None:
    result = run_cli("serve", "--help", env={"EXTPROC_AUDIT_WORKERS": "abc"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert text.startswith("usage: extproc-audit serve --store URL --key FILE [options]")
    assert "(default: 0.0.0.0:50051)" in text
    assert "(default: abc, from EXTPROC_AUDIT_WORKERS)" in text
    assert "(default: None)" not in text  # no default is not a default
    assert "--wal-dir DIR" in text and "<wal-dir>/<log-id>/" in text


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not (action.help or "").strip()
    ]
    assert missing == []
    assert len(commands.choices) == 13


# --- the fsync helper ---------------------------------------------------------------------


def test_serve_on_a_port_in_use_ends_with_one_error_and_no_traceback(tmp_path: Path) -> None:
    """The WAL's fsync helper may be answering when the server exits: it exits
    quietly (it printed a BrokenPipeError traceback in 2 of 5 runs)."""
    assert run_cli("keygen", "--name", "k", "--out", str(tmp_path / "k")).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for run in range(5):
            result = run_cli(
                "serve", "--store", str(tmp_path / "s"), "--key", str(tmp_path / "k"),
                "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off",
                "--wal-dir", str(tmp_path / "wal"), "--log-id", f"run{run}",
                "--allow-unauthenticated",
            )  # fmt: skip
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            lines = result.stderr.splitlines()
            errors = [line for line in lines if line.startswith("extproc-audit:")]
            assert errors == [lines[-1]], result.stderr
            assert errors[0].startswith("extproc-audit: error: cannot listen on")


# --- S3 (moto) ----------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_bucket_errors_are_one_line(moto: MotoServer, tmp_path: Path) -> None:
    no_lock = moto.new_bucket(lock=False)
    missing = "no-such-audit-bucket"
    assert run_cli("keygen", "--name", "k", "--out", str(tmp_path / "k")).returncode == 0
    cases = [
        (["init-bucket", f"s3://{no_lock}", "--retention-days", "1", "--mode", "GOVERNANCE"],
         "exists without Object Lock"),
        (["verify", f"s3://{missing}/x", "--vkey", VKEY], f"bucket {missing} does not exist"),
        (["search", f"s3://{missing}/x", "--no-verify"], f"bucket {missing} does not exist"),
        (["prove", f"s3://{missing}/x", "--log", "x", "--seq", "0", "--out", "-"],
         f"bucket {missing} does not exist"),
        (["demo", "--workdir", str(tmp_path / "demo"), "--store", f"s3://{no_lock}/demo"],
         f"bucket {no_lock} has no Object Lock"),
    ]  # fmt: skip
    for args, message in cases:
        assert_one_error_line(run_cli(*args), 2, message)
    serve = run_cli(
        "serve", "--store", f"s3://{no_lock}", "--key", str(tmp_path / "k"),
        "--listen", "127.0.0.1:0", "--wal-dir", str(tmp_path / "wal"), "--metrics-listen", "off",
        "--allow-unauthenticated",
    )  # fmt: skip
    assert serve.returncode == 2
    assert "Traceback" not in serve.stderr
    assert serve.stderr.splitlines()[-1].startswith("extproc-audit: error: bucket ")
    assert "has no Object Lock" in serve.stderr


@pytest.mark.s3
def test_init_bucket_yes_applies_and_first_says_the_documented_default(moto: MotoServer) -> None:
    bucket = f"init-yes-{os.getpid()}"
    result = run_cli("init-bucket", f"s3://{bucket}", "--yes")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith(
        f"bucket {bucket}: applying Object Lock with default retention COMPLIANCE 365 days"
    )
    assert second == f"bucket {bucket} created: default retention COMPLIANCE 365 days"
    rule = moto.s3().get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    retention = rule["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("COMPLIANCE", 365)


# --- the demo -----------------------------------------------------------------------------


def _printed_commands(stdout: str) -> list[str]:
    """The extproc-audit commands the demo tells the user to run."""
    return [
        line.strip()
        for line in stdout.splitlines()
        if line.startswith("  ")
        and (" verify " in line or " prove " in line or "check-proof" in line)
    ]


@pytest.mark.s3
@pytest.mark.envoy
@pytest.mark.slow
def test_demo_switches_store_in_one_workdir(moto: MotoServer, tmp_path: Path) -> None:
    """README: a local demo, then `--store s3://...` in the same directory. Each
    store has its own WAL, so every run works; and the commands it prints run
    as printed, from where the demo ran."""
    bucket = moto.new_bucket()
    workdir = "extproc-demo"
    runs = [(), (), ("--store", f"s3://{bucket}/demo"), ()]
    for extra in runs:
        result = subprocess.run(
            [sys.executable, "-m", "extproc", "demo", "--requests", "5", "--workdir", workdir,
             *extra],
            capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "verification         VALID" in result.stdout
        commands = _printed_commands(result.stdout)
        assert len(commands) == 3, result.stdout
        for command in commands:
            ran = subprocess.run(
                shlex.split(command), capture_output=True, text=True, timeout=120,
                cwd=tmp_path, check=False,
            )  # fmt: skip
            assert ran.returncode == 0, f"{command}\n{ran.stdout}{ran.stderr}"
    assert (tmp_path / workdir / "wal" / "demo").is_dir()  # the local store's WAL
    assert len(list((tmp_path / workdir / "wal-stores").iterdir())) == 1  # the bucket's


@pytest.mark.envoy
@pytest.mark.slow
def test_demo_observe_mode_says_what_it_wrote(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--requests", "4", "--workdir", str(tmp_path / "d"), "--mode", "observe"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "observe mode: nothing waits" in text
    assert "from this run 4 access entries (one per request with its outcome" in text
    assert "request entries" not in text  # observe mode writes none
    assert '"kind": "access"' in result.stdout  # the entry shown is one of this run's
    prove = next(c for c in _printed_commands(result.stdout) if " prove " in c)
    assert " --seq " in prove  # prove --request-id names request entries only


@pytest.mark.envoy
@pytest.mark.slow
def test_demo_server_failure_prints_the_servers_error_and_its_log(tmp_path: Path) -> None:
    store, workdir = tmp_path / "store", tmp_path / "d"
    first = run_cli("demo", "--requests", "3", "--workdir", str(workdir), "--store", str(store))
    assert first.returncode == 0, first.stdout + first.stderr
    shutil.rmtree(store)  # the published log is gone; the demo's WAL remembers it
    result = run_cli("demo", "--requests", "3", "--workdir", str(workdir), "--store", str(store))
    assert_one_error_line(result, 2, "the audit server exited: log demo: this WAL published")
    assert f"its log: {workdir / 'server.log'}" in result.stderr
    assert "its WAL for this store: " in result.stderr


def test_demo_names_the_running_script_when_it_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the README's install line the venv is not on PATH: the demo's
    commands start with the script's path, relative where it is below the
    directory the demo ran in (`.venv/bin/extproc-audit`)."""
    script = Path(sys.executable).parent / "extproc-audit"
    if not script.is_file():
        pytest.skip(f"no extproc-audit script next to {sys.executable}")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    venv_parent = script.parent.parent.parent
    assert command_name(venv_parent) == f"{script.parent.parent.name}/bin/extproc-audit"
    name = command_name(tmp_path)
    assert name == shlex.quote(str(script))
    result = subprocess.run(
        [*shlex.split(name), "--version"], capture_output=True, text=True, cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("extproc-audit ")


def test_demo_quotes_the_last_error_line_of_a_server_or_envoy_log(tmp_path: Path) -> None:
    from extproc.demo import _last_error_line

    server = tmp_path / "server.log"
    server.write_text(
        "2026-12-01 15:04:34,559 INFO extproc.log.publisher: log x: resuming at size 1\n"
        "2026-12-01 15:04:34,560 ERROR extproc.server.app: first trouble\n"
        "extproc-audit: error: cannot listen on 127.0.0.1:1 (--listen): in use\n"
        "2026-12-01 15:04:35,000 INFO extproc.server.app: bye\n"
    )
    assert _last_error_line(server) == "cannot listen on 127.0.0.1:1 (--listen): in use"
    envoy = tmp_path / "envoy.log"
    envoy.write_text(
        "[2026-12-01 15:04:34.559][7][warning][main] [source/server/server.cc:1] fine\n"
        "[2026-12-01 15:04:34.560][7][critical][main] [source/server/server.cc:2] error "
        "initializing config 'envoy.yaml': bad\n"
    )
    assert _last_error_line(envoy) == (
        "[main] [source/server/server.cc:2] error initializing config 'envoy.yaml': bad"
    )
    assert _last_error_line(tmp_path / "none.log") is None
