"""Rows that repeat in a batch (num_return_sequences, or one prompt given several times) are
prefilled once per run (engine/shared_prompts.py): which batches share, the cache views and copies,
and each row's tokens and log-probabilities against transformers on the whole sequence."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast.engine import shared_prompts as R  # noqa: E402
from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close, random_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "shared-prompts")
    return hf, path


def _rows(*names: str, starts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B, 3] batch with one distinct row per letter, and its kv_start (0: no padding)."""
    ids = {c: [ord(c), ord(c) + 1, ord(c) + 2] for c in set(names)}
    return torch.tensor([ids[c] for c in names]), torch.tensor(starts or [0] * len(names))


@pytest.mark.parametrize("names, starts, n", [
    ("a", None, 1),
    ("aaaa", None, 4),
    ("aabb", None, 2),
    ("aaaabb", None, 2),  # runs of 4 and 2: groups of 2 are alike
    ("aaabbb", None, 3),
    ("aab", None, 1),
    ("abab", None, 1),  # alike rows apart from each other do not count
    ("aaaa", [0, 0, 1, 1], 2),  # the same tokens with other padding are other rows
    ("aaaa", [0, 1, 0, 1], 1),
])
def test_run_length(names, starts, n):
    assert R.run_length(*_rows(*names, starts=starts)) == n


