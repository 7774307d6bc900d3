"""Bad input on the command line: one clear line on stderr and a non-zero exit, checked before any work."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import one_line_error, run, unprivileged

from pipeline import PipelineError
from pipeline.cli import cli
from pipeline.export import onnx_export
from pipeline.parallel import KSplitMatMul


def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch):
    import pipeline.measure.forward as bench_mod

    def must_not_run(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(bench_mod, "run_bench", must_not_run)
    monkeypatch.setattr(onnx_export, "trace_to_onnx", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(run("bench", "--json", tmp_path), "--json: ")
    one_line_error(run("bench", "--csv", blocker / "x.csv"), "--csv: cannot write into")
    one_line_error(run("bench", "--plot", tmp_path), "--plot: ")
    one_line_error(
        run("export", "--variant", "baseline", "--out", blocker), "--out: cannot write into"
    )
    one_line_error(
        run("matmul", "--n", "2", "--k", "2", "--m", "2", "--json", tmp_path), "--json: "
    )


def test_messages_name_the_problem(tmp_path, state_dict):
    one_line_error(run("infer", "--ids", "1," + "9" * 23, "--runtime", "torch"), "token id 999999")
    one_line_error(run("matmul", "--seed", "-1"), "'--seed'")
    one_line_error(
        run("infer", "--ids", "1", "--runtime", "torch", "--weights", tmp_path), "is a directory"
    )
    safetensors_like = tmp_path / "model.pt"
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    safetensors_like.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    line = one_line_error(
        run("infer", "--ids", "1", "--runtime", "torch", "--weights", safetensors_like),
        "safetensors",
    )
    assert "could run code" not in line
    with pytest.raises(ValueError, match="threads_per_worker must be an integer >= 1"):
        KSplitMatMul(1, threads_per_worker=0)


@pytest.mark.parametrize("value", ["inf", "-1", "nan", "0", "x"])
def test_nonsense_tolerance_is_refused(value):
    one_line_error(run("verify", "--tolerance", value), "'--tolerance'", code=2)


def test_more_threads_than_cores_is_refused():
    one_line_error(run("bench", "--threads", "999"), "--threads: 999 threads")
    one_line_error(run("compare", "--threads", "999"), "--threads: 999 threads")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "absent.pt", "not found"),
        (lambda d: d, "is a directory"),
        (
            lambda d: (d / "empty.pt").write_bytes(b"") and d / "empty.pt" or d / "empty.pt",
            "it is empty",
        ),
        (lambda d: (d / "t.pt").write_text("hello") and d / "t.pt", "not a torch.save file"),
    ],
)
@pytest.mark.parametrize("option", ["--weights", "--examples"])
def test_every_file_the_cli_reads(tmp_path, make, message, option):
    args = ["verify", "--variant", "baseline", "--runtime", "torch", option, make(tmp_path)]
    one_line_error(run(*args), message)


@pytest.mark.parametrize("option", ["--weights", "--examples"])
def test_a_file_the_user_cannot_read(tmp_path, option):
    """Mode 0 binds only without CAP_DAC_OVERRIDE: as root the command runs with capabilities
    dropped, and a probe proves the file is unreadable to it before the CLI is asked."""
    locked = tmp_path / "locked.pt"
    locked.write_bytes(b"PK")
    locked.chmod(0)
    probe = subprocess.run(unprivileged(["cat", str(locked)]), capture_output=True)
    assert probe.returncode != 0, "the file is readable to the test's command: it proves nothing"
    command = [sys.executable, "-m", "pipeline", "verify", "--variant", "baseline"]
    result = subprocess.run(
        unprivileged([*command, "--runtime", "torch", option, str(locked)]),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and str(locked) in lines[0], lines[0]
    assert "not readable" in lines[0] or "cannot be read" in lines[0], lines[0]


# every subcommand on hostile input ------------------------------------------------------------
def hostile_table(tmp):
    blocker = tmp / "a-file"
    blocker.write_text("")
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 broken zip")
    words = tmp / "words.txt"  # text, and the stand-in has no tokenizer to read it with
    words.write_text("The fox ran home.\n")
    return {
        "export": [
            ["--variant", "gpt5"],
            ["--opset", "5"],
            ["--opset", "26"],
            ["--opset", "2147483648"],
            ["--out", blocker],
            ["--weights", tmp],
            ["--quantize", "int3"],
            ["--size", "gpt5"],
            ["--size", "gpt2-124m", "--variant", "nope"],
        ],
        "verify": [
            ["--tolerance", "-1"],
            ["--examples", tmp],
            ["--weights", garbage],
            ["--variant", ","],
            ["--runtime", "tvm"],
            ["--text-file", tmp / "absent.txt"],
            ["--text-file", words],
        ],
        "infer": [
            ["--ids", "1," + "7" * 30],
            ["--ids", "1", "--top-k", "0"],
            ["--ids", "a"],
            ["--ids", ""],
            ["--ids", "1", "--variant", "nope"],
        ],
        "all": [["--weights", tmp / "none.pt"], ["--out", blocker], ["--text-file", tmp]],
        "matmul": [
            ["--seed", "-1"],
            ["--n", "0"],
            ["--workers", "0"],
            ["--json", tmp],
            ["--k", "2", "--workers", "3"],
            ["--dtype", "int8"],
        ],
        "bench": [
            ["--threads", "999"],
            ["--threads", "0"],
            ["--json", tmp],
            ["--seq-lens", "0"],
            ["--seq-lens", "2000"],
            ["--variant", "x"],
            ["--max-seconds", "abc"],
            ["--size", "huge"],
            ["--mode", "attention", "--variant", "baseline,palm"],
        ],
        "memory": [["--seq-len", "0"], ["--variant", "nope"], ["--json", tmp]],
        "compare": [
            ["--threads", "999"],
            ["--variant", "nope"],
            ["--json", tmp],
            ["--markdown", tmp],
        ],
        "sweep": [
            ["--threads", "999"],
            ["--out", blocker],
            ["--weights", tmp],
            ["--family", "--threads", "0"],
        ],
        "report": [
            ["--weights", tmp],
            ["--out", blocker],
            ["--examples", garbage],
            ["--text-file", tmp / "absent.txt"],
            ["--text-file", words],
        ],
        "generate": [
            ["--ids", "1", "--max-new-tokens", "2000"],
            ["--ids", "1", "--top-p", "2"],
            ["--ids", ""],
            ["--ids", "1", "--threads", "999"],
            ["--ids", "1", "--variant", "nope"],
        ],
        "eval": [
            ["--text-file", tmp / "absent.txt"],
            ["--text-file", tmp],
            ["--text-file", garbage],
            ["--ids-file", blocker],
            ["--runtime", "tvm"],
            ["--variant", "nope"],
            ["--window", "1"],
            ["--threads", "999"],
            ["--json", tmp],
        ],
        "check-tools": [
            ["--tool", "nope"],
            ["--file", tmp / "absent.onnx"],
            ["--file", garbage],
            ["--lengths", "0"],
            ["--json", tmp],
            ["--variant", "nope"],
            ["--tolerance", "nan"],
        ],
    }


def test_hostile_inputs_on_every_subcommand(tmp_path):
    table = hostile_table(tmp_path)
    assert set(table) == set(cli.commands), (
        "a new subcommand needs its rows in the hostile-input table"
    )
    for command, rows in table.items():
        for args in rows:
            start = time.monotonic()
            result = run(command, *args)
            try:
                one_line_error(result)
            except AssertionError as exc:
                raise AssertionError(f"pipeline {command} {args}: {exc}") from None
            assert time.monotonic() - start < 60, (
                f"pipeline {command} {args} did work before refusing"
            )


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_an_output_path_that_is_a_special_file_is_refused_and_kept(kind, tmp_path):
    """--json on a FIFO or a character device: one line, and the special file is still there."""
    import stat

    if kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
        check = stat.S_ISFIFO
    else:
        target = tmp_path / "null"
        try:
            os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("no mknod here: needs CAP_MKNOD")
        check = stat.S_ISCHR
    line = one_line_error(
        run("matmul", "--n", "4", "--k", "4", "--m", "4", "--workers", "1", "--json", target)
    )
    assert "not a regular file" in line
    assert check(os.lstat(target).st_mode)


def test_a_symlinked_output_is_written_through_not_replaced(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    result = run("matmul", "--n", "4", "--k", "4", "--m", "4", "--workers", "1", "--json", link)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and json.loads(real.read_text())["n"] == 4


@pytest.mark.parametrize("command", ["infer", "generate"])
def test_ids_are_checked_against_the_vocab_of_the_size_in_use(command):
    line = one_line_error(
        run(command, "--size", "gpt2-124m", "--ids", "60000", "--runtime", "torch")
    )
    assert "outside [0, 50256]" in line  # gpt2-124m's vocabulary, not the tiny model's 512


@pytest.mark.parametrize("option", ["--weights", "--examples", "--file"])
def test_a_fifo_given_as_an_input_file_is_refused_without_blocking(option, tmp_path):
    """Reading a FIFO blocks until a writer comes; no writer comes, so it must not be opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    command = {
        "--weights": ["infer", "--ids", "1,2", "--runtime", "torch"],
        "--examples": ["verify", "--variant", "baseline", "--runtime", "torch"],
        "--file": ["check-tools"],
    }[option]
    start = time.monotonic()
    line = one_line_error(run(*command, option, fifo))
    assert "not a regular file" in line and time.monotonic() - start < 30


