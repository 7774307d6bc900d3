"""Options and parsers the commands share, and progress that shows in logs too."""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from pathlib import Path
from typing import Optional

import click

from ..config import DEFAULT_SIZE, SIZES, VARIANTS, get_variant, resolve_variants
from ..errors import PipelineError
from ..sources import checkpoint_size

VARIANT_HELP = f"variant name, comma-separated names, or 'all' ({', '.join(VARIANTS)})"


class PositiveFinite(click.ParamType):
    """A float > 0 that is neither inf nor nan (inf would also be written to JSON as `Infinity`)."""

    name = "number > 0"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x <= 0:
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return x


def check_threads(values: list[int], option: str = "--threads") -> list[int]:
    from ..measure.harness import available_cores

    cores = available_cores()
    too_many = [t for t in values if t > cores]
    if too_many:
        raise PipelineError(
            f"{option}: {max(too_many)} threads but this process can use {cores} core(s); "
            f"more threads than cores only measure contention"
        )
    return values


def thread_counts(text: Optional[str], option: str = "--threads") -> list[int]:
    """--threads as given (an empty value is an error, not the default), or the default list."""
    from ..measure.harness import default_threads

    return default_threads() if text is None else check_threads(int_list(text, option), option)


def int_list(text: str, what: str, minimum: int = 1) -> list[int]:
    parts = [x.strip() for x in text.split(",")]
    if "" in parts:  # '' or '1,,2': an entry left out is not a default nor a skip
        raise PipelineError(f"{what}: expected comma-separated integers, got {text!r}")
    try:
        values = [int(x) for x in parts]
    except ValueError:
        raise PipelineError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise PipelineError(f"{what}: expected integers >= {minimum}, got {text!r}")
    return list(dict.fromkeys(values))  # a repeated entry would be measured twice


def variant_names(name: str) -> list[str]:
    return [v.name for v in resolve_variants(name)]


def max_seq_len(names: list[str]) -> int:
    return min(get_variant(n).config.max_seq_len for n in names)


def sized(command):
    """Adds --size: the variants named by --variant are taken at that size ('variant@size')."""

    @click.option(
        "--size",
        type=click.Choice(list(SIZES)),
        default=None,
        help="model size: tiny (the default) is the spec's config; gpt2-124m has GPT-2 small's "
        "(weights made on demand). A checkpoint directory given as --weights sets its own.",
    )
    @functools.wraps(command)
    def with_size(*args, size, variant, **kwargs):
        own = checkpoint_size(kwargs.get("weights"))
        if own is not None and size is not None:
            raise PipelineError(
                f"--size {size}: the checkpoint {kwargs['weights']} sets its own shape; drop --size"
            )
        size = own or size or DEFAULT_SIZE
        if size != DEFAULT_SIZE:
            variant = ",".join(v.name for v in resolve_variants(variant, size))
        return command(*args, variant=variant, **kwargs)

    return with_size


@contextlib.contextmanager
def progress(total: int, label: str):
    """Yields the callable that advances by one step (its argument, if any, names the step
    done): a progress bar on a terminal, else one plain line per step with its time, so that
    `pipeline all | tee log` shows the work as it happens."""
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
            yield lambda *done: bar.update(1, done[-1] if done else None)
        return
    state = {"n": 0, "last": time.perf_counter()}

    def advance(*done):
        now = time.perf_counter()
        state["n"] += 1
        name = f" {done[-1]}" if done else ""
        click.echo(f"{label}: {state['n']}/{total}{name} ({now - state['last']:.1f} s)", err=True)
        state["last"] = now

    yield advance


def steps(label: str):
    """A step callback: one line per step on stderr, with the time the previous step took."""
    state = {"last": time.perf_counter(), "name": None}

    def step(name: str) -> None:
        now = time.perf_counter()
        took = f" ({state['name']} took {now - state['last']:.1f} s)" if state["name"] else ""
        click.echo(f"{label}: {name}{took}", err=True)
        state.update(last=now, name=name)

    return step


def workspace(out_dir: Path, weights) -> object:
    from ..fileio import utf8_path
    from ..workspace import Workspace

    return Workspace(utf8_path(out_dir, "--out"), weights)


def text_file_opt(help: str, name: str = "--text-file"):
    """A UTF-8 text file option (checked by check/quality.read_text_file where it is read)."""
    return click.option(name, type=click.Path(path_type=Path), default=None, help=help)


weights_opt = click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="the weights: a Hugging Face GPT-2, Llama, Mistral or Qwen2 checkpoint directory, or a "
    "state dict in the spec's format (.pt or .safetensors); default: the shipped stand-in",
)
examples_opt = click.option(
    "--examples",
    type=click.Path(path_type=Path),
    default=None,
    help="example_outputs.pt (default: the shipped stand-in)",
)
out_opt = click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("exported"),
    show_default=True,
    help="directory for .onnx files and results",
)
