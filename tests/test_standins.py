"""The shipped stand-ins are what the committed script makes, and their logits come from HF."""
import sys
from pathlib import Path

import torch

from pipeline.weights import DEFAULT_EXAMPLES, DEFAULT_WEIGHTS, expected_shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_standins  # noqa: E402


def test_remade_standins_equal_the_shipped_ones(tmp_path):
    make_standins.make(tmp_path)
    for name, shipped in (("dummy_gpt2_model.pt", DEFAULT_WEIGHTS), ("example_outputs.pt", DEFAULT_EXAMPLES)):
        new = torch.load(tmp_path / name, weights_only=True)
        old = torch.load(shipped, weights_only=True)
        if isinstance(old, dict):
            assert list(new) == list(old) == list(expected_shapes())
            for k in old:
                assert torch.equal(new[k], old[k]), k
        else:
            assert len(new) == len(old)
            for a, b in zip(new, old):
                assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["logits"], b["logits"])


def test_standin_weights_are_not_trivial():
    sd = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    for key, value in sd.items():
        if key.endswith("ln.weight"):
            assert (value - 1).abs().max() > 0.05, key
        if key.endswith(".bias"):
            assert value.abs().max() > 0.01, key
    assert torch.equal(sd["lm_head.weight"], sd["transformer.word_embeddings.weight"])
