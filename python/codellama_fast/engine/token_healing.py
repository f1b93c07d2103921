"""Token healing (transformers' ``token_healing=True``). A prompt cut mid-word (``"import num"``,
``"x = foo.ba"``, a trailing space) ends on a token the model seldom saw there: in its training
text the characters that follow would have merged into a longer piece (``▁numpy``). Healing takes
the prompt's last token back and lets the first generated token be any ordinary piece that starts
with it, so the model itself chooses how the word goes on. The result's text is what follows the
original prompt; its first token id is the one that replaced the prompt's last.

transformers' own token healing fails on Llama tokenizers (a ``KeyError`` from the sequence bias it
builds); this one needs no trie package and runs in every decoding mode, since the first choice is
limited by the logits rules (engine.logits_rules, ``first_allowed``)."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class Healed:
    """One prompt after healing: ``prompt`` without its last token and ``allowed`` the ids the
    first generated token may be (that token's extensions, itself included); or, when the
    prompt's end needs no healing, the prompt unchanged and ``allowed`` None."""

    prompt: list[int]
    allowed: tuple[int, ...] | None
    tail: int | None  # the token taken back


class PieceIndex:
    """The vocabulary's ordinary pieces (no control or special tokens, no byte pieces, no added
    tokens) sorted for prefix search."""

    def __init__(self, native: Any) -> None:
        self.native = native
        self.pieces: list[str] = native.pieces()
        ordinary = sorted((p, i) for i, p in enumerate(self.pieces) if self._ordinary(i))
        self.keys = [p for p, _ in ordinary]
        self.ids = [i for _, i in ordinary]

    def _ordinary(self, i: int) -> bool:
        return not self.native.is_special_id(i) and not _BYTE_PIECE.fullmatch(self.pieces[i])

    def extensions(self, piece: str) -> list[int]:
        """The ids of the ordinary pieces that start with ``piece`` (the piece itself included)."""
        out = []
        for k in range(bisect_left(self.keys, piece), len(self.keys)):
            if not self.keys[k].startswith(piece):
                break
            out.append(self.ids[k])
        return out

    def heal(self, prompt: Sequence[int]) -> Healed:
        """A prompt of at least two tokens whose last is an ordinary piece that longer pieces
        extend is healed; any other is left as it is."""
        prompt = list(prompt)
        if len(prompt) < 2 or not 0 <= prompt[-1] < len(self.pieces) or not self._ordinary(prompt[-1]):
            return Healed(prompt, None, None)
        allowed = self.extensions(self.pieces[prompt[-1]])
        if len(allowed) < 2:  # nothing longer starts with it: healing would change nothing
            return Healed(prompt, None, None)
        return Healed(prompt[:-1], tuple(sorted(allowed)), prompt[-1])
