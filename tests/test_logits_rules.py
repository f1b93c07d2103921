"""transformers' generation rules beyond temperature/top-k/top-p: the sampling filters (min_p,
typical_p, epsilon and eta cutoffs) against transformers' logits warpers on random logits; the
per-step rules (no_repeat_ngram_size, the prompt-grounded encoder_repetition_penalty and
encoder_no_repeat_ngram_size, bad_words_ids, sequence_bias, suppress_tokens, begin_suppress_tokens,
forced_eos_token_id, exponential_decay_length_penalty) and the total
lengths (max_length, min_length) against transformers' ``generate`` on tiny random checkpoints;
and the aliases a transformers caller passes."""

from __future__ import annotations

import random
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast.engine.logits_rules import History, ngram_bans
from codellama_fast.engine.sampling import filter_logits

from tests.engine_helpers import fp32_engine as _engine
from tests.engine_helpers import fresh_seed, random_checkpoint, scripted

PROMPT = "def quicksort(items):\n    "


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "rules")
    return hf, path


def _hf_greedy(hf, ids: list[int], n: int, **kw) -> list[int]:
    x = torch.tensor([ids])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
    return out[0, len(ids):].tolist()


def _repeats_an_ngram(seq: list[int], n: int, start: int = 0) -> bool:
    """Whether an n-gram ending at index `start` or later already occurred earlier in `seq`."""
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return any(grams[j] in grams[:j] for j in range(max(0, start - n + 1), len(grams)))


def test_sampling_filters_keep_what_transformers_warpers_keep():
    """Every subset of the filters, in transformers' order (temperature, top-k, top-p, min-p,
    typical-p, epsilon, eta), keeps the tokens transformers' warpers keep, on random logits of
    random sizes and sharpness (some rows already holding -inf, as after a ban). In float64: the two
    sides sum probabilities in different orders, and in float32 that rounding can tip a token that
    sits on a threshold. ``keep`` is transformers' min_tokens_to_keep (beam sample keeps one more
    token than it has stop ids)."""
    from transformers.generation import logits_process as lp

    g = torch.Generator().manual_seed(fresh_seed())
    rnd = random.Random(int(torch.randint(0, 2**31, (), generator=g)))
    acted = dict.fromkeys(["min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"], 0)
    for _ in range(300):
        v = rnd.randrange(2, 400)
        logits = torch.randn(3, v, generator=g, dtype=torch.float64) * rnd.uniform(0.1, 8)
        if rnd.random() < 0.3:
            logits[:, rnd.randrange(v)] = float("-inf")
        t, keep = rnd.uniform(0.3, 1.5), rnd.choice([1, 1, 2, 3, 5])
        kw = {"top_k": rnd.choice([None, 0, rnd.randrange(1, v + 2)]), "top_p": rnd.choice([None, rnd.uniform(0.05, 1.0)]),
              "min_p": rnd.choice([None, rnd.uniform(0, 1)]), "typical_p": rnd.choice([None, rnd.uniform(0.05, 1.0)]),
              "epsilon_cutoff": rnd.choice([None, rnd.uniform(0, 0.3)]), "eta_cutoff": rnd.choice([None, rnd.uniform(0, 0.3)])}
        want = lp.TemperatureLogitsWarper(t)(None, logits.clone())
        warpers = [(kw["top_k"], lp.TopKLogitsWarper), (kw["top_p"], lp.TopPLogitsWarper), (kw["min_p"], lp.MinPLogitsWarper),
                   (kw["typical_p"], lp.TypicalLogitsWarper), (kw["epsilon_cutoff"], lp.EpsilonLogitsWarper),
                   (kw["eta_cutoff"], lp.EtaLogitsWarper)]
        for value, warper in warpers:
            # transformers' generate adds a warper only for a value that filters (see _get_logits_processor)
            if value is not None and not (warper is lp.TopKLogitsWarper and value == 0) and not (
                    warper in (lp.EpsilonLogitsWarper, lp.EtaLogitsWarper) and value == 0):
                want = warper(value, min_tokens_to_keep=keep)(None, want)
        got = filter_logits(logits / t, **kw, keep=keep)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), (kw, keep)
        before = torch.isinf(filter_logits(logits / t, kw["top_k"], kw["top_p"], keep=keep)).sum()
        for name in acted:
            if kw[name]:
                acted[name] += int(torch.isinf(got).sum() > before)
    assert all(n > 0 for n in acted.values()), acted  # each filter dropped tokens somewhere


def test_min_p_and_epsilon_near_one_sample_the_argmax(model, tok):
    _, path = model
    engine = _engine(path, tok)
    greedy = engine.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids
    for kw in ({"min_p": 1.0}, {"epsilon_cutoff": 0.999}):
        assert engine.generate(PROMPT, max_new_tokens=16, stop_at_eos=False, do_sample=True, seed=5, **kw).token_ids == greedy, kw


