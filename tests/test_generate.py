"""Generation behaviour: stops (EOS, EOT, extra ids, stop strings), streaming, infilling, chat,
sampling controls. A scripted model (its logits replaced by a fixed token script) isolates the
engine's logic from any model's numbers; the chat prompt is checked against Meta's rules written
here on sentencepiece."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast import CodeLlamaTokenizerFast, InfillingUnsupported  # noqa: E402
from codellama_fast.engine import Engine, load_model  # noqa: E402
from codellama_fast.engine.sampling import SamplingParams, filter_logits, sample  # noqa: E402
from tests.conftest import LLAMA2_MODEL  # noqa: E402
from tests.engine_helpers import fresh_seed, make_hf_model, save, scripted  # noqa: E402
from tests.meta_reference import meta_chat_reference  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save(make_hf_model("gqa4", seed=7), tmp_path_factory.mktemp("gen"))


def test_infill_prompt_and_stop_at_eot(model_dir, tok):
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    middle_ids = tok.encode(" x = 1\n    y = x", add_special_tokens=False)
    calls = scripted(engine, middle_ids + [tok.eot_id, 500, 600])
    res = engine.infill("def f():\n   ", "\n    return y\n", max_new_tokens=50)
    assert calls[0] == tok("def f():\n   <FILL_ME>\n    return y\n")["input_ids"]
    assert res.generation.token_ids[0] == middle_ids
    assert res.generation.finish_reasons == ["eos"]
    assert res.middle == tok._native.decode_keep_space(middle_ids, True)  # leading space kept
    assert res.text == "def f():\n   " + res.middle + "\n    return y\n"
    scripted(engine, middle_ids + [tok.eot_id, 500, 600])
    assert engine.fill("def f():\n   <FILL_ME>\n    return y\n", max_new_tokens=50) == res.middle
    spm = engine.infill("a", "b", suffix_first=True, max_new_tokens=3)
    assert spm.generation.token_ids  # ran


def test_generation_stops_at_eos_and_extra_ids(model_dir, tok):
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    scripted(engine, [100, 200, tok.eos_token_id, 300])
    assert engine.generate("x", max_new_tokens=10).token_ids == [[100, 200]]
    scripted(engine, [100, 200, 300, 400])
    r = engine.generate("x", max_new_tokens=10, stop_token_ids=[300])
    assert r.token_ids == [[100, 200]] and r.finish_reasons == ["eos"]
    scripted(engine, [100, 200, tok.eos_token_id, 300])
    r = engine.generate("x", max_new_tokens=4, stop_at_eos=False)
    assert r.token_ids == [[100, 200, tok.eos_token_id, 300]] and r.finish_reasons == ["length"]


def test_stop_strings_cut_text_and_stream(model_dir, tok):
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    script = tok.encode("return a\n\ndef g():\n", add_special_tokens=False)
    scripted(engine, script + [2])
    r = engine.generate("def f(a):\n    ", max_new_tokens=30, stop=["\n\n"])
    assert r.text == " return a" or r.text == "return a"
    assert r.finish_reasons == ["stop"]
    scripted(engine, script + [2])
    assert "".join(engine.stream("def f(a):\n    ", max_new_tokens=30, stop=["\n\n"])) == r.text
    # an empty stop string would match everywhere: it is dropped, and the others still act
    scripted(engine, script + [2])
    assert engine.generate("def f(a):\n    ", max_new_tokens=30, stop=["", "\n\n"]).text == r.text
    scripted(engine, script + [2])
    assert engine.generate("def f(a):\n    ", max_new_tokens=30, stop="").finish_reasons == ["eos"]


def test_streaming_concatenates_to_full_decode(model_dir, tok):
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    # Multi-byte characters split over byte-fallback pieces, word-initial spaces, a newline.
    script = tok.encode("  naïve 日本 🦙 x\n y", add_special_tokens=False) + [3 + 0xF0, 3 + 0x9F, 2]
    scripted(engine, script)
    deltas = list(engine.stream("s", max_new_tokens=40))
    scripted(engine, script)
    full = engine.generate("s", max_new_tokens=40)
    assert "".join(deltas) == full.text
    assert len(deltas) > 3


def test_real_model_stream_equals_generate(model_dir, tok):
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    text = engine.generate("def main():", max_new_tokens=30, stop_at_eos=False).text
    assert "".join(engine.stream("def main():", max_new_tokens=30, stop_at_eos=False)) == text
    empty = engine.generate("", max_new_tokens=5, stop_at_eos=False)  # BOS alone
    assert len(empty.token_ids[0]) == 5


def test_sampling_seed_top_k_top_p(model_dir, tok):
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    a = engine.generate("x", max_new_tokens=12, temperature=1.0, seed=3, stop_at_eos=False)
    b = engine.generate("x", max_new_tokens=12, temperature=1.0, seed=3, stop_at_eos=False)
    assert a.token_ids == b.token_ids
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, -1.0]])
    assert torch.isinf(filter_logits(logits, 2, None)).tolist() == [[True, True, False, False, True]]
    probs = torch.softmax(logits, -1)[0]  # 3: 0.64, 2: 0.24 -> top_p 0.7 keeps {3, 2}
    kept = ~torch.isinf(filter_logits(logits, None, 0.7))
    assert kept.tolist() == [[False, False, True, True, False]]
    assert probs[3] < 0.7 < probs[3] + probs[2]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, SamplingParams(1.0), g) for _ in range(4000)])
    freq = torch.bincount(draws.flatten(), minlength=5).float() / draws.numel()
    assert torch.allclose(freq, probs, atol=0.03)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


def test_repetition_penalty_equals_transformers_processor():
    """apply_repetition_penalty on a seen-token mask gives transformers' RepetitionPenaltyLogitsProcessor
    result on the token ids (repeats in the ids count once, as a scatter does)."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from codellama_fast.engine.sampling import apply_repetition_penalty

    g = torch.Generator().manual_seed(fresh_seed())
    for penalty in (1.3, 0.7, 2.0):
        logits = torch.randn(3, 500, generator=g) * 4
        ids = torch.randint(0, 500, (3, 40), generator=g)
        seen = torch.zeros(3, 500, dtype=torch.bool).scatter_(1, ids, True)
        want = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        assert torch.equal(apply_repetition_penalty(logits, seen, penalty), want)


