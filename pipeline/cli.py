"""`pipeline` command line: a thin layer over the library's functions."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import click

from .config import DEFAULT_SIZE, SIZES, VARIANTS, get_variant, resolve_variants
from .errors import PipelineError
from .fileio import check_writable_dir, check_writable_file, write_text_atomic
from .parallel.kmatmul import WorkerError

# runtime option -> runtimes: "ort" is both fp32 ONNX artifacts (portable and ORT-optimised)
RUNTIME_CHOICES = {"ort": ["ort", "ort-opt"], "ort-portable": ["ort"], "ort-opt": ["ort-opt"],
                   "ort-int8": ["ort-int8"], "torch": ["torch"], "all": ["torch", "ort", "ort-opt"],
                   "all+int8": ["torch", "ort", "ort-opt", "ort-int8"]}
# verify also knows the decoder graphs (checked step by step, as generation runs them)
VERIFY_CHOICES = {**RUNTIME_CHOICES, "decoder": ["ort-decoder", "ort-opt-decoder"],
                  "all": RUNTIME_CHOICES["all"] + ["ort-decoder", "ort-opt-decoder"],
                  "all+int8": RUNTIME_CHOICES["all+int8"] + ["ort-decoder", "ort-opt-decoder"]}
# bench --mode decode: torch with its cache, the naive recomputing loop, both decoders, genai
DECODE_CHOICES = {"all": ["torch", "torch-recompute", "ort", "ort-opt", "genai"], "ort": ["ort", "ort-opt"],
                  "ort-portable": ["ort"], "ort-opt": ["ort-opt"], "torch": ["torch", "torch-recompute"],
                  "genai": ["genai"]}
VARIANT_HELP = f"variant name, comma-separated names, or 'all' ({', '.join(VARIANTS)})"


class Cli(click.Group):
    """Bad input (and a failed worker) becomes one line on stderr and exit 1 (2 for a bad option);
    --debug shows the traceback instead. ^C and SIGTERM end in one line and exit 130 / 143."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from .interrupts import InterruptGuard

        with InterruptGuard() as guard:
            self._guard = guard
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.exceptions.Abort:
                click.echo(guard.message, err=True)
                rv = guard.exit_code
            except click.ClickException as exc:
                # click's own three-line usage block, folded into one line that names the option
                hint = ""
                if isinstance(exc, click.UsageError) and exc.ctx is not None:
                    hint = f" (see '{exc.ctx.command_path} --help')"
                click.echo(f"error: {exc.format_message()}{hint}", err=True)
                rv = exc.exit_code
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        guard = getattr(self, "_guard", None)
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except (PipelineError, ValueError, OSError, WorkerError) as exc:
            if ctx.params.get("debug"):
                raise
            if guard is not None and guard.signum is not None:  # a library's wrapping of our interrupt
                click.echo(guard.message, err=True)
                ctx.exit(guard.exit_code)
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            click.echo(guard.message if guard else "interrupted", err=True)
            ctx.exit(guard.exit_code if guard else 130)
        except Exception:
            if guard is not None and guard.signum is not None and not ctx.params.get("debug"):
                click.echo(guard.message, err=True)  # e.g. torch's exporter wrapping the KeyboardInterrupt
                ctx.exit(guard.exit_code)
            raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


class PositiveFinite(click.ParamType):
    """A float > 0 that is neither inf nor nan (inf would also be written to JSON as `Infinity`)."""
    name = "number > 0"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x <= 0:
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return x


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _check_threads(values: list[int], option: str = "--threads") -> list[int]:
    cores = _available_cores()
    too_many = [t for t in values if t > cores]
    if too_many:
        raise PipelineError(f"{option}: {max(too_many)} threads but this process can use {cores} core(s); "
                            f"more threads than cores only measure contention")
    return values


def _variants(name: str) -> list[str]:
    return [v.name for v in resolve_variants(name)]


def sized(command):
    """Adds --size: the variants named by --variant are taken at that size ('variant@size')."""
    @click.option("--size", type=click.Choice(list(SIZES)), default=DEFAULT_SIZE, show_default=True,
                  help="model size: tiny is the spec's config; gpt2-124m has GPT-2 small's (weights made on demand)")
    @functools.wraps(command)
    def with_size(*args, size, variant, **kwargs):
        if size != DEFAULT_SIZE:
            variant = ",".join(v.name for v in resolve_variants(variant, size))
        return command(*args, variant=variant, **kwargs)
    return with_size


def _known_variant(name) -> bool:
    """Whether a file's recorded variant name (None if absent) is one of ours."""
    if name is None:
        return False
    try:
        get_variant(name)
    except ValueError:
        return False
    return True


def _max_seq_len(names: list[str]) -> int:
    return min(get_variant(n).config.max_seq_len for n in names)


@contextlib.contextmanager
def _progress(total: int, label: str):
    """A progress bar of `total` steps on a terminal, yielding the callable that advances it (its
    arguments, if any, name the step done); nothing in logs and pipes, where it would only add
    lines (the callable is then None)."""
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        yield lambda *done: bar.update(1, done[-1] if done else None)