@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram_size_equals_transformers(model, tok, size):
    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT + "items items = items")
    free = _hf_greedy(hf, ids, 40)
    want = _hf_greedy(hf, ids, 40, no_repeat_ngram_size=size)
    got = engine.generate(input_ids=[ids], max_new_tokens=40, stop_at_eos=False, no_repeat_ngram_size=size).token_ids[0]
    assert got == want
    assert not _repeats_an_ngram(ids + got, size, start=len(ids))
    if _repeats_an_ngram(ids + free, size, start=len(ids)):
        assert got != free


def _prompt_grams(prompt: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(prompt[i : i + n]) for i in range(len(prompt) - n + 1)}


def _echoing_prompt(hf, ids: list[int], beams: int = 1) -> list[int]:
    """A prompt ending as `ids` does whose continuation by transformers (greedy, or the best of
    `beams` beams over 10 tokens) starts with a token that completes a bigram already in it, so
    that the prompt-grounded rules must act: pairs (ids[-1], t) for each first token t met so far
    go after the BOS until the next one is among them."""
    pairs: list[int] = []
    for _ in range(40):
        prompt = [ids[0], *pairs, *ids[1:]]
        t = _hf_greedy(hf, prompt, 10 if beams > 1 else 1, num_beams=beams)[0]
        if t in pairs[1::2]:
            return prompt
        pairs += [ids[-1], t]
    raise AssertionError("no prompt whose next token repeats a bigram of it in 40 tries")


@pytest.mark.parametrize("kw", [
    {"encoder_repetition_penalty": 3.0}, {"encoder_repetition_penalty": 0.3},
    {"encoder_no_repeat_ngram_size": 1}, {"encoder_no_repeat_ngram_size": 2},
    {"encoder_repetition_penalty": 2.0, "encoder_no_repeat_ngram_size": 3, "repetition_penalty": 1.3},
])
def test_prompt_grounded_rules_equal_transformers(model, tok, kw):
    """transformers' encoder_repetition_penalty and encoder_no_repeat_ngram_size, whose encoder
    input is a decoder-only model's prompt: the same tokens as transformers' generate, on a plain
    prompt and on one whose free continuation repeats a bigram of it (where each rule must act)."""
    hf, path = model
    engine = _engine(path, tok)
    plain = tok.encode(PROMPT)
    for ids in (plain, _echoing_prompt(hf, plain)):
        want = _hf_greedy(hf, ids, 30, **kw)
        got = engine.generate(input_ids=[ids], max_new_tokens=30, stop_at_eos=False, **kw).token_ids[0]
        assert got == want, (kw, ids)
        n = kw.get("encoder_no_repeat_ngram_size")
        if n:
            seq = ids + got
            assert not _prompt_grams(ids, n) & {tuple(seq[j - n + 1 : j + 1]) for j in range(len(ids), len(seq))}
    assert got != _hf_greedy(hf, ids, 30), kw


def test_prompt_grounded_rules_in_a_batch_and_with_beams(model, tok):
    """Each row's own prompt (its padding left out) grounds the rules: a left-padded batch equals
    each prompt alone, and beam search equals transformers' with every beam given its prompt
    (transformers' own encoder_repetition_penalty holds one row of prompt ids per prompt and so
    reaches only the first rows of the beams)."""
    from transformers import EncoderRepetitionPenaltyLogitsProcessor, LogitsProcessorList

    hf, path = model
    engine = _engine(path, tok)
    kw = {"encoder_repetition_penalty": 0.4, "encoder_no_repeat_ngram_size": 2}
    short = tok.encode("x = 1")
    prompts = [_echoing_prompt(hf, short), short]
    alone = [engine.generate(input_ids=[p], max_new_tokens=12, stop_at_eos=False, **kw).token_ids[0] for p in prompts]
    assert alone == [_hf_greedy(hf, p, 12, **kw) for p in prompts]
    assert alone[0] != _hf_greedy(hf, prompts[0], 12)
    assert engine.generate(input_ids=prompts, max_new_tokens=12, stop_at_eos=False, **kw).token_ids == alone
    k = 3
    x = torch.tensor([_echoing_prompt(hf, short, beams=k)])
    per_beam = EncoderRepetitionPenaltyLogitsProcessor(kw["encoder_repetition_penalty"], x.repeat(k, 1))
    beams = {"max_new_tokens": 10, "num_beams": k, "num_return_sequences": k}
    out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, eos_token_id=None, pad_token_id=0,
                      encoder_no_repeat_ngram_size=2, logits_processor=LogitsProcessorList([per_beam]), **beams)
    got = engine.generate(input_ids=x.tolist(), stop_at_eos=False, **beams, **kw)
    assert got.token_ids == [row[x.shape[1]:] for row in out.tolist()]
    plain = engine.generate(input_ids=x.tolist(), stop_at_eos=False, **beams)
    assert got.token_ids[0][0] != plain.token_ids[0][0]  # the best beam's first token completes a bigram of the prompt


