"""`extproc-audit search`: what each filter finds, that the output is the stored
evidence byte for byte, and that a tampered log is reported while it is read.

Logs are written by the real writer (tests/helpers.py: WAL, audit log,
publisher) on a local store and on moto's S3 server, with a stepped clock so
times are known.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc import cli
from extproc.audit.report import table_row
from extproc.audit.search import (
    Filters,
    Match,
    StoreSearch,
    _LogScan,
    parse_status,
    parse_time,
)
from extproc.core.note import Signer
from extproc.errors import ConfigError
from extproc.store import open_store
from extproc.store.base import ObjectStore
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from tests import helpers
from tests.attacks import TERMINAL_ESCAPES
from tests.conftest import MotoServer
from tests.helpers import read_lines

START = datetime(2026, 11, 26, 0, 0, tzinfo=UTC).timestamp()
EXCHANGES = 30  # request i at START + 2i s, its response at START + 2i + 3 s
PRINCIPALS = ("spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/ops/sa/cron")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "SEARCH.md"


def status_of(i: int) -> int:
    return (200, 404, 500)[i % 3]


def path_of(i: int) -> str:
    return f"/api/users/{i}" if i % 2 == 0 else "/health"


@dataclass
class Log:
    url: str
    log_id: str
    lines: list[bytes]  # every stored line, in seq order

    def entries(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines]


def write_log(store: ObjectStore, signer: Signer, wal_dir: Path, log_id: str, **cfg: Any) -> None:
    """A writer run in enforce mode: requests and their responses interleaved
    (request i+1 is sequenced before response i), one observe-mode exchange,
    and the writer's start and stop entries; bundles of 7 entries."""
    events: list[tuple[float, dict[str, Any]]] = [
        (START - 1.0, {"kind": "writer", "event": "start", "writer": "abcd", "rid": ""})
    ]
    for i in range(EXCHANGES):
        request = {
            "kind": "request",
            "rid": f"rid-{i:03d}",
            "req": {"method": "GET" if i % 4 else "POST", "path": path_of(i)},
            "src": {"principal": PRINCIPALS[i % 2]},
        }
        events.append((START + 2 * i, request))
        response = {"kind": "response", "rid": f"rid-{i:03d}", "resp": {"status": status_of(i)}}
        events.append((START + 2 * i + 3, response))
    events.sort(key=lambda e: e[0])
    # A fresh log: an entry's seq is its place in the list.
    seq_of = {f["rid"]: seq for seq, (_, f) in enumerate(events) if f["kind"] == "request"}
    for _, fields in events:
        if fields["kind"] == "response":
            fields["ref"] = seq_of[fields["rid"]]
    end = START + 2 * EXCHANGES + 10
    exchange = {
        "kind": "exchange",
        "rid": "rid-observe",
        "req": {"method": "PUT", "path": "/api/users/x"},
        "src": {"principal": PRINCIPALS[0]},
        "resp": {"status": 503},
    }
    events.append((end, exchange))
    events.append((end, {"kind": "writer", "event": "stop", "writer": "abcd", "rid": ""}))
    helpers.write_log(
        store,
        signer,
        wal_dir,
        log_id,
        [fields for _, fields in events],
        times=[at for at, _ in events],
        final=True,
        stop=True,
        bundle_max_entries=7,
        **cfg,
    )


@pytest.fixture
def log(tmp_path: Path, signer: Signer) -> Log:
    url = str(tmp_path / "store")
    store = open_store(url)
    write_log(store, signer, tmp_path / "wal", "pod-a")
    return Log(url, "pod-a", read_lines(store, "pod-a"))


def search(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer | None, url: str, *args: str
) -> tuple[int, list[bytes], str]:
    """Run the command in-process: exit code, stdout lines, stderr."""
    vkey = ["--vkey", signer.verifier().to_text()] if signer else ["--no-verify"]
    code = cli.main(["search", url, *vkey, *args])
    out, err = capsysbinary.readouterr()
    return code, out.splitlines(), err.decode()


def rids(lines: list[bytes]) -> list[str]:
    return [orjson.loads(line)["rid"] for line in lines]