weights_opt = click.option("--weights", type=click.Path(path_type=Path), default=None,
                           help="state dict in the supplied format (default: the shipped stand-in)")
examples_opt = click.option("--examples", type=click.Path(path_type=Path), default=None,
                            help="example_outputs.pt (default: the shipped stand-in)")
out_opt = click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("exported"),
                       show_default=True, help="directory for .onnx files and results")


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
def cli(debug: bool) -> None:
    """Export a GPT-2-like decoder to ONNX, verify it in ONNX Runtime, and measure it."""


@cli.command()
@sized
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@weights_opt
@out_opt
@click.option("--opset", default=18, show_default=True, help="ONNX opset (>= 18)")
@click.option("--optimize", is_flag=True,
              help="also write OUT/<variant>.ort-opt.onnx: fused causal attention, ONNX Runtime only")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="also write OUT/<variant>.int8.onnx: the fused graph with dynamic int8 matmuls")
@click.option("--decoder", is_flag=True,
              help="also write the decoders with a KV cache (OUT/<variant>.decoder.onnx, .decoder.ort-opt.onnx) "
                   "and the onnxruntime-genai folder OUT/<variant>.genai/")
def export(variant: str, weights, out_dir: Path, opset: int, optimize: bool, quantize, decoder: bool) -> None:
    """Write OUT/<variant>.onnx for each variant (self-contained, dynamic batch and sequence axes)."""
    names = _variants(variant)
    flavours = ["portable"] + (["optimized"] if optimize else []) + (["int8"] if quantize else []) + \
        (["decoder", "decoder-optimized"] if decoder else [])
    paths = _export(names, weights, out_dir, flavours, opset)
    if decoder:
        paths += _genai_folders(names, weights, out_dir)
    for p in paths:
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.iterdir())
        click.echo(f"{p}  ({size / 1e6:.1f} MB)")


def _export(names, weights, out_dir, flavours, opset=None) -> list[Path]:
    """export_variants on the cores this process may use (at most 2, each worker holding a model),
    with a progress bar of files written."""
    from .export import export_variants
    from .export.onnx_export import DEFAULT_OPSET

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with _progress(len(names) * len(flavours), "exporting") as advance:
        return export_variants(names, weights, out_dir, opset or DEFAULT_OPSET, flavours,
                               on_done=(lambda name, path: advance(path.name)) if advance else None,
                               processes=min(2, cores))


def _genai_folders(names, weights, out_dir) -> list[Path]:
    from .runtime.genai import ensure_genai_folder
    from .weights import load_state_dict, weights_path

    cfg = get_variant(names[0]).config
    weights = weights_path(weights, cfg)
    state_dict = load_state_dict(weights, cfg)
    return [ensure_genai_folder(n, weights, out_dir, state_dict) for n in names]


def _genai_agrees(names, weights, out_dir, new_tokens: int = 32) -> bool:
    """Greedy generation in onnxruntime-genai gives eager torch's tokens, for every variant."""
    from .generate import generate
    from .weights import load_state_dict

    state_dict = load_state_dict(weights, get_variant(names[0]).config)  # read once for all 2 x len(names) runs
    prompt = [[3, 14, 15, 92, 65, 35, 89, 79]]
    run = lambda n, rt: generate(n, prompt, new_tokens, rt, weights=weights, out_dir=out_dir,
                                 state_dict=state_dict).sequences
    differ = [n for n in names if run(n, "genai") != run(n, "torch")]
    click.echo(f"onnxruntime-genai: greedy {new_tokens} tokens equal eager torch's for "
               f"{len(names) - len(differ)} of {len(names)} variants" + (f" (differ: {', '.join(differ)})" if differ else ""))
    return not differ


def _run_verify(variant, runtime, weights, examples, out_dir, tolerance, summary=False,
                decoder_steps=None) -> bool:
    """runtime: a --runtime choice, or the list of runtimes itself."""
    from .runtime.verify import summarize, verify
    from .table import text_table

    runtimes = VERIFY_CHOICES[runtime] if isinstance(runtime, str) else runtime
    names = _variants(variant)
    notes: list[str] = []
    with _progress(len(names), "verifying") as advance:
        checks = verify(names, runtimes, weights, examples, out_dir, tolerance, on_note=notes.append,
                        decoder_steps=decoder_steps, on_variant=advance)
    verdict = lambda passed: "info" if passed is None else ("pass" if passed else "FAIL")
    if summary:
        rows = [(r["variant"], r["runtime"], r["reference"], r["lengths"], r["max_abs"], r["max_rel"],
                 verdict(r["passed"])) for r in summarize(checks)]
        headers = ["variant", "runtime", "vs", "lengths", "worst abs diff", "worst rel diff", "pass"]
    else:
        rows = [(c.variant, c.runtime, c.reference, c.example, c.seq_len, c.max_abs, c.max_rel, verdict(c.passed))
                for c in checks]
        headers = ["variant", "runtime", "vs", "example", "length", "max abs diff", "max rel diff", "pass"]
    click.echo(text_table(headers, rows))
    graded = [c for c in checks if c.passed is not None]
    failed = [c for c in graded if not c.passed]
    click.echo(f"\n{len(graded) - len(failed)} of {len(graded)} checks pass "
               f"(|diff| <= {tolerance:g} * max(1, max|reference|); 'info' rows are not graded)")
    for c in failed if summary else []:  # the summary's rows do not say which example failed
        click.echo(f"FAIL: {c.variant} on {c.runtime} vs {c.reference}, example #{c.example} (S={c.seq_len}): "
                   f"max |diff| {c.max_abs:.3g}", err=True)
    for note in dict.fromkeys(notes):
        click.echo(f"note: {note}", err=True)
    return not failed


