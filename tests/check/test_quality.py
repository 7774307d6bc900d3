"""`pipeline eval` against an independent perplexity computation (transformers' float64 model
scored the standard way, labels masked to -100 outside each window's new tokens) on a GPT-2
trained in the session, and its refusals."""

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error, run
from test_generation_rules import TEXT, train_checkpoint

from pipeline.check.quality import windows

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("eval-gpt2"))


@pytest.fixture(scope="module")
def eval_out(tmp_path_factory):
    """One output folder for the module's evals: each exports only the files it is first to need."""
    return tmp_path_factory.mktemp("eval-out")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "held-out.txt"
    # the training sentences in another order, with words the model rarely saw
    path.write_text("The fox sings as he works. The children ran home at dawn.\n\n" + TEXT[:600])
    return path


def hf_perplexity(folder, text: str, window: int, stride: int) -> float:
    """transformers' documented recipe, written independently of pipeline.check.quality."""
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float64).eval()
    ids = tok(text, return_tensors="pt").input_ids
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + window, ids.shape[1])
        trg_len = end - prev_end
        inputs = ids[:, begin:end]
        labels = inputs.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(inputs, labels=labels).loss
        n_valid = int((labels[:, 1:] != -100).sum())
        nll_sum += float(loss) * n_valid
        n_tokens += n_valid
        prev_end = end
        if end == ids.shape[1]:
            break
    return float(np.exp(nll_sum / n_tokens))


def test_eval_gives_transformers_perplexity_and_keeps_int8_and_int4_close(
    trained, held_out, eval_out, tmp_path
):
    want = hf_perplexity(trained, held_out.read_text(), window=64, stride=32)
    out = tmp_path / "eval.json"
    result = run("eval", "--weights", trained, "--text-file", held_out, "--window", 64, "--stride",
                 32, "--out", eval_out, "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["reference"]["note"] == "transformers float64"
    assert data["reference"]["perplexity"] == pytest.approx(want, rel=1e-7)
    by = {r["runtime"]: r for r in data["runtimes"]}
    assert set(by) == {"torch", "ort", "ort-opt", "ort-int8", "ort-int4"}
    for rt in ("torch", "ort", "ort-opt"):
        assert by[rt]["perplexity"] == pytest.approx(want, rel=1e-4), rt
        assert by[rt]["top1_agreement_pct"] == 100.0 and by[rt]["kl_mean"] < 1e-6
    assert abs(by["ort-int8"]["perplexity_change_pct"]) < 1.0
    assert abs(by["ort-int4"]["perplexity_change_pct"]) < 5.0
    assert by["ort-int4"]["kl_mean"] > by["ort"]["kl_mean"]  # approximate, and it shows
    assert (
        "scoring windows: " in result.stderr and "reference (transformers float64)" in result.stdout
    )


def test_windows_score_every_position_once():
    for n, window, stride in [(10, 4, 2), (10, 10, 5), (2, 64, 32), (7, 3, 1), (100, 16, 16)]:
        spans = windows(n, window, stride)
        scored = [p for _, end, first in spans for p in range(first, end)]
        # as transformers' recipe: a window that starts where the last one ended has no context
        # for its first token, which is not scored (only with stride == window)
        skipped = {begin for begin, _, _ in spans[1:]} if stride == window else set()
        assert scored == [p for p in range(1, n) if p not in skipped], (n, window, stride)
        assert all(end - begin <= window for begin, end, _ in spans)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "--text-file not found"),
        (lambda d: d, "is a folder, not a text file"),
        (lambda d: (d / "latin1.txt", (d / "latin1.txt").write_bytes(b"caf\xe9 au lait"))[0],
         "is not UTF-8 text"),
        (lambda d: (d / "empty.txt", (d / "empty.txt").write_text("  \n"))[0], "is empty"),
        (lambda d: (d / "one.txt", (d / "one.txt").write_text("T"))[0], "needs at least two"),
    ],
    ids=["missing", "folder", "not-utf8", "empty", "one-token"],
)  # fmt: skip
def test_bad_text_is_one_line(trained, tmp_path, make, message):
    text = tmp_path / "texts"
    text.mkdir()
    one_line_error(run("eval", "--weights", trained, "--text-file", make(text), "--runtime", "ort",
                       "--out", tmp_path), message)  # fmt: skip


def test_eval_options_are_checked(trained, tmp_path, held_out):
    one_line_error(run("eval", "--weights", trained, "--out", tmp_path), "one of them")
    one_line_error(run("eval", "--weights", trained, "--text-file", held_out, "--window", 8,
                       "--stride", 9, "--out", tmp_path), "--stride must be between 1 and --window")  # fmt: skip
    ids = tmp_path / "ids.txt"
    ids.write_text("1, 2, 99999")
    one_line_error(run("eval", "--weights", trained, "--ids-file", ids, "--out", tmp_path),
                   "token id 99999 is outside")  # fmt: skip


