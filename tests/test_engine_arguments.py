"""What callers pass to the engine is checked at the call: wrong types and values raise a typed
error naming the argument (never a torch traceback or a silently different request), a device or
backend that cannot run fails before weights load, and running past the model's trained length
warns."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast import CodeLlamaTokenizerFast, DeviceError, EngineError, UnsupportedConfigError  # noqa: E402
from codellama_fast.engine import Engine, load_model  # noqa: E402
from tests.conftest import CODELLAMA_DIR  # noqa: E402
from tests.engine_helpers import make_hf_model, save, scripted  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save(make_hf_model("gqa4", seed=11), tmp_path_factory.mktemp("args"))


@pytest.fixture()
def engine(model_dir, tok):
    return Engine(load_model(model_dir, device="cpu"), tok)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an int"),
        ({"max_new_tokens": "3"}, TypeError, "max_new_tokens must be an int"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be >= 0"),
        ({"temperature": "hot"}, TypeError, "temperature must be a number"),
        ({"temperature": float("nan")}, ValueError, "temperature must be finite"),
        ({"temperature": float("inf")}, ValueError, "temperature must be finite"),
        ({"top_k": 2.0, "temperature": 1.0}, TypeError, "top_k must be an int"),
        ({"top_k": -1, "temperature": 1.0}, ValueError, "top_k must be >= 0 .0 filters nothing"),
        ({"top_p": float("nan"), "temperature": 1.0}, ValueError, "top_p must be finite"),
        ({"seed": "1"}, TypeError, "seed must be an int"),
        ({"seed": 2**64, "temperature": 1.0}, ValueError, r"seed must be between -2\*\*63 and 2\*\*64 - 1, got 184467"),
        ({"seed": -(2**63) - 1, "temperature": 1.0}, ValueError, "seed must be between"),
        ({"stop": 3}, TypeError, "stop must be a str"),
        ({"stop": ["x", None]}, TypeError, "stop must contain only str"),
        ({"stop_token_ids": [2.0]}, TypeError, r"stop_token_ids\[0\] must be an int"),
        ({"stop_at_eos": "no"}, TypeError, "stop_at_eos must be a bool"),
        ({"max_tokens": 3}, TypeError, "unknown generation arguments: max_tokens"),
        ({"do_sample": "yes"}, TypeError, "do_sample must be a bool"),
        ({"repetition_penalty": 0}, ValueError, "repetition_penalty must be > 0"),
        ({"min_new_tokens": -1}, ValueError, "min_new_tokens must be >= 0"),
        ({"eos_token_id": 2, "stop_token_ids": [3]}, ValueError, "not both"),
        ({"eos_token_id": [2.5]}, TypeError, r"eos_token_id\[0\] must be an int"),
        ({"pad_token_id": "0"}, TypeError, "pad_token_id must be an int"),
        ({"num_return_sequences": 2}, ValueError, "needs sampling|is for generate"),
        ({"num_return_sequences": 0, "temperature": 1.0}, ValueError, "num_return_sequences must be >= 1|is for generate"),
        ({"min_new_tokens": 1.5}, TypeError, "min_new_tokens must be an int"),
        ({"repetition_penalty": "1.2"}, TypeError, "repetition_penalty must be a number"),
        ({"do_sample": True, "temperature": 0}, ValueError, "do_sample=True needs a temperature > 0"),
        ({"no_repeat_ngram_size": ""}, TypeError, "no_repeat_ngram_size must be an int"),
        ({"num_return_sequences": torch.tensor([1, 2])}, TypeError, "num_return_sequences must be an int"),
        ({"early_stopping": torch.tensor([1, 2])}, ValueError, "early_stopping must be True, False or 'never'"),
        ({"output_scores": torch.tensor([1, 2])}, TypeError, "output_scores"),
        ({"return_dict_in_generate": torch.tensor([1, 2])}, TypeError, "return_dict_in_generate"),
        ({"max_time": float("nan")}, ValueError, "max_time"),
        ({"renormalize_logits": "yes"}, TypeError, "renormalize_logits must be a bool"),
        ({"num_beams": 2, "stopping_criteria": torch.tensor([[1, 2]])}, TypeError, "stopping_criteria must be a callable"),
        ({"exponential_decay_length_penalty": (1, float("nan"))}, ValueError, "decay_factor must be"),
    ],
)
def test_bad_generation_arguments_are_named(engine, kwargs, error, words):
    for call in (lambda: engine.generate("x", **kwargs), lambda: list(engine.stream("x", **kwargs))):
        with pytest.raises(error, match=words):
            call()


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63)])
def test_seeds_at_the_ends_of_torchs_range_sample_as_transformers_does(engine, model_dir, tok, seed):
    """The ends of the range torch.manual_seed takes: the same tokens as transformers' sampling
    after torch.manual_seed(seed)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(model_dir).eval()
    ids = tok.encode("def f(")
    torch.manual_seed(seed)
    want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=True,
                       max_new_tokens=6, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    got = engine.generate(input_ids=[ids], max_new_tokens=6, stop_at_eos=False, do_sample=True, seed=seed).token_ids
    assert got == [want]