def test_no_repeat_bans_match_a_direct_count():
    """ngram_bans on random short sequences (left-padded rows) equals counting the n-grams in Python."""
    rnd = random.Random(random.SystemRandom().randrange(2**31))
    for _ in range(200):
        vocab, size = rnd.randrange(2, 6), rnd.randrange(1, 4)
        rows = [[rnd.randrange(vocab) for _ in range(rnd.randrange(1, 12))] for _ in range(3)]
        t = max(map(len, rows))
        tokens = torch.tensor([[0] * (t - len(r)) + r for r in rows])
        history = History(tokens, torch.tensor([t - len(r) for r in rows]), room=0)
        bans = ngram_bans(history, size, vocab)
        for b, row in enumerate(rows):
            want = set()
            if len(row) >= size:
                last = tuple(row[len(row) - size + 1 :]) if size > 1 else ()
                want = {row[i + size - 1] for i in range(len(row) - size + 1) if tuple(row[i : i + size - 1]) == last}
            got = set() if bans is None else set(torch.nonzero(bans[b]).flatten().tolist())
            if t < size:
                assert bans is None
            assert got == want, (row, size)


def test_prompt_ngram_bans_match_a_direct_count():
    """ngram_bans over the prompt alone (encoder_no_repeat_ngram_size), after a few chosen tokens,
    on random left-padded rows, equals counting the prompt's n-grams in Python."""
    rnd = random.Random(random.SystemRandom().randrange(2**31))
    for _ in range(200):
        vocab, size, chosen = rnd.randrange(2, 6), rnd.randrange(1, 4), rnd.randrange(0, 4)
        rows = [[rnd.randrange(vocab) for _ in range(rnd.randrange(1, 12))] for _ in range(3)]
        t = max(map(len, rows))
        tokens = torch.tensor([[0] * (t - len(r)) + r for r in rows])
        history = History(tokens, torch.tensor([t - len(r) for r in rows]), room=chosen)
        picks = [[rnd.randrange(vocab) for _ in range(3)] for _ in range(chosen)]
        for pick in picks:
            history.append(torch.tensor(pick))
        bans = ngram_bans(history, size, vocab, prompt_only=True)
        for b, row in enumerate(rows):
            seq = row + [pick[b] for pick in picks]
            last = tuple(seq[len(seq) - size + 1 :]) if size > 1 else ()
            want = {row[i + size - 1] for i in range(len(row) - size + 1) if tuple(row[i : i + size - 1]) == last}
            got = set() if bans is None else set(torch.nonzero(bans[b]).flatten().tolist())
            if t < size:
                assert bans is None
            assert got == want, (row, seq, size)


def test_prompt_penalty_equals_transformers_processor_on_each_row_alone():
    """The encoder_repetition_penalty step on random logits of a left-padded batch equals
    transformers' EncoderRepetitionPenaltyLogitsProcessor given each row's own prompt: the padding
    id (0, in no prompt here) is not a prompt token."""
    from transformers import EncoderRepetitionPenaltyLogitsProcessor

    from codellama_fast.engine.logits_rules import RuleState, TokenRules

    rnd = random.Random(random.SystemRandom().randrange(2**31))
    vocab = 40
    for _ in range(50):
        penalty = rnd.choice([0.3, 0.7, 1.5, 3.0])
        rows = [[rnd.randrange(1, vocab) for _ in range(rnd.randrange(1, 9))] for _ in range(3)]
        t = max(map(len, rows))
        tokens = torch.tensor([[0] * (t - len(r)) + r for r in rows])
        kv_start = torch.tensor([t - len(r) for r in rows])
        state = RuleState(TokenRules(encoder_repetition_penalty=penalty), tokens, kv_start, vocab, room=1)
        logits = torch.randn(3, vocab) * 4
        got = state.apply(logits)
        for b, row in enumerate(rows):
            want = EncoderRepetitionPenaltyLogitsProcessor(penalty, torch.tensor([row]))(None, logits[b : b + 1])
            assert torch.equal(got[b], want[0]), (penalty, row)


