"""istio/monitoring/: the alerts as an operator's Prometheus sees them.

promtool (Debian's `prometheus` package) checks the rules file and the
PrometheusRule's copy of it, and runs the unit tests rendered beside them: each
alert stays quiet, then fires with the summary an operator reads, under
synthetic series; a healthy half hour fires nothing. The rules read only metrics
that exist: the server's (extproc/metrics.py) and the Envoy counters the mesh
keeps (istio/mesh/) and the PodMonitor scrapes. Every alert links its runbook
section. The same rules fire against a real Prometheus in
tests/integration/test_prometheus_e2e.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import istio_alerts
import kustomize_subset
import pytest
import render_istio
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "istio" / "monitoring"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)",
)


def _load(name: str) -> Any:
    (doc,) = [d for d in yaml.safe_load_all((MONITORING / name).read_text()) if d]
    return doc


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load("alerts.yaml")["groups"] for rule in group["rules"]]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


# --- promtool -------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules_file() -> None:
    result = _promtool("check", "rules", "alerts.yaml", cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_prometheus_rule(tmp_path: Path) -> None:
    # The operator loads spec.groups: the same groups, checked as a rules file.
    rule = _load("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == _load("alerts.yaml")
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump(rule["spec"]))
    result = _promtool("check", "rules", "groups.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts_test.yaml", cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # The unit tests compare what fires: a wrong summary, or an alert expected
    # where none fires, fails them.
    shutil.copy(MONITORING / "alerts.yaml", tmp_path / "alerts.yaml")
    tests = _load("alerts_test.yaml")
    stalled = next(t for t in tests["tests"] if "PublicationStalled" in t["name"])
    firing = stalled["alert_rule_test"][1]["exp_alerts"][0]
    firing["exp_annotations"]["summary"] = "something else"
    stalled["alert_rule_test"][0]["exp_alerts"] = [firing]
    tests["tests"] = [stalled]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", "t.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "ExtprocAuditPublicationStalled" in result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    names = [r["alert"] for r in _rules()]
    assert len(names) == len(set(names))
    fired: dict[str, int] = dict.fromkeys(names, 0)
    quiet: dict[str, int] = dict.fromkeys(names, 0)
    healthy = None
    for test in _load("alerts_test.yaml")["tests"]:
        if test["name"].startswith("a healthy"):
            healthy = test
            continue
        for case in test["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet)[case["alertname"]] += 1
    assert [n for n, count in fired.items() if not count] == []
    assert [n for n, count in quiet.items() if not count] == []
    # The healthy half hour checks every alert, in a Prometheus just started and later.
    assert healthy is not None
    checked = Counter(c["alertname"] for c in healthy["alert_rule_test"])
    assert checked == dict.fromkeys(names, 2)
    assert all(c["exp_alerts"] == [] for c in healthy["alert_rule_test"])


# --- what the rules say ---------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_says_what_it_means_and_links_its_runbook_section() -> None:
    anchors = {
        _slug(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line[:1] == "#"
    }
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        # The description is plain text (the values are in the summary).
        assert "{{" not in annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/RUNBOOK.md" and anchor in anchors, rule["alert"]


def test_runbook_says_what_is_at_risk_for_every_alert() -> None:
    text = RUNBOOK.read_text()
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    by_name = {s.split("\n", 1)[0].strip(): s for s in sections}
    for rule in _rules():
        section = by_name[rule["alert"]]
        for part in ("What is happening", "At risk", "Diagnose", "Recover"):
            assert f"**{part}" in section, (rule["alert"], part)


METRIC = re.compile(r"\b(extproc_audit_\w+|envoy_\w+|process_start_time_seconds)\b")


def _metrics_read() -> set[str]:
    return {m for rule in _rules() for m in METRIC.findall(rule["expr"])}


def test_rules_read_only_metrics_the_server_exports() -> None:
    from prometheus_client import REGISTRY

    import extproc.metrics  # noqa: F401 (registers the server's metrics)

    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in REGISTRY.collect()
    }
    read = {m for m in _metrics_read() if not m.startswith("envoy_")}
    assert read - exported == set()
    assert "process_start_time_seconds" in exported  # the default process collector


def test_rules_read_only_envoy_counters_the_mesh_keeps_and_the_pod_monitor_scrapes() -> None:
    """Istio keeps only the stats its matcher includes (the mesh's prefixes and
    suffixes, istio/mesh/); the PodMonitor keeps only the names its relabeling
    allows. Every Envoy counter an alert reads passes both (the names themselves
    are checked against a real Envoy in tests/integration/test_istio_traffic.py)."""
    matcher = render_istio.mesh_config()["defaultConfig"]["proxyStatsMatcher"]
    als = ("logs_written", "logs_dropped", "grpc_entries_flushed", "grpc_entries_flush_failed")
    kept = {
        f"envoy_{prefix.replace('.', '_')}_{name}"
        for prefix in matcher["inclusionPrefixes"]
        if not prefix.startswith("cluster.")
        for name in als
    }
    # A cluster's stat, "cluster.<name>;.<stat>": Istio's cluster_name tag takes
    # the name out, leaving envoy_cluster_<stat>{cluster_name="<name>"}.
    kept |= {
        "envoy_cluster_" + prefix.partition(";.")[2]
        for prefix in matcher["inclusionPrefixes"]
        if prefix.startswith("cluster.")
    }
    kept |= {f"envoy_http_{suffix.replace('.', '_')}" for suffix in matcher["inclusionSuffixes"]}
    read = {m for m in _metrics_read() if m.startswith("envoy_")}
    assert read and read <= kept, read - kept
    monitors = [d for d in yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text()) if d]
    envoy = next(m for m in monitors if m["metadata"]["name"] == "extproc-audit-envoy")
    (endpoint,) = envoy["spec"]["podMetricsEndpoints"]
    (keep,) = endpoint["metricRelabelings"]
    assert keep["action"] == "keep" and keep["sourceLabels"] == ["__name__"]
    assert all(re.fullmatch(keep["regex"], name) for name in read)
    assert endpoint["port"] == "http-envoy-prom" and endpoint["path"] == "/stats/prometheus"


def test_monitors_scrape_the_audit_servers_under_the_alerts_job() -> None:
    docs = kustomize_subset.build(ROOT / "istio" / "overlays" / "enforce")
    service = next(d for d in docs if d["kind"] == "Service")
    monitor = _load("servicemonitor.yaml")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # A ServiceMonitor's job label is the Service's name: what the alerts select.
    assert "jobLabel" not in monitor["spec"]
    assert service["metadata"]["name"] == istio_alerts.JOB
    assert [
        r["alert"] for r in _rules() if f'up{{job="{service["metadata"]["name"]}"}}' in r["expr"]
    ]
    # The server's metrics port is open to the scrape (AuthorizationPolicy, NetworkPolicy).
    policy = next(d for d in docs if d["kind"] == "AuthorizationPolicy")
    metrics_port = str(ports[endpoint["port"]]["port"])
    assert any(
        op["operation"]["ports"] == [metrics_port] and op["operation"]["paths"] == ["/metrics"]
        for rule in policy["spec"]["rules"]
        for op in rule["to"]
    )


def test_sidecar_pod_monitor_scrapes_the_injected_container_under_the_same_job() -> None:
    monitors = [d for d in yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text()) if d]
    sidecar = next(m for m in monitors if m["metadata"]["name"] == "extproc-audit-sidecar")
    assert sidecar["spec"]["selector"]["matchLabels"] == {render_istio.OPT_IN_LABEL: "sidecar"}
    (endpoint,) = sidecar["spec"]["podMetricsEndpoints"]
    (relabel,) = endpoint["relabelings"]
    assert relabel == {"targetLabel": "job", "replacement": istio_alerts.JOB}
    template = (ROOT / "istio" / "injection" / "istio-operator-audit-template.yaml").read_text()
    assert f"- name: {endpoint['port']}\n" in template


def test_monitoring_kustomization_renders() -> None:
    docs = kustomize_subset.build(MONITORING)
    assert sorted(d["kind"] for d in docs) == [
        "PodMonitor", "PodMonitor", "PrometheusRule", "ServiceMonitor",
    ]  # fmt: skip
    if shutil.which("kubectl") is not None:
        result = subprocess.run(["kubectl", "kustomize", str(MONITORING)], capture_output=True,
                                text=True, timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        theirs = [d for d in yaml.safe_load_all(result.stdout) if d]

        def keyed(found: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
            return {(d["kind"], d["metadata"]["name"]): d for d in found}

        assert keyed(theirs) == keyed(docs)


def test_alert_settings_check_themselves() -> None:
    with pytest.raises(ValueError, match="fractions"):
        istio_alerts.AlertSettings(backlog_ratio=1.5)
    with pytest.raises(ValueError, match="positive"):
        istio_alerts.AlertSettings(stall_after=0)
    quick = istio_alerts.alert_groups(istio_alerts.AlertSettings(stall_after=3, for_short="1s"))
    stalled = next(r for g in quick["groups"] for r in g["rules"]
                   if r["alert"] == "ExtprocAuditPublicationStalled")  # fmt: skip
    assert stalled["expr"].endswith("> 3") and stalled["for"] == "1s"


# --- the plain Prometheus configuration (no operator) -----------------------------------


def _relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabeling, the subset prometheus.yaml uses: `keep` and
    `replace` (default regex `(.*)`, separator `;`, replacement `$1`), regexes
    anchored at both ends. None: the target is dropped."""
    out = dict(labels)
    for config in configs:
        value = ";".join(out.get(s, "") for s in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if action == "keep":
            if match is None:
                return None
        elif action == "replace":
            if match is not None:
                template = re.sub(r"\$(\d+)", r"\\\1", config.get("replacement", "$1"))
                out[config["target_label"]] = match.expand(template)
        else:
            raise AssertionError(f"relabel action {action} not modelled")
    return out


def _pod_target(namespace: str, pod: str, labels: dict[str, str], port: str) -> dict[str, str]:
    target = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_port_name": port,
    }
    for key, value in labels.items():
        target["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return target


def test_plain_prometheus_config_scrapes_what_the_monitors_do(tmp_path: Path) -> None:
    config = _load("prometheus.yaml")
    assert config["rule_files"] == ["alerts.yaml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    def scraped(target: dict[str, str]) -> list[dict[str, str]]:
        found = []
        for name, job in jobs.items():
            labels = _relabel({**target, "job": name}, job["relabel_configs"])
            if labels is not None:
                found.append({k: v for k, v in labels.items() if not k.startswith("__")})
        return found

    server = _pod_target("extproc-audit", "extproc-audit-0",
                         {"app.kubernetes.io/name": "extproc-audit"}, "metrics")  # fmt: skip
    assert scraped(server) == [
        {"job": "extproc-audit", "namespace": "extproc-audit", "pod": "extproc-audit-0"}
    ]
    sidecar = _pod_target("shop", "web-1", {"extproc-audit.io/audit": "sidecar"}, "audit-metrics")
    assert scraped(sidecar) == [{"job": "extproc-audit", "namespace": "shop", "pod": "web-1"}]
    proxy = _pod_target("shop", "web-1", {"app": "web"}, "http-envoy-prom")
    assert scraped(proxy) == [{"job": "extproc-audit-envoy", "namespace": "shop", "pod": "web-1"}]
    assert scraped(_pod_target("shop", "web-1", {"app": "web"}, "http")) == []
    envoy = jobs["extproc-audit-envoy"]
    assert envoy["metrics_path"] == "/stats/prometheus"
    (keep,) = envoy["metric_relabel_configs"]
    podmonitors = [d for d in yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text()) if d]
    (endpoint,) = podmonitors[0]["spec"]["podMetricsEndpoints"]
    assert keep["regex"] == endpoint["metricRelabelings"][0]["regex"]


@needs_promtool
def test_promtool_accepts_the_plain_prometheus_config(tmp_path: Path) -> None:
    # Debian's Prometheus is built without Kubernetes service discovery: check
    # everything else (relabelings, the rules file) with static targets instead.
    config = _load("prometheus.yaml")
    for job in config["scrape_configs"]:
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(MONITORING / "alerts.yaml", tmp_path / "alerts.yaml")
    result = _promtool("check", "config", "prometheus.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
