"""``AddedToken``: a token past (or matched beside) the sentencepiece vocabulary with its matching
flags, as transformers and ``tokenizers`` describe one. ``add_tokens`` takes it, and
``added_tokens_decoder`` gives one per id."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AddedToken:
    """``content`` plus transformers' flags. ``normalized=None`` takes the default for its kind:
    a special token is matched in the raw text, a plain one in the normalized text. ``lstrip`` /
    ``rstrip`` take the whitespace on that side into the token; ``single_word`` matches only
    between non-word characters (transformers' fast-class rules; the slow class's with
    ``legacy=False``)."""

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool | None = None
    special: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.content, str):
            raise TypeError(f"AddedToken content must be a str, not {type(self.content).__name__}")
        if self.normalized is None:
            object.__setattr__(self, "normalized", not self.special)

    def __str__(self) -> str:
        return self.content
