"""A KV cache kept for a longer call has room on the CPU (engine/cache.py, `headroom`): its layers
view lazily zeroed mappings of more slots than its max_len, hold every slot of max_len at once (no
growth, no copy), count as held only the slots written, and hand their mappings to the next call
that fits in them (a chat's next turn) with no copy. Where a mapping cannot be made, the cache is
a growing one as before."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import cache as cache_module  # noqa: E402
from codellama_fast.engine import lazy_zeros  # noqa: E402
from codellama_fast.engine import prompt_cache as PC  # noqa: E402
from codellama_fast.engine.cache import KVCache, headroom_slots  # noqa: E402
from tests.engine_helpers import fresh_seed  # noqa: E402

CPU = torch.device("cpu")


def _config(positions: int = 64, heads: int = 2, head_dim: int = 8):
    from codellama_fast.engine import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=2 * heads * head_dim, num_hidden_layers=2, num_attention_heads=2 * heads,
                       num_key_value_heads=heads, intermediate_size=48, max_position_embeddings=positions)


def _fill(cache: KVCache, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Writes random keys and values into slots 0..n-1 (as a prefill would, after reserving them);
    returns copies of them."""
    cache.reserve(n)
    for k, v in cache.layers:
        k[:, :, :n].normal_(), v[:, :, :n].normal_()
    return [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in cache.layers]


def _storage(cache: KVCache) -> set[int]:
    return {t.untyped_storage().data_ptr() for pair in cache.layers for t in pair}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 1, 1, 2), (1,)])
def test_a_mapped_tensor_of_any_size_equals_torch_zeros(dtype, shape):
    got = lazy_zeros.mapped(shape, dtype)
    want = torch.zeros(shape, dtype=dtype)
    assert got.shape == want.shape and got.dtype == want.dtype and got.stride() == want.stride()
    assert torch.equal(got, want)
    got.view(-1)[-1] = 2.0
    assert got.view(-1)[-1].item() == 2.0 and not lazy_zeros.mapped(shape, dtype).any()  # its own memory


def test_a_cache_with_headroom_holds_all_its_slots_in_a_larger_mapping():
    cfg = _config(positions=64)
    cache = KVCache(cfg, 1, 40, torch.float32, CPU, headroom=True)
    assert cache.mapped and cache.capacity == headroom_slots(cfg, 40) == 80  # twice max_len, past the context length
    assert cache.allocated == 40 and all(t.shape == (1, 2, 40, 8) for pair in cache.layers for t in pair)
    assert all(t.untyped_storage().nbytes() == 80 * 2 * 8 * 4 for pair in cache.layers for t in pair)
    assert not any(t.any() for pair in cache.layers for t in pair)
    assert cache.held_bytes == 0  # nothing written yet
    storage = _storage(cache)
    _fill(cache, 10)
    cache.reserve(40)  # never grows: the same tensors
    assert _storage(cache) == storage and cache.allocated == 40
    assert cache.held_bytes == cache.nbytes and cache.touched == 40
    assert headroom_slots(_config(positions=1000), 40) == 1000  # at least the model's context length


def test_without_headroom_or_on_failure_the_cache_grows_as_before(monkeypatch):
    cfg = _config()
    plain = KVCache(cfg, 1, 300, torch.float32, CPU)
    assert not plain.mapped and plain.allocated == plain.capacity == cache_module.INITIAL_SLOTS

    def no_room(shape, dtype):
        raise RuntimeError("could not map")

    monkeypatch.setattr(lazy_zeros, "mapped", no_room)
    cache = KVCache(cfg, 1, 300, torch.float32, CPU, headroom=True)
    assert not cache.mapped and cache.allocated == cache_module.INITIAL_SLOTS
    want = _fill(cache, 280)  # it grows, keeping what it holds
    assert cache.allocated == 300
    assert all(torch.equal(k[:, :, :280], wk) for (k, _), (wk, _) in zip(cache.layers, want, strict=True))