def test_filters_keep_what_transformers_warpers_keep():
    """Temperature, then top-k, then top-p keep the same tokens as transformers' logits warpers in
    that order (random logits without ties: at a tie the choice is arbitrary in both; in float64, so
    that the two ways of summing probabilities cannot round a token across the top-p boundary)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    def warped(logits, t, k, p):
        out = TemperatureLogitsWarper(t)(None, logits.clone())
        out = TopKLogitsWarper(k)(None, out) if k is not None else out
        return TopPLogitsWarper(p)(None, out) if p is not None else out

    g = torch.Generator().manual_seed(fresh_seed())
    for _ in range(200):
        v = int(torch.randint(2, 300, (), generator=g))
        logits = torch.randn(3, v, generator=g, dtype=torch.float64) * float(torch.rand((), generator=g) * 6)
        k = int(torch.randint(1, v + 3, (), generator=g))
        p, t = float(torch.rand((), generator=g)), 0.2 + float(torch.rand((), generator=g))
        for kk, pp in ((k, p), (None, p), (k, None)):
            kept, want = ~torch.isinf(filter_logits(logits / t, kk, pp)), ~torch.isinf(warped(logits, t, kk, pp))
            assert torch.equal(kept, want), (v, kk, pp)


def test_chat_prompt_matches_meta(model_dir, tok, sp_codellama):
    from codellama_fast.tokenizer.chat import chat_prompt_ids

    dialog = [
        {"role": "system", "content": "Answer in Python. </s> stays text."},
        {"role": "user", "content": "Write fizzbuzz. <s>"},
        {"role": "assistant", "content": " def fizzbuzz(): ... "},
        {"role": "user", "content": "Now in one line."},
    ]
    assert chat_prompt_ids(tok, dialog) == meta_chat_reference(sp_codellama, dialog)
    assert chat_prompt_ids(tok, dialog[1:2]) == meta_chat_reference(sp_codellama, dialog[1:2])
    with pytest.raises(ValueError, match="alternate"):
        chat_prompt_ids(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    scripted(engine, tok.encode("print(1)", add_special_tokens=False) + [2])
    assert engine.chat(dialog[1:2], max_new_tokens=20) == "print(1)"


def test_stream_chat_concatenates_to_chat(model_dir, tok):
    """stream_chat's deltas join to chat()'s answer: the same leading and trailing whitespace
    dropped, the text in several pieces."""
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    dialog = [{"role": "user", "content": "Write print(1)"}]
    answer = tok.encode(" \n print(1)\nprint(2)  \n", add_special_tokens=False) + [2]
    scripted(engine, answer)
    whole = engine.chat(dialog, max_new_tokens=30)
    scripted(engine, answer)
    deltas = list(engine.stream_chat(dialog, max_new_tokens=30))
    assert whole == "print(1)\nprint(2)" == "".join(deltas) and len(deltas) > 2


def test_stripped_deltas_concatenate_to_the_stripped_text():
    from hypothesis import given
    from hypothesis import strategies as st

    from codellama_fast.engine.generate import stripped_deltas

    @given(st.lists(st.text(alphabet=" \n\tab", max_size=5), max_size=8))
    def check(deltas):
        assert "".join(stripped_deltas(iter(deltas))) == "".join(deltas).strip()

    check()


@pytest.mark.parametrize("where", ["config", "jinja file"])
def test_chat_uses_a_fine_tunes_own_template(model_dir, tmp_path, where):
    """With a chat template other than Code Llama Instruct's in the tokenizer config (or in
    chat_template.jinja, where transformers 4.5x saves it), engine.chat prompts with it (and the
    generation prompt), as apply_chat_template gives it."""
    import json
    import shutil

    from tests.conftest import CHATML, CODELLAMA_DIR

    for name in ("tokenizer.json", "tokenizer.model"):
        shutil.copy(CODELLAMA_DIR / name, tmp_path / name)
    cfg = json.loads((CODELLAMA_DIR / "tokenizer_config.json").read_text())
    if where == "config":
        cfg["chat_template"] = CHATML
    else:
        (tmp_path / "chat_template.jinja").write_text(CHATML)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = CodeLlamaTokenizerFast.from_pretrained(tmp_path)
    assert tok.chat_template == CHATML
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    calls = scripted(engine, tok.encode("print(1)", add_special_tokens=False) + [2])
    dialog = [{"role": "user", "content": "Write print(1)"}]
    assert engine.chat(dialog, max_new_tokens=20) == "print(1)"
    assert calls[0] == tok.apply_chat_template(dialog, add_generation_prompt=True)
    assert calls[0][-4:] == tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-4:]


def test_infill_unsupported_vocab_is_clear(tmp_path):
    llama2 = CodeLlamaTokenizerFast.from_pretrained(LLAMA2_MODEL)
    folder = save(make_hf_model("mha", seed=1, vocab_size=32000), tmp_path / "m")
    engine = Engine(load_model(folder, device="cpu"), llama2)
    with pytest.raises(InfillingUnsupported, match="34B"):
        engine.infill("a", "b")


def test_tokenizer_and_model_vocab_must_agree(model_dir):
    llama2 = CodeLlamaTokenizerFast.from_pretrained(LLAMA2_MODEL)
    with pytest.raises(Exception, match="32000 pieces but the model's vocabulary is 32016"):
        Engine(load_model(model_dir, device="cpu"), llama2)


def test_generate_on_an_infilling_prompt_stops_at_eot(model_dir, tok):
    """A <FILL_ME> text given to generate/stream (or its ids) is an infilling prompt: the middle ends
    at ▁<EOT>, where transformers' generate keeps going (its issue #28150); stop_at_eos=False or
    transformers' eos_token_id asks for the raw continuation."""
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    text = "def f():\n   <FILL_ME>\n    return y\n"
    middle = tok.encode(" x = 1", add_special_tokens=False)
    script = middle + [tok.eot_id, 500, 600, 700]
    scripted(engine, script)
    res = engine.generate(text, max_new_tokens=10)
    assert res.token_ids == [middle] and res.finish_reasons == ["eos"]
    assert res.text == tok.decode_infilling(middle + [tok.eot_id, 500])
    scripted(engine, script)
    assert engine.generate(input_ids=[tok.encode(text)], max_new_tokens=10).token_ids == [middle]
    scripted(engine, script)
    assert "".join(engine.stream(text, max_new_tokens=10)) == res.text
    scripted(engine, script)
    assert engine.generate(text, max_new_tokens=len(script), stop_at_eos=False).token_ids == [script]
    scripted(engine, [500, tok.eot_id, 600])
    assert engine.generate("plain text", max_new_tokens=3).token_ids == [[500, tok.eot_id, 600]]  # not an infilling prompt


