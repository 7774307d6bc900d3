"""The loader accepts the supplied format and names the problem in everything else."""

import pytest
import torch

from pipeline import PipelineError, load_model
from pipeline.weights import load_state_dict, validate_state_dict


def saved(tmp_path, obj, name="w.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_vectors_as_1_by_d_are_accepted(tmp_path, state_dict):
    sd = {k: (v.reshape(1, -1) if v.dim() == 1 else v) for k, v in state_dict.items()}
    loaded = load_state_dict(saved(tmp_path, sd))
    assert loaded["transformer.h.0.attn.qkv_proj.bias"].shape == (768,)
    for k in state_dict:
        assert torch.equal(loaded[k], state_dict[k])


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.pop("transformer.h.1.mlp.up_proj.bias"), "missing key.*transformer.h.1.mlp.up_proj.bias"),
    (lambda sd: sd.update({"transformer.h.3.attn.qkv_proj.weight": torch.zeros(256, 768)}),
     "unexpected key.*transformer.h.3"),
    (lambda sd: sd.update({"transformer.h.0.attn.out_proj.bias": torch.zeros(255)}),
     r"out_proj.bias has shape \[255\], expected \[256\]"),
    (lambda sd: sd.update({"transformer.h.2.mlp.up_proj.weight": torch.zeros(1280, 256)}),
     r"up_proj.weight has shape \[1280, 256\], expected \[256, 1280\] \(transposed"),
    (lambda sd: sd["transformer.final_ln.weight"].__setitem__(3, float("nan")), "final_ln.weight holds non-finite"),
    (lambda sd: sd.update({"transformer.word_embeddings.weight": torch.zeros(512, 256, dtype=torch.int64)}),
     "word_embeddings.weight has dtype torch.int64"),
    (lambda sd: sd.update({"lm_head.weight": sd["lm_head.weight"] + 1}), "lm_head.weight differs"),
])
def test_bad_state_dicts_are_named(tmp_path, state_dict, mutate, message):
    sd = {k: v.clone() for k, v in state_dict.items()}
    mutate(sd)
    with pytest.raises(PipelineError, match=message):
        load_state_dict(saved(tmp_path, sd))


def test_not_a_state_dict(tmp_path):
    with pytest.raises(PipelineError, match="expected a state dict"):
        load_state_dict(saved(tmp_path, [torch.zeros(3)]))
    with pytest.raises(PipelineError, match="not found"):
        load_state_dict(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file at all")
    with pytest.raises(PipelineError, match="not a readable torch file"):
        load_state_dict(garbage)


def test_truncated_file(tmp_path, state_dict):
    path = saved(tmp_path, state_dict)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="not a readable torch file"):
        load_state_dict(path)


def test_pickle_that_would_run_code_is_refused(code_running_pt):
    path, marker = code_running_pt
    with pytest.raises(PipelineError, match="refused"):
        load_state_dict(path)
    assert not marker.exists()


def test_unseen_state_dict_gives_a_different_model(unseen_state_dict, state_dict):
    validate_state_dict(unseen_state_dict)
    ids = torch.arange(10).reshape(1, -1)
    with torch.inference_mode():
        a = load_model(state_dict=unseen_state_dict)(ids)
        b = load_model(state_dict=state_dict)(ids)
    assert (a - b).abs().max() > 1.0


def test_the_code_running_file_is_real(code_running_pt):
    """Control for the refusal tests: an unsafe load of the same file does run its code."""
    path, marker = code_running_pt
    torch.load(path, weights_only=False)
    assert marker.exists()
