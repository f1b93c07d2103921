"""Plain-text ids equal ``[1] + sentencepiece.encode(text)`` (the oracle), for Code Llama and Llama 2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama_fast.tokenizer.fast import CodeLlamaTokenizerFast

SPECIAL_STRINGS = ("<s>", "</s>", "<unk>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", "<FILL_ME>")


def _plain(text: str) -> bool:
    return not any(s in text for s in SPECIAL_STRINGS)


def _mismatches(ours: CodeLlamaTokenizerFast, sp, texts: list[str]) -> list[str]:
    got = ours(texts)["input_ids"]
    want = [[1] + ids for ids in sp.encode(texts)]
    return [t for t, g, w in zip(texts, got, want) if g != w]


@pytest.mark.parametrize("which", ["codellama", "llama2"])
def test_whole_stdlib_files_match_sentencepiece(which, stdlib_corpus, tok, tok_llama2, sp_codellama, sp_llama2):
    ours, sp = (tok, sp_codellama) if which == "codellama" else (tok_llama2, sp_llama2)
    texts = [t for _, t in stdlib_corpus if _plain(t)]
    assert len(texts) > 500
    bad = _mismatches(ours, sp, texts)
    assert not bad, f"{len(bad)} of {len(texts)} files differ from sentencepiece; first: {bad[0][:200]!r}"


@pytest.mark.parametrize("which", ["codellama", "llama2"])
def test_random_chunks_match_sentencepiece(which, stdlib_corpus, tok, tok_llama2, sp_codellama, sp_llama2, rng):
    ours, sp = (tok, sp_codellama) if which == "codellama" else (tok_llama2, sp_llama2)
    chunks = []
    for _ in range(4000):
        _, text = rng.choice(stdlib_corpus)
        start = rng.randrange(max(1, len(text)))
        chunk = text[start : start + rng.choice([1, 2, 7, 40, 300, 2000])]
        if _plain(chunk):
            chunks.append(chunk)
    bad = _mismatches(ours, sp, chunks)
    assert not bad, f"{len(bad)} of {len(chunks)} chunks differ; first: {bad[0]!r}"


def test_single_encode_matches_batch(stdlib_corpus, tok, rng):
    texts = [t for _, t in rng.sample(stdlib_corpus, 50)]
    assert tok(texts)["input_ids"] == [tok.encode(t) for t in texts]


# Text that stresses the normalizer and byte fallback: NUL, CR, tabs, emoji, CJK, RTL, combining
# marks, long runs of spaces, very long identifiers.
_ALPHABET = st.sampled_from(
    list("ab xyz_09\t\n\r\x00\x0b\x0c(){}[]:;.,'\"#\\/") + ["  ", "    ", "\r\n", "é", "e\u0301", "日本語", "中", "🦙", "👩‍💻", "שלום", "\u200b", "\ufeff", "▁", "☺", "\U0001F600", "ﬁ", "Ω"]
)
_TEXT = st.one_of(
    st.text(min_size=0, max_size=80),
    st.lists(_ALPHABET, max_size=60).map("".join),
    st.builds(lambda n, c: c * n, st.integers(1, 300), st.sampled_from([" ", "a", "_", "\t", "0", "é"])),
).filter(lambda s: _plain(s) and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_hypothesis_text_matches_sentencepiece_codellama(text):
    from tests.conftest import CODELLAMA_DIR

    sp = _cached_sp(str(CODELLAMA_DIR / "tokenizer.model"))
    ours = _cached_tok(str(CODELLAMA_DIR), False)
    ids = ours.encode(text)
    assert ids == [1] + sp.encode(text)
    # "▁" is sentencepiece's space mark, so it decodes as a space (sentencepiece does the same).
    assert ours.decode(ids, skip_special_tokens=True) == text.replace("▁", " ")
    assert ours.decode(ids, skip_special_tokens=True) == sp.decode(ids[1:])


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_hypothesis_text_matches_sentencepiece_llama2(text):
    from tests.conftest import LLAMA2_MODEL

    sp = _cached_sp(str(LLAMA2_MODEL))
    ours = _cached_tok(str(LLAMA2_MODEL), False)
    assert ours.encode(text) == [1] + sp.encode(text)


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_hypothesis_json_and_model_give_identical_ids(text):
    from tests.conftest import CODELLAMA_DIR

    a = _cached_tok(str(CODELLAMA_DIR), False)
    b = _cached_tok(str(CODELLAMA_DIR), True)
    assert a.encode(text) == b.encode(text)
    assert a.encode(text, split_special_tokens=True) == b.encode(text, split_special_tokens=True)


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_hypothesis_tok512_matches_sentencepiece(text):
    from tests.conftest import STORIES_DIR

    sp = _cached_sp(str(STORIES_DIR / "tok512.model"))
    ours = _cached_tok(str(STORIES_DIR / "tok512.model"), False)
    assert ours.encode(text) == [1] + sp.encode(text)


def test_json_and_model_identical_on_corpus(stdlib_corpus, tok, tok_from_model):
    texts = [t for _, t in stdlib_corpus[::3]]
    assert tok(texts)["input_ids"] == tok_from_model(texts)["input_ids"]


def test_spec_examples(tok):
    assert tok.encode(" Hello") == [1, 29871, 15043]
    assert tok.encode(" <PRE>", split_special_tokens=True) == [1, 29871, 32007]
    assert tok.convert_tokens_to_ids(["\r", "<0x0A>", "<0x09>", "☺"]) == [30004, 13, 12, 31171]
    assert tok.encode("") == [1]


_SP_CACHE: dict = {}
_TOK_CACHE: dict = {}


def _cached_sp(path: str):
    import sentencepiece as spm

    if path not in _SP_CACHE:
        _SP_CACHE[path] = spm.SentencePieceProcessor(model_file=path)
    return _SP_CACHE[path]


def _cached_tok(path: str, from_model: bool) -> CodeLlamaTokenizerFast:
    key = (path, from_model)
    if key not in _TOK_CACHE:
        _TOK_CACHE[key] = CodeLlamaTokenizerFast.from_pretrained(path, use_json=not from_model)
    return _TOK_CACHE[key]
