"""Where a model's weights come from: one entry per source (import-light).

`--weights PATH` is matched against the entries in order; the first whose `matches` holds reads
it. A source with a `config` reader also sets the model's shape (a checkpoint directory carries
its own config), so its variants get a size of their own, named after the checkpoint and its
hash: two checkpoints never share an exported file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    matches: Callable[[Path], bool]
    read: str  # "module:function": path -> {name: tensor} in the spec's key names, unchecked
    config: Optional[str] = None  # "module:function": path -> Checkpoint (it sets the shape)
    # "module:function": (path, {file read: its sha256}) -> the identity of the bytes read;
    # None: the one file's hash
    identity_of_read: Optional[str] = None
    # "module:function": path -> the identity of what is on disk now; None: the file's sha256
    identity_on_disk: Optional[str] = None
    # "module:function": (path, a message in the spec's key names) -> the same in the source's own
    explain: Optional[str] = None

    def reader(self) -> Callable:
        return _resolve(self.read)

    def config_reader(self) -> Optional[Callable]:
        return _resolve(self.config) if self.config else None

    def identity(self, path: Path, hashes: dict) -> str:
        """The identity of the bytes just read from path (hashes: what reads.recording saw)."""
        if self.identity_of_read:
            return _resolve(self.identity_of_read)(Path(path), hashes)
        return hashes[Path(path)]

    def sha256(self, path: Path) -> str:
        if self.identity_on_disk:
            return _resolve(self.identity_on_disk)(Path(path))
        from .reads import file_sha256

        return file_sha256(path)

    def in_own_names(self, path: Path, message: str) -> str:
        return _resolve(self.explain)(Path(path), message) if self.explain else message


def _resolve(target: str) -> Callable:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "hf",
            "a Hugging Face directory: config.json (model_type gpt2, llama, mistral or qwen2) and "
            "model.safetensors or pytorch_model.bin, sharded with their index too",
            matches=lambda p: p.is_dir(),
            read="pipeline.hf_checkpoint:read_weights",
            config="pipeline.hf_checkpoint:read_checkpoint",
            identity_of_read="pipeline.hf_checkpoint:identity_of_read",
            identity_on_disk="pipeline.hf_checkpoint:checkpoint_sha256",
            explain="pipeline.hf_checkpoint:in_own_names",
        ),
        Source(
            "safetensors",
            "one .safetensors file in the spec's key names",
            matches=lambda p: p.suffix == ".safetensors",
            read="pipeline.hf_gpt2:read_spec_safetensors",
        ),
        Source(
            "spec",
            "a torch.save state dict in the spec's key names (state_dict_format.md)",
            matches=lambda p: True,
            read="pipeline.reads:read_torch_state_dict",
        ),
    )
}


def source_for(path: Path) -> Source:
    return next(s for s in SOURCES.values() if s.matches(Path(path)))


_CHECKPOINT_SIZES: dict[str, str] = {}  # resolved path -> its registered size


def checkpoint_size(path) -> Optional[str]:
    """The size registered for a checkpoint that sets its own shape (None for the spec's format,
    whose shape comes from --size)."""
    if path is None:
        return None
    read_checkpoint = source_for(Path(path)).config_reader()
    if read_checkpoint is None:
        return None
    key = str(Path(path).resolve())
    if key not in _CHECKPOINT_SIZES:
        from .config import register_size

        checkpoint = read_checkpoint(Path(path))
        register_size(checkpoint.size, checkpoint.fields, checkpoint.description)
        _CHECKPOINT_SIZES[key] = checkpoint.size
    return _CHECKPOINT_SIZES[key]
