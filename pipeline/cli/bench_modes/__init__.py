"""`pipeline bench --mode`: each mode is one module here with run(request) -> its JSON data
(printing its tables as it goes), and one entry in MODES. Adding a mode is both, nothing else."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class BenchRequest:
    """The parsed options of one `pipeline bench` call, as every mode reads them."""

    workspace: object
    variants: list[str]
    runtime: str  # the --runtime text, resolved by the mode for its graph kind
    threads: list[int]
    seq_lens: list[int]
    warmup: int
    repeat: int
    max_seconds: float
    batches: Optional[str]  # the --batch text (None: the mode's default)
    past_lens: str
    new_tokens: int
    csv_path: Optional[Path] = None
    plot_path: Optional[Path] = None


@dataclass(frozen=True)
class Mode:
    module: str  # the module whose run(request) the mode is
    help: str

    def runner(self) -> Callable[[BenchRequest], dict]:
        return importlib.import_module(self.module).run


MODES: dict[str, Mode] = {
    "forward": Mode(f"{__name__}.forward", "whole sequences"),
    "decode": Mode(
        f"{__name__}.decode",
        "one generation step at a cache length, and whole generations",
    ),
    "attention": Mode(
        f"{__name__}.attention",
        "one causal attention, every candidate route (MultiHeadAttention, GroupQueryAttention, "
        "Attention-23, query-blocked) against torch's SDPA",
    ),
    "prefill": Mode(
        f"{__name__}.prefill",
        "one forward of a prompt in each candidate graph that costs no kernel change (as "
        "exported, packed QKV, ORT's transformer optimizer, the decoder with its cache in place) "
        "against the causal FLOP bound",
    ),
}
