"""Every shortcut of the fast encoder proved exact by test: chunking at boundaries no merge can
cross, the per-thread chunk cache, and the parallel path for long documents, each against the
unsplit BPE (one pass over the whole text) and sentencepiece."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama_fast import CodeLlamaTokenizerFast
from tests.conftest import CODELLAMA_DIR, LLAMA2_MODEL

_TOKS: dict = {}


def _tok(which: str) -> CodeLlamaTokenizerFast:
    if which not in _TOKS:
        _TOKS[which] = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR if which == "codellama" else LLAMA2_MODEL)
    return _TOKS[which]


@pytest.mark.parametrize("which", ["codellama", "llama2"])
def test_chunked_equals_unsplit_on_stdlib(which, stdlib_corpus):
    n = _tok(which)._native
    for _, text in stdlib_corpus[::2]:
        assert n.encode_text(text, True) == n.encode_text_unsplit(text, True)


_ADVERSARIAL = st.lists(st.sampled_from(["▁", " ", "  ", "\n", "\t", "a", "ab", "=", "==", "_", "0", "é", "日本", "🦙", "<", ">", "s", "</", "x▁y", "▁▁", "...", "/*", "*/", "\r\n"]), max_size=80).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_ADVERSARIAL, st.text(max_size=100)).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)), st.booleans())
def test_hypothesis_chunked_equals_unsplit(text, dummy):
    for which in ("codellama", "llama2"):
        n = _tok(which)._native
        assert n.encode_text(text, dummy) == n.encode_text_unsplit(text, dummy)
        assert n.encode_text(text, dummy) == n.encode_text(text, dummy)  # second time from the cache


def test_no_merge_involves_a_byte_piece():
    """Byte-fallback pieces never merge, so characters outside the vocabulary cut chunks safely."""
    merges = json.loads((CODELLAMA_DIR / "tokenizer.json").read_text())["model"]["merges"]
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    byte = lambda p: len(p) == 6 and p.startswith("<0x") and p.endswith(">")  # noqa: E731
    assert not any(byte(a) or byte(b) for a, b in pairs)


def test_long_document_parallel_path_is_exact(stdlib_corpus, sp_codellama):
    doc = "".join(t for _, t in stdlib_corpus[:200])[:1_500_000]
    assert len(doc.encode()) > 1_000_000
    n = _tok("codellama")._native
    ids = n.encode_text(doc, True)
    assert ids == n.encode_text_unsplit(doc, True)
    assert ids == sp_codellama.encode(doc)


def test_caches_are_per_tokenizer(sp_codellama, sp_llama2):
    """Interleaving tokenizers on one thread never serves one's cached ids to the other."""
    a, b = _tok("codellama"), _tok("llama2")
    extra = [CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR, use_json=False) for _ in range(5)]
    texts = ["def f(x):\n    return x", "日本 ▁<PRE> 🦙", "  indent\tme"]
    for _ in range(3):
        for t in texts:
            assert a.encode(t, split_special_tokens=True) == [1] + sp_codellama.encode(t)
            assert b.encode(t, split_special_tokens=True) == [1] + sp_llama2.encode(t)
            for e in extra:
                assert e.encode(t, split_special_tokens=True) == [1] + sp_codellama.encode(t)


def test_cache_memory_is_bounded():
    """Far more unique chunks than the cache holds: resident memory stays bounded."""
    import resource

    t = _tok("codellama")
    t.encode("warm up")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k in range(300_000):
        t.encode(f"identifier_{k}_x = value_{k * 7}")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 120, f"resident memory grew by {grown_mib:.0f} MiB"
