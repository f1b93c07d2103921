"""``CodeLlamaTokenizerFast``: the transformers-compatible policy layer over the native core.

Plain text encodes exactly as sentencepiece does (``[bos] + sp.encode(text)``); infilling follows
Meta's reference (``llama/generation.py``); the rest of the surface follows transformers'
``CodeLlamaTokenizerFast``. Every deliberate difference is listed in ``docs/tokenizer.md``.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import _native
from ..errors import InfillingUnsupported, TokenIdError, TokenizerError
from .adding import AddingMixin, added_tokens_of_folder
from .alignment import PendingAlignment, infill_entries
from .batch_encoding import BatchEncoding
from .batching import _PADDING_STRATEGIES, BatchingMixin, as_tensor
from .chat import ChatMixin
from .collate import PaddingMixin
from .compat import CompatMixin
from .files import TokenizerFiles, resolve, token_content
from .prepare import PrepareMixin
from .saving import SavingMixin

# transformers' TruncationStrategy values that apply to one sequence (an infilling prompt is one too)
_TRUNCATION_STRATEGIES = (None, False, True, "do_not_truncate", "longest_first", "only_first")

if TYPE_CHECKING:
    from .streaming import StreamDecoder

FILL_MARKER: str = _native.FILL_MARKER

# Special-token handling in text: the native core's mode codes.
_MODE_MATCH, _MODE_NO_PREFIX, _MODE_PLAIN = 0, 1, 2



def _ids_list(ids: Any) -> Any:
    """An int, a sequence of ints, a numpy array or a torch tensor (1-D) as something the native
    core takes; element types are checked there (no per-element Python work here)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    if isinstance(ids, (list, tuple)):
        return ids
    raise TypeError(f"token ids must be an int, a list of ints, a numpy array or a tensor, not {type(ids).__name__}")


