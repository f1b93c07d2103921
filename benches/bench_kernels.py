"""Triton kernels vs torch baselines on one GPU (same run): prefill attention vs
scaled_dot_product_attention (flash backend), decode attention vs SDPA, the decode step's fused
projections vs cuBLAS matmul + torch ops, one layer of the fused decode step with and without
programmatic dependent launch, the decode step of samples of one prompt reading its slots once per
step vs every row's copy, RMSNorm / SwiGLU / RoPE vs eager torch. Reports TFLOP/s
or GB/s and the fraction of the ceilings measured in the same run (device copy bandwidth, fp16
GEMM rate). JSON to benches/results/.

    python benches/bench_kernels.py [--quick] [--out DIR]
    python benches/bench_kernels.py --smoke      # tiny shapes on CPU (Triton interpreter): checks the harness
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from common import LiveRows, git_sha, machine, now, result_path, versions, write_results  # noqa: E402


def bench(fn: Callable[[], Any], smoke: bool, graph: bool = False) -> dict[str, float]:
    """Median/p20/p80 milliseconds (do_bench on GPU, a plain timer in smoke mode). `graph` times
    replays of a CUDA graph of `fn`: GPU time without Python launch cost, which is how the engine
    runs its decode step."""
    if smoke:
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return {"p20": ts[0], "p50": ts[1], "p80": ts[2]}
    import triton.testing

    if graph:
        try:
            p50, p20, p80 = triton.testing.do_bench_cudagraph(fn, rep=100, quantiles=[0.5, 0.2, 0.8])
        except RuntimeError as exc:  # a launcher that cannot be captured: its row says so, the run goes on
            print(f"graph timing failed: {str(exc)[:160]}", flush=True)
            torch.cuda.synchronize()
            return {"p20": float("nan"), "p50": float("nan"), "p80": float("nan")}
        return {"p20": p20, "p50": p50, "p80": p80}
    p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return {"p20": p20, "p50": p50, "p80": p80}


def ceilings(dev: str, smoke: bool) -> dict[str, float]:
    if smoke:
        return {"copy_GBps": float("nan"), "fp16_gemm_TFLOPs": float("nan")}
    n = 1 << 30  # 2 GiB of fp16 each way
    a = torch.empty(n, dtype=torch.float16, device=dev)
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a), False)["p50"]
    copy = 2 * a.numel() * 2 / (t * 1e-3) / 1e9  # read + write
    del a, b
    m = torch.randn(8192, 8192, dtype=torch.float16, device=dev)
    t = bench(lambda: m @ m, False)["p50"]
    gemm = 2 * 8192**3 / (t * 1e-3) / 1e12
    return {"copy_GBps": copy, "fp16_gemm_TFLOPs": gemm}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--only", choices=["prefill", "shared", "decode", "projection", "layer", "elementwise"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    smoke = args.smoke
    dev = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA GPU (or --smoke for a CPU harness check)")

    from codellama_fast.kernels import reference as R
    from codellama_fast.kernels.attention_decode import attention_decode, new_counters, num_splits, rope_attention_decode
    from codellama_fast.kernels.attention_prefill import attention_prefill
    from codellama_fast.kernels.attention_shared_decode import attention_shared_decode
    from codellama_fast.kernels.gemv import linear_residual, norm_linear, norm_linear_swiglu
    from codellama_fast.kernels.rmsnorm import rms_norm
    from codellama_fast.kernels.rope import rope_cache_update
    from codellama_fast.kernels.swiglu import swiglu
    from codellama_fast.kernels.triton_ops import TritonOps
    from codellama_fast.engine.fused_decode import fused_decode_layer
    from codellama_fast.engine.model import Block, LlamaModel, StepContext
    from llm_bench import our_config
    import torch.nn.functional as F

    dt = torch.float16
    meta = {"bench": "kernels", "machine": machine(), "versions": versions("torch", "triton", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "smoke": smoke}
    ceil = ceilings(dev, smoke)
    meta["ceilings"] = ceil
    print(f"ceilings: {ceil}", flush=True)
    out_path = result_path("kernels" + ("-smoke" if smoke else ""), args.out)
    rows = LiveRows(meta, out_path)

    def add(bench_name: str, provider: str, shape: str, t: dict[str, float], work: float, unit: str, ceiling: float | None,
            timing: str = "launch") -> None:
        rate_scale = 1e12 if unit == "TFLOP/s" else 1e9
        r = {"bench": bench_name, "provider": provider, "metric": "rate", "unit": unit, "shape": shape,
             "p50": work / (t["p50"] * 1e-3) / rate_scale, "p20": work / (t["p80"] * 1e-3) / rate_scale,
             "p80": work / (t["p20"] * 1e-3) / rate_scale, "ms_p50": t["p50"], "device": meta["machine"].get("gpu", "cpu"),
             "dtype": "float16", "timing": timing, "versions": meta["versions"], "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]}
        if ceiling and ceiling == ceiling:
            r["fraction_of_ceiling"] = r["p50"] / ceiling
        rows.append(r)
        print(f"{bench_name:16s} {shape:34s} {provider:10s} {timing:6s} {r['p50']:9.1f} {unit}" + (f" ({100 * r['fraction_of_ceiling']:.0f}% of ceiling)" if "fraction_of_ceiling" in r else ""), flush=True)

    # ---- prefill attention: causal, head_dim 128
    prefill_shapes = [(1, 64, 4, 16)] if smoke else [(1, 32, 32, 4096), (1, 32, 32, 8192), (1, 32, 32, 16384), (1, 64, 8, 4096), (4, 32, 32, 2048)]
    if args.quick and not smoke:
        prefill_shapes = prefill_shapes[:1] + prefill_shapes[2:4]
    d = 16 if smoke else 128
    if args.only not in (None, "prefill"):
        prefill_shapes = []
    for b, hq, hkv, s in prefill_shapes:
        q = torch.randn(b, s, hq, d, dtype=dt, device=dev)
        kc = torch.randn(b, hkv, s, d, dtype=dt, device=dev)
        vc = torch.randn_like(kc)
        kv_start = torch.zeros(b, dtype=torch.long, device=dev)
        flops = 4 * b * hq * s * s * d / 2  # causal: half the score matrix
        shape = f"B{b} Hq{hq} Hkv{hkv} S{s} D{d}"
        add("prefill_attn", "triton", shape, bench(lambda: attention_prefill(q, kc, vc, 0, kv_start, s), smoke), flops, "TFLOP/s", None)
        qh = q.transpose(1, 2).contiguous()
        kh = kc if hkv == hq else kc.repeat_interleave(hq // hkv, dim=1)
        vh = vc if hkv == hq else vc.repeat_interleave(hq // hkv, dim=1)

        def sdpa():
            if dev == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)

        add("prefill_attn", "sdpa_flash", shape, bench(sdpa, smoke), flops, "TFLOP/s", None)
        del q, kc, vc, qh, kh, vh

    # ---- the decode step of samples of one prompt (num_return_sequences, beams): rows in runs of
    # n that share their first P slots, each with 128 slots of its own. The one-launch step reads
    # every row's copy; the shared one (RoPE + cache write, then the prompt read once per run)
    # reads one. Both rates count every row's bytes (what the one-launch step reads), so their
    # ratio is the speed-up.
    shared_shapes = [(4, 2, 4, 2, 64, 32)] if smoke else [
        (8, 8, 32, 32, 2048, 128), (8, 8, 32, 32, 8192, 128), (32, 8, 32, 32, 2048, 128), (2, 2, 32, 32, 4096, 128),
        (8, 8, 64, 8, 8192, 128)]
    if args.quick and not smoke:
        shared_shapes = shared_shapes[:1] + shared_shapes[3:]
    if args.only not in (None, "shared"):
        shared_shapes = []
    for b, runs, hq, hkv, prompt, own in shared_shapes:
        length = prompt + own
        kc = torch.randn(b, hkv, length, d, dtype=dt, device=dev)
        vc = torch.randn_like(kc)
        kc[:, :, :prompt] = kc[::runs, :, :prompt].repeat_interleave(runs, dim=0)
        vc[:, :, :prompt] = vc[::runs, :, :prompt].repeat_interleave(runs, dim=0)
        kv_start = torch.zeros(b, dtype=torch.long, device=dev)
        kv_len = torch.tensor([length], dtype=torch.int32, device=dev)
        prompt_slots = torch.tensor([prompt], dtype=torch.int32, device=dev)
        qkv = torch.randn(b, 1, (hq + 2 * hkv) * d, dtype=dt, device=dev)
        qn, kn, vn = qkv[..., : hq * d].view(b, 1, hq, d), qkv[..., hq * d : (hq + hkv) * d].view(b, 1, hkv, d), qkv[..., (hq + hkv) * d :].view(b, 1, hkv, d)
        pos = torch.full((b, 1), length - 1, dtype=torch.long, device=dev)
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=dev).float() / d))
        slots = torch.tensor([length - 1], device=dev)
        counters = new_counters(b * hkv, dev)
        every_row_bytes = 2 * b * hkv * length * d * 2
        shape = f"B{b} runs{runs} Hq{hq} Hkv{hkv} P{prompt}+{own} D{d}"

        def every_row():
            return rope_attention_decode(qn, kn, vn, pos, inv_freq, kc, vc, slots, kv_start, kv_len, counters=counters)

        def prompt_once():
            q_rot = rope_cache_update(qn, kn, vn, pos, inv_freq, kc, vc, slots)
            return attention_shared_decode(q_rot, kc, vc, kv_start, kv_len, runs, prompt_slots)

        for graph in ([False] if smoke else [False, True]):
            timing = "graph" if graph else "launch"
            add("shared_decode_step", "triton_every_row", shape, bench(every_row, smoke, graph), every_row_bytes, "GB/s",
                ceil["copy_GBps"], timing)
            add("shared_decode_step", "triton_prompt_once", shape, bench(prompt_once, smoke, graph), every_row_bytes, "GB/s",
                ceil["copy_GBps"], timing)
        del kc, vc

    # ---- decode attention: one query per sequence against a full cache
    decode_shapes = [(2, 8, 2, 64)] if smoke else [(b, hq, hkv, L) for (hq, hkv) in ((32, 32), (64, 8)) for b in (1, 8, 32) for L in (2048, 8192, 16384)]
    if args.quick and not smoke:
        decode_shapes = [x for x in decode_shapes if x[3] != 8192]
    if args.only not in (None, "decode"):
        decode_shapes = []
    for b, hq, hkv, L in decode_shapes:
        kv_bytes = 2 * b * hkv * L * d * 2
        if not smoke and kv_bytes > 40e9:
            continue
        q = torch.randn(b, 1, hq, d, dtype=dt, device=dev)
        kc = torch.randn(b, hkv, L, d, dtype=dt, device=dev)
        vc = torch.randn_like(kc)
        kv_start = torch.zeros(b, dtype=torch.long, device=dev)
        kv_len = torch.tensor([L], dtype=torch.int32, device=dev)
        shape = f"B{b} Hq{hq} Hkv{hkv} L{L} D{d}"
        qh = q.transpose(1, 2)
        counters = new_counters(b * hkv, dev)
        splits = num_splits(b * hkv, torch.device(dev))
        sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev == "cuda" else 4
        wave_splits = max(1, 3 * sms // (b * hkv))
        # The whole decode step of a layer (RoPE of q and the new k, cache write, attention), as the
        # engine runs it: one fused launch vs the separate RoPE kernel + attention kernel, and
        # vs torch (reference RoPE + SDPA).
        qkv = torch.randn(b, 1, (hq + 2 * hkv) * d, dtype=dt, device=dev)
        qn, kn, vn = qkv[..., : hq * d].view(b, 1, hq, d), qkv[..., hq * d : (hq + hkv) * d].view(b, 1, hkv, d), qkv[..., (hq + hkv) * d :].view(b, 1, hkv, d)
        pos = torch.full((b, 1), L - 1, dtype=torch.long, device=dev)
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=dev).float() / d))
        slots = torch.tensor([L - 1], device=dev)

        def step_fused():
            return rope_attention_decode(qn, kn, vn, pos, inv_freq, kc, vc, slots, kv_start, kv_len, counters=counters)

        def step_separate():
            q_rot = rope_cache_update(qn, kn, vn, pos, inv_freq, kc, vc, slots)
            return attention_decode(q_rot, kc, vc, kv_start, kv_len, counters=counters)

        def step_torch():
            q_rot = R.rope_cache_update(qn, kn, vn, pos, inv_freq, kc, vc, slots)
            return F.scaled_dot_product_attention(q_rot.transpose(1, 2), kc, vc, enable_gqa=hq != hkv)

        for graph in ([False] if smoke else [False, True]):
            timing = "graph" if graph else "launch"
            add("decode_attn", "triton", shape, bench(lambda: attention_decode(q, kc, vc, kv_start, kv_len, counters=counters), smoke, graph), kv_bytes, "GB/s", ceil["copy_GBps"], timing)
            add("decode_attn", "sdpa", shape, bench(lambda: F.scaled_dot_product_attention(qh, kc, vc, enable_gqa=hq != hkv), smoke, graph), kv_bytes, "GB/s", ceil["copy_GBps"], timing)
            # the A/B of the kernel's choices (the default row above takes launch_defaults'): each
            # merge (by the last split of each KV head / by a second launch) over each pipeline
            # depth of the key loop; a quarter of the splits
            for merge, stages in (("last", 2), ("last", 3), ("kernel", 2), ("kernel", 3)):
                variant = partial(attention_decode, q, kc, vc, kv_start, kv_len, counters=counters, merge=merge, stages=stages)
                add("decode_attn", f"triton_{merge}_s{stages}", shape, bench(variant, smoke, graph), kv_bytes, "GB/s",
                    ceil["copy_GBps"], timing)
            add("decode_attn", "triton_quarter_splits", shape,
                bench(lambda: attention_decode(q, kc, vc, kv_start, kv_len, num_splits=max(1, splits // 4), counters=counters), smoke, graph),
                kv_bytes, "GB/s", ceil["copy_GBps"], timing)
            # splits for one wave at 3 programs per SM (the 3-stage loop's occupancy), where the
            # default's ~4 per SM makes 1.3 waves of it
            one_wave = partial(attention_decode, q, kc, vc, kv_start, kv_len, num_splits=wave_splits, counters=counters)
            add("decode_attn", "triton_one_wave_splits", shape, bench(one_wave, smoke, graph), kv_bytes, "GB/s",
                ceil["copy_GBps"], timing)
            add("decode_step", "triton_fused", shape, bench(step_fused, smoke, graph), kv_bytes, "GB/s", ceil["copy_GBps"], timing)
            add("decode_step", "triton_separate", shape, bench(step_separate, smoke, graph), kv_bytes, "GB/s", ceil["copy_GBps"], timing)
            add("decode_step", "torch", shape, bench(step_torch, smoke, graph), kv_bytes, "GB/s", ceil["copy_GBps"], timing)
        del q, kc, vc

    # ---- the decode step's projections (a few rows against a whole weight, the norm / SwiGLU /
    # residual fused in) vs torch (cuBLAS matmul + the reference ops). Bytes = the weight's (the
    # activations are KBs). The step of a batch of 1-8 is mostly these reads.
    proj_models = {"7B": (4096, 11008, 32, 32), "34B": (8192, 22016, 64, 8)}
    proj_shapes = [("7B", 1)] if smoke else [(m, rows) for m in proj_models for rows in (1, 8)]
    if args.only not in (None, "projection"):
        proj_shapes = []
    for model, m_rows in proj_shapes:
        hidden, ffn, hq, hkv = (64, 96, 4, 2) if smoke else proj_models[model]
        qkv_out = (hq + 2 * hkv) * (hidden // hq)
        x = torch.randn(m_rows, hidden, dtype=dt, device=dev)
        norm_w = torch.rand(hidden, dtype=dt, device=dev) + 0.5
        for name, k_in, n_out in (("qkv", hidden, qkv_out), ("o", hidden, hidden), ("gate_up", hidden, 2 * ffn), ("down", ffn, hidden)):
            w = torch.randn(n_out, k_in, dtype=dt, device=dev) * k_in**-0.5
            xin = x if k_in == hidden else torch.randn(m_rows, k_in, dtype=dt, device=dev)
            res = torch.randn(m_rows, n_out, dtype=dt, device=dev)
            if name == "qkv":
                ours, theirs = partial(norm_linear, xin, norm_w, w, 1e-5), partial(R.norm_linear, xin, norm_w, w, 1e-5)
            elif name == "gate_up":
                ours, theirs = partial(norm_linear_swiglu, xin, norm_w, w, 1e-5), partial(R.norm_linear_swiglu, xin, norm_w, w, 1e-5)
            else:
                ours, theirs = partial(linear_residual, xin, w, res), partial(R.linear_residual, xin, w, res)
            shape = f"{model} {name} M{m_rows} K{k_in} N{n_out}"
            for graph in ([False] if smoke else [False, True]):
                timing = "graph" if graph else "launch"
                add("projection", "triton", shape, bench(ours, smoke, graph), w.numel() * 2, "GB/s", ceil["copy_GBps"], timing)
                add("projection", "torch", shape, bench(theirs, smoke, graph), w.numel() * 2, "GB/s", ceil["copy_GBps"], timing)

    # ---- one layer of the fused decode step (engine.fused_decode: the qkv projection with its
    # RMSNorm, the attention step, o projection + residual, gate/up + SwiGLU, down + residual; five
    # launches at one row), replayed from a CUDA graph as the engine runs it, with and without
    # programmatic dependent launch (sm_90+: each kernel starts while the one before it ends).
    # Bytes: the layer's weights and the keys and values read.
    layer_cells = [("tiny", 1, 64)] if smoke else [("7B", 1, 2048), ("34B", 1, 2048), ("7B", 8, 2048)]
    if args.only not in (None, "layer"):
        layer_cells = []
    for model_name, b, L in layer_cells:
        cfg = our_config(model_name)
        layer = Block(cfg).to(device=dev, dtype=dt)
        with torch.no_grad():
            for param in layer.parameters():
                if param.dim() == 2:
                    param.normal_(0, param.shape[1] ** -0.5)
        hkv, d = cfg.num_key_value_heads, cfg.head_dim
        kc = torch.randn(b, hkv, L, d, dtype=dt, device=dev)
        vc = torch.randn_like(kc)
        s_in = torch.randn(b, cfg.hidden_size, dtype=dt, device=dev)
        ctx = StepContext(torch.full((b, 1), L - 1, device=dev), torch.tensor([L - 1], device=dev), L - 1,
                          torch.zeros(b, dtype=torch.long, device=dev), torch.tensor([L], dtype=torch.int32, device=dev))
        inv_freq = LlamaModel.rope_inv_freq(cfg, dev)
        nbytes = sum(param.numel() for param in layer.parameters()) * 2 + kc.numel() * 2 * 2
        shape = f"{model_name} B{b} L{L}"
        ops = TritonOps()
        for pdl in (False, True):
            ops.pdl = pdl
            step = partial(fused_decode_layer, layer, ops, s_in, ctx, inv_freq, (kc, vc), cfg.rms_norm_eps)
            add("decode_layer", "triton_fused_pdl" if pdl else "triton_fused", shape, bench(step, smoke, not smoke), nbytes,
                "GB/s", ceil["copy_GBps"], "launch" if smoke else "graph")
        del layer, kc, vc

    # ---- memory-bound elementwise kernels (bytes = reads + writes)
    if args.only not in (None, "elementwise"):
        path = write_results("", meta, rows, path=out_path)
        print(f"wrote {path}")
        return path
    tokens = 8 if smoke else 8192
    # Each kernel timed as launched from Python and as a CUDA-graph replay: at these sizes a launch
    # through the tuner can cost more host time than the kernel takes on the device, and in the
    # engine's prefill that host time overlaps earlier kernels; the replay is the kernel's own time.
    timings = (("launch", False),) if smoke else (("launch", False), ("graph", True))
    for hidden in ([64] if smoke else [4096, 8192]):
        x = torch.randn(tokens, hidden, dtype=dt, device=dev)
        r = torch.randn_like(x)
        w = torch.rand(hidden, dtype=dt, device=dev)
        shape = f"T{tokens} C{hidden}"
        for timing, graph in timings:
            nbytes = 2 * x.numel() * 2
            add("rmsnorm", "triton", shape, bench(lambda: rms_norm(x, w, 1e-5), smoke, graph), nbytes, "GB/s", ceil["copy_GBps"], timing)
            add("rmsnorm", "torch", shape, bench(lambda: R.rms_norm(x, w, 1e-5), smoke, graph), nbytes, "GB/s", ceil["copy_GBps"], timing)
            nbytes = 4 * x.numel() * 2
            add("add_rmsnorm", "triton", shape, bench(lambda: rms_norm(x, w, 1e-5, r), smoke, graph), nbytes, "GB/s", ceil["copy_GBps"], timing)
            add("add_rmsnorm", "torch", shape, bench(lambda: R.rms_norm(x, w, 1e-5, r), smoke, graph), nbytes, "GB/s", ceil["copy_GBps"], timing)
    for ffn in ([40] if smoke else [11008, 22016]):
        gu = torch.randn(tokens, 2 * ffn, dtype=dt, device=dev)
        nbytes = 3 * tokens * ffn * 2
        shape = f"T{tokens} F{ffn}"
        for timing, graph in timings:
            add("swiglu", "triton", shape, bench(lambda: swiglu(gu), smoke, graph), nbytes, "GB/s", ceil["copy_GBps"], timing)
            add("swiglu", "torch", shape, bench(lambda: R.swiglu(gu), smoke, graph), nbytes, "GB/s", ceil["copy_GBps"], timing)
        del gu
    b, t, hq, hkv = (2, 8, 4, 2) if smoke else (1, 4096, 32, 32)
    qkv = torch.randn(b, t, (hq + 2 * hkv) * d, dtype=dt, device=dev)
    q, k, v = qkv[..., : hq * d].view(b, t, hq, d), qkv[..., hq * d : (hq + hkv) * d].view(b, t, hkv, d), qkv[..., (hq + hkv) * d :].view(b, t, hkv, d)
    pos = torch.arange(t, device=dev)[None].expand(b, t)
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=dev).float() / d))
    kc = torch.zeros(b, hkv, t, d, dtype=dt, device=dev)
    vc = torch.zeros_like(kc)
    slots = torch.arange(t, device=dev)
    nbytes = 2 * qkv.numel() * 2
    shape = f"B{b} T{t} Hq{hq} Hkv{hkv} D{d}"
    for timing, graph in timings:
        add("rope_cache", "triton", shape, bench(lambda: rope_cache_update(q, k, v, pos, inv, kc, vc, slots), smoke, graph), nbytes, "GB/s",
            ceil["copy_GBps"], timing)
        add("rope_cache", "torch", shape, bench(lambda: R.rope_cache_update(q, k, v, pos, inv, kc, vc, slots), smoke, graph), nbytes, "GB/s",
            ceil["copy_GBps"], timing)

    path = write_results("", meta, rows, path=out_path)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
