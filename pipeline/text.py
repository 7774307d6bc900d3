"""Text in, text out: the tokenizer a checkpoint directory carries, read with `tokenizers`
(no network, no transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import PipelineError

TOKENIZER_JSON, VOCAB_JSON, MERGES_TXT = "tokenizer.json", "vocab.json", "merges.txt"
TOKENIZER_FILES = (TOKENIZER_JSON, VOCAB_JSON, MERGES_TXT, "tokenizer_config.json")


def strict_text(text: str, what: str) -> str:
    """The text, or one line when it is not valid Unicode: bytes that were not UTF-8 reach Python
    as lone surrogates (an argument's undecodable bytes, '\\xed\\xa0\\x80'), which the tokenizer
    cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = text.encode("utf-8", "surrogateescape") if _escaped_only(text) else None
        if raw is not None:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise PipelineError(
                    f"{what} is not valid UTF-8: byte 0x{raw[bad.start]:02x} at offset "
                    f"{bad.start} ({bad.reason})"
                ) from None
        raise PipelineError(
            f"{what} holds a lone surrogate (U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}), which is not text"
        ) from None
    return text


def _escaped_only(text: str) -> bool:
    """Whether every surrogate in the text is one that surrogateescape made from a raw byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


class Text:
    """A byte-level BPE tokenizer checked against the model's vocabulary."""

    def __init__(self, tokenizer, source: Path):
        self.tokenizer, self.source = tokenizer, source

    def encode(self, text: str, max_tokens: Optional[int] = None, what: str = "--prompt") -> list:
        ids = self.tokenizer.encode(strict_text(text, what)).ids
        if not ids:
            raise PipelineError(f"{what} {text!r} encodes to no token")
        if max_tokens is not None and len(ids) > max_tokens:
            raise PipelineError(
                f"{what} is {len(ids)} tokens, more than the model's {max_tokens} positions"
            )
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=False)

    def token_text(self, token: int) -> str:
        return self.decode([token])


def tokenizer_dir(weights: Optional[Path], ids_option: str = "--ids") -> Path:
    if weights is None or not Path(weights).is_dir():
        raise PipelineError(
            "text needs a tokenizer, and only a checkpoint directory given as --weights carries "
            f"one (the spec's stand-in has none): give --weights DIR, or token ids with {ids_option}"
        )
    return Path(weights)


def load_text(weights: Optional[Path], vocab_size: int, ids_option: str = "--ids") -> Text:
    """The directory's tokenizer.json (or vocab.json + merges.txt), refused when it could emit ids
    the model does not have; ids_option: the command's way to give ids instead, for the refusal."""
    folder = tokenizer_dir(weights, ids_option)
    try:
        if (folder / TOKENIZER_JSON).is_file():
            from tokenizers import Tokenizer

            tokenizer, source = (
                Tokenizer.from_file(str(folder / TOKENIZER_JSON)),
                folder / TOKENIZER_JSON,
            )
        elif (folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file():
            from tokenizers import ByteLevelBPETokenizer

            tokenizer = ByteLevelBPETokenizer(str(folder / VOCAB_JSON), str(folder / MERGES_TXT))
            source = folder / VOCAB_JSON
        else:
            raise PipelineError(
                f"{folder} has no tokenizer: expected {TOKENIZER_JSON}, or {VOCAB_JSON} with "
                f"{MERGES_TXT}; use --ids for token ids"
            )
    except PipelineError:
        raise
    except Exception as exc:  # tokenizers raises its own Exception type for unreadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"{folder}: the tokenizer cannot be read: {first[:200]}") from exc
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise PipelineError(
            f"{source}: the tokenizer has {size} tokens but the model's vocabulary has "
            f"{vocab_size}: they do not belong together"
        )
    return Text(tokenizer, source)


class TextStream:
    """Decodes a growing row of ids and returns only the new text; a byte-level token may end
    inside a character, so text ending in U+FFFD waits for the next token."""

    def __init__(self, text: Text):
        self.text, self.ids, self.shown = text, [], ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        decoded = self.text.decode(self.ids)
        if decoded.endswith("\ufffd"):
            return ""
        new, self.shown = decoded[len(self.shown) :], decoded
        return new

    def rest(self) -> str:
        """What push held back (a last token ending inside a character shows as U+FFFD)."""
        decoded = self.text.decode(self.ids)
        new, self.shown = decoded[len(self.shown) :], decoded
        return new
