"""The process's resident memory across a server's chat turns on the CPU, ours against
transformers, each side in a process of its own: ``--pairs`` conversations one after another, each
a turn 1 of a ``--prompt``-token prompt answered with ``--answer`` greedy tokens, then a turn 2
(that dialog and ``--message`` new tokens) sampled ``--samples`` times (``num_return_sequences``)
for one token. Measured: the resident memory after each conversation and at its peak, over the
memory the loaded model alone holds, and turn 2's time to its first tokens (ours reuses turn 1's
keys and values; transformers prefills every row). Random weights in the shapes of ``--model``.

    python benches/bench_memory.py [--model 110M] [--prompt 2048] [--samples 8] [--pairs 8] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import git_sha, machine, now, percentiles, versions, write_results  # noqa: E402
from llm_bench import SHAPES, hf_model, prompts, random_engine  # noqa: E402

MIB = 2**20


def resident_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_mib() -> float:
    """This process's largest resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side's conversations, in this process: resident memory after each, the peak, and turn
    2's times to first token (seconds)."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if side == "ours":
        from codellama_fast import CodeLlamaTokenizerFast

        engine = random_engine(args.model, "cpu", dtype, CodeLlamaTokenizerFast.from_pretrained())
        engine.reuse_prompt_cache = True  # a user's default (random_engine turns it off for whole-prompt timings)
        vocab = engine.model.config.vocab_size
    else:
        model = hf_model(args.model, "cpu", dtype)
        vocab = model.config.vocab_size
    loaded = resident_mib()
    after, ttft = [], []
    for pair in range(args.pairs):
        first = prompts(1, args.prompt, vocab, seed=pair)[0]
        message = prompts(1, args.message + 1, vocab, seed=1000 + pair)[0][1:]
        if side == "ours":
            reply = engine.generate(input_ids=[first], max_new_tokens=args.answer, stop_at_eos=False).token_ids[0]
            got = engine.generate(input_ids=[first + reply + message], max_new_tokens=1, stop_at_eos=False,
                                  num_return_sequences=args.samples, temperature=1.0, seed=pair)
            assert got.prompt_tokens_reused == len(first) + args.answer - 1, got.prompt_tokens_reused  # turn 1's dialog
            ttft.append(got.time_to_first_token_s)
        else:
            with torch.inference_mode():
                x = torch.tensor([first])
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.answer, do_sample=False,
                                     pad_token_id=0, eos_token_id=None)
                y = torch.tensor([out[0].tolist() + message])
                t0 = time.perf_counter()
                model.generate(y, attention_mask=torch.ones_like(y), max_new_tokens=1, do_sample=True,
                               num_return_sequences=args.samples, pad_token_id=0, eos_token_id=None)
                ttft.append(time.perf_counter() - t0)
        after.append(resident_mib())
    return {"loaded_mib": loaded, "after_mib": after, "peak_mib": peak_mib(), "ttft_s": ttft}


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="110M", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt", type=int, default=2048, help="turn 1's prompt tokens")
    ap.add_argument("--answer", type=int, default=32, help="turn 1's generated tokens")
    ap.add_argument("--message", type=int, default=32, help="turn 2's new tokens")
    ap.add_argument("--samples", type=int, default=8, help="turn 2's samples")
    ap.add_argument("--pairs", type=int, default=8, help="conversations, one after another")
    ap.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)  # a child process's side
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not Path("/proc/self/statm").exists():
        ap.error("resident memory is read from /proc/self/statm: this benchmark runs on Linux")
    if args.side:  # a child: its side's numbers as one JSON line
        print(json.dumps(run_side(args.side, args)))
        return None

    meta = {"bench": "memory", "machine": machine(), "versions": versions("torch", "transformers", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "model": args.model, "device": "cpu", "dtype": args.dtype,
            "prompt": args.prompt, "answer": args.answer, "message": args.message, "samples": args.samples, "pairs": args.pairs}
    shape = f"{args.model} P{args.prompt} A{args.answer} M{args.message} N{args.samples} x{args.pairs}"
    rows: list[dict[str, Any]] = []
    growth = {}
    for side, provider in (("ours", "codellama-fast"), ("transformers", "transformers-eager")):
        argv_child = [sys.executable, __file__, "--side", side, *(argv if argv is not None else sys.argv[1:])]
        res = subprocess.run(argv_child, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"the {side} side failed:\n{res.stderr[-3000:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        t = percentiles(got["ttft_s"])
        growth[provider] = max(got["after_mib"]) - got["loaded_mib"]
        rows.append({"bench": "memory", "provider": provider, "shape": shape, "metric": "resident_mib", "unit": "MiB",
                     "loaded_mib": got["loaded_mib"], "after_each_mib": got["after_mib"], "peak_mib": got["peak_mib"],
                     "held_after_mib_max": growth[provider], "peak_over_loaded_mib": got["peak_mib"] - got["loaded_mib"],
                     "ttft_p50_ms": t["p50"] * 1e3, "ttft_p20_ms": t["p20"] * 1e3, "ttft_p80_ms": t["p80"] * 1e3})
        print(f"{provider:20s} {shape}: resident after each conversation over the loaded model "
              f"{[round(a - got['loaded_mib']) for a in got['after_mib']]} MiB, peak +{got['peak_mib'] - got['loaded_mib']:.0f} MiB, "
              f"turn 2 first tokens p50 {t['p50'] * 1e3:.0f} ms", flush=True)
    path = write_results("memory-cpu", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
