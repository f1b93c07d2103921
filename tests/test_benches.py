"""The benchmark harnesses run end to end on CPU with tiny shapes and write well-formed JSON (a
test of the harnesses themselves; speed is never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str, tmp: Path) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "benches" / script), *args, "--out", str(tmp)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (path,) = [p for p in tmp.glob("*.json")]
    data = json.loads(path.read_text())
    assert data["meta"]["git_sha"] and data["meta"]["machine"]["cores"]
    assert data["rows"]
    return data


def test_bench_e2e_smoke(tmp_path):
    pytest.importorskip("transformers")
    data = _run("bench_e2e.py", "--smoke", tmp=tmp_path)
    assert data["meta"]["correctness_gate"]["passed"]
    providers = {r["provider"] for r in data["rows"]}
    assert {"codellama-fast", "transformers-eager", "ratio"} <= providers
    # batch 1: the engine's decode step, and the other one measured beside it
    steps = {(r["provider"], r["decode_step"]) for r in data["rows"] if r.get("batch") == 1 and r["provider"].startswith("codellama-fast")
             and r["metric"] == "decode_tokens_per_s" and not r.get("pdl")}
    assert len(steps) == 2 and {s for _, s in steps} == {"plain", "fused"}, steps
    # batch 1, first prompt length: the fused step with programmatic dependent launch
    (pdl,) = [r for r in data["rows"] if r["provider"] == "codellama-fast-fused-pdl"]
    assert pdl["decode_step"] == "fused" and pdl["pdl"] is True and pdl["p50"] > 0
    # batch 1: a call at a new prompt length, on the kept decode state and on a rebuilt one
    fresh = [r for r in data["rows"] if r["provider"] == "codellama-fast-new-length"]
    assert fresh and all(r["ttft_kept_ms"] > 0 and r["ttft_rebuilt_ms"] > 0 for r in fresh)
    # calls alternating between batch 1 and 2: each size's state built once, kept for its second call
    alternating = sorted((r["batch"], r["other_batch"], r["states_built"]) for r in data["rows"]
                         if r["provider"] == "codellama-fast-alternating")
    assert alternating == [(1, 2, 2), (2, 1, 2)], alternating
    assert all(r["ttft_first_ms"] > 0 and r["ttft_after_other_batch_ms"] > 0 for r in data["rows"]
               if r["provider"] == "codellama-fast-alternating")
    # batch 1: where one replayed decode step's time goes
    (prof,) = [r for r in data["rows"] if r["provider"] == "codellama-fast-step-profile"]
    assert "error" not in prof and prof["batch"] == 1 and prof["steps"] == 8, prof
    assert prof["top"] and prof["busy_ms_per_step"] * (1 + 1e-9) >= sum(k["ms_per_step"] for k in prof["top"]) > 0
    assert list(tmp_path.glob("*.png"))


def test_bench_kernels_smoke(tmp_path):
    pytest.importorskip("triton")
    data = _run("bench_kernels.py", "--smoke", tmp=tmp_path)
    benches = {"prefill_attn", "shared_decode_step", "decode_attn", "projection", "decode_layer", "rmsnorm", "swiglu", "rope_cache"}
    assert {r["bench"] for r in data["rows"]} >= benches
    shared = {r["provider"] for r in data["rows"] if r["bench"] == "shared_decode_step"}
    assert shared == {"triton_every_row", "triton_prompt_once"}
    layer = {r["provider"] for r in data["rows"] if r["bench"] == "decode_layer"}
    assert layer == {"triton_fused", "triton_fused_pdl"}
    decode = {r["provider"] for r in data["rows"] if r["bench"] == "decode_attn"}
    assert decode >= {"triton", "sdpa", "triton_quarter_splits", "triton_one_wave_splits"}


def test_bench_generate_tiny(tmp_path):
    pytest.importorskip("transformers")
    data = _run("bench_generate.py", "--model", "tiny", "--batch", "1", "--prompt", "8", "--new", "4",
                "--rules", '{"no_repeat_ngram_size": 2}', tmp=tmp_path)
    assert any(r["provider"] == "ratio" for r in data["rows"])
    assert data["meta"]["rules"] == {"no_repeat_ngram_size": 2}


def test_bench_generate_samples_of_each_prompt(tmp_path):
    """Rules that sample several sequences per prompt reach both sides: they override the harness's
    greedy default for transformers (which refuses num_return_sequences > 1 when greedy)."""
    pytest.importorskip("transformers")
    rules = '{"do_sample": true, "num_return_sequences": 3, "temperature": 1.0}'
    data = _run("bench_generate.py", "--model", "tiny", "--batch", "2", "--prompt", "8", "--new", "4", "--repeats", "1",
                "--rules", rules, tmp=tmp_path)
    assert data["meta"]["rules"]["num_return_sequences"] == 3
    measured = {r["provider"]: r for r in data["rows"] if r["provider"] != "ratio"}
    assert set(measured) == {"codellama-fast", "transformers-eager"}
    assert all(r["p50"] > 0 for r in measured.values())


def test_bench_generate_prompts_with_a_shared_prefix(tmp_path):
    """--shared-prefix: the prompts' first N tokens alike, the rest their own, on both sides."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "benches"))
    from llm_bench import prompts

    rows = prompts(3, 20, 512, shared=8, ragged=True)
    assert all(r[:8] == rows[0][:8] for r in rows) and len({tuple(r[8:12]) for r in rows}) == 3
    data = _run("bench_generate.py", "--model", "tiny", "--batch", "3", "--prompt", "20", "--new", "4", "--repeats", "1",
                "--ragged", "--shared-prefix", "8", tmp=tmp_path)
    assert data["meta"]["shared_prefix"] == 8
    assert {r["shape"] for r in data["rows"]} == {"tiny B3 P20 N4 ragged shared8"}


