"""What a skeptical user broke (issue 12), one test per case, and the classes of input behind them."""
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import PipelineError, load_model
from pipeline.cli import cli
from pipeline.export import onnx_export, read_manifest, update_manifest
from pipeline.fileio import remove_stale_temps, torch_save_atomic, write_text_atomic
from pipeline.parallel import KSplitMatMul, parallel_matmul
from pipeline.weights import load_state_dict, validate_state_dict


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, pattern=None, code=None):
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output + result.stderr
    if pattern:
        assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def artifact_dir(tmp_path, exported):
    """A private folder holding a copy of the baseline and palm portable files."""
    for name in ("baseline", "palm"):
        shutil.copy(exported[name], tmp_path / f"{name}.onnx")
    return tmp_path


# 1 -------------------------------------------------------------------------------------------
def test_verify_prints_results_when_the_manifest_cannot_be_written(artifact_dir, monkeypatch):
    def refuse(path, text):
        raise PipelineError(f"cannot write {path}: Permission denied")

    monkeypatch.setattr(onnx_export, "write_text_atomic", refuse)
    result = run("verify", "--variant", "baseline", "--runtime", "ort-portable", "--out", artifact_dir)
    assert result.exit_code == 0, result.stderr
    assert "13 of 13 checks pass" in result.stdout and "baseline" in result.stdout  # 6 examples x 2 + batch 3
    assert "note: results not recorded" in result.stderr and "Permission denied" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the test above covers it")
def test_verify_in_a_read_only_folder(artifact_dir):
    artifact_dir.chmod(0o555)
    try:
        result = run("verify", "--variant", "baseline", "--runtime", "ort-portable", "--out", artifact_dir)
    finally:
        artifact_dir.chmod(0o755)
    assert result.exit_code == 0 and "checks pass" in result.stdout and "not recorded" in result.stderr


# 2 -------------------------------------------------------------------------------------------
def test_weights_finite_in_float64_but_not_in_float32(state_dict, tmp_path):
    sd = {k: v.double() for k, v in state_dict.items()}
    sd["transformer.h.1.mlp.up_proj.bias"][5] = 1e300
    sd["lm_head.weight"] = sd["transformer.word_embeddings.weight"]
    with pytest.raises(PipelineError, match="up_proj.bias holds values beyond float32's range"):
        validate_state_dict(sd)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    one_line_error(run("infer", "--ids", "1,2", "--runtime", "torch", "--weights", path), "beyond float32")


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128, np.longdouble])
def test_k_split_refuses_what_it_would_not_compute_exactly(dtype):
    a = np.full((3, 4), 2**25 + 1).astype(dtype)
    with pytest.raises(ValueError, match="computes float32 or float64 only"):
        parallel_matmul(a, a.T.copy(), workers=2)


def test_k_split_refuses_ints_in_a_pool_too():
    with KSplitMatMul(1) as pool:
        with pytest.raises(ValueError, match="A has dtype int64"):
            pool.load(np.ones((2, 2), np.int64), np.ones((2, 2)))
        assert np.array_equal(pool(np.eye(2), np.eye(2)), np.eye(2))  # still usable


# 4 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["{}", "[]", '{"artifacts": null}', '{"artifacts": []}',
                                     '{"artifacts": {"x.onnx": 3}}', "not json", ""])
def test_wrong_shaped_manifest_is_rebuilt(artifact_dir, content):
    (artifact_dir / "manifest.json").write_text(content)
    assert read_manifest(artifact_dir) == {"artifacts": {}}
    result = run("verify", "--variant", "baseline", "--runtime", "ort-portable", "--out", artifact_dir)
    assert result.exit_code == 0, result.stderr
    entry = json.loads((artifact_dir / "manifest.json").read_text())["artifacts"]["baseline.onnx"]
    assert entry["verification"]["passed"] is True


# 5 -------------------------------------------------------------------------------------------
def test_a_pool_shared_between_threads():
    rng = np.random.default_rng(0)
    errors, results = [], {}
    with KSplitMatMul(2, dtype="float64") as pool:
        def work(t):
            try:
                for i in range(15):
                    a, b = rng.standard_normal((8 + t, 16)), rng.standard_normal((16, 5 + i))
                    c = pool(a, b)
                    results[(t, i)] = float(np.abs(c - a @ b).max())
            except Exception as exc:  # noqa: BLE001  (collected and asserted below)
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    assert not errors
    assert len(results) == 45 and max(results.values()) < 1e-12


