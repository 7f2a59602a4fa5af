"""The kustomize subset the overlays and components under istio/ use
(`resources` of files and directories, `components`, `patches` of
strategic-merge patches on maps and on the lists merged by key), so that
`render_istio.py --build` checks them where no kustomize binary exists; it
refuses anything else. `kubectl kustomize DIR` renders the same documents.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

_KNOWN_KEYS = {"apiVersion", "kind", "resources", "components", "patches"}
# Lists a strategic-merge patch merges item by item, by this key (the Kubernetes
# API's patchMergeKey of each field: PodSpec.containers/initContainers/volumes by
# name, Container.env by name, Container.volumeMounts by mountPath). Every
# other list in a patch is refused.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement."""


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build(directory: Path) -> list[dict[str, Any]]:
    """The documents a kustomization renders, in resource order."""
    docs: list[dict[str, Any]] = []
    _accumulate(directory, docs, kind="Kustomization")
    return docs


def _accumulate(directory: Path, docs: list[dict[str, Any]], *, kind: str) -> None:
    """Kustomize's order (api/internal/target/kusttarget.go, AccumulateTarget):
    resources, then components (each adds its resources and patches what has
    been accumulated so far, the including kustomization's resources too), then
    the kustomization's own patches."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization keys {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != kind:
        raise KustomizeError(f"{directory}: expected a {kind}, got {spec.get('kind')}")
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(build(path))
        else:
            docs.extend(_load_docs(path))
    for entry in spec.get("components", []):
        _accumulate((directory / entry).resolve(), docs, kind="Component")
    for patch in spec.get("patches", []):
        if set(patch) == {"path", "target"}:
            _json_patch(docs, patch["target"], directory / patch["path"])
            continue
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only file patches are supported, got {patch}")
        for change in _load_docs(directory / patch["path"]):
            target = _find(docs, change)
            merge(target, change)


def _json_patch(docs: list[dict[str, Any]], target: dict[str, str], path: Path) -> None:
    """A JSON patch (RFC 6902) file on the one document `target` names by kind
    and name: only `add` and `replace` of a path whose parents exist."""
    if set(target) != {"kind", "name"}:
        raise KustomizeError(f"patch target {target}: only kind and name are supported")
    (doc,) = [d for d in docs if _identity(d)[::2] == (target["kind"], target["name"])]
    operations = yaml.safe_load(path.read_text())
    if not isinstance(operations, list):
        raise KustomizeError(f"{path}: a patch with a target must be a JSON patch (a list)")
    for op in operations:
        if set(op) != {"op", "path", "value"} or op["op"] not in ("add", "replace"):
            raise KustomizeError(f"{path}: JSON patch operation {op}: not supported")
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list) or (op["op"] == "replace" and last not in node):
            raise KustomizeError(f"{path}: {op['op']} at {op['path']}: not supported")
        node[last] = copy.deepcopy(op["value"])


def _identity(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def _find(docs: list[dict[str, Any]], patch: dict[str, Any]) -> dict[str, Any]:
    kind, namespace, name = _identity(patch)
    for doc in docs:
        k, ns, n = _identity(doc)
        if (k, n) == (kind, name) and (not namespace or ns == namespace):
            return doc
    raise KustomizeError(f"patch target {kind}/{name} not found")


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge, restricted: maps merge key by key, scalars replace, and
    the lists of _MERGE_KEYS merge item by item on their merge key (an item
    with a new key is appended). Any other list, and any `$patch`-style
    directive, is refused: their semantics depend on the schema, which this
    renderer does not model."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"patch directive {key!r}: not supported by this renderer")
        if isinstance(value, list):
            if key not in _MERGE_KEYS or not isinstance(target.get(key, []), list):
                raise KustomizeError(f"patch sets list {key!r}: not supported by this renderer")
            _merge_list(target.setdefault(key, []), value, _MERGE_KEYS[key])
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _merge_list(target: list[Any], patch: list[Any], merge_key: str) -> None:
    """Items with a key already there merge into it; new ones go first, in the
    patch's order (what kustomize's strategic merge does)."""
    added = []
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise KustomizeError(f"list item without its merge key {merge_key!r}: {item!r}")
        same = [t for t in target if isinstance(t, dict) and t.get(merge_key) == item[merge_key]]
        if same:
            merge(same[0], item)
        else:
            added.append(copy.deepcopy(item))
    target[:0] = added
