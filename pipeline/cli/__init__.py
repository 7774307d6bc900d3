"""`pipeline` command line: one module per command, each parsing its options and calling the
library; app.py holds the group and its one-line error handling."""

from . import (  # noqa: F401
    bench,
    check_tools,
    compare,
    evaluate,
    export,
    generate,
    infer,
    matmul,
    memory,
    report,
    run_all,
    sweep,
    verify,
)
from .app import cli


def main() -> None:
    cli(prog_name="pipeline")


__all__ = ["cli", "main"]