@pytest.mark.parametrize("new_len, adopted", [(50, True), (80, True), (30, True), (81, False), (20, False)])
def test_a_longer_call_takes_the_mapping_with_no_copy(new_len, adopted):
    """A kept cache of max_len 40 with 25 slots written and room for 80: a cache of 25..80 slots
    takes its mappings over; one of more than 80 (no room) or fewer than the 25 written copies
    the slots it reuses. Either way the reused slots hold what the kept ones held."""
    cfg = _config(positions=64)
    kept = KVCache(cfg, 1, 40, torch.float32, CPU, headroom=True)
    want = _fill(kept, 25)
    storage = _storage(kept)
    n = min(24, new_len - 1)
    assert kept.held_bytes == 25 * kept.nbytes // 40  # the slots written
    assert PC.adoptable_bytes(kept, new_len) == (kept.held_bytes if adopted else 0)
    cache = KVCache(cfg, 1, new_len, torch.float32, CPU, headroom=True)
    PC.move_slots(kept, cache, n)
    assert (_storage(cache) == storage) == adopted
    assert len(kept.layers) == 0 and cache.allocated == new_len
    assert all(t.shape[2] == new_len for pair in cache.layers for t in pair)
    for (k, v), (wk, wv) in zip(cache.layers, want, strict=True):
        assert torch.equal(k[:, :, :n], wk[:, :, :n]) and torch.equal(v[:, :, :n], wv[:, :, :n])
    if adopted:
        assert cache.touched == 25 and cache.held_bytes == 25 * cache.nbytes // new_len
        assert cache.capacity == 80  # the kept mapping's room
    else:
        assert cache.mapped and cache.capacity == headroom_slots(cfg, new_len)  # a mapping of its own


def test_a_growing_cache_takes_a_mapped_one_and_a_mapped_one_a_growing_one():
    cfg = _config(positions=64)
    kept = KVCache(cfg, 1, 40, torch.float32, CPU, headroom=True)
    want = _fill(kept, 25)
    plain = KVCache(cfg, 1, 60, torch.float32, CPU)  # no room of its own: it takes the mapping
    PC.move_slots(kept, plain, 24)
    assert plain.mapped and plain.capacity == 80 and plain.allocated == 60
    grown = KVCache(cfg, 1, 30, torch.float32, CPU)
    grown_want = _fill(grown, 30)
    roomy = KVCache(cfg, 1, 70, torch.float32, CPU, headroom=True)
    PC.move_slots(grown, roomy, 29)  # the growing cache's tensors, adopted: no mapping left
    assert not roomy.mapped and roomy.capacity == roomy.allocated == 30
    roomy.reserve(70)
    assert roomy.allocated == 70
    assert torch.equal(roomy.layers[0][0][:, :, :29], grown_want[0][0][:, :, :29])
    assert torch.equal(plain.layers[1][1][:, :, :24], want[1][1][:, :, :24])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an address-space limit as Linux sets it")
