"""pipeline matmul"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..fileio import check_writable_file, json_text, write_text_atomic
from .app import cli


@cli.command()
@click.option("--n", type=click.IntRange(min=1), default=1024, show_default=True, help="rows of A")
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="columns of A, rows of B: the axis split across workers",
)
@click.option(
    "--m", type=click.IntRange(min=1), default=1024, show_default=True, help="columns of B"
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="worker processes (K slices)",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="element type of A, B and the product",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=0,
    show_default=True,
    help="seed of the random A and B",
)
@click.option(
    "--transport",
    type=click.Choice(["shm", "gloo"]),
    default="shm",
    show_default=True,
    help="combine partials in the caller (shm) or by torch.distributed all_reduce (gloo)",
)
@click.option("--check", is_flag=True, help="exit 1 if C is outside tolerance of the reference")
@click.option("--bench", "do_bench", is_flag=True, help="time it against single-process products")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="timed products",
)
@click.option(
    "--pin/--no-pin", default=True, show_default=True, help="pin each worker to its own core"
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write the timings and the check as JSON",
)
def matmul(
    n, k, m, workers, dtype, seed, transport, check, do_bench, repeat, pin, json_path
) -> None:
    """C = A B with K split across worker processes, each running an ONNX MatMul."""
    from ..parallel.bench import run_matmul
    from ..table import text_table

    check_writable_file(json_path, "--json")
    result = run_matmul(n, k, m, workers, dtype, seed, transport, pin, do_bench, repeat)
    chk = result["check"]
    click.echo(
        f"C = A[{n}x{k}] B[{k}x{m}] over {workers} workers (K splits {result['splits']}), {dtype}, {transport}"
    )
    click.echo(
        f"vs single-process ORT MatMul: max abs {chk['max_abs_vs_single']:.3g}, "
        f"max rel {chk['max_rel_vs_single']:.3g}, bitwise equal: {chk['bitwise_equal_single']}"
    )
    click.echo(
        f"vs float64 reference: max rel {chk['max_rel_vs_float64']:.3g} "
        f"(tolerance {chk['tolerance_rel']:g}): {'ok' if chk['passed'] else 'FAIL'}"
    )
    if do_bench:
        click.echo(
            "\n"
            + text_table(
                ["method", "p50 ms", "speed-up vs 1 thread", "efficiency"],
                [
                    (r["method"], r["p50_ms"], r["speedup"], r["efficiency"])
                    for r in result["bench"]
                ],
            )
        )
    if json_path:
        write_text_atomic(json_path, json_text(result))
    if check and not chk["passed"]:
        sys.exit(1)