@cli.command()
@sized
@click.option("--variant", default="all", show_default=True, help=VARIANT_HELP)
@click.option("--runtime", type=click.Choice(list(VERIFY_CHOICES)), default="all", show_default=True,
              help="ort: both ONNX artifacts (portable and ORT-optimised); decoder: both decoders with past, "
                   "fed as generation feeds them; all: torch, ort and decoder")
@weights_opt
@examples_opt
@out_opt
@click.option("--tolerance", type=PositiveFinite(), default=1e-4, show_default=True, help="relative tolerance")
@click.option("--summary", is_flag=True, help="one row per variant/runtime/reference (worst case)")
def verify(variant, runtime, weights, examples, out_dir, tolerance, summary) -> None:
    """Check the runtimes' logits against the examples and against eager torch."""
    if not _run_verify(variant, runtime, weights, examples, out_dir, tolerance, summary):
        sys.exit(1)


@cli.command()
@sized
@click.option("--ids", required=True, help="comma-separated token ids, e.g. 3,14,15")
@click.option("--variant", default="baseline", show_default=True)
@click.option("--runtime", type=click.Choice(["ort", "torch"]), default="ort", show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@weights_opt
@out_opt
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def infer(ids, variant, runtime, top_k, weights, out_dir, as_json) -> None:
    """Run one forward pass and show the top-k next tokens."""
    from .config import get_variant
    from .infer import infer as run_infer, parse_ids

    get_variant(variant)
    result = run_infer(parse_ids(ids, get_variant(variant).config), variant, runtime, top_k, weights, out_dir)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{variant} on {runtime}: logits shape {result['logits_shape']}; next token:")
    for rank, t in enumerate(result["top_k"], 1):
        click.echo(f"  {rank}. token {t['token']:3d}  logit {t['logit']:8.3f}  p {t['prob']:.4f}")


@cli.command()
@sized
@click.option("--variant", default="baseline", show_default=True)
@click.option("--ids", "prompts", multiple=True, required=True,
              help="a prompt as comma-separated token ids; repeat for a batch (lengths may differ)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--greedy", is_flag=True, help="pick the most likely token (the default unless a sampling option is given)")
@click.option("--temperature", type=PositiveFinite(), default=None, help="sample at this temperature")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="sample among the k most likely tokens")
@click.option("--top-p", type=float, default=None, help="sample among the smallest set of tokens with this mass, in (0, 1]")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=None, help="make sampling reproducible")
@click.option("--runtime", type=click.Choice(["torch", "ort", "ort-opt", "genai"]), default="ort-opt",
              show_default=True, help="ort: the portable decoder; ort-opt: the fused one; genai: onnxruntime-genai")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="intra-op threads (default: the runtime's)")
@weights_opt
@out_opt
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of streaming")
def generate(variant, prompts, max_new_tokens, greedy, temperature, top_k, top_p, seed, runtime, threads, weights,
             out_dir, as_json) -> None:
    """Generate tokens after each prompt with a KV cache, streamed as they come."""
    from .config import get_variant
    from .generate import Sampling, generate as run_generate
    from .infer import parse_ids

    cfg = get_variant(variant).config
    if threads is not None:
        _check_threads([threads])
    sampling_opts = {"--temperature": temperature, "--top-k": top_k, "--top-p": top_p}
    given = [k for k, v in sampling_opts.items() if v is not None]
    if greedy and given:
        raise PipelineError(f"--greedy cannot be combined with {', '.join(given)}")
    sampling = Sampling(greedy=not given, temperature=temperature or 1.0, top_k=top_k,
                        top_p=1.0 if top_p is None else top_p, seed=seed)
    rows = [parse_ids(p, cfg)[0].tolist() for p in prompts]

    def stream(step: int, tokens) -> None:
        if len(rows) == 1:
            click.echo(("" if step == 0 else " ") + str(int(tokens[0])), nl=False)
        else:
            click.echo(f"step {step + 1}: " + " ".join(str(int(t)) for t in tokens))

    result = run_generate(variant, rows, max_new_tokens, runtime, sampling, weights, out_dir, threads,
                          on_tokens=None if as_json else stream)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    if len(rows) == 1:
        click.echo()
    click.echo(f"{result.runtime}: {len(rows)} row(s) x {result.new_tokens} new tokens; time to first token "
               f"{result.ttft_ms:.2f} ms; {result.tokens_per_s:.0f} tokens/s after it", err=True)


