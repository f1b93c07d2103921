"""Random combinations of transformers' generation rules against transformers' ``generate``: the
other tests check each rule on a chosen case; these draw new combinations every run (the seed is
printed), with batches of prompts of different lengths, end tokens, ``min_new_tokens`` and beams,
where rules meet each other and the bookkeeping of a padded batch.

- greedy and beam search: our engine on the left-padded batch against transformers' on each prompt
  alone (a row must generate as it does alone);
- sampling: the same batch (rows of one length: no padding) with the same seed, so the draws are
  transformers' own.

Rules are built from tokens the model generates freely, so that they act. The draws leave out
what docs/generation.md lists as differing from transformers on purpose: the length decay on an
end token already at -inf (transformers' NaN), ``encoder_repetition_penalty`` with beams (its
processor reaches the first beam rows only), and rules that ban every token at a step
(``NoTokenAllowedError`` here; such a draw is skipped, as is one whose lesser beams the rules
left no token: empty here, scored -1e9, and arbitrary tokens in transformers)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast import NoTokenAllowedError  # noqa: E402

from tests.engine_helpers import fp32_engine, fresh_seed, random_checkpoint  # noqa: E402

TRIALS = {"greedy": 40, "beams": 25, "sampled": 30}


@pytest.fixture(scope="module")
def model(tmp_path_factory, tok):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "combinations")
    return hf, fp32_engine(path, tok)


def _cut(tokens: list[int], ends: list[int]) -> list[int]:
    """A transformers row up to (without) its first end token: where our sequence stops."""
    at = [tokens.index(e) for e in ends if e in tokens]
    return tokens[: min(at)] if at else tokens


def _rules(rng: random.Random, pool: list[int], n: int, beams: bool) -> tuple[dict, list[int]]:
    """Random per-step rules over ids from `pool` (tokens the model picks freely) and end tokens."""
    pick = lambda: rng.choice(pool)  # noqa: E731
    ends = [pick() for _ in range(rng.randint(1, 2))] if rng.random() < 0.6 else []
    kw: dict = {}
    if rng.random() < 0.4:
        kw["repetition_penalty"] = rng.choice([0.8, 1.2, 1.5, 2.0])
    if rng.random() < 0.3:
        kw["no_repeat_ngram_size"] = rng.randint(1, 3)
    if rng.random() < 0.25 and not beams:
        kw["encoder_repetition_penalty"] = rng.choice([0.7, 1.3, 2.0])
    if rng.random() < 0.25:
        kw["encoder_no_repeat_ngram_size"] = rng.randint(1, 3)
    if rng.random() < 0.3:
        kw["bad_words_ids"] = [[pick() for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        kw["sequence_bias"] = [[[pick() for _ in range(rng.randint(1, 2))], rng.choice([-20.0, -3.0, 2.0, 10.0])]
                               for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.2:
        kw["suppress_tokens"] = [pick() for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:
        kw["begin_suppress_tokens"] = [pick()]
    if rng.random() < 0.3:
        kw["min_new_tokens"] = rng.randint(1, n)
    if rng.random() < 0.15:
        kw["forced_eos_token_id"] = pick()
        if rng.random() < 0.5:
            ends = sorted({*ends, kw["forced_eos_token_id"]})
    # the decay raises end tokens' scores: drawn only without the rules transformers applies before
    # it that can put an end token at -inf, where it gives NaN
    before = {"min_new_tokens", "forced_eos_token_id", "bad_words_ids", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size"}
    if ends and rng.random() < 0.3 and not before & kw.keys():
        kw["exponential_decay_length_penalty"] = (rng.randint(1, 5), rng.choice([1.05, 1.5]))
    if beams:
        kw["num_beams"] = rng.randint(2, 4)
        if rng.random() < 0.5:
            kw["length_penalty"] = rng.choice([0.0, 0.5, 2.0, -1.0])
        if rng.random() < 0.5:
            kw["early_stopping"] = rng.choice([True, False, "never"])
        if rng.random() < 0.4:
            kw["num_return_sequences"] = rng.randint(1, kw["num_beams"])
    return kw, ends


def _sampling(rng: random.Random, n: int) -> dict:
    kw: dict = {"do_sample": True}
    for name, values, p in (("temperature", [0.3, 0.7, 1.0, 1.5], 0.6), ("top_k", [0, 1, 5, 20, 100], 0.5),
                            ("top_p", [0.3, 0.8, 0.95, 1.0], 0.5), ("min_p", [0.01, 0.1, 0.3], 0.3),
                            ("typical_p", [0.2, 0.9], 0.2), ("epsilon_cutoff", [1e-4, 3e-3], 0.2),
                            ("eta_cutoff", [1e-4, 3e-3], 0.2), ("repetition_penalty", [0.9, 1.3], 0.3),
                            ("no_repeat_ngram_size", [1, 2], 0.2), ("num_return_sequences", [2, 3], 0.3)):
        if rng.random() < p:
            kw[name] = rng.choice(values)
    if rng.random() < 0.2:
        kw["min_new_tokens"] = rng.randint(1, n)
    return kw


def _hf(hf, rows: list[list[int]], n: int, ends: list[int], **kw) -> list[list[int]]:
    """transformers' generated tokens for a batch of rows of one length, each cut at its first end."""
    x = torch.tensor(rows)
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, eos_token_id=ends or None, pad_token_id=0, **kw)
    return [_cut(row[x.shape[1]:].tolist(), ends) for row in out]


@pytest.mark.filterwarnings("ignore:bad_words_ids holds a stop id alone")  # a drawn bad word may be an end token
@pytest.mark.parametrize("mode", list(TRIALS))
def test_random_rule_combinations_equal_transformers(model, mode):
    hf, engine = model
    rng = random.Random(fresh_seed())
    acted = compared = 0
    for _ in range(TRIALS[mode]):
        n = rng.randint(3, 16)
        if mode == "sampled":
            length = rng.randint(1, 8)
            rows = [[1] + [rng.randrange(3, 32000) for _ in range(length)] for _ in range(rng.randint(1, 3))]
            kw, seed = _sampling(rng, n), rng.randrange(2**31)
            kw["seed"] = seed
        else:
            rows = [[1] + [rng.randrange(3, 32000) for _ in range(rng.randint(0, 10))] for _ in range(rng.randint(1, 3))]
            kw = {}
        free = engine.generate(input_ids=rows, max_new_tokens=n, stop_at_eos=False, **kw).token_ids
        pool = sorted({t for row in free for t in row})
        if mode == "sampled":
            ends = [rng.choice(pool)] if rng.random() < 0.6 else []
        else:
            kw, ends = _rules(rng, pool, n, beams=mode == "beams")
        stop = {"eos_token_id": ends} if ends else {"stop_at_eos": False}
        try:
            result = engine.generate(input_ids=rows, max_new_tokens=n, **stop, **kw)
        except NoTokenAllowedError:
            continue  # transformers returns id 0 or arbitrary beams there (see the module's docstring)
        if mode == "beams" and min(result.sequence_scores) <= -1e9:
            continue  # lesser beams the rules left no token (see the module's docstring)
        got = result.token_ids
        if mode == "sampled":
            torch.manual_seed(kw.pop("seed"))
            want = _hf(hf, rows, n, ends, **kw)
        else:
            want = [seq for row in rows for seq in _hf(hf, [row], n, ends, do_sample=False, **kw)]
        assert got == want, (rows, n, ends, kw)
        compared += 1
        acted += got != free
    assert compared >= TRIALS[mode] // 2 and acted, (compared, acted)
