"""The result of calling a tokenizer: a dict of model inputs that also reads as attributes and
moves to a device, so it can be splatted into a transformers model's ``generate(**inputs)``."""

from __future__ import annotations

import copy
from collections import UserDict
from typing import Any

from .alignment import AlignmentMethods


class BatchEncoding(AlignmentMethods, UserDict):
    """``{"input_ids": ..., "attention_mask": ...}`` plus optional extras (offsets, special-token
    masks). One returned by a tokenizer call also maps tokens to words, sequences and characters
    (``tokens()``, ``word_ids()``, ``char_to_token()``...), as transformers' fast tokenizers do."""

    @property
    def is_fast(self) -> bool:
        """Whether the token ↔ text mappings are available (transformers' meaning of the flag)."""
        return self._alignment_source is not None or self._alignment_rows is not None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __copy__(self) -> "BatchEncoding":
        return self._with_alignment(BatchEncoding(dict(self.data)))

    def __deepcopy__(self, memo: dict[int, Any]) -> "BatchEncoding":
        return self._with_alignment(BatchEncoding(copy.deepcopy(self.data, memo)))

    def _with_alignment(self, other: "BatchEncoding") -> "BatchEncoding":
        # the mappings describe the call that made this encoding and never change: shared
        other._alignment_source, other._alignment_rows = self._alignment_source, self._alignment_rows
        return other

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state["data"]

    def to(self, device: Any) -> "BatchEncoding":
        """Moves torch tensors to ``device`` (other values stay as they are)."""
        self.data = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in self.data.items()}
        return self
