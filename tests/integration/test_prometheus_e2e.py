"""The shipped alerts in a real Prometheus, against a real audit server and a
real Envoy on loopback, with S3 (moto) behind a fault proxy.

Prometheus (Debian's `prometheus` package) scrapes the server's /metrics and
Envoy's /stats/prometheus every second and evaluates the alerts of
istio/monitoring/ rendered with thresholds of seconds (AlertSettings; the
expressions are the shipped ones). Envoy reports as an authenticated reporter
(the XFCC element the server's own sidecar would add, from the trusted address),
so the reporter's SPIFFE id and namespace are what a mesh gives. Traffic flows
through Envoy all along, and the operator's view is read from Prometheus'
/api/v1/alerts:

1. healthy: nothing fires, and every metric the alerts read is there;
2. a stream without a reporter identity: ExtprocAuditReportersRefused;
3. S3 cut (every write 500): ExtprocAuditPublicationStalled and
   ExtprocAuditStoreErrors; then S3 acknowledging writes it does not keep:
   ExtprocAuditWritesNotKept; the backlog fills: ExtprocAuditBacklogNearLimit,
   ExtprocAuditRequestsDenied, ExtprocAuditEntriesDropped;
4. S3 back: the publication alert resolves;
5. traffic stops: ExtprocAuditReporterSilent;
6. traffic again and the server killed: ExtprocAuditDown, and on Envoy's side
   ExtprocAuditEnvoyExtProcFailures and ExtprocAuditAccessLogGap.

The other alerts (fenced, foreign objects, self-audit, Envoy's buffer drops,
flush failures and fail-open, metrics absent, unauthenticated reporters) are
covered by promtool's unit tests (tests/integration/test_alerts.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import istio_alerts
import pytest
import yaml

from extproc import processes
from extproc.envoyconf import Endpoint, bootstrap
from tests.conftest import MotoServer, stack_factory
from tests.faultproxy import FaultProxy

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.s3,
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (Debian: apt-get install prometheus; .ci/run installs it)",
    ),
]

# The shipped rules, with windows and thresholds of seconds (1 s scrapes and evaluations).
SETTINGS = istio_alerts.AlertSettings(
    window="10s",
    slow_window="30s",
    stall_after=4,
    silent_after=4,
    seen_within="5m",
    gap_window="10s",
    gap_ratio=0.5,
    for_short="1s",
    for_long="1m",
)
REPORTER = "spiffe://cluster.local/ns/demo/sa/web"
SERVER_ID = "spiffe://cluster.local/ns/extproc-audit/sa/extproc-audit"
ENVOY_LABELS = {"namespace": "demo", "pod": "web-0"}
BACKLOG_BYTES = 48 * 1024


class Prometheus:
    """A Prometheus server on a loopback port, with a config and data dir of its own."""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]]) -> None:
        self.port = processes.free_port()
        (workdir / "rules.yaml").write_text(yaml.safe_dump(istio_alerts.alert_groups(SETTINGS)))
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": scrape_configs,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = (workdir / "prometheus.log").open("ab")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        processes.wait_until(
            self._ready, f"prometheus (see {workdir / 'prometheus.log'})", self.proc
        )

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
            return bool(r.status == 200)

    def query(self, expr: str) -> list[dict[str, Any]]:
        found = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return found["data"]["result"]  # type: ignore[no-any-return]

    def alerts(self) -> dict[str, dict[str, Any]]:
        """The active alerts (pending or firing) by name; firing wins over pending."""
        active: dict[str, dict[str, Any]] = {}
        for alert in self._get("/api/v1/alerts")["data"]["alerts"]:
            name = alert["labels"]["alertname"]
            if name not in active or alert["state"] == "firing":
                active[name] = alert
        return active

    def wait_firing(self, name: str, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            alert = self.alerts().get(name)
            if alert is not None and alert["state"] == "firing":
                return alert
            assert time.monotonic() < deadline, f"{name} not firing within {within:g} s: {alert}"
            time.sleep(0.25)

    def wait_resolved(self, name: str, within: float) -> None:
        deadline = time.monotonic() + within
        while name in self.alerts():
            assert time.monotonic() < deadline, f"{name} still active after {within:g} s"
            time.sleep(0.25)

    def close(self) -> None:
        processes.stop(self.proc, sig=signal.SIGTERM, timeout=10)
        self._log.close()


class Traffic(threading.Thread):
    """Requests through Envoy, one every 50 ms, while running; statuses counted."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.running = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            if not self.running.wait(0.1):
                continue
            i += 1
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", f"/api/orders/{i}", headers={"user-agent": "alerts-e2e"})
                self.statuses[conn.getresponse().status] += 1
                conn.close()
            time.sleep(0.05)


