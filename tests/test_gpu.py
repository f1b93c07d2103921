"""The kernels at real sizes on a GPU (skipped elsewhere): Code Llama 7B and 34B head layouts,
4k-16k prefill, 16k-slot decode, fp16 and bf16. References are independent: torch SDPA (flash
backend, causal) on each sequence's unpadded part, and exact fp32 attention on sampled rows."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    from codellama_fast.kernels.attention_decode import attention_decode
    from codellama_fast.kernels.attention_prefill import attention_prefill

TOL = {torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _sdpa_causal(q, k, v):
    """q [T, Hq, D], k/v [S, Hkv, D] (T == S, no padding) -> [T, Hq, D], fp32 accumulation in SDPA."""
    hq, hkv = q.shape[1], k.shape[1]
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=hq != hkv)
    return out[0].transpose(0, 1)


def _exact_rows(q, k, v, rows):
    """fp32 causal attention for selected query rows (no padding). q [T,Hq,D], k/v [S,Hkv,D]."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    g = hq // hkv
    out = []
    for r in rows:
        kk = k[: r + 1].float().repeat_interleave(g, dim=1)  # [r+1, Hq, D]
        vv = v[: r + 1].float().repeat_interleave(g, dim=1)
        s = torch.einsum("hd,shd->hs", q[r].float(), kk) / d**0.5
        out.append(torch.einsum("hs,shd->hd", torch.softmax(s, -1), vv))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,s,pads", [(32, 32, 4096, [0]), (64, 8, 4096, [0, 1000]), (32, 32, 16384, [0])])
def test_prefill_real_sizes(dtype, hq, hkv, s, pads):
    d, b = 128, len(pads)
    q = torch.randn(b, s, hq, d, device="cuda", dtype=dtype)
    kc = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
    vc = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
    kv_start = torch.tensor(pads, device="cuda")
    out = attention_prefill(q, kc, vc, 0, kv_start, s)
    assert torch.isfinite(out).all()
    for i, p in enumerate(pads):
        qi, ki, vi = q[i, p:], kc[i, :, p:].transpose(0, 1), vc[i, :, p:].transpose(0, 1)
        ref = _sdpa_causal(qi, ki, vi)
        err = (out[i, p:].float() - ref.float()).abs().max().item()
        assert err < TOL[dtype], err
        rows = torch.randint(0, s - p, (16,)).tolist()
        exact = _exact_rows(qi, ki, vi, rows)
        err = (out[i, p:][rows].float() - exact).abs().max().item()
        assert err < TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,hq,hkv,L", [(1, 32, 32, 16384), (4, 32, 32, 4099), (8, 64, 8, 16384)])
def test_decode_real_sizes(dtype, b, hq, hkv, L):
    d = 128
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=dtype)
    kc = torch.randn(b, hkv, L + 64, d, device="cuda", dtype=dtype)
    vc = torch.randn(b, hkv, L + 64, d, device="cuda", dtype=dtype)
    pads = [0] + [int(x) for x in torch.randint(0, L // 2, (b - 1,))]
    kv_start = torch.tensor(pads, device="cuda")
    out = attention_decode(q, kc, vc, kv_start, torch.tensor([L], device="cuda", dtype=torch.int32))
    for i, p in enumerate(pads):
        k = kc[i, :, p:L].float().repeat_interleave(hq // hkv, dim=0)  # [Hq, n, D]
        v = vc[i, :, p:L].float().repeat_interleave(hq // hkv, dim=0)
        s = torch.einsum("hd,hnd->hn", q[i, 0].float(), k) / d**0.5
        ref = torch.einsum("hn,hnd->hd", torch.softmax(s, -1), v)
        err = (out[i, 0].float() - ref).abs().max().item()
        assert err < TOL[dtype], err


def test_graph_decode_7b_layout_matches_eager():
    """A 2-layer model with 7B's layer shapes: graph-captured greedy decode == uncaptured loop."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    ids = [[1] + torch.randint(3, 32000, (300,)).tolist(), [1] + torch.randint(3, 32000, (77,)).tolist()]
    eng.use_cuda_graph = False
    eager = eng.generate(input_ids=ids, max_new_tokens=40, stop_at_eos=False).token_ids
    eng.use_cuda_graph = True
    graphed = eng.generate(input_ids=ids, max_new_tokens=40, stop_at_eos=False).token_ids
    assert graphed == eager
