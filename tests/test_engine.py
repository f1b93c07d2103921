"""Engine parity with transformers' LlamaForCausalLM (fp32, CPU) on tiny random checkpoints."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast import CheckpointError, CodeLlamaTokenizerFast, OutOfMemoryError, UnsupportedConfigError  # noqa: E402
from codellama_fast.engine import Engine, LlamaConfig, load_model  # noqa: E402
from codellama_fast.engine.cache import KVCache  # noqa: E402
from codellama_fast.engine.model import StepContext  # noqa: E402
from tests.engine_helpers import CONFIGS, fresh_seed, logprobs_close, make_hf_model, save  # noqa: E402
from tests.engine_helpers import fp32_engine as _fp32_engine  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    seed = fresh_seed()
    out = {}
    for name in CONFIGS:
        hf = make_hf_model(name, seed)
        out[name] = (hf, save(hf, tmp_path_factory.mktemp(name)))
    return out


def _forward_all(model, ids: torch.Tensor) -> torch.Tensor:
    b, t = ids.shape
    cache = KVCache(model.config, b, t, torch.float32, torch.device("cpu"))
    ctx = StepContext(torch.arange(t).expand(b, t), torch.arange(t), 0, torch.zeros(b, dtype=torch.long), t)
    with torch.no_grad():
        return model(ids, ctx, cache.layers, last_only=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_logits_match_transformers(checkpoints, name):
    hf, path = checkpoints[name]
    ours = load_model(path, dtype="float32", device="cpu")
    ids = torch.randint(0, hf.config.vocab_size, (2, 23))
    with torch.no_grad():
        ref = hf(ids).logits
    assert _rel(_forward_all(ours, ids), ref) < 1e-4


@pytest.mark.parametrize("name", ["gqa4", "odd"])
def test_incremental_decode_logits_match_full_forward(checkpoints, name):
    hf, path = checkpoints[name]
    ours = load_model(path, dtype="float32", device="cpu")
    t0, steps = 9, 6
    ids = torch.randint(0, hf.config.vocab_size, (1, t0 + steps))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    cache = KVCache(ours.config, 1, t0 + steps, torch.float32, torch.device("cpu"))
    kv_start = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        ctx = StepContext(torch.arange(t0)[None], torch.arange(t0), 0, kv_start, t0)
        got = [ours(ids[:, :t0], ctx, cache.layers)[0]]
        for s in range(t0, t0 + steps - 1):
            ctx = StepContext(torch.tensor([[s]]), torch.tensor([s]), s, kv_start, s + 1)
            got.append(ours(ids[:, s : s + 1], ctx, cache.layers)[0])
    assert _rel(torch.stack(got), ref[t0 - 1 : t0 + steps - 1]) < 1e-4




def _before(tokens, end):
    """`tokens` up to (without) the first `end`: a transformers output cut where generation stops."""
    return tokens[: tokens.index(end)] if end in tokens else tokens


@pytest.fixture(scope="module")
def tok():
    return CodeLlamaTokenizerFast.from_pretrained()


@pytest.mark.parametrize("factor", [2.0, 4.5])
def test_linear_rope_scaling_matches_transformers(tok, tmp_path, factor):
    """A fine-tune with transformers' linear RoPE scaling (position interpolation, e.g. a 16k
    Llama 2): logits and greedy tokens equal transformers' model with the same config, and the
    config survives a save."""
    hf = make_hf_model("gqa4", fresh_seed(), rope_scaling={"rope_type": "linear", "factor": factor})
    path = save(hf, tmp_path / "linear")
    ours = load_model(path, dtype="float32", device="cpu")
    assert ours.config.rope_scaling_factor == factor
    ids = torch.randint(0, hf.config.vocab_size, (2, 37))
    with torch.no_grad():
        ref = hf(ids).logits
    assert _rel(_forward_all(ours, ids), ref) < 1e-4
    unscaled = load_model(save(make_hf_model("gqa4", 0), tmp_path / "plain"), dtype="float32", device="cpu")
    assert not torch.allclose(unscaled.inv_freq, ours.inv_freq)  # the factor reached the rotary angles
    engine = _fp32_engine(path, tok)
    prompt = torch.tensor([tok.encode("def quicksort(items):\n    ")])
    want = hf.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)[0, prompt.shape[1]:].tolist()
    assert engine.generate(prompt[0].tolist(), max_new_tokens=40, stop_at_eos=False).token_ids[0] == want
    assert LlamaConfig.from_dict(ours.config.to_hf_dict()).rope_scaling_factor == factor


@pytest.mark.parametrize("prompt_len", [20, 45])
def test_dynamic_ntk_rope_scaling_matches_transformers(tok, tmp_path, prompt_len):
    """transformers' dynamic NTK scaling: past max_position_embeddings (32 here) the rotary base
    grows with the sequence. A prompt within it that generation carries past it, and one past it
    from the start: greedy tokens (and scores of the whole text) equal a fresh transformers model's
    (transformers keeps the largest length it has seen between calls, so each reference is new)."""
    from transformers import LlamaForCausalLM

    scaling = {"rope_type": "dynamic", "factor": 2.0}
    path = save(make_hf_model("gqa4", fresh_seed(), rope_scaling=scaling, max_position_embeddings=32), tmp_path / "dynamic")
    engine = _fp32_engine(path, tok)
    assert engine.model.config.rope_scaling_type == "dynamic"
    ids = [1] + torch.randint(3, 32000, (prompt_len - 1,)).tolist()

    def fresh():
        return LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()

    want = fresh().generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)[0, prompt_len:].tolist()
    assert engine.generate(input_ids=[ids], max_new_tokens=30, stop_at_eos=False).token_ids[0] == want
    engine.prefill_chunk_tokens = 7  # a prompt prefilled in chunks sees its whole length, as in one pass
    assert engine.generate(input_ids=[ids], max_new_tokens=30, stop_at_eos=False).token_ids[0] == want
    text = torch.tensor([ids + want])
    with torch.no_grad():
        ref = fresh()(text).logits.log_softmax(-1)[0, :-1].gather(-1, text[0, 1:, None])[:, 0].tolist()
    assert logprobs_close(engine.score(input_ids=text.tolist()).token_logprobs[0], ref, 1e-4)
    plain = _fp32_engine(save(make_hf_model("gqa4", 0, max_position_embeddings=32), tmp_path / "plain"), tok)
    assert not torch.equal(plain.model.rope_freqs(StepContext(torch.tensor([[60]]), None, 0, None, 61)),
                           engine.model.rope_freqs(StepContext(torch.tensor([[60]]), None, 0, None, 61)))


@pytest.mark.parametrize("name", ["mha", "gqa4"])
def test_greedy_64_steps_identical_to_transformers(checkpoints, tok, name):
    hf, path = checkpoints[name]
    engine = _fp32_engine(path, tok)
    prompt = "def quicksort(items):\n    "
    ids = torch.tensor([tok.encode(prompt)])
    want = hf.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    got = engine.generate(prompt, max_new_tokens=64, stop_at_eos=False)
    assert got.token_ids[0] == want
    assert got.finish_reasons == ["length"]
    assert got.text == tok._native.decode_keep_space(want, True)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_greedy_with_repetition_penalty_identical_to_transformers(checkpoints, tok, tmp_path, penalty):
    prompt = "def quicksort(items):\n    "
    ids = torch.tensor([tok.encode(prompt)])
    fixed = make_hf_model("gqa4", seed=3)  # a model whose greedy path the penalty is known to change
    for hf, path in (checkpoints["gqa4"], (fixed, save(fixed, tmp_path / "fixed"))):
        engine = _fp32_engine(path, tok)
        want = hf.generate(ids, max_new_tokens=40, do_sample=False, repetition_penalty=penalty, eos_token_id=None,
                           pad_token_id=0)[0, ids.shape[1]:].tolist()
        got = engine.generate(prompt, max_new_tokens=40, stop_at_eos=False, repetition_penalty=penalty).token_ids[0]
        assert got == want
    assert got != engine.generate(prompt, max_new_tokens=40, stop_at_eos=False).token_ids[0]  # the penalty acted
    # in a left-padded batch the padding is not a seen token
    prompts = [prompt, "x"]
    batch = engine.generate(prompts, max_new_tokens=20, stop_at_eos=False, repetition_penalty=penalty).token_ids
    assert batch == [engine.generate(p, max_new_tokens=20, stop_at_eos=False, repetition_penalty=penalty).token_ids[0] for p in prompts]


def test_min_new_tokens_identical_to_transformers(checkpoints, tok):
    """No stop token before min_new_tokens, then the first one stops, as transformers' MinNewTokens processor."""
    hf, path = checkpoints["mha"]
    engine = _fp32_engine(path, tok)
    prompt = "def quicksort(items):\n    "
    free = engine.generate(prompt, max_new_tokens=30, stop_at_eos=False).token_ids[0]
    stop = free[2]  # a token greedy decoding picks early: the stop id to hold back
    ids = torch.tensor([tok.encode(prompt)])
    for min_new in (0, 8):
        want = hf.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=stop, pad_token_id=0,
                           min_new_tokens=min_new)[0, ids.shape[1]:].tolist()
        want = want[: want.index(stop)] if stop in want else want  # ours leaves the stop token out
        got = engine.generate(prompt, max_new_tokens=30, stop_at_eos=False, stop_token_ids=[stop], min_new_tokens=min_new)
        assert got.token_ids[0] == want, min_new
    first = free.index(stop)  # up to its first appearance nothing was held back
    assert len(got.token_ids[0]) >= 8 and got.token_ids[0][:first] == free[:first]


