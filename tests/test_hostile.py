"""Hardening, round three: stale artifacts, orphaned workers, hostile checkpoints and configs,
float32 overflow, text that is not text, misleading messages, the Python API (issue 27).

Each test names the case it reproduces; each failed before its fix."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, run

from pipeline import PipelineError

transformers = pytest.importorskip("transformers")

TINY_GPT2 = dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)


def gpt2_dir(folder: Path, seed: int = 0, **shape) -> Path:
    """A random GPT-2 checkpoint (32 wide, 2 layers unless told), as save_pretrained writes it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**{**TINY_GPT2, **shape}, bos_token_id=None, eos_token_id=None)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return gpt2_dir(tmp_path_factory.mktemp("ck") / "gpt-tiny")


def copy_of(checkpoint, tmp_path, name="ck") -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / name))


# 1. the weights' identity is that of the bytes read, before tracing -----------------------------


def test_weights_replaced_while_tracing_are_not_trusted_afterwards(tmp_path, monkeypatch):
    """mv of a new weights file during the trace: the file recorded the new file's hash over the
    old weights, and the next export said 'up to date, kept' (ort-opt 35.91 vs torch 38.69)."""
    from pipeline.export import onnx_export
    from pipeline.export.pool import export_variants
    from pipeline.weights import file_sha256, make_standin_state_dict

    weights, other = tmp_path / "w.pt", tmp_path / "other.pt"
    torch.save(make_standin_state_dict(seed=1), weights)
    torch.save(make_standin_state_dict(seed=2), other)
    first = file_sha256(weights)
    trace = onnx_export.trace_to_onnx

    def trace_then_replace(*args, **kwargs):
        proto = trace(*args, **kwargs)
        os.replace(other, weights)  # the user's mv, while the export runs
        return proto

    monkeypatch.setattr(onnx_export, "trace_to_onnx", trace_then_replace)
    out = tmp_path / "out"
    (path,) = export_variants(["baseline"], weights, out)
    monkeypatch.setattr(onnx_export, "trace_to_onnx", trace)
    assert onnx_export.onnx_metadata(path)["pipeline.weights_sha256"] == first
    assert onnx_export.rebuild_reason("baseline", "portable", weights, out) == (
        "its weights_sha256 differs"
    )


def test_an_export_worker_that_reads_other_bytes_refuses(tmp_path):
    from pipeline.export.pool import _export_in_worker
    from pipeline.weights import DEFAULT_WEIGHTS

    with pytest.raises(PipelineError, match="changed while exporting"):
        _export_in_worker(("baseline", "portable", DEFAULT_WEIGHTS, tmp_path, 18, "0" * 64, False))
    assert not list(tmp_path.iterdir())