def test_infill_and_fill_a_batch_like_one_at_a_time(model_dir, tok):
    """Lists of prefixes and suffixes fill together (left-padded batch): each middle equals the one
    filled alone (greedy), with its own result row."""
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    prefixes = ["def f(x):\n    ", "import os\n", "x = ["]
    suffixes = ["\n    return y\n", "\nprint(path)", "]"]
    batch = engine.infill(prefixes, suffixes, max_new_tokens=12)
    for res, p, s in zip(batch, prefixes, suffixes):
        alone = engine.infill(p, s, max_new_tokens=12)
        assert (res.prefix, res.suffix, res.middle) == (alone.prefix, alone.suffix, alone.middle)
        assert res.generation.token_ids == alone.generation.token_ids and res.text == p + res.middle + s
    texts = [p + "<FILL_ME>" + s for p, s in zip(prefixes, suffixes)]
    assert engine.fill(texts, max_new_tokens=12) == [r.middle for r in batch]
    assert engine.fill(texts[0], max_new_tokens=12) == batch[0].middle
    with pytest.raises(ValueError, match="as many suffixes"):
        engine.infill(prefixes, suffixes[:2])
    with pytest.raises(TypeError, match="prefix and suffix"):
        engine.infill("a", ["b"])
    with pytest.raises(ValueError, match="text 1 contains 0"):
        engine.fill([texts[0], "no marker"])