def test_batch_with_penalty_min_new_tokens_and_an_end_token_matches_transformers(checkpoints, tok):
    """Random prompts of one length in a batch (no padding, so transformers' penalty sees the same
    tokens), greedy with repetition_penalty, min_new_tokens and an end token: each row as transformers."""
    hf, path = checkpoints["gqa4"]
    engine = _fp32_engine(path, tok)
    g = torch.Generator().manual_seed(fresh_seed())
    ids = torch.randint(3, 32000, (3, 7), generator=g)
    ids[:, 0] = 1
    free = engine.generate(input_ids=ids.tolist(), max_new_tokens=24, stop_at_eos=False).token_ids
    end = free[0][4]  # an end token the first row reaches early
    kw = dict(max_new_tokens=24, repetition_penalty=1.4, min_new_tokens=6)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=end, pad_token_id=0, **kw)
    want = [row[ids.shape[1]:].tolist() for row in out]
    want = [_before(row, end) for row in want]
    assert engine.generate(input_ids=ids.tolist(), eos_token_id=end, **kw).token_ids == want


def test_a_fine_tune_folder_with_an_added_pad_token_generates_as_transformers(tmp_path):
    """The common fine-tune layout: transformers' tokenizer with <pad> added (32017 pieces) saved
    beside a model with 32017 rows; Engine.from_pretrained reads both and decodes as transformers."""
    from transformers import AutoTokenizer

    from tests.conftest import CODELLAMA_DIR

    hf_tok = AutoTokenizer.from_pretrained(str(CODELLAMA_DIR))
    hf_tok.add_special_tokens({"pad_token": "<pad>"})
    hf = make_hf_model("mha", seed=8, vocab_size=len(hf_tok))
    path = save(hf, tmp_path / "ft")
    hf_tok.save_pretrained(path)
    engine = Engine.from_pretrained(path, dtype="float32", device="cpu")
    assert len(engine.tokenizer) == 32017 and engine.tokenizer.pad_token_id == 32016
    prompt = "def add(a, b):<pad>"
    ids = torch.tensor([hf_tok.encode(prompt)])
    assert ids[0, -1] == 32016
    want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False, eos_token_id=None,
                       pad_token_id=32016)[0, ids.shape[1]:].tolist()  # the mask: the prompt's <pad> is text here
    got = engine.generate(prompt, max_new_tokens=20, stop_at_eos=False)
    assert got.token_ids[0] == want
    # the continuation's text: transformers' decode of prompt + continuation, less that of the prompt
    full, head = (hf_tok.decode(x, skip_special_tokens=True) for x in (ids[0].tolist() + want, ids[0].tolist()))
    assert full.startswith(head) and got.text == full[len(head):]


def test_embedding_rows_padded_past_the_tokenizer_are_never_chosen(tmp_path, tok):
    """A fine-tune with rows padded to a multiple of 64 (32064 for 32016 pieces): the extra ids are
    never generated, as transformers' generate with those ids suppressed; greedy and sampled."""
    hf = make_hf_model("gqa4", seed=21, vocab_size=32064)
    with torch.no_grad():
        hf.lm_head.weight[32016:] *= 40  # make the padded rows win, so suppressing them matters
    path = save(hf, tmp_path / "m")
    engine = _fp32_engine(path, tok)
    ids = torch.tensor([tok.encode("def f(x):")])
    assert hf(ids).logits[0, -1].argmax() >= 32016  # unsuppressed, a padded row would be chosen
    want = hf.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
                       suppress_tokens=list(range(32016, 32064)))[0, ids.shape[1]:].tolist()
    assert engine.generate("def f(x):", max_new_tokens=16, stop_at_eos=False).token_ids[0] == want
    sampled = engine.generate(["def f(x):"] * 4, max_new_tokens=16, stop_at_eos=False, temperature=1.5, seed=2).token_ids
    assert max(max(row) for row in sampled) < 32016
    with pytest.raises(CheckpointError, match="32016 pieces but the model's vocabulary is 32000"):
        Engine(load_model(save(make_hf_model("gqa4", seed=1, vocab_size=32000), tmp_path / "small"), device="cpu"), tok)


