"""The exporters' attention routes compute the model's function: each against the float64 numpy
reference, without and with a cache, for the plain and the grouped-query windowed attention."""

import numpy_reference
import pytest
import torch
from conftest import close, ids_of

from pipeline import load_model
from pipeline.export.routes import attention_route

ROUTES = [None, "explicit", "fused"]  # None: the model's own SDPA


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("variant", ["no-scale", "rope-gqa-window"])
@pytest.mark.parametrize("n", [1, 50, 300])
def test_every_route_computes_the_reference(route, variant, n, state_dict):
    ids = ids_of(n, seed=6)
    want = numpy_reference.forward(state_dict, ids[0].tolist(), variant)
    model = load_model(variant, state_dict=state_dict)
    with attention_route(model, route), torch.inference_mode():
        got = model(ids)[0]
    close(got, want)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("variant", ["baseline", "gqa"])
def test_every_route_with_a_cache(route, variant, state_dict):
    """A prompt of 20 with the cache, then three tokens one per call: the logits of every fed
    position are the reference's."""
    ids = ids_of(23, seed=4)
    want = numpy_reference.forward(state_dict, ids[0].tolist(), variant)
    model = load_model(variant, state_dict=state_dict)
    with attention_route(model, route), torch.inference_mode():
        logits, past = model(ids[:, :20], use_cache=True)
        got = [logits[0]]
        for p in range(20, 23):
            logits, past = model(ids[:, p : p + 1], past, use_cache=True)
            got.append(logits[0])
    close(torch.cat(got), want)


def test_the_route_is_restored_and_names_are_checked(state_dict):
    model = load_model("baseline", state_dict=state_dict)
    before = [layer.attn.route for layer in model.transformer.h]
    with pytest.raises(RuntimeError), attention_route(model, "explicit"):
        raise RuntimeError("an export that fails")
    assert [layer.attn.route for layer in model.transformer.h] == before
    with (
        pytest.raises(ValueError, match="attention route 'flash'"),
        attention_route(model, "flash"),
    ):
        pass
