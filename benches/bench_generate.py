"""Prefill and decode speed of this engine vs transformers `generate` on the same model, the same
prompts, in the same run. CPU default: a ~110M-parameter random model in fp32.

    python benches/bench_generate.py [--model 110M] [--device cpu] [--batch 1 4] [--prompt 128 512] [--new 64]
        [--rules '{"no_repeat_ngram_size": 3, "repetition_penalty": 1.2}'] [--ragged] [--shared-prefix N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import git_sha, machine, now, versions, write_results  # noqa: E402
from llm_bench import free, hf_model, measure_hf, measure_ours, prompt_lengths, random_engine  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="110M")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (GPU default)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--prompt", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="best of N for each provider (shared machines are noisy)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--rules", type=json.loads, default={},
                    help="generation arguments (transformers' names, JSON) given to both sides, e.g. logits rules")
    ap.add_argument("--ragged", action="store_true",
                    help="prompts of different lengths in a batch (row i shorter by i/(2*batch) of the prompt length), left padded")
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="the prompts' first N tokens are the same (a system prompt, few-shot examples)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device == "cuda" else torch.float32)

    from codellama_fast import CodeLlamaTokenizerFast

    tok = CodeLlamaTokenizerFast.from_pretrained()
    meta = {"bench": "generate", "machine": machine(), "versions": versions("torch", "transformers", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "model": args.model, "device": args.device, "dtype": str(dtype),
            "torch_threads": torch.get_num_threads(), "rules": args.rules, "ragged": args.ragged,
            "shared_prefix": args.shared_prefix}
    rows: list[dict[str, Any]] = []
    ours = random_engine(args.model, args.device, dtype, tok)
    hf = hf_model(args.model, args.device, dtype)
    for b in args.batch:
        for p in args.prompt:
            shape = (f"{args.model} B{b} P{p} N{args.new}" + (" ragged" if args.ragged else "")
                     + (f" shared{args.shared_prefix}" if args.shared_prefix else ""))
            tokens = sum(prompt_lengths(b, p, args.ragged))  # the prompts' tokens, padding not counted
            kw = dict(repeats=args.repeats, rules=args.rules, ragged=args.ragged, shared=args.shared_prefix)
            res = [measure_ours(ours, b, p, args.new, args.device, **kw), measure_hf(hf, b, p, args.new, args.device, **kw)]
            for m in res:
                rows.append({"bench": "generate", "provider": m.provider, "shape": shape, "batch": b, "prompt": p, "prompt_tokens": tokens,
                             "new_tokens": args.new, "rules": args.rules, "metric": "decode_tokens_per_s", "unit": "tokens/s",
                             "p50": m.decode_tokens_per_s, "ttft_s": m.ttft_s, "prefill_tokens_per_s": tokens / m.ttft_s,
                             "device": args.device, "dtype": str(dtype), "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
            ratio = res[0].decode_tokens_per_s / res[1].decode_tokens_per_s
            pre = res[1].ttft_s / res[0].ttft_s
            rows.append({"bench": "generate", "provider": "ratio", "shape": shape, "rules": args.rules, "metric": "ours_over_transformers",
                         "decode": ratio, "prefill": pre, "unit": "x"})
            print(f"{shape:26s} decode ours {res[0].decode_tokens_per_s:8.1f} tok/s  transformers {res[1].decode_tokens_per_s:8.1f}  "
                  f"({ratio:.2f}x); prefill {tokens / res[0].ttft_s:8.0f} vs {tokens / res[1].ttft_s:8.0f} tok/s ({pre:.2f}x)", flush=True)
    del ours, hf
    free(args.device)
    path = write_results(f"generate-{args.device}", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
