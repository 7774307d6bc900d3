"""sources.py: which reader a --weights path gets, and how each source names and hashes itself."""

import hashlib
import json

import torch

from pipeline.sources import SOURCES, source_for
from pipeline.weights import DEFAULT_WEIGHTS


def test_each_path_kind_gets_its_source(tmp_path):
    (tmp_path / "ckpt").mkdir()
    assert source_for(tmp_path / "ckpt").name == "hf"
    assert source_for(tmp_path / "w.safetensors").name == "safetensors"
    assert source_for(tmp_path / "w.pt").name == "spec"
    assert source_for(tmp_path / "no-suffix").name == "spec"  # the spec's torch.save format


def test_a_files_identity_is_the_sha256_of_its_bytes(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"x": torch.ones(3)}, path)
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    source = source_for(path)
    assert source.sha256(path) == want
    assert source.identity(path, {path: want}) == want  # the hash of the bytes that were read


def test_a_checkpoint_explains_errors_in_its_own_key_names(tmp_path):
    message = "weights: transformer.h.1.attn.out_proj.weight has shape [2, 3]"
    for model_type, own in (
        ("gpt2", "h.1.attn.c_proj"),
        ("llama", "model.layers.1.self_attn.o_proj"),
    ):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        explained = SOURCES["hf"].in_own_names(folder, message)
        assert "out_proj" not in explained and own in explained
    assert SOURCES["spec"].in_own_names(tmp_path, message) == message


def test_every_source_resolves_its_readers():
    for source in SOURCES.values():
        assert callable(source.reader())
        assert source.config_reader() is None or callable(source.config_reader())
    assert DEFAULT_WEIGHTS.is_file()