def test_bench_generate_ragged_batch(tmp_path):
    """Prompts of different lengths: both sides run the left-padded batch, and the prefill rate counts
    the prompts' own tokens (12 + 10 + 8), not the padding."""
    pytest.importorskip("transformers")
    data = _run("bench_generate.py", "--model", "tiny", "--batch", "3", "--prompt", "12", "--new", "4", "--repeats", "1", "--ragged",
                tmp=tmp_path)
    assert data["meta"]["ragged"] is True
    measured = [r for r in data["rows"] if r["provider"] != "ratio"]
    assert {r["provider"] for r in measured} == {"codellama-fast", "transformers-eager"}
    for r in measured:
        assert r["prompt_tokens"] == 30 and r["shape"].endswith("ragged")
        assert abs(r["prefill_tokens_per_s"] * r["ttft_s"] - 30) < 1e-6


def test_bench_prompt_cache_tiny(tmp_path):
    """Turn 2 timed three ways for each prompt length: with the kept cache (turn 1's prompt and all
    but its last generated token reused), with the whole prompt prefilled, and transformers."""
    pytest.importorskip("transformers")
    data = _run("bench_prompt_cache.py", "--model", "tiny", "--prompt", "40", "60", "--answer", "5", "--message", "4",
                "--repeats", "1", tmp=tmp_path)
    timed = [r for r in data["rows"] if r["provider"] != "ratio"]
    assert sorted((r["provider"], r["shape"]) for r in timed) == sorted(
        (p, f"tiny P{n} A5 M4") for p in ("codellama-fast-kept", "codellama-fast-whole", "transformers-eager") for n in (40, 60))
    for r in timed:
        assert r["prompt_tokens"] == int(r["shape"].split()[1][1:]) + 9 and r["p50"] > 0
        assert r["reused"] == ((r["prompt_tokens"] - 9 + 4) if r["provider"] == "codellama-fast-kept" else 0)
    assert len([r for r in data["rows"] if r["provider"] == "ratio"]) == 4


@pytest.mark.parametrize("flag, value, mark, reused", [("samples", 3, "N3", 44), ("beams", 3, "K3", 44), ("lookup", 3, "G3", 44),
                                                        ("others", 2, "O2", 44), ("first-samples", 3, "first-N3", 40),
                                                        ("first-beams", 3, "first-K3", 44)])
