"""Loading, bad files, post-processor flags, decoding and the import/CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import codellama_fast
from codellama_fast import (
    CodeLlamaTokenizerFast,
    InfillingUnsupported,
    InvalidTokenizerFile,
    TokenIdError,
    TokenizerError,
)
from tests.conftest import CODELLAMA_DIR, LLAMA2_MODEL, STORIES_DIR


def test_bundled_default_and_names_are_the_codellama_files(sp_codellama):
    for name in (None, "codellama/CodeLlama-7b-hf", "codellama"):
        t = CodeLlamaTokenizerFast.from_pretrained(name)
        assert t.vocab_size == 32016 == len(t)
        assert t.encode("def main():\n    pass") == [1] + sp_codellama.encode("def main():\n    pass")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        CodeLlamaTokenizerFast.from_pretrained("meta-llama/NotHere")


def test_special_token_ids(tok, tok_llama2):
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id) == (32007, 32008, 32009, 32010)
    assert (tok.prefix_token, tok.eot_token) == ("▁<PRE>", "▁<EOT>")
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok_llama2.vocab_size == 32000
    assert tok_llama2.prefix_id is None and tok_llama2.eot_token is None
    with pytest.raises(InfillingUnsupported):
        tok_llama2("def f(<FILL_ME>):")


def test_add_bos_eos_setters_take_effect_everywhere():
    t = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)
    assert t.encode("Hello") == [1, 15043]
    t.add_eos_token = True
    assert t.encode("Hello") == [1, 15043, 2]
    assert t(["Hello", "Hi"])["input_ids"] == [[1, 15043, 2], [1, 6324, 2]]
    # The saved tokenizer.json carries the rebuilt post-processor.
    post = json.loads(t._native.to_json())["post_processor"]
    assert "</s>" in json.dumps(post)
    t.add_bos_token = False
    assert t.encode("Hello") == [15043, 2]
    assert t.encode("Hello", add_special_tokens=False) == [15043]
    # Infilling never gets EOS after ▁<MID>.
    assert t("a<FILL_ME>")["input_ids"] == [32007, 263, 32008, 32009]


def test_config_flags_are_read(tmp_path):
    for f in CODELLAMA_DIR.glob("*.json"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["add_eos_token"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = CodeLlamaTokenizerFast.from_pretrained(tmp_path)
    assert t.add_eos_token and t.encode("Hello") == [1, 15043, 2]


def test_decode_skip_special_and_bytes(tok, sp_codellama):
    ids = tok.encode("x = '日本' # 🦙")
    assert tok.decode(ids) == "<s> x = '日本' # 🦙"
    assert tok.decode(ids, skip_special_tokens=True) == "x = '日本' # 🦙"
    assert tok.decode(ids[1:]) == sp_codellama.decode(ids[1:])
    # Incomplete UTF-8 (first two bytes of '€'): one U+FFFD per byte, as sentencepiece.
    broken = [3 + 0xE2, 3 + 0x82]
    assert tok.decode(broken) == sp_codellama.decode(broken) == "\ufffd\ufffd"
    assert tok.batch_decode([ids, ids[:3]], skip_special_tokens=True) == [
        tok.decode(ids, skip_special_tokens=True),
        tok.decode(ids[:3], skip_special_tokens=True),
    ]
    np = pytest.importorskip("numpy")
    assert tok.decode(np.array(ids)) == tok.decode(ids)


def test_decode_bad_ids_are_typed_errors(tok):
    with pytest.raises(TokenIdError, match="32016"):
        tok.decode([1, 32016])
    with pytest.raises(TokenIdError):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.decode(["a"])
    with pytest.raises(TokenIdError):
        tok.batch_decode([[1], [99999]])
    with pytest.raises(TypeError, match="use batch_decode"):
        tok.decode([[1, 822], [1, 285]])
    with pytest.raises(TypeError, match="an id or a sequence of ids"):
        tok.convert_ids_to_tokens([[1, 822]])


def test_ids_as_tensors_and_numpy_scalars(tok, sp_codellama):
    """transformers takes ids as tensors, arrays and numpy ints alike; a 0-d tensor is one id.
    The pieces and text are sentencepiece's."""
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    piece, text = sp_codellama.id_to_piece(822), sp_codellama.decode([822, 285])
    assert tok.convert_ids_to_tokens(torch.tensor(822)) == tok.convert_ids_to_tokens(np.int64(822)) == piece
    assert tok.convert_ids_to_tokens([np.int32(822), np.int64(1)], skip_special_tokens=True) == [piece]
    assert tok.decode(torch.tensor([1, 822, 285], dtype=torch.int32), skip_special_tokens=True) == text
    assert tok.decode([np.int64(1), np.int32(822), np.int64(285)], skip_special_tokens=True) == text


