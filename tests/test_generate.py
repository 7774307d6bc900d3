"""Generation: every decode step equals the full forward (against the float64 numpy reference),
the runtimes agree token for token, batches are their rows, and bad input is one line."""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from pipeline import PipelineError, load_model
from pipeline.cli import cli
from pipeline.config import BASE_CONFIG, VARIANTS
from pipeline.export.io_spec import decoder_io
from pipeline.fileio import torch_save_atomic
from pipeline.generate import OrtDecoder, Sampling, TorchDecoder, generate, positions_from_mask, pad_left

import numpy_reference

FULL = 1024


@pytest.fixture(scope="module")
def decoders(exported, state_dict):
    """Both decoder flavours of every variant, in the session's export folder."""
    from pipeline.export import export_variants

    flavours = ("decoder", "decoder-optimized")
    paths = export_variants(VARIANTS, out_dir=exported["baseline"].parent, flavours=flavours, processes=2)
    return dict(zip([(v, fl) for v in VARIANTS for fl in flavours], paths))


def test_parallel_export_returns_the_files_in_the_order_asked(decoders):
    """The workers finish in their own order (slowest traces are handed out first); the paths
    still come back variant by variant, flavours as given, each file being what it says."""
    from pipeline.export import onnx_metadata

    for (variant, flavour), path in decoders.items():
        meta = onnx_metadata(path)
        assert (meta["pipeline.variant"], meta["pipeline.flavour"]) == (variant, flavour)


@pytest.fixture(scope="module")
def long_ids():
    return np.random.default_rng(5).integers(0, 512, (1, FULL), dtype=np.int64)


@pytest.fixture(scope="module")
def references(state_dict, long_ids):
    """float64 numpy logits of the whole 1024-token sequence, per variant (independent of the model)."""
    return {v: numpy_reference.forward(state_dict, long_ids[0].tolist(), v) for v in VARIANTS}


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


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("prompt_len", [1, 17, 300])
def test_every_decode_step_matches_the_reference(variant, prompt_len, decoders, references, long_ids, state_dict):
    want = references[variant]
    runs = {"torch": TorchDecoder(load_model(variant, state_dict=state_dict)),
            "ort": OrtDecoder(decoders[(variant, "decoder")], VARIANTS[variant].config),
            "ort-opt": OrtDecoder(decoders[(variant, "decoder-optimized")], VARIANTS[variant].config)}
    for name, decoder in runs.items():
        got = teacher_forced(decoder, long_ids, prompt_len)[0]
        # the prefill call returns the last prompt position; steps the rest up to 1024
        close(got[-(FULL - prompt_len):], want[prompt_len:], f"{variant} {name} L={prompt_len} steps")
        close(got[0], want[prompt_len - 1], f"{variant} {name} L={prompt_len} prefill")


def test_decoder_io_is_the_declared_one(decoders):
    model = onnx.load(str(decoders[("baseline", "decoder")]), load_external_data=False)
    io = decoder_io(BASE_CONFIG)
    for values, specs in ((model.graph.input, io.inputs), (model.graph.output, io.outputs)):
        assert [v.name for v in values] == [t.name for t in specs]
        for v, t in zip(values, specs):
            assert [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] == list(t.axes)
    assert {n.domain for n in model.graph.node} == {""}
    fused = onnx.load(str(decoders[("baseline", "decoder-optimized")]), load_external_data=False)
    assert ("com.microsoft", "MultiHeadAttention") in {(n.domain, n.op_type) for n in fused.graph.node}


def test_portable_decoder_in_onnx_reference(decoders, state_dict):
    from onnx.reference import ReferenceEvaluator

    from pipeline.export.io_spec import past_names

    ids = np.random.default_rng(8).integers(0, 512, (2, 9), dtype=np.int64)
    evaluator = ReferenceEvaluator(str(decoders[("palm", "decoder")]))
    empty = np.zeros((2, 2, 0, 128), np.float32)
    feed = {"input_ids": ids[:, :6], "attention_mask": np.ones((2, 6), np.int64),
            "position_ids": np.tile(np.arange(6), (2, 1)), **{n: empty for n in past_names(BASE_CONFIG)}}
    outs = evaluator.run(None, feed)
    got = [outs[0]]
    for p in range(6, 9):
        feed = {"input_ids": ids[:, p:p + 1], "attention_mask": np.ones((2, p + 1), np.int64),
                "position_ids": np.full((2, 1), p), **dict(zip(past_names(BASE_CONFIG), outs[1:]))}
        outs = evaluator.run(None, feed)
        got.append(outs[0])
    got = np.concatenate(got, 1)
    for row in range(2):
        close(got[row], numpy_reference.forward(state_dict, ids[row].tolist(), "palm"), f"row {row}")


@pytest.fixture(scope="module")
def unseen_weights(tmp_path_factory, unseen_state_dict):
    path = tmp_path_factory.mktemp("unseen") / "weights.pt"
    torch_save_atomic(unseen_state_dict, path)
    return path


@pytest.mark.parametrize("which", ["stand-in", "unseen"])
def test_greedy_ids_agree_across_the_four_runtimes(which, unseen_weights, tmp_path):
    weights = None if which == "stand-in" else unseen_weights
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]]
    got = {rt: generate("gelu-tanh", prompts, 64, rt, weights=weights, out_dir=tmp_path).sequences
           for rt in ("torch", "ort", "ort-opt", "genai")}
    assert all(len(s) == 5 + 64 for s in got["torch"])
    assert got["ort"] == got["torch"] and got["ort-opt"] == got["torch"] and got["genai"] == got["torch"]


