"""istio/ in real runs: the access logger istiod renders for the mesh's
envoyHttpAls provider runs in real Envoy against the real server beside the
enforce filter (request and outcome linked, on one audit pod of two), and the
per-pod topology does the same over its Unix socket.
"""

from __future__ import annotations

import shutil
import signal
import stat
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import istio_names
import pytest
import render_istio

from extproc import processes
from extproc.demo import UpstreamApp
from extproc.envoyconf import ACCESS_LOG_NAME
from tests.conftest import (
    ALS_STATS,
    envoy_version,
    read_entries,
    run_cli,
    stack_factory,
    wait_for_access_logs,
)
from tests.istio_manifests import (
    containers_by_name,
    injected_pod,
    istio_config,
    sidecar_settings,
    telemetry_contexts,
    with_istio_stats,
)

# --- real runs --------------------------------------------------------------------------


def _cluster_counter(admin_port: int, metric: str) -> float:
    """`metric` of the audit Service's outbound cluster in /stats/prometheus
    (Istio's cluster_name tag), as the flush alert selects it."""
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    series = f'{metric}{{cluster_name="{istio_names.OUTBOUND_CLUSTER}"}}'
    (value,) = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(series)]
    return float(value)


def _prometheus_stats(admin_port: int, prefix: str) -> dict[str, float]:
    """Envoy's /stats/prometheus, as Prometheus scrapes it (Istio merges it into
    the pod's :15020/stats/prometheus)."""
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]  # Envoy writes `name{} value` for a counter
        if name.startswith(prefix):
            found[name] = float(value)
    return found


def _pods(make: Any, store: str, count: int) -> list[Any]:
    """`count` audit servers (pods) on one store, one signing key, one log each."""
    pods = [make(store, log_id=f"extproc-audit-{i}") for i in range(count)]
    for pod in pods[1:]:
        shutil.copy(pods[0].key_path, pod.key_path)
    for pod in pods:
        pod.start_server()
    return pods


