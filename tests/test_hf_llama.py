"""The Llama family (Llama, Mistral, Qwen2 checkpoints) through the pipeline, checked against
transformers' own class for each model_type, loaded from the same directory in float64. The
checkpoints are random models of shapes made here, saved with save_pretrained (no network)."""

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error, run

transformers = pytest.importorskip("transformers")

# shapes no other test uses: grouped and ungrouped heads, tied and untied heads, rotary bases
# 1e4 to 1e6, Mistral's window shorter than the prompts, Qwen2's q/k/v biases
FAMILIES = {
    "llama": dict(
        hidden_size=48, num_attention_heads=6, num_key_value_heads=2, intermediate_size=80,
        num_hidden_layers=2, vocab_size=320, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=5e5, tie_word_embeddings=False,
    ),
    "mistral": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=72,
        num_hidden_layers=3, vocab_size=300, max_position_embeddings=256, sliding_window=12,
        rope_theta=1e4, tie_word_embeddings=False,
    ),
    "qwen2": dict(
        hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=2, vocab_size=310, max_position_embeddings=256, rope_theta=1e6,
        tie_word_embeddings=True,
    ),
}  # fmt: skip
CORPUS = [
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
    "Grouped-query attention shares each key and value head among several query heads.",
    "Hello world, hello tokens, hello café and naïve façades.",
]


def make_family_checkpoint(folder, family: str, dtype=torch.float32, seed=0, **save):
    """A random model of the family saved with save_pretrained, a byte-level BPE beside it. The
    weights are widened from transformers' 0.02 init so the logits are far from flat."""
    from tokenizers import ByteLevelBPETokenizer

    config = transformers.AutoConfig.for_model(family, **FAMILIES[family])
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.to(dtype).save_pretrained(folder, **save)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS * 3, vocab_size=290, min_frequency=1)
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-family")
    return {f: make_family_checkpoint(root / f, f) for f in FAMILIES}


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager"
    ).eval()


def our_model(folder, variant="baseline"):
    from pipeline.workspace import Workspace

    ws = Workspace("unused", folder)
    return ws.model(ws.sized(variant)).double()


def test_the_smollm_size_is_smollm_135ms_shape():
    """Its parameter count and FLOP-relevant shapes against transformers' LlamaForCausalLM built
    from SmolLM-135M's published config (no weights needed: a meta-device model)."""
    from pipeline.config import get_variant

    cfg = get_variant("baseline@smollm-135m").config
    config = transformers.LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
        tie_word_embeddings=True, rope_theta=10000.0,
    )  # fmt: skip
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    assert cfg.n_params() == sum(p.numel() for p in model.parameters()) == 134_515_008


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameter_counts_match_transformers(checkpoints, family):
    from pipeline.workspace import Workspace

    ws = Workspace("unused", checkpoints[family])
    cfg = ws.model(ws.sized("baseline")).config
    assert cfg.n_params() == sum(p.numel() for p in hf_model(checkpoints[family]).parameters())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_our_model_matches_transformers_in_float64(checkpoints, family):
    ids = torch.randint(0, FAMILIES[family]["vocab_size"], (2, 60))  # past Mistral's window
    with torch.no_grad():
        want = hf_model(checkpoints[family])(ids).logits
        got = our_model(checkpoints[family])(ids)
    assert want.abs().max() > 1  # not a flat, trivially matched output
    # transformers computes the rotary angles in float32 even in a float64 model: 1e-6, not 1e-12
    assert (got - want).abs().max() < 1e-5 * want.abs().max()


def test_bfloat16_and_sharded_checkpoints_load_as_float32(tmp_path):
    """Real checkpoints ship bf16, in shards: read and widened to float32 exactly (the bf16 values
    are what transformers computes with, widened to float64)."""
    folder = make_family_checkpoint(
        tmp_path / "llama-bf16", "llama", dtype=torch.bfloat16, max_shard_size="40KB"
    )
    assert (folder / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, 320, (1, 30))
    with torch.no_grad():
        want = hf_model(folder)(ids).logits
        got = our_model(folder)(ids)
    assert (got - want).abs().max() < 1e-5 * want.abs().max()


def test_a_variant_the_family_cannot_take_is_refused(checkpoints):
    one_line_error(
        run("infer", "--weights", checkpoints["llama"], "--variant", "gqa", "--ids", "1,2"),
        "already has 2 key/value heads",
    )
    one_line_error(
        run("infer", "--weights", checkpoints["qwen2"], "--variant", "gelu-tanh", "--ids", "1"),
        "gated SiLU",
    )


@pytest.mark.parametrize(
    "family, change, named",
    [
        ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
         "rope_type"),
        ("llama", {"head_dim": 4}, "head_dim"),
        ("llama", {"attention_bias": True}, "attention_bias"),
        ("llama", {"hidden_act": "gelu"}, "hidden_act"),
        ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
        ("mistral", {"sliding_window": 0}, "sliding_window"),
    ],
)  # fmt: skip
def test_what_the_model_cannot_express_is_named(checkpoints, tmp_path, family, change, named):
    import shutil

    folder = tmp_path / family
    shutil.copytree(checkpoints[family], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    one_line_error(run("infer", "--weights", folder, "--ids", "1,2"), named)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_verify_and_generate_match_transformers(checkpoints, family, tmp_path):
    """`export --optimize --decoder` and `verify` against transformers in float64; the exported
    forward files give transformers' logits at length 200 in plain onnxruntime; greedy generation
    in torch, ort-opt and genai equals transformers' generate."""
    import onnxruntime as ort

    folder = checkpoints[family]
    exported = run("export", "--weights", folder, "--optimize", "--decoder", "--out", tmp_path)
    assert exported.exit_code == 0, exported.output + exported.stderr
    result = run(
        "verify",
        "--weights",
        folder,
        "--variant",
        "baseline",
        "--runtime",
        "all",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("baseline@")]
    against = {(r[1], r[2]) for r in rows if r[3] == "transformers"}
    assert {("torch", "forward"), ("ort", "forward"), ("ort-opt", "forward"), ("ort", "decoder"),
            ("ort-opt", "decoder")} <= against  # fmt: skip
    assert all(r[-1] == "pass" for r in rows)
    assert type(hf_model(folder)).__name__ in result.stderr

    ids = np.random.default_rng(1).integers(0, FAMILIES[family]["vocab_size"], (1, 200))
    with torch.no_grad():
        want = hf_model(folder)(torch.from_numpy(ids)).logits[0].numpy()
    files = sorted(p for p in tmp_path.glob("baseline@*.onnx") if ".decoder" not in p.name)
    assert len(files) == 2  # the portable and the ORT-optimised forward
    for path in files:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input_ids": ids})[0][0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), path.name

    prompt = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))(
        "Hello world", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        expected = (
            hf_model(folder)
            .generate(
                prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0]
            .tolist()
        )
    for runtime in ("torch", "ort-opt", "genai"):
        generated = run(
            "generate", "--weights", folder, "--prompt", "Hello world", "--greedy",
            "--max-new-tokens", 20, "--runtime", runtime, "--out", tmp_path, "--json",
        )  # fmt: skip
        assert generated.exit_code == 0, generated.output + generated.stderr
        assert json.loads(generated.stdout)["sequences"] == [expected], runtime
