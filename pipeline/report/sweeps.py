"""`pipeline sweep`: the sweeps measured, their plots and JSON written to the workspace's folder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from ..measure.sweep import (
    CONFIG_GRID,
    CONFIG_GRID_FULL,
    FAMILY,
    FAMILY_SEQ_LENS,
    FAST,
    PORTABLE,
    REFERENCE,
    SEQ_LENS,
    sweep_config,
    sweep_family,
    sweep_seq,
    within_context,
)
from .plots import plot_config, plot_family, plot_seq


def run_sweeps(
    workspace, full: bool = False, threads: int = 1, on_step: Optional[Callable[[str], None]] = None
) -> dict:
    """`pipeline sweep`: latency vs length (torch, ort, ort-opt) and vs each config parameter,
    plots and JSON written to the workspace's folder."""
    from ..fileio import check_writable_dir, json_text, write_text_atomic

    out = check_writable_dir(workspace.out_dir)
    base = workspace.sized("baseline")
    seq = sweep_seq(
        workspace,
        [REFERENCE, PORTABLE, FAST],
        threads,
        within_context(SEQ_LENS, base),
        repeat=10 if full else 6,
        on_step=on_step,
        variant=base,
    )
    config = sweep_config(
        CONFIG_GRID_FULL if full else CONFIG_GRID,
        threads=threads,
        repeat=8 if full else 5,
        on_step=on_step,
    )
    plot_seq(seq, out / "sweep_seq.png")
    plot_config(config, out / "sweep_config.png")
    write_text_atomic(out / "sweep.json", json_text({"seq": seq, "config": config}))
    return {
        "seq": seq,
        "config": config,
        "files": [out / "sweep_seq.png", out / "sweep_config.png", out / "sweep.json"],
    }


def run_family(
    workspace, threads: int = 1, on_step: Optional[Callable[[str], None]] = None
) -> dict:
    """`pipeline sweep --family`: the attention family's latency vs S, plot and JSON written."""
    from ..fileio import check_writable_dir, json_text, write_text_atomic

    out = check_writable_dir(workspace.out_dir)
    variants = [workspace.sized(v) for v in FAMILY]
    result = sweep_family(
        workspace,
        variants,
        seq_lens=within_context(FAMILY_SEQ_LENS, variants[0]),
        threads=threads,
        on_step=on_step,
    )
    plot_family(result, out / "sweep_family.png")
    write_text_atomic(out / "sweep_family.json", json_text(result))
    return {**result, "files": [out / "sweep_family.png", out / "sweep_family.json"]}
