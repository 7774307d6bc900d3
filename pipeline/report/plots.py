"""Every plot the bench, the sweeps and the report draw, from their records (measuring nothing)."""

from __future__ import annotations

import numpy as np

from ..measure.forward import Record
from ..measure.sweep import LABELS
from ..runtime.registry import get_runtime


def plot_latency(records: list[Record], path) -> None:
    """Latency vs sequence length, one line per runtime and thread count (log-log), per variant."""
    from ..fileio import pyplot, save_png

    plt = pyplot()
    variants = sorted({r.variant for r in records}, key=[r.variant for r in records].index)
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4.2), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        keys = sorted({(r.runtime, r.threads) for r in records if r.variant == variant})
        for runtime, n_threads in keys:
            pts = sorted(
                (r.seq_len, r.p50_ms, r.p90_ms)
                for r in records
                if (r.variant, r.runtime, r.threads) == (variant, runtime, n_threads)
            )
            xs, p50, p90 = zip(*pts)
            (line,) = ax.plot(
                xs,
                p50,
                marker="o",
                label=f"{runtime}, {n_threads} thread{'s' * (n_threads > 1)}",
                linestyle="-" if "reference" in get_runtime(runtime).roles else "--",
            )
            ax.fill_between(xs, p50, p90, color=line.get_color(), alpha=0.15)
        bad = [r for r in records if r.variant == variant and not r.stable]
        if bad:  # kept, but not to be read as a measurement of the model
            ax.scatter([r.seq_len for r in bad], [r.p50_ms for r in bad], s=120, marker="x",
                       color="red", zorder=3, label="unstable point (busy machine)")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("forward latency, p50 ms (band: p90)")
        ax.set_title(variant)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_family(result: dict, path) -> None:
    from ..fileio import pyplot, save_png

    plt = pyplot()
    runtimes = sorted({k.split("/")[1] for k in result["p50_ms"]})
    fig, axes = plt.subplots(1, len(runtimes), figsize=(6 * len(runtimes), 4.2), squeeze=False)
    for ax, rt in zip(axes[0], runtimes):
        for key, ms in result["p50_ms"].items():
            if key.endswith("/" + rt):
                ax.plot(result["seq_lens"], ms, "o-", label=key.split("/")[0])
        ax.set_xlabel("sequence length S (tokens)")
        ax.set_ylabel(f"forward latency, p50 ms ({result['threads']} thread)")
        ax.set_title(f"attention family, {rt}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_seq(result: dict, path) -> None:
    from ..fileio import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = np.asarray(result["seq_lens"], float)
    dense = np.linspace(s.min(), s.max(), 200)
    for rt, ms in result["p50_ms"].items():
        f = result["fits"][rt]
        (line,) = ax.plot(s, ms, "o", label=f"{rt} (measured p50)")
        ax.plot(
            dense,
            f["a_ms"] + f["b_ms_per_token"] * dense + f["c_ms_per_token2"] * dense**2,
            "-",
            color=line.get_color(),
            alpha=0.7,
            label=f"{rt} fit: {f['a_ms']:.2f} + {f['b_ms_per_token'] * 1e3:.1f}e-3 S"
            f" + {f['c_ms_per_token2'] * 1e6:.2f}e-6 S²",
        )
    ax.set_xlabel("sequence length S (tokens)")
    ax.set_ylabel(f"forward latency, ms ({result['threads']} thread)")
    ax.set_title("Latency vs input length, baseline")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def plot_config(result: dict, path) -> None:
    from ..fileio import pyplot, save_png

    plt = pyplot()

    params = list(result["params"])
    cols = 3
    rows = (len(params) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, param in zip(axes.flat, params):
        r = result["params"][param]
        xs = [row["value"] for row in r["rows"]]
        for rt in r["slopes"]:
            ax.plot(
                xs,
                [row["p50_ms"][rt] for row in r["rows"]],
                "o-",
                label=f"{rt} (slope {r['slopes'][rt]:.2f})",
            )
        ax.axvline(r["spec_value"], color="grey", linestyle=":", label="spec value")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        # at least a factor 4 on the axis: a flat line's few-percent noise must not look like a peak
        ys = [row["p50_ms"][rt] for row in r["rows"] for rt in r["slopes"]]
        ax.set_ylim(min(ys) / 2, max(ys) * 2)
        ax.set_title(f"{LABELS[param]} (FLOP slope {r['flop_slope']:.2f})")
        ax.set_xlabel(LABELS[param])
        ax.set_ylabel("p50 ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    fig.suptitle(f"Latency vs config parameter, S={result['seq_len']}, {result['threads']} thread")
    fig.tight_layout()
    save_png(fig, path)


def plot_quality(runtimes: list[dict], path, title: str = "") -> None:
    """Quality against speed, one point per runtime: the perplexity change against the
    reference (eval's records) over tokens scored per second."""
    from ..fileio import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "perplexity_change_pct", "perplexity vs reference, %"),
                           (axes[1], "kl_mean", "mean KL(reference || runtime)")):  # fmt: skip
        for r in runtimes:
            ax.scatter(r["tokens_per_s"], r[key], s=50)
            ax.annotate(r["runtime"], (r["tokens_per_s"], r[key]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)  # fmt: skip
        ax.set_xlabel("tokens scored per second (whole windows)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def plot_recipes(data: dict, path) -> None:
    """Each weight recipe's KL on each trained checkpoint over its decode speed against float32
    (scripts/measure_int4_recipes.py's record), the speed goal as a line, the chosen one marked."""
    from ..fileio import pyplot, save_png

    plt = pyplot()
    checkpoints = data["checkpoints"]
    speed, verdict = data["speed"]["rows"], data["verdict"]
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(5.5 * len(checkpoints), 4.4))
    for ax, (name, record) in zip(np.atleast_1d(axes), checkpoints.items()):
        for recipe, row in record["rows"].items():
            if recipe not in speed:
                continue  # the runtimes scored beside the recipes (ort-opt, ort-int8)
            x, y = speed[recipe]["x_fp32"], row["kl_mean"]
            chosen = recipe == verdict["chosen"]
            ax.scatter(x, y, s=70 if chosen else 40, marker="*" if chosen else "o",
                       color="tab:red" if chosen else "tab:blue")  # fmt: skip
            ax.annotate(recipe, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axvline(verdict["goal"]["x_fp32_at_least"], color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"decode step speed vs float32 at {data['speed']['size']} (log)")
        ax.set_ylabel("mean KL(reference || recipe) on held-out text")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"weight recipes: quality against speed (chosen: {verdict['chosen']})")
    fig.tight_layout()
    save_png(fig, path)
