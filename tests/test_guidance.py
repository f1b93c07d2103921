"""Classifier-free guidance (``guidance_scale``, ``negative_prompt_ids``) against transformers'
``generate`` (its UnbatchedClassifierFreeGuidanceLogitsProcessor) on tiny random checkpoints in
fp32: greedy and sampled with the same seed, with and without negative prompts, with other
rules; a padded batch of negative prompts equals each row alone; every decoding path agrees; with
beam search, each beam's unconditional side follows that beam (against guidance recomputed from
scratch for every beam, since transformers' own processor does not follow the beams)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.engine_helpers import fp32_engine, fresh_seed, hf_beams, random_checkpoint

PROMPTS = ["def quicksort(items):\n    ", "import os\nimport sys\nx = 1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "guidance")
    return hf, path


def _rows(tok, n: int) -> list[list[int]]:
    return [tok.encode(p)[:n] for p in PROMPTS]  # one length: transformers' batch needs no padding


@pytest.mark.parametrize("kw", [
    {"guidance_scale": 1.5},
    {"guidance_scale": 3.0, "negative": ["# bad code", "# slow code"]},
    {"guidance_scale": 0.5, "negative": ["# tests"]},
    {"guidance_scale": 2.0, "do_sample": True, "top_k": 10, "repetition_penalty": 1.2},
    {"guidance_scale": 2.5, "no_repeat_ngram_size": 2, "negative": ["x", "y"]},
])
def test_guidance_equals_transformers(model, tok, kw):
    hf, path = model
    engine = fp32_engine(path, tok)
    rows = _rows(tok, 9)
    kw = dict(kw)
    negative = kw.pop("negative", None)
    if negative is not None:
        neg = [tok.encode(n) for n in negative]
        assert len({len(n) for n in neg}) == 1  # transformers takes them as one unpadded tensor
        kw["negative_prompt_ids"] = neg
    seed = fresh_seed()
    x = torch.tensor(rows)
    torch.manual_seed(seed)
    hf_kw = {k: torch.tensor(v) if k == "negative_prompt_ids" else v for k, v in kw.items()}
    if negative is not None and len(negative) == 1:  # transformers needs one row per sequence
        hf_kw["negative_prompt_ids"] = hf_kw["negative_prompt_ids"].expand(len(rows), -1)
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, eos_token_id=None, pad_token_id=0, **hf_kw)
    got = engine.generate(input_ids=rows, max_new_tokens=10, stop_at_eos=False, seed=seed, **kw).token_ids
    assert got == out[:, 9:].tolist(), kw
    assert got != engine.generate(input_ids=rows, max_new_tokens=10, stop_at_eos=False, seed=seed,
                                  **{k: v for k, v in kw.items() if k not in ("guidance_scale", "negative_prompt_ids")}).token_ids


def test_padded_negative_prompts_equal_each_row_alone_and_each_alone_transformers(model, tok):
    """Negative prompts of different lengths run left-padded (their real positions kept); each
    row equals the row alone, and each alone equals transformers (no padding there)."""
    hf, path = model
    engine = fp32_engine(path, tok)
    rows = _rows(tok, 9)
    negative = [tok.encode("# a much longer negative prompt here"), tok.encode("#")]
    width = max(map(len, negative))
    padded = [[0] * (width - len(n)) + n for n in negative]
    mask = [[0] * (width - len(n)) + [1] * len(n) for n in negative]
    kw = {"max_new_tokens": 10, "stop_at_eos": False, "guidance_scale": 2.0}
    batch = engine.generate(input_ids=rows, negative_prompt_ids=padded, negative_prompt_attention_mask=mask, **kw).token_ids
    for row, neg, got in zip(rows, negative, batch):
        alone = engine.generate(input_ids=[row], negative_prompt_ids=[neg], **kw).token_ids[0]
        x = torch.tensor([row])
        want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, eos_token_id=None, pad_token_id=0,
                           guidance_scale=2.0, negative_prompt_ids=torch.tensor([neg]))[0, 9:].tolist()
        assert got == alone == want


def test_guidance_is_the_same_on_every_path(model, tok):
    """Prompt lookup, an assistant, a stream and infilling choose as plain decoding does."""
    _, path = model
    engine = fp32_engine(path, tok)
    prompt = "def f(x):\n    return f(x - 1) + f(x - 2)\n\ndef f"
    kw = {"max_new_tokens": 16, "stop_at_eos": False, "guidance_scale": 1.8, "negative_prompt_ids": tok.encode("# wrong")}
    plain = engine.generate(prompt, **kw)
    assert engine.generate(prompt, prompt_lookup_num_tokens=3, **kw).token_ids == plain.token_ids
    assert engine.generate(prompt, assistant_model=fp32_engine(path, tok), **kw).token_ids == plain.token_ids
    assert "".join(engine.stream(prompt, **kw)) == plain.text
    # one negative prompt per prompt, each over that prompt's num_return_sequences rows (top_k=1:
    # every sample is the argmax), as each prompt alone with its own
    negatives = [tok.encode("# a"), tok.encode("# b wrong")]
    each = {"guidance_scale": 1.8, "max_new_tokens": 6, "stop_at_eos": False}
    sampled = engine.generate([prompt, "x = 1"], do_sample=True, top_k=1, num_return_sequences=2, negative_prompt_ids=negatives, seed=3,
                              **each).token_ids
    alone = [engine.generate(p, negative_prompt_ids=n, **each).token_ids[0] for p, n in zip([prompt, "x = 1"], negatives)]
    assert sampled == [alone[0], alone[0], alone[1], alone[1]]
    # infilling takes it too: as generate on the same infilling prompt (which stops at ▁<EOT> as well)
    gap = engine.infill("def f(x):\n    ", "\n    return y", guidance_scale=1.5, max_new_tokens=6)
    ids = engine.infill_prompt_ids("def f(x):\n    ", "\n    return y")
    assert gap.generation.token_ids == engine.generate(input_ids=[ids], guidance_scale=1.5, max_new_tokens=6).token_ids


class _FreshUnconditional:
    """Reference guidance for transformers' beam search: every row's unconditional side run afresh
    from its negative prompt and that row's own generated tokens (input_ids past width t)."""

    def __init__(self, hf, negatives: list[list[int]], t: int, scale: float) -> None:
        self.hf, self.negatives, self.t, self.scale = hf, negatives, t, scale

    def __call__(self, input_ids, scores):
        cond = scores.log_softmax(-1)
        with torch.no_grad():
            last = [self.hf(torch.tensor([neg + row[self.t:]])).logits[0, -1].float()
                    for neg, row in zip(self.negatives, input_ids.tolist())]
        uncond = torch.stack(last).log_softmax(-1)
        return self.scale * (cond - uncond) + uncond