@pytest.mark.envoy
@pytest.mark.slow
def test_istiod_access_log_and_enforce_filter_audit_real_traffic(
    tmp_path: Path, envoy_bin: str
) -> None:
    """What a mesh with the enforce overlay gives a sidecar, on loopback: the
    EnvoyFilter's request-only ext_proc filter, the base's affinity patch on the
    outbound cluster to the audit Service (two audit pods: two real servers on
    one store), and the access logger istiod renders for the envoyHttpAls
    provider, on the inbound listener and on an outbound listener in front of it
    (as a Telemetry without `match` would; the shipped ones are SERVER only).
    30 requests pass. All of this proxy's streams land on one pod. Each request
    has a request entry and an access entry from each listener; the inbound one
    links the request entry by `ref`, the outbound one (same request id, other
    local address) does not. Envoy wrote 60 entries and dropped none, under the
    Prometheus names the docs' queries use. The logs verify, and with the
    servers gone requests are refused with 503, and the proxy's failed
    connections to the audit Service show under the name the flush alert reads.
    On the oldest and the newest Envoy of the supported range."""
    with stack_factory(tmp_path) as make, UpstreamApp() as app:
        store = str(tmp_path / "store")
        pods = _pods(make, store, 2)
        proxy = pods[0]
        inbound = processes.free_port()
        ports = {"outbound": proxy.envoy_port, "listen": inbound, "app": app.port,
                 "admin": proxy.admin_port, "grpc": [p.grpc_port for p in pods]}  # fmt: skip
        config = istio_config("enforce", ports, telemetry=telemetry_contexts("enforce"))
        config = with_istio_stats(config)
        proxy.envoy_bin = envoy_bin
        proxy.start_envoy(config)
        result = proxy.send(30)
        assert result.statuses[200] + result.statuses[201] == 30 and result.errors == 0
        stats = wait_for_access_logs(proxy.admin_port, 60)
        exported = _prometheus_stats(proxy.admin_port, "envoy_access_logs_grpc_access_log_")
        ext_proc_stats = processes.envoy_stats(proxy.admin_port, "http.")
        ext_proc_exported = _prometheus_stats(proxy.admin_port, "envoy_http_ext_proc_")
        for pod in pods:
            assert pod.stop_server(signal.SIGTERM) == 0
        # Enforce fails closed: with the audit servers gone nothing passes (503,
        # status_on_error), and the failed connections show.
        refused = proxy.send(3, concurrency=1)
        assert refused.statuses == {503: 3}, refused
        connect_fail = _cluster_counter(proxy.admin_port, "envoy_cluster_upstream_cx_connect_fail")
    assert stats[ALS_STATS + "logs_written"] == 60 and stats[ALS_STATS + "logs_dropped"] == 0
    assert exported["envoy_access_logs_grpc_access_log_logs_written"] == 60
    assert exported["envoy_access_logs_grpc_access_log_logs_dropped"] == 0
    # grpc_entries_flush_failed exists from Envoy 1.39 on; the alert falls back to
    # the connection failures, which every supported Envoy exports.
    flush_failed = "envoy_access_logs_grpc_access_log_grpc_entries_flush_failed"
    assert (flush_failed in exported) == (envoy_version(envoy_bin) >= (1, 39))
    assert exported.get(flush_failed, 0) == 0
    assert connect_fail >= 3
    # The ext_proc counters the mesh keeps by suffix (and the alerts read): each
    # suffix names a stat of this listener's filter, exported as envoy_http_ext_proc_*.
    kept = {}
    for suffix in render_istio.EXT_PROC_STATS_SUFFIXES:
        (name,) = [n for n in ext_proc_stats if n.endswith("." + suffix)]
        kept[suffix] = ext_proc_stats[name]
        assert f"envoy_http_{suffix.replace('.', '_')}" in ext_proc_exported, ext_proc_exported
    assert kept["ext_proc.streams_started"] == 30
    # A healthy run fails no stream: the failures alert has no false positives here.
    assert kept["ext_proc.streams_failed"] == kept["ext_proc.message_timeouts"] == 0
    assert kept["ext_proc.failure_mode_allowed"] == 0
    # Istio's matcher is in effect: the filter's other counters are not kept.
    assert not [n for n in ext_proc_stats if n.endswith("ext_proc.stream_msgs_sent")]
    logs = {p.log_id: [e for e in read_entries(store, p.log_id) if e["kind"] != "writer"]
            for p in pods}  # fmt: skip
    busy = [log_id for log_id, entries in logs.items() if entries]
    assert len(busy) == 1, {k: Counter(e["kind"] for e in v) for k, v in logs.items()}
    entries = logs[busy[0]]
    assert Counter(e["kind"] for e in entries) == {"request": 30, "access": 60}
    requests = {e["rid"]: e for e in entries if e["kind"] == "request"}
    assert set(requests) == set(result.request_ids)
    sides = {f"127.0.0.1:{inbound}": "inbound", f"127.0.0.1:{proxy.envoy_port}": "outbound"}
    seen: Counter[str] = Counter()
    for e in (e for e in entries if e["kind"] == "access"):
        side = sides[e["dst"]]
        seen[side] += 1
        request = requests[e["rid"]]
        assert e["reporter"]["claimed"]["log"] == ACCESS_LOG_NAME
        assert all(e["reporter"].get(k) == request["reporter"].get(k) for k in ("auth", "id"))
        assert e["resp"]["status"] in (200, 201) and e["resp"]["headers"]["content-type"]
        if side == "inbound":
            assert e["ref"] == request["seq"] and e["seq"] > request["seq"]
        else:
            assert "ref" not in e
    assert seen == {"inbound": 30, "outbound": 30}
    verified = run_cli("verify", store, "--vkey", _verifier_key(pods[0].key_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VALID" in verified.stdout


@pytest.mark.envoy
@pytest.mark.slow
def test_consistent_hash_of_a_destination_rule_would_not_pin_a_proxy(tmp_path: Path) -> None:
    """Why the affinity is an EnvoyFilter and not a DestinationRule's
    consistentHash (useSourceIp or any other key): istiod renders it as lb_policy
    RING_HASH on the cluster (cluster_traffic_policy.go, ApplyRingHashLoadBalancer)
    plus a hash policy on HTTP routes (route/route.go, consistentHashToHashPolicy),
    and ext_proc and access-log streams use no route, so Envoy has no hash and
    picks a pod at random per stream. Real Envoy, two real servers: one proxy's
    request entries land on both pods, and those away from its access-log stream
    stay unlinked."""
    with stack_factory(tmp_path) as make, UpstreamApp() as app:
        store = str(tmp_path / "store")
        pods = _pods(make, store, 2)
        proxy = pods[0]
        ports = {"listen": proxy.envoy_port, "app": app.port, "admin": proxy.admin_port,
                 "grpc": [p.grpc_port for p in pods]}  # fmt: skip
        config = istio_config("enforce", ports, telemetry=("SIDECAR_INBOUND",), affinity=False)
        (cluster,) = [
            c for c in config["static_resources"]["clusters"]
            if c["name"] == istio_names.OUTBOUND_CLUSTER
        ]  # fmt: skip
        # What ApplyRingHashLoadBalancer renders for consistentHash.useSourceIp.
        cluster["lb_policy"] = "RING_HASH"
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": 1024}
        proxy.start_envoy(config)
        result = proxy.send(40)
        assert result.statuses[200] + result.statuses[201] == 40
        wait_for_access_logs(proxy.admin_port, 40)
        for pod in pods:
            assert pod.stop_server(signal.SIGTERM) == 0
    kinds = {p.log_id: Counter(e["kind"] for e in read_entries(store, p.log_id)) for p in pods}
    assert all(k["request"] > 0 for k in kinds.values()), kinds  # spread per stream
    assert sum(k["request"] for k in kinds.values()) == 40
    linked = sum(1 for p in pods for e in read_entries(store, p.log_id) if "ref" in e)
    assert linked < 40


@pytest.mark.envoy
@pytest.mark.slow
def test_sidecar_envoyfilter_audits_real_traffic_over_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, envoy_bin: str
) -> None:
    """The per-pod topology on loopback: the sidecar overlay's EnvoyFilter on an
    Istio-shaped config (its cluster a pipe, the ext_proc filter and the access
    logger both on it), real Envoy, the real server on a Unix socket with the
    overlay's settings, an upstream app. 30 requests pass, each with a request
    entry and an access entry that links it, every entry names the socket as
    its reporter, the template's readiness command answers, SIGTERM publishes,
    the log verifies, and requests are refused once the server is gone."""
    # A short directory: Unix socket paths are limited to 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="xa-", dir="/tmp"))
    sock = run_dir / "audit.sock"

    def here(value: str) -> str:
        return value.replace(render_istio.SOCKET_PATH, str(sock))

    settings = sidecar_settings()
    monkeypatch.setenv(
        "EXTPROC_AUDIT_ALLOW_REPORTER", here(settings["EXTPROC_AUDIT_ALLOW_REPORTER"])
    )
    try:
        with stack_factory(tmp_path) as make, UpstreamApp() as app:
            stack = make(listen=here(settings["EXTPROC_AUDIT_LISTEN"]))
            stack.start_server()
            # Owner and group (istio-proxy's, in the pod) only.
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            probe = containers_by_name(injected_pod(native=False))["extproc-audit"][
                "readinessProbe"
            ]
            command = [here(arg) for arg in probe["exec"]["command"]]
            assert command[0] == "extproc-audit"
            health = run_cli(*command[1:])
            assert health.returncode == 0, health.stdout + health.stderr
            ports = {"listen": stack.envoy_port, "app": app.port, "admin": stack.admin_port}
            config = istio_config("sidecar", ports)
            (cluster,) = [
                c for c in config["static_resources"]["clusters"]
                if c["name"] == render_istio.LOCAL_CLUSTER
            ]  # fmt: skip
            (endpoints,) = cluster["load_assignment"]["endpoints"]
            address = endpoints["lb_endpoints"][0]["endpoint"]["address"]
            assert address == {"pipe": {"path": render_istio.SOCKET_PATH}}
            address["pipe"]["path"] = str(sock)
            stack.envoy_bin = envoy_bin
            stack.start_envoy(config)
            result = stack.send(30)
            assert result.statuses[200] + result.statuses[201] == 30 and result.errors == 0
            stats = wait_for_access_logs(stack.admin_port, 30, flush_interval=0.2)
            assert stats[ALS_STATS + "logs_dropped"] == 0
            assert stack.stop_server(signal.SIGTERM) == 0
            refused = stack.send(3, concurrency=1)
            assert refused.statuses == {503: 3}, refused
        entries = [e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] != "writer"]
        kinds = Counter(e["kind"] for e in entries)
        assert kinds == {"request": 30, "access": 30}, kinds
        requests = {e["rid"]: e["seq"] for e in entries if e["kind"] == "request"}
        assert {e["rid"]: e.get("ref") for e in entries if e["kind"] == "access"} == requests
        assert {(e["reporter"]["auth"], e["reporter"]["id"]) for e in entries} == {
            ("unix", f"unix:{sock}")
        }
        verified = run_cli("verify", stack.store_url, "--vkey", _verifier_key(stack.key_path))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "VALID" in verified.stdout
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _verifier_key(key_path: Path) -> str:
    from extproc.keys import load_signer

    return load_signer(key_path).verifier().to_text()
