"""The export pool: every variant in every flavour, traced side by side in worker processes that
die with their parent, each checking that it read the bytes its parent read."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Optional

import torch

from ..config import get_variant, size_of
from ..errors import PipelineError
from ..fileio import check_writable_dir
from ..weights import PathLike, read_weights, weights_path
from .flavours import FLAVOURS
from .identity import DEFAULT_OPSET, onnx_path, rebuild_reason
from .manifest import DEFAULT_OUT
from .onnx_export import export_onnx

_LIVE_EXECUTORS: set = set()


def stop_workers(pool=None) -> None:
    """Terminate and reap the export worker processes (of one pool, or of every live one): after
    an interrupt they must not outlive the command and go on writing files."""
    for executor in [pool] if pool is not None else list(_LIVE_EXECUTORS):
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)


def _start_export_worker(parent: int) -> None:
    """A worker dies with the command: SIGKILL leaves the parent no chance to stop it, and an
    orphan went on writing files and the manifest, then blocked forever holding ~1 GB. The
    parent's pid comes from the parent: killed while this worker was still starting, its
    getppid() would already name the process that adopted it."""
    from ..lifeline import tie_to_parent

    tie_to_parent(parent, immediate=True)  # the executor's workers are started by this thread
    torch.set_num_threads(1)  # the other worker has the other core


_worker_weights: dict = {}


def _export_in_worker(task: tuple) -> Path:
    """One (variant, flavour) in a worker process of export_variants. The worker reads the weights
    once; the bytes it read must be those the caller read, or the artifacts of one export would
    come from two different files."""
    name, flavour, weights, out_dir, opset, expected_sha, external_data = task
    cfg = get_variant(name).config
    key = (str(weights), size_of(cfg))  # every variant of a size reads the same supplied format
    if key not in _worker_weights:
        _worker_weights[key] = read_weights(weights, cfg)
    state_dict, sha = _worker_weights[key]
    if sha != expected_sha:
        raise PipelineError(changed_while_exporting(weights))
    return export_onnx(
        name,
        weights,
        out_dir,
        opset,
        state_dict=state_dict,
        flavour=flavour,
        weights_sha256=sha,
        external_data=external_data,
    )


def default_processes() -> int:
    """Export workers side by side: two where two cores are free to this process, else one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return min(2, cores)


def changed_while_exporting(weights) -> str:
    return (
        f"weights {weights} changed while exporting (its bytes differ from those read first); "
        "nothing made from the new bytes was kept: run the export again"
    )


def export_variants(
    variants: Iterable[str],
    weights: Optional[PathLike] = None,
    out_dir: PathLike = DEFAULT_OUT,
    opset: int = DEFAULT_OPSET,
    flavours: Iterable[str] = ("portable",),
    on_done: Optional[Callable[[str, Path], None]] = None,
    processes: int = 1,
    keep_current: bool = False,
    external_data: bool = False,
) -> list[Path]:
    """Export every variant in every flavour; the paths come back variant by variant, flavours in
    the order given. processes > 1 traces side by side in worker processes (tracing is
    single-threaded Python: two processes on two cores take about half the time); the files are
    the same either way. on_done hears of each file as it is written. keep_current: a file that
    is up to date (rebuild_reason None) is kept, not exported again."""
    wanted = [(name, flavour) for name in variants for flavour in flavours]
    return export_pairs(
        wanted, weights, out_dir, opset, on_done, processes, keep_current, external_data
    )


def export_pairs(
    wanted: Sequence[tuple[str, str]],
    weights: Optional[PathLike] = None,
    out_dir: PathLike = DEFAULT_OUT,
    opset: int = DEFAULT_OPSET,
    on_done: Optional[Callable[[str, Path], None]] = None,
    processes: int = 1,
    keep_current: bool = False,
    external_data: bool = False,
) -> list[Path]:
    """export_variants for exactly these (variant, flavour) pairs, in one pool; the paths in
    their order."""
    wanted = list(dict.fromkeys(wanted))
    out_dir = Path(out_dir)
    check_writable_dir(out_dir)
    if not wanted:
        return []
    cfg = get_variant(wanted[0][0]).config  # one size per call: the format is the same for all
    weights = weights_path(weights, cfg)
    # read, checked and hashed once for all variants, before any tracing: every artifact records
    # the identity of these bytes
    state_dict, sha = read_weights(weights, cfg)
    done: dict[tuple[str, str], Path] = {}
    if keep_current:
        for name, flavour in wanted:
            if rebuild_reason(name, flavour, weights, out_dir, opset, sha) is None:
                done[(name, flavour)] = onnx_path(name, out_dir, flavour)
                if on_done:
                    on_done(name, done[(name, flavour)])
    tasks = [t for t in wanted if t not in done]
    if processes > 1 and len(tasks) > 1:
        done.update(
            _export_in_pool(
                tasks, (weights, out_dir, opset, sha, external_data), processes, on_done
            )
        )
        return [done[t] for t in wanted]
    for name, flavour in tasks:
        done[(name, flavour)] = export_onnx(
            name,
            weights,
            out_dir,
            opset,
            state_dict=state_dict,
            flavour=flavour,
            weights_sha256=sha,
            external_data=external_data,
        )
        if on_done:
            on_done(name, done[(name, flavour)])
    return [done[t] for t in wanted]


def _export_in_pool(
    tasks: list[tuple[str, str]], common: tuple, processes: int, on_done
) -> dict[tuple[str, str], Path]:
    """The tasks traced in `processes` workers, slowest flavours first; common is (weights,
    out_dir, opset, the weights' sha256, external_data) for every task."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done: dict[tuple[str, str], Path] = {}
    slow_first = sorted(tasks, key=lambda t: -FLAVOURS[t[1]].export_s)
    pool = ProcessPoolExecutor(
        min(processes, len(tasks)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_export_worker,
        initargs=(os.getpid(),),
    )
    _LIVE_EXECUTORS.add(pool)
    try:
        futures = {pool.submit(_export_in_worker, (*t, *common)): t for t in slow_first}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            if on_done:
                on_done(futures[future][0], done[futures[future]])
    except Exception:
        # a failed export: the others still running end by themselves (terminating them
        # mid-write would leak the executor's semaphores), the pending ones never start
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        stop_workers(pool)  # ^C or SIGTERM: no worker goes on writing files
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _LIVE_EXECUTORS.discard(pool)
        # an error's traceback keeps this frame, and with it the executor and its queues'
        # named semaphores, alive to the exit, where they were reported leaked
        pool = futures = None
    return done
