"""pipeline bench"""

from __future__ import annotations

from pathlib import Path

import click

from ..config import get_variant
from ..errors import PipelineError
from ..fileio import check_writable_file, json_text, write_text_atomic
from ..resources import check_memory
from ..runtime.registry import ALIASES, RUNTIMES, resolve_runtimes
from .app import cli
from .options import (
    VARIANT_HELP,
    int_list,
    max_seq_len,
    out_opt,
    progress,
    sized,
    thread_counts,
    variant_names,
    weights_opt,
    workspace,
)

RUNTIME_HELP = (
    "comma-separated runtimes (" + ", ".join(RUNTIMES) + "), 'ort' (both ORT files), 'all' (every "
    "default runtime of the mode) or 'all+int8'"
)


@cli.command()
@sized
@click.option(
    "--mode",
    type=click.Choice(["forward", "decode", "attention"]),
    default="forward",
    show_default=True,
    help="forward: whole sequences; decode: one generation step at a cache length, and whole generations; "
    "attention: one causal attention, every candidate route (MultiHeadAttention, GroupQueryAttention, "
    "Attention-23, query-blocked) against torch's SDPA",
)
@click.option("--runtime", default="all", show_default=True, help=RUNTIME_HELP)
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@click.option(
    "--threads",
    default=None,
    help="comma-separated intra-op thread counts (default: 1..physical cores)",
)
@click.option("--seq-lens", default="1,16,128,512,1024", show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--max-seconds",
    type=float,
    default=4.0,
    show_default=True,
    help="per point and runtime group: stop repeating after this (at least 5 rounds)",
)
@weights_opt
@out_opt
@click.option(
    "--batch",
    "batches",
    default=None,
    help="batch size (forward: one, default 1; decode: comma-separated, default 1,8)",
)
@click.option(
    "--past-lens", default="0,128,512,1000", show_default=True, help="decode: cache lengths"
)
@click.option(
    "--new-tokens",
    type=click.IntRange(min=2),
    default=256,
    show_default=True,
    help="decode: tokens per whole generation (from a 32-token prompt)",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None)
def bench(
    mode,
    runtime,
    variant,
    threads,
    seq_lens,
    warmup,
    repeat,
    max_seconds,
    weights,
    out_dir,
    batches,
    past_lens,
    new_tokens,
    json_path,
    csv_path,
    plot_path,
) -> None:
    """Latency per runtime, variant, thread count and sequence length (or decode speed)."""
    thread_list = thread_counts(threads)
    lens = int_list(seq_lens, "--seq-lens")
    for path, option in ((json_path, "--json"), (csv_path, "--csv"), (plot_path, "--plot")):
        check_writable_file(path, option)
    names = variant_names(variant)
    if max(lens) > max_seq_len(names):
        raise PipelineError(
            f"--seq-lens: {max(lens)} is more than the model's {max_seq_len(names)} tokens"
        )
    ws = workspace(out_dir, weights)
    if mode == "attention":
        data = _attention(names, thread_list, lens, repeat, max_seconds)
    elif mode == "decode":
        runtimes = resolve_runtimes(runtime, "decoder", ALIASES["decoder"])
        batch_list = int_list(batches, "--batch") if batches is not None else [1, 8]
        pasts = int_list(past_lens, "--past-lens", minimum=0)
        data = _decode(ws, names, runtimes, thread_list, batch_list, pasts, repeat, new_tokens)
    else:
        runtimes = resolve_runtimes(runtime, "forward", ALIASES["forward"])
        batch = int_list(batches, "--batch") if batches is not None else [1]
        if len(batch) != 1:
            raise PipelineError("--batch: give one batch size in forward mode")
        data = _forward(
            ws,
            runtimes,
            names,
            thread_list,
            lens,
            warmup,
            repeat,
            max_seconds,
            batch[0],
            csv_path,
            plot_path,
        )
    if json_path:
        write_text_atomic(json_path, json_text(data))
    for path in (json_path, csv_path, plot_path):
        if path:
            click.echo(f"wrote {path}")


def _forward(
    ws, runtimes, names, thread_list, lens, warmup, repeat, max_seconds, batch, csv_path, plot_path
):
    from ..measure.forward import ForwardPlan, bench_forward, bench_table, records_csv
    from ..report.plots import plot_latency
    from ..table import text_table

    check_memory(
        max(get_variant(n).config.forward_peak_bytes(max(lens), batch) for n in names),
        f"--batch {batch} at {max(lens)} tokens",
        "use a smaller --batch or shorter --seq-lens",
    )

    with progress(len(names) * len(thread_list) * len(lens), "benchmarking") as advance:
        plan = ForwardPlan(
            tuple(runtimes),
            tuple(names),
            tuple(thread_list),
            tuple(lens),
            warmup,
            repeat,
            max_seconds,
            batch,
        )
        records, data = bench_forward(
            ws, plan, on_point=lambda point: advance(f"S={point[0].seq_len}")
        )
    from ..report.lines import forward_lines

    data["lines"] = forward_lines(records, data)
    click.echo(text_table(*bench_table(records)))
    for line in data["lines"]:
        click.echo(line)
    if csv_path:
        write_text_atomic(csv_path, records_csv(records))
    if plot_path:
        plot_latency(records, plot_path)
    return data


def _decode(ws, names, runtimes, thread_list, batch_list, pasts, repeat, new_tokens):
    from ..measure.decode import E2E_HEADERS, E2E_REPEATS, STEP_HEADERS, DecodePlan, bench_decode
    from ..table import text_table

    longest = max(pasts) + 32 + new_tokens  # the whole generations' 32-token prompt
    check_memory(
        max(get_variant(n).config.kv_cache_bytes(longest, max(batch_list)) for n in names),
        f"--batch {max(batch_list)} with {longest}-token caches",
        "use a smaller --batch, --past-lens or --new-tokens",
    )

    points = len(names) * len(thread_list) * len(batch_list) * len(pasts)
    rounds = len(names) * len(thread_list) * (E2E_REPEATS + 1)
    with progress(points + rounds, "decode steps, then whole generations") as advance:
        plan = DecodePlan(
            tuple(names),
            tuple(runtimes),
            tuple(thread_list),
            tuple(batch_list),
            tuple(pasts),
            repeat,
            new_tokens,
        )
        data = bench_decode(
            ws,
            plan,
            on_point=lambda p: advance(
                f"steps at threads {p[0].threads}, batch {p[0].batch}, past {p[0].past_len}"
            ),
            on_round=lambda name: advance(f"{new_tokens}-token generations, {name}"),
        )
    from ..report.lines import decode_lines

    data["lines"] = decode_lines(data)
    click.echo(text_table(STEP_HEADERS, data["step_rows"]))
    click.echo()
    click.echo(
        text_table(
            E2E_HEADERS[:5] + [f"total s ({new_tokens} tokens)"] + E2E_HEADERS[6:], data["e2e_rows"]
        )
    )
    click.echo()
    for line in data["lines"]:
        click.echo(line)
    return data


def _attention(names, thread_list, lens, repeat, max_seconds):
    from ..config import get_variant
    from ..measure.attention import bench_attention
    from ..table import text_table

    if len(names) != 1:
        raise PipelineError("--mode attention: give one variant (its attention shape is measured)")
    with progress(len(thread_list) * len(lens), "attention routes") as advance:
        data = bench_attention(
            get_variant(names[0]).config, thread_list, lens, repeat, max_seconds, on_point=advance
        )
    click.echo(text_table(data.pop("headers"), data.pop("rows")))
    for line in data["lines"]:
        click.echo(line)
    return data
