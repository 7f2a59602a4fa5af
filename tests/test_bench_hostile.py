"""scripts/bench_hostile.py keeps working: its measurements on a tiny scale.

Checks the structure of the report, never a timing (docs/PERFORMANCE.md,
"Hostile messages: bounded cost per caller", has the figures).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bench_hostile
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
        shapes=("normal", "60k"),
        idle_seconds=0.5,
    )
    json.dumps(report)  # what --json writes

    cpu = {r["shape"]: r for r in report["cpu"]}
    assert set(cpu) == {"normal", "60k"}
    hostile = cpu["60k"]
    assert 4_000_000 < hostile["message_bytes"] <= bench_hostile.MAX_MESSAGE - 5
    assert hostile["messages"] == 3
    assert hostile["cpu_ms_per_msg"] > 0  # the server did measurable work
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
        baseline, attacked = report["envoy"]
        assert baseline["name"] == "baseline" and attacked["name"] == "hostile"
        assert baseline["latency"]["requests"] > 0 and attacked["latency"]["requests"] > 0
        assert attacked["side"]["sent"] > 0
    for value, met in report["targets"].values():
        assert isinstance(value, str) and isinstance(met, bool)
