"""bench --mode decode: one generation step at each cache length, then whole generations."""

from __future__ import annotations

import click

from ...config import get_variant
from ...resources import check_memory
from ...runtime.registry import ALIASES, resolve_runtimes
from ..options import int_list, progress
from . import BenchRequest


def run(request: BenchRequest) -> dict:
    ws, names, thread_list = request.workspace, request.variants, request.threads
    repeat, new_tokens = request.repeat, request.new_tokens
    runtimes = resolve_runtimes(request.runtime, "decoder", ALIASES["decoder"])
    batch_list = int_list(request.batches, "--batch") if request.batches is not None else [1, 8]
    pasts = int_list(request.past_lens, "--past-lens", minimum=0)
    from ...measure.decode import E2E_HEADERS, E2E_REPEATS, STEP_HEADERS, DecodePlan, bench_decode
    from ...table import text_table

    longest = max(pasts) + 32 + new_tokens  # the whole generations' 32-token prompt
    check_memory(
        max(get_variant(n).config.kv_cache_bytes(longest, max(batch_list)) for n in names),
        f"--batch {max(batch_list)} with {longest}-token caches",
        "use a smaller --batch, --past-lens or --new-tokens",
    )

    points = len(names) * len(thread_list) * len(batch_list) * len(pasts)
    rounds = len(names) * len(thread_list) * (E2E_REPEATS + 1)
    with progress(points + rounds, "decode steps, then whole generations") as advance:
        plan = DecodePlan(
            tuple(names),
            tuple(runtimes),
            tuple(thread_list),
            tuple(batch_list),
            tuple(pasts),
            repeat,
            new_tokens,
        )
        data = bench_decode(
            ws,
            plan,
            on_point=lambda p: advance(
                f"steps at threads {p[0].threads}, batch {p[0].batch}, past {p[0].past_len}"
            ),
            on_round=lambda name: advance(f"{new_tokens}-token generations, {name}"),
        )
    from ...report.lines import decode_lines

    data["lines"] = decode_lines(data)
    click.echo(text_table(STEP_HEADERS, data["step_rows"]))
    click.echo()
    click.echo(
        text_table(
            E2E_HEADERS[:5] + [f"total s ({new_tokens} tokens)"] + E2E_HEADERS[6:], data["e2e_rows"]
        )
    )
    click.echo()
    for line in data["lines"]:
        click.echo(line)
    return data