# 6, 7 ----------------------------------------------------------------------------------------
STUB = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pipeline.cli as cli_mod, pipeline.export as export_mod
    from pipeline.fileio import atomic_path

    def swallows(*a, **k):  # like torch's weakref callbacks: the KeyboardInterrupt is eaten
        print("ready", flush=True)
        while True:
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                pass

    def wraps(*a, **k):  # like torch's exporter: the KeyboardInterrupt comes back as its own error
        print("ready", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt as exc:
            raise RuntimeError("TorchExportError: Failed to export the model") from exc

    def writes(variants, weights, out_dir, *a, **k):  # killed in the middle of a file write
        with atomic_path(Path(out_dir) / "baseline.onnx") as tmp:
            tmp.write_bytes(b"x" * 100_000)
            print("ready", flush=True)
            time.sleep(60)

    export_mod.export_variants = {"swallows": swallows, "wraps": wraps, "writes": writes}[sys.argv[1]]
    sys.argv = ["pipeline", "export", "--variant", "baseline", "--out", sys.argv[2]]
    cli_mod.main()
""")


def interrupt(tmp_path, behaviour, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", STUB, behaviour, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{behaviour}: still running 10 s after the signal")
    return proc.returncode, err, time.monotonic() - start, out


@pytest.mark.parametrize("behaviour", ["swallows", "wraps"])
def test_interrupt_always_ends_in_interrupted(tmp_path, behaviour):
    code, err, seconds, _ = interrupt(tmp_path, behaviour, signal.SIGINT)
    assert code == 130 and err.strip().splitlines() == ["interrupted"], err
    assert seconds < 8  # a bound on a hang, not a speed claim: the watchdog fires 2 s after the signal


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_a_write_leaves_nothing(tmp_path, sig, code, word):
    rc, err, seconds, out = interrupt(tmp_path, "writes", sig)
    assert rc == code and err.strip().splitlines() == [word], err
    assert sorted(p.name for p in out.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it now (pid reuse within the test is vanishingly rare)


def test_stale_temp_files_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    live = subprocess.Popen(["sleep", "30"])
    try:
        dead_tmp = tmp_path / f".baseline.onnx.{_dead_pid()}.abcd1234.tmp"
        legacy_tmp = tmp_path / ".palm.onnx.k3j4h5g6.tmp"
        fresh_legacy = tmp_path / ".ln-eps.onnx.zzzzzzzz.tmp"
        live_tmp = tmp_path / f".palm.onnx.{live.pid}.qwer5678.tmp"
        for p in (dead_tmp, legacy_tmp, fresh_legacy, live_tmp):
            p.write_bytes(b"partial")
        os.utime(legacy_tmp, (time.time() - 7200, time.time() - 7200))
        other = tmp_path / ".hidden-of-the-user.tmp"
        other.write_text("not ours")
        write_text_atomic(tmp_path / "x.json", "{}")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"x.json", fresh_legacy.name, live_tmp.name, other.name}
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(tmp_path) == [live_tmp]


# 8 -------------------------------------------------------------------------------------------
def _record_many(out_dir, worker):
    from pathlib import Path

    from pipeline.export import update_manifest as update

    for i in range(10):
        artifact = Path(out_dir) / f"w{worker}-{i}.onnx"
        artifact.write_bytes(b"x" * (i + 1))
        update(out_dir, artifact, {"variant": f"w{worker}", "index": i})


def test_concurrent_manifest_updates_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(read_manifest(tmp_path)["artifacts"]) == 60


# 9 -------------------------------------------------------------------------------------------
def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch):
    import pipeline.runtime.bench as bench_mod

    def must_not_run(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(bench_mod, "run_bench", must_not_run)
    monkeypatch.setattr(onnx_export, "trace_to_onnx", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(run("bench", "--json", tmp_path), "--json: ")
    one_line_error(run("bench", "--csv", blocker / "x.csv"), "--csv: cannot write into")
    one_line_error(run("bench", "--plot", tmp_path), "--plot: ")
    one_line_error(run("export", "--variant", "baseline", "--out", blocker), "--out: cannot write into")
    one_line_error(run("matmul", "--n", "2", "--k", "2", "--m", "2", "--json", tmp_path), "--json: ")


# 10 ------------------------------------------------------------------------------------------
def test_an_artifact_is_not_trusted_by_its_name(artifact_dir, state_dict):
    shutil.copy(artifact_dir / "palm.onnx", artifact_dir / "baseline.onnx")
    ort_out = run("infer", "--ids", "5,6,7,8", "--variant", "baseline", "--json", "--out", artifact_dir)
    torch_out = run("infer", "--ids", "5,6,7,8", "--variant", "baseline", "--runtime", "torch", "--json")
    assert ort_out.exit_code == 0, ort_out.stderr
    got = [t["token"] for t in json.loads(ort_out.stdout)["top_k"]]
    assert got == [t["token"] for t in json.loads(torch_out.stdout)["top_k"]]
    meta = onnx_export.onnx_metadata(artifact_dir / "baseline.onnx")
    assert meta["pipeline.variant"] == "baseline"


def test_stale_reason_names_each_field(artifact_dir):
    from pipeline.weights import DEFAULT_WEIGHTS, file_sha256

    sha = file_sha256(DEFAULT_WEIGHTS)
    path = artifact_dir / "baseline.onnx"
    assert onnx_export.stale_reason(path, onnx_export.artifact_key("baseline", "portable", sha)) is None
    assert "variant" in onnx_export.stale_reason(path, onnx_export.artifact_key("palm", "portable", sha))
    assert "flavour" in onnx_export.stale_reason(path, onnx_export.artifact_key("baseline", "optimized", sha))
    assert "weights" in onnx_export.stale_reason(path, onnx_export.artifact_key("baseline", "portable", "0" * 64))
    assert "opset" in onnx_export.stale_reason(path, onnx_export.artifact_key("baseline", "portable", sha, 19))


# 11 ------------------------------------------------------------------------------------------
def test_messages_name_the_problem(tmp_path, state_dict):
    one_line_error(run("infer", "--ids", "1," + "9" * 23, "--runtime", "torch"), "token id 999999")
    one_line_error(run("matmul", "--seed", "-1"), "'--seed'")
    one_line_error(run("infer", "--ids", "1", "--runtime", "torch", "--weights", tmp_path), "is a directory")
    safetensors_like = tmp_path / "model.pt"
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    safetensors_like.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    line = one_line_error(run("infer", "--ids", "1", "--runtime", "torch", "--weights", safetensors_like),
                          "safetensors")
    assert "could run code" not in line
    with pytest.raises(ValueError, match="threads_per_worker must be an integer >= 1"):
        KSplitMatMul(1, threads_per_worker=0)


def test_a_failing_example_is_named_by_its_index(tmp_path, state_dict):
    ids = torch.arange(5)
    with torch.inference_mode():
        good = load_model(state_dict=state_dict)(ids.reshape(1, -1))[0]
    examples = tmp_path / "ex.pt"
    torch_save_atomic([{"input_ids": ids, "logits": good}, {"input_ids": ids, "logits": good + 1}], examples)
    result = run("verify", "--variant", "baseline", "--runtime", "torch", "--examples", examples, "--summary")
    assert result.exit_code == 1
    assert "example #1 (S=5)" in result.stderr and "example #0" not in result.stderr
    detail = run("verify", "--variant", "baseline", "--runtime", "torch", "--examples", examples)
    rows = [line.split() for line in detail.stdout.splitlines() if line.startswith("baseline")]
    assert [(r[3], r[-1]) for r in rows] == [("0", "pass"), ("1", "FAIL")]


# 12 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "-1", "nan", "0", "x"])
def test_nonsense_tolerance_is_refused(value):
    one_line_error(run("verify", "--tolerance", value), "'--tolerance'", code=2)


def test_more_threads_than_cores_is_refused():
    one_line_error(run("bench", "--threads", "999"), "--threads: 999 threads")
    one_line_error(run("compare", "--threads", "999"), "--threads: 999 threads")


def test_manifest_is_strict_json(tmp_path):
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(b"x")
    with pytest.raises(PipelineError, match="non-finite"):
        update_manifest(tmp_path, artifact, {"verification": {"tolerance": float("inf")}})
    update_manifest(tmp_path, artifact, {"verification": {"tolerance": 1e-4}})
    json.loads((tmp_path / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_the_models_own_state_dict_loads_back(tmp_path, state_dict):
    model = load_model(state_dict=state_dict)
    own = model.state_dict()
    assert "lm_head.weight" not in own
    path = tmp_path / "own.pt"
    torch.save(own, path)
    again = load_model(weights=path)
    ids = torch.arange(9).reshape(1, -1)
    with torch.inference_mode():
        assert torch.equal(again(ids), model(ids))


# the classes behind them ---------------------------------------------------------------------
KEY = "transformer.h.0.attn.out_proj.weight"
LOADABLE = [torch.float16, torch.bfloat16, torch.float64] + [
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n)]


@pytest.mark.parametrize("dtype", LOADABLE, ids=str)
def test_every_float_dtype_loads_as_its_float32_value(tmp_path, state_dict, dtype):
    sd = dict(state_dict)
    sd[KEY] = state_dict[KEY].to(dtype)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    assert torch.equal(load_state_dict(path)[KEY], sd[KEY].float())


REFUSED = {
    "int64": (lambda t: t.long(), "dtype torch.int64"), "int8": (lambda t: t.to(torch.int8), "dtype torch.int8"),
    "uint8": (lambda t: t.to(torch.uint8), "dtype torch.uint8"), "bool": (lambda t: t > 0, "dtype torch.bool"),
    "complex64": (lambda t: t.to(torch.complex64), "dtype torch.complex64"),
    "sparse": (lambda t: t.to_sparse(), "layout torch.sparse_coo"),
    "sparse_csr": (lambda t: t.to_sparse_csr(), "layout torch.sparse_csr"),
    "quantized": (lambda t: torch.quantize_per_tensor(t, 0.01, 0, torch.qint8), "is quantized"),
    "meta": (lambda t: t.to("meta"), "meta tensor"),
    "list": (lambda t: t.tolist(), "is a list, not a tensor"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_every_other_tensor_kind_gets_one_line(tmp_path, state_dict, kind):
    make, message = REFUSED[kind]
    sd = dict(state_dict)
    sd[KEY] = make(state_dict[KEY])
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    one_line_error(run("infer", "--ids", "1", "--runtime", "torch", "--weights", path), message)


def _unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    p = tmp_path / "locked.pt"
    p.write_bytes(b"PK")
    p.chmod(0)
    return p


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent.pt", "not found"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "empty.pt").write_bytes(b"") and d / "empty.pt" or d / "empty.pt", "it is empty"),
    (lambda d: (d / "t.pt").write_text("hello") and d / "t.pt", "not a torch.save file"),
    (_unreadable, "cannot be read"),
])
@pytest.mark.parametrize("option", ["--weights", "--examples"])
def test_every_file_the_cli_reads(tmp_path, make, message, option):
    args = ["verify", "--variant", "baseline", "--runtime", "torch", option, make(tmp_path)]
    one_line_error(run(*args), message)


# every subcommand on hostile input ------------------------------------------------------------
def hostile_table(tmp):
    blocker = tmp / "a-file"
    blocker.write_text("")
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 broken zip")
    return {
        "export": [["--variant", "gpt5"], ["--opset", "5"], ["--out", blocker], ["--weights", tmp],
                   ["--quantize", "int4"], ["--size", "gpt5"], ["--size", "gpt2-124m", "--variant", "nope"]],
        "verify": [["--tolerance", "-1"], ["--examples", tmp], ["--weights", garbage], ["--variant", ","],
                   ["--runtime", "tvm"]],
        "infer": [["--ids", "1," + "7" * 30], ["--ids", "1", "--top-k", "0"], ["--ids", "a"], ["--ids", ""],
                  ["--ids", "1", "--variant", "nope"]],
        "all": [["--weights", tmp / "none.pt"], ["--out", blocker]],
        "matmul": [["--seed", "-1"], ["--n", "0"], ["--workers", "0"], ["--json", tmp], ["--k", "2", "--workers", "3"],
                   ["--dtype", "int8"]],
        "bench": [["--threads", "999"], ["--threads", "0"], ["--json", tmp], ["--seq-lens", "0"],
                  ["--seq-lens", "2000"], ["--variant", "x"], ["--max-seconds", "abc"], ["--size", "huge"],
                  ["--mode", "attention", "--variant", "baseline,palm"]],
        "memory": [["--seq-len", "0"], ["--variant", "nope"], ["--json", tmp]],
        "compare": [["--threads", "999"], ["--variant", "nope"], ["--json", tmp], ["--markdown", tmp]],
        "sweep": [["--threads", "999"], ["--out", blocker], ["--weights", tmp], ["--family", "--threads", "0"]],
        "report": [["--weights", tmp], ["--out", blocker], ["--examples", garbage]],
        "generate": [["--ids", "1", "--max-new-tokens", "2000"], ["--ids", "1", "--top-p", "2"], ["--ids", ""],
                     ["--ids", "1", "--threads", "999"], ["--ids", "1", "--variant", "nope"]],
        "check-tools": [["--tool", "nope"], ["--file", tmp / "absent.onnx"], ["--file", garbage], ["--lengths", "0"],
                        ["--json", tmp], ["--variant", "nope"], ["--tolerance", "nan"]],
    }


def test_hostile_inputs_on_every_subcommand(tmp_path):
    table = hostile_table(tmp_path)
    assert set(table) == set(cli.commands), "a new subcommand needs its rows in the hostile-input table"
    for command, rows in table.items():
        for args in rows:
            start = time.monotonic()
            result = run(command, *args)
            try:
                one_line_error(result)
            except AssertionError as exc:
                raise AssertionError(f"pipeline {command} {args}: {exc}") from None
            assert time.monotonic() - start < 60, f"pipeline {command} {args} did work before refusing"
