"""What one case of scripts/bench.py measured, and how the figures are printed:
the table, the targets (each case against its own floor, and the ceiling of
Envoy alone), the range over rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench_load import FIXED_RATE, Load

CEILING = "A"  # Envoy alone (direct_response): what fraction of it each case reaches
# Issue 20's targets: each case against its own no-op floor, in the same run.
RATIO_TARGET = 0.9
P99_MARGIN_MS = 2.0


@dataclass
class LogCount:
    """What one verified published log holds, by kind (writer entries aside)."""

    request: int = 0
    access: int = 0
    access_2xx: int = 0
    access_2xx_unref: int = 0  # a 2xx outcome without a request entry to link to
    response: int = 0
    exchange: int = 0

    def add(self, other: LogCount) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class CaseResult:
    id: str
    name: str
    round: int = 0
    floors: tuple[str, ...] = ()
    saturation: Load = field(default_factory=Load)
    fixed: Load = field(default_factory=Load)
    cpu_s: float = 0.0
    envoy_requests: int = 0  # downstream requests Envoy handled while measured
    cpu_us_per_request: float | None = None
    rss_mb: float | None = None
    sent_ok: int = 0  # 2xx responses the load generators got (warm-up included)
    logged: int | None = None  # access entries (sink or log); enforce: request entries
    lost: int | None = None
    log: LogCount | None = None
    sink_entries: int | None = None
    envoy: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    lost_by_phase: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    background_cpu_s: float = 0.0  # CPU outside our processes while the case ran
    steal_s: float = 0.0
    wall_s: float = 0.0

    @property
    def background(self) -> float:
        """Cores busy outside the benchmark's processes, on average."""
        return self.background_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def als_written(self) -> int | None:
        return self.envoy.get("logs_written")

    @property
    def als_dropped(self) -> int:
        return self.envoy.get("logs_dropped", 0)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(result: CaseResult, floor: CaseResult | None) -> float | None:
    if floor is None or not floor.saturation.rps:
        return None
    return result.saturation.rps / floor.saturation.rps


def print_table(results: list[CaseResult]) -> None:
    by_id = {r.id: r for r in results}
    head = (
        f"{'case':<46}{'req/s':>8}{'x floor':>14}{'x A':>6}{'p50@1k':>8}{'p99@1k':>8}"
        f"{'us/req':>8}{'RSS MB':>8}{'2xx':>9}{'logged':>9}{'lost':>6}{'bg':>6}"
    )
    print(head)
    print("-" * len(head))
    ceiling = by_id.get(CEILING)
    for r in results:
        ratios = " ".join(
            f"{x:.2f}{f}" for f in r.floors if f != r.id and (x := ratio(r, by_id.get(f)))
        )
        of_ceiling = ratio(r, ceiling) if r.id != CEILING else None
        print(
            f"{r.id + ' ' + r.name:<46}{r.saturation.rps:>8.0f}{ratios or '-':>14}"
            f"{fmt(of_ceiling, '.3f'):>6}"
            f"{fmt(r.fixed.p50_ms, '.2f'):>8}{fmt(r.fixed.p99_ms, '.2f'):>8}"
            f"{fmt(r.cpu_us_per_request, '.0f'):>8}{fmt(r.rss_mb, '.0f'):>8}{r.sent_ok:>9}"
            f"{'-' if r.logged is None else r.logged:>9}{'-' if r.lost is None else r.lost:>6}"
            f"{r.background:>6.2f}"
        )
    print(
        "(req/s: wrk -t2 -c16 at saturation; x floor: req/s over the named case's; x A: over"
        " Envoy alone's (the ceiling); p50/p99 ms:"
        f" hey at {FIXED_RATE} req/s; us/req: server CPU per request Envoy handled; logged:"
        " access entries (sink count or verified log), for enforce the request entries;"
        " lost: see below; bg: cores busy outside the benchmark's processes meanwhile, the"
        " case's noise)"
    )
    for r in results:
        if r.als_written is not None:
            logged = r.log.access if r.log is not None else r.sink_entries
            line = (
                f"  access log, {r.id}: Envoy wrote {r.als_written}, dropped {r.als_dropped};"
                f" {'logged' if r.log is not None else 'the sink read'} {logged}"
            )
            if r.log is not None:
                line += f" ({r.log.access_2xx} with a 2xx status; {r.sent_ok} 2xx responses)"
            print(line)
        if r.log is not None and r.log.request:
            print(
                f"  enforce, {r.id}: {r.log.request} request entries for {r.sent_ok} 2xx "
                f"responses (lost at saturation {r.lost_by_phase.get('saturation', 0)}, at "
                f"{FIXED_RATE} req/s {r.lost_by_phase.get('fixed', 0)}); 2xx access entries "
                f"without a request entry (ref): {r.log.access_2xx_unref}"
            )
        for note in r.notes:
            print(f"  {r.id}: {note}")
    for r in results:
        if r.envoy:
            stats = ", ".join(f"{k}={v}" for k, v in sorted(r.envoy.items()))
            print(f"  envoy stats, {r.id}: {stats}")


