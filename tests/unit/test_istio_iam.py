"""istio/iam: the writer may do exactly what the S3 store needs, the auditor
exactly what verify reads, and each writer only its own log
(tests/iam_eval.py evaluates the policies).
"""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from tests import iam_eval
from tests.istio_manifests import ISTIO, ROOT

# --- IAM --------------------------------------------------------------------------------

# boto3 client method -> the IAM actions S3 authorizes it with.
IAM_ACTIONS = {
    "put_object": {"s3:PutObject"},
    "put_object+retention": {"s3:PutObjectRetention"},
    "get_object": {"s3:GetObject"},
    "get_object+version": {"s3:GetObjectVersion"},
    "head_object": {"s3:GetObject", "s3:GetObjectRetention", "s3:GetObjectLegalHold"},
    "head_object+version": {"s3:GetObjectVersion"},
    "list_objects_v2": {"s3:ListBucket"},
    "list_object_versions": {"s3:ListBucketVersions"},
    "get_object_lock_configuration": {"s3:GetBucketObjectLockConfiguration"},
}
# S3Store methods the server (writer) and the auditor call.
WRITER_METHODS = {"check_writable", "lock_configuration", "put_once", "get", "list"}
AUDITOR_METHODS = {
    "lock_configuration",
    "get",
    "list",
    "retention",
    "versions",
    "get_version",
    "lock_info",
}
FORBIDDEN = {
    "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration", "s3:PutObjectLegalHold", "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration", "s3:PutBucketPolicy", "s3:DeleteBucket",
}  # fmt: skip


def _s3_calls() -> dict[str, set[str]]:
    """S3Store method -> the boto3 operations it calls (from the source)."""
    tree = ast.parse((ROOT / "extproc" / "store" / "s3.py").read_text())
    (store,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "S3Store"]
    calls: dict[str, set[str]] = {}
    for method in store.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        found = calls.setdefault(method.name, set())
        text = ast.unparse(method)
        for node in ast.walk(method):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "_s3":
                op = node.func.attr
                if op == "get_paginator":
                    op = ast.literal_eval(node.args[0])
                if op == "put_object" and "ObjectLockMode" in text:
                    found.add("put_object+retention")
                if op in ("get_object", "head_object") and "VersionId" in text:
                    found.add(f"{op}+version")
                found.add(op)
    return calls


def _actions(methods: set[str]) -> set[str]:
    calls = _s3_calls()
    ops = set().union(*(calls[m] for m in methods))
    unknown = ops - IAM_ACTIONS.keys()
    assert not unknown, f"map these boto3 calls to IAM actions: {unknown}"
    return set().union(*(IAM_ACTIONS[op] for op in ops))


def _statements(name: str, effect: str) -> list[dict[str, Any]]:
    policy = json.loads((ISTIO / "iam" / name).read_text())
    return [s for s in policy["Statement"] if s["Effect"] == effect]


def _policy_actions(name: str, effect: str) -> set[str]:
    return {a for s in _statements(name, effect) for a in s["Action"]}


WRITER_POLICIES = [
    "writer-policy.json",  # shared topology, EKS Pod Identity
    "writer-policy-sidecar.json",  # per-pod sidecar topology, EKS Pod Identity
    "writer-policy-irsa.json",  # shared topology, IRSA fallback
    "writer-policy-sidecar-irsa.json",  # per-pod sidecar topology, IRSA fallback (per namespace)
]


