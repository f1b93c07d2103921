"""``prepare_for_model`` and ``truncate_sequences`` against transformers' sentencepiece Code Llama
class (its fast class fails in ``build_inputs_with_special_tokens`` on every call with special
tokens), over random ids and random option sets; where transformers cannot truncate enough it
logs an error and returns the sequences too long, where this tokenizer raises."""

from __future__ import annotations

import random
import warnings

import pytest
from codellama_fast import CodeLlamaTokenizerFast, TokenizerError

from tests.conftest import CODELLAMA_DIR

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def pair():
    ref = transformers.CodeLlamaTokenizer.from_pretrained(str(CODELLAMA_DIR))
    ours = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR)
    return ref, ours


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 32016) for _ in range(n)]


def _set(tokenizers, **attrs) -> None:
    for t in tokenizers:
        for name, value in attrs.items():
            setattr(t, name, value)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_truncate_sequences_matches_transformers(pair):
    ref, ours = pair
    rng = random.Random()
    checked = refused = 0
    for _ in range(3000):
        side = rng.choice(["right", "left"])
        _set(pair, truncation_side=side)
        ids = _ids(rng, rng.randrange(0, 12))
        pair_ids = _ids(rng, rng.randrange(0, 12)) if rng.random() < 0.6 else None
        strategy = rng.choice(["longest_first", "only_first", "only_second", "do_not_truncate"])
        if strategy == "only_second" and pair_ids is None:
            continue
        n, stride = rng.randrange(0, 14), rng.randrange(0, 5)
        want = ref.truncate_sequences(list(ids), None if pair_ids is None else list(pair_ids), num_tokens_to_remove=n,
                                      truncation_strategy=strategy, stride=stride)
        removed = len(ids) + len(pair_ids or []) - len(want[0]) - len(want[1] or [])
        if strategy != "do_not_truncate" and n > 0 and removed != n:
            # transformers could not remove that many: it logs an error and returns them too long
            with pytest.raises(TokenizerError, match="cannot remove|leaves none"):
                ours.truncate_sequences(ids, pair_ids, num_tokens_to_remove=n, truncation_strategy=strategy, stride=stride)
            refused += 1
            continue
        got = ours.truncate_sequences(ids, pair_ids, num_tokens_to_remove=n, truncation_strategy=strategy, stride=stride)
        assert got == tuple(want), (side, ids, pair_ids, strategy, n, stride)
        checked += 1
    assert checked > 1500 and refused > 100


def test_prepare_for_model_matches_transformers(pair):
    ref, ours = pair
    rng = random.Random()
    checked = 0
    for _ in range(1500):
        _set(pair, truncation_side=rng.choice(["right", "left"]), add_bos_token=rng.random() < 0.8,
             add_eos_token=rng.random() < 0.4)
        # (the sentencepiece class pads on the right by default, the fast class and this one on the left)
        _set(pair, pad_token=rng.choice([None, "</s>", "<unk>"]), padding_side=rng.choice(["left", "right"]))
        ids = _ids(rng, rng.randrange(0, 12))
        pair_ids = _ids(rng, rng.randrange(0, 12)) if rng.random() < 0.5 else None
        kw = {}
        kw["add_special_tokens"] = rng.random() < 0.8
        if rng.random() < 0.6:
            kw["max_length"] = rng.randrange(1, 20)
        kw["truncation"] = rng.choice([None, False, True, "longest_first", "only_first", "only_second", "do_not_truncate"])
        kw["padding"] = rng.choice([False, True, "longest", "max_length", "do_not_pad"]) if ref.pad_token else False
        if kw["padding"] == "max_length" and "max_length" not in kw:
            kw["padding"] = False  # transformers pads to its 1e30 placeholder
        for flag in ("return_token_type_ids", "return_attention_mask"):
            if rng.random() < 0.5:
                kw[flag] = rng.choice([True, False])
        for flag in ("return_overflowing_tokens", "return_special_tokens_mask", "return_length"):
            kw[flag] = rng.random() < 0.4
        if rng.random() < 0.3:
            kw["pad_to_multiple_of"] = rng.choice([2, 4, 8])
        if rng.random() < 0.3:
            kw["padding_side"] = rng.choice(["left", "right"])
        kw["stride"] = rng.randrange(0, 3)
        if kw["truncation"] in (True, "longest_first", "only_first", "only_second") and "max_length" not in kw:
            continue  # model_max_length: 16384 here, transformers' 1e30 placeholder there (docs/tokenizer.md)
        try:
            want = _quiet(ref.prepare_for_model, list(ids), None if pair_ids is None else list(pair_ids), **kw)
        except ValueError as exc:
            with pytest.raises(ValueError):
                _quiet(ours.prepare_for_model, ids, pair_ids, **kw)
            assert any(w in str(exc) for w in ("token_type_ids", "overflowing", "only_second", "pad_to_multiple_of")), exc
            continue
        except TypeError:
            # transformers' num_truncated_tokens = total - max_length with no max_length
            assert kw.get("return_overflowing_tokens") and "max_length" not in kw
            got = _quiet(ours.prepare_for_model, ids, pair_ids, **kw)
            assert got["num_truncated_tokens"] == 0
            continue
        limit = kw.get("max_length")
        active = kw["truncation"] in (True, "longest_first", "only_first", "only_second") or (
            kw["truncation"] is None and kw["padding"] is False)  # transformers' rule: False itself, not "do_not_pad"
        masked = dict(kw, return_attention_mask=True, return_overflowing_tokens=False, return_token_type_ids=None)
        unpadded = sum(_quiet(ref.prepare_for_model, list(ids), None if pair_ids is None else list(pair_ids), **masked)["attention_mask"])
        if active and limit is not None and unpadded > limit:
            # transformers could not truncate that far (it logged an error): refused here
            with pytest.raises(TokenizerError, match="cannot remove|leaves none|needs pair_ids"):
                _quiet(ours.prepare_for_model, ids, pair_ids, **kw)
            continue
        got = _quiet(ours.prepare_for_model, ids, pair_ids, **kw)
        assert dict(got) == dict(want), (ids, pair_ids, kw)
        checked += 1
    assert checked > 600


def test_prepare_for_model_fixes_the_fast_class_and_refuses_what_needs_text(pair):
    ref, ours = pair
    _set(pair, add_bos_token=True, add_eos_token=False, pad_token=None, truncation_side="right")
    fast = transformers.AutoTokenizer.from_pretrained(str(CODELLAMA_DIR))
    with pytest.raises(TypeError):  # transformers' fast class: int + list in build_inputs_with_special_tokens
        fast.prepare_for_model([5, 6])
    assert dict(ours.prepare_for_model([5, 6])) == dict(ref.prepare_for_model([5, 6]))
    torch = pytest.importorskip("torch")
    got = ours.prepare_for_model([5, 6], return_tensors="pt", prepend_batch_axis=True)
    assert got["input_ids"].tolist() == ref.prepare_for_model([5, 6], return_tensors="pt", prepend_batch_axis=True)["input_ids"].tolist()
    assert isinstance(got["input_ids"], torch.Tensor) and got["input_ids"].shape == (1, 3)
    with pytest.raises(TokenizerError, match="text"):
        ours.prepare_for_model([5, 6], return_offsets_mapping=True)
    with pytest.raises(TypeError, match="int token id"):
        ours.prepare_for_model([5, "6"])
    with pytest.raises(TypeError, match="unexpected"):
        ours.prepare_for_model([5], paddding=True)
    with pytest.raises(TokenizerError, match="pad token"):
        ours.prepare_for_model([5], padding=True)
