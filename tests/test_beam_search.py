"""Beam search (``num_beams``) against transformers' ``generate`` on tiny random checkpoints:
tokens and sequence scores, with length penalties, the three early-stopping modes, several
returned beams, left-padded batches, end tokens held back by min_new_tokens, logits rules, and
stop strings, stopping criteria and max_time; beam sample (``do_sample`` with ``num_beams``) with
the same seed as transformers' global one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast.engine import Engine, load_model

from tests.engine_helpers import fp32_engine as _engine
from tests.engine_helpers import fresh_seed, hf_beams, logprobs_close, random_checkpoint

PROMPT = "def quicksort(items):\n    "


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    seed, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "beams")
    MODEL_SEED[0] = seed  # named by the comparisons' messages: a failure can be replayed
    return hf, path


MODEL_SEED = [0]


def _same(engine, hf, rows, n, ends, **kw):
    want, want_scores = hf_beams(hf, rows, n, ends, **kw)
    stop = {"eos_token_id": ends} if ends else {"stop_at_eos": False}
    got = engine.generate(input_ids=rows, max_new_tokens=n, **stop, **kw)
    assert got.token_ids == want, ("model seed", MODEL_SEED[0], kw)
    assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (MODEL_SEED[0], got.sequence_scores, want_scores)
    return got


@pytest.mark.parametrize(
    "kw",
    [
        {"num_beams": 2},
        {"num_beams": 4, "num_return_sequences": 4},
        {"num_beams": 3, "length_penalty": 0.0},
        {"num_beams": 3, "length_penalty": 2.0, "early_stopping": "never"},
        {"num_beams": 5, "num_return_sequences": 2, "early_stopping": True},
        {"num_beams": 3, "length_penalty": -1.0, "early_stopping": "never"},
        {"num_beams": 3, "num_return_sequences": 2, "repetition_penalty": 1.6, "renormalize_logits": True},
    ],
)
def test_beams_equal_transformers(model, tok, kw):
    """An end token the greedy path reaches early, so beams finish at different lengths."""
    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT)
    free = engine.generate(PROMPT, max_new_tokens=24, stop_at_eos=False).token_ids[0]
    got = _same(engine, hf, [ids], 24, [free[3]], **kw)
    assert len(got.token_ids) == kw.get("num_return_sequences", 1)
    scores = got.sequence_scores
    assert scores == sorted(scores, reverse=True)  # best first


@pytest.mark.parametrize(
    "kw",
    [
        {"num_beams": 3, "temperature": 0.8},
        {"num_beams": 4, "num_return_sequences": 3, "top_k": 6, "temperature": 1.2},
        {"num_beams": 2, "top_p": 0.8, "length_penalty": 0.5, "early_stopping": True},
        {"num_beams": 3, "typical_p": 0.6, "top_k": 0, "early_stopping": "never"},
        {"num_beams": 3, "min_p": 0.05, "epsilon_cutoff": 0.001, "top_k": 0},
        {"num_beams": 2, "top_k": 2, "eta_cutoff": 0.01, "repetition_penalty": 1.3},
        {"num_beams": 3, "top_k": 8, "temperature": 0.6, "renormalize_logits": True},
    ],
)
def test_beam_sample_equals_transformers_with_the_same_seed(model, tok, kw):
    """transformers' beam sample draws its candidates with torch.multinomial from its global
    generator; ours draws them with a generator seeded alike, so a seeded call picks the same
    beams: tokens and scores, on a left-padded batch with two end tokens. The filters keep one
    token more than there are end tokens (``top_k=2`` keeps 3), as there."""
    hf, path = model
    engine = _engine(path, tok)
    rows = [tok.encode(PROMPT), tok.encode("x = [")]
    ends = list(dict.fromkeys(engine.generate(input_ids=rows, max_new_tokens=10, stop_at_eos=False).token_ids[0][3:]))[:2]
    seed = fresh_seed()
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        want, want_scores = hf_beams(hf, rows, 10, ends, do_sample=True, **kw)
        got = engine.generate(input_ids=rows, max_new_tokens=10, eos_token_id=ends, do_sample=True, seed=s, **kw)
        assert got.token_ids == want, ("model seed", MODEL_SEED[0], "sampling seed", s, kw)
        assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (MODEL_SEED[0], got.sequence_scores, want_scores)


def test_beam_sample_draws_differ_across_seeds_and_repeat_with_one(model, tok):
    """Beam sample is random: a seed repeats its beams, other seeds give others."""
    engine = _engine(model[1], tok)
    kw = {"max_new_tokens": 10, "num_beams": 3, "do_sample": True, "temperature": 1.5, "top_k": 0, "stop_at_eos": False}
    first = engine.generate(PROMPT, seed=11, **kw).token_ids
    assert engine.generate(PROMPT, seed=11, **kw).token_ids == first
    assert any(engine.generate(PROMPT, seed=s, **kw).token_ids != first for s in range(12, 16))


def test_beams_of_a_padded_batch_with_min_new_tokens_and_two_end_tokens(model, tok):
    hf, path = model
    engine = _engine(path, tok)
    rows = [tok.encode(PROMPT), tok.encode("x"), tok.encode("import os\nimport sys\n")]
    free = engine.generate(input_ids=rows, max_new_tokens=16, stop_at_eos=False).token_ids
    ends = [free[0][2], free[1][1]]
    kw = {"num_beams": 3, "num_return_sequences": 2, "min_new_tokens": 4}
    got = _same(engine, hf, rows, 16, ends, **kw)
    assert all(len(seq) >= 4 for seq in got.token_ids)
    alone = [engine.generate(input_ids=[r], max_new_tokens=16, eos_token_id=ends, **kw).token_ids for r in rows]
    assert got.token_ids == [seq for one in alone for seq in one]


def test_beams_with_logits_rules_equal_transformers(model, tok):
    """The rules act on each beam's log-probabilities and follow the beams as they regroup."""
    hf, path = model
    engine = _engine(path, tok)
    ids = tok.encode(PROMPT)
    free = engine.generate(PROMPT, max_new_tokens=20, num_beams=3, stop_at_eos=False).token_ids[0]
    kw = {"num_beams": 3, "num_return_sequences": 2, "no_repeat_ngram_size": 2, "bad_words_ids": [[free[1], free[2]]],
          "repetition_penalty": 1.3, "suppress_tokens": [free[5]]}
    got = _same(engine, hf, [ids], 20, None, **kw)
    assert got.token_ids[0] != free  # the rules acted


