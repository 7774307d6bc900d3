"""Generation with a KV cache in every runtime: the same tokens, batches that are their rows, sampling."""

import json

import pytest
from conftest import run

from pipeline.fileio import torch_save_atomic
from pipeline.generation import Sampling, generate, pad_left


@pytest.fixture(scope="module")
def unseen_weights(tmp_path_factory, unseen_state_dict):
    path = tmp_path_factory.mktemp("unseen") / "weights.pt"
    torch_save_atomic(unseen_state_dict, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("which", ["stand-in", "unseen"])
def test_greedy_ids_agree_across_the_four_runtimes(which, unseen_weights, tmp_path):
    weights = None if which == "stand-in" else unseen_weights
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]]
    got = {
        rt: generate("gelu-tanh", prompts, 64, rt, weights=weights, out_dir=tmp_path).sequences
        for rt in ("torch", "ort", "ort-opt", "genai")
    }
    assert all(len(s) == 5 + 64 for s in got["torch"])
    assert (
        got["ort"] == got["torch"]
        and got["ort-opt"] == got["torch"]
        and got["genai"] == got["torch"]
    )


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_agrees(tmp_path, unseen_weights):
    sampling = Sampling(greedy=False, temperature=8.0, top_k=50, top_p=0.95, seed=7)
    runs = {
        rt: generate(
            "baseline", [[1, 2, 3]], 40, rt, sampling, weights=unseen_weights, out_dir=tmp_path
        ).sequences
        for rt in ("torch", "ort", "ort-opt")
    }
    assert runs["ort"] == runs["torch"] == runs["ort-opt"]
    assert len(set(runs["torch"][0][3:])) > 3  # really sampled, not one repeated token
    again = generate(
        "baseline", [[1, 2, 3]], 40, "torch", sampling, weights=unseen_weights
    ).sequences
    other = generate(
        "baseline",
        [[1, 2, 3]],
        40,
        "torch",
        Sampling(False, 8.0, 50, 0.95, seed=8),
        weights=unseen_weights,
    ).sequences
    assert again == runs["torch"] and other != again


