"""Token healing (``token_healing=True``) against an independent reference: sentencepiece says
which pieces extend the prompt's last token, and transformers' ``generate`` on the prompt without
that token, its first choice limited to those pieces by ``prefix_allowed_tokens_fn``, gives the
tokens (greedy and beam search). transformers' own ``token_healing`` raises on Llama tokenizers,
so it cannot be the reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.engine_helpers import fp32_engine, random_checkpoint

PROMPTS = ["import num", "x = self.ba", "def f(x):\n    return ", "for i in ran"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "healing")
    return hf, path


def _reference_healing(sp, prompt: str) -> tuple[list[int], list[int]]:
    """(the prompt's ids without the last, the ids that may replace it), from sentencepiece."""
    ids = [1] + sp.encode(prompt)
    tail = sp.id_to_piece(ids[-1])
    allowed = [i for i in range(sp.get_piece_size())
               if sp.id_to_piece(i).startswith(tail) and not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))]
    return ids[:-1], allowed


def _special_ids(sp) -> set[int]:
    """The ids a decode that skips special tokens drops: sentencepiece's control and unknown
    pieces, and Code Llama's four infilling pieces (ordinary pieces to sentencepiece)."""
    infilling = {sp.piece_to_id(p) for p in ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")}
    return infilling | {i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}


def _hf_healed(hf, trimmed: list[int], allowed: list[int], n: int, **kw) -> list[int]:
    vocab = hf.config.vocab_size
    everything = list(range(vocab))

    def first_limited(batch_id, ids):
        return allowed if ids.shape[0] == len(trimmed) else everything

    out = hf.generate(torch.tensor([trimmed]), attention_mask=torch.ones(1, len(trimmed), dtype=torch.long), max_new_tokens=n,
                      do_sample=False, eos_token_id=None, pad_token_id=0, prefix_allowed_tokens_fn=first_limited, **kw)
    return out[0, len(trimmed):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("beams", [1, 3])
def test_healed_generation_equals_transformers_with_the_first_choice_limited(model, tok, sp_codellama, prompt, beams):
    hf, path = model
    engine = fp32_engine(path, tok)
    trimmed, allowed = _reference_healing(sp_codellama, prompt)
    assert len(allowed) > 1
    want = _hf_healed(hf, trimmed, allowed, 12, num_beams=beams)
    got = engine.generate(prompt, max_new_tokens=12, stop_at_eos=False, token_healing=True, num_beams=beams)
    assert got.token_ids[0] == want
    assert want[0] in allowed
    # the text is what follows the original prompt: prompt + text is the whole healed sequence's
    # text, special tokens skipped (a random model may pick an infilling token, e.g. ▁<EOT>)
    special = _special_ids(sp_codellama)
    assert prompt + got.text == sp_codellama.decode([i for i in trimmed[1:] + want if i not in special])


def test_stream_and_stop_strings_see_only_the_new_text(model, tok):
    """The first token repeats the text taken back from the prompt; a stop string found only in
    that part does not stop generation, and the stream's deltas join to generate's text."""
    _, path = model
    engine = fp32_engine(path, tok)
    for prompt in PROMPTS:
        kw = {"max_new_tokens": 10, "stop_at_eos": False, "token_healing": True}
        full = engine.generate(prompt, **kw).text
        assert "".join(engine.stream(prompt, **kw)) == full
        taken_back = prompt.split()[-1] if not prompt.endswith(" ") else " "
        cut = engine.generate(prompt, stop=taken_back, **kw)
        assert cut.text == (full[: full.find(taken_back)] if taken_back in full else full)
        assert "".join(engine.stream(prompt, stop=taken_back, **kw)) == cut.text


def test_prompts_without_a_word_to_heal_are_left_alone(model, tok):
    """A prompt ending in a byte piece (a newline), a special token or a piece nothing longer
    starts with, or holding BOS alone, generates exactly as without healing."""
    _, path = model
    engine = fp32_engine(path, tok)
    kw = {"max_new_tokens": 6, "stop_at_eos": False}
    for prompt in ["def f(x):\n", "", [1, 32007, 263, 32008, 32009]]:
        plain = engine.generate(prompt if isinstance(prompt, str) else [prompt], **kw)
        healed = engine.generate(prompt if isinstance(prompt, str) else [prompt], token_healing=True, **kw)
        assert healed.token_ids == plain.token_ids and healed.texts == plain.texts


def test_token_healing_in_a_batch_and_with_samples(model, tok):
    _, path = model
    engine = fp32_engine(path, tok)
    kw = {"max_new_tokens": 5, "stop_at_eos": False, "token_healing": True}
    batch = engine.generate(PROMPTS, **kw)
    assert batch.texts == [engine.generate(p, **kw).text for p in PROMPTS]  # padding does not change a row
    sampled = engine.generate("import num", temperature=1.0, seed=2, num_return_sequences=3, **kw)
    pieces = tok.convert_ids_to_tokens([ids[0] for ids in sampled.token_ids])
    assert all(p.startswith("▁num") for p in pieces)


@pytest.mark.parametrize("call", [
    lambda e: e.chat([{"role": "user", "content": "hi"}], token_healing=True),
    lambda e: list(e.stream_chat([{"role": "user", "content": "hi"}], token_healing=True)),
    lambda e: e.infill("def f(", "):\n    pass", token_healing=True),
    lambda e: e.fill("x = <FILL_ME>", token_healing=True),
])
def test_token_healing_is_refused_for_prompts_the_engine_builds(model, tok, call):
    with pytest.raises(ValueError, match="token_healing is for generate"):
        call(fp32_engine(model[1], tok))


def test_token_healing_must_be_a_bool(model, tok):
    with pytest.raises(TypeError, match="token_healing must be a bool"):
        fp32_engine(model[1], tok).generate("x", token_healing="yes")
