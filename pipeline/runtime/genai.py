"""onnxruntime-genai's own generation loop on the folder export/genai.py writes.

A batch of prompts of different lengths is right-padded with a pad token, which genai masks out;
the decoder takes each row's length from that mask (export/genai.py). genai builds the mask from
the ids themselves (id != pad_token_id), so a prompt holding the pad id would lose those tokens:
`3,14,0` with pad 0 generated as if the prompt were `3,14`. The pad is therefore chosen per call
among the ids no prompt holds, and the folder's config overlaid with it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import ModelConfig
from ..errors import PipelineError


class GenaiDecoder:
    """Generation by onnxruntime-genai's own loop (it keeps the cache and the positions)."""

    def __init__(self, folder: Path, cfg: ModelConfig, threads: Optional[int] = None):
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise PipelineError(
                "runtime genai needs onnxruntime-genai (pip install onnxruntime-genai)"
            ) from exc
        self.og, self.cfg, self.folder = og, cfg, Path(folder)
        model = json.loads((self.folder / "genai_config.json").read_text())["model"]
        self.eos, self.pad = model["eos_token_id"], model["pad_token_id"]
        self.models = {self.pad: og.Model(str(folder))}  # pad id -> the model configured with it

    def model_padding_with(self, prompts) -> tuple:
        """(a pad id no prompt holds, the model whose config names it)."""
        used = {t for p in prompts for t in p}
        pad = self.pad
        if pad in used:
            pad = next((t for t in range(self.cfg.vocab_size - 1, -1, -1) if t not in used), None)
            if pad is None:
                raise PipelineError(
                    "runtime genai: the prompts hold every id, none is left to pad with"
                )
        if pad not in self.models:
            config = self.og.Config(str(self.folder))
            config.overlay(json.dumps({"model": {"pad_token_id": pad}}))
            self.models[pad] = self.og.Model(config)
        return pad, self.models[pad]

    def search_rules(self, rules, prompts) -> dict:
        """genai's search options for the rules its own loop has; one line for a rule it has
        not (never silently ignored)."""
        if rules.stop_strings:
            raise PipelineError(
                "runtime genai has no stop strings: use --runtime ort-opt for --stop"
            )
        if rules.ignore_eos and rules.eos:
            raise PipelineError(
                "runtime genai always ends a row at its end-of-text id: drop --ignore-eos"
            )
        options = {}
        if rules.repetition_penalty != 1.0:
            options["repetition_penalty"] = rules.repetition_penalty
        if rules.no_repeat_ngram_size:
            options["no_repeat_ngram_size"] = rules.no_repeat_ngram_size
        if rules.min_new_tokens and rules.eos:
            if len({len(p) for p in prompts}) > 1:
                raise PipelineError(
                    "runtime genai counts --min-new-tokens from the longest prompt: give prompts "
                    "of one length, or use --runtime ort-opt"
                )
            options["min_length"] = len(prompts[0]) + rules.min_new_tokens
        return options

    def teacher_forced(self, ids: np.ndarray) -> np.ndarray:
        """Logits [1, S, V] at every position of one row, its tokens appended one at a time to
        genai's own generator (its cache, its positions), as `eval` scores a decoder."""
        row = [int(t) for t in np.asarray(ids)[0]]
        _, model = self.model_padding_with([row])  # a pad id the row does not hold
        params = self.og.GeneratorParams(model)
        params.set_search_options(max_length=len(row), batch_size=1)
        generator = self.og.Generator(model, params)
        out = []
        for token in row:
            generator.append_tokens(np.array([[token]], dtype=np.int32))
            out.append(np.array(generator.get_output("logits"))[0, -1])
        return np.stack(out)[None]

    def generate(self, prompts, max_new_tokens, sampling, on_tokens=None, rules=None, beams=None):
        if beams is not None and beams.num_beams > 1:
            return self._beam_search(prompts, max_new_tokens, rules, beams)
        width = max(len(p) for p in prompts)
        rule_options = self.search_rules(rules, prompts) if rules is not None else {}
        pad, model = self.model_padding_with(prompts)
        padded = np.full((len(prompts), width), pad, np.int32)
        for row, p in enumerate(prompts):
            padded[row, : len(p)] = p
        og = self.og
        params = og.GeneratorParams(model)
        options = {
            "max_length": width + max_new_tokens,
            "batch_size": len(prompts),
            "do_sample": not sampling.greedy,
            **rule_options,
        }
        if not sampling.greedy:
            options.update(
                temperature=sampling.temperature,
                top_k=sampling.top_k or self.cfg.vocab_size,
                top_p=sampling.top_p,
            )
            if sampling.seed is not None:
                options["random_seed"] = int(sampling.seed) % (2**31)
        params.set_search_options(**options)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(padded)
        generator.generate_next_token()
        ttft = time.perf_counter() - start
        new = [np.asarray(generator.get_next_tokens(), np.int64)]
        if on_tokens:
            on_tokens(0, new[-1])
        steps = []
        for i in range(1, max_new_tokens):
            # genai ends a sequence at its end-of-sequence id (the stand-in has no such token:
            # genai_config names the last id, which random weights can produce); a step after
            # the end fails inside ORT, so the generation ends there, shorter than asked
            if generator.is_done():
                break
            t0 = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - t0)
            new.append(np.asarray(generator.get_next_tokens(), np.int64))
            if on_tokens:
                on_tokens(i, new[-1])
        return [_until_eos(row, self.eos) for row in np.stack(new, 1).tolist()], ttft, steps

    def _beam_search(self, prompts, max_new_tokens, rules, beams):
        """genai's own beam search (its search options num_beams, length_penalty,
        early_stopping); each prompt's best hypothesis, new tokens only."""
        if beams.early_stopping == "never":
            raise PipelineError("runtime genai has no early_stopping='never': use ort-opt")
        eos = self.eos if isinstance(self.eos, int) else None
        if eos is None:
            raise PipelineError(
                "runtime genai's beam search leaves out the end-of-text id, which cannot be told "
                "apart among several: use --runtime ort-opt"
            )
        width = max(len(p) for p in prompts)
        pad, model = self.model_padding_with(prompts)
        padded = np.full((len(prompts), width), pad, np.int32)
        for row, p in enumerate(prompts):
            padded[row, : len(p)] = p
        params = self.og.GeneratorParams(model)
        params.set_search_options(
            max_length=width + max_new_tokens, batch_size=len(prompts), do_sample=False,
            num_beams=beams.num_beams, num_return_sequences=1,
            length_penalty=float(beams.length_penalty), early_stopping=bool(beams.early_stopping),
            **(self.search_rules(rules, prompts) if rules is not None else {}),
        )  # fmt: skip
        generator = self.og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(padded)
        ttft, steps = None, []
        while not generator.is_done():
            t0 = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - t0)
            ttft = ttft if ttft is not None else time.perf_counter() - start
        new = []
        for row in range(len(prompts)):
            tokens = [int(t) for t in generator.get_sequence(row)][width:]
            while tokens and tokens[-1] == pad:
                tokens.pop()  # genai pads a hypothesis that ended early
            if len(tokens) < max_new_tokens:
                tokens.append(eos)  # it ended at the end-of-text id, which genai leaves out
            new.append(tokens)
        return new, ttft or 0.0, steps[1:]


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    """A row's tokens up to its end-of-sequence id: in a batch genai goes on for the other rows
    and fills an ended one with padding, which is not generated text."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