def test_bad_words_sequence_bias_and_suppression_equal_transformers(model, tok):
    """Each rule built from the plain greedy output (so it must change it) gives transformers' tokens."""
    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT)
    free = _hf_greedy(hf, ids, 30)
    assert engine.generate(PROMPT, max_new_tokens=30, stop_at_eos=False).token_ids[0] == free
    cases = [
        {"bad_words_ids": [[free[3]]]},
        {"bad_words_ids": [[free[5], free[6]], [free[0], free[1], free[2]]]},
        {"sequence_bias": [[[free[2]], -50.0], [[free[0], free[1]], -80.0]]},
        {"sequence_bias": {(free[4],): -30.0}},  # transformers' older dict form
        {"suppress_tokens": [free[0], free[7]]},
        {"begin_suppress_tokens": [free[0]]},
        {"bad_words_ids": [[free[1]]], "no_repeat_ngram_size": 2, "repetition_penalty": 1.3, "suppress_tokens": [free[4]]},
    ]
    for kw in cases:
        want = _hf_greedy(hf, ids, 30, **kw)
        got = engine.generate(PROMPT, max_new_tokens=30, stop_at_eos=False, **kw).token_ids[0]
        assert got == want, kw
        assert got != free, kw  # the rule acted


def test_a_positive_sequence_bias_pulls_a_token_in(model, tok):
    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT)
    target = 4000
    want = _hf_greedy(hf, ids, 12, sequence_bias=[[[target], 100.0]])
    got = engine.generate(PROMPT, max_new_tokens=12, stop_at_eos=False, sequence_bias=[[[target], 100.0]]).token_ids[0]
    assert got == want and got[0] == target


def test_rules_in_a_padded_batch_equal_each_prompt_alone(model, tok):
    """Padding slots never match an n-gram or a bad word's prefix."""
    _, path = model
    engine = _engine(path, tok)
    prompts = [PROMPT, "x", "import os\nimport sys\n"]
    free = engine.generate(prompts[1], max_new_tokens=20, stop_at_eos=False).token_ids[0]
    kw = {"max_new_tokens": 20, "stop_at_eos": False, "no_repeat_ngram_size": 2, "bad_words_ids": [[free[2], free[3]]]}
    batch = engine.generate(prompts, **kw).token_ids
    assert batch == [engine.generate(p, **kw).token_ids[0] for p in prompts]


def test_rules_act_the_same_with_guesses(model, tok):
    """Prompt lookup and an assistant choose every position as plain decoding does, rules included."""
    _, path = model
    engine = _engine(path, tok)
    free = engine.generate(PROMPT, max_new_tokens=24, stop_at_eos=False).token_ids[0]
    kw = {"max_new_tokens": 24, "stop_at_eos": False, "no_repeat_ngram_size": 3, "bad_words_ids": [[free[4], free[5]]],
          "begin_suppress_tokens": [free[0]], "forced_eos_token_id": 4242}
    plain = engine.generate(PROMPT, **kw).token_ids
    assert plain[0][-1] == 4242 and len(plain[0]) == 24
    assert engine.generate(PROMPT, prompt_lookup_num_tokens=4, **kw).token_ids == plain
    assert engine.generate(PROMPT, assistant_model=_engine(path, tok), **kw).token_ids == plain


def test_no_repeat_ngram_size_acts_on_a_looping_model(model, tok):
    """A model scripted to loop "a b a b ..." is forced off the loop at the first repeat."""
    _, path = model
    engine = _engine(path, tok)
    a, b = 500, 600
    scripted(engine, [a, b] * 10)
    assert engine.generate("x", max_new_tokens=6, stop_at_eos=False).token_ids[0] == [a, b, a, b, a, b]
    scripted(engine, [a, b] * 10)
    got = engine.generate("x", max_new_tokens=6, stop_at_eos=False, no_repeat_ngram_size=2).token_ids[0]
    assert got[:3] == [a, b, a] and got[3] != b  # "a b" again is banned; the scripted logits then tie at 0
    assert not _repeats_an_ngram(tok.encode("x") + got, 2, start=2)


def test_max_length_and_min_length_count_the_prompt_as_transformers(model, tok):
    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT)
    got = engine.generate(PROMPT, max_length=len(ids) + 9, stop_at_eos=False).token_ids[0]
    assert got == _hf_greedy(hf, ids, 9) and len(got) == 9
    free = engine.generate(PROMPT, max_new_tokens=30, stop_at_eos=False).token_ids[0]
    end = free[1]
    x = torch.tensor([ids])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=30, min_length=len(ids) + 6, do_sample=False,
                      eos_token_id=end, pad_token_id=0)[0, len(ids):].tolist()
    want = out[: out.index(end)] if end in out else out
    got = engine.generate(PROMPT, max_new_tokens=30, min_length=len(ids) + 6, eos_token_id=end).token_ids[0]
    assert got == want and len(got) >= 6
    with pytest.raises(ValueError, match="max_length counts the prompt"):
        engine.generate(PROMPT, max_length=len(ids))
    with pytest.warns(UserWarning, match="max_new_tokens takes precedence"):
        assert len(engine.generate(PROMPT, max_new_tokens=3, max_length=len(ids) + 9, stop_at_eos=False).token_ids[0]) == 3


