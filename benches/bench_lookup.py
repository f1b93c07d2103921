"""Guess-and-check decoding: greedy generation of a trained model with and without
``prompt_lookup_num_tokens`` (and, with ``--assistant``, an ``assistant_model``), beside
transformers' ``generate`` with the same options, on the same prompts, in the same run. The
outputs must be identical (checked); the speed-up comes from the guesses the model keeps, so it
needs a trained model on text that repeats its context, or a good draft model.

    python benches/bench_lookup.py [--model FOLDER] [--device cpu] [--lookup 4 8] [--new 200] [--assistant FOLDER|self]

Default: the bundled demo model (stories260K) on stories that repeat names and phrases.
``--assistant self`` lets the model assist itself (every guess kept): it measures what the
mechanism costs and saves, not the speed-up of a real smaller draft.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import git_sha, machine, now, percentiles, versions, write_results  # noqa: E402

PROMPTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside. One day, Lily",
    "Tom had a red ball. Tom liked to throw the red ball to his dog. The dog liked the red ball too. One day, Tom",
]


def _timed(fn: Any, repeats: int) -> tuple[list[float], Any]:
    fn()  # warm-up
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model folder (default: the bundled demo model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lookup", type=int, nargs="+", default=[4, 8], help="prompt_lookup_num_tokens values")
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--assistant", default=None, help="a draft model folder for assisted decoding, or 'self' (the model itself)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from transformers import LlamaForCausalLM

    from codellama_fast import Engine
    from codellama_fast.data import DEMO_MODEL_DIR

    folder = Path(args.model) if args.model else DEMO_MODEL_DIR
    engine = Engine.from_pretrained(folder, device=args.device)
    engine.reuse_prompt_cache = False  # every repeat prefills its whole prompt (not the last repeat's kept cache), as transformers does
    hf = LlamaForCausalLM.from_pretrained(str(folder), dtype=engine.dtype).to(args.device).eval()
    draft_folder = None if args.assistant is None else folder if args.assistant == "self" else Path(args.assistant)
    if draft_folder is not None:
        draft = Engine.from_pretrained(draft_folder, device=args.device)
        hf_draft = LlamaForCausalLM.from_pretrained(str(draft_folder), dtype=draft.dtype).to(args.device).eval()
    meta = {"bench": "lookup", "machine": machine(), "versions": versions("torch", "transformers", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "model": str(folder.name), "device": args.device, "dtype": str(engine.dtype),
            "assistant": None if draft_folder is None else str(draft_folder.name)}
    rows: list[dict[str, Any]] = []
    for k, prompt in enumerate(PROMPTS):
        ids = engine.tokenizer.encode(prompt)
        x = torch.tensor([ids], device=args.device)
        end = engine.tokenizer.eos_token_id

        def ours(lookup: int | str | None) -> list[int]:
            guess = {"assistant_model": draft} if lookup == "assistant" else {"prompt_lookup_num_tokens": lookup}
            return engine.generate(input_ids=[ids], max_new_tokens=args.new, eos_token_id=end, **guess).token_ids[0]

        def theirs(lookup: int | str | None) -> list[int]:
            guess = {"assistant_model": hf_draft} if lookup == "assistant" else {"prompt_lookup_num_tokens": lookup}
            with torch.inference_mode():
                out = hf.generate(x, max_new_tokens=args.new, do_sample=False, eos_token_id=end, pad_token_id=end,
                                  **guess)[0, len(ids):].tolist()
            out = out[: args.new]  # its lookup can run a step past max_new_tokens
            return out[: out.index(end)] if end in out else out

        base_times, base = _timed(lambda: ours(None), args.repeats)
        results = {("codellama-fast", None): (base_times, base)}
        for lookup in [*args.lookup, *(["assistant"] if draft_folder is not None else [])]:
            results[("codellama-fast", lookup)] = _timed(lambda: ours(lookup), args.repeats)
            results[("transformers", lookup)] = _timed(lambda: theirs(lookup), args.repeats)
        results[("transformers", None)] = _timed(lambda: theirs(None), args.repeats)
        for (provider, lookup), (times, tokens) in results.items():
            if tokens != base:
                raise SystemExit(f"prompt {k}: {provider} with lookup={lookup} generated other tokens than plain greedy decoding")
            stats = percentiles(times)
            method = "assistant" if lookup == "assistant" else "plain" if lookup is None else "prompt_lookup"
            rows.append({"bench": "lookup", "provider": provider, "method": method,
                         "prompt_lookup_num_tokens": lookup if method == "prompt_lookup" else None, "prompt": k,
                         "new_tokens": len(tokens), "metric": "tokens_per_s", "unit": "tokens/s", "p50": len(tokens) / stats["p50"],
                         "seconds": stats, "device": args.device, "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
        plain = len(base) / percentiles(base_times)["p50"]
        line = "  ".join(f"{p}[{lk}] {r['p50'] / plain:.2f}x" for (p, lk), r in zip(results, rows[-len(results):]))
        print(f"prompt {k} ({len(base)} tokens, ours plain {plain:.0f} tok/s): {line}", flush=True)
    path = write_results(f"lookup-{args.device}", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
