"""The ONNX tools a file is checked in, as data: TOOLS says for each how to tell whether it is
installed, how to load a file in it and how to run a batch of input_ids, and its version. A
tool that is not installed is reported as such, never as a failure."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

Runner = Callable[[dict], np.ndarray]  # {input name: array} -> the first output (logits [B, S, V])
NODE_SCRIPT_NAME = "ort_node_run.mjs"


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:240]


def _module_missing(name: str) -> Optional[str]:
    if importlib.util.find_spec(name) is None:
        return f"not installed (pip install {name})"
    return None


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "") or "")
    except Exception:  # noqa: BLE001  (a version string is only decoration)
        return ""


# -- loaders: path -> runner --------------------------------------------------------------------
def load_ort(path: Path) -> Runner:
    from ..runtime.session import make_session

    session = make_session(path, threads=1)
    return lambda feed: session.run(None, feed)[0]


def _load_reference(path: Path) -> Runner:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(str(path))
    return lambda feed: evaluator.run(None, feed)[0]


def _load_openvino(path: Path) -> Runner:
    import openvino as ov

    core = ov.Core()
    # this CPU computes in bf16 by default (max |diff| 0.2-0.3 here); f32 is what we compare
    compiled = core.compile_model(
        core.read_model(str(path)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1},
    )
    return lambda feed: np.asarray(compiled(feed)[0])


def _load_tract(path: Path) -> Runner:
    import tract

    names = _input_names(path)
    runnable = tract.onnx().load(str(path)).into_model().into_runnable()
    return lambda feed: runnable.run([feed[n] for n in names])[0].to_numpy()


def _input_names(path: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def _load_onnx2torch(path: Path) -> Runner:
    import torch
    from onnx2torch import convert

    module = convert(str(path)).eval()
    names = _input_names(path)

    def run(feed):
        with torch.inference_mode():
            out = module(*(torch.from_numpy(feed[n]) for n in names))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    return run


def node_script() -> Optional[Path]:
    """scripts/ort_node_run.mjs of the source checkout (or of the current directory)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "scripts" / NODE_SCRIPT_NAME).is_file():
            return root / "scripts" / NODE_SCRIPT_NAME
    return None


def _node_missing() -> Optional[str]:
    if shutil.which("node") is None:
        return "not installed (node is not on PATH)"
    script = node_script()
    if script is None:
        return f"not available (scripts/{NODE_SCRIPT_NAME} is not beside this package or in the current directory)"
    if not (script.parent / "node_modules" / "onnxruntime-node").is_dir():
        return f"not installed (ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix {script.parent})"
    return None


def _load_node(path: Path) -> Runner:
    script = node_script()

    def run(feed):
        request = json.dumps(
            {
                "model": str(Path(path).resolve()),
                "feeds": {
                    name: {
                        "type": str(arr.dtype),
                        "dims": list(arr.shape),
                        "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode(),
                    }
                    for name, arr in feed.items()
                },
            }
        )
        proc = subprocess.run(
            ["node", str(script)], input=request, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["node failed"])[-1])
        reply = json.loads(proc.stdout)
        data = np.frombuffer(base64.b64decode(reply["logits_b64"]), dtype="<f4")
        return data.reshape(reply["dims"])

    run(_smoke_feed(path))  # load check: the file opens and runs
    return run


def _smoke_feed(path: Path) -> dict:
    """A tiny valid input for either graph (batch 1, one token, empty cache)."""
    import onnx

    feed = {}
    for value in onnx.load(str(path), load_external_data=False).graph.input:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        if value.name.startswith("past_key_values"):
            dims[2] = 0
        is_int = value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        feed[value.name] = (
            np.ones(dims, np.int64)
            if value.name == "attention_mask"
            else np.zeros(dims, np.int64 if is_int else np.float32)
        )
    return feed


def _node_version() -> str:
    script = node_script()
    try:
        pkg = script.parent / "node_modules" / "onnxruntime-node" / "package.json"
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError, AttributeError):
        return ""


@dataclass(frozen=True)
class Tool:
    name: str
    missing: Callable[[], Optional[str]]  # None when usable, else why not
    load: Callable[[Path], Runner]
    version: Callable[[], str]
    max_seq_len: int = 1024  # longest input it is checked at (the slow ones stop earlier)
    how: str = ""  # the lines a user needs, shown by the README and --help


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "onnxruntime",
            lambda: _module_missing("onnxruntime"),
            load_ort,
            lambda: _version("onnxruntime"),
        ),
        Tool(
            "onnx.reference",
            lambda: _module_missing("onnx"),
            _load_reference,
            lambda: _version("onnx"),
            max_seq_len=300,
        ),
        Tool(
            "openvino",
            lambda: _module_missing("openvino"),
            _load_openvino,
            lambda: _version("openvino").split("-")[0],
        ),
        Tool(
            "tract",
            lambda: _module_missing("tract"),
            _load_tract,
            lambda: __import__("tract").version(),
        ),
        Tool(
            "onnx2torch",
            lambda: _module_missing("onnx2torch"),
            _load_onnx2torch,
            lambda: _version("onnx2torch"),
            max_seq_len=300,
        ),
        Tool("onnxruntime-node", _node_missing, _load_node, _node_version),
    )
}
