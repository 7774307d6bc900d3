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
    return GraphIO(inputs=(Tensor("input_ids", "int64", (BATCH, SEQUENCE)),),
                   outputs=(Tensor("logits", "float32", (BATCH, SEQUENCE, cfg.vocab_size)),))
