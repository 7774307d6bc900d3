"""One causal attention, every route we could put in a graph, timed side by side.

The ORT-optimised export picks its attention by these numbers (docs/bench-attention.json): each
candidate is a one-attention ONNX graph of the model's shape (B 1, N_h heads of h), checked
against torch's SDPA before it is timed, then all of them and torch take turns per (S, threads).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from ..config import ModelConfig
from ..model import masked_value
from .harness import Stats, time_interleaved

_MS = helper.make_opsetid("com.microsoft", 1)


def _graph(nodes, inputs, opset: int = 18, extra_opsets=(), initializers=()) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "attention", ins, out, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _seq_scalars() -> list:
    """seqlens_k [B] = S - 1 and total_sequence_length = S (int32), from q [B, S, d]."""
    const = lambda name, v: helper.make_node(
        "Constant",
        [],
        [name],
        value=onnx.numpy_helper.from_array(np.array(v, dtype=np.int64), name),
    )
    return [
        helper.make_node("Shape", ["q"], ["b"], start=0, end=1),
        helper.make_node("Shape", ["q"], ["s"], start=1, end=2),
        const("one", [1]),
        helper.make_node("Sub", ["s", "one"], ["s1"]),
        helper.make_node("Cast", ["s1"], ["s1i"], to=TensorProto.INT32),
        helper.make_node("Expand", ["s1i", "b"], ["seqlens_k"]),
        helper.make_node("Cast", ["s"], ["si"], to=TensorProto.INT32),
        helper.make_node("Squeeze", ["si"], ["total"]),
    ]


def mha_graph(cfg: ModelConfig) -> onnx.ModelProto:
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v"],
        ["y"],
        domain="com.microsoft",
        num_heads=cfg.n_heads,
        unidirectional=1,
    )
    return _graph([node], "qkv", extra_opsets=[_MS])


def gqa_graph(cfg: ModelConfig, present: bool = False) -> onnx.ModelProto:
    outs = ["y", "present_key", "present_value"] if present else ["y"]
    node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "", "", "seqlens_k", "total"],
        outs,
        domain="com.microsoft",
        num_heads=cfg.n_heads,
        kv_num_heads=cfg.n_heads,
    )
    model = _graph([*_seq_scalars(), node], "qkv", extra_opsets=[_MS])
    if present:  # named graph outputs, as a decoder's present cache would be
        model.graph.output.extend(
            helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs[1:]
        )
    return model


def attention23_graph(cfg: ModelConfig) -> onnx.ModelProto:
    node = helper.make_node(
        "Attention",
        ["q", "k", "v"],
        ["y"],
        is_causal=1,
        q_num_heads=cfg.n_heads,
        kv_num_heads=cfg.n_heads,
    )
    return _graph([node], "qkv", opset=23)


# Query-blocked causal attention splits the queries into this many blocks; block i attends only
# the keys of blocks <= i; a fixed count keeps the graph static (blocks past S are empty).
QUERY_BLOCKS = 8


def _masked_softmax_attention(q, k, v, mask: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, masked_value(q.dtype))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def blocked_attention(q, k, v, scale: float, blocks: int = QUERY_BLOCKS) -> torch.Tensor:
    """Causal attention on [B, H, S, h] with the queries in `blocks` blocks: block i meets only the
    keys up to its own end, so about half the square is never computed. A candidate route this
    benchmark measures; no artifact uses it: GroupQueryAttention was faster
    (docs/bench-attention.json), and tract cannot prove that the clamped blocks of the standard-op
    form add up to S rows, so the portable file keeps the one masked square."""
    s = q.shape[-2]
    block = (s + blocks - 1) // blocks
    outputs = []
    for i in range(blocks):
        start, end = min(i * block, s), min((i + 1) * block, s)
        query_pos = torch.arange(start, end, device=q.device)
        key_pos = torch.arange(end, device=q.device)
        visible = key_pos[None, :] < query_pos[:, None] + 1
        outputs.append(
            _masked_softmax_attention(
                q[..., start:end, :], k[..., :end, :], v[..., :end, :], visible, scale
            )
        )
    return torch.cat(outputs, dim=-2)


@torch.library.custom_op("pipeline::blocked_causal_attention", mutates_args=())
def blocked_causal_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, blocks: int, scale: float
) -> torch.Tensor:
    """blocked_attention on [B, S, d] as one opaque op: the exporter writes its ONNX form directly
    (blocked_attention_onnx) instead of tracing many symbolic slices per layer."""
    b, s, d = q.shape
    heads = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    y = blocked_attention(heads(q), heads(k), heads(v), scale, blocks)
    return y.transpose(1, 2).reshape(b, s, d)


@blocked_causal_attention_op.register_fake
def _(q, k, v, n_heads, blocks, scale):
    return torch.empty_like(q)


def blocked_attention_onnx(q, k, v, n_heads: int, blocks: int, scale: float):
    """blocked_attention in standard ONNX ops, q, k, v [B, S, d] -> [B, S, d]: block i's queries
    (rows [i * block, (i + 1) * block) of S, clamped; the last ones may be empty) meet keys
    [0, (i + 1) * block) under a causal mask built from positions."""
    from onnxscript import opset18 as op

    ints = lambda *values: op.Constant(value_ints=list(values))
    shape = op.Shape(q)
    batch_seq = op.Slice(shape, ints(0), ints(2))
    seq = op.Slice(shape, ints(1), ints(2))
    block = op.Div(op.Add(seq, ints(blocks - 1)), ints(blocks))
    split_heads = op.Concat(batch_seq, ints(n_heads, -1), axis=0)
    heads = lambda t: op.Transpose(op.Reshape(t, split_heads), perm=[0, 2, 1, 3])  # [B, N_h, S, h]
    q, k, v = heads(q), heads(k), heads(v)
    k_t = op.Transpose(k, perm=[0, 1, 3, 2])
    masked = op.Constant(value_float=masked_value(torch.float32))
    one = op.Constant(value_int=1)
    outputs = []
    for i in range(blocks):
        start, end = op.Min(op.Mul(block, ints(i)), seq), op.Min(op.Mul(block, ints(i + 1)), seq)
        query_pos = op.Range(op.Squeeze(start, ints(0)), op.Squeeze(end, ints(0)), one)
        key_pos = op.Range(op.Constant(value_int=0), op.Squeeze(end, ints(0)), one)
        visible = op.Less(
            op.Unsqueeze(key_pos, ints(0)), op.Unsqueeze(op.Add(query_pos, one), ints(1))
        )
        scores = op.Mul(
            op.MatMul(op.Slice(q, start, end, ints(2)), op.Slice(k_t, ints(0), end, ints(3))),
            op.Constant(value_float=scale),
        )
        weights = op.Softmax(op.Where(visible, scores, masked), axis=-1)
        outputs.append(op.MatMul(weights, op.Slice(v, ints(0), end, ints(2))))
    y = op.Concat(*outputs, axis=2)
    return op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Concat(batch_seq, ints(-1), axis=0))


class _Explicit(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, blocks: int):
        super().__init__()
        self.cfg, self.blocks = cfg, blocks

    def forward(self, q, k, v):
        b, s, d = q.shape
        heads = lambda t: t.view(b, s, self.cfg.n_heads, self.cfg.head_dim).transpose(1, 2)
        scale = 1.0 / self.cfg.head_dim**0.5
        if self.blocks == 1:  # the portable file's form: one masked square
            causal = torch.ones(self.cfg.max_seq_len, self.cfg.max_seq_len, dtype=torch.bool).tril()
            y = _masked_softmax_attention(heads(q), heads(k), heads(v), causal[:s, :s], scale)
            return y.transpose(1, 2).reshape(b, s, d)
        return blocked_causal_attention_op(q, k, v, self.cfg.n_heads, self.blocks, scale)


def explicit_graph(cfg: ModelConfig, blocks: int) -> onnx.ModelProto:
    """Standard-op attention, in one masked square (the portable file's form) or query-blocked."""
    from ..export.fused import translation_table
    from ..export.trace import _quiet_exporter

    seq = torch.export.Dim("sequence", min=1, max=cfg.max_seq_len)
    example = tuple(
        torch.zeros(1, 24, cfg.d_model) for _ in range(3)
    )  # three tensors: one would alias
    table = {
        **translation_table(),
        torch.ops.pipeline.blocked_causal_attention.default: blocked_attention_onnx,
    }
    with _quiet_exporter():
        program = torch.onnx.export(
            _Explicit(cfg, blocks),
            example,
            dynamo=True,
            opset_version=18,
            input_names=["q", "k", "v"],
            output_names=["y"],
            dynamic_shapes={n: {1: seq} for n in "qkv"},
            verbose=False,
            custom_translation_table=table,
        )
    return program.model_proto


def candidates(cfg: ModelConfig) -> dict[str, Callable[[], onnx.ModelProto]]:
    return {
        "ort MultiHeadAttention (unidirectional)": lambda: mha_graph(cfg),
        "ort GroupQueryAttention": lambda: gqa_graph(cfg),
        "ort GroupQueryAttention (present named)": lambda: gqa_graph(cfg, present=True),
        "ort Attention-23 (is_causal)": lambda: attention23_graph(cfg),
        "ort decomposed (the portable file's form)": lambda: explicit_graph(cfg, 1),
        **{
            f"ort query-blocked ({n} blocks)": (lambda n=n: explicit_graph(cfg, n))
            for n in (4, 8, 16)
        },
    }


@dataclass
class AttentionRecord:
    route: str
    threads: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    runs: int
    max_abs_diff: float  # against torch's SDPA on the same inputs

    def to_dict(self) -> dict:
        return asdict(self)


TORCH_ROUTE = "torch SDPA (is_causal)"  # the reference route; every other one is an ORT graph


def run_attention_bench(
    cfg: ModelConfig,
    threads: Sequence[int],
    seq_lens: Sequence[int],
    repeat: int = 20,
    max_seconds: float = 3.0,
    on_point: Optional[Callable[[], None]] = None,
    routes: Optional[Sequence[str]] = None,
) -> list[AttentionRecord]:
    from ..runtime.session import make_session

    builders = candidates(cfg)
    chosen = list(builders) if routes is None else list(routes)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, name in enumerate(chosen):
            files[name] = Path(tmp) / f"route{i}.onnx"
            onnx.save_model(builders[name](), str(files[name]))
        rng = np.random.default_rng(0)
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            sessions = {name: make_session(path, n_threads) for name, path in files.items()}
            for s in seq_lens:
                q, k, v = (
                    rng.standard_normal((1, s, cfg.d_model)).astype(np.float32) for _ in range(3)
                )
                tq, tk, tv = (
                    torch.from_numpy(t).view(1, s, cfg.n_heads, cfg.head_dim).transpose(1, 2)
                    for t in (q, k, v)
                )
                sdpa = partial(F.scaled_dot_product_attention, tq, tk, tv, is_causal=True)
                want = sdpa().transpose(1, 2).reshape(1, s, cfg.d_model).numpy()
                feeds = {"q": q, "k": k, "v": v}
                diffs = {
                    name: float(np.abs(sess.run(["y"], feeds)[0] - want).max())
                    for name, sess in sessions.items()
                }
                runners = {
                    TORCH_ROUTE: sdpa,
                    **{name: partial(sess.run, ["y"], feeds) for name, sess in sessions.items()},
                }
                with torch.inference_mode():
                    times = time_interleaved(runners, 2, repeat, max_seconds)
                for name, t in times.items():
                    stats = Stats.of(t)
                    records.append(
                        AttentionRecord(
                            name,
                            n_threads,
                            s,
                            stats.p50_ms,
                            stats.p90_ms,
                            stats.runs,
                            diffs.get(name, 0.0),
                        )
                    )
                if on_point:
                    on_point()
    return records


def fastest_routes(
    records: list[AttentionRecord], tolerance: float = 1e-4
) -> dict[tuple[int, int], str]:
    """(threads, S) -> the fastest ORT route whose output matched torch's."""
    best: dict[tuple[int, int], AttentionRecord] = {}
    for r in records:
        if r.route != TORCH_ROUTE and r.max_abs_diff <= tolerance:
            key = (r.threads, r.seq_len)
            if key not in best or r.p50_ms < best[key].p50_ms:
                best[key] = r
    return {k: r.route for k, r in sorted(best.items())}


def bench_attention(
    cfg: ModelConfig,
    threads: Sequence[int],
    seq_lens: Sequence[int],
    repeat: int = 20,
    max_seconds: float = 3.0,
    on_point: Optional[Callable[[], None]] = None,
) -> dict:
    """`pipeline bench --mode attention`: every route's records, a table and the fastest routes."""
    from .harness import machine

    records = run_attention_bench(cfg, threads, seq_lens, repeat, max_seconds, on_point=on_point)
    torch_ms = {(r.threads, r.seq_len): r.p50_ms for r in records if r.route == TORCH_ROUTE}
    rows = [
        (
            r.threads,
            r.seq_len,
            r.route,
            r.p50_ms,
            r.p90_ms,
            r.runs,
            torch_ms[(r.threads, r.seq_len)] / r.p50_ms,
            r.max_abs_diff,
        )
        for r in records
    ]
    best = fastest_routes(records)
    return {
        "machine": machine(threads),
        "shape": {"batch": 1, "heads": cfg.n_heads, "head_dim": cfg.head_dim},
        "records": [r.to_dict() for r in records],
        "fastest": [{"threads": t, "seq_len": s, "route": r} for (t, s), r in best.items()],
        "headers": [
            "threads",
            "seq",
            "route",
            "p50 ms",
            "p90 ms",
            "runs",
            "torch/this",
            "max |diff|",
        ],
        "rows": rows,
    }