@pytest.mark.parametrize("kw", [
    {"num_beams": 3, "num_return_sequences": 2, "negative": ["# bad code", "# slow code"]},
    {"num_beams": 2, "num_return_sequences": 2, "length_penalty": 0.0},
    {"num_beams": 3, "do_sample": True, "temperature": 0.8, "negative": ["# tests"]},
])
def test_guidance_with_beams_follows_each_beam(model, tok, kw):
    """Beam search with guidance: as the beams regroup, each one's unconditional side reads its own
    tokens. The reference is transformers' beam search with a processor that recomputes every
    row's unconditional logits from scratch; transformers' own guidance processor keeps its
    unconditional cache in row order, so its beams read other beams' tokens."""
    from transformers import LogitsProcessorList

    hf, path = model
    engine = fp32_engine(path, tok)
    rows = _rows(tok, 7)
    kw = dict(kw)
    negative = [tok.encode(n) for n in kw.pop("negative", [])] or None
    k, scale = kw["num_beams"], 2.0
    per_row = [(negative[i % len(negative)] if negative else [rows[i][-1]]) for i in range(len(rows)) for _ in range(k)]
    seed = fresh_seed()
    torch.manual_seed(seed)
    want, want_scores = hf_beams(hf, rows, 8, None, logits_processor=LogitsProcessorList([_FreshUnconditional(hf, per_row, 7, scale)]),
                                 **kw)
    got = engine.generate(input_ids=rows, max_new_tokens=8, stop_at_eos=False, guidance_scale=scale, seed=seed,
                          **({"negative_prompt_ids": negative} if negative else {}), **kw)
    assert got.token_ids == want
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(got.sequence_scores, want_scores))
    assert got.token_ids != engine.generate(input_ids=rows, max_new_tokens=8, stop_at_eos=False, seed=seed, **kw).token_ids


@pytest.mark.parametrize("kwargs, error, words", [
    ({"negative_prompt_ids": [5, 6]}, ValueError, "negative_prompt_ids needs guidance_scale"),
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale must be finite"),
    ({"guidance_scale": "2"}, TypeError, "guidance_scale must be a number"),
    ({"guidance_scale": 2.0, "negative_prompt_ids": [[5], [6], [7]]}, ValueError, "has 3 prompts for 1 prompt:"),
    ({"guidance_scale": 2.0, "negative_prompt_ids": [[5], [6]], "num_beams": 2}, ValueError, "has 2 prompts for 1 prompt:"),
    ({"guidance_scale": 2.0, "negative_prompt_ids": [[5], [6]], "num_return_sequences": 2, "do_sample": True}, ValueError,
     "has 2 prompts for 1 prompt:"),
    ({"guidance_scale": 2.0, "negative_prompt_ids": [99999]}, ValueError, "holds token id 99999"),
    ({"guidance_scale": 2.0, "negative_prompt_ids": "abc"}, TypeError, "negative_prompt_ids must be a list of token ids"),
    ({"guidance_scale": 2.0, "negative_prompt_ids": [5, 6], "negative_prompt_attention_mask": [1]}, ValueError,
     "negative_prompt_attention_mask must have the shape of negative_prompt_ids"),
    ({"guidance_scale": 2.0, "negative_prompt_attention_mask": [1]}, ValueError, "goes with negative_prompt_ids"),
])
def test_bad_guidance_arguments_are_named(model, tok, kwargs, error, words):
    engine = fp32_engine(model[1], tok)
    with pytest.raises(error) as info:
        engine.generate("x", max_new_tokens=3, **kwargs)
    assert words in str(info.value)
