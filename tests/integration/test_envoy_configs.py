"""Every Envoy config in the repo (and every one we render) passes
`envoy --mode validate` of the Envoy build the tests run."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.processes import envoy_binary
from tests import topology
from tests.conftest import ALS_STATS, read_entries, wait_for_access_logs

ROOT = Path(__file__).resolve().parents[2]
REPO_CONFIGS = sorted((ROOT / "envoy").glob("*.yaml"))

pytestmark = [pytest.mark.envoy]


def _validate(path: Path) -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_repo_has_envoy_configs() -> None:
    assert {p.name for p in REPO_CONFIGS} >= {"envoy.yaml", "envoy-observe.yaml"}


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: p.name)
def test_repo_config_validates(path: Path) -> None:
    _validate(path)


def test_repo_configs_are_rendered_from_the_source() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


VARIANTS = {
    "enforce": {"mode": "enforce"},
    "observe": {"mode": "observe"},
    "receipts": {"mode": "enforce", "response_phase": True, "access_logs": False},
    "sensitive-routes": {"mode": "enforce", "enforce_prefixes": ("/admin", "/pay")},
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("upstream", [Endpoint("app.internal", 8080), None], ids=["dns", "direct"])
def test_rendered_configs_validate(
    tmp_path: Path, variant: dict[str, Any], upstream: Endpoint | None
) -> None:
    config = bootstrap(
        listen=Endpoint("0.0.0.0", 10000),
        ext_proc=Endpoint("audit.internal", 50051),
        upstream=upstream,
        admin=Endpoint("127.0.0.1", 9901),
        **variant,
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(to_yaml(config))
    _validate(path)


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _config(**options: Any) -> dict[str, Any]:
    return bootstrap(listen=Endpoint("0.0.0.0", 1), ext_proc=Endpoint("127.0.0.1", 2),
                     upstream=None, admin=Endpoint("127.0.0.1", 3), **options)  # fmt: skip


def test_enforce_holds_request_headers_only_and_fails_closed() -> None:
    hcm = _hcm(_config())
    ext_proc = hcm["http_filters"][0]["typed_config"]
    assert ext_proc["failure_mode_allow"] is False
    assert ext_proc["processing_mode"]["request_header_mode"] == "SEND"
    assert ext_proc["processing_mode"]["response_header_mode"] == "SKIP"  # one round trip
    assert "observability_mode" not in ext_proc
    assert "xds.node" not in ext_proc["request_attributes"]  # 80 KB dump: never
    assert "source.principal" not in ext_proc["request_attributes"]  # not an Envoy attribute
    (als,) = hcm["access_log"]  # the outcome, by the access-log stream
    assert (
        als["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        == (ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"])
    )
    cluster = _config()["static_resources"]["clusters"][0]
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] > 1024


def test_observe_is_the_access_log_stream_alone() -> None:
    hcm = _hcm(_config(mode="observe"))
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.router"]
    assert hcm["access_log"][0]["name"] == "envoy.access_loggers.http_grpc"


def test_receipts_config_keeps_the_response_phase() -> None:
    hcm = _hcm(_config(response_phase=True, access_logs=False))
    ext_proc = hcm["http_filters"][0]["typed_config"]
    assert ext_proc["processing_mode"]["response_header_mode"] == "SEND"
    assert "access_log" not in hcm


def test_sensitive_routes_are_held_and_the_rest_only_logged() -> None:
    routes = _hcm(_config(enforce_prefixes=("/admin",)))["route_config"]["virtual_hosts"][0][
        "routes"
    ]
    assert routes[0]["match"] == {"prefix": "/admin"} and "typed_per_filter_config" not in routes[0]
    per_route = routes[1]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
    assert routes[1]["match"] == {"prefix": "/"} and per_route["disabled"] is True


# --- the shipped configs with real traffic, on the oldest and the newest Envoy -------

# What each shipped config needs from the server, and what it audits: request
# entries held by ext_proc (all, or only the routes the compose file enforces),
# response entries (the receipts' second phase), access entries (ALS).
SHIPPED: dict[str, dict[str, Any]] = {
    "envoy.yaml": {"args": [], "request": True, "response": False, "access": True},
    "envoy-observe.yaml": {"args": ["--mode", "observe"], "request": False, "response": False,
                           "access": True},
    "envoy-receipts.yaml": {"args": ["--receipts"], "request": True, "response": True,
                            "access": False},
    "envoy-compose.yaml": {"args": [], "request": False, "response": False, "access": True},
}  # fmt: skip


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED, ids=SHIPPED.keys())
def test_shipped_config_audits_real_traffic(
    tmp_path: Path, make_stack: Any, envoy_bin: str, name: str
) -> None:
    """Each envoy/*.yaml as shipped (only its addresses moved to loopback ports),
    on the oldest and the newest Envoy of the supported range: 24 requests pass,
    each has its entries, the log verifies after SIGTERM; then with no server,
    every enforced route answers 503 (status_on_error: the documented fail-closed
    status) and observed routes still pass."""
    want = SHIPPED[name]
    stack = make_stack(extra_args=list(want["args"]), envoy_bin=envoy_bin)
    stack.start_server()
    config = yaml.safe_load((ROOT / "envoy" / name).read_text())
    ports = {10000: stack.envoy_port, 50051: stack.grpc_port, 8080: stack.app.port,
             9901: stack.admin_port}  # fmt: skip
    stack.start_envoy(topology.on_loopback(config, ports))
    result = stack.send(24)
    assert sum(result.statuses.values()) == 24 and result.errors == 0, result
    assert all(200 <= s < 300 for s in result.statuses), result
    if want["access"]:
        stats = wait_for_access_logs(stack.admin_port, 24, flush_interval=0.2)
        assert stats[ALS_STATS + "logs_dropped"] == 0
    assert stack.stop_server() == 0
    enforced = "/admin" if name == "envoy-compose.yaml" else "/api/orders"
    observed = _status(stack.envoy_port, "/api/orders")
    if want["request"] or name == "envoy-compose.yaml":
        assert _status(stack.envoy_port, enforced) == 503
    if not want["request"]:
        assert observed == 200
    entries = [e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] != "writer"]
    kinds = Counter(e["kind"] for e in entries)
    assert kinds == {k: 24 for k in ("request", "response", "access") if want[k]}, kinds
    rids = {e["rid"] for e in entries}
    assert rids == set(result.request_ids)
    verified = stack.verify()
    assert verified.returncode == 0 and "VALID" in verified.stdout, verified.stdout
