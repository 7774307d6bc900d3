"""onnxruntime-genai's model builder beside our export, on the same Llama-shaped checkpoint.

    python scripts/peer_genai_builder.py [--dir DIR] [--rounds 5] [--json docs/peer-genai-builder.json]

Without --dir, a random LlamaForCausalLM of SmolLM-135M's shape is saved (save_pretrained, a
byte-level BPE beside it) under $PIPELINE_CACHE. For fp32 and int4: genai's builder
(`python -m onnxruntime_genai.models.builder -p fp32|int4 -e cpu`) and our folder (`pipeline
export --decoder [--quantize int4]`), then
- the first-step logits of each graph against transformers' float64 on one prompt,
- greedy tokens of each folder in genai's own loop against transformers' generate,
- prefill (the prompt in, first token out) and one decode step, both folders in genai's loop,
  taking turns round by round (one interleaved run), with the machine's GEMM rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PROMPT_LEN, NEW_TOKENS = 128, 32


def make_checkpoint(folder: Path) -> Path:
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    if (folder / "config.json").is_file():
        return folder
    config = transformers.LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
        tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=49151,  # genai's builder needs one; random weights rarely pick it
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 3, vocab_size=300)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def build_genai(checkpoint: Path, out: Path, precision: str) -> Path:
    if not (out / "genai_config.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
             "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out.parent / "cache")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    return out


def build_ours(checkpoint: Path, out: Path, precision: str) -> Path:
    from pipeline.export.genai import genai_dir
    from pipeline.workspace import Workspace

    args = ["export", "--weights", str(checkpoint), "--decoder", "--out", str(out)]
    subprocess.run(
        [sys.executable, "-m", "pipeline", *args, *(["--quantize", "int4"] * (precision == "int4"))],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    ws = Workspace(out, checkpoint)
    folder = genai_dir(ws.sized("baseline"), out)
    if precision == "int4":  # the genai folder holds the fp32 decoder: point a copy at int4's
        import shutil

        int4 = out / "int4.genai"
        shutil.copytree(folder, int4, dirs_exist_ok=True)
        source = ws.artifact(ws.sized("baseline"), "decoder-int4")
        shutil.copyfile(source, int4 / "model.onnx")
        folder = int4
    return folder


def genai_run(folder: Path, ids: np.ndarray, new_tokens: int, rounds_timer=None):
    """(greedy tokens, prefill s, median decode step s) in genai's loop."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(ids.astype(np.int32))
    generator.generate_next_token()
    prefill = time.perf_counter() - t0
    tokens, steps = [int(generator.get_next_tokens()[0])], []
    while not generator.is_done() and len(tokens) < new_tokens:
        t0 = time.perf_counter()
        generator.generate_next_token()
        steps.append(time.perf_counter() - t0)
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens, prefill, float(np.median(steps))


def first_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    """The graph's logits for the prompt with an empty cache, in plain onnxruntime."""
    import onnxruntime as ort

    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {}
    for value in session.get_inputs():
        name, n = value.name, ids.shape[1]
        if name == "input_ids":
            feed[name] = ids.astype(np.int64 if "int64" in value.type else np.int32)
        elif name == "attention_mask":
            feed[name] = np.ones((1, n), np.int64 if "int64" in value.type else np.int32)
        elif name == "position_ids":
            feed[name] = np.arange(n, dtype=np.int64)[None]
        elif name.startswith("past_key_values"):
            shape = (1, config["num_key_value_heads"], 0, config["head_size"])
            feed[name] = np.zeros(shape, np.float32)
    return session.run(["logits"], feed)[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cache = Path(os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=cache / "peer-genai-builder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    checkpoint = args.dir or make_checkpoint(args.work / "smollm-135m-random")
    import transformers

    from pipeline.measure.harness import machine

    ids = np.random.default_rng(0).integers(0, 300, (1, PROMPT_LEN))
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float64).eval()
    with torch.no_grad():
        want_logits = hf(torch.from_numpy(ids)).logits[0].numpy()
        want_tokens = hf.generate(
            torch.from_numpy(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, PROMPT_LEN:].tolist()  # fmt: skip
    del hf
    folders = {}
    for precision in ("fp32", "int4"):
        print(f"building {precision}", file=sys.stderr, flush=True)
        folders[f"genai-builder {precision}"] = build_genai(
            checkpoint, args.work / f"builder-{precision}", precision
        )
        folders[f"pipeline {precision}"] = build_ours(checkpoint, args.work / "ours", precision)
    rows = {name: {"prefill_s": [], "step_s": []} for name in folders}
    scale = np.abs(want_logits).max()
    for name, folder in folders.items():
        got = first_logits(folder, ids)
        rows[name]["max_rel_diff_vs_float64"] = float(np.abs(got - want_logits).max() / scale)
        rows[name]["top1_agreement"] = float((got.argmax(-1) == want_logits.argmax(-1)).mean())
    for r in range(args.rounds):  # interleaved: every folder once per round, order rotating
        names = list(folders)[r % len(folders) :] + list(folders)[: r % len(folders)]
        for name in names:
            tokens, prefill, step = genai_run(folders[name], ids, NEW_TOKENS)
            rows[name]["prefill_s"].append(prefill)
            rows[name]["step_s"].append(step)
            rows[name]["greedy_equals_transformers"] = tokens == want_tokens
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    summary = {
        "command": " ".join(["python", *sys.argv]),
        "checkpoint": str(checkpoint),
        "machine": machine(threads=(1, 2)),
        "prompt_tokens": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "rows": {
            name: {
                "prefill_ms_median": 1e3 * float(np.median(row.pop("prefill_s"))),
                "decode_step_ms_median": 1e3 * float(np.median(row.pop("step_s"))),
                **row,
            }
            for name, row in rows.items()
        },
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
