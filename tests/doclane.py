"""The docs lane's reading of README.md, CONTRIBUTING.md and docs/*.md: code
blocks and their classification, the commands in them, and the static checks
of a command.

Each fenced code block says how the lane treats it, in an HTML comment right
before its fence (only blank lines or other comments between), so whoever
edits a doc sees it next to the block:

    <!-- docs-lane: run -->
    <!-- docs-lane: flags-only: needs a cluster -->
    <!-- docs-lane: prose: a proof file, not a command -->

- `run`: its commands run (tests/integration/test_docs.py), in document order with the
  doc's other `run` blocks, in one temporary workdir that holds links to the
  repository's files, as a fresh clone would (`.venv` included). Exit code 0
  is required.
- `flags-only` (and the reason it cannot run here): every command is checked
  without running it, as are the `run` blocks' and the prose's inline ones:
  our own flags exist in `--help` of that (sub)command, scripts exist and take
  the flags given, other tools' long flags are on a small allow-list, the
  repository files and kustomize directories it names exist, docker compose
  services exist.
- `prose`: not a command (output, a file's contents, a diagram, Athena SQL).

Further lines of a `run` comment adapt the block to the workdir, in order:

    old -> new       replace text before running: placeholders, ports, paths
                     ({port}, {health_port}, {rid}, {size}: values of the lane)
    NAME=value       environment of the block's commands
    setup: WORD ...  what the lane prepares first: `pki` (reporters-ca.pem,
                     server.pem/.key), `reporter` (once a `serve` of the block
                     answers, one mTLS reporter sends a request and its 503
                     outcome with request id {rid}), `demo` (a demo log in
                     ./store, audit.vkey, audit.keyring, audit-state.json; {rid}
                     one of its request ids, {size} its first checkpoint's size)
    needs: TOOL      a program the block runs that is not ours (skipped, with
                     the reason, where it is not installed)

A command with an elided part (a word `...`, a `<placeholder>`, an
`[--optional]` part) is checked, never run. Every block must be classified:
an unclassified one fails the lane.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")))
KINDS = ("run", "flags-only", "prose")
SHELL = ("bash", "sh", "shell", "console")

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[^`\s]*)\s*$")
ANNOTATION = re.compile(r"<!--\s*docs-lane:(?P<body>.*?)-->", re.S)
ELIDED = re.compile(r"(?:^|\s)\.\.\.(?:\s|$)|<[A-Za-z][^<>]*>|\[-")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"^(?:\.venv/bin/)?python3?$")
OURS = ("extproc-audit", ".venv/bin/extproc-audit")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a doc and the treatment its comment gives it."""

    doc: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    text: str
    kind: str  # one of KINDS; "" when unclassified
    reason: str = ""
    subs: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    setup: frozenset[str] = frozenset()
    needs: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass(frozen=True)
class Command:
    """One logical shell command line (continuations joined) of a block."""

    text: str
    where: str

    @property
    def elided(self) -> bool:
        return ELIDED.search(_without_comment(self.text)) is not None


def _classified(block: Block, body: str | None) -> Block:
    """`block` with the treatment its docs-lane comment gives it; ValueError
    names a malformed comment."""
    if body is None:
        return block
    first, *rest = body.strip().splitlines() or [""]
    kind, _, reason = (part.strip() for part in first.partition(":"))
    if kind not in KINDS:
        raise ValueError(f"{block.where}: docs-lane class {kind!r} is none of {', '.join(KINDS)}")
    subs: list[tuple[str, str]] = []
    env: list[tuple[str, str]] = []
    lists: dict[str, tuple[str, ...]] = {"setup": (), "needs": ()}
    for raw in (line.strip() for line in rest):
        if raw.startswith(("setup:", "needs:")):
            name, _, words = raw.partition(":")
            lists[name] = tuple(words.split())
        elif " -> " in raw:
            old, _, new = raw.partition(" -> ")
            subs.append((old.strip(), new.strip()))
        elif ASSIGNMENT.match(raw):
            name, _, value = raw.partition("=")
            env.append((name, value))
        elif raw:
            raise ValueError(
                f"{block.where}: docs-lane line {raw!r}: not old -> new, NAME=value, setup:, needs:"
            )
    if kind != "run" and (subs or env or any(lists.values())):
        raise ValueError(
            f"{block.where}: substitutions, environment, setup and needs are for run blocks"
        )
    if kind != "run" and not reason:
        raise ValueError(f"{block.where}: `{kind}` needs its reason (`{kind}: why`)")
    return replace(
        block,
        kind=kind,
        reason=reason,
        subs=tuple(subs),
        env=tuple(env),
        setup=frozenset(lists["setup"]),
        needs=lists["needs"],
    )


