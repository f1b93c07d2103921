"""Token ↔ text alignment for an encoding (transformers' ``tokens()``, ``word_ids()``,
``sequence_ids()``, ``char_to_token()``...), computed only when first asked for, so calls that never
read it pay nothing.

The rules are those of transformers' fast Code Llama tokenizer:

- a "word" is a span of the text between special or added tokens matched in it; each matched token
  is a word of its own (Code Llama has no pre-tokenizer, so plain text is one word);
- the BOS/EOS the post-processor adds, the infilling sentinels and padding have no word, no
  sequence and no characters;
- an infilling prompt has two sequences: 0, the prefix, and 1, the suffix, in either order; each
  counts characters in its own part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from ..errors import TokenizerError
from .piece_offsets import piece_offsets

# one token while rows are assembled: (id, character span or None, word or None, sequence or None)
_Entry = tuple[int, "tuple[int, int] | None", "int | None", "int | None"]


class CharSpan(NamedTuple):
    """Characters ``[start, end)`` of the original text."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """Tokens ``[start, end)`` of an encoded row."""

    start: int
    end: int


@dataclass(frozen=True)
class RowAlignment:
    """One row of an encoding (a text, or one overflow window), padding included."""

    tokens: list[str]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    offsets: list[tuple[int, int] | None]
    is_infill: bool


def _text_entries(tok: Any, text: str, mode: int, plain: bool, added_ids: frozenset[int], specials: dict[int, str]) -> list[_Entry]:
    """The text's tokens (no BOS/EOS) with their spans and word numbers."""
    ids, offsets = tok._call_native(tok._native.encode_with_offsets, text, mode, False)
    entries: list[_Entry] = []
    word, in_text = -1, False
    for i, (start, end) in zip(ids, offsets):
        # A special piece is "matched" only where the text spells it exactly: the BPE can also
        # build ▁<EOT> out of " <EOT>", and that one belongs to the text around it.
        matched = not plain and (i in added_ids or (i in specials and text[start:end] == specials[i]))
        if matched or not in_text:
            word += 1
        in_text = not matched
        entries.append((i, (start, end), word, 0))
    return entries


def infill_entries(tok: Any, prefix: str, suffix: str, suffix_first: bool, add_bos: bool) -> list[_Entry]:
    """Meta's infilling prompt (rust/infill.rs) with the prefix as sequence 0 and the suffix as 1,
    each token's characters counted in its own part (as transformers counts a pair's)."""
    native = tok._native
    pre_ids = tok._call_native(native.encode_text, prefix, native.add_dummy_prefix)
    suf_ids = tok._call_native(native.encode_text, suffix, False)
    pre = [(i, span, 0, 0) for i, span in zip(pre_ids, piece_offsets(native, pre_ids, native.add_dummy_prefix))]
    suf = [(i, span, 0, 1) for i, span in zip(suf_ids, piece_offsets(native, suf_ids, False))]
    bos = [(tok.bos_token_id, None, None, None)] if add_bos else []
    p, s, m = ((tok.prefix_id, None, None, None), (tok.suffix_id, None, None, None), (tok.middle_id, None, None, None))
    return bos + ([p, s] + suf + [m] + pre if suffix_first else [p] + pre + [s] + suf + [m])


class PendingAlignment:
    """What a tokenizer call needs to compute its rows later: the call's arguments and a copy of
    the tokenizer's settings taken at the call, so later changes (``add_eos_token``,
    ``truncation_side``, added tokens...) do not change an encoding already made. Cheap to make:
    the work happens on the first mapping call."""

    __slots__ = ("cls", "settings", "args")

    def __init__(self, tok: Any, args: tuple[Any, ...]) -> None:
        self.cls, self.settings, self.args = type(tok), dict(tok.__dict__), args

    def __call__(self) -> list[RowAlignment]:
        snap = object.__new__(self.cls)
        snap.__dict__.update(self.settings)
        (texts, batched, text_pair, suffix, suffix_first, add_special_tokens, split_special_tokens,
         limit, stride, overflow, side, split_into_words, input_ids) = self.args
        return compute_rows(snap, texts, snap._broadcast(snap._suffix_arg(text_pair, suffix), len(texts), batched, "suffix"),
                            snap.suffix_first if suffix_first is None else suffix_first, add_special_tokens, split_special_tokens,
                            limit, stride, overflow, side, split_into_words, input_ids)


def compute_rows(snap: Any, texts: list[Any], suffixes: list[Any], suffix_first: bool, add_special_tokens: bool,
                 split_special_tokens: bool | None, limit: int | None, stride: int, overflow: bool, side: str,
                 split_into_words: bool, input_ids: Any) -> list[RowAlignment]:
    """The rows of a call's encoding, built as the call built its ids (the same encoders, then the
    same truncation or overflow windows and padding), token by token with their spans."""
    mode = snap._mode(split_special_tokens)
    plain = mode == 2
    native = snap._native
    specials = {i: content for content, i in native.special_tokens()}
    added_ids = frozenset(entry[1] for entry in native.added_tokens())
    head, tail = snap._special_ends(add_special_tokens)
    per_text: list[tuple[list[_Entry], bool]] = []
    bos, eos = [(snap.bos_token_id, None, None, None)] * head, [(snap.eos_token_id, None, None, None)] * tail
    for text, suffix in zip(texts, suffixes):
        if split_into_words:  # each given word is one word, whatever it holds; offsets within it
            body = [(i, span, k, 0) for i, span, k in snap._word_tokens(text, mode)]
            per_text.append((bos + body + eos, False))
            continue
        parts = snap._infill_parts(text, suffix)
        if parts is not None:
            per_text.append((infill_entries(snap, parts[0], parts[1], bool(suffix_first), add_special_tokens and snap._add_bos_token), True))
            continue
        per_text.append((bos + _text_entries(snap, text, mode, plain, added_ids, specials) + eos, False))
    if overflow:
        windowed = [(w, inf) for entries, inf in per_text for w in snap._windows(entries, limit, stride, add_special_tokens, inf)]
    elif limit is not None:
        windowed = [(snap._truncate(entries, limit, add_special_tokens, inf), inf) for entries, inf in per_text]
    else:
        windowed = per_text
    pad_id = snap.pad_token_id
    out = []
    for (entries, inf), width in zip(windowed, row_widths(input_ids, len(windowed))):
        pads = [(pad_id, None, None, None)] * (width - len(entries))
        entries = pads + entries if side == "left" else entries + pads
        out.append(RowAlignment(
            tokens=[native.id_to_piece(e[0]) for e in entries],
            word_ids=[e[2] for e in entries],
            sequence_ids=[e[3] for e in entries],
            offsets=[e[1] for e in entries],
            is_infill=inf,
        ))
    return out


