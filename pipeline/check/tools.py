"""Run one .onnx file in every ONNX tool that is installed and compare the logits.

The tools are one registry, TOOLS (tool_registry.py); each check here runs the same inputs in
every installed tool and compares them with ONNX Runtime and the float64 reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import PipelineError
from ..fileio import not_found
from .tool_registry import TOOLS, Runner, Tool, first_line, load_ort

CHECK_LENGTHS = (1, 17, 300, 1024)
CHECK_BATCHES = (1, 2)


@dataclass
class ToolResult:
    tool: str
    version: str
    status: str  # "match", "MISMATCH", "load failed", "run failed", "not installed"
    cases: list = field(
        default_factory=list
    )  # {"batch", "seq_len", "max_abs_vs_reference", "max_abs_vs_ort"}
    worst_vs_reference: Optional[float] = None
    worst_vs_ort: Optional[float] = None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_inputs(
    vocab_size: int, lengths=CHECK_LENGTHS, batches=CHECK_BATCHES, seed: int = 2024
) -> list[dict]:
    """Feeds of the full-forward graph: input_ids [b, n]."""
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": rng.integers(0, vocab_size, (b, n), dtype=np.int64)}
        for n in lengths
        for b in batches
    ]


def decoder_check_inputs(
    path: Path, cfg, lengths=CHECK_LENGTHS, batches=CHECK_BATCHES, seed: int = 2024
) -> list[dict]:
    """Feeds of the decoder graph: for each (b, n), the prompt with an empty cache, then one step
    with the cache ONNX Runtime returned for that prompt (so every tool gets the same past)."""
    from ..export.io_spec import past_names

    ort_run = make_ort_all_outputs(path)
    feeds = []
    for prompt in check_inputs(
        cfg.vocab_size, [n for n in lengths if n < cfg.max_seq_len], batches, seed
    ):
        ids = prompt["input_ids"]
        b, n = ids.shape
        empty = np.zeros((b, cfg.kv_heads, 0, cfg.head_dim), np.float32)
        first = {
            "input_ids": ids,
            "attention_mask": np.ones((b, n), np.int64),
            "position_ids": np.tile(np.arange(n, dtype=np.int64), (b, 1)),
            **{name: empty for name in past_names(cfg)},
        }
        present = ort_run(first)[1:]
        step = {
            "input_ids": ids[:, -1:].copy(),
            "attention_mask": np.ones((b, n + 1), np.int64),
            "position_ids": np.full((b, 1), n, np.int64),
            **dict(zip(past_names(cfg), present)),
        }
        feeds += [first, step]
    return feeds


def make_ort_all_outputs(path: Path):
    from ..runtime.session import make_session

    session = make_session(path, threads=1)
    return lambda feed: session.run(None, feed)


def check_file(
    path: Path,
    inputs: list[np.ndarray],
    reference: Optional[Runner],
    tolerance: float,
    tools: Optional[list[str]] = None,
    on_tool: Optional[Callable[[ToolResult], None]] = None,
) -> list[ToolResult]:
    """Every tool on every input; a case passes when |tool - reference| <= tolerance * max(1, |reference|)
    (the float64 reference where given, else ONNX Runtime)."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "ONNX file")
    ort_run = load_ort(path)
    ort_out = {id(feed): ort_run(feed) for feed in inputs}
    ref_out = {id(feed): reference(feed) for feed in inputs} if reference else ort_out
    results = []
    for name in tools or list(TOOLS):
        tool = TOOLS[name]
        why = tool.missing()
        if why:
            result = ToolResult(name, "", "not installed", detail=why)
        else:
            result = _run_tool(tool, path, inputs, ort_out, ref_out, tolerance)
        results.append(result)
        if on_tool:
            on_tool(result)
    return results


