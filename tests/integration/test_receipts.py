"""Receipts: every audited response names its request entry (log id + seq).

A receipt is only an index, so what matters is that it points at the right
entry of the verified log, that nobody else (the upstream) can put one in the
client's hands, that a denied request gets none, and that observe mode, where
Envoy ignores every reply, refuses the option instead of silently dropping it.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from extproc import cli
from extproc.core import layout
from extproc.core.receipt import DEFAULT_HEADER, Receipt, header_prefix, validate_header_name
from extproc.errors import ConfigError
from extproc.server.servicer import ReceiptReplies
from tests.conftest import AuditStack, read_entries, run_cli

FORGED = 'log="forged", seq=0'
PATHS = ["/api/orders?page=2&token=tok-1", "/healthz", "/api/users/42", "/static/app.js"]

# --- the header value (pure) ----------------------------------------------------------


@given(
    log_id=st.from_regex(layout.LOG_ID_RE, fullmatch=True).filter(lambda s: s not in (".", "..")),
    seq=st.integers(0, 10**15 - 1),
)
def test_receipt_round_trips(log_id: str, seq: int) -> None:
    text = Receipt(log_id, seq).to_text()
    assert Receipt.from_text(text) == Receipt(log_id, seq)
    assert text.encode() == header_prefix(log_id) + str(seq).encode()


def test_receipt_text_is_an_rfc9651_dictionary() -> None:
    assert Receipt("web-7f9c", 1234).to_text() == 'log="web-7f9c", seq=1234'
    # What other structured-field serialisers may produce reads the same.
    for text in (
        'seq=1234,log="web-7f9c"',
        'log="web-7f9c",\tseq=1234, origin="extproc-audit/web-7f9c", final',
        'log="other", seq=1, log="web-7f9c", seq=1234',  # RFC 9651: the last one wins
    ):
        assert Receipt.from_text(text) == Receipt("web-7f9c", 1234), text


MALFORMED = {
    "token_not_string": "log=web, seq=1",
    "space_in_log_id": 'log="a b", seq=1',
    "dot_dot_log_id": 'log="..", seq=1',
    "path_in_log_id": 'log="a/../b", seq=1',
    "negative_seq": 'log="a", seq=-1',
    "leading_zero": 'log="a", seq=01',
    "sixteen_digits": 'log="a", seq=1000000000000000',
    "decimal_seq": 'log="a", seq=1.0',
    "no_seq": 'log="a"',
    "no_log": "seq=1",
    "empty": "",
    "upper_case_key": 'LOG="a", seq=1',
    "parameter_on_log": 'log="a";x=1, seq=1',
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_receipt_rejected(text: str) -> None:
    with pytest.raises(ConfigError):
        Receipt.from_text(text)


@pytest.mark.parametrize("name", ["X-Audit-Receipt", ":status", "x-envoy-receipt", "a b", ""])
def test_header_name_envoy_would_drop_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        validate_header_name(name)


def test_reply_sets_receipt_and_never_changes_its_template() -> None:
    replies = ReceiptReplies("web-0", "x-receipt")
    first, second = replies.reply(7), replies.reply(123456789)
    expected = pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(
                    set_headers=[
                        base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(
                                key="x-receipt", raw_value=b'log="web-0", seq=7'
                            ),
                            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ]
                )
            )
        )
    )
    assert first == expected  # built before `second`: not overwritten by it
    (option,) = second.response_headers.response.header_mutation.set_headers
    assert Receipt.from_text(option.header.raw_value.decode()) == Receipt("web-0", 123456789)
    assert option.header.value == ""  # Envoy reads raw_value; never both


# --- the option ------------------------------------------------------------------------


def _serve(tmp_path: Any, *args: str) -> list[str]:
    return ["serve", "--store", str(tmp_path / "store"), "--key", str(tmp_path / "k"), *args]


def test_receipts_in_observe_mode_is_a_usage_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(_serve(tmp_path, "--mode", "observe", "--receipts")) == cli.EXIT_ERROR
    assert "--receipts needs --mode enforce" in capsys.readouterr().err
    # The same from the environment, as a Kubernetes manifest would set it.
    monkeypatch.setenv("EXTPROC_AUDIT_RECEIPTS", "true")
    monkeypatch.setenv("EXTPROC_AUDIT_MODE", "observe")
    assert cli.main(_serve(tmp_path)) == cli.EXIT_ERROR
    assert "--receipts needs --mode enforce" in capsys.readouterr().err


def test_bad_receipt_header_name_is_a_usage_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _serve(tmp_path, "--receipts", "--receipt-header", "x-envoy-audit")
    assert cli.main(args) == cli.EXIT_ERROR
    assert "invalid receipt header" in capsys.readouterr().err


# --- through a real Envoy ----------------------------------------------------------------


class ForgingApp:
    """An upstream that sets a receipt of its own on every response."""

    def __init__(self) -> None:
        self.total = 0

        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                app.total += 1
                self.send_response(200)
                self.send_header(DEFAULT_HEADER, FORGED)
                self.send_header("content-length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ForgingApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get(
    stack: AuditStack, paths: list[str], tag: str = ""
) -> Iterator[tuple[str, str, int, list[str]]]:
    """(path, request id, status, receipt header values) per request, one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    try:
        for i, path in enumerate(paths):
            rid = f"receipt-test{tag}-{i}"
            conn.request("GET", path, headers={"x-request-id": rid})
            response = conn.getresponse()
            response.read()
            yield path, rid, response.status, response.headers.get_all(DEFAULT_HEADER) or []
    finally:
        conn.close()


