"""End-to-end GPU speed: random weights in the exact Code Llama 7B/13B/34B shapes (whatever fits),
batch × prompt grid, 128 new tokens; time to first token, decode tokens/s, achieved GB/s and % of
the copy bandwidth measured in the same run, peak memory; at batch 1, the time to first token of a
call at a new prompt length (with the kept decode state, and rebuilt); at batch 1 and 8 and the first
prompt length, a profile of one replayed decode step (time per kernel, and between kernels), and the
time to first token of calls that alternate between the two batch sizes (first call, then after the
other size ran);
transformers `LlamaForCausalLM` (sdpa
eager, and static cache + compile where it works) on the same shapes in the same run. A correctness
gate runs first. Writes JSON and a PNG chart to benches/results/.

    python benches/bench_e2e.py                      # the full grid on a GPU
    python benches/bench_e2e.py --smoke              # tiny model on CPU: checks the harness itself
                                                     # (our engine on the Triton kernels in the interpreter)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined

import torch  # noqa: E402

from common import LiveRows, git_sha, machine, now, result_path, versions, write_results  # noqa: E402
from llm_bench import (  # noqa: E402
    correctness_gate, free, hf_model, measure_alternating, measure_hf, measure_new_length, measure_ours, our_config, profile_decode_step,
    random_engine, weight_bytes,
)


def copy_bandwidth(device: str) -> float:
    if not device.startswith("cuda"):
        return float("nan")
    import triton.testing

    a = torch.empty(1 << 30, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=10, rep=50)
    del a, b
    return 2 * (1 << 30) * 2 / (ms * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--models", nargs="+", default=["7B", "34B", "13B"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--hf-new", type=int, default=32, help="new tokens for the transformers runs (a rate; fewer saves time)")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-step-ab", action="store_true",
                    help="batches up to 16: do not also measure the decode step the engine did not use (plain or fused)")
    ap.add_argument("--no-pdl-ab", action="store_true",
                    help="batch 1, first prompt length: do not also measure the fused step with programmatic dependent launch")
    ap.add_argument("--no-profile", action="store_true",
                    help="batches 1 and 8 at the first prompt length: do not profile where a decode step's time goes")
    ap.add_argument("--hf-static", nargs="*", default=["7B:1:512", "7B:1:2048", "7B:8:2048"],
                    help="MODEL:BATCH:PROMPT cells that also run transformers static cache + compile (minutes each)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cells after this many seconds")
    ap.add_argument("--llama2-tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared/tokenizers/llama2/tokenizer.model"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = "cpu" if args.smoke else "cuda"
    repeats = None  # measure_ours' default: the best of three where runs are short
    if args.smoke:
        args.models, args.batch, args.prompt, args.new, args.hf_new = ["tiny"], [1, 2], [16], 8, 4
        args.hf_static = []
        repeats = 1  # the harness is under test, not the numbers
    elif not torch.cuda.is_available():
        raise SystemExit("bench_e2e needs a CUDA GPU (or --smoke)")
    dtype = torch.float32 if args.smoke else torch.float16

    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.errors import OutOfMemoryError

    tok32016 = CodeLlamaTokenizerFast.from_pretrained()
    meta: dict[str, Any] = {"bench": "e2e", "machine": machine(), "versions": versions("torch", "triton", "transformers", "codellama-fast"),
                            "git_sha": git_sha(), "timestamp": now(), "dtype": str(dtype), "new_tokens": args.new, "hf_new_tokens": args.hf_new}
    gate = correctness_gate(device, tok32016)
    meta["correctness_gate"] = gate
    print(f"correctness gate: {gate}", flush=True)
    if not gate["passed"]:
        print("correctness gate FAILED: speed numbers below are not trustworthy", flush=True)
    bw = copy_bandwidth(device)
    meta["copy_bandwidth_GBps"] = bw
    print(f"measured copy bandwidth: {bw:.0f} GB/s", flush=True)
    rows: list[dict[str, Any]] = []
    out_path = result_path("e2e" + ("-smoke" if args.smoke else ""), args.out)

    rows = LiveRows(meta, out_path)  # the file stays current after every cell

    def out_of_time() -> bool:
        return time.perf_counter() - t_start > args.budget_s

    def run_static(model_name: str) -> None:
        """transformers with a static cache + torch.compile (compiling takes minutes: listed cells only)."""
        for cell in args.hf_static:
            name, b, p = cell.split(":")
            if name != model_name:
                continue
            b, p = int(b), int(p)
            if time.perf_counter() - t_start > args.budget_s - 90:
                print(f"{cell}: transformers static cache + compile skipped (time budget)", flush=True)
                continue
            shape = f"{name} B{b} P{p}"
            try:
                hf = hf_model(name, device, dtype)
                m = measure_hf(hf, b, p, args.hf_new, device, static=True)
                rows.append({"bench": "e2e", "provider": m.provider, "model": name, "batch": b, "prompt": p, "shape": shape,
                             "metric": "decode_tokens_per_s", "unit": "tokens/s", "p50": m.decode_tokens_per_s, "ttft_ms": m.ttft_s * 1e3,
                             "peak_memory_gib": m.peak_memory_gib, "new_tokens": args.hf_new, "device": meta["machine"].get("gpu", "cpu"),
                             "dtype": str(dtype), "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
                print(f"{shape:16s} {m.provider}: ttft {m.ttft_s * 1e3:8.1f} ms  decode {m.decode_tokens_per_s:9.1f} tok/s", flush=True)
            except Exception as exc:  # a baseline that fails is recorded, not fatal
                print(f"{shape}: transformers static cache + compile failed: {str(exc)[:200]}", flush=True)
                rows.append({"bench": "e2e", "provider": "transformers-static-compile", "shape": shape, "error": str(exc)[:300]})
            hf = None
            free(device)

    def measure_variant(engine: Any, row: dict[str, Any], cell_bytes: float, label: str, decode_step: str,
                        pdl: bool = False) -> None:
        """The A/B of one engine choice, in the same run: the cell of `row` measured again with the
        decode step `decode_step` (and programmatic dependent launch where `pdl`), recorded as a row
        derived from the cell's own; `cell_bytes`: weights + KV cache read per step. A failure is
        recorded, not fatal (a launch this GPU or its driver cannot capture)."""
        b, shape = row["batch"], row["shape"]
        provider = "codellama-fast-fused-pdl" if pdl else f"codellama-fast-{decode_step}"
        chosen = engine.decode_step
        engine.decode_step = decode_step
        if pdl:
            engine.model.ops.pdl = True
        engine.release_cache()
        try:
            m = measure_ours(engine, b, row["prompt"], args.new, device, repeats)
        except Exception as exc:  # noqa: BLE001
            print(f"{shape}: {label} failed: {str(exc)[:200]}", flush=True)
            rows.append({"bench": "e2e", "provider": provider, "model": row["model"], "batch": b, "prompt": row["prompt"],
                         "shape": shape, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return
        finally:
            engine.decode_step = chosen
            if pdl:
                engine.model.ops.pdl = False
            engine.release_cache()
        gbps = cell_bytes * (m.decode_tokens_per_s / b) / 1e9
        rows.append(dict(row, provider=provider, p50=m.decode_tokens_per_s, ttft_ms=m.ttft_s * 1e3, achieved_GBps=gbps,
                         fraction_of_copy_bw=gbps / bw if bw == bw else None, peak_memory_gib=m.peak_memory_gib,
                         decode_step=decode_step, **({"pdl": True} if pdl else {})))
        print(f"{shape:16s} ours, {label}: decode {m.decode_tokens_per_s:9.1f} tok/s  {gbps:7.0f} GB/s "
              f"({100 * gbps / bw if bw == bw else float('nan'):.0f}% of copy bw)", flush=True)

    for name in args.models:
        cfg = our_config(name)
        wbytes = weight_bytes(cfg, dtype)
        if device == "cuda" and cfg.num_parameters() * 2 > 0.85 * torch.cuda.mem_get_info()[0]:
            print(f"{name}: weights do not fit this GPU; skipped", flush=True)
            continue
        if out_of_time():
            break
        tok = tok32016 if cfg.vocab_size == 32016 else CodeLlamaTokenizerFast.from_pretrained(args.llama2_tokenizer)
        engine = random_engine(name, device, dtype, tok, backend="triton" if args.smoke else "auto")
        if args.smoke:
            engine.use_cuda_graph = "eager"  # the graph-decode step, uncaptured, on the CPU
        cells = []
        for b in args.batch:
            for p in args.prompt:
                if out_of_time():
                    break
                shape = f"{name} B{b} P{p}"
                try:
                    m = measure_ours(engine, b, p, args.new, device, repeats)
                except (OutOfMemoryError, torch.cuda.OutOfMemoryError) as exc:
                    print(f"{shape}: skipped ({str(exc)[:120]})", flush=True)
                    engine.release_cache()
                    free(device)
                    continue
                ctx = p + args.new / 2
                kv = b * ctx * cfg.kv_bytes_per_token(torch.empty((), dtype=dtype).element_size())
                gbps = (wbytes + kv) * (m.decode_tokens_per_s / b) / 1e9
                row = {"bench": "e2e", "provider": m.provider, "model": name, "batch": b, "prompt": p, "shape": shape,
                       "metric": "decode_tokens_per_s", "unit": "tokens/s", "p50": m.decode_tokens_per_s,
                       "ttft_ms": m.ttft_s * 1e3, "achieved_GBps": gbps, "fraction_of_copy_bw": gbps / bw if bw == bw else None,
                       "peak_memory_gib": m.peak_memory_gib, "decode_step": m.decode_step,
                       "decode_attention": getattr(engine, "decode_attention_used", None), "new_tokens": args.new,
                       "device": meta["machine"].get("gpu", "cpu"),
                       "dtype": str(dtype), "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]}
                rows.append(row)
                cells.append((b, p))
                print(f"{shape:16s} ours: ttft {m.ttft_s * 1e3:8.1f} ms  decode {m.decode_tokens_per_s:9.1f} tok/s  "
                      f"{gbps:7.0f} GB/s ({100 * gbps / bw if bw == bw else float('nan'):.0f}% of copy bw)  peak {m.peak_memory_gib or 0:.1f} GiB  step {m.decode_step}", flush=True)
                if b in (1, 8) and p == args.prompt[0] and not args.no_profile and not out_of_time():
                    try:
                        prof = profile_decode_step(engine, b, p)
                    except Exception as exc:  # noqa: BLE001  (a profiler this machine lacks: recorded, the run goes on)
                        prof = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                    if prof is not None:
                        rows.append({"bench": "e2e", "provider": "codellama-fast-step-profile", "model": name, "batch": b, "prompt": p,
                                     "shape": shape, "metric": "decode_step_profile", "decode_step": m.decode_step, **prof,
                                     "device": meta["machine"].get("gpu", "cpu"), "dtype": str(dtype), "git_sha": meta["git_sha"],
                                     "timestamp": meta["timestamp"]})
                        head = ", ".join(f"{k['name'][:40]} {k['ms_per_step']:.3f}" for k in prof.get("top", [])[:4])
                        print(f"{shape:16s} ours, one decode step: {prof.get('span_ms_per_step', float('nan')):.3f} ms span, "
                              f"{prof.get('busy_ms_per_step', float('nan')):.3f} ms in {prof.get('device_side', '?')}; top: {head}"
                              + (f"  ({prof['error']})" if "error" in prof else ""), flush=True)
                if b == 1 and not out_of_time():
                    n, kept, rebuilt = measure_new_length(engine, p, args.new)
                    rows.append({"bench": "e2e", "provider": "codellama-fast-new-length", "model": name, "batch": 1, "prompt": n,
                                 "shape": f"{name} B1 P{n}", "metric": "ttft_ms", "unit": "ms", "ttft_kept_ms": kept * 1e3,
                                 "ttft_rebuilt_ms": rebuilt * 1e3, "after_prompt": p, "decode_step": engine.decode_step_used, "device": meta["machine"].get("gpu", "cpu"),
                                 "dtype": str(dtype), "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
                    print(f"{name} B1 P{n:<6d} ours, new prompt length: ttft {kept * 1e3:8.1f} ms with the kept decode state, "
                          f"{rebuilt * 1e3:8.1f} ms with it rebuilt", flush=True)
                if b <= 16 and m.decode_step in ("plain", "fused") and not args.no_step_ab and not out_of_time():
                    # the step the engine did not use: the A/B of the choice
                    other = "fused" if m.decode_step == "plain" else "plain"
                    measure_variant(engine, row, wbytes + kv, f"{other} step", other)
                pdl_ab = b == 1 and p == args.prompt[0] and not args.no_pdl_ab and hasattr(engine.model.ops, "pdl")
                if pdl_ab and not out_of_time():
                    # the fused step launched with programmatic dependent launch (sm_90+): the A/B
                    # of turning it on
                    measure_variant(engine, row, wbytes + kv, "fused step with programmatic dependent launch", "fused", pdl=True)
        pair = (args.batch[0], args.batch[1]) if len(args.batch) > 1 else None
        if pair is not None and cells and not out_of_time():
            # calls alternating between two batch sizes: each size's first call builds its decode
            # state; its call after the other size's finds it kept, or builds it again
            p = args.prompt[0]
            alternating, built = measure_alternating(engine, pair, p, args.new)
            for b, (first, again) in alternating.items():
                rows.append({"bench": "e2e", "provider": "codellama-fast-alternating", "model": name, "batch": b, "prompt": p,
                             "shape": f"{name} B{b} P{p}", "metric": "ttft_ms", "unit": "ms", "ttft_first_ms": first * 1e3,
                             "ttft_after_other_batch_ms": again * 1e3, "other_batch": pair[1] if b == pair[0] else pair[0],
                             "states_built": built,
                             "device": meta["machine"].get("gpu", "cpu"), "dtype": str(dtype), "git_sha": meta["git_sha"],
                             "timestamp": meta["timestamp"]})
                print(f"{name} B{b} P{p:<6d} ours, calls alternating between batch {pair[0]} and {pair[1]}: ttft {first * 1e3:8.1f} ms "
                      f"first, {again * 1e3:8.1f} ms after the other batch size ({built} decode states built for the 4 calls)", flush=True)
        launches = getattr(engine.model.ops, "decode_launches", None)
        if launches is not None and launches.report():
            # the decode attention's launch timings at each shape the states were built for
            rows.append({"bench": "e2e", "provider": "codellama-fast-decode-attention-launch", "model": name,
                         "metric": "decode_attention_launch_ms", "unit": "ms", "tuned": launches.report(),
                         "device": meta["machine"].get("gpu", "cpu"), "dtype": str(dtype), "git_sha": meta["git_sha"],
                         "timestamp": meta["timestamp"]})
            for entry in launches.report():
                times = "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in entry["ms_per_launch"].items())
                print(f"{name} decode attention, group {entry['group']}, {entry['batch_kv_heads']} seq x KV heads, "
                      f"{entry['kv_len_from']}-{entry['kv_len_below']} keys: {entry['picked']}  ({times})", flush=True)
        del engine
        free(device)
        if args.no_hf or out_of_time():
            continue
        try:
            hf = hf_model(name, device, dtype)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            print(f"{name}: transformers model did not fit ({str(exc)[:100]})", flush=True)
            free(device)
            continue
        for b, p in cells:
            if out_of_time():
                break
            for static in (False,):
                shape = f"{name} B{b} P{p}"
                try:
                    m = measure_hf(hf, b, p, args.hf_new, device, static=static)
                except Exception as exc:  # a baseline that fails is recorded, not fatal
                    print(f"{shape}: transformers{' static' if static else ''} failed: {str(exc)[:160]}", flush=True)
                    rows.append({"bench": "e2e", "provider": "transformers-static-compile" if static else "transformers-eager",
                                 "model": name, "batch": b, "prompt": p, "shape": shape, "error": str(exc)[:300]})
                    free(device)
                    continue
                rows.append({"bench": "e2e", "provider": m.provider, "model": name, "batch": b, "prompt": p, "shape": shape,
                             "metric": "decode_tokens_per_s", "unit": "tokens/s", "p50": m.decode_tokens_per_s, "ttft_ms": m.ttft_s * 1e3,
                             "peak_memory_gib": m.peak_memory_gib, "new_tokens": args.hf_new, "device": meta["machine"].get("gpu", "cpu"),
                             "dtype": str(dtype), "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
                print(f"{shape:16s} {m.provider}: ttft {m.ttft_s * 1e3:8.1f} ms  decode {m.decode_tokens_per_s:9.1f} tok/s", flush=True)
        del hf
        free(device)
        run_static(name)

    # ratios ours / baseline per cell
    by = {(r["shape"], r["provider"]): r for r in rows if "p50" in r}
    for (shape, prov), r in list(by.items()):
        if prov != "codellama-fast":
            continue
        for base in ("transformers-eager", "transformers-static-compile"):
            if (shape, base) in by:
                rows.append({"bench": "e2e", "provider": "ratio", "shape": shape, "metric": f"decode_over_{base}",
                             "unit": "x", "p50": r["p50"] / by[(shape, base)]["p50"],
                             "ttft_ratio": by[(shape, base)]["ttft_ms"] / r["ttft_ms"]})
    meta["elapsed_s"] = time.perf_counter() - t_start
    path = write_results("", meta, rows, path=out_path)
    try:
        from plot import plot_e2e

        png = plot_e2e(path)
        print(f"wrote {png}")
    except Exception as exc:  # the chart is optional; the JSON is the record
        print(f"no chart: {exc}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
