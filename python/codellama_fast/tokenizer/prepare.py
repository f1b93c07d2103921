"""transformers' ``prepare_for_model`` and ``truncate_sequences`` for `CodeLlamaTokenizerFast`: ids
(already tokenized) made into model inputs, with special tokens, truncation and padding.

A pair is a plain pair here (``<s> A </s>? <s> B </s>?`` as ``build_inputs_with_special_tokens``
makes it, as transformers' sentencepiece class does); transformers' fast Code Llama class fails on
pairs with a ``TypeError``. Where a strategy cannot remove enough tokens, transformers logs an
error and returns the sequences too long; here it is a ``TokenizerError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import TokenizerError
from .batch_encoding import BatchEncoding

_STRATEGIES = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first", "only_second": "only_second",
               False: None, None: None, "do_not_truncate": None}


def _id_list(ids: Any, what: str) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{what} must be a list of token ids, not {type(ids).__name__}")
    out = list(ids)
    for k, i in enumerate(out):
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{what}[{k}] is a {type(i).__name__}, not an int token id")
    return out


class PrepareMixin:
    """``prepare_for_model`` and ``truncate_sequences``, named and ordered as transformers'."""

    def truncate_sequences(
        self,
        ids: list[int],
        pair_ids: list[int] | None = None,
        num_tokens_to_remove: int = 0,
        truncation_strategy: str | bool = "longest_first",
        stride: int = 0,
    ) -> tuple[list[int], list[int] | None, list[int]]:
        """Removes `num_tokens_to_remove` tokens from the `truncation_side` end. Returns (ids,
        pair_ids, overflowing): the tokens cut from the one sequence a strategy cuts
        ("only_first", "only_second", or "longest_first" on one sequence) plus `stride` tokens of
        context before them; "longest_first" on a pair cuts from the longer one, then from both
        in turn, and returns no overflowing tokens (as transformers)."""
        ids = _id_list(ids, "ids")
        pair_ids = None if pair_ids is None else _id_list(pair_ids, "pair_ids")
        if truncation_strategy not in _STRATEGIES:
            raise TokenizerError(f"truncation_strategy={truncation_strategy!r} is not one of 'longest_first', 'only_first', "
                                 "'only_second', 'do_not_truncate'")
        strategy = _STRATEGIES[truncation_strategy]
        if num_tokens_to_remove <= 0 or strategy is None:
            return ids, pair_ids, []
        side = self.truncation_side  # type: ignore[attr-defined]
        if strategy == "longest_first" and pair_ids is not None:
            # the longer one first, down to the other's length; the rest from both halves, the
            # pair giving the odd token
            gap = min(abs(len(ids) - len(pair_ids)), num_tokens_to_remove)
            rest = num_tokens_to_remove - gap
            from_ids = (gap if len(ids) > len(pair_ids) else 0) + rest // 2
            from_pair = num_tokens_to_remove - from_ids
            if from_ids > len(ids) or from_pair > len(pair_ids):
                raise TokenizerError(f"cannot remove {num_tokens_to_remove} tokens from sequences of {len(ids)} and {len(pair_ids)}")
            return self._cut(ids, from_ids, side), self._cut(pair_ids, from_pair, side), []
        if strategy == "only_second" and pair_ids is None:
            raise TokenizerError("truncation_strategy='only_second' needs pair_ids")
        target = pair_ids if strategy == "only_second" else ids
        assert target is not None
        if len(target) <= num_tokens_to_remove:
            which = "pair_ids" if strategy == "only_second" else "ids"
            raise TokenizerError(f"{which} has {len(target)} tokens, so removing {num_tokens_to_remove} with "
                                 f"truncation_strategy={strategy!r} leaves none; truncate the other sequence or both "
                                 "('longest_first'), or allow a longer max_length")
        window = min(len(target), stride + num_tokens_to_remove)
        overflowing = target[-window:] if side == "right" else target[:window]
        cut = self._cut(target, num_tokens_to_remove, side)
        return (ids, cut, overflowing) if strategy == "only_second" else (cut, pair_ids, overflowing)

    @staticmethod
    def _cut(ids: list[int], n: int, side: str) -> list[int]:
        if n <= 0:
            return ids
        return ids[:-n] if side == "right" else ids[n:]

    def prepare_for_model(
        self,
        ids: list[int],
        pair_ids: list[int] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        prepend_batch_axis: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Model inputs from token ids (one sequence, or a pair): special tokens added as the
        tokenizer adds them, truncated to `max_length` by the `truncation` strategy (True:
        "longest_first"; also "only_first", "only_second"), padded, with the masks asked for.
        ``max_length`` without ``truncation`` and without padding truncates, as in a call."""
        if kwargs:
            raise TypeError(f"prepare_for_model() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        ids = _id_list(ids, "ids")
        pair_ids = None if pair_ids is None else _id_list(pair_ids, "pair_ids")
        if return_offsets_mapping:
            raise TokenizerError("return_offsets_mapping needs the text; prepare_for_model takes ids (call the tokenizer on the text)")
        if truncation not in _STRATEGIES:
            raise TokenizerError(f"truncation={truncation!r} is not one of True, False, None, 'longest_first', 'only_first', "
                                 "'only_second', 'do_not_truncate'")
        if return_token_type_ids and not add_special_tokens:
            raise TokenizerError("return_token_type_ids=True needs add_special_tokens=True: the token types follow the "
                                 "special tokens (as in transformers)")
        limit = self._truncation_limit(  # type: ignore[attr-defined]
            "longest_first" if _STRATEGIES[truncation] == "only_second" else truncation, max_length, padding, verbose)
        self._check_truncation_with_padding(limit, max_length, padding, pad_to_multiple_of, stride)  # type: ignore[attr-defined]
        strategy = _STRATEGIES[truncation] if truncation is not None or limit is None else "longest_first"
        if return_overflowing_tokens and strategy == "longest_first" and pair_ids is not None:
            raise TokenizerError("overflowing tokens of a pair need truncation='only_first' or 'only_second' "
                                 "('longest_first' cuts both, as in transformers)")
        pair = pair_ids is not None
        total = len(ids) + (len(pair_ids) if pair_ids is not None else 0) + (self.num_special_tokens_to_add(pair) if add_special_tokens else 0)  # type: ignore[attr-defined]
        overflowing: list[int] = []
        if limit is not None and total > limit:
            ids, pair_ids, overflowing = self.truncate_sequences(ids, pair_ids, total - limit, strategy or "longest_first", stride)
        data: dict[str, Any] = {}
        if return_overflowing_tokens:
            data["overflowing_tokens"] = overflowing
            bound = limit if limit is not None else max_length
            data["num_truncated_tokens"] = total - bound if bound is not None else 0
        if add_special_tokens:
            data["input_ids"] = self.build_inputs_with_special_tokens(ids, pair_ids)  # type: ignore[attr-defined]
            types = self.create_token_type_ids_from_sequences(ids, pair_ids)  # type: ignore[attr-defined]
            specials = self.get_special_tokens_mask(ids, pair_ids)  # type: ignore[attr-defined]
        else:
            data["input_ids"] = ids + (pair_ids or [])
            types = [0] * len(data["input_ids"])
            specials = [0] * len(data["input_ids"])
        if return_token_type_ids:
            data["token_type_ids"] = types
        if return_special_tokens_mask:
            data["special_tokens_mask"] = specials
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names  # type: ignore[attr-defined]
        out = self.pad(data, padding=padding, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,  # type: ignore[attr-defined]
                       padding_side=padding_side, return_attention_mask=return_attention_mask)
        if return_length:
            out["length"] = len(out["input_ids"])
        if return_tensors is not None:
            data = {key: ([value] if prepend_batch_axis else value) for key, value in out.items()}
            return self.pad(data, padding=False, return_attention_mask=False, return_tensors=return_tensors)  # type: ignore[attr-defined]
        if prepend_batch_axis:
            return BatchEncoding({key: [value] for key, value in out.items()})
        return out
