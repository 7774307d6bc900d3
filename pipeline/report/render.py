"""The report's second step: report.json -> report.md and its plots, measuring nothing.

Every number is read from the results (collect.py); the prose around them is chosen by the
numbers (thresholds below), never typed in. One small function per section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import DEFAULT_SIZE, SIZES, get_variant, register_size, sized_name
from ..fileio import write_text_atomic
from ..table import markdown_table
from .collect import FAST, HEADLINE, PORTABLE, QUANTIZED, REFERENCE


def potential(variant: str, seq_len: int = 1024, baseline: str = "baseline") -> str:
    """What the variant's config changes in the work, computed from it (no per-variant text)."""
    cfg, base = get_variant(variant).config, get_variant(baseline).config
    seq_len = min(seq_len, base.max_seq_len)
    flops = cfg.forward_flops(seq_len) / base.forward_flops(seq_len)
    parts = [
        f"{flops:.0%} of baseline's matmul FLOPs at S={seq_len}"
        if abs(flops - 1) > 0.005
        else "the same matmul FLOPs as baseline"
    ]
    if cfg.n_params() != base.n_params():
        parts.append(f"{cfg.n_params():,} parameters ({cfg.n_params() - base.n_params():+,})")
    if cfg.kv_cache_bytes_per_token() != base.kv_cache_bytes_per_token():
        parts.append(
            f"a KV cache of {cfg.kv_cache_bytes_per_token():,} B per token "
            f"({cfg.kv_cache_bytes_per_token() / base.kv_cache_bytes_per_token():.2g}x baseline's)"
        )
    return "; ".join(parts) + "."


def bound_text(profile: dict, gemm_gflops: float, baseline: str = "baseline") -> str:
    """Where the ORT-optimised forward's time goes at the longest length, against the causal FLOP
    count at the GEMM rate: the distance to the limit and what makes it up."""
    cfg, s = get_variant(baseline).config, profile["seq_len"]
    ops = profile["ms_per_forward"]
    attn_flops = cfg.n_layers * 2 * 2 * cfg.attention_pairs(s) * cfg.d_model
    matmul_flops = cfg.forward_flops(s) - attn_flops
    bound = lambda flops: flops / gemm_gflops / 1e6  # ms at the GEMM rate
    gemm_ms = ops.get("Gemm", 0.0) + ops.get("MatMul", 0.0)
    attn_ms = sum(v for k, v in ops.items() if "Attention" in k)
    rest = profile["total_ms"] - gemm_ms - attn_ms
    top = ", ".join(f"{k} {v:.1f} ms" for k, v in list(ops.items())[:5])
    return (
        f"What bounds `ort-opt` at S={s} (ONNX Runtime's profiler, {profile['threads']} thread, "
        f"{profile['total_ms']:.1f} ms of kernel time per forward: {top}): the projections, MLP and LM head "
        f"(Gemm/MatMul) take {gemm_ms:.1f} ms for {matmul_flops / 1e9:.2f} GFLOP, "
        f"{bound(matmul_flops) / gemm_ms:.0%} of the GEMM rate; attention takes {attn_ms:.1f} ms for "
        f"{attn_flops / 1e9:.2f} GFLOP of causal work, {attn_ms / bound(attn_flops):.1f}x its time at the GEMM "
        f"rate; everything else (GELU, LayerNorm, residual adds, reshapes) {rest:.1f} ms. The whole forward's "
        f"FLOP bound is {bound(cfg.forward_flops(s)):.1f} ms.\n"
    )


def family_section(
    compare: dict, family: Optional[dict], decode_steps: list[dict], size: str = DEFAULT_SIZE
) -> list[str]:
    """The attention family side by side: what each member changes in the work (from its config)
    and in the logits, latency (from the variant comparison) and decode steps; with --full also
    latency vs S and the fits that say whether a window turned attention linear."""
    md = (
        ["## The attention family\n"]
        + _family_table(compare, decode_steps, size)
        + _window_bullets(compare, size)
    )
    if family is None:
        return md + [
            "",
            "Latency vs S for the family, with fits that test whether a window turns attention "
            "linear past W: `pipeline report --full` or `pipeline sweep --family`.\n",
        ]
    return md + _family_fits(family, compare["baseline"]) + [""]


