"""Runtimes beside ours that run the same model: OpenVINO on our portable file, and the eager
model under torch.compile. Each is one registry entry (runtime/registry.py) and a runner here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np


class OpenVinoRunner:
    """Our portable file in OpenVINO's CPU plugin. precision "f32" computes what ORT and torch do;
    "bf16" is what OpenVINO picks by default on CPUs with bf16 instructions (AVX-512 BF16, AMX),
    approximate by design."""

    def __init__(self, path: Path, threads: Optional[int] = None, precision: str = "f32"):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")

    def run(self, ids: np.ndarray) -> np.ndarray:
        return self.request.infer({0: ids})[0]


class TorchCompileRunner:
    """The eager model under torch.compile with dynamic=True: one compilation serves every batch
    and length (a user benchmarking several lengths would not recompile per shape). The first
    calls compile; the builder makes them, and their time is `compile_s`, never in a timed run."""

    def __init__(self, model, threads: Optional[int] = None):
        import torch

        self.torch, self.threads = torch, threads
        self.compiled = torch.compile(model, dynamic=True)
        start = time.perf_counter()
        # torch specialises sizes 0 and 1: batch 1 and length 1 get graphs of their own, and a
        # third length proves the dynamic one (no recompilation inside the timed runs)
        for b, n in ((1, 1), (1, 3), (1, 17), (2, 5)):
            self.run(np.zeros((b, n), np.int64))
        self.compile_s = time.perf_counter() - start

    def run(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.compiled(torch.from_numpy(ids)).numpy()


def openvino_runner(
    runtime, workspace, variant: str, threads: Optional[int] = None
) -> OpenVinoRunner:
    precision = "bf16" if runtime.name.endswith("bf16") else "f32"
    return OpenVinoRunner(workspace.artifact(variant, runtime.forward_flavour), threads, precision)


_compiled: dict = {}


def torch_compile_runner(
    runtime, workspace, variant: str, threads: Optional[int] = None
) -> TorchCompileRunner:
    """One compiled model per variant and process (compiling takes far longer than a forward)."""
    key = (id(workspace), variant)
    if key not in _compiled:
        _compiled[key] = TorchCompileRunner(workspace.model(variant), threads)
    runner = _compiled[key]
    runner.threads = threads
    return runner
