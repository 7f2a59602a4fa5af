"""A small evaluator of AWS IAM identity policies, for the policies under istio/iam/.

It implements only what those policies use, and refuses the rest
(UnsupportedPolicy), so a new construct cannot pass the tests unevaluated:

- Effect Allow/Deny; an explicit Deny wins over any Allow, and no Allow means
  an implicit deny (AWS's evaluation logic for a single account's identity
  policies, no boundaries, SCPs or resource policies).
- Action and Resource as a string or a list, with the `*` and `?` wildcards
  (actions case-insensitive, resources case-sensitive).
- Policy variables `${key}` in Resource and in condition values, replaced by
  the request context's value for that key (e.g. `${aws:PrincipalTag/kubernetes-pod-name}`),
  taken literally (a `*` in a tag value is not a wildcard). A variable whose
  key is not in the context makes that Resource or value match nothing, as AWS
  documents for variables that cannot be resolved.
- Condition operators StringEquals and StringLike: every key of every operator
  must match (AND), any of a key's values may (OR); a key absent from the
  request context does not match.

A request is (action, resource ARN, context): e.g. ("s3:ListBucket",
"arn:aws:s3:::bucket", {"s3:prefix": "mesh/logs/a/", "aws:PrincipalTag/...": ...}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ALLOW = "Allow"
DENY = "Deny"
IMPLICIT_DENY = "ImplicitDeny"

_STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}
_OPERATORS = {"StringEquals", "StringLike"}
_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class UnsupportedPolicy(Exception):
    """The policy uses an IAM construct this evaluator does not implement."""


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _pattern(template: str, context: Mapping[str, str], *, wildcards: bool) -> str | None:
    """A regex for `template` with its variables substituted; None if one is unresolved."""
    parts: list[str] = []
    pos = 0
    for var in _VARIABLE.finditer(template):
        parts.append(_literal(template[pos : var.start()], wildcards))
        key = var.group(1)
        if key in ("*", "?", "$") or "," in key:
            raise UnsupportedPolicy(f"policy variable syntax ${{{key}}}")
        value = context.get(key)
        if value is None:
            return None
        parts.append(re.escape(value))
        pos = var.end()
    parts.append(_literal(template[pos:], wildcards))
    return "".join(parts)


def _literal(text: str, wildcards: bool) -> str:
    if "$" in text:
        raise UnsupportedPolicy(f"unparsed policy variable in {text!r}")
    if not wildcards:
        return re.escape(text)
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _matches(template: str, value: str, context: Mapping[str, str], *, wildcards: bool) -> bool:
    pattern = _pattern(template, context, wildcards=wildcards)
    return pattern is not None and re.fullmatch(pattern, value, flags=re.DOTALL) is not None


def _action_matches(patterns: list[str], action: str) -> bool:
    return any(
        re.fullmatch(_literal(p.lower(), True), action.lower(), flags=re.DOTALL) is not None
        for p in patterns
    )


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, block in condition.items():
        if operator not in _OPERATORS:
            raise UnsupportedPolicy(f"condition operator {operator}")
        for key, values in block.items():
            actual = context.get(key)
            if actual is None:
                return False
            wildcards = operator == "StringLike"
            if not any(_matches(v, actual, context, wildcards=wildcards) for v in _as_list(values)):
                return False
    return True


def statement_applies(
    statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]
) -> bool:
    unknown = set(statement) - _STATEMENT_KEYS
    if unknown:
        raise UnsupportedPolicy(f"statement keys {sorted(unknown)}")
    if statement["Effect"] not in (ALLOW, DENY):
        raise UnsupportedPolicy(f"effect {statement['Effect']}")
    if not _action_matches(_as_list(statement["Action"]), action):
        return False
    if not any(
        _matches(r, resource, context, wildcards=True) for r in _as_list(statement["Resource"])
    ):
        return False
    return _condition_holds(statement.get("Condition", {}), context)


def evaluate(
    policies: list[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
) -> str:
    """ALLOW, DENY (an explicit Deny applies) or IMPLICIT_DENY (no Allow applies)."""
    context = context or {}
    allowed = False
    for policy in policies:
        if policy.get("Version") != "2012-10-17":
            raise UnsupportedPolicy("policy Version must be 2012-10-17 (variables need it)")
        for statement in policy["Statement"]:
            if statement_applies(statement, action, resource, context):
                if statement["Effect"] == DENY:
                    return DENY
                allowed = True
    return ALLOW if allowed else IMPLICIT_DENY