def _reporting_envoy_config(stack: Any) -> dict[str, Any]:
    """The stack's Envoy, reporting as REPORTER: both gRPC services (the ext_proc
    filter's and the access logger's) carry the XFCC element the server's own
    sidecar would append, and connect from the address the server trusts."""
    config = bootstrap(
        listen=Endpoint("127.0.0.1", stack.envoy_port),
        ext_proc=Endpoint("127.0.0.1", stack.grpc_port),
        upstream=Endpoint("127.0.0.1", stack.app.port),
        admin=Endpoint("127.0.0.1", stack.admin_port),
        node_id="web-0",
    )
    xfcc = [{"key": "x-forwarded-client-cert", "value": f"By={SERVER_ID};URI={REPORTER}"}]
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    services = [f["typed_config"]["grpc_service"] for f in hcm["http_filters"][:-1]]
    services += [a["typed_config"]["common_config"]["grpc_service"] for a in hcm["access_log"]]
    assert len(services) == 2
    for service in services:
        service["initial_metadata"] = xfcc
    return config


@pytest.fixture
def mesh(tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto behind a fault proxy, an audit server (metrics on), a reporting Envoy,
    Prometheus scraping both, and traffic (paused): all stopped on exit."""
    bucket = moto.new_bucket()
    metrics_port = processes.free_port()
    with contextlib.ExitStack() as cleanup:
        proxy = cleanup.enter_context(FaultProxy("127.0.0.1", moto.port))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the server's S3, through it
        make = cleanup.enter_context(stack_factory(tmp_path))
        stack = make(
            f"s3://{bucket}/mesh",
            log_id="extproc-audit-0",
            extra_args=[
                "--metrics-listen", f"127.0.0.1:{metrics_port}",
                "--trust-xfcc-from", "127.0.0.1/32", "--xfcc-by", SERVER_ID,
                "--allow-reporter", "spiffe://cluster.local/ns/demo/sa/*",
                "--max-backlog-bytes", str(BACKLOG_BYTES),
                "--heartbeat-interval", "1",
            ],
        )  # fmt: skip
        stack.start_server()
        stack.start_envoy(_reporting_envoy_config(stack))
        prometheus = Prometheus(
            tmp_path,
            [
                {
                    "job_name": istio_alerts.JOB,
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                },
                {
                    "job_name": "envoy",
                    "metrics_path": "/stats/prometheus",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{stack.admin_port}"], "labels": ENVOY_LABELS}
                    ],
                },
            ],
        )
        cleanup.callback(prometheus.close)
        traffic = Traffic(stack.envoy_port)
        traffic.start()

        def stop_traffic() -> None:
            traffic.stopped.set()
            traffic.join(10)

        cleanup.callback(stop_traffic)
        yield stack, proxy, prometheus, traffic


def _forged_stream(port: int) -> Any:
    """An ext_proc stream from the trusted address without the proxy's XFCC element."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    message = pb.ProcessingRequest(request_headers=pb.HttpHeaders(end_of_stream=True))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Process(iter([message]), timeout=10))
    return refused.value.code()


def test_alerts_fire_in_a_real_prometheus(mesh: Any) -> None:
    import grpc

    stack, proxy, prometheus, traffic = mesh

    # 1. Healthy: traffic passes, the metrics every alert here reads are scraped
    # under the names the rules use, and nothing is pending or firing.
    traffic.running.set()
    wanted = [
        "extproc_audit_last_checkpoint_timestamp_seconds > 0",
        f'extproc_audit_access_entries_total{{reporter="{REPORTER}"}} > 0',
        f'extproc_audit_reporter_last_seen_timestamp_seconds{{reporter="{REPORTER}"}}',
        "extproc_audit_backlog_bytes", "extproc_audit_backlog_limit_bytes > 0",
        "extproc_audit_denied_total", "extproc_audit_publish_errors_total",
        "envoy_http_ext_proc_streams_started > 0", "envoy_http_ext_proc_streams_failed",
        "envoy_http_ext_proc_message_timeouts", "envoy_access_logs_grpc_access_log_logs_written",
    ]  # fmt: skip
    missing = list(wanted)
    deadline = time.monotonic() + 30
    while missing and time.monotonic() < deadline:
        missing = [expr for expr in missing if not prometheus.query(expr)]
        time.sleep(0.25)
    assert missing == [], "not in Prometheus"
    time.sleep(3)
    ext_proc = processes.envoy_stats(stack.admin_port, "http.ingress_http.ext_proc.")
    assert prometheus.alerts() == {}, (ext_proc, traffic.statuses)
    assert traffic.statuses[200] > 0 and set(traffic.statuses) == {200}, traffic.statuses

    # 2. A stream with no reporter identity is refused, and the refusal alerts.
    assert _forged_stream(stack.grpc_port) == grpc.StatusCode.PERMISSION_DENIED
    refused = prometheus.wait_firing("ExtprocAuditReportersRefused", within=10)
    assert refused["labels"]["reason"] == "no_identity"

    # 3. S3 cut: every write fails. Publication stalls and the store errors show.
    proxy.set("error")
    stalled = prometheus.wait_firing("ExtprocAuditPublicationStalled", within=20)
    assert stalled["labels"]["severity"] == "critical"
    assert stalled["annotations"]["runbook_url"] == (
        "docs/RUNBOOK.md#extprocauditpublicationstalled"
    )
    assert "no checkpoint confirmed for" in stalled["annotations"]["summary"]
    prometheus.wait_firing("ExtprocAuditStoreErrors", within=10)
    # Then S3 acknowledges writes and keeps nothing: caught when read back.
    proxy.set("blackhole")
    prometheus.wait_firing("ExtprocAuditWritesNotKept", within=15)
    # The backlog reaches its bound: requests denied (503), access entries dropped.
    prometheus.wait_firing("ExtprocAuditBacklogNearLimit", within=20)
    prometheus.wait_firing("ExtprocAuditRequestsDenied", within=10)
    prometheus.wait_firing("ExtprocAuditEntriesDropped", within=10)
    assert traffic.statuses[503] > 0, traffic.statuses

    # 4. S3 back: everything waiting is published, the publication alert resolves.
    proxy.set("none")
    prometheus.wait_resolved("ExtprocAuditPublicationStalled", within=20)
    prometheus.wait_resolved("ExtprocAuditBacklogNearLimit", within=10)

    # 5. The reporter goes quiet.
    traffic.running.clear()
    silent = prometheus.wait_firing("ExtprocAuditReporterSilent", within=15)
    assert silent["labels"]["reporter"] == REPORTER

    # 6. Traffic again, and the server is gone: Prometheus sees it down, Envoy's
    # ext_proc filter fails the requests, and its access-log entries reach no log.
    traffic.running.set()
    stack.stop_server(signal.SIGKILL)
    prometheus.wait_firing("ExtprocAuditDown", within=10)
    failures = prometheus.wait_firing("ExtprocAuditEnvoyExtProcFailures", within=15)
    assert {k: failures["labels"][k] for k in ENVOY_LABELS} == ENVOY_LABELS
    gap = prometheus.wait_firing("ExtprocAuditAccessLogGap", within=20)
    assert gap["labels"]["namespace"] == ENVOY_LABELS["namespace"]
