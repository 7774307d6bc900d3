"""The sentences of bench and report: measuring code returns numbers, and this module words
them (every number read from the records, none measured here). Runtimes are named by their
registry role, never by a literal name."""

from __future__ import annotations

from ..config import get_variant
from ..measure.forward import Record, speedups
from ..measure.harness import GEMM_SIZE, geomean
from ..runtime.registry import RUNTIMES, get_runtime, runtime_with, runtimes_with


def machine_line(machine_info: dict) -> str:
    """The machine as it describes itself (never from prose): CPU, ISA, cores."""
    isa = ", ".join(machine_info.get("isa") or []) or "none of the listed extensions"
    return (
        f"machine: {machine_info['cpu']} ({isa}); {machine_info['cores_usable']} cores usable of "
        f"{machine_info['cores_logical']} logical, {machine_info['memory_gb']} GiB"
    )


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
    by_key = {(r.runtime, r.variant, r.threads, r.seq_len): r for r in records}

    def noise(row: dict) -> float:
        point = (row["variant"], row["threads"], row["seq_len"])
        return noise_of(by_key[(row["runtime"], *point)], by_key[(reference, *point)])

    for runtime in sorted({r["runtime"] for r in rows}):
        mine = [r for r in rows if r["runtime"] == runtime]
        slower = [
            f"{r['variant']}/{r['threads']}t/S={r['seq_len']}"
            for r in mine
            if 1 / r["speedup"] > 1 + noise(r)
        ]
        lines.append(
            f"{runtime}: geometric-mean speed-up over {reference} {geomean(r['speedup'] for r in mine):.2f}x over "
            f"{len(mine)} points; "
            + (
                "nowhere slower beyond noise"
                if not slower
                else f"slower beyond noise at {', '.join(slower)}"
            )
        )
    return lines


def fastest_lines(records: list[Record]) -> list[str]:
    """One line per (variant, threads, S): the fastest runtime and its margin over the next, or
    that the two are within their noise."""
    points: dict[tuple, list[Record]] = {}
    for r in records:
        points.setdefault((r.variant, r.threads, r.seq_len), []).append(r)
    lines = []
    for (variant, threads, s), rs in sorted(points.items()):
        if len(rs) < 2:
            continue
        first, second = sorted(rs, key=lambda r: r.p50_ms)[:2]
        margin = second.p50_ms / first.p50_ms
        head = f"{variant}, {threads} thread(s), S={s}: "
        if not (first.stable and second.stable):
            lines.append(
                head + f"{first.runtime} vs {second.runtime} not ranked: an unstable point "
                f"({margin:.2f}x)"
            )
        elif margin < 1 + noise_of(first, second):
            lines.append(
                head + f"{first.runtime} and {second.runtime} within noise ({margin:.2f}x)"
            )
        else:
            lines.append(
                head + f"fastest {first.runtime} ({first.p50_ms:.3g} ms), {margin:.2f}x ahead "
                f"of {second.runtime}"
            )
    return lines


def noise_of(*records: Record) -> float:
    """The relative difference of p50s that these points' own spread (p90 over p50) or the
    floor GEMM_NOISE cannot tell from chance; an unstable point's is unbounded."""
    from ..measure.stability import spread

    if any(not r.stable for r in records):
        return float("inf")
    return max([GEMM_NOISE] + [spread(r.p50_ms, r.p90_ms) for r in records])


GEMM_NOISE = 0.1  # two GEMM rates (or two latencies) closer than this are not told apart here


