"""The torch model against independent references: HF GPT-2 (float64) and a numpy float64 model."""

import dataclasses

import numpy as np
import numpy_reference
import pytest
import torch
from conftest import close, eager_and_float64, ids_of
from oracle import expressible, hf_gpt2, hf_logits

from pipeline import load_model
from pipeline.config import BASE_CONFIG, VARIANTS, ModelConfig, get_variant, resolve_variants
from pipeline.examples import load_examples

HF_VARIANTS = ["baseline", "ln-eps", "no-scale", "gelu-tanh"]


def test_config_matches_spec():
    c = BASE_CONFIG
    assert (c.max_seq_len, c.vocab_size, c.d_model, c.d_mlp, c.n_layers, c.n_heads, c.head_dim) == (
        1024,
        512,
        256,
        1280,
        3,
        2,
        128,
    )
    assert c.ln_eps == 1e-5 and c.gelu_approximate == "none" and c.scale_attn
    assert c.n_params() == 3_156_992
    model = load_model()
    assert sum(p.numel() for p in model.parameters()) == 3_156_992


def test_registry_is_the_seven_variants_and_the_attention_family():
    assert list(VARIANTS) == [
        "baseline",
        "ln-eps",
        "no-scale",
        "gelu-tanh",
        "input-residual",
        "no-mlp-residual",
        "palm",
        "rope",
        "gqa",
        "sliding-window",
        "rope-gqa-window",
    ]
    changed = {
        name: {
            f.name
            for f in dataclasses.fields(ModelConfig)
            if getattr(v.config, f.name) != getattr(BASE_CONFIG, f.name)
        }
        for name, v in VARIANTS.items()
    }
    assert changed == {
        "baseline": set(),
        "ln-eps": {"ln_eps"},
        "no-scale": {"scale_attn"},
        "gelu-tanh": {"gelu_approximate"},
        "input-residual": {"mlp_residual"},
        "no-mlp-residual": {"mlp_residual"},
        "palm": {"mlp_input"},
        "rope": {"positions"},
        "gqa": {"n_kv_heads"},
        "sliding-window": {"attn_window"},
        "rope-gqa-window": {"positions", "n_kv_heads", "attn_window"},
    }
    assert (VARIANTS["gqa"].config.kv_heads, VARIANTS["sliding-window"].config.attn_window) == (
        1,
        256,
    )
    assert VARIANTS["ln-eps"].config.ln_eps == 1e-4
    assert [v.name for v in resolve_variants("palm,ln-eps")] == ["palm", "ln-eps"]
    with pytest.raises(ValueError, match="unknown variant"):
        get_variant("nope")


def test_frozen_config():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BASE_CONFIG.d_model = 8
    with pytest.raises(ValueError):
        ModelConfig(d_model=10, n_heads=3)


@pytest.mark.parametrize("variant", HF_VARIANTS)
@pytest.mark.parametrize("n", [1, 37, 300])
def test_against_hugging_face_gpt2(variant, n, state_dict):
    cfg = get_variant(variant).config
    assert expressible(cfg)
    ids = ids_of(n)
    with torch.inference_mode():
        got = load_model(variant, state_dict=state_dict)(ids)
    assert got.shape == (1, n, 512) and got.dtype == torch.float32
    close(got[0], hf_logits(hf_gpt2(cfg, state_dict), ids))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n", [1, 23])
def test_against_numpy_reference(variant, n, state_dict):
    close(*eager_and_float64(variant, ids_of(n, seed=5), state_dict))


def test_numpy_reference_agrees_with_hf(state_dict):
    """The two oracles agree with each other where both apply."""
    ids = ids_of(19, seed=3)
    for variant in HF_VARIANTS:
        hf = hf_logits(hf_gpt2(get_variant(variant).config, state_dict), ids).numpy()
        np.testing.assert_allclose(
            numpy_reference.forward(state_dict, ids[0].tolist(), variant),
            hf,
            rtol=0,
            atol=1e-9 * max(1.0, np.abs(hf).max()),
        )


def test_every_variant_moves_the_logits(state_dict):
    ids = ids_of(300)  # past the 256-token window
    with torch.inference_mode():
        base = load_model("baseline", state_dict=state_dict)(ids)
        for name in list(VARIANTS)[1:]:
            diff = (load_model(name, state_dict=state_dict)(ids) - base).abs().max().item()
            assert diff > 1e-3, f"{name} barely changes the logits ({diff:.2g})"
    assert 5 < base.abs().max().item() < 200  # logits of order 10


def test_causal_mask_future_tokens_do_not_matter(state_dict):
    model = load_model("baseline", state_dict=state_dict)
    a, b = ids_of(40), ids_of(40).clone()
    b[0, 30:] = (b[0, 30:] + 1) % 512
    with torch.inference_mode():
        ya, yb = model(a)[0], model(b)[0]
    assert torch.equal(ya[:30], yb[:30]) or (ya[:30] - yb[:30]).abs().max() < 1e-5
    assert (ya[30:] - yb[30:]).abs().max() > 1e-2


def test_baseline_matches_the_shipped_examples(state_dict):
    model = load_model("baseline", state_dict=state_dict)
    examples = load_examples()
    assert len(examples) >= 6 and {1, 1024} <= {e.seq_len for e in examples}
    with torch.inference_mode():
        for ex in examples:
            close(model(ex.input_ids)[0], ex.logits)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_batch_is_its_rows(variant, state_dict):
    """Batch B >= 1: each row of a batch of 3 equals the float64 reference of that row alone."""
    ids = torch.cat([ids_of(21, seed=s) for s in (1, 2, 3)])
    with torch.inference_mode():
        got = load_model(variant, state_dict=state_dict)(ids)
    assert got.shape == (3, 21, 512)
    for row in range(3):
        close(got[row], numpy_reference.forward(state_dict, ids[row].tolist(), variant))


def test_batch_against_hugging_face(state_dict):
    ids = torch.cat([ids_of(40, seed=s) for s in (4, 5)])
    with torch.inference_mode():
        got = load_model("gelu-tanh", state_dict=state_dict)(ids)
    want = hf_logits(hf_gpt2(get_variant("gelu-tanh").config, state_dict), ids)
    assert want.shape == (2, 40, 512)
    close(got, want)
