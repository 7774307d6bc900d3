"""Values read from a Hugging Face config.json, each checked for its type and range before
anything is sized from it (import-light: the families' readers share these)."""

from __future__ import annotations

import json
import math

from .errors import PipelineError

CONFIG_FILE = "config.json"


def no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")  # Python's json reads NaN and Infinity


def integer(config: dict, key: str, default, where: str) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        # 32.9 was truncated to 32 and "300" read as 300: a config that says something else
        raise PipelineError(f"{where}: {key} must be an integer, got {json.dumps(value)[:40]}")
    if value < 1:
        raise PipelineError(f"{where}: {key} must be >= 1, got {value}")
    return value


def positive_number(config: dict, key: str, default, where: str) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise PipelineError(
            f"{where}: {key} must be a positive finite number, got {json.dumps(value)[:40]}"
        )
    return float(value)


def flag(config: dict, key: str, default: bool, where: str) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise PipelineError(f"{where}: {key} must be true or false, got {json.dumps(value)[:40]}")
    return value
