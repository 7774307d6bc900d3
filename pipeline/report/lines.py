"""The sentences of bench and report: measuring code returns numbers, and this module words
them (every number read from the records, none measured here). Runtimes are named by their
registry role, never by a literal name."""

from __future__ import annotations

from ..config import get_variant
from ..measure.forward import Record, speedups
from ..measure.harness import GEMM_SIZE, geomean
from ..runtime.registry import RUNTIMES, get_runtime, runtime_with, runtimes_with


def gemm_sentence(machine_info: dict) -> str:
    """The one sentence that states the GEMM rates a run measured."""
    parts = []
    for lib, rates in machine_info["gemm_gflops"].items():
        shown = ", ".join(
            f"{g:.0f} GFLOP/s on {t} thread{'s' * (int(t) > 1)}" for t, g in rates.items()
        )
        parts.append(f"{lib} {shown}")
    return f"a {GEMM_SIZE}^3 fp32 matmul, measured in this run, reaches: " + "; ".join(parts)


def speedup_lines(records: list[Record]) -> list[str]:
    """Per runtime: its geometric-mean speed-up over the eager reference, and where it is slower."""
    lines = []
    reference = runtime_with("reference")
    rows = speedups(records, reference)
    for runtime in sorted({r["runtime"] for r in rows}):
        mine = [r for r in rows if r["runtime"] == runtime]
        slower = [
            f"{r['variant']}/{r['threads']}t/S={r['seq_len']}" for r in mine if r["speedup"] < 1
        ]
        lines.append(
            f"{runtime}: geometric-mean speed-up over {reference} {geomean(r['speedup'] for r in mine):.2f}x over "
            f"{len(mine)} points; "
            + ("faster or equal at every point" if not slower else f"slower at {', '.join(slower)}")
        )
    return lines


def fastest_lines(records: list[Record]) -> list[str]:
    """One line per (variant, threads, S): the fastest runtime and its margin over the next."""
    points: dict[tuple, list[Record]] = {}
    for r in records:
        points.setdefault((r.variant, r.threads, r.seq_len), []).append(r)
    lines = []
    for (variant, threads, s), rs in sorted(points.items()):
        if len(rs) < 2:
            continue
        first, second = sorted(rs, key=lambda r: r.p50_ms)[:2]
        lines.append(
            f"{variant}, {threads} thread(s), S={s}: fastest {first.runtime} ({first.p50_ms:.3g} ms), "
            f"{second.p50_ms / first.p50_ms:.2f}x ahead of {second.runtime}"
        )
    return lines


def gemm_lines(records: list[Record], machine_info: dict) -> list[str]:
    """The GEMM rates of the run, how close the best exact forward came to its library's, and why
    the winner wins: each library's GEMM rate against ORT's on this machine."""
    exact = [r for r in records if get_runtime(r.runtime).exact] or records  # int8 work is not fp32
    best = max(exact, key=lambda r: r.peak_share)
    lines = [
        f"reference: {gemm_sentence(machine_info)}. GFLOP/s count causal attention as the S(S+1)/2 pairs "
        f"it needs; each runtime's share is of its own library's GEMM rate. The closest forward to its "
        f"limit: {best.runtime}, {best.threads} thread(s), S={best.seq_len}, {best.gflops:.0f} GFLOP/s, "
        f"{best.peak_share:.0%} of that rate"
    ]
    rates = machine_info["gemm_gflops"]
    for lib, by_threads in rates.items():
        if lib == "onnxruntime":
            continue
        ratios = ", ".join(
            f"{g / rates['onnxruntime'][t]:.2f}x ORT's on {t} thread{'s' * (int(t) > 1)}"
            for t, g in by_threads.items()
        )
        lines.append(
            f"why: {lib}'s 1024^3 GEMM runs at {ratios} here; the long inputs are matmul-bound, so "
            "the runtime on the faster GEMM library wins them on this machine, and a CPU where the "
            "rates compare the other way turns the verdict"
        )
    compiled = {r.runtime: r.compile_s for r in records if r.compile_s is not None}
    lines += [
        f"{rt}: compiled once in {s:.1f} s (dynamic shapes), outside the timed runs"
        for rt, s in compiled.items()
    ]
    return lines


