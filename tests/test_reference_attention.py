"""The plain-torch attention (the engine's CPU path and the kernels' oracle) against a loop that
applies the masking rule key by key in float64, for MHA and GQA, decode, guessed tokens, chunks
and prefill, with and without left padding; and GQA reading the cache without repeating it."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.kernels import reference as R  # noqa: E402
from tests.engine_helpers import fresh_seed  # noqa: E402


def _loop_attention(q, kc, vc, q_start, kv_start, kv_len):
    """Query i of sequence b sits in slot q_start + i and sees keys kv_start[b] <= j <= its slot,
    and always its own slot; KV head h // group serves query head h. float64, one row at a time."""
    b, t, hq, d = q.shape
    group = hq // kc.shape[1]
    out = torch.zeros(b, t, hq, d, dtype=torch.float64)
    for s in range(b):
        for i in range(t):
            slot = q_start + i
            keys = [j for j in range(kv_len) if int(kv_start[s]) <= j <= slot or j == slot]
            for h in range(hq):
                k = kc[s, h // group, keys].double()  # [n, D]
                v = vc[s, h // group, keys].double()
                p = torch.softmax(k @ q[s, i, h].double() / math.sqrt(d), dim=0)
                out[s, i, h] = p @ v
    return out


# (batch, new tokens, query heads, KV heads, head dim, first query's slot, keys, left padding)
CASES = [
    (2, 1, 4, 4, 16, 20, 21, [0, 0], "MHA decode"),
    (3, 1, 8, 2, 16, 30, 31, [0, 5, 29], "GQA 4 decode, padded; one row sees only its own key"),
    (1, 1, 8, 1, 32, 12, 13, [0], "GQA 8 decode"),
    (2, 5, 8, 2, 16, 17, 22, [0, 3], "GQA 4, guessed tokens checked at the end of the cache"),
    (2, 4, 6, 3, 8, 9, 13, [0, 0], "GQA 2, a chunk after earlier keys"),
    (2, 4, 8, 1, 16, 6, 15, [2, 0], "GQA 8, queries before the cache's end (keys past them unseen)"),
    (2, 9, 8, 2, 16, 0, 9, [0, 0], "GQA 4 causal prefill"),
    (2, 9, 8, 2, 16, 0, 9, [0, 4], "GQA 4 prefill, left padded (padding queries see themselves)"),
    (1, 1, 4, 2, 16, 0, 1, [0], "the first token alone"),
    # fp32: more than 2*Hkv*D*4 = 64 queries, so the K/V copy (fp64: 128, so still folded)
    (2, 70, 4, 1, 8, 5, 75, [0, 9], "GQA 4, a long chunk after earlier keys, padded"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,t,hq,hkv,d,q_start,kv_len,pads,what", CASES, ids=[c[-1] for c in CASES])
def test_attention_equals_the_masking_rule_key_by_key(dtype, b, t, hq, hkv, d, q_start, kv_len, pads, what):
    torch.manual_seed(fresh_seed())
    q = torch.randn(b, t, hq, d, dtype=dtype)
    kc = torch.randn(b, hkv, kv_len + 3, d, dtype=dtype)  # slots past kv_len hold keys no query may see
    vc = torch.randn(b, hkv, kv_len + 3, d, dtype=dtype)
    kv_start = torch.tensor(pads)
    got = R.attention(q, kc, vc, q_start, kv_start, kv_len)
    want = _loop_attention(q, kc, vc, q_start, kv_start, kv_len)
    assert got.shape == (b, t, hq, d) and got.dtype == dtype
    # fp32: each output is a convex mix of values of size ~3 (softmax weights sum to 1), so its
    # rounding error is a few ulps of that
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    err = (got.double() - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{what}: max error {err}"


@pytest.mark.parametrize("t,q_start,kv_len,pads,folded", [
    (1, 40, 41, [0, 0], True), (1, 40, 41, [0, 9], True), (3, 38, 41, [0, 9], True),
    (256, 40, 296, [0, 9], True),    # 2*Hkv*D*4 bytes = 256 queries: the repeated mask rows weigh what the copy would
    (257, 40, 297, [0, 9], False),  # one more: the copy
])
def test_gqa_attention_reads_the_cache_without_repeating_it(monkeypatch, t, q_start, kv_len, pads, folded):
    """Decode, guessed tokens and chunks hand SDPA the cache's own KV heads (each KV head's query
    heads along the query axis), not a copy repeated for every query head; a chunk whose repeated
    mask rows would outweigh that copy takes the copy."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        mask = kwargs.get("attn_mask")
        seen.append((tuple(q.shape), tuple(k.shape), None if mask is None else tuple(mask.shape)))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(R.F, "scaled_dot_product_attention", spy)
    b, hq, hkv, d = 2, 8, 2, 16
    q = torch.randn(b, t, hq, d)
    kc, vc = torch.randn(b, hkv, kv_len + 8, d), torch.randn(b, hkv, kv_len + 8, d)
    R.attention(q, kc, vc, q_start, torch.tensor(pads), kv_len)
    group = hq // hkv
    mask = None if t == 1 and not any(pads) else (b, 1, group * t if folded and t > 1 else t, kv_len)
    if folded:
        assert seen == [((b, hkv, group * t, d), (b, hkv, kv_len, d), mask)]
    else:
        assert seen == [((b, hq, t, d), (b, hq, kv_len, d), mask)]