def test_infill_several_samples_per_gap(model_dir, tok):
    """num_return_sequences=n samples n middles per gap, gap by gap (fill gives the same middles
    as infill); greedy refuses n > 1."""
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    kw = dict(max_new_tokens=8, temperature=1.0, seed=3, num_return_sequences=3)
    one = engine.infill("def f(x):\n    ", "\n    return y\n", **kw)
    assert len(one) == 3 and all(r.prefix == "def f(x):\n    " for r in one)
    many = engine.infill(["def f(x):\n    ", "x = ["], ["\n    return y\n", "]"], **kw)
    assert [r.suffix for r in many] == ["\n    return y\n"] * 3 + ["]"] * 3
    assert engine.fill(["def f(x):\n    <FILL_ME>\n    return y\n", "x = [<FILL_ME>]"], **kw) == [r.middle for r in many]
    assert len(engine.fill("x = [<FILL_ME>]", **kw)) == 3
    with pytest.raises(ValueError, match="needs sampling"):
        engine.infill("a", "b", num_return_sequences=2)


def test_only_infilling_rows_of_a_batch_stop_at_eot(model_dir, tok):
    """In a batch with an infilling prompt and a plain one, ▁<EOT> ends the infilling row only."""
    engine = Engine(load_model(model_dir, device="cpu"), tok)
    scripted(engine, [500, tok.eot_id, 600, 700])  # every row gets the same tokens
    res = engine.generate(["x = [1, <FILL_ME>]", "plain text"], max_new_tokens=4)
    assert res.token_ids == [[500], [500, tok.eot_id, 600, 700]]
    assert res.finish_reasons == ["eos", "length"]


