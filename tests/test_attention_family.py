"""The modern attention family (rope, gqa, sliding-window, rope-gqa-window) against independent
references: Hugging Face GPT-NeoX for rotary positions, the float64 numpy reference (written from
the issue's formulas) for the rest, and the two cross-checked where both apply."""

from __future__ import annotations

import numpy_reference
import onnx
import pytest
import torch
from conftest import all_nodes, close, eager_and_float64, ids_of
from oracle import hf_logits, hf_neox

from pipeline import load_model
from pipeline.config import BASE_CONFIG, get_variant
from pipeline.runtime.session import OrtRunner
from pipeline.weights import to_model_layout, validate_state_dict

FAMILY = ["rope", "gqa", "sliding-window", "rope-gqa-window"]


@pytest.fixture(scope="module")
def neox(state_dict):
    return hf_neox(get_variant("rope").config, state_dict)


def test_rope_against_hugging_face_gpt_neox(neox, state_dict):
    ids = torch.cat([ids_of(40, seed=s) for s in (1, 2)])
    with torch.inference_mode():
        got = load_model("rope", state_dict=state_dict)(ids)
    close(got, hf_logits(neox, ids))


def test_the_two_references_agree_on_rope(neox, state_dict):
    ids = ids_of(70, seed=4)
    # HF computes its rotary tables in float32, hence a float32-sized tolerance between float64 models
    close(
        numpy_reference.forward(state_dict, ids[0].tolist(), "rope"), hf_logits(neox, ids), rel=1e-6
    )


@pytest.mark.parametrize("variant", FAMILY)
@pytest.mark.parametrize("n", [255, 256, 257])
def test_family_against_numpy_reference(variant, n, state_dict):
    close(*eager_and_float64(variant, ids_of(n, seed=8), state_dict))


def test_window_at_full_length(state_dict):
    ids = ids_of(1024, seed=9)
    with torch.inference_mode():
        got = load_model("sliding-window", state_dict=state_dict)(ids)
        base = load_model("baseline", state_dict=state_dict)(ids)
    close(got[0], numpy_reference.forward(state_dict, ids[0].tolist(), "sliding-window"))
    # the window changes what the last 768 queries see, and nothing before
    assert (
        torch.equal(got[0, :256], base[0, :256])
        and (got[0, 256:] - base[0, 256:]).abs().max() > 0.1
    )


@pytest.mark.parametrize("variant", ["sliding-window", "rope-gqa-window"])
def test_decode_steps_across_the_window_boundary(variant, state_dict):
    """Prompt of 250, then one token at a time to 262: every step equals the full forward, whose
    last rows the float64 reference confirms."""
    ids = ids_of(262, seed=10)
    model = load_model(variant, state_dict=state_dict)
    with torch.inference_mode():
        full = model(ids)
        logits, past = model(ids[:, :250], use_cache=True)
        steps = [logits]
        for t in range(250, 262):
            step, past = model(ids[:, t : t + 1], past=past, use_cache=True)
            steps.append(step)
    close(torch.cat(steps, dim=1), full, rel=1e-5)
    close(full[0, 250:], numpy_reference.forward(state_dict, ids[0].tolist(), variant)[250:])


def test_gqa_weights_parameters_and_cache(state_dict):
    cfg = get_variant("gqa").config
    model = load_model("gqa", state_dict=state_dict)
    d, h = cfg.d_model, cfg.head_dim
    supplied = state_dict["transformer.h.1.attn.qkv_proj.weight"]
    shared_k = model.transformer.h[1].attn.qkv_proj.weight[:, d : d + h]
    assert torch.allclose(shared_k, (supplied[:, d : d + h] + supplied[:, d + h : 2 * d]) / 2)
    # per layer, K and V each lose one head: 2 * (256 * 128 + 128) = 65,792; x3 = 197,376 fewer
    assert (
        cfg.n_params()
        == 3_156_992 - 197_376
        == 2_959_616
        == sum(p.numel() for p in model.parameters())
    )
    assert cfg.kv_cache_bytes_per_token() * 2 == BASE_CONFIG.kv_cache_bytes_per_token()
    logits, past = model(ids_of(5), use_cache=True)
    assert past[0][0].shape == (1, 1, 5, h)


@pytest.mark.parametrize("variant", FAMILY)
def test_own_state_dict_loads_back(variant, state_dict):
    model = load_model(variant, state_dict=state_dict)
    own = validate_state_dict(model.state_dict(), model.config)
    again = load_model(variant, state_dict=own)
    ids = ids_of(20, seed=3)
    with torch.inference_mode():
        assert torch.equal(model(ids), again(ids))
    if model.config.positions == "rope":
        assert "transformer.positional_embeddings.weight" not in to_model_layout(
            model.config, state_dict
        )


@pytest.mark.slow
@pytest.mark.parametrize("variant", FAMILY)
def test_both_exports_match_eager(variant, exported, exported_opt, state_dict):
    """Portable (standard ops) and ORT-optimised (GroupQueryAttention with the window and kv heads)
    at lengths 1, 2, 17, 300, 1024 and batch 2."""
    fused = onnx.load(str(exported_opt[variant]))
    assert ("com.microsoft", "GroupQueryAttention") in {
        (n.domain, n.op_type) for n in all_nodes(fused.graph)
    }
    model = load_model(variant, state_dict=state_dict)
    runners = [OrtRunner(exported[variant]), OrtRunner(exported_opt[variant])]
    for n in (1, 2, 17, 300, 1024):
        ids = torch.cat([ids_of(n, seed=s) for s in (11, 12)])
        with torch.inference_mode():
            want = model(ids).numpy()
        for runner in runners:
            close(runner.run(ids.numpy()), want)