def test_batched_with_padding_equals_one_by_one(checkpoints, tok):
    _, path = checkpoints["gqa4"]
    engine = _fp32_engine(path, tok)
    prompts = ["x", "import numpy as np\nimport torch\n\n\nclass Model:", "def f(a, b):\n    return"]
    batch = engine.generate(prompts, max_new_tokens=24, stop_at_eos=False)
    for k, p in enumerate(prompts):
        single = engine.generate(p, max_new_tokens=24, stop_at_eos=False)
        assert batch.token_ids[k] == single.token_ids[0], k


@pytest.mark.parametrize("ops", ["torch", "triton"])
@pytest.mark.parametrize("limit", ["cap", "free memory"])
def test_chunked_prefill_matches_transformers(checkpoints, tok, monkeypatch, ops, limit):
    """A left-padded batch prefilled in chunks (by the token cap, or by a free-memory budget
    that only fits 10 tokens of activations) gives each row's last logits as transformers does on
    that row alone."""
    from codellama_fast.engine import memory

    hf, path = checkpoints["gqa4"]
    engine = _fp32_engine(path, tok)
    if ops == "triton":
        if torch.cuda.is_available():
            pytest.skip("Triton's interpreter runs only where no GPU is found; tests/test_kernels.py checks chunked prefill on the GPU")
        from codellama_fast.kernels.triton_ops import TritonOps

        engine.model.ops = TritonOps()  # in the interpreter on CPU
    if limit == "cap":
        engine.prefill_chunk_tokens, per_row = 8, 4
    else:
        per_token = memory.prefill_bytes_per_token(engine.model.config, torch.float32)
        monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 2 * 10 * per_token + 1)
        per_row = 5
    widths = []
    forward = engine.model.forward

    def spy(tokens, *args, **kwargs):
        widths.append(tokens.shape[1])
        return forward(tokens, *args, **kwargs)

    engine.model.forward = spy
    rows = [torch.randint(3, hf.config.vocab_size, (n,)).tolist() for n in (19, 7)]
    tokens, kv_start, t = engine._prepare(rows)
    with torch.no_grad():
        logits = engine._prefill(tokens, kv_start, KVCache(engine.model.config, 2, t, torch.float32, torch.device("cpu")))
        want = torch.stack([hf(torch.tensor([r])).logits[0, -1] for r in rows])
    assert widths == [per_row] * (t // per_row) + ([t % per_row] if t % per_row else [])
    assert _rel(logits, want) < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pads", [[0], [0, 0]])
def test_prefill_activation_estimate_bounds_the_tracked_peak(checkpoints, name, pads):
    """The per-token activation bytes that size prefill chunks are at least the peak of the
    tensors the torch ops create in a 512-token prefill (tracked at the dispatcher, weights and
    the KV cache aside), plus the last position's fp32 logits. (With left padding the torch ops
    also build a mask of length² bytes per row, which the estimate leaves out.)"""
    from codellama_fast.engine import memory
    from tests.memory_tracking import LiveTensorPeak

    model = load_model(checkpoints[name][1], dtype="float32", device="cpu")
    b, t = len(pads), 512
    ids = torch.randint(3, model.config.vocab_size, (b, t))
    kv_start = torch.tensor(pads)
    cache = KVCache(model.config, b, t, torch.float32, torch.device("cpu"), grow=False)  # held whole, as a decode state
    positions = (torch.arange(t)[None] - kv_start[:, None]).clamp_min(0)
    ctx = StepContext(positions, torch.arange(t), 0, kv_start, t)
    with torch.inference_mode(), LiveTensorPeak(ignore=[x for kv in cache.layers for x in kv] + list(model.parameters())) as m:
        model(ids, ctx, cache.layers)
    logits = b * model.config.vocab_size * 4
    assert 0 < m.peak <= memory.prefill_bytes_per_token(model.config, torch.float32) * b * t + logits


def test_prefill_budget_shrinks_with_free_memory(checkpoints, monkeypatch):
    from codellama_fast.engine import memory

    cfg = LlamaConfig.from_file(checkpoints["gqa4"][1] / "config.json")
    per_token = memory.prefill_bytes_per_token(cfg, torch.float16)  # measured against real peaks in test_gpu.py
    assert per_token < memory.prefill_bytes_per_token(cfg, torch.float32)
    cpu = torch.device("cpu")
    for free, want in ((10**15, 16384), (2 * 100 * per_token, 100), (0, 1)):
        monkeypatch.setattr(memory, "free_memory_bytes", lambda device, free=free: free)
        assert memory.prefill_chunk_tokens(cfg, torch.float16, cpu, cap=16384) == want


@pytest.mark.parametrize(
    "gen",
    [
        {"bos_token_id": 1, "eos_token_id": 2},  # Code Llama's: greedy
        {"temperature": 0.2, "top_p": 0.95},  # sampling settings without do_sample: greedy in transformers
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9},  # Llama 2 chat's (top_k defaults to 50)
        {"do_sample": True, "top_k": 0, "max_new_tokens": 40},
        {"do_sample": False, "max_new_tokens": 7, "temperature": 0.7},
        # transformers' logits processors apply in greedy decoding too; its warpers only when sampling
        {"repetition_penalty": 1.1, "no_repeat_ngram_size": 3, "suppress_tokens": [5], "bad_words_ids": [[7, 8]], "min_p": 0.05},
        {"encoder_repetition_penalty": 1.2, "encoder_no_repeat_ngram_size": 4},
        {"do_sample": True, "min_p": 0.05, "typical_p": 0.9, "eta_cutoff": 0.0, "sequence_bias": [[[9], -2.0]], "min_new_tokens": 3},
        {"num_beams": 3, "length_penalty": 0.8, "early_stopping": True, "max_new_tokens": 5},  # beam search by default
    ],
)
def test_generation_config_defaults_read_as_transformers_reads_them(checkpoints, tok, tmp_path, gen):
    from transformers import GenerationConfig

    folder = tmp_path / "m"
    _copy(checkpoints["mha"][1], folder)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    ref = GenerationConfig.from_pretrained(folder)
    want = {}
    if "max_new_tokens" in gen:
        want["max_new_tokens"] = ref.max_new_tokens
    if ref.do_sample:
        want.update(temperature=ref.temperature, top_k=ref.top_k or None, top_p=ref.top_p if ref.top_p < 1.0 else None)
        want.update({k: getattr(ref, k) for k in ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
                     if getattr(ref, k) is not None and getattr(ref, k) != getattr(GenerationConfig(), k)})
    want.update({k: getattr(ref, k) for k in ("repetition_penalty", "no_repeat_ngram_size", "encoder_repetition_penalty",
                                              "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias",
                                              "suppress_tokens", "begin_suppress_tokens", "min_new_tokens", "num_beams",
                                              "length_penalty", "early_stopping")
                 if getattr(ref, k) is not None and getattr(ref, k) != getattr(GenerationConfig(), k)})
    engine = Engine.from_pretrained(folder, device="cpu", tokenizer=tok)
    assert engine.defaults == want
    assert len(engine.generate("x", max_new_tokens=4, stop_at_eos=False, seed=0).token_ids[0]) == 4  # the file's values are usable
    (folder / "generation_config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="generation_config.json must hold a JSON object"):
        Engine.from_pretrained(folder, device="cpu", tokenizer=tok)


def test_sharded_and_bin_checkpoints_load_identically(checkpoints, tmp_path):
    hf, path = checkpoints["odd"]
    sharded = save(hf, tmp_path / "sharded", max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    binary = save(hf, tmp_path / "bin", safe_serialization=False)
    assert (binary / "pytorch_model.bin").is_file() or (binary / "pytorch_model.bin.index.json").is_file()
    ids = torch.randint(0, hf.config.vocab_size, (1, 11))
    base = _forward_all(load_model(path, dtype="float32", device="cpu"), ids)
    for folder in (sharded, binary):
        assert torch.equal(_forward_all(load_model(folder, dtype="float32", device="cpu"), ids), base)


def test_dtype_paths(checkpoints, tmp_path):
    hf, path = checkpoints["mha"]
    ids = torch.randint(0, hf.config.vocab_size, (1, 7))
    with torch.no_grad():
        ref = hf(ids).logits
    assert load_model(path, device="cpu").embed.weight.dtype == torch.float32  # CPU default
    assert load_model(path, dtype="auto", device="cpu").embed.weight.dtype == torch.float32  # stored
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 6e-2)):
        m = load_model(path, dtype=dtype, device="cpu")
        assert all(p.dtype == dtype for p in m.parameters())
        b, t = ids.shape
        cache = KVCache(m.config, b, t, dtype, torch.device("cpu"))
        ctx = StepContext(torch.arange(t)[None], torch.arange(t), 0, torch.zeros(1, dtype=torch.long), t)
        with torch.no_grad():
            assert _rel(m(ids, ctx, cache.layers, last_only=False), ref) < tol
    bf16 = save(hf.to(torch.bfloat16), tmp_path / "bf16")
    hf.to(torch.float32)
    assert load_model(bf16, dtype="auto", device="cpu").embed.weight.dtype == torch.bfloat16


