"""`pad`: padding inputs that are already encoded, as transformers' ``tokenizer.pad`` does, so the
tokenizer serves as a ``DataLoader`` collate function or inside ``DataCollatorWithPadding``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TokenizerError
from .batch_encoding import BatchEncoding
from .batching import _PADDING_STRATEGIES, as_tensor

# the per-token fields padding extends, and the value each gets in a padded slot
# (input_ids takes the pad token id; attention_mask is created when absent)
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}


def _tensor_kind(value: Any) -> str | None:
    """'pt' or 'np' when ``value`` is a torch tensor or numpy array (or a list of them)."""
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], int):
        value = value[0]
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        return "pt"
    if module == "numpy":
        return "np"
    return None


def _as_lists(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _to_tensor(key: str, value: Any, kind: str) -> Any:
    """One field as an array of its own shape (a per-example label stays 1-D); ragged rows are an error."""
    import numpy as np

    try:
        array = np.asarray(value)
    except ValueError:
        array = None
    if array is None or array.dtype == object:
        raise TokenizerError(f"{key} cannot form one tensor (rows of different lengths, or values that are not numbers); pad them or return lists")
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)  # empty sequences: numpy's default float would not index an embedding
    return as_tensor(array, kind)


class PaddingMixin:
    """``tokenizer.pad(...)`` for `CodeLlamaTokenizerFast`."""

    def pad(
        self,
        encoded_inputs: Mapping[str, Any] | list[Mapping[str, Any]],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pads encoded inputs: a mapping with ``input_ids`` (one sequence or a batch), or a list of
        such mappings (a batch of examples, as a ``DataLoader`` hands a collate function).

        ``input_ids`` gets the pad token, ``attention_mask`` 0 (it is created when absent unless
        ``return_attention_mask=False``), ``token_type_ids`` 0 and ``special_tokens_mask`` 1; other
        fields are kept as they are. Tensors or arrays in, the same kind out unless ``return_tensors``
        says otherwise.

        >>> tok.pad_token = tok.eos_token
        >>> tok.pad([{"input_ids": [1, 5]}, {"input_ids": [1]}], padding_side="right")["input_ids"]
        [[1, 5], [1, 2]]
        """
        del verbose  # accepted for transformers' signature; nothing here warns
        if isinstance(encoded_inputs, (list, tuple)):
            if not encoded_inputs:
                raise TokenizerError("pad() got an empty list; give at least one encoded example")
            if not all(isinstance(e, Mapping) for e in encoded_inputs):
                raise TypeError("pad() takes a mapping of encoded inputs or a list of mappings")
            keys = list(encoded_inputs[0])
            for k, example in enumerate(encoded_inputs):
                if list(example) != keys:
                    raise TokenizerError(f"example {k} has the fields {sorted(example)}, example 0 has {sorted(keys)}")
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in keys}
        if not isinstance(encoded_inputs, Mapping):
            raise TypeError(f"pad() takes a mapping of encoded inputs or a list of mappings, not {type(encoded_inputs).__name__}")
        if "input_ids" not in encoded_inputs:
            raise TokenizerError(f"pad() needs input_ids among the inputs, got the fields {list(encoded_inputs)}")
        side = self._check_output_options(return_tensors, padding, padding_side)
        ids = encoded_inputs["input_ids"]
        if return_attention_mask is not None:  # transformers reads any value but None by its truth
            return_attention_mask = bool(return_attention_mask)
        if return_tensors is None:
            return_tensors = _tensor_kind(ids)
        data = {key: _as_lists(value) for key, value in encoded_inputs.items()}
        single = bool(data["input_ids"]) and isinstance(data["input_ids"][0], int)
        rows = [data["input_ids"]] if single else data["input_ids"]
        if not single:
            for key, value in data.items():
                if isinstance(value, list) and len(value) != len(rows):
                    raise TokenizerError(f"{key} has {len(value)} rows but input_ids has {len(rows)}")
        if return_attention_mask is not False and "attention_mask" not in data:
            data["attention_mask"] = [1] * len(rows[0]) if single else [[1] * len(r) for r in rows]
        width = self._pad_width(rows, _PADDING_STRATEGIES[padding], max_length, pad_to_multiple_of)
        if width is not None:
            fills = {"input_ids": self.pad_token_id, **_PAD_VALUES}
            for key, fill in fills.items():
                if key not in data or (key == "attention_mask" and return_attention_mask is False):
                    continue
                column = [data[key]] if single else data[key]
                padded = [self._pad_row(row, width, fill, side, key) for row in column]
                data[key] = padded[0] if single else padded
        if return_tensors is not None:
            data = {key: _to_tensor(key, value, return_tensors) for key, value in data.items()}
        return BatchEncoding(data)

    @staticmethod
    def _pad_row(row: Any, width: int, fill: int, side: str, key: str) -> list[int]:
        if not isinstance(row, list):
            raise TypeError(f"{key} rows must be lists of ints, got {type(row).__name__}")
        gap = width - len(row)
        if gap <= 0:
            return row
        return [fill] * gap + row if side == "left" else row + [fill] * gap
