"""How much RAM the model takes, measured in a fresh interpreter so nothing else is counted.

RSS is read with psutil; peaks come from the kernel's high-water mark (VmHWM), reset before each
phase through /proc/self/clear_refs where allowed, else from sampling RSS every millisecond.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import psutil

from ..errors import PipelineError

MB = 1024 * 1024


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_during(fn: Callable[[], object]) -> int:
    """Peak RSS in bytes while fn runs."""
    if _reset_peak() and _hwm() is not None:
        fn()
        return max(_hwm(), _rss())
    peak, done = _rss(), threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss())


def _measure(
    variant: str, weights: Optional[str], onnx_file: str, opt_file: str, seq_len: int, start: int
) -> dict:
    """Runs in the child interpreter; `start` is its RSS before any import."""
    rss = {"start": start}
    import numpy as np
    import onnxruntime  # noqa: F401
    import torch

    from ..api import load_model
    from ..config import get_variant
    from ..runtime.session import OrtRunner

    torch.set_num_threads(1)
    rss["after_imports"] = _rss()
    model = load_model(variant, weights)
    rss["after_torch_model"] = _rss()
    ids = np.random.default_rng(0).integers(
        0, get_variant(variant).config.vocab_size, (1, seq_len), dtype=np.int64
    )

    def torch_forward():
        with torch.inference_mode():
            model(torch.from_numpy(ids))

    torch_forward()  # first call allocates kernels' workspaces; the steady state is what recurs
    rss["peak_torch_forward"] = peak_rss_during(torch_forward)
    rss["after_torch_forward"] = _rss()
    runner = OrtRunner(Path(onnx_file), threads=1)
    rss["after_ort_session"] = _rss()
    runner.run(ids)
    rss["peak_ort_forward"] = peak_rss_during(lambda: runner.run(ids))
    rss["after_ort_forward"] = _rss()
    opt_runner = OrtRunner(Path(opt_file), threads=1)
    rss["after_ort_opt_session"] = _rss()
    opt_runner.run(ids)
    rss["peak_ort_opt_forward"] = peak_rss_during(lambda: opt_runner.run(ids))
    cfg = get_variant(variant).config
    return {
        "variant": variant,
        "seq_len": seq_len,
        "n_params": cfg.n_params(),
        "param_bytes_fp32": cfg.n_params() * 4,
        "param_bytes_fp32_untied": (cfg.n_params() + cfg.vocab_size * cfg.d_model) * 4,
        "onnx_file_bytes": Path(onnx_file).stat().st_size,
        "rss_bytes": rss,
        "activation_bytes_estimate": activation_bytes(cfg, seq_len),
    }


def activation_bytes(cfg, seq_len: int) -> dict:
    """The largest fp32 tensors alive in one forward, by formula."""
    s = seq_len
    return {
        "residual_stream": s * cfg.d_model * 4,
        "qkv": s * 3 * cfg.d_model * 4,
        "attention_scores_if_materialised": cfg.n_heads * s * s * 4,
        "mlp_hidden": s * cfg.d_mlp * 4,
        "logits": s * cfg.vocab_size * 4,
    }


def measure_memory(workspace, variant: str = "baseline", seq_len: int = 1024) -> dict:
    """Measure in a fresh interpreter; returns the numbers and the derived deltas."""
    from ..config import get_variant

    weights_file = workspace.weights_file(get_variant(variant).config)
    files = [str(workspace.artifact(variant, flavour)) for flavour in ("portable", "optimized")]
    code = (
        "import json, sys, psutil; start = psutil.Process().memory_info().rss; "
        "from pipeline.measure.memory import _measure; "
        "print(json.dumps(_measure(*json.loads(sys.argv[1]), start)))"
    )
    args = json.dumps([variant, str(weights_file), *files, seq_len])
    proc = subprocess.run(
        [sys.executable, "-c", code, args], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"memory measurement failed in its child process: {last[:200]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    r = result["rss_bytes"]
    result["deltas_bytes"] = {
        "runtime_libraries (torch, onnxruntime, numpy imports)": r["after_imports"] - r["start"],
        "torch model built with weights": r["after_torch_model"] - r["after_imports"],
        f"torch forward at S={seq_len}, peak above resting": r["peak_torch_forward"]
        - r["after_torch_model"],
        "ORT session created": r["after_ort_session"] - r["after_torch_forward"],
        f"ORT forward at S={seq_len}, peak above resting": r["peak_ort_forward"]
        - r["after_ort_session"],
        "ORT-optimised session created": r["after_ort_opt_session"] - r["after_ort_forward"],
        f"ORT-optimised forward at S={seq_len}, peak above resting": r["peak_ort_opt_forward"]
        - r["after_ort_opt_session"],
    }
    return result


def explain(result: dict) -> list[str]:
    """Sentences about RAM vs parameter count, every number taken from `result`."""
    d, r = result["deltas_bytes"], result["rss_bytes"]
    keys = list(d)
    p_mb = result["param_bytes_fp32"] / MB
    model_mb = d[keys[1]] / MB
    return [
        f"The model has {result['n_params']:,} parameters; at 4 bytes each (fp32) that is {p_mb:.1f} MiB "
        f"(the LM head is tied to the word embeddings, so it adds no parameters; untied it would be "
        f"{result['param_bytes_fp32_untied'] / MB:.1f} MiB). The .onnx file is "
        f"{result['onnx_file_bytes'] / MB:.1f} MiB, essentially those same weights.",
        f"Building the torch model with its weights raised the resident set by {model_mb:.1f} MiB, "
        f"{model_mb / p_mb:.2f}x the parameter bytes: RAM for the model is parameter count x bytes per "
        f"parameter, plus transient copies while the state dict is loaded.",
        f"The process as a whole used {r['after_torch_model'] / MB:.0f} MiB, of which "
        f"{d[keys[0]] / MB:.0f} MiB are the runtime libraries themselves (torch, onnxruntime, numpy): "
        + (
            "for a model this small the framework, not the parameters, dominates RAM."
            if d[keys[0]] > model_mb * MB
            else "at this size the parameters, not the framework, dominate RAM."
        ),
        f"A forward pass at S={result['seq_len']} needed {d[keys[2]] / MB:.1f} MiB above resting in torch and "
        f"{d[keys[4]] / MB:.1f} MiB in ONNX Runtime ({d[keys[6]] / MB:.1f} MiB with the fused-attention artifact, "
        f"which never builds the S x S mask); activations grow with S (the MLP hidden layer alone is "
        f"{result['activation_bytes_estimate']['mlp_hidden'] / MB:.1f} MiB at this length), and attention scores "
        f"would add N_h*S^2*4 = {result['activation_bytes_estimate']['attention_scores_if_materialised'] / MB:.1f} MiB "
        f"per layer if materialised. Creating the ORT session added {d[keys[3]] / MB:.1f} MiB (its own copy of "
        f"the weights plus its allocator's arena).",
    ]
