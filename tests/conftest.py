import os
import shutil

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


SESSION_FLAVOURS = ("portable", "optimized", "decoder", "decoder-optimized")
# the portable decoder (slowest to trace) of the variants whose attention or block layout differs:
# the wiring variants run the same explicit-attention cache code, checked through their fused
# decoder and their portable forward graph
PORTABLE_DECODER_VARIANTS = ("baseline", "palm", "rope", "gqa", "sliding-window", "rope-gqa-window")


def seeded_with_baseline(out, baseline_dir, flavours=SESSION_FLAVOURS):
    """out, holding copies of baseline's files from the fast lane's folder: an export that keeps
    up-to-date files (they carry their identity) does not trace them again."""
    import shutil

    from pipeline.export.identity import onnx_path

    for flavour in flavours:
        shutil.copy(
            onnx_path("baseline", baseline_dir, flavour), onnx_path("baseline", out, flavour)
        )
    return out


@pytest.fixture(scope="session")
def all_artifacts(tmp_path_factory, state_dict, baseline_dir):
    """{(variant, flavour): path} of every variant in SESSION_FLAVOURS (the portable decoder of
    PORTABLE_DECODER_VARIANTS), exported once for the session in one pool of two workers (one
    start-up, the slowest traces first). About a minute and a half on two cores: only tests
    marked slow use it."""
    from pipeline.export.pool import export_pairs

    out = seeded_with_baseline(tmp_path_factory.mktemp("exported"), baseline_dir)
    pairs = [
        (v, fl)
        for v in VARIANTS
        for fl in SESSION_FLAVOURS
        if fl != "decoder" or v in PORTABLE_DECODER_VARIANTS
    ]
    return dict(zip(pairs, export_pairs(pairs, out_dir=out, processes=2, keep_current=True)))


@pytest.fixture(scope="session")
def exported(all_artifacts):
    """{variant: its portable file} (the default weights, as state_dict holds)."""
    return {v: all_artifacts[(v, "portable")] for v in VARIANTS}


@pytest.fixture(scope="session")
def baseline_dir(tmp_path_factory):
    """A folder with baseline's portable and ORT-optimised files and both decoders (the fast
    lane's artifacts: seconds, not minutes)."""
    from pipeline.export import export_variants

    out = tmp_path_factory.mktemp("baseline")
    export_variants(
        ["baseline"],
        out_dir=out,
        flavours=("portable", "optimized", "decoder", "decoder-optimized"),
        processes=2,
    )
    return out


@pytest.fixture
def artifact_dir(tmp_path, baseline_dir):
    """A private folder holding a copy of baseline's portable and ORT-optimised files."""
    import shutil

    for name in ("baseline.onnx", "baseline.ort-opt.onnx"):
        shutil.copy(baseline_dir / name, tmp_path / name)
    return tmp_path


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
def exported_opt(all_artifacts):
    """Every variant's ORT-optimised artifact, beside the portable ones."""
    return {v: all_artifacts[(v, "optimized")] for v in VARIANTS}


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
    assert diff <= rel * max(1.0, np.abs(want).max()), (
        f"max |diff| {diff:.3g} vs scale {np.abs(want).max():.3g}"
    )


def eager_and_float64(variant, ids, state_dict):
    """The eager model's logits for ids [1, S] and the float64 numpy reference's, both [S, V]."""
    import numpy_reference

    from pipeline import load_model

    with torch.inference_mode():
        got = load_model(variant, state_dict=state_dict)(ids)[0]
    return got, numpy_reference.forward(state_dict, ids[0].tolist(), variant)


def run(*args):
    """The CLI in this process, as a user would call it."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, pattern=None, code=None):
    """The command failed with exactly one line on stderr, `error: ...`, and no traceback."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output + result.stderr
    if pattern:
        assert pattern in lines[0], lines[0]
    return lines[0]


def variants_param(names=tuple(VARIANTS)):
    """Test parameters: baseline in the fast lane, every other variant marked slow (it needs the
    all-variant export)."""
    return [v if v == "baseline" else pytest.param(v, marks=pytest.mark.slow) for v in names]


@pytest.fixture
def portable(request, baseline_dir):
    """variant -> its portable file (baseline from the fast lane's folder, others exported all at once)."""
    return lambda v: (
        baseline_dir / "baseline.onnx"
        if v == "baseline"
        else request.getfixturevalue("exported")[v]
    )


@pytest.fixture
def optimized(request, baseline_dir):
    """variant -> its ORT-optimised file, as `portable` does."""
    return lambda v: (
        baseline_dir / "baseline.ort-opt.onnx"
        if v == "baseline"
        else request.getfixturevalue("exported_opt")[v]
    )


@pytest.fixture(scope="session")
def decoders(all_artifacts):
    """Both decoder flavours of every variant, in the session's export folder (slow)."""
    return {k: p for k, p in all_artifacts.items() if k[1].startswith("decoder")}


@pytest.fixture
def decoder_file(request, baseline_dir):
    """(variant, flavour) -> its decoder file: baseline's made in the fast lane's folder on first
    use, the others' all at once (slow)."""
    from pipeline.workspace import Workspace

    def get(variant, flavour):
        if variant == "baseline":
            return Workspace(baseline_dir).artifact("baseline", flavour)
        return request.getfixturevalue("decoders")[(variant, flavour)]

    return get


def unprivileged(command: list) -> list:
    """The command with every capability dropped when run as root, so that file modes bind it
    (root with CAP_DAC_OVERRIDE writes into a 0555 folder, and the test could not fail)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip(
            "running as root without setpriv: cannot drop the capabilities that bypass file modes"
        )
    return [
        "setpriv",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--",
        *command,
    ]
