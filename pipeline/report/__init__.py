"""The report in two steps: collect (measure, write report.json) and render (report.json ->
report.md and plots, measuring nothing: `pipeline report --from exported/report.json`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from ..errors import PipelineError
from ..fileio import json_text, not_found, write_text_atomic


def build_report(
    workspace,
    examples=None,
    sizes=None,
    on_step: Optional[Callable[[str], None]] = None,
    text_file=None,
) -> tuple[Path, dict]:
    """Measure everything (with a text file, the quality on it too), write report.json, then
    render report.md and the plots beside it; returns report.md's path and the results."""
    from ..fileio import check_writable_dir
    from .collect import Sizes, collect
    from .render import render

    check_writable_dir(workspace.out_dir)
    results = collect(workspace, examples, sizes or Sizes(), on_step, text_file)
    write_text_atomic(workspace.out_dir / "report.json", json_text(results))
    return render(results, workspace.out_dir), results


def render_report(json_path, out_dir=None) -> Path:
    """report.md and the plots from a report.json written before (beside it by default)."""
    from .render import render

    json_path = Path(json_path)
    if json_path.exists() and not json_path.is_file():  # a FIFO would block the read forever
        raise PipelineError(f"{json_path} is not a regular file (a directory, FIFO or device)")
    try:
        results = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise not_found(json_path, "report") from exc
    except OSError as exc:
        raise PipelineError(f"cannot read {json_path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise PipelineError(f"{json_path} is not JSON: {exc}") from exc
    if not isinstance(results, dict) or not {"bench", "machine", "compare", "decode"} <= set(
        results
    ):
        raise PipelineError(f"{json_path} is not a report.json written by `pipeline report`")
    try:
        return render(results, Path(out_dir) if out_dir else json_path.parent)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        # a report.json cut short or edited by hand: name what is missing, not a traceback
        what = f"its {exc.args[0]!r} entry" if isinstance(exc, KeyError) else "an entry"
        raise PipelineError(
            f"{json_path} is not a complete report.json: {what} is missing or of the wrong kind "
            f"({type(exc).__name__})"
        ) from exc
