"""Adding tokens past the sentencepiece vocabulary (transformers' ``add_tokens`` and
``add_special_tokens``): a fine-tune's pad token or custom markers. The native core is rebuilt
with the new pieces; a model that uses them needs an embedding row for each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidTokenizerFile, TokenizerError
from ..jsonfile import read_json_object

_FIXED = ("bos_token", "eos_token", "unk_token")
_UNSUPPORTED = ("sep_token", "cls_token", "mask_token")


TokenSpec = tuple[str, bool, bool, bool, bool, bool]
"""(content, special, normalized, lstrip, rstrip, single_word): what the native core adds."""


def _token_spec(token: Any, special: bool) -> TokenSpec:
    """The spec of a str or a ``tokenizers.AddedToken``-like object. A str follows transformers'
    defaults: a special token is matched in the raw text, a plain one in the normalized text, no
    stripping, not only as a single word."""
    if isinstance(token, str):
        return token, special, not special, False, False, False
    content = getattr(token, "content", None)
    if not isinstance(content, str):
        raise TypeError(f"a token to add must be a str or an AddedToken, not {type(token).__name__}")
    is_special = bool(getattr(token, "special", special)) or special
    lstrip, rstrip, single_word = (bool(getattr(token, flag, False)) for flag in ("lstrip", "rstrip", "single_word"))
    return content, is_special, bool(getattr(token, "normalized", not is_special)), lstrip, rstrip, single_word


def added_tokens_of_folder(folder: Path | None, config: Mapping[str, Any], special_names: Sequence[str], vocab_size: int) -> list[TokenSpec]:
    """The tokens past the sentencepiece vocabulary that a folder without ``tokenizer.json``
    declares, in id order: ``added_tokens_decoder`` of ``tokenizer_config.json`` (with their flags),
    else ``added_tokens.json`` (special when named in the special-token map). Their ids must follow
    the vocabulary, as they will be given."""
    by_id: dict[int, TokenSpec] = {}
    decoder = config.get("added_tokens_decoder")
    source = "tokenizer_config.json"
    if isinstance(decoder, Mapping):
        for key, entry in decoder.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(entry, Mapping) and isinstance(entry.get("content"), str)):
                raise InvalidTokenizerFile(f"{source}: added_tokens_decoder entry {key!r} is not an id with a content")
            if int(key) >= vocab_size:
                by_id[int(key)] = _token_spec(_Flags(entry), bool(entry.get("special", False)))
    elif folder is not None and (folder / "added_tokens.json").is_file():
        source = str(folder / "added_tokens.json")
        for content, i in read_json_object(folder / "added_tokens.json", InvalidTokenizerFile).items():
            if not isinstance(i, int) or isinstance(i, bool):
                raise InvalidTokenizerFile(f"{source}: the id of {content!r} is not an int")
            if i >= vocab_size:
                by_id[i] = _token_spec(content, content in special_names)
    ids = sorted(by_id)
    if ids != list(range(vocab_size, vocab_size + len(ids))):
        raise InvalidTokenizerFile(f"{source}: tokens past the {vocab_size}-piece vocabulary must take the ids {vocab_size}, "
                                   f"{vocab_size + 1}, ... in turn; they have {ids}")
    return [by_id[i] for i in ids]


class _Flags:
    """A config entry ({"content", "special", "normalized", ...}) read like an AddedToken."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.content = entry["content"]
        for flag in ("special", "normalized", "lstrip", "rstrip", "single_word"):
            if flag in entry:
                setattr(self, flag, bool(entry[flag]))


class AddingMixin:
    """``add_tokens`` / ``add_special_tokens`` for `CodeLlamaTokenizerFast`."""

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        """Adds tokens (a str, an ``AddedToken`` or a list of them) after the last id; tokens already
        in the vocabulary are left as they are. Returns how many are new.

        >>> tok.add_tokens(["<file_sep>"])
        1
        """
        items = [new_tokens] if isinstance(new_tokens, str) or hasattr(new_tokens, "content") else list(new_tokens)
        specs = [_token_spec(t, bool(special_tokens)) for t in items]
        for content, *_ in specs:
            if not content:
                raise TokenizerError("an added token cannot be empty")
        native, added = self._native.with_added_tokens(specs)  # type: ignore[attr-defined]
        self._native = native
        return int(added)

    def add_special_tokens(self, special_tokens_dict: Mapping[str, Any], replace_additional_special_tokens: bool = True) -> int:
        """Adds special tokens by role: ``pad_token`` (set as the pad token) and
        ``additional_special_tokens`` (matched in raw text, dropped by ``skip_special_tokens``).
        ``bos_token``/``eos_token``/``unk_token`` are fixed by the vocabulary and may only be given
        their current value. Returns how many tokens are new.

        >>> tok.add_special_tokens({"pad_token": "<pad>"})
        1
        """
        if not isinstance(special_tokens_dict, Mapping):
            raise TypeError(f"add_special_tokens takes a dict such as {{'pad_token': '<pad>'}}, not {type(special_tokens_dict).__name__}")
        added = 0
        for key, value in special_tokens_dict.items():
            if key in _FIXED:
                current = getattr(self, key)
                content = _token_spec(value, True)[0]
                if content != current:
                    raise TokenizerError(f"{key} is fixed by the vocabulary ({current!r}); it cannot become {content!r}")
            elif key == "pad_token":
                if value is None:
                    self.pad_token = None  # type: ignore[attr-defined]
                    continue
                added += self.add_tokens([value], special_tokens=True)
                self.pad_token = _token_spec(value, True)[0]  # type: ignore[attr-defined]
            elif key == "additional_special_tokens":
                if isinstance(value, str) or not isinstance(value, Sequence):
                    raise TypeError("additional_special_tokens must be a list of tokens")
                added += self.add_tokens(list(value), special_tokens=True)
                names = [_token_spec(v, True)[0] for v in value]
                previous = [] if replace_additional_special_tokens else self.additional_special_tokens  # type: ignore[attr-defined]
                self._additional_special = previous + [n for n in names if n not in previous]
            elif key in _UNSUPPORTED:
                raise TokenizerError(f"{key} has no role in a Code Llama tokenizer; add the token with additional_special_tokens")
            else:
                raise TokenizerError(f"unknown special-token role {key!r}; use pad_token or additional_special_tokens")
        return added
