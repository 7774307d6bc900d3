"""Model configuration and the registry of named architecture variants.

Every variant is the spec's baseline config with a few fields replaced; the model reads only
these fields, so adding a variant is one entry in ``VARIANTS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Literal, Optional

# Where the MLP branch reads from and which stream it is added to, in the spec's names:
# x is the layer input, t = x + Attention(LN_attn(x)).
Stream = Literal["x", "t"]


@dataclass(frozen=True)
class ModelConfig:
    max_seq_len: int = 1024  # S_max
    vocab_size: int = 512  # V
    d_model: int = 256  # d
    d_mlp: int = 1280  # d_u
    n_layers: int = 3  # N_l
    n_heads: int = 2  # N_h
    ln_eps: float = 1e-5
    scale_attn: bool = True  # divide QK^T by sqrt(h)
    gelu_approximate: Literal["none", "tanh"] = "none"
    mlp_input: Stream = "t"
    mlp_residual: Optional[Stream] = "t"  # None: no residual around the MLP
    # the modern attention family
    positions: Literal["learned", "rope"] = (
        "learned"  # rope: rotary q/k, rotate-half layout, no table
    )
    rope_base: float = 10000.0
    n_kv_heads: Optional[int] = (
        None  # key/value heads; None: one per query head; fewer: grouped-query
    )
    attn_window: Optional[int] = (
        None  # W: query m sees keys m - W < n <= m; None: every earlier key
    )
    # the Llama family's block (Llama, Mistral, Qwen2): RMSNorm (eps ln_eps), the gated SiLU MLP
    # down(silu(gate(x)) * up(x)), projections without bias (Qwen2 keeps q/k/v's), untied head
    norm: Literal["layer", "rms"] = "layer"
    mlp: Literal["gelu", "gated-silu"] = "gelu"
    biases: Literal["all", "qkv", "none"] = "all"  # qkv: only the q/k/v projection has one
    tied_head: bool = True  # the LM head is the word embeddings (False: lm_head.weight of its own)

    def __post_init__(self) -> None:
        # types and ranges first: everything else (divisions, sizes) is computed from them
        for name in ("max_seq_len", "vocab_size", "d_model", "d_mlp", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("n_kv_heads", "attn_window"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer or None, got {value!r}")
        for name in ("ln_eps", "rope_base"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0 < value < float("inf"))
            ):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name, allowed in (
            ("gelu_approximate", ("none", "tanh")),
            ("mlp_input", ("x", "t")),
            ("mlp_residual", ("x", "t", None)),
            ("positions", ("learned", "rope")),
            ("scale_attn", (True, False)),
            ("norm", ("layer", "rms")),
            ("mlp", ("gelu", "gated-silu")),
            ("biases", ("all", "qkv", "none")),
            ("tied_head", (True, False)),
        ):
            value = getattr(self, name)
            if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_kv_heads is not None and not (
            1 <= self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0
        ):
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.attn_window is not None and self.attn_window < 1:
            raise ValueError(f"attn_window must be >= 1, got {self.attn_window}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:  # h
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:  # N_kv
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def qkv_width(self) -> int:
        """Columns of the fused projection: d queries, then N_kv * h keys and as many values."""
        return self.d_model + 2 * self.kv_heads * self.head_dim

    @property
    def mlp_matrices(self) -> int:
        """[d, d_u]-sized matrices in one MLP: up and down, and the gate of the gated form."""
        return 3 if self.mlp == "gated-silu" else 2

    def n_params(self) -> int:
        """Parameter count, the LM head counted once when tied to the word embeddings."""
        d, du, qkv = self.d_model, self.d_mlp, self.qkv_width
        norms = 2 if self.norm == "layer" else 1  # gain and bias, or gain alone
        biases = {"all": qkv + d + (self.mlp_matrices - 1) * du + d, "qkv": qkv, "none": 0}
        per_layer = (
            2 * norms * d + d * qkv + d * d + self.mlp_matrices * d * du + biases[self.biases]
        )
        table = self.max_seq_len * d if self.positions == "learned" else 0
        head = 0 if self.tied_head else self.vocab_size * d
        return self.vocab_size * d + table + self.n_layers * per_layer + norms * d + head

    def matmul_params(self) -> int:
        """The weights of every projection and the LM head: what weight-only quantization
        stores in fewer bits; the rest (embedding rows, biases, norms) stays float32."""
        d, du = self.d_model, self.d_mlp
        per_layer = d * self.qkv_width + d * d + self.mlp_matrices * d * du
        return self.n_layers * per_layer + self.vocab_size * d

    def kv_cache_bytes_per_token(self, itemsize: int = 4) -> int:
        """Cache growth per token of one sequence: K and V of every layer's N_kv heads."""
        return 2 * self.n_layers * self.kv_heads * self.head_dim * itemsize

    def kv_cache_bytes(self, tokens: int, batch: int = 1, itemsize: int = 4) -> int:
        """A decode step's past and present caches together (the step copies one into the
        other): twice the cache of `tokens` tokens per row."""
        return 2 * batch * tokens * self.kv_cache_bytes_per_token(itemsize)

    def attention_pairs(self, seq_len: int) -> int:
        """Query-key pairs attention must compute per head: query m meets min(m + 1, W) keys."""
        s, w = seq_len, self.attn_window
        if w is None or s <= w:
            return s * (s + 1) // 2
        return w * (w + 1) // 2 + (s - w) * w

    def forward_flops(self, seq_len: int) -> int:
        """Multiply-adds x2 of one forward pass (matmuls only). Causal attention is counted as the
        work that must be done: query m meets keys 0..m (or its window), S(S+1)/2 pairs per head
        for QK^T and again for PV, not the full S x S square that some kernels compute anyway."""
        d, du, s = self.d_model, self.d_mlp, seq_len
        per_layer = (
            2 * s * d * self.qkv_width
            + 2 * s * d * d
            + self.mlp_matrices * 2 * s * d * du
            + 2 * 2 * self.attention_pairs(s) * d
        )
        return self.n_layers * per_layer + 2 * s * d * self.vocab_size

    def forward_peak_bytes(self, seq_len: int, batch: int = 1, itemsize: int = 4) -> int:
        """A lower bound on what one forward pass holds at once: the logits, plus one layer's
        widest intermediates (the MLP's hidden units and the full S x S scores that most attention
        kernels materialise). Used to refuse a batch that cannot fit, not to plan memory."""
        s = seq_len
        per_row = s * self.vocab_size + s * (self.qkv_width + self.d_mlp + 2 * self.d_model)
        per_row += self.n_heads * s * s
        return batch * per_row * itemsize

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BASE_CONFIG = ModelConfig()


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    config: ModelConfig


