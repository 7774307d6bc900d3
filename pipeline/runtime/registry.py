"""The registry of runtimes: what a user can pass to --runtime, as data.

A runtime runs one or both graph kinds: the full forward (ids -> logits of every position, for
bench, verify, infer, compare, sweep) and the decoder with a KV cache (generate, bench --mode
decode, verify's decoder checks). Each entry names the artifact flavour it runs for each kind,
the function that builds its runner and the one that times its decode step, as "module:function"
so that reading the registry imports nothing heavy (the CLI reads it at start-up); its roles
(ROLES), by which measurement, checks and the report pick runtimes instead of naming them; and
its device (DEVICES). Adding a runtime is one entry here and one runner.

A forward builder is called as build(runtime, workspace, variant, threads) and returns an object with
run(ids int64 [B, S]) -> logits float32 [B, S, V]; a decoder builder returns an object with
prefill(ids, mask, positions) and step(tokens, mask, positions), both -> last logits [B, V].
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import PipelineError

Graph = Literal["forward", "decoder"]

# where a runtime computes: ONNX Runtime's execution providers, in order of preference, and the
# device name its IO binding places buffers on. Another device is one entry here, and runtimes
# naming it; the sessions and bindings read both from here.
DEVICES: dict[str, tuple[tuple[str, ...], str]] = {
    "cpu": (("CPUExecutionProvider",), "cpu"),
}


def providers(device: str) -> list[str]:
    return list(DEVICES[device][0])


def binding_device(device: str) -> str:
    return DEVICES[device][1]


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    forward: Optional[str] = None  # "module:function" building a forward runner
    decoder: Optional[str] = None  # "module:function" building a decoder
    forward_flavour: Optional[str] = None  # the artifact its forward runner loads (None: no file)
    decoder_flavour: Optional[str] = None
    exact: bool = True  # computes fp32 logits, held to the tolerance; else approximate by design
    requires: tuple[str, ...] = ()  # importable packages it needs beyond our dependencies
    default: bool = True  # in 'all'
    gemm_library: str = "onnxruntime"  # whose 1024^3 GEMM rate its forward is compared with
    slow_setup: bool = False  # a one-off compile of about a minute: bench only, not the report
    weight_bits: int = 32  # bits per matmul weight its decoder reads (its decode step's floor)
    roles: frozenset[str] = frozenset()  # what measuring, checking and reporting pick it for: ROLES
    # "module:function" building a callable that runs one decode step with a cache of B x P held
    # (None: the decoder's own steps after a prompt of P tokens, restarted near the context end)
    step_timer: Optional[str] = None
    step_note: str = ""  # how its decode step is timed, beside its description
    folder_threads: bool = False  # builds set threads in a folder the user keeps (reset after)
    device: str = "cpu"  # a key of DEVICES

    def runs(self, graph: Graph) -> bool:
        return (self.forward if graph == "forward" else self.decoder) is not None

    def flavour(self, graph: Graph) -> Optional[str]:
        return self.forward_flavour if graph == "forward" else self.decoder_flavour

    def missing(self) -> Optional[str]:
        """The first required package that is not installed (None: all are)."""
        return next((p for p in self.requires if importlib.util.find_spec(p) is None), None)

    def builder(self, graph: Graph) -> Callable:
        target = self.forward if graph == "forward" else self.decoder
        if target is None:
            raise PipelineError(f"runtime {self.name!r} does not run the {graph} graph")
        return _resolve(target)

    @property
    def step_description(self) -> str:
        return self.description + (f" ({self.step_note})" if self.step_note else "")


def _resolve(target: str) -> Callable:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


# the roles an entry can hold; measurement, check and report select runtimes by these
ROLES = {
    "reference": "the eager float model: every check's reference and every speed-up's baseline",
    "naive": "the loop without a cache that whole generations are compared with",
    "portable": "standard ONNX ops only: the graph other ONNX tools load",
    "fast": "the fused ORT graph: generation's default and the report's headline",
    "quantized": "the weight-quantized runtime the report times beside the fast one",
    "own-loop": "a library's own generation loop, compared with ours on the same graph",
}


_SESSION, _DECODERS, _PEERS, _STEPS = (
    "pipeline.runtime.session",
    "pipeline.runtime.decoders",
    "pipeline.runtime.peers",
    "pipeline.runtime.step_timers",
)
_ORT_STEP = "inputs and outputs bound once"

RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime(
            "torch",
            "eager PyTorch (with its own KV cache when decoding)",
            forward=f"{_SESSION}:torch_runner",
            decoder=f"{_DECODERS}:torch_decoder",
            gemm_library="torch",
            roles=frozenset({"reference"}),
            step_timer=f"{_STEPS}:torch_step",
        ),
        Runtime(
            "torch-recompute",
            "the naive loop that recomputes the whole context at every step",
            decoder=f"{_DECODERS}:torch_recompute_decoder",
            gemm_library="torch",
            roles=frozenset({"naive"}),
            step_timer=f"{_STEPS}:torch_recompute_step",
        ),
        Runtime(
            "ort",
            "ONNX Runtime on the portable files (standard ops only)",
            forward=f"{_SESSION}:ort_runner",
            decoder=f"{_DECODERS}:ort_decoder",
            forward_flavour="portable",
            decoder_flavour="decoder",
            roles=frozenset({"portable"}),
            step_timer=f"{_STEPS}:ort_step",
            step_note=_ORT_STEP,
        ),
        Runtime(
            "ort-opt",
            "ONNX Runtime on the ORT-optimised files (fused attention, contrib ops)",
            forward=f"{_SESSION}:ort_runner",
            decoder=f"{_DECODERS}:ort_decoder",
            forward_flavour="optimized",
            decoder_flavour="decoder-optimized",
            roles=frozenset({"fast"}),
            step_timer=f"{_STEPS}:ort_step",
            step_note=_ORT_STEP,
        ),
        Runtime(
            "ort-int8",
            "ONNX Runtime, int8: the full forward with dynamic int8 matmuls, the decoder with "
            "8-bit weights (MatMulNBits) (approximate)",
            forward=f"{_SESSION}:ort_runner",
            decoder=f"{_DECODERS}:ort_decoder",
            forward_flavour="int8",
            decoder_flavour="decoder-int8",
            exact=False,
            default=False,
            weight_bits=8,
            roles=frozenset({"quantized"}),
        ),
        Runtime(
            "ort-int4",
            "ONNX Runtime with 4-bit weights in blocks of 32 (MatMulNBits) (approximate)",
            forward=f"{_SESSION}:ort_runner",
            decoder=f"{_DECODERS}:ort_decoder",
            forward_flavour="int4",
            decoder_flavour="decoder-int4",
            exact=False,
            default=False,
            weight_bits=4,
        ),
        Runtime(
            "openvino",
            "OpenVINO's CPU plugin on the portable file, f32",
            forward=f"{_PEERS}:openvino_runner",
            forward_flavour="portable",
            requires=("openvino",),
            default=False,
            gemm_library="openvino",
        ),
        Runtime(
            "openvino-bf16",
            "OpenVINO's CPU plugin on the portable file, bf16 where the CPU has it (approximate)",
            forward=f"{_PEERS}:openvino_runner",
            forward_flavour="portable",
            exact=False,
            requires=("openvino",),
            default=False,
            gemm_library="openvino",
        ),
        Runtime(
            "torch-compile",
            "the eager model under torch.compile(dynamic=True); compile time reported apart",
            forward=f"{_PEERS}:torch_compile_runner",
            default=False,
            gemm_library="torch",
            slow_setup=True,
        ),
        Runtime(
            "genai",
            "onnxruntime-genai's own generation loop on the ORT-optimised decoder",
            decoder=f"{_DECODERS}:genai_decoder",
            requires=("onnxruntime_genai",),
            roles=frozenset({"own-loop"}),
            step_timer=f"{_STEPS}:genai_step",
            step_note="timed over the steps right after a prompt of that length",
            folder_threads=True,
        ),
    )
}


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise PipelineError(
            f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}"
        ) from None


def runtimes_with(role: str) -> list[str]:
    """The runtimes holding this role (ROLES), in registry order."""
    if role not in ROLES:
        raise PipelineError(f"unknown runtime role {role!r}; choose from {', '.join(ROLES)}")
    return [r.name for r in RUNTIMES.values() if role in r.roles]


def runtime_with(role: str) -> str:
    """The one runtime holding this role."""
    (name,) = runtimes_with(role)
    return name


# --runtime words beside the registry's names, per graph kind ('all' is every default runtime)
ALIASES: dict[str, dict[str, list[str]]] = {
    "forward": {
        "ort": ["ort", "ort-opt"],  # both ORT files
        "ort-portable": ["ort"],
        "all+int8": ["torch", "ort", "ort-opt", "ort-int8"],
    },
    "decoder": {
        "ort": ["ort", "ort-opt"],
        "ort-portable": ["ort"],
        "torch": ["torch", "torch-recompute"],
    },
}


def checked_decoders() -> list[str]:
    """The exact decoders with a graph file: the ones whose logits verify feeds step by step."""
    return [
        r.name for r in RUNTIMES.values() if r.runs("decoder") and r.decoder_flavour and r.exact
    ]


def build_step_timer(
    name: str, workspace, variant: str, model, batch: int, past: int, threads: int, steps: int
):
    """A callable running one decode step of the runtime with a cache of `past` tokens per row
    (batch rows); `steps`: how many calls it must serve before restarting."""
    runtime = get_runtime(name)
    target = runtime.step_timer or f"{_STEPS}:decoder_step"
    return _resolve(target)(runtime, workspace, variant, model, batch, past, threads, steps)


def runtime_names(graph: Graph, default_only: bool = False) -> list[str]:
    """The runtimes that run this graph kind, in registry order."""
    return [r.name for r in RUNTIMES.values() if r.runs(graph) and (r.default or not default_only)]


def resolve_runtimes(
    text: str, graph: Graph, aliases: Optional[dict[str, list[str]]] = None
) -> list[str]:
    """A comma-separated list of runtime names (or aliases, or 'all': every default runtime of
    this graph kind) -> the names, each checked to run this graph kind."""
    aliases = {"all": runtime_names(graph, default_only=True), **(aliases or {})}
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        for name in aliases.get(part, [part]):
            runtime = get_runtime(name)
            if not runtime.runs(graph):
                can = ", ".join(runtime_names(graph))
                raise PipelineError(
                    f"runtime {name!r} does not run the {graph} graph; choose from {can}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise PipelineError(
            f"no runtime named in {text!r}; choose from {', '.join(runtime_names(graph))}"
        )
    return names


def build(name: str, graph: Graph, workspace, variant: str, threads: Optional[int] = None):
    """A runner (forward) or decoder (decoder) of this runtime for the variant."""
    runtime = get_runtime(name)
    missing = runtime.missing()
    if missing:
        raise PipelineError(
            f"runtime {name!r} needs the package {missing!r}, which is not installed"
        )
    return runtime.builder(graph)(runtime, workspace, variant, threads)


def text_runtimes() -> list[str]:
    """The full-forward runtimes `all` and `report` score on a text: the default ones, and the
    approximate ones that need no package beyond ours (the quantized files)."""
    return [
        r.name
        for r in RUNTIMES.values()
        if r.runs("forward") and (r.default or (not r.exact and not r.requires))
    ]
