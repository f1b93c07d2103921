"""Reading the JSON-object files of model and tokenizer folders, with the caller's typed error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The object in `path`; `error` (naming the file) when it is not valid UTF-8 JSON or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data
