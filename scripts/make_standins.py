"""Make the stand-ins for the supplied files (pipeline/data/):

- dummy_gpt2_model.pt: deterministic weights in the supplied state-dict format;
- example_outputs.pt: example inputs with logits from Hugging Face GPT2LMHeadModel in float64
  (an implementation independent of ours), stored as float32 like the supplied file.

Usage: python scripts/make_standins.py [OUT_DIR]   (needs the `test` extra: transformers)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline.config import BASE_CONFIG
from pipeline.examples import standin_input_ids
from pipeline.fileio import torch_save_atomic
from pipeline.weights import DATA, make_standin_state_dict

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "tests")
)  # the test-only Hugging Face oracle
from oracle import hf_gpt2, hf_logits  # noqa: E402


def make(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dict = make_standin_state_dict()
    oracle = hf_gpt2(BASE_CONFIG, state_dict)
    examples = [
        {"input_ids": ids, "logits": hf_logits(oracle, ids).to(torch.float32)}
        for ids in standin_input_ids()
    ]
    torch_save_atomic(state_dict, out_dir / "dummy_gpt2_model.pt")
    torch_save_atomic(examples, out_dir / "example_outputs.pt")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(str(DATA)))
