"""The result of calling a tokenizer: a dict of model inputs that also reads as attributes and
moves to a device, so it can be splatted into a transformers model's ``generate(**inputs)``."""

from __future__ import annotations

from collections import UserDict
from typing import Any


class BatchEncoding(UserDict):
    """``{"input_ids": ..., "attention_mask": ...}`` plus optional extras (offsets, special-token masks)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state["data"]

    def to(self, device: Any) -> "BatchEncoding":
        """Moves torch tensors to ``device`` (other values stay as they are)."""
        self.data = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in self.data.items()}
        return self
