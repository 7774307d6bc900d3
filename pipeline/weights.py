"""The supplied state-dict format (shared/spec/state_dict_format.md): load, validate, make.

Loading never unpickles arbitrary objects (weights_only=True), and every rejection names the key
and what was expected against what was found.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch

from .config import BASE_CONFIG, DEFAULT_SIZE, ModelConfig, size_of
from .errors import PipelineError
from .reads import file_sha256, recording, torch_load_safely  # noqa: F401 (file_sha256: re-export)
from .sources import source_for

PathLike = Union[str, Path]
DATA = resources.files("pipeline") / "data"
DEFAULT_WEIGHTS = Path(str(DATA / "dummy_gpt2_model.pt"))
DEFAULT_EXAMPLES = Path(str(DATA / "example_outputs.pt"))
STANDIN_SEED = 20240611


def expected_shapes(cfg: ModelConfig = BASE_CONFIG) -> dict[str, tuple[int, ...]]:
    """Every key of the supplied format for cfg and its shape: the spec's GPT-2 block, or the
    Llama family's parts (RMSNorm without bias, the gate of the gated MLP, projections without
    biases, an untied head) where cfg has them."""
    d, du, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
    shapes = {"transformer.word_embeddings.weight": (v, d)}
    if cfg.positions == "learned" or cfg.norm == "layer":  # the spec's format always has it
        shapes["transformer.positional_embeddings.weight"] = (cfg.max_seq_len, d)

    def norm(prefix: str) -> dict:
        return {
            f"{prefix}.weight": (d,),
            **({f"{prefix}.bias": (d,)} if cfg.norm == "layer" else {}),
        }

    def projection(prefix: str, d_in: int, d_out: int, bias: bool) -> dict:
        return {f"{prefix}.weight": (d_in, d_out), **({f"{prefix}.bias": (d_out,)} if bias else {})}

    every = cfg.biases == "all"
    for i in range(cfg.n_layers):
        p = f"transformer.h.{i}."
        shapes.update(norm(p + "pre_attn_ln"))
        shapes.update(projection(p + "attn.qkv_proj", d, 3 * d, cfg.biases != "none"))
        shapes.update(projection(p + "attn.out_proj", d, d, every))
        shapes.update(norm(p + "pre_mlp_ln"))
        if cfg.mlp == "gated-silu":
            shapes.update(projection(p + "mlp.gate_proj", d, du, every))
        shapes.update(projection(p + "mlp.up_proj", d, du, every))
        shapes.update(projection(p + "mlp.down_proj", du, d, every))
    shapes.update(norm("transformer.final_ln"))
    shapes["lm_head.weight"] = (v, d)
    return shapes


def model_layout_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shapes where the model's own layout differs from the supplied format (a state dict the
    model saved itself): a narrower qkv projection with fewer key/value heads, no positional
    table with rotary positions (None)."""
    if cfg.kv_heads == cfg.n_heads and cfg.positions == "learned":
        return {}
    shapes: dict = {}
    if cfg.positions == "rope":
        shapes["transformer.positional_embeddings.weight"] = None
    if cfg.kv_heads != cfg.n_heads:
        for i in range(cfg.n_layers):
            shapes[f"transformer.h.{i}.attn.qkv_proj.weight"] = (cfg.d_model, cfg.qkv_width)
            if cfg.biases != "none":
                shapes[f"transformer.h.{i}.attn.qkv_proj.bias"] = (cfg.qkv_width,)
    return shapes


def to_model_layout(
    cfg: ModelConfig, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The supplied format converted to the config's own layout (a no-op for the spec's variants):
    - rotary positions: the positional table, if present, is ignored;
    - N_kv < N_h key/value heads: each group of N_h / N_kv consecutive heads shares one K (and V)
      projection, the mean of the group's own (the mean-pooling conversion of the GQA paper)."""
    out = dict(state_dict)
    if cfg.positions == "rope":
        out.pop("transformer.positional_embeddings.weight", None)
    if cfg.kv_heads == cfg.n_heads:
        return out
    d, h, group = cfg.d_model, cfg.head_dim, cfg.n_heads // cfg.kv_heads
    for i in range(cfg.n_layers):
        for name in ("weight", "bias") if cfg.biases != "none" else ("weight",):
            key = f"transformer.h.{i}.attn.qkv_proj.{name}"
            t = out[key]
            if t.shape[-1] == cfg.qkv_width:  # already in the model's layout
                continue
            q, k, v = t[..., :d], t[..., d : 2 * d], t[..., 2 * d :]
            pool = lambda x: (
                x.reshape(*x.shape[:-1], cfg.kv_heads, group, h).mean(-2).reshape(*x.shape[:-1], -1)
            )
            out[key] = torch.cat([q, pool(k), pool(v)], dim=-1).contiguous()
    return out


