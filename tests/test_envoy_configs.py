"""Every Envoy config in the repo (and every one we render) passes
`envoy --mode validate` of the Envoy build the tests run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.processes import envoy_binary

ROOT = Path(__file__).resolve().parents[1]
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
