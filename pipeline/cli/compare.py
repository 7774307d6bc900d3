"""pipeline compare"""

from __future__ import annotations

from pathlib import Path

import click

from ..fileio import check_writable_file, json_text, write_text_atomic
from ..runtime.registry import ALIASES, resolve_runtimes
from .app import cli
from .options import (
    VARIANT_HELP,
    check_threads,
    examples_opt,
    out_opt,
    sized,
    steps,
    variant_names,
    weights_opt,
    workspace,
)


@cli.command()
@sized
@click.option("--variant", default="all", show_default=True, help=VARIANT_HELP)
@click.option(
    "--runtime",
    default="torch,ort,ort-opt",
    show_default=True,
    help="comma-separated runtimes the latency is measured in, 'ort' (both ORT files) or 'all'",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="intra-op threads for the latency comparison",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=15,
    show_default=True,
    help="timed rounds per length (the variants take turns)",
)
@weights_opt
@examples_opt
@out_opt
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write the comparison as JSON",
)
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write its tables as Markdown",
)
def compare(
    variant, runtime, threads, repeat, weights, examples, out_dir, json_path, md_path
) -> None:
    """Each variant against baseline: logit distances, KL, top-1 agreement, latency ratios."""
    from ..measure.compare import compare_tables, compare_variants
    from ..table import markdown_table, text_table

    check_threads([threads])
    names = variant_names(variant)
    runtimes = resolve_runtimes(runtime, "forward", ALIASES["forward"])
    check_writable_file(json_path, "--json")
    check_writable_file(md_path, "--markdown")
    result = compare_variants(
        workspace(out_dir, weights),
        names,
        examples,
        runtimes=runtimes,
        threads=threads,
        repeat=repeat,
        on_step=steps("compare"),
    )
    acc_h, acc_rows, lat_h, lat_rows = compare_tables(result)
    click.echo(text_table(acc_h, acc_rows))
    click.echo()
    click.echo(text_table(lat_h, lat_rows))
    if json_path:
        write_text_atomic(json_path, json_text(result))
    if md_path:
        write_text_atomic(
            md_path,
            markdown_table(acc_h, acc_rows) + "\n\n" + markdown_table(lat_h, lat_rows) + "\n",
        )
