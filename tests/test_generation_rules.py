"""Generation as transformers' `generate` does it: repetition penalty, no-repeat n-grams,
min_new_tokens, the end-of-text id and stop strings, against transformers itself on a GPT-2
checkpoint trained here for a few seconds (random weights give flat logits, where penalties
change nothing)."""

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error, run

from pipeline.generation_rules import Rules, banned_ngram_tokens, process

transformers = pytest.importorskip("transformers")

PARAGRAPHS = [
    "The river runs past the old mill. The miller grinds the grain at dawn.",
    "A fox crossed the field at night. The dogs barked and the fox ran home.",
    "The mill wheel turns and the water falls. The miller sings as he works.",
    "Snow fell on the hills. The children built a house of snow and ice.",
]
TEXT = "\n\n".join(PARAGRAPHS * 6) + "\n\n"
PROMPTS = ["The miller", "A fox crossed", "Snow fell on"]
NEW_TOKENS = 100  # long enough for this model to repeat itself past a paragraph


def train_checkpoint(folder):
    """A 2-layer GPT-2 trained for 150 steps on TEXT (seconds), saved with its BPE; its
    end-of-text id is the token of '.' (a sentence ends often, so generation stops early)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([TEXT], vocab_size=300, min_frequency=1)
    tok.save(str(folder / "tokenizer.json"))
    eos = tok.token_to_id(".")
    stream = torch.tensor(tok.encode(TEXT).ids)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=128, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=None, eos_token_id=eos, pad_token_id=None,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(stream) - 65, (16,), generator=gen)
        batch = torch.stack([stream[s : s + 64] for s in starts])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2.0  # trained: peaked next-token distributions
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("trained-gpt2"))


@pytest.fixture(scope="module")
def trained_out(tmp_path_factory):
    return tmp_path_factory.mktemp("trained-out")


def hf_generate(folder, prompt: str, **settings) -> list[int]:
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float64).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0,
                             tokenizer=tok, **settings)  # fmt: skip
    return out[0].tolist()


def ours(folder, out, prompt: str, runtime="ort-opt", *options) -> list[int]:
    result = run(
        "generate", "--weights", folder, "--prompt", prompt, "--max-new-tokens", NEW_TOKENS,
        "--runtime", runtime, "--out", out, "--json", *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)["sequences"][0]


SETTINGS = {
    "greedy": ({}, []),
    # past the end-of-text id, where the text repeats itself and these settings matter
    "repetition-penalty": (
        {"repetition_penalty": 1.3, "eos_token_id": None},
        ["--repetition-penalty", 1.3, "--ignore-eos"],
    ),
    "no-repeat-3grams": (
        {"no_repeat_ngram_size": 3, "eos_token_id": None},
        ["--no-repeat-ngram-size", 3, "--ignore-eos"],
    ),
    "no-repeat-2grams": (
        {"no_repeat_ngram_size": 2, "eos_token_id": None},
        ["--no-repeat-ngram-size", 2, "--ignore-eos"],
    ),
    "min-new-tokens": ({"min_new_tokens": 30}, ["--min-new-tokens", 30]),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_ort_opt_gives_transformers_tokens(trained, trained_out, setting):
    hf_settings, options = SETTINGS[setting]
    changed = 0
    for prompt in PROMPTS:
        want = hf_generate(trained, prompt, **hf_settings)
        assert ours(trained, trained_out, prompt, "ort-opt", *options) == want, prompt
        changed += want != hf_generate(
            trained, prompt, eos_token_id=hf_settings.get("eos_token_id")
        )
    # the setting does change what is generated
    assert setting == "greedy" or changed
    if setting == "greedy":  # the end-of-text id is reached: the rows end early
        assert len(want) < len(hf_generate(trained, PROMPTS[-1], eos_token_id=None))


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_genai_gives_transformers_tokens(trained, trained_out, setting):
    hf_settings, options = SETTINGS[setting]
    if "--ignore-eos" in options:  # genai always stops at the end-of-text id: test up to it
        hf_settings = {k: v for k, v in hf_settings.items() if k != "eos_token_id"}
        options = [o for o in options if o != "--ignore-eos"]
    for prompt in PROMPTS:
        want = hf_generate(trained, prompt, **hf_settings)
        assert ours(trained, trained_out, prompt, "genai", *options) == want, prompt


@pytest.mark.parametrize("stop", ["\n\n", " the"])
def test_a_stop_string_ends_the_text_with_the_token_completing_it(trained, trained_out, stop):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained / "tokenizer.json"))
    stopped = 0
    for prompt in PROMPTS:
        want = hf_generate(trained, prompt, stop_strings=[stop], eos_token_id=None)
        got = ours(trained, trained_out, prompt, "ort-opt", "--stop", stop, "--ignore-eos")
        assert got == want
        new_text = tok.decode(got[len(tok(prompt).input_ids) :])
        if stop in new_text:
            assert new_text.endswith(stop) and new_text.count(stop) == 1
            stopped += 1
    assert stop == "\n\n" or stopped == len(PROMPTS)  # " the" comes soon


def test_each_row_of_a_batch_ends_on_its_own(trained, trained_out):
    singles = [
        ours(trained, trained_out, p, "ort-opt", "--repetition-penalty", 1.3) for p in PROMPTS
    ]
    result = run(
        "generate", "--weights", trained, "--max-new-tokens", NEW_TOKENS, "--runtime", "ort-opt",
        "--out", trained_out, "--json", "--repetition-penalty", 1.3,
        *[a for p in PROMPTS for a in ("--prompt", p)],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sequences"] == singles
    assert len({len(s) for s in singles}) > 1  # the rows did end at different lengths


def test_genai_refuses_what_its_loop_has_not(trained, trained_out):
    one_line_error(
        run("generate", "--weights", trained, "--prompt", "The", "--runtime", "genai",
            "--stop", "x", "--out", trained_out),
        "no stop strings",
    )  # fmt: skip
    one_line_error(
        run("generate", "--weights", trained, "--prompt", "The", "--runtime", "genai",
            "--ignore-eos", "--out", trained_out),
        "end-of-text",
    )  # fmt: skip


def test_the_processors_match_transformers_own():
    """On random logits and sequences, against transformers' processor classes."""
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, 12, 20)), list(rng.integers(0, 12, 20))]
    logits = rng.normal(size=(2, 12)).astype(np.float32)
    ids = torch.tensor(sequences)
    for rules, theirs in (
        (Rules(repetition_penalty=1.7), RepetitionPenaltyLogitsProcessor(1.7)),
        (Rules(no_repeat_ngram_size=2), NoRepeatNGramLogitsProcessor(2)),
        (Rules(min_new_tokens=5, eos=(3, 7)), MinNewTokensLengthLogitsProcessor(16, 5, [3, 7])),
    ):
        want = theirs(ids, torch.from_numpy(logits.copy())).numpy()
        got = process(logits, sequences, [4, 4], rules)  # 4 of the 20 tokens are new
        assert np.array_equal(np.isinf(got), np.isinf(want))
        assert np.allclose(got[np.isfinite(got)], want[np.isfinite(want)])


