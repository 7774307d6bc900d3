"""bench --mode prefill: a prompt's forward in each candidate graph against its FLOP bound."""

from __future__ import annotations

import click

from ..options import progress
from . import BenchRequest


def run(request: BenchRequest) -> dict:
    from ...measure.prefill import PREFILL_HEADERS, PrefillPlan, bench_prefill, prefill_rows
    from ...table import text_table

    data = {"runs": []}
    for variant in request.variants:
        for threads in request.threads:
            plan = PrefillPlan(
                variant, tuple(request.seq_lens), threads, request.repeat, request.warmup
            )
            with progress(len(plan.seq_lens), f"prefill, {variant}, {threads} thread(s)") as tick:
                result = bench_prefill(request.workspace, plan, on_point=lambda n: tick(f"S={n}"))
            click.echo(text_table(PREFILL_HEADERS, prefill_rows(result)))
            for name, text in result["notes"].items():
                click.echo(f"{name}: {text}")
            data["runs"].append(result)
    return data
