"""pipeline all: the main job (workflow.py), printed as it goes."""

from __future__ import annotations

import sys
import time

import click

from ..fileio import check_writable_dir
from .app import cli
from .options import examples_opt, out_opt, progress, steps, text_file_opt, weights_opt, workspace
from .verify import check_text_file, show_checks, show_text_quality


@cli.command(name="all")
@click.option(
    "--full",
    is_flag=True,
    help="the full report: dense sweeps, ORT in the config sweep, the attention "
    "family's latency vs S, more repeats",
)
@weights_opt
@examples_opt
@out_opt
@text_file_opt(
    "also score every variant's full forward (torch, ort, ort-opt, ort-int8, ort-int4) on "
    "this UTF-8 text as `pipeline eval` does (perplexity change, KL, top-1); the report holds "
    "the baseline's table and plot",
)
def all_(full, weights, examples, out_dir, text_file) -> None:
    """The main job: export (full forward in both flavours, fused decoder) and verify every variant, check generation
    in onnxruntime-genai, then bench and report (durations recorded in README.md)."""
    from ..check.genai import agreement_line
    from ..check.verify import DEFAULT_TOLERANCE
    from ..config import VARIANTS
    from ..runtime.registry import text_runtimes
    from ..workflow import FLAVOURS, export_all, measure_and_report, verify_all

    check_writable_dir(out_dir)
    start = time.perf_counter()
    ws = workspace(out_dir, weights)
    check_text_file(text_file, ws)
    with progress(len(VARIANTS) * len(FLAVOURS), "exporting") as advance:
        names = export_all(ws, advance)
    with progress(len(names), "verifying") as advance:
        verified = verify_all(ws, names, examples, advance)
    show_checks(verified.checks, verified.notes, DEFAULT_TOLERANCE)
    click.echo(agreement_line(verified.genai))
    if text_file is not None:
        show_text_quality(ws, names, text_runtimes(), text_file)
    _artifacts(out_dir)
    if not verified.passed:
        click.echo(f"verification failed after {time.perf_counter() - start:.0f} s", err=True)
        sys.exit(1)
    path, results = measure_and_report(ws, examples, full, on_step=steps("report"),
                                       text_file=text_file)  # fmt: skip
    _short_bench(results)
    click.echo(f"\nreport: {path}")
    click.echo(f"done in {time.perf_counter() - start:.0f} s")


def _artifacts(out_dir) -> None:
    from ..export import read_manifest

    click.echo("\nartifacts:")
    for name, entry in sorted(read_manifest(out_dir)["artifacts"].items()):
        v = entry.get("verification", {})
        size, opset = (
            entry.get("size_bytes"),
            entry.get("opset", "?"),
        )  # a hand-edited entry may lack them
        shown = f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) else "size unknown"
        click.echo(
            f"  {out_dir / name}  {shown}  opset {opset}  "
            f"verified: {'pass' if v.get('passed') else 'FAIL' if v else 'not yet'}"
        )


def _short_bench(results: dict) -> None:
    from ..measure.forward import Record, bench_table
    from ..measure.stability import stability_lines
    from ..report.lines import speedup_lines
    from ..table import text_table

    records = [Record.from_dict(r) for r in results["bench"]["records"]]
    click.echo("\nshort benchmark (baseline):")
    click.echo(text_table(*bench_table(records)))
    for line in speedup_lines(records) + stability_lines(results.get("stability")):
        click.echo(line)
