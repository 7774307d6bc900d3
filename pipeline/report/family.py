"""The report's attention-family section: each member's work and latency against baseline's,
where a window turns attention linear, and the latency-vs-S fits (`report --full`)."""

from __future__ import annotations

from typing import Optional

from ..config import DEFAULT_SIZE, get_variant, sized_name
from ..table import markdown_table
from .collect import HEADLINE
from .words import shown


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
    for name in (n for n in _family(size) if n in rows_by):  # the members the report compared
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
    for name in (n for n in _family(size) if n in rows_by):
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


def family_steps(results: dict) -> list[dict]:
    """The family's decode steps, all from the family's own phase (a record from before that
    phase measured baseline too takes baseline's from the decode section)."""
    baseline = results["compare"].get("baseline", "baseline")
    if any(r["variant"] == baseline for r in results["family_decode"]):
        return results["family_decode"]
    first = results["threads"][0]
    base = [
        r
        for r in results["decode"]["steps"]
        if r["variant"] == baseline
        and r["threads"] == first
        and r["batch"] == 1
        and r["runtime"] in HEADLINE
    ]
    return base + results["family_decode"]
