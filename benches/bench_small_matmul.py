"""The decode step's projections on the CPU: ``F.linear(x, w)`` against the engine's
``small_matmul.linear`` (``w @ x.T`` for few fp32 rows, else F.linear) at the weight shapes of the
110M benchmark model and of Code Llama 7B, for 1-16 rows, fp32 and bf16; and ``w @ x.T`` itself
at every row count and dtype ("weight_first"), which shows where the engine's choice holds.

Each timed call reads a different copy of the weight (copies cycled over more memory than the
CPU caches hold), as a decode step reads every weight once from memory.

    python benches/bench_small_matmul.py [--rows 1 2 4 8 16] [--shapes 110M 7B] [--dtype float32] [--budget-mb 600]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import git_sha, machine, now, percentiles, time_cycling, versions, write_results  # noqa: E402

# (name, N, K) of each model's projections: fused qkv, o, fused gate/up, down, lm_head
SHAPES = {
    "110M": [("qkv", 2304, 768), ("o", 768, 768), ("gate_up", 4096, 768), ("down", 768, 2048), ("lm_head", 32016, 768)],
    "7B": [("qkv", 12288, 4096), ("o", 4096, 4096), ("gate_up", 22016, 4096), ("down", 4096, 11008), ("lm_head", 32016, 4096)],
    "tiny": [("qkv", 1024, 256), ("lm_head", 2048, 256)],  # (the harness's own test: the smallest weights the path takes)
}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    ap.add_argument("--shapes", nargs="+", default=["110M", "7B"], choices=sorted(SHAPES))
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--budget-mb", type=float, default=600,
                    help="memory the weight copies of one shape take (more than the caches)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from codellama_fast.engine import small_matmul

    meta = {"bench": "small_matmul", "machine": machine(), "versions": versions("torch", "codellama-fast"), "git_sha": git_sha(),
            "timestamp": now(), "torch_threads": torch.get_num_threads(), "small_rows": small_matmul.SMALL_ROWS,
            "blas": "mkl" if torch.backends.mkl.is_available() else "other", "budget_mb": args.budget_mb}
    rows: list[dict[str, Any]] = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for model in args.shapes:
            for name, n, k in SHAPES[model]:
                nbytes = n * k * dtype.itemsize
                copies = max(2, int(args.budget_mb * 2**20 // nbytes))
                weights = [torch.randn(n, k).to(dtype) for _ in range(copies)]
                calls = max(copies, 8)
                for m in args.rows:
                    x = torch.randn(m, k).to(dtype)
                    shape = f"{model} {name} M{m} N{n} K{k}"
                    times = {}
                    # "weight_first" is the w @ x.T formulation at every row count and dtype, the
                    # engine's ("codellama-fast") only where small_matmul.uses_small_rows
                    for provider, fn in (("torch_linear", F.linear), ("codellama-fast", small_matmul.linear),
                                         ("weight_first", small_matmul.weight_first)):
                        t = percentiles(time_cycling(partial(fn, x), weights, calls))
                        times[provider] = t["p50"]
                        rows.append({"bench": "small_matmul", "provider": provider, "metric": "weight_read_rate", "unit": "GB/s",
                                     "shape": shape, "rows": m, "dtype": dtype_name, "p50": nbytes / t["p50"] / 1e9,
                                     "p20": nbytes / t["p80"] / 1e9, "p80": nbytes / t["p20"] / 1e9, "us_p50": t["p50"] * 1e6,
                                     "small_path": provider == "weight_first"
                                     or provider == "codellama-fast" and small_matmul.uses_small_rows(x, weights[0])})
                    ratio = times["torch_linear"] / times["codellama-fast"]
                    rows.append({"bench": "small_matmul", "provider": "ratio", "metric": "ours_over_torch_linear", "unit": "x",
                                 "shape": shape, "rows": m, "dtype": dtype_name, "p50": ratio})
                    print(f"{dtype_name:9s} {shape:36s} F.linear {times['torch_linear'] * 1e6:9.0f} us   ours "
                          f"{times['codellama-fast'] * 1e6:9.0f} us   {ratio:5.2f}x   "
                          f"(w @ x.T {times['weight_first'] * 1e6:9.0f} us)",
                          flush=True)
                del weights
    path = write_results("small-matmul-cpu", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