def test_transformers_aliases_and_hints(model, tok):
    _, path = model
    engine = _engine(path, tok)
    base = engine.generate(PROMPT, max_new_tokens=8, stop_at_eos=False)
    same = {"max_new_tokens": 8, "stop_at_eos": False}
    assert engine.generate(PROMPT, num_beams=1, use_cache=True, **same).token_ids == base.token_ids
    stop = tok.decode(base.token_ids[0][2:4])
    assert engine.generate(PROMPT, stop_strings=[stop], tokenizer=tok, **same).text == engine.generate(PROMPT, stop=[stop], **same).text
    sampled = {"do_sample": True, "seed": 3, **same}
    assert engine.generate(PROMPT, top_k=0, **sampled).token_ids == engine.generate(PROMPT, top_k=None, **sampled).token_ids
    with pytest.raises(TypeError, match="diverse beam search is not provided"):
        engine.generate(PROMPT, num_beams=4, num_beam_groups=2)
    with pytest.raises(TypeError, match="contrastive search is not provided"):
        engine.generate(PROMPT, penalty_alpha=0.6, top_k=4)
    with pytest.raises(TypeError, match="prefix_allowed_tokens_fn limits"):
        engine.generate(PROMPT, num_beams=2, force_words_ids=[[5]])
    with pytest.raises(TypeError, match="only generate"):
        list(engine.stream(PROMPT, output_scores=True))
    # a whole transformers config: its inert fields and None ("unset") pass, silently, with its meaning
    # of max_length (20 with the prompt) when max_new_tokens is unset
    from transformers import GenerationConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.generate(PROMPT, **GenerationConfig(max_new_tokens=8).to_dict()).token_ids == base.token_ids  # its eos None: no end
        n_prompt = len(tok.encode("x = 1"))
        assert len(engine.generate("x = 1", **{**GenerationConfig().to_dict(), "eos_token_id": None}).token_ids[0]) == 20 - n_prompt
    with pytest.raises(TypeError, match="cache_implementation"):
        engine.generate(PROMPT, cache_implementation="quantized")
    with pytest.raises(ValueError, match="not both"):
        engine.generate(PROMPT, stop="a", stop_strings="b")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"min_p": 1.5}, ValueError, "min_p must be in [0, 1]"),
        ({"typical_p": 0.0}, ValueError, "typical_p must be in (0, 1]"),
        ({"eta_cutoff": 1.0}, ValueError, "eta_cutoff must be in [0, 1)"),
        ({"epsilon_cutoff": "0.1"}, TypeError, "epsilon_cutoff must be a number"),
        ({"no_repeat_ngram_size": -1}, ValueError, "no_repeat_ngram_size must be >= 0"),
        ({"no_repeat_ngram_size": 2.0}, TypeError, "no_repeat_ngram_size must be an int"),
        ({"encoder_no_repeat_ngram_size": -2}, ValueError, "encoder_no_repeat_ngram_size must be >= 0"),
        ({"encoder_repetition_penalty": 0.0}, ValueError, "encoder_repetition_penalty must be > 0"),
        ({"encoder_repetition_penalty": float("nan")}, ValueError, "encoder_repetition_penalty must be finite"),
        ({"bad_words_ids": [1, 2]}, TypeError, "bad_words_ids[0] must be a sequence of int token ids"),
        ({"bad_words_ids": [[]]}, ValueError, "bad_words_ids[0] is empty"),
        ({"bad_words_ids": [[5, 99999]]}, ValueError, "bad_words_ids holds token id 99999"),
        ({"sequence_bias": [[[5], float("inf")]]}, ValueError, "sequence_bias[0] bias must be finite"),
        ({"sequence_bias": [[5, 1.0]]}, TypeError, "sequence_bias[0] token ids must be a sequence"),
        ({"suppress_tokens": [1.5]}, TypeError, "suppress_tokens[0] must be an int token id"),
        ({"begin_suppress_tokens": [-1]}, ValueError, "begin_suppress_tokens holds token id -1"),
        ({"max_length": 0}, ValueError, "max_length must be >= 1"),
        ({"use_cache": "yes"}, TypeError, "use_cache must be a bool"),
        ({"forced_eos_token_id": 99999}, ValueError, "forced_eos_token_id holds token id 99999"),
        ({"forced_eos_token_id": "2"}, TypeError, "forced_eos_token_id must be a sequence of int token ids"),
        ({"exponential_decay_length_penalty": 1.5}, TypeError, "must be a pair (start_index, decay_factor)"),
        ({"exponential_decay_length_penalty": (-1, 1.5)}, ValueError, "start_index must be >= 0"),
        ({"exponential_decay_length_penalty": (2, 0.0)}, ValueError, "decay_factor must be finite and > 0"),
        ({"exponential_decay_length_penalty": (2, "x")}, TypeError, "decay_factor must be a number"),
    ],
)
def test_bad_rule_arguments_are_named(model, tok, kwargs, error, words):
    engine = _engine(model[1], tok)
    with pytest.raises(error) as info:
        engine.generate("x", max_new_tokens=2, **kwargs)
    assert words in str(info.value)


