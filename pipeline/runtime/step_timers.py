"""Decode-step timers: for one runtime, a callable running one generation step with a cache of
P tokens per row held (batch rows), for `pipeline bench --mode decode`. The registry names them
(an entry's step_timer); every builder is called as
build(runtime, workspace, variant, model, batch, past_len, threads, steps), `steps` being how many
calls it must serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _torch_step(model, batch: int, past_len: int, threads: int, recompute: bool):
    import torch

    cfg = model.config
    rng = np.random.default_rng(0)
    if recompute:
        ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (batch, past_len + 1)))

        def run():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                model(ids)

        return run
    past = [
        (
            torch.randn(batch, cfg.kv_heads, past_len, cfg.head_dim),
            torch.randn(batch, cfg.kv_heads, past_len, cfg.head_dim),
        )
        for _ in range(cfg.n_layers)
    ]
    ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (batch, 1)))
    mask = torch.ones(batch, past_len + 1, dtype=torch.int64)
    pos = torch.full((batch, 1), past_len)

    def run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(ids, past, mask, pos, use_cache=True)

    return run


def _ort_step(
    path: Path,
    cfg,
    batch: int,
    past_len: int,
    threads: int,
    in_place: bool = False,
    device: str = "cpu",
):
    """in_place: the fused decoders' way, one [B, N_kv, S_max, h] buffer per cache tensor bound
    as past and present (GroupQueryAttention writes the new key where the row ends); else the
    standard contract, past [B, N_kv, P, h] read and present [B, N_kv, P + 1, h] written anew."""
    from ..export.io_spec import past_names, present_names
    from .registry import binding_device
    from .session import make_session

    # without spinning (unlike OrtDecoder): spinning workers would steal the cores of the runtime
    # whose burst comes next (measured: p90 up to 5x); the step times are conservative for ORT
    session = make_session(path, threads, device=device)
    on = binding_device(device)
    rng = np.random.default_rng(0)
    binding = session.io_binding()
    keep = []  # the bound arrays must outlive the binding
    for name, arr in (
        ("input_ids", rng.integers(0, cfg.vocab_size, (batch, 1))),
        ("attention_mask", np.ones((batch, past_len + 1), np.int64)),
        ("position_ids", np.full((batch, 1), past_len, np.int64)),
    ):
        keep.append(np.ascontiguousarray(arr, dtype=np.int64))
        binding.bind_cpu_input(name, keep[-1])
    if in_place:
        shape = [batch, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim]
        for past, present in zip(past_names(cfg), present_names(cfg)):
            keep.append(rng.standard_normal(shape).astype(np.float32))
            binding.bind_input(past, on, 0, np.float32, shape, keep[-1].ctypes.data)
            binding.bind_output(present, on, 0, np.float32, shape, keep[-1].ctypes.data)
    else:
        for name in past_names(cfg):
            keep.append(
                rng.standard_normal((batch, cfg.kv_heads, past_len, cfg.head_dim)).astype(
                    np.float32
                )
            )
            binding.bind_cpu_input(name, keep[-1])
        for name in present_names(cfg):
            keep.append(np.empty((batch, cfg.kv_heads, past_len + 1, cfg.head_dim), np.float32))
            binding.bind_output(name, on, 0, np.float32, list(keep[-1].shape), keep[-1].ctypes.data)
    keep.append(np.empty((batch, 1, cfg.vocab_size), np.float32))
    binding.bind_output("logits", on, 0, np.float32, list(keep[-1].shape), keep[-1].ctypes.data)
    return lambda: (session.run_with_iobinding(binding), keep)


def _genai_step(folder: Path, cfg, batch: int, past_len: int, steps: int):
    """genai cannot be held at one cache length: each call is its next step after a prompt of P
    tokens (P = 1 stands in for 0), so `steps` calls span cache lengths P .. P + steps."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    # near the context's end the prompt is shortened so that the steps still fit after it
    prompt_len = max(1, min(past_len, cfg.max_seq_len - steps - 2))
    prompt = (
        np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
    )
    max_length = min(cfg.max_seq_len, prompt_len + steps + 2)
    state = {}

    def start():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, batch_size=batch, do_sample=False)
        state["generator"] = og.Generator(model, params)
        state["generator"].append_tokens(prompt)
        state["generator"].generate_next_token()
        state["length"] = prompt_len + 1

    def step():
        # at the context limit: start again (one slow sample); genai raises past max_length
        if state["generator"].is_done() or state["length"] >= max_length:
            start()
        state["generator"].generate_next_token()
        state["length"] += 1

    start()
    return step


def _decoder_step(decoder, cfg, batch: int, past_len: int, steps: int):
    """Any registry decoder that cannot be held at one cache length: each call is its next step
    after a prompt of P tokens (P = 1 stands in for 0), restarting near the context limit."""
    from .decoders import positions_from_mask

    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, max(past_len, 1)))
    state = {}

    def start():
        mask = np.ones_like(prompt)
        decoder.prefill(prompt, mask, positions_from_mask(mask))
        state["mask"], state["pos"] = mask, np.full(batch, prompt.shape[1])

    def step():
        if state["pos"][0] + 1 >= min(cfg.max_seq_len, prompt.shape[1] + steps + 2):
            start()
        state["mask"] = np.ones((batch, state["pos"][0] + 1), np.int64)
        decoder.step(np.zeros(batch, np.int64), state["mask"], state["pos"])
        state["pos"] = state["pos"] + 1

    start()
    return step


def torch_step(runtime, workspace, variant, model, batch, past_len, threads, steps):
    return _torch_step(model, batch, past_len, threads, recompute=False)


def torch_recompute_step(runtime, workspace, variant, model, batch, past_len, threads, steps):
    return _torch_step(model, batch, past_len, threads, recompute=True)


def ort_step(runtime, workspace, variant, model, batch, past_len, threads, steps):
    from ..export.flavours import FLAVOURS

    flavour = runtime.decoder_flavour
    return _ort_step(
        workspace.artifact(variant, flavour),
        workspace.model_config(variant),
        batch,
        past_len,
        threads,
        in_place=FLAVOURS[flavour].fused,
        device=runtime.device,
    )


def genai_step(runtime, workspace, variant, model, batch, past_len, threads, steps):
    folder = workspace.genai_folder(variant, threads)
    return _genai_step(folder, workspace.model_config(variant), batch, past_len, steps)


def decoder_step(runtime, workspace, variant, model, batch, past_len, threads, steps):
    from .registry import build

    decoder = build(runtime.name, "decoder", workspace, variant, threads)
    return _decoder_step(decoder, workspace.model_config(variant), batch, past_len, steps)