def _run_tool(tool: Tool, path: Path, inputs, ort_out, ref_out, tolerance) -> ToolResult:
    result = ToolResult(tool.name, tool.version(), "match")
    try:
        runner = tool.load(path)
    except Exception as exc:  # noqa: BLE001  (any tool's own error is the finding)
        result.status, result.detail = "load failed", first_line(exc)
        return result
    for feed in inputs:
        ids = feed["input_ids"]
        total = feed["attention_mask"].shape[1] if "attention_mask" in feed else ids.shape[1]
        if total > tool.max_seq_len:
            continue
        try:
            got = np.asarray(runner(feed), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            result.status, result.detail = (
                "run failed",
                f"B={ids.shape[0]} S={ids.shape[1]}: {first_line(exc)}",
            )
            return result
        ref, ort_ref = ref_out[id(feed)], ort_out[id(feed)]
        if got.shape != ref.shape:
            result.status = "MISMATCH"
            result.detail = f"B={ids.shape[0]} S={ids.shape[1]}: shape {list(got.shape)}, expected {list(ref.shape)}"
            return result
        case = {
            "batch": int(ids.shape[0]),
            "seq_len": int(ids.shape[1]),
            "past_len": int(total - ids.shape[1]),
            "max_abs_vs_reference": float(np.abs(got - ref).max()),
            "max_abs_vs_ort": float(np.abs(got - ort_ref).max()),
            "bound": tolerance * max(1.0, float(np.abs(ref).max())),
        }
        result.cases.append(case)
        if case["max_abs_vs_reference"] > case["bound"] and result.status == "match":
            result.status = "MISMATCH"
            result.detail = f"B={case['batch']} S={case['seq_len']}: max |diff| {case['max_abs_vs_reference']:.3g}"
    result.worst_vs_reference = max(c["max_abs_vs_reference"] for c in result.cases)
    result.worst_vs_ort = max(c["max_abs_vs_ort"] for c in result.cases)
    if not result.detail:
        result.detail = (
            "batches "
            + ",".join(map(str, sorted({c["batch"] for c in result.cases})))
            + "; lengths "
            + ",".join(map(str, sorted({c["seq_len"] for c in result.cases})))
        )
        pasts = sorted({c["past_len"] for c in result.cases if c["past_len"]})
        if pasts:
            result.detail += "; one step after a cache of " + ",".join(map(str, pasts))
    return result


def float64_reference(variant: str, state_dict: dict) -> Runner:
    """The variant's torch model in float64: a reference with far less rounding than any fp32 tool."""
    import torch

    from ..api import load_model

    model = load_model(variant, state_dict=state_dict).double()

    def run(feed):
        t = {k: torch.from_numpy(v) for k, v in feed.items()}
        past_keys = sorted(k for k in t if k.startswith("past_key_values."))
        with torch.inference_mode():
            if not past_keys:
                return model(t["input_ids"]).numpy()
            n_layers = len(past_keys) // 2
            past = [
                (t[f"past_key_values.{i}.key"].double(), t[f"past_key_values.{i}.value"].double())
                for i in range(n_layers)
            ]
            return model(t["input_ids"], past, t["attention_mask"], t["position_ids"]).numpy()

    return run


FAILURES = ("MISMATCH", "load failed", "run failed")  # "not installed" is not a failure


def resolve_tools(text: str) -> list[str]:
    """'all' or comma-separated tool names."""
    tools = list(TOOLS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or not tools:
        raise PipelineError(
            f"--tool: unknown tool {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(TOOLS)} or 'all'"
        )
    return tools


def _reference_for(workspace, meta: dict):
    """(runner, description): the float64 torch model where the file is one of ours with these
    weights, else ONNX Runtime itself."""
    from ..config import get_variant
    from ..weights import weights_sha256

    name = meta.get("pipeline.variant")
    try:
        cfg = get_variant(name).config if name else None
    except ValueError:
        cfg = None
    if cfg is not None and meta.get("pipeline.weights_sha256") == weights_sha256(
        workspace.weights_file(cfg)
    ):
        return (
            float64_reference(name, workspace.state_dict(name)),
            cfg,
            f"the float64 torch model of {name}",
        )
    return (
        None,
        cfg,
        "ONNX Runtime (no float64 reference: the file's variant or weights are not ours)",
    )


def check_tools(
    workspace,
    files: list[Path],
    tools: list[str],
    lengths,
    tolerance: float,
    on_file: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Every file in every tool, at batch 1 and 2 and these lengths (a decoder also one step after
    each prompt); one entry per file with its reference and each tool's result."""
    from ..config import get_variant
    from ..export.flavours import FLAVOURS
    from ..export.identity import onnx_metadata

    report = []
    for path in files:
        meta = onnx_metadata(path)
        reference, cfg, against = _reference_for(workspace, meta)
        cfg = cfg or get_variant("baseline").config
        flavour = FLAVOURS.get(meta.get("pipeline.flavour", ""), FLAVOURS["portable"])
        inputs = (
            decoder_check_inputs(path, cfg, lengths)
            if flavour.decoder
            else check_inputs(cfg.vocab_size, lengths)
        )
        results = check_file(path, inputs, reference, tolerance, tools)
        entry = {
            "file": str(path),
            "flavour": meta.get("pipeline.flavour", "unknown flavour"),
            "variant": meta.get("pipeline.variant"),
            "reference": against,
            "tolerance": tolerance,
            "results": [r.to_dict() for r in results],
            "failed": any(r.status in FAILURES for r in results),
        }
        report.append(entry)
        if on_file:
            on_file(entry)
    return report


def default_files(workspace, variants: list[str]) -> list[Path]:
    """Each variant's portable files: the full forward, and the decoder where it was exported."""
    from ..export.identity import onnx_path

    files = []
    for v in variants:
        files.append(workspace.artifact(v, "portable"))
        if onnx_path(v, workspace.out_dir, "decoder").exists():
            files.append(workspace.artifact(v, "decoder"))
    return files