def test_config_reads_rope_parameters_and_linear_scaling_and_rejects_other_scaling(checkpoints, tmp_path):
    raw = json.loads((checkpoints["mha"][1] / "config.json").read_text())
    raw.pop("rope_theta", None)
    raw["rope_parameters"] = {"rope_theta": 1e6, "rope_type": "default"}
    assert LlamaConfig.from_dict(raw).rope_theta == 1e6
    assert LlamaConfig.from_dict(raw).rope_scaling_factor == 1.0
    raw["rope_parameters"] = {"rope_theta": 1e6, "rope_type": "linear", "factor": 4.0}  # transformers 5.x
    assert LlamaConfig.from_dict(raw).rope_scaling_factor == 4.0
    raw["rope_parameters"] = {"rope_theta": 1e6, "rope_type": "default"}
    for scaling in ({"type": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": 2}):  # transformers 4.x
        raw["rope_scaling"] = scaling
        assert LlamaConfig.from_dict(raw).rope_scaling_factor == 2.0
    raw["rope_scaling"] = {"type": "dynamic", "factor": 3.0}
    got = LlamaConfig.from_dict(raw)
    assert (got.rope_scaling_type, got.rope_scaling_factor) == ("dynamic", 3.0)
    for kind in ("yarn", "llama3", "longrope"):
        raw["rope_scaling"] = {"rope_type": kind, "factor": 2.0}
        with pytest.raises(UnsupportedConfigError, match=f"rope_scaling of type '{kind}' is not implemented"):
            LlamaConfig.from_dict(raw)
    for factor in (None, 0, -2.0, "2", True, float("nan")):
        raw["rope_scaling"] = {"type": "linear", "factor": factor}
        with pytest.raises(CheckpointError, match="positive 'factor'"):
            LlamaConfig.from_dict(raw)
    raw["rope_scaling"] = "linear"
    with pytest.raises(CheckpointError, match="rope_scaling must be an object"):
        LlamaConfig.from_dict(raw)
    with pytest.raises(CheckpointError, match="hidden_size"):
        LlamaConfig.from_dict({"num_hidden_layers": 2})


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_checkpoints_raise_clear_errors(checkpoints, tmp_path):
    hf, path = checkpoints["odd"]
    sharded = save(hf, tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(sharded.glob("*.safetensors"))
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=f"shard .*{shards[1].name}.* is missing"):
        load_model(sharded, device="cpu")

    trunc = _copy(path, tmp_path / "trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(trunc, device="cpu")

    wrong = _copy(path, tmp_path / "wrong")
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["intermediate_size"] += 1
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.gate_proj\.weight has shape"):
        load_model(wrong, device="cpu")

    fewer = _copy(path, tmp_path / "fewer")
    cfg = json.loads((fewer / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (fewer / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="lacks"):
        load_model(fewer, device="cpu")

    nokeys = _copy(path, tmp_path / "nokeys")
    (nokeys / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="required keys"):
        load_model(nokeys, device="cpu")

    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "absent", device="cpu")
    # a file of the folder given for the folder
    with pytest.raises(CheckpointError, match=f"is a file, not a folder: .*; its folder {nokeys} holds config.json"):
        load_model(nokeys / "model.safetensors", device="cpu")
    with pytest.raises(CheckpointError, match="is a file, not a folder: pass the folder that holds the model's config.json "
                                              "and weights$"):
        load_model(__file__, device="cpu")  # (tests/ holds no config.json)


def test_pickled_objects_in_bin_are_refused(tmp_path, checkpoints):
    _, path = checkpoints["mha"]
    folder = _copy(path, tmp_path / "evil")
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model.embed_tokens.weight": torch.zeros(1), "x": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(folder, device="cpu")


def test_kv_cache_memory_check_refuses_impossible_sizes(checkpoints):
    cfg = LlamaConfig.from_file(checkpoints["mha"][1] / "config.json")
    with pytest.raises(OutOfMemoryError, match="needs .* GiB .* free"):
        KVCache(cfg, batch=4096, max_len=10**9, dtype=torch.float16, device=torch.device("cpu"))


def test_weights_that_do_not_fit_are_refused_before_any_is_read(checkpoints, monkeypatch):
    """A model whose weights in the asked dtype exceed the free memory (on the CPU, plus the free
    swap) is an OutOfMemoryError naming both sizes, raised before any weight is read."""
    from safetensors import safe_open

    from codellama_fast.engine import loader, memory

    path = checkpoints["gqa4"][1]
    with safe_open(str(path / "model.safetensors"), "pt") as f:  # the file's own header
        elements = sum(math.prod(f.get_slice(n).get_shape()) for n in f.keys())
    need32 = 4 * elements
    read = []
    get = loader.WeightSource.get
    monkeypatch.setattr(loader.WeightSource, "get", lambda self, name: read.append(name) or get(self, name))

    def machine(free: int, swap: int) -> None:
        monkeypatch.setattr(memory, "free_memory_bytes", lambda device: free)
        monkeypatch.setattr(memory, "swap_free_bytes", lambda: swap)

    machine(need32 - 1, 0)
    with pytest.raises(OutOfMemoryError, match=rf"weights need {need32 / 2**30:.2f} GiB in float32 but cpu has "
                                                rf"{(need32 - 1) / 2**30:.2f} GiB free; dtype='bfloat16' takes half"):
        load_model(path, dtype="float32", device="cpu")
    assert read == []
    load_model(path, dtype="bfloat16", device="cpu")  # half the bytes fit
    machine(need32 // 4, need32 // 2)
    with pytest.raises(OutOfMemoryError, match=r"GiB free \(and .* GiB of swap\)"):
        load_model(path, dtype="float32", device="cpu")
    machine(need32 // 2, need32 - need32 // 2)
    load_model(path, dtype="float32", device="cpu")  # memory and swap together hold them
    assert read


@pytest.mark.parametrize("chunk", [16384, 5])  # one prefill chunk, and many (a chunk ends mid-text)
def test_score_equals_transformers_log_softmax(checkpoints, chunk):
    """Each token's log-probability given the tokens before it, for a batch of different lengths,
    equals the log-softmax of transformers' logits for each text alone."""
    hf, path = checkpoints["gqa4"]
    tok = CodeLlamaTokenizerFast.from_pretrained()
    engine = _fp32_engine(path, tok)
    engine.prefill_chunk_tokens = chunk
    texts = ["def f(x):\n    return x * 2  # double", "import os", "a b"]
    result = engine.score(texts)
    for text, ids, got in zip(texts, result.token_ids, result.token_logprobs):
        assert ids == tok.encode(text)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].log_softmax(-1)  # [T, V]
        expected = [ref[k, ids[k + 1]].item() for k in range(len(ids) - 1)]
        assert logprobs_close(got, expected, 1e-4)
    # the likeliest tokens at each position (chunked and padded like the rest), as transformers ranks them
    tops = engine.score(texts, top_logprobs=4)
    assert tops.token_logprobs == result.token_logprobs and result.top_logprobs is None
    for ids, row in zip(tops.token_ids, tops.top_logprobs):
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].log_softmax(-1)[:-1].topk(4)  # [T-1, 4]
        assert [[i for i, _ in pairs] for pairs in row] == ref.indices.tolist()
        assert all(logprobs_close([v for _, v in pairs], want, 1e-4) for pairs, want in zip(row, ref.values.tolist()))
    assert result.logprob == pytest.approx([sum(r) for r in result.token_logprobs])
    expected_ppl = [float(torch.tensor(r, dtype=torch.float64).neg().mean().exp()) for r in result.token_logprobs]
    assert result.perplexity == pytest.approx(expected_ppl, rel=1e-9)  # float64: a random model's perplexity can be 1e4+


def test_score_of_input_ids_with_a_padding_mask_equals_texts(checkpoints):
    _, path = checkpoints["mha"]
    tok = CodeLlamaTokenizerFast.from_pretrained()
    tok.pad_token = tok.eos_token
    engine = _fp32_engine(path, tok)
    texts = ["x = [1, 2, 3]", "print(x)"]
    by_text = engine.score(texts)
    for side in ("left", "right"):
        enc = tok(texts, padding=True, padding_side=side, return_tensors="pt")
        by_ids = engine.score(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        assert by_ids.token_ids == by_text.token_ids
        assert all(logprobs_close(x, y, 1e-5) for x, y in zip(by_ids.token_logprobs, by_text.token_logprobs))


def test_score_errors(checkpoints):
    _, path = checkpoints["mha"]
    engine = _fp32_engine(path, CodeLlamaTokenizerFast.from_pretrained())
    with pytest.raises(ValueError, match="at least two"):
        engine.score(["ok", ""])  # "" is BOS alone
    with pytest.raises(ValueError, match="either"):
        engine.score("x", input_ids=[[1, 2]])
    with pytest.raises(ValueError, match="texts or input_ids"):
        engine.score()
    with pytest.raises(TypeError):
        engine.score([b"bytes"])


def test_return_logprobs_equal_transformers_raw_logits(checkpoints, tok):
    """Greedy: each generated token's log-probability equals the log-softmax of transformers'
    raw logits (output_logits) at that step."""
    hf, path = checkpoints["gqa4"]
    engine = _fp32_engine(path, tok)
    prompt = "def quicksort(items):\n    "
    ids = torch.tensor([tok.encode(prompt)])
    out = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                      output_logits=True, return_dict_in_generate=True)
    want_ids = out.sequences[0, ids.shape[1]:].tolist()
    want = [step[0].log_softmax(-1)[t].item() for step, t in zip(out.logits, want_ids)]
    got = engine.generate(prompt, max_new_tokens=20, stop_at_eos=False, return_logprobs=True)
    assert got.token_ids[0] == want_ids
    assert logprobs_close(got.token_logprobs[0], want, 1e-4)
    assert engine.generate(prompt, max_new_tokens=3).token_logprobs is None  # only on request
    # top_logprobs: the 5 likeliest tokens of each step's log-softmax, likeliest first; the same on
    # the prompt-lookup path (several positions checked in one pass)
    want_top = [step[0].log_softmax(-1).topk(5) for step in out.logits]
    for extra in ({}, {"prompt_lookup_num_tokens": 3}):
        top = engine.generate(prompt, max_new_tokens=20, stop_at_eos=False, top_logprobs=5, **extra)
        assert top.token_ids[0] == want_ids and logprobs_close(top.token_logprobs[0], want, 1e-4)
        for pairs, ref in zip(top.top_logprobs[0], want_top):
            assert [i for i, _ in pairs] == ref.indices.tolist()
            assert logprobs_close([v for _, v in pairs], ref.values.tolist(), 1e-4)
        assert all(pairs[0][0] == t for pairs, t in zip(top.top_logprobs[0], want_ids))  # greedy: the likeliest is chosen
    with pytest.raises(ValueError, match="top_logprobs must be between"):
        engine.generate(prompt, max_new_tokens=2, top_logprobs=-1)


def test_return_logprobs_of_samples_equal_scoring_the_text(checkpoints, tok):
    """Sampled with filters, a penalty and stops (rows of different lengths): the log-probabilities
    are the model's own (score() of prompt + continuation), aligned with token_ids."""
    _, path = checkpoints["mha"]
    engine = _fp32_engine(path, tok)
    prompts = ["import os\n", "x = ["]
    free = engine.generate(prompts[0], max_new_tokens=12, stop_at_eos=False, temperature=0.9, top_k=40, seed=4).token_ids[0]
    result = engine.generate(prompts, max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2,
                             seed=4, stop_token_ids=[free[5]], return_logprobs=True)
    for prompt, ids, lps in zip(prompts, result.token_ids, result.token_logprobs):
        assert len(lps) == len(ids)
        if not ids:
            continue
        p = tok.encode(prompt)
        scored = engine.score(input_ids=[p + ids]).token_logprobs[0][len(p) - 1 :]
        assert logprobs_close(lps, scored, 1e-4)
    with pytest.raises(TypeError, match="return_logprobs"):
        engine.generate("x", max_new_tokens=2, return_logprobs="yes")


# ---------------------------------------------------------------- prompt-lookup decoding


def test_lookup_guesses_are_transformers_prompt_lookup_candidates():
    """The n-gram guesses equal transformers' PromptLookupCandidateGenerator's on random sequences
    over a small alphabet (many repeats), stop ids included."""
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    from codellama_fast.engine.prompt_lookup import NgramIndex

    rng = random.Random()
    for _ in range(300):
        seq = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        k, n, stops = rng.randrange(1, 8), rng.randrange(1, 4), {rng.randrange(6)}
        ref = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(sorted(stops)), num_output_tokens=k,
                                             max_matching_ngram_size=n, max_length=10_000)
        ids, _ = ref.get_candidates(torch.tensor([seq]))
        index = NgramIndex(n)
        index.extend(seq[: len(seq) // 2])
        index.extend(seq[len(seq) // 2 :])  # grown in two steps, as during decoding
        assert index.candidates(k, stops) == ids[0, len(seq):].tolist(), (seq, k, n, stops)


@pytest.mark.parametrize("name", ["gqa4", "odd"])
def test_prompt_lookup_greedy_equals_plain_greedy_and_transformers(checkpoints, tok, name):
    hf, path = checkpoints[name]
    engine = _fp32_engine(path, tok)
    prompt = "def add(a, b):\n    return a + b\n\ndef add3(a, b, c):\n    return a + b + c\n\ndef add"
    ids = torch.tensor([tok.encode(prompt)])
    end = 32015  # transformers' prompt lookup needs an end token (None fails there); the same one here
    plain = engine.generate(prompt, max_new_tokens=40, eos_token_id=end)
    looked = engine.generate(prompt, max_new_tokens=40, eos_token_id=end, prompt_lookup_num_tokens=5, return_logprobs=True)
    want = hf.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=end, pad_token_id=0,
                       prompt_lookup_num_tokens=5)[0, ids.shape[1]:].tolist()[:40]  # its lookup may run a step past the limit
    want = _before(want, end)
    assert looked.token_ids[0] == plain.token_ids[0] == want
    scored = engine.score(input_ids=[ids[0].tolist() + want]).token_logprobs[0][ids.shape[1] - 1 :]
    assert logprobs_close(looked.token_logprobs[0], scored, 1e-4)


def test_prompt_lookup_keeps_the_guesses_the_model_confirms(tmp_path, tok):
    """A model scripted to continue a pattern the prompt already holds: each step checks the
    guesses in one forward pass and keeps all of them (k + 1 tokens per pass); where the script
    leaves the pattern, the pass keeps the matching guesses and the model's own choice."""
    engine = _fp32_engine(save(make_hf_model("mha", seed=1), tmp_path / "m"), tok)
    pattern = [100 + i for i in range(12)]
    prompt = [1] + pattern + pattern[:3]
    script = pattern[3:] + pattern + [7, 8, 9] + pattern[:5]  # continues the pattern, then breaks it
    vocab, calls = engine.model.config.vocab_size, []

    def forward(tokens, ctx, caches, last_only=True):
        calls.append(tokens.shape[1])
        pos = ctx.positions[0]  # the logits at position p choose the token at p + 1
        logits = torch.full((1, tokens.shape[1], vocab), -5.0)
        for j, p in enumerate(pos.tolist()):
            logits[0, j, script[p + 1 - len(prompt)] if p + 1 - len(prompt) < len(script) else 0] = 5.0
        return logits[:, -1] if last_only else logits

    engine.model.forward = forward  # type: ignore[method-assign]
    out = engine.generate(input_ids=[prompt], max_new_tokens=len(script), stop_at_eos=False, prompt_lookup_num_tokens=4)
    assert out.token_ids[0] == script
    assert calls[0] == len(prompt) and all(c <= 5 for c in calls[1:])
    assert len(calls) - 1 < len(script) - 1  # fewer decode passes than tokens after the first
    assert sum(c == 5 for c in calls[1:]) >= 3  # passes where all four guesses were kept


def test_prompt_lookup_with_sampling_and_stops(checkpoints, tok):
    """Sampling, a penalty and a stop id go through the same per-position choice: seeded runs
    repeat, log-probabilities are the model's, the stop id ends the text."""
    _, path = checkpoints["mha"]
    engine = _fp32_engine(path, tok)
    prompt = "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2,"
    kw = dict(max_new_tokens=30, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=11, prompt_lookup_num_tokens=4)
    a = engine.generate(prompt, return_logprobs=True, **kw)
    assert a.token_ids == engine.generate(prompt, **kw).token_ids
    p = tok.encode(prompt)
    scored = engine.score(input_ids=[p + a.token_ids[0]]).token_logprobs[0][len(p) - 1 :]
    assert logprobs_close(a.token_logprobs[0], scored, 1e-4)
    stop = a.token_ids[0][6]
    cut = engine.generate(prompt, stop_token_ids=[stop], **kw)
    assert cut.finish_reasons == ["eos"] and stop not in cut.token_ids[0] and cut.token_ids[0] == a.token_ids[0][: a.token_ids[0].index(stop)]


def test_prompt_lookup_errors(checkpoints, tok):
    _, path = checkpoints["mha"]
    engine = _fp32_engine(path, tok)
    with pytest.raises(ValueError, match="batch 1"):
        engine.generate(["a", "b"], max_new_tokens=3, prompt_lookup_num_tokens=3)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        engine.generate("a", max_new_tokens=3, prompt_lookup_num_tokens=0)
    with pytest.raises(TypeError, match="max_matching_ngram_size"):
        engine.generate("a", max_new_tokens=3, prompt_lookup_num_tokens=2, max_matching_ngram_size=1.5)


def test_prompt_lookup_on_the_trained_demo_model_saves_passes():
    """On a real (tiny, trained) model whose stories repeat their phrases: the same tokens as
    plain greedy decoding, in fewer forward passes than tokens."""
    from codellama_fast.data import DEMO_MODEL_DIR

    engine = Engine.from_pretrained(DEMO_MODEL_DIR, device="cpu")
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside. One day, Lily"
    plain = engine.generate(prompt, max_new_tokens=120, stop_at_eos=False)
    original, passes = engine.model.forward, []

    def counted(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    engine.model.forward = counted  # type: ignore[method-assign]
    looked = engine.generate(prompt, max_new_tokens=120, stop_at_eos=False, prompt_lookup_num_tokens=8)
    assert looked.token_ids == plain.token_ids
    assert len(passes) - 1 < 0.9 * (120 - 1), len(passes)  # prefill + decode passes: guesses were kept


# ---------------------------------------------------------------- assisted decoding


def _counting(engine):
    """Counts the model's forward passes (prefill and checks; captured steps are not forwards here)."""
    original, calls = engine.model.forward, []
    engine.model.forward = lambda tokens, *a, **k: calls.append(tokens.shape[1]) or original(tokens, *a, **k)  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("target, draft", [("gqa4", "mha"), ("odd", "gqa4")])
def test_assisted_greedy_equals_plain_greedy_and_transformers(checkpoints, tok, target, draft):
    """A draft model of another shape (so most guesses are wrong): the tokens are the model's own
    greedy ones, as transformers' plain and assisted generation give them."""
    hf, path = checkpoints[target]
    hf_draft, draft_path = checkpoints[draft]
    engine = _fp32_engine(path, tok)
    assistant = _fp32_engine(draft_path, tok)
    prompt = "def add(a, b):\n    return a + b\n\ndef add3(a, b, c):\n    return a + b + c\n\ndef add"
    ids = torch.tensor([tok.encode(prompt)])
    end = 32015
    want = hf.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=end, pad_token_id=0)[0, ids.shape[1]:].tolist()
    theirs = hf.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=end, pad_token_id=0,
                         assistant_model=hf_draft)[0, ids.shape[1]:].tolist()
    want = _before(want, end)
    theirs = _before(theirs, end)
    got = engine.generate(prompt, max_new_tokens=40, eos_token_id=end, assistant_model=assistant, return_logprobs=True)
    assert got.token_ids[0] == want == theirs[: len(want)]
    assert 0 <= got.guesses_kept <= got.guesses_made > 0
    plain = engine.generate(prompt, max_new_tokens=3)
    assert plain.guesses_made == 0 and "guesses" not in plain.summary()
    scored = engine.score(input_ids=[ids[0].tolist() + want]).token_logprobs[0][ids.shape[1] - 1 :]
    assert logprobs_close(got.token_logprobs[0], scored, 1e-4)


def test_assisted_keeps_the_guesses_of_a_draft_that_agrees(checkpoints, tok):
    """A draft with the model's own weights guesses what the model chooses: each check keeps all
    k guesses and adds one (k + 1 tokens per pass of the model); the draft is fed only the tokens
    it has not seen (its cache follows the kept tokens)."""
    _, path = checkpoints["gqa4"]
    engine = _fp32_engine(path, tok)
    assistant = _fp32_engine(path, tok)
    prompt = "def quicksort(items):\n    "
    plain = engine.generate(prompt, max_new_tokens=41, stop_at_eos=False)
    checks, drafts = _counting(engine), _counting(assistant)
    got = engine.generate(prompt, max_new_tokens=41, stop_at_eos=False, assistant_model=assistant,
                          num_assistant_tokens=4, assistant_confidence_threshold=0.0)
    assert got.token_ids == plain.token_ids
    n_prompt = len(tok.encode(prompt))
    assert checks == [n_prompt] + [5] * 8  # prefill, then 40 tokens in 8 passes of 1 + 4 guesses
    assert got.guesses_made == got.guesses_kept == 32 and "guesses kept 32 of 32 (100%)" in got.summary()
    # the draft: the prompt and the first token at once, then per check two unseen tokens
    # (its last guess and the model's added one) and three guesses of its own
    assert drafts[0] == n_prompt + 1 and sorted(set(drafts[1:])) == [1, 2]
    assert len(drafts) == 1 + 3 + 7 * 4


def test_assistant_token_schedules_follow_transformers_rule(checkpoints, tok):
    """"heuristic": 2 more guesses after a check that kept them all (capped by the tokens still to
    come), carried to the assistant's next call; "heuristic_transient" starts afresh each call;
    "constant" never changes. A draft with the model's weights keeps every guess."""
    _, path = checkpoints["gqa4"]
    engine, assistant = _fp32_engine(path, tok), _fp32_engine(path, tok)
    prompt = "def quicksort(items):\n    "
    kw = {"max_new_tokens": 30, "stop_at_eos": False, "assistant_model": assistant, "num_assistant_tokens": 2,
          "assistant_confidence_threshold": 0.0}
    plain = engine.generate(prompt, max_new_tokens=30, stop_at_eos=False).token_ids

    def passes(**more):
        checks = _counting(engine)
        result = engine.generate(prompt, **kw, **more)
        assert result.token_ids == plain and result.guesses_kept == result.guesses_made
        return checks[1:]  # the tokens fed to each check: the newest one and the guesses

    # 29 tokens after the first: guesses 2, 4, 6, 8 (+4 passes each emitting guesses + 1), then the 4 left
    assert passes(num_assistant_tokens_schedule="heuristic_transient") == [3, 5, 7, 9, 5]
    assert passes(num_assistant_tokens_schedule="heuristic_transient") == [3, 5, 7, 9, 5]
    assert passes() == [3] * 9 + [2]  # constant: 2 guesses a pass (1 left for the last)
    assert passes(num_assistant_tokens_schedule="heuristic") == [3, 5, 7, 9, 5]
    # carried: the last check kept all 4 of its guesses, so the next call starts at 10 + 2; then
    # 14 (the 14 tokens left but one), and a last pass with no room for a guess
    assert passes(num_assistant_tokens_schedule="heuristic") == [13, 15, 1]
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule must be"):
        engine.generate(prompt, max_new_tokens=3, assistant_model=assistant, num_assistant_tokens_schedule="fast")


def test_assisted_sampling_equals_plain_sampling(checkpoints, tok):
    """Sampling, a penalty and a stop id: every position is chosen as plain decoding chooses it,
    so a seeded run gives plain decoding's tokens whatever the draft guesses, with the model's
    log-probabilities."""
    _, path = checkpoints["mha"]
    _, draft_path = checkpoints["odd"]
    engine = _fp32_engine(path, tok)
    assistant = _fp32_engine(draft_path, tok)
    prompt = "x = [1, 2, 3]\ny = [1, 2,"
    kw = dict(max_new_tokens=30, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=5)
    plain = engine.generate(prompt, **kw)
    for draft in (assistant, engine):  # a draft that disagrees, and one that agrees
        got = engine.generate(prompt, assistant_model=draft, return_logprobs=True, **kw)
        assert got.token_ids == plain.token_ids
    p = tok.encode(prompt)
    scored = engine.score(input_ids=[p + got.token_ids[0]]).token_logprobs[0][len(p) - 1 :]
    assert logprobs_close(got.token_logprobs[0], scored, 1e-4)
    stop = plain.token_ids[0][9]
    cut = engine.generate(prompt, stop_token_ids=[stop], assistant_model=assistant, **kw)
    assert cut.finish_reasons == ["eos"] and cut.token_ids[0] == plain.token_ids[0][: plain.token_ids[0].index(stop)]
    assert "".join(engine.stream(prompt, assistant_model=assistant, **kw)) == plain.text


def test_a_draft_with_more_pieces_guesses_only_the_models_ids(tmp_path, tok, tok_llama2, monkeypatch):
    """Code Llama 7B's 32016 pieces may assist a 32000-piece model (34B): its first 32000 pieces are
    the same; the 16 infilling pieces are never guessed."""
    from codellama_fast.engine.assisted import DraftGuesser

    target = _fp32_engine(save(make_hf_model("mha", seed=3, vocab_size=32000), tmp_path / "t"), tok_llama2)
    draft_model = make_hf_model("mha", seed=4)
    with torch.no_grad():
        draft_model.lm_head.weight[32000:] *= 50  # the draft prefers its extra pieces
    assistant = _fp32_engine(save(draft_model, tmp_path / "d"), tok)
    guessed = []
    original = DraftGuesser.candidates
    monkeypatch.setattr(DraftGuesser, "candidates", lambda self, k, stops: guessed.extend(g := original(self, k, stops)) or g)
    plain = target.generate("def f(x):", max_new_tokens=20, stop_at_eos=False)
    got = target.generate("def f(x):", max_new_tokens=20, stop_at_eos=False, assistant_model=assistant)
    assert got.token_ids == plain.token_ids
    assert guessed and max(guessed) < 32000


def test_assisted_errors(checkpoints, tok):
    from codellama_fast.data import DEMO_MODEL_DIR

    _, path = checkpoints["mha"]
    engine = _fp32_engine(path, tok)
    with pytest.raises(ValueError, match="batch 1"):
        engine.generate(["a", "b"], max_new_tokens=3, assistant_model=engine)
    with pytest.raises(TypeError, match="assistant_model must be an Engine"):
        engine.generate("a", max_new_tokens=3, assistant_model=engine.model)
    with pytest.raises(ValueError, match="not both"):
        engine.generate("a", max_new_tokens=3, assistant_model=engine, prompt_lookup_num_tokens=3)
    with pytest.raises(ValueError, match="num_assistant_tokens must be >= 1"):
        engine.generate("a", max_new_tokens=3, assistant_model=engine, num_assistant_tokens=0)
    with pytest.raises(ValueError, match="assistant_confidence_threshold"):
        engine.generate("a", max_new_tokens=3, assistant_model=engine, assistant_confidence_threshold=1.5)
    with pytest.raises(ValueError, match="tokenizer differs"):
        engine.generate("a", max_new_tokens=3, assistant_model=Engine.from_pretrained(DEMO_MODEL_DIR, device="cpu"))


@pytest.mark.parametrize("name", ["gqa4", "odd"])
def test_repr_gives_the_checkpoints_shape(checkpoints, tok, name):
    hf, path = checkpoints[name]
    c = hf.config
    text = repr(_fp32_engine(path, tok))
    assert f"{hf.num_parameters() / 1e6:.1f}M parameters" in text
    assert (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads / {c.num_key_value_heads} "
            f"KV heads, vocabulary {c.vocab_size}, float32 on cpu, torch ops") in text


def test_the_engine_package_imports_torch_only_when_a_name_is_used():
    """codellama_fast.engine's torch-free parts (options, params, folders) load without torch, and
    each public name resolves on first use to the object of that name."""
    code = ("import sys, codellama_fast.engine as e\nfrom codellama_fast.engine import folders, options, params\n"
            "before = 'torch' in sys.modules\nnames = [getattr(e, n).__name__ for n in e.__all__]\n"
            "print(before, 'torch' in sys.modules, names == e.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]


def test_loading_and_generating_leave_torch_compile_unimported(tmp_path):
    """Building the model on the meta device does no arithmetic there: torch's meta decompositions
    import torch._dynamo (and inductor), about a second of a process's first load. A fresh
    process loads the bundled demo model, generates, streams and scores without it; the model's
    rotary frequencies are transformers' all the same (the logits are checked elsewhere)."""
    code = ("import sys\nfrom codellama_fast import Engine\nfrom codellama_fast.data import DEMO_MODEL_DIR\n"
            "e = Engine.from_pretrained(DEMO_MODEL_DIR)\nloaded = 'torch._dynamo' in sys.modules\n"
            "e.generate('Once', max_new_tokens=4); ''.join(e.stream('Once', max_new_tokens=4)); e.score(['Once upon'])\n"
            "print(loaded, 'torch._dynamo' in sys.modules, e.model.inv_freq.device)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "cpu"]


def test_the_model_built_on_the_cpu_has_transformers_rotary_frequencies():
    """The rotary frequencies are computed on the CPU and moved to the device the model is built on."""
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from codellama_fast.engine import LlamaModel
    from tests.engine_helpers import hf_config

    hf_cfg = hf_config("gqa4", rope_theta=1e6)
    cfg = LlamaConfig.from_dict(hf_cfg.to_dict())
    want = LlamaRotaryEmbedding(hf_cfg).inv_freq
    with torch.device("meta"):
        assert LlamaModel(cfg).inv_freq.device.type == "meta"
    assert torch.equal(LlamaModel(cfg).inv_freq, want)