def test_bad_text_inputs(tok):
    with pytest.raises(TypeError):
        tok.encode(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok(["ok", None])  # type: ignore[list-item]
    for kwargs in ({}, {"padding": False}, {"return_tensors": "pt"}):  # encode takes one text, whatever else is given
        with pytest.raises(TypeError, match="encode takes one text"):
            tok.encode(["a", "b"], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="surrogate"):
        tok(["fine", "bad\udfff"])
    with pytest.raises(ValueError, match="2 <FILL_ME>"):
        tok("a<FILL_ME>b<FILL_ME>c")


@pytest.mark.parametrize("kwargs, match", [
    (dict(truncation="only_second", max_length=4), "only_second"),
    (dict(truncation="sideways", max_length=4), "truncation='sideways'"),
    (dict(truncation=True, max_length=-1), "max_length must be a non-negative int"),
    (dict(truncation=True, max_length=2.5), "max_length must be a non-negative int"),
    (dict(truncation=True, max_length=4, stride=-1, return_overflowing_tokens=True), "stride must be a non-negative int"),
    (dict(truncation=True, max_length=1, return_overflowing_tokens=True), "no room for text"),
])
def test_bad_truncation_arguments(tok, kwargs, match):
    for call in (lambda: tok("a b c d e", **kwargs), lambda: tok.encode("a b c d e", **kwargs)):
        with pytest.raises(TokenizerError, match=match):
            call()


@pytest.mark.parametrize("inputs, match", [
    ([], "empty list"),
    ({"attention_mask": [[1]]}, "needs input_ids"),
    ([{"input_ids": [1]}, {"input_ids": [1], "labels": 0}], "fields"),
    ({"input_ids": [[1], [1, 2]], "attention_mask": [[1]]}, "attention_mask has 1 rows"),
])
def test_pad_bad_inputs(inputs, match):
    tok = CodeLlamaTokenizerFast.from_pretrained(pad_token="</s>")
    with pytest.raises(TokenizerError, match=match):
        tok.pad(inputs)
    with pytest.raises(TokenizerError, match="rows of different lengths"):
        tok.pad({"input_ids": [[1], [1, 2]]}, padding=False, return_tensors="np")
    with pytest.raises(TokenizerError, match="needs a pad token"):
        CodeLlamaTokenizerFast.from_pretrained().pad({"input_ids": [[1], [1, 2]]})
    with pytest.raises(TypeError):
        tok.pad("input_ids")


@pytest.mark.parametrize("call, error, match", [
    (lambda t: t.apply_chat_template([{"role": "user", "content": "a"}], chat_template="{{ raise_exception('no users') }}"),
     TokenizerError, "refused the conversation: no users"),
    (lambda t: t.apply_chat_template([{"role": "user", "content": "a"}], chat_template="{% if %}"), TokenizerError, "does not parse"),
    (lambda t: t.apply_chat_template([{"role": "user", "content": "a"}], tools=[{"name": "f"}]), TypeError, "takes no template arguments"),
    (lambda t: t.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False, return_dict=True), TokenizerError, "needs tokenize=True"),
    (lambda t: t.apply_chat_template([{"role": "user", "content": "a"}], continue_final_message=True, add_generation_prompt=True),
     TokenizerError, "cannot both"),
    (lambda t: t.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), ValueError, "alternate"),
    (lambda t: t.apply_chat_template([{"role": "user", "content": 5}]), ValueError, "str 'role' and 'content'"),
    (lambda t: t.apply_chat_template([]), ValueError, "non-empty list"),
    (lambda t: t.apply_chat_template("hello"), ValueError, "non-empty list"),
])
def test_apply_chat_template_bad_input(tok, call, error, match):
    with pytest.raises(error, match=match):
        call(tok)


def test_convert_tokens_to_string_bad_input(tok):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.convert_tokens_to_string(["▁Hello", "no-such-piece"])
    with pytest.raises(TypeError):
        tok.convert_tokens_to_string("▁Hello")
    with pytest.raises(TypeError, match="piece 0"):
        tok.convert_tokens_to_string([5])


