"""The report's latency section and what the run says about its own numbers: every sentence
states a claim only where the numbers it cites support it beyond their noise (lines.py words
the bench's, from the same records)."""

from __future__ import annotations

from ..measure.forward import Record
from ..measure.stability import unstable_reasons
from ..table import markdown_table
from .collect import FAST, REFERENCE
from .lines import GEMM_NOISE, noise_of, why_lines
from .words import bound_text


def by_point(records: list[dict]) -> dict:
    return {(r["runtime"], r["threads"], r["seq_len"]): r for r in records}


def speedup_index(results: dict) -> dict:
    return {
        (r["runtime"], r["threads"], r["seq_len"]): r["speedup"]
        for r in results["bench"]["speedups_vs_torch"]
    }


def _exact_runtimes(records: list[dict]) -> list[str]:
    """The runtimes in the records that compute fp32 logits, torch first (registry order)."""
    from ..runtime.registry import RUNTIMES

    present = {r["runtime"] for r in records}
    return [name for name, rt in RUNTIMES.items() if name in present and rt.exact]


def bench_records(results: dict) -> list[Record]:
    """The bench's records, each marked as its run marked it; a record made before points were
    checked is checked here, from its own numbers."""
    records = [Record.from_dict(r) for r in results["bench"]["records"]]
    if "stability" not in results:
        for i, why in unstable_reasons(records).items():
            records[i].unstable = why
    return records


def stability_section(results: dict) -> list[str]:
    """How far the run's numbers can be trusted: the machine's load while it ran, the unstable
    points and the GEMM references that did not hold."""
    from ..measure.stability import broken_references, stability_lines, stability_summary

    summary = results.get("stability")
    if summary is None:  # a record from before the run checked itself
        records = bench_records(results)
        bad = [f"{r.label}: {', '.join(r.unstable)}" for r in records if r.unstable]
        problems = [{"text": f"{lib}'s GEMM on {t} thread(s) is below fewer threads' rate"}
                    for lib, t in sorted(broken_references(results["machine"]))]  # fmt: skip
        summary = stability_summary(bad, len(records), None, problems, remeasure=0)
    lines = stability_lines(summary)
    return ["\n".join(f"- {line}" for line in lines) + "\n"] if lines else []


def _share(record: dict) -> str:
    share = record["peak_share"]
    return f"{share:.0%}" if share <= 1.0 else "above its reference"


def _fastest(records: list[Record]) -> str:
    first, second = sorted(records, key=lambda r: r.p50_ms)[:2]
    if not (first.stable and second.stable):
        return f"not ranked ({first.runtime} or {second.runtime} unstable)"
    if second.p50_ms / first.p50_ms < 1 + noise_of(first, second):
        return f"{first.runtime} ≈ {second.runtime} (within noise)"
    return first.runtime


def latency_section(results: dict) -> list[str]:
    records, threads = results["bench"]["records"], results["threads"]
    marked = {(r.runtime, r.threads, r.seq_len): r for r in bench_records(results)}
    seq_lens = sorted({r["seq_len"] for r in records})
    by, sp = by_point(records), speedup_index(results)
    exact = _exact_runtimes(records)
    others = [rt for rt in exact if rt != REFERENCE]
    headers = (
        ["threads", "S"]
        + [f"{rt} p50 ms" for rt in exact]
        + [f"torch/{rt}" for rt in others]
        + ["fastest"]
        + [f"{rt} share of its GEMM" for rt in exact]
    )
    rows = [
        [t, s]
        + [by[(rt, t, s)]["p50_ms"] for rt in exact]
        + [sp[(rt, t, s)] for rt in others]
        + [_fastest([marked[(rt, t, s)] for rt in exact])]
        + [_share(by[(rt, t, s)]) for rt in exact]
        for t in threads
        for s in seq_lens
    ]
    md = [
        "## Latency: every runtime side by side\n",
        "![latency vs sequence length](bench.png)\n",
        markdown_table(headers, rows) + "\n",
        _limit_text([marked[k] for k in marked if k[0] in exact]),
        bound_text(
            results["bench"]["profile"],
            results["machine"]["gemm_gflops"]["onnxruntime"]["1"],
            results["compare"].get("baseline", "baseline"),
        ),
    ]
    md += _speedup_bullets(results["bench"]["speedups_vs_torch"], others, marked)
    md += [f"- {line[0].upper()}{line[1:]}." for line in why_lines(list(marked.values()),
                                                                   results["machine"])]  # fmt: skip
    if len(threads) > 1:
        md += _threads_bullet(marked, threads, seq_lens)
    return md + [""]


