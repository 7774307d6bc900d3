"""Generation against transformers on a checkpoint the tests never saw: a 2-layer GPT-2 trained
here on the Zen of Python (the standard library's `this` module, on every machine; seed 7), then
for three prompts greedy, repetition penalty 1.3, no-repeat 3-grams, 4 beams with early stopping
and min 30 new tokens in ort-opt and genai against transformers' float64 `generate`, and
`--stop "\\n\\n"`. Prints one line per case and "all equal: True/False".

    python scripts/check_generation_unseen.py [WORK_DIR]
"""

import codecs
import json
import pathlib
import subprocess
import sys
import tempfile
import this

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer

PROMPTS = ["Beautiful is", "Errors should", "If the implementation"]
SETTINGS = {
    "greedy": ({}, []),
    "repetition-penalty-1.3": ({"repetition_penalty": 1.3}, ["--repetition-penalty", "1.3"]),
    "no-repeat-3": ({"no_repeat_ngram_size": 3}, ["--no-repeat-ngram-size", "3"]),
    "4-beams-early": (
        {"num_beams": 4, "early_stopping": True},
        ["--num-beams", "4", "--early-stopping"],
    ),
    "min-new-30": ({"min_new_tokens": 30}, ["--min-new-tokens", "30"]),
}


def train(folder: pathlib.Path) -> None:
    text = codecs.decode(this.s, "rot13")
    corpus = "\n\n".join([line for line in text.splitlines() if line.strip()] * 4) + "\n\n"
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([corpus], vocab_size=400, min_frequency=1)
    tok.save(str(folder / "tokenizer.json"))
    stream = torch.tensor(tok.encode(corpus).ids)
    torch.manual_seed(7)
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=160, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=None, eos_token_id=tok.token_to_id("."), pad_token_id=None,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(250):
        starts = torch.randint(0, len(stream) - 65, (16,), generator=gen)
        batch = torch.stack([stream[s : s + 64] for s in starts])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained: loss {loss.item():.3f}")
    model.save_pretrained(folder)


def ours(folder, work, prompt, runtime, options):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "generate", "--weights", str(folder), "--prompt", prompt,
         "--max-new-tokens", "60", "--runtime", runtime, "--out", str(work / "out"), "--json", *options],
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout) if out.returncode == 0 else out.stderr.strip()


def main() -> None:
    work = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    folder = work / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    train(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float64).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    equal = []
    for name, (hf_settings, options) in SETTINGS.items():
        for prompt in PROMPTS:
            ids = tok(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                want = hf.generate(ids, do_sample=False, max_new_tokens=60, pad_token_id=0,
                                   **hf_settings)[0].tolist()  # fmt: skip
            for runtime in ("ort-opt", "genai"):
                got = ours(folder, work, prompt, runtime, options)
                equal.append(isinstance(got, dict) and got["sequences"][0] == want)
                print(
                    f"{name} {prompt!r} {runtime}: equal {equal[-1]}, {len(want) - ids.shape[1]} new tokens"
                )
    stopped = ours(folder, work, "Beautiful is", "ort-opt", ["--ignore-eos", "--stop", "\n\n"])[
        "text"
    ][0]
    blank_line = stopped.endswith("\n\n") and stopped.count("\n\n") == 1
    print(f"--stop '\\n\\n': {stopped!r}, ends at the first blank line: {blank_line}")
    print(f"all equal: {all(equal) and blank_line} ({len(equal)} cases)")


if __name__ == "__main__":
    main()
