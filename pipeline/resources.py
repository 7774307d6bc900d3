"""Refuse work that cannot fit in this machine's memory before it starts: an allocation that
fails half-way prints a traceback (numpy, torch) or is killed by the kernel without a word."""

from __future__ import annotations

from .errors import PipelineError


def check_memory(needed: int, what: str, hint: str = "") -> None:
    """Raise a one-line PipelineError when `needed` bytes exceed the memory available now."""
    import psutil

    available = psutil.virtual_memory().available
    if needed > available:
        raise PipelineError(
            f"{what} needs at least {needed / 2**30:,.1f} GiB of memory but "
            f"{available / 2**30:,.1f} GiB is available" + (f"; {hint}" if hint else "")
        )
