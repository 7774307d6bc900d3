"""The supplied state-dict format: what loads, what is refused with one line, and the stand-ins."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, run

from pipeline import PipelineError, load_model
from pipeline.weights import (
    DEFAULT_EXAMPLES,
    DEFAULT_WEIGHTS,
    expected_shapes,
    load_state_dict,
    validate_state_dict,
)


def test_weights_finite_in_float64_but_not_in_float32(state_dict, tmp_path):
    sd = {k: v.double() for k, v in state_dict.items()}
    sd["transformer.h.1.mlp.up_proj.bias"][5] = 1e300
    sd["lm_head.weight"] = sd["transformer.word_embeddings.weight"]
    with pytest.raises(PipelineError, match="up_proj.bias holds values beyond float32's range"):
        validate_state_dict(sd)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    one_line_error(
        run("infer", "--ids", "1,2", "--runtime", "torch", "--weights", path), "beyond float32"
    )


def test_the_models_own_state_dict_loads_back(tmp_path, state_dict):
    model = load_model(state_dict=state_dict)
    own = model.state_dict()
    assert "lm_head.weight" not in own
    path = tmp_path / "own.pt"
    torch.save(own, path)
    again = load_model(weights=path)
    ids = torch.arange(9).reshape(1, -1)
    with torch.inference_mode():
        assert torch.equal(again(ids), model(ids))


# the classes behind them ---------------------------------------------------------------------
KEY = "transformer.h.0.attn.out_proj.weight"


LOADABLE = [torch.float16, torch.bfloat16, torch.float64] + [
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n)
]


@pytest.mark.parametrize("dtype", LOADABLE, ids=str)
def test_every_float_dtype_loads_as_its_float32_value(tmp_path, state_dict, dtype):
    sd = dict(state_dict)
    sd[KEY] = state_dict[KEY].to(dtype)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    assert torch.equal(load_state_dict(path)[KEY], sd[KEY].float())


REFUSED = {
    "int64": (lambda t: t.long(), "dtype torch.int64"),
    "int8": (lambda t: t.to(torch.int8), "dtype torch.int8"),
    "uint8": (lambda t: t.to(torch.uint8), "dtype torch.uint8"),
    "bool": (lambda t: t > 0, "dtype torch.bool"),
    "complex64": (lambda t: t.to(torch.complex64), "dtype torch.complex64"),
    "sparse": (lambda t: t.to_sparse(), "layout torch.sparse_coo"),
    "sparse_csr": (lambda t: t.to_sparse_csr(), "layout torch.sparse_csr"),
    "quantized": (lambda t: torch.quantize_per_tensor(t, 0.01, 0, torch.qint8), "is quantized"),
    "meta": (lambda t: t.to("meta"), "meta tensor"),
    "list": (lambda t: t.tolist(), "is a list, not a tensor"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_every_other_tensor_kind_gets_one_line(tmp_path, state_dict, kind):
    make, message = REFUSED[kind]
    sd = dict(state_dict)
    sd[KEY] = make(state_dict[KEY])
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    one_line_error(run("infer", "--ids", "1", "--runtime", "torch", "--weights", path), message)


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


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda sd: sd.pop("transformer.h.1.mlp.up_proj.bias"),
            "missing key.*transformer.h.1.mlp.up_proj.bias",
        ),
        (
            lambda sd: sd.update({"transformer.h.3.attn.qkv_proj.weight": torch.zeros(256, 768)}),
            "unexpected key.*transformer.h.3",
        ),
        (
            lambda sd: sd.update({"transformer.h.0.attn.out_proj.bias": torch.zeros(255)}),
            r"out_proj.bias has shape \[255\], expected \[256\]",
        ),
        (
            lambda sd: sd.update({"transformer.h.2.mlp.up_proj.weight": torch.zeros(1280, 256)}),
            r"up_proj.weight has shape \[1280, 256\], expected \[256, 1280\] \(transposed",
        ),
        (
            lambda sd: sd["transformer.final_ln.weight"].__setitem__(3, float("nan")),
            "final_ln.weight holds non-finite",
        ),
        (
            lambda sd: sd.update(
                {"transformer.word_embeddings.weight": torch.zeros(512, 256, dtype=torch.int64)}
            ),
            "word_embeddings.weight has dtype torch.int64",
        ),
        (
            lambda sd: sd.update({"lm_head.weight": sd["lm_head.weight"] + 1}),
            "lm_head.weight differs",
        ),
    ],
)
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


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_standins  # noqa: E402


def test_remade_standins_equal_the_shipped_ones(tmp_path):
    make_standins.make(tmp_path)
    for name, shipped in (
        ("dummy_gpt2_model.pt", DEFAULT_WEIGHTS),
        ("example_outputs.pt", DEFAULT_EXAMPLES),
    ):
        new = torch.load(tmp_path / name, weights_only=True)
        old = torch.load(shipped, weights_only=True)
        if isinstance(old, dict):
            assert list(new) == list(old) == list(expected_shapes())
            for k in old:
                assert torch.equal(new[k], old[k]), k
        else:
            assert len(new) == len(old)
            for a, b in zip(new, old):
                assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(
                    a["logits"], b["logits"]
                )


def test_standin_weights_are_not_trivial():
    sd = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    for key, value in sd.items():
        if key.endswith("ln.weight"):
            assert (value - 1).abs().max() > 0.05, key
        if key.endswith(".bias"):
            assert value.abs().max() > 0.01, key
    assert torch.equal(sd["lm_head.weight"], sd["transformer.word_embeddings.weight"])