@cli.command(name="all")
@click.option("--full", is_flag=True, help="the full report: dense sweeps, ORT in the config sweep, the attention "
                                          "family's latency vs S, more repeats (about 4 minutes more)")
@weights_opt
@examples_opt
@out_opt
def all_(full, weights, examples, out_dir) -> None:
    """The main job: export (full forward in both flavours, fused decoder) and verify every variant, check generation
    in onnxruntime-genai, then bench and report (under three minutes on two cores)."""
    from .export import read_manifest

    check_writable_dir(out_dir)
    start = time.perf_counter()
    names = list(VARIANTS)
    # the portable decoders (for ONNX tools other than ORT) are left to `pipeline export --decoder`:
    # they trace slowest, and would take a fifth of the three minutes this command has
    _export(names, weights, out_dir, ("portable", "optimized", "decoder-optimized"))
    _genai_folders(names, weights, out_dir)
    # the decoders' last 64 positions one token per call (pipeline verify feeds half of each example)
    ok = _run_verify("all", ["torch", "ort", "ort-opt", "ort-opt-decoder"], weights, examples, out_dir, 1e-4,
                     summary=True, decoder_steps=64)
    ok &= _genai_agrees(names, weights, out_dir)
    manifest = read_manifest(out_dir)["artifacts"]
    click.echo("\nartifacts:")
    for name, entry in sorted(manifest.items()):
        v = entry.get("verification", {})
        click.echo(f"  {out_dir / name}  {entry['size_bytes'] / 1e6:.1f} MB  opset {entry['opset']}  "
                   f"verified: {'pass' if v.get('passed') else 'FAIL' if v else 'not yet'}")
    if not ok:
        click.echo(f"verification failed after {time.perf_counter() - start:.0f} s", err=True)
        sys.exit(1)
    from .report import build_report

    path = build_report(out_dir, weights, examples, full, on_step=_steps("report"))
    report_data = json.loads(path.with_suffix(".json").read_text())
    click.echo("\nshort benchmark (baseline):")
    click.echo(_bench_table([_record(r) for r in report_data["bench"]["records"]]))
    for line in _speedup_summary([_record(r) for r in report_data["bench"]["records"]]):
        click.echo(line)
    click.echo(f"\nreport: {path}")
    click.echo(f"done in {time.perf_counter() - start:.0f} s")


@cli.command()
@click.option("--n", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--k", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--m", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True)
@click.option("--transport", type=click.Choice(["shm", "gloo"]), default="shm", show_default=True,
              help="combine partials in the caller (shm) or by torch.distributed all_reduce (gloo)")
@click.option("--check", is_flag=True, help="exit 1 if C is outside tolerance of the reference")
@click.option("--bench", "do_bench", is_flag=True, help="time it against single-process products")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--pin/--no-pin", default=True, show_default=True, help="pin each worker to its own core")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def matmul(n, k, m, workers, dtype, seed, transport, check, do_bench, repeat, pin, json_path) -> None:
    """C = A B with K split across worker processes, each running an ONNX MatMul."""
    from .parallel import KSplitMatMul, split_sizes
    from .parallel.bench import bench, check as check_result, random_inputs
    from .table import text_table

    check_writable_file(json_path, "--json")
    sizes = split_sizes(k, workers)
    a, b = random_inputs(n, k, m, dtype, seed)
    with KSplitMatMul(workers, dtype=dtype, transport=transport, pin_cores=pin) as pool:
        c = pool(a, b)
    result = {"n": n, "k": k, "m": m, "workers": workers, "splits": sizes, "dtype": dtype, "transport": transport,
              "check": check_result(c, a, b, dtype)}
    chk = result["check"]
    click.echo(f"C = A[{n}x{k}] B[{k}x{m}] over {workers} workers (K splits {sizes}), {dtype}, {transport}")
    click.echo(f"vs single-process ORT MatMul: max abs {chk['max_abs_vs_single']:.3g}, "
               f"max rel {chk['max_rel_vs_single']:.3g}, bitwise equal: {chk['bitwise_equal_single']}")
    click.echo(f"vs float64 reference: max rel {chk['max_rel_vs_float64']:.3g} "
               f"(tolerance {chk['tolerance_rel']:g}): {'ok' if chk['passed'] else 'FAIL'}")
    if do_bench:
        result["bench"] = bench(a, b, workers, repeat, transport, pin)
        click.echo("\n" + text_table(["method", "p50 ms", "speed-up vs 1 thread", "efficiency"],
                                      [(r["method"], r["p50_ms"], r["speedup"], r["efficiency"])
                                       for r in result["bench"]]))
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    if check and not chk["passed"]:
        sys.exit(1)