# 2. export workers die with their parent --------------------------------------------------------


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sigkill_of_an_export_leaves_no_worker_writing(tmp_path):
    """SIGKILL of `pipeline export` orphaned its workers, which wrote files and the manifest 13-16 s
    later, then blocked forever holding ~1 GB."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "export", "--variant", "baseline,palm", "--optimize",
         "--decoder", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            # the pool's workers, not multiprocessing's resource tracker
            workers = [p for p in _children(proc.pid) if "spawn_main" in " ".join(_cmdline(p))]
            time.sleep(0.2)
        assert len(workers) >= 2, "the export never started its workers"
        time.sleep(1.0)  # let them get into the trace
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "export workers outlived their parent"
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        time.sleep(3)
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == written
    finally:
        proc.kill()


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


# 5. the genai folder's identity covers every file it copies -------------------------------------


def test_the_genai_folder_follows_its_checkpoints_tokenizer(checkpoint, tmp_path):
    """After the checkpoint's tokenizer.json changed, the folder kept the old one forever (even
    --force): genai users got other ids for the same text."""
    from tokenizers import ByteLevelBPETokenizer

    from pipeline.workspace import Workspace

    folder = copy_of(checkpoint, tmp_path)

    def tokenizer(corpus):
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(corpus, vocab_size=280, min_frequency=1)
        tok.save(str(folder / "tokenizer.json"))

    tokenizer(["the quick brown fox"] * 3)
    ws = Workspace(tmp_path / "out", folder)
    genai = ws.genai_folder(ws.sized("baseline"))
    assert (genai / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    tokenizer(["a completely different corpus of text"] * 3)
    again = Workspace(tmp_path / "out", folder).genai_folder(ws.sized("baseline"))
    assert (again / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text("{}")  # not a tokenizer pair: no tokenizer at all
    gone = Workspace(tmp_path / "out", folder).genai_folder(ws.sized("baseline"))
    assert not (gone / "tokenizer.json").exists()


# 6. shard paths stay inside the checkpoint ------------------------------------------------------


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "/etc/passwd", "a/../../x"])
def test_shard_paths_outside_the_checkpoint_are_refused(checkpoint, tmp_path, shard):
    folder = copy_of(checkpoint, tmp_path)
    outside = tmp_path / "other"
    outside.mkdir()
    os.replace(folder / "model.safetensors", outside / "model.safetensors")
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(run("infer", "--weights", folder, "--ids", "1"), "outside the checkpoint")


# 7. configs checked for type and range before anything is sized from them -----------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_layer": 10**6}, "describes"),
        ({"n_head": 0}, "n_head must be >= 1"),
        ({"n_embd": 32.9}, "n_embd must be an integer"),
        ({"vocab_size": "300"}, "vocab_size must be an integer"),
        ({"n_layer": True}, "n_layer must be an integer"),
        ({"activation_function": ["gelu"]}, "activation_function"),
        ({"layer_norm_epsilon": -1e-5}, "layer_norm_epsilon must be a positive"),
        ({"n_inner": 0}, "n_inner must be >= 1"),
        ({"scale_attn_weights": "no"}, "scale_attn_weights must be true or false"),
        ({"n_embd": 33}, "not divisible by n_head"),
    ],
)
def test_bad_config_values_are_one_line_naming_config_json(checkpoint, tmp_path, changes, message):
    folder = edit_config(copy_of(checkpoint, tmp_path), **changes)
    start = time.monotonic()
    line = one_line_error(run("infer", "--weights", folder, "--ids", "1"), message)
    assert "config.json" in line
    assert time.monotonic() - start < 60  # n_layer 10^6 took 27 s and 2.6 GB: a hang guard only


@pytest.mark.parametrize("text", ["1e400", "NaN", "-Infinity"])
def test_json_numbers_beyond_float_are_refused(checkpoint, tmp_path, text):
    folder = copy_of(checkpoint, tmp_path)
    raw = (folder / "config.json").read_text()
    (folder / "config.json").write_text(raw.replace('"n_embd": 32', f'"n_embd": {text}'))
    line = one_line_error(run("infer", "--weights", folder, "--ids", "1"))
    assert "config.json" in line and "n_embd" in line or "JSON" in line


def test_a_long_context_is_refused_before_tracing_not_in_protobuf(tmp_path):
    """n_positions 46500 with 0.37 M parameters passed the 2 GiB pre-check, took 6.7 GB (an
    [S, S] mask for every route) and ended in protobuf's traceback."""
    folder = gpt2_dir(tmp_path / "long", n_positions=46500, n_embd=8, n_layer=1)
    line = one_line_error(run("export", "--weights", folder, "--out", tmp_path / "out"))
    assert "causal mask" in line and "2 GiB" in line