def _latency_keys(compare: dict) -> list[str]:
    runtimes = [rt for rt in HEADLINE if rt in compare["runtimes"]]
    return [f"{rt}@{n}" for rt in runtimes for n in compare["seq_lens"]]


def _family(size: str) -> list[str]:
    from ..measure.sweep import FAMILY

    return [sized_name(v, size) for v in FAMILY]


def _family_table(compare: dict, decode_steps: list[dict], size: str) -> list[str]:
    base, s_long = get_variant(compare["baseline"]).config, max(compare["seq_lens"])
    rows_by, keys = {r["variant"]: r for r in compare["rows"]}, _latency_keys(compare)
    past = max(r["past_len"] for r in decode_steps)
    step_ms = {
        (r["variant"], r["runtime"]): r["p50_ms"] for r in decode_steps if r["past_len"] == past
    }
    step_runtimes = sorted({r["runtime"] for r in decode_steps}, key=list(HEADLINE).index)
    rows = []
    for name in _family(size):
        cfg, r = get_variant(name).config, rows_by[name]
        pairs = cfg.attention_pairs(s_long) / base.attention_pairs(s_long)
        rows.append(
            [
                shown(name),
                f"{cfg.n_params():,}",
                f"{cfg.kv_cache_bytes_per_token():,}",
                f"{pairs:.2f}",
                r.get("top1_agreement_pct", 100.0),
                r.get("kl_mean", 0.0),
            ]
            + [x for k in keys for x in (r[f"p50_ms {k}"], r[f"ratio {k}"])]
            + [step_ms[(name, rt)] for rt in step_runtimes]
        )
    headers = (
        [
            "variant",
            "parameters",
            "KV cache B/token",
            f"attention pairs at S={s_long} (x base)",
            "top-1 agree %",
            "KL mean",
        ]
        + [h for k in keys for h in (f"{k} p50 ms", "x base")]
        + [f"{rt} decode step at past {past}, ms" for rt in step_runtimes]
    )
    return [
        "Rotary positions, grouped-query attention and a sliding window, alone and together, against "
        "baseline: parameters and KV-cache bytes from the config, the attention's query-key pairs at "
        f"S={s_long} as a share of baseline's, the logits' agreement with baseline on the examples, and "
        f"latency ({compare['threads']} thread, interleaved with every variant: see 'Architecture "
        "changes' below).\n",
        markdown_table(headers, rows) + "\n",
        "Decode steps: batch 1, one new token after a cache of that length, "
        f"{decode_steps[0]['threads']} thread, p50 of each variant's own run (baseline's are the decode "
        "section's); `ort-opt` is the fused GroupQueryAttention decoder (every variant: it takes the "
        "key/value heads and the window) with its cache read and written in place.\n",
    ]


def _window_bullets(compare: dict, size: str) -> list[str]:
    """Whether a window's saved work shows on the clock."""
    base, s_long = get_variant(compare["baseline"]).config, max(compare["seq_lens"])
    rows_by, md = {r["variant"]: r for r in compare["rows"]}, []
    for name in _family(size):
        cfg = get_variant(name).config
        if not cfg.attn_window:
            continue
        work = cfg.attention_pairs(s_long) / base.attention_pairs(s_long)
        if work > 0.999:  # the window is no shorter than the longest input: nothing to save
            continue
        ratios = {
            k: rows_by[name][f"ratio {k}"]
            for k in _latency_keys(compare)
            if k.endswith(f"@{s_long}")
        }
        by_runtime = ", ".join(f"{k.split('@')[0]} {v:.2f}x" for k, v in ratios.items())
        verdict = (
            "the saved work shows on the clock."
            if max(ratios.values()) < 0.97
            else "the saved work does not show on the clock (a runtime that masks the keys outside the "
            "window still computes them)."
        )
        md += [
            f"- **{shown(name)}** keeps {work:.0%} of the attention pairs at S={s_long}; its latency there is "
            f"{by_runtime} baseline's: {verdict}"
        ]
    return md


