import os

import numpy as np
import onnx
import pytest
import torch

from pipeline.config import VARIANTS
from pipeline.weights import load_state_dict, make_standin_state_dict

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def state_dict():
    return load_state_dict()


@pytest.fixture(scope="session")
def unseen_state_dict():
    """Same format, weights the project never shipped (another seed)."""
    return make_standin_state_dict(seed=987654321)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, state_dict):
    """Every variant exported once for the session (the default weights, as state_dict holds)."""
    return _export_all(tmp_path_factory.mktemp("exported"), "portable")


def _export_all(out, flavour):
    """{variant: path} of one flavour for every variant, two worker processes side by side."""
    from pipeline.export import export_variants

    return dict(zip(VARIANTS, export_variants(VARIANTS, out_dir=out, flavours=(flavour,), processes=2)))


class RunsCode:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def code_running_pt(tmp_path):
    """(a .pt file whose pickle would run code, the file that code would create)."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"transformer.word_embeddings.weight": RunsCode(marker)}, path)
    return path, marker


def ids_of(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(seed + n))


@pytest.fixture(scope="session")
def exported_opt(exported, state_dict):
    """Every variant's ORT-optimised artifact, beside the portable ones."""
    return _export_all(exported["baseline"].parent, "optimized")


def all_nodes(graph):
    """The graph's nodes and those of its If/Loop subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)


def close(got, want, rel=1e-4):
    """Equal within rel of the reference's scale (at least 1)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got - want).max()
    assert diff <= rel * max(1.0, np.abs(want).max()), f"max |diff| {diff:.3g} vs scale {np.abs(want).max():.3g}"


def eager_and_float64(variant, ids, state_dict):
    """The eager model's logits for ids [1, S] and the float64 numpy reference's, both [S, V]."""
    import numpy_reference
    from pipeline import load_model

    with torch.inference_mode():
        got = load_model(variant, state_dict=state_dict)(ids)[0]
    return got, numpy_reference.forward(state_dict, ids[0].tolist(), variant)
