"""The decode attention's launch picked by timing (kernels.decode_tuning): the pick follows the
timings, is kept per shape and length class, reaches the launches the ops make, and never changes
a bit of the output (checked against the default launch and a float64 oracle)."""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CANDIDATES = (("last", 2), ("last", 3), ("kernel", 2), ("kernel", 3))
# made-up timings (ms) whose fastest is ("kernel", 3), not any shape's default
TIMES = {("last", 2): 3.0, ("last", 3): 2.0, ("kernel", 2): 4.0, ("kernel", 3): 1.0}


class FakeTimer:
    """Times from a table instead of the GPU; runs each candidate once (the real kernel, in the
    interpreter on CPU) unless told not to, and fails the candidates named in `fail`."""

    def __init__(self, times, fail=(), run=True):
        self.times, self.fail, self.run = dict(times), set(fail), run
        self.calls: list[tuple[str, int]] = []

    def __call__(self, fn):
        launch = (fn.keywords["merge"], fn.keywords["stages"])
        self.calls.append(launch)
        if launch in self.fail:
            raise RuntimeError("this launch cannot be built here")
        if self.run:
            fn()
        return self.times[launch]


def _cache(b, hkv, s, d, dtype=torch.float32):
    kc = torch.randn(b, hkv, s, d, dtype=dtype, device=DEVICE)
    return kc, torch.randn_like(kc)


def test_pick_keeps_the_default_unless_another_is_clearly_faster():
    from codellama_fast.kernels.decode_tuning import MARGIN, pick

    default = ("last", 2)
    assert pick({}, default) == default
    near = {default: 1.0, ("kernel", 3): 1.0 / (1 + MARGIN / 2)}
    assert pick(near, default) == default
    assert pick({default: 1.0, ("kernel", 3): 0.9, ("kernel", 2): 0.95}, default) == ("kernel", 3)
    # the default failed to run: the fastest of the rest
    assert pick({("kernel", 3): 0.9, ("kernel", 2): 0.8}, default) == ("kernel", 2)