def gemm_lines(records: list[Record], machine_info: dict) -> list[str]:
    """The GEMM rates of the run, how close the best trusted exact forward came to its library's
    (a point above its reference names the reference as broken instead), and whether the winner
    of the long inputs is the runtime on the faster GEMM library."""
    exact = [r for r in records if get_runtime(r.runtime).exact] or records  # int8 work is not fp32
    trusted = [r for r in exact if r.peak_share <= 1.0 and r.stable]
    line = (
        f"reference: {gemm_sentence(machine_info)}. GFLOP/s count causal attention as the S(S+1)/2 "
        "pairs it needs; each runtime's share is of its own library's GEMM rate."
    )
    if trusted:
        best = max(trusted, key=lambda r: r.peak_share)
        line += (
            f" The closest stable forward to its limit: {best.runtime}, {best.threads} thread(s), "
            f"S={best.seq_len}, {best.gflops:.0f} GFLOP/s, {best.peak_share:.0%} of that rate"
        )
    lines = [line]
    over = [r for r in exact if r.peak_share > 1.0]
    if over:
        worst = max(over, key=lambda r: r.peak_share)
        lines.append(
            f"broken reference: {worst.runtime} at {worst.threads} thread(s), S={worst.seq_len} ran "
            f"at {worst.gflops:.0f} GFLOP/s, above the {worst.gemm_gflops:.0f} GFLOP/s its GEMM "
            f"library was measured at in this run ({len(over)} point(s) above their reference): "
            "the GEMM was measured while other work ran, so no share is shown against it"
        )
    lines += why_lines(records, machine_info)
    compiled = {r.runtime: r.compile_s for r in records if r.compile_s is not None}
    lines += [
        f"{rt}: compiled once in {s:.1f} s (dynamic shapes), outside the timed runs"
        for rt, s in compiled.items()
    ]
    return lines


def why_lines(records: list[Record], machine_info: dict) -> list[str]:
    """Per thread count, for the libraries of runtimes that ran: which GEMM is faster, and
    whether the longest input's winner is on it, said only beyond the noise of both."""
    libs = {get_runtime(r.runtime).gemm_library for r in records if get_runtime(r.runtime).exact}
    rates = {lib: by for lib, by in machine_info["gemm_gflops"].items() if lib in libs}
    if len(rates) != 2:
        return []
    from ..measure.stability import broken_references

    (lib_a, rates_a), (lib_b, rates_b) = sorted(rates.items())
    longest, broken = max(r.seq_len for r in records), broken_references(machine_info)
    lines = []
    for t in sorted(set(rates_a) & set(rates_b), key=int):
        ratio = rates_a[t] / rates_b[t]
        head = f"why ({t} thread(s)): {lib_a}'s 1024^3 GEMM runs at {ratio:.2f}x {lib_b}'s here"
        if {(lib_a, int(t)), (lib_b, int(t))} & broken:
            lines.append(f"{head}, but that rate was not measured steadily: no verdict from it")
            continue
        if abs(ratio - 1) < GEMM_NOISE:
            lines.append(f"{head}: within {GEMM_NOISE:.0%}, the GEMM rate does not tell them apart")
            continue
        faster = lib_a if ratio > 1 else lib_b
        point = [r for r in records if r.threads == int(t) and r.seq_len == longest
                 and get_runtime(r.runtime).exact]  # fmt: skip
        by_lib: dict[str, Record] = {}
        for r in sorted(point, key=lambda r: r.p50_ms):
            by_lib.setdefault(get_runtime(r.runtime).gemm_library, r)
        if len(by_lib) < 2:
            continue
        win, other = sorted(by_lib.values(), key=lambda r: r.p50_ms)
        margin = other.p50_ms / win.p50_ms
        if margin < 1 + noise_of(win, other):
            lines.append(
                f"{head}; at S={longest} {win.runtime} and {other.runtime} are within noise"
            )
        elif get_runtime(win.runtime).gemm_library == faster:
            lines.append(
                f"{head}; at S={longest}, where the matmuls dominate, {win.runtime} on the faster "
                f"GEMM library wins by {margin:.2f}x; on a CPU where the rates compare the other "
                "way the verdict can turn"
            )
        else:
            lines.append(
                f"{head}, yet at S={longest} {win.runtime} on the slower GEMM library wins by "
                f"{margin:.2f}x: on this machine the GEMM rate alone does not decide the long "
                "inputs (fusions and attention kernels do)"
            )
    return lines


def forward_lines(records, data: dict) -> list[str]:
    """Every line `pipeline bench` prints under its table."""
    skipped = [
        f"{rt}: not installed (no package {get_runtime(rt).missing()!r}); skipped"
        for rt in data.get("not_installed", [])
    ]
    from ..measure.stability import stability_lines

    return (
        speedup_lines(records)
        + fastest_lines(records)
        + [machine_line(data["machine"])]
        + gemm_lines(records, data["machine"])
        + stability_lines(data.get("stability"))
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
        lines.append(machine_line(data["machine"]))
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
