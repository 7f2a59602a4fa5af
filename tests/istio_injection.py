"""What istiod does with the "audit" injection template, as far as the tests need it.

istiod renders each template named in `inject.istio.io/templates` with Go's
text/template and applies the result to the pod as a Kubernetes strategic
merge patch, in order (pkg/kube/inject/inject.go RunTemplate, webhook.go
applyOverlayYAML). Here:

- `render` evaluates the template with Go's own text/template
  (tests/injection_template/main.go, built with the mesh lane's Go toolchain,
  scripts/setup_mesh_lane.sh) against a struct with exactly the fields of the
  chosen Istio release's SidecarTemplateData (injection_template/releases.json,
  read from Istio's source per release tag): a field the release lacks fails,
  as istiod's webhook then rejects the pod. No regex stands in for an action;
- `sidecar_pod` is an application pod after Istio's "sidecar" template, reduced
  to what the audit template touches (istio-proxy, where native sidecars put
  it, with the UID/GID and volumes Istio gives it);
- `strategic_merge` applies a patch with the merge keys of the core/v1 Pod
  lists involved (containers and volumes by name, volumeMounts by mountPath,
  env by name, ports by containerPort); other lists are replaced, as
  strategic merge does for lists without a merge key.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ISTIO_PROXY = "istio-proxy"
ISTIO_PROXY_ID = 1337  # Istio's default ProxyUID and ProxyGID
HERE = Path(__file__).parent / "injection_template"
RELEASES: dict[str, dict[str, Any]] = json.loads((HERE / "releases.json").read_text())["releases"]
NEWEST = list(RELEASES)[-1]


class UnsupportedTemplate(Exception):
    """Go's text/template refused the template with this release's template data."""


@functools.cache
def _evaluator() -> str:
    """The evaluator binary, built once per source version into the mesh lane."""
    from tests.conftest import MESH_LANE_DIR, mesh_lane_tool

    go = mesh_lane_tool("go")
    source = (HERE / "main.go").read_bytes() + (HERE / "go.mod").read_bytes()
    binary = MESH_LANE_DIR / "bin" / f"injection_template-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.exists():
        env = {
            **os.environ,
            "GOCACHE": str(MESH_LANE_DIR / "gocache"),
            "GOPATH": str(MESH_LANE_DIR / "gopath"),
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-mod=mod",
            "CGO_ENABLED": "0",
        }
        subprocess.run(
            [go, "build", "-C", str(HERE), "-o", str(binary), "."],
            check=True, env=env, capture_output=True, timeout=600,
        )  # fmt: skip
    return str(binary)


def render(
    template: str,
    *,
    native: bool,
    release: str = NEWEST,
    proxy_gid: int = ISTIO_PROXY_ID,
    annotations: dict[str, str] | None = None,
    pod_security_context: dict[str, Any] | None = None,
) -> str:
    """The template as istiod of `release` renders it for a pod with these
    annotations and this spec.securityContext (None: the pod has none, a nil
    pointer in the template data), its mesh defaulting native sidecars to `native`."""
    request = {
        "template": template,
        "fields": RELEASES[release]["fields"],
        "annotations": annotations or {},
        "nativeSidecars": native,
        "proxyGID": proxy_gid,
        "podSecurityContext": pod_security_context,
    }
    result = subprocess.run(
        [_evaluator()], input=json.dumps(request), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise UnsupportedTemplate(result.stderr.strip())
    return result.stdout


def sidecar_pod(app: dict[str, Any], *, native: bool) -> dict[str, Any]:
    """`app` (a Pod) after Istio's "sidecar" template, reduced to istio-proxy."""
    pod = copy.deepcopy(app)
    proxy: dict[str, Any] = {
        "name": ISTIO_PROXY,
        "image": "docker.io/istio/proxyv2:1.27.0",
        "args": ["proxy", "sidecar"],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": ISTIO_PROXY_ID,
            "runAsGroup": ISTIO_PROXY_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
        ],
    }
    spec = pod["spec"]
    if native:
        proxy["restartPolicy"] = "Always"
        spec["initContainers"] = [proxy, *spec.get("initContainers", [])]
    else:
        spec["containers"] = [*spec["containers"], proxy]
    spec["volumes"] = [
        *spec.get("volumes", []),
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-data", "emptyDir": {}},
    ]
    return pod


def inject(
    app: dict[str, Any], template: str, *, native: bool, release: str = NEWEST
) -> dict[str, Any]:
    """The pod istiod of `release` makes of `app` with `inject.istio.io/templates:
    sidecar,audit`."""
    annotations = app.get("metadata", {}).get("annotations", {})
    security = app["spec"].get("securityContext")
    patch = yaml.safe_load(
        render(
            template,
            native=native,
            release=release,
            annotations=annotations,
            pod_security_context=security,
        )
    )
    return strategic_merge(sidecar_pod(app, native=native), patch)


_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
}


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(target)
    for key, value in patch.items():
        current = result.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            result[key] = strategic_merge(current, value)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(current, list):
            result[key] = _merge_list(current, value, _MERGE_KEYS[key])
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(
    current: list[dict[str, Any]], patch: list[dict[str, Any]], merge_key: str
) -> list[dict[str, Any]]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        for i, existing in enumerate(merged):
            if existing.get(merge_key) == item[merge_key]:
                merged[i] = strategic_merge(existing, item)
                break
        else:
            merged.append(copy.deepcopy(item))
    return merged