# --- what each filter finds ---------------------------------------------------------


def test_no_filter_prints_every_stored_line_byte_identical(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    code, out, err = search(capsysbinary, signer, log.url)
    assert code == 0, err
    assert out == log.lines
    assert len(out) == 2 + 2 * EXCHANGES + 2
    assert "VALID" in err and "INVALID" not in err


def test_status_matches_response_entries(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    code, out, _ = search(capsysbinary, signer, log.url, "--status", "500")
    assert code == 0
    want = [f"rid-{i:03d}" for i in range(EXCHANGES) if status_of(i) == 500]
    assert rids(out) == want
    assert {orjson.loads(line)["kind"] for line in out} == {"response"}

    _, out, _ = search(capsysbinary, signer, log.url, "--status", "404,5xx")
    want = [f"rid-{i:03d}" for i in range(EXCHANGES) if status_of(i) != 200]
    assert rids(out) == [*want, "rid-observe"]  # the exchange carries its own status


def test_status_with_join_prints_each_request_before_its_response(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    code, out, _ = search(capsysbinary, signer, log.url, "--status", "500", "--join")
    assert code == 0
    entries = [orjson.loads(line) for line in out]
    want = [f"rid-{i:03d}" for i in range(EXCHANGES) if status_of(i) == 500]
    assert [e["rid"] for e in entries] == [r for r in want for _ in (0, 1)]
    for request, response in zip(entries[::2], entries[1::2], strict=True):
        assert (request["kind"], response["kind"]) == ("request", "response")
        assert response["ref"] == request["seq"]
    assert all(line in log.lines for line in out)


def test_path_glob_matches_requests_and_their_responses(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    code, out, _ = search(capsysbinary, signer, log.url, "--path", "/api/users/*")
    assert code == 0
    entries = [orjson.loads(line) for line in out]
    by_kind = {k: [e["rid"] for e in entries if e["kind"] == k] for k in ("request", "response")}
    want = [f"rid-{i:03d}" for i in range(EXCHANGES) if path_of(i) != "/health"]
    assert by_kind["request"] == want
    assert by_kind["response"] == want
    assert entries[-1]["rid"] == "rid-observe"
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)  # log order

    _, out, _ = search(capsysbinary, signer, log.url, "--path", "/health")
    assert len(out) == 2 * len([i for i in range(EXCHANGES) if path_of(i) == "/health"])
    _, out, _ = search(capsysbinary, signer, log.url, "--path", "/HEALTH")
    assert out == []  # case-sensitive


def test_principal_glob_and_combined_filters(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    _, out, _ = search(capsysbinary, signer, log.url, "--principal", "*/ns/ops/*")
    odd = [f"rid-{i:03d}" for i in range(EXCHANGES) if i % 2]
    assert sorted(set(rids(out))) == odd and len(out) == 2 * len(odd)

    # request-side, response-side and time filters together
    since = datetime.fromtimestamp(START + 20, UTC).isoformat()
    _, out, _ = search(
        capsysbinary,
        signer,
        log.url,
        "--principal",
        PRINCIPALS[0],
        "--path",
        "/api/*",
        "--status",
        "5xx",
        "--since",
        since,
    )
    want = [
        f"rid-{i:03d}"
        for i in range(EXCHANGES)
        if i % 2 == 0 and status_of(i) == 500 and 2 * i + 3 >= 20
    ]
    assert want and rids(out) == [*want, "rid-observe"]


def test_since_inclusive_until_exclusive(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    entries = log.entries()
    since, until = entries[10]["ts"], entries[20]["ts"]
    _, out, _ = search(capsysbinary, signer, log.url, "--since", since, "--until", until)
    assert out == log.lines[10:20]
    _, out, _ = search(capsysbinary, None, log.url, "--since", since, "--until", until)
    assert out == log.lines[10:20]  # the same when bundles are skipped on time
    _, out, _ = search(capsysbinary, signer, log.url, "--until", "2026-11-26")
    assert out == log.lines[:1]  # only the writer start, one second before midnight
    _, out, _ = search(capsysbinary, signer, log.url, "--since", "2026-11-27")
    assert out == []


def test_no_verify_skips_bundles_outside_the_window(
    capsysbinary: pytest.CaptureFixture[bytes], log: Log
) -> None:
    until = log.entries()[3]["ts"]
    code, out, err = search(capsysbinary, None, log.url, "--until", until)
    assert code == 0
    assert out == log.lines[:3]
    bundles = -(-len(log.lines) // 7)
    assert f"{bundles} bundles ({bundles - 1} outside the time window)" in err
    assert "NOT VERIFIED" in err


def test_request_id_exact(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    _, out, _ = search(capsysbinary, signer, log.url, "--request-id", "rid-007")
    assert [orjson.loads(line)["kind"] for line in out] == ["request", "response"]
    assert set(rids(out)) == {"rid-007"}
    _, out, _ = search(capsysbinary, signer, log.url, "--request-id", "rid-00")
    assert out == []  # not a prefix match


def test_table_format_fills_responses_from_their_request(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    code, out, _ = search(
        capsysbinary, signer, log.url, "--request-id", "rid-002", "--format", "table"
    )
    assert code == 0
    header, request, response = (line.decode() for line in out)
    assert header.split()[:3] == ["TS", "LOG", "SEQ"]
    for row in (request, response):
        assert "/api/users/2" in row and PRINCIPALS[0] in row and "rid-002" in row
    assert " 500 " in response and "response" in response
    assert response.index("500") == header.index("STATUS") + len("STATUS") - 3


def test_log_option_restricts_and_unknown_log_is_an_error(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log, tmp_path: Path
) -> None:
    write_log(open_store(log.url), signer, tmp_path / "wal-b", "pod-b")
    code, out, err = search(capsysbinary, signer, log.url, "--request-id", "rid-001")
    assert code == 0 and len(out) == 4, err  # both logs
    _, out, _ = search(capsysbinary, signer, log.url, "--request-id", "rid-001", "--log", "pod-b")
    assert out == [line for line in read_lines(open_store(log.url), "pod-b") if b"rid-001" in line]
    code, out, err = search(capsysbinary, signer, log.url, "--log", "pod-z")
    assert (code, out) == (2, [])
    assert "no log 'pod-z'" in err


# --- verification while reading -------------------------------------------------------


def test_tampered_bundle_prints_what_it_read_and_exits_1(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    bundle = sorted((Path(log.url) / "logs" / "pod-a" / "entries").iterdir())[1]
    bundle.chmod(0o644)
    bundle.write_bytes(bundle.read_bytes().replace(b'"status":500', b'"status":200', 1))
    code, out, err = search(capsysbinary, signer, log.url, "--status", "2xx")
    assert code == 1
    assert len(out) == 1 + len([i for i in range(EXCHANGES) if status_of(i) == 200])
    assert "INVALID" in err
    assert bundle.name in err and "hash chain broken" in err

    code, out, err = search(capsysbinary, None, log.url, "--status", "2xx")
    assert code == 0 and "NOT VERIFIED" in err  # the flag's promise: no hashing at all


def test_overwritten_bundle_on_versioned_store_finds_the_original(
    tmp_path: Path, signer: Signer
) -> None:
    # S3 keeps the original version under an attacker's new one: search reads
    # what the log wrote and reports the overwrite, as verify does.
    store = MemoryStore(versioned=True)
    write_log(store, signer, tmp_path / "wal", "pod-a")
    lines = read_lines(store, "pod-a")
    key = next(o.key for o in store.list("logs/pod-a/entries/"))
    store.overwrite(key, store.get(key).replace(b'"rid":"rid-000"', b'"rid":"rid-XXX"'))
    run = StoreSearch(store, Filters(request_id="rid-000"), verifier=signer.verifier())
    found = [m.line for m in run.matches()]
    assert found and all(line in lines for line in found)
    (report,) = run.stats.reports
    assert not report.ok
    assert any("overwritten after publication" in f.message for f in report.findings)


def test_wrong_key_is_invalid(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    code, _, err = search(capsysbinary, Signer.generate("other"), log.url, "--status", "500")
    assert code == 1
    assert "wrong --vkey" in err


def test_gzip_bundles(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "gz")
    write_log(store, signer, tmp_path / "wal", "pod-gz", gzip=True)
    keys = [o.key for o in store.list("logs/pod-gz/entries/")]
    assert keys and all(k.endswith(".jsonl.gz") for k in keys)
    code, out, _ = search(capsysbinary, signer, str(tmp_path / "gz"), "--status", "404")
    assert code == 0
    assert rids(out) == [f"rid-{i:03d}" for i in range(EXCHANGES) if status_of(i) == 404]
    assert all(line in read_lines(store, "pod-gz") for line in out)


def test_search_on_s3(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, moto: MotoServer, tmp_path: Path
) -> None:
    url = f"s3://{moto.new_bucket()}/audit"
    store = open_store(url)
    write_log(store, signer, tmp_path / "wal", "pod-s3")
    code, out, err = search(capsysbinary, signer, url, "--request-id", "rid-004", "--prefetch", "2")
    assert code == 0, err
    assert out == [line for line in read_lines(store, "pod-s3") if b'"rid-004"' in line]
    assert len(out) == 2


# --- usage errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--until", "2026-11-26T10:00:00"],  # no zone
        ["--status", "5x"],
        ["--status", "600"],
        ["--since", "2026-11-27", "--until", "2026-11-26"],
        ["--join"],
        ["--no-verify"],  # and --vkey
    ],
)
def test_bad_arguments_exit_2(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log, args: list[str]
) -> None:
    code, out, err = search(capsysbinary, signer, log.url, *args)
    assert (code, out) == (2, [])
    assert err.startswith("extproc-audit: error: ")


def test_unknown_option_value_is_a_usage_error(
    capsysbinary: pytest.CaptureFixture[bytes], log: Log
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", log.url, "--no-verify", "--format", "csv"])
    assert exc.value.code == 2
    assert b"invalid choice" in capsysbinary.readouterr().err


def test_key_or_no_verify_required(capsysbinary: pytest.CaptureFixture[bytes], log: Log) -> None:
    assert cli.main(["search", log.url]) == 2
    assert b"--vkey" in capsysbinary.readouterr().err


def test_time_and_status_parsing() -> None:
    assert parse_time("2026-11-26") == "2026-11-26T00:00:00.000000Z"
    assert parse_time("2026-11-26T01:30:00+01:00") == "2026-11-26T00:30:00.000000Z"
    assert parse_time("2026-11-26T00:00:00.5Z") == "2026-11-26T00:00:00.500000Z"
    assert parse_status("5xx,404") == frozenset({*range(500, 600), 404})
    with pytest.raises(ConfigError):
        parse_status("")


# --- the DuckDB example in docs/SEARCH.md ------------------------------------------------


def request_side(entry: dict[str, Any]) -> tuple[str, str, str]:
    return entry["req"]["method"], entry["req"]["path"], entry["src"]["principal"]


def docs_sql() -> str:
    """The SQL between the duckdb-example markers in docs/SEARCH.md."""
    m = re.search(r"<!-- duckdb-example -->\s*```sql\n(.*?)```", DOCS.read_text(), re.S)
    assert m, "docs/SEARCH.md lost its duckdb-example block"
    return m.group(1)


def test_docs_duckdb_example_matches_search(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log, monkeypatch: Any
) -> None:
    duckdb = pytest.importorskip("duckdb")
    monkeypatch.chdir(Path(log.url).parent)  # the example reads store/logs/...
    rows = duckdb.sql(docs_sql()).fetchall()
    _, out, _ = search(capsysbinary, signer, log.url, "--status", "5xx", "--join")
    entries = [orjson.loads(line) for line in out]
    requests = {e["seq"]: e for e in entries if e["kind"] == "request"}
    want = [  # each outcome, with the request it answered (an exchange carries its own)
        (
            r["ts"],
            "pod-a",
            r["seq"],
            r["rid"],
            r["resp"]["status"],
            *request_side(requests.get(r.get("ref"), r)),
        )
        for r in entries
        if r["kind"] != "request"
    ]
    assert len(want) == len([i for i in range(EXCHANGES) if status_of(i) >= 500]) + 1
    assert rows == want


# --- table output: entries hold text chosen by HTTP clients --------------------------------------

GOOD = {"method": "GET", "path": "/ok", "principal": PRINCIPALS[0], "rid": "rid-x"}


# TERMINAL_ESCAPES (tests/attacks.py): the request's fields that differ from GOOD,
# what its rows show instead.
def write_entries(
    store: ObjectStore, signer: Signer, wal_dir: Path, log_id: str, *entries: Any
) -> None:
    """Append these fields as entries (a second apart) and publish them, as the writer does."""
    helpers.write_log(
        store,
        signer,
        wal_dir,
        log_id,
        list(entries),
        times=[START + 1 + i for i in range(len(entries))],
        final=True,
        bundle_max_entries=7,
    )


def attack_log(tmp_path: Path, signer: Signer, request: dict[str, str]) -> str:
    """A request with these fields, its response (seq 1), then an honest exchange."""
    url = str(tmp_path / "store")
    write_entries(
        open_store(url),
        signer,
        tmp_path / "wal",
        "pod-a",
        {
            "kind": "request",
            "rid": request["rid"],
            "req": {"method": request["method"], "path": request["path"]},
            "src": {"principal": request["principal"]},
        },
        {"kind": "response", "rid": request["rid"], "ref": 0, "resp": {"status": 500}},
        {
            "kind": "exchange",
            "rid": "rid-after",
            "req": {"method": "GET", "path": "/after"},
            "src": {"principal": PRINCIPALS[1]},
            "resp": {"status": 200},
        },
    )
    return url


@pytest.mark.parametrize(("changed", "shown"), TERMINAL_ESCAPES.values(), ids=TERMINAL_ESCAPES)
def test_table_output_escapes(
    capsysbinary: pytest.CaptureFixture[bytes],
    signer: Signer,
    tmp_path: Path,
    changed: dict[str, str],
    shown: str,
) -> None:
    """No control, format or line-breaking character of an entry reaches the
    terminal, each entry is one line, and the escaped text shows what was there."""
    request = GOOD | changed
    url = attack_log(tmp_path, signer, request)
    code = cli.main(["search", url, "--vkey", signer.verifier().to_text(), "--format", "table"])
    raw, err = capsysbinary.readouterr()
    assert code == 0, err
    text = raw.decode()
    lines = text.split("\n")
    assert lines.pop() == ""
    assert len(lines) == 4  # the header, then one line per matching entry
    for line in lines:
        bad = [c for c in line if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
        assert not bad and line.isprintable(), line
    header, request_row, response_row, after = lines
    assert header.startswith("TS ")
    # A response row shows its own rid and its request entry's other fields.
    assert shown in request_row and shown in response_row
    if "rid" not in changed:
        assert request_row.endswith(" rid-x") and response_row.endswith(" rid-x")
    assert " request " in request_row and " response " in response_row and " 500 " in response_row
    assert after.startswith("2026-11-26T00:00:03.000000Z pod-a")
    assert after.endswith(f"{PRINCIPALS[1]:<40} {'':<40} rid-after")  # no reporter recorded


def test_jsonl_output_stays_the_stored_bytes_with_controls_in_entries(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, tmp_path: Path
) -> None:
    """The jsonl lines are the evidence: never escaped beyond what JSON did."""
    request = GOOD | {"path": "/a\x1b[2J\u202e\x9b", "principal": "p\u2028\u200d", "rid": "r\n"}
    url = attack_log(tmp_path, signer, request)
    code, out, err = search(capsysbinary, signer, url)
    assert code == 0, err
    assert out == read_lines(open_store(url), "pod-a")
    assert "\u202e\x9b".encode() in out[0]  # JSON escapes C0 controls only


REPORTERS = {
    "xfcc": ({"auth": "xfcc", "id": "spiffe://td/ns/a/sa/b", "peer": "ipv4:127.0.0.6:1"},
             "xfcc:spiffe://td/ns/a/sa/b"),
    "mtls": ({"auth": "mtls", "id": "spiffe://td/ns/c/sa/d", "peer": "ipv4:10.0.0.1:2"},
             "mtls:spiffe://td/ns/c/sa/d"),
    "unix": ({"auth": "unix", "id": "unix:/run/a/audit.sock", "peer": "unix:"},
             "unix:/run/a/audit.sock"),
    "unauthenticated": ({"auth": "unauthenticated", "peer": "ipv4:10.9.9.9:5"}, "unauthenticated"),
    "long_id_cut": ({"auth": "xfcc", "id": "spiffe://" + "x" * 60},
                    "xfcc:spiffe://" + "x" * 25 + "…"),
}  # fmt: skip


@pytest.mark.parametrize(("reporter", "shown"), REPORTERS.values(), ids=REPORTERS.keys())
def test_table_shows_who_reported_each_entry(reporter: dict[str, str], shown: str) -> None:
    # An unauthenticated entry must not look like any other in the table.
    row = table_row(Match("pod-a", b"", {"kind": "access", "rid": "r", "reporter": reporter}), 5)
    assert row.endswith(f" {shown:<40} r"), row


def test_table_row_escapes_every_column_including_the_log_id() -> None:
    evil = "\x1b]0;owned\x07"
    fields = {
        "ts": evil,
        "seq": evil,
        "kind": evil,
        "rid": evil,
        "req": {"method": evil, "path": evil},
        "src": {"principal": evil},
        "resp": {"status": evil},
        "reporter": {"auth": "xfcc", "id": evil},
    }
    row = table_row(Match("pod" + evil, b"", fields), 20)
    assert row.isprintable() and "\x1b" not in row
    # ts, log, seq, kind, method (cut), path, status, principal, reporter, rid
    assert row.count("\\x1b") == 10
    writer = table_row(Match("pod-a", b"", {"kind": "writer", "event": "stop\r\x1b[2K"}), 5)
    assert "[stop\\r\\x1b[2K]" in writer and writer.isprintable()


def test_search_findings_escape_object_keys(
    capsysbinary: pytest.CaptureFixture[bytes], signer: Signer, log: Log
) -> None:
    """Whoever can write the bucket chooses key names; findings quote them."""
    stray = Path(log.url) / "logs" / "evil\x1b[2J\rVALID" / "x"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    code, _, err = search(capsysbinary, signer, log.url, "--request-id", "rid-001")
    assert code == 0  # a stray object cannot change a log: a warning
    assert "logs/evil\\x1b[2J\\rVALID/x: object under logs/ with an invalid log id" in err
    assert "\x1b" not in err and "\r" not in err


def test_access_entries_match_on_their_own_request_and_response_fields(tmp_path: Path) -> None:
    # The access-log record carries both halves; an enforced request's record
    # names its request entry by ref, and --join prints that entry first.
    from extproc.core import entry as entry_format
    from extproc.core.merkle import leaf_hash

    lines: list[bytes] = []
    prev = ""
    fields_list: list[dict[str, Any]] = [
        {"kind": "request", "rid": "r1", "req": {"path": "/admin/x", "method": "DELETE"}},
        {"kind": "access", "rid": "r1", "ref": 0, "req": {"path": "/admin/x"},
         "resp": {"status": 503}},
        {"kind": "access", "rid": "r2", "req": {"path": "/shop"}, "resp": {"status": 200}},
    ]  # fmt: skip
    for seq, fields in enumerate(fields_list):
        line = entry_format.encode(
            {**fields, "v": 1, "seq": seq, "prev": prev, "ts": "2026-12-01T00:00:00.000000Z"}
        )
        prev = leaf_hash(line).hex()
        lines.append(line)
    scan = _LogScan("log", Filters(path="/admin/*"), keep_requests=False)
    assert [m.fields["kind"] for m in scan.scan(lines)] == ["request", "access"]
    scan = _LogScan("log", Filters(status=parse_status("5xx"), join=True), keep_requests=True)
    assert [(m.fields["kind"], m.context) for m in scan.scan(lines)] == [
        ("request", True),
        ("access", False),
    ]