def test_sampling_params_refuse_nan():
    from codellama_fast.engine.sampling import SamplingParams

    with pytest.raises(ValueError, match="finite"):
        SamplingParams(temperature=float("nan"))


@pytest.mark.parametrize("temperature", [1e-3, 1e-30, 1e-45, 5e-324])
def test_a_tiny_temperature_is_the_argmax_not_an_overflow(temperature):
    from codellama_fast.engine.sampling import SamplingParams, sample

    logits = torch.randn(4, 1000) * 8
    for params in (SamplingParams(temperature), SamplingParams(temperature, top_k=5), SamplingParams(temperature, top_p=0.9)):
        assert torch.equal(sample(logits, params, torch.Generator().manual_seed(1)), logits.argmax(-1))


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda e: e.generate(5), TypeError, "prompts must be a str or a sequence of str"),
        (lambda e: e.generate(["a", 1]), TypeError, "prompts must contain only str"),
        (lambda e: e.generate(b"abc"), TypeError, "prompts must be a str"),
        (lambda e: e.generate(), ValueError, "give prompts"),
        (lambda e: e.generate("a", input_ids=[1]), ValueError, "not both"),
        (lambda e: e.generate(input_ids=[[1.5, 2]]), TypeError, r"input_ids\[0\]\[0\] must be an int token id, got float"),
        (lambda e: e.generate(input_ids=[[1, True]]), TypeError, r"input_ids\[0\]\[1\] must be an int token id, got bool"),
        (lambda e: e.generate(input_ids="abc"), TypeError, "input_ids must be a list"),
        (lambda e: e.generate(input_ids=torch.ones(1, 2, 3, dtype=torch.long)), ValueError, "input_ids must be 1-D or 2-D, got a 3-D"),
        (lambda e: e.generate(input_ids=[[1, 10**9]]), ValueError, "outside the model's vocabulary"),
        (lambda e: list(e.stream(["a", "b"])), TypeError, r"prompt\[0\] must be an int token id, got str"),
        (lambda e: e.generate([]), ValueError, "no prompts given"),
        (lambda e: e.generate("a", attention_mask=[1]), ValueError, "attention_mask goes with input_ids"),
        (lambda e: e.generate(input_ids=[[1, 2]], attention_mask=[[1]]), ValueError, "shape of input_ids"),
        (lambda e: e.generate(input_ids=[[1, 2]], attention_mask=[[1, 2]]), ValueError, "only 0 and 1"),
        (lambda e: e.generate(input_ids=[[1, 2]], attention_mask=[[1.0, 1.0]]), ValueError, "only 0 and 1"),
        (lambda e: e.generate(input_ids=[[1, 2, 3]], attention_mask=[[1, 0, 1]]), ValueError, "gaps"),
        (lambda e: e.generate(input_ids=[[2, 2]], attention_mask=[[0, 0]]), ValueError, "at least one token"),
    ],
)
def test_bad_prompts_are_named(engine, call, error, words):
    with pytest.raises(error, match=words):
        call(engine)


def test_a_padded_batch_with_its_attention_mask_generates_as_the_unpadded_prompts(engine):
    """engine.generate(**tokenizer(texts, padding=True, return_tensors="pt")) reads the mask, so
    the pad tokens are not prompt text: each row continues as its prompt alone does."""
    texts = ["def fibonacci(n):", "x", "import os\nimport sys"]
    want = [engine.generate(t, max_new_tokens=5, stop_at_eos=False).token_ids[0] for t in texts]
    padder = CodeLlamaTokenizerFast.from_pretrained(CODELLAMA_DIR, pad_token="</s>")
    for side in ("left", "right"):
        padded = padder(texts, padding=True, return_tensors="pt", padding_side=side)
        assert padded["attention_mask"].min() == 0  # the rows really are padded
        assert engine.generate(**padded, max_new_tokens=5, stop_at_eos=False).token_ids == want
        assert engine.generate(input_ids=padded["input_ids"].tolist(), attention_mask=padded["attention_mask"].numpy(),
                               max_new_tokens=5, stop_at_eos=False).token_ids == want