@pytest.mark.parametrize("call, error, match", [
    (lambda t: t.add_special_tokens({"bos_token": "<start>"}), TokenizerError, "fixed by the vocabulary"),
    (lambda t: t.add_special_tokens({"sep_token": "<sep>"}), TokenizerError, "no role"),
    (lambda t: t.add_special_tokens({"pad": "<pad>"}), TokenizerError, "unknown special-token role"),
    (lambda t: t.add_special_tokens(["<pad>"]), TypeError, "dict"),
    (lambda t: t.add_special_tokens({"additional_special_tokens": "<a>"}), TypeError, "list"),
    (lambda t: t.add_tokens([5]), TypeError, "str or an AddedToken"),
    (lambda t: t.add_tokens([""]), TokenizerError, "empty"),
    (lambda t: setattr(t, "pad_token", "<pad>"), TokenizerError, "add_special_tokens"),
])
def test_adding_tokens_bad_input(call, error, match):
    tok, fresh = CodeLlamaTokenizerFast.from_pretrained(), CodeLlamaTokenizerFast.from_pretrained()
    with pytest.raises(error, match=match):
        call(tok)
    assert len(tok) == len(fresh) and tok.encode("a <pad><start>") == fresh.encode("a <pad><start>")  # nothing was half-added


def test_adding_tokens_keeps_the_bundled_default_untouched():
    a, b = CodeLlamaTokenizerFast.from_pretrained(), CodeLlamaTokenizerFast.from_pretrained()
    assert a.add_special_tokens({"bos_token": "<s>", "pad_token": "<pad>"}) == 1
    assert a.add_tokens("<pad>") == 0 and a.add_tokens(["▁Hello"]) == 0  # already there
    assert a.encode("<pad>") == [1, 32016] and 32016 not in b.encode("<pad>") and len(b) == 32016


@pytest.mark.parametrize("entry, match", [
    ({"id": 32020, "content": "<gap>", "special": True, "normalized": False}, "must take the ids 32016, 32017"),
    ({"id": 32016, "content": "<l>", "special": True, "lstrip": "yes"}, "\"lstrip\" must be true or false"),
    ({"id": 32016, "content": "", "special": True}, "empty content"),
])
def test_bad_added_tokens_in_tokenizer_json(tmp_path, entry, match):
    import json

    data = json.loads((CODELLAMA_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"].append(entry)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InvalidTokenizerFile, match=match):
        CodeLlamaTokenizerFast.from_pretrained(tmp_path)


def test_added_tokens_in_configs_that_cannot_be_read_are_clear_errors(tmp_path):
    import json
    import shutil

    shutil.copy(CODELLAMA_DIR / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": 32017}))
    with pytest.raises(InvalidTokenizerFile, match="added_tokens.json: .*must take the ids 32016"):
        CodeLlamaTokenizerFast.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"32016": {"special": True}}}))
    with pytest.raises(InvalidTokenizerFile, match="tokenizer_config.json: added_tokens_decoder entry '32016' is not an id with a content"):
        CodeLlamaTokenizerFast.from_pretrained(tmp_path)


def test_a_chat_template_without_jinja2_is_a_clear_error(tok, monkeypatch):
    import sys

    from codellama_fast.tokenizer import chat, chat_jinja

    monkeypatch.setitem(sys.modules, "jinja2", None)
    chat_jinja._compiled.cache_clear()
    chat._writes_llama2.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="needs jinja2"):
            tok.apply_chat_template([{"role": "user", "content": "a"}], chat_template="{{ messages[0].content }}")
        assert tok.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False) == "<s>[INST] a [/INST]"  # built in
    finally:
        chat_jinja._compiled.cache_clear()
        chat._writes_llama2.cache_clear()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name, make",
    [
        ("tokenizer.model", lambda src: b""),
        ("tokenizer.model", lambda src: src[: len(src) // 2]),
        ("tokenizer.model", lambda src: os.urandom(20000)),
        ("tokenizer.model", lambda src: (CODELLAMA_DIR / "tokenizer.json").read_bytes()),
        ("tokenizer.json", lambda src: b""),
        ("tokenizer.json", lambda src: (CODELLAMA_DIR / "tokenizer.json").read_bytes()[:50000]),
        ("tokenizer.json", lambda src: b'{"model": {"type": "Unigram", "vocab": []}}'),
        ("tokenizer.json", lambda src: os.urandom(3000)),
        ("tokenizer.json", lambda src: b"[]"),
    ],
)
def test_bad_files_raise_typed_error_naming_the_file(tmp_path, name, make):
    src = (CODELLAMA_DIR / "tokenizer.model").read_bytes()
    path = _write(tmp_path / name, make(src))
    with pytest.raises(InvalidTokenizerFile) as info:
        CodeLlamaTokenizerFast.from_pretrained(tmp_path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        CodeLlamaTokenizerFast.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither"):
        CodeLlamaTokenizerFast.from_pretrained(tmp_path)


def test_loads_llama2_and_tok512(sp_llama2):
    t2 = CodeLlamaTokenizerFast.from_pretrained(LLAMA2_MODEL)
    assert t2.encode("print('hi')") == [1] + sp_llama2.encode("print('hi')")
    t512 = CodeLlamaTokenizerFast.from_pretrained(STORIES_DIR / "tok512.model")
    assert t512.vocab_size == 512


def test_import_does_not_load_torch_or_triton():
    code = "import sys, codellama_fast; codellama_fast.CodeLlamaTokenizerFast.from_pretrained().encode('x'); print('torch' in sys.modules, 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codellama_fast.cli", *args], input=stdin, capture_output=True, text=True)


