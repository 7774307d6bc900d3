"""A user's own Hugging Face GPT-2 checkpoint through the pipeline, checked against transformers
itself (loaded from the same directory, float64): the model, the exports, the decoders and greedy
generation of text. The checkpoints and tokenizers are made here (no network)."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import one_line_error, run

transformers = pytest.importorskip("transformers")

SHAPES = {
    # n_inner not 4 x n_embd, tanh GELU (GPT-2's own), vocab not 512, n_positions not 1024
    "small": dict(vocab_size=300, n_positions=96, n_embd=64, n_layer=2, n_head=4, n_inner=100),
    # exact GELU, n_inner None (4 x n_embd), three heads, another eps
    "exact-gelu": dict(
        vocab_size=700,
        n_positions=200,
        n_embd=48,
        n_layer=3,
        n_head=3,
        n_inner=None,
        activation_function="gelu",
        layer_norm_epsilon=1e-6,
    ),
}
CORPUS = [
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
    "ONNX Runtime runs small transformers on CPUs; the exporter writes their graphs.",
    "Hello world, hello tokens, hello café and naïve façades.",
]


def make_checkpoint(folder, shape: dict, seed: int = 0, tokenizer: bool = True):
    """A random GPT2LMHeadModel saved with save_pretrained, a byte-level BPE tokenizer beside it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    fields = {"activation_function": "gelu_new", **shape}
    cfg = GPT2Config(
        **fields, initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    if tokenizer:
        from tokenizers import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(
            CORPUS * 3, vocab_size=min(290, shape["vocab_size"]), min_frequency=1
        )
        tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(root / f"gpt-{name}", shape) for name, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def small_out(tmp_path_factory):
    """One output folder for the commands run on the small checkpoint: each exports only what
    the ones before it left out (the checks of a fresh folder use their own tmp_path)."""
    return tmp_path_factory.mktemp("small-out")


def hf_model(folder):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager"
    ).eval()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_our_model_matches_transformers_in_float64(checkpoints, shape):
    from pipeline.workspace import Workspace

    ws = Workspace("unused", checkpoints[shape])
    ours = ws.model(ws.sized("baseline")).double()
    cfg = SHAPES[shape]
    ids = torch.randint(0, cfg["vocab_size"], (2, cfg["n_positions"]))
    with torch.no_grad():
        want = hf_model(checkpoints[shape])(ids).logits
        got = ours(ids)
    assert want.abs().max() > 1  # not a flat, trivially matched output
    assert (got - want).abs().max() < 1e-9


@pytest.mark.slow
def test_size_and_files_are_named_after_the_checkpoint(checkpoints, tmp_path):
    from pipeline.workspace import Workspace

    one = Workspace(tmp_path, checkpoints["small"])
    copy = make_checkpoint(
        tmp_path / "gpt-small", SHAPES["small"], seed=1
    )  # same name, new weights
    two = Workspace(tmp_path, copy)
    assert one.size.startswith("gpt-small-") and two.size.startswith("gpt-small-")
    assert one.size != two.size
    path = one.artifact(one.sized("baseline"))
    assert path.name == f"baseline@{one.size}.onnx"
    assert two.artifact(two.sized("baseline")) != path


@pytest.mark.parametrize(
    "shape, variants",
    [
        pytest.param("small", "baseline,ln-eps", marks=pytest.mark.slow),
        # (exact-gelu with baseline,palm took 34 s more of the suite: its model is checked against
        # transformers above, and every graph of the small shape here)
    ],
)
def test_every_graph_matches_transformers(checkpoints, shape, variants, tmp_path, small_out):
    """torch, the portable and ORT-optimised files, and both decoders fed as generation feeds
    them, against GPT2LMHeadModel from the same directory in float64 (with the variant's change
    applied to its config); palm, which GPT-2 cannot express, against eager torch only."""
    result = run(
        "verify", "--weights", checkpoints[shape], "--variant", variants,
        "--runtime", "torch,ort,ort-opt,decoder", "--details",
        "--out", small_out if shape == "small" else tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if "@gpt-" in line]
    against = {(r[0].split("@")[0], r[1], r[2]) for r in rows if r[3] == "transformers"}
    for variant in set(variants.split(",")) - {"palm"}:
        for runtime, graph in [("torch", "forward"), ("ort", "forward"), ("ort-opt", "forward"),
                               ("ort", "decoder"), ("ort-opt", "decoder")]:  # fmt: skip
            assert (variant, runtime, graph) in against
    assert not any(r[0].startswith("palm") and r[3] == "transformers" for r in rows)
    assert len(rows) > 20 and all(r[-1] == "pass" for r in rows)
    assert "GPT2LMHeadModel" in result.stderr
    if "palm" in variants:
        assert "cannot express" in result.stderr


