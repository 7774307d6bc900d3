"""The exported graphs' inputs and outputs, declared as data (as Optimum's export configs do):
names, element types and axes, with the dynamic ones named. The exporter, the runtimes and the
tool checks read them from here."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig

# axis names as they appear in the .onnx files (dim_param)
BATCH, SEQUENCE = "batch", "sequence"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy name: "int64", "float32"
    axes: tuple  # str: a dynamic axis' name; int: a fixed size


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def full_forward_io(cfg: ModelConfig) -> GraphIO:
    """input_ids [batch, sequence] -> logits [batch, sequence, V]: the whole sequence, no cache."""
    return GraphIO(
        inputs=(Tensor("input_ids", "int64", (BATCH, SEQUENCE)),),
        outputs=(Tensor("logits", "float32", (BATCH, SEQUENCE, cfg.vocab_size)),),
    )


# the total axis is written as the sum it is, so tools that reason about shapes (tract) can prove it
PAST_SEQUENCE, TOTAL_SEQUENCE = "past_sequence", "past_sequence + sequence"


def past_names(cfg: ModelConfig) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(cfg.n_layers) for kv in ("key", "value")]


def present_names(cfg: ModelConfig) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(cfg.n_layers) for kv in ("key", "value")]


def decoder_io(cfg: ModelConfig) -> GraphIO:
    """One graph for the prompt (past_sequence 0) and every decode step, Optimum's and
    onnxruntime-genai's names: the cache per layer in [batch, key/value heads, past_sequence, head_dim]."""
    heads, head_dim = cfg.kv_heads, cfg.head_dim
    return GraphIO(
        inputs=(
            Tensor("input_ids", "int64", (BATCH, SEQUENCE)),
            Tensor("attention_mask", "int64", (BATCH, TOTAL_SEQUENCE)),  # 1: token, 0: padding
            Tensor("position_ids", "int64", (BATCH, SEQUENCE)),
            *(
                Tensor(n, "float32", (BATCH, heads, PAST_SEQUENCE, head_dim))
                for n in past_names(cfg)
            ),
        ),
        outputs=(
            Tensor("logits", "float32", (BATCH, SEQUENCE, cfg.vocab_size)),
            *(
                Tensor(n, "float32", (BATCH, heads, TOTAL_SEQUENCE, head_dim))
                for n in present_names(cfg)
            ),
        ),
    )