def row_widths(input_ids: Any, rows: int) -> list[int]:
    """Each row's length in the returned ``input_ids`` (a list, a list of lists or an array)."""
    if hasattr(input_ids, "shape"):
        return [int(input_ids.shape[-1])] * rows
    if input_ids and isinstance(input_ids[0], list):
        return [len(r) for r in input_ids]
    return [len(input_ids)]


class AlignmentMethods:
    """transformers' ``BatchEncoding`` mapping methods, over `RowAlignment` rows. Indices follow
    transformers: ``f(i)`` is token/char/word ``i`` of row 0, ``f(b, i)`` of row ``b``."""

    _alignment_source: Callable[[], list[RowAlignment]] | None = None
    _alignment_rows: list[RowAlignment] | None = None

    def _rows(self, method: str) -> list[RowAlignment]:
        if self._alignment_rows is None:
            if self._alignment_source is None:
                raise TokenizerError(
                    f"{method}() needs the encoding returned by a tokenizer call; "
                    "this one was built otherwise (pad(), pickling, or by hand)"
                )
            self._alignment_rows = self._alignment_source()
        return self._alignment_rows

    def _row(self, method: str, batch_index: int) -> RowAlignment:
        rows = self._rows(method)
        if not -len(rows) <= batch_index < len(rows):
            raise IndexError(f"{method}(): batch index {batch_index} is out of range for {len(rows)} rows")
        return rows[batch_index]

    @staticmethod
    def _split(first: int, second: int | None) -> tuple[int, int]:
        return (0, first) if second is None else (first, second)


    @property
    def n_sequences(self) -> int:
        """2 for an infilling prompt (prefix and suffix), else 1 (as transformers counts the first row)."""
        return 2 if self._rows("n_sequences")[0].is_infill else 1

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The pieces of a row, special tokens and padding included."""
        return list(self._row("tokens", batch_index).tokens)

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's word (None for added BOS/EOS, sentinels and padding)."""
        return list(self._row("word_ids", batch_index).word_ids)

    def words(self, batch_index: int = 0) -> list[int | None]:
        return self.word_ids(batch_index)

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's sequence: 0 (the text, or an infilling prefix), 1 (an infilling suffix), None."""
        return list(self._row("sequence_ids", batch_index).sequence_ids)

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        b, t = self._split(batch_or_token_index, token_index)
        seq = self._row("token_to_sequence", b).sequence_ids
        return seq[t] if -len(seq) <= t < len(seq) else None

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        b, t = self._split(batch_or_token_index, token_index)
        words = self._row("token_to_word", b).word_ids
        return words[t] if -len(words) <= t < len(words) else None

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """The characters a token came from; None for added special tokens and padding."""
        b, t = self._split(batch_or_token_index, token_index)
        row = self._row("token_to_chars", b)
        offsets = row.offsets
        if not -len(offsets) <= t < len(offsets) or offsets[t] is None:
            return None
        return CharSpan(*offsets[t])  # type: ignore[misc]

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0) -> int | None:
        """The first token whose characters include ``char_index`` (None if none does)."""
        b, c = self._split(batch_or_char_index, char_index)
        row = self._row("char_to_token", b)
        offsets = row.offsets
        for k, (span, seq) in enumerate(zip(offsets, row.sequence_ids)):
            if seq == sequence_index and span is not None and span[0] <= c < span[1]:
                return k
        return None

    def char_to_word(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0) -> int | None:
        b, c = self._split(batch_or_char_index, char_index)
        k = self.char_to_token(b, c, sequence_index)
        return None if k is None else self._row("char_to_word", b).word_ids[k]

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0) -> TokenSpan | None:
        """Tokens ``[start, end)`` of a word; None if the word is not in the row."""
        b, w = self._split(batch_or_word_index, word_index)
        row = self._row("word_to_tokens", b)
        hits = [k for k, (word, seq) in enumerate(zip(row.word_ids, row.sequence_ids)) if word == w and seq == sequence_index]
        return TokenSpan(hits[0], hits[-1] + 1) if hits else None

    def word_to_chars(self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0) -> CharSpan | None:
        """Characters ``[start, end)`` of a word; None if the word is not in the row."""
        b, w = self._split(batch_or_word_index, word_index)
        span = self.word_to_tokens(b, w, sequence_index)
        if span is None:
            return None
        offsets = self._row("word_to_chars", b).offsets
        first, last = offsets[span.start], offsets[span.end - 1]
        assert first is not None and last is not None  # a word's tokens come from the text
        return CharSpan(first[0], last[1])
