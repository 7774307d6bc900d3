"""ONNX export: the files' format, and ORT against eager torch and the float64 reference."""

import json

import numpy as np
import numpy_reference
import onnx
import pytest
import torch
from conftest import all_nodes, ids_of, variants_param
from oracle import hf_gpt2, hf_logits

from pipeline import load_model
from pipeline.check.verify import verify
from pipeline.config import BASE_CONFIG, VARIANTS
from pipeline.export import export_onnx, read_manifest
from pipeline.fileio import torch_save_atomic
from pipeline.runtime.session import OrtRunner
from pipeline.workspace import Workspace

LENGTHS = [1, 2, 17, 512, 1024]


@pytest.mark.parametrize("variant", variants_param())
def test_artifact_format(variant, portable):
    path = portable(variant)
    assert not [
        p
        for p in path.parent.iterdir()  # no external-data file beside it
        if p.name.startswith(variant + ".") and p.is_file() and p.suffix != ".onnx"
    ]
    model = onnx.load(str(path), load_external_data=False)
    assert not onnx.external_data_helper.uses_external_data(model.graph.initializer[0])
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    onnx.checker.check_model(str(path), full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims, out_dims = inp.type.tensor_type.shape.dim, out.type.tensor_type.shape.dim
    assert [d.dim_param for d in in_dims] == ["batch", "sequence"]
    assert [d.dim_param or d.dim_value for d in out_dims] == ["batch", "sequence", 512]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pipeline.variant"] == variant
    assert json.loads(meta["pipeline.config"]) == VARIANTS[variant].config.to_dict()
    assert len(meta["pipeline.weights_sha256"]) == 64 and "torch" in json.loads(
        meta["pipeline.tool_versions"]
    )
    entry = read_manifest(path.parent)["artifacts"][path.name]
    assert entry["variant"] == variant and entry["size_bytes"] == path.stat().st_size


@pytest.mark.parametrize("variant", variants_param())
def test_ort_matches_torch_at_every_length(variant, portable, state_dict):
    runner = OrtRunner(portable(variant))
    model = load_model(variant, state_dict=state_dict)
    for n in LENGTHS:
        ids = ids_of(n, seed=11)
        got = runner.run(ids.numpy())
        with torch.inference_mode():
            want = model(ids).numpy()
        assert got.shape == (1, n, 512) and got.dtype == np.float32
        diff = np.abs(got - want).max()
        assert diff <= 1e-4 * max(1.0, np.abs(want).max()), (variant, n, diff)


@pytest.mark.parametrize(
    "variant", variants_param(["baseline", "input-residual", "palm", "no-scale"])
)
def test_ort_matches_numpy_reference(variant, portable, state_dict):
    ids = ids_of(33, seed=2)
    want = numpy_reference.forward(state_dict, ids[0].tolist(), variant)
    got = OrtRunner(portable(variant)).run(ids.numpy())[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.slow
def test_interrupted_export_leaves_no_partial_file(tmp_path, state_dict, monkeypatch):
    target = tmp_path / "baseline.onnx"
    target.write_bytes(b"previous complete file")

    def dies_halfway(proto, path, **kwargs):
        with open(path, "wb") as f:
            f.write(proto.SerializeToString()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        export_onnx("baseline", out_dir=tmp_path, state_dict=state_dict)
    assert target.read_bytes() == b"previous complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.onnx"]


@pytest.mark.slow
def test_unseen_state_dict_loads_exports_and_verifies(tmp_path, unseen_state_dict):
    """A state dict in the format the project never saw, with its own HF-made examples."""
    weights = tmp_path / "other.pt"
    torch_save_atomic(
        {k: (v.reshape(1, -1) if v.dim() == 1 else v) for k, v in unseen_state_dict.items()},
        weights,
    )
    oracle = hf_gpt2(BASE_CONFIG, unseen_state_dict)
    examples = tmp_path / "examples.pt"
    torch_save_atomic(
        [
            {
                "input_ids": ids_of(n, seed=9)[0],
                "logits": hf_logits(oracle, ids_of(n, seed=9)).float(),
            }
            for n in (1, 7, 130)
        ],
        examples,
    )
    ws = Workspace(tmp_path / "out", weights)
    # one variant of each family (every variant is verified on the default weights elsewhere)
    variants = ["baseline", "palm", "rope-gqa-window"]
    ws.prepare(
        [(v, "portable") for v in variants] + [("baseline", "optimized"), ("palm", "optimized")]
    )
    checks = verify(ws, variants, ("ort", "torch"), examples=examples)
    checks += verify(ws, ["baseline", "palm"], ("ort-opt",), examples=examples)
    graded = [c for c in checks if c.passed is not None]
    assert graded and all(c.passed for c in graded)
    assert {c.variant for c in graded} == set(variants)
    assert {c.runtime for c in graded} == {"torch", "ort", "ort-opt"}
    assert all(
        e["verification"]["passed"] for e in read_manifest(tmp_path / "out")["artifacts"].values()
    )


@pytest.mark.parametrize("variant", variants_param())
def test_optimized_artifact_matches_torch(variant, optimized, portable, state_dict):
    standard = onnx.load(str(portable(variant)))
    assert {n.domain for n in standard.graph.node} <= {"", "ai.onnx"}  # standard ops only
    fused = onnx.load(str(optimized(variant)))
    ops = {(n.domain, n.op_type) for n in all_nodes(fused.graph)}
    assert ("com.microsoft", "GroupQueryAttention") in ops
    assert {
        ("com.microsoft", "Gelu"),
        ("com.microsoft", "FastGelu"),
    } & ops  # exact or tanh GELU, one kernel
    assert ("", "Trilu") not in ops and ("", "Erf") not in ops
    assert {p.key: p.value for p in fused.metadata_props}["pipeline.flavour"] == "optimized"
    runner = OrtRunner(optimized(variant))
    model = load_model(variant, state_dict=state_dict)
    for n in LENGTHS:
        ids = ids_of(n, seed=13)
        with torch.inference_mode():
            want = model(ids).numpy()
        got = runner.run(ids.numpy())
        assert got.shape == (1, n, 512)
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), (variant, n)


@pytest.mark.slow
def test_int8_artifact_is_quantised_and_close(baseline_dir, state_dict):
    """The int8 file is approximate by design: its cost is measured, and bounded here."""
    from pipeline.measure.compare import quantization_accuracy

    out = baseline_dir
    path = export_onnx("baseline", out_dir=out, state_dict=state_dict, flavour="int8")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert path.stat().st_size < (out / "baseline.onnx").stat().st_size / 2
    acc = quantization_accuracy(Workspace(out), "baseline")
    assert acc["positions"] == 1684
    assert acc["top1_agreement_pct"] >= 99.0 and acc["kl_mean"] < 1e-2
    assert acc["max_abs_diff"] > 1e-3  # it really is quantised, not the fp32 graph


@pytest.mark.slow
def test_parallel_export_returns_the_files_in_the_order_asked(decoders):
    """The workers finish in their own order (slowest traces are handed out first); the paths
    still come back variant by variant, flavours as given, each file being what it says."""
    from pipeline.export import onnx_metadata

    for (variant, flavour), path in decoders.items():
        meta = onnx_metadata(path)
        assert (meta["pipeline.variant"], meta["pipeline.flavour"]) == (variant, flavour)
