"""The transformers tokenizer attributes that libraries read (special-token maps, added vocabulary,
length limits) and ``convert_tokens_to_string``, for `CodeLlamaTokenizerFast`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import TokenizerError
from .added_token import AddedToken


class CompatMixin:
    """Read-only views of the vocabulary's special tokens, named as transformers names them."""

    # Code Llama has no separator, classifier or mask token
    sep_token = cls_token = mask_token = None
    sep_token_id = cls_token_id = mask_token_id = None
    pad_token_type_id = 0

    @property
    def additional_special_tokens(self) -> list[str]:
        """The infilling sentinels, in the order the hub config lists them (none on a 32000-piece
        vocabulary), unless ``add_special_tokens`` set the list."""
        if self._additional_special is not None:  # type: ignore[attr-defined]
            return list(self._additional_special)  # type: ignore[attr-defined]
        ids = self._special_ids  # type: ignore[attr-defined]
        return [self._native.id_to_piece(ids[k]) for k in ("prefix", "middle", "suffix", "eot") if ids[k] is not None]  # type: ignore[attr-defined]

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.additional_special_tokens]  # type: ignore[attr-defined]

    @property
    def special_tokens_map(self) -> dict[str, str | list[str]]:
        out: dict[str, str | list[str]] = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.additional_special_tokens:
            out["additional_special_tokens"] = self.additional_special_tokens
        return out

    def get_added_vocab(self) -> dict[str, int]:
        """The special pieces matched in text (``<unk>``, ``<s>``, ``</s>``, the sentinels) and the
        tokens added past the vocabulary, by id."""
        pairs = dict(self._native.special_tokens())  # type: ignore[attr-defined]
        pairs.update((entry[0], entry[1]) for entry in self._native.added_tokens())  # type: ignore[attr-defined]
        return dict(sorted(pairs.items(), key=lambda item: item[1]))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return self.get_added_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """Id → `AddedToken` for the same tokens as `get_added_vocab`, with their flags: the
        vocabulary's special pieces are special and matched in the raw text."""
        out = {i: AddedToken(content, normalized=False, special=True) for content, i in self._native.special_tokens()}  # type: ignore[attr-defined]
        for content, i, special, normalized, lstrip, rstrip, single_word in self._native.added_tokens():  # type: ignore[attr-defined]
            out[i] = AddedToken(content, single_word=single_word, lstrip=lstrip, rstrip=rstrip, normalized=normalized, special=special)
        return dict(sorted(out.items()))

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()  # type: ignore[attr-defined]

    @property
    def backend_tokenizer(self) -> Any:
        """A ``tokenizers.Tokenizer`` that encodes as this tokenizer does (plain text; its
        infilling is this class's own): built from this tokenizer's ``tokenizer.json`` as it is now
        (added tokens, BOS/EOS settings), so libraries that read or run the backend (its
        normalizer, post-processor, ``to_str()``) see the same tokenizer. A new copy each time:
        changing it does not change this tokenizer. Needs the ``tokenizers`` package."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError("backend_tokenizer is a tokenizers.Tokenizer, which needs the tokenizers package "
                              "(pip install tokenizers)") from exc
        return Tokenizer.from_str(self._native.to_json())  # type: ignore[attr-defined]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._num_special(pair)  # type: ignore[attr-defined]

    @property
    def max_len_single_sentence(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(False)  # type: ignore[attr-defined]

    @property
    def max_len_sentences_pair(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(True)  # type: ignore[attr-defined]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """The text of a list of pieces, as ``decode`` gives it for their ids (byte pieces joined into
        characters, the first piece's leading space dropped)."""
        if isinstance(tokens, str):
            raise TypeError("convert_tokens_to_string takes a list of pieces, not a str")
        ids = []
        for k, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"piece {k} is a {type(token).__name__}, not a str")
            found = self._native.piece_to_id(token)  # type: ignore[attr-defined]
            if found is None:
                raise TokenizerError(f"piece {k} ({token!r}) is not in the vocabulary")
            ids.append(found)
        return self.decode(ids)  # type: ignore[attr-defined]
