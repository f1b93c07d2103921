"""Character offsets of sentencepiece-encoded plain text, read off the pieces themselves: for the
parts of an infilling prompt, which the native core encodes without offsets. Conventions as the
native offsets (and transformers): the dummy-prefix space covers no character, the bytes of one
character all cover that character."""

from __future__ import annotations

from typing import Any

SPACE_MARK = "\u2581"


def _byte_value(piece: str) -> int | None:
    """The byte of a byte-fallback piece (``<0x0A>``), else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def piece_offsets(native: Any, ids: list[int], dummy_prefix: bool, start: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` characters of each token of plain text encoded as ``ids`` (no BOS/EOS),
    counted from ``start``. ``dummy_prefix``: the encoding added sentencepiece's leading space."""
    out: list[tuple[int, int]] = []
    cursor = start
    pending = 0  # byte tokens waiting for the rest of their character
    need = 0
    for k, i in enumerate(ids):
        piece = native.id_to_piece(i)
        byte = _byte_value(piece)
        if byte is not None:
            if pending == 0:
                need = _utf8_length(byte)
            pending += 1
            if pending == need:  # the character is complete: its bytes all cover it
                out.extend([(cursor, cursor + 1)] * pending)
                cursor += 1
                pending = 0
            continue
        width = len(piece)
        if k == 0 and dummy_prefix and piece.startswith(SPACE_MARK):
            width -= 1  # the dummy prefix is no character of the text
            if width == 0:  # the dummy prefix alone: its span is the first character, not consumed
                out.append((cursor, cursor + 1))
                continue
        out.append((cursor, cursor + width))
        cursor += width
    out.extend([(cursor, cursor)] * pending)  # an unfinished character (not from real text)
    return out
