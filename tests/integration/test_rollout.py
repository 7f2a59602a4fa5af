"""A rollout of the audit service costs no enforced request (DESIGN.md promise 10).

Two real audit servers (two pods of the Service) behind one Envoy cluster whose
endpoints come from EDS, as a sidecar's do: here Envoy's filesystem EDS
(`path_config_source` on a watched directory), rewritten by the test as istiod
would push it. Under a steady load of enforced requests one server gets
SIGTERM, and its endpoint is removed from EDS some time later, as Kubernetes
and istiod do. The server's drain (readiness NOT_SERVING, still taking streams
for --drain-delay, then admission ends, then the access-log streams end after
their last batch) must cost no request and no entry: every request answers 2xx,
each has its request entry and its outcome (access entry) in one of the two
logs, Envoy dropped nothing, and both logs verify. Without the drain delay the
same rollout fails requests (the test can fail).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from soak import PacedLoad

from extproc import processes
from extproc.envoyconf import EXT_PROC_CLUSTER, Endpoint, bootstrap
from tests.conftest import ALS_STATS, read_entries, run_cli
from tests.envoyfilter import proto_merge

ROOT = Path(__file__).resolve().parents[2]
DRAIN_DELAY = 3.0  # seconds the terminated server still takes streams
EDS_LAG = 1.5  # seconds from SIGTERM to the endpoint's removal (EndpointSlice, istiod push)


def _eds_cluster(config: dict[str, Any], eds_dir: Path) -> None:
    """Turn the audit cluster of an envoyconf bootstrap into an EDS cluster fed
    from `eds_dir/eds.yaml` (Envoy reloads it when a file is moved in)."""
    clusters = config["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == EXT_PROC_CLUSTER]
    del cluster["load_assignment"]
    cluster["type"] = "EDS"
    cluster["eds_cluster_config"] = {
        "eds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(eds_dir / "eds.yaml"),
                "watched_directory": {"path": str(eds_dir)},
            },
        }
    }


def _publish_endpoints(eds_dir: Path, ports: list[int], version: int) -> None:
    """What istiod pushes: the cluster's endpoints, written whole and moved in."""
    response = {
        "version_info": str(version),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": EXT_PROC_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": Endpoint("127.0.0.1", p).address()}}
                            for p in ports
                        ]
                    }
                ],
            }
        ],
    }
    staged = eds_dir.parent / f"eds-{version}.yaml"
    staged.write_text(yaml.safe_dump(response))
    staged.rename(eds_dir / "eds.yaml")


def _healthy_hosts(admin_port: int) -> int:
    stats = processes.envoy_stats(admin_port, f"cluster.{EXT_PROC_CLUSTER}.membership_total")
    return stats.get(f"cluster.{EXT_PROC_CLUSTER}.membership_total", 0)