def test_cli_tokenize_and_decode(tmp_path, sp_codellama):
    res = _cli("tokenize", "def f(): pass", "--tokens")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ids"] == [1] + sp_codellama.encode("def f(): pass")
    assert out["tokens"][0] == "<s>"
    f = tmp_path / "x.py"
    f.write_text("import os\n")
    assert json.loads(_cli("tokenize", "--file", str(f)).stdout)["ids"] == [1] + sp_codellama.encode("import os\n")
    dec = _cli("decode", "--skip-special-tokens", stdin=json.dumps(out))
    assert dec.stdout == "def f(): pass\n"
    bad = _cli("decode", "1", "99999")
    assert bad.returncode == 2 and "out of range" in bad.stderr
    from importlib.metadata import version

    assert _cli("--version").stdout.strip() == f"codellama-fast {version('codellama-fast')}"


def test_cli_bad_input_is_one_error_line(tmp_path):
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"abc\xd0\x00")
    cases = [
        (("tokenize", "--file", str(binary)), None, "not UTF-8 text (byte 0xd0 at offset 3)"),
        (("tokenize", "--file", str(tmp_path)), None, "Is a directory"),
        (("tokenize", "--file", str(tmp_path / "absent.py")), None, "No such file"),
        (("decode",), "[1, 2", "standard input is not JSON"),
        (("decode",), '["a"]', "JSON list of int ids"),
        (("decode",), '{"x": 1}', "JSON list of int ids"),
        (("decode", "abc"), None, "invalid int value"),
    ]
    for args, stdin, words in cases:
        res = _cli(*args, stdin=stdin)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    for command in (["tokenize"], ["generate", "--max-new-tokens", "2"]):  # bytes that are not UTF-8 on standard input
        res = subprocess.run([sys.executable, "-m", "codellama_fast.cli", *command], input=b"caf\xe9 = 1\n", capture_output=True, check=False)
        assert res.returncode == 2 and b"standard input is not UTF-8 text (byte 0xe9 at offset 3)" in res.stderr, res.stderr


def test_cli_tokenizes_the_exact_text_of_files_and_standard_input(tmp_path, sp_codellama):
    """Windows line endings and a BOM are part of the text: `tokenize` gives the ids of the file's
    (or standard input's) exact text, as sentencepiece encodes it."""
    data = "\ufeffx = 1\r\ny = 'é'\r\n".encode()
    (tmp_path / "crlf.py").write_bytes(data)
    want = [1] + sp_codellama.encode(data.decode())
    assert 30004 in want  # "\r" is a token of its own here
    assert json.loads(_cli("tokenize", "--file", str(tmp_path / "crlf.py")).stdout)["ids"] == want
    res = subprocess.run([sys.executable, "-m", "codellama_fast.cli", "tokenize"], input=data, capture_output=True, check=False)
    assert json.loads(res.stdout)["ids"] == want, res.stderr


def test_pickle_and_deepcopy_round_trip(sp_codellama):
    import copy
    import pickle

    t = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR, add_eos_token=True)
    for clone in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        assert clone.add_eos_token
        assert clone.encode("x <s> y") == t.encode("x <s> y")
        assert clone("a<FILL_ME>b")["input_ids"] == t("a<FILL_ME>b")["input_ids"]
        clone.add_eos_token = False
        assert t.encode("x") == [1] + sp_codellama.encode("x") + [2]  # the original is untouched


