"""config.py: sizes and variant names resolved from the registries, and checkpoint sizes known
for a block only (what `report --from` renders with)."""

import os

import pytest

from pipeline.config import (
    BASE_CONFIG,
    DEFAULT_SIZE,
    SIZES,
    get_variant,
    sized_name,
    sizes_in_scope,
    variant_size,
)

FIELDS = dict(vocab_size=300, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)


def test_a_size_in_scope_is_known_inside_the_block_only():
    environ, sizes = dict(os.environ), dict(SIZES)
    with sizes_in_scope({"scoped-ckpt": (FIELDS, "a test checkpoint")}):
        cfg = get_variant("rope@scoped-ckpt").config
        assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (32, 2, 300)
        assert cfg.positions == "rope" != BASE_CONFIG.positions  # the variant's change applied
        assert "a test checkpoint" in get_variant("baseline@scoped-ckpt").description
    assert dict(SIZES) == sizes and dict(os.environ) == environ
    with pytest.raises(ValueError, match="unknown size 'scoped-ckpt'"):
        get_variant("rope@scoped-ckpt")


def test_a_bad_field_in_scope_is_refused_by_name():
    with pytest.raises(TypeError, match="not_a_field"):
        with sizes_in_scope({"bad-ckpt": ({"not_a_field": 1}, "x")}):
            pass
    assert "bad-ckpt" not in SIZES


def test_sized_names():
    assert sized_name("rope") == "rope" and variant_size("rope") == DEFAULT_SIZE
    assert variant_size(sized_name("rope", "gpt2-124m")) == "gpt2-124m"
    with pytest.raises(ValueError, match="unknown size"):
        sized_name("rope", "no-such-size")
    with pytest.raises(ValueError, match="unknown variant"):
        get_variant("no-such-variant")
