"""Turning encoded id lists into model inputs: padding, attention and special-token masks,
offsets, numpy/torch tensors, and the native fast path for plain padded batches."""

from __future__ import annotations

from typing import Any

from ..errors import TokenizerError
from .batch_encoding import BatchEncoding

_PADDING_STRATEGIES = {False: None, None: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}


def as_tensor(array: Any, kind: str) -> Any:
    """A numpy array as ``return_tensors`` asks: itself for "np", a torch tensor sharing it for "pt"."""
    if kind == "np":
        return array
    try:
        import torch
    except ImportError:
        raise TokenizerError("return_tensors='pt' needs PyTorch; install torch or use return_tensors='np'") from None
    return torch.from_numpy(array)


class BatchingMixin:
    """Output packing for `CodeLlamaTokenizerFast.__call__`."""

    def _padded_fast_path(self, texts, batched, text_pair, suffix, padding, truncation, return_tensors, return_offsets_mapping,
                          return_special_tokens_mask, return_length, pad_to_multiple_of, return_attention_mask,
                          add_special_tokens, split_special_tokens, side) -> BatchEncoding | None:
        """Plain texts padded to the longest, straight into int64 arrays by the native core (no
        per-token Python objects). None when the call needs the general path."""
        if not (batched and return_tensors in ("np", "pt") and _PADDING_STRATEGIES.get(padding) == "longest" and not truncation
                and text_pair is None and suffix is None and not return_offsets_mapping and not return_special_tokens_mask
                and not return_length and not pad_to_multiple_of and self.pad_token_id is not None and texts):
            return None
        if not all(type(t) is str for t in texts) or (self.fill_token and any(self.fill_token in t for t in texts)):
            return None
        try:
            ids, mask = self._call_native(self._native.encode_batch_padded, texts, self._mode(split_special_tokens), add_special_tokens,
                                          self.pad_token_id, side == "left", None, False)
        except TypeError:
            raise self._batch_item_error(texts) from None
        data: dict[str, Any] = {"input_ids": ids}
        if return_attention_mask is not False:
            data["attention_mask"] = mask
        if return_tensors == "pt":
            data = {k: self._to_tensor(v, "pt") for k, v in data.items()}
        return BatchEncoding(data)

    @staticmethod
    def _batch_item_error(items: list[Any]) -> Exception:
        """The precise error for the first unusable batch item (only computed on failure)."""
        for k, item in enumerate(items):
            for part in item if isinstance(item, tuple) else (item,):
                if not isinstance(part, str):
                    return TypeError(f"item {k} of the batch is a {type(part).__name__}, not a str")
                try:
                    part.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return TokenizerError(
                        f"item {k} of the batch is not valid Unicode: {exc.reason} at position {exc.start} "
                        f"({exc.object[exc.start:exc.end]!r}); lone surrogates cannot be tokenized"
                    )
        return TypeError("every item of a batch must be a str or a (prefix, suffix) pair of str")

    @staticmethod
    def _broadcast(value: Any, n: int, batched: bool, name: str) -> list[Any]:
        if value is None:
            return [None] * n
        if batched:
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise TokenizerError(f"{name} must be a list with one entry per text ({n}) in a batch call")
            return list(value)
        return [value]

    def _finish(
        self,
        encoded: list[list[int]],
        batched: bool,
        padding: bool | str,
        max_length: int | None,
        side: str,
        pad_to_multiple_of: int | None,
        return_tensors: str | None,
        return_attention_mask: bool | None,
        return_special_tokens_mask: bool,
        return_length: bool,
        offsets: list[list[tuple[int, int]]] | None = None,
        infill_flags: list[bool] | None = None,
        add_special: bool = True,
        extra: dict[str, list[list[int]]] | None = None,
        infill_masks: list[list[int] | None] | None = None,
    ) -> BatchEncoding:
        """Pads and packs encoded rows. ``extra``: more per-token rows (padded with 0).
        ``infill_masks``: the special-tokens mask of each infilling row (None for the others)."""
        infill_flags = infill_flags or [False] * len(encoded)
        extra = {k: list(rows) for k, rows in (extra or {}).items()}
        strategy = _PADDING_STRATEGIES[padding]
        masks = [[1] * len(ids) for ids in encoded]
        specials = None
        if return_special_tokens_mask:
            given = infill_masks or [None] * len(encoded)
            specials = [list(m) if m is not None else self._added_mask(ids, inf, add_special) for ids, inf, m in zip(encoded, infill_flags, given)]
        width = self._pad_width(encoded, strategy, max_length, pad_to_multiple_of)
        if width is not None:
            pad_id = self.pad_token_id
            for k, ids in enumerate(encoded):
                gap = width - len(ids)
                if gap <= 0:
                    continue
                if offsets is not None:
                    offsets[k] = ([(0, 0)] * gap + offsets[k]) if side == "left" else (offsets[k] + [(0, 0)] * gap)
                for rows in extra.values():
                    rows[k] = ([0] * gap + rows[k]) if side == "left" else (rows[k] + [0] * gap)
                if side == "left":
                    encoded[k] = [pad_id] * gap + ids
                    masks[k] = [0] * gap + masks[k]
                    if specials is not None:
                        specials[k] = [1] * gap + specials[k]
                else:
                    encoded[k] = ids + [pad_id] * gap
                    masks[k] = masks[k] + [0] * gap
                    if specials is not None:
                        specials[k] = specials[k] + [1] * gap
        data: dict[str, Any] = {"input_ids": encoded}
        if return_attention_mask is not False:
            data["attention_mask"] = masks
        if specials is not None:
            data["special_tokens_mask"] = specials
        if offsets is not None:
            data["offset_mapping"] = offsets
        if return_length:
            data["length"] = [sum(m) for m in masks]
        data.update(extra)
        if return_tensors is not None:
            lengths = {len(e) for e in encoded}
            if len(lengths) > 1:
                raise TokenizerError(
                    "the texts have different lengths, so they cannot form one tensor; pass padding=True "
                    "(after setting a pad token) or return lists"
                )
            # one number per row for "length": [B]; every other key holds a row per text: [B, T] ([B, T, 2] for offsets)
            data = {k: self._to_tensor(v, return_tensors, k == "offset_mapping", per_row=k == "length") for k, v in data.items()}
        elif not batched:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data)

    def _check_output_options(self, return_tensors: str | None, padding: bool | str, padding_side: str | None) -> str:
        """Checks the output options shared by ``__call__`` and ``pad``; returns the padding side."""
        if return_tensors not in (None, "np", "pt"):
            raise TokenizerError(f"return_tensors={return_tensors!r} is not supported; use 'np', 'pt' or None")
        if padding not in _PADDING_STRATEGIES:
            raise TokenizerError(f"padding={padding!r} is not one of True, False, 'longest', 'max_length', 'do_not_pad'")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise TokenizerError(f"padding_side must be 'left' or 'right', not {side!r}")
        return side

    def _pad_width(self, rows: list[list[int]], strategy: str | None, max_length: int | None, multiple: int | None) -> int | None:
        """The padded length of `rows` (None: no padding); needs a pad token."""
        if strategy is None:
            return None
        if self.pad_token_id is None:
            raise TokenizerError(
                "padding needs a pad token and this tokenizer has none (Code Llama defines none); "
                "set one first, e.g. tokenizer.pad_token = tokenizer.eos_token"
            )
        if strategy == "max_length":
            if max_length is None:
                raise TokenizerError("padding='max_length' needs max_length")
            width = max_length
        else:
            width = max((len(r) for r in rows), default=0)
        if multiple:
            width = -(-width // multiple) * multiple
        return width

    def _added_mask(self, ids: list[int], is_infill: bool, add_special: bool) -> list[int]:
        """1 where the tokenizer added a token (BOS/EOS, infilling sentinels), 0 for the text's own
        tokens, special-token strings in the text included (as transformers does)."""
        mask = [0] * len(ids)
        if not add_special and not is_infill:
            return mask
        if is_infill:
            sentinels = {self.prefix_id, self.suffix_id, self.middle_id}
            seen = 0
            for k, i in enumerate(ids):
                if (k == 0 and add_special and self._add_bos_token and i == self.bos_token_id) or (i in sentinels and seen < 3):
                    mask[k] = 1
                    seen += i in sentinels
            return mask
        if self._add_bos_token and ids and ids[0] == self.bos_token_id:
            mask[0] = 1
        if self._add_eos_token and ids and ids[-1] == self.eos_token_id:
            mask[-1] = 1
        return mask

    @staticmethod
    def _to_tensor(rows: Any, kind: str, pairs: bool = False, per_row: bool = False) -> Any:
        """`rows` as a [B, T] tensor ([B, T, 2] with `pairs`; [B] with `per_row`: one number per row)."""
        import numpy as np

        array = rows if isinstance(rows, np.ndarray) else np.asarray(rows, dtype=np.int64)
        if not per_row and array.ndim == (2 if pairs else 1):
            array = array.reshape(len(rows), -1, 2) if pairs else array.reshape(len(rows), -1)
        return as_tensor(array, kind)