def test_eval_scores_weight_recipes_beside_the_runtimes(trained, held_out, eval_out, tmp_path):
    """Each --recipe is a row of its own: int4 with an 8-bit head differs from int4 only in the
    head, so it is closer to the reference; GPTQ is calibrated on a text apart from the scored."""
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(TEXT[600:1800])
    out = tmp_path / "recipes.json"
    result = run("eval", "--weights", trained, "--text-file", held_out, "--runtime", "ort-opt",
                 "--recipe", "int4,int4-head8,int4-gptq-head8", "--calibration-file", calibration,
                 "--window", 64, "--stride", 32, "--out", eval_out, "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(out.read_text())
    by = {r["runtime"]: r for r in data["runtimes"]}
    assert list(by) == ["ort-opt", "recipe int4", "recipe int4-head8", "recipe int4-gptq-head8"]
    for name in list(by)[1:]:
        assert 0 < by[name]["kl_mean"] and abs(by[name]["perplexity_change_pct"]) < 5.0, name
    assert by["recipe int4-head8"]["kl_mean"] < by["recipe int4"]["kl_mean"]
    assert data["recipes"]["int4-gptq-head8"]["algorithm"] == "gptq"
    assert data["calibration_file"] == str(calibration)
    assert "preparing: recipe int4-gptq-head8" in result.stderr


def test_recipes_are_checked(trained, held_out, tmp_path):
    base = ["eval", "--weights", trained, "--text-file", held_out, "--out", tmp_path]
    one_line_error(run(*base, "--recipe", "int3"), "unknown weight recipe 'int3'")
    one_line_error(run(*base, "--recipe", "int4-gptq"), "give --calibration-file")


def test_verify_scores_the_text_beside_its_checks(trained, held_out, eval_out):
    """verify --text-file: the exact runtime's perplexity is the reference's, the approximate one
    shows its drift, in the same table as eval's."""
    want = hf_perplexity(trained, held_out.read_text(), window=128, stride=64)
    result = run("verify", "--weights", trained, "--variant", "baseline", "--runtime",
                 "ort-opt,ort-int8", "--text-file", held_out, "--out", eval_out)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    table = result.stdout.split(f"on {held_out} (", 1)[1]
    rows = {line.split()[1]: line.split() for line in table.splitlines()[3:] if line.strip()}
    # the table's four significant digits
    assert float(rows["reference"][4]) == pytest.approx(want, rel=2e-4)  # "reference (a b)"
    assert float(rows["ort-opt"][2]) == pytest.approx(want, rel=2e-4)
    assert float(rows["ort-opt"][5]) == 100.0
    assert 0 < abs(float(rows["ort-int8"][3])) < 1.0


def test_decoders_fed_token_by_token_score_as_the_reference(trained, held_out, eval_out, tmp_path):
    """NAME-decoder: the decoder given the window's first token as its prompt and every other one
    as a step (genai: its own loop); the same perplexity as transformers' recipe."""
    want = hf_perplexity(trained, held_out.read_text(), window=64, stride=32)
    out = tmp_path / "decoders.json"
    result = run("eval", "--weights", trained, "--text-file", held_out, "--runtime",
                 "ort-opt-decoder,ort-int4-decoder,genai", "--window", 64, "--stride", 32,
                 "--out", eval_out, "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    by = {r["runtime"]: r for r in json.loads(out.read_text())["runtimes"]}
    assert list(by) == ["ort-opt-decoder", "ort-int4-decoder", "genai"]
    for name in ("ort-opt-decoder", "genai"):
        assert by[name]["perplexity"] == pytest.approx(want, rel=1e-4), name
        assert by[name]["top1_agreement_pct"] == 100.0, name
    assert (
        0 < by["ort-int4-decoder"]["kl_mean"]
        and abs(by["ort-int4-decoder"]["perplexity_change_pct"]) < 5
    )
    one_line_error(run("eval", "--weights", trained, "--text-file", held_out, "--runtime",
                       "genai-decoder,tvm-decoder", "--out", tmp_path), "tvm")  # fmt: skip


def test_the_report_shows_the_quality_on_a_text(trained, held_out, eval_out, tmp_path):
    """report --text-file's section and plot, rendered from a record scored for real."""
    from pathlib import Path

    import matplotlib.image

    from pipeline.check.quality import score_text_file
    from pipeline.report import render_report
    from pipeline.workspace import Workspace

    ws = Workspace(eval_out, trained)
    record = score_text_file(ws, ws.sized("baseline"), held_out, ["ort-opt", "ort-int8"])
    assert record["runtimes"][0]["top1_agreement_pct"] == 100.0
    data = json.loads((Path(__file__).parents[2] / "docs" / "report.json").read_text())
    source = tmp_path / "report.json"
    source.write_text(json.dumps({**data, "quality": record}))
    text = render_report(source, tmp_path / "out").read_text()
    section = text.split("## Quality on your text\n", 1)[1].split("\n## ", 1)[0]
    assert f"on `{held_out.name}`" in section and "| ort-int8 |" in section
    assert "reference (transformers float64)" in section
    assert matplotlib.image.imread(str(tmp_path / "out" / "quality.png")).ndim == 3