def forward_lines(records, data: dict) -> list[str]:
    """Every line `pipeline bench` prints under its table."""
    skipped = [
        f"{rt}: not installed (no package {get_runtime(rt).missing()!r}); skipped"
        for rt in data.get("not_installed", [])
    ]
    return (
        speedup_lines(records)
        + fastest_lines(records)
        + gemm_lines(records, data["machine"])
        + skipped
    )


def _against_fast(e2e: list[dict]) -> list[str]:
    """Whole generations against our float32 loop on the fast graph at the same thread count:
    other libraries' own loops on the same graph (time), and the weight-only quantized decoders
    (tokens/s)."""
    fast = runtime_with("fast")
    ours = {(r["variant"], r["threads"]): r for r in e2e if r["runtime"] == fast}

    def pairs(runtime):
        return [
            (r, ours[(r["variant"], r["threads"])])
            for r in e2e
            if r["runtime"] == runtime and (r["variant"], r["threads"]) in ours
        ]

    lines = []
    for loop in runtimes_with("own-loop"):
        ratios = [o["total_s"] / g["total_s"] for g, o in pairs(loop)]
        if ratios:
            lines.append(
                f"our {fast} loop vs {loop} on the same graph, whole generation: "
                f"{min(ratios):.2f}x to {max(ratios):.2f}x {loop}'s time"
            )
    for rt in (r for r in RUNTIMES if get_runtime(r).weight_bits < 32):
        ratios = [q["tokens_per_s"] / f["tokens_per_s"] for q, f in pairs(rt)]
        if ratios:
            lines.append(
                f"{rt}: whole generation at {min(ratios):.2f}x to {max(ratios):.2f}x the tokens/s "
                f"of the float32 {fast} decoder"
            )
    return lines


def decode_lines(data: dict) -> list[str]:
    """The decode bench's sentences, from its records and rows (measure.decode.decode_rows)."""
    step_rows, e2e_rows, e2e = data["step_rows"], data["e2e_rows"], data["end_to_end"]
    lines = []
    cfg = get_variant(data["variants"][0]).config
    lines.append(
        f"KV cache: {cfg.kv_cache_bytes_per_token():,} bytes per token per row "
        f"(2 x {cfg.n_layers} layers x {cfg.kv_heads} key/value heads x {cfg.head_dim} floats x 4 B); "
        f"{cfg.kv_cache_bytes_per_token() * cfg.max_seq_len / 2**20:.1f} MiB for a full 1024-token row."
    )
    reference, naive = runtime_with("reference"), runtime_with("naive")
    for rt in (r for r in RUNTIMES if r not in (reference, naive)):
        ratios = [row[7] for row in step_rows if row[4] == rt and row[7] is not None]
        if ratios:
            lines.append(
                f"{rt}: decode step vs eager {reference} with its cache: geo-mean {geomean(ratios):.2f}x, "
                f"from {min(ratios):.2f}x to {max(ratios):.2f}x over {len(ratios)} points"
            )
    for rt in (r for r in RUNTIMES if r != naive):
        ratios = [row[6] for row in e2e_rows if row[2] == rt and row[6] is not None]
        if ratios:
            lines.append(
                f"{rt}: whole generation vs the naive recomputing loop: {min(ratios):.1f}x to "
                f"{max(ratios):.1f}x faster"
            )
    lines += _against_fast(e2e)
    if data.get("machine"):
        lines.append(f"reference: {gemm_sentence(data['machine'])}")
        if data["machine"].get("memory_gbs"):
            lines.append(
                f"floor: a step reads every weight and each row's cache once, at the "
                f"{data['machine']['memory_gbs']:.0f} GB/s a 256 MiB copy reached in this run, "
                "and does its FLOPs at the GEMM rate; the larger of the two is the floor (a DRAM "
                "floor: weights that fit in the CPU's caches, as the tiny model's 13 MB may, can "
                "beat it)"
            )
    return lines


def attention_lines(data: dict) -> list[str]:
    """The attention bench's findings: each point's fastest ORT route that matched torch's."""
    return [
        f"fastest exact ORT route at {f['threads']} thread(s), S={f['seq_len']}: {f['route']}"
        for f in data["fastest"]
    ]
