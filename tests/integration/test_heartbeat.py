"""An idle writer logs heartbeats, so silence in the checkpoints means trouble."""

from __future__ import annotations

import time
from typing import Any

import pytest

from extproc.core.note import Signer
from tests.conftest import read_entries, run_cli

pytestmark = pytest.mark.slow


def test_idle_writer_publishes_heartbeats(make_stack: Any) -> None:
    stack = make_stack(extra_args=["--heartbeat-interval", "0.4"])
    stack.start_server()
    time.sleep(2.0)
    assert stack.stop_server() == 0
    entries = read_entries(stack.store_url, stack.log_id)
    events = [e["event"] for e in entries if e["kind"] == "writer"]
    assert events[0] == "start" and events[-1] == "stop"
    beats = events[1:-1]
    assert beats and set(beats) == {"heartbeat"}, events
    assert 2 <= len(beats) <= 6, events  # one per idle interval, not per tick
    vkey = Signer.from_text(stack.key_path.read_text().strip()).verifier().to_text()
    result = run_cli("verify", stack.store_url, "--vkey", vkey)
    assert result.returncode == 0, result.stdout + result.stderr


def test_heartbeat_disabled_and_negative_rejected(make_stack: Any) -> None:
    stack = make_stack(extra_args=["--heartbeat-interval", "0"])
    stack.start_server()
    time.sleep(0.8)
    assert stack.stop_server() == 0
    events = [e["event"] for e in read_entries(stack.store_url, stack.log_id) if "event" in e]
    assert events == ["start", "stop"]
    bad = run_cli("serve", "--store", "x", "--key", "k", "--heartbeat-interval", "-1")
    assert bad.returncode == 2 and "--heartbeat-interval" in bad.stderr
