"""NaN or inf logits (float16 activations that overflow, weights that hold NaN) raise
NonFiniteLogitsError on every decoding path instead of returning meaningless tokens (greedy
decoding would otherwise pick id 0 again and again); the tokens streamed before stay valid.
Rules that leave a row no token at some step raise NoTokenAllowedError the same way (transformers
returns id 0 there when greedy, and raises from torch.multinomial when sampling)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast import NonFiniteLogitsError, NoTokenAllowedError
from codellama_fast.engine import Engine, load_model

from tests.engine_helpers import fp32_engine, fresh_seed, make_hf_model, random_checkpoint, save

PROMPT = "def quicksort(items):\n    "


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return random_checkpoint(tmp_path_factory, "mha", "nonfinite")[2]


def _poisoned_after(engine: Engine, good_calls: int, script: list[int]) -> None:
    """The model's forward gives finite logits for its first `good_calls` calls, then NaN ones.
    The finite ones choose by the input token at each position: `script[0]` after any token
    outside `script`, then each script token is followed by the next one (cycling), so every
    decoding path (one token, several positions, beams) emits `script` in order."""
    vocab = engine.model.config.vocab_size
    follows = {a: b for a, b in zip(script, script[1:] + script[:1])}
    calls = [0]

    def forward(tokens, ctx, caches, last_only=True):
        calls[0] += 1
        b, t = tokens.shape
        logits = torch.zeros(b, t, vocab)
        if calls[0] > good_calls:
            logits[:] = float("nan")
        else:
            for i in range(b):
                for j in range(t):
                    logits[i, j, follows.get(int(tokens[i, j]), script[0])] = 10.0
        return logits[:, -1] if last_only else logits

    engine.model.forward = forward  # type: ignore[method-assign]


@pytest.mark.parametrize("options", [
    {},
    {"temperature": 0.8, "top_p": 0.9, "seed": 3},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    {"num_beams": 2},
    {"prompt_lookup_num_tokens": 3},
])
def test_nan_logits_mid_generation_raise(folder, tok, options):
    engine = fp32_engine(folder, tok)
    _poisoned_after(engine, 3, tok.encode("lag girl here now", add_special_tokens=False))
    with pytest.raises(NonFiniteLogitsError, match="NaN or inf") as caught:
        engine.generate(PROMPT, max_new_tokens=12, stop_at_eos=False, **options)
    assert "float32" in str(caught.value)  # an fp32 model: the weights are to blame, not overflow


def test_a_stream_yields_the_good_tokens_then_raises(folder, tok):
    engine = fp32_engine(folder, tok)
    script = tok.encode("lag girl here now", add_special_tokens=False)
    _poisoned_after(engine, 3, script)
    stream = engine.stream(PROMPT, max_new_tokens=12, stop_at_eos=False)
    got = [next(stream) for _ in range(3)]
    assert "".join(got) == tok._native.decode_keep_space(script[:3], True)
    with pytest.raises(NonFiniteLogitsError, match="at generated token 4"):
        next(stream)


def test_batched_generation_raises_when_one_row_goes_bad(folder, tok):
    engine = fp32_engine(folder, tok)
    real = engine.model.forward

    def forward(tokens, ctx, caches, last_only=True):
        logits = real(tokens, ctx, caches, last_only)
        logits[1] = float("inf")  # the second prompt's logits only
        return logits

    engine.model.forward = forward  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLogitsError):
        engine.generate([PROMPT, "import os"], max_new_tokens=4)


def test_float16_overflow_raises_and_names_bfloat16(tmp_path, tok):
    """A checkpoint whose MLP output exceeds float16's range (65504): transformers' own float16
    model gives non-finite logits on it and its float32 model finite ones; ours raises in
    float16, naming the dtypes that fit, and generates in float32."""
    hf = make_hf_model("mha", 5)
    with torch.no_grad():  # weights that float16 holds (at most 60000), whose products it does not
        w = hf.model.layers[0].mlp.down_proj.weight
        w.mul_(60000.0 / w.abs().max())
    folder = save(hf, tmp_path / "overflow")
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        assert torch.isfinite(hf(ids).logits).all()
        assert not torch.isfinite(hf.half()(ids).logits).all()
    half = Engine(load_model(folder, dtype="float16", device="cpu"), tok)
    with pytest.raises(NonFiniteLogitsError, match="float16 activations overflowed.*bfloat16"):
        half.generate(PROMPT, max_new_tokens=4)
    with pytest.raises(NonFiniteLogitsError, match="in text 0"):
        half.score(PROMPT + "return items")
    assert len(fp32_engine(folder, tok).generate(PROMPT, max_new_tokens=4, stop_at_eos=False).token_ids[0]) == 4


def test_finite_logits_never_raise_with_rules_that_ban_tokens(folder, tok):
    """-inf from the rules (banned tokens) is not the model's: only the raw logits are watched."""
    engine = fp32_engine(folder, tok)
    out = engine.generate(PROMPT, max_new_tokens=8, stop_at_eos=False, suppress_tokens=list(range(3, 20000)),
                          no_repeat_ngram_size=1, temperature=0.7, seed=1)
    assert len(out.token_ids[0]) == 8


