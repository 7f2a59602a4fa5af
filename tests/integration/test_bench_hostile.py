"""scripts/bench_hostile.py keeps working: its measurements on a tiny scale.

Checks the structure of the report, never a timing (docs/PERFORMANCE.md,
"Hostile messages: bounded cost per caller", has the figures).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bench_hostile
import hostile_messages
import pytest


@pytest.mark.slow
@pytest.mark.envoy
def test_bench_hostile_measures_cpu_latency_and_entry_sizes(tmp_path: Path) -> None:
    with_envoy = shutil.which("hey") is not None  # scripts/bench.py installs it
    report = bench_hostile.run(
        tmp_path,
        normal=20,
        hostile=3,
        seconds=1,
        rate=50,
        side_rate=2,
        rounds=1,
        envoy=with_envoy,
        shapes=("normal", "60k", "als500k"),
        idle_seconds=0.5,
        als_rate=2,
    )
    json.dumps(report)  # what --json writes

    cpu = {r["shape"]: r for r in report["cpu"]}
    assert set(cpu) == {"normal", "60k", "als500k"}
    hostile = cpu["60k"]
    assert 4_000_000 < hostile["message_bytes"] <= hostile_messages.MAX_MESSAGE - 5
    assert hostile["messages"] == 3
    assert hostile["cpu_ms_per_msg"] > 0  # the server did measurable work
    # The review's access-log message: refused by its entry budget, every time.
    als = cpu["als500k"]
    assert 900_000 < als["message_bytes"] < 1 << 20
    assert als["status"] == "RESOURCE_EXHAUSTED" and als["messages"] == 3
    assert als["rss_mb_max"] > 0
    assert cpu["normal"]["cpu_ms_per_msg"] >= 0
    assert hostile["ratio_to_normal"] is None or hostile["ratio_to_normal"] > 0

    entries = report["entries"]
    assert entries["checked"] and entries["lines"] > 0
    assert entries["over_limit"] == 0
    assert entries["with_headers_omitted"] >= 4  # 3 measured + 1 warm-up, all 60k
    assert entries["verified"], entries["findings"]
    assert report["serving_at_end"] is True
    assert report["exit_status"] == 0

    if with_envoy:
        baseline, attacked, als_phase = report["envoy"]
        assert [baseline["name"], attacked["name"], als_phase["name"]] == [
            "baseline",
            "hostile",
            "als",
        ]
        assert baseline["latency"]["requests"] > 0 and attacked["latency"]["requests"] > 0
        assert attacked["side"]["sent"] > 0
        assert als_phase["side"]["sent"] > 0
        assert als_phase["side"]["refused"] == als_phase["side"]["sent"]
        assert als_phase["rss_mb_max"] > 0
        assert any(name.startswith("als: ") for name in report["targets"])
    for value, met in report["targets"].values():
        assert isinstance(value, str) and isinstance(met, bool)
