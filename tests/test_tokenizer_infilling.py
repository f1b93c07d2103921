"""Infilling ids against a reference written here from sentencepiece and Meta's rules
(llama/tokenizer.py + generation.py), PSM and SPM, edge cases, and the seed example."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama_fast import CodeLlamaTokenizerFast, InfillingUnsupported, TokenizerError
from tests.conftest import CODELLAMA_DIR


def meta_infill(sp, prefix: str, suffix: str, suffix_first: bool = False) -> list[int]:
    """Meta's infilling_prompt_tokens: encode = sp.encode; encode_infilling = sp.encode("☺" + s)[2:]."""
    enc = sp.encode
    enc_inf = lambda s: sp.encode("☺" + s)[2:]  # noqa: E731
    if suffix_first:
        return [1, 32007, 32008] + enc_inf(suffix) + [32009] + enc(prefix)
    return [1, 32007] + enc(prefix) + [32008] + enc_inf(suffix) + [32009]


def test_meta_published_example(tok):
    prefix = 'def remove_non_ascii(s: str) -> str:\n    """ '
    suffix = "\n    return result\n"
    want = [int(x) for x in "1 32007 822 3349 29918 5464 29918 294 18869 29898 29879 29901 851 29897 1599 851 29901 13 1678 9995 29871 32008 13 1678 736 1121 13 32009".split()]
    assert tok(prefix + "<FILL_ME>" + suffix)["input_ids"] == want
    assert tok(prefix, suffix=suffix)["input_ids"] == want
    assert tok.encode(prefix, suffix=suffix) == want


def test_seed_example_verbatim():
    """The transformers model-card example, with our class in place of transformers'."""
    tokenizer = CodeLlamaTokenizerFast.from_pretrained("codellama/CodeLlama-7b-hf")
    PROMPT = '''def remove_non_ascii(s: str) -> str:
    """ <FILL_ME>
    return result
'''
    input_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(CODELLAMA_DIR / "tokenizer.model"))
    prefix, suffix = PROMPT.split("<FILL_ME>")
    assert input_ids.tolist() == [meta_infill(sp, prefix, suffix)]


_PIECE = st.one_of(st.text(max_size=10), st.sampled_from([" ", "  ", "\n", "<s>", "</s>", "▁<PRE>", "▁<EOT>", "☺", "é", "\t", "    "]))
_SIDE = st.lists(_PIECE, max_size=8).map("".join).filter(lambda s: "<FILL_ME>" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


@settings(max_examples=300, deadline=None)
@given(_SIDE, _SIDE, st.booleans())
def test_hypothesis_infilling_matches_meta(prefix, suffix, suffix_first):
    tok = _tok()
    sp = _sp()
    want = meta_infill(sp, prefix, suffix, suffix_first)
    assert tok(prefix + "<FILL_ME>" + suffix, suffix_first=suffix_first)["input_ids"] == want
    assert tok(prefix, suffix=suffix, suffix_first=suffix_first)["input_ids"] == want
    assert tok([prefix + "<FILL_ME>" + suffix], suffix_first=suffix_first)["input_ids"] == [want]
    assert None not in want and all(i < 32016 for i in want)


def test_edge_cases(tok, sp_codellama):
    assert tok("<FILL_ME>")["input_ids"] == [1, 32007, 32008, 32009]
    assert tok("a<FILL_ME>")["input_ids"] == [1, 32007, 263, 32008, 32009]
    assert tok("<FILL_ME>b")["input_ids"] == meta_infill(sp_codellama, "", "b")
    # special-token strings inside prefix/suffix stay text
    ids = tok("<s> x <FILL_ME> </s>")["input_ids"]
    assert ids == meta_infill(sp_codellama, "<s> x ", " </s>")
    assert ids.count(1) == 1 and 2 not in ids
    with pytest.raises(ValueError, match="3 <FILL_ME>"):
        tok("a<FILL_ME>b<FILL_ME>c<FILL_ME>")
    with pytest.raises(TokenizerError, match="not both"):
        tok("a<FILL_ME>b", suffix="c")
    # batches mix plain and infilling texts, and suffix lists
    batch = tok(["plain", "x<FILL_ME>y"])["input_ids"]
    assert batch == [tok("plain")["input_ids"], tok("x<FILL_ME>y")["input_ids"]]
    assert tok(["a", "b"], suffix=["c", "d"])["input_ids"] == [meta_infill(sp_codellama, "a", "c"), meta_infill(sp_codellama, "b", "d")]
    # no bos when asked
    assert tok("a<FILL_ME>b", add_special_tokens=False)["input_ids"] == meta_infill(sp_codellama, "a", "b")[1:]


def test_infilling_state_untouched(tok):
    before = [tok.encode(" Hello"), tok.add_bos_token, tok.add_eos_token, tok.suffix_first]
    tok("a<FILL_ME>b", suffix_first=True)
    tok(["x<FILL_ME>", "y"], suffix_first=False)
    assert [tok.encode(" Hello"), tok.add_bos_token, tok.add_eos_token, tok.suffix_first] == before


def test_decode_infilling_keeps_leading_space(tok, sp_codellama):
    middle_ids = sp_codellama.encode("☺ x = 1")[2:]  # a middle that starts with a space
    generated = middle_ids + [tok.eot_id, 123, 456]
    middle = tok.decode_infilling(generated)
    # Meta's decode_infilling: sp.decode(sp.encode("☺") + t)[1:]
    assert middle == sp_codellama.decode(sp_codellama.encode("☺") + middle_ids)[1:] == " x = 1"
    assert tok.assemble_infill("a =", middle, "\n") == "a = x = 1\n"


def test_no_infilling_vocab_raises_clearly(tok_llama2):
    assert tok_llama2.prefix_id is None and tok_llama2.eot_id is None and not tok_llama2.can_infill
    with pytest.raises(InfillingUnsupported, match="32016"):
        tok_llama2("a<FILL_ME>b")
    with pytest.raises(InfillingUnsupported):
        tok_llama2(["a<FILL_ME>b"])


_CACHE: dict = {}


def _tok():
    if "tok" not in _CACHE:
        _CACHE["tok"] = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)
    return _CACHE["tok"]


def _sp():
    if "sp" not in _CACHE:
        import sentencepiece as spm

        _CACHE["sp"] = spm.SentencePieceProcessor(model_file=str(CODELLAMA_DIR / "tokenizer.model"))
    return _CACHE["sp"]