def _variant(name: str, description: str, **overrides) -> Variant:
    return Variant(name, description, dataclasses.replace(BASE_CONFIG, **overrides))


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _variant("baseline", "the spec's model"),
        _variant("ln-eps", "LayerNorm eps 1e-4 instead of 1e-5", ln_eps=1e-4),
        _variant("no-scale", "QK^T not divided by sqrt(h)", scale_attn=False),
        _variant("gelu-tanh", "tanh-approximated GELU in the MLP", gelu_approximate="tanh"),
        _variant("input-residual", "y = x + MLP(LN(t))", mlp_residual="x"),
        _variant("no-mlp-residual", "y = MLP(LN(t))", mlp_residual=None),
        _variant("palm", "y = x + Attn(LN_attn(x)) + MLP(LN_mlp(x))", mlp_input="x"),
        _variant(
            "rope",
            "rotary positions on q and k (base 10000, rotate-half) instead of the learned table",
            positions="rope",
        ),
        _variant(
            "gqa",
            "one key/value head shared by both query heads (multi-query), K/V weights mean-pooled",
            n_kv_heads=1,
        ),
        _variant("sliding-window", "query m sees only keys m - 256 < n <= m", attn_window=256),
        _variant(
            "rope-gqa-window",
            "rotary positions, one shared key/value head and a 256-token window",
            positions="rope",
            n_kv_heads=1,
            attn_window=256,
        ),
    )
}


# Named model sizes: the fields each replaces in a variant's config. A variant at a size other
# than tiny is named "variant@size" (its files too: baseline@gpt2-124m.onnx).
SIZES: dict[str, dict] = {
    "tiny": {},  # the spec's config
    "gpt2-124m": dict(
        vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_mlp=3072, max_seq_len=1024
    ),
    # SmolLM-135M's shape: the Llama family at the size of GPT-2 small
    "smollm-135m": dict(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_mlp=1536,
        max_seq_len=2048,
        positions="rope",
        rope_base=10000.0,
        norm="rms",
        mlp="gated-silu",
        biases="none",
        tied_head=True,
    ),
}
DEFAULT_SIZE = "tiny"


# Sizes registered while a command runs (a user's checkpoint): name -> description. They travel
# to worker processes in the environment, which spawned workers and subprocesses inherit.
CHECKPOINT_SIZES: dict[str, str] = {}
_SIZES_ENV = "PIPELINE_CHECKPOINT_SIZES"


def register_size(name: str, fields: dict, description: str) -> None:
    """A size whose fields come from a checkpoint: its variants are 'variant@name'."""
    if not name or any(c in name for c in "@,/ ") or name in VARIANTS:
        raise ValueError(f"size name {name!r} must be a plain word without '@', ',', '/' or spaces")
    dataclasses.replace(BASE_CONFIG, **fields)  # a bad field fails here, with its name
    SIZES[name], CHECKPOINT_SIZES[name] = dict(fields), description
    known = json.loads(os.environ.get(_SIZES_ENV, "{}"))
    known[name] = {"fields": fields, "description": description}
    os.environ[_SIZES_ENV] = json.dumps(known)


