"""The docs lane: the commands of README.md and docs/*.md run, or are checked,
so a doc cannot drift from the code unnoticed (marker `docs`).

How each code block is treated is written above it in the doc
(tests/doclane.py explains the comment): `run` blocks run here, in document
order, in a temporary workdir shaped like a fresh clone, against a local store
or moto; `flags-only` blocks (a cluster, Docker, AWS, minutes of benchmark)
and the commands in the prose are checked for their options and the files
they name; `prose` blocks are none of these. A block without a comment fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from extproc import processes
from extproc.keys import load_signer
from tests import doclane
from tests.conftest import MotoServer, read_entries
from tests.doclane import DOCS, ROOT, SHELL, Block, Command
from tests.messages import als_messages, http_entry, request_headers
from tests.pki import Issued, TestCA

pytestmark = pytest.mark.docs

DOC_IDS = [str(doc.relative_to(ROOT)) for doc in DOCS]
README = ROOT / "README.md"
# The request id a `reporter` setup sends (README's `3f2a...`).
REPORTED_RID = "3f2a9d4e-51b7-4c1a-9e0f-6b2d8c7a1e35"
REPORTER_ID = "spiffe://cluster.local/ns/shop/sa/frontend"
COMMAND_TIMEOUT = 180.0  # a command that hangs fails the lane, it does not stall CI


def _blocks(doc: Path) -> list[Block]:
    return doclane.read_blocks(doc)


# --- every block is classified, every command is checked --------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_code_block_is_classified(doc: Path) -> None:
    blocks = _blocks(doc)  # a malformed docs-lane comment raises, naming its line
    unclassified = [f"{b.where} ({b.lang or 'no language'})" for b in blocks if not b.kind]
    assert not unclassified, (
        "put <!-- docs-lane: run -->, <!-- docs-lane: flags-only: why --> or "
        "<!-- docs-lane: prose: what --> right before: " + ", ".join(unclassified)
    )
    for b in blocks:
        if b.kind == "run":
            assert b.lang in (*SHELL, "sql"), f"{b.where}: the lane runs shell and sql blocks only"
        if b.kind == "flags-only":
            assert b.lang in SHELL, f"{b.where}: flags-only is for shell blocks"
    assert not doclane.indented_commands(doc), (
        "commands in an indented block cannot say how the lane treats them: fence them "
        "(```bash) with a docs-lane comment: " + "; ".join(doclane.indented_commands(doc))
    )


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_commands_name_options_and_files_that_exist(doc: Path) -> None:
    """Every command, run or not, block or inline: our options exist in that
    command's --help, scripts exist and take the options given, files and
    kustomize directories exist, other tools' options are on the lane's list;
    and every option a code span or a synopsis names is one of ours."""
    problems: list[str] = []
    found: list[Command] = []
    for b in _blocks(doc):
        if b.kind in ("run", "flags-only") and b.lang in SHELL:
            found += doclane.commands(b.text, b.doc, b.line, b.lang)
        elif b.kind == "prose" and b.lang == "":
            problems += [
                f"{b.where}: no command of ours has {f}" for f in doclane.unknown_flags(b.text)
            ]
    found += doclane.inline_commands(doc)
    for command in found:
        problems += [f"{command.where}: {p}" for p in doclane.check_command(command.text)]
    for line, span in doclane.code_spans(doc):
        if span.startswith("-"):
            problems += [
                f"{doc.name}:{line}: no command of ours has {f}"
                for f in doclane.unknown_flags(span)
            ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path",
    [*DOCS, ROOT / "pyproject.toml", ROOT / ".ci" / "run"],
    ids=[*DOC_IDS, "pyproject.toml", ".ci/run"],
)
def test_repository_paths_named_exist(path: Path) -> None:
    text = path.read_text()
    problems = [
        f"no such file: {p}"
        for m in doclane.REPO_PATH.finditer(text)
        if (p := doclane.missing_path(m.group(1)))
    ]
    for name in set(re.findall(r"(?<![\w/.-])([A-Z][A-Za-z_]*\.md)\b", text)):
        if not ((ROOT / name).exists() or (ROOT / "docs" / name).exists()):
            problems.append(f"no such document: {name}")
    for target in re.findall(r"\]\(([^)\s#:]+)(?:#[^)]*)?\)", text):
        if not (path.parent / target).exists():
            problems.append(f"link to a missing file: {target}")
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(sorted(set(problems)))


def _our_metric_names() -> set[str]:
    from prometheus_client import REGISTRY

    import extproc.metrics  # noqa: F401  # registers them

    suffixes = {
        "counter": ("_total",),
        "histogram": ("", "_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    return {
        metric.name + suffix
        for metric in REGISTRY.collect()
        if metric.name.startswith("extproc_audit_")
        for suffix in suffixes.get(metric.type, ("",))
    }


NOT_METRICS = {"extproc_audit_local"}  # the per-pod EnvoyFilter's cluster name


def test_metrics_the_docs_name_exist() -> None:
    ours = _our_metric_names()
    named = {
        (doc.name, m.group(0))
        for doc in (*DOCS, ROOT / "istio" / "monitoring" / "alerts.yaml")
        for m in re.finditer(r"\bextproc_audit_[a-z_]*[a-z]\b(?!\*)", doc.read_text())
    }
    missing = sorted(f"{doc}: {name}" for doc, name in named if name not in ours | NOT_METRICS)
    assert not missing, missing


# Drifts of the kinds the lane exists for, each with what it must say about it.
CAUGHT = {
    "serve-option-gone": (
        "extproc-audit serve --store s --retry-max-delay 5",
        "no option --retry-max-delay",
    ),
    "command-renamed": ("extproc-audit verfy ./store --vkey @k", "no command 'verfy'"),
    "script-without-venv": ("python scripts/bench.py --quick", "write .venv/bin/python"),
    "script-option-gone": (".venv/bin/python scripts/bench.py --fast", "no option --fast"),
    "script-gone": (".venv/bin/python scripts/bench_all.py", "no such file: scripts/bench_all.py"),
    "kustomize-dir-gone": (
        "kubectl apply -k istio/overlays/nope",
        "no kustomization in istio/overlays/nope",
    ),
    "file-gone": ("promtool test rules istio/monitoring/rules_test.yaml", "no such file"),
    "compose-service-gone": ("docker compose logs trafic", "no service 'trafic'"),
    "unknown-tool-flag": (
        "helm upgrade x y --reuse-value",
        "--reuse-value is not on the lane's list",
    ),
    "unknown-program": ("wget http://x", "does not know the program 'wget'"),
    "option-after-image": (
        "docker run extproc-audit:0.1.0 verify s3://b --vky k",
        "no option --vky",
    ),
}


@pytest.mark.parametrize(("command", "said"), CAUGHT.values(), ids=CAUGHT)
def test_the_lane_reports_drift(command: str, said: str) -> None:
    assert any(said in p for p in doclane.check_command(command)), doclane.check_command(command)


def test_the_lane_passes_what_exists() -> None:
    for command in (
        ".venv/bin/python scripts/bench.py --quick --repeat 3   # a comment --not-an-option",
        "extproc-audit -v verify ./store --vkey @audit.vkey --state s.json",
        "kubectl apply -k istio/overlays/enforce && docker compose run --rm verify",
        "printf '%s\\n' \"$TOKEN\" | extproc-audit hash-value --hash-key hash.key",
    ):
        assert doclane.check_command(command) == [], command


BAD_ANNOTATIONS = {
    "unknown-class": ("<!-- docs-lane: maybe -->", "is none of run, flags-only, prose"),
    "flags-only-without-reason": ("<!-- docs-lane: flags-only -->", "needs its reason"),
    "substitution-outside-run": ("<!-- docs-lane: prose: x\n  a -> b\n-->", "for run blocks"),
    "unreadable-line": ("<!-- docs-lane: run\n  what is this\n-->", "not old -> new"),
}


@pytest.mark.parametrize(("comment", "said"), BAD_ANNOTATIONS.values(), ids=BAD_ANNOTATIONS)
def test_malformed_annotation_refused(tmp_path: Path, comment: str, said: str) -> None:
    doc = tmp_path / "DOC.md"
    doc.write_text(f"# doc\n\n{comment}\n```bash\nextproc-audit demo\n```\n")
    with pytest.raises(ValueError, match=re.escape(said)):
        doclane.read_blocks(doc)


def test_block_without_annotation_or_after_prose_is_unclassified(tmp_path: Path) -> None:
    doc = tmp_path / "DOC.md"
    doc.write_text(
        "<!-- docs-lane: run -->\n```bash\nextproc-audit demo\n```\n\n"
        "<!-- docs-lane: run -->\nA sentence between.\n\n```sh\nextproc-audit demo\n```\n"
        "```\nextproc-audit demo\n```\n"
    )
    assert [(b.line, b.kind) for b in doclane.read_blocks(doc)] == [(2, "run"), (9, ""), (12, "")]


# --- the lane: run blocks run -------------------------------------------------------------------


def _value_of(words: list[str], option: str) -> str | None:
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(option + "="):
            return word.partition("=")[2]
    return None


def _workdir(path: Path) -> Path:
    """A directory shaped like a fresh clone: links to the repository's files
    and to the venv, so what a command writes stays here."""
    path.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".venv") and not entry.name.endswith("_cache"):
            (path / entry.name).symlink_to(entry)
    (path / ".venv").symlink_to(Path(sys.prefix))
    return path


def _env(**extra: str) -> dict[str, str]:
    """Our tree's code, the venv's programs first; the metrics port of a
    `serve` is a free one (the default, 9464, may be taken on a shared machine)."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "EXTPROC_AUDIT_METRICS_LISTEN": f"127.0.0.1:{processes.free_port()}",
        "EXTPROC_AUDIT_DRAIN_DELAY": "0",
        **extra,
    }