def test_do_sample_reads_as_transformers_reads_it(engine):
    """do_sample=True without settings samples with transformers' GenerationConfig defaults;
    do_sample=False is greedy whatever the temperature (with a warning, as transformers gives)."""
    hf = pytest.importorskip("transformers").GenerationConfig(do_sample=True)
    cfg = engine._config({"do_sample": True})
    assert (cfg.temperature, cfg.top_k, cfg.top_p or 1.0) == (hf.temperature, hf.top_k, hf.top_p)
    assert engine._config({"do_sample": True, "temperature": 0.2, "top_k": 5}).sampling() == engine._config({"temperature": 0.2, "top_k": 5}).sampling()
    greedy = engine.generate("def f(", max_new_tokens=6, stop_at_eos=False).token_ids
    with pytest.warns(UserWarning, match="do_sample=False is greedy") as caught:
        out = engine.generate("def f(", max_new_tokens=6, stop_at_eos=False, do_sample=False, temperature=0.9, seed=1).token_ids
    assert out == greedy and caught[0].filename == __file__
    sampled = {tuple(engine.generate("def f(", max_new_tokens=6, stop_at_eos=False, do_sample=True, seed=s).token_ids[0]) for s in range(4)}
    assert len(sampled) > 1


def test_transformers_eos_and_pad_token_id(engine, tok):
    """eos_token_id replaces EOS as the stop ids (None: no end token); pad_token_id changes nothing."""
    kw = dict(max_new_tokens=12)
    free = engine.generate("def f(", stop_at_eos=False, **kw).token_ids[0]
    assert engine.generate("def f(", eos_token_id=None, pad_token_id=0, **kw).token_ids[0] == free
    stop = free[3]
    assert engine.generate("def f(", eos_token_id=stop, **kw).token_ids[0] == free[: free.index(stop)]
    assert engine.generate("def f(", eos_token_id=[free[5], stop], **kw).token_ids[0] == free[: free.index(stop)]


def test_num_return_sequences_samples_each_prompt_in_order(engine):
    """Like transformers: n samples per prompt, each prompt's together, in prompt order."""
    kw = dict(max_new_tokens=8, stop_at_eos=False, temperature=1.0, seed=4)
    many = engine.generate(["def f(", "import"], num_return_sequences=3, **kw)
    assert len(many.texts) == len(many.token_ids) == 6
    assert many.prompt_tokens == [len(engine.tokenizer.encode(p)) for p in ["def f("] * 3 + ["import"] * 3]
    assert len({tuple(t) for t in many.token_ids[:3]}) > 1  # different samples of one prompt
    assert many.token_ids == engine.generate(["def f("] * 3 + ["import"] * 3, **kw).token_ids  # the same batch, row for row
    with pytest.raises(ValueError, match="is for generate"):
        list(engine.stream("x", num_return_sequences=2, temperature=1.0))


def test_input_id_forms_give_the_same_tokens(engine):
    """A flat list, a list of lists, a 1-D and a 2-D tensor are the same one prompt; numpy ints count as ints."""
    np = pytest.importorskip("numpy")
    ids = [1, 822, 285]
    want = engine.generate(input_ids=[ids], max_new_tokens=4, stop_at_eos=False).token_ids
    for form in (ids, torch.tensor(ids), torch.tensor([ids]), np.array([ids]), [np.int64(i) for i in ids]):
        assert engine.generate(input_ids=form, max_new_tokens=4, stop_at_eos=False).token_ids == want
        # in the first place, as transformers' generate(input_ids), or as its inputs=
        assert engine.generate(form, max_new_tokens=4, stop_at_eos=False).token_ids == want
        assert engine.generate(inputs=form, max_new_tokens=4, stop_at_eos=False).token_ids == want
    with pytest.raises(ValueError, match="not both"):
        engine.generate("x", inputs=ids)
    with pytest.raises(TypeError, match="prompts must contain only str"):
        engine.generate(["x", 3])


def test_a_lone_stop_id_is_a_stop(engine, tok):
    script = tok.encode("lag girl here", add_special_tokens=False)
    scripted(engine, script)
    assert engine.generate("x", stop_token_ids=script[1], max_new_tokens=20, stop_at_eos=False).token_ids == [script[:1]]


def test_a_lone_stop_string_is_one_stop_not_its_letters(engine, tok):
    # The text " lag girl ..." holds the letters of "girl" before the word itself: read as a list of
    # one-letter stops it would stop at the "l" of "lag".
    script = tok.encode("lag girl here", add_special_tokens=False) + [2]  # "▁lag ▁girl ▁here"
    scripted(engine, script)
    assert engine.generate("x", stop="girl", max_new_tokens=20).text == " lag "
    scripted(engine, script)
    assert "".join(engine.stream("x", stop="girl", max_new_tokens=20)) == " lag "