def _affinity(config: dict[str, Any]) -> None:
    """The shipped affinity patch (istio/base/envoyfilter-affinity.yaml: ring
    hash on the proxy's own address) merged into the audit cluster, as istiod
    applies it: the whole proxy is pinned to one pod until EDS moves it."""
    (doc,) = [
        d
        for d in yaml.safe_load_all((ROOT / "istio/base/envoyfilter-affinity.yaml").read_text())
        if d
    ]
    (patch,) = doc["spec"]["configPatches"]
    clusters = config["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == EXT_PROC_CLUSTER]
    proto_merge(cluster, patch["patch"]["value"])


def _requests_logged(store: str, log_id: str) -> int:
    """Request entries published so far (bundles are sealed every 0.2 s)."""
    return sum(1 for e in read_entries(store, log_id) if e["kind"] == "request")


def _rollout(
    tmp_path: Path, make_stack: Any, envoy_bin: str, drain_delay: float, *, pinned: bool = False
) -> dict[str, Any]:
    store = str(tmp_path / "store")
    args = ["--drain-delay", str(drain_delay)]
    pods = [make_stack(store, log_id=f"extproc-audit-{i}", extra_args=args) for i in range(2)]
    pods[1].key_path.write_bytes(pods[0].key_path.read_bytes())
    for pod in pods:
        pod.start_server()
    proxy = pods[0]
    eds_dir = tmp_path / "eds"
    eds_dir.mkdir()
    _publish_endpoints(eds_dir, [p.grpc_port for p in pods], 1)
    config = bootstrap(
        listen=Endpoint("127.0.0.1", proxy.envoy_port),
        ext_proc=Endpoint("127.0.0.1", pods[0].grpc_port),
        upstream=Endpoint("127.0.0.1", proxy.app.port),
        admin=Endpoint("127.0.0.1", proxy.admin_port),
    )
    _eds_cluster(config, eds_dir)
    if pinned:
        _affinity(config)
    proxy.envoy_bin = envoy_bin
    proxy.start_envoy(config)
    processes.wait_until(lambda: _healthy_hosts(proxy.admin_port) == 2, "EDS", proxy.envoy)
    load = PacedLoad(proxy.envoy_port, rate=150, threads=6).start()
    try:
        time.sleep(2.0)
        # The pod that has the proxy's streams (with the affinity: all of
        # them) is the one that goes.
        taken = [_requests_logged(store, p.log_id) for p in pods]
        going, staying = (0, 1) if taken[0] >= taken[1] else (1, 0)
        leaving = pods[going].server
        assert leaving is not None
        leaving.send_signal(signal.SIGTERM)
        time.sleep(EDS_LAG)
        _publish_endpoints(eds_dir, [pods[staying].grpc_port], 2)
        processes.wait_until(lambda: _healthy_hosts(proxy.admin_port) == 1, "EDS update")
        status = leaving.wait(30)
        pods[going].server = None
        time.sleep(2.0)  # the remaining server alone under load
    finally:
        result = load.stop()
    time.sleep(1.0)  # Envoy's last access-log flush (0.2 s)
    stats = processes.envoy_stats(proxy.admin_port, ALS_STATS)
    remaining = pods[staying].stop_server(signal.SIGTERM)
    entries = [e for p in pods for e in read_entries(store, p.log_id)]
    return {
        "result": result,
        "exit": (status, remaining),
        "stats": stats,
        "requests": {e["rid"] for e in entries if e["kind"] == "request"},
        "outcomes": {e["rid"] for e in entries if e["kind"] == "access"},
        "per_log": {
            p.log_id: sum(1 for e in read_entries(store, p.log_id) if e["kind"] == "request")
            for p in pods
        },
        "verify": run_cli("verify", store, "--vkey", pods[0].vkey()),
    }


@pytest.mark.envoy
@pytest.mark.slow
@pytest.mark.parametrize("pinned", [False, True], ids=["per-stream", "affinity"])
def test_rollout_under_load_fails_no_request_and_loses_no_entry(
    tmp_path: Path, make_stack: Any, envoy_bin: str, pinned: bool
) -> None:
    """Per stream (the DestinationRule's LEAST_REQUEST), and with the shipped
    affinity patch, which pins the whole proxy to one pod: the terminated pod
    is the busier one (with the affinity, the only one until EDS drops it)."""
    run = _rollout(tmp_path, make_stack, envoy_bin, DRAIN_DELAY, pinned=pinned)
    result = run["result"]
    ok = result.ok_enforced + result.ok_observed
    assert result.sent > 500, result.statuses
    assert result.non_2xx == 0, (result.statuses, result.errors)
    assert run["exit"] == (0, 0)
    # Both pods took requests: the one that left, then (pinned: only) the other.
    assert all(run["per_log"].values()), run["per_log"]
    # Nothing acknowledged is lost: each request's entry was durable before it
    # went upstream, and each outcome reached one of the logs.
    assert [r for r in ok if r not in run["requests"]] == []
    assert [r for r in ok if r not in run["outcomes"]] == []
    assert run["stats"][ALS_STATS + "logs_dropped"] == 0
    verified = run["verify"]
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("OK") == 2, verified.stdout


@pytest.mark.envoy
@pytest.mark.slow
def test_rollout_without_drain_delay_fails_requests(tmp_path: Path, make_stack: Any) -> None:
    """The control: a server that stops taking streams at SIGTERM, while EDS
    still lists it, fails the enforced requests routed to it (503)."""
    run = _rollout(tmp_path, make_stack, processes.envoy_binary(), 0.0)
    assert run["result"].statuses[503] > 0, run["result"].statuses
    assert run["verify"].returncode == 0


def test_draining_server_is_not_ready_but_alive_and_still_takes_streams(
    tmp_path: Path, make_stack: Any
) -> None:
    """SIGTERM: readiness (the whole server and each ingest service) goes
    NOT_SERVING at once, liveness stays SERVING, and for --drain-delay a new
    ext_proc stream is still taken and its entry logged: a proxy that has not
    yet heard that the endpoint is gone is not refused."""
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from extproc.health import check_health
    from extproc.server.app import LIVENESS_SERVICE, READINESS_SERVICES

    stack = make_stack(extra_args=["--drain-delay", "3"])
    stack.start_server()
    address = f"127.0.0.1:{stack.grpc_port}"
    assert check_health(address, LIVENESS_SERVICE).serving
    assert stack.server is not None
    stack.server.send_signal(signal.SIGTERM)
    processes.wait_until(lambda: not check_health(address).serving, "NOT_SERVING")
    assert [check_health(address, s).status for s in READINESS_SERVICES] == ["NOT_SERVING"] * 3
    assert check_health(address, LIVENESS_SERVICE).serving
    headers = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/late"),
                     base_pb2.HeaderValue(key="x-request-id", raw_value=b"late-1")]
        ),
        end_of_stream=True,
    )  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        replies = list(
            pb_grpc.ExternalProcessorStub(channel).Process(
                iter([pb.ProcessingRequest(request_headers=headers)]), timeout=5
            )
        )
    assert replies[0].HasField("request_headers"), replies  # continue: logged, not denied
    assert stack.server.wait(30) == 0
    stack.server = None
    entries = read_entries(stack.store_url, stack.log_id)
    assert [e["rid"] for e in entries if e["kind"] == "request"] == ["late-1"]