@dataclass
class DemoLog:
    """A demo run's workdir: its store (enforce mode: request and access
    entries), signing key, a request id and the first checkpoint's size."""

    workdir: Path
    rid: str
    size: int


@pytest.fixture(scope="session")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> DemoLog:
    workdir = tmp_path_factory.mktemp("docs-demo") / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "extproc", "demo", "--requests", "30", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=_env(), check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    store = workdir / "store"
    rid = next(e["rid"] for e in read_entries(str(store), "demo") if e["kind"] == "request")
    size = min(int(p.name) for p in (store / "logs" / "demo" / "checkpoints").iterdir())
    return DemoLog(workdir, rid, size)


@dataclass
class Lane:
    """One doc's run: its workdir, environment and lane values, and the
    `serve` a block started, if one runs."""

    workdir: Path
    request: pytest.FixtureRequest
    values: dict[str, str] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    ca: TestCA | None = None
    reporter: Issued | None = None
    ran: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values.update(port=str(processes.free_port()), health_port=str(processes.free_port()))
        self.base_env = _env()

    def run_block(self, block: Block) -> None:
        self._prepare(block)
        text = doclane.substituted(block, self.values)
        if block.lang == "sql":
            self._run_sql(block, text)
            return
        env = {**self.base_env, **{k: v.format(**self.values) for k, v in block.env}}
        for command in doclane.commands(text, block.doc, block.line, block.lang):
            if command.elided:
                continue  # an example with a part left out: checked, not run
            words = doclane.simple_commands(command.text)[0]
            if self.server is not None and words[:2] != ["extproc-audit", "health"]:
                self.stop_server()
            if words[:2] == ["extproc-audit", "serve"]:
                self._start_server(command, words, block, env)
            else:
                self._run(command, env)
        self.stop_server()

    def _prepare(self, block: Block) -> None:
        if "pki" in block.setup and self.ca is None:
            self.ca = TestCA(self.workdir, name="reporters-ca")  # reporters-ca.pem
            self.ca.issue("server", ips=("127.0.0.1",))  # server.pem, server.key
            self.reporter = self.ca.issue("reporter", uris=(REPORTER_ID,))
            self.values["rid"] = REPORTED_RID
        if "demo" in block.setup and not (self.workdir / "store").exists():
            demo: DemoLog = self.request.getfixturevalue("demo_log")
            shutil.copytree(demo.workdir / "store", self.workdir / "store")
            vkey = load_signer(demo.workdir / "signing.key").verifier().to_text()
            (self.workdir / "audit.vkey").write_text(vkey + "\n")
            (self.workdir / "audit.keyring").write_text(vkey + "\n")
            self._run(
                Command(
                    "extproc-audit verify ./store --vkey @audit.vkey --state audit-state.json",
                    "setup",
                ),
                self.base_env,
            )
            self.values.update(rid=demo.rid, size=str(demo.size))

    def _run(self, command: Command, env: dict[str, str]) -> None:
        run = subprocess.run(
            ["bash", "-c", "set -o pipefail\n" + command.text],
            cwd=self.workdir, env=env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT, check=False,
        )  # fmt: skip
        self.ran.append(command.text)
        assert run.returncode == 0, (
            f"{command.where}: `{command.text}` exited {run.returncode}\n"
            f"stdout: {run.stdout[-2000:]}\nstderr: {run.stderr[-2000:]}"
        )

    def _run_sql(self, block: Block, text: str) -> None:
        with contextlib.chdir(self.workdir):
            relation = duckdb.sql(text)
            assert relation is not None, f"{block.where}: the query returns no rows"
            rows = relation.fetchall()
        self.ran.append(f"duckdb: {block.where}")
        assert rows, f"{block.where}: the query returns no row on the lane's log"

    def _start_server(
        self, command: Command, words: list[str], block: Block, env: dict[str, str]
    ) -> None:
        with (self.workdir / "serve.log").open("ab") as log:
            self.server = server = subprocess.Popen(
                ["bash", "-c", "exec " + command.text],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.ran.append(command.text)
        health = _value_of(words, "--health-listen") or _value_of(words, "--listen")
        assert health is not None, f"{command.where}: the lane asks --health-listen or --listen"
        processes.wait_until(
            lambda: processes.grpc_serving(health),
            f"{command.where} (see {self.workdir / 'serve.log'})",
            server,
        )
        if "reporter" in block.setup:
            self._report(str(_value_of(words, "--listen")))

    def _report(self, listen: str) -> None:
        """One audited request and its outcome, as an mTLS reporter sends them."""
        assert self.ca is not None and self.reporter is not None, "setup: reporter needs pki"
        creds = grpc.ssl_channel_credentials(
            self.ca.cert.read_bytes(),
            self.reporter.key.read_bytes(),
            self.reporter.cert.read_bytes(),
        )
        rid = self.values["rid"]
        with grpc.secure_channel(listen, creds) as channel:
            stub = ext_proc_grpc.ExternalProcessorStub(channel)
            request = request_headers("/admin/accounts/7", rid, method="DELETE")
            replies = list(stub.Process(iter([request]), timeout=10))
            assert [r.WhichOneof("response") for r in replies] == ["request_headers"]
            outcome = als_messages([[http_entry(path="/admin/accounts/7", rid=rid, status=503)]])
            als_pb2_grpc.AccessLogServiceStub(channel).StreamAccessLogs(outcome, timeout=10)

    def stop_server(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        status = processes.stop(server, sig=signal.SIGTERM)
        log = (self.workdir / "serve.log").read_text(errors="replace")
        assert status == 0, f"serve exited {status} on SIGTERM:\n{log[-3000:]}"


def _runnable(doc: Path) -> bool:
    return any(b.kind == "run" for b in _blocks(doc))


RUNNABLE = [doc for doc in DOCS if _runnable(doc)]


@pytest.mark.s3
@pytest.mark.envoy
@pytest.mark.parametrize("doc", RUNNABLE, ids=[str(d.relative_to(ROOT)) for d in RUNNABLE])
def test_doc_commands_run(
    doc: Path, moto: MotoServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    blocks = [b for b in _blocks(doc) if b.kind == "run"]
    for tool in sorted({t for b in blocks for t in b.needs}):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
            )
    lane = Lane(_workdir(tmp_path / "clone"), request)
    try:
        for block in blocks:
            lane.run_block(block)
    finally:
        if lane.server is not None:
            processes.stop(lane.server, sig=signal.SIGKILL)

    assert lane.ran


# --- what the lane found, held one by one -------------------------------------------------------


def test_readme_starts_with_install_demo_and_tests(tmp_path: Path) -> None:
    """README's first lines: exactly two commands, install + demo and the
    tests; .ci/run installs as the first does and ends in the test command,
    and the demo runs as written from a fresh directory."""
    first = _blocks(README)[0]
    before = README.read_text().splitlines()[: first.line - 1]
    assert before[0] == "# extproc-audit" and all(
        not line.strip() or line.startswith("<!-- docs-lane:") for line in before[1:]
    )
    install, tests = (
        c.text.split("#")[0].strip() for c in doclane.commands(first.text, first.doc, first.line)
    )
    assert [part.strip() for part in install.split("&&")] == [
        "python3 -m venv .venv",
        ".venv/bin/pip install -e '.[test]'",
        ".venv/bin/extproc-audit demo",
    ]
    assert tests == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m venv .venv" in ci and "pip install --quiet -e '.[test]'" in ci
    assert ci.rstrip().endswith(".venv/bin/python -m pytest")  # README's test command
    run = subprocess.run(
        ["bash", "-c", ".venv/bin/extproc-audit demo"],
        cwd=_workdir(tmp_path / "clone"), env=_env(), capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^verification\s+VALID$", run.stdout, re.M), run.stdout


def test_serve_options_table_lists_serve_options() -> None:
    """README's `serve` options table names options serve has."""
    table = README.read_text().split("### `serve` options", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"^\| `(--[a-z-]+)", table, re.M)) | set(
        re.findall(r"^\| [^|]*`(--[a-z-]+)", table, re.M)
    )
    assert named - doclane.cli_flags("serve") == set()


def test_search_duckdb_example_finds_every_outcome_of_the_demo_log(
    demo_log: DemoLog, tmp_path: Path
) -> None:
    """The documented query, on a demo log (enforce mode: the outcomes are
    `access` entries), returns what `search --status 2xx --join` prints; it
    once selected `response` entries only, which that log has none of."""
    block = next(
        b for b in _blocks(ROOT / "docs" / "SEARCH.md") if b.lang == "sql" and b.kind == "run"
    )
    shutil.copytree(demo_log.workdir / "store", tmp_path / "store")
    with contextlib.chdir(tmp_path):
        relation = duckdb.sql(doclane.substituted(block, {}))
        assert relation is not None, "the query returns no rows"
        rows = relation.fetchall()
    vkey = load_signer(demo_log.workdir / "signing.key").verifier().to_text()
    search = subprocess.run(
        [sys.executable, "-m", "extproc", "search", str(tmp_path / "store"), "--vkey", vkey,
         "--status", "2xx", "--join"],
        capture_output=True, text=True, env=_env(), timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert search.returncode == 0, search.stderr
    printed = [json.loads(line) for line in search.stdout.splitlines()]
    outcomes = [e for e in printed if e["kind"] == "access"]
    assert len(outcomes) == 30 and [(r[2], r[3], r[4]) for r in rows] == [
        (e["seq"], e["rid"], e["resp"]["status"]) for e in outcomes
    ]
    requests = {e["seq"]: e for e in printed if e["kind"] == "request"}
    assert [(r[5], r[6]) for r in rows] == [
        (requests[e["ref"]]["req"]["method"], requests[e["ref"]]["req"]["path"]) for e in outcomes
    ]


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.partition("{")[0]
            values[key] = values.get(key, 0.0) + float(value)
    return values


def test_runbook_backlog_rates_count_every_entry_in_observe_mode(make_stack: Any) -> None:
    """RUNBOOK's backlog diagnosis compares the entries made durable with the
    entries published, per second: the two metrics it names both count every
    entry of the log, access-log entries of observe mode included (it once
    named extproc_audit_entries_total, which counts ext_proc entries only)."""
    section = (
        (ROOT / "docs" / "RUNBOOK.md").read_text().split("### ExtprocAuditBacklogNearLimit", 1)[1]
    )
    diagnosis = section.split("**Diagnose.**", 1)[1].split("**Recover.**", 1)[0]
    named = re.findall(r"deriv\((extproc_audit_\w+)\[", diagnosis)
    assert sorted(named) == ["extproc_audit_log_entries", "extproc_audit_published_entries"]
    port = processes.free_port()
    stack = make_stack(mode="observe", extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    stack.start_server()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        messages = als_messages([[http_entry(rid=f"obs-{i}") for i in range(5)]])
        als_pb2_grpc.AccessLogServiceStub(channel).StreamAccessLogs(messages, timeout=10)

    def settled() -> dict[str, float] | None:
        m = _metrics(port)
        return m if m.get("extproc_audit_published_entries", 0) >= 6 else None  # writer start + 5

    processes.wait_until(settled, "the 5 access entries published", stack.server)
    values = _metrics(port)
    assert stack.stop_server() == 0
    logged = len(read_entries(stack.store_url, stack.log_id)) - 1  # the final writer entry
    assert [values[name] for name in sorted(named)] == [logged, logged]
    assert values.get("extproc_audit_entries_total", 0) < logged  # why it was the wrong one


def test_auditing_json_example_matches_verify_output(
    demo_log: DemoLog, moto: MotoServer, tmp_path: Path
) -> None:
    """The keys of AUDITING.md's `verify --format json` example exist in the
    real output, and a finding about the bucket as a whole has log_id "" (the
    example once showed "-")."""
    text = (ROOT / "docs" / "AUDITING.md").read_text()
    example = text.split("## JSON output (`--format json`)", 1)[1].split("\n    {\n", 1)[1]
    example = "{\n" + example.split("\n    }\n", 1)[0] + "\n}"
    example = re.sub(r"\s//[^\n]*", "", example)  # comments, not the // of s3://
    example = re.sub(r",\s*\.\.\.\s*([\]}])", r"\1", example)
    documented = json.loads(example)
    vkey = load_signer(demo_log.workdir / "signing.key").verifier().to_text()
    state = tmp_path / "state.json"
    store = demo_log.workdir / "store"

    def verify(days: int, *args: str) -> subprocess.CompletedProcess[str]:
        """verify --state over the demo log in a bucket whose default rule keeps `days`."""
        bucket = moto.new_bucket(days=days)
        for path in sorted(p for p in store.rglob("*") if p.is_file()):
            key = f"mesh/{path.relative_to(store)}"
            moto.s3().put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        return subprocess.run(
            [sys.executable, "-m", "extproc", "verify", f"s3://{bucket}/mesh", "--vkey", vkey,
             "--state", str(state), *args],
            capture_output=True, text=True, env=_env(), check=False,
        )  # fmt: skip

    first = verify(30)
    assert first.returncode == 0 and state.exists(), first.stdout  # the rule recorded: 30 days
    real = json.loads(verify(1, "--format", "json").stdout)  # the rule lowered to 1 day

    def missing(doc: Any, actual: Any, path: str) -> Iterator[str]:
        if isinstance(doc, dict) and isinstance(actual, dict):
            for key, value in doc.items():
                if key == "evidence":  # documented as fork and rollback findings only
                    continue
                if key not in actual:
                    yield f"{path}.{key}"
                else:
                    yield from missing(value, actual[key], f"{path}.{key}")
        elif isinstance(doc, list) and isinstance(actual, list) and doc and actual:
            yield from missing(doc[0], actual[0], f"{path}[0]")

    assert list(missing(documented, real, "")) == []
    (lowered,) = [f for f in real["findings"] if "rule was lowered" in f["message"]]
    assert lowered["log_id"] == documented["findings"][0]["log_id"] == ""