@pytest.mark.parametrize(
    "runtime",
    [
        "torch",
        pytest.param("ort", marks=pytest.mark.slow),
        pytest.param("ort-opt", marks=pytest.mark.slow),
        pytest.param("genai", marks=pytest.mark.slow),
    ],
)
def test_a_batch_of_different_lengths_is_its_rows(runtime, tmp_path, unseen_weights):
    prompts = [[7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [400, 3, 2, 1, 6]]
    batch = generate(
        "palm", prompts, 20, runtime, weights=unseen_weights, out_dir=tmp_path
    ).sequences
    singles = [
        generate("palm", [p], 20, runtime, weights=unseen_weights, out_dir=tmp_path).sequences[0]
        for p in prompts
    ]
    assert batch == singles
    assert pad_left(prompts)[1].sum() == 18


@pytest.mark.slow
def test_genai_gives_torchs_tokens_for_prompts_holding_its_pad_id(tmp_path):
    """genai masks out every id equal to its pad id (0 in the folder's config): a prompt ending
    in 0, alone or in a batch of different lengths, gave genai 3,14,0,14,14 where torch gives
    3,14,0,0,0. The pad is now an id no prompt holds."""
    prompts = [[3, 14, 0], [5, 0], [0]]
    for batch in ([prompts[0]], prompts):
        want = generate("baseline", batch, 5, "torch", out_dir=tmp_path).sequences
        assert generate("baseline", batch, 5, "genai", out_dir=tmp_path).sequences == want


def test_generate_cli_json_and_stream(baseline_dir):
    def gen(*a):
        return run("generate", "--out", baseline_dir, *a)

    result = gen(
        "--ids", "3,14,15", "--ids", "9,2", "--max-new-tokens", "4", "--json", "--runtime", "ort"
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {
        "variant",
        "runtime",
        "sequences",
        "prompt_tokens",
        "new_tokens",
        "ttft_ms",
        "tokens_per_s",
    }
    assert data["prompt_tokens"] == [3, 2] and [len(s) for s in data["sequences"]] == [7, 6]
    streamed = gen("--ids", "3,14,15", "--max-new-tokens", "4", "--runtime", "torch")
    assert streamed.exit_code == 0
    assert streamed.stdout.split() == [str(t) for t in data["sequences"][0][3:]]
    assert "time to first token" in streamed.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--ids", "1,2", "--max-new-tokens", "1023"],
            "1025 positions, more than the model's 1024",
        ),
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
        (["--ids", "1", "--runtime", "genai", "--stop", "x"], "--stop needs a tokenizer"),
    ],
)
def test_generate_bad_input(args, message, tmp_path):
    result = run("generate", "--out", str(tmp_path), *args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def overflowing_weights(tmp_path_factory, state_dict):
    """Finite weights whose forward overflows float32: NaN logits from the first layer on."""
    sd = dict(state_dict)
    bias = sd["transformer.h.0.mlp.down_proj.bias"].clone()
    bias[0] = 3e38
    sd["transformer.h.0.mlp.down_proj.bias"] = bias
    path = tmp_path_factory.mktemp("overflow") / "weights.pt"
    torch_save_atomic(sd, path)
    return path


def _run_on(weights, command, out):
    return run(*command, "--runtime", "torch", "--weights", str(weights), "--out", str(out))


@pytest.mark.parametrize(
    "command", [["infer", "--ids", "3,14,15"], ["generate", "--ids", "3,14,15"]]
)
def test_overflowing_weights_are_refused_before_any_runtime(command, overflowing_weights, tmp_path):
    result = _run_on(overflowing_weights, command, tmp_path)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: weights: transformer.h.0.mlp.down_proj"), lines[0]
    assert "float32" in lines[0], lines[0]


@pytest.mark.parametrize(
    "command", [["infer", "--ids", "3,14,15"], ["generate", "--ids", "3,14,15"]]
)
def test_non_finite_logits_are_an_error_naming_the_runtime(
    command, overflowing_weights, tmp_path, monkeypatch
):
    # The load-time bound is the first line of defence; the runtime's own check is the second,
    # for whatever the bound does not model (a runtime's own overflow).
    monkeypatch.setattr("pipeline.weights.check_float32_range", lambda sd, cfg: None)
    result = _run_on(overflowing_weights, command, tmp_path)
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: torch returned non-finite logits at position "), line


def test_generate_json_is_strict_with_one_new_token(tmp_path):
    result = run(
        "generate",
        "--ids",
        "3,14",
        "--max-new-tokens",
        "1",
        "--runtime",
        "torch",
        "--json",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.stderr

    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data["tokens_per_s"] is None and len(data["sequences"][0]) == 3


@pytest.mark.slow
def test_genai_ends_at_its_end_of_sequence_token_without_crashing(baseline_dir):
    """genai_config names the last id as end-of-sequence; random weights sampled hot produce it. The
    generation then ends there (it once crashed in ORT on the step after the end)."""
    from pipeline.workspace import Workspace

    ws, eos = Workspace(baseline_dir), 511
    ended = []
    for seed in range(8):
        result = generate(
            "baseline",
            [[1, 2, 3]],
            500,
            "genai",
            Sampling(False, 50.0, None, 1.0, seed),
            workspace=ws,
        )
        new = result.sequences[0][3:]
        assert len(new) == result.new_tokens <= 500
        if result.new_tokens < 500:
            assert new[-1] == eos and eos not in new[:-1]
            ended.append(seed)
        if ended:
            break
    assert ended, "no sampled sequence reached the end-of-sequence id in 8 seeds"


def test_a_subnormal_temperature_samples_the_top_token():
    """1e-310: dividing first would give inf - inf = nan probabilities; the top token is the limit."""
    import numpy as np

    from pipeline.generation import choose_tokens

    logits = np.array([[1.0, 3.0, 2.0], [5.0, -1.0, 4.9]], np.float32)
    rng = np.random.default_rng(0)
    for top_k in (None, 2):
        got = choose_tokens(logits, Sampling(greedy=False, temperature=1e-310, top_k=top_k), rng)
        assert got.tolist() == [1, 0]


def test_repeated_list_entries_are_taken_once():
    from pipeline.cli.options import int_list
    from pipeline.config import resolve_variants

    assert int_list("16,16,128,16", "--seq-lens") == [16, 128]
    assert [v.name for v in resolve_variants("palm,baseline,palm")] == ["palm", "baseline"]


def test_a_seed_without_sampling_is_refused_not_ignored():
    from conftest import one_line_error, run

    one_line_error(
        run("generate", "--ids", "1,2", "--seed", "3"), "greedy decoding has no randomness"
    )
