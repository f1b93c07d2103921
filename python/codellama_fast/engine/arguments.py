"""Checks and normalises what callers pass to ``Engine.generate``/``stream``/``infill``/``chat``,
so that a wrong type or value fails at once with a message naming the argument, instead of deep
inside torch or, worse, producing a plausible wrong answer (a float id truncated to an int, a stop
string read as a list of one-letter stops, a NaN temperature sampling token 0)."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Sequence


def _is_int(x: Any) -> bool:
    # bool is an Integral, but True as a token id or a token count is a mistake, not a choice.
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _plain_ints(values: Sequence[Any]) -> bool:
    """Whether every value is exactly an int: the usual token ids, checked at C speed (an 8k-token
    prompt in a fraction of a millisecond, where ``_is_int``'s abstract-class check takes ms)."""
    return all(type(x) is int for x in values)  # exact type: True is no token id


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__} {value!r}")
    return int(value)


def check_real(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not _is_real(value):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _array_as_list(name: str, value: Any, ndims: tuple[int, ...]) -> Any:
    """A tensor or numpy array of one of `ndims` dimensions as nested lists; anything else as given."""
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # a torch tensor or a numpy array
        if value.ndim not in ndims:
            raise ValueError(f"{name} must be {' or '.join(f'{n}-D' for n in ndims)}, got a {value.ndim}-D {type(value).__name__}")
        return value.tolist()
    return value


def stop_strings(value: Any) -> tuple[str, ...]:
    """``stop``: one string or a sequence of strings (a lone string is one stop, not its letters).
    Empty strings are dropped here, once: they would match everywhere."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Sequence) and not isinstance(value, (set, frozenset)):
        raise TypeError(f"stop must be a str or a sequence of str, got {type(value).__name__}")
    bad = [s for s in value if not isinstance(s, str)]
    if bad:
        raise TypeError(f"stop must contain only str, got {type(bad[0]).__name__} {bad[0]!r}")
    return tuple(s for s in value if s)


def stop_ids(value: Any, name: str = "stop_token_ids") -> list[int]:
    """``stop_token_ids`` (or transformers' ``eos_token_id``): one id or a sequence of ids."""
    return [int(value)] if _is_int(value) else token_id_list(name, value)


def token_id_list(name: str, value: Any) -> list[int]:
    """A sequence of token ids (list, tuple, 1-D tensor or array) -> list[int]; floats and other
    types are refused rather than truncated."""
    value = _array_as_list(name, value, (1,))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of int token ids, got {type(value).__name__}")
    if _plain_ints(value):
        return list(value)
    for i, t in enumerate(value):
        if not _is_int(t):
            raise TypeError(f"{name}[{i}] must be an int token id, got {type(t).__name__} {t!r}")
    return [int(t) for t in value]


def prompt_id_lists(input_ids: Any, attention_mask: Any = None, names: tuple[str, str] = ("input_ids", "attention_mask")) -> list[list[int]]:
    """``input_ids``: one prompt (a flat sequence of ids or a 1-D tensor) or a batch (a sequence of
    them, or a 2-D tensor). The engine pads a batch itself, so a padded batch (a tokenizer's
    ``padding=True`` output) needs its ``attention_mask``: the rows keep the positions it marks 1.
    ``names``: the two arguments' names in messages."""
    ids_name, mask_name = names
    input_ids = _array_as_list(ids_name, input_ids, (1, 2))
    if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence):
        raise TypeError(f"{ids_name} must be a list of token ids or a list of such lists, got {type(input_ids).__name__}")
    plain = len(input_ids) > 0 and _plain_ints(input_ids)
    single = plain or len(input_ids) > 0 and all(_is_int(t) for t in input_ids)
    if single:
        rows = [list(input_ids) if plain else [int(t) for t in input_ids]]
    else:
        rows = [token_id_list(f"{ids_name}[{i}]", row) for i, row in enumerate(input_ids)]
    if attention_mask is None:
        return rows
    mask = _array_as_list(mask_name, attention_mask, (1, 2))
    if isinstance(mask, (str, bytes)) or not isinstance(mask, Sequence):
        raise TypeError(f"{mask_name} must be a list of 0/1 values (one per token), got {type(mask).__name__}")
    masks = [list(mask)] if single else [list(m) if isinstance(m, Sequence) else m for m in mask]
    if len(masks) != len(rows) or any(not isinstance(m, list) or len(m) != len(r) for m, r in zip(masks, rows)):
        raise ValueError(f"{mask_name} must have the shape of {ids_name}")
    out = []
    for i, (row, m) in enumerate(zip(rows, masks)):
        if any(v not in (0, 1) or not isinstance(v, (numbers.Integral, bool)) for v in m):
            raise ValueError(f"{mask_name}[{i}] must hold only 0 and 1")
        kept = [k for k, v in enumerate(m) if v]
        if kept and kept[-1] - kept[0] + 1 != len(kept):
            raise ValueError(
                f"{mask_name}[{i}] marks tokens with gaps between them; it must mark one run of tokens (left or right padding)"
            )
        out.append([row[k] for k in kept])
    return out


def infill_pairs(prefix: Any, suffix: Any) -> tuple[list[str], list[str]]:
    """One prefix and suffix (str), or lists of them of one length."""
    if isinstance(prefix, str) or isinstance(suffix, str):
        if not (isinstance(prefix, str) and isinstance(suffix, str)):
            raise TypeError("give prefix and suffix as two str, or as two lists of str")
        return [prefix], [suffix]
    lists = []
    for name, value in (("prefix", prefix), ("suffix", suffix)):
        if isinstance(value, (bytes, bytearray)) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")
        lists.append(list(value))
    prefixes, suffixes = lists
    if len(prefixes) != len(suffixes) or not prefixes:
        raise ValueError(f"a batch needs as many suffixes as prefixes (at least one); got {len(prefixes)} and {len(suffixes)}")
    return prefixes, suffixes


def prompt_texts(prompts: Any) -> list[str]:
    """``prompts``: one str or a sequence of str."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a str or a sequence of str, got {type(prompts).__name__}")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must contain only str, got {type(bad[0]).__name__} {bad[0]!r}; pass token ids as input_ids=")
    return list(prompts)


def warn_past_context(prompt_len: int, max_new_tokens: int, config: Any, stacklevel: int = 2) -> None:
    """Generation may run past the length the model was trained for (RoPE positions it never saw):
    allowed, as in transformers, but said. With linear RoPE scaling the model reaches
    max_position_embeddings x factor positions (how long-context fine-tunes such as 16k Llama 2
    models state their length)."""
    limit, factor = config.max_position_embeddings, config.rope_scaling_factor
    context = f"max_position_embeddings ({limit})"
    if config.rope_scaling_type == "dynamic":
        return  # dynamic NTK scaling is there to run past the trained length
    if config.rope_scaling_type == "linear":
        limit = int(limit * factor)
        context += f" x its linear RoPE scaling factor ({factor:g}) = {limit} positions"
    if prompt_len + max_new_tokens > limit:
        warnings.warn(
            f"the prompt ({prompt_len} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{context}; text past that length may degrade",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def token_sequences(name: str, value: Any) -> tuple[tuple[int, ...], ...]:
    """``bad_words_ids``: a sequence of non-empty token-id sequences (transformers' list of lists)."""
    value = _array_as_list(name, value, (2,))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise TypeError(f"{name} must be a non-empty list of token-id lists (e.g. [[123], [45, 67]]), got {value!r}")
    out = []
    for i, seq in enumerate(value):
        ids = token_id_list(f"{name}[{i}]", seq)
        if not ids:
            raise ValueError(f"{name}[{i}] is empty: each entry is a sequence of at least one token id")
        out.append(tuple(ids))
    return tuple(out)


def sequence_biases(value: Any) -> tuple[tuple[tuple[int, ...], float], ...]:
    """``sequence_bias``: transformers' list of ``[token_ids, bias]`` pairs, or its older dict
    ``{tuple_of_ids: bias}``; biases must be finite (``bad_words_ids`` bans outright)."""
    pairs = list(value.items()) if isinstance(value, dict) else value
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise TypeError(f"sequence_bias must be a non-empty list of [token_ids, bias] pairs or a dict {{(ids...): bias}}, got {value!r}")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"sequence_bias[{i}] must be a [token_ids, bias] pair, got {pair!r}")
        ids = token_id_list(f"sequence_bias[{i}] token ids", pair[0])
        if not ids:
            raise ValueError(f"sequence_bias[{i}] has no token ids")
        bias = check_real(f"sequence_bias[{i}] bias", pair[1])
        assert bias is not None
        out.append((tuple(ids), bias))
    return tuple(out)


def check_ids_in_vocab(name: str, ids: Sequence[int], vocab: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"{name} holds token id {bad[0]}, outside the model's vocabulary of {vocab}")
