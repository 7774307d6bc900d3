"""bench --mode attention: one causal attention in every candidate route against torch's SDPA."""

from __future__ import annotations

import click

from ...errors import PipelineError
from ..options import progress
from . import BenchRequest


def run(request: BenchRequest) -> dict:
    names, thread_list, lens = request.variants, request.threads, request.seq_lens
    repeat, max_seconds = request.repeat, request.max_seconds
    from ...config import get_variant
    from ...measure.attention import bench_attention
    from ...table import text_table

    if len(names) != 1:
        raise PipelineError("--mode attention: give one variant (its attention shape is measured)")
    with progress(len(thread_list) * len(lens), "attention routes") as advance:
        data = bench_attention(
            get_variant(names[0]).config, thread_list, lens, repeat, max_seconds, on_point=advance
        )
    from ...report.lines import attention_lines

    data["lines"] = attention_lines(data)
    click.echo(text_table(data.pop("headers"), data.pop("rows")))
    for line in data["lines"]:
        click.echo(line)
    return data
