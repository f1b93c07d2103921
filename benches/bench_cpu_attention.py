"""A CPU decode step's attention: the engine's (``TorchOps.attention``: ``engine/cpu_attention.py``
for MHA heads and in fp16 for few queries per KV head, else ``kernels.reference.attention``, which
runs each KV head's query heads along the query axis) against the two ways transformers' SDPA
attention runs it: K/V repeated for every query head (``repeat_kv``, its path when it passes a
mask; for MHA heads plain SDPA) and SDPA's ``enable_gqa`` (its path without one, torch >= 2.5).
Head layouts of Code Llama 7B (MHA) and 34B (8 query heads per KV head), the 110M CPU benchmark
model's, and a tiny one for the harness's own test; one new token per sequence (``--queries``:
more, as guessed tokens checked against the cache, each seeing the ones before it) over 512-4096
cached keys, batch 1 and batch 4 with a left-padded row (a mask), fp32 and bf16 (``--dtype``:
fp16 too).

Each timed call reads the next of several layers' caches (cycled over more memory than the CPU
caches hold), as a decode step reads each layer's keys once from memory. Rates are K+V bytes of
the visible keys per second; each row also records the largest difference from the engine's
output.

``--samples N``: the batch's rows come in runs of N samples of one prompt (all but the last 32
slots, the same keys and values in every row of a run, as the engine's prefill leaves them): the
engine reads a run's prompt once (``engine/shared_prompt_attention.py``), and is also timed as it
reads every row (``codellama-fast-per-row``).

    python benches/bench_cpu_attention.py [--layouts 7B 34B] [--keys 512 2048 4096] [--batch 1 4] [--queries 1 11]
                                          [--dtype float32 bfloat16 float16] [--samples 4]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import git_sha, machine, now, percentiles, time_cycling, versions, write_results  # noqa: E402
from llm_bench import SHAPES, head_layout  # noqa: E402


def _mask(t, kv_start, kv_len):
    """The T new queries' mask [B, 1, T, L] (the last T slots): for one query None where no row is
    padded (as the engine's)."""
    from codellama_fast.kernels.reference import attention_mask_or_none

    return attention_mask_or_none(kv_len - t, t, kv_len, kv_start, bool(kv_start.any()))


def repeat_kv(q, k_cache, v_cache, kv_start, kv_len):
    """transformers' SDPA path with a mask: K/V repeated per query head, then SDPA."""
    from codellama_fast.kernels.reference import repeat_heads

    g = q.shape[2] // k_cache.shape[1]
    k, v = repeat_heads(k_cache[:, :, :kv_len], g), repeat_heads(v_cache[:, :, :kv_len], g)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=_mask(q.shape[1], kv_start, kv_len)).transpose(1, 2)


def enable_gqa(q, k_cache, v_cache, kv_start, kv_len):
    """transformers' SDPA path without a mask (torch >= 2.5): SDPA's own GQA."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k_cache[:, :, :kv_len], v_cache[:, :, :kv_len],
                                          attn_mask=_mask(q.shape[1], kv_start, kv_len), enable_gqa=True).transpose(1, 2)


def _on_layer(fn: Callable, q, kv_start, kv_len: int) -> Callable:
    """fn's call on one layer's (k_cache, v_cache)."""
    return lambda kv: fn(q, kv[0], kv[1], kv_start, kv_len)


def engine(q, k_cache, v_cache, kv_start, kv_len, shared_prompt=None):
    """The engine's CPU attention (``TorchOps.attention``)."""
    from codellama_fast.engine.ops import TorchOps

    return TorchOps().attention(q, k_cache, v_cache, kv_len - q.shape[1], kv_start, kv_len, shared_prompt)


