"""Model configuration and the registry of named architecture variants.

Every variant is the spec's baseline config with a few fields replaced; the model reads only
these fields, so adding a variant is one entry in ``VARIANTS``.
"""
from __future__ import annotations

import dataclasses
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

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("max_seq_len", "vocab_size", "d_model", "d_mlp", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:  # h
        return self.d_model // self.n_heads

    def n_params(self) -> int:
        """Parameter count with the LM head tied to the word embeddings."""
        d, du = self.d_model, self.d_mlp
        per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * du + du) + (du * d + d)
        return self.vocab_size * d + self.max_seq_len * d + self.n_layers * per_layer + 2 * d

    def forward_flops(self, seq_len: int) -> int:
        """Multiply-adds x2 of one forward pass (matmuls only). Causal attention is counted as the
        work that must be done: query m meets keys 0..m, S(S+1)/2 pairs per head for QK^T and again
        for PV, not the full S x S square that some kernels compute anyway."""
        d, du, s = self.d_model, self.d_mlp, seq_len
        causal_pairs = s * (s + 1) // 2
        per_layer = 2 * s * d * 3 * d + 2 * s * d * d + 2 * 2 * s * d * du + 2 * 2 * causal_pairs * d
        return self.n_layers * per_layer + 2 * s * d * self.vocab_size

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
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}") from None


def resolve_variants(name: str) -> list[Variant]:
    """'all' or a comma-separated list of names."""
    if name == "all":
        return list(VARIANTS.values())
    chosen = [get_variant(n.strip()) for n in name.split(",") if n.strip()]
    if not chosen:
        raise ValueError(f"no variant named in {name!r}; choose from {', '.join(VARIANTS)} or 'all'")
    return chosen
