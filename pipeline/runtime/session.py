"""Forward runners, one interface for every runtime: run(ids int64 [B, S]) -> logits float32 [B, S, V].
The builders at the bottom are what the runtime registry names."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort
import torch

from ..errors import PipelineError
from ..fileio import not_found
from .registry import providers

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(
    path: Path,
    threads: Optional[int] = None,
    opt_level: str = "all",
    spinning: bool = False,
    device: str = "cpu",
) -> ort.InferenceSession:
    """A session on the device's providers (registry.DEVICES); `threads` sets intra-op threads
    (None: ORT's default, one per core). spinning: idle workers keep spinning for the next
    call (right for a decode loop of sub-ms calls back to back; wrong beside other work, whose
    cores they would steal)."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "ONNX model")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPT_LEVELS[opt_level]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        # with few threads, spinning workers only steal the core the caller needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))
    except Exception as exc:  # ORT raises its own exception types for bad files
        from ..export.external import check_loadable

        check_loadable(path)  # a missing or truncated data file, named as such
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"{path} is not a loadable ONNX model (truncated or corrupt?): {first[:200]}"
        ) from exc


class OrtRunner:
    name = "ort"

    def __init__(
        self,
        path: Path,
        threads: Optional[int] = None,
        opt_level: str = "all",
        device: str = "cpu",
    ):
        self.path = Path(path)
        self.session = make_session(self.path, threads, opt_level, device=device)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, ids: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: ids})[0]


class TorchRunner:
    name = "torch"

    def __init__(self, model: torch.nn.Module, threads: Optional[int] = None):
        self.model = model
        self.threads = threads

    def run(self, ids: np.ndarray) -> np.ndarray:
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.model(torch.from_numpy(ids)).numpy()


def torch_runner(runtime, workspace, variant: str, threads: Optional[int] = None) -> TorchRunner:
    return TorchRunner(workspace.model(variant), threads)


def ort_runner(runtime, workspace, variant: str, threads: Optional[int] = None) -> OrtRunner:
    return OrtRunner(
        workspace.artifact(variant, runtime.forward_flavour), threads, device=runtime.device
    )