class _BanAllFrom:
    """A logits processor that bans every token from its `n`-th call on (counting from 1)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, ids, scores):
        self.calls += 1
        return torch.full_like(scores, float("-inf")) if self.calls >= self.n else scores


@pytest.mark.parametrize("options", [
    {},
    {"temperature": 0.8, "top_k": 0, "seed": 3},
    {"prompt_lookup_num_tokens": 3},
    {"repetition_penalty": 1.2},
])
def test_rules_that_leave_no_token_raise(folder, tok, options):
    engine = fp32_engine(folder, tok)
    free = engine.generate(PROMPT, max_new_tokens=8, stop_at_eos=False, **options).token_ids[0]
    with pytest.raises(NoTokenAllowedError, match="left no token to choose (for sequence 0 )?at generated token 4"):
        engine.generate(PROMPT, max_new_tokens=8, stop_at_eos=False, logits_processor=_BanAllFrom(4), **options)
    text: list[str] = []
    with pytest.raises(NoTokenAllowedError):
        text.extend(engine.stream(PROMPT, max_new_tokens=8, stop_at_eos=False, logits_processor=_BanAllFrom(4), **options))
    # the first three tokens' text came out before (all of it, unless it ends inside a character)
    assert tok._native.decode_keep_space(free[:3], True).startswith("".join(text)) and text
    with pytest.raises(NoTokenAllowedError, match="at generated token 1"):
        engine.generate(PROMPT, max_new_tokens=4, suppress_tokens=list(range(engine.model.config.vocab_size)), **options)


def test_rules_that_leave_one_row_no_token_raise_in_a_batch(folder, tok):
    engine = fp32_engine(folder, tok)
    vocab = engine.model.config.vocab_size

    def ban_row_1(ids, scores):
        scores = scores.clone()
        scores[1] = float("-inf")
        return scores

    with pytest.raises(NoTokenAllowedError):
        engine.generate([PROMPT, "import os"], max_new_tokens=4, logits_processor=ban_row_1)
    # one allowed id a row may take is enough

    ok = engine.generate(PROMPT, max_new_tokens=4, stop_at_eos=False, suppress_tokens=list(range(1, vocab)))
    assert ok.token_ids == [[0, 0, 0, 0]]


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "seed": 5}])
def test_beams_that_the_rules_leave_no_token_raise(tmp_path, tok, sampling):
    """Beam search (and beam sample) raises as greedy decoding does when the rules leave none of a
    prompt's beams a token, naming the prompt: here two allowed ids, neither of which may repeat,
    run out at the third token (transformers returns beams of arbitrary tokens scored -1e9). The
    search stops there instead of running to max_new_tokens."""
    engine = fp32_engine(save(make_hf_model("mha", 4), tmp_path / "beams"), tok)
    rows = [tok.encode(PROMPT), tok.encode("import os")]
    wide = list(range(100, 3000))
    kw = {"max_new_tokens": 40, "stop_at_eos": False, "num_beams": 3, "no_repeat_ngram_size": 1, **sampling}
    for stuck in (0, 1):
        lengths: list[int] = []  # of the sequences the constraint is asked about

        def two_for_the_stuck_one(batch_id, ids, lengths=lengths, stuck=stuck):
            lengths.append(int(ids.shape[-1]))
            return [42, 43] if batch_id == stuck else wide

        with pytest.raises(NoTokenAllowedError, match=f"for any beam of prompt {stuck} at generated token 3"):
            engine.generate(input_ids=rows, prefix_allowed_tokens_fn=two_for_the_stuck_one, **kw)
        assert max(lengths) - min(lengths) == 2  # asked for the first three tokens only


def test_beams_of_a_prompt_with_fewer_possible_sequences_equal_transformers(tmp_path, tok):
    """One id allowed, with repeats: one possible sequence for three beams. The prompt is not
    stuck, and its beams (the duplicates transformers makes too) equal transformers'."""
    hf = make_hf_model("mha", 4)
    engine = fp32_engine(save(hf, tmp_path / "beams"), tok)
    x = torch.tensor([tok.encode(PROMPT)])
    one = {"max_new_tokens": 4, "num_beams": 3, "num_return_sequences": 3}
    only_42 = lambda batch_id, ids: [42]  # noqa: E731
    out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, eos_token_id=None, pad_token_id=0,
                      prefix_allowed_tokens_fn=only_42, output_scores=True, return_dict_in_generate=True, **one)
    got = engine.generate(input_ids=x.tolist(), stop_at_eos=False, prefix_allowed_tokens_fn=only_42, **one)
    assert got.token_ids == [row[x.shape[1]:] for row in out.sequences.tolist()] == [[42] * 4] * 3
    assert got.sequence_scores == pytest.approx(out.sequences_scores.tolist(), rel=1e-5)


