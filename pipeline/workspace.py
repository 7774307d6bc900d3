"""The workspace a command works in: its output folder, its weights and the artifacts made there.

The weights are read, checked and hashed once per process and size; every stage asks the
workspace for a state dict, a model or an artifact instead of re-deriving them from paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config import ModelConfig, get_variant, size_of, variant_size
from .sources import checkpoint_size
from .weights import PathLike, read_weights, weights_path


class Workspace:
    def __init__(self, out_dir: PathLike = "exported", weights: Optional[PathLike] = None):
        self.out_dir = Path(out_dir)
        self.weights = None if weights is None else Path(weights)
        # a checkpoint directory sets its own shape: its variants are 'variant@<checkpoint>'
        self.size = checkpoint_size(self.weights)
        self._weights: dict[str, tuple[dict, str]] = {}  # size -> (state dict, its bytes' sha256)

    def __repr__(self) -> str:
        return f"Workspace({str(self.out_dir)!r}, weights={self.weights and str(self.weights)!r})"

    def weights_file(self, cfg: ModelConfig) -> Path:
        """The user's weights, or the stand-in of cfg's size."""
        return weights_path(self.weights, cfg)

    def model_config(self, variant: str) -> ModelConfig:
        return get_variant(variant).config

    def sized(self, variant: str) -> str:
        """The variant at the checkpoint's size when the weights are a checkpoint directory."""
        if self.size is None or "@" in variant:
            return variant
        return f"{variant}@{self.size}"

    def state_dict(self, variant_or_cfg) -> dict:
        """The checked state dict in the supplied format, read once per size."""
        return self._read(variant_or_cfg)[0]

    def weights_sha256(self, variant_or_cfg) -> str:
        """The identity of the bytes state_dict() was read from (what artifacts record)."""
        return self._read(variant_or_cfg)[1]

    def _read(self, variant_or_cfg) -> tuple[dict, str]:
        cfg = _config(variant_or_cfg)
        size = variant_size(variant_or_cfg) if isinstance(variant_or_cfg, str) else size_of(cfg)
        if size not in self._weights:
            self._weights[size] = read_weights(self.weights_file(cfg), cfg)
        return self._weights[size]

    def model(self, variant: str):
        """An eval-mode torch model of the variant with these weights."""
        from .api import load_model

        return load_model(variant, state_dict=self.state_dict(variant))

    def artifact(self, variant: str, flavour: str = "portable") -> Path:
        """The variant's file of this flavour in the output folder, exported unless it is current."""
        from .export.onnx_export import ensure_export

        cfg = get_variant(variant).config
        return ensure_export(
            variant,
            self.weights_file(cfg),
            self.out_dir,
            self.state_dict(variant),
            flavour,
            weights_sha=self.weights_sha256(variant),
        )

    def prepare(self, pairs) -> None:
        """Every (variant, flavour) file exported now, two at a time where two cores are free
        (the up-to-date ones kept): a command that needs several files would otherwise export
        them one by one as it reaches them."""
        from .errors import PipelineError
        from .export.identity import rebuild_reason
        from .export.pool import default_processes, export_pairs
        from .fileio import check_writable_dir

        def stale(variant, flavour):
            weights = self.weights_file(get_variant(variant).config)
            sha = self.weights_sha256(variant)
            return rebuild_reason(variant, flavour, weights, self.out_dir, weights_sha=sha)

        pairs = [(v, f) for v, f in dict.fromkeys(pairs) if f is not None and stale(v, f)]
        if len(pairs) < 2:
            return  # one file gains nothing
        try:
            check_writable_dir(self.out_dir)
        except PipelineError:
            return  # a folder we cannot write into: the step that needs a file says so
        cfg = get_variant(pairs[0][0]).config
        export_pairs(pairs, self.weights_file(cfg), self.out_dir, processes=default_processes())

    def genai_folder(self, variant: str, threads: Optional[int] = None) -> Path:
        """The onnxruntime-genai folder of the variant (its config set for these threads)."""
        from .export.genai import ensure_genai_folder

        cfg = get_variant(variant).config
        return ensure_genai_folder(
            variant,
            self.weights_file(cfg),
            self.out_dir,
            self.state_dict(variant),
            threads,
            weights_sha=self.weights_sha256(variant),
        )


def _config(variant_or_cfg) -> ModelConfig:
    return (
        variant_or_cfg
        if isinstance(variant_or_cfg, ModelConfig)
        else get_variant(variant_or_cfg).config
    )