def test_the_views_write_the_run_heads_and_the_copies_fill_each_run():
    b, n, slots = 6, 3, 5
    layers = [(torch.zeros(b, 2, 8, 4), torch.zeros(b, 2, 8, 4)) for _ in range(2)]
    heads = R.distinct_rows(layers, n)
    want = []
    for k, v in heads:  # a prefill writing the run heads' first slots through the views
        assert k.shape == (b // n, 2, 8, 4)
        k[:, :, :slots].normal_(), v[:, :, :slots].normal_()
        want.append((k[:, :, :slots].clone(), v[:, :, :slots].clone()))
    for (k, v), (wk, wv) in zip(layers, want):
        assert torch.equal(k[::n, :, :slots], wk) and torch.equal(v[::n, :, :slots], wv)  # the views are the cache
        assert not k[1::n].any()
    R.copy_to_repeats(layers, n, slots)
    for (k, v), (wk, wv) in zip(layers, want):
        for row in range(b):
            assert torch.equal(k[row, :, :slots], wk[row // n]) and torch.equal(v[row, :, :slots], wv[row // n])
        assert not k[:, :, slots:].any()  # slots past the prompt untouched


def _prefill_batches(engine) -> list[tuple[int, int]]:
    """(batch, tokens) of each forward pass from now on (the first: the prefill's)."""
    original, calls = engine.model.forward, []

    def spy(tokens, *a, **k):
        calls.append(tuple(tokens.shape))
        return original(tokens, *a, **k)

    engine.model.forward = spy  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("prompts", [["def quicksort(items):\n    "], ["import os\n", "x = ["], [""]])
def test_samples_of_a_prompt_prefill_it_once(model, tok, prompts):
    """num_return_sequences=3 samples per prompt (prompts of different lengths padded; the empty
    prompt is BOS alone): one prefill row per prompt, and every sample's log-probabilities are
    transformers' for its prompt and tokens, so each row's cache holds its prompt's keys."""
    hf, path = model
    engine = fp32_engine(path, tok)
    calls = _prefill_batches(engine)
    got = engine.generate(prompts, num_return_sequences=3, max_new_tokens=10, temperature=1.0, seed=5,
                          stop_at_eos=False, return_logprobs=True)
    assert calls[0][0] == len(prompts) and calls[1][0] == 3 * len(prompts)  # the prefill, then each step of all rows
    assert len({tuple(ids) for ids in got.token_ids}) > 1  # the samples differ: each row drew its own
    for row, (ids, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
        prompt = tok.encode(prompts[row // 3])
        assert logprobs_close(lps, hf_logprobs(hf, prompt, ids), 1e-4)


def test_a_prompt_given_twice_and_greedy_rows(model, tok):
    """["a", "a", "b", "b"] shares; ["a", "b", "a"] does not; both give transformers' greedy tokens."""
    hf, path = model
    a, b = "class Stack:\n", "for i in range(10):"
    for prompts, rows in (([a, a, b, b], 2), ([a, b, a], 3)):
        engine = fp32_engine(path, tok)
        calls = _prefill_batches(engine)
        got = engine.generate(prompts, max_new_tokens=8, stop_at_eos=False)
        assert calls[0][0] == rows
        for p, ids in zip(prompts, got.token_ids):
            x = torch.tensor([tok.encode(p)])
            want = hf.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, x.shape[1]:]
            assert ids == want.tolist()


def test_the_prefill_rate_counts_each_repeated_prompt_once(model, tok):
    """prefill_tokens_per_s: the tokens prefilled (one row per run) over the prefill's time."""
    _, path = model
    engine = fp32_engine(path, tok)
    got = engine.generate("def f(x):", num_return_sequences=4, max_new_tokens=2, temperature=1.0, seed=1)
    assert got.prefill_tokens_per_s * got.time_to_first_token_s == pytest.approx(len(tok.encode("def f(x):")))


# ---------------------------------------------------------------- a prefix every row begins with

# a 40-odd-token preamble, then questions of different lengths (left padded)
PREAMBLE = ("# You are a careful Python programmer. Answer with code only, no prose.\n"
            "# Write one function with type hints and a docstring; handle empty input.\n# Task: ")
QUESTIONS = ["reverse a list", "count the vowels in a string of text", "sum"]


def test_shared_prefix_and_its_floors(monkeypatch):
    rows = [[1] + list(range(100, 140)) + tail for tail in ([7, 8, 9], [5], [7, 8])]
    tokens, kv_start = _padded(rows)
    monkeypatch.setattr(R, "MIN_SAVED_TOKENS", 1)
    assert R.shared_prefix(tokens, kv_start) == 41  # BOS and the 40 tokens; the second row's last token is its own
    monkeypatch.setattr(R, "MIN_PREFIX_TOKENS", 42)
    assert R.shared_prefix(tokens, kv_start) == 0
    monkeypatch.setattr(R, "MIN_PREFIX_TOKENS", 32)
    # saved: rows start at slots 0, 2, 1: 41 + 39 + 40 - 41 (the extra pass) = 79 tokens
    monkeypatch.setattr(R, "MIN_SAVED_TOKENS", 79)
    assert R.shared_prefix(tokens, kv_start) == 41
    monkeypatch.setattr(R, "MIN_SAVED_TOKENS", 80)
    assert R.shared_prefix(tokens, kv_start) == 0
    monkeypatch.setattr(R, "MIN_SAVED_TOKENS", 1)
    same = torch.tensor([[1] + list(range(100, 140))] * 2)  # whole rows alike: all but the last token
    assert R.shared_prefix(same, torch.zeros(2, dtype=torch.long)) == 40
    assert R.shared_prefix(tokens[:1], kv_start[:1]) == 0  # one row shares with no other


def test_copy_prefix_puts_the_head_rows_slots_after_each_rows_padding():
    layers = [(torch.randn(3, 2, 10, 4), torch.randn(3, 2, 10, 4))]
    before = [(k.clone(), v.clone()) for k, v in layers]
    R.copy_prefix(layers, 0, [0, 3, 1], 5)
    for (k, v), (k0, v0) in zip(layers, before):
        for x, x0 in ((k, k0), (v, v0)):
            assert torch.equal(x[0], x0[0])  # the head row is the source
            assert torch.equal(x[1, :, 3:8], x0[0, :, :5]) and torch.equal(x[2, :, 1:6], x0[0, :, :5])
            assert torch.equal(x[1, :, :3], x0[1, :, :3]) and torch.equal(x[1, :, 8:], x0[1, :, 8:])  # the rest untouched
            assert torch.equal(x[2, :, :1], x0[2, :, :1]) and torch.equal(x[2, :, 6:], x0[2, :, 6:])


@pytest.mark.parametrize("samples", [1, 2])
def test_prompts_that_begin_alike_prefill_the_preamble_once(model, tok, monkeypatch, samples):
    """Three prompts sharing a preamble, of different lengths: the preamble is prefilled in one row,
    then the batch from the slot after it; every row's log-probabilities (sampled, with
    num_return_sequences too) are transformers' for its own prompt and tokens, and greedy rows
    are transformers' greedy tokens."""
    hf, engine, prompts, ids, t, shared, calls = _preamble_batch(model, tok, monkeypatch)
    got = engine.generate(prompts, num_return_sequences=samples, max_new_tokens=8, temperature=1.0, seed=2,
                          stop_at_eos=False, return_logprobs=True)
    assert calls[:2] == [(1, shared), (3, t - shared)] and calls[2][0] == 3 * samples
    for row, (out, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
        assert logprobs_close(lps, hf_logprobs(hf, ids[row // samples], out), 1e-4)
    if samples == 1:
        greedy = engine.generate(prompts, max_new_tokens=8, stop_at_eos=False)
        for p, out in zip(ids, greedy.token_ids):
            x = torch.tensor([p])
            want = hf.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, x.shape[1]:]
            assert out == want.tolist()
    rate_tokens = got.prefill_tokens_per_s * got.time_to_first_token_s  # the tokens the prefill ran
    assert rate_tokens == pytest.approx(shared + sum(t - max(t - len(i), shared) for i in ids))


def _padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, T] left-padded with 0, kv_start [B]) for rows of ids."""
    t = max(map(len, ids))
    return torch.tensor([[0] * (t - len(r)) + r for r in ids]), torch.tensor([t - len(r) for r in ids])


def _preamble_batch(model, tok, monkeypatch):
    """(transformers model, fp32 engine whose passes are counted, the texts PREAMBLE + each of
    QUESTIONS, their ids, the longest length, the tokens they share, the passes' list)."""
    monkeypatch.setattr(R, "MIN_SAVED_TOKENS", 1)
    hf, path = model
    engine = fp32_engine(path, tok)
    texts = [PREAMBLE + q for q in QUESTIONS]
    ids = [tok.encode(x) for x in texts]
    shared = R.shared_prefix(*_padded(ids))
    assert shared >= 32
    return hf, engine, texts, ids, max(map(len, ids)), shared, _prefill_batches(engine)


def test_scoring_candidates_after_one_prompt_runs_the_prompt_once(model, tok, monkeypatch):
    """score() of three candidates after the same preamble (different lengths, left padded): the
    preamble runs in one row, the batch after it; every text's log-probabilities, and the 3 likeliest
    tokens at each position, are transformers' for the whole text."""
    hf, engine, texts, ids, t, shared, calls = _preamble_batch(model, tok, monkeypatch)
    got = engine.score(texts, top_logprobs=3)
    assert calls == [(1, shared), (3, t - 1 - shared)]
    for row, lps, tops in zip(ids, got.token_logprobs, got.top_logprobs):
        assert logprobs_close(lps, hf_logprobs(hf, row[:1], row[1:]), 1e-4)
        with torch.no_grad():
            want = hf(torch.tensor([row])).logits[0, :-1].float().log_softmax(-1).topk(3)
        assert [[i for i, _ in pos] for pos in tops] == want.indices.tolist()
        assert all(logprobs_close([v for _, v in pos], ref, 1e-4) for pos, ref in zip(tops, want.values.tolist()))