def _int_list(text: str, what: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PipelineError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise PipelineError(f"{what}: expected integers >= {minimum}, got {text!r}")
    return values


def _record(data: dict):
    from .runtime.bench import Record

    return Record(**{k: v for k, v in data.items() if k != "peak_share"})  # a derived field


def _bench_table(records) -> str:
    from .runtime.bench import speedups
    from .table import text_table

    sp = {(r["runtime"], r["variant"], r["threads"], r["seq_len"]): r["speedup"] for r in speedups(records)}
    rows = [(r.variant, r.threads, r.seq_len, r.runtime, r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms, r.std_ms, r.runs,
             r.gflops, f"{r.peak_share:.0%}", sp.get((r.runtime, r.variant, r.threads, r.seq_len)))
            for r in sorted(records, key=lambda r: (r.variant, r.threads, r.seq_len))]
    return text_table(["variant", "threads", "seq", "runtime", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms",
                       "runs", "GFLOP/s", "of GEMM", "torch/this"], rows)


def _speedup_summary(records) -> list[str]:
    from .runtime.bench import geomean, speedups

    lines = []
    rows = speedups(records)
    for runtime in sorted({r["runtime"] for r in rows}):
        mine = [r for r in rows if r["runtime"] == runtime]
        slower = [f"{r['variant']}/{r['threads']}t/S={r['seq_len']}" for r in mine if r["speedup"] < 1]
        lines.append(f"{runtime}: geometric-mean speed-up over torch {geomean(r['speedup'] for r in mine):.2f}x over "
                     f"{len(mine)} points; " + ("faster or equal at every point" if not slower
                                                 else f"slower at {', '.join(slower)}"))
    return lines


@cli.command()
@sized
@click.option("--mode", type=click.Choice(["forward", "decode", "attention"]), default="forward", show_default=True,
              help="forward: whole sequences; decode: one generation step at a cache length, and whole generations; "
                   "attention: one causal attention, every candidate route (MultiHeadAttention, GroupQueryAttention, "
                   "Attention-23, query-blocked) against torch's SDPA")
@click.option("--runtime", type=click.Choice(sorted(set(RUNTIME_CHOICES) | set(DECODE_CHOICES))), default="all",
              show_default=True,
              help="ort: both fp32 ONNX artifacts (portable and ORT-optimised); ort-int8: the quantised one")
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@click.option("--threads", default=None, help="comma-separated intra-op thread counts (default: 1..physical cores)")
@click.option("--seq-lens", default="1,16,128,512,1024", show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-seconds", type=float, default=4.0, show_default=True,
              help="per point and runtime group: stop repeating after this (at least 5 rounds)")
@weights_opt
@out_opt
@click.option("--batch", "batches", default=None,
              help="batch size (forward: one, default 1; decode: comma-separated, default 1,8)")
@click.option("--past-lens", default="0,128,512,1000", show_default=True, help="decode: cache lengths")
@click.option("--new-tokens", type=click.IntRange(min=2), default=256, show_default=True,
              help="decode: tokens per whole generation (from a 32-token prompt)")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None)
def bench(mode, runtime, variant, threads, seq_lens, warmup, repeat, max_seconds, weights, out_dir, batches, past_lens,
          new_tokens, json_path, csv_path, plot_path) -> None:
    """Forward latency per runtime, variant, thread count and sequence length (or decode speed)."""
    from .runtime.bench import bench_json, default_threads, plot_latency, records_csv, run_bench

    thread_list = _check_threads(_int_list(threads, "--threads")) if threads else default_threads()
    lens = _int_list(seq_lens, "--seq-lens")
    for path, option in ((json_path, "--json"), (csv_path, "--csv"), (plot_path, "--plot")):
        check_writable_file(path, option)
    names = _variants(variant)
    if max(lens) > _max_seq_len(names):
        raise PipelineError(f"--seq-lens: {max(lens)} is more than the model's {_max_seq_len(names)} tokens")
    if mode == "attention":
        return _bench_attention(names, thread_list, lens, repeat, max_seconds, json_path)
    if mode == "decode":
        return _bench_decode(runtime, names, thread_list, batches, past_lens, repeat, new_tokens, weights, out_dir,
                             json_path)
    if runtime not in RUNTIME_CHOICES:
        raise PipelineError(f"--runtime {runtime} is for --mode decode; forward takes {', '.join(RUNTIME_CHOICES)}")
    batch = _int_list(batches, "--batch") if batches else [1]
    if len(batch) != 1:
        raise PipelineError("--batch: give one batch size in forward mode")
    runtimes = RUNTIME_CHOICES[runtime]
    with _progress(len(names) * len(thread_list) * len(lens), "benchmarking") as advance:
        records = run_bench(runtimes, names, thread_list, lens, warmup, repeat, weights, out_dir, max_seconds,
                            on_point=(lambda point: advance()) if advance else None, batch=batch[0])
    click.echo(_bench_table(records))
    for line in _speedup_summary(records):
        click.echo(line)
    data = bench_json(records)
    fp32 = [r for r in records if r.runtime != "ort-int8"] or records  # int8 ops are not fp32 FLOPs
    best = max(fp32, key=lambda r: r.peak_share)
    gemm = ", ".join(f"{r.gemm_gflops:.0f} GFLOP/s on {r.threads} thread(s)"
                     for r in {r.threads: r for r in records}.values())
    click.echo(f"reference: a 1024^3 fp32 MatMul in ORT, measured in this run, reaches {gemm}; GFLOP/s count causal "
               f"attention as the S(S+1)/2 pairs it needs. The best forward reached {best.gflops:.0f} GFLOP/s on "
               f"{best.threads} thread(s) ({best.runtime}, S={best.seq_len}), {best.peak_share:.0%} of that")
    if json_path:
        write_text_atomic(json_path, json.dumps(data, indent=2) + "\n")
    if csv_path:
        write_text_atomic(csv_path, records_csv(records))
    if plot_path:
        plot_latency(records, plot_path)
    for path in (json_path, csv_path, plot_path):
        if path:
            click.echo(f"wrote {path}")