def read_blocks(doc: Path) -> list[Block]:
    """Every fenced code block of `doc` with its classification."""
    name = str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else doc.name
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    pending: str | None = None  # the body of the last docs-lane comment, if it is still adjacent
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("<!--"):
            end = i
            while "-->" not in lines[end]:
                end += 1
            found = ANNOTATION.search("\n".join(lines[i : end + 1]))
            if found:
                pending = found.group("body")
            i = end + 1
            continue
        opening = FENCE.match(lines[i])
        if opening is None:
            if stripped:
                pending = None
            i += 1
            continue
        fence, indent = opening.group("fence"), opening.group("indent")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        block = Block(name, i + 1, opening.group("lang").lower(), "\n".join(body) + "\n", kind="")
        blocks.append(_classified(block, pending))
        pending = None
        i = end + 1
    return blocks


def substituted(block: Block, values: dict[str, str]) -> str:
    """The block's text with its `old -> new` lines applied, lane values filled in."""
    text = block.text
    for old, new in block.subs:
        assert old in text, f"{block.where}: substitution {old!r} matches nothing in the block"
        text = text.replace(old, new.format(**values))
    return text


def commands(text: str, doc: str, fence: int, lang: str = "bash") -> list[Command]:
    """The command lines of a shell block: comment lines dropped, `\\`
    continuations joined; in a console block only `$ ` lines (the rest is output)."""
    found: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if lang == "console":
            if not line.startswith("$ "):
                i += 1
                continue
            line = line[2:]
        start = i
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if line.strip() and not line.lstrip().startswith("#"):
            found.append(Command(line.strip(), f"{doc}:{fence + start + 1}"))
    return found


def _without_comment(text: str) -> str:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return " ".join(shlex.quote(w) if w not in "|&;" else w for w in lex)
    except ValueError:  # unbalanced quotes: shown as written
        return text


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command of a line (split at |, &&, ||, ;, &),
    comments dropped, placeholders (`<x y>`) one word, optional brackets removed."""
    text = re.sub(r"<[A-Za-z][^<>]*>", "PLACEHOLDER", text)
    text = re.sub(r"\[(-[^\[\]]*)\]", r"\1", text)
    lex = shlex.shlex(text, posix=True, punctuation_chars="|&;")
    lex.whitespace_split = True
    lex.commenters = "#"
    found: list[list[str]] = [[]]
    for word in lex:
        if word in ("|", "||", "&&", ";", "&"):
            found.append([])
        else:
            found[-1].append(word)
    return [words for words in found if words]


# --- what our programs accept -------------------------------------------------------------------


def _flags_in(help_text: str) -> frozenset[str]:
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@functools.cache
def subcommands() -> frozenset[str]:
    """`extproc-audit`'s commands, as its --help lists them."""
    out = subprocess.run(
        [sys.executable, "-m", "extproc", "--help"],
        capture_output=True, text=True, check=True, env=_env(),
    ).stdout  # fmt: skip
    listed = out.split("positional arguments:", 1)[1].split("options:", 1)[0]
    return frozenset(re.findall(r"^ {4}([a-z][a-z-]+)\s", listed, re.M))


