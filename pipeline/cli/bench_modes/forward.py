"""bench --mode forward: whole sequences in every runtime, interleaved per point."""

from __future__ import annotations

import click

from ...config import get_variant
from ...errors import PipelineError
from ...fileio import write_text_atomic
from ...resources import check_memory
from ...runtime.registry import ALIASES, resolve_runtimes
from ..options import int_list, progress
from . import BenchRequest


def run(request: BenchRequest) -> dict:
    ws, names, thread_list, lens = (
        request.workspace,
        request.variants,
        request.threads,
        request.seq_lens,
    )
    warmup, repeat, max_seconds = request.warmup, request.repeat, request.max_seconds
    csv_path, plot_path = request.csv_path, request.plot_path
    runtimes = resolve_runtimes(request.runtime, "forward", ALIASES["forward"])
    batches = int_list(request.batches, "--batch") if request.batches is not None else [1]
    if len(batches) != 1:
        raise PipelineError("--batch: give one batch size in forward mode")
    batch = batches[0]
    from ...measure.forward import ForwardPlan, bench_forward, bench_table, records_csv
    from ...report.plots import plot_latency
    from ...table import text_table

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
            ws,
            plan,
            on_point=lambda point: advance(
                f"{point[0].variant}, {point[0].threads} thread(s), S={point[0].seq_len}"
            ),
        )
    from ...report.lines import forward_lines

    data["lines"] = forward_lines(records, data)
    click.echo(text_table(*bench_table(records)))
    for line in data["lines"]:
        click.echo(line)
    if csv_path:
        write_text_atomic(csv_path, records_csv(records))
    if plot_path:
        plot_latency(records, plot_path)
    return data