def dense_tensor(name: str, tensor: object) -> torch.Tensor:
    """The tensor if it holds plain dense data on the CPU, else a one-line error saying what
    it is instead (`name` starts the message: "weights: h.0.ln_1.w", "examples item 2 logits")."""
    if not isinstance(tensor, torch.Tensor):
        raise PipelineError(f"{name} is a {type(tensor).__name__}, not a tensor")
    if tensor.is_meta:
        raise PipelineError(f"{name} is a meta tensor (a shape without data)")
    if tensor.is_quantized:
        raise PipelineError(f"{name} is quantized ({tensor.dtype}); dequantize it to float first")
    if tensor.layout != torch.strided:
        raise PipelineError(
            f"{name} has layout {tensor.layout}; expected a dense tensor (call .to_dense())"
        )
    return tensor


def _check_tensor(key: str, tensor: object) -> torch.Tensor:
    """The tensor as dense float32 on the CPU, or a one-line error naming what it is instead."""
    tensor = dense_tensor(f"weights: {key}", tensor)
    if not tensor.is_floating_point():
        raise PipelineError(f"weights: {key} has dtype {tensor.dtype}, expected a float tensor")
    return tensor


def _shaped(key: str, tensor, want: tuple, alternative: Optional[tuple]):
    """The tensor in the format's shape (vectors given as [1, n] flattened) or the model's own
    layout, cast to float32 and checked finite after the cast."""
    got = tuple(tensor.shape)
    if len(want) == 1 and got == (1, want[0]):
        tensor = tensor.reshape(want)
    elif alternative is not None and got == alternative:
        pass
    elif len(want) == 1 and alternative is not None and got == (1, *alternative):
        tensor = tensor.reshape(alternative)
    elif got != want:
        hint = ""
        if len(want) == 2 and got == want[::-1] and want[0] != want[1]:
            hint = " (transposed? the format stores [in, out], x @ W orientation)"
        raise PipelineError(f"weights: {key} has shape {list(got)}, expected {list(want)}{hint}")
    # checked after the cast: 1e300 is finite in float64 but inf in the float32 model
    cast = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not torch.isfinite(cast).all():
        if not torch.isfinite(tensor).all():
            raise PipelineError(f"weights: {key} holds non-finite values (nan or inf)")
        raise PipelineError(
            f"weights: {key} holds values beyond float32's range (|x| > 3.4e38), "
            f"which would be inf in the float32 model"
        )
    return cast


def validate_state_dict(raw: object, cfg: ModelConfig = BASE_CONFIG) -> dict[str, torch.Tensor]:
    """Check the supplied format and return it with vectors flattened to [n] and float32.

    lm_head.weight may be absent (it is tied to the word embeddings, and the model's own
    state_dict() does not repeat it); when present it must equal them."""
    if not isinstance(raw, Mapping):
        raise PipelineError(
            f"weights: expected a state dict (a mapping of names to tensors), "
            f"found {type(raw).__name__}"
        )
    shapes = expected_shapes(cfg)
    alternatives = model_layout_shapes(cfg)  # also accepted: the model's own layout
    optional = {k for k, shape in alternatives.items() if shape is None}
    if cfg.tied_head:
        optional.add("lm_head.weight")
    missing = [k for k in shapes if k not in raw and k not in optional]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise PipelineError(f"weights: missing key(s) {', '.join(missing[:3])}{more}")
    unexpected = [k for k in raw if k not in shapes]
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise PipelineError(
            f"weights: unexpected key(s) {', '.join(map(str, unexpected[:3]))}{more}"
        )
    out = {
        key: _shaped(key, _check_tensor(key, raw[key]), want, alternatives.get(key))
        for key, want in shapes.items()
        if key in raw
    }
    if not cfg.tied_head:
        pass
    elif "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.word_embeddings.weight"]
    elif not torch.equal(out["lm_head.weight"], out["transformer.word_embeddings.weight"]):
        raise PipelineError(
            "weights: lm_head.weight differs from transformer.word_embeddings.weight; "
            "the model's LM head is tied to the word embeddings"
        )
    check_float32_range(out, cfg)
    return out


