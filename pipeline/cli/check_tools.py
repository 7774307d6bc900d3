"""pipeline check-tools"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import PipelineError
from ..fileio import check_writable_file, json_text, write_text_atomic
from .app import cli
from .options import (
    VARIANT_HELP,
    PositiveFinite,
    int_list,
    max_seq_len,
    out_opt,
    sized,
    variant_names,
    weights_opt,
    workspace,
)


def _print_file(entry: dict) -> None:
    from ..table import text_table

    click.echo(f"\n{entry['file']} ({entry['flavour']}), compared with {entry['reference']}:")
    click.echo(
        text_table(
            [
                "tool",
                "version",
                "result",
                "worst |diff| vs reference",
                "worst |diff| vs ORT",
                "detail",
            ],
            [
                (
                    r["tool"],
                    r["version"] or "-",
                    r["status"],
                    r["worst_vs_reference"],
                    r["worst_vs_ort"],
                    r["detail"],
                )
                for r in entry["results"]
            ],
        )
    )


@cli.command(name="check-tools")
@sized
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@click.option(
    "--file",
    "files",
    type=click.Path(path_type=Path),
    multiple=True,
    help="check this .onnx file instead (repeatable); its recorded variant picks the reference "
    "(without --file: each variant's portable file, and its portable decoder where exported)",
)
@click.option(
    "--tool",
    "tool_names",
    default="all",
    show_default=True,
    help="comma-separated tools (onnxruntime, onnx.reference, openvino, tract, onnx2torch, "
    "onnxruntime-node) or 'all'",
)
@click.option(
    "--lengths",
    default=None,
    help="sequence lengths (slow tools stop at 300) [default: 1,17,300,1024, those the model has]",
)
@weights_opt
@out_opt
@click.option(
    "--tolerance", type=PositiveFinite(), default=1e-4, show_default=True, help="relative tolerance"
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write every tool's result as JSON",
)
def check_tools(
    variant, files, tool_names, lengths, weights, out_dir, tolerance, json_path
) -> None:
    """Run portable .onnx files in every installed ONNX tool at batch 1 and 2; compare the logits."""
    from ..check import tools

    chosen = tools.resolve_tools(tool_names)
    longest = max_seq_len(variant_names(variant))
    if lengths is None:
        lengths = ",".join(str(n) for n in (1, 17, 300, 1024) if n <= longest) or str(longest)
    lens = int_list(lengths, "--lengths")
    if max(lens) > longest:
        raise PipelineError(f"--lengths: {max(lens)} is more than the model's {longest} tokens")
    check_writable_file(json_path, "--json")
    ws = workspace(out_dir, weights)
    targets = [Path(f) for f in files] or tools.default_files(ws, variant_names(variant))
    report = tools.check_tools(ws, targets, chosen, lens, tolerance, on_file=_print_file)
    if json_path:
        write_text_atomic(json_path, json_text(report))
    click.echo(
        f"\nA tool matches when |diff| <= {tolerance:g} * max(1, max|reference|) at every batch and length; "
        f"'not installed' is not a failure."
    )
    if any(entry["failed"] for entry in report):
        sys.exit(1)