@functools.cache
def cli_flags(command: str) -> frozenset[str]:
    """The options `extproc-audit COMMAND --help` shows (and the global ones)."""
    run = subprocess.run(
        [sys.executable, "-m", "extproc", command, "--help"],
        capture_output=True, text=True, check=False, env=_env(),
    )  # fmt: skip
    assert run.returncode == 0, f"extproc-audit {command} --help: {run.stderr}"
    return _flags_in(run.stdout) | {"-v", "--verbose"}


@functools.cache
def script_flags(script: str) -> frozenset[str]:
    """The options `.venv/bin/python SCRIPT --help` shows."""
    run = subprocess.run(
        [sys.executable, script, "--help"],
        capture_output=True, text=True, check=False, cwd=ROOT, env=_env(),
    )  # fmt: skip
    assert run.returncode == 0, f"{script} --help exits {run.returncode}: {run.stderr[-500:]}"
    return _flags_in(run.stdout)


SCRIPTS = tuple(
    str(p.relative_to(ROOT))
    for d in ("scripts", "benchmarks")
    for p in sorted((ROOT / d).glob("*.py"))
)


@functools.cache
def known_flags() -> frozenset[str]:
    """Every option of every command of ours and every script with a --help."""
    flags: set[str] = set()
    for command in subcommands():
        flags |= cli_flags(command)
    for script in SCRIPTS:
        if "argparse" in (ROOT / script).read_text():
            flags |= script_flags(script)
    return frozenset(flags)


# --- other tools: the long flags the docs use, each known to exist in that tool ----------------

TOOL_FLAGS: dict[str, frozenset[str]] = {
    "kubectl": frozenset({"--from-file", "--since", "--previous", "--port", "--service"}),
    "istioctl": frozenset({"--port"}),
    "helm": frozenset({"--reuse-values"}),
    "docker": frozenset({"--build", "--rm", "--read-only", "--tmpfs"}),
    "aws": frozenset(
        [
            "--bucket",
            "--region",
            "--create-bucket-configuration",
            "--object-lock-enabled-for-bucket",
            "--object-lock-configuration",
            "--public-access-block-configuration",
            "--policy-name",
            "--policy-document",
            "--cluster-name",
            "--namespace",
            "--service-account",
            "--role-arn",
        ]
    ),
    "curl": frozenset(),
    "grpcurl": frozenset(),
    "promtool": frozenset(),
    "terraform": frozenset(),
    "kind": frozenset(),
    "bash": frozenset(),
    "pip": frozenset({"--no-deps", "--only-binary"}),
    ".venv/bin/pip": frozenset(),
    # plain Unix tools a pipeline ends in
    "grep": frozenset(),
    "sed": frozenset(),
    "shred": frozenset(),
    "printf": frozenset(),
    "ls": frozenset(),
    "df": frozenset(),
    "pilot-agent": frozenset(),
    # the lanes (Makefile): its targets are checked, _check_make
    "make": frozenset(),
    # the lint lane's tools, from the venv
    ".venv/bin/ruff": frozenset({"--check"}),
    ".venv/bin/mypy": frozenset(),
}
# Options of other programs the prose names, with whose they are.
OTHER_FLAGS = {
    "--concurrency": "envoy",
    "--cluster-dns": "kubelet",
    "--create-bucket-configuration": "aws s3api create-bucket",
    "--read-only": "docker run",
    "--check": "scripts/render_*.py",
    "--gid-owner": "iptables",
}
COMPOSE_COMMANDS = frozenset({"up", "down", "logs", "run", "stop", "build"})


