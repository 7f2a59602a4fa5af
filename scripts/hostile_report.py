"""What scripts/bench_hostile.py prints: the machine, each measurement, and
the targets met or missed."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import grpc
from bench_report import fmt
from hostile_messages import ALS_SIDE_SHAPES, FLOOD_SHAPES, SIDE_SHAPES

from extproc import processes

ROOT = Path(__file__).resolve().parents[1]
ENTRY_LIMIT = 65536  # every entry line must be shorter than this
CPU_TARGET_MS = 50.0  # per 4 MiB message of 60,000 headers
P99_TARGET_MS = 100.0  # requests through Envoy while hostile messages arrive
RSS_TARGET_MB = 500.0  # server RSS while hostile access-log messages arrive


def machine() -> dict[str, Any]:
    envoy = subprocess.run(
        [processes.envoy_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "git_head": git("rev-parse", "HEAD"),
        # The server code measured: uncommitted changes under extproc/ count.
        "extproc_uncommitted": git("status", "--porcelain", "extproc").splitlines(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "envoy": envoy.split("version:")[-1].strip(),
        "loadavg_at_start": os.getloadavg(),
    }


def print_report(report: dict[str, Any]) -> None:
    print("\n1. server CPU per message (one stream each, plain gRPC client)")
    head = f"{'shape':<8}{'what':<36}{'bytes':>11}{'n':>5}{'CPU ms':>9}{'x normal':>10}"
    head += f"{'reply ms p50':>14}{'max':>8}{'RSS MB':>8}{'max':>6}  status"
    print(head)
    print("-" * len(head))
    for r in report["cpu"]:
        print(
            f"{r['shape']:<8}{r['what']:<36}{r['message_bytes']:>11,}{r['messages']:>5}"
            f"{r['cpu_ms_per_msg']:>9.2f}{fmt(r['ratio_to_normal'], '.1f'):>10}"
            f"{r['reply_ms_median']:>14.1f}{r['reply_ms_max']:>8.1f}{r['rss_mb_after']:>8.0f}"
            f"{r['rss_mb_max']:>6.0f}  {r['status']}"
        )
    print(
        f"(idle server CPU {report['idle_cpu_ms_per_s']:.1f} ms/s, subtracted; server RSS at "
        f"start {report['rss_mb_at_start']:.0f} MB)"
    )
    if report["envoy"]:
        print(
            f"\n2. through Envoy at {report['rate']} req/s (hey -c 10), {report['seconds']:.0f} s "
            f"per phase in {report['rounds']} alternating rounds; hostile: "
            f"{report['side_rate']:g}/s of {' and '.join(SIDE_SHAPES)}, alternating; als: "
            f"{report['als_rate']:g}/s of {' and '.join(ALS_SIDE_SHAPES)}; flood: "
            f"{report['flood_rate']:g}/s of {' and '.join(FLOOD_SHAPES)}"
        )
        conf = report.get("envoy_config", {})
        print(
            f"(Envoy config from extproc.envoyconf.bootstrap: ext_proc response phase "
            f"{conf.get('ext_proc_response_phase')}, access-log service "
            f"{conf.get('access_log_service')})"
        )
        head = f"{'phase':<10}{'requests':>9}{'2xx':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        head += f"{'server CPU s':>13}{'RSS MB':>8}  hostile sent/answered/refused/failed, "
        head += "reply p50/max ms"
        print(head)
        print("-" * len(head))
        for p in report["envoy"]:
            lat, side = p["latency"], p["side"]
            extra = (
                f"  {side['sent']}/{side['answered']}/{side['refused']}/{side['failed']}, "
                f"{fmt(side['reply_ms_median'])}/{fmt(side['reply_ms_max'])}"
                if side
                else ""
            )
            print(
                f"{p['name']:<10}{lat['requests']:>9}{lat['ok']:>7}{fmt(lat['p50_ms']):>8}"
                f"{fmt(lat['p99_ms']):>8}{fmt(lat['max_ms']):>8}{p['server_cpu_s']:>13.2f}"
                f"{p['rss_mb_max']:>8.0f}{extra}"
            )
            rounds = ", ".join(fmt(r["p99_ms"]) for r in p["rounds"])
            print(f"  p99 per round: {rounds} ms; envoy: {p['envoy']}")
        under_load = report.get("hostile_cpu_ms_per_msg_under_load")
        print(
            f"  server CPU per hostile message under load: {fmt(under_load)} ms "
            "(hostile minus baseline phase)"
        )
    e = report["entries"]
    print(
        f"\n3. server SERVING at the end: {report['serving_at_end']}; exit status "
        f"{report['exit_status']}; peak RSS {report['peak_rss_mb']:.0f} MB"
    )
    print(
        f"   entries: {e['lines']} lines, largest {e['max_line_bytes']:,} bytes, "
        f"{e['over_limit']} of {ENTRY_LIMIT:,} bytes or more; {e['with_headers_omitted']} with "
        f"req.headers_omitted, {e['shrunk']} shrunk; log verifies: {e['verified']}"
    )
    print("\ntargets:")
    for name, (value, met) in report["targets"].items():
        print(f"  {name}: {value} -> {'met' if met else 'NOT MET'}")


def targets(report: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    out: dict[str, tuple[str, bool]] = {}
    cpu = {r["shape"]: r for r in report["cpu"]}
    if "60k" in cpu:
        ms = cpu["60k"]["cpu_ms_per_msg"]
        out["server CPU per 60k-header 4 MiB message <= 50 ms"] = (
            f"{ms:.1f} ms",
            ms <= CPU_TARGET_MS,
        )
    hostile = next((p for p in report["envoy"] if p["name"] == "hostile"), None)
    if hostile is not None and hostile["latency"]["p99_ms"] is not None:
        p99 = hostile["latency"]["p99_ms"]
        out["p99 through Envoy < 100 ms while hostile messages arrive"] = (
            f"{p99:.1f} ms",
            p99 < P99_TARGET_MS,
        )
    als = next((p for p in report["envoy"] if p["name"] == "als"), None)
    if als is not None and als["latency"]["p99_ms"] is not None:
        lat, side = als["latency"], als["side"]
        p99 = lat["p99_ms"]
        out["als: p99 through Envoy < 100 ms while 500,000-entry access-log messages arrive"] = (
            f"{p99:.1f} ms",
            p99 < P99_TARGET_MS,
        )
        failed = {k: v for k, v in als["envoy"].items() if v} | (
            {"not 2xx": lat["requests"] - lat["ok"]} if lat["ok"] < lat["requests"] else {}
        )
        out["als: no enforce request timed out or failed"] = (
            ", ".join(f"{k} {v}" for k, v in failed.items()) or "none",
            not failed and lat["requests"] > 0,
        )
        out["als: server RSS < 500 MB while they arrive"] = (
            f"{als['rss_mb_max']:.0f} MB",
            0 < als["rss_mb_max"] < RSS_TARGET_MB,
        )
        out["als: every such message refused or bounded, none failed"] = (
            f"{side['refused']} of {side['sent']} refused, {side['failed']} failed",
            side["sent"] > 0 and side["failed"] == 0,
        )
    e = report["entries"]
    out["every entry < 64 KiB"] = (
        f"largest {e['max_line_bytes']:,} bytes of {e['lines']} lines",
        e["checked"] and e["lines"] > 0 and e["over_limit"] == 0,
    )
    out["published log verifies"] = (str(e["verified"]), e["verified"])
    out["server SERVING at the end"] = (str(report["serving_at_end"]), report["serving_at_end"])
    return out
