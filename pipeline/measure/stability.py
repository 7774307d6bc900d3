"""Whether a run's numbers can be trusted: what else ran on the machine while it measured, its
limits measured again after the timed work, and each point checked for sense.

A point is unstable when its spread is wide, when it beats its library's own GEMM rate (the
reference was measured while something else ran) or when it ordered itself impossibly against a
neighbour (a longer input, with at least twice the work, finished faster; more threads took
several times as long as fewer). Benchmarks re-measure
such points a bounded number of times, then keep them, marked.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

# (p90 - p50) / p50 past this is a point too noisy to rank runtimes by
WIDE_SPREAD = 0.5
# a longer input must do at least this many times the work before finishing faster is impossible
INVERSION_WORK = 2.0
# GEMM rates measured before and after the timed work may differ by this much on a quiet machine
GEMM_DRIFT = 0.25
# more threads measured this much slower than fewer: the reference itself is broken
GEMM_THREAD_DROP = 0.9
# other processes using this share of the cores (or the hypervisor stealing this share): busy
BUSY_OTHERS_PCT = 15.0
BUSY_STEAL_PCT = 5.0
# more threads this many times slower than fewer on the same input: the cores were taken
THREADS_SLOWER = 2.0
REMEASURE = 2  # extra attempts for an unstable point


def spread(p50: float, p90: float) -> float:
    return (p90 - p50) / p50 if p50 > 0 else float("inf")


@dataclass
class LoadProbe:
    """CPU time of the whole machine and of this process between start() and stop()."""

    wall: float
    busy: float
    steal: float
    own: float

    @classmethod
    def start(cls) -> LoadProbe:
        return cls(time.perf_counter(), *_cpu_seconds())

    def stop(self) -> dict:
        """The load while it ran: other processes' share of the cores, the hypervisor's steal,
        the load average, and whether that makes the machine busy."""
        import psutil

        wall = max(time.perf_counter() - self.wall, 1e-9)
        busy, steal, own = _cpu_seconds()
        cores = psutil.cpu_count(logical=True) or 1
        capacity = wall * cores
        others = max(0.0, (busy - self.busy) - (own - self.own)) / capacity * 100
        steal_pct = max(0.0, steal - self.steal) / capacity * 100
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        return {
            "seconds": round(wall, 1),
            "cores": cores,
            "others_cpu_pct": round(min(others, 100.0), 1),
            "steal_pct": round(min(steal_pct, 100.0), 1),
            "load_avg_1m": round(load, 2),
            "busy": others > BUSY_OTHERS_PCT or steal_pct > BUSY_STEAL_PCT,
        }


def _cpu_seconds() -> tuple[float, float, float]:
    """(the machine's busy CPU seconds, its steal seconds, this process's and its reaped
    children's CPU seconds)."""
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    for field in ("guest", "guest_nice"):  # Linux counts guest time inside user time already
        total -= getattr(t, field, 0.0)
    me = psutil.Process().cpu_times()
    own = me.user + me.system + getattr(me, "children_user", 0.0) + me.children_system
    return total - idle, getattr(t, "steal", 0.0), own


def gemm_problems(before: dict, after: Optional[dict] = None) -> list[dict]:
    """What is wrong with the GEMM references of a run ({library: {threads: GFLOP/s}}), as
    {library, threads, text}: more threads measured slower than fewer, or the rate moved between
    before and after the timed work."""
    problems = []
    for lib, rates in before.items():
        by_threads = sorted((int(t), g) for t, g in rates.items())
        for (t0, g0), (t1, g1) in zip(by_threads, by_threads[1:]):
            if g1 < GEMM_THREAD_DROP * g0:
                text = (f"{lib}'s GEMM measured slower on {t1} threads ({g1:.0f} GFLOP/s) than on "
                        f"{t0} ({g0:.0f})")  # fmt: skip
                problems.append({"library": lib, "threads": t1, "text": text})
        for t, g in rates.items():
            again = (after or {}).get(lib, {}).get(t)
            if again is not None and abs(again - g) > GEMM_DRIFT * max(again, g):
                text = (f"{lib}'s GEMM on {t} thread(s) moved from {g:.0f} to {again:.0f} GFLOP/s "
                        "between the start and the end of the run")  # fmt: skip
                problems.append({"library": lib, "threads": int(t), "text": text})
    return problems


def broken_references(machine_info: dict) -> set[tuple[str, int]]:
    """(library, threads) of the GEMM rates a run's machine record cannot vouch for."""
    found = gemm_problems(machine_info["gemm_gflops"], machine_info.get("gemm_gflops_after"))
    return {(p["library"], p["threads"]) for p in found}


def point_problems(
    points: Sequence[dict], work_of, exact_of, share_of=lambda p: None
) -> dict[int, list[str]]:
    """{index: reasons} for the points (dicts with runtime, variant, threads, seq_len, batch,
    p50_ms, p90_ms) that cannot be trusted. work_of(point) is its FLOPs, exact_of(runtime)
    whether its work is the float32 work the GEMM rate bounds, share_of(point) its share of that
    rate (None: no limit to compare with)."""
    reasons: dict[int, list[str]] = {}

    def mark(i: int, why: str) -> None:
        reasons.setdefault(i, []).append(why)

    for i, p in enumerate(points):
        s = spread(p["p50_ms"], p["p90_ms"])
        if s > WIDE_SPREAD:
            mark(i, f"p90 {s:.0%} above p50")
        share = share_of(p)
        if share is not None and exact_of(p["runtime"]) and share > 1.0:
            mark(i, "faster than its library's GEMM rate allows: that rate was measured low")
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        key = (p["runtime"], p["variant"], p["threads"], p.get("batch", 1))
        groups.setdefault(key, []).append(i)
    worst: dict[int, tuple[float, str]] = {}  # per point, its most impossible pair
    for members in groups.values():
        for a in members:
            for b in members:
                pa, pb = points[a], points[b]
                if pb["seq_len"] <= pa["seq_len"]:
                    continue
                work = work_of(pb) / work_of(pa)
                if work >= INVERSION_WORK and pb["p50_ms"] < pa["p50_ms"]:
                    why = (
                        f"S={pb['seq_len']} ({pb['p50_ms']:.3g} ms) ran faster than "
                        f"S={pa['seq_len']} ({pa['p50_ms']:.3g} ms) with {work:.0f}x the work"
                    )
                    for i in (a, b):
                        if work > worst.get(i, (0.0, ""))[0]:
                            worst[i] = (work, why)
    for i, (_, why) in sorted(worst.items()):
        mark(i, why)
    _threads_problems(points, mark)
    return reasons


def _threads_problems(points: Sequence[dict], mark) -> None:
    """More threads taking several times as long as fewer on the same work: the extra cores
    were not free (a runtime's hand-off overhead costs far less than that)."""
    same_work: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        key = (p["runtime"], p["variant"], p["seq_len"], p.get("batch", 1))
        same_work.setdefault(key, []).append(i)
    for members in same_work.values():
        fewest = min(members, key=lambda i: points[i]["threads"])
        for i in members:
            slower = points[i]["p50_ms"] / points[fewest]["p50_ms"]
            if points[i]["threads"] > points[fewest]["threads"] and slower > THREADS_SLOWER:
                mark(i, f"{slower:.0f}x the time on {points[i]['threads']} threads as on "
                        f"{points[fewest]['threads']}: the other cores were not free")  # fmt: skip


def unstable_reasons(records: Sequence) -> dict[int, list[str]]:
    """{index: why} for the records that fail stability.point_problems."""
    import math

    from ..config import get_variant
    from ..runtime.registry import get_runtime

    return point_problems(
        [dataclasses.asdict(r) for r in records],
        work_of=lambda p: p["batch"] * get_variant(p["variant"]).config.forward_flops(p["seq_len"]),
        exact_of=lambda rt: get_runtime(rt).exact,
        share_of=lambda p: (
            p["gflops"] / p["gemm_gflops"] if math.isfinite(p["gemm_gflops"]) else None
        ),
    )


def remeasured(group: list, measure: Callable[[int], list]) -> list:
    """The group's points with every unstable one measured again (all runtimes of its S, in
    turns), at most stability.REMEASURE times; what is still unstable then is kept, marked."""
    for _ in range(REMEASURE):
        suspect = {group[i].seq_len for i in unstable_reasons(group)}
        if not suspect:
            break
        for s in sorted(suspect):
            fresh = {r.runtime: r for r in measure(s)}
            group = [_attempt(r, fresh[r.runtime]) if r.seq_len == s else r for r in group]
    for i, why in unstable_reasons(group).items():
        group[i].unstable = why
    return group


def _attempt(old, new):
    new.attempts = old.attempts + 1
    return new


def stability_summary(unstable: Iterable[str], total: int, load: Optional[dict],
                      gemm: Sequence[dict] = (), remeasure: int = REMEASURE) -> dict:  # fmt: skip
    """The JSON a run carries about its own trustworthiness (remeasure: the extra attempts each
    unstable point had)."""
    unstable = list(unstable)
    return {
        "points": total,
        "remeasure": remeasure,
        "unstable": len(unstable),
        "unstable_points": unstable,
        "gemm_problems": list(gemm),
        "load": load,
    }


def stability_lines(summary: Optional[dict]) -> list[str]:
    """What a run says about its own numbers (nothing for a record made before they were
    checked)."""
    if not summary:
        return []
    load, lines = summary.get("load") or {}, []
    if load:
        machine = (
            f"other processes used {load['others_cpu_pct']:.0f}% of the {load['cores']} cores, "
            f"steal {load['steal_pct']:.0f}%, load average {load['load_avg_1m']:.1f}"
        )
        verdict = "the machine was busy while this ran" if load["busy"] else "the machine was quiet"
        lines.append(f"stability: {verdict} ({machine})")
    n, total = summary["unstable"], summary["points"]
    if n:
        shown = "; ".join(summary["unstable_points"][:4]) + ("; ..." if n > 4 else "")
        tries = summary.get("remeasure", 0)
        after = f"after {tries} re-measurements, kept and marked" if tries else "(not re-measured)"
        lines.append(f"stability: {n} of {total} points unstable {after}: {shown}")
    elif total:
        lines.append(f"stability: all {total} points stable")
    lines += [f"stability: {p['text']}: rates and shares against it are not trusted"
              for p in summary.get("gemm_problems", [])]  # fmt: skip
    return lines
