"""The decoders step by step against the float64 reference, and their I/O contract."""

import numpy as np
import numpy_reference
import onnx
import pytest
import torch
from conftest import PORTABLE_DECODER_VARIANTS, variants_param

from pipeline import load_model
from pipeline.config import BASE_CONFIG, VARIANTS
from pipeline.export.io_spec import decoder_io
from pipeline.generation import pad_left
from pipeline.runtime.decoders import (
    OrtDecoder,
    SharedCacheDecoder,
    TorchDecoder,
    positions_from_mask,
)

FULL = 1024
SHORT_END = 320  # where a short prompt's steps stop: past the sliding window's 256
# the variants stepped to the context's end (the cache buffers' last row): baseline, and the one
# that combines rotary positions, grouped key/value heads and the sliding window; the others'
# attention is checked 64 steps past their 300-token prompt (past the window's 256)
LONG_DECODE_VARIANTS = ("baseline", "rope-gqa-window")


@pytest.fixture(scope="module")
def long_ids():
    return np.random.default_rng(5).integers(0, 512, (1, FULL), dtype=np.int64)


@pytest.fixture(scope="module")
def references(state_dict, long_ids):
    """variant -> float64 numpy logits of the whole 1024-token sequence (independent of the model),
    computed once when first asked for."""
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = numpy_reference.forward(state_dict, long_ids[0].tolist(), variant)
        return cache[variant]

    return get