@pytest.mark.slow
def test_greedy_text_generation_matches_transformers_in_every_runtime(checkpoints, tmp_path):
    from tokenizers import Tokenizer

    prompt = "The quick brown"
    ids = Tokenizer.from_file(str(checkpoints["small"] / "tokenizer.json")).encode(prompt).ids
    want = (
        hf_model(checkpoints["small"])
        .generate(
            torch.tensor([ids]),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0]
        .tolist()
    )
    # genai needs an end-of-text id in the vocabulary and stops at it: the checkpoint declares
    # one that this generation does not produce (as GPT-2's <|endoftext|>), and genai uses it
    folder = shutil.copytree(checkpoints["small"], tmp_path / "with-eos")
    config = json.loads((folder / "config.json").read_text())
    eos = next(t for t in range(299, 0, -1) if t not in want)
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": eos}))
    for runtime in ("torch", "ort", "ort-opt", "genai"):
        result = run(
            "generate", "--weights", folder, "--prompt", prompt, "--max-new-tokens", 20,
            "--runtime", runtime, "--out", tmp_path, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output + result.stderr
        data = json.loads(result.stdout)
        assert data["sequences"][0] == want, runtime
        assert data["text"][0] == Tokenizer.from_file(str(folder / "tokenizer.json")).decode(
            want[len(ids) :]
        )


def test_a_prompt_ending_in_gpt2s_exclamation_mark_gives_torchs_tokens_in_genai(
    checkpoints, small_out
):
    """With GPT-2's tokenizer '!' is token 0, genai's pad id in the folder's config: "Hello
    world!" was generated as if the '!' were padding."""
    from tokenizers import Tokenizer

    folder = checkpoints["small"]
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).encode("Hello world!").ids[-1] == 0
    runs = {
        runtime: run(
            "generate",
            "--weights",
            folder,
            "--prompt",
            "Hello world!",
            "--max-new-tokens",
            8,
            "--runtime",
            runtime,
            "--out",
            small_out,
            "--json",
        )  # fmt: skip
        for runtime in ("torch", "genai")
    }
    assert all(r.exit_code == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    sequences = {k: json.loads(r.stdout)["sequences"] for k, r in runs.items()}
    assert sequences["genai"] == sequences["torch"]


@pytest.mark.slow
def test_text_streams_and_infer_shows_tokens_as_text(checkpoints, small_out):
    folder, tmp_path = checkpoints["small"], small_out
    streamed = run(
        "generate", "--weights", folder, "--prompt", "Hello world", "--max-new-tokens", 8,
        "--runtime", "ort", "--out", tmp_path,
    )  # fmt: skip
    as_json = run(
        "generate", "--weights", folder, "--prompt", "Hello world", "--max-new-tokens", 8,
        "--runtime", "ort", "--out", tmp_path, "--json",
    )  # fmt: skip
    assert streamed.exit_code == 0 and as_json.exit_code == 0
    assert streamed.stdout.rstrip("\n") == json.loads(as_json.stdout)["text"][0]
    top = run("infer", "--weights", folder, "--text", "Hello", "--out", tmp_path, "--json")
    assert top.exit_code == 0, top.stderr
    assert all(isinstance(t["text"], str) for t in json.loads(top.stdout)["top_k"])


@pytest.mark.parametrize("runtime", ["ort-opt", pytest.param("genai", marks=pytest.mark.slow)])
def test_a_batch_of_text_prompts_gives_each_row_its_single_run(checkpoints, small_out, runtime):
    """Prompts of different lengths: our loop keeps each row's length in the shared cache buffer,
    genai right-pads them with its pad token and takes the lengths from its mask."""
    folder = checkpoints["small"]
    args = ["generate", "--weights", folder, "--max-new-tokens", 12, "--runtime", runtime,
            "--out", small_out, "--json"]  # fmt: skip
    result = run(*args, "--prompt", "Hello", "--prompt", "The quick brown")
    assert result.exit_code == 0, result.stderr
    both = json.loads(result.stdout)
    for row, prompt in enumerate(["Hello", "The quick brown"]):
        alone = json.loads(run(*args, "--prompt", prompt).stdout)
        assert both["sequences"][row] == alone["sequences"][0]
        assert both["text"][row] == alone["text"][0]


def test_the_stand_in_says_its_weights_are_random(tmp_path):
    result = run("generate", "--ids", "3,14,15", "--max-new-tokens", 3, "--runtime", "torch",
                 "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0
    assert "random" in result.stderr


def test_a_spec_format_safetensors_file_loads_like_its_pt(tmp_path):
    from safetensors.torch import save_file

    from pipeline.weights import DEFAULT_WEIGHTS, load_state_dict

    sd = load_state_dict(DEFAULT_WEIGHTS)
    save_file(
        {k: v for k, v in sd.items() if k != "lm_head.weight"}, str(tmp_path / "w.safetensors")
    )
    loaded = load_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    a = run("infer", "--ids", "1,2,3", "--runtime", "torch", "--json", "--out", tmp_path)
    b = run("infer", "--ids", "1,2,3", "--runtime", "torch", "--json", "--out", tmp_path,
            "--weights", tmp_path / "w.safetensors")  # fmt: skip
    assert json.loads(a.stdout)["top_k"] == json.loads(b.stdout)["top_k"]


def test_our_weights_saved_as_a_checkpoint_load_in_transformers(tmp_path):
    """The conversion the peers harness uses: the spec's stand-in as a GPT-2 directory."""
    from pipeline.api import load_model
    from pipeline.config import get_variant
    from pipeline.hf_gpt2 import save_checkpoint
    from pipeline.weights import DEFAULT_WEIGHTS, load_state_dict

    for variant in ("baseline", "gelu-tanh", "no-scale"):
        cfg = get_variant(variant).config
        folder = save_checkpoint(load_state_dict(DEFAULT_WEIGHTS, cfg), cfg, tmp_path / variant)
        ids = torch.randint(0, cfg.vocab_size, (1, 64))
        with torch.no_grad():
            want = hf_model(folder)(ids).logits
            got = load_model(variant).double()(ids)
        assert (got - want).abs().max() < 1e-9, variant


@pytest.mark.slow
def test_bench_memory_and_compare_run_on_a_checkpoint(checkpoints, small_out):
    folder, tmp_path = checkpoints["small"], small_out
    bench = run("bench", "--weights", folder, "--runtime", "torch,ort", "--seq-lens", "8",
                "--threads", "1", "--repeat", 3, "--out", tmp_path)  # fmt: skip
    assert bench.exit_code == 0, bench.stderr
    assert "@gpt-small-" in bench.stdout
    memory = run("memory", "--weights", folder, "--seq-len", 16, "--out", tmp_path)
    assert memory.exit_code == 0, memory.stderr


# --- bad input: one line each -------------------------------------------------------------


def test_another_model_type_is_named(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    one_line_error(run("infer", "--weights", folder, "--ids", "1"), "'bert'")


def test_a_config_that_disagrees_with_its_weights(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["small"], tmp_path / "bad")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_inner": 128}))
    line = one_line_error(run("infer", "--weights", folder, "--ids", "1", "--out", tmp_path))
    assert "mlp.c_fc.weight" in line and "[64, 100]" in line and "[64, 128]" in line


def test_a_missing_weights_file(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["small"], tmp_path / "empty")
    (folder / "model.safetensors").unlink()
    one_line_error(run("infer", "--weights", folder, "--ids", "1"), "has no weights")


def test_a_tokenizer_larger_than_the_vocabulary(checkpoints, tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    folder = shutil.copytree(checkpoints["small"], tmp_path / "big-tok")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS * 20 + [" ".join(map(str, range(2000)))], vocab_size=400)
    assert tok.get_vocab_size() > 300
    tok.save(str(folder / "tokenizer.json"))
    one_line_error(
        run("generate", "--weights", folder, "--prompt", "Hello", "--out", tmp_path),
        "do not belong together",
    )


def test_prompt_without_a_tokenizer(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["small"], tmp_path / "no-tok")
    (folder / "tokenizer.json").unlink()
    one_line_error(run("generate", "--weights", folder, "--prompt", "Hi"), "has no tokenizer")
    one_line_error(run("generate", "--prompt", "Hi"), "needs a tokenizer")


def test_a_prompt_longer_than_the_context(checkpoints, tmp_path):
    one_line_error(
        run("generate", "--weights", checkpoints["small"], "--prompt", "hello " * 200),
        "more than the model's 96 positions",
    )


def test_size_cannot_be_combined_with_a_checkpoint(checkpoints):
    one_line_error(
        run("infer", "--weights", checkpoints["small"], "--size", "gpt2-124m", "--ids", "1"),
        "sets its own shape",
    )


def test_gpt2_names_in_a_lone_safetensors_file_point_to_the_directory(checkpoints):
    one_line_error(
        run("infer", "--weights", checkpoints["small"] / "model.safetensors", "--ids", "1"),
        "give the checkpoint directory",
    )


def test_sharded_torch_bin_checkpoint(tmp_path):
    """pytorch_model.bin shards with their index, read with weights_only=True."""
    from pipeline.config import get_variant
    from pipeline.hf_checkpoint import read_weights
    from pipeline.sources import checkpoint_size
    from pipeline.weights import validate_state_dict

    src = make_checkpoint(tmp_path / "src", SHAPES["small"], tokenizer=False)
    from safetensors.torch import load_file

    tensors = load_file(str(src / "model.safetensors"))
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(src / "config.json", folder)
    names = sorted(tensors)
    halves = {
        "pytorch_model-00001-of-00002.bin": names[::2],
        "pytorch_model-00002-of-00002.bin": names[1::2],
    }
    for file, keys in halves.items():
        torch.save({k: tensors[k] for k in keys}, folder / file)
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = get_variant(f"baseline@{checkpoint_size(folder)}").config
    got = validate_state_dict(read_weights(folder), cfg)
    want = validate_state_dict(read_weights(src), cfg)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert np.isfinite(got["transformer.word_embeddings.weight"].numpy()).all()


def test_compare_takes_the_checkpoint_as_its_baseline(checkpoints, tmp_path):
    result = run("compare", "--weights", checkpoints["small"], "--variant", "baseline,palm",
                 "--runtime", "torch", "--repeat", 2, "--json", tmp_path / "c.json",
                 "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["baseline"].startswith("baseline@gpt-small-")
    assert data["seq_lens"] == [96]  # 1024 is beyond the checkpoint's context
    palm = next(r for r in data["rows"] if r["variant"].startswith("palm@"))
    assert 0 < palm["max_abs_diff"] < 100 and "checkpoint" in palm["description"]


def test_report_lengths_stop_at_the_checkpoints_context():
    from pipeline.report.collect import Sizes

    fitted = Sizes().fitted(96)
    assert fitted.bench_seq_lens == (1, 16, 96) and fitted.compare_seq_lens == (96,)
    assert fitted.decode_past_lens == (0, 95) and fitted.decode_new_tokens == 63
    assert fitted.memory_seq_len == 96 and max(fitted.family_seq_lens) == 96
    assert Sizes().fitted(1024).bench_seq_lens == (1, 16, 128, 512, 1024)


@pytest.mark.slow
def test_the_report_of_a_checkpoint(checkpoints, tmp_path, small_out):
    """The report measures the checkpoint and its variants at its size, within its context, and
    renders again from report.json in a process that never read the checkpoint."""
    import subprocess
    import sys

    from pipeline.report import build_report
    from pipeline.report.collect import Sizes
    from pipeline.workspace import Workspace

    sizes = Sizes(bench_seq_lens=(1, 8, 128), bench_threads=(1,), compare_seq_lens=(4, 200),
                  config_grid={"n_layers": (1, 2)}, memory_seq_len=64, decode_past_lens=(0, 5, 500),
                  decode_new_tokens=6, variants=("baseline", "palm", "rope-gqa-window"))  # fmt: skip
    path, data = build_report(Workspace(small_out, checkpoints["small"]), sizes=sizes)
    base = data["model"]["baseline"]
    assert base.startswith("baseline@gpt-small-") and data["compare"]["baseline"] == base
    assert data["model"]["config"]["vocab_size"] == 300
    assert {r["seq_len"] for r in data["bench"]["records"]} == {1, 8, 96}
    assert {r["variant"] for r in data["bench"]["records"]} == {base}
    assert data["compare"]["seq_lens"] == [4, 96]
    assert {r["past_len"] for r in data["decode"]["steps"]} == {0, 5, 95}
    assert all(r["variant"].endswith(base.partition("@")[2]) for r in data["compare"]["rows"])
    assert {r["variant"].partition("@")[0] for r in data["compare"]["rows"]} == {
        "baseline",
        "palm",
        "rope-gqa-window",
    }
    text = path.read_text()
    assert "Model: the checkpoint" in text and "context 96" in text
    assert "| rope-gqa-window |" in text  # the family table names variants without the size
    (tmp_path / "again").mkdir()
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "report", "--from", str(path.with_suffix(".json"))],
        capture_output=True, text=True, cwd=tmp_path / "again",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "exported" / "report.md").read_text() == text


def test_a_causal_mask_past_two_gib_is_refused_before_tracing(tmp_path):
    """Weights past 2 GiB go to an external-data file, but the portable graph's causal mask is one
    tensor: a 50000-token context (2.3 GiB of booleans) cannot be written (no weights are read)."""
    from pipeline import PipelineError
    from pipeline.config import register_size
    from pipeline.export.onnx_export import export_onnx

    register_size("long-test", dict(vocab_size=300, d_model=32, n_layers=1, n_heads=2,
                                    d_mlp=64, max_seq_len=50000), "a long context")  # fmt: skip
    with pytest.raises(PipelineError, match="causal mask is 2.3 GiB, past ONNX's 2 GiB"):
        export_onnx("baseline@long-test", tmp_path / "none.pt", tmp_path)


def test_verify_without_transformers_uses_its_logits_recorded_at_export(
    checkpoints, tmp_path, monkeypatch
):
    """Export records transformers' float64 logits beside the graphs; where transformers cannot
    be imported, verify grades the runtimes against them, says so, and fails when they differ."""
    import sys

    from safetensors import safe_open
    from safetensors.numpy import save_file

    out, checkpoint = tmp_path / "out", checkpoints["small"]
    exported = run("export", "--weights", checkpoint, "--out", out, "--variant", "baseline")
    assert exported.exit_code == 0, exported.stderr
    (recorded,) = out.glob("baseline@*.reference.safetensors")
    assert str(recorded) in exported.stdout
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    args = ["verify", "--weights", checkpoint, "--out", out, "--runtime", "ort-portable",
            "--variant", "baseline"]  # fmt: skip
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "recorded at export" in line]
    assert len(rows) == 1 and rows[0].rstrip().endswith("pass")
    assert f"checked against its logits recorded at export in {recorded}" in result.stderr
    with safe_open(str(recorded), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v + 0.01 if k.startswith("logits_") else v for k, v in tensors.items()}
    save_file(tensors, str(recorded), metadata=meta)
    off = run(*args)
    assert off.exit_code != 0 and "vs transformers (recorded at export)" in off.stdout + off.stderr