def test_a_sequence_that_has_ended_is_not_asked_for_a_token(folder, tok):
    """Constrained decoding whose constraint allows nothing once a sequence has its end token:
    the batch goes on for the other rows and the ended one is left alone. (transformers raises
    ValueError when the function returns nothing, even for a row that has ended; its reference
    here allows anything there, which it pads away.) The tokens equal transformers'."""
    import random

    hf = make_hf_model("mha", 3)
    engine = fp32_engine(save(hf, folder.parent / "ended"), tok)
    rows = [tok.encode(PROMPT)[:6], tok.encode("import os\nimport sys")[:6]]
    rnd = random.Random(fresh_seed())
    pool = sorted(rnd.sample(range(3, 32000), 20))
    end = pool[0]

    def allowed(batch_id, ids, after_end=()):
        if batch_id == 0 and end in ids[6:].tolist():
            return list(after_end)
        return [end] if batch_id == 0 and int(ids.shape[0]) == 8 else pool[1:]

    x = torch.tensor(rows)
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, eos_token_id=end, pad_token_id=0,
                      prefix_allowed_tokens_fn=lambda b, ids: allowed(b, ids, pool[1:]))
    want = [row[: row.index(end)] if end in row else row for row in out[:, 6:].tolist()]
    got = engine.generate(input_ids=rows, max_new_tokens=8, eos_token_id=end, prefix_allowed_tokens_fn=allowed)
    assert got.token_ids == want and got.finish_reasons == ["eos", "length"] and len(got.token_ids[0]) == 2
    with pytest.raises(NoTokenAllowedError, match="for sequence 1 at generated token 1"):  # a row still going is asked
        engine.generate(input_ids=rows, max_new_tokens=8, eos_token_id=end, prefix_allowed_tokens_fn=lambda b, ids: [] if b else pool)
