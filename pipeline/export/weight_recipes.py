"""The registry of weight-only quantization recipes: how ORT's MatMulNBits weights are made.

Import-light data. Each recipe is one choice users make with onnxruntime.quantization's
weight-only quantizer: bits, block size along K, symmetric blocks or a zero point per block, the
algorithm (ORT's round to nearest, HQQ's fitted scales, GPTQ calibrated on text, k-quant), the
compute (`accuracy_level` 4: int8 dot products, 0: float32), and the LM head's own bits (an int4
head is where small models lose most: ORT PR 24384 added 8-bit heads for it). The embedding
table stays float32 in every recipe. Adding a recipe is one entry; scripts/measure_int4_recipes.py
measures them all, and the defaults below were chosen by it (docs/quality.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

ALGORITHMS = ("rtn", "hqq", "gptq", "k_quant")
CALIBRATED = ("gptq",)  # these need text to calibrate on


@dataclass(frozen=True)
class WeightRecipe:
    bits: int = 4
    block: int = 32
    symmetric: bool = True
    algorithm: str = "rtn"
    accuracy_level: int = 4  # 4: int8 dot products (VNNI where the CPU has it); 0: float32
    head_bits: Optional[int] = None  # the LM head's bits: None as the rest, 32 keeps float32

    @property
    def calibrated(self) -> bool:
        return self.algorithm in CALIBRATED

    @property
    def layout(self) -> tuple:
        """What the decode step's speed depends on: the algorithm only chooses the values."""
        symmetric = self.symmetric and self.algorithm not in ("hqq", "k_quant")  # zero points
        return (self.bits, self.block, symmetric, self.accuracy_level, self.head_bits)

    def to_dict(self) -> dict:
        return asdict(self)


W = WeightRecipe
RECIPES: dict[str, WeightRecipe] = {
    "int8": W(bits=8),
    "int4": W(),
    "int4-head8": W(head_bits=8),
    "int4-head32": W(head_bits=32),
    "int4-block16": W(block=16),
    "int4-block64": W(block=64),
    "int4-block128": W(block=128),
    "int4-zero-points": W(symmetric=False),
    "int4-level0": W(accuracy_level=0),
    "int4-hqq": W(algorithm="hqq", symmetric=False),
    "int4-k-quant": W(algorithm="k_quant", symmetric=False),
    "int4-gptq": W(algorithm="gptq"),
    "int4-gptq-head8": W(algorithm="gptq", head_bits=8),
    "int4-gptq-zero-points": W(algorithm="gptq", symmetric=False),
}
# the recipe of each flavour's bits (int8 / int4 files and decoders), chosen by
# scripts/measure_int4_recipes.py (docs/int4-recipes.json, docs/quality.md): int4 with an 8-bit
# head kept perplexity within 0.8% of float32 on both trained checkpoints with half the KL of
# an all-int4 graph on GPT-2, at 3.61x float32's decode step at gpt2-124m (all-int4: 3.79x)
DEFAULT_RECIPE = {8: "int8", 4: "int4-head8"}


def get_recipe(name: str) -> WeightRecipe:
    from ..errors import PipelineError

    if name not in RECIPES:
        raise PipelineError(f"unknown weight recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]