def test_under_an_address_space_limit_the_cache_grows_instead():
    """``ulimit -v`` counts mapped room as used: a cache asked for headroom then grows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (1 << 45, hard))  # 32 TiB: a limit, far above what the process uses
    try:
        assert lazy_zeros.address_space_limit() == 1 << 45
        cache = KVCache(_config(), 1, 300, torch.float32, CPU, headroom=True)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert not cache.mapped and cache.allocated == cache_module.INITIAL_SLOTS


def test_under_strict_overcommit_the_cache_grows_instead(monkeypatch):
    monkeypatch.setattr(lazy_zeros, "strict_overcommit", lambda: True)
    cache = KVCache(_config(), 1, 300, torch.float32, CPU, headroom=True)
    assert not cache.mapped and cache.allocated == cache_module.INITIAL_SLOTS
    monkeypatch.setattr(lazy_zeros, "strict_overcommit", lambda: False)
    assert KVCache(_config(), 1, 300, torch.float32, CPU, headroom=True).mapped


on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory is read from /proc/self/statm")


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@on_linux
def test_only_the_written_slots_of_the_room_are_resident():
    """A cache with room for 64k slots of 8 heads of 64 (128 MiB a tensor, 512 MiB in all) with
    200 slots written: about 200 / 65536 of that is resident."""
    cfg = _config(positions=1 << 16, heads=8, head_dim=64)
    before = _resident()
    cache = KVCache(cfg, 1, 1 << 15, torch.float32, CPU, headroom=True)
    _fill(cache, 200)
    grew = _resident() - before
    assert cache.mapped and sum(t.untyped_storage().nbytes() for pair in cache.layers for t in pair) == 512 * 2**20
    assert grew < 16 * 2**20, grew  # 200 slots: 1.6 MiB, plus a page per head's run
    assert cache.held_bytes == 200 * 8 * 64 * 4 * 2 * 2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4", fresh_seed())
    return hf, save(hf, tmp_path_factory.mktemp("headroom"))


@pytest.fixture
def chat(model, tok, monkeypatch):
    """(transformers' model, our fp32 CPU engine on the same checkpoint); the tests' prompts are
    short, so any shared token is reused (the floor has its own test in test_prompt_cache.py)."""
    from tests.engine_helpers import fp32_engine

    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 1)
    hf, path = model
    return hf, fp32_engine(path, tok)


def _greedy(hf, ids, n):
    x = torch.tensor([ids])
    return hf.generate(x, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()


def test_a_chats_turns_write_into_one_mapping(chat, tok, monkeypatch):
    """Three turns of a dialog on the CPU: each takes the last one's cache with no copy (the same
    mapping holds every turn's keys and values, and no cache grows), prefills only its new tokens,
    and answers as transformers does for the whole dialog."""
    grown: list[int] = []
    reserve = KVCache.reserve

    def recording_reserve(self, n):
        held = self.allocated
        reserve(self, n)
        if self.allocated > held:
            grown.append(n)

    monkeypatch.setattr(KVCache, "reserve", recording_reserve)
    hf, engine = chat
    ids = tok.encode("def reverse(items):\n    ")
    storage = None
    for turn, message in enumerate(["", "\n# in place", "\n# and sorted"]):
        ids = ids + tok.encode(message, add_special_tokens=False) if message else ids
        got = engine.generate(input_ids=[ids], max_new_tokens=10, stop_at_eos=False)
        assert got.token_ids[0] == _greedy(hf, ids, 10)
        kept = engine._prompt_cache._kept[-1].cache
        assert kept.mapped and engine._prompt_cache.kept_tokens == len(ids) + 9
        if storage is None:
            storage = _storage(kept)
            assert got.prompt_tokens_reused == 0
        else:
            # all but the new message and the last answer's last token (never fed)
            assert _storage(kept) == storage
            assert got.prompt_tokens_reused == len(ids) - len(tok.encode(message, add_special_tokens=False)) - 1
        ids = ids + got.token_ids[0]
    assert grown == []


def test_an_earlier_point_of_the_dialog_copies_into_a_cache_with_room(chat, tok):
    """A call that asks for fewer slots than the kept cache wrote (the dialog's first lines again,
    a few tokens asked): the slots it reuses are copied into a cache with room of its own, kept
    in turn, and the tokens are transformers'."""
    hf, engine = chat
    ids = tok.encode("class Queue:\n    def __init__(self):\n")
    first = engine.generate(input_ids=[ids], max_new_tokens=30, stop_at_eos=False)
    storage = _storage(engine._prompt_cache._kept[-1].cache)
    again = ids[:-2]
    got = engine.generate(input_ids=[again], max_new_tokens=2, stop_at_eos=False)
    assert got.prompt_tokens_reused == len(again) - 1 and got.token_ids[0] == _greedy(hf, again, 2)
    kept = engine._prompt_cache._kept[-1].cache
    assert kept.mapped and _storage(kept).isdisjoint(storage) and kept.max_len == len(again) + 2
    assert first.token_ids[0] == _greedy(hf, ids, 30)


@pytest.mark.parametrize("kind, new", [("samples", 6), ("beams", 6), ("beams", 1)])
def test_the_turn_after_samples_or_beams_takes_their_kept_prompt_with_no_copy(chat, tok, kind, new):
    """The prompt samples keep (a copy of their first row's), the best beam's cache, and the
    beams' prompt cache (kept alone where the best beam fed no token: one new token) are kept with
    room: the next turn continuing them takes their mapping, and answers as transformers."""
    hf, engine = chat
    ids = tok.encode("def merge(a, b):\n    ")
    args = {"num_return_sequences": 2, "temperature": 1.0, "seed": 0} if kind == "samples" else {"num_beams": 2}
    got = engine.generate(input_ids=[ids], max_new_tokens=new, stop_at_eos=False, **args)
    kept = engine._prompt_cache._kept[-1].cache
    assert kept.mapped and kept.held_bytes == kept.nbytes  # every slot it has was written, and counts as held
    storage = _storage(kept)
    held = engine._prompt_cache.kept_tokens  # the prompt (samples), with the best beam's fed tokens (beams)
    assert held == (len(ids) if kind == "samples" else len(ids) + new - 1)
    following = ids + got.token_ids[0] + tok.encode("\n# now iteratively", add_special_tokens=False)
    turn = engine.generate(input_ids=[following], max_new_tokens=5, stop_at_eos=False)
    assert turn.prompt_tokens_reused == held and _storage(engine._prompt_cache._kept[-1].cache) == storage
    assert turn.token_ids[0] == _greedy(hf, following, 5)


def test_a_sampled_turn_adds_its_message_to_the_kept_dialog_in_place(chat, tok):
    """Turn 1 greedy, turn 2 sampled (its prompt: the dialog and a new message), turn 3 continuing
    the second sample: turn 2's samples copy the kept dialog's slots, and when they end only their
    message's slots are added to the kept dialog's own mapping (no copy of the dialog); turn 3
    reuses all of turn 2's prompt from it and answers as transformers does."""
    hf, engine = chat
    ids = tok.encode("def flatten(nested):\n    ")
    first = engine.generate(input_ids=[ids], max_new_tokens=8, stop_at_eos=False)
    storage = _storage(engine._prompt_cache._kept[-1].cache)
    second_ids = ids + first.token_ids[0] + tok.encode("\n# one level only", add_special_tokens=False)
    second = engine.generate(input_ids=[second_ids], max_new_tokens=6, stop_at_eos=False, num_return_sequences=2,
                             temperature=1.0, seed=0)
    assert second.prompt_tokens_reused == len(ids) + 7
    assert len(engine._prompt_cache) == 1 and engine._prompt_cache.kept_tokens == len(second_ids)
    kept = engine._prompt_cache._kept[-1].cache
    assert _storage(kept) == storage and kept.max_len == len(second_ids) and kept.held_bytes == kept.nbytes
    third_ids = second_ids + second.token_ids[1] + tok.encode("\n# test it", add_special_tokens=False)
    third = engine.generate(input_ids=[third_ids], max_new_tokens=6, stop_at_eos=False)
    assert third.prompt_tokens_reused == len(second_ids)
    assert third.token_ids[0] == _greedy(hf, third_ids, 6)
    assert _storage(engine._prompt_cache._kept[-1].cache) == storage


def test_take_with_room_takes_the_kept_head_that_has_room(monkeypatch):
    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 1)
    cfg = _config(positions=64)
    cache = PC.PromptCache()
    short, longer, other = (KVCache(cfg, 1, 40, torch.float32, CPU, headroom=True) for _ in range(3))
    cache.keep([1, 2, 9, 9], other)
    cache.keep([1, 2, 3], short)
    cache.keep([1, 2, 3, 4, 5], longer)  # ([1, 2, 3] goes: the longer one gives any prompt as much)
    assert len(cache) == 2
    assert cache.take_with_room([1, 2, 3, 4, 5]) is None  # nothing to add
    assert cache.take_with_room([1, 2, 3, 4, 5, 6] + [0] * 80) is None  # past its room (80 slots)
    got = cache.take_with_room([1, 2, 3, 4, 5, 6])
    assert got is not None and got.cache is longer and len(cache) == 1  # taken out
    grown = KVCache(cfg, 1, 40, torch.float32, CPU)  # no room
    cache.keep([7, 8, 9], grown)
    assert cache.take_with_room([7, 8, 9, 10]) is None and len(cache) == 2
    longer.widen(70)
    assert longer.max_len == 70 and all(t.shape[2] == 70 for pair in longer.layers for t in pair)
    assert longer.nbytes == 70 * KVCache(cfg, 1, 1, torch.float32, CPU).nbytes  # it may hold all 70 now
    with pytest.raises(ValueError, match="no room"):
        longer.widen(81)