# --samples: the slots after the prompt, each row's own (its generated tokens, the new ones last)
OWN_SLOTS = 32


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", nargs="+", default=["7B", "34B", "110M"], choices=sorted(SHAPES), help="head layouts of these model shapes")
    ap.add_argument("--keys", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--queries", type=int, nargs="+", default=[1], help="new tokens per sequence, in the cache's last slots")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--samples", type=int, default=1, help="rows in runs of this many samples of one prompt (divides each batch)")
    ap.add_argument("--budget-mb", type=float, default=400,
                    help="memory the layers' caches of one shape take (more than the caches)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    has_gqa = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa
    providers: dict[str, Callable] = {"codellama-fast": engine, "repeat_kv": repeat_kv}
    if args.samples > 1:
        providers["codellama-fast-per-row"] = engine
    if has_gqa:
        providers["sdpa_enable_gqa"] = enable_gqa
    meta = {"bench": "cpu_attention", "machine": machine(), "versions": versions("torch", "codellama-fast"), "git_sha": git_sha(),
            "timestamp": now(), "torch_threads": torch.get_num_threads(), "budget_mb": args.budget_mb, "samples": args.samples}
    rows: list[dict[str, Any]] = []
    for dtype_name, layout, queries, b, kv_len in itertools.product(args.dtype, args.layouts, args.queries, args.batch, args.keys):
        dtype = getattr(torch, dtype_name)
        hq, hkv, d = head_layout(layout)
        capacity = kv_len + 256  # a cache with room left, as the engine's
        layer_bytes = 2 * b * hkv * capacity * d * dtype.itemsize
        layers = max(2, int(args.budget_mb * 2**20 // layer_bytes))
        caches = [(torch.randn(b, hkv, capacity, d).to(dtype), torch.randn(b, hkv, capacity, d).to(dtype))
                  for _ in range(layers)]
        q = (torch.randn(b, queries, hq, d) * d**-0.5).to(dtype)
        # batch 4: one row left-padded by a quarter of the keys (the engine then masks)
        kv_start = torch.tensor([0] * (b - 1) + [kv_len // 4] if b > 1 else [0])
        runs = args.samples
        fns = dict(providers)
        if runs > 1:  # runs of samples: a run's rows hold the same prompt slots and padding (the last run padded)
            assert b % runs == 0 and kv_len > OWN_SLOTS, "--samples must divide the batch and leave the prompt slots"
            prompt = kv_len - OWN_SLOTS
            for kc, vc in caches:
                for x in (kc, vc):
                    x[:, :, :prompt] = x[::runs, :, :prompt].repeat_interleave(runs, dim=0)
            kv_start = torch.tensor([0] * (b - runs) + [kv_len // 4] * runs)
            fns["codellama-fast"] = lambda q, k, v, s, n: engine(q, k, v, s, n, (runs, prompt))
        visible = (kv_start.neg() + kv_len).sum().item()  # keys the batch sees
        read = 2 * hkv * visible * d * dtype.itemsize
        want = engine(q, *caches[0], kv_start, kv_len).float()
        shape = f"{layout} B{b} T{queries} L{kv_len} Hq{hq} Hkv{hkv} D{d}" + (f" runs{runs}" if runs > 1 else "")
        times = {}
        for provider, fn in fns.items():
            t = percentiles(time_cycling(_on_layer(fn, q, kv_start, kv_len), caches, max(8, len(caches))))
            times[provider] = t["p50"]
            diff = (fn(q, *caches[0], kv_start, kv_len).float() - want).abs().max().item()
            rows.append({"bench": "cpu_attention", "provider": provider, "metric": "kv_read_rate", "unit": "GB/s",
                         "shape": shape, "layout": layout, "batch": b, "queries": queries, "keys": kv_len, "dtype": dtype_name,
                         "p50": read / t["p50"] / 1e9, "p20": read / t["p80"] / 1e9, "p80": read / t["p20"] / 1e9,
                         "us_p50": t["p50"] * 1e6, "max_abs_diff_from_engine": diff})
        for base in providers:
            if base != "codellama-fast":
                rows.append({"bench": "cpu_attention", "provider": "ratio", "metric": f"ours_over_{base}",
                             "unit": "x", "shape": shape, "dtype": dtype_name,
                             "p50": times[base] / times["codellama-fast"]})
        others = "   ".join(f"{p} {times[p] * 1e6:9.0f} us ({times[p] / times['codellama-fast']:5.2f}x)"
                           for p in providers if p != "codellama-fast")
        print(f"{dtype_name:9s} {shape:38s} ours {times['codellama-fast'] * 1e6:9.0f} us "
              f"({read / times['codellama-fast'] / 1e9:5.1f} GB/s)   {others}", flush=True)
        del caches
    path = write_results("cpu-attention", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
