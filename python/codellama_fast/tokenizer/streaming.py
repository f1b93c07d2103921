"""Incremental decoding: feed ids one at a time, get text deltas whose concatenation equals the
full ``decode`` of the same ids (word spaces kept; bytes of an unfinished UTF-8 character held
back until it completes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .fast import CodeLlamaTokenizerFast

_REPLACEMENT = "\ufffd"


class StreamDecoder:
    """``step(id) -> str`` per token, ``flush() -> str`` at the end.

    The text of the ids since the last emitted boundary is decoded as a window; it is emitted when
    it does not end in a replacement character produced by a byte piece (an unfinished character).
    Windows always start right after a complete character, so decoding them separately gives the
    same text as decoding everything at once.
    """

    def __init__(self, tokenizer: "CodeLlamaTokenizerFast", skip_special_tokens: bool = False, keep_leading_space: bool = False) -> None:
        self._native = tokenizer._native
        self._byte_ids = frozenset(i for i, p in enumerate(self._native.pieces()) if len(p) == 6 and p.startswith("<0x") and p.endswith(">"))
        self._skip = skip_special_tokens
        self._at_start = not keep_leading_space
        self._window: list[int] = []
        self._last_kept: int | None = None  # the newest id the decode keeps (skipped specials aside)

    def step(self, token_id: int) -> str:
        token_id = int(token_id)
        self._window.append(token_id)
        if not (self._skip and self._native.is_special_id(token_id)):
            self._last_kept = token_id
        text = self._native.decode_keep_space(self._window, self._skip)
        # A skipped special token between the bytes of a character does not end it: the full
        # decode drops the token and joins the bytes, so wait as it does.
        if text.endswith(_REPLACEMENT) and self._last_kept in self._byte_ids:
            return ""  # maybe an unfinished character: wait for its next bytes
        self._window.clear()
        return self._emit(text)

    def feed(self, token_ids: Iterable[int]) -> str:
        return "".join(self.step(i) for i in token_ids)

    def flush(self) -> str:
        """Whatever is held back (incomplete bytes decode as U+FFFD each, as in ``decode``)."""
        if not self._window:
            return ""
        text = self._native.decode_keep_space(self._window, self._skip)
        self._window.clear()
        return self._emit(text)

    def _emit(self, text: str) -> str:
        if self._at_start and text:
            self._at_start = False
            if text.startswith(" "):
                return text[1:]
        return text