def targets(results: list[CaseResult]) -> dict[str, Any]:
    """The targets, each case against its own floor in the same run, with its
    figures and met/missed: ALS audit (L) >= 0.9x the no-op ALS sink (F) with
    nothing lost; hybrid enforce (H) >= 0.9x its no-op floor (R: request-only
    ext_proc + no-op ALS), no request entry lost, and its p99 at 1,000 req/s
    within 2 ms of R's. `x_ceiling`: the fraction of Envoy alone (A)."""
    by_id = {r.id: r for r in results}
    out: dict[str, Any] = {}
    ceiling = by_id.get(CEILING)
    b, r_, h, f, lg = (by_id.get(k) for k in ("B", "R", "H", "F", "L"))
    if lg is not None and f is not None:
        x = ratio(lg, f) or 0.0
        clean = (
            lg.lost == 0
            and lg.als_dropped == 0
            and lg.log is not None
            and lg.log.access_2xx >= lg.sent_ok
        )
        out["als_audit"] = {
            "ratio": x,
            "floor": "F",
            "lost": lg.lost,
            "dropped": lg.als_dropped,
            "x_ceiling": ratio(lg, ceiling),
            "met": x >= RATIO_TARGET and clean,
        }
        print(
            f"  ALS audit >= {RATIO_TARGET}x its floor F, nothing lost: {x:.2f}x F, "
            f"lost {lg.lost}, dropped {lg.als_dropped}: "
            f"{'met' if out['als_audit']['met'] else 'MISSED'}"
        )
    floor = r_ if r_ is not None else b
    if h is not None and floor is not None:
        x = ratio(h, floor) or 0.0
        p99 = h.fixed.p99_ms or 0.0
        bound = (floor.fixed.p99_ms or 0.0) + P99_MARGIN_MS
        out["hybrid"] = {
            "ratio": x,
            "floor": floor.id,
            "ratio_b": ratio(h, b),
            "lost": h.lost,
            "p99_ms": p99,
            "p99_bound_ms": bound,
            "x_ceiling": ratio(h, ceiling),
            "met_ratio": x >= RATIO_TARGET,
            "met_loss": h.lost == 0,
            "met_p99": p99 <= bound,
        }
        print(
            f"  hybrid enforce >= {RATIO_TARGET}x its floor {floor.id}: {x:.2f}x: "
            f"{'met' if x >= RATIO_TARGET else 'MISSED'}; request entries lost {h.lost}: "
            f"{'met' if h.lost == 0 else 'MISSED'}; p99 @{FIXED_RATE} {p99:.2f} ms <= "
            f"{floor.id} + {P99_MARGIN_MS:.0f} = {bound:.2f} ms: "
            f"{'met' if p99 <= bound else 'MISSED'}"
        )
    if ceiling is not None and ceiling.saturation.rps:
        shares = ", ".join(
            f"{c.id} {share:.3f}"
            for c in results
            if c is not ceiling and (share := ratio(c, ceiling))
        )
        print(f"  of the ceiling (Envoy alone, {ceiling.saturation.rps:.0f} req/s): {shares}")
    return out


def _span(values: list[float | None], spec: str) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, high = format(min(present), spec), format(max(present), spec)
    return low if low == high else f"{low}-{high}"


def print_summary(results: list[CaseResult]) -> None:
    """Each figure's range over the rounds; ratios are taken within each round."""
    rounds = sorted({r.round for r in results})
    by_round = {n: {r.id: r for r in results if r.round == n} for n in rounds}
    print(f"\nover {len(rounds)} rounds (ratios within each round, then their range):")
    head = (
        f"{'case':<46}{'req/s':>14}{'x floor':>22}{'x A':>13}{'p99@1k':>12}{'us/req':>10}"
        f"{'lost':>8}{'bg':>11}"
    )
    print(head)
    print("-" * len(head))
    for cid in dict.fromkeys(r.id for r in results):
        mine = [r for r in results if r.id == cid]
        ratios = " ".join(
            f"{span}{f}"
            for f in mine[0].floors
            if (span := _span([ratio(r, by_round[r.round].get(f)) for r in mine], ".2f")) != "-"
        )
        lost = [r.lost for r in mine if r.lost is not None]
        of_ceiling = [ratio(r, by_round[r.round].get(CEILING)) for r in mine if r.id != CEILING]
        print(
            f"{cid + ' ' + mine[0].name:<46}"
            f"{_span([r.saturation.rps for r in mine], '.0f'):>14}{ratios or '-':>22}"
            f"{_span(of_ceiling, '.3f'):>13}"
            f"{_span([r.fixed.p99_ms for r in mine], '.1f'):>12}"
            f"{_span([r.cpu_us_per_request for r in mine], '.0f'):>10}"
            f"{(str(sum(lost)) if lost else '-'):>8}"
            f"{_span([r.background for r in mine], '.2f'):>11}"
        )