@functools.cache
def compose_services() -> frozenset[str]:
    return frozenset(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


# Words shaped like repository paths that name something else.
NOT_REPO_PATHS = {
    "istio/istio": "Istio's GitHub repository",
    "istio/istiod": "Istio's Helm chart",
    "istio/gateway": "Istio's Helm chart",
    "istio/ztunnel": "Istio's GitHub repository",
    "tests/integration/pilot/headers_test.go": "a file of istio/istio",
    "deploy/APP": "kubectl's TYPE/NAME",
    "extproc/api/proof.proto": "under grpcurl's -import-path protos",
}
TOP = [*sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")), ".ci"]
REPO_PATH = re.compile(
    r"(?<![\w./:@-])((?:{})/[\w.*-]+(?:/[\w.*-]*)*)".format("|".join(map(re.escape, TOP)))
)


def missing_path(word: str) -> str | None:
    """`word` as a repository path, if it names one that does not exist."""
    word = word.removeprefix("file://").removeprefix("./").rstrip(".,:;)")
    if not REPO_PATH.fullmatch(word) or word in NOT_REPO_PATHS or ".*" in word:  # .*: a regex
        return None
    if "*" in word:
        return None if any(ROOT.glob(word)) else word
    return None if (ROOT / word).exists() else word


def check_command(text: str) -> list[str]:
    """What is wrong with one command line, checked without running it."""
    problems: list[str] = []
    for words in simple_commands(text):
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            problems += _check_simple(words)
    return problems


def _check_simple(words: list[str]) -> list[str]:
    program, args = words[0], words[1:]
    problems = [
        f"no such file: {p}" for w in words for p in [missing_path(w.partition("=")[2] or w)] if p
    ]
    if program in OURS:
        return problems + _check_ours(args)
    if PYTHON.match(program):
        return problems + _check_python(program, args)
    if program not in TOOL_FLAGS:
        return [
            *problems,
            f"the lane does not know the program {program!r} (tests/doclane.py TOOL_FLAGS)",
        ]
    for word in args:
        if word == "--" or word.startswith("extproc-audit:"):  # the rest is another program's
            break
        if word.startswith("--") and word.split("=")[0] not in TOOL_FLAGS[program]:
            problems.append(
                f"{program}: {word.split('=')[0]} is not on the lane's list of its flags"
            )
    if program == "kubectl":
        kustomized = [b for a, b in itertools.pairwise(args) if a == "-k"]
        kustomized += args[1:2] if args[:1] == ["kustomize"] else []
        problems += [
            f"no kustomization in {d}"
            for d in kustomized
            if "..." not in d and not (ROOT / d / "kustomization.yaml").exists()
        ]
    if program == "make":
        problems += [
            f"make: the Makefile has no target {w!r}"
            for w in args
            if not w.startswith("-") and w not in make_targets()
        ]
    if program == "docker" and args[:1] == ["compose"]:
        problems += _check_compose(args[1:])
    if program == "docker" and args[:1] == ["run"]:
        image = next((w for w in args[1:] if w.startswith("extproc-audit:")), None)
        if image is not None:  # the image's entrypoint is extproc-audit
            problems += _check_ours(args[args.index(image) + 1 :])
    return problems


@functools.cache
def make_targets() -> frozenset[str]:
    """The targets the top-level Makefile defines."""
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([a-z][\w-]*):(?!=)", text, re.M))


def _check_compose(args: list[str]) -> list[str]:
    if not args or args[0] not in COMPOSE_COMMANDS:
        return [f"docker compose {args[:1]}: not a compose command the lane knows"]
    services = [w for w in args[1:] if not w.startswith("-")]
    return [
        f"docker compose: no service {s!r} in docker-compose.yml"
        for s in services
        if s not in compose_services()
    ]


def _check_ours(args: list[str]) -> list[str]:
    while args and args[0] in ("-v", "--verbose"):
        args = args[1:]
    if not args or args[0] in ("-h", "--help", "--version"):
        return []
    command = args[0]
    if command not in subcommands():
        return [f"extproc-audit has no command {command!r}"]
    flags = cli_flags(command)
    return [
        f"extproc-audit {command}: no option {word.split('=')[0]}"
        for word in args[1:]
        if word.startswith("-") and word not in ("-", "...") and word.split("=")[0] not in flags
    ]


def _check_python(program: str, args: list[str]) -> list[str]:
    if args[:2] == ["-m", "venv"]:
        return []  # creating the venv: any Python
    problems = []
    if not program.startswith(".venv/bin/"):
        problems.append(
            f"{program} {' '.join(args[:2])}: write .venv/bin/python (the project and its "
            "dependencies are installed in .venv only)"
        )
    if args[:2] == ["-m", "extproc"]:
        return problems + _check_ours(args[2:])
    if args[:1] == ["-m"]:
        return problems
    if not args or not (ROOT / args[0]).is_file():
        return [*problems, f"{program}: no script {args[:1]}"]
    flags = script_flags(args[0])
    return problems + [
        f"{args[0]}: no option {word.split('=')[0]}"
        for word in args[1:]
        if word.startswith("-") and word.split("=")[0] not in flags
    ]


# --- the prose ----------------------------------------------------------------------------------

CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
COMMAND_WORDS = frozenset({*OURS, *TOOL_FLAGS, "python", "python3", ".venv/bin/python"}) - {
    "grep", "sed", "shred", "printf", "ls", "df", "pilot-agent", "bash", "kind",
}  # fmt: skip
# Code spans that start like a command and are none.
NOT_COMMANDS = {
    "extproc-audit hash key id v1": "the hash key id's domain-separation string (FORMAT.md)",
    "extproc-audit claim v1": "the claim format's first line (FORMAT.md)",
    "docker compose": "the tool's name",
}


def prose(doc: Path) -> str:
    """The doc's text with fenced blocks and HTML comments blanked (lines kept)."""
    text = re.sub(
        r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), doc.read_text(), flags=re.S
    )
    return re.sub(
        r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[ \t]*$",
        lambda m: "\n" * m.group(0).count("\n"),
        text,
        flags=re.S | re.M,
    )


def code_spans(doc: Path) -> list[tuple[int, str]]:
    """(line, text) of every inline code span outside the fenced blocks."""
    text = prose(doc)
    return [
        (text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
        for m in CODE_SPAN.finditer(text)
    ]


def inline_commands(doc: Path) -> list[Command]:
    found = []
    for line, span in code_spans(doc):
        first = span.split(maxsplit=1)[0] if span.strip() else ""
        if first in COMMAND_WORDS and span not in NOT_COMMANDS and " " in span:
            found.append(Command(span, f"{doc.relative_to(ROOT)}:{line}"))
    return found


def unknown_flags(span: str) -> list[str]:
    """The --flags of a code span of options (`--state FILE`) that no program
    of ours (nor one OTHER_FLAGS names) has; spans of commands are check_command's."""
    known = known_flags()
    found = []
    for word in re.findall(r"(?<![\w-])--[a-z][\w*-]*", span):
        if word in OTHER_FLAGS:
            continue
        if not (fnmatch.filter(known, word) if "*" in word else word in known):
            found.append(word)
    return found


INDENTED_COMMAND = re.compile(
    r"^ {4,}(?:\$ )?(?:extproc-audit [a-z]|\.venv/bin/|python3? (?:-m |scripts/|benchmarks/)"
    r"|(?:kubectl|istioctl|helm|docker|aws|terraform|kind|promtool|grpcurl|curl) ).*$",
    re.M,
)


def indented_commands(doc: Path) -> list[str]:
    """Lines of indented (unfenced) code blocks that hold a command: such a
    block cannot be classified, so commands go in fenced blocks."""
    text = prose(doc)
    not_ours = re.compile(r"^ {{4,}}extproc-audit (?!(?:{})\b)".format("|".join(subcommands())))
    return [
        f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
        for m in INDENTED_COMMAND.finditer(text)
        if not not_ours.match(m.group(0))
    ]