@pytest.mark.parametrize(
    "args, message",
    [
        (["infer", "--ids", "²", "--runtime", "torch"], "'²' is not an integer token id"),
        (["infer", "--ids", "1_0", "--runtime", "torch"], "'1_0' is not an integer token id"),
        (
            ["infer", "--ids", "1,2", "--top-k", "100000", "--runtime", "torch"],
            "--top-k must be in [1, 512]",
        ),
        (
            ["generate", "--ids", "1,2", "--top-k", "100000", "--runtime", "torch"],
            "more than the vocabulary's",
        ),
        (["check-tools", "--lengths", "1,1025"], "--lengths: 1025 is more than the model's 1024"),
        (["bench", "--batch", "100000000", "--runtime", "ort"], "GiB of memory but"),
        (
            ["bench", "--mode", "decode", "--batch", "100000000", "--runtime", "ort"],
            "GiB of memory but",
        ),
        (["matmul", "--n", "200000", "--k", "200000", "--m", "4"], "GiB of memory but"),
    ],
)
def test_more_hostile_inputs_get_one_line(args, message):
    assert message in one_line_error(run(*args))


def test_the_opset_range_is_the_exporters():
    """The CLI's range (kept literal: the command module stays import-light) is the library's."""
    from pipeline.cli.export import export
    from pipeline.export.onnx_export import MAX_OPSET, export_onnx

    opset = next(p for p in export.params if p.name == "opset")
    assert (opset.type.min, opset.type.max) == (18, MAX_OPSET)
    with pytest.raises(PipelineError, match="beyond"):
        export_onnx("baseline", opset=MAX_OPSET + 1)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda e: {**e, "logits": e["logits"].to_sparse()}, "logits has layout torch.sparse_coo"),
        (lambda e: {**e, "input_ids": e["input_ids"].to_sparse()}, "input_ids has layout"),
        (lambda e: {**e, "logits": torch.empty_like(e["logits"], device="meta")}, "meta tensor"),
    ],
)
def test_examples_with_sparse_or_meta_tensors(tmp_path, damage, message):
    from pipeline.weights import DEFAULT_EXAMPLES

    examples = torch.load(DEFAULT_EXAMPLES, weights_only=True)
    path = tmp_path / "examples.pt"
    torch.save([damage(examples[0]), *examples[1:]], path)
    line = one_line_error(run("verify", "--runtime", "torch", "--examples", path))
    assert message in line


def test_a_symbolic_link_loop_or_dangling_link_is_named(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "absent.pt")
    loop = one_line_error(
        run("infer", "--ids", "1", "--runtime", "torch", "--weights", tmp_path / "a")
    )
    assert "a loop of symbolic links" in loop
    dangling = one_line_error(
        run("verify", "--runtime", "torch", "--examples", tmp_path / "dangling")
    )
    assert "a symbolic link to" in dangling and "absent.pt" in dangling
    tools = one_line_error(run("check-tools", "--file", tmp_path / "a"))
    assert "a loop of symbolic links" in tools


@pytest.mark.parametrize(
    "args", [["export", "--out"], ["verify", "--runtime", "torch", "--out"], ["bench", "--json"]]
)
def test_a_path_that_is_not_utf8_is_refused_before_any_work(tmp_path, args):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/x\xff")
    line = one_line_error(run(*args, bad))
    assert "not UTF-8" in line and "x\\xff" in line
    assert not os.path.lexists(bad)
