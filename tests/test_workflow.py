"""The main job's plan (workflow.py): what it exports covers what it verifies, and one failed
check or one genai disagreement fails it."""

from pipeline.check.verify import Check
from pipeline.runtime.registry import get_runtime, runtime_names
from pipeline.workflow import FLAVOURS, Verified, checked_runtimes


def test_every_checked_runtime_has_its_graph_exported():
    forward, decoder = checked_runtimes()
    assert forward == runtime_names("forward", default_only=True)
    assert decoder  # the fused decoder is checked, not skipped
    for name in forward:
        flavour = get_runtime(name).forward_flavour
        assert flavour is None or flavour in FLAVOURS, name
    for name in decoder:
        assert get_runtime(name).decoder_flavour in FLAVOURS, name


def _check(passed):
    return Check("baseline", "ort", "torch", 8, None, 0.0, 0.0, passed)


def test_verified_passes_only_when_every_graded_check_and_genai_agree():
    agree = {"differ": []}
    assert Verified(["baseline"], [_check(True), _check(None)], [], agree).passed
    assert not Verified(["baseline"], [_check(True), _check(False)], [], agree).passed
    assert not Verified(["baseline"], [_check(True)], [], {"differ": ["baseline"]}).passed
