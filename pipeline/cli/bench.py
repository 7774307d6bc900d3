"""pipeline bench"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PipelineError
from ..fileio import check_writable_file, json_text, write_text_atomic
from ..runtime.registry import RUNTIMES
from .app import cli
from .bench_modes import MODES, BenchRequest
from .options import (
    VARIANT_HELP,
    int_list,
    max_seq_len,
    out_opt,
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
    type=click.Choice(list(MODES)),
    default="forward",
    show_default=True,
    help="; ".join(f"{name}: {mode.help}" for name, mode in MODES.items()),
)
@click.option("--runtime", default="all", show_default=True, help=RUNTIME_HELP)
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@click.option(
    "--threads",
    default=None,
    help="comma-separated intra-op thread counts (default: 1..physical cores)",
)
@click.option(
    "--seq-lens",
    default="1,16,128,512,1024",
    show_default=True,
    help="comma-separated input lengths (forward, attention, prefill)",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="untimed calls per runtime before each point",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="timed rounds per point (the runtimes take turns each round)",
)
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
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write the records, the machine and the stability checks as JSON",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path),
    default=None,
    help="forward: write one row per point as CSV",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="forward: draw latency vs S as a PNG",
)
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
    request = BenchRequest(
        workspace(out_dir, weights),
        names,
        runtime,
        thread_list,
        lens,
        warmup,
        repeat,
        max_seconds,
        batches,
        past_lens,
        new_tokens,
        csv_path,
        plot_path,
    )
    data = MODES[mode].runner()(request)
    if json_path:
        write_text_atomic(json_path, json_text(data))
    for path in (json_path, csv_path, plot_path):
        if path:
            click.echo(f"wrote {path}")