def _piece_text(tok, ids: list[int]) -> str:
    """The text of the first piece after the first of `ids` that is a word of 2+ letters, else of
    the first such piece that is not a byte (a beam may repeat one piece of punctuation)."""
    texts = [tok.convert_ids_to_tokens(i).replace("\u2581", "") for i in ids[1:]]
    words = [t for t in texts if len(t) >= 2 and t.isalpha()]
    others = [t for t in texts if t and not (t.startswith("<0x") and t.endswith(">"))]
    if not words + others:
        pytest.fail(f"no piece with text among {ids}")
    return (words + others)[0]


@pytest.mark.parametrize("kw", [{"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.0},
                                {"num_beams": 3, "num_return_sequences": 3}])
def test_beams_end_at_stop_strings_as_transformers_stop_strings(model, tok, kw):
    """Each candidate whose continuation spells a stop string ends there and competes for the
    finished places, as transformers' StopStringCriteria ends candidates: the same beams and
    scores, on a batch of random prompts, with a word from each one's free best beam as stop
    strings. The returned text is cut before the stop string; the tokens keep it."""
    from transformers import AutoTokenizer

    from tests.conftest import CODELLAMA_DIR

    hf, path = model
    engine = _engine(path, tok)
    g = torch.Generator().manual_seed(fresh_seed())
    rows = torch.randint(3, 32000, (2, 6), generator=g)
    rows[:, 0] = 1
    rows = rows.tolist()
    free = engine.generate(input_ids=rows, max_new_tokens=16, stop_at_eos=False, **kw).token_ids
    n = kw["num_return_sequences"]
    stops = [_piece_text(tok, free[0]), _piece_text(tok, free[n])]
    want, want_scores = hf_beams(hf, rows, 16, None, stop_strings=stops, tokenizer=AutoTokenizer.from_pretrained(str(CODELLAMA_DIR)),
                                 **kw)
    got = engine.generate(input_ids=rows, max_new_tokens=16, stop_at_eos=False, stop=stops, **kw)
    assert got.token_ids == want, stops
    assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (got.sequence_scores, want_scores)
    stopped = [k for k, reason in enumerate(got.finish_reasons) if reason == "stop"]
    if kw.get("length_penalty") == 0.0:  # summed scores: a beam cut short by its stop string wins
        assert stopped
    for k in stopped:
        prompt = rows[k // n]
        whole = tok.decode(prompt + got.token_ids[k], skip_special_tokens=True)[len(tok.decode(prompt, skip_special_tokens=True)):]
        assert whole.startswith(got.texts[k]) and any(whole[len(got.texts[k]):].startswith(s) for s in stops)
        assert not any(s in got.texts[k] for s in stops)
    assert all(reason in ("stop", "length") for reason in got.finish_reasons)


def test_beams_end_at_stopping_criteria_and_max_time_as_transformers(model, tok, monkeypatch):
    """A stopping criterion is asked about every candidate of a step, and max_time ends them all
    once it has passed, as in transformers' beam search: the same beams and scores. Both clocks
    are replaced by one that a logits processor moves 0.25 s per step, so nothing sleeps:
    max_time=1.0 ends the search at its fifth token, with finish reason "time"."""
    import types

    import codellama_fast.engine.stopping as stopping_module
    import transformers.generation.stopping_criteria as hf_stopping
    from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    hf, path = model
    engine = _engine(path, tok)
    rows = [tok.encode(PROMPT), tok.encode("import os\nimport sys\n")]
    kw = {"num_beams": 3, "num_return_sequences": 2}
    # summed scores (no length penalty): the best beam's start, cut short by the criterion, wins
    summed = {**kw, "length_penalty": 0.0}
    free = engine.generate(input_ids=rows, max_new_tokens=16, stop_at_eos=False, **summed).token_ids
    enders = torch.tensor([free[0][4], free[2][7]])

    class LastTokenIn(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.isin(input_ids[:, -1], enders)

    want, want_scores = hf_beams(hf, rows, 16, None, stopping_criteria=StoppingCriteriaList([LastTokenIn()]), **summed)
    got = engine.generate(input_ids=rows, max_new_tokens=16, stop_at_eos=False, stopping_criteria=[LastTokenIn()], **summed)
    assert got.token_ids == want
    assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (got.sequence_scores, want_scores)
    assert got.finish_reasons[0] == got.finish_reasons[2] == "stop" and all(r == "length" or seq[-1] in enders for r, seq in zip(got.finish_reasons, got.token_ids))

    clock = [1000.0]
    monkeypatch.setattr(stopping_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(hf_stopping, "time", types.SimpleNamespace(time=lambda: clock[0]))

    def step_takes_a_quarter_second(ids, scores):
        clock[0] += 0.25
        return scores

    for extra in ({}, {"early_stopping": "never", "length_penalty": 2.0}):
        want, want_scores = hf_beams(hf, rows, 16, None, max_time=1.0, logits_processor=LogitsProcessorList([step_takes_a_quarter_second]),
                                     **kw, **extra)
        got = engine.generate(input_ids=rows, max_new_tokens=16, stop_at_eos=False, max_time=1.0,
                              logits_processor=step_takes_a_quarter_second, **kw, **extra)
        assert got.token_ids == want and all(len(seq) == 5 for seq in got.token_ids), extra
        assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (got.sequence_scores, want_scores)
        assert got.finish_reasons == ["time"] * 4


@pytest.mark.parametrize("kw", [{"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.0, "renormalize_logits": True},
                                {"num_beams": 3, "num_return_sequences": 3, "length_penalty": 2.0},
                                {"num_beams": 4, "num_return_sequences": 3, "do_sample": True, "temperature": 0.8, "top_k": 5}])
def test_beam_output_scores_logits_and_beam_indices_equal_transformers(model, tok, kw):
    """output_scores / output_logits with beams: per step, the running beams' scores after the
    rules and filters and their raw logits ([prompts × beams, V]), and per returned beam the row
    each of its tokens came from (its end token's included), equal to transformers' scores, logits
    and beam_indices, on a left-padded batch with an end token the best beam reaches."""
    hf, path = model
    engine = _engine(path, tok)
    rows = [tok.encode(PROMPT), tok.encode("x = [")]
    end = engine.generate(input_ids=rows, max_new_tokens=12, stop_at_eos=False, num_beams=3, length_penalty=0.0).token_ids[0][2]
    t = max(map(len, rows))
    x = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    mask = (torch.arange(t)[None, :] >= torch.tensor([t - len(r) for r in rows])[:, None]).long()
    seed = fresh_seed()
    torch.manual_seed(seed)
    want = hf.generate(x, attention_mask=mask, max_new_tokens=12, eos_token_id=end, pad_token_id=0, output_scores=True,
                       output_logits=True, return_dict_in_generate=True, **kw)
    got = engine.generate(input_ids=rows, max_new_tokens=12, eos_token_id=end, output_scores=True, output_logits=True, seed=seed, **kw)
    assert got.beam_indices == [[i for i in row if i != -1] for row in want.beam_indices.tolist()]
    assert [len(i) for i in got.beam_indices] == [len(s) + (r == "eos") for s, r in zip(got.token_ids, got.finish_reasons)]
    if kw.get("length_penalty") == 0.0:  # summed scores: the beam that ends early stays the best
        assert got.finish_reasons[0] == "eos"
    assert len(got.scores) == len(want.scores) == len(got.logits) == len(want.logits)
    for ours, theirs in zip(got.scores, want.scores):
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        finite = torch.isfinite(theirs)
        torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(got.logits, want.logits):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # the scores of each returned beam's own tokens sum to its sequence score (transformers'
    # compute_transition_scores), length penalty undone
    for k, (seq, idx) in enumerate(zip(got.token_ids, got.beam_indices)):
        steps = seq + [end] * (len(idx) - len(seq))
        total = sum(got.scores[i][row, token].item() for i, (row, token) in enumerate(zip(idx, steps)))
        assert abs(total / len(idx) ** kw.get("length_penalty", 1.0) - got.sequence_scores[k]) < 1e-3


def test_beam_token_logprobs_equal_the_models_log_softmax(model, tok):
    """return_logprobs with beams: each returned beam's tokens' log-probabilities under the raw
    logits, equal to transformers' model run in one pass over the prompt and the beam (fp32), and
    with top_logprobs the likeliest ids at each position under the same distributions. With
    no rules their sum over a beam (its end token's included) is its score times its length **
    length_penalty."""
    hf, path = model
    engine = _engine(path, tok)
    rows = [tok.encode(PROMPT), tok.encode("x = [")]
    end = engine.generate(input_ids=rows, max_new_tokens=10, stop_at_eos=False, num_beams=3).token_ids[1][3]
    kw = {"num_beams": 3, "num_return_sequences": 3, "length_penalty": 0.5, "max_new_tokens": 10, "eos_token_id": end}
    # beam sample's temperature changes the scores, not the raw log-probabilities
    for rules in ({}, {"do_sample": True, "temperature": 0.7, "seed": fresh_seed()}):
        got = engine.generate(input_ids=rows, top_logprobs=4, **kw, **rules)  # top_logprobs implies return_logprobs
        assert [len(lp) for lp in got.token_logprobs] == [len(ids) for ids in got.token_ids] == [len(t) for t in got.top_logprobs]
        for k, (ids, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
            prompt = rows[k // 3]
            steps = ids + [end] * (got.finish_reasons[k] == "eos")
            with torch.no_grad():
                logits = hf(torch.tensor([prompt + steps])).logits[0].float()
            dist = logits.log_softmax(-1)[len(prompt) - 1 : -1]  # [steps, V]: each position's distribution
            want = dist.gather(1, torch.tensor(steps)[:, None])[:, 0].tolist()
            assert logprobs_close(lps, want[: len(ids)], 1e-4), (lps, want)
            # the 4 likeliest at each of the beam's positions, under the same distributions
            top_values, top_ids = dist[: len(ids)].topk(4, dim=-1)
            assert [[i for i, _ in pos] for pos in got.top_logprobs[k]] == top_ids.tolist()
            assert all(logprobs_close([v for _, v in pos], row, 1e-4) for pos, row in zip(got.top_logprobs[k], top_values.tolist()))
            if not rules:
                assert abs(sum(want) / len(steps) ** 0.5 - got.sequence_scores[k]) < 1e-3
        assert engine.generate(input_ids=rows, **kw, **rules).token_ids == got.token_ids
        assert rules or "eos" in got.finish_reasons


def test_infill_and_chat_take_beams(model, tok):
    """infill with beams is transformers' beam search over the infilling prompt, ending at ▁<EOT> or EOS."""
    hf, path = model
    engine = _engine(path, tok)
    prompt = engine.infill_prompt_ids("def f(x):\n    ", "\n    return y\n")
    want, _ = hf_beams(hf, [prompt], 12, [tok.eos_token_id, tok.eot_id], num_beams=3)
    got = engine.infill("def f(x):\n    ", "\n    return y\n", max_new_tokens=12, num_beams=3)
    assert got.generation.token_ids == want
    # an end this random model reaches (it would not reach ▁<EOT>), on generate's infilling path
    end = engine.generate(input_ids=[prompt], max_new_tokens=12, stop_at_eos=False).token_ids[0][2]
    assert engine.generate(input_ids=[prompt], max_new_tokens=12, num_beams=3, stop_token_ids=[end]).token_ids[0] == \
        hf_beams(hf, [prompt], 12, [tok.eos_token_id, end, tok.eot_id], num_beams=3)[0][0]
    answer = engine.chat([{"role": "user", "content": "hi"}], max_new_tokens=8, num_beams=2)
    chat_ids = tok.chat_prompt_ids([{"role": "user", "content": "hi"}])
    want_chat, _ = hf_beams(hf, [chat_ids], 8, [tok.eos_token_id], num_beams=2)
    assert answer == tok.decode(want_chat[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda e: list(e.stream("x", num_beams=2)), ValueError, "does not stream"),
        (lambda e: e.generate("x", num_beams=2, num_return_sequences=3), ValueError, "must be <= num_beams"),
        (lambda e: e.generate("x", num_beams=2, top_logprobs=-1), ValueError, "top_logprobs must be between 0"),
        (lambda e: e.generate("x", num_beams=2, early_stopping="sometimes"), ValueError, "early_stopping must be"),
        (lambda e: e.generate("x", num_beams=0), ValueError, "num_beams must be >= 1"),
        (lambda e: e.generate("x", num_beams=2, prompt_lookup_num_tokens=3), ValueError, "does not combine"),
    ],
)
def test_beam_errors_are_named(model, tok, call, error, words):
    with pytest.raises(error) as info:
        call(_engine(model[1], tok))
    assert words in str(info.value)


def test_beams_through_the_triton_kernels_equal_the_torch_path(model, tok):
    """Beams regroup the KV cache rows between steps; the decode kernels (interpreter) see the same."""
    from codellama_fast.kernels.triton_ops import TritonOps

    _, path = model
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, else the interpreter
    ref, fast = (Engine(load_model(path, dtype="float32", device=device, backend="torch"), tok) for _ in range(2))
    fast.model.ops = TritonOps()
    kw = {"max_new_tokens": 6, "stop_at_eos": False, "num_beams": 3, "num_return_sequences": 3, "top_logprobs": 3}
    a, b = ref.generate(["x = [", "def g():"], **kw), fast.generate(["x = [", "def g():"], **kw)
    assert a.token_ids == b.token_ids
    assert logprobs_close(a.sequence_scores, b.sequence_scores, 1e-4)
    assert [[[i for i, _ in pos] for pos in row] for row in a.top_logprobs] == [[[i for i, _ in pos] for pos in row] for row in b.top_logprobs]


def test_reordering_skips_the_prompt_slots_a_prompts_beams_share():
    """reorder_rows(start=t): rows regrouped within each prompt's beams, whose prompt slots (< t)
    are alike, equal a regrouping of every slot."""
    from codellama_fast.engine import LlamaConfig
    from codellama_fast.engine.cache import KVCache

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=48)
    b, k, t, filled = 2, 3, 5, 9
    cache = KVCache(cfg, b * k, 12, torch.float32, torch.device("cpu"))
    for kc, vc in cache.layers:
        for x in (kc, vc):
            x.normal_()
            x[:, :, :t] = x[::k, :, :t].repeat_interleave(k, dim=0)  # the prompt copied to its beams
    want = [(kc.clone(), vc.clone()) for kc, vc in cache.layers]
    order = torch.tensor([2, 2, 0, 4, 3, 3])  # each row's parent among its own prompt's beams
    for kc, vc in want:
        kc[:, :, :filled], vc[:, :, :filled] = kc[:, :, :filled][order], vc[:, :, :filled][order]
    cache.reorder_rows(order, filled, start=t)
    for (kc, vc), (wk, wv) in zip(cache.layers, want):
        assert torch.equal(kc, wk) and torch.equal(vc, wv)


def test_beams_read_their_prompt_once_per_step(model, tok, monkeypatch):
    """Each prompt's beams hold the same prompt slots: every step's attention reads them once per
    prompt (engine/shared_prompt_attention.py, counted), and the beams are transformers'."""
    from codellama_fast.engine import shared_prompt_attention as SPA
    from tests.engine_helpers import spy_shapes

    monkeypatch.setattr(SPA, "MIN_SHARED_ELEMENTS", 0)
    hf, path = model
    engine = _engine(path, tok)
    calls = spy_shapes(monkeypatch, SPA, "attention")
    rows = [tok.encode(PROMPT), tok.encode("x = [")]
    got = _same(engine, hf, rows, 8, None, num_beams=3, num_return_sequences=2)
    assert len(got.token_ids) == 4
    assert calls and all(shape[0] == 6 and shape[1] == 1 for shape in calls)  # 2 prompts x 3 beams, one token each


@pytest.mark.parametrize("kw", [{"num_beams": 3, "num_return_sequences": 2},
                                {"num_beams": 4, "num_return_sequences": 3, "do_sample": True, "temperature": 0.8, "top_k": 5}])
def test_beams_on_the_decode_states_step_equal_the_uncaptured_loop(model, tok, monkeypatch, kw):
    """With the graph-decode step (captured on CUDA, run eagerly here) every beam step replays the
    decode state's step over its cache, the beams regrouped there in place: the beams, their scores
    and each step's logits (kept per step, not the step's reused buffer) are the uncaptured loop's,
    and beam search's are transformers'; the state is kept for the next call of as many rows."""
    from codellama_fast.engine.cuda_graph import GraphDecoder

    hf, path = model
    engine = _engine(path, tok)
    engine.use_cuda_graph = "eager"
    replays = []
    real = GraphDecoder.replay
    monkeypatch.setattr(GraphDecoder, "replay", lambda self: replays.append(self.tok.shape[0]) or real(self))
    rows = [tok.encode(PROMPT), tok.encode("x = [")]
    seed = fresh_seed()
    args = dict(input_ids=rows, max_new_tokens=8, stop_at_eos=False, seed=seed, output_logits=True, **kw)
    got = engine.generate(**args)
    k = kw["num_beams"]
    assert replays and set(replays) == {2 * k} and len(replays) == len(got.logits) - 1  # every step after the prefill's
    plain = _engine(path, tok).generate(**args)
    assert got.token_ids == plain.token_ids, ("model seed", MODEL_SEED[0], seed)
    assert logprobs_close(got.sequence_scores, plain.sequence_scores, 1e-5)
    assert len(plain.logits) == len(got.logits)
    for ours, theirs in zip(got.logits, plain.logits):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if "do_sample" not in kw:
        _same(engine, hf, rows, 8, None, **kw)
    assert [s.batch for s in engine._graphs._states] == [2 * k]


@pytest.mark.parametrize("ended", ["at the last step", "earlier", "not at all"])
def test_the_best_beams_slots_are_the_prompts_then_its_rows(ended):
    """What a search of one prompt keeps for the next turn: where its best beam ended at the last
    step, the prompt's slots from the prompt's own cache (the beams' rows may lack them) and the
    best beam's fed tokens' slots from the row it came from; otherwise the prompt's cache itself."""
    from codellama_fast.engine import LlamaConfig
    from codellama_fast.engine import beam_search as BS
    from codellama_fast.engine.cache import KVCache

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=48)
    t, steps, k = 5, 4, 3
    prompt = KVCache(cfg, 1, t, torch.float32, torch.device("cpu"), grow=False)
    beams = KVCache(cfg, k, t + steps, torch.float32, torch.device("cpu"), grow=False)
    for (pk, pv), (ck, cv) in zip(prompt.layers, beams.layers):
        for x in (pk, pv):
            x.copy_(torch.randn_like(x))
        for x in (ck, cv):
            x.copy_(torch.randn_like(x))
            x[1:, :, :t] = float("nan")  # the other beams' rows hold no prompt
    seq = torch.tensor([[[7, 8, 9, 10], [7, 8, 9, 11], [7, 8, 1, 2]]])  # [1, k, steps]
    done = torch.tensor([[ended != "not at all", True, True]])
    length = torch.tensor([[steps if ended == "at the last step" else steps - 1, steps, steps]])
    parent = torch.tensor([[2, 0, 1]])  # the best came from row 2
    kept, answer = BS._best_beam_slots(cfg, prompt, beams, {"seq": seq}, done, length, parent, steps)
    if ended != "at the last step":
        assert kept is prompt and answer == []
        return
    assert answer == [7, 8, 9] and kept.batch == 1 and kept.max_len == t + steps - 1
    for (gk, gv), (pk, pv), (ck, cv) in zip(kept.layers, prompt.layers, beams.layers):
        assert torch.equal(gk[:, :, :t], pk) and torch.equal(gv[:, :, :t], pv)
        assert torch.equal(gk[0, :, t:], ck[2, :, t : t + steps - 1]) and torch.equal(gv[0, :, t:], cv[2, :, t : t + steps - 1])
