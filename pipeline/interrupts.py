"""^C and SIGTERM end the command cleanly: "interrupted", exit 130 (143 for SIGTERM), nothing left
behind, within a couple of seconds.

The first signal raises KeyboardInterrupt in the main thread, so `finally` blocks remove
temporary files and stop worker pools. Libraries can get in the way of that: torch's exporter
wraps the interrupt in its own error, and an interrupt landing in a weakref callback is printed
and swallowed. So the signal is also remembered (any exception after it means "interrupted"), such
swallowed reports are silenced, and a watchdog ends the process if it has not ended by itself
within GRACE_S, after removing live temporary files and stopping worker pools. A second signal
ends it at once the same way.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

GRACE_S = 2.0
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
MESSAGES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class InterruptGuard:
    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.signum: Optional[int] = None
        self._previous: dict = {}
        self._watchdog: Optional[threading.Timer] = None
        self._unraisable = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)

    @property
    def message(self) -> str:
        return MESSAGES.get(self.signum, "interrupted")

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        self._unraisable = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        return self

    def __exit__(self, *exc) -> None:
        if self._watchdog:
            self._watchdog.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self._unraisable

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: no more waiting
            self.force_exit()
        self.signum = signum
        self._watchdog = threading.Timer(self.grace_s, self.force_exit)
        self._watchdog.daemon = True
        self._watchdog.start()
        raise KeyboardInterrupt

    def _on_unraisable(self, hook_args) -> None:
        if self.signum is not None and isinstance(hook_args.exc_value, KeyboardInterrupt):
            return  # our own interrupt, swallowed by a callback: the watchdog will end the process
        self._unraisable(hook_args)

    def force_exit(self) -> None:
        from .fileio import remove_live_temps
        from .parallel.kmatmul import close_all_pools

        try:
            remove_live_temps()
            close_all_pools()
            exporter = sys.modules.get("pipeline.export.pool")  # never imported just to exit
            if exporter is not None:
                exporter.stop_workers()
            sys.stderr.write(self.message + "\n")
            sys.stderr.flush()
        finally:
            os._exit(self.exit_code)
