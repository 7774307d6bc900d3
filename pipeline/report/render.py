"""The report's second step: report.json -> report.md and its plots, measuring nothing.

Every number is read from the results (collect.py); the prose around them is chosen by the
numbers (thresholds below), never typed in. One small function per section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import DEFAULT_SIZE, sizes_in_scope
from ..fileio import write_text_atomic
from ..table import markdown_table
from .collect import FAST, PORTABLE, QUANTIZED
from .family import family_section, family_steps
from .latency import bench_records, by_point, latency_section, speedup_index, stability_section
from .words import logit_word, pct, potential, scaling_word, shown


def render(results: dict, out_dir) -> Path:
    """report.md and its plots in out_dir, from the results alone (a checkpoint's size is known
    while rendering only: rendering changes no configuration)."""
    model = results.get("model") or {"size": DEFAULT_SIZE}
    size = model["size"]
    extra = {size: (model["size_fields"], model["checkpoint"])} if model.get("checkpoint") else {}
    with sizes_in_scope(extra):
        return _render(results, Path(out_dir), size)


def _render(results: dict, out: Path, size: str) -> Path:
    _plots(results, out)
    md = (
        header_section(results)
        + stability_section(results)
        + memory_section(results["memory"])
        + latency_section(results)
        + int8_section(results)
        + length_section(results["sweep_seq"], results["full"])
        + config_section(results["sweep_config"])
        + family_section(results["compare"], results["family"], family_steps(results), size)
        + decode_section(results)
        + quality_section(results.get("quality"))
        + variants_section(results["compare"])
        + ["", f"_Report generated in {results['seconds']:.0f} s._\n"]
    )
    path = out / "report.md"
    write_text_atomic(path, "\n".join(md))
    return path


def _plots(results: dict, out: Path) -> None:
    from .plots import plot_config, plot_family, plot_latency, plot_seq

    plot_latency(bench_records(results), out / "bench.png")
    plot_seq(results["sweep_seq"], out / "sweep_seq.png")
    plot_config(results["sweep_config"], out / "sweep_config.png")
    if results["family"] is not None:
        plot_family(results["family"], out / "sweep_family.png")
    if results.get("quality"):
        from .plots import plot_quality

        plot_quality(results["quality"]["runtimes"], out / "quality.png", "quality against speed")


def quality_section(quality: Optional[dict]) -> list[str]:
    """The baseline's runtimes on the user's text (report --text-file), as `pipeline eval`."""
    if not quality:
        return []
    from ..check.quality import quality_rows

    return [
        "## Quality on your text\n",
        f"`{quality['variant']}` on `{Path(quality['text_file']).name}`: {quality['tokens_scored']:,} "
        f"tokens in {quality['windows']} windows of {quality['window']} (stride {quality['stride']}), "
        "each scoring only its new tokens, against "
        f"{quality['reference']['note']}, 1 thread (`pipeline eval`'s method; docs/quality.md). "
        "KL and top-1 are the stricter figures: a perplexity change near zero can hide "
        "changed predictions.\n",
        markdown_table(*quality_rows(quality)),
        "",
        "![quality against speed](quality.png)\n",
    ]


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
        if not model or "weights" not in model:  # a record from before weights were recorded
            return ["Model: the spec's (tiny) configuration.\n"]
        if model["weights"] is None:
            return ["Model: the spec's (tiny) configuration with its supplied weights.\n"]
        return [f"Model: the spec's (tiny) configuration with the weights in {model['weights']}.\n"]
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


def int8_section(results: dict) -> list[str]:
    int8, records, threads = results["int8"], results["bench"]["records"], results["threads"]
    seq_lens = sorted({r["seq_len"] for r in records})
    by, sp = by_point(records), speedup_index(results)
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
            f"{pct(quad / total)} of the latency."
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
        + [r["flop_slope"], scaling_word(max(r["slopes"].values()), r["flop_slope"])]
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
    text = decode_rows(decode)
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


def latency_effect(lo: float, hi: float, variant: str, baseline: str) -> str:
    """A variant's latency ratios to baseline in words: an effect only when every ratio points
    the same way beyond 5%; ratios on both sides of 1 are noise, not an effect."""
    if hi < 1.05 and lo > 0.95:
        return "no latency effect beyond noise"
    if lo < 1 < hi:
        return (f"latency ratios {lo:.2f}x to {hi:.2f}x of baseline, on both sides of 1: this run's "
                "noise, not an effect of the change")  # fmt: skip
    return f"latency ratios {lo:.2f}x to {hi:.2f}x of baseline"


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
        effect = latency_effect(lo, hi, row["variant"], baseline)
        md += [
            f"- **{shown(row['variant'])}** ({row['description']}): {logit_word(row)} (relative L2 "
            f"error {row['rel_l2_error']:.2g}, top-1 agreement {row['top1_agreement_pct']:.1f}%, mean "
            f"KL {row['kl_mean']:.3g}); {effect} here. Work: "
            f"{potential(row['variant'], baseline=baseline)}"
        ]
    return md