def test_bench_prompt_cache_kinds_of_turn(tmp_path, flag, value, mark, reused):
    """Turn 2 sampled 3 times, as a beam search of 3 beams, with prompt lookup, or after two other
    conversations' turns: ours takes or copies the kept slots (the same first tokens with the whole
    prompt prefilled, checked by the harness), transformers runs the same kind of turn. After a turn
    1 of samples, turn 2 reuses turn 1's prompt (the sample it continues is prefilled); after beams,
    the best beam's tokens too, all but its last."""
    pytest.importorskip("transformers")
    data = _run("bench_prompt_cache.py", "--model", "tiny", "--prompt", "40", "--answer", "5", "--message", "4",
                "--repeats", "1", f"--{flag}", str(value), tmp=tmp_path)
    assert data["meta"][flag.replace("-", "_")] == value
    timed = {r["provider"]: r for r in data["rows"] if r["provider"] != "ratio"}
    assert sorted(timed) == ["codellama-fast-kept", "codellama-fast-whole", "transformers-eager"]
    assert all(r["shape"] == f"tiny P40 A5 M4 {mark}" for r in timed.values())
    assert timed["codellama-fast-kept"]["reused"] == reused and timed["codellama-fast-whole"]["reused"] == 0


def test_bench_memory_tiny(tmp_path):
    """Both sides' conversations, each in a process of its own: the resident memory after each one
    and at the peak, over the loaded model's, and turn 2's times to first token."""
    pytest.importorskip("transformers")
    data = _run("bench_memory.py", "--model", "tiny", "--prompt", "40", "--answer", "4", "--message", "4", "--samples", "3",
                "--pairs", "2", tmp=tmp_path)
    assert data["meta"]["samples"] == 3 and data["meta"]["pairs"] == 2
    rows = {r["provider"]: r for r in data["rows"]}
    assert sorted(rows) == ["codellama-fast", "transformers-eager"]
    for r in rows.values():
        assert r["shape"] == "tiny P40 A4 M4 N3 x2" and len(r["after_each_mib"]) == 2 and r["ttft_p50_ms"] > 0
        assert r["loaded_mib"] > 0 and r["held_after_mib_max"] == max(r["after_each_mib"]) - r["loaded_mib"]


@pytest.mark.parametrize("stop", [[], ["@@never@@", "§§"]])
def test_bench_beams_tiny(tmp_path, stop):
    """The harness runs both sides on the same weights (and stop strings): their beams agree on a
    tiny model."""
    pytest.importorskip("transformers")
    data = _run("bench_beams.py", "--model", "tiny", "--beams", "2", "--batch", "2", "--prompt", "8", "--new", "6", "--repeats", "1",
                *(["--stop", *stop] if stop else []), tmp=tmp_path)
    (ratio,) = [r for r in data["rows"] if r["provider"] == "ratio"]
    assert ratio["same_tokens"] is True and data["meta"]["stop"] == stop


def test_bench_tokenizer_small(tmp_path):
    data = _run("bench_tokenizer.py", "--corpus-mb", "0.2", "--repeats", "1", "--max-doc-bytes", "100000", "--memory-calls", "2000", tmp=tmp_path)
    exact = [r for r in data["rows"] if r["bench"] == "exactness"]
    assert exact and all(r["p50"] == 0 for r in exact)
    assert {r["provider"] for r in data["rows"]} >= {"codellama-fast", "sentencepiece", "tokenizers", "transformers"}


def test_bench_lookup_small(tmp_path):
    pytest.importorskip("transformers")
    data = _run("bench_lookup.py", "--new", "24", "--repeats", "1", "--lookup", "4", "--assistant", "self", tmp=tmp_path)
    runs = {(r["provider"], r["method"], r["prompt_lookup_num_tokens"]) for r in data["rows"]}
    assert runs == {(p, m, k) for p in ("codellama-fast", "transformers") for m, k in (("plain", None), ("prompt_lookup", 4), ("assistant", None))}
    assert data["meta"]["assistant"] == "stories260K"


def test_bench_cpu_prefill_attention_tiny(tmp_path):
    """Both providers for each shape and dtype, the padded batch's rate counting its rows' own tokens
    (16 + 14 + 11), and the two attentions the same within rounding."""
    data = _run("bench_cpu_prefill_attention.py", "--layouts", "tiny", "--prompt", "16", "--batch", "1", "3",
                "--dtype", "float32", "float16", "--repeats", "1", tmp=tmp_path)
    measured = [r for r in data["rows"] if r["provider"] != "ratio"]
    assert {(r["provider"], r["batch"], r["dtype"]) for r in measured} == {
        (p, b, d) for p in ("codellama-fast", "sdpa") for b in (1, 3) for d in ("float32", "float16")}
    for r in measured:
        assert r["prompt_tokens"] == (16 if r["batch"] == 1 else 41) and r["padded"] == (r["batch"] > 1)
        assert r["max_abs_diff_from_sdpa"] < (1e-5 if r["dtype"] == "float32" else 1e-2)
    assert len([r for r in data["rows"] if r["provider"] == "ratio"]) == 4