def _limit_text(exact: list[Record]) -> str:
    text = (
        "FLOPs count causal attention as the S(S+1)/2 query-key pairs it needs, not the full square; "
        "each runtime's share is of its own library's 1024³ GEMM rate (see the top)."
    )
    trusted = [r for r in exact if r.peak_share <= 1.0 and r.stable]
    if trusted:
        best = max(trusted, key=lambda r: r.peak_share)
        text += (
            f" The stable forward closest to its limit ran at {best.gflops:.0f} GFLOP/s "
            f"({best.runtime}, {best.threads} intra-op thread{'s' * (best.threads > 1)}, "
            f"S={best.seq_len}), {best.peak_share:.0%} of that rate."
        )
    over = [r for r in exact if r.peak_share > 1.0]
    if over:
        text += (
            f" {len(over)} point(s) ran above the GEMM rate measured in the same run: that "
            "reference was measured while other work ran, and no share is given against it."
        )
    return text + "\n"


def _speedup_bullets(speedups: list[dict], runtimes: list[str], marked: dict) -> list[str]:
    """Per runtime: its geometric-mean speed-up over the reference, and where it is slower by
    more than the noise of both points."""
    from ..measure.harness import geomean

    md = []
    for rt in runtimes:
        mine = [r for r in speedups if r["runtime"] == rt]

        def beyond_noise(r: dict, rt=rt) -> bool:
            pair = (marked[(rt, r["threads"], r["seq_len"])],
                    marked[(REFERENCE, r["threads"], r["seq_len"])])  # fmt: skip
            return 1 / r["speedup"] > 1 + noise_of(*pair)

        slower = [r for r in mine if r["speedup"] < 1 and beyond_noise(r)]
        md += [
            f"- `{rt}`: geometric-mean speed-up over eager {REFERENCE} "
            f"{geomean(r['speedup'] for r in mine):.2f}x; "
            + (
                "nowhere slower beyond noise."
                if not slower
                else "slower at "
                + ", ".join(
                    f"{r['threads']} thread(s), S={r['seq_len']} ({r['speedup']:.2f}x)"
                    for r in slower
                )
                + "."
            )
        ]
    return md


def _threads_bullet(marked: dict, threads: list[int], seq_lens: list[int]) -> list[str]:
    """What more threads bought the fast graph, short and long; the usual explanation (overhead
    at a few tokens, matmuls that split at many) only where the numbers show it."""
    t1, tn = threads[0], threads[-1]
    short, long = seq_lens[0], seq_lens[-1]
    points = {(t, s): marked[(FAST, t, s)] for t in (t1, tn) for s in (short, long)}
    gain = {s: points[(t1, s)].p50_ms / points[(tn, s)].p50_ms for s in (short, long)}
    head = (
        f"- Threads: with {tn} intra-op threads `{FAST}` runs {gain[short]:.2f}x as fast as with "
        f"{t1} at S={short} and {gain[long]:.2f}x at S={long}"
    )
    noise = noise_of(*points.values())
    if gain[long] > gain[short] * (1 + noise) and gain[long] > 1 + GEMM_NOISE:
        return [
            head + ": a few tokens are dominated by per-op overhead and thread hand-offs that "
            "more threads cannot split, long inputs by matmuls that split well."
        ]
    return [head + ": no gain that grows with the input beyond this run's noise."]