def _native_ids(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except OverflowError as exc:  # an int beyond 64 bits: an id, just far out of range
        raise TokenIdError(f"a token id is out of range for any vocabulary: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"token ids must be ints: {exc}") from None


# transformers' `clean_up_tokenization` replacements, in its order
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
# decode keywords transformers accepts that change nothing for a sentencepiece tokenizer
_DECODE_NO_OPS = ("use_source_tokenizer", "spaces_between_special_tokens")


def clean_up_tokenization(text: str) -> str:
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text


def _check_decode_kwargs(kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(_DECODE_NO_OPS))
    if unknown:
        raise TypeError(f"decode() got unexpected keyword arguments: {', '.join(unknown)}")


def _check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    return text


def _with_token_types(enc: BatchEncoding) -> BatchEncoding:
    """``token_type_ids`` on request: all 0 (one sequence per text), shaped as ``input_ids``."""
    ids = enc["input_ids"]
    if hasattr(ids, "new_zeros"):  # torch
        types: Any = ids.new_zeros(ids.shape)
    elif hasattr(ids, "shape"):  # numpy
        types = ids * 0
    elif ids and isinstance(ids[0], list):
        types = [[0] * len(row) for row in ids]
    else:
        types = [0] * len(ids)
    enc["token_type_ids"] = types
    return enc


class _Side:
    """A 'left'/'right' setting checked when set: a typo would otherwise pad or cut the wrong end
    silently, at some later call."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: str) -> None:
        if value not in ("left", "right"):
            raise TokenizerError(f"{self.name} must be 'left' or 'right', not {value!r}")
        setattr(obj, self.slot, value)


class CodeLlamaTokenizerFast(BatchingMixin, PaddingMixin, PrepareMixin, ChatMixin, CompatMixin, AddingMixin, SavingMixin):
    """Code Llama tokenizer: sentencepiece-exact encoding, Meta's infilling, HF-compatible API.

    >>> from codellama_fast import CodeLlamaTokenizerFast
    >>> tok = CodeLlamaTokenizerFast.from_pretrained()          # the bundled Code Llama tokenizer
    >>> tok.encode(" Hello")
    [1, 29871, 15043]
    >>> tok.decode(tok.encode("def f(x):\\n    return x"), skip_special_tokens=True)
    'def f(x):\\n    return x'
    >>> tok("a<FILL_ME>")["input_ids"]                            # Meta's infilling prompt
    [1, 32007, 263, 32008, 32009]
    """

    padding_side = _Side()
    truncation_side = _Side()

    model_input_names = ["input_ids", "attention_mask"]
    is_fast = True  # a native (Rust) tokenizer, as transformers' flag means
    vocab_file: str | None = None  # the sentencepiece tokenizer.model it was loaded with, if any (transformers' attribute)

    def __init__(
        self,
        native: Any,
        *,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool | None = None,
        split_special_tokens: bool = False,
        suffix_first: bool = False,
        pad_token: str | None = None,
        padding_side: str = "left",
        truncation_side: str = "right",
        model_max_length: int = 16384,
        fill_token: str | None = FILL_MARKER,
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str = "",
        model_file_bytes: bytes | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._native = native
        self._legacy = legacy
        self.split_special_tokens = bool(split_special_tokens)
        self.suffix_first = bool(suffix_first)
        self._pad_token: str | None = None
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_max_length = int(model_max_length)
        self.fill_token = fill_token
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.name_or_path = name_or_path
        self._model_file_bytes = model_file_bytes
        self._config = dict(config or {})
        self._additional_special: list[str] | None = None  # None: the infilling sentinels
        ids = native.special_ids()
        self._special_ids: dict[str, int | None] = ids
        self._add_bos_token = bool(add_bos_token)
        self._add_eos_token = bool(add_eos_token)
        self.update_post_processor()
        if pad_token is not None:
            self.pad_token = pad_token

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> "CodeLlamaTokenizerFast":
        """Loads a tokenizer folder (``tokenizer.json`` and/or ``tokenizer.model`` plus configs).

        With no argument, or ``"codellama/CodeLlama-7b-hf"`` and the other bundled names, loads the
        Code Llama tokenizer shipped inside the package (offline). Keyword arguments override
        ``tokenizer_config.json`` (``add_bos_token``, ``add_eos_token``, ``legacy``,
        ``split_special_tokens``, ``suffix_first``, ``pad_token``, ``padding_side``...).
        ``use_json=False`` builds from ``tokenizer.model`` even when ``tokenizer.json`` exists.
        Any other repository name ("org/name") loads from the local Hugging Face cache, if a model
        was fetched there (``revision``: a branch, tag or commit, default "main"; ``cache_dir``:
        another cache folder); nothing is downloaded. transformers' ``use_fast``,
        ``local_files_only``, ``trust_remote_code`` and ``token`` are accepted and change nothing.
        """
        use_json = kwargs.pop("use_json", True)
        # transformers' loading arguments whose request always holds here (this is the fast
        # tokenizer; nothing is downloaded, no code from the folder runs): accepted as written
        for name in ("use_fast", "local_files_only", "trust_remote_code", "token"):
            kwargs.pop(name, None)
        files = resolve(pretrained_model_name_or_path, kwargs.pop("revision", None), kwargs.pop("cache_dir", None))
        if files.tokenizer_json is not None and (use_json or files.tokenizer_model is None):
            native = _native.NativeTokenizer.from_json_file(str(files.tokenizer_json))
        else:
            assert files.tokenizer_model is not None
            native = _native.NativeTokenizer.from_spm_file(str(files.tokenizer_model))
            # a folder saved without tokenizer.json keeps its added tokens in the configs
            names = [token_content(t) for k, t in files.special_tokens_map.items() if k.endswith("_token")]
            names += [token_content(t) for t in files.special_tokens_map.get("additional_special_tokens") or []]
            extra = added_tokens_of_folder(files.folder, files.config, [n for n in names if n], native.vocab_size)
            if extra:
                native = native.with_added_tokens(extra)[0]
        model_bytes = files.tokenizer_model.read_bytes() if files.tokenizer_model is not None else None
        tok = cls(native, **cls._settings(files, kwargs), name_or_path=str(pretrained_model_name_or_path or "codellama/CodeLlama-7b-hf"), model_file_bytes=model_bytes)
        tok.vocab_file = None if files.tokenizer_model is None else str(files.tokenizer_model)  # as transformers': the sentencepiece file, if any
        additional = [token_content(t) for t in files.config.get("additional_special_tokens") or files.special_tokens_map.get("additional_special_tokens") or []]
        if additional and all(isinstance(t, str) and native.piece_to_id(t) is not None for t in additional):
            # the infilling sentinels are always among them, as transformers' class adds them on loading
            sentinels = [tok.prefix_token, tok.middle_token, tok.suffix_token, tok.eot_token]
            tok._additional_special = additional + [t for t in sentinels if t is not None and t not in additional]
        return tok

    @staticmethod
    def _settings(files: TokenizerFiles, overrides: dict[str, Any]) -> dict[str, Any]:
        cfg = {**files.config}
        for key in ("pad_token",):
            if key not in cfg and key in files.special_tokens_map:
                cfg[key] = files.special_tokens_map[key]
        known = {
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": None,
            "split_special_tokens": False,
            "suffix_first": False,
            "pad_token": None,
            "padding_side": "left",
            "truncation_side": "right",
            "model_max_length": 16384,
            "fill_token": FILL_MARKER,
            "clean_up_tokenization_spaces": False,
        }
        out: dict[str, Any] = {}
        for key, default in known.items():
            value = overrides.pop(key, cfg.get(key, default))
            if key == "pad_token":
                value = token_content(value)
            if key == "model_max_length" and (value is None or value > 10**12):
                value = default
            out[key] = value
        if overrides:
            raise TypeError(f"unexpected keyword arguments for from_pretrained: {', '.join(sorted(overrides))}")
        out["config"] = cfg
        return out

    # ------------------------------------------------------------------ special tokens

    def _piece(self, key: str) -> str | None:
        i = self._special_ids.get(key)
        return None if i is None else self._native.id_to_piece(i)

    @property
    def bos_token(self) -> str | None:
        return self._piece("bos")

    @property
    def eos_token(self) -> str | None:
        return self._piece("eos")

    @property
    def unk_token(self) -> str:
        return self._piece("unk")  # type: ignore[return-value]

    @property
    def bos_token_id(self) -> int | None:
        return self._special_ids["bos"]

    @property
    def eos_token_id(self) -> int | None:
        return self._special_ids["eos"]

    @property
    def unk_token_id(self) -> int:
        return self._special_ids["unk"]  # type: ignore[return-value]

    @property
    def pad_token(self) -> str | None:
        return self._pad_token

    @pad_token.setter
    def pad_token(self, value: str | None) -> None:
        if value is not None and self._native.piece_to_id(value) is None:
            raise TokenizerError(
                f"pad token {value!r} is not in the vocabulary; use an existing piece such as {self.eos_token!r}, "
                f"or add it first with add_special_tokens({{'pad_token': {value!r}}})"
            )
        self._pad_token = value

    @property
    def pad_token_id(self) -> int | None:
        return None if self._pad_token is None else self._native.piece_to_id(self._pad_token)

    @property
    def prefix_token(self) -> str | None:
        return self._piece("prefix")

    @property
    def suffix_token(self) -> str | None:
        return self._piece("suffix")

    @property
    def middle_token(self) -> str | None:
        return self._piece("middle")

    @property
    def eot_token(self) -> str | None:
        return self._piece("eot")

    @property
    def prefix_id(self) -> int | None:
        return self._special_ids["prefix"]

    @property
    def suffix_id(self) -> int | None:
        return self._special_ids["suffix"]

    @property
    def middle_id(self) -> int | None:
        return self._special_ids["middle"]

    @property
    def eot_id(self) -> int | None:
        return self._special_ids["eot"]

    @property
    def fill_token_id(self) -> None:
        """``<FILL_ME>`` is a marker, never an id."""
        return None

    @property
    def can_infill(self) -> bool:
        return all(self._special_ids[k] is not None for k in ("prefix", "suffix", "middle", "eot"))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._native.piece_to_id(t) for t in self.all_special_tokens]

    @property
    def all_special_tokens(self) -> list[str]:
        """bos, eos, unk, pad, then the additional special tokens (transformers' order), once each."""
        out: list[str] = []
        for token in [self.bos_token, self.eos_token, self.unk_token, self._pad_token, *self.additional_special_tokens]:
            if token is not None and token not in out:
                out.append(token)
        return out

    # ------------------------------------------------------------------ post-processor

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Rebuilds the BOS/EOS post-processor from ``add_bos_token``/``add_eos_token``."""
        self._native.update_post_processor(self._add_bos_token, self._add_eos_token)

    @property
    def legacy(self) -> bool | None:
        return self._legacy

    def _mode(self, split_special_tokens: bool | None = None) -> int:
        split = self.split_special_tokens if split_special_tokens is None else split_special_tokens
        if split:
            return _MODE_PLAIN
        return _MODE_NO_PREFIX if self._legacy is False else _MODE_MATCH

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Pieces of the sentencepiece vocabulary; ``len()`` counts the added tokens too (as transformers)."""
        return self._native.vocab_size - len(self._native.added_tokens())

    def __len__(self) -> int:
        return self._native.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self._native.pieces())}

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        """One id's piece (an int, or a 0-d tensor/array), or a list of pieces for a sequence of ids."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()  # a 0-d tensor becomes an int, as an int it is one piece
        if isinstance(ids, int):
            return _native_ids(self._native.id_to_piece, ids)
        out = []
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        for item in _ids_list(ids):
            try:
                i = operator.index(item)  # numpy ints too; a nested list is not an id
            except TypeError:
                raise TypeError(f"convert_ids_to_tokens takes an id or a sequence of ids, got an item of type {type(item).__name__}") from None
            if i in skip:
                continue
            out.append(_native_ids(self._native.id_to_piece, i))
        return out

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Unknown pieces map to the unknown token's id, as in transformers."""
        if isinstance(tokens, str):
            found = self._native.piece_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]  # type: ignore[misc]

    def tokenize(self, text: str, suffix: str | None = None, add_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        ids = self.encode(text, suffix=suffix, add_special_tokens=add_special_tokens, **kwargs)
        return [self._native.id_to_piece(i) for i in ids]

    # ------------------------------------------------------------------ encoding

    def _call_native(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except UnicodeEncodeError as exc:
            raise TokenizerError(
                f"text is not valid Unicode: {exc.reason} at position {exc.start} ({exc.object[exc.start:exc.end]!r}); "
                "lone surrogates cannot be tokenized"
            ) from None

    def _infill_parts(self, text: str, suffix: str | None) -> tuple[str, str] | None:
        if suffix is not None:
            _check_text(suffix, "suffix")
            if self.fill_token and self.fill_token in text:
                raise TokenizerError(f"give either a text with {self.fill_token} or suffix=, not both")
            return text, suffix
        if self.fill_token and self.fill_token in text:
            count = text.count(self.fill_token)
            if count != 1:
                raise TokenizerError(f"the text contains {count} {self.fill_token} markers; infilling needs exactly one")
            prefix, _, rest = text.partition(self.fill_token)
            return prefix, rest
        return None

    def _require_infill(self) -> None:
        if not self.can_infill:
            raise InfillingUnsupported(
                "this tokenizer's vocabulary has no infilling pieces (▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT>); "
                "infilling needs a 7B/13B Code Llama tokenizer with 32016 pieces"
            )

    def _encode_one(
        self,
        text: str,
        suffix: str | None,
        suffix_first: bool | None,
        add_special_tokens: bool,
        split_special_tokens: bool | None,
    ) -> tuple[list[int], bool]:
        """(ids, is_infill) for one example."""
        _check_text(text)
        parts = self._infill_parts(text, suffix)
        if parts is not None:
            self._require_infill()
            sf = self.suffix_first if suffix_first is None else suffix_first
            add_bos = add_special_tokens and self._add_bos_token
            return self._call_native(self._native.encode_infill, parts[0], parts[1], bool(sf), add_bos), True
        return self._call_native(self._native.encode, text, self._mode(split_special_tokens), add_special_tokens), False

    @staticmethod
    def _suffix_arg(text_pair: Any, suffix: Any) -> Any:
        """transformers' CodeLlamaTokenizerFast reads `text_pair` as the infilling suffix."""
        if text_pair is not None and suffix is not None:
            raise TokenizerError("give the infilling suffix either as text_pair or as suffix=, not both")
        return suffix if suffix is not None else text_pair

    def _num_special(self, pair: bool) -> int:
        n = int(self._add_bos_token) + int(self._add_eos_token)
        return 2 * n if pair else n

    def _truncation_limit(self, truncation: bool | str | None, max_length: int | None, padding: bool | str, verbose: bool) -> int | None:
        """The length to truncate to, or None. As transformers: a ``max_length`` given with no
        ``truncation`` and no padding truncates (with a warning); ``truncation=True`` without
        ``max_length`` uses ``model_max_length`` (16384 for Code Llama, where transformers reads
        the hub's 1e30 placeholder and does not truncate)."""
        if truncation not in _TRUNCATION_STRATEGIES:
            raise TokenizerError(
                f"truncation={truncation!r} is not one of True, False, None, {', '.join(map(repr, _TRUNCATION_STRATEGIES[3:]))} "
                "(a call encodes one sequence per text, so there is no 'only_second')"
            )
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0):
            raise TokenizerError(f"max_length must be a non-negative int, got {max_length!r}")
        if truncation is None and max_length is not None and padding is False:
            if verbose:
                warnings.warn(
                    "max_length is given without truncation, so the texts are truncated to it (as transformers does); "
                    "pass truncation=True to say so, or drop max_length",
                    UserWarning, stacklevel=3,
                )
            truncation = True
        if not truncation or truncation == "do_not_truncate":
            if verbose and max_length is not None and padding is True:
                warnings.warn("max_length is not used: padding=True pads to the longest text and nothing truncates "
                              "(as in transformers); pass padding='max_length' to pad to it, or truncation=True to cut to it",
                              UserWarning, stacklevel=3)
            return None
        return max_length if max_length is not None else self.model_max_length

    @staticmethod
    def _check_truncation_with_padding(limit: int | None, max_length: int | None, padding: bool | str,
                                       pad_to_multiple_of: int | None, stride: Any) -> None:
        if limit is not None and max_length is not None and _PADDING_STRATEGIES[padding] and pad_to_multiple_of and max_length % pad_to_multiple_of:
            # padding past the truncation length would make rows longer than max_length
            raise TokenizerError(f"truncation and padding are both on, but the truncation length ({max_length}) is not a multiple of "
                                 f"pad_to_multiple_of ({pad_to_multiple_of}); make max_length a multiple of it")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise TokenizerError(f"stride must be a non-negative int, got {stride!r}")

    def _windows(self, ids: list[Any], limit: int | None, stride: int, add_special_tokens: bool, is_infill: bool) -> list[list[Any]]:
        """The overflowing windows of one encoding (ids or offsets): the text's tokens cut into
        pieces of ``limit`` minus the special tokens that overlap by ``stride``, from the
        truncation side, each with the special tokens; one window when it fits or with no limit."""
        if limit is None or len(ids) <= limit:
            return [ids]
        if is_infill:
            self._truncate(ids, limit, add_special_tokens, is_infill)  # raises: sentinels cannot be cut
        head, tail = self._special_ends(add_special_tokens)
        size = limit - head - tail
        if size <= 0:
            raise TokenizerError(f"max_length={limit} leaves no room for text beside the {head + tail} special tokens")
        if stride >= size:
            raise TokenizerError(f"stride={stride} must be smaller than max_length minus the special tokens ({size})")
        body, step = ids[head : len(ids) - tail], size - stride
        spans = []
        for k in range(0, len(body), step):
            spans.append((k, min(k + size, len(body))) if self.truncation_side == "right" else (max(0, len(body) - k - size), len(body) - k))
            if k + size >= len(body):
                break
        return [ids[:head] + body[a:b] + ids[len(ids) - tail :] for a, b in spans]

    def _truncate(self, ids: list[int], max_length: int, add_special_tokens: bool, is_infill: bool) -> list[int]:
        if len(ids) <= max_length:
            return ids
        if is_infill:
            raise TokenizerError(
                f"the infilling prompt has {len(ids)} tokens, more than max_length={max_length}; "
                "truncating it would cut the sentinels, so shorten the prefix or suffix instead"
            )
        head, tail = self._special_ends(add_special_tokens)
        if max_length < head + tail:
            raise TokenizerError(f"max_length={max_length} is smaller than the {head + tail} special tokens added to every sequence")
        body = ids[head : len(ids) - tail]
        keep = max_length - head - tail
        body = body[:keep] if self.truncation_side == "right" else body[len(body) - keep :]
        return ids[:head] + body + ids[len(ids) - tail :]

    def _special_ends(self, add_special_tokens: bool) -> tuple[int, int]:
        """(head, tail): the BOS/EOS slots the post-processor puts around a text's tokens."""
        if not add_special_tokens:
            return 0, 0
        return int(self._add_bos_token), int(self._add_eos_token)

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        *,
        suffix: str | None = None,
        suffix_first: bool | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        split_special_tokens: bool | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Ids of one text (a list), or a ``[1, n]`` tensor with ``return_tensors``."""
        if not isinstance(text, str) and not kwargs.get("is_split_into_words"):  # one text whatever the other arguments
            raise TypeError(f"encode takes one text (a str), not {type(text).__name__}; call the tokenizer on a list of texts to encode a batch")
        if return_tensors is not None or kwargs:
            enc = self(
                text, text_pair, suffix=suffix, suffix_first=suffix_first, add_special_tokens=add_special_tokens,
                truncation=truncation, max_length=max_length, split_special_tokens=split_special_tokens,
                return_tensors=return_tensors, **kwargs,
            )
            return enc["input_ids"]
        limit = self._truncation_limit(truncation, max_length, False, True)
        ids, is_infill = self._encode_one(text, self._suffix_arg(text_pair, suffix), suffix_first, add_special_tokens, split_special_tokens)
        if limit is not None:
            ids = self._truncate(ids, limit, add_special_tokens, is_infill)
        return ids

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        text_pair: str | Sequence[str] | None = None,
        text_target: str | Sequence[str] | None = None,
        text_pair_target: str | Sequence[str] | None = None,
        *,
        suffix: str | Sequence[str] | None = None,
        suffix_first: bool | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_length: bool = False,
        padding_side: str | None = None,
        pad_to_multiple_of: int | None = None,
        split_special_tokens: bool | None = None,
        return_token_type_ids: bool | None = None,
        verbose: bool = True,
        return_overflowing_tokens: bool = False,
        stride: int = 0,
        is_split_into_words: bool = False,
    ) -> BatchEncoding:
        """Tokenizes one text or a batch; infilling when a text holds ``<FILL_ME>`` or ``suffix=`` is given.
        With ``return_overflowing_tokens`` and truncation, a text longer than ``max_length`` gives
        several windows that overlap by ``stride`` tokens, each with the special tokens, and
        ``overflow_to_sample_mapping`` says which text each row came from. ``text_target`` (with
        ``text_pair_target`` as its suffix) is encoded with the same options; its ``input_ids``
        become ``labels`` (or the whole result when there is no ``text``), as in transformers."""
        if text_target is not None or text_pair_target is not None:
            options = {k: v for k, v in locals().items() if k not in ("self", "text", "text_pair", "text_target", "text_pair_target")}
            if text_target is None:
                raise TypeError("text_pair_target is the suffix of text_target; give text_target too")
            targets = self(text_target, text_pair_target, **{**options, "suffix": None})
            if text is None:
                return targets
            inputs = self(text, text_pair, **options)
            inputs["labels"] = targets["input_ids"]
            return inputs
        if text is None:
            raise TypeError("give the text to tokenize (text=, or text_target= for labels)")
        side = self._check_output_options(return_tensors, padding, padding_side)
        if return_attention_mask is not None:  # transformers reads any value but None by its truth
            return_attention_mask = bool(return_attention_mask)
        limit = self._truncation_limit(truncation, max_length, padding, verbose)
        self._check_truncation_with_padding(limit, max_length, padding, pad_to_multiple_of, stride)
        if is_split_into_words:
            # transformers' rule: a list of word lists is a batch, a list of words one example
            batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
            if not isinstance(text, (list, tuple)) or (batched and not all(isinstance(t, (list, tuple)) for t in text)):
                raise TypeError("is_split_into_words=True takes a list of words, or a list of such lists for a batch")
            if self._suffix_arg(text_pair, suffix) is not None:
                raise TokenizerError("is_split_into_words=True takes no text_pair or suffix (infilling needs plain text)")
        else:
            batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        n = len(texts)
        fast = None if return_overflowing_tokens or is_split_into_words else self._padded_fast_path(texts, batched, text_pair, suffix, padding, limit is not None, return_tensors, return_offsets_mapping,
                                      return_special_tokens_mask, return_length, pad_to_multiple_of, return_attention_mask,
                                      add_special_tokens, split_special_tokens, side)
        if fast is not None:
            self._attach_alignment(fast, texts, batched, text_pair, suffix, suffix_first, add_special_tokens, split_special_tokens,
                                   limit, stride, False, side, False)
            return _with_token_types(fast) if return_token_type_ids else fast
        suffixes = self._broadcast(self._suffix_arg(text_pair, suffix), n, batched, "suffix")
        encoded: list[list[int]]
        infill_flags: list[bool]
        offsets: list[list[tuple[int, int]]] | None = None
        # an infilling row's special tokens by position: its text may hold the sentinels' pieces too
        infill_masks: list[list[int] | None] = []
        if is_split_into_words:
            encoded, offsets = self._encode_words(texts, split_special_tokens, add_special_tokens)
            offsets = offsets if return_offsets_mapping else None
            infill_flags = [False] * n
        elif return_offsets_mapping:
            encoded, offsets = [], []
            infill_flags = []
            for t, s in zip(texts, suffixes):
                _check_text(t)
                parts = self._infill_parts(t, _check_text(s, "suffix") if s is not None else None)
                if parts is not None:  # each part's characters counted in the part; sentinels (0, 0)
                    entries = self._infill_checked(parts, suffix_first, add_special_tokens)
                    encoded.append([e[0] for e in entries])
                    offsets.append([e[1] or (0, 0) for e in entries])
                    infill_masks.append([int(e[1] is None) for e in entries])
                else:
                    ids, offs = self._call_native(self._native.encode_with_offsets, t, self._mode(split_special_tokens), add_special_tokens)
                    encoded.append(ids)
                    offsets.append([tuple(o) for o in offs])
                    infill_masks.append(None)
                infill_flags.append(parts is not None)
        elif batched:
            for t in texts:
                _check_text(t)
            items: list[Any] = [t if s is None else (t, _check_text(s, "suffix")) for t, s in zip(texts, suffixes)]
            if self.fill_token and any(isinstance(i, tuple) and self.fill_token in i[0] for i in items):
                raise TokenizerError(f"give either a text with {self.fill_token} or suffix=, not both")
            if self.fill_token not in (None, FILL_MARKER):
                items = [self._infill_parts(t, s) or t for t, s in zip(texts, suffixes)]
            if any(isinstance(i, tuple) for i in items) or any(FILL_MARKER in t for t in texts):
                self._require_infill()
            sf = self.suffix_first if suffix_first is None else suffix_first
            try:
                encoded = self._call_native(
                    self._native.encode_batch, items, self._mode(split_special_tokens), add_special_tokens,
                    self.fill_token == FILL_MARKER, bool(sf),
                )
            except TypeError:
                raise self._batch_item_error(items) from None
            infill_flags = [isinstance(i, tuple) or (self.fill_token is not None and self.fill_token in i) for i in items]
        else:
            results = [self._encode_one(t, s, suffix_first, add_special_tokens, split_special_tokens) for t, s in zip(texts, suffixes)]
            encoded = [r[0] for r in results]
            infill_flags = [r[1] for r in results]
        if return_special_tokens_mask and any(infill_flags) and not infill_masks:
            infill_masks = [self._infill_mask(t, s, suffix_first, add_special_tokens) if inf else None for t, s, inf in zip(texts, suffixes, infill_flags)]
        mapping = None
        if return_overflowing_tokens:
            rows = [self._windows(ids, limit, stride, add_special_tokens, inf) for ids, inf in zip(encoded, infill_flags)]
            mapping = [k for k, windows in enumerate(rows) for _ in windows]
            infill_masks = [infill_masks[k] for k in mapping] if infill_masks else []  # an infilling row is one window
            if offsets is not None:
                offsets = [w for o in offsets for w in self._windows(o, limit, stride, add_special_tokens, False)]  # type: ignore[arg-type]
            encoded = [w for windows in rows for w in windows]
            infill_flags = [infill_flags[k] for k in mapping]
            batched = True  # rows are windows, as transformers returns them even for one text
        elif limit is not None:
            if offsets is not None:
                offsets = [self._truncate(o, limit, add_special_tokens, False) for o in offsets]  # type: ignore[arg-type]
            encoded = [self._truncate(ids, limit, add_special_tokens, inf) for ids, inf in zip(encoded, infill_flags)]
        out = self._finish(encoded, batched, padding, max_length, side, pad_to_multiple_of, return_tensors,
                           return_attention_mask, return_special_tokens_mask, return_length, offsets, infill_flags, add_special_tokens,
                           infill_masks=infill_masks or None)
        if mapping is not None:
            import numpy as np

            out["overflow_to_sample_mapping"] = as_tensor(np.asarray(mapping, dtype=np.int64), return_tensors) if return_tensors else mapping
        self._attach_alignment(out, texts, batched, text_pair, suffix, suffix_first, add_special_tokens, split_special_tokens,
                               limit, stride, return_overflowing_tokens, side, is_split_into_words)
        return _with_token_types(out) if return_token_type_ids else out

    def _attach_alignment(self, out: BatchEncoding, *args: Any) -> None:
        """Lets ``out`` compute its token ↔ text mappings when first asked (see alignment.py)."""
        out._alignment_source = PendingAlignment(self, (*args, out["input_ids"]))

    def _infill_mask(self, text: str, suffix: str | None, suffix_first: bool | None, add_special_tokens: bool) -> list[int]:
        """1 for BOS and the sentinels of one infilling prompt, 0 for its text's tokens."""
        parts = self._infill_parts(text, suffix)
        assert parts is not None
        return [int(entry[1] is None) for entry in self._infill_checked(parts, suffix_first, add_special_tokens)]

    def _infill_checked(self, parts: tuple[str, str], suffix_first: bool | None, add_special_tokens: bool) -> list[Any]:
        """The infilling prompt of (prefix, suffix) token by token, with their characters."""
        self._require_infill()
        sf = self.suffix_first if suffix_first is None else suffix_first
        return infill_entries(self, parts[0], parts[1], bool(sf), add_special_tokens and self._add_bos_token)

    def _word_tokens(self, words: Sequence[Any], mode: int) -> list[tuple[int, tuple[int, int], int]]:
        """(id, span within its word, word index) of each token of one pre-split example: each word
        encoded as a text of its own (so each gets sentencepiece's dummy prefix, as transformers
        encodes them)."""
        out = []
        for k, word in enumerate(words):
            ids, offsets = self._call_native(self._native.encode_with_offsets, _check_text(word, f"word {k}"), mode, False)
            out += [(i, tuple(span), k) for i, span in zip(ids, offsets)]
        return out

    def _encode_words(self, examples: list[Any], split_special_tokens: bool | None, add_special_tokens: bool) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        """Ids and offsets (within each word) of pre-split examples, with the special tokens."""
        mode = self._mode(split_special_tokens)
        head, tail = self._special_ends(add_special_tokens)
        encoded, offsets = [], []
        for words in examples:
            tokens = self._word_tokens(words, mode)
            encoded.append([self.bos_token_id] * head + [t[0] for t in tokens] + [self.eos_token_id] * tail)
            offsets.append([(0, 0)] * head + [t[1] for t in tokens] + [(0, 0)] * tail)
        return encoded, offsets

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs: Any) -> BatchEncoding:
        """One text's encoding (transformers' older name for calling the tokenizer on one text)."""
        if not isinstance(text, str):
            raise TypeError(f"encode_plus takes one str; use the tokenizer call or batch_encode_plus for {type(text).__name__}")
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, texts: Sequence[str], **kwargs: Any) -> BatchEncoding:
        return self(list(texts), **kwargs)

    # ------------------------------------------------------------------ special-token helpers

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        bos = [self.bos_token_id] if self._add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self._add_eos_token and self.eos_token_id is not None else []
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise TokenizerError("already_has_special_tokens=True takes one sequence that already holds them")
            # an id outside the vocabulary (negative, or past 2^32) is not a special token, as in transformers
            return [int(0 <= i < 2**32 and self._native.is_special_id(i)) if isinstance(i, int) else int(self._native.is_special_id(i))
                    for i in _ids_list(token_ids_0)]
        bos = [1] if self._add_bos_token else []
        eos = [1] if self._add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        n_special = int(self._add_bos_token) + int(self._add_eos_token)
        out = [0] * (len(token_ids_0) + n_special)
        if token_ids_1 is not None:
            out += [1] * (len(token_ids_1) + n_special)
        return out

    # ------------------------------------------------------------------ decoding

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str:
        """Text of ``token_ids``: byte pieces reassembled, the first token's leading space removed.
        ``clean_up_tokenization_spaces=True`` also applies transformers' English clean-up
        (``" ,"`` → ``","``...); it is off by default, as it changes code."""
        _check_decode_kwargs(kwargs)
        ids = _ids_list(token_ids)
        if ids and isinstance(ids[0], (list, tuple)):
            raise TypeError("decode takes one sequence of ids; use batch_decode for a batch of them")
        text = _native_ids(self._native.decode, ids, bool(skip_special_tokens))
        return self._cleaned(text, clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> list[str]:
        _check_decode_kwargs(kwargs)
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        rows = [_ids_list(s) for s in sequences]
        texts = _native_ids(self._native.decode_batch, rows, bool(skip_special_tokens))
        return [self._cleaned(t, clean_up_tokenization_spaces) for t in texts]

    def _cleaned(self, text: str, clean_up: bool | None) -> str:
        return clean_up_tokenization(text) if (self.clean_up_tokenization_spaces if clean_up is None else clean_up) else text

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """transformers' clean-up of English tokenization artifacts: no space before ``. ? ! ,``
        and the contractions."""
        return clean_up_tokenization(text)

    def decode_infilling(self, token_ids: Any) -> str:
        """The middle of an infilling generation: stops at ``▁<EOT>``, skips special tokens and keeps
        the leading space (Meta's ``decode_infilling``), so ``prefix + middle + suffix`` is the filled text."""
        ids = _ids_list(token_ids)
        eot = self.eot_id
        if eot is not None and eot in ids:
            ids = ids[: ids.index(eot)]
        return self._native.decode_keep_space(ids, True)

    @staticmethod
    def assemble_infill(prefix: str, middle: str, suffix: str) -> str:
        """The filled text: ``prefix + middle + suffix``."""
        return prefix + middle + suffix

    def stream_decoder(self, skip_special_tokens: bool = False, keep_leading_space: bool = False) -> "StreamDecoder":
        from .streaming import StreamDecoder

        return StreamDecoder(self, skip_special_tokens=skip_special_tokens, keep_leading_space=keep_leading_space)

    def __repr__(self) -> str:
        return (
            f"CodeLlamaTokenizerFast(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"add_bos_token={self._add_bos_token}, add_eos_token={self._add_eos_token}, "
            f"infilling={'yes' if self.can_infill else 'no'}, padding_side={self.padding_side!r})"
        )