def test_version_and_public_api():
    assert codellama_fast.__version__
    for name in codellama_fast.__all__:
        if name not in {"Engine", "GenerationConfig", "GenerationResult", "load_model"}:
            assert hasattr(codellama_fast, name), name


def test_alignment_rows_follow_the_returned_ids(stdlib_corpus):
    """tokens() names exactly the returned ids (padding included), row by row; only the BOS and
    padding have no characters; the spans run forward through the text and cover every character."""
    tok = CodeLlamaTokenizerFast.from_pretrained()
    tok.pad_token = tok.eos_token
    texts = [text[:300] for _, text in stdlib_corpus[:40]]
    enc = tok(texts, padding=True, return_tensors="np")
    for r, row in enumerate(enc["input_ids"].tolist()):
        assert enc.tokens(r) == tok.convert_ids_to_tokens(row)
        spans = [enc.token_to_chars(r, t) for t in range(len(row))]
        assert [s is None for s in spans] == [m == 0 or t == row.index(1) for t, m in enumerate(enc["attention_mask"][r])]
        starts = [s.start for s in spans if s is not None]
        assert starts == sorted(starts) and all(0 <= s.start < s.end <= len(texts[r]) for s in spans if s is not None)
        for c in range(len(texts[r])):
            t = enc.char_to_token(r, c)
            assert t is not None and spans[t].start <= c < spans[t].end, (r, c)


def test_alignment_negative_indices_and_out_of_range():
    tok = CodeLlamaTokenizerFast.from_pretrained()
    enc = tok(["a b", "cd"])
    n = len(enc.tokens(1))
    for t in range(n):
        assert enc.token_to_word(1, t - n) == enc.token_to_word(1, t)
        assert enc.token_to_sequence(1, t - n) == enc.token_to_sequence(1, t)
        assert enc.token_to_chars(1, t - n) == enc.token_to_chars(1, t)
    assert enc.tokens(-1) == enc.tokens(1) and enc.token_to_word(1, n) is None and enc.char_to_token(1, 99) is None
    assert enc.word_to_tokens(1, 5) is None and enc.word_to_chars(1, 5) is None
    with pytest.raises(IndexError, match="batch index 2"):
        enc.word_ids(2)


def test_alignment_is_fixed_at_the_call():
    """Changing the tokenizer after a call does not change that call's encoding."""
    tok = CodeLlamaTokenizerFast.from_pretrained()
    enc = tok("x = 1 <pad>")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    tok.add_eos_token = True
    tok.truncation_side = "left"
    tok.add_special_tokens({"pad_token": "<pad>"})
    assert enc.tokens() == tokens and enc.word_ids() == [None] + [0] * (len(tokens) - 1)
    now = tok("x = 1 <pad>")
    assert now.tokens()[-2:] == ["<pad>", "</s>"] and now.word_ids()[-2:] == [1, None]


def test_alignment_needs_a_tokenizer_call():
    import copy
    import pickle

    tok = CodeLlamaTokenizerFast.from_pretrained()
    tok.pad_token = tok.eos_token
    enc = tok(["a b", "c"])
    assert enc.is_fast
    for same in (copy.copy(enc), copy.deepcopy(enc)):  # copies keep the mappings
        assert same.word_ids(1) == enc.word_ids(1) and same.tokens(0) == enc.tokens(0)
    for other in (tok.pad([{"input_ids": [1, 2]}, {"input_ids": [1]}]), pickle.loads(pickle.dumps(enc))):
        assert not other.is_fast
        with pytest.raises(TokenizerError, match="tokenizer call"):
            other.word_ids()


def test_piece_offsets_equal_the_native_offsets(stdlib_corpus):
    """The offsets read off the pieces (used for infilling parts) equal the native core's for the
    same plain text, on corpus snippets and awkward starts (spaces, tabs, a lone ▁, emoji)."""
    import random

    from codellama_fast.tokenizer.piece_offsets import piece_offsets

    tok = CodeLlamaTokenizerFast.from_pretrained()
    rng = random.Random()
    texts = [" Hello", "  x\n y", "héllo 🦙", "", " ", "   ", "\t\tdef", "▁", " ▁a"]
    for _, text in rng.sample(stdlib_corpus, 60):
        start = rng.randrange(max(1, len(text)))
        texts.append(text[start : start + rng.choice([5, 60, 400])])
    for text in texts:
        ids, offsets = tok._native.encode_with_offsets(text, 2, False)
        assert piece_offsets(tok._native, ids, True) == [tuple(o) for o in offsets], text
