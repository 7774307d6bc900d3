"""A small GPT-2 trained for real, to judge quantization and graph changes by (random weights give
flat logits that hide quality loss).

Corpus: Python's own documentation topics, `pydoc_data.topics` (in every CPython install, Python
Software Foundation License): 79 topics, ~465 kB of English prose and code. The last 8 topics in
name order are held out (never trained on) and written as `held-out.txt` beside the checkpoint.
A byte-level BPE of 2048 tokens; 4 layers, d_model 128, 4 heads, a context of 128 (the length it
is trained at: positions it never saw would be scored untrained): GPT-2, or with
`--family llama` Llama's shape (RMSNorm, rotary positions, gated SiLU MLP of 344, 2 key/value
heads, an LM head of its own); trained with AdamW from seed 0 (deterministic on one machine).
Written to $PIPELINE_CACHE (default ~/.cache/pipeline)/trained-<family>-pydoc/ with
`save_pretrained`, a few MB, never committed.

    python scripts/train_checkpoint.py [--family gpt2|llama] [--steps 1500] [--out DIR]
    pipeline eval --weights DIR --text-file DIR/held-out.txt
"""

import argparse
import os
import pydoc_data.topics
import time
from pathlib import Path

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer

HELD_OUT_TOPICS = 8
CONTEXT = 128  # the model's positions, and every training sequence's length


def corpus() -> tuple[str, str]:
    names = sorted(pydoc_data.topics.topics)
    text = lambda ns: "\n\n".join(pydoc_data.topics.topics[n].strip() for n in ns) + "\n"  # noqa: E731
    return text(names[:-HELD_OUT_TOPICS]), text(names[-HELD_OUT_TOPICS:])


def main() -> None:
    default = Path(os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--out", type=Path, default=None, help="default: the cache's")
    args = parser.parse_args()
    args.out = args.out or default / f"trained-{args.family}-pydoc"
    train_text, held_out = corpus()
    args.out.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([train_text], vocab_size=2048, min_frequency=2, show_progress=False)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "held-out.txt").write_text(held_out, encoding="utf-8")
    stream = torch.tensor(tok.encode(train_text).ids)
    print(f"corpus: {len(stream):,} training tokens, held out {len(tok.encode(held_out).ids):,}")
    torch.manual_seed(0)
    if args.family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=tok.get_vocab_size(), n_positions=CONTEXT, n_embd=128, n_layer=4, n_head=4,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(
            vocab_size=tok.get_vocab_size(), max_position_embeddings=CONTEXT, hidden_size=128,
            intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(stream) - CONTEXT - 1, (16,), generator=gen)
        batch = torch.stack([stream[s : s + CONTEXT] for s in starts])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {loss.item():.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    model.save_pretrained(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