def test_transformers_streamers_get_what_transformers_gives_them(model_dir, tok):
    """A TextIteratorStreamer (transformers' tokenizer) fed by our generate yields the same chunks
    as when transformers' generate feeds it, for the same model; a TextStreamer's end() comes
    even when generation fails, and a batch or beams are refused."""
    import threading

    from transformers import AutoTokenizer, TextIteratorStreamer

    from tests.conftest import CODELLAMA_DIR

    hf_tok = AutoTokenizer.from_pretrained(CODELLAMA_DIR)
    hf = make_hf_model("gqa4", seed=7)
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    prompt = "def fib(n):\n    "

    def chunks(run) -> list[str]:
        streamer = TextIteratorStreamer(hf_tok, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=run, args=(streamer,))
        thread.start()
        out = list(streamer)
        thread.join()
        return out

    ids = torch.tensor([tok.encode(prompt)])
    want = chunks(lambda s: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                                        eos_token_id=None, pad_token_id=0, streamer=s))
    got = chunks(lambda s: engine.generate(prompt, max_new_tokens=30, stop_at_eos=False, streamer=s))
    assert got == want and len(want) > 3

    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.tolist())

        def end(self):
            self.calls.append("end")

    rec = Recorder()
    result = engine.generate(prompt, max_new_tokens=5, stop_at_eos=False, streamer=rec)
    assert rec.calls == [[tok.encode(prompt)], *[[t] for t in result.token_ids[0]], "end"]
    rec = Recorder()
    with pytest.raises(ValueError, match="left no token to choose"):
        engine.generate(prompt, max_new_tokens=5, streamer=rec, prefix_allowed_tokens_fn=lambda b, s: [])
    assert rec.calls[-1] == "end"
    with pytest.raises(ValueError, match="streamer takes one sequence"):
        engine.generate(["a", "b"], max_new_tokens=2, streamer=Recorder())
    with pytest.raises(ValueError, match="streamer cannot be used with beam search"):
        engine.generate("a", max_new_tokens=2, num_beams=2, streamer=Recorder())
    with pytest.raises(TypeError, match="streamer must have put"):
        engine.generate("a", max_new_tokens=2, streamer=print)