def _family_fits(family: dict, baseline: str) -> list[str]:
    """The family's latency vs S with t(S) = a + b S + c S^2, and whether a window turned it linear."""
    from ..measure.sweep import family_table

    s_max = family["seq_lens"][-1]
    rows = family_table(family)[
        1
    ]  # the rows `pipeline sweep --family` prints; Markdown headers below
    headers = [
        "variant/runtime",
        "fit over",
        "a ms",
        "b µs/token",
        "c ns/token²",
        "R²",
        f"p50 ms at S={s_max}",
        f"c·S² ms at S={s_max}",
    ]
    md = [
        "",
        f"Latency vs S, {family['threads']} thread, every variant and runtime interleaved at each S; "
        "t(S) = a + b S + c S^2 fitted over all S, and for a windowed variant also over S >= W:\n",
        "![attention family latency vs S](sweep_family.png)\n",
        markdown_table(headers, rows) + "\n",
    ]
    for key, fits in family["fits"].items():
        if "from_window" not in fits:
            continue
        c_win = fits["from_window"]["c_ms_per_token2"]
        c_base = family["fits"][f"{baseline}/{key.split('/')[1]}"]["all"]["c_ms_per_token2"]
        linear = c_base > 0 and c_win < 0.25 * c_base
        md += [
            f"- `{shown(key)}`: past W the quadratic term is {c_win * 1e6:.3f} ns/token² against baseline's "
            f"{c_base * 1e6:.3f}: "
            + (
                "attention has turned linear, as the window promises."
                if linear
                else "no linear regime; the runtime still does quadratic work."
            )
        ]
    return md


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _scaling_word(slope: float) -> str:
    if slope < 0.15:
        return "no measurable effect"
    if slope < 0.8:
        return "a sub-linear effect (it drives only part of the work)"
    if slope < 1.2:
        return "a roughly linear effect"
    return "a super-linear effect"


def _logit_word(m: dict) -> str:
    if m["top1_agreement_pct"] >= 99.9 and m["rel_l2_error"] < 1e-2:
        return "a small perturbation: the predictions do not change"
    if m["top1_agreement_pct"] >= 90:
        return "a clear change of the logits that mostly keeps the top prediction"
    if m["top1_agreement_pct"] >= 50:
        return "a large change: a sizeable share of the top predictions change"
    return "a different function: most top predictions change"


def render(results: dict, out_dir) -> Path:
    """report.md and its plots in out_dir, from the results alone."""
    out = Path(out_dir)
    size = known_size(results)
    _plots(results, out)
    md = (
        header_section(results)
        + memory_section(results["memory"])
        + latency_section(results)
        + int8_section(results)
        + length_section(results["sweep_seq"], results["full"])
        + config_section(results["sweep_config"])
        + family_section(results["compare"], results["family"], _family_steps(results), size)
        + decode_section(results)
        + variants_section(results["compare"])
        + ["", f"_Report generated in {results['seconds']:.0f} s._\n"]
    )
    path = out / "report.md"
    write_text_atomic(path, "\n".join(md))
    return path


def _plots(results: dict, out: Path) -> None:
    from ..measure.forward import Record, plot_latency
    from ..measure.sweep import plot_config, plot_family, plot_seq

    plot_latency([Record.from_dict(r) for r in results["bench"]["records"]], out / "bench.png")
    plot_seq(results["sweep_seq"], out / "sweep_seq.png")
    plot_config(results["sweep_config"], out / "sweep_config.png")
    if results["family"] is not None:
        plot_family(results["family"], out / "sweep_family.png")


def known_size(results: dict) -> str:
    """The size the report measured, registered in this process if it was a checkpoint's (a
    report.json rendered again by `report --from` where the checkpoint was never read)."""
    model = results.get("model") or {"size": DEFAULT_SIZE}
    size = model["size"]
    if size not in SIZES and model.get("checkpoint"):
        register_size(size, model["size_fields"], model["checkpoint"])
    return size


def shown(name: str) -> str:
    """A variant as the report's tables show it, without the size (the header states it):
    'ln-eps@gpt2-124m' -> 'ln-eps', 'rope@my-gpt2-1a2b/ort-opt' -> 'rope/ort-opt'."""
    variant, _, rest = name.partition("@")
    return variant + ("/" + rest.partition("/")[2] if "/" in rest else "")


def _family_steps(results: dict) -> list[dict]:
    """The family's decode steps, baseline's read from the decode section (measured once)."""
    first = results["threads"][0]
    base = [
        r
        for r in results["decode"]["steps"]
        if r["variant"] == results["compare"].get("baseline", "baseline")
        and r["threads"] == first
        and r["batch"] == 1
        and r["runtime"] in HEADLINE
    ]
    return base + results["family_decode"]


