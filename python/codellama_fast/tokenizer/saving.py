"""Saving a tokenizer folder (loadable here and in transformers) and pickling."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import _native
from ..errors import TokenizerError
from .files import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE


class SavingMixin:
    """`save_pretrained`, `save_vocabulary` and pickle support for `CodeLlamaTokenizerFast`."""

    def _tokenizer_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "add_bos_token": self._add_bos_token,
            "add_eos_token": self._add_eos_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self._pad_token,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "legacy": self._legacy,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "split_special_tokens": self.split_special_tokens,
            "tokenizer_class": "CodeLlamaTokenizer",
        }
        if self._additional_special is not None:
            cfg["additional_special_tokens"] = list(self._additional_special)
        templates = self.chat_template
        if templates is not None:
            # in the config (every transformers version reads it there); several as transformers' list
            cfg["chat_template"] = templates if isinstance(templates, str) else [{"name": k, "template": v} for k, v in templates.items()]
        added = self._native.added_tokens()
        if added:
            # what the slow class reads to know the tokens past tokenizer.model
            cfg["added_tokens_decoder"] = {
                str(i): {"content": content, "lstrip": lstrip, "normalized": normalized, "rstrip": rstrip,
                         "single_word": single_word, "special": special}
                for content, i, special, normalized, lstrip, rstrip, single_word in added
            }
        if self.can_infill:
            cfg.update(
                prefix_token=self.prefix_token, suffix_token=self.suffix_token, middle_token=self.middle_token,
                eot_token=self.eot_token, fill_token=self.fill_token, suffix_first=self.suffix_first,
            )
        else:
            cfg.update(prefix_token=None, suffix_token=None, middle_token=None, eot_token=None, fill_token=None)
        return cfg

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> tuple[str, ...]:
        """Writes ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and, when
        known, ``tokenizer.model``. The folder loads here and in transformers."""
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        written = [self._write(folder / "tokenizer.json", self._native.to_json())]
        written.append(self._write(folder / "tokenizer_config.json", json.dumps(self._tokenizer_config(), indent=2, ensure_ascii=False)))
        stm: dict[str, Any] = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token), ("unk_token", self.unk_token), ("pad_token", self._pad_token)) if v is not None}
        if self._additional_special is not None:
            stm["additional_special_tokens"] = list(self._additional_special)
        written.append(self._write(folder / "special_tokens_map.json", json.dumps(stm, indent=2, ensure_ascii=False)))
        written.extend(self._write_chat_templates(folder))
        if self._model_file_bytes is not None:
            written.extend(self.save_vocabulary(folder))
        return tuple(written)

    def _write_chat_templates(self, folder: Path) -> list[str]:
        """The chat templates also as files, as transformers 4.5x saves them (and reads them first,
        so a stale file in the folder must not outlive a changed template)."""
        templates = self.chat_template
        if templates is None:
            return []
        named = {"default": templates} if isinstance(templates, str) else templates
        written = []
        for name, text in named.items():
            if name == "default":
                path = folder / CHAT_TEMPLATE_FILE
            else:
                (folder / CHAT_TEMPLATE_DIR).mkdir(exist_ok=True)
                path = folder / CHAT_TEMPLATE_DIR / f"{name}.jinja"
            written.append(self._write(path, text))
        return written

    def save_vocabulary(self, save_directory: str | os.PathLike[str], filename_prefix: str | None = None) -> tuple[str, ...]:
        """Writes the sentencepiece ``tokenizer.model`` (what the slow tokenizer needs)."""
        if self._model_file_bytes is None:
            raise TokenizerError("this tokenizer was loaded from tokenizer.json alone, so there is no tokenizer.model to save")
        name = f"{filename_prefix}-tokenizer.model" if filename_prefix else "tokenizer.model"
        path = Path(save_directory) / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self._model_file_bytes)
        os.replace(tmp, path)
        return (str(path),)

    @staticmethod
    def _write(path: Path, text: str) -> str:
        # Write beside, then rename: an interrupted save never leaves a half-written file.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return str(path)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_native"}
        state["_native_json"] = self._native.to_json()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        text = state.pop("_native_json")
        state.setdefault("_additional_special", None)  # pickled before add_special_tokens existed
        state.setdefault("clean_up_tokenization_spaces", False)
        self.__dict__.update(state)
        self._native = _native.NativeTokenizer.from_json_str(text, "<pickled tokenizer>")
        self.update_post_processor()