def test_stopping_criteria_end_rows_as_in_transformers(model_dir, tok):
    """A per-row criterion (a bool tensor [B]) and an all-rows one (a bool), as transformers'
    StoppingCriteriaList calls them: a row ends after the token the criterion saw."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    hf = make_hf_model("gqa4", seed=7)
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    rows = [tok.encode("def fib(n):\n    "), tok.encode("import sys\nimport os\n")]
    rows = [r[:6] for r in rows]  # one length: no padding, so both sides see the same input_ids
    free = engine.generate(input_ids=rows, max_new_tokens=20, stop_at_eos=False).token_ids
    marks = [free[0][4], free[1][7]]

    class SawMark(StoppingCriteria):  # row b stops once its generated part holds marks[b]
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([marks[b] in input_ids[b, 6:].tolist() for b in range(input_ids.shape[0])])

    class LongerThan(StoppingCriteria):  # the whole batch stops at 6 + 15 tokens
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids.shape[1] >= 21

    x = torch.tensor(rows)
    for criteria in ([SawMark()], [LongerThan()], [SawMark(), LongerThan()]):
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False, eos_token_id=None,
                          pad_token_id=0, stopping_criteria=StoppingCriteriaList(criteria))
        want = []
        for b, row in enumerate(out[:, 6:].tolist()):  # transformers pads a finished row: cut it after its stop
            cut = [len(row)] + ([row.index(marks[b]) + 1] if any(isinstance(c, SawMark) for c in criteria) and marks[b] in row else [])
            want.append(row[: min(cut)])
        got = engine.generate(input_ids=rows, max_new_tokens=20, stop_at_eos=False, stopping_criteria=StoppingCriteriaList(criteria))
        assert got.token_ids == want, criteria
        assert got.finish_reasons == ["stop" if len(w) < 20 else "length" for w in want]
    saw = {"stopping_criteria": [lambda ids, scores: marks[0] in ids[0, 6:].tolist()], "max_new_tokens": 20, "stop_at_eos": False}
    streamed = "".join(engine.stream(rows[0], **saw))
    assert streamed == engine.generate(input_ids=[rows[0]], **saw).text
    assert len(streamed) < len(engine.generate(input_ids=[rows[0]], max_new_tokens=20, stop_at_eos=False).text)
    with pytest.raises(TypeError, match="stopping_criteria must be"):
        engine.generate("x", max_new_tokens=2, stopping_criteria=[3])
    for answer, error, words in ((None, TypeError, "must return a bool, or one per row of input_ids \\(a BoolTensor \\[2\\]\\)"),
                                 ([True], ValueError, "returned 1 values for the 2 rows"),
                                 (torch.ones(2, 3, dtype=torch.bool), ValueError, "shape \\(2, 3\\)")):
        with pytest.raises(error, match=words):
            engine.generate(input_ids=rows, max_new_tokens=3, stopping_criteria=[lambda ids, scores, a=answer: a])
    with pytest.raises(ValueError, match="returned 1 values for the 8 rows"):  # with beams, the rows are the candidates
        engine.generate(input_ids=rows, max_new_tokens=3, num_beams=2, stopping_criteria=[lambda ids, scores: [True]])


def test_max_time_stops_where_transformers_does_and_keeps_the_tokens(model_dir, tok, monkeypatch):
    """max_time counts from the call (the prompt's run included) and is checked after each token,
    as transformers' MaxTimeCriteria: with a deadline already past at the first token both give
    that one token. On a clock that a logits processor moves 0.25 s per step (the engine's own
    clock replaced, so nothing sleeps), max_time=1.0 ends every sequence after its fifth token,
    keeping the tokens the unbounded run starts with."""
    import types

    import codellama_fast.engine.stopping as stopping_module

    hf = make_hf_model("gqa4", seed=7)
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    rows = [tok.encode("def fib(n):\n    "), tok.encode("import sys\nimport os\n")]
    rows = [r[:6] for r in rows]
    x = torch.tensor(rows)
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                      max_time=1e-6)
    got = engine.generate(input_ids=rows, max_new_tokens=20, stop_at_eos=False, max_time=1e-6)
    assert got.token_ids == out[:, 6:].tolist() and len(got.token_ids[0]) == 1
    assert got.finish_reasons == ["time", "time"]

    clock = [1000.0]
    monkeypatch.setattr(stopping_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def step_takes_a_quarter_second(ids, scores):
        clock[0] += 0.25
        return scores

    free = engine.generate(input_ids=rows, max_new_tokens=30, stop_at_eos=False).token_ids
    timed = engine.generate(input_ids=rows, max_new_tokens=30, stop_at_eos=False, logits_processor=step_takes_a_quarter_second,
                            max_time=1.0)
    assert timed.finish_reasons == ["time", "time"] and timed.token_ids == [f[:5] for f in free]
    streamed = "".join(engine.stream(rows[0], max_new_tokens=30, stop_at_eos=False, logits_processor=step_takes_a_quarter_second,
                                     max_time=1.0))
    assert streamed == engine.generate(input_ids=[rows[0]], max_new_tokens=5, stop_at_eos=False).text
    assert engine.generate(input_ids=rows, max_new_tokens=5, stop_at_eos=False, max_time=60.0).finish_reasons == ["length"] * 2
    for bad, error in ((0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="max_time"):
            engine.generate("x", max_new_tokens=2, max_time=bad)


@pytest.mark.parametrize("kw", [
    {"do_sample": False, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9},
    {"do_sample": True, "min_p": 0.05, "num_return_sequences": 2},
    {"do_sample": True, "temperature": 1.3, "top_k": 10, "renormalize_logits": True},
    {"do_sample": False, "sequence_bias": [[[4000], 3.0]], "renormalize_logits": True},
])
def test_output_scores_and_logits_equal_transformers(model_dir, tok, kw):
    """transformers' output_scores (after its processors and, when sampling, its warpers) and
    output_logits, step by step, for a batch whose first row ends early at an end token: each
    row's entries up to its end (the step that chose the end token included).

    The two models' fp32 logits differ in their last bits, so a sampled draw, an argmax or a
    filter's cut that sits on an edge can fall the other way (rarely: one of 2,950 seeds tried
    with min_p, where transformers' logits tied two tokens at top_k's 50th place and ours put
    one of them an ulp lower); that row is compared up to that step, where its scores must still
    agree but for at most two tokens on a sampling filter's edge (greedy rules cut exactly). A
    bug would part every row; one may part."""
    hf = make_hf_model("gqa4", seed=7)
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    rows = [r[:6] for r in (tok.encode("def fib(n):\n    "), tok.encode("import sys\nimport os\n"))]
    seed = fresh_seed()
    free = engine.generate(input_ids=rows, max_new_tokens=12, stop_at_eos=False, seed=seed, **kw).token_ids
    end = free[0][5]
    x = torch.tensor(rows)
    torch.manual_seed(seed)
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, eos_token_id=end, pad_token_id=0,
                      output_scores=True, output_logits=True, return_dict_in_generate=True, **kw)
    got = engine.generate(input_ids=rows, max_new_tokens=12, eos_token_id=end, seed=seed, output_scores=True, output_logits=True,
                          return_dict_in_generate=True, **kw)
    parted = []  # (row, step) where a row's tokens went apart on an edge
    for row, ids in enumerate(got.token_ids):
        want = out.sequences[row, 6:].tolist()
        steps = len(ids) + (got.finish_reasons[row] == "eos")
        for step in range(min(steps, len(out.scores))):
            assert torch.allclose(got.logits[step][row], out.logits[step][row], atol=1e-4, rtol=1e-4), (row, step)
            mine, theirs = got.scores[step][row], out.scores[step][row]
            cut = torch.isinf(mine) != torch.isinf(theirs)  # tokens one side's filters cut and the other's kept
            assert not cut.any() or kw["do_sample"], (row, step)  # greedy rules (bans) cut exactly
            finite = torch.isfinite(mine) & torch.isfinite(theirs)
            assert int(cut.sum()) <= 2 and torch.allclose(mine[finite], theirs[finite], atol=1e-4, rtol=1e-4), (row, step)
            if cut.any() or (step < len(ids) and ids[step] != want[step]):
                parted.append((row, step))
                break
        else:
            assert ids == want[: len(ids)] and steps <= len(out.scores), row
    assert len(parted) <= 1, parted
    if not parted:
        assert len(got.scores) == len(got.logits) == len(out.scores)  # until every row has ended
    if all(row != 0 for row, _ in parted):
        assert got.finish_reasons[0] == "eos" and len(got.token_ids[0]) <= 5
    one = got.row(1)
    assert len(one.scores) == len(got.scores) and torch.equal(one.scores[0][0], got.scores[0][1])


def test_output_scores_on_the_guessing_path_equal_plain_decoding(model_dir, tok):
    engine = Engine(load_model(model_dir, dtype="float32", device="cpu"), tok)
    prompt = "def fib(n):\n    return fib(n - 1) + fib(n - 2)\n\ndef fib"
    kw = {"max_new_tokens": 16, "stop_at_eos": False, "output_scores": True, "output_logits": True}
    plain = engine.generate(prompt, **kw)
    guessed = engine.generate(prompt, prompt_lookup_num_tokens=4, **kw)
    assert guessed.token_ids == plain.token_ids and len(guessed.scores) == len(plain.scores) == 16
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(guessed.scores, plain.scores))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(guessed.logits, plain.logits))
    assert plain.scores[0].shape == (1, engine.model.config.vocab_size) and plain.logits[0].dtype == torch.float32
    with pytest.raises(TypeError, match="output_logits must be True or False"):
        engine.generate(prompt, output_logits="yes")
    with pytest.raises(TypeError, match="only generate\\(\\) returns each step's scores"):
        list(engine.stream(prompt, output_scores=True))
    assert engine.generate(prompt, max_new_tokens=2, output_scores=None, output_logits=None).scores is None


def test_an_open_or_dropped_stream_leaves_the_callers_torch_modes_alone(model_dir, tok):
    """Between the chunks of a stream the caller runs its own torch code: it must find autograd
    on and inference mode off, as before the stream, and tensors it makes must be normal ones;
    also after a half-read stream is dropped, or ended by an error."""
    import gc

    engine = Engine(load_model(model_dir, device="cpu"), tok)
    weight = torch.ones(3, requires_grad=True)

    def caller_state_is_intact():
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
        assert not torch.zeros(2).is_inference()
        assert (weight * 2).sum().requires_grad

    for chat in (False, True):
        stream = (engine.stream_chat([{"role": "user", "content": "hi"}], max_new_tokens=6) if chat
                  else engine.stream("def f(", max_new_tokens=6, stop_at_eos=False))
        next(stream)
        caller_state_is_intact()
        next(stream, None)
        caller_state_is_intact()
        del stream
        gc.collect()
        caller_state_is_intact()
    calls = []

    def failing_rule(input_ids, scores):
        calls.append(1)
        if len(calls) > 1:
            raise KeyError("the caller's rule failed")
        return scores

    stream = engine.stream("def f(", max_new_tokens=6, logits_processor=[failing_rule])
    next(stream)
    with pytest.raises(KeyError):
        next(stream)
    caller_state_is_intact()
    with torch.no_grad():  # the caller's own mode is kept too
        stream = engine.stream("def f(", max_new_tokens=4, stop_at_eos=False)
        next(stream)
        assert not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    caller_state_is_intact()
