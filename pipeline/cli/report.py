"""pipeline report"""

from __future__ import annotations

from pathlib import Path

import click

from ..fileio import check_writable_dir
from .app import cli
from .options import examples_opt, out_opt, steps, text_file_opt, weights_opt, workspace
from .verify import check_text_file


@cli.command()
@click.option(
    "--full",
    is_flag=True,
    help="the dense length sweep, ORT in the wide config sweep, the attention "
    "family vs S, more repeats",
)
@click.option(
    "--from",
    "from_json",
    type=click.Path(path_type=Path),
    default=None,
    help="re-render report.md and the plots from this report.json into --out, measuring nothing",
)
@weights_opt
@examples_opt
@out_opt
@text_file_opt(
    "also score the baseline's full-forward runtimes on this UTF-8 text as `pipeline eval` "
    "does: a table and a plot of quality against speed in the report",
)
def report(full, from_json, weights, examples, out_dir, text_file) -> None:
    """Measure memory, variants, a short bench and sweeps; write OUT/report.json, then OUT/report.md with plots."""
    from ..report import build_report, render_report
    from ..report.collect import Sizes

    if from_json is not None:
        # into --out, like every other output: rendering beside the JSON once replaced files in
        # the folder it was read from (docs/ in the repository) without a word
        path = render_report(from_json, check_writable_dir(out_dir))
        click.echo(f"wrote {path} (from {from_json})")
        return
    check_writable_dir(out_dir)
    ws = workspace(out_dir, weights)
    check_text_file(text_file, ws)
    path, _ = build_report(ws, examples, Sizes(full=full),
                           on_step=steps("report"), text_file=text_file)  # fmt: skip
    click.echo(f"wrote {path} (numbers in {path.with_suffix('.json')})")