def test_banned_ngrams():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert banned_ngram_tokens([1, 2], 3) == []
    assert sorted(banned_ngram_tokens([5, 5, 5], 2)) == [5, 5]


BEAMS = {
    # the end-of-text id ('.') reached: the beams end as transformers' do
    "4-beams-early-stopping": ({"num_beams": 4, "early_stopping": True},
                               ["--num-beams", 4, "--early-stopping"]),
    # past it, where this model's greedy text repeats and the beams find other text
    "4-beams": ({"num_beams": 4, "eos_token_id": None}, ["--num-beams", 4, "--ignore-eos"]),
    "3-beams-length-penalty": ({"num_beams": 3, "length_penalty": 0.5, "no_repeat_ngram_size": 3,
                                "eos_token_id": None},
                               ["--num-beams", 3, "--length-penalty", 0.5,
                                "--no-repeat-ngram-size", 3, "--ignore-eos"]),
}  # fmt: skip


@pytest.mark.parametrize("setting", list(BEAMS))
def test_beam_search_gives_transformers_tokens(trained, trained_out, setting):
    hf_settings, options = BEAMS[setting]
    changed = 0
    for prompt in PROMPTS:
        want = hf_generate(trained, prompt, **hf_settings)
        assert ours(trained, trained_out, prompt, "ort-opt", *options) == want, prompt
        changed += want != hf_generate(
            trained, prompt, eos_token_id=hf_settings.get("eos_token_id")
        )
    assert changed or "eos_token_id" not in hf_settings  # other text than greedy decoding


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_beam_search_in_the_other_loops(trained, trained_out, runtime):
    """The cache reorder of the torch loop and of the portable decoder's pair of buffers."""
    hf_settings, options = BEAMS["3-beams-length-penalty"]
    want = hf_generate(trained, PROMPTS[0], **hf_settings)
    assert ours(trained, trained_out, PROMPTS[0], runtime, *options) == want


def test_beam_search_of_a_ragged_batch_is_each_prompts(trained, trained_out):
    """Prompts of different lengths side by side, left-padded in transformers: each row's tokens
    (the padding stripped) are its own beam search's."""
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained / "tokenizer.json"))
    tok.pad_token_id, tok.padding_side = 0, "left"
    model = transformers.GPT2LMHeadModel.from_pretrained(trained, dtype=torch.float64).eval()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert len({len(tok(p).input_ids) for p in PROMPTS}) > 1  # ragged
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=40, num_beams=4,
                             eos_token_id=None, pad_token_id=0)  # fmt: skip
    width = batch.input_ids.shape[1]
    want = [tok(p).input_ids + row[width:].tolist() for p, row in zip(PROMPTS, out)]
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    result = run("generate", "--weights", trained, *prompts, "--max-new-tokens", 40,
                 "--num-beams", 4, "--ignore-eos", "--out", trained_out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sequences"] == want


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(BEAMS))
def test_genai_beam_search_gives_transformers_tokens(trained, trained_out, setting):
    hf_settings, options = BEAMS[setting]
    if "--ignore-eos" in options:  # genai always stops at the end-of-text id
        hf_settings = {k: v for k, v in hf_settings.items() if k != "eos_token_id"}
        options = [o for o in options if o != "--ignore-eos"]
    for prompt in PROMPTS:
        want = hf_generate(trained, prompt, **hf_settings)
        assert ours(trained, trained_out, prompt, "genai", *options) == want, prompt


@pytest.mark.parametrize(
    "options, message",
    [
        (["--num-beams", 2, "--greedy"], "--num-beams searches instead of greedy decoding"),
        (["--num-beams", 2, "--temperature", 0.7], "cannot be combined with --temperature"),
        (["--num-beams", 2, "--length-penalty", "nan"], "--length-penalty must be finite"),
    ],
)
def test_beam_search_refusals(trained, trained_out, options, message):
    one_line_error(run("generate", "--weights", trained, "--prompt", "The", "--out", trained_out,
                       *options), message)  # fmt: skip