def test_a_stream_the_caller_closed_first_logs_no_traceback() -> None:
    """grpc.aio's failure to send the final status of a stream Envoy already
    closed (ExecuteBatchError ... SendStatusFromServerOperation) is counted, not
    logged with a traceback; any other error still is."""
    import logging

    from extproc import metrics
    from extproc.server.app import _PeerGoneFilter

    def record(message: str, exc: BaseException | None) -> logging.LogRecord:
        return logging.LogRecord(
            "grpc._cython.cygrpc", logging.ERROR, __file__, 1, message, None,
            (type(exc), exc, None) if exc is not None else None,
        )  # fmt: skip

    class ExecuteBatchError(Exception):
        pass

    gone = ExecuteBatchError("Failed \"execute_batch\": (<grpc._cython.cygrpc."
                             "SendStatusFromServerOperation object at 0x7f>,)")  # fmt: skip
    before = metrics.STREAMS_CLOSED_BY_PEER._value.get()
    quiet = _PeerGoneFilter()
    assert quiet.filter(record("Unexpected error in the servicer", gone)) is False
    assert metrics.STREAMS_CLOSED_BY_PEER._value.get() == before + 1
    assert quiet.filter(record("Unexpected error", ExecuteBatchError("other op"))) is True
    assert quiet.filter(record("Unexpected error", RuntimeError("boom"))) is True


def test_server_past_its_memory_bound_drains_and_exits_cleanly(
    tmp_path: Path, make_stack: Any
) -> None:
    """--max-rss-mb: a server whose resident memory passes the bound (here any)
    drains as on SIGTERM (its final checkpoint covers everything acknowledged)
    and exits 0, for the orchestrator to start a fresh process: grpc.aio's
    native memory grows per stream, and a planned restart beats an OOM kill."""
    stack = make_stack(extra_args=["--max-rss-mb", "1"]).start()
    result = stack.send(6)
    assert sum(result.statuses.values()) == 6 and not result.errors
    assert stack.server is not None
    assert stack.server.wait(60) == 0
    stack.server = None
    assert "above --max-rss-mb 1: draining to restart" in stack.server_log()
    verified = stack.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
    entries = read_entries(stack.store_url, stack.log_id)
    assert entries[-1]["kind"] == "writer" and entries[-1].get("event") == "stop"
