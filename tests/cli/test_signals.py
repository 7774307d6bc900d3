"""^C and SIGTERM: one line, the right exit code, no temporary file or worker left behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.fileio import remove_stale_temps, write_text_atomic

STUB = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pipeline.cli as cli_mod, pipeline.export.pool as export_mod
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
    proc = subprocess.Popen(
        [sys.executable, "-c", STUB, behaviour, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{behaviour}: still running 10 s after the signal")
    return proc.returncode, err, time.monotonic() - start, out


@pytest.mark.parametrize("behaviour", ["swallows", pytest.param("wraps", marks=pytest.mark.slow)])
def test_interrupt_always_ends_in_interrupted(tmp_path, behaviour):
    code, err, seconds, _ = interrupt(tmp_path, behaviour, signal.SIGINT)
    assert code == 130 and err.strip().splitlines() == ["interrupted"], err
    assert (
        seconds < 8
    )  # a bound on a hang, not a speed claim: the watchdog fires 2 s after the signal


@pytest.mark.parametrize(
    "sig, code, word",
    [
        (signal.SIGTERM, 143, "terminated"),
        pytest.param(signal.SIGINT, 130, "interrupted", marks=pytest.mark.slow),
    ],
)
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


@pytest.mark.slow
def test_sigterm_during_a_parallel_export_leaves_no_worker(tmp_path):
    """The two export workers (and the pool's helpers) end with the command, before its exit."""
    import psutil

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "export",
            "--variant",
            "all",
            "--optimize",
            "--out",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = [
            p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
        ]
    assert len(workers) >= 2, "the export workers did not start"
    time.sleep(3)  # inside the traces
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated", err
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, [p.pid for p in alive]
    time.sleep(1)
    assert not list((tmp_path / "out").glob(".*.tmp")), "a worker went on writing"
