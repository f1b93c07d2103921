"""Shared pieces of the generation benchmarks: Code Llama shapes, random-weight models (ours and
transformers'), and the measurement of prefill / decode speed for each provider on the same shapes.

Speed does not depend on weight values, so the large shapes use random weights; correctness is
checked separately (see `correctness_gate`)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    "7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008, vocab_size=32016),
    "13B": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40, intermediate_size=13824, vocab_size=32016),
    "34B": dict(hidden_size=8192, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8, intermediate_size=22016, vocab_size=32000),
    # ~110M parameters: the CPU benchmark model
    "110M": dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=12, intermediate_size=2048, vocab_size=32016),
    # tiny: harness checks
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, vocab_size=32016),
}
# One layer of 34B (its attention and MLP; the bundled tokenizer's 32016 pieces, 16 more than 34B's):
# a CPU run of a 34B step's per-layer work, where the whole model does not fit
SHAPES["34B-1L"] = dict(SHAPES["34B"], num_hidden_layers=1, vocab_size=32016)
# One layer of 7B (its 32 MHA heads and MLP, and the output head): a CPU decode step's per-layer work
SHAPES["7B-1L"] = dict(SHAPES["7B"], num_hidden_layers=1)
# Two layers of 7B: the last layer attends for the last position alone, so a prefill's whole-prompt
# attention runs in the first
SHAPES["7B-2L"] = dict(SHAPES["7B"], num_hidden_layers=2)
COMMON = dict(rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=16384)


def head_layout(name: str) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of a SHAPES entry."""
    shape = SHAPES[name]
    return shape["num_attention_heads"], shape["num_key_value_heads"], shape["hidden_size"] // shape["num_attention_heads"]


def our_config(name: str):
    from codellama_fast.engine import LlamaConfig

    return LlamaConfig(**SHAPES[name], **COMMON)


def weight_bytes(cfg, dtype: torch.dtype) -> int:
    """Bytes read per decode step: every matrix except the embedding table (only B rows of it)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size) * elem


def random_engine(name: str, device: str, dtype: torch.dtype, tokenizer, backend: str = "auto"):
    """Our engine with random weights in the exact shapes of `name`, built directly on the device."""
    from torch import nn

    from codellama_fast.engine import Engine, LlamaModel
    from codellama_fast.engine.ops import select_ops

    cfg = our_config(name)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    for mod in model.modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            t = torch.empty(p.shape, dtype=dtype, device=device)
            if p.ndim == 1:
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02, generator=gen)
            setattr(mod, pname, nn.Parameter(t, requires_grad=False))
    model.inv_freq = LlamaModel.rope_inv_freq(cfg, device)
    model.ops = select_ops(torch.device(device), backend)
    model.eval()
    engine = Engine(model, tokenizer)
    # the benchmarks time whole prompts: a prompt repeated would be prefilled from the kept cache
    # (bench_prompt_cache.py times that)
    engine.reuse_prompt_cache = False
    return engine


def hf_model(name: str, device: str, dtype: torch.dtype, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[name], **COMMON, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            try:
                model = LlamaForCausalLM._from_config(cfg, attn_implementation=attn)
            except TypeError:
                model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@dataclass
class Measurement:
    provider: str
    ttft_s: float
    decode_tokens_per_s: float
    new_tokens: int
    peak_memory_gib: float | None
    decode_step: str | None = None  # our engine: the captured decode step it kept ("plain"/"fused")


def prompt_lengths(batch: int, length: int, ragged: bool = False) -> list[int]:
    """Each prompt's length: `length`; `ragged`: row i shorter by i/(2*batch) of it, so a batch is left
    padded, as a batch of different prompts is (row 0 keeps `length`)."""
    return [length - i * length // (2 * batch) if ragged else length for i in range(batch)]


def prompts(batch: int, length: int, vocab: int, seed: int = 0, ragged: bool = False, shared: int = 0) -> list[list[int]]:
    """`batch` random prompts (BOS first) of ``prompt_lengths``; `shared`: their first `shared`
    tokens (BOS included) are the same (a system prompt, few-shot examples)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(vocab, 32000), (batch, length - 1), generator=g)
    ids[:, : max(shared - 1, 0)] = ids[0, : max(shared - 1, 0)]
    return [([1] + row)[:n] for row, n in zip(ids.tolist(), prompt_lengths(batch, length, ragged), strict=True)]


