"""A padded prefill packed without its padding (engine/packing.py): which positions it keeps, and a
model prefilling prompts of different lengths that way, whole or in chunks, giving transformers'
logits and greedy tokens for each prompt alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import packing  # noqa: E402
from codellama_fast.engine.model import LlamaModel  # noqa: E402
from tests.engine_helpers import fresh_seed  # noqa: E402


def _kept(starts, c0, c1):
    """The positions (b, i) of slots c0..c1-1 that are not padding, key by key."""
    return [(b, i) for b, s in enumerate(starts) for i in range(c1 - c0) if c0 + i >= s]


@pytest.mark.parametrize("starts,c0,c1", [
    ([0, 3, 7], 0, 8),      # a row with its last token alone
    ([0, 5], 2, 6),         # a chunk after the first
    ([9, 0, 2], 0, 4),      # a row of padding alone in this chunk
    ([4, 4, 4, 4], 4, 9),   # a chunk past every row's padding: none padded
])
def test_rows_without_padding_are_the_non_padding_positions_in_order(monkeypatch, starts, c0, c1):
    monkeypatch.setattr(packing, "MIN_PADDING_SHARE", 0)
    rows = packing.rows_without_padding(starts, c0, c1, torch.device("cpu"))
    t = c1 - c0
    assert rows.tolist() == [b * t + i for b, i in _kept(starts, c0, c1)]
    x = torch.randn(len(starts), t, 5)
    packed = packing.pack(x, rows)
    assert torch.equal(packed[0], torch.stack([x[b, i] for b, i in _kept(starts, c0, c1)]))
    back = packing.unpack(packed, rows, len(starts), t)
    keep = torch.zeros(len(starts), t, dtype=torch.bool)
    for b, i in _kept(starts, c0, c1):
        keep[b, i] = True
    assert torch.equal(back[keep], x[keep]) and not back[~keep].any()


def test_a_call_with_little_padding_is_not_packed():
    # 16 positions, 1 of them padding: under an eighth
    assert packing.rows_without_padding([0, 1], 0, 8, torch.device("cpu")) is None
    assert packing.rows_without_padding([0, 2], 0, 8, torch.device("cpu")) is not None  # 2 of 16: an eighth


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory):
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4", fresh_seed(), num_hidden_layers=3)
    return hf, save(hf, tmp_path_factory.mktemp("packed"))


def _spy_rows(monkeypatch):
    """(first slot, positions, packed rows or None) of each model call."""
    seen = []
    real = LlamaModel.forward

    def spy(self, tokens, ctx, caches, last_only=True):
        seen.append((int(ctx.q_start), tokens.shape[1], None if ctx.rows is None else ctx.rows.numel()))
        return real(self, tokens, ctx, caches, last_only)

    monkeypatch.setattr(LlamaModel, "forward", spy)
    return seen


PROMPTS = ["def quicksort(items):\n    if len(items) <= 1:\n        return items\n", "x = 1", "import os\n"]


@pytest.mark.parametrize("chunk", [None, 10])
def test_prompts_of_different_lengths_packed_generate_what_transformers_generates(monkeypatch, model_pair, tok, chunk):
    """Greedy decoding of prompts of different lengths, the prefill packed (in chunks of 10 positions
    a row where `chunk`: the short rows are padding alone in the first), equals transformers' fp32
    greedy for each prompt alone."""
    from tests.engine_helpers import fp32_engine

    seen = _spy_rows(monkeypatch)
    hf, path = model_pair
    engine = fp32_engine(path, tok)
    if chunk:
        engine.prefill_chunk_tokens = chunk * len(PROMPTS)
    got = engine.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False)
    t = max(len(tok.encode(p)) for p in PROMPTS)
    starts = [t - len(tok.encode(p)) for p in PROMPTS]
    prefill = [call for call in seen if call[1] > 1]
    # the first call or chunk is packed: its rows are its slots' prompt tokens, padding left out
    # (23, 5 and 4 tokens; chunks of 10 slots: 20 of the first 30 positions are padding, 17 of the next)
    assert [rows is not None for _, _, rows in prefill] == ([True] if chunk is None else [True, True, False])
    for c0, n, rows in prefill:
        assert rows is None or rows == sum(max(0, c0 + n - max(c0, s)) for s in starts)
    for prompt, ids in zip(PROMPTS, got.token_ids, strict=True):
        x = torch.tensor([tok.encode(prompt)])
        want = hf.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, x.shape[1]:]
        assert ids == want.tolist()


@pytest.mark.parametrize("last_only", [True, False])
def test_packed_logits_equal_transformers_for_each_prompt(model_pair, tok, last_only):
    """A packed padded prefill's logits (the last position's, or every real position's) within fp32
    rounding of transformers' for each prompt alone; the padding positions' logits are zeros."""
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext

    hf, path = model_pair
    model = load_model(path, dtype="float32", device="cpu")
    rows = [tok.encode(p) for p in PROMPTS]
    t = max(map(len, rows))
    ids = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    starts = [t - len(r) for r in rows]
    kv_start = torch.tensor(starts)
    positions = (torch.arange(t)[None] - kv_start[:, None]).clamp(min=0)
    packed = packing.rows_without_padding(starts, 0, t, torch.device("cpu"))
    assert packed is not None and packed.numel() == sum(map(len, rows))
    cache = KVCache(model.config, len(rows), t, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        got = model(ids, StepContext(positions, torch.arange(t), 0, kv_start, t, rows=packed), cache.layers, last_only=last_only)
        for b, r in enumerate(rows):
            ref = hf(torch.tensor([r])).logits[0]  # [len, V]
            mine = got[b] if last_only else got[b, starts[b]:]
            want = ref[-1] if last_only else ref
            assert (mine - want).abs().max().item() <= 1e-4 * want.abs().max().item()
            if not last_only:
                assert not got[b, : starts[b]].any()


def test_scoring_texts_of_different_lengths_packs_and_equals_transformers(monkeypatch, model_pair, tok):
    """engine.score over texts of different lengths runs packed and gives each token transformers'
    log-probability for its text alone."""
    from tests.engine_helpers import fp32_engine

    seen = _spy_rows(monkeypatch)
    hf, path = model_pair
    result = fp32_engine(path, tok).score(PROMPTS)
    assert len(seen) == 1 and seen[0][2] == sum(len(tok.encode(p)) - 1 for p in PROMPTS)  # inputs 0..len-2 of each text
    for ids, got in zip(result.token_ids, result.token_logprobs, strict=True):
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
        want = torch.tensor([ref[k, ids[k + 1]].item() for k in range(len(ids) - 1)])
        assert (torch.tensor(got) - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
