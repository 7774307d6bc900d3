"""The command group and its error handling: bad input (and a failed worker) becomes one line on
stderr and exit 1 (2 for a bad option); --debug shows the traceback instead. ^C and SIGTERM end
in one line and exit 130 / 143."""

from __future__ import annotations

import sys

import click

from ..errors import PipelineError


class Cli(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from ..interrupts import InterruptGuard

        with InterruptGuard() as guard:
            self._guard = guard
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.exceptions.Abort:
                click.echo(guard.message, err=True)
                rv = guard.exit_code
            except click.ClickException as exc:
                # click's own three-line usage block, folded into one line that names the option
                hint = ""
                if isinstance(exc, click.UsageError) and exc.ctx is not None:
                    hint = f" (see '{exc.ctx.command_path} --help')"
                click.echo(f"error: {exc.format_message()}{hint}", err=True)
                rv = exc.exit_code
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        from ..parallel.kmatmul import WorkerError

        guard = getattr(self, "_guard", None)
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except BrokenPipeError:
            # the reader closed the pipe (`| head`): a normal end of the output, not an error;
            # stdout goes to /dev/null so the interpreter's last flush does not complain either
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)
        except (PipelineError, ValueError, OSError, WorkerError) as exc:
            if ctx.params.get("debug"):
                raise
            if (
                guard is not None and guard.signum is not None
            ):  # a library's wrapping of our interrupt
                click.echo(guard.message, err=True)
                ctx.exit(guard.exit_code)
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            click.echo(guard.message if guard else "interrupted", err=True)
            ctx.exit(guard.exit_code if guard else 130)
        except Exception:
            if guard is not None and guard.signum is not None and not ctx.params.get("debug"):
                click.echo(
                    guard.message, err=True
                )  # e.g. torch's exporter wrapping the KeyboardInterrupt
                ctx.exit(guard.exit_code)
            raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
def cli(debug: bool) -> None:
    """Export a GPT-2-like decoder to ONNX, verify it in ONNX Runtime, and measure it."""
