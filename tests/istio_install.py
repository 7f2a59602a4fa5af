"""What `istioctl install -f A -f B ...` turns on, without istioctl.

A faithful model of istioctl's input merge (istio/istio release-1.28,
operator/pkg/render/manifest.go `MergeInputs` and `readProfile`, and
operator/pkg/values/map.go `MergeFrom`), over Istio's own profile files
vendored in tests/vendor/istio-profiles/:

1. the files are merged in order into one IstioOperator (maps merge key by
   key; lists and scalars are replaced whole);
2. `spec.profile` of the result (default: "default") picks the base: the
   default profile, with the named profile merged over it;
3. the merged files are merged over that base.

`components` lists what the result enables (`spec.components`: base, pilot,
cni, ztunnel, istiodRemote, and each ingress and egress gateway by name).
istioctl prunes every component no longer enabled, so an install file that
changes this set has a side effect. The steps of MergeInputs that only touch
values (cluster detection, hub/tag, the Helm translation) do not change
`spec.components` and are left out.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

PROFILES = Path(__file__).parent / "vendor" / "istio-profiles"
SINGLE = ("base", "pilot", "cni", "ztunnel", "istiodRemote")
GATEWAYS = ("ingressGateways", "egressGateways")


def merge_from(base: dict[str, Any], other: dict[str, Any]) -> None:
    """values.Map.MergeFrom: maps merge key by key, anything else overwrites."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_from(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if len(docs) != 1:
        raise ValueError(f"{path}: one IstioOperator per file (istioctl refuses more)")
    doc: dict[str, Any] = docs[0]
    if doc.get("spec") is None:
        doc.pop("spec", None)
    return doc


def merge_inputs(files: list[Path]) -> dict[str, Any]:
    user: dict[str, Any] = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                            "metadata": {}, "spec": {}}  # fmt: skip
    for path in files:
        merge_from(user, _load(path))
    profile = user["spec"].get("profile") or "default"
    base = _load(PROFILES / "default.yaml")
    if profile != "default":
        merge_from(base, _load(PROFILES / f"{profile}.yaml"))
    merge_from(base, user)
    return base


def components(operator: dict[str, Any]) -> dict[str, bool]:
    """Each component of the merged IstioOperator and whether it is enabled."""
    spec = operator.get("spec", {}).get("components", {})
    found = {name: bool((spec.get(name) or {}).get("enabled", False)) for name in SINGLE}
    for kind in GATEWAYS:
        for gateway in spec.get(kind) or []:
            found[f"{kind}/{gateway['name']}"] = bool(gateway.get("enabled", False))
    return found


def istioctl_installs(text: str) -> list[list[str]]:
    """The -f arguments of every `istioctl install` command in a shell text
    (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line.startswith("istioctl install"):
            continue
        words = shlex.split(line)
        commands.append([words[i + 1] for i, w in enumerate(words) if w == "-f"])
    return commands