def header_section(results: dict) -> list[str]:
    from .lines import gemm_sentence

    m = results["machine"]
    isa = ", ".join(m["isa"]) or "none of AVX2/AVX-512/VNNI/BF16/AMX"
    return [
        "# pipeline report\n",
        f"Measured on {m['cpu']} ({m['cores_physical']} physical cores; ISA: {isa}), torch "
        f"{m['versions'].get('torch')}, onnxruntime {m['versions'].get('onnxruntime')}. Here {gemm_sentence(m)}. "
        "Which runtime wins depends on these rates, which differ between CPUs of one kind: a verdict here holds "
        "for this machine. All numbers come from `report.json` beside this file; latencies are medians (p50) "
        "of runs interleaved between runtimes. `ort` is the portable ONNX file (standard ops), `ort-opt` the "
        "ORT-optimised one (fused causal attention).\n",
    ] + _model_lines(results.get("model"))


def _model_lines(model: Optional[dict]) -> list[str]:
    """Which model was measured: the spec's, a named size, or the user's checkpoint."""
    if not model or model["size"] == DEFAULT_SIZE:
        return ["Model: the spec's (tiny) configuration with the weights given.\n"]
    cfg = model["config"]
    shape = (
        f"{cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads, vocabulary "
        f"{cfg['vocab_size']}, context {cfg['max_seq_len']}"
    )
    if model.get("checkpoint"):
        return [
            f"Model: {model['checkpoint']} ({shape}); every variant applies its change to this "
            "checkpoint's config, and lengths stop at its context. Its variants are named without "
            f"the size `@{model['size']}` below. The config sweep varies the spec's configuration "
            "with random weights, as for the spec's model.\n"
        ]
    return [f"Model: size `{model['size']}` ({shape}).\n"]


def memory_section(memory: dict) -> list[str]:
    from ..measure.memory import MB, explain

    return [
        "## RAM and parameter count\n",
        " ".join(explain(memory)) + "\n",
        markdown_table(
            ["phase", "RSS change (MiB)"], [[k, v / MB] for k, v in memory["deltas_bytes"].items()]
        )
        + "\n",
    ]


def _by_point(records: list[dict]) -> dict:
    return {(r["runtime"], r["threads"], r["seq_len"]): r for r in records}


def _speedup_index(results: dict) -> dict:
    return {
        (r["runtime"], r["threads"], r["seq_len"]): r["speedup"]
        for r in results["bench"]["speedups_vs_torch"]
    }


def _exact_runtimes(records: list[dict]) -> list[str]:
    """The runtimes in the records that compute fp32 logits, torch first (registry order)."""
    from ..runtime.registry import RUNTIMES

    present = {r["runtime"] for r in records}
    return [name for name, rt in RUNTIMES.items() if name in present and rt.exact]


def latency_section(results: dict) -> list[str]:
    records, threads = results["bench"]["records"], results["threads"]
    seq_lens = sorted({r["seq_len"] for r in records})
    by, sp = _by_point(records), _speedup_index(results)
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
        + [min(exact, key=lambda rt: by[(rt, t, s)]["p50_ms"])]
        + [f"{by[(rt, t, s)]['peak_share']:.0%}" for rt in exact]
        for t in threads
        for s in seq_lens
    ]
    best = max((r for r in records if r["runtime"] in exact), key=lambda r: r["peak_share"])
    md = [
        "## Latency: every runtime side by side\n",
        "![latency vs sequence length](bench.png)\n",
        markdown_table(headers, rows) + "\n",
        "FLOPs count causal attention as the S(S+1)/2 query-key pairs it needs, not the full square; each "
        "runtime's share is of its own library's 1024³ GEMM rate (see the top). The forward closest to its "
        f"limit ran at {best['gflops']:.0f} GFLOP/s ({best['runtime']}, {best['threads']} intra-op "
        f"thread{'s' * (best['threads'] > 1)}, S={best['seq_len']}), {best['peak_share']:.0%} of that rate.\n",
        bound_text(
            results["bench"]["profile"],
            results["machine"]["gemm_gflops"]["onnxruntime"]["1"],
            results["compare"].get("baseline", "baseline"),
        ),
    ]
    md += _speedup_bullets(results["bench"]["speedups_vs_torch"], others, results["machine"])
    if len(threads) > 1:
        t1, tn = threads[0], threads[-1]
        gains = {s: by[(FAST, t1, s)]["p50_ms"] / by[(FAST, tn, s)]["p50_ms"] for s in seq_lens}
        md += [
            f"- Threads: with {tn} intra-op threads `{FAST}` runs {gains[seq_lens[0]]:.2f}x as fast as with {t1} "
            f"at S={seq_lens[0]} and {gains[seq_lens[-1]]:.2f}x at S={seq_lens[-1]}: a few tokens are dominated "
            "by per-op overhead and thread hand-offs that more threads cannot split, long inputs by matmuls that "
            "split well."
        ]
    return md + [""]


