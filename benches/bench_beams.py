"""Beam search: this engine vs transformers `generate(num_beams=k)` on the same random-weight model,
the same prompts and settings, in the same run. Wall time of the whole call (best of N), and
whether both return the same tokens. CPU default: the ~110M-parameter model in fp32.

    python benches/bench_beams.py [--model 110M] [--beams 2 4] [--batch 1 4] [--prompt 128] [--new 32] [--stop TEXT ...]

``--stop``: stop strings checked on every candidate by both (transformers' ``stop_strings`` with its
tokenizer of the bundled files); pick ones the random model never writes, so that both run to the
end and the time is the checks' cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import git_sha, machine, now, versions, write_results
from llm_bench import free, hf_model, prompts, random_engine, sync


def time_ours(engine, ids: list[list[int]], k: int, new: int, device: str, repeats: int,
              stop: list[str]) -> tuple[float, list[list[int]]]:
    kw = {"max_new_tokens": new, "num_beams": k, "num_return_sequences": k, "stop_at_eos": False, "stop": stop}
    engine.generate(input_ids=ids, **kw)  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = engine.generate(input_ids=ids, **kw)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out.token_ids


def time_hf(model, ids: list[list[int]], k: int, new: int, device: str, repeats: int, stop: list[str],
            tokenizer: Any) -> tuple[float, list[list[int]]]:
    x = torch.tensor(ids, device=device)
    kw = {"attention_mask": torch.ones_like(x), "max_new_tokens": new, "min_new_tokens": new, "num_beams": k,
          "num_return_sequences": k, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    if stop:
        kw.update(stop_strings=stop, tokenizer=tokenizer)
    with torch.inference_mode():
        model.generate(x, **kw)  # warm-up
        best, out = float("inf"), None
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(x, **kw)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return best, out[:, x.shape[1]:].tolist()


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="110M")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--beams", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--prompt", type=int, nargs="+", default=[128])
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each provider (shared machines are noisy)")
    ap.add_argument("--stop", nargs="+", default=[], help="stop strings both check on every candidate")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    dtype = torch.float16 if args.device == "cuda" else torch.float32

    from codellama_fast import CodeLlamaTokenizerFast

    tok = CodeLlamaTokenizerFast.from_pretrained()
    meta = {"bench": "beams", "machine": machine(), "versions": versions("torch", "transformers", "codellama-fast"),
            "git_sha": git_sha(), "timestamp": now(), "model": args.model, "device": args.device, "dtype": str(dtype),
            "torch_threads": torch.get_num_threads(), "stop": args.stop}
    rows: list[dict[str, Any]] = []
    ours = random_engine(args.model, args.device, dtype, tok)
    hf = hf_model(args.model, args.device, dtype)
    # the same weights on both sides, so that the returned beams can be compared
    hf.load_state_dict(_hf_state_from(ours))
    hf_tok = None
    if args.stop:
        from transformers import AutoTokenizer

        from codellama_fast.data import CODELLAMA_TOKENIZER_DIR

        hf_tok = AutoTokenizer.from_pretrained(str(CODELLAMA_TOKENIZER_DIR))
    for k in args.beams:
        for b in args.batch:
            for p in args.prompt:
                ids = prompts(b, p, ours.model.config.vocab_size)
                shape = f"{args.model} k{k} B{b} P{p} N{args.new}" + (f" stop{len(args.stop)}" if args.stop else "")
                t_ours, tok_ours = time_ours(ours, ids, k, args.new, args.device, args.repeats, args.stop)
                t_hf, tok_hf = time_hf(hf, ids, k, args.new, args.device, args.repeats, args.stop, hf_tok)
                same = tok_ours == tok_hf
                for provider, secs in (("codellama-fast", t_ours), ("transformers", t_hf)):
                    rows.append({"bench": "beams", "provider": provider, "shape": shape, "num_beams": k, "batch": b, "prompt": p,
                                 "new_tokens": args.new, "metric": "seconds", "unit": "s", "p50": secs, "device": args.device})
                rows.append({"bench": "beams", "provider": "ratio", "shape": shape, "metric": "transformers_over_ours",
                             "p50": t_hf / t_ours, "unit": "x", "same_tokens": same})
                print(f"{shape:28s} ours {t_ours * 1e3:8.1f} ms  transformers {t_hf * 1e3:8.1f} ms  ({t_hf / t_ours:.2f}x)  "
                      f"same tokens: {same}", flush=True)
    del ours, hf
    free(args.device)
    path = write_results(f"beams-{args.device}", meta, rows, args.out)
    print(f"wrote {path}")
    return path


def _hf_state_from(engine) -> dict[str, torch.Tensor]:
    """Our fused weights (wqkv, w13) split back into transformers' names."""
    m, cfg = engine.model, engine.model.config
    q, kv = cfg.q_size, cfg.kv_size
    state = {"model.embed_tokens.weight": m.embed.weight, "model.norm.weight": m.norm, "lm_head.weight": m.lm_head.weight}
    for i, layer in enumerate(m.layers):
        pre = f"model.layers.{i}."
        wqkv, w13 = layer.attn.wqkv.weight, layer.mlp.w13.weight
        state.update({
            pre + "self_attn.q_proj.weight": wqkv[:q], pre + "self_attn.k_proj.weight": wqkv[q : q + kv],
            pre + "self_attn.v_proj.weight": wqkv[q + kv :], pre + "self_attn.o_proj.weight": layer.attn.wo.weight,
            pre + "mlp.gate_proj.weight": w13[: cfg.intermediate_size], pre + "mlp.up_proj.weight": w13[cfg.intermediate_size :],
            pre + "mlp.down_proj.weight": layer.mlp.w2.weight,
            pre + "input_layernorm.weight": layer.attn_norm, pre + "post_attention_layernorm.weight": layer.mlp_norm,
        })
    return state


if __name__ == "__main__":
    main()
