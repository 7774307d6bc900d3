"""A forward runner of the ORT-optimised graph with its weights quantized by a named recipe
(pipeline/export/weight_recipes.py), for `eval --recipe` and scripts/measure_int4_recipes.py:
the file lives in a temporary folder for the runner's life, since a recipe that is not a
flavour's default is a question asked, not an artifact kept."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import PipelineError

CALIBRATION_WINDOWS = 8  # GPTQ's feeds: up to this many windows of the calibration text


def calibration_feeds(ids: list[int], window: int) -> list[dict]:
    """Feeds of consecutive windows of the calibration text's ids."""
    tokens = np.asarray(ids, np.int64)
    feeds = [
        {"input_ids": tokens[None, begin : begin + window]}
        for begin in range(0, max(1, len(tokens) - 1), window)
    ]
    return [f for f in feeds if f["input_ids"].shape[1] >= 2][:CALIBRATION_WINDOWS]


class RecipeRunner:
    def __init__(self, src: Path, recipe_name: str, threads: Optional[int] = None,
                 calibration: Optional[list[dict]] = None):  # fmt: skip
        import onnx

        from ..export.external import data_path, save
        from ..export.flavours import quantize_matmul_weights
        from ..export.weight_recipes import get_recipe
        from .session import OrtRunner

        recipe = get_recipe(recipe_name)
        if recipe.calibrated and not calibration:
            raise PipelineError(
                f"recipe {recipe_name} calibrates on text: give --calibration-file (a text apart "
                "from the one scored)"
            )
        self.name, self.recipe = recipe_name, recipe
        self._folder = tempfile.TemporaryDirectory(prefix="pipeline-recipe-")
        path = Path(self._folder.name) / f"{recipe_name}.onnx"
        external = data_path(Path(src)).exists()
        try:
            model = quantize_matmul_weights(onnx.load(str(src)), recipe, calibration)
        except (ValueError, IndexError, KeyError, RuntimeError) as exc:
            # onnxruntime.quantization's own failures (k-quant packs zero points wrongly where
            # K is not a multiple of the block, for one): the recipe named, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PipelineError(
                f"recipe {recipe_name}: onnxruntime's quantizer failed on {src.name}: {first[:160]}"
            ) from exc
        save(model, path, external)
        self.bytes = sum(p.stat().st_size for p in Path(self._folder.name).iterdir())
        self._runner = OrtRunner(path, threads)

    def run(self, ids: np.ndarray) -> np.ndarray:
        return self._runner.run(ids)


def recipe_runner(workspace, variant: str, recipe_name: str, threads: Optional[int] = None,
                  calibration: Optional[list[dict]] = None) -> RecipeRunner:  # fmt: skip
    return RecipeRunner(workspace.artifact(variant, "optimized"), recipe_name, threads, calibration)
