"""Object key layout under s3://<bucket>/<prefix>/ (a fixed contract, DESIGN.md).

logs/<log id>/entries/<first seq:020d>-<last seq:020d>.jsonl[.gz]
logs/<log id>/checkpoints/<tree size:020d>
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.layout import (
    MAX_EPOCH,
    BundleName,
    ObjectName,
    bundle_key,
    checkpoint_key,
    claim_key,
    log_prefix,
    logs_prefix,
    origin_for,
    parse_key,
    validate_log_id,
)
from extproc.errors import ConfigError
from tests.budget import FUZZ, within_budget

MAX_SEQ = 10**20 - 1  # the widest number a 20-digit field holds (> 2**64 - 1)
Z = "0" * 20


def z(n: int) -> str:
    return f"{n:020d}"


# --- Key formats, byte for byte ----------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "log_id", "first", "last", "gzip", "key"),
    [
        pytest.param(
            "",
            "web",
            0,
            999,
            False,
            "logs/web/entries/00000000000000000000-00000000000000000999.jsonl",
            id="no-prefix",
        ),
        pytest.param(
            "",
            "web",
            0,
            999,
            True,
            "logs/web/entries/00000000000000000000-00000000000000000999.jsonl.gz",
            id="no-prefix-gzip",
        ),
        pytest.param(
            "audit",
            "web",
            1000,
            1999,
            False,
            "audit/logs/web/entries/00000000000000001000-00000000000000001999.jsonl",
            id="prefix",
        ),
        pytest.param(
            "audit/",
            "web",
            5,
            5,
            True,
            "audit/logs/web/entries/00000000000000000005-00000000000000000005.jsonl.gz",
            id="prefix-trailing-slash",
        ),
        pytest.param(
            "/audit/",
            "web",
            5,
            5,
            False,
            "audit/logs/web/entries/00000000000000000005-00000000000000000005.jsonl",
            id="prefix-both-slashes",
        ),
        pytest.param(
            "a/b/c",
            "pod-1.ns_x",
            7,
            8,
            False,
            "a/b/c/logs/pod-1.ns_x/entries/00000000000000000007-00000000000000000008.jsonl",
            id="nested-prefix",
        ),
        pytest.param(
            "",
            "w",
            18446744073709551614,
            18446744073709551615,
            False,
            "logs/w/entries/18446744073709551614-18446744073709551615.jsonl",
            id="uint64-max",
        ),
    ],
)
def test_bundle_key_format(
    prefix: str, log_id: str, first: int, last: int, gzip: bool, key: str
) -> None:
    assert bundle_key(prefix, log_id, first, last, gzip=gzip) == key


@pytest.mark.parametrize(
    ("prefix", "log_id", "size", "key"),
    [
        pytest.param(
            "", "web", 0, "logs/web/checkpoints/00000000000000000000", id="no-prefix-empty-tree"
        ),
        pytest.param("", "web", 1000, "logs/web/checkpoints/00000000000000001000", id="no-prefix"),
        pytest.param(
            "audit", "web", 42, "audit/logs/web/checkpoints/00000000000000000042", id="prefix"
        ),
        pytest.param(
            "audit/",
            "web",
            42,
            "audit/logs/web/checkpoints/00000000000000000042",
            id="prefix-trailing-slash",
        ),
        pytest.param(
            "a/b", "x.y", 1, "a/b/logs/x.y/checkpoints/00000000000000000001", id="nested-prefix"
        ),
        pytest.param(
            "",
            "w",
            18446744073709551615,
            "logs/w/checkpoints/18446744073709551615",
            id="uint64-max",
        ),
    ],
)
def test_checkpoint_key_format(prefix: str, log_id: str, size: int, key: str) -> None:
    assert checkpoint_key(prefix, log_id, size) == key


@pytest.mark.parametrize(
    ("prefix", "logs", "log"),
    [
        ("", "logs/", "logs/web/"),
        ("audit", "audit/logs/", "audit/logs/web/"),
        ("/a/b/", "a/b/logs/", "a/b/logs/web/"),
    ],
    ids=["no-prefix", "prefix", "slashes"],
)
def test_listing_prefixes(prefix: str, logs: str, log: str) -> None:
    assert logs_prefix(prefix) == logs
    assert log_prefix(prefix, "web") == log
    assert bundle_key(prefix, "web", 0, 0).startswith(log + "entries/")
    assert checkpoint_key(prefix, "web", 0).startswith(log + "checkpoints/")


@pytest.mark.parametrize(
    ("origin_prefix", "origin"),
    [
        ("audit.example", "audit.example/web"),
        ("audit.example/", "audit.example/web"),
        ("a.example/logs", "a.example/logs/web"),
    ],
    ids=["plain", "trailing-slash", "with-path"],
)
def test_origin_for(origin_prefix: str, origin: str) -> None:
    assert origin_for(origin_prefix, "web") == origin


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, MAX_SEQ), b=st.integers(0, MAX_SEQ))
def test_key_order_is_numeric_order(a: int, b: int) -> None:
    """Listing returns keys sorted as strings; zero padding makes that numeric order."""
    assert (checkpoint_key("p", "l", a) < checkpoint_key("p", "l", b)) == (a < b)
    lo, hi = sorted((a, b))
    assert (bundle_key("p", "l", lo, lo) < bundle_key("p", "l", hi, hi)) == (lo < hi)


# --- parse_key ---------------------------------------------------------------------------

log_ids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
prefixes = st.sampled_from(["", "audit", "audit/", "a/b/c", "x.y-z_"])


@settings(max_examples=200, deadline=None)
@given(
    prefix=prefixes,
    log_id=log_ids,
    bounds=st.tuples(st.integers(0, MAX_SEQ), st.integers(0, MAX_SEQ)).map(sorted),
    gzip=st.booleans(),
)
def test_bundle_key_round_trip(prefix: str, log_id: str, bounds: list[int], gzip: bool) -> None:
    first, last = bounds
    key = bundle_key(prefix, log_id, first, last, gzip=gzip)
    assert parse_key(prefix, key) == ObjectName(log_id, "bundle", BundleName(first, last, gzip))


@settings(max_examples=200, deadline=None)
@given(prefix=prefixes, log_id=log_ids, size=st.integers(0, MAX_SEQ))
def test_checkpoint_key_round_trip(prefix: str, log_id: str, size: int) -> None:
    key = checkpoint_key(prefix, log_id, size)
    assert parse_key(prefix, key) == ObjectName(log_id, "checkpoint", size=size)


UNKNOWN = ObjectName("web", "unknown")

CLASSIFIED = [
    pytest.param(
        f"audit/logs/web/entries/{Z}-{z(9)}.jsonl",
        ObjectName("web", "bundle", BundleName(0, 9, False)),
        id="bundle",
    ),
    pytest.param(
        f"audit/logs/web/entries/{z(3)}-{z(3)}.jsonl.gz",
        ObjectName("web", "bundle", BundleName(3, 3, True)),
        id="bundle-gzip-single-entry",
    ),
    pytest.param(
        f"audit/logs/web/checkpoints/{z(10)}",
        ObjectName("web", "checkpoint", size=10),
        id="checkpoint",
    ),
    pytest.param(
        f"audit/logs/web/checkpoints/{Z}",
        ObjectName("web", "checkpoint", size=0),
        id="checkpoint-empty-tree",
    ),
    # Under a valid log id but not one of our objects: kept, reported as unknown.
    pytest.param(
        f"audit/logs/web/entries/{z(9)}-{z(0)}.jsonl", UNKNOWN, id="bundle-last-before-first"
    ),
    pytest.param(
        f"audit/logs/web/entries/{z(0)}-{z(9)}.json", UNKNOWN, id="bundle-wrong-extension"
    ),
    pytest.param(
        f"audit/logs/web/entries/{z(0)}-{z(9)}.jsonl.gz.tmp", UNKNOWN, id="bundle-temp-suffix"
    ),
    pytest.param(f"audit/logs/web/entries/{z(0)}-{z(9)}.JSONL", UNKNOWN, id="bundle-upper-case"),
    pytest.param("audit/logs/web/entries/0-9.jsonl", UNKNOWN, id="bundle-not-padded"),
    pytest.param(f"audit/logs/web/entries/{z(0)}_{z(9)}.jsonl", UNKNOWN, id="bundle-underscore"),
    pytest.param(f"audit/logs/web/entries/0{z(0)}-{z(9)}.jsonl", UNKNOWN, id="bundle-21-digits"),
    pytest.param(
        f"audit/logs/web/entries/sub/{z(0)}-{z(9)}.jsonl", UNKNOWN, id="bundle-in-subfolder"
    ),
    pytest.param(
        f"audit/logs/web/entries/{z(0)}-{z(9)}.jsonl/", UNKNOWN, id="bundle-folder-marker"
    ),
    pytest.param(f"audit/logs/web/checkpoints/{z(10)}.tmp", UNKNOWN, id="checkpoint-temp-suffix"),
    pytest.param("audit/logs/web/checkpoints/10", UNKNOWN, id="checkpoint-not-padded"),
    pytest.param(f"audit/logs/web/checkpoints/{z(-1)}", UNKNOWN, id="checkpoint-negative"),
    pytest.param(f"audit/logs/web/checkpoints/{Z}0", UNKNOWN, id="checkpoint-21-digits"),
    pytest.param("audit/logs/web/checkpoints/", UNKNOWN, id="checkpoints-folder-marker"),
    pytest.param(f"audit/logs/web/checkpoint/{z(10)}", UNKNOWN, id="checkpoint-folder-misspelt"),
    pytest.param(f"audit/logs/web/entries/{z(10)}", UNKNOWN, id="checkpoint-name-in-entries"),
    pytest.param(
        f"audit/logs/web/checkpoints/{z(0)}-{z(9)}.jsonl", UNKNOWN, id="bundle-name-in-checkpoints"
    ),
    pytest.param("audit/logs/web/README", UNKNOWN, id="stray-file"),
    pytest.param("audit/logs/web/", UNKNOWN, id="log-folder-marker"),
    # Not under <prefix>/logs/<valid log id>/ at all.
    pytest.param(f"audit/logs/../checkpoints/{z(10)}", None, id="log-id-dotdot"),
    pytest.param(f"audit/logs/./checkpoints/{z(10)}", None, id="log-id-dot"),
    pytest.param(f"audit/logs//checkpoints/{z(10)}", None, id="log-id-empty"),
    pytest.param(f"audit/logs/we b/checkpoints/{z(10)}", None, id="log-id-space"),
    pytest.param(f"audit/logs/{'a' * 129}/checkpoints/{z(10)}", None, id="log-id-129-chars"),
    pytest.param(f"audit/logs/w\u00e9b/checkpoints/{z(10)}", None, id="log-id-non-ascii"),
    pytest.param(f"other/logs/web/checkpoints/{z(10)}", None, id="other-prefix"),
    pytest.param(f"logs/web/checkpoints/{z(10)}", None, id="missing-prefix"),
    pytest.param(f"audit/x/logs/web/checkpoints/{z(10)}", None, id="deeper-prefix"),
    pytest.param(f"audit/logsx/web/checkpoints/{z(10)}", None, id="logs-misspelt"),
    pytest.param(f"auditx/logs/web/checkpoints/{z(10)}", None, id="prefix-is-string-prefix"),
    pytest.param("audit/logs/", None, id="logs-folder-marker"),
    pytest.param("", None, id="empty-key"),
]


@pytest.mark.parametrize(("key", "expected"), CLASSIFIED)
def test_parse_key_classifies_objects(key: str, expected: ObjectName | None) -> None:
    assert parse_key("audit", key) == expected
    assert parse_key("audit/", key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (f"logs/web/checkpoints/{z(10)}", ObjectName("web", "checkpoint", size=10)),
        (
            f"logs/web/entries/{z(0)}-{z(1)}.jsonl",
            ObjectName("web", "bundle", BundleName(0, 1, False)),
        ),
        ("logs/web/other", UNKNOWN),
        (f"audit/logs/web/checkpoints/{z(10)}", None),
        (f"logs/../checkpoints/{z(10)}", None),
    ],
    ids=["checkpoint", "bundle", "unknown", "prefixed-key", "log-id-dotdot"],
)
def test_parse_key_without_prefix(key: str, expected: ObjectName | None) -> None:
    assert parse_key("", key) == expected


# --- Log ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "log_id",
    ["a", "Z", "0", "web", "pod-1", "ns_x.svc", "...", "a.b", "-", "_", "a" * 128, "AZaz09._-"],
)
def test_valid_log_id_accepted(log_id: str) -> None:
    assert validate_log_id(log_id) == log_id


@pytest.mark.parametrize(
    "log_id",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("a/b", id="slash"),
        pytest.param("/", id="only-slash"),
        pytest.param("a b", id="space"),
        pytest.param(" a", id="leading-space"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("..", id="dotdot"),
        pytest.param(".", id="dot"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a+b", id="plus"),
        pytest.param("a:b", id="colon"),
        pytest.param("a*", id="star"),
        pytest.param("w\u00e9b", id="non-ascii-letter"),
        pytest.param("\uff41", id="fullwidth-letter"),
        pytest.param("a\x00", id="nul"),
    ],
)
def test_invalid_log_id_rejected(log_id: str) -> None:
    with pytest.raises(ConfigError, match="invalid log id"):
        validate_log_id(log_id)


ALLOWED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


@settings(max_examples=300, deadline=None)
@given(
    log_id=st.one_of(
        st.text(max_size=140),
        st.text(alphabet=".a/ ", max_size=3),
        st.text(alphabet=ALLOWED + "/ \u00e9", min_size=120, max_size=135),
        log_ids,
    )
)
def test_log_id_rule(log_id: str) -> None:
    """Accepted exactly when [A-Za-z0-9._-]{1,128} matches and it is not "." or ".."."""
    valid = 1 <= len(log_id) <= 128 and set(log_id) <= set(ALLOWED) and log_id not in (".", "..")
    if valid:
        assert validate_log_id(log_id) == log_id
        assert parse_key("", checkpoint_key("", log_id, 1)) == ObjectName(
            log_id, "checkpoint", size=1
        )
    else:
        with pytest.raises(ConfigError):
            validate_log_id(log_id)


# --- fuzz: keys come from whoever can write the bucket ------------------------------------

_KEY_PARTS = st.sampled_from(
    ["logs/", "pod-a/", "entries/", "claims/", "checkpoints/", Z, "-", ".jsonl", ".gz", ".e", "/"]
)
hostile_keys = st.one_of(
    st.text(max_size=2048),  # any characters: controls, surrogates, bidi overrides
    st.lists(st.one_of(_KEY_PARTS, st.text(max_size=24)), max_size=40).map("".join),
    st.integers(0, 64 * 1024).map(lambda n: "logs/pod-a/claims/" + "9" * n),  # huge names
)


@FUZZ
@given(prefix=st.sampled_from(["", "audit", "a/b/"]), key=hostile_keys)
def test_parse_key_fuzz_stays_within_budget_and_round_trips(prefix: str, key: str) -> None:
    """Any key: classified within a budget, and what it is said to be is what the
    layout's own functions would name so (no two readings of one key)."""
    with within_budget(memory=1 << 20, cpu=0.2):
        name = parse_key(prefix, key)
    if name is None:
        return
    if name.kind == "bundle":
        assert name.bundle is not None
        first, last, gz = name.bundle.first, name.bundle.last, name.bundle.gzip
        assert bundle_key(prefix, name.log_id, first, last, gzip=gz) == key
    elif name.kind == "checkpoint":
        assert name.size is not None and checkpoint_key(prefix, name.log_id, name.size) == key
    elif name.kind == "claim":
        assert name.size is not None and 1 <= name.epoch <= MAX_EPOCH
        assert claim_key(prefix, name.log_id, name.size, name.epoch) == key
