"""Finding and reading the files of a tokenizer folder (``tokenizer.json``, ``tokenizer.model``,
``tokenizer_config.json``, ``special_tokens_map.json``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import BUNDLED_TOKENIZER_NAMES, CODELLAMA_TOKENIZER_DIR
from ..errors import InvalidTokenizerFile
from ..hub_cache import local_folder, not_found_hint
from ..jsonfile import read_json_object


@dataclass
class TokenizerFiles:
    folder: Path | None
    tokenizer_json: Path | None
    tokenizer_model: Path | None
    config: dict[str, Any] = field(default_factory=dict)
    special_tokens_map: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, InvalidTokenizerFile)


def resolve(name_or_path: str | os.PathLike[str] | None, revision: str | None = None,
            cache_dir: str | os.PathLike[str] | None = None) -> TokenizerFiles:
    """Where the tokenizer files are. ``None`` or a bundled name means the bundled Code Llama
    files; another repository name ("org/name") is read from the local Hugging Face cache
    (hub_cache; ``cache_dir`` if given) at ``revision``."""
    if name_or_path is None or (isinstance(name_or_path, str) and name_or_path in BUNDLED_TOKENIZER_NAMES):
        folder = CODELLAMA_TOKENIZER_DIR
    else:
        folder = local_folder(name_or_path, revision, cache_dir)
    if folder.is_file():
        # A single file: tokenizer.json or a sentencepiece model.
        if folder.suffix == ".json":
            return TokenizerFiles(None, folder, None)
        return TokenizerFiles(None, None, folder)
    if not folder.is_dir():
        hint = not_found_hint(name_or_path, revision, cache_dir)
        raise FileNotFoundError(
            f"no tokenizer folder or file at {str(name_or_path)!r}{hint}{', or' if hint else ';'} pass a local folder "
            f"holding tokenizer.json and/or tokenizer.model (this package never downloads), or one of the bundled names: "
            f"{', '.join(sorted(BUNDLED_TOKENIZER_NAMES))}"
        )
    tj = folder / "tokenizer.json"
    tm = folder / "tokenizer.model"
    if not tj.is_file() and not tm.is_file():
        raise FileNotFoundError(f"{folder} holds neither tokenizer.json nor tokenizer.model")
    cfg_path = folder / "tokenizer_config.json"
    stm_path = folder / "special_tokens_map.json"
    config = _read_json(cfg_path) if cfg_path.is_file() else {}
    templates = chat_template_files(folder)
    if templates:  # as in transformers: template files take priority over the config's entry
        config["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
    return TokenizerFiles(
        folder,
        tj if tj.is_file() else None,
        tm if tm.is_file() else None,
        config,
        _read_json(stm_path) if stm_path.is_file() else {},
    )


CHAT_TEMPLATE_FILE, CHAT_TEMPLATE_DIR = "chat_template.jinja", "additional_chat_templates"


def chat_template_files(folder: Path) -> dict[str, str]:
    """The chat templates a folder keeps as files (transformers 4.5x saves them so):
    ``chat_template.jinja`` ("default") and ``additional_chat_templates/NAME.jinja``."""
    found: dict[str, str] = {}
    paths = [("default", folder / CHAT_TEMPLATE_FILE)]
    extra = folder / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        paths += [(p.stem, p) for p in sorted(extra.glob("*.jinja"))]
    for name, path in paths:
        if path.is_file():
            try:
                found[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidTokenizerFile(f"{path}: cannot read the chat template ({exc})") from None
    return found


def token_content(value: Any) -> str | None:
    """A token from a config: a plain string or an AddedToken dict (``{"content": ...}``)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise InvalidTokenizerFile(f"cannot read a token from {value!r}")