@pytest.mark.envoy
def test_each_response_carries_a_receipt_for_its_own_request_entry(make_stack: Any) -> None:
    stack = make_stack(log_id="receipts-e2e", extra_args=["--receipts"])
    stack.app.__exit__(None, None, None)
    stack.app = ForgingApp().__enter__()  # the upstream tries to hand out its own receipt
    stack.start()
    sent = list(_get(stack, PATHS * 5))
    assert [status for _, _, status, _ in sent] == [200] * len(sent)
    assert stack.app.total == len(sent)
    assert stack.stop_server() == 0, stack.server_log()
    verify = run_cli("verify", stack.store_url, "--vkey", _vkey(stack))
    assert verify.returncode == 0, verify.stdout + verify.stderr

    entries = read_entries(stack.store_url, stack.log_id)
    seqs = []
    for path, rid, _, values in sent:
        assert len(values) == 1, values  # ours replaced the upstream's, not added to it
        receipt = Receipt.from_text(values[0])
        assert receipt.log_id == stack.log_id
        entry = entries[receipt.seq]
        assert entry["seq"] == receipt.seq
        assert entry["kind"] == "request"
        assert entry["rid"] == rid
        assert entry["req"]["path"] == urlsplit(path).path
        response = next(e for e in entries if e.get("ref") == receipt.seq)
        assert response["rid"] == rid and response["resp"]["status"] == 200
        seqs.append(receipt.seq)
    assert seqs == sorted(set(seqs))  # one connection, in order: distinct, increasing


@pytest.mark.envoy
def test_each_worker_hands_out_receipts_of_its_own_log(make_stack: Any) -> None:
    stack = make_stack(log_id="pod", extra_args=["--receipts", "--workers", "2"]).start()
    with ThreadPoolExecutor(4) as pool:
        batches = pool.map(lambda c: list(_get(stack, PATHS * 3, tag=f"-c{c}")), range(4))
        sent = [item for batch in batches for item in batch]
    assert stack.stop_server() == 0, stack.server_log()
    logs: dict[str, list[dict[str, Any]]] = {}
    for _, rid, status, values in sent:
        assert status == 200 and len(values) == 1
        receipt = Receipt.from_text(values[0])
        assert receipt.log_id in ("pod-w0", "pod-w1")
        if receipt.log_id not in logs:
            logs[receipt.log_id] = read_entries(stack.store_url, receipt.log_id)
        entry = logs[receipt.log_id][receipt.seq]
        assert (entry["kind"], entry["rid"]) == ("request", rid)


@pytest.mark.envoy
def test_no_receipt_unless_configured(make_stack: Any) -> None:
    stack = make_stack().start()
    sent = list(_get(stack, PATHS))
    assert [(status, values) for _, _, status, values in sent] == [(200, [])] * len(PATHS)


@pytest.mark.envoy
def test_denied_request_gets_no_receipt(make_stack: Any) -> None:
    # Nothing is published for an hour and the backlog bound is the smallest
    # allowed (1 KiB): after the first entry or two the log refuses every
    # request, so Envoy answers 503 itself.
    stack = make_stack(
        extra_args=["--receipts", "--max-backlog-bytes", "1024", "--bundle-max-age", "3600"]
    ).start()
    sent = list(_get(stack, PATHS * 5))
    statuses = [status for _, _, status, _ in sent]
    assert statuses.count(503) >= len(sent) - 3, statuses
    for _, _, status, values in sent:
        assert len(values) == (1 if status == 200 else 0), (status, values)
    assert stack.app.total == statuses.count(200)
    assert "denying request (503)" in stack.server_log()


def _vkey(stack: AuditStack) -> str:
    from extproc.keys import load_signer

    return load_signer(stack.key_path).verifier().to_text()