def _speedup_bullets(speedups: list[dict], runtimes: list[str], machine: dict) -> list[str]:
    from ..measure.harness import geomean

    md = []
    for rt in runtimes:
        mine = [r for r in speedups if r["runtime"] == rt]
        slower = [r for r in mine if r["speedup"] < 1]
        md += [
            f"- `{rt}`: geometric-mean speed-up over eager {REFERENCE} {geomean(r['speedup'] for r in mine):.2f}x; "
            + (
                "as fast or faster at every point measured."
                if not slower
                else "slower at "
                + ", ".join(
                    f"{r['threads']} thread(s), S={r['seq_len']} ({r['speedup']:.2f}x)"
                    for r in slower
                )
                + "."
            )
        ]
    rates = machine["gemm_gflops"]
    for lib in (lib for lib in rates if lib != "onnxruntime"):
        ratios = ", ".join(
            f"{float(g) / float(rates['onnxruntime'][t]):.2f}x ORT's on {t} thread{'s' * (int(t) > 1)}"
            for t, g in rates[lib].items()
        )
        md += [
            f"- Why: {lib}'s 1024³ GEMM runs at {ratios} here. The long inputs are matmul-bound, so the "
            "runtime on the faster GEMM library wins them on this machine; on a CPU where the rates compare "
            "the other way the verdict turns."
        ]
    return md


def int8_section(results: dict) -> list[str]:
    int8, records, threads = results["int8"], results["bench"]["records"], results["threads"]
    seq_lens = sorted({r["seq_len"] for r in records})
    by, sp = _by_point(records), _speedup_index(results)
    rows = [
        [
            t,
            s,
            by[(FAST, t, s)]["p50_ms"],
            by[(QUANTIZED, t, s)]["p50_ms"],
            by[(FAST, t, s)]["p50_ms"] / by[(QUANTIZED, t, s)]["p50_ms"],
            sp[(QUANTIZED, t, s)],
        ]
        for t in threads
        for s in seq_lens
    ]
    return [
        "### int8 dynamic quantisation (`ort-int8`, baseline)\n",
        "The ORT-optimised graph with its weight matmuls quantised to int8 (activations quantised per call). "
        f"Against fp32 eager torch over the {int8['positions']} example positions: top-1 agreement "
        f"{int8['top1_agreement_pct']:.1f}%, mean KL {int8['kl_mean']:.2g} (max {int8['kl_max']:.2g}), relative "
        f"L2 error {int8['rel_l2_error']:.2g}, max abs diff {int8['max_abs_diff']:.3g}. Its work is int8, so no "
        "share of the fp32 GEMM rate is given.\n",
        markdown_table(
            [
                "threads",
                "S",
                "ort-opt p50 ms",
                "ort-int8 p50 ms",
                "int8 speed-up vs ort-opt",
                "torch/ort-int8",
            ],
            rows,
        )
        + "\n",
    ]


def length_section(seq: dict, full: bool) -> list[str]:
    from ..measure.sweep import SEQ_LENS

    md = [
        "## What affects latency\n",
        "### Input length\n",
        "![latency vs length](sweep_seq.png)\n",
        (
            f"The {len(seq['seq_lens'])} lengths of a dense sweep, {seq['threads']} thread, fitted by least squares:\n"
            if full
            else f"The bench's own points above ({seq['threads']} thread, S = "
            f"{', '.join(map(str, seq['seq_lens']))}), fitted by least squares; `pipeline report --full` measures "
            f"{len(SEQ_LENS)} lengths:\n"
        ),
    ]
    smax = seq["seq_lens"][-1]
    for rt, f in seq["fits"].items():
        quad = f["c_ms_per_token2"] * smax**2
        total = f["a_ms"] + f["b_ms_per_token"] * smax + quad
        md += [
            f"- `{rt}`: t(S) = {f['a_ms']:.2f} ms + {f['b_ms_per_token'] * 1e3:.2f} µs·S + "
            f"{f['c_ms_per_token2'] * 1e6:.3f} ns·S² (R² {f['r2']:.3f}); at S={smax} the quadratic term is "
            f"{_pct(quad / total)} of the latency."
        ]
    return md + [
        "\nThe sequence length is the input characteristic that matters: the projections and MLP are "
        "linear in S (every token goes through them), attention's QK^T and softmax·V are quadratic in S, "
        "and a fixed per-call overhead dominates at a handful of tokens. The token values themselves do "
        "not change the work.\n"
    ]