def test_bench_small_matmul_tiny(tmp_path):
    data = _run("bench_small_matmul.py", "--shapes", "tiny", "--rows", "1", "9", "--dtype", "float32", "bfloat16",
                "--budget-mb", "1", tmp=tmp_path)
    ours = [r for r in data["rows"] if r["provider"] == "codellama-fast"]
    assert {(r["rows"], r["dtype"], r["small_path"]) for r in ours} == {
        (1, "float32", True), (9, "float32", False), (1, "bfloat16", False), (9, "bfloat16", False)}
    # 2 shapes × 2 row counts × 2 dtypes
    assert len([r for r in data["rows"] if r["provider"] == "ratio"]) == len(ours) == 2 * 2 * 2
    assert len([r for r in data["rows"] if r["provider"] == "weight_first"]) == len(ours)
    assert all(r["p50"] > 0 for r in data["rows"])


def test_bench_cpu_attention_samples_of_a_prompt(tmp_path):
    """--samples 2: runs of two rows sharing their prompt slots; the engine timed reading a run's
    prompt once and reading every row, both the same attention as the per-row engine's."""
    pytest.importorskip("torch")
    data = _run("bench_cpu_attention.py", "--layouts", "tiny", "--keys", "48", "--batch", "4", "--samples", "2",
                "--dtype", "float32", "bfloat16", "--budget-mb", "1", tmp=tmp_path)
    assert data["meta"]["samples"] == 2
    timed = [r for r in data["rows"] if r["provider"] != "ratio"]
    assert {"codellama-fast", "codellama-fast-per-row", "repeat_kv"} <= {r["provider"] for r in timed}
    assert all(r["shape"].endswith(" runs2") for r in timed)
    for r in timed:
        assert r["max_abs_diff_from_engine"] <= {"float32": 1e-5, "bfloat16": 2e-2}[r["dtype"]], r


def test_bench_cpu_attention_tiny(tmp_path):
    torch = pytest.importorskip("torch")
    dtypes = ("float32", "bfloat16", "float16")
    data = _run("bench_cpu_attention.py", "--layouts", "tiny", "--keys", "40", "--batch", "1", "3", "--queries", "1", "3",
                "--dtype", *dtypes, "--budget-mb", "1", tmp=tmp_path)
    gqa = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
    providers = {"codellama-fast", "repeat_kv"} | ({"sdpa_enable_gqa"} if gqa else set())
    timed = [r for r in data["rows"] if r["provider"] != "ratio"]
    # 2 batches × 2 query counts × 3 dtypes, each provider
    assert sorted((r["provider"], r["batch"], r["queries"], r["dtype"]) for r in timed) == sorted(
        (p, b, t, dt) for p in providers for b in (1, 3) for t in (1, 3) for dt in dtypes)
    assert all(r["shape"].startswith(f"tiny B{r['batch']} T{r['queries']} L40 ") for r in timed)
    assert len([r for r in data["rows"] if r["provider"] == "ratio"]) == 12 * (len(providers) - 1)
    assert all(r["p50"] > 0 for r in data["rows"])
    # the three ways compute the same attention (fp32 rounding; bf16 / fp16 round the outputs, ~3 digits)
    for r in timed:
        assert r["max_abs_diff_from_engine"] <= {"float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}[r["dtype"]], r


def test_bench_startup_small(tmp_path):
    """Fresh processes of each side: the whole process, its import, load and generation, and the
    same tokens from both (the bundled demo model)."""
    pytest.importorskip("transformers")
    data = _run("bench_startup.py", "--repeats", "1", "--tokens", "4", tmp=tmp_path)
    assert data["meta"]["same_tokens"] is True
    phases = {(r["provider"], r["metric"]) for r in data["rows"]}
    assert phases == {(p, m) for p in ("codellama-fast", "transformers") for m in ("process_s", "import_s", "load_s", "generate_s")}
    assert all(r["p50"] > 0 and len(r["samples"]) == 1 for r in data["rows"])
