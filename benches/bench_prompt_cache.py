"""A chat's next turn: the time to first token of a prompt that begins with the last call's prompt
and output (the dialog so far) followed by a new message, with the engine's kept prompt cache
(only the new tokens are prefilled), without it (``reuse_prompt_cache = False``: the whole prompt),
and transformers' ``generate`` on the same ids, in the same run. Random weights in the shapes of
``--model``; turn 1 is a ``--prompt``-token prompt answered with ``--answer`` greedy tokens, turn 2
adds ``--message`` tokens. The first token of turn 2 must be the same with and without the kept
cache (checked). ``--samples N`` asks turn 2 for N samples (``num_return_sequences``, sampled with
one seed on both of our sides), which copy the kept slots; transformers samples as many.
``--beams K`` runs turn 2 as a beam search of K beams (its best beam returned), whose prompt
cache copies the kept slots; transformers searches as many. ``--lookup G`` runs turn 2 with prompt
lookup (``prompt_lookup_num_tokens=G``), on both sides. ``--others N``: N other conversations (prompts
of the same length) have their turn 1 between turn 1 and turn 2, as on a server taking turns
between users (one kept cache, ``max_kept_prompts=1``, would then be the last other's: turn 2
prefills whole, as without reuse). ``--first-samples N`` / ``--first-beams K``: turn 1 is sampled N
times (turn 2 continues its last sample) or a beam search of K beams (turn 2 continues the best);
their prompt is kept when they end (with the best beam's tokens, where the search ran to its last
step), so turn 2 prefills only that answer (past what is kept) and its message.

    python benches/bench_prompt_cache.py [--model 110M] [--prompt 512 2048] [--answer 32] [--message 32] [--dtype float32] [--samples 4 | --beams 4 | --lookup 3] [--others 2] [--first-samples 4 | --first-beams 4]
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
from llm_bench import SHAPES, free, hf_model, prompts, random_engine, sync  # noqa: E402


def turn_two_args(samples: int = 1, beams: int = 1, lookup: int = 0) -> dict[str, Any]:
    """Our generate arguments for turn 2: `samples` > 1 samples (seed 0), `beams` > 1 beams,
    `lookup` > 0 prompt lookup guessing that many tokens."""
    if lookup > 0:
        return {"prompt_lookup_num_tokens": lookup}
    if beams > 1:
        return {"num_beams": beams}
    return {"num_return_sequences": samples, "temperature": 1.0, "seed": 0} if samples > 1 else {}


def turn_one_reply(engine, first: list[int], answer: int, first_samples: int = 1, first_beams: int = 1) -> list[int]:
    """Turn 1's answer that turn 2 continues: greedy; with `first_samples` > 1 the last of that
    many samples (seed 0); with `first_beams` > 1 the best of that many beams."""
    got = engine.generate(input_ids=[first], max_new_tokens=answer, stop_at_eos=False, **turn_two_args(first_samples, first_beams))
    return got.token_ids[-1]


def next_turn(engine, first: list[int], answer: int, message: list[int], reuse: bool,
              samples: int = 1, beams: int = 1, lookup: int = 0,
              others: list[list[int]] | None = None, first_samples: int = 1,
              first_beams: int = 1) -> tuple[float, tuple[int, ...], int]:
    """(seconds to the first token of turn 2, its first token(s), prompt tokens reused) after a
    fresh turn 1 (``turn_one_reply``); `samples` > 1: turn 2 samples that many (seed 0); `beams` >
    1: its beam search; `lookup` > 0: its prompt lookup; `others`: other conversations' first
    prompts, answered between turn 1 and turn 2."""
    engine.release_cache()
    engine.reuse_prompt_cache = reuse
    reply = turn_one_reply(engine, first, answer, first_samples, first_beams)
    for other in others or ():
        engine.generate(input_ids=[other], max_new_tokens=answer, stop_at_eos=False)
    second = engine.generate(input_ids=[first + reply + message], max_new_tokens=1, stop_at_eos=False, **turn_two_args(samples, beams, lookup))
    return second.time_to_first_token_s, tuple(row[0] for row in second.token_ids), second.prompt_tokens_reused


def transformers_ttft(model, ids: list[int], device: str, samples: int = 1, beams: int = 1, lookup: int = 0) -> float:
    x = torch.tensor([ids], device=device)
    sampling = {"do_sample": True, "num_return_sequences": samples} if samples > 1 else {"do_sample": False}
    if beams > 1:
        sampling = {"do_sample": False, "num_beams": beams}
    if lookup > 0:
        sampling = {"do_sample": False, "prompt_lookup_num_tokens": lookup}
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=1, pad_token_id=0, eos_token_id=None, **sampling)
    sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="110M", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (GPU default)")
    ap.add_argument("--prompt", type=int, nargs="+", default=[512, 2048], help="turn 1's prompt tokens")
    ap.add_argument("--answer", type=int, default=32, help="turn 1's generated tokens")
    ap.add_argument("--message", type=int, default=32, help="turn 2's new tokens")
    ap.add_argument("--samples", type=int, default=1, help="turn 2's samples (num_return_sequences)")
    ap.add_argument("--beams", type=int, default=1, help="turn 2 as a beam search of this many beams")
    ap.add_argument("--lookup", type=int, default=0, help="turn 2 with prompt lookup guessing this many tokens")
    ap.add_argument("--others", type=int, default=0, help="other conversations answered between turn 1 and turn 2")
    ap.add_argument("--first-samples", type=int, default=1, help="turn 1's samples; turn 2 continues the last")
    ap.add_argument("--first-beams", type=int, default=1, help="turn 1 as a beam search of this many beams; turn 2 continues the best")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if (args.samples > 1) + (args.beams > 1) + (args.lookup > 0) > 1:
        ap.error("--samples, --beams and --lookup are kinds of turn 2: give one")
    if args.first_samples > 1 and args.first_beams > 1:
        ap.error("--first-samples and --first-beams are kinds of turn 1: give one")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device == "cuda" else torch.float32)

    from codellama_fast import CodeLlamaTokenizerFast

    tok = CodeLlamaTokenizerFast.from_pretrained()
    meta = {"bench": "prompt_cache", "machine": machine(), "versions": versions("torch", "transformers", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "model": args.model, "device": args.device, "dtype": str(dtype),
            "torch_threads": torch.get_num_threads(), "answer": args.answer, "message": args.message, "samples": args.samples,
            "beams": args.beams, "lookup": args.lookup, "others": args.others,
            "first_samples": args.first_samples, "first_beams": args.first_beams}
    ours = random_engine(args.model, args.device, dtype, tok)
    hf = hf_model(args.model, args.device, dtype)
    vocab = ours.model.config.vocab_size
    rows: list[dict[str, Any]] = []
    for p in args.prompt:
        first = prompts(1, p, vocab, seed=p)[0]
        message = prompts(1, args.message + 1, vocab, seed=p + 1)[0][1:]  # no BOS inside the dialog
        shape = (f"{args.model} P{p} A{args.answer} M{args.message}" + (f" N{args.samples}" if args.samples > 1 else "")
                 + (f" K{args.beams}" if args.beams > 1 else "") + (f" G{args.lookup}" if args.lookup > 0 else "")
                 + (f" O{args.others}" if args.others else "") + (f" first-N{args.first_samples}" if args.first_samples > 1 else "")
                 + (f" first-K{args.first_beams}" if args.first_beams > 1 else ""))
        kind = (args.samples, args.beams, args.lookup)
        others = [prompts(1, p, vocab, seed=p + 100 + i)[0] for i in range(args.others)]
        kept = [next_turn(ours, first, args.answer, message, True, *kind, others, args.first_samples, args.first_beams)
                for _ in range(args.repeats)]
        whole = [next_turn(ours, first, args.answer, message, False, *kind, others, args.first_samples, args.first_beams)
                 for _ in range(args.repeats)]
        assert {k[1] for k in kept} == {w[1] for w in whole}, "turn 2's first token differs with the kept cache"
        reply = turn_one_reply(ours, first, args.answer, args.first_samples, args.first_beams)
        transformers_ttft(hf, first + reply + message, args.device, *kind)  # warm-up
        theirs = [transformers_ttft(hf, first + reply + message, args.device, *kind) for _ in range(args.repeats)]
        times = {"codellama-fast-kept": [k[0] for k in kept], "codellama-fast-whole": [w[0] for w in whole],
                 "transformers-eager": theirs}
        total = p + args.answer + args.message
        for provider, samples in times.items():
            t = percentiles(samples)
            rows.append({"bench": "prompt_cache", "provider": provider, "metric": "ttft_ms", "unit": "ms", "shape": shape,
                         "prompt_tokens": total, "reused": kept[0][2] if provider.endswith("kept") else 0,
                         "p50": t["p50"] * 1e3, "p20": t["p20"] * 1e3, "p80": t["p80"] * 1e3,
                         "device": args.device, "dtype": str(dtype)})
        p50 = {name: percentiles(s)["p50"] for name, s in times.items()}
        for base in ("codellama-fast-whole", "transformers-eager"):
            rows.append({"bench": "prompt_cache", "provider": "ratio", "metric": f"kept_over_{base}", "unit": "x", "shape": shape,
                         "p50": p50[base] / p50["codellama-fast-kept"]})
        print(f"{shape:24s} turn 2 of {total} tokens ({kept[0][2]} reused): kept {p50['codellama-fast-kept'] * 1e3:8.1f} ms   "
              f"whole {p50['codellama-fast-whole'] * 1e3:8.1f} ms ({p50['codellama-fast-whole'] / p50['codellama-fast-kept']:.2f}x)   "
              f"transformers {p50['transformers-eager'] * 1e3:8.1f} ms ({p50['transformers-eager'] / p50['codellama-fast-kept']:.2f}x)",
              flush=True)
    del ours, hf
    free(args.device)
    path = write_results(f"prompt-cache-{args.device}", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