def _policy(name: str) -> dict[str, Any]:
    return json.loads((ISTIO / "iam" / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", WRITER_POLICIES)
def test_writer_policy_grants_exactly_what_the_server_calls(name: str) -> None:
    needed = _actions(WRITER_METHODS) - {"s3:GetObjectRetention", "s3:GetObjectLegalHold"}
    assert _policy_actions(name, "Allow") == needed


def test_auditor_policy_grants_exactly_what_verify_reads() -> None:
    assert _policy_actions("auditor-policy.json", "Allow") == _actions(AUDITOR_METHODS)
    assert not {a for a in _policy_actions("auditor-policy.json", "Allow") if "Put" in a}


@pytest.mark.parametrize("name", [*WRITER_POLICIES, "auditor-policy.json"])
def test_policy_denies_deletion_unlock_and_reconfiguration(name: str) -> None:
    assert _policy_actions(name, "Deny") >= FORBIDDEN
    assert not _policy_actions(name, "Allow") & FORBIDDEN
    for statement in _statements(name, "Allow"):
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            assert "*" not in resource.split(":::")[1].split("/")[0], "bucket must be named"
            assert resource.startswith("arn:aws:s3:::example-audit-bucket")
            if "/" in resource:
                assert resource.startswith("arn:aws:s3:::example-audit-bucket/mesh/logs/")


def test_bucket_tf_creates_the_policies_from_the_files() -> None:
    tf = (ISTIO / "iam" / "bucket.tf").read_text()
    for name in ("writer-policy.json", "writer-policy-sidecar.json", "auditor-policy.json",
                 "writer-trust-pod-identity.json"):  # fmt: skip
        # file(), never templatefile(): ${aws:PrincipalTag/...} must reach IAM unchanged.
        assert f'file("${{path.module}}/{name}")' in tf
    assert "templatefile(" not in tf


def test_pod_identity_trust_policy_allows_session_tags() -> None:
    (statement,) = _policy("writer-trust-pod-identity.json")["Statement"]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    # Without sts:TagSession the session has no kubernetes-pod-name tag, and
    # writer-policy.json grants nothing.
    assert set(statement["Action"]) == {"sts:AssumeRole", "sts:TagSession"}
    assert statement["Condition"]["StringEquals"] == {
        "aws:RequestTag/kubernetes-namespace": "extproc-audit",
        "aws:RequestTag/kubernetes-service-account": "extproc-audit",
    }


# --- IAM: one writer, one log (tests/iam_eval.py evaluates the policies) ----------------

BUCKET = "arn:aws:s3:::example-audit-bucket"


def _tags(namespace: str, pod: str, account: str) -> dict[str, str]:
    """The session tags EKS Pod Identity sets (EKS user guide, pod-id-abac.html)."""
    return {
        "aws:PrincipalTag/eks-cluster-name": "mesh",
        "aws:PrincipalTag/kubernetes-namespace": namespace,
        "aws:PrincipalTag/kubernetes-service-account": account,
        "aws:PrincipalTag/kubernetes-pod-name": pod,
        "aws:PrincipalTag/kubernetes-pod-uid": "0b7c6f1e-3d52-4f3c-9b1e-6c1c9d1e2f3a",
    }


SHARED_A = _tags("extproc-audit", "extproc-audit-0", "extproc-audit")  # log extproc-audit-0
SIDECAR_A = _tags("shop", "web-5d8f9-abcde", "web")  # log shop.web-5d8f9-abcde
NO_TAGS: dict[str, str] = {}  # IRSA: web identity sessions carry no such tags


def _put(key: str) -> tuple[str, str, dict[str, str]]:
    return "s3:PutObject", f"{BUCKET}/{key}", {}


def _get(key: str) -> tuple[str, str, dict[str, str]]:
    return "s3:GetObject", f"{BUCKET}/{key}", {}


def _list(prefix: str) -> tuple[str, str, dict[str, str]]:
    return "s3:ListBucket", BUCKET, {"s3:prefix": prefix}


def _delete(key: str) -> tuple[str, str, dict[str, str]]:
    return "s3:DeleteObject", f"{BUCKET}/{key}", {}


A = "mesh/logs/extproc-audit-0"
S = "mesh/logs/shop.web-5d8f9-abcde"
# (policy, caller's tags, request, expected decision)
IAM_CASES: dict[str, tuple[str, dict[str, str], tuple[str, str, dict[str, str]], str]] = {
    # Shared topology, Pod Identity: writer A is pod extproc-audit-0.
    "A puts a bundle of its log": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "A puts a checkpoint with retention": (
        "writer-policy.json",
        SHARED_A,
        ("s3:PutObjectRetention", f"{BUCKET}/{A}/checkpoints/7", {}),
        iam_eval.ALLOW,
    ),
    "A reads its log back": (
        "writer-policy.json",
        SHARED_A,
        _get(f"{A}/checkpoints/7"),
        iam_eval.ALLOW,
    ),
    "A lists its log": ("writer-policy.json", SHARED_A, _list(f"{A}/"), iam_eval.ALLOW),
    "A puts a claim of a later epoch": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}/claims/00000000000000000005.e2"),
        iam_eval.ALLOW,
    ),
    "A puts into a log whose id starts with its own": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}_e2/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists a log whose id starts with its own": (
        "writer-policy.json",
        SHARED_A,
        _list(f"{A}_e2/"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A reads the lock configuration": (
        "writer-policy.json",
        SHARED_A,
        ("s3:GetBucketObjectLockConfiguration", BUCKET, {}),
        iam_eval.ALLOW,
    ),
    "A puts into B's log": (
        "writer-policy.json",
        SHARED_A,
        _put("mesh/logs/extproc-audit-1/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A reads B's log": (
        "writer-policy.json",
        SHARED_A,
        _get("mesh/logs/extproc-audit-1/checkpoints/1"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts into A-other": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}-other/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts into A_x": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}_x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts into A1 (prefix of its name)": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}1/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts outside logs/": (
        "writer-policy.json",
        SHARED_A,
        _put("mesh/extproc-audit-0/x"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists every log": (
        "writer-policy.json",
        SHARED_A,
        _list("mesh/logs/"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists A-other too (no slash)": (
        "writer-policy.json",
        SHARED_A,
        _list(A),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists without a prefix": (
        "writer-policy.json",
        SHARED_A,
        ("s3:ListBucket", BUCKET, {}),
        iam_eval.IMPLICIT_DENY,
    ),
    "A deletes from its log": (
        "writer-policy.json",
        SHARED_A,
        _delete(f"{A}/entries/x.jsonl"),
        iam_eval.DENY,
    ),
    "A deletes a version of an object of its log": (
        "writer-policy.json",
        SHARED_A,
        ("s3:DeleteObjectVersion", f"{BUCKET}/{A}/entries/x.jsonl", {}),
        iam_eval.DENY,
    ),
    "A bypasses governance retention": (
        "writer-policy.json",
        SHARED_A,
        ("s3:BypassGovernanceRetention", f"{BUCKET}/{A}/entries/x.jsonl", {}),
        iam_eval.DENY,
    ),
    "a pod of that name in another namespace": (
        "writer-policy.json",
        _tags("shop", "extproc-audit-0", "extproc-audit"),
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "another account in the namespace": (
        "writer-policy.json",
        _tags("extproc-audit", "extproc-audit-0", "default"),
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "no session tags (IRSA) with the Pod Identity policy": (
        "writer-policy.json",
        NO_TAGS,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    # Per-pod sidecar topology, Pod Identity: the log is <namespace>.<pod name>.
    "pod puts into its log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "pod lists its log": ("writer-policy-sidecar.json", SIDECAR_A, _list(f"{S}/"), iam_eval.ALLOW),
    "pod reads a log whose id starts with its own": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _get(f"{S}_e3/checkpoints/1"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into another pod's log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put("mesh/logs/shop.web-5d8f9-zzzzz/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into the same name elsewhere": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put("mesh/logs/bank.web-5d8f9-abcde/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into <its log>-x": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}-x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into <its log>.x": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}.x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into <its log>_x": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}_x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into a shared writer's log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod lists its namespace": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _list("mesh/logs/shop."),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod deletes from its log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _delete(f"{S}/entries/x.jsonl"),
        iam_eval.DENY,
    ),
    "no session tags with the sidecar policy": (
        "writer-policy-sidecar.json",
        NO_TAGS,
        _put("mesh/logs/./entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    # IRSA fallbacks: one role per topology (per namespace for sidecars), no per-pod scope.
    "IRSA: a shared writer puts into its log": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "IRSA: a shared writer puts into another shared writer's log": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _put("mesh/logs/extproc-audit-1/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "IRSA: a shared writer puts into a sidecar's log": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _put(f"{S}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "IRSA: a shared writer deletes": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _delete(f"{A}/entries/x.jsonl"),
        iam_eval.DENY,
    ),
}


@pytest.mark.parametrize("case", IAM_CASES, ids=IAM_CASES.keys())
def test_writer_may_touch_only_its_own_log(case: str) -> None:
    name, tags, (action, resource, context), expected = IAM_CASES[case]
    assert iam_eval.evaluate([_policy(name)], action, resource, {**tags, **context}) == expected


def test_sidecar_irsa_policy_is_per_namespace() -> None:
    # Instantiated for namespace "shop": its pods share one role and may write
    # each other's logs, never another namespace's.
    policy = json.loads(
        (ISTIO / "iam" / "writer-policy-sidecar-irsa.json").read_text().replace("NAMESPACE", "shop")
    )

    def decide(key: str) -> str:
        return iam_eval.evaluate([policy], "s3:PutObject", f"{BUCKET}/{key}")

    assert decide(f"{S}/entries/x.jsonl") == iam_eval.ALLOW
    assert decide("mesh/logs/shop.other-pod_e2/checkpoints/1") == iam_eval.ALLOW
    assert decide("mesh/logs/bank.web-1/entries/x.jsonl") == iam_eval.IMPLICIT_DENY
    assert decide("mesh/logs/shopping.web-1/entries/x.jsonl") == iam_eval.IMPLICIT_DENY
    assert decide(f"{A}/entries/x.jsonl") == iam_eval.IMPLICIT_DENY


def test_iam_evaluator_semantics() -> None:
    # The evaluator itself: explicit Deny wins, wildcards, variables taken
    # literally, unresolved variables match nothing, unknown constructs refused.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": f"{BUCKET}/${{aws:PrincipalTag/p}}/*",
            },
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"{BUCKET}/locked/*"},
        ],
    }
    assert (
        iam_eval.evaluate([policy], "s3:GetObject", f"{BUCKET}/a/x", {"aws:PrincipalTag/p": "a"})
        == iam_eval.ALLOW
    )
    assert (
        iam_eval.evaluate([policy], "S3:GETOBJECT", f"{BUCKET}/a/x", {"aws:PrincipalTag/p": "a"})
        == iam_eval.ALLOW
    )
    assert (
        iam_eval.evaluate([policy], "s3:GetObject", f"{BUCKET}/b/x", {"aws:PrincipalTag/p": "*"})
        == iam_eval.IMPLICIT_DENY
    )
    assert (
        iam_eval.evaluate([policy], "s3:GetObject", f"{BUCKET}/a/x", {}) == iam_eval.IMPLICIT_DENY
    )
    assert (
        iam_eval.evaluate(
            [policy], "s3:PutObject", f"{BUCKET}/locked/x", {"aws:PrincipalTag/p": "locked"}
        )
        == iam_eval.DENY
    )
    for bad in (
        {"NotAction": "s3:*"},
        {"Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
    ):
        statement = {"Effect": "Allow", "Action": "s3:*", "Resource": "*", **bad}
        with pytest.raises(iam_eval.UnsupportedPolicy):
            iam_eval.evaluate(
                [{"Version": "2012-10-17", "Statement": [statement]}], "s3:GetObject", f"{BUCKET}/x"
            )