def test_seeded_sampling_is_reproducible_and_agrees(tmp_path, unseen_weights):
    sampling = Sampling(greedy=False, temperature=8.0, top_k=50, top_p=0.95, seed=7)
    runs = {rt: generate("baseline", [[1, 2, 3]], 40, rt, sampling, weights=unseen_weights, out_dir=tmp_path).sequences
            for rt in ("torch", "ort", "ort-opt")}
    assert runs["ort"] == runs["torch"] == runs["ort-opt"]
    assert len(set(runs["torch"][0][3:])) > 3  # really sampled, not one repeated token
    again = generate("baseline", [[1, 2, 3]], 40, "torch", sampling, weights=unseen_weights).sequences
    other = generate("baseline", [[1, 2, 3]], 40, "torch", Sampling(False, 8.0, 50, 0.95, seed=8),
                     weights=unseen_weights).sequences
    assert again == runs["torch"] and other != again


@pytest.mark.parametrize("runtime", ["torch", "ort", "ort-opt"])
def test_a_batch_of_different_lengths_is_its_rows(runtime, tmp_path, unseen_weights):
    prompts = [[7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [400, 3, 2, 1, 0]]
    batch = generate("palm", prompts, 20, runtime, weights=unseen_weights, out_dir=tmp_path).sequences
    singles = [generate("palm", [p], 20, runtime, weights=unseen_weights, out_dir=tmp_path).sequences[0]
               for p in prompts]
    assert batch == singles
    assert pad_left(prompts)[1].sum() == 18


def test_padded_batch_logits_equal_the_single_rows(state_dict):
    """The mask and positions of a left-padded batch give each row its own logits (float64 ref)."""
    prompts = [[5, 6, 7], [9, 8, 7, 6, 5, 4, 3]]
    ids, mask = pad_left(prompts)
    with torch.inference_mode():
        logits = load_model("input-residual", state_dict=state_dict)(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions_from_mask(mask))).numpy()
    for row, p in enumerate(prompts):
        close(logits[row, -len(p):], numpy_reference.forward(state_dict, p, "input-residual"), f"row {row}")


def test_genai_refuses_a_mixed_length_batch(tmp_path):
    with pytest.raises(PipelineError, match="same length"):
        generate("baseline", [[1, 2], [3]], 3, "genai", out_dir=tmp_path)


def test_generate_cli_json_and_stream(tmp_path):
    run = lambda *a: CliRunner().invoke(cli, ["generate", "--out", str(tmp_path), *a], catch_exceptions=False)
    result = run("--ids", "3,14,15", "--ids", "9,2", "--max-new-tokens", "4", "--json", "--runtime", "ort")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"variant", "runtime", "sequences", "prompt_tokens", "new_tokens", "ttft_ms", "tokens_per_s"}
    assert data["prompt_tokens"] == [3, 2] and [len(s) for s in data["sequences"]] == [7, 6]
    streamed = run("--ids", "3,14,15", "--max-new-tokens", "4", "--runtime", "torch")
    assert streamed.exit_code == 0
    assert streamed.stdout.split() == [str(t) for t in data["sequences"][0][3:]]
    assert "time to first token" in streamed.stderr


@pytest.mark.parametrize("args, message", [
    (["--ids", "1,2", "--max-new-tokens", "1023"], "1025 positions, more than the model's 1024"),
    (["--ids", "1", "--max-new-tokens", "0"], "'--max-new-tokens'"),
    (["--ids", "1", "--max-new-tokens", "-3"], "'--max-new-tokens'"),
    (["--ids", "1,512"], "token id 512 is outside"),
    (["--ids", ""], "empty sequence"),
    (["--ids", "1,2", "--ids", ""], "empty sequence"),
    (["--ids", "1", "--top-k", "0"], "'--top-k'"),
    (["--ids", "1", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--ids", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--ids", "1", "--temperature", "0"], "'--temperature'"),
    (["--ids", "1", "--temperature", "-1"], "'--temperature'"),
    (["--ids", "1", "--greedy", "--temperature", "2"], "--greedy cannot be combined"),
    (["--ids", "1", "--ids", "2,3", "--runtime", "genai"], "same length"),
])
def test_generate_bad_input(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--out", str(tmp_path), *args], catch_exceptions=False)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_verify_caps_the_one_token_calls(decoders, exported, monkeypatch):
    """decoder_steps (what `pipeline all` uses): each example's last N positions one per call, the
    rest as the prompt, and every fed position still checked against eager torch."""
    from pipeline.examples import load_examples
    from pipeline.export import read_manifest
    from pipeline.generate import OrtDecoder
    from pipeline.runtime.verify import verify

    calls = []
    step = OrtDecoder.step
    monkeypatch.setattr(OrtDecoder, "step", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    out = exported["baseline"].parent
    checks = verify(["sliding-window"], ["ort-opt-decoder"], out_dir=out, decoder_steps=4)
    lengths = [ex.seq_len for ex in load_examples(None)]
    assert len(calls) == sum(n - max(1, n // 2, n - 4) for n in lengths) < sum(n - max(1, n // 2) for n in lengths)
    graded = [c for c in checks if c.passed is not None]
    assert graded and all(c.passed for c in graded) and {c.seq_len for c in graded} == set(lengths)
    entry = read_manifest(out)["artifacts"]["sliding-window.decoder.ort-opt.onnx"]["verification"]
    assert entry["passed"] and "(at most 4)" in entry["mode"]