F32_MAX = float(torch.finfo(torch.float32).max)


def check_float32_range(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Refuse weights that can drive an activation past what float32 holds, before any runtime
    computes with them. Past it torch's logits turn NaN (refused), but ORT's fused LayerNorm
    returned finite, wrong logits (a bias of 3e38: top token 231 where float64 says 140).

    A sound bound from the weights' magnitudes alone, whatever the input: a LayerNorm's output is
    at most |gain| sqrt(d) + |bias|; a projection's at most its input's bound times the largest
    column sum of |W|, plus |b|; attention averages values; GELU shrinks; each layer adds at most
    its two branches to the residual stream (every variant's wiring). LayerNorm squares its
    input over d values, so that input must stay below sqrt(max / d). Trained and random
    checkpoints sit many orders of magnitude below these limits."""
    d = cfg.d_model
    ln_limit = (F32_MAX / (4 * d)) ** 0.5  # (x - mean)^2 summed over d, |x - mean| <= 2|x|

    def peak(key: str) -> float:  # 0 for a bias the model does not have
        return float(sd[key].abs().max()) if key in sd and sd[key].numel() else 0.0

    def col_sum(key: str) -> float:  # [in, out]: the most any output can gather per unit input
        return float(sd[key].abs().sum(0).max())

    def refuse(key: str, bound: float, where: str) -> None:
        raise PipelineError(
            f"weights: {key} can drive activations to {bound:.2g}, past what float32 can hold "
            f"{where}; the logits would be inf/NaN, or finite and wrong in ONNX Runtime"
        )

    def norm(prefix: str) -> float:
        return peak(f"{prefix}.weight") * d**0.5 + peak(f"{prefix}.bias")

    def project(bound: float, prefix: str) -> float:
        out = bound * col_sum(f"{prefix}.weight") + peak(f"{prefix}.bias")
        if not out <= F32_MAX / 4:
            refuse(prefix + ".weight/bias", out, "in its output")
        return out

    stream = peak("transformer.word_embeddings.weight")
    if cfg.positions == "learned":
        stream += peak("transformer.positional_embeddings.weight")
    for i in range(cfg.n_layers):
        p = f"transformer.h.{i}"
        qkv = project(norm(f"{p}.pre_attn_ln"), f"{p}.attn.qkv_proj")
        rotated = qkv * 2 if cfg.positions == "rope" else qkv
        scale = cfg.head_dim**-0.5 if cfg.scale_attn else 1.0
        if not rotated**2 * cfg.head_dim * scale <= F32_MAX / 4:
            refuse(f"{p}.attn.qkv_proj.weight/bias", rotated**2 * cfg.head_dim, "in q k^T")
        attn = project(qkv, f"{p}.attn.out_proj")
        if not stream + attn <= ln_limit:
            refuse(f"{p}.attn.out_proj.weight/bias", stream + attn, "squared in LayerNorm")
        up = project(norm(f"{p}.pre_mlp_ln"), f"{p}.mlp.up_proj")
        if cfg.mlp == "gated-silu":  # |silu(g)| <= |g|, times the up projection's output
            up = up * project(norm(f"{p}.pre_mlp_ln"), f"{p}.mlp.gate_proj")
        mlp = project(up, f"{p}.mlp.down_proj")
        stream += attn + mlp
        if not stream <= ln_limit:
            refuse(f"{p}.mlp weights", stream, "squared in the next LayerNorm")
    head = "transformer.word_embeddings.weight" if cfg.tied_head else "lm_head.weight"
    logits = norm("transformer.final_ln") * float(sd[head].abs().sum(1).max())
    if not logits <= F32_MAX / 4:
        refuse("transformer.final_ln / word_embeddings", logits, "in the logits")


def cache_dir() -> Path:
    """Where stand-in weights of the larger sizes are made on demand ($PIPELINE_CACHE or ~/.cache)."""
    return Path(os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline")


def standin_weights_file(cfg: ModelConfig) -> Path:
    """Deterministic random weights in the supplied format for cfg's size, written once to the cache
    (never downloaded, never committed: 0.5 GB for gpt2-124m)."""
    from .fileio import atomic_path

    size = size_of(cfg)
    path = cache_dir() / f"standin-{size}-seed{STANDIN_SEED}.pt"
    if not path.exists():
        state_dict = make_standin_state_dict(cfg)
        with atomic_path(path) as tmp:
            torch.save(state_dict, tmp)
    return path


def weights_path(weights: Optional[PathLike] = None, cfg: ModelConfig = BASE_CONFIG) -> Path:
    """The weights file to use: the caller's, the shipped stand-in (tiny), or the made-on-demand
    stand-in of cfg's size."""
    if weights is not None:
        return Path(weights)
    return DEFAULT_WEIGHTS if size_of(cfg) == DEFAULT_SIZE else standin_weights_file(cfg)


def load_state_dict(
    path: Optional[PathLike] = None, cfg: ModelConfig = BASE_CONFIG
) -> dict[str, torch.Tensor]:
    """The weights from any source (sources.py), checked against cfg in the spec's format."""
    return read_weights(path, cfg)[0]


def read_weights(
    path: Optional[PathLike] = None, cfg: ModelConfig = BASE_CONFIG
) -> tuple[dict[str, torch.Tensor], str]:
    """The checked weights and the identity of the bytes they were read from (hashed while
    reading, so a file replaced meanwhile cannot lend its hash to the old weights)."""
    path = Path(weights_path(path, cfg))
    source = source_for(path)
    with recording() as hashes:
        raw = source.reader()(path)
        try:
            state_dict = validate_state_dict(raw, cfg)
        except PipelineError as exc:
            if not source.explain:
                raise
            raise PipelineError(f"{path}: {source.in_own_names(path, str(exc))}") from exc
    return state_dict, source.identity(path, hashes)


def weights_sha256(path: PathLike) -> str:
    """The identity of the weights as they are on disk now: a file's sha256, or a checkpoint
    directory's (its config and every weights file). What an artifact records is instead the
    identity of the bytes it was made from (read_weights)."""
    return source_for(Path(path)).sha256(Path(path))


def make_standin_state_dict(
    cfg: ModelConfig = BASE_CONFIG, seed: int = STANDIN_SEED
) -> dict[str, torch.Tensor]:
    """Deterministic, non-trivial weights in the supplied format.

    Scales are chosen so the scaled attention scores and MLP pre-activations are of order 1
    (so dropping the sqrt(h) scale or changing GELU moves the logits measurably), LayerNorm gains
    are not 1 and biases not 0, and logits come out of order 10.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return (
            torch.randn(shape, generator=gen, dtype=torch.float64)
            .mul(std)
            .add(mean)
            .to(torch.float32)
        )

    sd: dict[str, torch.Tensor] = {}
    for key, shape in expected_shapes(cfg).items():
        if key == "lm_head.weight" and cfg.tied_head:
            continue
        if key.endswith("embeddings.weight") or key == "lm_head.weight":
            sd[key] = normal(shape, 0.5 if "word" in key else 0.2)
        elif "ln." in key and key.endswith(".weight"):
            sd[key] = normal(shape, 0.1, mean=1.0)
        elif key.endswith(".bias"):
            sd[key] = normal(shape, 0.05 if "ln." in key else 0.02)
        else:  # projection matrix [in, out]: unit-variance inputs give order-1 outputs
            sd[key] = normal(shape, 1.0 / shape[0] ** 0.5)
    if cfg.tied_head:
        sd["lm_head.weight"] = sd["transformer.word_embeddings.weight"]  # tied: one storage on disk
    return dict(sorted(sd.items(), key=lambda kv: list(expected_shapes(cfg)).index(kv[0])))