def left_padded(rows: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) [B, max length] for transformers: each row left padded with 0."""
    n = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (n - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def measure_ours(engine, batch: int, prompt_len: int, new_tokens: int, device: str, repeats: int | None = None,
                 rules: dict[str, Any] | None = None, ragged: bool = False, shared: int = 0) -> Measurement:
    """Greedy generation; `rules`: more generation arguments (transformers' names), given to both sides;
    `ragged`: prompts of different lengths, `shared`: their leading tokens alike (``prompts``)."""
    ids = prompts(batch, prompt_len, engine.model.config.vocab_size, ragged=ragged, shared=shared)
    # three runs where they are short: in the 2026-11-28 H200 run the time to first token of the
    # same 7B prefill differed by 7-18 ms between the two decode steps' measurements
    repeats = repeats or (1 if batch * prompt_len >= 16384 else 3)
    rules = rules or {}
    engine.release_cache()  # the decode states earlier cells kept go: the peak memory below is this cell's
    engine.generate(input_ids=ids, max_new_tokens=new_tokens, stop_at_eos=False, **rules)  # compile / capture
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # best of the repeats for each quantity, as for transformers below (min time, max rate)
    runs = [engine.generate(input_ids=ids, max_new_tokens=new_tokens, stop_at_eos=False, **rules) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return Measurement("codellama-fast", min(r.time_to_first_token_s for r in runs), max(r.decode_tokens_per_s for r in runs), new_tokens, peak,
                       getattr(engine, "decode_step_used", None))


def measure_new_length(engine, prompt_len: int, new_tokens: int) -> tuple[int, float, float]:
    """Time to first token of a batch-1 call at a prompt length the engine has not seen (3/4 of
    `prompt_len`, right after calls at `prompt_len`): with the decode state those calls left (what
    a chat's next turn waits), then with it released first (a new KV cache and decode-step capture
    before the prefill). Returns (length, kept s, rebuilt s)."""
    n = max(2, prompt_len * 3 // 4)
    ids = prompts(1, n, engine.model.config.vocab_size, seed=1)
    kept = engine.generate(input_ids=ids, max_new_tokens=new_tokens, stop_at_eos=False).time_to_first_token_s
    engine.release_cache()
    rebuilt = engine.generate(input_ids=ids, max_new_tokens=new_tokens, stop_at_eos=False).time_to_first_token_s
    return n, kept, rebuilt


def measure_alternating(engine, batches: tuple[int, int], prompt_len: int,
                        new_tokens: int) -> tuple[dict[int, tuple[float, float]], int]:
    """Time to first token of calls that alternate between two batch sizes (a greedy completion and
    a batch of them, say), from no decode state: per batch size, (its first call's, its call after
    a call of the other size), and the decode states the four calls built. The first call builds
    its state; the second finds it kept (engine.decode_states) where memory holds both, else
    builds it again."""
    engine.release_cache()
    calls = {b: prompts(b, prompt_len, engine.model.config.vocab_size, seed=2) for b in batches}
    seen: dict[int, list[float]] = {b: [] for b in batches}
    built = engine._graphs.builds
    for b in batches + batches:
        seen[b].append(engine.generate(input_ids=calls[b], max_new_tokens=new_tokens, stop_at_eos=False).time_to_first_token_s)
    built = engine._graphs.builds - built
    engine.release_cache()
    return {b: (first, again) for b, (first, again) in seen.items()}, built


def profile_decode_step(engine, batch: int, prompt_len: int, steps: int = 8, top: int = 12) -> dict[str, Any] | None:
    """Where one decode step's time goes: the captured step the engine kept for `batch` sequences
    (after a generate call of that batch), replayed `steps` times from slot `prompt_len` under
    torch.profiler. On CUDA: per kernel name, launches and milliseconds per step; the step's
    span (first kernel start to last kernel end, per step) against the sum of its kernels' times:
    the difference is the time between kernels (launch gaps, each kernel's ramp-up and drain).
    Off CUDA (the eagerly run step): per operator, self time per step. None when the engine kept
    no state of that batch."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    states = [s for s in engine._graphs._states if s.batch == batch]
    if not states:
        return None
    dec = states[0].decoder
    steps = max(1, min(steps, dec.capacity - prompt_len - 1))
    on_cuda = dec.tok.device.type == "cuda"
    dev = dec.tok.device
    with torch.inference_mode():  # the step's buffers are inference tensors
        dec.start(torch.zeros(batch, dtype=torch.long, device=dev), torch.full((batch,), prompt_len, dtype=torch.long, device=dev),
                  prompt_len)
    dec.replay()  # one step before the profile: nothing left to set up inside it
    sync(str(dev))
    with profile(activities=[ProfilerActivity.CUDA if on_cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            dec.replay()
        sync(str(dev))
    kind = DeviceType.CUDA if on_cuda else DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind]
    per_name: dict[str, list[float]] = {}
    for e in events:
        us = e.time_range.elapsed_us() if on_cuda else e.self_cpu_time_total
        per_name.setdefault(e.name, []).append(us)
    busy_ms = sum(sum(v) for v in per_name.values()) / 1e3 / steps
    out: dict[str, Any] = {"steps": steps, "device_side": "kernels" if on_cuda else "cpu operators",
                           "busy_ms_per_step": busy_ms}
    if on_cuda and events:
        span_ms = (max(e.time_range.end for e in events) - min(e.time_range.start for e in events)) / 1e3 / steps
        out.update(span_ms_per_step=span_ms, between_kernels_ms_per_step=span_ms - busy_ms,
                   kernels_per_step=len(events) / steps)
    ranked = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    out["top"] = [{"name": name[:120], "calls_per_step": len(v) / steps, "ms_per_step": sum(v) / 1e3 / steps} for name, v in ranked]
    return out


def measure_hf(model, batch: int, prompt_len: int, new_tokens: int, device: str, static: bool = False, repeats: int = 2,
               rules: dict[str, Any] | None = None, ragged: bool = False, shared: int = 0) -> Measurement:
    """transformers `generate` (greedy, with `rules`, `ragged` and `shared` as in measure_ours). TTFT = a
    1-token generate; the decode rate is taken from the difference between an N-token and a 1-token generate."""
    ids, mask = left_padded(prompts(batch, prompt_len, model.config.vocab_size, ragged=ragged, shared=shared), device)
    kw: dict[str, Any] = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    kw.update(rules or {})  # e.g. {"do_sample": true, "num_return_sequences": 4}: samples of each prompt
    rows = batch * int(kw.get("num_return_sequences", 1))
    if static:
        kw["cache_implementation"] = "static"

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
        sync(device)
        assert out.shape[1] == prompt_len + n
        return time.perf_counter() - t0

    run(new_tokens)  # warm-up (and compilation for the static cache)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t1 = min(run(1) for _ in range(repeats))
    tn = min(run(new_tokens) for _ in range(repeats))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    rate = rows * (new_tokens - 1) / max(tn - t1, 1e-9)
    return Measurement("transformers-static-compile" if static else "transformers-eager", t1, rate, new_tokens, peak)


def correctness_gate(device: str, tokenizer) -> dict[str, Any]:
    """Our logits (fp32 and fp16, on the device's default ops) vs transformers fp32 logits on a
    small random model, and greedy tokens for 32 steps."""
    import tempfile

    from codellama_fast.engine import Engine, load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32016, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=4096, rms_norm_eps=1e-5)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05)
    ids = torch.randint(3, 32000, (2, 300))
    with torch.no_grad():
        ref = hf.to(device)(ids.to(device)).logits.float()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        for dtype in (torch.float32, torch.float16):
            m = load_model(d, dtype=dtype, device=device)
            b, t = ids.shape
            cache = KVCache(m.config, b, t, dtype, torch.device(device))
            ctx = StepContext(torch.arange(t, device=device).expand(b, t), torch.arange(t, device=device), 0,
                              torch.zeros(b, dtype=torch.long, device=device), t)
            with torch.no_grad():
                got = m(ids.to(device), ctx, cache.layers, last_only=False)
            rel = ((got - ref).abs().max() / ref.abs().max()).item()
            out[f"max_rel_err_{str(dtype).split('.')[-1]}"] = rel
            out["ops"] = m.ops.name
        eng = Engine(load_model(d, dtype=torch.float32, device=device), tokenizer)
        prompt = ids[:1, :50].tolist()
        ours = eng.generate(input_ids=prompt, max_new_tokens=32, stop_at_eos=False).token_ids[0]
        with torch.no_grad():
            theirs = hf.generate(torch.tensor(prompt, device=device), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 50:].tolist()
        out["greedy_32_equal_fp32"] = ours == theirs
    out["passed"] = bool(out["max_rel_err_float32"] < 1e-3 and out["max_rel_err_float16"] < 3e-2 and out["greedy_32_equal_fp32"])
    return out
