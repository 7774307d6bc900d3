"""pipeline memory"""

from __future__ import annotations

from pathlib import Path

import click

from ..fileio import check_writable_file, json_text, write_text_atomic
from .app import cli
from .options import out_opt, sized, weights_opt, workspace


@cli.command()
@sized
@click.option("--variant", default="baseline", show_default=True, help="the variant to measure")
@click.option(
    "--seq-len",
    type=click.IntRange(1, 1024),
    default=1024,
    show_default=True,
    help="the input length of the measured forward",
)
@weights_opt
@out_opt
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write the measurement as JSON",
)
def memory(variant, seq_len, weights, out_dir, json_path) -> None:
    """RAM: parameters and bytes, and measured RSS of torch and ORT (in a fresh interpreter)."""
    from ..config import get_variant
    from ..measure.memory import MB, explain, measure_memory
    from ..table import text_table

    get_variant(variant)
    check_writable_file(json_path, "--json")
    result = measure_memory(workspace(out_dir, weights), variant, seq_len)
    click.echo(text_table(["RSS", "MiB"], [[k, v / MB] for k, v in result["rss_bytes"].items()]))
    click.echo()
    click.echo(
        text_table(
            ["phase", "RSS change MiB"], [[k, v / MB] for k, v in result["deltas_bytes"].items()]
        )
    )
    click.echo()
    for line in explain(result):
        click.echo(line)
    if json_path:
        write_text_atomic(json_path, json_text(result))