@contextlib.contextmanager
def sizes_in_scope(sizes: dict[str, tuple[dict, str]]):
    """Checkpoint sizes (name -> (fields, description)) known inside the block only, for reading
    a record made where they were registered (report --from): nothing outlives the block, and
    nothing reaches os.environ or child processes."""
    added = [name for name in sizes if not _known_size(name)]
    for name in added:
        fields, description = sizes[name]
        dataclasses.replace(BASE_CONFIG, **fields)  # a bad field fails here, with its name
        SIZES[name], CHECKPOINT_SIZES[name] = dict(fields), description
    try:
        yield
    finally:
        for name in added:
            SIZES.pop(name, None)
            CHECKPOINT_SIZES.pop(name, None)


def _known_size(size: str) -> bool:
    if size not in SIZES:
        entry = json.loads(os.environ.get(_SIZES_ENV, "{}")).get(size)
        if entry:
            SIZES[size], CHECKPOINT_SIZES[size] = entry["fields"], entry["description"]
    return size in SIZES


def variant_overrides(variant: Variant) -> dict:
    """The fields a variant changes in the spec's model: applied the same way at every size."""
    return {
        f.name: getattr(variant.config, f.name)
        for f in dataclasses.fields(ModelConfig)
        if getattr(variant.config, f.name) != getattr(BASE_CONFIG, f.name)
    }


def _inapplicable(variant: str, size_fields: dict, overrides: dict) -> Optional[str]:
    """Why a variant cannot change a size's model (None when it can): a change of a part the
    model does not have, or a grouping of heads that are grouped already."""
    if "n_kv_heads" in overrides and size_fields.get("n_kv_heads") is not None:
        return (
            f"the model already has {size_fields['n_kv_heads']} key/value heads; {variant} "
            "pools full ones"
        )
    if "gelu_approximate" in overrides and size_fields.get("mlp") == "gated-silu":
        return "the model's MLP is gated SiLU, which has no GELU to approximate"
    return None


def sized_name(variant: str, size: str = DEFAULT_SIZE) -> str:
    if not _known_size(size):
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return variant if size == DEFAULT_SIZE else f"{variant}@{size}"


def variant_size(name: str) -> str:
    """The size part of 'variant@size' (tiny when there is none)."""
    return name.partition("@")[2] or DEFAULT_SIZE


def get_variant(name: str) -> Variant:
    """A registered variant by name, or 'variant@size' for it at a named size."""
    base, _, size = name.partition("@")
    try:
        variant = VARIANTS[base]
    except KeyError:
        raise ValueError(f"unknown variant {base!r}; choose from {', '.join(VARIANTS)}") from None
    if not size:
        return variant
    if not _known_size(size):
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    overrides = variant_overrides(variant)
    refusal = _inapplicable(base, SIZES[size], overrides)
    if refusal:
        raise ValueError(f"{base}@{size}: {refusal}")
    cfg = dataclasses.replace(BASE_CONFIG, **{**SIZES[size], **overrides})
    if size in CHECKPOINT_SIZES:
        description = (
            CHECKPOINT_SIZES[size]
            if base == "baseline"
            else f"{variant.description}, applied to {CHECKPOINT_SIZES[size]}"
        )
    else:
        description = f"{variant.description} (size {size})"
    return Variant(sized_name(base, size), description, cfg)


def resolve_variants(name: str, size: str = DEFAULT_SIZE) -> list[Variant]:
    """'all' or a comma-separated list of names, at the given size."""
    if name == "all":  # every variant that applies to the size's model and changes it
        chosen = [
            get_variant(sized_name(v, size))
            for v, variant in VARIANTS.items()
            if size == DEFAULT_SIZE
            or not _known_size(size)
            or not _inapplicable(v, SIZES[size], variant_overrides(variant))
        ]
        base = chosen[0].config
        return chosen[:1] + [v for v in chosen[1:] if v.config != base]
    names = dict.fromkeys(n.strip() for n in name.split(",") if n.strip())  # once each
    chosen = [get_variant(sized_name(n, size)) for n in names]
    if not chosen:
        raise ValueError(
            f"no variant named in {name!r}; choose from {', '.join(VARIANTS)} or 'all'"
        )
    return chosen


def size_of(cfg: ModelConfig) -> str:
    """The named size whose fields cfg has (tiny when none other matches)."""
    for size, fields in SIZES.items():
        if (
            fields
            and size not in CHECKPOINT_SIZES
            and all(getattr(cfg, k) == v for k, v in fields.items())
        ):
            return size
    return DEFAULT_SIZE
