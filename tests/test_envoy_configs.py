"""Every Envoy config in the repo (and every one we render) passes
`envoy --mode validate` of the Envoy build the tests run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("mode", ["enforce", "observe"])
@pytest.mark.parametrize("upstream", [Endpoint("app.internal", 8080), None], ids=["dns", "direct"])
def test_rendered_configs_validate(tmp_path: Path, mode: str, upstream: Endpoint | None) -> None:
    config = bootstrap(
        listen=Endpoint("0.0.0.0", 10000),
        ext_proc=Endpoint("audit.internal", 50051),
        upstream=upstream,
        admin=Endpoint("127.0.0.1", 9901),
        mode=mode,
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(to_yaml(config))
    _validate(path)


def test_enforce_config_fails_closed_and_observe_does_not_block() -> None:
    enforce = bootstrap(listen=Endpoint("0.0.0.0", 1), ext_proc=Endpoint("127.0.0.1", 2),
                        upstream=None, admin=Endpoint("127.0.0.1", 3))  # fmt: skip
    observe = bootstrap(listen=Endpoint("0.0.0.0", 1), ext_proc=Endpoint("127.0.0.1", 2),
                        upstream=None, admin=Endpoint("127.0.0.1", 3), mode="observe")  # fmt: skip

    def ext_proc(config: dict) -> dict:  # type: ignore[type-arg]
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        return hcm["typed_config"]["http_filters"][0]["typed_config"]  # type: ignore[no-any-return]

    assert ext_proc(enforce)["failure_mode_allow"] is False
    assert ext_proc(enforce)["observability_mode"] is False
    assert ext_proc(observe)["observability_mode"] is True
    assert "xds.node" not in ext_proc(enforce)["request_attributes"]  # 80 KB dump: never
    cluster = enforce["static_resources"]["clusters"][0]
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] > 1024
