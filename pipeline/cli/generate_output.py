"""What `pipeline generate` prints: tokens streamed as they come, then each row's text (or
JSON) and the timing line."""

from __future__ import annotations

import math

import click

from ..fileio import json_text


def streamer(rows: int, text=None):
    if text is not None and rows > 1:
        return None  # rows of text are printed whole at the end
    if text is not None:
        from ..text import TextStream

        row = TextStream(text)
        stream = lambda step, tokens: click.echo(row.push(int(tokens[0])), nl=False)
        stream.finish = lambda: click.echo(row.rest(), nl=False)
        return stream

    def stream(step: int, tokens) -> None:
        if rows == 1:
            click.echo(("" if step == 0 else " ") + str(int(tokens[0])), nl=False)
        else:
            # a row that has ended shows '-'
            click.echo(f"step {step + 1}: " + " ".join(str(t) if t >= 0 else "-" for t in tokens))

    return stream


def show_result(
    result, rows, text, texts, as_json: bool, stand_in: bool, streamed: bool = True
) -> None:
    """The result after the streamed tokens: JSON, or each row's text and the timing line."""
    new_text = (
        None if text is None else [text.decode(s[len(p) :]) for s, p in zip(result.sequences, rows)]
    )
    if as_json:
        data = result.to_dict() if text is None else {**result.to_dict(), "text": new_text}
        click.echo(json_text(data, indent=None), nl=False)  # strict: no NaN
        return
    if not streamed:  # beam search: each row's best hypothesis, now that it is known
        for i, seq in enumerate(result.sequences):
            shown = texts[i] + new_text[i] if text is not None else ",".join(map(str, seq))
            click.echo(shown if len(rows) == 1 else f"row {i}: {shown}")
    elif len(rows) == 1:
        click.echo()
    elif text is not None:
        for i, (t, p) in enumerate(zip(new_text, texts)):
            click.echo(f"row {i}: {p}{t}")
    if stand_in:
        click.echo(
            "note: the stand-in's weights are random: repeated tokens are expected", err=True
        )
    rate = result.tokens_per_s
    after = f"{rate:.0f} tokens/s after it" if math.isfinite(rate) else "no token after it to time"
    click.echo(
        f"{result.runtime}: {len(rows)} row(s) x {result.new_tokens} new tokens; time to first token "
        f"{result.ttft_ms:.2f} ms; {after}",
        err=True,
    )
