"""A CPU prefill's attention over whole prompts: the engine's (``TorchOps.attention``, which runs a
left-padded batch row by row and fp16 through fp32, ``engine/cpu_prefill_attention.py``) against
SDPA as transformers runs it (``kernels.reference.attention``: K/V repeated per query head; one
causal call without padding, one call with a [B, 1, T, T] mask with it; fp16 in fp16). Head
layouts of Code Llama 7B (MHA) and 34B (8 query heads per KV head), the 110M CPU benchmark
model's, and a tiny one for the harness's own test; batch 1 (no padding) and batch B > 1 of
prompts of different lengths (row i shorter by i/(2B) of the prompt, as ``bench_generate.py
--ragged``), fp32, bf16 and fp16.

The providers are timed in turns, repeat by repeat, so a slow spell of this shared machine falls
on both; rates are the prompts' own tokens (padding not counted) per second. Each row also records
the largest difference from the SDPA output.

    python benches/bench_cpu_prefill_attention.py [--layouts 7B 34B 110M] [--prompt 512 2048] [--batch 1 4]
        [--dtype float32 bfloat16 float16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import git_sha, machine, now, percentiles, versions, write_results  # noqa: E402
from llm_bench import SHAPES, head_layout, prompt_lengths  # noqa: E402


def engine(q, k_cache, v_cache, kv_start):
    """The engine's CPU attention (``TorchOps.attention``) of a whole prompt."""
    from codellama_fast.engine.ops import TorchOps

    return TorchOps().attention(q, k_cache, v_cache, 0, kv_start, q.shape[1])


def sdpa(q, k_cache, v_cache, kv_start):
    """SDPA as transformers runs it (the torch reference): causal, or with the padding mask."""
    from codellama_fast.kernels.reference import attention

    return attention(q, k_cache, v_cache, 0, kv_start, q.shape[1])


PROVIDERS: dict[str, Callable] = {"codellama-fast": engine, "sdpa": sdpa}


def time_in_turns(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each, after one warm-up call each, the calls taking turns each repeat."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t0)
    return samples


def measure(dtype: torch.dtype, layout: str, b: int, t: int, repeats: int) -> list[dict[str, Any]]:
    """Both providers' rows and their ratio for one shape: b prompts (``prompt_lengths``, ragged where
    b > 1) left padded to t tokens over `layout`'s heads."""
    hq, hkv, d = head_layout(layout)
    capacity = t + 256  # a cache with room left, as the engine's
    q = torch.randn(b, t, hq * d).to(dtype).view(b, t, hq, d)  # as the projection leaves it
    k_cache = torch.randn(b, hkv, capacity, d).to(dtype)
    v_cache = torch.randn(b, hkv, capacity, d).to(dtype)
    lengths = prompt_lengths(b, t, ragged=True)
    kv_start = torch.tensor([t - n for n in lengths])
    tokens = sum(lengths)
    calls = {name: (lambda fn=fn: fn(q, k_cache, v_cache, kv_start)) for name, fn in PROVIDERS.items()}
    samples = time_in_turns(calls, repeats)
    want = calls["sdpa"]().float()
    dtype_name = str(dtype).removeprefix("torch.")
    shape = f"{layout} B{b} T{t} Hq{hq} Hkv{hkv} D{d}"
    median = {name: percentiles(s)["p50"] for name, s in samples.items()}
    rows = [{"bench": "cpu_prefill_attention", "provider": name, "metric": "prompt_tokens_per_s", "unit": "tokens/s",
             "shape": shape, "layout": layout, "batch": b, "prompt": t, "prompt_tokens": tokens, "padded": bool(kv_start.any()),
             "dtype": dtype_name, "p50": tokens / median[name], "ms_p50": median[name] * 1e3, "ms_all": [x * 1e3 for x in s],
             "max_abs_diff_from_sdpa": (calls[name]().float() - want).abs().max().item()}
            for name, s in samples.items()]
    ratio = median["sdpa"] / median["codellama-fast"]
    rows.append({"bench": "cpu_prefill_attention", "provider": "ratio", "metric": "ours_over_sdpa", "unit": "x",
                 "shape": shape, "dtype": dtype_name, "padded": bool(kv_start.any()), "p50": ratio})
    print(f"{dtype_name:9s} {shape:34s} ours {median['codellama-fast'] * 1e3:9.1f} ms   "
          f"sdpa {median['sdpa'] * 1e3:9.1f} ms ({ratio:5.2f}x)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", nargs="+", default=["7B", "34B", "110M"], choices=sorted(SHAPES), help="head layouts of these model shapes")
    ap.add_argument("--prompt", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"bench": "cpu_prefill_attention", "machine": machine(), "versions": versions("torch", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    rows: list[dict[str, Any]] = []
    path = None
    for dtype_name, layout, b, t in itertools.product(args.dtype, args.layouts, args.batch, args.prompt):
        rows += measure(getattr(torch, dtype_name), layout, b, t, args.repeats)
        path = write_results("cpu-prefill-attention", meta, rows, args.out, path)
    assert path is not None
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