def teacher_forced(decoder, ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """Logits at every position: the prompt in one call, then one token per call."""
    mask = np.ones_like(ids[:, :prompt_len])
    out = [decoder_logits(decoder, "prefill", ids[:, :prompt_len], mask, positions_from_mask(mask))]
    for p in range(prompt_len, ids.shape[1]):
        mask = np.ones_like(ids[:, : p + 1])
        out.append(decoder_logits(decoder, "step", ids[:, p], mask, np.full(ids.shape[0], p)))
    return np.concatenate(out, axis=1)


def decoder_logits(decoder, call, *args):
    """All positions' logits of the call (the decoders return only the last; read the rest too)."""
    if call == "prefill":
        last = decoder.prefill(*args)
        full = getattr(decoder, "all_logits", None)
        return full() if full else last[:, None]
    return decoder.step(*args)[:, None]


def close(got, want, what):
    bound = 1e-4 * max(1.0, np.abs(want).max())
    diff = np.abs(got - want).max()
    assert diff <= bound, f"{what}: max |diff| {diff:.3g} > {bound:.3g}"


# Every variant from a 300-token prompt; the short prompts (a one-token prefill, and a step path
# starting below the window) on the variants whose attention differs, not on every wiring change.
DECODE_CASES = [(v, 300) for v in VARIANTS] + [
    (v, n) for v in ("baseline", "rope", "sliding-window", "rope-gqa-window") for n in (1, 17)
]


@pytest.mark.parametrize(
    "variant, prompt_len",
    [
        (v, n) if v == "baseline" and n == 300 else pytest.param(v, n, marks=pytest.mark.slow)
        for v, n in DECODE_CASES
    ],
)
def test_every_decode_step_matches_the_reference(
    variant, prompt_len, decoder_file, references, long_ids, state_dict
):
    # a short prompt's steps end past the window (W = 256), not at the context's end (causal
    # attention makes the reference's first positions those of the shorter input)
    end = FULL if variant in LONG_DECODE_VARIANTS and prompt_len >= 300 else SHORT_END
    end = max(end, prompt_len + 64)
    want, ids = references(variant)[:end], long_ids[:, :end]
    runs = {
        "torch": TorchDecoder(load_model(variant, state_dict=state_dict)),
        "ort-opt": OrtDecoder(decoder_file(variant, "decoder-optimized"), VARIANTS[variant].config),
        "ort-opt, cache in place": SharedCacheDecoder(
            decoder_file(variant, "decoder-optimized"), VARIANTS[variant].config
        ),
    }
    if variant in PORTABLE_DECODER_VARIANTS:
        runs["ort"] = OrtDecoder(decoder_file(variant, "decoder"), VARIANTS[variant].config)
    for name, decoder in runs.items():
        got = teacher_forced(decoder, ids, prompt_len)[0]
        # the prefill call returns the last prompt position; steps the rest up to the end
        close(
            got[-(end - prompt_len) :], want[prompt_len:], f"{variant} {name} L={prompt_len} steps"
        )
        close(got[0], want[prompt_len - 1], f"{variant} {name} L={prompt_len} prefill")


@pytest.mark.parametrize("variant", variants_param(["baseline", "rope-gqa-window"]))
def test_rows_of_different_lengths_with_the_cache_in_place(variant, decoder_file, state_dict):
    """Prompts of 3, 300 and 40 tokens in one batch, then 6 steps, through the fused decoder with
    one shared past/present buffer and per-row lengths (no left padding inside): every row's
    logits at every step are the float64 reference's of that row alone (300 > the window)."""
    rng = np.random.default_rng(12)
    prompts = [rng.integers(0, 512, n).tolist() for n in (3, 300, 40)]
    more = rng.integers(0, 512, (3, 6))
    decoder = SharedCacheDecoder(
        decoder_file(variant, "decoder-optimized"), VARIANTS[variant].config
    )
    ids, mask = pad_left(prompts)
    positions = positions_from_mask(mask)
    got = [decoder.prefill(ids, mask, positions)]
    next_pos = positions[:, -1] + 1
    for j in range(more.shape[1]):
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
        got.append(decoder.step(more[:, j], mask, next_pos))
        next_pos = next_pos + 1
    for row, prompt in enumerate(prompts):
        want = numpy_reference.forward(state_dict, prompt + more[row].tolist(), variant)
        close(np.stack([g[row] for g in got]), want[len(prompt) - 1 :], f"{variant} row {row}")


def test_decoder_io_is_the_declared_one(decoder_file):
    model = onnx.load(str(decoder_file("baseline", "decoder")), load_external_data=False)
    io = decoder_io(BASE_CONFIG)
    for values, specs in ((model.graph.input, io.inputs), (model.graph.output, io.outputs)):
        assert [v.name for v in values] == [t.name for t in specs]
        for v, t in zip(values, specs):
            assert [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] == list(
                t.axes
            )
    assert {n.domain for n in model.graph.node} == {""}
    fused = onnx.load(str(decoder_file("baseline", "decoder-optimized")), load_external_data=False)
    assert ("com.microsoft", "GroupQueryAttention") in {
        (n.domain, n.op_type) for n in fused.graph.node
    }


@pytest.mark.parametrize("variant", variants_param(["baseline", "palm"]))
def test_portable_decoder_in_onnx_reference(variant, decoder_file, state_dict):
    from onnx.reference import ReferenceEvaluator

    from pipeline.export.io_spec import past_names

    ids = np.random.default_rng(8).integers(0, 512, (2, 9), dtype=np.int64)
    evaluator = ReferenceEvaluator(str(decoder_file(variant, "decoder")))
    empty = np.zeros((2, 2, 0, 128), np.float32)
    feed = {
        "input_ids": ids[:, :6],
        "attention_mask": np.ones((2, 6), np.int64),
        "position_ids": np.tile(np.arange(6), (2, 1)),
        **{n: empty for n in past_names(BASE_CONFIG)},
    }
    outs = evaluator.run(None, feed)
    got = [outs[0]]
    for p in range(6, 9):
        feed = {
            "input_ids": ids[:, p : p + 1],
            "attention_mask": np.ones((2, p + 1), np.int64),
            "position_ids": np.full((2, 1), p),
            **dict(zip(past_names(BASE_CONFIG), outs[1:])),
        }
        outs = evaluator.run(None, feed)
        got.append(outs[0])
    got = np.concatenate(got, 1)
    for row in range(2):
        close(
            got[row], numpy_reference.forward(state_dict, ids[row].tolist(), variant), f"row {row}"
        )


def test_padded_batch_logits_equal_the_single_rows(state_dict):
    """The mask and positions of a left-padded batch give each row its own logits (float64 ref)."""
    prompts = [[5, 6, 7], [9, 8, 7, 6, 5, 4, 3]]
    ids, mask = pad_left(prompts)
    with torch.inference_mode():
        logits = load_model("input-residual", state_dict=state_dict)(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions_from_mask(mask)),
        ).numpy()
    for row, p in enumerate(prompts):
        close(
            logits[row, -len(p) :],
            numpy_reference.forward(state_dict, p, "input-residual"),
            f"row {row}",
        )
