"""scripts/bench_report.py judges each case against its own floor from the same
run (issue 20): H against R, L against F, p99 against R's + 2 ms, and every
case as a fraction of A, Envoy alone. Figures here are made up; what is held
is which floor each target reads and where met turns into missed."""

from __future__ import annotations

import bench_report
import pytest
from bench_load import Load
from bench_report import CaseResult, LogCount


def _case(cid: str, rps: float, p99: float = 5.0, lost: int | None = 0) -> CaseResult:
    result = CaseResult(cid, cid, saturation=Load(rps=rps), fixed=Load(p99_ms=p99), lost=lost)
    if cid == "L":
        result.log = LogCount(access=100, access_2xx=100)
        result.sent_ok = 100
    return result


def _run(h_rps: float, h_p99: float, l_rps: float, *, h_lost: int = 0) -> dict[str, object]:
    return bench_report.targets(
        [
            _case("A", 50_000),
            _case("B", 2_000, p99=20.0),  # the two-phase floor: not H's floor any more
            _case("R", 3_000, p99=7.0),
            _case("H", h_rps, p99=h_p99, lost=h_lost),
            _case("F", 40_000),
            _case("L", l_rps),
        ]
    )


@pytest.mark.parametrize(
    ("h_rps", "h_p99", "l_rps", "met"),
    [
        (2_700, 9.0, 36_000, {"ratio": True, "p99": True, "als": True}),
        (2_690, 9.0, 36_000, {"ratio": False, "p99": True, "als": True}),  # 0.897x R
        (2_700, 9.1, 36_000, {"ratio": True, "p99": False, "als": True}),  # R's p99 + 2.1 ms
        (2_700, 9.0, 35_900, {"ratio": True, "p99": True, "als": False}),  # 0.8975x F
        # Against B (2,000 req/s, p99 20 ms) this H would pass both: R is its floor.
        (2_100, 21.0, 36_000, {"ratio": False, "p99": False, "als": True}),
    ],
)
def test_each_target_reads_its_own_floor(
    h_rps: float, h_p99: float, l_rps: float, met: dict[str, bool]
) -> None:
    out = _run(h_rps, h_p99, l_rps)
    hybrid, als = out["hybrid"], out["als_audit"]
    assert isinstance(hybrid, dict) and isinstance(als, dict)
    assert hybrid["floor"] == "R" and als["floor"] == "F"
    assert (hybrid["met_ratio"], hybrid["met_p99"], als["met"]) == (
        met["ratio"],
        met["p99"],
        met["als"],
    )
    assert hybrid["x_ceiling"] == pytest.approx(h_rps / 50_000)


def test_a_lost_request_entry_misses_the_loss_target() -> None:
    hybrid = _run(2_700, 9.0, 36_000, h_lost=1)["hybrid"]
    assert isinstance(hybrid, dict)
    assert hybrid["met_ratio"] and not hybrid["met_loss"]


def test_table_shows_the_fraction_of_the_ceiling(capsys: pytest.CaptureFixture[str]) -> None:
    bench_report.print_table([_case("A", 50_000), _case("R", 3_000), _case("H", 2_500)])
    rows = {
        line.split()[0]: line
        for line in capsys.readouterr().out.splitlines()
        if line[:2] in ("A ", "R ", "H ")
    }
    assert "0.060" in rows["R"] and "0.050" in rows["H"]
