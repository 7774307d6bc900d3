"""The onnxruntime-genai folder: genai_config.json beside the ORT-optimised decoder graph.

The folder holds the ORT-optimised decoder (decoder_io's names, which are genai's defaults for
its generic "decoder" model type) and a config naming them. The decoder's GroupQueryAttention
takes each row's length from the attention mask, so genai runs it with one cache buffer per layer
shared by past and present (past_present_share_buffer) and a batch of prompts of different
lengths right-padded with pad_token_id, which genai masks out (measured: each row then gives the
tokens of its single run; left padding does not).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..config import ModelConfig, get_variant
from .external import data_path

MODEL_FILE = "model.onnx"
# what genai pads shorter prompts with (and masks out): a prompt of a batch of different lengths
# must not contain it
PAD_TOKEN_ID = 0


def checkpoint_eos(weights, vocab_size: int) -> Optional[list[int]]:
    """The end-of-text ids a checkpoint directory's config.json declares: one id, or a list of
    them (Llama 3 style); None when it declares none. An id outside the vocabulary is refused."""
    from ..errors import PipelineError

    file = Path(weights) / "config.json"
    try:
        eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    if eos is None or eos == []:
        return None
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
        raise PipelineError(
            f"{file}: eos_token_id {json.dumps(eos)[:60]} must be an id or a list of ids in "
            f"0..{vocab_size - 1}"
        )
    return list(dict.fromkeys(ids))


def genai_config(
    cfg: ModelConfig, threads: Optional[int] = None, eos: Optional[list[int]] = None
) -> dict:
    from .io_spec import decoder_io

    io = decoder_io(cfg)
    names = {t.name for t in io.inputs} | {t.name for t in io.outputs}
    assert {"input_ids", "attention_mask", "position_ids", "logits"} <= names
    session = {"log_id": "pipeline", "provider_options": []}
    if threads:
        session["intra_op_num_threads"] = threads
    return {
        "model": {
            "type": "decoder",
            # a checkpoint's own end-of-text id; without one (the stand-in) the last id stands in
            # (genai requires one in the vocabulary: generation ends early if it is produced),
            # 0 for bos/pad (never used: batches are equal-length)
            "bos_token_id": 0,
            # several end-of-text ids (Llama 3) are a list, which genai takes as such
            "eos_token_id": cfg.vocab_size - 1 if not eos else eos[0] if len(eos) == 1 else eos,
            "pad_token_id": PAD_TOKEN_ID,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.max_seq_len,
            "decoder": {
                "session_options": session,
                "filename": MODEL_FILE,
                "head_size": cfg.head_dim,
                "hidden_size": cfg.d_model,
                "num_attention_heads": cfg.n_heads,
                "num_key_value_heads": cfg.kv_heads,
                "num_hidden_layers": cfg.n_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        # GroupQueryAttention reads and writes one [B, N_kv, max_length, h] buffer per layer in
        # place; rows of different lengths are right-padded with pad_token_id, lengths from the mask
        "search": {
            "do_sample": False,
            "max_length": cfg.max_seq_len,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
        },
    }


def genai_dir(variant: str, out_dir) -> Path:
    return Path(out_dir) / f"{variant}.genai"


def _folder_current(folder: Path, source: Path, tokenizer: list, config: dict, sha) -> bool:
    """Whether the folder holds exactly these files' bytes (a tokenizer the checkpoint has since
    changed or dropped makes it stale: genai would give other ids for the same text)."""
    from ..text import TOKENIZER_FILES

    try:
        if json.loads((folder / "genai_config.json").read_text()) != config:
            return False
        if sha(folder / MODEL_FILE) != sha(source):
            return False
        data = data_path(source)  # an external-data pair travels whole
        if data.is_file() and sha(folder / data.name) != sha(data):
            return False
        names = {f.name for f in tokenizer}
        held = {n for n in TOKENIZER_FILES if (folder / n).is_file()}
        synthesized = {"tokenizer_config.json"} if tokenizer else set()
        if held - names - synthesized or not names <= held:
            return False
        return all(sha(folder / f.name) == sha(f) for f in tokenizer)
    except (OSError, ValueError):
        return False


def _tokenizer_files(weights: Path) -> list[Path]:
    """The checkpoint directory's tokenizer files (none for a weights file)."""
    from ..text import TOKENIZER_FILES

    if not Path(weights).is_dir():
        return []
    return [Path(weights) / f for f in TOKENIZER_FILES if (Path(weights) / f).is_file()]


def ensure_genai_folder(
    variant: str,
    weights: Path,
    out_dir: Path,
    state_dict: dict,
    threads: Optional[int] = None,
    weights_sha: Optional[str] = None,
) -> Path:
    """OUT/<variant>.genai/, rebuilt unless every file in it is what it would be made of now:
    its model file the bytes of the current decoder artifact, each tokenizer file the bytes of the
    checkpoint's, its config the one for these threads (None: ONNX Runtime's default)."""
    from ..fileio import check_writable_dir, remove_stale_temps
    from ..reads import file_sha256
    from .onnx_export import ensure_export

    folder = genai_dir(variant, out_dir)
    cfg = get_variant(variant).config
    source = ensure_export(
        variant, weights, out_dir, state_dict, "decoder-optimized", weights_sha=weights_sha
    )
    tokenizer = _tokenizer_files(weights)
    eos = checkpoint_eos(weights, cfg.vocab_size) if tokenizer else None
    if _folder_current(folder, source, tokenizer, genai_config(cfg, threads, eos), file_sha256):
        return folder
    check_writable_dir(out_dir)
    remove_stale_temps(out_dir)  # staging folders a killed process left behind
    staging = Path(
        tempfile.mkdtemp(dir=out_dir, prefix=f".{folder.name}.{os.getpid()}.", suffix=".tmp")
    )
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would become the folder's own mode
        shutil.copyfile(source, staging / MODEL_FILE)
        data = data_path(source)
        if data.is_file():  # model.onnx names it by this name
            shutil.copyfile(data, staging / data.name)
        for file in tokenizer:  # genai's own tokenizer reads them: text in, text out there too
            shutil.copyfile(file, staging / file.name)
        if tokenizer and not (staging / "tokenizer_config.json").exists():
            (staging / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "GPT2Tokenizer"}) + "\n"
            )
        (staging / "genai_config.json").write_text(
            json.dumps(genai_config(cfg, threads, eos), indent=2) + "\n"
        )
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old.tmp")
            os.replace(folder, old)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
