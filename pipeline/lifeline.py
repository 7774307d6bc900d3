"""Worker processes that end with their parent.

A worker whose parent is killed (SIGKILL leaves no chance to clean up) would otherwise go on as
an orphan: writing files and manifests after the command is gone, then blocking forever on a
pipe nobody reads. Two ties, because each misses a case the other covers:
- Linux's PR_SET_PDEATHSIG delivers SIGKILL the moment the parent dies, even while the worker is
  inside a long C call that holds the GIL (an ONNX save, ORT's optimiser). It fires when the
  *thread* that started the worker ends, so it is only for workers started by a thread that
  outlives them (`immediate=True`);
- a daemon thread polls the parent's pid and ends the process when it changes (every platform,
  and the race where the parent died before the prctl).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


def _parent_death_signal(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return  # no prctl here: the polling thread remains
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def tie_to_parent(parent: int | None = None, immediate: bool = False) -> None:
    """End this process when `parent` (default: the current parent) is gone."""
    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        os._exit(1)
    if immediate:
        _parent_death_signal(parent)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
