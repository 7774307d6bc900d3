"""pipeline all: the main job."""

from __future__ import annotations

import sys
import time

import click

from ..config import VARIANTS
from ..fileio import check_writable_dir
from .app import cli
from .options import examples_opt, out_opt, progress, steps, weights_opt, workspace
from .verify import run_verify

# the portable decoders (for ONNX tools other than ORT) are left to `pipeline export --decoder`:
# they trace slowest, and would take a fifth of the three minutes this command has
FLAVOURS = ("portable", "optimized", "decoder-optimized")
DECODER_STEPS = (
    64  # the decoders' last 64 positions one token per call (verify feeds half of each example)
)


@cli.command(name="all")
@click.option(
    "--full",
    is_flag=True,
    help="the full report: dense sweeps, ORT in the config sweep, the attention "
    "family's latency vs S, more repeats (about 4 minutes more)",
)
@weights_opt
@examples_opt
@out_opt
def all_(full, weights, examples, out_dir) -> None:
    """The main job: export (full forward in both flavours, fused decoder) and verify every variant, check generation
    in onnxruntime-genai, then bench and report (under three minutes on two cores)."""
    from ..check.genai import agreement_line, genai_agreement
    from ..check.reference import record_references
    from ..export.artifacts import export_artifacts

    check_writable_dir(out_dir)
    start = time.perf_counter()
    ws = workspace(out_dir, weights)
    names = [ws.sized(v) for v in VARIANTS]  # a checkpoint: every variant at its size
    with progress(len(names) * len(FLAVOURS), "exporting") as advance:
        export_artifacts(ws, names, FLAVOURS, genai=True, on_done=advance)
    record_references(ws, names, examples)
    ok = run_verify(
        ws, names, "torch,ort,ort-opt,ort-opt-decoder", examples, 1e-4, decoder_steps=DECODER_STEPS
    )
    agreement = genai_agreement(ws, names)
    click.echo(agreement_line(agreement))
    _artifacts(out_dir)
    if not ok or agreement["differ"]:
        click.echo(f"verification failed after {time.perf_counter() - start:.0f} s", err=True)
        sys.exit(1)
    _report(ws, examples, full)
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


def _report(ws, examples, full: bool) -> None:
    from ..measure.forward import Record, bench_table, speedup_lines
    from ..report import build_report
    from ..report.collect import Sizes
    from ..table import text_table

    path, results = build_report(ws, examples, Sizes(full=full), on_step=steps("report"))
    records = [Record.from_dict(r) for r in results["bench"]["records"]]
    click.echo("\nshort benchmark (baseline):")
    click.echo(text_table(*bench_table(records)))
    for line in speedup_lines(records):
        click.echo(line)
    click.echo(f"\nreport: {path}")
