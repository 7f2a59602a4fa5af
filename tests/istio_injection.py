"""What istiod does with the "audit" injection template, as far as the tests need it.

istiod renders each template named in `inject.istio.io/templates` with Go's
text/template and applies the result to the pod as a Kubernetes strategic
merge patch, in order (pkg/kube/inject/inject.go RunTemplate, webhook.go
applyOverlayYAML). Here:

- `render` evaluates exactly the template actions our template uses (the
  `$nativeSidecar` variable copied from Istio's own "sidecar" template, `if`
  on it, `.ProxyGID | default "1337"`) and refuses any other action;
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
import re
from typing import Any

import yaml

# The line of Istio's injection template (manifests/charts/istio-control/
# istio-discovery/files/injection-template.yaml) that decides native sidecars,
# kept verbatim in ours.
NATIVE_SIDECAR_LINE = (
    "{{- $nativeSidecar := ne (index .ObjectMeta.Annotations `sidecar.istio.io/nativeSidecar` "
    '| default (printf "%t" .NativeSidecars)) "false" }}'
)
PROXY_GID_ACTION = '{{ .ProxyGID | default "1337" }}'
ISTIO_PROXY = "istio-proxy"
ISTIO_PROXY_ID = 1337  # Istio's default ProxyUID and ProxyGID

_BLOCK = re.compile(r"^\s*\{\{-? (if \$nativeSidecar|if not \$nativeSidecar|end) -?\}\}\s*$")


class UnsupportedTemplate(Exception):
    """The template uses a text/template action this renderer does not implement."""


def render(template: str, *, native: bool, proxy_gid: int = ISTIO_PROXY_ID) -> str:
    out: list[str] = []
    stack: list[bool] = []
    for line in template.splitlines():
        if line.strip() == NATIVE_SIDECAR_LINE:
            continue
        block = _BLOCK.match(line)
        if block:
            action = block.group(1)
            if action == "end":
                if not stack:
                    raise UnsupportedTemplate("{{ end }} without {{ if }}")
                stack.pop()
            else:
                stack.append(native if action == "if $nativeSidecar" else not native)
            continue
        line = line.replace(PROXY_GID_ACTION, str(proxy_gid))
        if "{{" in line:
            raise UnsupportedTemplate(f"template action not implemented here: {line.strip()}")
        if all(stack):
            out.append(line)
    if stack:
        raise UnsupportedTemplate("unterminated {{ if }}")
    return "\n".join(out) + "\n"


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


def inject(app: dict[str, Any], template: str, *, native: bool) -> dict[str, Any]:
    """The pod istiod makes of `app` with `inject.istio.io/templates: sidecar,audit`."""
    patch = yaml.safe_load(render(template, native=native))
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
