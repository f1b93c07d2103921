"""Streaming decode, concurrency (threads, fork after parallel use) and bad input."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama_fast import CodeLlamaTokenizerFast, TokenIdError, TokenizerError
from tests.conftest import CODELLAMA_DIR

_TOK = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 32015), max_size=40), st.booleans())
def test_stream_decoder_equals_full_decode_for_any_ids(ids, skip):
    d = _TOK.stream_decoder(skip_special_tokens=skip)
    assert "".join(d.step(i) for i in ids) + d.flush() == _TOK.decode(ids, skip_special_tokens=skip)


_WITH_ADDED = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)
_WITH_ADDED.add_special_tokens({"pad_token": "<pad>"})
_WITH_ADDED.add_tokens(["<foo>", "a b"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 32018), max_size=40), st.booleans())
def test_stream_decoder_with_added_tokens_equals_full_decode(ids, skip):
    d = _WITH_ADDED.stream_decoder(skip_special_tokens=skip)
    assert "".join(d.step(i) for i in ids) + d.flush() == _WITH_ADDED.decode(ids, skip_special_tokens=skip)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
def test_stream_decoder_on_real_text(text):
    ids = _TOK.encode(text, add_special_tokens=False, split_special_tokens=True)
    d = _TOK.stream_decoder()
    deltas = [d.step(i) for i in ids] + [d.flush()]
    assert "".join(deltas) == _TOK.decode(ids)
    assert all("\ufffd" not in x for x in deltas) or "\ufffd" in text


def test_stream_decoder_holds_back_split_characters():
    ids = _TOK.encode("a🦙b", add_special_tokens=False)
    assert 3 + 0xF0 in ids  # the llama is byte-fallback pieces
    d = _TOK.stream_decoder()
    deltas = [d.step(i) for i in ids]
    assert "".join(deltas) == "a🦙b" and "\ufffd" not in "".join(deltas)
    assert deltas.count("") >= 3  # three bytes waited for the fourth


def test_many_threads_mixed_calls_equal_serial(stdlib_corpus):
    r = random.Random(5)
    jobs = []
    for k in range(400):
        _, text = r.choice(stdlib_corpus)
        s = r.randrange(max(1, len(text)))
        chunk = text[s : s + 300].replace("<FILL_ME>", "")
        kind = k % 4
        if kind == 0:
            jobs.append(("plain", chunk))
        elif kind == 1:
            jobs.append(("infill", chunk[:100] + "<FILL_ME>" + chunk[100:]))
        elif kind == 2:
            jobs.append(("batch", [chunk, chunk[:50] + "<FILL_ME>"]))
        else:
            jobs.append(("spm", chunk[:80] + "<FILL_ME>" + chunk[80:]))

    def run(job):
        kind, x = job
        if kind == "plain":
            return _TOK.encode(x)
        if kind == "infill":
            return _TOK(x)["input_ids"]
        if kind == "batch":
            return _TOK(x)["input_ids"]
        return _TOK(x, suffix_first=True)["input_ids"]

    serial = [run(j) for j in jobs]
    results: list = [None] * len(jobs)

    def worker(idx: list[int]):
        for i in idx:
            results[i] = run(jobs[i])

    threads = [threading.Thread(target=worker, args=(list(range(t, len(jobs), 8)),)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def _child(q):
    tok = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)
    q.put(tok(["x = 1", "y = 2", "z = 3"] * 10)["input_ids"][:3])


def test_fork_after_parallel_use_does_not_deadlock():
    _TOK(["warm the thread pool"] * 64)  # parallel batch work in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=60)
    assert not p.is_alive(), "the forked child hung"
    assert p.exitcode == 0
    assert q.get(timeout=5) == _TOK(["x = 1", "y = 2", "z = 3"])["input_ids"]


def test_bad_inputs_are_typed_errors():
    t = _TOK
    with pytest.raises(TypeError):
        t(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        t([b"bytes"])  # type: ignore[list-item]
    with pytest.raises(TokenizerError, match="surrogate"):
        t("\udc80")
    with pytest.raises(TokenIdError):
        t.decode([2**40])
    with pytest.raises(TokenIdError):
        t.convert_ids_to_tokens([-5])
    for call in (t.decode, t.convert_ids_to_tokens, lambda ids: t.batch_decode([[1], ids])):  # beyond 64 bits
        with pytest.raises(TokenIdError, match="out of range"):
            call([1, 2**70])
    with pytest.raises(TokenIdError, match=r"valid ids are 0 to 32015\)"):
        t.decode([32016])
    for side in ("padding_side", "truncation_side"):  # checked when set, not at the next call
        with pytest.raises(TokenizerError, match=f"{side} must be 'left' or 'right', not 'middle'"):
            setattr(CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR), side, "middle")
        with pytest.raises(TokenizerError, match=side):
            CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR, **{side: "middle"})
    with pytest.raises(TokenizerError, match="max_length=1"):
        CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR, add_eos_token=True)("abc def", truncation=True, max_length=1)
    with pytest.raises(TokenizerError, match="return_tensors"):
        t("x", return_tensors="tf")
    with pytest.raises(TokenizerError, match="pad token"):
        t(["a", "b c"], padding=True)
    with pytest.raises(TokenizerError, match="different lengths"):
        t(["a", "b c d"], return_tensors="np")
    with pytest.raises(TokenizerError, match="padding="):
        t("x", padding="sideways")
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        t.pad_token = "<pad>"
    with pytest.raises(TokenizerError, match="infilling prompt"):
        t("a" * 50 + "<FILL_ME>", truncation=True, max_length=5)


def test_stream_decoder_joins_bytes_around_a_skipped_special_token():
    """The bytes of one character with a skipped special token between them: the full decode drops
    the token and joins the bytes (found by the property test above)."""
    for ids in ([197, 0, 131], [197, 2, 32007, 131], [240, 159, 1, 169, 156]):  # U+0080; a 4-byte emoji split by BOS
        d = _TOK.stream_decoder(skip_special_tokens=True)
        assert "".join(d.step(i) for i in ids) + d.flush() == _TOK.decode(ids, skip_special_tokens=True)


def test_transformers_loading_arguments_are_accepted_as_written():
    """``from_pretrained(folder, use_fast=True, local_files_only=True, ...)`` as transformers code
    writes it loads the same tokenizer as transformers' class does with them; a misspelt argument
    is a TypeError naming it."""
    from transformers import CodeLlamaTokenizerFast as HFTokenizer

    kw = {"use_fast": True, "local_files_only": True, "trust_remote_code": False, "token": None}
    ours = CodeLlamaTokenizerFast.from_pretrained(str(CODELLAMA_DIR), **kw)
    theirs = HFTokenizer.from_pretrained(str(CODELLAMA_DIR), **kw)
    for text in ("def f(x):\n    return x", " Hello  world", "naïve 🦙"):
        assert ours.encode(text) == theirs.encode(text)
    with pytest.raises(TypeError, match="use_fats"):
        CodeLlamaTokenizerFast.from_pretrained(str(CODELLAMA_DIR), use_fats=True)


def _decode_in_worker(ids):
    return CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR).decode(ids)


def test_errors_cross_process_boundaries():
    """A worker's tokenizer error reaches the parent as itself (multiprocessing pickles it), not as
    a PicklingError; so does every error class the package raises."""
    import pickle

    from codellama_fast import errors
    from codellama_fast.tokenizer.chat_jinja import ChatTemplateError

    for cls in [getattr(errors, name) for name in errors.__all__] + [ChatTemplateError]:
        back = pickle.loads(pickle.dumps(cls("a message")))
        assert type(back) is cls and str(back) == "a message"
    with mp.get_context("spawn").Pool(1) as pool, pytest.raises(TokenIdError, match="32016"):
        pool.apply(_decode_in_worker, ([1, 99999],))


def test_vocab_file_and_pair_length_as_transformers_gives_them(tmp_path):
    import shutil

    from transformers import CodeLlamaTokenizerFast as HFTokenizer

    json_only = tmp_path / "json-only"
    json_only.mkdir()
    shutil.copy(CODELLAMA_DIR / "tokenizer.json", json_only)
    for folder in (CODELLAMA_DIR, json_only):
        ours, theirs = CodeLlamaTokenizerFast.from_pretrained(str(folder)), HFTokenizer.from_pretrained(str(folder))
        assert ours.vocab_file == theirs.vocab_file  # the folder's tokenizer.model, or None
        for eos in (False, True):
            ours.add_eos_token = theirs.add_eos_token = eos
            # the special tokens a pair adds (the maximum lengths themselves differ: docs/tokenizer.md)
            assert ours.model_max_length - ours.max_len_sentences_pair == theirs.model_max_length - theirs.max_len_sentences_pair
    assert CodeLlamaTokenizerFast.from_pretrained(str(json_only)).vocab_file is None


def test_backend_tokenizer_encodes_as_transformers_backend(stdlib_corpus):
    """backend_tokenizer is a tokenizers.Tokenizer that encodes plain text as transformers' fast
    class's backend does, following add_eos_token and added tokens; changing it leaves ours alone."""
    from transformers import CodeLlamaTokenizerFast as HFTokenizer

    ours, theirs = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR), HFTokenizer.from_pretrained(str(CODELLAMA_DIR))
    rng = random.Random()
    texts = [text[:3000] for _, text in rng.sample(stdlib_corpus, 20)] + ["", " ", "naïve 🦙\n\t x", "a <foo> b</s>"]
    for eos, added in ((False, False), (True, False), (True, True)):
        ours.add_eos_token = theirs.add_eos_token = eos
        if added:
            ours.add_tokens(["<foo>"])
            theirs.add_tokens(["<foo>"])
        backend, reference = ours.backend_tokenizer, theirs.backend_tokenizer
        for text in texts:
            assert backend.encode(text).ids == reference.encode(text).ids
            assert backend.encode(text).ids == ours.encode(text)
    backend.post_processor = None  # a copy: this tokenizer keeps adding BOS/EOS
    assert ours.encode("x") == [1, ours.convert_tokens_to_ids("▁x"), 2]
