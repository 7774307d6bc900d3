"""pipeline sweep"""

from __future__ import annotations

import click

from .app import cli
from .options import check_threads, out_opt, steps, weights_opt, workspace


@cli.command()
@click.option("--full", is_flag=True, help="wider config grid and more repeats")
@click.option(
    "--family",
    is_flag=True,
    help="instead: latency vs S of baseline, rope, gqa, sliding-window and rope-gqa-window in torch and "
    "ort-opt, with the fits that show the window's quadratic term vanish past W",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="intra-op threads",
)
@weights_opt
@out_opt
def sweep(full, family, threads, weights, out_dir) -> None:
    """Latency vs input length and vs each config parameter; PNG plots and JSON in OUT."""
    from ..measure.sweep import family_table, sweep_tables
    from ..report.sweeps import run_family, run_sweeps
    from ..table import text_table

    check_threads([threads])
    ws = workspace(out_dir, weights)
    if family:
        result = run_family(ws, threads, on_step=steps("length"))
        tables = [family_table(result)]
    else:
        result = run_sweeps(ws, full, threads, on_step=steps("sweep"))
        tables = sweep_tables(result)
    for headers, rows in tables:
        click.echo(text_table(headers, rows))
        click.echo()
    click.echo("wrote " + ", ".join(str(p) for p in result["files"]))