def test_a_lone_stop_id_as_a_bad_word_is_ignored_with_a_warning(model, tok):
    _, path = model
    engine = _engine(path, tok)
    scripted(engine, [100, tok.eos_token_id, 300])
    with pytest.warns(UserWarning, match="bad_words_ids holds a stop id alone") as record:
        r = engine.generate("x", max_new_tokens=5, bad_words_ids=[[tok.eos_token_id], [300]])
    assert record[0].filename == __file__  # said at the caller's line
    assert r.token_ids == [[100]] and r.finish_reasons == ["eos"]  # it still ends at EOS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scripted(engine, [100, 300, tok.eos_token_id])
        assert engine.generate("x", max_new_tokens=5, stop_at_eos=False, bad_words_ids=[[300]]).token_ids[0][1] != 300


def test_prefix_allowed_tokens_fn_and_logits_processor_equal_transformers(model, tok):
    """The caller's own rules, called as transformers calls them (batch_id and the whole sequence;
    input_ids [B, T] and fp32 scores), in plain, batched, sampled-off and beam decoding."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

    hf, path = model
    engine = _engine(path, tok)
    g = torch.Generator().manual_seed(fresh_seed())
    rows = torch.randint(3, 32000, (2, 6), generator=g)
    rows[:, 0] = 1
    pool = torch.randint(3, 32000, (2, 40), generator=g).tolist()

    def allowed(batch_id, ids):  # a different small vocabulary per prompt, shifting with the length
        n = int(ids.shape[0])
        return pool[batch_id][n % 7 : n % 7 + 12]

    class LengthBias:  # favours one token more with each step
        def __call__(self, input_ids, scores):
            out = scores.clone()
            out[:, 4000] += 5.0 * (input_ids.shape[1] - 6)
            return out

    x = torch.tensor(rows.tolist())
    # Bigrams, not single tokens, are banned beside the 12 allowed ids: banning all 12 after one
    # token would take 12 earlier pairs starting with it, more than 22 tokens hold. A unigram ban
    # can use the window up within 16 tokens (about 1 prompt pair in 16), where transformers
    # silently picks id 0 and this engine raises NoTokenAllowedError.
    for kw in ({"prefix_allowed_tokens_fn": allowed}, {"logits_processor": LogitsProcessorList([LengthBias()])},
               {"logits_processor": LogitsProcessorList([NoRepeatNGramLogitsProcessor(2)]), "prefix_allowed_tokens_fn": allowed},
               {"prefix_allowed_tokens_fn": allowed, "num_beams": 3}):
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
        want = out[:, 6:].tolist()
        got = engine.generate(input_ids=rows.tolist(), max_new_tokens=16, stop_at_eos=False, **kw).token_ids
        assert got == want, kw
    assert all(t in pool[b] for b, row in enumerate(got) for t in row)
    assert 4000 in engine.generate(input_ids=rows.tolist(), max_new_tokens=40, stop_at_eos=False, logits_processor=LengthBias()).token_ids[0]
    with pytest.raises(ValueError, match="left no token to choose"):
        engine.generate("x", max_new_tokens=3, prefix_allowed_tokens_fn=lambda b, ids: [])
    with pytest.raises(TypeError, match="must return the scores tensor"):
        engine.generate("x", max_new_tokens=3, logits_processor=[lambda ids, scores: None])
    with pytest.raises(TypeError, match="logits_processor must be a callable"):
        engine.generate("x", max_new_tokens=3, logits_processor=[1])


def _cut_at(row: list[int], ends: list[int]) -> list[int]:
    cuts = [row.index(e) for e in ends if e in row]
    return row[: min(cuts)] if cuts else row


@pytest.mark.parametrize(
    "kw",
    [
        {"forced_eos_token_id": "end"},
        {"forced_eos_token_id": ["other", "end"]},
        {"forced_eos_token_id": "other"},  # not an end token: the last token is forced all the same
        {"exponential_decay_length_penalty": (2, 1.6)},
        {"exponential_decay_length_penalty": (4, 0.7), "repetition_penalty": 1.3},
        {"exponential_decay_length_penalty": (1, 1.3), "forced_eos_token_id": "end", "num_beams": 3},
        {"exponential_decay_length_penalty": (3, 1.4), "num_beams": 2, "num_return_sequences": 2, "min_new_tokens": 2},
        {"forced_eos_token_id": "other", "prefix_allowed_tokens_fn": "pool"},
    ],
)
def test_forced_eos_and_length_decay_equal_transformers(model, tok, kw):
    """The last token forced, and the end tokens' logits raised step by step, as transformers'
    processors do (in its order: after prefix_allowed_tokens_fn, before suppress_tokens), in a
    batch of random prompts with two end tokens the free run never reaches, greedy and beams."""
    hf, path = model
    engine = _engine(path, tok)
    g = torch.Generator().manual_seed(fresh_seed())
    rows = torch.randint(3, 32000, (2, 6), generator=g)
    rows[:, 0] = 1
    free = engine.generate(input_ids=rows.tolist(), max_new_tokens=30, stop_at_eos=False).token_ids
    unused = [int(i) for i in torch.randperm(32000, generator=g)[:50] if i > 2 and int(i) not in {*free[0], *free[1]}]
    ends = unused[:2]
    names = {"end": ends[-1], "other": unused[2]}
    pool = [sorted({*free[0], *free[1], names["other"]})] * 2
    kw = {k: (names[v] if isinstance(v, str) and v in names else [names[x] for x in v] if isinstance(v, list) else v)
          for k, v in kw.items()}
    if kw.get("prefix_allowed_tokens_fn") == "pool":
        kw["prefix_allowed_tokens_fn"] = lambda batch_id, ids: [t for t in pool[batch_id] if t != names["other"]]
    out = hf.generate(rows, attention_mask=torch.ones_like(rows), max_new_tokens=30, do_sample=False, eos_token_id=ends,
                      pad_token_id=0, **kw)
    want = [_cut_at(r, ends) for r in out[:, 6:].tolist()]
    got = engine.generate(input_ids=rows.tolist(), max_new_tokens=30, eos_token_id=ends, **kw)
    assert got.token_ids == want, kw
    if "exponential_decay_length_penalty" in kw:
        if kw["exponential_decay_length_penalty"][1] > 1:
            assert all(reason == "eos" for reason in got.finish_reasons)  # the decay ends them
    else:  # nothing else ends them: the last token is the forced one
        forced = kw["forced_eos_token_id"]
        last = min(forced) if isinstance(forced, list) else forced  # forced ids tie at 0: argmax takes the first
        assert all(r == ("eos" if last == names["end"] else "length") for r in got.finish_reasons), got.finish_reasons
        assert all(len(ids) == (29 if last == names["end"] else 30) for ids in got.token_ids)


def test_length_decay_while_min_new_tokens_holds_the_end_back(model, tok):
    """While min_new_tokens holds an end token at -inf, transformers' decay turns it into
    -inf + inf = NaN, which its argmax then picks: a sequence ends before min_new_tokens. Here the
    end stays held back. The reference is transformers with the hold applied after the decay (as
    its own processor), which never meets the NaN."""
    from transformers import LogitsProcessorList, MinNewTokensLengthLogitsProcessor

    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT)
    free = engine.generate(PROMPT, max_new_tokens=30, stop_at_eos=False).token_ids[0]
    end = free[-1]
    hold = MinNewTokensLengthLogitsProcessor(len(ids), 5, [end])
    x = torch.tensor([ids])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=30, do_sample=False, eos_token_id=[end],
                      pad_token_id=0, exponential_decay_length_penalty=(0, 4.0), logits_processor=LogitsProcessorList([hold]))
    want = _cut_at(out[0, len(ids):].tolist(), [end])
    got = engine.generate(PROMPT, max_new_tokens=30, eos_token_id=end, exponential_decay_length_penalty=(0, 4.0), min_new_tokens=5)
    assert got.token_ids[0] == want and len(want) >= 5


def test_a_generation_config_object_reads_as_transformers_reads_it(tmp_path, tok):
    """generate(generation_config=...) with a transformers GenerationConfig: its fields left at
    the class defaults take the model's generation_config.json values (here a sampling one), the
    call's own arguments win, and with no max_new_tokens anywhere 20 new tokens are made. Seeded
    alike, the tokens equal transformers'. This package's GenerationConfig works the same way."""
    from codellama_fast.engine import Engine, load_model
    from codellama_fast.engine.folders import generation_defaults
    from codellama_fast.engine.options import GenerationConfig
    from transformers import GenerationConfig as HFGenerationConfig

    from tests.engine_helpers import make_hf_model, save

    def pair(sampling: bool):
        hf = make_hf_model("mha", fresh_seed())
        if sampling:
            hf.generation_config = HFGenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=True, top_k=5, temperature=0.8,
                                                      max_new_tokens=9)
        path = save(hf, tmp_path / f"m{int(sampling)}")
        return hf, Engine(load_model(path, dtype="float32", device="cpu"), tok, defaults=generation_defaults(path))

    ids = torch.tensor([tok.encode(PROMPT)])
    seed = fresh_seed()
    for sampling, cases in ((True, [(HFGenerationConfig(repetition_penalty=1.3), {}), (HFGenerationConfig(temperature=0.0), {}),
                                    (HFGenerationConfig(max_new_tokens=4), {"top_k": 2}), (HFGenerationConfig(num_beams=2), {}),
                                    (HFGenerationConfig(), {"max_new_tokens": 3})]),
                            (False, [(HFGenerationConfig(), {}), (HFGenerationConfig(do_sample=True, top_k=3), {}),
                                     (HFGenerationConfig(max_new_tokens=6, no_repeat_ngram_size=1), {})])):
        hf, engine = pair(sampling)
        for config, kw in cases:
            torch.manual_seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, generation_config=config, **kw)
            want = out[0, ids.shape[1]:].tolist()
            got = engine.generate(input_ids=ids.tolist(), generation_config=config, seed=seed, **kw)
            assert want[: len(got.token_ids[0])] == got.token_ids[0] and (len(want) == len(got.token_ids[0]) or got.finish_reasons == ["eos"]), \
                (sampling, config.to_diff_dict(), kw)
        if not sampling:
            twenty = engine.generate(PROMPT, generation_config=HFGenerationConfig(eos_token_id=None))
            assert len(twenty.token_ids[0]) == 20 or twenty.finish_reasons == ["eos"]  # the model's EOS still ends it
            assert len(engine.generate(PROMPT, generation_config=GenerationConfig(max_new_tokens=5), stop_at_eos=False).token_ids[0]) == 5
            n_prompt = len(tok.encode(PROMPT))  # the call's own max_length (the prompt included) wins over the 20 new tokens
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert len(engine.generate(PROMPT, generation_config=HFGenerationConfig(), max_length=n_prompt + 4,
                                           stop_at_eos=False).token_ids[0]) == 4
            assert engine.generate(PROMPT, generation_config=GenerationConfig(), max_new_tokens=7, stop_at_eos=False).token_ids == \
                engine.generate(PROMPT, max_new_tokens=7, stop_at_eos=False).token_ids
    with pytest.raises(TypeError, match="generation_config must be a transformers GenerationConfig"):
        engine.generate(PROMPT, generation_config={"max_new_tokens": 3})


def test_each_refused_transformers_field_says_what_to_use_instead(model, tok):
    """Every transformers field taken only at its default names, at any other value, the value
    given and what to use instead; a name transformers does not have is called unknown."""
    from codellama_fast.engine.options import HF_HINTS, HF_INERT

    other = {"assistant_early_exit": 4, "assistant_lookbehind": 3, "constraints": [object()], "diversity_penalty": 0.5,
             "dola_layers": "high", "force_words_ids": [[5]], "forced_bos_token_id": 5, "low_memory": True, "num_beam_groups": 2,
             "output_attentions": True, "output_hidden_states": True, "output_logits": True, "output_scores": True,
             "penalty_alpha": 0.6, "prefill_chunk_size": 512, "remove_invalid_values": True, "return_dict_in_generate": True,
             "target_lookbehind": 3, "watermarking_config": {"greenlist_ratio": 0.25}, "cache_implementation": "quantized"}
    assert set(other) == set(HF_INERT)
    engine = _engine(model[1], tok)
    for key, value in other.items():
        assert value not in HF_INERT[key]
        with pytest.raises(TypeError) as info:
            list(engine.stream("x", max_new_tokens=2, **{key: value}))
        assert f"{key}={value!r}" in str(info.value) and f"  {key}: {HF_HINTS[key]}" in str(info.value), key
    with pytest.raises(TypeError, match=r"(?s)remove_invalid_values=True.*\nunknown generation arguments: max_tokens$"):
        engine.generate("x", max_new_tokens=2, remove_invalid_values=True, max_tokens=3)


def test_inert_transformers_fields_are_its_defaults():
    """The transformers fields accepted as changing nothing are accepted only at transformers'
    own defaults (so the table cannot drift from what transformers means by "not set")."""
    from codellama_fast.engine.options import HF_INERT
    from transformers import GenerationConfig

    defaults = GenerationConfig().to_dict()
    for key, values in HF_INERT.items():
        assert key in defaults, key
        assert defaults[key] in values, (key, defaults[key], values)