def test_tune_keeps_the_fastest_per_shape_and_length_class():
    from codellama_fast.kernels.decode_tuning import DecodeLaunches, length_class

    b, hq, hkv, s, d = 2, 8, 2, 160, 32
    kc, vc = _cache(b, hkv, s, d)
    before_k, before_v = kc.clone(), vc.clone()
    timer = FakeTimer(TIMES)
    tuner = DecodeLaunches(timer)
    assert tuner.current(hq, kc) is None
    assert tuner.tune(hq, kc, vc, 40, None) == ("kernel", 3)
    assert sorted(timer.calls) == sorted(CANDIDATES)
    assert tuner.current(hq, kc) == ("kernel", 3)
    # the timing ran the real launches: only the last slot of the timed length was written
    untouched = torch.ones(s, dtype=torch.bool)
    untouched[39] = False
    assert torch.equal(kc[:, :, untouched], before_k[:, :, untouched])
    assert torch.equal(vc[:, :, untouched], before_v[:, :, untouched])
    assert not torch.equal(kc[:, :, 39], before_k[:, :, 39])
    # the same length class is not timed again; another one is, and its pick becomes current
    assert length_class(60) == length_class(40) != length_class(150)
    timer.calls.clear()
    assert tuner.tune(hq, kc, vc, 60, None) == ("kernel", 3) and timer.calls == []
    timer.times[("last", 3)] = 0.5
    assert tuner.tune(hq, kc, vc, 150, None) == ("last", 3) and len(timer.calls) == len(CANDIDATES)
    assert tuner.current(hq, kc) == ("last", 3)
    # another shape (more query heads per KV head) has no pick
    assert tuner.current(2 * hq, kc) is None
    (entry,) = [e for e in tuner.report() if e["kv_len_from"] <= 150 < e["kv_len_below"]]
    assert entry["picked"] == "last_s3"
    assert (entry["group"], entry["batch_kv_heads"], entry["head_dim"]) == (hq // hkv, b * hkv, d)
    assert set(entry["ms_per_launch"]) == {f"{m}_s{st}" for m, st in CANDIDATES}
    with pytest.raises(ValueError):
        tuner.tune(hq, kc, vc, s + 1, None)


def test_a_launch_that_fails_is_not_picked():
    from codellama_fast.kernels.decode_tuning import DecodeLaunches

    kc, vc = _cache(1, 2, 64, 16)
    timer = FakeTimer(TIMES, fail={("kernel", 3)}, run=False)
    with pytest.warns(RuntimeWarning, match="kernel_s3"):
        assert DecodeLaunches(timer).tune(4, kc, vc, 64, None) == ("last", 3)
    every = FakeTimer({}, fail=set(CANDIDATES), run=False)
    with pytest.warns(RuntimeWarning):
        picked = DecodeLaunches(every).tune(4, kc, vc, 64, None)
    from codellama_fast.kernels.attention_decode import launch_defaults

    assert picked == launch_defaults(2, 2)


@pytest.mark.skipif(DEVICE == "cuda", reason="the default timer times on CUDA")
def test_without_cuda_the_default_timer_picks_nothing():
    from codellama_fast.kernels.decode_tuning import DecodeLaunches

    kc, vc = _cache(1, 2, 64, 16)
    tuner = DecodeLaunches()
    assert tuner.tune(4, kc, vc, 64, None) is None and tuner.current(4, kc) is None


def test_the_ops_launch_the_pick_and_it_changes_no_bit(monkeypatch):
    """TritonOps.rope_attention launches the shape's pick; its output equals the default launch's
    bit for bit and a float64 oracle to rounding."""
    from codellama_fast.kernels import triton_ops
    from codellama_fast.kernels.attention_decode import rope_attention_reference
    from codellama_fast.kernels.decode_tuning import DecodeLaunches

    b, hq, hkv, s, d, kv_len = 2, 8, 2, 96, 32, 70
    kc0, vc0 = _cache(b, hkv, s, d)
    q = torch.randn(b, 1, hq, d, device=DEVICE)
    k, v = torch.randn(b, 1, hkv, d, device=DEVICE), torch.randn(b, 1, hkv, d, device=DEVICE)
    pos = torch.full((b, 1), kv_len - 1, device=DEVICE)
    inv = 1.0 / (1e4 ** (torch.arange(0, d, 2, device=DEVICE, dtype=torch.float32) / d))
    slots = torch.tensor([kv_len - 1], device=DEVICE)
    kv_start = torch.tensor([0, 5], device=DEVICE)
    kv = torch.tensor([kv_len], dtype=torch.int32, device=DEVICE)

    launched = []
    real = triton_ops.rope_attention_decode
    monkeypatch.setattr(triton_ops, "rope_attention_decode",
                        lambda *a, **kw: launched.append((kw["merge"], kw["stages"])) or real(*a, **kw))
    ops = triton_ops.TritonOps()
    outs = []
    for tuned in (False, True):
        if tuned:
            ops.decode_launches = DecodeLaunches(FakeTimer(TIMES, run=False))
            assert ops.tune_decode_attention(hq, kc0, vc0, kv_len) == ("kernel", 3)
        kc, vc = kc0.clone(), vc0.clone()
        outs.append(ops.rope_attention(q, k, v, pos, inv, kc, vc, slots, 0, kv_start, kv))
    assert launched == [(None, None), ("kernel", 3)]
    assert torch.equal(outs[0], outs[1])
    kc, vc = kc0.double(), vc0.double()
    want = rope_attention_reference(q.double(), k.double(), v.double(), pos, inv.double(), kc, vc, slots, kv_len - 1,
                                    kv_start, kv_len)
    torch.testing.assert_close(outs[1].double(), want, rtol=1e-4, atol=1e-4)


def test_engine_times_the_launch_before_it_builds_a_decode_state(tmp_path):
    """A decode state's build times the launches over its own cache at its full length; the
    generation's tokens are those of an engine that does not time them."""
    pytest.importorskip("transformers")
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model
    from codellama_fast.kernels.decode_tuning import DecodeLaunches
    from codellama_fast.kernels.triton_ops import TritonOps
    from tests.engine_helpers import fresh_seed, make_hf_model, save

    # head_dim 16: the attention kernels take it
    folder = save(make_hf_model("gqa4-d16", seed=fresh_seed()), tmp_path / "m")
    tok = CodeLlamaTokenizerFast.from_pretrained()
    engines = []
    for tune in (False, True):
        eng = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), tok)
        eng.model.ops = TritonOps()
        eng.use_cuda_graph = "eager" if DEVICE == "cpu" else True
        eng.tune_decode_attention = tune
        engines.append(eng)
    seen = []

    class Recording(FakeTimer):
        def __call__(self, fn):
            seen.append((fn.args[5].shape, int(fn.args[9].item())))  # the cache timed and its length
            return super().__call__(fn)

    engines[1].model.ops.decode_launches = DecodeLaunches(Recording(TIMES, run=False))
    prompts = ["def f(x):\n    return", "import os"]
    plain, timed = (e.generate(prompts, max_new_tokens=10, stop_at_eos=False) for e in engines)
    assert timed.token_ids == plain.token_ids
    state = engines[1]._graphs._states[0]
    assert seen and all(shape == state.cache.layers[0][0].shape and n == state.capacity for shape, n in seen)
    assert engines[1].decode_attention_used == "kernel_s3" and engines[0].decode_attention_used is None


@pytest.mark.skipif(DEVICE != "cuda", reason="times on a GPU")
def test_gpu_tune_picks_a_candidate_that_gives_the_default_bits():
    from codellama_fast.kernels.attention_decode import attention_decode
    from codellama_fast.kernels.decode_tuning import DecodeLaunches

    for hq, hkv, b in ((32, 32, 1), (64, 8, 1), (32, 32, 8)):
        kc, vc = _cache(b, hkv, 4096, 128, torch.float16)
        tuner = DecodeLaunches()
        picked = tuner.tune(hq, kc, vc, 4000, None)
        assert picked in CANDIDATES
        (entry,) = tuner.report()
        assert len(entry["ms_per_launch"]) == len(CANDIDATES) and entry["picked"] == f"{picked[0]}_s{picked[1]}"
        q = torch.randn(b, 1, hq, 128, dtype=torch.float16, device=DEVICE)
        kv_start = torch.zeros(b, dtype=torch.long, device=DEVICE)
        kv = torch.tensor([4000], dtype=torch.int32, device=DEVICE)
        outs = [attention_decode(q, kc, vc, kv_start, kv, merge=m, stages=st) for m, st in (picked, (None, None))]
        assert torch.equal(outs[0], outs[1])