def test_running_past_the_trained_length_warns_once_at_the_callers_line(engine):
    limit = engine.model.config.max_position_embeddings
    ids = [1] + [29871] * (limit - 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the limit: no warning
        engine.generate(input_ids=[ids], max_new_tokens=2, stop_at_eos=False)
    with pytest.warns(RuntimeWarning, match="max_position_embeddings") as caught:
        engine.generate(input_ids=[ids], max_new_tokens=3, stop_at_eos=False)
    assert len(caught) == 1 and caught[0].filename == __file__
    with pytest.warns(RuntimeWarning, match="max_position_embeddings") as caught:
        list(engine.stream(ids, max_new_tokens=3, stop_at_eos=False))
    assert caught[0].filename == __file__


def test_linear_rope_scaling_stretches_the_trained_length(engine):
    from dataclasses import replace

    from codellama_fast.engine.arguments import warn_past_context

    config = replace(engine.model.config, max_position_embeddings=4096, rope_scaling_type="linear", rope_scaling_factor=4.0)  # a 16k Llama 2 fine-tune
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_past_context(16000, 384, config)
        warn_past_context(50000, 1000, replace(config, rope_scaling_type="dynamic"))  # made to run past it
    with pytest.warns(RuntimeWarning, match=r"max_position_embeddings \(4096\) x its linear RoPE scaling factor \(4\) = 16384"):
        warn_past_context(16000, 385, config)


def test_torch_dtype_is_dtype(model_dir):
    assert Engine.from_pretrained(model_dir, torch_dtype=torch.float16, device="cpu", tokenizer=CODELLAMA_DIR).dtype == torch.float16
    with pytest.raises(TypeError, match="not both"):
        Engine.from_pretrained(model_dir, dtype="float32", torch_dtype=torch.float16, device="cpu")


def test_device_and_backend_fail_before_loading(model_dir):
    absent = f"cuda:{torch.cuda.device_count() + 3}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(DeviceError, match="does not exist" if torch.cuda.is_available() else "no CUDA GPU"):
        load_model(model_dir, device=absent)
    for device, words in (("foo", "unknown device 'foo'"), ("meta", "not supported")):
        with pytest.raises(DeviceError, match=words):
            load_model(model_dir, device=device)
    with pytest.raises(DeviceError, match="unknown ops backend"):
        load_model(model_dir, device="cpu", backend="cuda")
    assert issubclass(DeviceError, EngineError) and issubclass(DeviceError, ValueError)


def test_transformers_loading_arguments_run_as_written(model_dir):
    """The model cards' ``from_pretrained(name, torch_dtype=..., device_map="auto")`` and the other
    loading arguments transformers code passes: the model lands where transformers puts it (on this
    machine) and computes the same logits; the rest say what they are."""
    from transformers import LlamaForCausalLM

    ids = torch.tensor([[1, 822, 285, 7295, 1209]])
    for device_map in ("auto", {"": "cpu"}, "cpu"):
        theirs = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, device_map=device_map, low_cpu_mem_usage=True)
        ours = Engine.from_pretrained(model_dir, torch_dtype=torch.float32, device_map=device_map, low_cpu_mem_usage=True,
                                      attn_implementation="sdpa", trust_remote_code=False, local_files_only=True)
        assert ours.device == theirs.device
        with torch.no_grad():
            want = theirs(ids).logits[0, -1].log_softmax(-1)
        got = ours.generate(input_ids=ids.tolist(), max_new_tokens=1, top_logprobs=5).top_logprobs[0][0]
        assert [i for i, _ in got] == want.topk(5).indices.tolist()
        assert all(abs(v - want[i].item()) < 1e-4 for i, v in got)
    with pytest.raises(UnsupportedConfigError, match="on 2 devices"):
        Engine.from_pretrained(model_dir, device_map={"model.embed_tokens": "cpu", "lm_head": 0})
    with pytest.raises(ValueError, match="name different devices"):
        Engine.from_pretrained(model_dir, device="cpu", device_map="cuda:0")
    with pytest.raises(UnsupportedConfigError, match="4-bit"):
        Engine.from_pretrained(model_dir, load_in_4bit=True)
    with pytest.raises(UnsupportedConfigError, match="disk"):
        Engine.from_pretrained(model_dir, device_map="disk")
    with pytest.raises(TypeError, match="'device_mapp'"):
        Engine.from_pretrained(model_dir, device_mapp="auto")
    if not torch.cuda.is_available():  # a bare index is a CUDA device, as in transformers
        with pytest.raises(DeviceError, match="'cuda:0'"):
            Engine.from_pretrained(model_dir, device_map=0)