def _bench_attention(names, thread_list, lens, repeat, max_seconds, json_path) -> None:
    from .config import get_variant
    from .runtime.attention_bench import fastest_routes, run_attention_bench
    from .runtime.bench import machine_info
    from .table import text_table

    if len(names) != 1:
        raise PipelineError("--mode attention: give one variant (its attention shape is measured)")
    cfg = get_variant(names[0]).config
    with _progress(len(thread_list) * len(lens), "attention routes") as advance:
        records = run_attention_bench(cfg, thread_list, lens, repeat, max_seconds, on_point=advance)
    torch_ms = {(r.threads, r.seq_len): r.p50_ms for r in records if r.route.startswith("torch")}
    click.echo(text_table(["threads", "seq", "route", "p50 ms", "p90 ms", "runs", "torch/this", "max |diff|"],
                          [(r.threads, r.seq_len, r.route, r.p50_ms, r.p90_ms, r.runs,
                            torch_ms[(r.threads, r.seq_len)] / r.p50_ms, r.max_abs_diff) for r in records]))
    best = fastest_routes(records)
    for (n_threads, s), route in best.items():
        click.echo(f"fastest exact ORT route at {n_threads} thread(s), S={s}: {route}")
    if json_path:
        data = {"machine": machine_info(), "shape": {"batch": 1, "heads": cfg.n_heads, "head_dim": cfg.head_dim},
                "records": [r.to_dict() for r in records],
                "fastest": [{"threads": t, "seq_len": s, "route": r} for (t, s), r in best.items()]}
        write_text_atomic(json_path, json.dumps(data, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


def _bench_decode(runtime, names, thread_list, batches, past_lens, repeat, new_tokens, weights, out_dir,
                  json_path) -> None:
    from .runtime.decode_bench import decode_summary, end_to_end, run_decode_bench
    from .table import text_table

    if runtime not in DECODE_CHOICES:
        raise PipelineError(f"--runtime {runtime} is for --mode forward; decode takes {', '.join(DECODE_CHOICES)}")
    batch_list = _int_list(batches, "--batch") if batches else [1, 8]
    pasts = _int_list(past_lens, "--past-lens", minimum=0)
    if max(pasts) + 1 > _max_seq_len(names):
        raise PipelineError(f"--past-lens: {max(pasts)} leaves no room for a new token in {_max_seq_len(names)}")
    runtimes = DECODE_CHOICES[runtime]
    data = {"machine": None, "steps": [], "end_to_end": [], "variants": names}
    for name in names:
        steps = run_decode_bench(name, runtimes, thread_list, batch_list, pasts, weights, out_dir, repeat,
                                 on_point=_steps_point())
        data["steps"] += [r.to_dict() for r in steps]
        for t in thread_list:
            data["end_to_end"] += [{"variant": name, **row}
                                   for row in end_to_end(name, runtimes, t, new_tokens=new_tokens, weights=weights,
                                                         out_dir=out_dir)]
    summary = decode_summary(data)
    data.update(summary)
    click.echo(text_table(["variant", "threads", "batch", "past", "runtime", "p50 ms/step", "p90 ms",
                           "torch(cache)/this", "recompute/this"], summary["step_rows"]))
    click.echo()
    click.echo(text_table(["variant", "threads", "runtime", "TTFT ms", "tokens/s", f"total s ({new_tokens} tokens)",
                           "vs recompute"], summary["e2e_rows"]))
    click.echo()
    for line in summary["lines"]:
        click.echo(line)
    if json_path:
        write_text_atomic(json_path, json.dumps(data, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


def _steps_point():
    if not sys.stderr.isatty():
        return None
    return lambda point: click.echo(f"decode: threads {point[0].threads}, batch {point[0].batch}, "
                                    f"past {point[0].past_len}", err=True)


@cli.command(name="check-tools")
@sized
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@click.option("--file", "files", type=click.Path(path_type=Path), multiple=True,
              help="check this .onnx file instead (repeatable); its recorded variant picks the reference "
                   "(without --file: each variant's portable file, and its portable decoder where exported)")
@click.option("--tool", "tool_names", default="all", show_default=True,
              help="comma-separated tools (onnxruntime, onnx.reference, openvino, tract, onnx2torch, "
                   "onnxruntime-node) or 'all'")
@click.option("--lengths", default="1,17,300,1024", show_default=True,
              help="sequence lengths (slow tools stop at 300)")
@weights_opt
@out_opt
@click.option("--tolerance", type=PositiveFinite(), default=1e-4, show_default=True, help="relative tolerance")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def check_tools(variant, files, tool_names, lengths, weights, out_dir, tolerance, json_path) -> None:
    """Run portable .onnx files in every installed ONNX tool at batch 1 and 2; compare the logits."""
    from .export import ensure_export, onnx_metadata
    from .export.onnx_export import FLAVOURS, onnx_path
    from .runtime.tools import TOOLS, check_file, check_inputs, decoder_check_inputs, float64_reference
    from .table import text_table
    from .weights import file_sha256, load_state_dict, weights_path

    tools = list(TOOLS) if tool_names == "all" else [t.strip() for t in tool_names.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or not tools:
        raise PipelineError(f"--tool: unknown tool {', '.join(unknown) or repr(tool_names)}; choose from "
                            f"{', '.join(TOOLS)} or 'all'")
    lens = _int_list(lengths, "--lengths")
    check_writable_file(json_path, "--json")
    names = [] if files else _variants(variant)
    cfg = get_variant(names[0]).config if names else get_variant("baseline").config
    weights = weights_path(weights, cfg)
    state_dict = load_state_dict(weights, cfg)
    sha = file_sha256(weights)
    targets = [Path(f) for f in files]
    for v in names:
        targets.append(ensure_export(v, weights, out_dir, state_dict))
        if onnx_path(v, out_dir, "decoder").exists():  # the decoder with past, where it was exported
            targets.append(ensure_export(v, weights, out_dir, state_dict, "decoder"))
    report, failed = [], False
    for path in targets:
        meta = onnx_metadata(path)
        name = meta.get("pipeline.variant")
        known = _known_variant(name)
        if known and meta.get("pipeline.weights_sha256") == sha:
            reference, against = float64_reference(name, state_dict), f"the float64 torch model of {name}"
        else:
            reference, against = None, "ONNX Runtime (no float64 reference: the file's variant or weights are not ours)"
        cfg = get_variant(name).config if known else get_variant("baseline").config
        is_decoder = FLAVOURS.get(meta.get("pipeline.flavour", ""), FLAVOURS["portable"]).decoder
        inputs = decoder_check_inputs(path, cfg, lens) if is_decoder else check_inputs(cfg.vocab_size, lens)
        results = check_file(path, inputs, reference, tolerance, tools)
        click.echo(f"\n{path} ({meta.get('pipeline.flavour', 'unknown flavour')}), compared with {against}:")
        click.echo(text_table(["tool", "version", "result", "worst |diff| vs reference", "worst |diff| vs ORT",
                               "detail"],
                              [(r.tool, r.version or "-", r.status, r.worst_vs_reference, r.worst_vs_ort, r.detail)
                               for r in results]))
        failed |= any(r.status in ("MISMATCH", "load failed", "run failed") for r in results)
        report.append({"file": str(path), "variant": name, "reference": against, "tolerance": tolerance,
                       "results": [r.to_dict() for r in results]})
    if json_path:
        write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    click.echo(f"\nA tool matches when |diff| <= {tolerance:g} * max(1, max|reference|) at every batch and length; "
               f"'not installed' is not a failure.")
    if failed:
        sys.exit(1)


def _steps(label: str):
    """A step callback that prints progress to stderr on a terminal."""
    if not sys.stderr.isatty():
        return None
    return lambda step: click.echo(f"{label}: {step}", err=True)


@cli.command()
@sized
@click.option("--variant", default="baseline", show_default=True)
@click.option("--seq-len", type=click.IntRange(1, 1024), default=1024, show_default=True)
@weights_opt
@out_opt
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def memory(variant, seq_len, weights, out_dir, json_path) -> None:
    """RAM: parameters and bytes, and measured RSS of torch and ORT (in a fresh interpreter)."""
    from .config import get_variant
    from .runtime.memory import MB, explain, measure_memory
    from .table import text_table

    get_variant(variant)
    check_writable_file(json_path, "--json")
    result = measure_memory(variant, weights, out_dir, seq_len)
    click.echo(text_table(["RSS", "MiB"], [[k, v / MB] for k, v in result["rss_bytes"].items()]))
    click.echo()
    click.echo(text_table(["phase", "RSS change MiB"], [[k, v / MB] for k, v in result["deltas_bytes"].items()]))
    click.echo()
    for line in explain(result):
        click.echo(line)
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")


@cli.command()
@click.option("--variant", default="all", show_default=True, help=VARIANT_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=15, show_default=True)
@weights_opt
@examples_opt
@out_opt
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None)
def compare(variant, threads, repeat, weights, examples, out_dir, json_path, md_path) -> None:
    """Each variant against baseline: logit distances, KL, top-1 agreement, latency ratios."""
    from .analysis.compare import compare_tables, compare_variants
    from .table import markdown_table, text_table

    _check_threads([threads])
    names = _variants(variant)
    check_writable_file(json_path, "--json")
    check_writable_file(md_path, "--markdown")
    result = compare_variants(names, weights, examples, out_dir, threads=threads, repeat=repeat,
                              on_step=_steps("compare"))
    acc_h, acc_rows, lat_h, lat_rows = compare_tables(result)
    click.echo(text_table(acc_h, acc_rows))
    click.echo()
    click.echo(text_table(lat_h, lat_rows))
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    if md_path:
        write_text_atomic(md_path, markdown_table(acc_h, acc_rows) + "\n\n" + markdown_table(lat_h, lat_rows) + "\n")


def _sweep_family(threads, weights, out_dir) -> None:
    from .analysis.sweep import plot_family, sweep_family
    from .table import text_table

    _check_threads([threads])
    check_writable_dir(out_dir)
    result = sweep_family(threads=threads, weights=weights, out_dir=out_dir, on_step=_steps("length"))
    rows = []
    for key, f in result["fits"].items():
        for span, fit in f.items():
            quad = fit["c_ms_per_token2"] * result["seq_lens"][-1] ** 2
            rows.append([key, "all S" if span == "all" else "S >= W", fit["a_ms"], fit["b_ms_per_token"] * 1e3,
                         fit["c_ms_per_token2"] * 1e6, fit["r2"], result["p50_ms"][key][-1], quad])
    click.echo(text_table(["variant/runtime", "fit over", "a ms", "b us/token", "c ns/token^2", "R^2",
                           f"p50 ms at S={result['seq_lens'][-1]}", "c S^2 ms there"], rows))
    plot_family(result, out_dir / "sweep_family.png")
    write_text_atomic(out_dir / "sweep_family.json", json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {out_dir / 'sweep_family.png'}, {out_dir / 'sweep_family.json'}")


@cli.command()
@click.option("--full", is_flag=True, help="wider config grid and more repeats (several minutes)")
@click.option("--family", is_flag=True,
              help="instead: latency vs S of baseline, rope, gqa, sliding-window and rope-gqa-window in torch and "
                   "ort-opt, with the fits that show the window's quadratic term vanish past W")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@weights_opt
@out_opt
def sweep(full, family, threads, weights, out_dir) -> None:
    """Latency vs input length and vs each config parameter; PNG plots and JSON in OUT."""
    if family:
        return _sweep_family(threads, weights, out_dir)
    from .analysis.sweep import (CONFIG_GRID, CONFIG_GRID_FULL, LABELS, plot_config, plot_seq, sweep_config,
                                 sweep_seq)
    from .export import ensure_export
    from .table import text_table
    from .weights import load_state_dict, weights_path

    _check_threads([threads])
    check_writable_dir(out_dir)
    weights = weights_path(weights)
    state_dict = load_state_dict(weights)
    files = {rt: ensure_export("baseline", weights, out_dir, state_dict, fl)
             for rt, fl in (("ort", "portable"), ("ort-opt", "optimized"))}
    seq = sweep_seq(["torch", "ort", "ort-opt"], files, threads, repeat=10 if full else 6, on_step=_steps("length"))
    config = sweep_config(CONFIG_GRID_FULL if full else CONFIG_GRID, threads=threads, repeat=8 if full else 5,
                          on_step=_steps("config"))
    plot_seq(seq, out_dir / "sweep_seq.png")
    plot_config(config, out_dir / "sweep_config.png")
    write_text_atomic(out_dir / "sweep.json", json.dumps({"seq": seq, "config": config}, indent=2) + "\n")
    click.echo(text_table(["runtime", "a ms", "b ms/token", "c ms/token^2", "R^2"],
                          [[rt, f["a_ms"], f["b_ms_per_token"], f["c_ms_per_token2"], f["r2"]]
                           for rt, f in seq["fits"].items()]))
    click.echo()
    click.echo(text_table(["param", "values", "torch slope", "ort slope", "FLOP slope"],
                          [[LABELS[p], ",".join(str(x["value"]) for x in r["rows"]), r["slopes"]["torch"],
                            r["slopes"]["ort"], r["flop_slope"]] for p, r in config["params"].items()]))
    click.echo(f"wrote {out_dir / 'sweep_seq.png'}, {out_dir / 'sweep_config.png'}, {out_dir / 'sweep.json'}")


@cli.command()
@click.option("--full", is_flag=True, help="the dense length sweep, ORT in the wide config sweep, the attention "
                                          "family vs S, more repeats (about 4 minutes)")
@weights_opt
@examples_opt
@out_opt
def report(full, weights, examples, out_dir) -> None:
    """Measure memory, variants, a short bench and sweeps; write OUT/report.md with plots."""
    from .report import build_report

    check_writable_dir(out_dir)
    path = build_report(out_dir, weights, examples, full, on_step=_steps("report"))
    click.echo(f"wrote {path} (numbers in {path.with_suffix('.json')})")


def main() -> None:
    cli(prog_name="pipeline")


if __name__ == "__main__":
    main()