def test_a_tensor_given_twice_is_refused(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_of(checkpoint, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    key = "transformer.h.0.ln_1.weight"
    tensors[key.removeprefix("transformer.")] = tensors[key] + 1  # GPT-2's other spelling
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    line = one_line_error(run("infer", "--weights", folder, "--ids", "1"), "given twice")
    assert "h.0.ln_1.weight" in line


def test_a_tensor_in_two_shards_is_refused(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_of(checkpoint, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    first = {k: tensors[k] for k in keys[: len(keys) // 2]}
    second = {k: tensors[k] for k in keys[len(keys) // 2 :]}
    second[keys[0]] = tensors[keys[0]]  # also in the first shard
    save_file(first, folder / "a.safetensors", metadata={"format": "pt"})
    save_file(second, folder / "b.safetensors", metadata={"format": "pt"})
    weight_map = {k: "a.safetensors" for k in first} | {k: "b.safetensors" for k in second}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    one_line_error(run("infer", "--weights", folder, "--ids", "1"), "given twice")


# 8. float32 overflow refused before it becomes a finite wrong answer ----------------------------


@pytest.mark.parametrize("runtime", ["ort", "ort-opt"])
def test_weights_whose_activations_overflow_float32_are_refused(checkpoint, tmp_path, runtime):
    """A bias of 3e38 in the first MLP: torch's logits were NaN (refused) but ORT's LayerNorm
    returned finite ones, top token 231 where float64 says 140, exit 0."""
    from safetensors.torch import load_file, save_file

    folder = copy_of(checkpoint, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.0.mlp.c_fc.bias"][3] = 3e38
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    args = ("--weights", folder, "--ids", "1,2", "--out", tmp_path / "out")
    one_line_error(run("infer", *args, "--runtime", runtime), "past what float32 can hold")
    one_line_error(run("generate", *args, "--runtime", runtime, "--max-new-tokens", "2"))


def test_the_float32_bound_passes_real_scales():
    """The bound is far above what the shipped and stand-in weights reach (no false refusal)."""
    from pipeline.config import get_variant
    from pipeline.weights import check_float32_range, load_state_dict, make_standin_state_dict

    check_float32_range(load_state_dict(), get_variant("baseline").config)
    cfg = get_variant("rope-gqa-window").config
    from pipeline.weights import validate_state_dict

    validate_state_dict(make_standin_state_dict(seed=3), cfg)


# 9. text that is not text, reports that are not reports, a full disk ----------------------------


@pytest.mark.parametrize(
    "prompt, message",
    [("\udcff\udcfe", "not valid UTF-8: byte 0xff"), ("\udced\udca0\udc80", "not valid UTF-8"),
     ("a\ud800", "lone surrogate")],
)  # fmt: skip
def test_text_that_is_not_utf8_is_one_line(checkpoint, tmp_path, prompt, message):
    from tokenizers import ByteLevelBPETokenizer

    folder = copy_of(checkpoint, tmp_path)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["hello world"] * 3, vocab_size=270, min_frequency=1)
    tok.save(str(folder / "tokenizer.json"))
    args = ("--weights", folder, "--out", tmp_path / "out")
    one_line_error(run("generate", *args, "--prompt", prompt, "--runtime", "torch"), message)
    one_line_error(run("infer", *args, "--text", prompt, "--runtime", "torch"), message)


def test_report_from_a_fifo_or_an_incomplete_json_is_one_line(tmp_path):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    one_line_error(run("report", "--from", fifo, "--out", tmp_path), "not a regular file")
    data = json.loads(Path("docs/report.json").read_text())
    del data["bench"]["records"]
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(data))
    one_line_error(run("report", "--from", cut, "--out", tmp_path / "o"), "'records'")


def test_report_from_renders_into_out_not_beside_the_json(tmp_path):
    """report --from X --out Y wrote report.md and the PNGs beside X (into docs/ when run on the
    repository's record, where a user's own report.md would have been replaced)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy("docs/report.json", src / "report.json")
    result = run("report", "--from", src / "report.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert [p.name for p in src.iterdir()] == ["report.json"]
    assert (out / "report.md").is_file() and list(out.glob("*.png"))


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to mount a tmpfs"
)
def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """ENOSPC named no path, and a parallel export's failure left two leaked semaphores."""
    out = tmp_path / "full"
    out.mkdir()
    script = (
        f"mount -t tmpfs -o size=3m none {out} && "
        f"{sys.executable} -m pipeline export --variant baseline,palm --out {out} --force; "
        f"echo rc=$?; ls -A {out}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    if "mount" in proc.stderr and "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    lines = proc.stderr.strip().splitlines()
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), proc.stderr
    assert "no space left" in lines[0].lower() and str(out) in lines[0]
    assert ".tmp" not in proc.stdout  # nothing half-written left behind


def test_a_library_failing_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """ORT's optimiser and protobuf report a full disk in their own words (not an OSError)."""
    from pipeline import fileio

    monkeypatch.setattr(fileio, "_free_bytes", lambda d: 1024)
    with pytest.raises(PipelineError, match=r"cannot write .*x\.onnx: no space left on device"):
        with fileio.atomic_path(tmp_path / "x.onnx"):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : protobuf serialization failed")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(fileio, "_free_bytes", lambda d: 10 << 30)
    with pytest.raises(RuntimeError, match="protobuf"):  # a disk with room: the error as it is
        with fileio.atomic_path(tmp_path / "x.onnx"):
            raise RuntimeError("protobuf")


# 10. messages that say what is wrong ------------------------------------------------------------


def test_a_dangling_weights_link_and_a_config_link_loop_are_named(checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    one_line_error(run("infer", "--weights", folder, "--ids", "1"), "symbolic link")
    loop = copy_of(checkpoint, tmp_path, "loop")
    (loop / "config.json").unlink()
    (loop / "config.json").symlink_to(loop / "config.json")
    one_line_error(run("infer", "--weights", loop, "--ids", "1"), "loop of symbolic links")


@pytest.mark.parametrize("eps", [-1.0, 0.0])
def test_a_bad_epsilon_names_config_json_not_the_weights(checkpoint, tmp_path, eps):
    folder = edit_config(copy_of(checkpoint, tmp_path), layer_norm_epsilon=eps)
    line = one_line_error(run("infer", "--weights", folder, "--ids", "1"), "layer_norm_epsilon")
    assert "config.json" in line and "overflow" not in line


def test_a_closed_pipe_is_a_normal_end(checkpoint, tmp_path):
    """`pipeline generate ... | head -c1` ended in 'error: Broken pipe', exit 1."""
    proc = subprocess.run(
        f"{sys.executable} -m pipeline generate --weights {checkpoint} --ids 1,2 --runtime torch "
        f"--max-new-tokens 40 --out {tmp_path} | head -c1; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize(
    "args, message",
    [(("bench", "--threads", ""), "--threads"), (("infer", "--ids", "1,,2"), "empty entry"),
     (("infer", "--ids", "1,2,"), "empty entry"), (("bench", "--seq-lens", "8,,16"), "--seq-lens")],
)  # fmt: skip
def test_empty_list_entries_are_refused_not_skipped(args, message, tmp_path):
    one_line_error(run(*args, "--out", tmp_path), message)


def test_load_model_with_none_or_a_checkpoint(checkpoint):
    from pipeline import load_model

    with pytest.raises(PipelineError, match="variant must be"):
        load_model(None)
    model = load_model("baseline", weights=checkpoint)  # the checkpoint's shape, not tiny's
    assert model.config.d_model == 32 and model.config.vocab_size == 300


# 11. the documented API is not shadowed by its modules ------------------------------------------


def test_the_api_survives_every_submodule_being_imported():
    """pipeline.generate(...) worked once per process, then 'module' object is not callable."""
    script = """
import importlib, pkgutil, pipeline
for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
    if m.name != "pipeline.__main__":
        importlib.import_module(m.name)
for name in pipeline.__all__:
    assert hasattr(pipeline, name), name
for name in ("load_model", "generate", "export_onnx", "get_variant"):
    assert callable(getattr(pipeline, name)), name
for _ in range(2):
    r = pipeline.generate("baseline", [[3, 14]], 2, runtime="torch")
print(r.sequences)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("[[3, 14, ")


# 12. a list of end-of-text ids ------------------------------------------------------------------


def test_a_list_of_eos_ids_reaches_genai(checkpoint, tmp_path):
    """Llama 3's eos_token_id is a list: it was ignored, so genai stopped at another id."""
    from pipeline.config import get_variant
    from pipeline.export.genai import checkpoint_eos, genai_config

    folder = edit_config(copy_of(checkpoint, tmp_path), eos_token_id=[7, 9])
    assert checkpoint_eos(folder, 300) == [7, 9]
    assert genai_config(get_variant("baseline").config, eos=[7, 9])["model"]["eos_token_id"] == [
        7,
        9,
    ]
    edit_config(folder, eos_token_id=[7, 300])
    with pytest.raises(PipelineError, match="eos_token_id"):
        checkpoint_eos(folder, 300)
