"""The Triton decode attention that reads a shared prompt's keys and values once per run of rows
(kernels/attention_shared_decode.py), in the interpreter on CPU or on a GPU when present, against
``reference.attention`` (the rows hold copies, so it is plain decode attention) and an fp64 oracle.
Fresh random inputs every run; tolerances as in test_kernels.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from codellama_fast.kernels import reference as R  # noqa: E402
from codellama_fast.kernels.attention_shared_decode import attention_shared_decode, query_tile  # noqa: E402
from tests.test_kernels import DEVICE, _close  # noqa: E402


def _shared_cache(b, runs, hkv, s, d, prompt, pads, dtype):
    """Caches [B, Hkv, S, D] whose rows r*runs .. r*runs+runs-1 hold run r's first row's keys and
    values in slots < prompt, each row its own after; kv_start [B] from `pads` (one per run)."""
    kc = torch.randn(b, hkv, s, d, dtype=dtype, device=DEVICE)
    vc = torch.randn_like(kc)
    for r in range(b // runs):
        rows = slice(r * runs, (r + 1) * runs)
        kc[rows, :, :prompt] = kc[r * runs, :, :prompt].clone()  # the run's first row is among those written
        vc[rows, :, :prompt] = vc[r * runs, :, :prompt].clone()
    kv_start = torch.tensor([p for p in pads for _ in range(runs)], device=DEVICE)
    return kc, vc, kv_start


def _poison_copies(kc, vc, runs, prompt):
    """NaN in every row's prompt slots but each run's first: a kernel that read any copy but the
    first would return NaN."""
    kc, vc = kc.clone(), vc.clone()
    for row in range(kc.shape[0]):
        if row % runs:
            kc[row, :, :prompt] = float("nan")
            vc[row, :, :prompt] = float("nan")
    return kc, vc


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,runs,hq,hkv,d,prompt,kv_len,pads", [
    (4, 4, 4, 4, 64, 77, 90, [0]),             # MHA, 4 samples, lengths not block multiples
    (6, 3, 8, 2, 32, 130, 141, [0, 50]),       # GQA 4, two prompts, one left padded
    (4, 2, 16, 2, 16, 65, 66, [0, 64]),        # GQA 8; a prompt of one token; the first step (own slot alone)
    (3, 3, 8, 1, 128, 33, 100, [1]),           # head_dim 128; more own slots than prompt slots
    (10, 10, 16, 2, 16, 40, 45, [3]),          # 10 samples x 8 heads per KV head: 80 queries, two tiles of 64
])
def test_shared_decode_attention_reads_each_prompt_once(dtype, b, runs, hq, hkv, d, prompt, kv_len, pads):
    kc, vc, kv_start = _shared_cache(b, runs, hkv, kv_len + 20, d, prompt, pads, dtype)
    q = torch.randn(b, 1, hq, d, dtype=dtype, device=DEVICE)
    want = R.attention(q, kc, vc, kv_len - 1, kv_start, kv_len)
    want64 = R.attention(q.double(), kc.double(), vc.double(), kv_len - 1, kv_start, kv_len)
    poisoned_k, poisoned_v = _poison_copies(kc, vc, runs, prompt)
    kv = torch.tensor([kv_len], dtype=torch.int32, device=DEVICE)
    slots = torch.tensor([prompt], dtype=torch.int32, device=DEVICE)
    # default splits, one each, and more than the keys fill (most splits empty); ints or device tensors
    for splits, lengths in ((None, (kv, slots)), ((1, 1), (kv_len, prompt)), ((3, 2), (kv, prompt)), ((16, 8), (kv_len, slots))):
        got = attention_shared_decode(q, poisoned_k, poisoned_v, kv_start, lengths[0], runs, lengths[1], splits=splits)
        assert torch.isfinite(got).all(), "a copy of the prompt was read"
        _close(got, want, dtype)
        _close(got, want64, dtype)
    assert query_tile(runs, hq // hkv) == min(64, max(16, 1 << (runs * hq // hkv - 1).bit_length()))


@pytest.mark.parametrize("runs", [1, 2])
def test_runs_of_one_and_empty_prompts(runs):
    """runs=1 (no sharing) and a prompt of no slots (every key a row's own) are plain attention."""
    b, hq, hkv, d, kv_len = 4, 8, 2, 32, 70
    q = torch.randn(b, 1, hq, d, device=DEVICE)
    kc, vc, kv_start = _shared_cache(b, runs, hkv, kv_len + 5, d, 0, [5] * (b // runs), torch.float32)
    want = R.attention(q.double(), kc.double(), vc.double(), kv_len - 1, kv_start, kv_len).float()
    for prompt in (0, 40) if runs == 1 else (0,):
        _close(attention_shared_decode(q, kc, vc, kv_start, kv_len, runs, prompt), want, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_shared_decode_gives_the_same_bits_in_a_cache_of_any_size(dtype):
    """Splits set by the shapes alone: the same keys in caches of other sizes give identical bits
    (a captured decode state larger than the call serves it as a cache of its own would)."""
    b, runs, hq, hkv, d, prompt, kv_len = 4, 2, 8, 2, 32, 60, 75
    small_k, small_v, kv_start = _shared_cache(b, runs, hkv, kv_len, d, prompt, [0, 9], dtype)
    q = torch.randn(b, 1, hq, d, dtype=dtype, device=DEVICE)
    outs = []
    for capacity in (kv_len, kv_len + 100, 4 * kv_len + 300):
        kc = torch.zeros(b, hkv, capacity, d, dtype=dtype, device=DEVICE)
        vc = torch.zeros_like(kc)
        kc[:, :, :kv_len], vc[:, :, :kv_len] = small_k, small_v
        outs.append(attention_shared_decode(q, kc, vc, kv_start, kv_len, runs, prompt))
    _close(outs[0], R.attention(q, small_k, small_v, kv_len - 1, kv_start, kv_len), dtype)
    for other in outs[1:]:
        assert torch.equal(other, outs[0])


def test_shared_decode_checks_its_arguments():
    q = torch.randn(6, 1, 4, 32, device=DEVICE)
    kc, vc, kv_start = _shared_cache(6, 3, 4, 40, 32, 10, [0, 0], torch.float32)
    with pytest.raises(ValueError, match="runs of 4"):
        attention_shared_decode(q, kc, vc, kv_start, 20, 4, 10)
    with pytest.raises(ValueError, match="one new token"):
        attention_shared_decode(torch.randn(6, 2, 4, 32, device=DEVICE), kc, vc, kv_start, 20, 3, 10)
    with pytest.raises(ValueError, match="head_dim"):
        attention_shared_decode(q[..., :24].contiguous(), kc[..., :24].contiguous(), vc[..., :24].contiguous(), kv_start, 20, 3, 10)


@pytest.mark.parametrize("graph", [False, True, "fused"])
def test_samples_through_the_kernels_read_their_prompt_once(tmp_path, monkeypatch, graph):
    """3 samples each of two prompts on the Triton ops: every decode step's attention of every layer
    is the shared-prompt kernel (the graph-decode step, captured on CUDA and run eagerly here, and
    the plain loop; the fused step too), the other rows of a run hold no copy of its prompt's slots,
    and each sample's log-probabilities are transformers' for its own prompt and tokens. The graph's state is built for runs of 3; a call whose rows do not repeat builds a state
    of its own rather than take that one."""
    pytest.importorskip("transformers")
    from codellama_fast.kernels import attention_shared_decode as shared_kernel
    from codellama_fast.kernels import triton_ops
    from tests.engine_helpers import fresh_seed, hf_logprobs, logprobs_close, make_hf_model, save
    from tests.test_kernels import _triton_engine

    from codellama_fast.engine import shared_prompts

    monkeypatch.setattr(shared_kernel, "MIN_SAVED_BYTES", 1)
    calls, copies = [], []
    real = triton_ops.attention_shared_decode
    monkeypatch.setattr(triton_ops, "attention_shared_decode",
                        lambda *a, **k: calls.append(a[5:7]) or real(*a, **k))  # (runs, prompt slots) of each call
    real_copy = shared_prompts.copy_to_repeats
    monkeypatch.setattr(shared_prompts, "copy_to_repeats", lambda *a: copies.append(a[1:]) or real_copy(*a))
    hf = make_hf_model("gqa4-d16", seed=fresh_seed())  # GQA 4, heads of 16 (the kernels' smallest)
    eng = _triton_engine(save(hf, tmp_path / "m"), bool(graph), **({"decode_step": "fused"} if graph == "fused" else {}))
    prompts = ["def reverse(items):\n    return", "import os"]
    ids = [eng.tokenizer.encode(p) for p in prompts]
    new = 6
    got = eng.generate(prompts, num_return_sequences=3, max_new_tokens=new, temperature=1.0, seed=4, stop_at_eos=False,
                       return_logprobs=True)
    layers = eng.model.config.num_hidden_layers
    t = max(map(len, ids))
    steps = [c for c in calls if int(c[1]) == t]  # the graph's warm-up and timing steps (prompt slots 0) aside
    assert len(steps) == (new - 1) * layers and all(c[0] == 3 for c in steps), calls
    assert not copies  # the prefill wrote each prompt's slots in its run's first row alone
    for row, (out, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
        assert logprobs_close(lps, hf_logprobs(hf, ids[row // 3], out), 1e-4), row
    if graph:
        assert eng.decode_step_used == ("fused" if graph == "fused" else "plain")
        assert [s.runs for s in eng._graphs._states] == [3]
        calls.clear()
        other = ["x = 1", "y = 2", "z = 3", "w = 4", "v = 5", "u = 6"]  # six rows, none alike
        eng.generate(other, max_new_tokens=3, temperature=1.0, seed=1, stop_at_eos=False)
        assert [(s.batch, s.runs) for s in eng._graphs._states] == [(6, 3), (6, 1)] and not calls  # a state of its own


@pytest.mark.parametrize("graph", [False, True])
def test_beams_through_the_kernels_read_their_prompt_once(tmp_path, monkeypatch, graph):
    """A prompt's beams hold the same prompt slots (regrouping moves only the later ones): every beam
    step's attention on the Triton ops is the shared-prompt kernel, one run per prompt (the plain
    loop, and the decode state's step, captured on CUDA), and the beams and their scores are
    transformers'."""
    pytest.importorskip("transformers")
    from codellama_fast.kernels import attention_shared_decode as shared_kernel
    from codellama_fast.kernels import triton_ops
    from tests.engine_helpers import fresh_seed, hf_beams, logprobs_close, make_hf_model, save
    from tests.test_kernels import _triton_engine

    monkeypatch.setattr(shared_kernel, "MIN_SAVED_BYTES", 1)
    calls = []
    real = triton_ops.attention_shared_decode
    monkeypatch.setattr(triton_ops, "attention_shared_decode", lambda *a, **k: calls.append((a[0].shape[0], a[5])) or real(*a, **k))
    seed = fresh_seed()
    hf = make_hf_model("gqa4-d16", seed=seed)
    eng = _triton_engine(save(hf, tmp_path / "m"), graph=graph)
    rows = [eng.tokenizer.encode("def quicksort(items):\n    "), eng.tokenizer.encode("x = [")]
    want, want_scores = hf_beams(hf, rows, 6, None, num_beams=3, num_return_sequences=2)
    got = eng.generate(input_ids=rows, max_new_tokens=6, stop_at_eos=False, num_beams=3, num_return_sequences=2)
    assert got.token_ids == want, seed
    assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (seed, got.sequence_scores, want_scores)
    assert calls and all(c == (6, 3) for c in calls), calls  # 2 prompts x 3 beams, runs of 3
    if graph:
        assert [(s.batch, s.runs) for s in eng._graphs._states] == [(6, 3)]