def config_section(config: dict) -> list[str]:
    from ..measure.sweep import LABELS

    runtimes = config["runtimes"]
    md = [
        "### Config parameters\n",
        f"One parameter at a time around the spec point, S={config['seq_len']}, "
        f"{config['threads']} thread; slope = d log(latency) / d log(parameter)"
        + (
            ".\n"
            if PORTABLE in runtimes
            else "; eager torch only (each ORT point needs a fresh export: `pipeline report --full` adds them).\n"
        ),
        "![latency vs config](sweep_config.png)\n",
    ]
    rows = [
        [LABELS[param], ", ".join(str(x["value"]) for x in r["rows"])]
        + [r["slopes"][rt] for rt in runtimes]
        + [r["flop_slope"], _scaling_word(max(r["slopes"].values()))]
        for param, r in config["params"].items()
    ]
    return md + [
        markdown_table(
            ["param", "values"] + [f"{rt} slope" for rt in runtimes] + ["FLOP slope", "effect"],
            rows,
        )
        + "\n"
    ]


def decode_section(results: dict) -> list[str]:
    from ..measure.decode import E2E_HEADERS, STEP_HEADERS, decode_rows
    from ..runtime.registry import get_runtime
    from .lines import decode_lines

    decode = {**results["decode"], "machine": results["machine"]}
    text = {**decode_rows(decode)}
    text["lines"] = decode_lines({**decode, **text})
    return [
        "## Generation with a KV cache\n",
        "One decode step (one new token per row, batch 1) at each cache length, the runtimes taking turns in "
        "short bursts: "
        + "; ".join(f"`{rt}`, {get_runtime(rt).step_description}" for rt in decode["runtimes"])
        + ".\n",
        markdown_table(
            STEP_HEADERS,
            text["step_rows"],
        )
        + "\n",
        f"Whole greedy generations of {decode['new_tokens']} tokens from a 32-token prompt (time to first "
        "token, then tokens/s of the rest; total is the generation itself, without loading):\n",
        markdown_table(
            E2E_HEADERS,
            text["e2e_rows"],
        )
        + "\n",
        "\n".join(f"- {line}" for line in text["lines"]) + "\n",
    ]


def variants_section(compare: dict) -> list[str]:
    from ..measure.compare import compare_tables

    acc_h, acc_rows, lat_h, lat_rows = compare_tables(compare)
    md = [
        "## Architecture changes\n",
        f"Each variant against baseline on the {len(compare['example_lengths'])} example inputs "
        f"({sum(compare['example_lengths'])} positions); KL is KL(p_baseline || p_variant) of the next-token "
        "distributions per position.\n",
        markdown_table(acc_h, acc_rows) + "\n",
        f"Latency, {compare['threads']} thread, all variants interleaved:\n",
        markdown_table(lat_h, lat_rows) + "\n",
    ]
    baseline = compare.get("baseline", "baseline")
    for row in compare["rows"]:
        if row["variant"] == baseline:
            continue
        ratios = [v for k, v in row.items() if k.startswith("ratio ")]
        lo, hi = min(ratios), max(ratios)
        effect = (
            "no latency effect beyond noise"
            if hi < 1.05 and lo > 0.95
            else f"latency ratios {lo:.2f}x to {hi:.2f}x of baseline"
        )
        md += [
            f"- **{shown(row['variant'])}** ({row['description']}): {_logit_word(row)} (relative L2 "
            f"error {row['rel_l2_error']:.2g}, top-1 agreement {row['top1_agreement_pct']:.1f}%, mean "
            f"KL {row['kl_mean']:.3g}); {effect} here. Work: "
            f"{potential(row['variant'], baseline=baseline)}"
        ]
    return md
