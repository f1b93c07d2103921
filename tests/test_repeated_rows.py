"""Rows that repeat in a batch (num_return_sequences, or one prompt given several times) are
prefilled once per run (engine/repeated_rows.py): which batches share, the cache views and copies,
and each row's tokens and log-probabilities against transformers on the whole sequence."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast.engine import repeated_rows as R  # noqa: E402
from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close, random_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "repeated-rows")
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
